"""Pure status transitions: conditions, Job/Pod outcomes, BackupPolicy status, freshness."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fixtures import EXAMPLES
from tonebridge_dr.api.backuppolicy import BackupPolicyStatus
from tonebridge_dr.api.common import Objectives
from tonebridge_dr.api.conditions import Condition, ConditionStatus
from tonebridge_dr.api.kinds import BackupPolicy
from tonebridge_dr.status import backuppolicy as bp_status
from tonebridge_dr.status import conditions, freshness, jobs
from tonebridge_dr.status.freshness import CatalogSummary
from tonebridge_dr.status.jobs import JobOutcome
from tonebridge_dr.status.recoverypoint import BackupRecord, WalChainEnd, WalStart

T0 = datetime(2024, 1, 15, 2, 0, 0, tzinfo=UTC)
AT_3 = T0 + timedelta(minutes=3)
AT_10 = T0 + timedelta(minutes=10)
HYPOTHESIS = settings(derandomize=True, max_examples=150, deadline=None)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def stamp(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def cond(conds: list[Condition] | None, type_: str) -> Condition:
    found = conditions.get_condition(conds, type_)
    assert found is not None, f"no {type_} condition"
    return found


# --- conditions ----------------------------------------------------------------------------------


def test_set_condition_adds_then_updates_in_place_keeping_order() -> None:
    conds = conditions.set_condition(
        None, type="Ready", status="True", reason="Reconciled", message="ok",
        observed_generation=1, now=at(0),
    )
    conds = conditions.set_condition(
        conds, type="RPOMet", status="Unknown", reason="NoBackups", message="none",
        observed_generation=1, now=at(1),
    )
    updated = conditions.set_condition(
        conds, type="Ready", status="True", reason="Reconciled", message="still ok",
        observed_generation=2, now=at(5),
    )
    assert [c.type for c in updated] == ["Ready", "RPOMet"]
    ready = cond(updated, "Ready")
    assert ready.message == "still ok"
    assert ready.observed_generation == 2
    assert ready.last_transition_time == at(0)  # status unchanged: no transition
    assert cond(conds, "Ready").message == "ok"  # input untouched


def test_last_transition_time_moves_only_when_status_changes() -> None:
    conds = conditions.set_condition(
        None, type="Ready", status="True", reason="Reconciled", message="",
        observed_generation=1, now=at(0),
    )
    conds = conditions.set_condition(
        conds, type="Ready", status="False", reason="SecretNotFound", message="x",
        observed_generation=1, now=at(10),
    )
    assert cond(conds, "Ready").last_transition_time == at(10)
    conds = conditions.set_condition(
        conds, type="Ready", status="False", reason="RepositoryUnreachable", message="y",
        observed_generation=1, now=at(20),
    )
    ready = cond(conds, "Ready")
    assert (ready.reason, ready.message, ready.last_transition_time) == (
        "RepositoryUnreachable", "y", at(10)
    )


@HYPOTHESIS
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["True", "False", "Unknown"]), st.sampled_from(["A", "B"])),
        min_size=1,
        max_size=20,
    )
)
def test_transition_time_is_the_time_of_the_last_status_change(
    steps: list[tuple[str, str]],
) -> None:
    conds: list[Condition] = []
    last_change = None
    previous = None
    for minute, (status, reason) in enumerate(steps):
        conds = conditions.set_condition(
            conds, type="X", status=status, reason=reason, message=reason,  # type: ignore[arg-type]
            observed_generation=None, now=at(minute),
        )
        if status != previous:
            last_change = at(minute)
            previous = status
        assert len(conds) == 1
        assert conds[0].last_transition_time == last_change
        assert conds[0].reason == reason


def test_get_and_remove_condition() -> None:
    conds = conditions.set_condition(
        None, type="Ready", status="True", reason="Reconciled", message="",
        observed_generation=None, now=at(0),
    )
    assert conditions.get_condition(conds, "Missing") is None
    assert conditions.get_condition(None, "Ready") is None
    assert conditions.is_true(conds, "Ready")
    assert not conditions.is_true(conds, "RPOMet")
    assert conditions.remove_condition(conds, "Ready") == []


# --- job_outcome ----------------------------------------------------------------------------------

RESULT: dict[str, Any] = {
    "id": "20240115T020000Z-a1b2",
    "engine": "postgres",
    "method": "logical",
    "databases": ["tonebridge_db"],
    "started_at": "2024-01-15T02:00:05Z",
    "finished_at": "2024-01-15T02:03:05Z",
    "duration_seconds": 180.2,
    "size_bytes": 123456789,
    "compression": "zstd",
    "encrypted": True,
}


def make_job(
    name: str = "tonebridge-db-daily-full-28421520",
    *,
    conditions_: list[dict[str, Any]] | None = None,
    schedule: str | None = "daily-full",
    uid: str = "job-uid-1",
    **status: Any,
) -> dict[str, Any]:
    labels = {"app.kubernetes.io/managed-by": "tonebridge-dr"}
    if schedule:
        labels["dr.tonebridge.io/schedule"] = schedule
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": "tonebridge",
            "uid": uid,
            "labels": labels,
            "creationTimestamp": "2024-01-15T02:00:00Z",
        },
        "spec": {"backoffLimit": 1, "activeDeadlineSeconds": 21600},
        "status": {"startTime": "2024-01-15T02:00:00Z", **status,
                   **({"conditions": conditions_} if conditions_ else {})},
    }


def job_condition(type_: str, reason: str = "", message: str = "",
                  when: str = "2024-01-15T02:03:10Z") -> dict[str, Any]:
    return {
        "type": type_,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastProbeTime": when,
        "lastTransitionTime": when,
    }


def make_pod(
    name: str,
    *,
    created: str,
    exit_code: int | None = 0,
    message: str | None = None,
    job_name: str = "tonebridge-db-daily-full-28421520",
    job_uid: str = "job-uid-1",
    waiting: dict[str, str] | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    if waiting is not None:
        state: dict[str, Any] = {"waiting": waiting}
        phase = "Pending"
    else:
        terminated: dict[str, Any] = {
            "exitCode": exit_code,
            "reason": reason or ("Completed" if exit_code == 0 else "Error"),
            "startedAt": created,
            "finishedAt": "2024-01-15T02:03:05Z",
            "containerID": "containerd://abc",
        }
        if message is not None:
            terminated["message"] = message
        state = {"terminated": terminated}
        phase = "Succeeded" if exit_code == 0 else "Failed"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "tonebridge",
            "creationTimestamp": created,
            "labels": {
                "batch.kubernetes.io/job-name": job_name,
                "job-name": job_name,
                "batch.kubernetes.io/controller-uid": job_uid,
            },
            "ownerReferences": [
                {"apiVersion": "batch/v1", "kind": "Job", "name": job_name, "uid": job_uid,
                 "controller": True, "blockOwnerDeletion": True}
            ],
        },
        "status": {
            "phase": phase,
            "containerStatuses": [
                {"name": "backup", "image": "tonebridge-dr:dev", "ready": False,
                 "restartCount": 0, "state": state, "lastState": {}}
            ],
        },
    }


def test_complete_job_carries_the_runner_result() -> None:
    job = make_job(
        conditions_=[
            job_condition("SuccessCriteriaMet", "CompletionsReached"),
            job_condition("Complete", "CompletionsReached", "Reached expected number"),
        ],
        completionTime="2024-01-15T02:03:10Z",
        succeeded=1,
    )
    pods = [make_pod("p1", created="2024-01-15T02:00:01Z", message=json.dumps(RESULT))]
    outcome = jobs.job_outcome(job, pods)
    assert outcome.state == "succeeded"
    assert outcome.job_name == "tonebridge-db-daily-full-28421520"
    assert outcome.schedule == "daily-full"
    assert outcome.started_at == T0
    assert outcome.finished_at == datetime(2024, 1, 15, 2, 3, 10, tzinfo=UTC)
    assert outcome.result == RESULT
    assert outcome.reason == "Succeeded"
    assert RESULT["id"] in outcome.message


def test_success_after_a_retry_reads_the_successful_pod() -> None:
    job = make_job(conditions_=[job_condition("Complete")], completionTime="2024-01-15T02:09:00Z")
    failed = make_pod("p1", created="2024-01-15T02:00:01Z", exit_code=4,
                      message=json.dumps({"error": "StorageError", "message": "x",
                                          "exit_code": 4}))
    succeeded = make_pod("p2", created="2024-01-15T02:05:00Z", message=json.dumps(RESULT))
    outcome = jobs.job_outcome(job, [succeeded, failed])
    assert outcome.result == RESULT
    outcome = jobs.job_outcome(job, [failed, succeeded])  # order of the list does not matter
    assert outcome.result == RESULT


def test_backoff_limit_exceeded_reports_the_runners_message() -> None:
    job = make_job(
        conditions_=[
            job_condition("FailureTarget", "BackoffLimitExceeded",
                          "Job has reached the specified backoff limit"),
            job_condition("Failed", "BackoffLimitExceeded",
                          "Job has reached the specified backoff limit"),
        ],
        failed=2,
    )
    error = {"error": "RepositoryUnreachable",
             "message": "cannot reach s3://tonebridge-backups: connection refused",
             "exit_code": 4}
    pods = [
        make_pod("p1", created="2024-01-15T02:00:01Z", exit_code=4,
                 message=json.dumps({"error": "StorageError", "message": "old", "exit_code": 4})),
        make_pod("p2", created="2024-01-15T02:01:00Z", exit_code=4, message=json.dumps(error)),
    ]
    outcome = jobs.job_outcome(job, pods)
    assert outcome.state == "failed"
    assert outcome.reason == "RepositoryUnreachable"
    assert outcome.message == (
        "cannot reach s3://tonebridge-backups: connection refused (exit code 4)"
    )
    assert outcome.exit_code == 4
    assert outcome.finished_at == datetime(2024, 1, 15, 2, 3, 10, tzinfo=UTC)
    assert outcome.result is None


def test_deadline_exceeded_says_so() -> None:
    job = make_job(conditions_=[job_condition(
        "Failed", "DeadlineExceeded", "Job was active longer than specified deadline")])
    pods = [make_pod("p1", created="2024-01-15T02:00:01Z", exit_code=143,
                     message=json.dumps({"error": "Terminated", "message": "stopped by SIGTERM",
                                         "exit_code": 143}))]
    outcome = jobs.job_outcome(job, pods)
    assert outcome.state == "failed"
    assert outcome.reason == "DeadlineExceeded"
    assert outcome.message == (
        "Job was active longer than specified deadline; runner: stopped by SIGTERM "
        "(exit code 143)"
    )


def test_deadline_exceeded_without_pods() -> None:
    job = make_job(conditions_=[job_condition(
        "Failed", "DeadlineExceeded", "Job was active longer than specified deadline")])
    outcome = jobs.job_outcome(job, [])
    assert (outcome.state, outcome.reason) == ("failed", "DeadlineExceeded")
    assert outcome.message == "Job was active longer than specified deadline"


@pytest.mark.parametrize(
    "garbage",
    [
        "Traceback (most recent call last):\n  File x\nMemoryError",
        "{not json",
        "[1, 2, 3]",
        '"just a string"',
        "null",
        "\x00\x01\x02binary\x7f",
        "",
        "   \n  ",
        '{"error": 42, "message": ["not", "a", "string"], "exit_code": "x"}',
    ],
)
def test_garbage_termination_messages_never_raise(garbage: str) -> None:
    failed_job = make_job(conditions_=[job_condition(
        "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")])
    pods = [make_pod("p1", created="2024-01-15T02:00:01Z", exit_code=1, message=garbage)]
    outcome = jobs.job_outcome(failed_job, pods)
    assert outcome.state == "failed"
    assert outcome.reason == "BackoffLimitExceeded"
    assert outcome.message
    assert "(exit code 1)" in outcome.message
    assert all(ch >= " " for ch in outcome.message)
    Condition(  # fits the API
        type="X", status=ConditionStatus.FALSE, reason=outcome.reason,
        message=outcome.message, last_transition_time=T0,
    )
    complete_job = make_job(conditions_=[job_condition("Complete")])
    ok = jobs.job_outcome(complete_job, [make_pod("p1", created="2024-01-15T02:00:01Z",
                                                  message=garbage)])
    assert ok.state == "succeeded"
    assert ok.result is None
    assert "no backup result" in ok.message


def test_log_tail_explains_a_crash_without_termination_message() -> None:
    job = make_job(conditions_=[job_condition("Failed", "BackoffLimitExceeded", "limit")])
    log = "starting backup\nTraceback ...\nKeyError: 'lsn'\n"
    outcome = jobs.job_outcome(job, [make_pod("p", created="2024-01-15T02:00:01Z",
                                              exit_code=1, message=log)])
    assert outcome.message == "KeyError: 'lsn' (exit code 1)"


def test_failed_job_without_pods_uses_the_job_condition() -> None:
    job = make_job(conditions_=[job_condition(
        "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")])
    outcome = jobs.job_outcome(job, [])
    assert outcome.state == "failed"
    assert outcome.reason == "BackoffLimitExceeded"
    assert outcome.message == "Job has reached the specified backoff limit"


def test_failed_pod_without_any_message_reports_its_exit_code() -> None:
    job = make_job(conditions_=[{"type": "Failed", "status": "True"}])
    outcome = jobs.job_outcome(job, [make_pod("p", created="2024-01-15T02:00:01Z",
                                              exit_code=137, reason="OOMKilled")])
    assert outcome.reason == "OOMKilled"
    assert outcome.message == "the Job failed (exit code 137)"


def test_complete_job_without_pods() -> None:
    job = make_job(conditions_=[job_condition("Complete")], completionTime="2024-01-15T02:03:10Z")
    outcome = jobs.job_outcome(job, [])
    assert outcome.state == "succeeded"
    assert outcome.result is None


def test_running_job_and_a_pod_that_cannot_start() -> None:
    job = make_job(active=1)
    assert jobs.job_outcome(job, []).state == "running"
    assert jobs.job_outcome(job, []).reason == "Pending"
    waiting = make_pod("p", created="2024-01-15T02:00:01Z", waiting={
        "reason": "CreateContainerConfigError",
        "message": 'secret "tonebridge-db-backup" not found',
    })
    outcome = jobs.job_outcome(job, [waiting])
    assert outcome.state == "running"
    assert outcome.reason == "Pending"
    assert outcome.message == (
        'pod not running: CreateContainerConfigError: secret "tonebridge-db-backup" not found'
    )
    # FailureTarget alone: pods are still terminating, the Job has not ended
    ending = make_job(conditions_=[job_condition("FailureTarget", "BackoffLimitExceeded")])
    assert jobs.job_outcome(ending, []).state == "running"


def test_pods_of_other_jobs_are_ignored() -> None:
    job = make_job(conditions_=[job_condition("Failed", "BackoffLimitExceeded", "limit")])
    stranger = make_pod("other", created="2024-01-15T02:59:00Z", exit_code=3,
                        message=json.dumps({"error": "Other", "message": "not mine"}),
                        job_name="someone-else", job_uid="uid-2")
    outcome = jobs.job_outcome(job, [stranger])
    assert outcome.reason == "BackoffLimitExceeded"
    assert "not mine" not in outcome.message


@HYPOTHESIS
@given(
    job=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
            st.sampled_from(["metadata", "status", "conditions", "type", "status", "name",
                             "labels", "reason", "message", "startTime", "containerStatuses",
                             "state", "terminated", "exitCode"]),
            inner, max_size=4),
        max_leaves=20,
    ),
)
def test_job_outcome_never_raises_on_malformed_objects(job: Any) -> None:
    body = job if isinstance(job, dict) else {"status": job}
    outcome = jobs.job_outcome(body, [body, {"status": job}])
    assert outcome.state in ("running", "succeeded", "failed")


# --- BackupPolicy status -------------------------------------------------------------------------


def succeeded(job: str = "j1", *, finished: datetime = AT_3, result_id: str = "b1",
              schedule: str | None = "daily-full") -> JobOutcome:
    result = dict(RESULT, id=result_id, finished_at=stamp(finished),
                  started_at=stamp(finished - timedelta(minutes=3)))
    return JobOutcome(state="succeeded", job_name=job, schedule=schedule, started_at=at(0),
                      finished_at=finished + timedelta(seconds=5), result=result,
                      reason="Succeeded", message="")


def failed(job: str = "j2", *, finished: datetime = AT_10,
           reason: str = "RepositoryUnreachable") -> JobOutcome:
    return JobOutcome(state="failed", job_name=job, schedule="hourly-hot", started_at=at(0),
                      finished_at=finished, result=None, reason=reason,
                      message="cannot reach the bucket (exit code 4)")


def test_successful_outcome_records_the_backup() -> None:
    status = bp_status.apply_job_outcome(None, succeeded(), generation=2, now=at(60))
    assert status.last_backup is not None
    assert status.last_backup.id == "b1"
    assert status.last_backup.schedule == "daily-full"
    assert status.last_backup.method.value == "logical"
    assert status.last_backup.time == at(3)
    assert status.last_backup.size_bytes == 123456789
    assert status.last_successful_backup == status.last_backup
    condition = cond(status.conditions, conditions.LAST_BACKUP_SUCCEEDED)
    assert (condition.status, condition.reason) == ("True", "BackupSucceeded")
    assert condition.observed_generation == 2
    assert condition.last_transition_time == at(3)
    assert "b1" in condition.message
    dumped = status.model_dump(mode="json", exclude_none=True)
    assert dumped["lastSuccessfulBackup"]["time"] == "2024-01-15T02:03:00Z"


def test_failed_outcome_records_why() -> None:
    before = bp_status.apply_job_outcome(None, succeeded(), generation=2, now=at(60))
    status = bp_status.apply_job_outcome(before, failed(), generation=2, now=at(60))
    assert status.last_failure is not None
    assert status.last_failure.reason == "RepositoryUnreachable"
    assert status.last_failure.message == "cannot reach the bucket (exit code 4)"
    assert status.last_failure.time == at(10)
    assert status.last_backup == before.last_backup
    condition = cond(status.conditions, conditions.LAST_BACKUP_SUCCEEDED)
    assert (condition.status, condition.reason) == ("False", "RepositoryUnreachable")
    assert "j2" in condition.message and "cannot reach the bucket" in condition.message


def test_applying_the_same_outcome_twice_changes_nothing() -> None:
    once = bp_status.apply_job_outcome(None, succeeded(), generation=1, now=at(60))
    twice = bp_status.apply_job_outcome(once, succeeded(), generation=1, now=at(99))
    assert twice == once
    once = bp_status.apply_job_outcome(once, failed(), generation=1, now=at(60))
    twice = bp_status.apply_job_outcome(once, failed(), generation=1, now=at(120))
    assert twice == once


def test_older_outcomes_do_not_replace_newer_ones() -> None:
    newest = bp_status.apply_job_outcome(
        None, succeeded("j9", finished=at(100), result_id="b9"), generation=1, now=at(200))
    replayed = bp_status.apply_job_outcome(newest, succeeded("j1", finished=at(3)),
                                           generation=1, now=at(200))
    assert replayed.last_backup is not None and replayed.last_backup.id == "b9"
    old_failure = bp_status.apply_job_outcome(replayed, failed(finished=at(50)), generation=1,
                                              now=at(200))
    assert old_failure.last_failure is not None  # recorded: it is the newest failure
    assert cond(old_failure.conditions, conditions.LAST_BACKUP_SUCCEEDED).status == "True"


def test_running_outcome_changes_nothing() -> None:
    status = bp_status.apply_job_outcome(None, succeeded(), generation=1, now=at(60))
    running = JobOutcome(state="running", job_name="j3", schedule=None, started_at=None,
                         finished_at=None, result=None, reason="Running", message="")
    assert bp_status.apply_job_outcome(status, running, generation=1, now=at(61)) == status


def test_success_without_result_sets_the_condition_only() -> None:
    outcome = JobOutcome(state="succeeded", job_name="j4", schedule=None, started_at=at(0),
                         finished_at=at(4), result=None, reason="Succeeded", message="")
    status = bp_status.apply_job_outcome(None, outcome, generation=1, now=at(60))
    assert status.last_backup is None
    condition = cond(status.conditions, conditions.LAST_BACKUP_SUCCEEDED)
    assert condition.status == "True"
    assert "a manual run" in condition.message and "no result" in condition.message


def test_redis_rdb_method_maps_to_snapshot() -> None:
    outcome = JobOutcome(state="succeeded", job_name="j", schedule="hourly", started_at=at(0),
                         finished_at=at(1), result={"id": "r1", "engine": "redis",
                                                     "method": "rdb"},
                         reason="Succeeded", message="")
    summary = bp_status.backup_summary(outcome)
    assert summary is not None and summary.method.value == "snapshot"
    assert summary.time == at(1)


def load_policy(example: str) -> BackupPolicy:
    body = yaml.safe_load((EXAMPLES / example / "backuppolicy.yaml").read_text())
    body["metadata"].update(uid="u", namespace="ns", generation=4)
    return BackupPolicy.from_body(body)


def test_apply_reconciled_sets_ready_and_printer_columns() -> None:
    policy = load_policy("01-postgres-backup")
    status = bp_status.apply_reconciled(None, policy, now=at(0),
                                        wal_deployment="tonebridge-db-wal-stream")
    assert status.observed_generation == 4
    assert status.target == "postgres/tonebridge_db"
    assert status.schedules == "daily-full,hourly-hot,daily-physical"
    assert status.wal is not None and status.wal.deployment == "tonebridge-db-wal-stream"
    ready = cond(status.conditions, conditions.READY)
    assert (ready.status, ready.reason, ready.observed_generation) == ("True", "Reconciled", 4)
    assert "3 backup schedules" in ready.message
    again = bp_status.apply_reconciled(status, policy, now=at(30),
                                       wal_deployment="tonebridge-db-wal-stream")
    assert again == status
    # the printer columns read exactly these fields
    dumped = status.model_dump(mode="json", exclude_none=True)
    assert dumped["target"] == "postgres/tonebridge_db"
    assert dumped["schedules"] == "daily-full,hourly-hot,daily-physical"
    assert [c["type"] for c in dumped["conditions"]] == ["Ready"]


def test_not_ready_then_reconciled_transitions() -> None:
    status = bp_status.apply_not_ready(
        None, reason="SecretNotFound", message='Secret "tonebridge-db-backup" not found',
        generation=4, now=at(0))
    ready = cond(status.conditions, conditions.READY)
    assert (ready.status, ready.reason) == ("False", "SecretNotFound")
    assert status.observed_generation == 4
    status = bp_status.apply_not_ready(status, reason="TargetNotSupported", message="x",
                                       generation=4, now=at(5))
    assert cond(status.conditions, conditions.READY).last_transition_time == at(0)
    status = bp_status.apply_reconciled(status, load_policy("02-redis-backup"), now=at(9))
    ready = cond(status.conditions, conditions.READY)
    assert (ready.status, ready.last_transition_time) == ("True", at(9))
    assert status.wal is None


def test_transitions_keep_unrelated_fields() -> None:
    status = bp_status.apply_job_outcome(None, succeeded(), generation=1, now=at(60))
    status = bp_status.apply_reconciled(status, load_policy("02-redis-backup"), now=at(61))
    status = bp_status.apply_not_ready(status, reason="RepositoryUnreachable", message="m",
                                       generation=4, now=at(62))
    assert status.last_backup is not None and status.target == "redis"
    types = [c.type for c in status.conditions or []]
    assert types == ["LastBackupSucceeded", "Ready"]


# --- freshness ------------------------------------------------------------------------------

HOUR = Objectives(rpo=timedelta(hours=1))


def catalog(backup_at: datetime | None, wal_at: datetime | None = None, **more: Any) -> (
    CatalogSummary
):
    """A catalog whose newest backup b1 finished at `backup_at`: a full logical backup, or
    with `wal_at` a physical one followed without a gap by WAL archived at `wal_at`."""
    records: tuple[BackupRecord, ...] = ()
    chain: WalChainEnd | None = None
    if backup_at is not None:
        physical = wal_at is not None
        records = (BackupRecord("b1", "postgres", "physical" if physical else "logical",
                                backup_at, wal=WalStart(1, 2) if physical else None),)
        if wal_at is not None:
            chain = WalChainEnd("b1", "000000010000000000000003", wal_at)
    return CatalogSummary(
        newest_backup_id="b1" if backup_at else None,
        newest_backup_time=backup_at,
        backup_count=3 if backup_at else 0,
        total_size_bytes=3000 if backup_at else 0,
        newest_wal_time=wal_at,
        newest_wal_segment="000000010000000000000003" if wal_at else None,
        backups=records,
        wal_chain=chain,
        **more,
    )


def test_recovery_point_is_the_newer_of_backup_and_wal() -> None:
    assert freshness.recovery_point(catalog(at(0))) == at(0)
    assert freshness.recovery_point(catalog(at(0), at(50))) == at(50)
    assert freshness.recovery_point(catalog(at(60), at(50))) == at(60)
    assert freshness.recovery_point(catalog(None)) is None
    assert freshness.recovery_point(catalog(None, at(50))) is None  # WAL alone restores nothing
    assert freshness.recovery_point(CatalogSummary(error="boom")) is None


def test_fresh_backup_meets_the_rpo() -> None:
    status, change = freshness.assess_freshness(None, catalog(at(0)), HOUR, generation=5,
                                                now=at(30))
    assert change is None  # the first assessment, and all is well: nobody to tell
    assert status.recovery_point == at(0)
    assert status.rpo_age_seconds == 1800
    assert status.backup_count == 3 and status.total_size_bytes == 3000
    rpo = cond(status.conditions, conditions.RPO_MET)
    assert (rpo.status, rpo.reason, rpo.observed_generation) == ("True", "ObjectiveMet", 5)
    assert rpo.message == (
        "the newest recovery point, full logical backup b1 at 2024-01-15T02:00:00Z, is 30m old,"
        " within the RPO of 1h"
    )
    stale = cond(status.conditions, conditions.BACKUP_STALE)
    assert (stale.status, stale.reason) == ("False", "BackupFresh")


def test_fresh_stale_fresh_gives_exactly_two_changes() -> None:
    status: BackupPolicyStatus | None = None
    changes = []
    timeline = [
        (catalog(at(0)), at(10)),
        (catalog(at(0)), at(50)),
        (catalog(at(0)), at(61)),  # objective missed
        (catalog(at(0)), at(70)),
        (catalog(at(0)), at(90)),
        (catalog(at(80)), at(95)),  # a new backup
        (catalog(at(80)), at(100)),
    ]
    for summary, now in timeline:
        status, change = freshness.assess_freshness(status, summary, HOUR, generation=1, now=now)
        if change is not None:
            changes.append(change)
    assert [(c.old_state, c.new_state) for c in changes] == [("True", "False"), ("False", "True")]
    assert changes[0].reason == "ObjectiveMissed"
    assert "1h1m old, beyond the RPO of 1h" in changes[0].message
    assert status is not None
    rpo = cond(status.conditions, conditions.RPO_MET)
    assert rpo.last_transition_time == at(95)
    stale = cond(status.conditions, conditions.BACKUP_STALE)
    assert (stale.status, stale.last_transition_time) == ("False", at(95))


def test_first_assessment_that_misses_the_objective_is_a_change() -> None:
    status, change = freshness.assess_freshness(None, catalog(at(0)), HOUR, generation=1,
                                                now=at(180))
    assert change is not None
    assert (change.old_state, change.new_state) == (None, "False")
    assert cond(status.conditions, conditions.BACKUP_STALE).status == "True"
    assert cond(status.conditions, conditions.BACKUP_STALE).reason == "BackupTooOld"


def test_archived_wal_keeps_the_rpo_while_backups_get_stale() -> None:
    objectives = Objectives(rpo=timedelta(hours=1), stale_after=timedelta(days=1))
    status, _ = freshness.assess_freshness(
        None, catalog(at(0), wal_at=at(26 * 60 - 5)), objectives, generation=1, now=at(26 * 60))
    assert cond(status.conditions, conditions.RPO_MET).status == "True"
    stale = cond(status.conditions, conditions.BACKUP_STALE)
    assert stale.status == "True"
    assert stale.message == (
        "the newest backup b1 (2024-01-15T02:00:00Z) is 1d2h old, older than 1d"
    )
    assert status.wal is not None
    assert status.wal.last_archived_segment == "000000010000000000000003"
    assert status.rpo_age_seconds == 300


def test_unreachable_repository_is_unknown_and_keeps_the_last_known_values() -> None:
    status, _ = freshness.assess_freshness(None, catalog(at(0)), HOUR, generation=1, now=at(10))
    status, change = freshness.assess_freshness(
        status, CatalogSummary(error="could not connect to s3://tonebridge-backups: timeout"),
        HOUR, generation=1, now=at(20))
    rpo = cond(status.conditions, conditions.RPO_MET)
    assert (rpo.status, rpo.reason) == ("Unknown", "RepositoryUnreachable")
    assert rpo.message == (
        "cannot read the repository: could not connect to s3://tonebridge-backups: timeout"
    )
    stale = cond(status.conditions, conditions.BACKUP_STALE)
    assert (stale.status, stale.reason) == ("Unknown", "RepositoryUnreachable")
    assert status.recovery_point == at(0)  # last known value kept
    assert status.backup_count == 3
    assert change is not None and (change.old_state, change.new_state) == ("True", "Unknown")


def test_empty_repository_is_unknown_with_a_clear_message() -> None:
    status, change = freshness.assess_freshness(None, catalog(None), HOUR, generation=1,
                                                now=at(10))
    assert change is None
    rpo = cond(status.conditions, conditions.RPO_MET)
    assert (rpo.status, rpo.reason) == ("Unknown", "NoBackups")
    assert rpo.message == "the repository has no complete backup yet"
    assert cond(status.conditions, conditions.BACKUP_STALE).status == "Unknown"
    assert status.recovery_point is None and status.rpo_age_seconds is None
    assert status.backup_count == 0


def test_no_objective_is_unknown_but_staleness_uses_the_default() -> None:
    status, _ = freshness.assess_freshness(None, catalog(at(0)), None, generation=1,
                                           now=at(24 * 60))
    rpo = cond(status.conditions, conditions.RPO_MET)
    assert (rpo.status, rpo.reason) == ("Unknown", "NoObjective")
    assert "no objectives.rpo is set" in rpo.message
    assert cond(status.conditions, conditions.BACKUP_STALE).status == "False"
    status, _ = freshness.assess_freshness(status, catalog(at(0)), None, generation=1,
                                           now=at(26 * 60))
    assert cond(status.conditions, conditions.BACKUP_STALE).status == "True"
    assert freshness.stale_after(None) == timedelta(hours=25)
    assert freshness.stale_after(Objectives(rpo=timedelta(hours=2))) == timedelta(hours=2)


def test_ticks_without_change_rewrite_only_the_age() -> None:
    first, _ = freshness.assess_freshness(None, catalog(at(0)), HOUR, generation=1, now=at(10))
    second, change = freshness.assess_freshness(first, catalog(at(0)), HOUR, generation=1,
                                                now=at(20))
    assert change is None
    assert second.rpo_age_seconds == 1200
    assert [c.last_transition_time for c in second.conditions or []] == [
        c.last_transition_time for c in first.conditions or []
    ]


def test_catalog_updates_last_successful_backup() -> None:
    status = bp_status.apply_job_outcome(None, succeeded(finished=at(3)), generation=1,
                                         now=at(5))
    newer = CatalogSummary(newest_backup_id="b2", newest_backup_time=at(30), backup_count=4,
                           total_size_bytes=10, newest_backup_method="physical",
                           newest_backup_size_bytes=10)
    status, _ = freshness.assess_freshness(status, newer, HOUR, generation=1, now=at(31))
    assert status.last_successful_backup is not None
    assert (status.last_successful_backup.id, status.last_successful_backup.method.value) == (
        "b2", "physical")
    assert status.last_backup is not None and status.last_backup.id == "b1"
    # the same backup id again leaves the richer Job-based summary alone
    same = CatalogSummary(newest_backup_id="b2", newest_backup_time=at(30), backup_count=4)
    again, _ = freshness.assess_freshness(status, same, HOUR, generation=1, now=at(32))
    assert again.last_successful_backup == status.last_successful_backup


def test_clock_skew_never_gives_a_negative_age() -> None:
    status, _ = freshness.assess_freshness(None, catalog(at(10)), HOUR, generation=1, now=at(9))
    assert status.rpo_age_seconds == 0
    assert cond(status.conditions, conditions.RPO_MET).status == "True"


def test_status_round_trips_through_the_api_model() -> None:
    status = bp_status.apply_reconciled(None, load_policy("01-postgres-backup"), now=at(0))
    status = bp_status.apply_job_outcome(status, succeeded(), generation=4, now=at(5))
    status = bp_status.apply_job_outcome(status, failed(), generation=4, now=at(11))
    status, _ = freshness.assess_freshness(status, catalog(at(3), at(9)), HOUR, generation=4,
                                           now=at(12))
    dumped = status.model_dump(mode="json", exclude_none=True)
    assert BackupPolicyStatus.model_validate(json.loads(json.dumps(dumped))) == status
    assert [c["type"] for c in dumped["conditions"]] == [
        "Ready", "LastBackupSucceeded", "RPOMet", "BackupStale"]
    assert dumped["recoveryPoint"] == "2024-01-15T02:09:00Z"
