"""Archive tiers of a repository: moving old backups to an archive storage class, and
getting them back (rehydration) before a restore.

- `archive_backups` moves the DATA objects of every backup that started more than
  `after` ago to an archive class (default GLACIER) by an in-place copy. Never the
  manifest (listing, retention and restore planning read it), never claims. Idempotent:
  objects already in the class are skipped; an object already in another archive class
  is left there (S3 cannot copy an archived object without rehydrating it first).
- `readability` says, for a backup's objects (plus extra objects such as the WAL a
  physical backup needs), which cannot be read now; `require_readable` raises
  BackupArchived (exit 17) with the fix in its message. Restores call it after choosing
  their backup and before touching their target.
- `rehydrate` sends RestoreObject for every unreadable object (idempotent: objects being
  rehydrated or already readable are counted, not asked again).

Cost: one LIST of the backup's folder (the listing carries each object's class), and
one HEAD per object in an archive class (only a HEAD tells whether a rehydrated copy
exists). Storage without classes (file://) refuses moving and rehydrating with a
UsageError and reports every object readable.

WAL objects are the PostgreSQL engine's business (engines/postgres/wal/tiering.py):
they come in here as `extra` ObjectInfos.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.repository import manifest as manifests
from tonebridge_dr.runner.repository.catalog import BASE_PREFIX, Repository
from tonebridge_dr.runner.storage import base

log = logging.getLogger(__name__)

ARCHIVE_CLASSES = base.ARCHIVE_CLASSES
DEFAULT_STORAGE_CLASS = "GLACIER"
DEFAULT_REHYDRATION_DAYS = 1
DEFAULT_TIER = "Standard"
TIERS = ("Standard", "Bulk", "Expedited")
#: `storage_classes` of a backup whose objects are in more than one class.
MIXED = "mixed"
#: How many object keys a report lists (the counts are always complete).
REPORT_KEYS = 200


def data_keys(manifest: manifests.Manifest) -> list[str]:
    """The objects archiving moves: every object the manifest lists (never the manifest
    itself, never a claim: neither is listed in a manifest)."""
    return [entry.key for entry in manifest.objects]


def class_of(manifest: manifests.Manifest, listing: dict[str, base.ObjectInfo]) -> str | None:
    """The storage class of a backup's data objects: one class, MIXED, or None when the
    backend has no classes (file://) or the backup has no objects listed."""
    classes = {
        listing[key].storage_class for key in data_keys(manifest) if key in listing
    }
    if not classes or classes == {None}:
        return None
    if len(classes) > 1:
        return MIXED
    return classes.pop()


def listing(repo: Repository, prefix: str = BASE_PREFIX) -> dict[str, base.ObjectInfo]:
    """Every object under `prefix` (default all of base/) by key: one LIST."""
    return {info.key: info for info in repo.storage.list(prefix)}


def is_archived(manifest: manifests.Manifest, objects: dict[str, base.ObjectInfo]) -> bool:
    """Every data object of the backup is in an archive class (by the listing)."""
    keys = data_keys(manifest)
    return bool(keys) and all(
        key in objects and objects[key].storage_class in ARCHIVE_CLASSES for key in keys
    )


# -- moving -------------------------------------------------------------------------------


@dataclasses.dataclass
class ArchiveReport:
    """What `archive_backups` moved (or would, with `dry_run`)."""

    storage_class: str
    cut: dt.datetime  # backups that started before this are archived
    dry_run: bool
    moved: list[str] = dataclasses.field(default_factory=list)  # backup ids
    objects: int = 0
    bytes: int = 0
    keys: list[str] = dataclasses.field(default_factory=list)  # the first REPORT_KEYS
    already: list[str] = dataclasses.field(default_factory=list)  # ids with nothing to move
    skipped: list[str] = dataclasses.field(default_factory=list)  # keys in another archive class
    missing: list[str] = dataclasses.field(default_factory=list)  # keys listed, not stored

    def result(self) -> dict[str, Any]:
        """Stable `--json` form."""
        data = dataclasses.asdict(self)
        data["cut"] = manifests.format_time(self.cut, timespec="seconds")
        data["keys_truncated"] = self.objects > len(self.keys)
        return data


def archive_backups(
    repo: Repository,
    *,
    after: dt.timedelta,
    storage_class: str = DEFAULT_STORAGE_CLASS,
    now: dt.datetime,
    dry_run: bool = False,
) -> ArchiveReport:
    """Move the data objects of every complete backup that started before `now - after`
    to `storage_class`; returns what moved. Safe to repeat and to interrupt (each object
    is copied onto itself atomically; a second run moves what the first did not)."""
    if after < dt.timedelta(0):
        raise errors.UsageError("archive --after must not be negative")
    cut = now.astimezone(dt.UTC) - after
    report = ArchiveReport(storage_class=storage_class, cut=cut, dry_run=dry_run)
    objects = listing(repo)
    for manifest in repo.list_backups():
        if manifest.started_at > cut:
            continue
        moved = 0
        for entry in manifest.objects:
            info = objects.get(entry.key)
            if info is None:
                report.missing.append(entry.key)  # `backups verify` says more
                continue
            if info.storage_class == storage_class:
                continue
            if info.storage_class in ARCHIVE_CLASSES:
                report.skipped.append(entry.key)
                continue
            if not dry_run:
                repo.storage.change_storage_class(entry.key, storage_class)
            moved += 1
            report.objects += 1
            report.bytes += info.size
            if len(report.keys) < REPORT_KEYS:
                report.keys.append(entry.key)
        if moved:
            report.moved.append(manifest.id)
            log.info(
                "%s %d objects of backup %s to %s",
                "would move" if dry_run else "moved", moved, manifest.id, storage_class,
            )
        else:
            report.already.append(manifest.id)
    return report


# -- reading back -----------------------------------------------------------------------------


@dataclasses.dataclass
class Readability:
    """Which objects of a backup (and its extra objects) cannot be read now."""

    backup_id: str
    checked: int
    unreadable: list[base.ArchiveState]
    missing: list[str] = dataclasses.field(default_factory=list)

    @property
    def readable(self) -> bool:
        return not self.unreadable

    @property
    def restoring(self) -> int:
        return sum(1 for state in self.unreadable if state.restoring)

    @property
    def classes(self) -> list[str]:
        return sorted({state.storage_class or "?" for state in self.unreadable})

    def result(self) -> dict[str, Any]:
        return {
            "id": self.backup_id,
            "readable": self.readable,
            "checked": self.checked,
            "unreadable": len(self.unreadable),
            "restoring": self.restoring,
            "classes": self.classes,
        }


def _objects_of(
    repo: Repository, manifest: manifests.Manifest, extra: Iterable[base.ObjectInfo]
) -> tuple[list[base.ObjectInfo], list[str]]:
    """The listed objects of the backup plus `extra`; and the backup's keys not stored."""
    folder = {info.key: info for info in repo.storage.list(manifests.backup_prefix(manifest.id))}
    infos = [folder[key] for key in data_keys(manifest) if key in folder]
    missing = [key for key in data_keys(manifest) if key not in folder]
    return infos + list(extra), missing


def readability(
    repo: Repository, manifest: manifests.Manifest, extra: Iterable[base.ObjectInfo] = ()
) -> Readability:
    """Check every data object of `manifest` plus `extra` (e.g. WAL). Objects a listing
    shows outside the archive classes are readable without a HEAD. A stored object
    missing is left to the restore's own integrity check (it fails with exit 7)."""
    infos, missing = _objects_of(repo, manifest, extra)
    unreadable = []
    for info in infos:
        if info.storage_class not in ARCHIVE_CLASSES:
            continue
        state = repo.storage.archive_state(info.key)
        if state is not None and not state.readable:
            unreadable.append(state)
    return Readability(manifest.id, len(infos), unreadable, missing)


def rehydrate_command(repo_url: str, backup_id: str) -> str:
    return (
        f"tonebridge-dr backups rehydrate {backup_id} --repo {repo_url} "
        "[--days N] [--tier Standard|Bulk|Expedited] [--wait]"
    )


def archived_error(repo: Repository, found: Readability) -> errors.BackupArchived:
    """The BackupArchived error of a restore that met unreadable objects."""
    being = f", {found.restoring} being rehydrated" if found.restoring else ""
    return errors.BackupArchived(
        f"backup {found.backup_id} is archived: {len(found.unreadable)} of {found.checked} "
        f"objects it needs are in storage class {', '.join(found.classes)} and not readable"
        f"{being}; nothing was restored. Rehydrate first: "
        f"{rehydrate_command(repo.url, found.backup_id)}"
    )


def require_readable(
    repo: Repository, manifest: manifests.Manifest, extra: Iterable[base.ObjectInfo] = ()
) -> None:
    """BackupArchived (exit 17) when any object a restore of `manifest` needs is
    unreadable. Call it before touching the target."""
    found = readability(repo, manifest, extra)
    if not found.readable:
        raise archived_error(repo, found)


@dataclasses.dataclass
class RehydrationReport:
    """What `rehydrate` asked for."""

    backup_id: str
    days: int
    tier: str
    checked: int
    requested: list[str] = dataclasses.field(default_factory=list)
    in_progress: list[str] = dataclasses.field(default_factory=list)
    readable: int = 0  # objects readable already (not archived, or rehydrated)

    @property
    def pending(self) -> int:
        """Objects not readable yet."""
        return len(self.requested) + len(self.in_progress)

    def result(self) -> dict[str, Any]:
        return {
            "id": self.backup_id,
            "days": self.days,
            "tier": self.tier,
            "checked": self.checked,
            "requested": len(self.requested),
            "in_progress": len(self.in_progress),
            "readable": self.readable,
            "pending": self.pending,
            "ready": self.pending == 0,
            "keys": (self.requested + self.in_progress)[:REPORT_KEYS],
        }


def rehydrate(
    repo: Repository,
    manifest: manifests.Manifest,
    extra: Sequence[base.ObjectInfo] = (),
    *,
    days: int = DEFAULT_REHYDRATION_DAYS,
    tier: str = DEFAULT_TIER,
) -> RehydrationReport:
    """Request a readable copy (RestoreObject) of every unreadable object of the backup
    and of `extra`. Idempotent: an object already being rehydrated is not asked again."""
    if tier not in TIERS:
        raise errors.UsageError(f"unknown retrieval tier {tier!r}: use one of {', '.join(TIERS)}")
    if days < 1:
        raise errors.UsageError(f"rehydration days must be at least 1, got {days}")
    found = readability(repo, manifest, extra)
    report = RehydrationReport(manifest.id, days, tier, found.checked)
    report.readable = found.checked - len(found.unreadable)
    for state in found.unreadable:
        if state.restoring:
            report.in_progress.append(state.key)
            continue
        answer = repo.storage.request_rehydration(state.key, days=days, tier=tier)
        if answer == base.REHYDRATION_READABLE:
            report.readable += 1
        elif answer == base.REHYDRATION_IN_PROGRESS:
            report.in_progress.append(state.key)
        else:
            report.requested.append(state.key)
    log.info(
        "backup %s: rehydration requested for %d objects (%s, %d days), %d in progress, "
        "%d readable", manifest.id, len(report.requested), tier, days,
        len(report.in_progress), report.readable,
    )
    return report
