"""Planning a physical restore: which base backup, timeline and archived WAL reach the target.

Plan (reads only; nothing is written when it fails). Choose the base backup
(the given one, or the newest that ends before the target: `finished_at <=
target time`, `stop_lsn <= target LSN`; for "just before transaction X" see
below), the recovery timeline (like
PostgreSQL's `recovery_target_timeline = latest`: the newest timeline whose
history files follow on from the backup's), and check that the archive holds
every segment PostgreSQL will ask for, named as it will ask (the newest
timeline of the history path that exists at that segment), from the end of
the backup's own WAL up to the target:
- time: up to the first segment archived at or after the target time (WAL
  written at that time can only be in a segment archived later);
- LSN: up to the segment holding the target LSN;
- latest: up to the end of the archive on that path (a `.partial` left by a
  stopped wal-stream counts as the end).
- xid (`recovery_target_xid`, not inclusive: recovery stops right before that
  transaction's commit): a transaction id says nothing about time, and the base
  backup must end before the commit (PostgreSQL cannot stop before the point where
  the backup became consistent). With the commit time `wal-inspect` reported
  (`--before-time`, a RestoreRequest's `beforeTime`) the backup is chosen as for a
  time target: the newest that finished at or before it, WAL checked up to it.
  Without it the oldest usable backup is taken (it precedes every transaction its
  WAL holds: always correct, only slower to replay) and the WAL is checked to the
  end of the archive. Either way, if the transaction is not in the WAL replayed,
  PostgreSQL refuses to promote ("recovery ended before configured recovery target
  was reached") and the restore fails: it never silently restores past the damage.
Unreachable targets raise RecoveryTargetUnreachable: before the oldest
usable backup, after the archive position, or with a segment missing in
between (a restore would silently stop there).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import re
from pathlib import Path
from typing import Any, Literal

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.postgres import incremental
from tonebridge_dr.runner.engines.postgres.wal import catalog, naming
from tonebridge_dr.runner.repository.catalog import Repository
from tonebridge_dr.runner.repository.manifest import Manifest, format_time

BASE_OBJECT = "base.tar"
DEFAULT_TIMEOUT = 3600.0


class RecoveryTargetUnreachable(errors.BackupNotFound):
    """No base backup plus archived WAL can reach the requested recovery target."""

    reason = "RecoveryTargetUnreachable"


@dataclasses.dataclass(frozen=True)
class Target:
    kind: Literal["time", "lsn", "latest", "xid"]
    time: dt.datetime | None = None  # for "xid": the commit time hint (may be None)
    lsn: int | None = None
    xid: int | None = None

    def describe(self) -> str:
        if self.kind == "xid" and self.xid is not None:
            when = f" (committed at {format_time(self.time)})" if self.time is not None else ""
            return f"just before transaction {self.xid}{when}"
        if self.kind == "time" and self.time is not None:
            return f"time {format_time(self.time)}"
        if self.kind == "lsn" and self.lsn is not None:
            return f"LSN {naming.format_lsn(self.lsn)}"
        return "the end of the archive"

    def result(self) -> dict[str, Any]:
        value: str | None = None
        if self.xid is not None:
            found: dict[str, Any] = {"type": "xid", "value": str(self.xid), "inclusive": False}
            if self.time is not None:
                found["before_time"] = format_time(self.time)
            return found
        if self.time is not None:
            value = format_time(self.time)
        elif self.lsn is not None:
            value = naming.format_lsn(self.lsn)
        return {"type": self.kind, "value": value}


def is_base_backup(manifest: Manifest) -> bool:
    """A physical backup a restore can start from: a `base.tar`, or a chain member."""
    return manifest.object(BASE_OBJECT) is not None or incremental.is_chain_member(manifest)


def parse_time(text: str) -> dt.datetime:
    """ISO 8601 (`2026-11-29T02:41:00Z`, `2026-11-29 02:41:00.123+09:00`); naive means UTC."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    if re.search(r"[+-]\d\d$", value):
        value += ":00"
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise errors.UsageError(
            f"invalid target time {text!r}: use ISO 8601, e.g. 2026-11-29T02:41:00Z"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC)


def parse_target(
    time_text: str | None,
    lsn_text: str | None,
    latest: bool,
    before_xid: str | int | None = None,
    before_time: str | None = None,
) -> Target:
    given = sum(1 for value in (time_text, lsn_text, before_xid) if value) + (1 if latest else 0)
    if given != 1:
        raise errors.UsageError(
            "give exactly one of --target-time, --target-lsn, --latest, --before-xid"
        )
    if before_time and not before_xid:
        raise errors.UsageError("--before-time is the commit time of --before-xid: give both")
    if before_xid:
        text = str(before_xid).strip()
        if not text.isdigit() or not 3 <= int(text) <= 0xFFFFFFFF:
            raise errors.UsageError(
                f"invalid transaction id {before_xid!r}: a number (the xid wal-inspect shows)"
            )
        hint = parse_time(before_time) if before_time else None
        return Target("xid", time=hint, xid=int(text))
    if time_text:
        return Target("time", time=parse_time(time_text))
    if lsn_text:
        return Target("lsn", lsn=naming.parse_lsn(lsn_text))
    return Target("latest")


@dataclasses.dataclass(frozen=True)
class RestoreOptions:
    data_dir: Path
    target: Target
    backup_id: str | None = None
    target_timeline: int | None = None  # None: latest
    overwrite: bool = False
    start: bool = False
    stop_after: bool = False
    run_as: str = "postgres"
    decrypt_key: Path | None = None
    passphrase: str | None = None
    keep_archiving: bool = False
    settings: dict[str, str] = dataclasses.field(default_factory=dict)
    wal_command: str | None = None
    dsn: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    log_file: Path | None = None


@dataclasses.dataclass
class Plan:
    """What a restore will use; built without writing anything."""

    backup: Manifest
    segment_size: int
    timeline: int
    path: list[naming.TimelineSpan]
    first_segment: str | None = None
    last_segment: str | None = None
    segments: int = 0
    ends_with_partial: bool = False
    last_archived_at: dt.datetime | None = None

    def result(self) -> dict[str, Any]:
        return {
            "backup_id": self.backup.id,
            "backup_finished_at": format_time(self.backup.finished_at, timespec="seconds"),
            "recovery_timeline": self.timeline,
            "wal_from": self.first_segment,
            "wal_to": self.last_segment,
            "wal_segments": self.segments,
            "ends_with_partial": self.ends_with_partial,
        }


# -- planning ------------------------------------------------------------------------------


class _Planner:
    def __init__(self, repo: Repository, options: RestoreOptions) -> None:
        self.repo = repo
        self.options = options
        self.archive = catalog.WalArchive(repo.storage)
        self.histories = self.archive.histories()
        self._paths: dict[int, list[naming.TimelineSpan]] = {}
        self._folders: dict[str, dict[str, catalog.ArchivedObject]] = {}

    def path_of(self, timeline: int) -> list[naming.TimelineSpan]:
        if timeline not in self._paths:
            if timeline == 1:
                self._paths[1] = [naming.TimelineSpan(1, 0, None)]
            else:
                obj = self.histories.get(timeline)
                if obj is None:
                    raise RecoveryTargetUnreachable(
                        f"timeline {timeline} has no history file in {self.repo.url}"
                    )
                text = self.archive.read_bytes(
                    obj, decrypt_key=self.options.decrypt_key, passphrase=self.options.passphrase
                ).decode("utf-8", "replace")
                self._paths[timeline] = naming.parse_history(timeline, text)
        return self._paths[timeline]

    def recovery_timeline(self, backup_timeline: int) -> int:
        if self.options.target_timeline is not None:
            return self.options.target_timeline
        newest = backup_timeline
        while newest + 1 in self.histories:  # PostgreSQL's findNewestTimeLine
            newest += 1
        return newest

    def on_path(self, backup: Manifest, path: list[naming.TimelineSpan]) -> bool:
        assert backup.wal is not None
        start = naming.parse_lsn(backup.wal.start_lsn)
        return any(
            span.timeline == backup.wal.timeline
            and span.begin <= start
            and (span.end is None or start < span.end)
            for span in path
        )

    def candidates(self) -> list[Manifest]:
        found = [
            m
            for m in self.repo.list_backups(engine="postgres", method="physical")
            if m.wal is not None and is_base_backup(m)
        ]
        if not found:
            raise RecoveryTargetUnreachable(
                f"no physical PostgreSQL base backup in {self.repo.url}: take one with "
                "`tonebridge-dr backup postgres --method physical`"
            )
        return found

    def choose(self) -> tuple[Manifest, int, list[naming.TimelineSpan]]:
        target = self.options.target
        if self.options.backup_id is not None:
            backup = self.repo.get(self.options.backup_id)
            if backup.wal is None or not is_base_backup(backup):
                raise errors.UsageError(f"backup {backup.id} is not a physical base backup")
            timeline = self.recovery_timeline(backup.wal.timeline)
            path = self.path_of(timeline)
            if not self.on_path(backup, path):
                raise RecoveryTargetUnreachable(
                    f"backup {backup.id} (timeline {backup.wal.timeline}) is not on the history "
                    f"of timeline {timeline}"
                )
            if not self._before_target(backup):
                raise RecoveryTargetUnreachable(
                    f"backup {backup.id} ends after the target {target.describe()}"
                )
            return backup, timeline, path
        backups = self.candidates()
        off_path = 0
        # "Just before transaction X" without its commit time: the oldest backup precedes it.
        oldest_first = target.kind == "xid" and target.time is None
        for backup in backups if oldest_first else reversed(backups):
            assert backup.wal is not None
            timeline = self.recovery_timeline(backup.wal.timeline)
            path = self.path_of(timeline)
            if not self.on_path(backup, path):
                off_path += 1
                continue
            if self._before_target(backup):
                return backup, timeline, path
        if off_path == len(backups):
            raise RecoveryTargetUnreachable(
                "no base backup lies on the history of the recovery timeline (like PostgreSQL, "
                "`latest` follows the newest timeline whose history files are archived); pass "
                "--target-timeline to follow an older one"
            )
        oldest = backups[0]
        assert oldest.wal is not None
        end = (
            format_time(oldest.finished_at, timespec="seconds")
            if target.time is not None
            else oldest.wal.stop_lsn
        )
        raise RecoveryTargetUnreachable(
            f"the target {target.describe()} is before the end of the oldest base backup "
            f"({oldest.id}, consistent from {end})"
        )

    def _before_target(self, backup: Manifest) -> bool:
        assert backup.wal is not None
        target = self.options.target
        if target.kind in ("time", "xid") and target.time is not None:
            return backup.finished_at <= target.time
        if target.kind == "lsn":
            assert target.lsn is not None
            return naming.parse_lsn(backup.wal.stop_lsn) <= target.lsn
        return True

    # -- WAL coverage ---------------------------------------------------------------------
    def _lookup(self, name: str) -> catalog.ArchivedObject | None:
        folder = name[:16]
        if folder not in self._folders:
            tli, log_no = int(folder[:8], 16), int(folder[8:], 16)
            self._folders[folder] = {obj.name: obj for obj in self.archive.folder(tli, log_no)}
        return self._folders[folder].get(name)

    def plan(self) -> Plan:
        backup, timeline, path = self.choose()
        assert backup.wal is not None
        size = int(backup.extra.get("wal_segment_size") or naming.DEFAULT_SEGMENT_SIZE)
        naming.check_segment_size(size)
        plan = Plan(backup=backup, segment_size=size, timeline=timeline, path=path)
        start = naming.segno_of_lsn(naming.parse_lsn(backup.wal.start_lsn), size)
        stop = naming.segno_of_lsn(max(naming.parse_lsn(backup.wal.stop_lsn) - 1, 0), size)
        # pg_basebackup -X fetch/stream puts the backup's own WAL into the data directory.
        included = backup.extra.get("wal_method") in ("fetch", "stream")
        segno = stop + 1 if included else start

        def name_for(number: int) -> str:
            for span in reversed(path):
                if naming.segno_of_lsn(span.begin, size) <= number:
                    return naming.segment_name(span.timeline, number, size)
            return naming.segment_name(path[0].timeline, number, size)

        target = self.options.target
        target_segno = naming.segno_of_lsn(target.lsn, size) if target.lsn is not None else None
        to_end = target.kind == "latest" or (target.kind == "xid" and target.time is None)
        reached = to_end or (target_segno is not None and target_segno < segno)
        while not reached:
            name = name_for(segno)
            obj = self._lookup(name)
            if obj is None:
                partial = self._lookup(f"{name}.partial")
                if partial is not None and not self._later_on_path(path, segno, size):
                    self._take(plan, partial, partial=True)
                    reached = self._reaches(partial, target, target_segno, segno)
                    break
                self._missing(path, segno, size, name, plan)
                break
            self._take(plan, obj, partial=False)
            reached = self._reaches(obj, target, target_segno, segno)
            segno += 1
        if not reached:  # the archive ended with a .partial short of the target
            self._missing(path, segno + 1, size, name_for(segno + 1), plan)
        if to_end:
            self._walk_to_end(plan, path, segno, size, name_for)
        return plan

    def _take(self, plan: Plan, obj: catalog.ArchivedObject, *, partial: bool) -> None:
        plan.first_segment = plan.first_segment or obj.wal.segment
        plan.last_segment = obj.wal.segment
        plan.segments += 1
        plan.ends_with_partial = partial
        plan.last_archived_at = obj.archived_at

    def _reaches(
        self,
        obj: catalog.ArchivedObject,
        target: Target,
        target_segno: int | None,
        segno: int,
    ) -> bool:
        if target.time is not None:  # a time target, or the commit time of an xid target
            # Storage times have whole seconds (S3 Last-Modified): an object stored in the
            # target's second may have been stored after it.
            return obj.archived_at >= target.time.replace(microsecond=0)
        return target_segno is not None and segno >= target_segno

    def _walk_to_end(
        self, plan: Plan, path: list[naming.TimelineSpan], segno: int, size: int, name_for: Any
    ) -> None:
        while True:
            name = name_for(segno)
            obj = self._lookup(name)
            if obj is None:
                partial = self._lookup(f"{name}.partial")
                later = self._later_on_path(path, segno, size)
                if partial is not None and not later:
                    self._take(plan, partial, partial=True)
                    return
                if later:
                    raise RecoveryTargetUnreachable(
                        f"WAL segment {name} is missing from the archive but later WAL exists: "
                        "a restore to the latest point would stop there"
                    )
                return
            self._take(plan, obj, partial=False)
            segno += 1

    def _later_on_path(self, path: list[naming.TimelineSpan], segno: int, size: int) -> bool:
        """True when the archive holds a complete segment after `segno` on the path."""
        for span in reversed(path):
            upto = None
            if span.end is not None:
                upto = naming.segment_name(
                    span.timeline, naming.segno_of_lsn(max(span.end - 1, 0), size), size
                )
            newest, _ = self.archive.newest_on_timeline(span.timeline, upto=upto)
            if newest is not None:
                return newest.wal.segno(size) > segno
        return False

    def _missing(
        self, path: list[naming.TimelineSpan], segno: int, size: int, name: str, plan: Plan
    ) -> None:
        target = self.options.target
        if self._later_on_path(path, segno, size):
            raise RecoveryTargetUnreachable(
                f"WAL segment {name} is missing from the archive {self.repo.url}: "
                f"the target {target.describe()} cannot be reached from backup {plan.backup.id}"
            )
        last = plan.last_segment or "none after the backup"
        when = (
            f" archived at {format_time(plan.last_archived_at, timespec='seconds')}"
            if plan.last_archived_at
            else ""
        )
        raise RecoveryTargetUnreachable(
            f"the target {target.describe()} is after the newest archived WAL "
            f"(last segment {last}{when}): use --latest (a RestoreRequest: latest: true) or "
            "an earlier target; WAL still on the server is archived within its "
            "archive_timeout (`tonebridge-dr wal-status` shows the newest archived segment)"
        )


def plan_restore(repo: Repository, options: RestoreOptions) -> Plan:
    """Choose backup, timeline and WAL for `options.target`; reads only."""
    return _Planner(repo, options).plan()
