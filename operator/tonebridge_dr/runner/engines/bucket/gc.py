"""Garbage collection of content objects: mark and sweep, safe against running snapshots.

Content objects are shared by snapshots, so deleting a snapshot (retention's prune)
deletes only its folder; what no remaining snapshot references is removed here:

1. Scan `base/`. When a snapshot is in flight (a folder without manifest touched within
   `grace` of the clock: a running writer renews its claim every minute) nothing is swept: what it
   will reference is not known yet. The run reports it as `deferred`.
2. Mark: the union of the content indexes (`content.idx`) of every complete bucket
   snapshot, merged one by one into a sorted temporary file (memory stays constant
   whatever the number of objects or snapshots).
3. Sweep: `objects/` is listed in key order and merged with the mark. An unreferenced
   object is deleted only when it is older than `grace` (a snapshot uploads before it
   references, and a crashed one leaves content a re-run reuses), and not under S3 Object
   Lock. Before every batch of deletes `base/` is listed again: a snapshot that started
   meanwhile (a new folder) stops the sweep (`interrupted`), since it may reuse an
   unreferenced object. A snapshot that reuses stored content it did not upload checks,
   at commit, that the content is still there.

Idempotent; two collections at once only delete the same things.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import heapq
import logging
import tempfile
from collections.abc import Iterable, Iterator
from typing import IO, Any

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.bucket import content, keymap, snapshot
from tonebridge_dr.runner.repository import ids
from tonebridge_dr.runner.repository import manifest as manifests
from tonebridge_dr.runner.repository.catalog import BASE_PREFIX, Repository

log = logging.getLogger(__name__)

DEFAULT_GRACE = dt.timedelta(minutes=15)
BATCH = 1000


@dataclasses.dataclass
class GcReport:
    """What `collect_garbage` found and deleted (or would, with `dry_run`)."""

    snapshots: int = 0
    referenced: int = 0
    stored: int = 0
    deleted: int = 0
    deleted_bytes: int = 0
    young: int = 0  # unreferenced, but younger than the grace: kept for now
    locked: int = 0  # unreferenced, but under S3 Object Lock
    deferred: list[str] = dataclasses.field(default_factory=list)  # snapshots in flight
    interrupted: bool = False  # a snapshot started during the sweep
    dry_run: bool = False
    deleted_keys: list[str] = dataclasses.field(default_factory=list, repr=False)

    def result(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("deleted_keys")
        return data

    def sentence(self) -> str:
        if self.deferred:
            return (f"Content garbage collection deferred: snapshot(s) "
                    f"{', '.join(self.deferred)} in progress.")
        verb = "Would delete" if self.dry_run else "Deleted"
        text = (f"{verb} {self.deleted} unreferenced content object(s) ({self.deleted_bytes} "
                "bytes).")
        if self.interrupted:
            text += " Stopped early: a snapshot started."
        return text


def _folders(repo: Repository) -> dict[str, list[Any]]:
    folders: dict[str, list[Any]] = {}
    for info in repo.storage.list(BASE_PREFIX):
        backup_id, sep, rest = info.key[len(BASE_PREFIX):].partition("/")
        if sep and rest and ids.is_backup_id(backup_id):
            folders.setdefault(backup_id, []).append(info)
    return folders


def _in_flight(folders: dict[str, list[Any]], now: dt.datetime,
               grace: dt.timedelta) -> list[str]:
    alive = []
    for backup_id, infos in folders.items():
        if any(info.key == manifests.manifest_key(backup_id) for info in infos):
            continue
        if max(info.last_modified for info in infos) > now - grace:
            alive.append(backup_id)
    return sorted(alive, key=ids.sort_key)


def _addresses(repo: Repository, manifest: manifests.Manifest) -> Iterator[str]:
    for stored in content.parse_index(repo.read_object(manifest, keymap.INDEX_NAME)):
        yield stored.sha256


def _merge_distinct(*streams: Iterable[str]) -> Iterator[str]:
    last = None
    for address in heapq.merge(*streams):
        if address != last:
            yield address
        last = address


def _lines(handle: IO[str]) -> Iterator[str]:
    handle.seek(0)
    for line in handle:
        yield line.rstrip("\n")


def mark(repo: Repository, snapshots: list[manifests.Manifest]) -> tuple[IO[str], int]:
    """A temporary file of every referenced address, sorted and distinct, and their count."""
    union: IO[str] = tempfile.TemporaryFile("w+", encoding="ascii")  # noqa: SIM115
    count = 0
    for manifest in snapshots:
        merged: IO[str] = tempfile.TemporaryFile("w+", encoding="ascii")  # noqa: SIM115
        count = 0
        for address in _merge_distinct(_lines(union), _addresses(repo, manifest)):
            merged.write(address + "\n")
            count += 1
        union.close()
        union = merged
    union.seek(0)
    return union, count


def collect_garbage(
    repo: Repository,
    *,
    now: dt.datetime | None = None,
    grace: dt.timedelta = DEFAULT_GRACE,
    dry_run: bool = False,
) -> GcReport:
    """Delete content objects no complete bucket snapshot references (see module doc)."""
    now = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    report = GcReport(dry_run=dry_run)
    folders = _folders(repo)
    # Running writers renew their claims by the clock, whatever `now` a caller passes.
    report.deferred = _in_flight(folders, min(now, dt.datetime.now(dt.UTC)), grace)
    if report.deferred:
        log.info("%s: content garbage collection deferred: snapshot(s) %s in progress",
                 repo.url, ", ".join(report.deferred))
        return report
    known = set(folders)
    snapshots = repo.list_backups(engine=snapshot.ENGINE)
    report.snapshots = len(snapshots)
    union, report.referenced = mark(repo, snapshots)
    try:
        referenced = _lines(union)
        current = next(referenced, None)
        batch: list[tuple[str, int]] = []
        for info in repo.storage.list_after(content.PREFIX):
            address = content.address_of(info.key)
            if address is None:
                continue
            report.stored += 1
            while current is not None and current < address:
                current = next(referenced, None)
            if current == address:
                continue
            if info.last_modified > now - grace:
                report.young += 1
                continue
            batch.append((info.key, info.size))
            if len(batch) >= BATCH:
                if not _sweep(repo, batch, known, report, now):
                    return report
                batch = []
        if batch:
            _sweep(repo, batch, known, report, now)
    finally:
        union.close()
    log.info("%s: %s", repo.url, report.sentence())
    return report


def _sweep(repo: Repository, batch: list[tuple[str, int]], known: set[str],
           report: GcReport, now: dt.datetime) -> bool:
    """Delete one batch unless a snapshot started; False when the sweep must stop."""
    started = set(_folders(repo)) - known
    if started:
        report.interrupted = True
        log.info("%s: snapshot(s) %s started: garbage collection stops", repo.url,
                 ", ".join(sorted(started)))
        return False
    keys = [key for key, _ in batch]
    locked = {key for key, until in repo.storage.retained_until(keys).items()
              if until > max(now, dt.datetime.now(dt.UTC))}
    report.locked += len(locked)
    doomed = [(key, size) for key, size in batch if key not in locked]
    if not report.dry_run and doomed:
        try:
            repo.storage.delete_many([key for key, _ in doomed])
        except errors.ObjectLocked as exc:  # a lock added meanwhile: the next run retries
            log.warning("%s: %s", repo.url, exc)
            return False
    report.deleted += len(doomed)
    report.deleted_bytes += sum(size for _, size in doomed)
    report.deleted_keys.extend(key for key, _ in doomed)
    return True

