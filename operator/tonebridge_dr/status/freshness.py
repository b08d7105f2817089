"""Freshness of a policy's backups, from the repository catalog (the source of truth).

`assess_freshness` is called on every monitoring tick with a `CatalogSummary` read by
the controller. It writes the recovery point, its age, the catalog counters and two
conditions:

* RPOMet: True when the newest recovery point (status/recoverypoint.py: the newest
  backup of the whole database, or the newest archived WAL that follows a retained
  physical base backup without a gap) is younger than `objectives.rpo`; False when
  older, or when the repository holds only table-subset dumps (NoFullRecoveryPoint);
  Unknown when there is no objective, no backup yet, or the repository cannot be read.
  The message names the recovery point it used.
* BackupStale (for alerting): True when the newest complete backup is older than
  `objectives.staleAfter` (default: rpo, else 25h); False when fresh; Unknown as above.

It returns a `FreshnessChange` only when RPOMet's status value changes, so the
controller notifies once per change and not on every tick. The first assessment of a
policy is not a change unless it finds the objective missed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from tonebridge_dr.api.backuppolicy import (
    BackupPolicyStatus,
    BackupSummary,
    TableBackupSummary,
    WalStatus,
)
from tonebridge_dr.api.common import Objectives
from tonebridge_dr.api.conditions import Condition, Reason
from tonebridge_dr.api.formats import format_duration
from tonebridge_dr.status import conditions
from tonebridge_dr.status.backuppolicy import backup_method
from tonebridge_dr.status.dataatrisk import ArchiverState, DataAtRisk, data_at_risk
from tonebridge_dr.status.recoverypoint import (
    BackupRecord,
    RecoveryPoint,
    WalChainEnd,
    find_recovery_point,
    newest_table_backup,
)
from tonebridge_dr.status.replicas import replica_rpo

__all__ = [
    "DEFAULT_STALE_AFTER",
    "CatalogSummary",
    "FreshnessChange",
    "assess_freshness",
    "find_recovery_point_of",
    "recovery_point",
    "stale_after",
]

DEFAULT_STALE_AFTER = timedelta(hours=25)
"""BackupStale threshold without objectives: a daily backup plus an hour of slack."""


@dataclass(frozen=True)
class CatalogSummary:
    """What the controller read from the repository catalog.

    `error` explains why the catalog could not be read (unreachable endpoint, denied,
    missing bucket); the other fields are then ignored.
    """

    newest_backup_id: str | None = None
    newest_backup_time: datetime | None = None
    backup_count: int = 0
    total_size_bytes: int = 0
    newest_wal_time: datetime | None = None
    newest_wal_segment: str | None = None
    error: str | None = None
    newest_backup_method: str | None = None
    """Method of the newest backup as the manifest says (`logical`, `physical`, `rdb`...);
    lets `lastSuccessfulBackup` follow the catalog."""
    newest_backup_engine: str | None = None
    """Engine of the newest backup (`postgres`, `redis`)."""
    newest_backup_size_bytes: int | None = None
    """Stored size of the newest backup."""
    newest_backup_objects: int | None = None
    """Kubernetes backups: objects in the newest backup."""
    backups: tuple[BackupRecord, ...] = ()
    """Every complete backup, reduced to what decides recovery points."""
    wal_chain: WalChainEnd | None = None
    """The newest archived WAL reachable without a gap from the newest physical base
    backup (None: no WAL archiving, no physical backup, or not even its first segment)."""


@dataclass(frozen=True)
class FreshnessChange:
    """RPOMet changed: `old_state` -> `new_state` ("True" / "False" / "Unknown"; old is None
    on the first assessment). `message` is the new condition's message."""

    old_state: str | None
    new_state: str
    message: str
    reason: str = ""


def _at_risk(found: RecoveryPoint, archiver: ArchiverState | None,
             now: datetime) -> DataAtRisk | None:
    """Data at risk, when the recovery point is WAL and the server's archiver agrees with
    the catalog (its last archived segment is not past the end of the gap-free chain: a
    gap, or a catalog that lags, keeps the catalog's own, older answer)."""
    if archiver is None or found.source != "wal" or found.segment is None:
        return None
    last = archiver.last_archived_wal
    if last is None or len(last) != len(found.segment[:24]) or last > found.segment[:24]:
        return None
    return data_at_risk(archiver, now)


def find_recovery_point_of(summary: CatalogSummary) -> RecoveryPoint | None:
    """The honest recovery point of the catalog (status/recoverypoint.py); None without a
    backup of the whole database or on a catalog error."""
    if summary.error is not None:
        return None
    return find_recovery_point(summary.backups, summary.wal_chain)


def recovery_point(summary: CatalogSummary) -> datetime | None:
    """The newest point in time to which the whole database can be restored."""
    point = find_recovery_point_of(summary)
    return point.time if point is not None else None


MAX_TABLES = 64
"""Table names `lastTableBackup` lists (the API's limit)."""


def _table_dumps(backups: tuple[BackupRecord, ...]) -> str:
    """`a, b`: the tables of every table dump in the catalog (at most 8 named)."""
    tables = sorted({table for b in backups for table in b.tables or ()})
    shown = ", ".join(tables[:8])
    return shown + (f" and {len(tables) - 8} more" if len(tables) > 8 else "")


def stale_after(objectives: Objectives | None) -> timedelta:
    """Age at which the newest backup counts as stale."""
    if objectives is not None:
        if objectives.stale_after is not None:
            return objectives.stale_after
        if objectives.rpo is not None:
            return objectives.rpo
    return DEFAULT_STALE_AFTER


def _age(now: datetime, then: datetime) -> timedelta:
    return max(now - then, timedelta(0))  # clock skew never gives a negative age


def _text(age: timedelta) -> str:
    return format_duration(timedelta(seconds=int(age.total_seconds())))


def _time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _catalog_updates(current: BackupPolicyStatus, summary: CatalogSummary) -> dict[str, Any]:
    updates: dict[str, Any] = {
        "backup_count": max(summary.backup_count, 0),
        "total_size_bytes": max(summary.total_size_bytes, 0),
    }
    if summary.newest_wal_time is not None or summary.newest_wal_segment is not None:
        wal = current.wal or WalStatus()
        updates["wal"] = wal.model_copy(
            update={
                "last_archived_segment": summary.newest_wal_segment,
                "last_archived_time": summary.newest_wal_time,
            }
        )
    table_backup = newest_table_backup(summary.backups)
    updates["last_table_backup"] = None  # the catalog's truth: gone once pruned
    if table_backup is not None:
        updates["last_table_backup"] = TableBackupSummary(
            id=table_backup.id,
            schedule=table_backup.schedule,
            time=table_backup.finished_at,
            tables=sorted(table_backup.tables or ())[:MAX_TABLES],
        )
    newest_id, newest_time = summary.newest_backup_id, summary.newest_backup_time
    if newest_id and newest_time is not None:
        known = current.last_successful_backup
        if known is None or (known.id != newest_id and newest_time >= known.time):
            method = backup_method(summary.newest_backup_method, summary.newest_backup_engine)
            if method is None and known is not None:
                method = known.method
            if method is not None:
                updates["last_successful_backup"] = BackupSummary(
                    id=newest_id,
                    method=method,
                    time=newest_time,
                    size_bytes=summary.newest_backup_size_bytes,
                    objects=summary.newest_backup_objects,
                )
    return updates


def assess_freshness(
    status: BackupPolicyStatus | None,
    summary: CatalogSummary,
    objectives: Objectives | None,
    *,
    generation: int | None,
    now: datetime,
    archiver: ArchiverState | None = None,
    created_at: datetime | None = None,
    replicas: Sequence[str] = (),
) -> tuple[BackupPolicyStatus, FreshnessChange | None]:
    """Status with recoveryPoint, rpoAgeSeconds, catalog counters, RPOMet and BackupStale
    set from `summary` at `now`; plus the RPOMet change, if any (see module docstring).

    `replicas` (the policy folder of each spec.repository.replicas entry): with
    `objectives.replicaRpo` RPOMet also judges the worst replica (status/replicas.py):
    False, reason ReplicaBehind, when it is further behind than that.

    Pure and deterministic in its arguments; on a catalog error the last known recovery
    point and counters are kept and both conditions become Unknown.

    `archiver` (an `archive_command` policy whose database answered): when the recovery
    point is WAL, RPO is the data at risk (status/dataatrisk.py) instead of the age of the
    newest archived segment, so an idle, fully archived server meets its RPO.
    `created_at` (the policy's creation): a policy without any backup misses its RPO once
    it is older than the RPO (reason NoBackupYet) instead of staying Unknown.
    """
    current = status or BackupPolicyStatus()
    old = conditions.get_condition(current.conditions, conditions.RPO_MET)
    updates: dict[str, Any] = {}
    rpo_status: conditions.StatusValue
    stale_status: conditions.StatusValue
    rpo = objectives.rpo if objectives is not None else None

    if summary.error is not None:
        reason = Reason.REPOSITORY_UNREACHABLE.value
        rpo_status, rpo_message = "Unknown", f"cannot read the repository: {summary.error}"
        stale_status, stale_message = "Unknown", rpo_message
        stale_reason = reason
    else:
        updates.update(_catalog_updates(current, summary))
        found = find_recovery_point_of(summary)
        point = found.time if found is not None else None
        updates["recovery_point"] = point
        oldest = min((b.finished_at for b in summary.backups if b.is_full), default=None)
        updates["recovery_window_start"] = oldest if point is not None else None
        updates["rpo_age_seconds"] = (
            float(int(_age(now, point).total_seconds())) if point is not None else None
        )
        if found is None and newest_table_backup(summary.backups) is not None:
            rpo_message = (
                f"no full recovery point: only table dumps of {_table_dumps(summary.backups)}"
            )
            if rpo is None:
                reason, rpo_status = Reason.NO_OBJECTIVE.value, "Unknown"
                rpo_message += "; no objectives.rpo is set"
            else:
                reason, rpo_status = Reason.NO_FULL_RECOVERY_POINT.value, "False"
                rpo_message += f", which never meet the RPO of {_text(rpo)}"
        elif found is None and rpo is not None and created_at is not None and (
            _age(now, created_at) > rpo
        ):
            reason, rpo_status = Reason.NO_BACKUP_YET.value, "False"
            rpo_message = (f"no backup yet, {_text(_age(now, created_at))} after the policy was "
                           f"created: beyond the RPO of {_text(rpo)}")
        elif found is None:
            reason = Reason.NO_BACKUPS.value
            rpo_status = "Unknown"
            rpo_message = "the repository has no complete backup yet"
        else:
            age = _age(now, found.time)
            described = f"the newest recovery point, {found.describe()}, is {_text(age)} old"
            risk = _at_risk(found, archiver, now)
            if risk is not None:
                age = risk.age
                described = f"{risk.sentence}; the newest recovery point is {found.describe()}"
                if risk.age > timedelta(0):
                    described += f"; {_text(risk.age)} of changes at risk"
            if rpo is None:
                reason, rpo_status = Reason.NO_OBJECTIVE.value, "Unknown"
                rpo_message = f"{described}; no objectives.rpo is set"
            elif age <= rpo:
                reason, rpo_status = Reason.OBJECTIVE_MET.value, "True"
                rpo_message = f"{described}, within the RPO of {_text(rpo)}"
            else:
                reason, rpo_status = Reason.OBJECTIVE_MISSED.value, "False"
                rpo_message = f"{described}, beyond the RPO of {_text(rpo)}"
        replica_objective = objectives.replica_rpo if objectives is not None else None
        if replica_objective is not None:
            primary_age = _age(now, found.time) if found is not None else None
            verdict = replica_rpo(current, replicas, replica_objective, primary_age, now)
            if verdict is not None and not verdict.met and rpo_status != "False":
                reason, rpo_status = Reason.REPLICA_BEHIND.value, "False"
                rpo_message = f"{verdict.message}; {rpo_message}"
            elif verdict is not None:
                if verdict.met and reason == Reason.NO_OBJECTIVE.value and found is not None:
                    reason, rpo_status = Reason.OBJECTIVE_MET.value, "True"
                rpo_message = f"{rpo_message}; {verdict.message}"

        backup_time = summary.newest_backup_time
        if backup_time is None:
            stale_reason, stale_status = Reason.NO_BACKUPS.value, "Unknown"
            stale_message = "the repository has no complete backup yet"
        else:
            limit = stale_after(objectives)
            age = _age(now, backup_time)
            name = f" {summary.newest_backup_id}" if summary.newest_backup_id else ""
            described = f"the newest backup{name} ({_time(backup_time)}) is {_text(age)} old"
            if age > limit:
                stale_reason, stale_status = Reason.BACKUP_TOO_OLD.value, "True"
                stale_message = f"{described}, older than {_text(limit)}"
            else:
                stale_reason, stale_status = Reason.BACKUP_FRESH.value, "False"
                stale_message = f"{described}, within {_text(limit)}"

    updated: list[Condition] = conditions.set_condition(
        current.conditions,
        type=conditions.RPO_MET,
        status=rpo_status,
        reason=reason,
        message=rpo_message,
        observed_generation=generation,
        now=now,
    )
    updated = conditions.set_condition(
        updated,
        type=conditions.BACKUP_STALE,
        status=stale_status,
        reason=stale_reason,
        message=stale_message,
        observed_generation=generation,
        now=now,
    )
    updates["conditions"] = updated
    new_status = current.model_copy(update=updates)

    change: FreshnessChange | None = None
    old_state = old.status.value if old is not None else None
    if old_state != rpo_status and (old_state is not None or rpo_status == "False"):
        change = FreshnessChange(old_state, rpo_status, rpo_message, reason)
    return new_status, change
