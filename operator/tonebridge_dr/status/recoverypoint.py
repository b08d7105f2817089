"""Which point in time a policy can really restore: the honest recovery point (pure).

A recovery point restores the *whole* database or instance:

* a backup of the whole target: a PostgreSQL logical backup of the whole database, a
  PostgreSQL physical base backup, a Redis snapshot (any backup that is not a table
  subset), at the time it finished;
* archived WAL that follows a retained physical base backup without a gap: from the
  first segment that backup needs from the archive, on the backup's timeline,
  contiguous segments (a `.partial` counts only as the last one); the first missing
  segment ends the chain, and WAL on another timeline never extends it.

A dump of a few hot tables restores those tables only: it is reported on its own
(`newest_table_backup`) and never satisfies the RPO. WAL without a physical base
backup has nothing to be replayed onto and counts for nothing.

The controller reads the catalog (controller/core/catalog.py) and hands these
functions plain records; `wal_chain_end` consumes the archive listing lazily and stops
at the first gap, so the caller lists only what the chain needs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

__all__ = [
    "BackupRecord",
    "RecoveryPoint",
    "WalChainEnd",
    "WalObject",
    "WalStart",
    "find_recovery_point",
    "newest_full_backup",
    "newest_table_backup",
    "wal_base",
    "wal_chain_end",
]


@dataclass(frozen=True)
class WalStart:
    """Where the WAL chain of a physical base backup begins."""

    timeline: int
    """The backup's timeline: only segments of this timeline extend the chain."""
    first_segno: int
    """Position (XLogSegNo) of the first segment the archive must hold: the backup's
    start segment, or the one after its stop segment when the backup carries its own WAL."""
    segment_size: int = 16 * 1024 * 1024
    """The server's wal_segment_size (positions and names of segments depend on it)."""
    stop_segno: int | None = None
    """Position of the backup's own last segment (the one holding its stop position);
    None: the one before `first_segno` (the backup carries its own WAL)."""

    @property
    def last_backup_segno(self) -> int:
        return self.first_segno - 1 if self.stop_segno is None else self.stop_segno


@dataclass(frozen=True)
class BackupRecord:
    """One complete backup of the catalog, as far as recovery points care."""

    id: str
    engine: str
    method: str
    finished_at: datetime
    tables: tuple[str, ...] | None = None
    """None: the backup restores the whole database / instance. A tuple: a table subset
    (hot-table dump) that restores only these tables."""
    schedule: str | None = None
    wal: WalStart | None = None
    """Set for PostgreSQL physical base backups (archived WAL can follow them)."""

    @property
    def is_full(self) -> bool:
        return self.tables is None

    def describe(self) -> str:
        """`full logical backup X`, `physical backup X`, `Redis snapshot X`..."""
        if self.engine == "redis":
            return f"Redis snapshot {self.id}"
        if self.method == "logical":
            return f"full logical backup {self.id}"
        if self.method == "physical":
            return f"physical backup {self.id}"
        return f"{self.engine} {self.method} backup {self.id}"


@dataclass(frozen=True)
class WalObject:
    """One archived WAL segment or `.partial` (other archive files are not passed in)."""

    timeline: int
    segno: int
    name: str
    archived_at: datetime
    partial: bool = False


@dataclass(frozen=True)
class WalChainEnd:
    """The newest archived WAL reachable from a physical base backup without a gap."""

    backup_id: str
    segment: str
    """Name of the last segment of the chain (`....partial` when it ends with one)."""
    time: datetime
    """When that segment was archived; never before the base backup finished once the
    chain reaches past the backup's own WAL (see `wal_chain_end`)."""
    extends_backup: bool = True
    """Whether the chain reaches past the backup's own last segment (then it restores
    everything the backup does and more)."""


@dataclass(frozen=True)
class RecoveryPoint:
    """The newest point in time the whole database / instance can be restored to."""

    time: datetime
    source: Literal["backup", "wal"]
    backup: BackupRecord
    """The backup itself, or the physical base backup the WAL follows."""
    segment: str | None = None

    def describe(self) -> str:
        """What the RPOMet message names: `full logical backup X at T`, `WAL up to segment S
        at T after physical backup X`."""
        when = _time(self.time)
        if self.source == "wal":
            return f"WAL up to segment {self.segment} at {when} after physical backup " \
                   f"{self.backup.id}"
        return f"{self.backup.describe()} at {when}"


def _time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _newest(records: Iterable[BackupRecord]) -> BackupRecord | None:
    return max(records, key=lambda r: (r.finished_at, r.id), default=None)


def newest_full_backup(backups: Iterable[BackupRecord]) -> BackupRecord | None:
    """The newest backup that restores the whole database / instance."""
    return _newest(b for b in backups if b.is_full)


def newest_table_backup(backups: Iterable[BackupRecord]) -> BackupRecord | None:
    """The newest table-subset backup (hot-table dump)."""
    return _newest(b for b in backups if not b.is_full)


def wal_base(backups: Iterable[BackupRecord]) -> BackupRecord | None:
    """The physical base backup whose WAL chain decides the WAL recovery point: the newest.

    An older base backup on the same timeline cannot reach further: its chain either
    passes through the newest one's start (and then ends where that one's ends) or stops
    before it (and then before that backup's own end).
    """
    return _newest(b for b in backups if b.is_full and b.wal is not None)


def wal_chain_end(base: BackupRecord, objects: Iterable[WalObject]) -> WalChainEnd | None:
    """The last WAL of `base`'s chain; None when the archive lacks its first segment.

    `objects` must come in archive key order (by position on a timeline, a segment
    before its `.partial`); it is consumed lazily and abandoned at the first gap.
    Objects of other timelines and before the first needed segment are skipped.
    A `.partial` ends the chain only when no later segment exists (otherwise that
    segment is missing, like a restore would find).

    The time of a chain that reaches past the backup's own last segment is never before
    the backup finished: that WAL restores everything the backup does and more, while the
    archive time an object store reports has whole seconds (S3 LastModified) and comes
    from another clock, so a segment archived right after the backup can look older.
    """
    if base.wal is None:
        return None
    timeline, expected = base.wal.timeline, base.wal.first_segno
    last: WalObject | None = None
    partial: WalObject | None = None
    for obj in objects:
        if obj.timeline != timeline or obj.segno < expected:
            continue  # another timeline, or WAL the chain already has / does not need
        if obj.partial:
            if obj.segno > expected:
                break  # a gap before it
            if partial is None or obj.archived_at > partial.archived_at:
                partial = obj
            continue
        if obj.segno > expected:
            partial = None  # later WAL exists: the segment of the .partial is missing
            break
        last, partial = obj, None  # a complete segment supersedes its .partial
        expected += 1
    end = partial or last
    if end is None:
        return None
    extends = end.segno > base.wal.last_backup_segno
    time = max(end.archived_at, base.finished_at) if extends else end.archived_at
    return WalChainEnd(backup_id=base.id, segment=end.name, time=time, extends_backup=extends)


def find_recovery_point(
    backups: Sequence[BackupRecord], chain: WalChainEnd | None
) -> RecoveryPoint | None:
    """The newer of the newest full backup and the end of the WAL chain; None without a
    full backup. A tie goes to the chain when it reaches past its backup's own WAL (then
    the server's archiver can tell what is at risk after it), else to the backup.
    `chain` counts only when the physical base backup it follows is among `backups`
    (retained)."""
    full = newest_full_backup(backups)
    point = RecoveryPoint(full.finished_at, "backup", full) if full is not None else None
    if chain is not None:
        base = next((b for b in backups if b.id == chain.backup_id and b.is_full
                     and b.wal is not None), None)
        if base is not None and (
            point is None or chain.time > point.time
            or (chain.time == point.time and chain.extends_backup)
        ):
            point = RecoveryPoint(chain.time, "wal", base, chain.segment)
    return point
