"""status.replicas from replication Jobs, and RPOMet judging the worst replica (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tonebridge_dr.api.backuppolicy import BackupPolicyStatus
from tonebridge_dr.api.common import Objectives
from tonebridge_dr.api.conditions import Reason
from tonebridge_dr.status import conditions
from tonebridge_dr.status.freshness import CatalogSummary, assess_freshness
from tonebridge_dr.status.jobs import JobOutcome
from tonebridge_dr.status.recoverypoint import BackupRecord
from tonebridge_dr.status.replicas import apply_replication

T0 = datetime(2026, 11, 29, 2, 0, 0, tzinfo=UTC)
EU = "s3://dr-eu/pg/db"
US = "s3://dr-us/pg/db"


def stamp(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def row(url: str, *, synced: datetime | None = T0, error: str | None = None,
        backup: str | None = "20261129T015900Z", lag: float | None = 0.0) -> dict[str, Any]:
    return {"url": url, "backups_copied": 1, "backups_missing": 1 if error else 0,
            "wal_copied": 3, "wal_missing": 0, "bytes_copied": 10,
            "last_backup": backup, "last_backup_time": stamp(T0 - timedelta(minutes=1)),
            "last_wal_segment": "000000010000000000000003",
            "synced_at": stamp(synced) if synced else None, "lag_seconds": lag,
            "error": error, "message": "object x is corrupt" if error else None}


def outcome(rows: list[dict[str, Any]] | None, *, finished: datetime = T0,
            state: str = "succeeded", job: str = "db-replicate-1") -> JobOutcome:
    payload = {"replicas": rows} if rows is not None else None
    return JobOutcome(state=state, job_name=job, schedule=None,  # type: ignore[arg-type]
                      started_at=finished - timedelta(minutes=1), finished_at=finished,
                      result=payload if state == "succeeded" else None,
                      reason="Completed" if state == "succeeded" else "IntegrityCheckFailed",
                      message="" if state == "succeeded" else "1 of 2 replicas not in sync",
                      payload=payload)


def test_each_replica_of_the_spec_gets_its_row_in_spec_order() -> None:
    status = apply_replication(None, outcome([row(US), row(EU, error="IntegrityCheckFailed",
                                                          synced=None, lag=600.0)],
                                             state="failed"), [EU, US])
    assert status.replicas is not None
    eu, us = status.replicas
    assert (eu.url, us.url) == (EU, US)
    assert us.synced_at == T0 and us.last_error is None and us.lag_seconds == 0.0
    assert eu.synced_at is None and eu.last_error == "IntegrityCheckFailed"
    assert eu.last_wal_segment == "000000010000000000000003" and eu.lag_seconds == 600.0


def test_a_failed_run_keeps_the_last_sync_and_older_news_changes_nothing() -> None:
    first = apply_replication(None, outcome([row(EU)]), [EU])
    later = T0 + timedelta(minutes=15)
    failed = apply_replication(first, outcome([row(EU, synced=None, error="StorageError")],
                                              finished=later, state="failed"), [EU])
    assert failed.replicas is not None
    assert failed.replicas[0].synced_at == T0 and failed.replicas[0].last_error == "StorageError"
    again = apply_replication(failed, outcome([row(EU)], finished=T0), [EU])
    assert again == failed


def test_a_job_that_reported_nothing_marks_every_replica() -> None:
    status = apply_replication(None, outcome(None, state="failed"), [EU])
    assert status.replicas is not None
    assert status.replicas[0].last_error == "IntegrityCheckFailed"
    assert apply_replication(status, outcome([]), []).replicas is None  # removed from spec


def _rpo(status: BackupPolicyStatus, now: datetime, replicas: list[str],
         rpo: str | None = "1h") -> tuple[str, str, str]:
    summary = CatalogSummary(
        newest_backup_id="20261129T015900Z", newest_backup_time=T0 - timedelta(minutes=1),
        backup_count=1,
        backups=(BackupRecord(id="20261129T015900Z", engine="postgres", method="logical",
                              finished_at=T0 - timedelta(minutes=1)),),
    )
    objectives = Objectives.model_validate({"replicaRpo": "30m", **({"rpo": rpo} if rpo else {})})
    new, _ = assess_freshness(status, summary, objectives, generation=1, now=now,
                              replicas=replicas)
    found = conditions.get_condition(new.conditions, conditions.RPO_MET)
    assert found is not None
    return found.status.value, found.reason, found.message


def test_rpo_reports_the_worst_replica() -> None:
    status = apply_replication(None, outcome([row(EU), row(US, synced=T0 - timedelta(hours=2),
                                                         error="StorageError")],
                                             state="failed"), [EU, US])
    state, reason, message = _rpo(status, T0 + timedelta(minutes=5), [EU, US])
    assert (state, reason) == ("False", Reason.REPLICA_BEHIND.value)
    assert US in message and "beyond the replica RPO of 30m" in message
    ok = apply_replication(None, outcome([row(EU), row(US)]), [EU, US])
    state, reason, message = _rpo(ok, T0 + timedelta(minutes=5), [EU, US])
    assert (state, reason) == ("True", Reason.OBJECTIVE_MET.value)
    assert "within the replica RPO of 30m" in message
    # time passes without a run that syncs: the replica falls behind
    state, reason, _ = _rpo(ok, T0 + timedelta(minutes=45), [EU, US])
    assert (state, reason) == ("False", Reason.REPLICA_BEHIND.value)


def test_a_replica_that_never_synced_misses_and_without_replicas_nothing_changes() -> None:
    state, reason, message = _rpo(BackupPolicyStatus(), T0, [EU])
    assert (state, reason) == ("False", Reason.REPLICA_BEHIND.value)
    assert "never held a complete copy" in message
    state, reason, _ = _rpo(BackupPolicyStatus(), T0, [])
    assert (state, reason) == ("True", Reason.OBJECTIVE_MET.value)
    # only replicaRpo set: an in-sync replica meets it
    ok = apply_replication(None, outcome([row(EU)]), [EU])
    state, reason, _ = _rpo(ok, T0 + timedelta(minutes=5), [EU], rpo=None)
    assert (state, reason) == ("True", Reason.OBJECTIVE_MET.value)
