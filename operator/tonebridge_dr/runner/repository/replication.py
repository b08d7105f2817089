"""Copying complete backups from one repository to another (a replica, spec 11.1).

`replicate_backups(source, target)` makes every complete backup of `source` exist in
`target`, byte for byte, under the same keys. It is an idempotent sync:

- a backup whose manifest the replica already has is left alone (one LIST, one GET of
  each replica manifest); a replica manifest that differs from the primary's is reported
  as a conflict and never overwritten;
- otherwise each object is streamed from the source into the target through
  `integrity.VerifiedStream` (its size and SHA-256 from the primary's manifest): the last
  chunk is held back until the object matched, so a tampered or truncated object in the
  primary fails `put_stream`, which then leaves nothing under the key (the storage
  contract). Memory is bounded by the storage's part size;
- an object a previous, interrupted run already copied (same size in the replica) is
  verified where it is (read back from the replica) and copied again only when it does
  not match;
- the manifest is written LAST, with the primary's exact bytes, after every object it
  lists was seen in the replica with its size. An interrupted copy therefore leaves a
  folder without manifest: invisible to every reader, completed by the next run (and
  removed by the replica's prune after its grace if it never is).

Nothing is ever deleted from the target here: backups pruned in the primary are pruned
in the replica by the replica's own retention run (the operator applies the policy's
retention plan there), never by mirroring deletions, so a compromised or mistaken
primary cannot wipe its replica.
"""

from __future__ import annotations

import dataclasses
import logging

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.repository import ids, integrity
from tonebridge_dr.runner.repository import manifest as manifests
from tonebridge_dr.runner.repository.catalog import Repository
from tonebridge_dr.runner.storage.base import Storage

log = logging.getLogger(__name__)


@dataclasses.dataclass
class BackupCopy:
    """What one `replicate_backups` run did."""

    copied: list[str] = dataclasses.field(default_factory=list)  # backups completed now
    present: int = 0  # complete backups of the source the replica had already
    objects: int = 0  # objects uploaded
    bytes: int = 0  # stored bytes uploaded
    reused: int = 0  # objects an earlier (interrupted) run had copied, verified in place
    failed: list[str] = dataclasses.field(default_factory=list)  # backups still missing
    problems: list[str] = dataclasses.field(default_factory=list)  # one sentence each
    newest: manifests.Manifest | None = None  # newest source backup the replica now has
    first_error: errors.DRError | None = None


def copy_object(source: Storage, target: Storage, entry: manifests.ObjectEntry) -> int:
    """Stream `entry.key` from `source` into `target`, checked against the entry's size
    and SHA-256 while it flows; returns the bytes stored. A mismatch raises
    IntegrityError and leaves nothing under the key in `target` (put_stream is atomic)."""
    info = source.head(entry.key)
    if info is None:
        raise integrity.missing_error(entry.key)
    if info.size != entry.size:
        raise integrity.size_error(entry.key, info.size, entry.size)
    stream = integrity.VerifiedStream(source.get_stream(entry.key), entry)
    return target.put_stream(entry.key, stream)


def _already_there(target: Storage, entry: manifests.ObjectEntry) -> bool:
    """Whether the replica holds a verified copy of `entry` (left by an earlier run)."""
    info = target.head(entry.key)
    if info is None or info.size != entry.size:
        return False
    try:
        _, problem = integrity.check_entry(target.get_stream(entry.key), entry)
    except errors.ObjectNotFound:
        return False
    return problem is None


def _copy_backup(source: Repository, target: Repository, backup_id: str,
                 report: BackupCopy) -> None:
    manifest, data = source.get_with_bytes(backup_id)
    for entry in manifest.objects:
        if _already_there(target.storage, entry):
            report.reused += 1
            continue
        report.bytes += copy_object(source.storage, target.storage, entry)
        report.objects += 1
    stored = {info.key: info.size for info in
              target.storage.list(manifests.backup_prefix(backup_id))}
    gone = [e.key for e in manifest.objects if stored.get(e.key) != e.size]
    if gone:  # e.g. the replica's prune removed a folder it took for a crashed write
        raise errors.StorageError(
            f"backup {backup_id}: {', '.join(gone[:3])} vanished from the replica before "
            "its manifest was written; the next run copies it again"
        )
    target.storage.put_bytes(manifest.key, data)  # LAST: now the backup exists there


def replicate_backups(source: Repository, target: Repository) -> BackupCopy:
    """Copy every complete backup of `source` that `target` lacks (see module docstring).

    Never raises for one backup's trouble: it is reported (`failed`, `problems`,
    `first_error`) and the others are still copied. Storage errors that make the source
    or the replica unreadable as a whole propagate.
    """
    report = BackupCopy()
    wanted = source.list_backups()
    have = {m.id: m for m in target.list_backups()}
    for manifest in wanted:
        there = have.get(manifest.id)
        if there is not None:
            if [(e.key, e.sha256) for e in there.objects] != [
                (e.key, e.sha256) for e in manifest.objects
            ]:
                problem = (f"backup {manifest.id} in the replica differs from the primary's; "
                           "left as it is")
                log.warning("%s", problem)
                report.problems.append(problem)
                report.first_error = report.first_error or errors.ConflictError(problem)
            report.present += 1
            report.newest = manifest
            continue
        try:
            _copy_backup(source, target, manifest.id, report)
        except errors.DRError as exc:
            message = " ".join(str(exc).split())
            log.warning("backup %s not replicated: %s", manifest.id, message)
            report.failed.append(manifest.id)
            report.problems.append(f"backup {manifest.id}: {message}")
            report.first_error = report.first_error or exc
            continue
        log.info("backup %s replicated", manifest.id)
        report.copied.append(manifest.id)
        report.newest = manifest
    report.copied.sort(key=ids.sort_key)
    return report
