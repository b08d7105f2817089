"""Replicas of a policy's repository in its status (pure; docs/replicas.md).

`apply_replication` folds one finished replication Job (`tonebridge-dr replicate`, its
termination message `{"replicas": [ReplicaResult...]}`) into `status.replicas`, one entry
per replica in the spec, in spec order. It is idempotent and order-tolerant: a Job that
finished before the newest one already recorded for a replica changes nothing for it.

`replica_rpo` decides what RPOMet says about the replicas when `objectives.replicaRpo`
is set: a replica's data at risk is how long ago it last held everything the primary
held (`syncedAt`), and never less than the primary's own recovery point age (a replica
cannot be ahead of its primary). A replica that never completed a run is behind.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from tonebridge_dr.api.backuppolicy import BackupPolicyStatus, ReplicaStatus
from tonebridge_dr.api.formats import format_duration
from tonebridge_dr.status.jobs import JobOutcome, parse_time

__all__ = ["ReplicaVerdict", "apply_replication", "replica_rpo", "rows_of"]

_MESSAGE_LIMIT = 300


def rows_of(outcome: JobOutcome) -> dict[str, Mapping[str, Any]]:
    """The per-replica rows of a replication Job's termination message, by url."""
    payload = outcome.payload if outcome.payload is not None else outcome.result
    rows = payload.get("replicas") if isinstance(payload, Mapping) else None
    found: dict[str, Mapping[str, Any]] = {}
    for row in rows if isinstance(rows, list) else []:
        if isinstance(row, Mapping) and isinstance(row.get("url"), str):
            found[row["url"]] = row
    return found


def _text(value: Any) -> str | None:
    return value[:_MESSAGE_LIMIT] if isinstance(value, str) and value else None


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


def _merge(old: ReplicaStatus | None, url: str, row: Mapping[str, Any] | None,
           outcome: JobOutcome) -> ReplicaStatus:
    current = old or ReplicaStatus(url=url)
    finished = outcome.finished_at
    if (finished is not None and current.last_run_time is not None
            and finished < current.last_run_time):
        return current  # older news
    updates: dict[str, Any] = {"last_run_time": finished}
    if row is None:  # the Job died before it could report (or knew nothing of this one)
        failed = outcome.state != "succeeded"
        updates["last_error"] = outcome.reason if failed else "NoResult"
        updates["message"] = _text(outcome.message) or "the replication Job reported nothing"
        return current.model_copy(update=updates)
    for field, key in (("last_backup", "last_backup"), ("last_wal_segment", "last_wal_segment")):
        if _text(row.get(key)) is not None:
            updates[field] = _text(row.get(key))
    backup_time = parse_time(row.get("last_backup_time"))
    if backup_time is not None:
        updates["last_backup_time"] = backup_time
    synced = parse_time(row.get("synced_at"))
    if synced is not None:
        updates["synced_at"] = synced
    updates["lag_seconds"] = _number(row.get("lag_seconds"))
    updates["last_error"] = _text(row.get("error"))
    updates["message"] = _text(row.get("message"))
    return current.model_copy(update=updates)


def apply_replication(status: BackupPolicyStatus | None, outcome: JobOutcome,
                      urls: Sequence[str]) -> BackupPolicyStatus:
    """`status.replicas` after replication Job `outcome`; `urls`: the policy folder of each
    replica in the spec (what the runner reports as `url`), in order. Replicas no longer
    in the spec are dropped."""
    current = status or BackupPolicyStatus()
    known = {entry.url: entry for entry in current.replicas or ()}
    rows = rows_of(outcome)
    replicas = [_merge(known.get(url), url, rows.get(url), outcome) for url in urls]
    return current.model_copy(update={"replicas": replicas or None})


@dataclasses.dataclass(frozen=True)
class ReplicaVerdict:
    """What RPOMet says about the replicas: `met` False when the worst one is behind."""

    met: bool
    message: str


def _age(now: datetime, then: datetime) -> timedelta:
    return max(now - then, timedelta(0))


def _short(age: timedelta) -> str:
    return format_duration(timedelta(seconds=int(age.total_seconds())))


def replica_rpo(status: BackupPolicyStatus, urls: Sequence[str], objective: timedelta,
                primary_age: timedelta | None, now: datetime) -> ReplicaVerdict | None:
    """The replicas against `objective` (None: no replicas). The worst replica decides."""
    if not urls:
        return None
    known = {entry.url: entry for entry in status.replicas or ()}
    worst: tuple[timedelta, str, ReplicaStatus | None] | None = None
    for url in urls:
        entry = known.get(url)
        if entry is None or entry.synced_at is None:
            reason = (f"replica {url} never held a complete copy"
                      + (f" ({entry.last_error}: {entry.message})"
                         if entry is not None and entry.last_error else ""))
            return ReplicaVerdict(False, f"{reason}, so it misses the replica RPO of "
                                         f"{_short(objective)}")
        age = max(_age(now, entry.synced_at.astimezone(UTC)), primary_age or timedelta(0))
        if worst is None or age > worst[0]:
            worst = (age, url, entry)
    assert worst is not None
    age, url, entry = worst
    described = f"the worst replica, {url}, is {_short(age)} behind"
    if entry is not None and entry.last_error:
        described += f" (last run: {entry.last_error})"
    if age > objective:
        return ReplicaVerdict(False, f"{described}, beyond the replica RPO of "
                                     f"{_short(objective)}")
    return ReplicaVerdict(True, f"{described}, within the replica RPO of {_short(objective)}")
