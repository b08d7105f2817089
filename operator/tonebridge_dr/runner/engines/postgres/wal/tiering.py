"""Archive tiers for archived WAL (see repository/tiering.py for backups).

Rule: WAL may move to an archive class only when no physical backup that stays
readable needs it. Let `cut` be the start of the WAL segment holding the start LSN of
the oldest physical base backup whose data objects are NOT all in an archive class
(run this after `archive_backups`). Segments, `.partial` and `.backup` files lying
wholly before `cut`, on any timeline, move; everything at or after `cut` stays, and
timeline history files never move (every restore reads them, and they are tiny).
Without a non-archived physical backup nothing moves: the newest WAL is the live
point-in-time window.

For a restore of a physical backup, `needed_archived_wal` gives the archived WAL that
follows the backup's start (every timeline): what `rehydrate` must bring back and what
the readability check covers. It is all archived WAL from the backup on, more than a
time target strictly needs; archived WAL only precedes the oldest non-archived
backup, so that set is bounded.

Caveat: an in-place copy sets the object's LastModified to the copy time, and PITR
planning for a `targetTime` reads a segment's LastModified as its archive time. For an
archived backup, rehydrate all WAL from the backup on (what `needed_archived_wal`
returns) before a time-targeted restore; recovery replays to the target regardless.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.postgres.wal import catalog, naming
from tonebridge_dr.runner.repository import tiering
from tonebridge_dr.runner.repository.catalog import Repository
from tonebridge_dr.runner.repository.manifest import Manifest, backup_prefix
from tonebridge_dr.runner.storage.base import ARCHIVE_CLASSES, ObjectInfo

log = logging.getLogger(__name__)


@dataclasses.dataclass
class WalArchiveReport:
    storage_class: str
    dry_run: bool
    oldest_readable_backup: str | None
    cut_segment: str | None
    moved: int = 0
    moved_bytes: int = 0
    moved_names: list[str] = dataclasses.field(default_factory=list)
    reason: str | None = None

    def result(self) -> dict[str, Any]:
        """Stable `--json` form."""
        data = dataclasses.asdict(self)
        data["moved_names_truncated"] = self.moved > len(self.moved_names)
        return data


def _segment_size(manifest: Manifest) -> int:
    return int(manifest.extra.get("wal_segment_size") or naming.DEFAULT_SEGMENT_SIZE)


def _start(manifest: Manifest) -> int:
    assert manifest.wal is not None
    return naming.parse_lsn(manifest.wal.start_lsn)


def _wal_objects(repo: Repository) -> list[tuple[naming.ArchivedKey, ObjectInfo]]:
    """Every archived segment, partial and backup file (no history files)."""
    found = []
    for obj in catalog.WalArchive(repo.storage).all_objects():
        if obj.wal.kind != naming.HISTORY:
            found.append((obj.ref, obj.info))
    return found


def _position(ref: naming.ArchivedKey, size: int) -> int:
    return (ref.wal.log << 32) + ref.wal.low * size


def archive_wal(
    repo: Repository, *, storage_class: str = tiering.DEFAULT_STORAGE_CLASS,
    dry_run: bool = False,
) -> WalArchiveReport:
    """Move WAL no readable physical backup needs to `storage_class` (module rule).
    Idempotent: objects already in that class, or in any archive class, stay."""
    objects = tiering.listing(repo)
    physical = [
        m for m in repo.list_backups(engine="postgres", method="physical") if m.wal is not None
    ]
    readable = [m for m in physical if not tiering.is_archived(m, objects)]
    report = WalArchiveReport(storage_class, dry_run, None, None)
    if not readable:
        report.reason = (
            "no physical base backup outside the archive tier: no WAL moves"
            if physical else "no physical base backup in the repository: no WAL moves"
        )
        return report
    oldest = min(readable, key=_start)
    assert oldest.wal is not None
    size = min(_segment_size(m) for m in physical)
    cut = naming.segno_of_lsn(_start(oldest), size) * size
    report.oldest_readable_backup = oldest.id
    report.cut_segment = naming.segment_name(oldest.wal.timeline, cut // size, size)
    for ref, info in _wal_objects(repo):
        if _position(ref, size) + size > cut or info.storage_class in (
            storage_class, *ARCHIVE_CLASSES
        ):
            continue
        if info.storage_class is None:
            raise errors.UsageError(
                f"{repo.url} has no storage classes: archive tiers need an s3:// repository"
            )
        if not dry_run:
            repo.storage.change_storage_class(info.key, storage_class)
        report.moved += 1
        report.moved_bytes += info.size
        if len(report.moved_names) < tiering.REPORT_KEYS:
            report.moved_names.append(ref.name)
    log.info(
        "%s %d archived WAL files (%d bytes) before %s (backup %s) to %s",
        "would move" if dry_run else "moved", report.moved, report.moved_bytes,
        report.cut_segment, oldest.id, storage_class,
    )
    return report


def needed_archived_wal(repo: Repository, manifest: Manifest) -> list[ObjectInfo]:
    """Archived-class WAL at or after the start of physical backup `manifest`, on its
    timeline and later ones (no history files). Empty for other backups.

    Lists the archive from the backup's own folder on: keys sort by timeline, then by
    position, so earlier timelines and older folders are skipped by the listing."""
    if manifest.method != "physical" or manifest.wal is None:
        return []
    size = _segment_size(manifest)
    start = naming.segno_of_lsn(_start(manifest), size) * size
    first_folder = f"{naming.WAL_PREFIX}{manifest.wal.timeline:08X}{start >> 32:08X}"
    found = []
    for info in repo.storage.list_after(naming.WAL_PREFIX, start_after=first_folder):
        ref = naming.parse_key(info.key)
        if ref is None or ref.wal.kind == naming.HISTORY:
            continue
        if info.storage_class in ARCHIVE_CLASSES and _position(ref, size) + size > start:
            found.append(info)
    return found


def restore_needs(repo: Repository, manifest: Manifest) -> list[ObjectInfo]:
    """The archived WAL a restore of `manifest` must be able to read besides its own
    objects: none unless the backup itself is (partly) archived (`archive_wal` never
    moves WAL after the start of a backup outside the archive tier)."""
    if manifest.method != "physical" or manifest.wal is None:
        return []
    objects = tiering.listing(repo, backup_prefix(manifest.id))
    if not any(
        objects[key].storage_class in ARCHIVE_CLASSES
        for key in tiering.data_keys(manifest) if key in objects
    ):
        return []
    return needed_archived_wal(repo, manifest)
