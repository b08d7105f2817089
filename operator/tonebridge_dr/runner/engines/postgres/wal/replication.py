"""Copying the WAL archive to a replica repository (after its backups, see
runner/repository/replication.py).

Every archived object of the source (segments, .backup labels, timeline histories,
and the newest .partial of each segment) that the replica lacks is copied under the
same key. Each copy is checked twice:

1. the source object is read once and verified: its stored size against the listing,
   and, when it is not encrypted, the SHA-256 of its decoded content against the
   digest in its key (naming.py), so a tampered segment in the primary is reported and
   never copied; the digest of its stored bytes is kept;
2. it is then streamed into the replica through `integrity.VerifiedStream` pinned to
   that stored size and digest, so what lands is exactly what was verified (a source
   object replaced in between fails the put, which leaves nothing).

Encrypted WAL cannot be decoded here (backup Jobs hold no private key): step 1 then
checks the size only; a restore from the replica still verifies every file's digest.

The replica keeps the archive's rule "one object per WAL file name": after copying a
newer .partial, older partials of the same name in the replica are deleted (the only
deletion a replication does; whole segments are immutable and never deleted here).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Iterator

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.codecs import pipeline
from tonebridge_dr.runner.engines.postgres.wal import naming
from tonebridge_dr.runner.repository import integrity
from tonebridge_dr.runner.repository.manifest import ObjectEntry
from tonebridge_dr.runner.storage.base import ObjectInfo, Storage

log = logging.getLogger(__name__)


@dataclasses.dataclass
class WalCopy:
    """What one `replicate_wal` run did."""

    copied: int = 0
    bytes: int = 0
    present: int = 0
    failed: list[str] = dataclasses.field(default_factory=list)  # keys not copied
    problems: list[str] = dataclasses.field(default_factory=list)
    newest_segment: str | None = None  # newest complete segment the replica now has
    first_error: errors.DRError | None = None


def _verified_source(source: Storage, ref: naming.ArchivedKey, info: ObjectInfo) -> ObjectEntry:
    """Read the source object once (step 1); its entry (stored size and digest)."""
    stored = hashlib.sha256()
    count = 0

    def chunks() -> Iterator[bytes]:
        nonlocal count
        for chunk in source.get_stream(ref.key):
            stored.update(chunk)
            count += len(chunk)
            yield chunk

    raw_size = 0
    if ref.encrypted:
        for _ in chunks():
            pass
    else:
        raw = hashlib.sha256()
        for piece in pipeline.decode(chunks(), compression=ref.compression, encrypted=False):
            raw.update(piece)
            raw_size += len(piece)
        if raw.hexdigest() != ref.sha256:
            raise errors.IntegrityError(
                f"archived WAL {ref.key} is corrupt: its content's sha256 is "
                f"{raw.hexdigest()}, its key says {ref.sha256}"
            )
    if count != info.size:
        raise integrity.size_error(ref.key, count, info.size)
    return ObjectEntry(name=ref.name, key=ref.key, size=count, sha256=stored.hexdigest(),
                       raw_size=raw_size)


def _wanted(source: Storage) -> list[tuple[naming.ArchivedKey, ObjectInfo]]:
    """The source's WAL objects in key order; of several partials of one name only the
    newest (a running wal-stream replaces the shorter one)."""
    found: list[tuple[naming.ArchivedKey, ObjectInfo]] = []
    partials: dict[str, tuple[naming.ArchivedKey, ObjectInfo]] = {}
    for info in source.list(naming.WAL_PREFIX):
        ref = naming.parse_key(info.key)
        if ref is None:
            continue
        if ref.wal.kind == naming.PARTIAL:
            best = partials.get(ref.name)
            if best is None or (info.last_modified, info.size) > (
                best[1].last_modified, best[1].size
            ):
                partials[ref.name] = (ref, info)
            continue
        found.append((ref, info))
    found.extend(partials.values())
    found.sort(key=lambda pair: pair[0].key)
    return found


def replicate_wal(source: Storage, target: Storage) -> WalCopy:
    """Copy the WAL objects `target` lacks (see module docstring). One object's trouble is
    reported and the others are still copied; listing errors propagate."""
    report = WalCopy()
    have: dict[str, ObjectInfo] = {}
    names: dict[str, list[str]] = {}
    for info in target.list(naming.WAL_PREFIX):
        ref = naming.parse_key(info.key)
        if ref is not None:
            have[info.key] = info
            names.setdefault(ref.name, []).append(info.key)
    for ref, info in _wanted(source):
        there = have.get(ref.key)
        if there is not None and there.size == info.size:
            report.present += 1
        else:
            try:
                entry = _verified_source(source, ref, info)
                report.bytes += target.put_stream(
                    ref.key, integrity.VerifiedStream(source.get_stream(ref.key), entry)
                )
            except errors.DRError as exc:
                message = " ".join(str(exc).split())
                log.warning("WAL %s not replicated: %s", ref.key, message)
                report.failed.append(ref.key)
                report.problems.append(f"WAL {ref.name}: {message}")
                report.first_error = report.first_error or exc
                continue
            report.copied += 1
        if ref.wal.kind == naming.PARTIAL:
            stale = [key for key in names.get(ref.name, []) if key != ref.key]
            if stale:
                target.delete_many(stale)
        if ref.wal.kind == naming.SEGMENT and (
            report.newest_segment is None or ref.name > report.newest_segment
        ):
            report.newest_segment = ref.name
    if report.copied:
        log.info("replicated %d WAL objects (%d bytes)", report.copied, report.bytes)
    return report
