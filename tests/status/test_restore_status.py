"""Pure RestoreRequest status transitions: phases, conditions, what was restored, messages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tonebridge_dr.api.restorerequest import RestorePhase, RestoreRequestStatus
from tonebridge_dr.status import conditions
from tonebridge_dr.status import restorerequest as rr_status
from tonebridge_dr.status.jobs import JobOutcome, job_outcome

T0 = datetime(2024, 1, 15, 1, 0, tzinfo=UTC)
DATABASE = rr_status.TargetInfo(
    kind=rr_status.TargetKind.DATABASE,
    description='the database of Secret "db-restore"',
    repository_url="s3://backups/pg/tonebridge-db",
)
VOLUME = rr_status.TargetInfo(
    kind=rr_status.TargetKind.VOLUME, description='volume "pg-data"',
    repository_url="s3://backups/pg/tonebridge-db",
)


def outcome(state: str, *, reason: str = "", message: str = "",
            result: dict[str, Any] | None = None, minutes: int = 12) -> JobOutcome:
    return JobOutcome(
        state=state,  # type: ignore[arg-type]
        job_name="rr-restore",
        schedule=None,
        started_at=T0 + timedelta(seconds=5),
        finished_at=None if state == "running" else T0 + timedelta(minutes=minutes, seconds=30),
        result=result,
        reason=reason or {"running": "Running", "succeeded": "Succeeded"}.get(state, "JobFailed"),
        message=message,
    )


def running() -> RestoreRequestStatus:
    return rr_status.job_created(None, job_name="rr-restore", source="tonebridge-db",
                                 generation=1, now=T0)


def condition(status: RestoreRequestStatus, kind: str) -> tuple[str, str, str]:
    found = conditions.get_condition(status.conditions, kind)
    assert found is not None, kind
    return found.status.value, found.reason, found.message


def test_created_job_means_running_and_ready() -> None:
    status = running()
    assert status.phase == RestorePhase.RUNNING
    assert status.job_name == "rr-restore"
    assert status.started_at == T0
    assert status.source == "tonebridge-db"
    assert condition(status, "Ready")[:2] == ("True", "JobCreated")
    assert condition(status, "Complete")[0] == "False"
    assert condition(status, "Failed")[0] == "False"
    again = rr_status.job_created(status, job_name="rr-restore", source="tonebridge-db",
                                  generation=1, now=T0 + timedelta(minutes=1))
    assert again.started_at == T0  # the RTO clock starts once
    assert again == status


def test_logical_success_records_what_was_restored_and_how_long_it_took() -> None:
    result = {"backup": "20240115T020000Z", "method": "logical", "mode": "database",
              "target": "restore@127.0.0.1:5432/db", "duration_seconds": 700.1}
    status = rr_status.job_observed(running(), outcome("succeeded", result=result),
                                    target=DATABASE, generation=1, now=T0 + timedelta(hours=1))
    assert status.phase == RestorePhase.SUCCEEDED
    assert status.completed_at == T0 + timedelta(minutes=12, seconds=30)
    assert status.duration_seconds == 750
    assert status.duration == "12m30s"
    assert status.restored is not None
    assert status.restored.backup_id == "20240115T020000Z"
    assert status.restored.method is not None and status.restored.method.value == "logical"
    assert condition(status, "Complete")[:2] == ("True", "Succeeded")
    assert condition(status, "Failed")[0] == "False"
    assert condition(status, "Ready")[:2] == ("True", "Succeeded")  # not "JobCreated" any more
    assert "Restored backup 20240115T020000Z into the database of Secret" in (status.message or "")
    wire = status.model_dump(mode="json", exclude_none=True)
    assert wire["duration"] == "12m30s"
    assert wire["completedAt"] == "2024-01-15T01:12:30Z"
    assert wire["restored"] == {"backupId": "20240115T020000Z", "method": "logical"}


def test_tables_repair_and_physical_results_are_summarised() -> None:
    tables = rr_status.restored_summary(
        {"backup": "b1", "method": "logical", "mode": "tables",
         "tables": ["public.transformations"]})
    assert tables is not None and tables.tables == ["public.transformations"]
    repair = rr_status.restored_summary(
        {"backup": "b1", "method": "logical", "mode": "repair", "table": "public.t",
         "rows_inserted": 12, "rows_already_present": 88})
    assert repair is not None and (repair.tables, repair.repaired_rows) == (["public.t"], 12)
    physical = rr_status.restored_summary(
        {"backup_id": "b2", "recovered_to_time": "2024-01-15T01:29:59Z",
         "recovered_to_lsn": "0/3000060"})
    assert physical is not None
    assert physical.backup_id == "b2"
    assert physical.recovered_to_time == datetime(2024, 1, 15, 1, 29, 59, tzinfo=UTC)
    assert physical.recovered_to_lsn == "0/3000060"
    assert rr_status.restored_summary(None) is None
    assert rr_status.restored_summary({"backup": 3, "method": "weird", "tables": [1]}) is None

    status = rr_status.job_observed(
        running(), outcome("succeeded", result={"backup": "b1", "table": "public.t",
                                                "rows_inserted": 12, "rows_already_present": 88}),
        target=DATABASE, generation=1, now=T0)
    assert "12 missing rows re-inserted, 88 of the range already present" in (status.message or "")


def test_volume_success_says_the_data_directory_is_ready() -> None:
    status = rr_status.job_observed(
        running(), outcome("succeeded", result={"backup_id": "b2",
                                                "recovered_to_time": "2024-01-15T01:29:59Z"}),
        target=VOLUME, generation=1, now=T0)
    assert "recovered to 2024-01-15T01:29:59Z" in (status.message or "")
    assert "ready to start" in (status.message or "")


def test_a_refused_target_says_nothing_changed_and_how_to_overwrite() -> None:
    runner_message = ("target database 'db' is not empty (3 user relations or large objects); "
                      "pass --clean to replace what the backup contains, or restore into an "
                      "empty database")
    status = rr_status.job_observed(
        running(), outcome("failed", reason="TargetNotEmpty", message=runner_message),
        target=DATABASE, generation=1, now=T0)
    assert status.phase == RestorePhase.FAILED
    state, reason, message = condition(status, "Failed")
    assert (state, reason) == ("True", "TargetNotEmpty")
    assert message.startswith("Restore refused (TargetNotEmpty): target database 'db' is not "
                              "empty")
    assert "--clean" not in message and "set spec.overwrite: true" in message
    assert 'Nothing was changed in the database of Secret "db-restore".' in message
    assert "spec.overwrite: true" in message
    assert "kubectl logs job/rr-restore" in message
    assert condition(status, "Complete")[:2] == ("False", "TargetNotEmpty")
    assert status.message == message
    assert status.duration == "12m30s"


@pytest.mark.parametrize(
    ("reason", "target", "expected"),
    [
        ("BackupNotFound", DATABASE, "tonebridge-dr backups list --repo s3://backups/pg/"),
        ("RecoveryTargetUnreachable", VOLUME, "Nothing was changed in volume"),
        ("ToolFailed", DATABASE, "one transaction, which was rolled back"),
        ("IntegrityCheckFailed", VOLUME, "may hold an INCOMPLETE data directory"),
        ("DeadlineExceeded", DATABASE, "activeDeadlineSeconds"),
        ("EncryptionError", DATABASE, "spec.source.privateKeySecretRef"),
        ("RecoveryEndedEarly", VOLUME, "TONEBRIDGE_DR_RECOVERY_ENDED_EARLY"),
        ("RecoveryEndedEarly", VOLUME, "may hold an INCOMPLETE data directory"),
    ],
)
def test_failure_messages_say_what_state_the_target_is_in(
    reason: str, target: rr_status.TargetInfo, expected: str
) -> None:
    status = rr_status.job_observed(
        running(), outcome("failed", reason=reason, message="something broke"),
        target=target, generation=1, now=T0)
    assert expected in condition(status, "Failed")[2]


def test_finished_requests_never_change_phase() -> None:
    done = rr_status.job_observed(running(), outcome("succeeded", result={"backup": "b"}),
                                  target=DATABASE, generation=1, now=T0)
    for later in (
        rr_status.job_observed(done, outcome("failed", reason="X"), target=DATABASE,
                               generation=1, now=T0),
        rr_status.job_vanished(done, job_name="rr-restore", target=DATABASE, generation=1,
                               now=T0),
        rr_status.waiting(done, reason="SecretNotFound", message="m", source=None,
                          generation=1, now=T0),
        rr_status.refused(done, reason="InvalidSpec", message="m", source=None,
                          generation=1, now=T0),
        rr_status.job_created(done, job_name="x", source="s", generation=1, now=T0),
    ):
        assert later == done
    assert rr_status.is_finished(done)
    assert not rr_status.is_finished(running())
    assert not rr_status.is_finished(None)


def test_waiting_is_pending_with_a_not_ready_condition() -> None:
    status = rr_status.waiting(None, reason="SecretNotFound",
                               message='Secret "db-restore" (target database DSN) not found',
                               source="tonebridge-db", generation=1, now=T0)
    assert status.phase == RestorePhase.PENDING
    state, reason, message = condition(status, "Ready")
    assert (state, reason) == ("False", "SecretNotFound")
    assert message.startswith('Secret "db-restore" (target database DSN) not found.')
    assert "Nothing was restored yet" in message
    assert conditions.get_condition(status.conditions, "Complete") is None
    later = rr_status.waiting(status, reason="SecretNotFound",
                              message='Secret "db-restore" (target database DSN) not found',
                              source="tonebridge-db", generation=1, now=T0 + timedelta(hours=1))
    assert later == status  # re-asserting does not move lastTransitionTime


def test_refused_up_front_is_final() -> None:
    status = rr_status.refused(None, reason="MissingDecryptionKey", message="no key",
                               source="tonebridge-db", generation=2, now=T0)
    assert status.phase == RestorePhase.FAILED
    assert condition(status, "Failed")[:2] == ("True", "MissingDecryptionKey")
    assert "Nothing was changed" in (status.message or "")
    assert status.completed_at == T0
    assert status.duration is None  # nothing ran
    assert status.observed_generation == 2


def test_a_deleted_job_fails_the_request() -> None:
    status = rr_status.job_vanished(running(), job_name="rr-restore", target=VOLUME,
                                    generation=1, now=T0 + timedelta(minutes=3))
    assert status.phase == RestorePhase.FAILED
    state, reason, message = condition(status, "Failed")
    assert (state, reason) == ("True", "JobDeleted")
    assert "INCOMPLETE" in message
    assert status.duration == "3m"


def test_running_outcomes_keep_waiting_reasons_visible() -> None:
    job = {"metadata": {"name": "rr-restore", "uid": "u"},
           "status": {"startTime": "2024-01-15T01:00:05Z"}}
    pod = {
        "metadata": {"name": "rr-restore-x",
                     "labels": {"batch.kubernetes.io/job-name": "rr-restore"},
                     "creationTimestamp": "2024-01-15T01:00:05Z"},
        "status": {"containerStatuses": [{"state": {"waiting": {
            "reason": "CreateContainerConfigError", "message": 'secret "s" not found'}}}]},
    }
    status = rr_status.job_observed(running(), job_outcome(job, [pod]), target=DATABASE,
                                    generation=1, now=T0)
    assert status.phase == RestorePhase.RUNNING
    assert "CreateContainerConfigError" in (status.message or "")
    assert condition(status, "Complete")[:2] == ("False", "Pending")


def test_finished_appends_a_note_once() -> None:
    done = rr_status.job_observed(running(), outcome("succeeded", result={"backup": "b"}),
                                  target=VOLUME, generation=1, now=T0)
    noted = rr_status.finished(done, note="PostgreSQL runs on it.")
    assert noted.message is not None and noted.message.endswith("PostgreSQL runs on it.")
    assert rr_status.finished(noted, note="PostgreSQL runs on it.") == noted


def test_a_refusal_after_an_earlier_attempt_does_not_claim_the_volume_is_untouched() -> None:
    refusal = outcome("failed", reason="TargetNotEmpty",
                      message="data directory /x is not empty; pass --overwrite to replace it")
    first = rr_status.job_observed(running(), refusal, target=VOLUME, generation=1, now=T0)
    assert 'Nothing was changed in volume "pg-data"' in (first.message or "")
    retried = rr_status.job_observed(running(), refusal, target=VOLUME, generation=1, now=T0,
                                     attempts=2)
    message = retried.message or ""
    assert "Nothing was changed" not in message
    assert "attempt 2; earlier attempts failed too" in message
    assert "INCOMPLETE" in message
    database = rr_status.job_observed(running(), refusal, target=DATABASE, generation=1,
                                      now=T0, attempts=2)
    assert "Nothing was changed" in (database.message or "")  # each attempt rolled back


# --- Redis targets ------------------------------------------------------------------------------

REDIS = rr_status.TargetInfo(
    kind=rr_status.TargetKind.REDIS, description='the Redis of Secret "redis-restore"',
    repository_url="s3://backups/redis/cache",
)
REDIS_RESULT = {
    "engine": "redis", "backup_id": "20240115T010000Z", "target": "127.0.0.1:6379",
    "mode": "missing", "pattern": None, "databases": {"0": {"restored": 15, "skipped": 3}},
    "keys_restored": 15, "keys_skipped": 3, "functions_restored": 1, "warnings": [],
}


def test_redis_success_records_the_keys_restored_and_skipped() -> None:
    status = rr_status.job_observed(running(), outcome("succeeded", result=REDIS_RESULT),
                                    target=REDIS, generation=1, now=T0)
    assert status.phase == RestorePhase.SUCCEEDED
    assert status.restored is not None
    wire = status.model_dump(mode="json", exclude_none=True)
    assert wire["restored"] == {"backupId": "20240115T010000Z", "method": "snapshot",
                                "keysRestored": 15, "keysSkipped": 3}
    assert status.message == (
        'Restored backup 20240115T010000Z into the Redis of Secret "redis-restore" '
        "(15 keys restored; 3 keys it already had left as they were)."
    )
    replaced = rr_status.restored_summary({**REDIS_RESULT, "mode": "replace",
                                           "keys_restored": 18, "keys_skipped": 0})
    assert replaced is not None and (replaced.keys_restored, replaced.keys_skipped) == (18, 0)
    done = rr_status.job_observed(running(), outcome("succeeded", result={
        **REDIS_RESULT, "keys_restored": 18, "keys_skipped": 0}), target=REDIS, generation=1,
        now=T0)
    assert "(18 keys restored)." in (done.message or "")
    assert rr_status.restored_summary({"keys_restored": True, "keys_skipped": -1}) is None
    one = rr_status.job_observed(running(), outcome("succeeded", result={
        **REDIS_RESULT, "keys_restored": 1, "keys_skipped": 1}), target=REDIS, generation=1,
        now=T0)
    assert "(1 key restored; 1 key it already had left as they were)." in (one.message or "")


@pytest.mark.parametrize(
    ("reason", "attempts", "expected", "absent"),
    [
        ("BackupNotFound", 1, 'Nothing was changed in the Redis of Secret "redis-restore".',
         "not one transaction"),
        ("EncryptionError", 1, "Nothing was changed", "not one transaction"),
        # The target can drop away or refuse a key (ACL) after the first keys were written.
        ("SourceUnavailable", 1, "keys restored before the failure, if any, stay in the Redis",
         "Nothing was changed"),
        ("AuthenticationFailed", 1, "PING, SELECT, RESTORE and FUNCTION RESTORE",
         "Nothing was changed"),
        ("BackupNotFound", 2, "Restoring again is safe", "Nothing was changed"),
        ("ToolFailed", 1, "no key was deleted", "rolled back"),
    ],
)
def test_redis_failures_say_which_keys_may_be_there(
    reason: str, attempts: int, expected: str, absent: str
) -> None:
    status = rr_status.job_observed(
        running(), outcome("failed", reason=reason, message="something broke"),
        target=REDIS, generation=1, now=T0, attempts=attempts)
    message = condition(status, "Failed")[2]
    assert expected in message
    assert absent not in message
    assert "DSN" not in message and "database server" not in message


def test_redis_hints_do_not_replace_the_database_ones() -> None:
    status = rr_status.job_observed(
        running(), outcome("failed", reason="AuthenticationFailed", message="bad password"),
        target=DATABASE, generation=1, now=T0)
    assert "DSN Secret" in condition(status, "Failed")[2]
