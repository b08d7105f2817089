"""Pruning archived WAL that no retained base backup needs.

Rule: let `cut` be the start of the WAL segment holding the start LSN of the
oldest physical base backup in the repository (run this after pruning base
backups, so "in the repository" means "retained"). Every archived segment,
`.partial` and `.backup` file lying wholly before `cut` is deleted, whatever
its timeline (a backup never needs WAL from before its own start, on any
timeline). Everything at or after `cut` is kept, on every timeline; timeline
history files are always kept. Without any physical base backup nothing is
deleted (archiving may have started before the first backup).

This is conservative for abandoned timelines: their WAL after `cut` stays
until a newer oldest backup moves `cut` past it. Cost: one LIST of the backup
catalog, then per timeline a listing of only the folders up to `cut` (listing
stops at the first folder after it), then batched deletes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from typing import Any

from tonebridge_dr.runner.engines.postgres.wal import catalog, naming
from tonebridge_dr.runner.repository.catalog import Repository

log = logging.getLogger(__name__)

#: How many deleted file names the report lists (the counts are always complete).
REPORT_NAMES = 200


@dataclasses.dataclass
class WalPruneReport:
    dry_run: bool
    oldest_backup: str | None
    cut_segment: str | None  # first segment kept on the oldest backup's timeline
    deleted: int = 0
    deleted_bytes: int = 0
    deleted_names: list[str] = dataclasses.field(default_factory=list)
    reason: str | None = None
    locked: int = 0  # files old enough to go that S3 Object Lock still retains: kept

    def result(self) -> dict[str, Any]:
        """Stable `--json` form."""
        data = dataclasses.asdict(self)
        data["deleted_names_truncated"] = self.deleted > len(self.deleted_names)
        return data


def prune_wal(repo: Repository, *, dry_run: bool = False) -> WalPruneReport:
    """Delete (or with `dry_run` only report) WAL older than every base backup's start."""
    backups = [
        m for m in repo.list_backups(engine="postgres", method="physical") if m.wal is not None
    ]
    if not backups:
        return WalPruneReport(
            dry_run=dry_run,
            oldest_backup=None,
            cut_segment=None,
            reason="no physical base backup in the repository: no WAL is pruned",
        )
    sizes = {int(m.extra.get("wal_segment_size") or naming.DEFAULT_SEGMENT_SIZE) for m in backups}
    size = min(sizes)
    starts = []
    for manifest in backups:
        assert manifest.wal is not None
        starts.append((naming.parse_lsn(manifest.wal.start_lsn), manifest))
    start_lsn, oldest = min(starts, key=lambda pair: pair[0])
    assert oldest.wal is not None
    cut = naming.segno_of_lsn(start_lsn, size) * size
    cut_segment = naming.segment_name(oldest.wal.timeline, cut // size, size)
    report = WalPruneReport(dry_run=dry_run, oldest_backup=oldest.id, cut_segment=cut_segment)
    archive = catalog.WalArchive(repo.storage)
    doomed: list[catalog.ArchivedObject] = []
    cut_log = cut >> 32
    for timeline in archive.segment_timelines():
        prefix = f"{naming.WAL_PREFIX}{timeline:08X}"
        for info in repo.storage.list_after(prefix):
            ref = naming.parse_key(info.key)
            if ref is None:
                continue
            if ref.wal.log > cut_log:
                break  # keys sort by WAL position within a timeline: nothing older follows
            position = (ref.wal.log << 32) + ref.wal.low * size
            if position + size <= cut:
                doomed.append(catalog.ArchivedObject(ref, info))
    if doomed:  # S3 Object Lock: what is still retained stays, and is counted
        cutoff = dt.datetime.now(dt.UTC)
        retained = repo.storage.retained_until(obj.key for obj in doomed)
        held = {key for key, until in retained.items() if until > cutoff}
        report.locked = len(held)
        doomed = [obj for obj in doomed if obj.key not in held]
    report.deleted = len(doomed)
    report.deleted_bytes = sum(obj.info.size for obj in doomed)
    report.deleted_names = [obj.name for obj in doomed[:REPORT_NAMES]]
    if doomed and not dry_run:
        repo.storage.delete_many(obj.key for obj in doomed)
    log.info(
        "%s %d archived WAL files (%d bytes) before %s, the start of backup %s%s",
        "would delete" if dry_run else "deleted",
        report.deleted,
        report.deleted_bytes,
        cut_segment,
        oldest.id,
        f"; {report.locked} more are under S3 Object Lock" if report.locked else "",
    )
    return report
