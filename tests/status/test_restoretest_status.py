"""RestoreTest status transitions: runs started and finished (passed, checks failed, RTO
missed, failed before restoring, deleted), idempotence and order tolerance, Ready /
Passed / RTOMet, and which changes are worth a notification."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from tests.fixtures import EXAMPLES
from tests.status.test_status import job_condition, make_job, make_pod
from tonebridge_dr.api.common import NotificationEvent
from tonebridge_dr.api.kinds import RestoreTest
from tonebridge_dr.api.restoretest import RestoreTestStatus, TestResult
from tonebridge_dr.status import conditions
from tonebridge_dr.status import restoretest as rt_status
from tonebridge_dr.status.jobs import JobOutcome, job_outcome

NOW = datetime(2030, 1, 1, 3, 30, tzinfo=UTC)
RTO = timedelta(hours=4)
JOB = "quarterly-restore-test-29456789"
Json = dict[str, Any]


def result(**changes: Any) -> Json:
    """A restore test result as the runner writes it (exit 0)."""
    base: Json = {
        "name": "quarterly", "engine": "postgres", "method": "logical",
        "backup_id": "20300101T020000Z-logical", "backup_finished_at": "2030-01-01T02:05:00Z",
        "manifest_sha256": "ab" * 32,
        "started_at": "2030-01-01T03:00:10Z", "completed_at": "2030-01-01T03:12:40Z",
        "restore_duration_seconds": 750.4, "rto_seconds": 14400, "rto_met": True,
        "passed": True,
        "checks": [
            {"name": "users-present", "passed": True, "value": 42, "message": None},
            {"name": "no-orphans", "passed": True, "value": "0", "message": None},
        ],
        "report_key": "reports/restore-tests/quarterly/20300101T030010Z.json",
    }
    base.update(changes)
    return base


def failure(code: int, error: str, message: str, **result_changes: Any) -> Json:
    """The termination message of exit 15 / 16 (a whole result plus the error)."""
    return {**result(**result_changes), "error": error, "message": message, "exit_code": code}


def outcome(payload: Json | str | None, code: int = 0, job: str = JOB,
            start: str = "2030-01-01T03:00:00Z") -> JobOutcome:
    """The outcome of a Job whose pod exited `code` with `payload` as termination message."""
    message = payload if isinstance(payload, str) or payload is None else json.dumps(payload)
    if code == 0:
        finished = make_job(job, schedule=None,
                            conditions_=[job_condition("Complete", when="2030-01-01T03:12:45Z")],
                            startTime=start, completionTime="2030-01-01T03:12:45Z")
    else:
        finished = make_job(job, schedule=None, conditions_=[
            job_condition("Failed", "PodFailurePolicy", "Container restore-test failed",
                          when="2030-01-01T03:12:45Z")],
            startTime=start)
    pod = make_pod(f"{job}-x", created=start, exit_code=code, message=message, job_name=job)
    return job_outcome(finished, [pod])


def finish(status: RestoreTestStatus | None, done: JobOutcome,
           rto: timedelta | None = RTO) -> RestoreTestStatus:
    return rt_status.run_finished(status, done, rto=rto, generation=2, now=NOW)


def cond(status: RestoreTestStatus, type_: str) -> tuple[str, str, str]:
    found = conditions.get_condition(status.conditions, type_)
    assert found is not None, type_
    return found.status.value, found.reason, found.message


def rt(**spec: Any) -> RestoreTest:
    (body,) = [d for d in yaml.safe_load_all(
        (EXAMPLES / "05-restore-test" / "restoretest.yaml").read_text()) if d]
    body["metadata"].update(namespace="ns", uid="u", generation=3)
    body["spec"].update(spec)
    body["spec"] = {k: v for k, v in body["spec"].items() if v is not None}
    return RestoreTest.from_body(body)


# --- runs -----------------------------------------------------------------------------------


def test_a_started_run_is_running_once() -> None:
    started = datetime(2030, 1, 1, 3, tzinfo=UTC)
    status = rt_status.run_started(None, job_name=JOB, started_at=started)
    assert status.last_run is not None
    assert (status.last_run.result, status.last_run.job_name, status.last_run.started_at) == (
        TestResult.RUNNING, JOB, started)
    assert rt_status.run_started(status, job_name=JOB, started_at=NOW) == status
    older = rt_status.run_started(status, job_name="older", started_at=started - timedelta(1))
    assert older == status
    assert status.run_count is None  # counted when it finishes


def test_a_passed_run_fills_last_run_and_the_conditions() -> None:
    running = rt_status.run_started(None, job_name=JOB,
                                    started_at=datetime(2030, 1, 1, 3, tzinfo=UTC))
    done = outcome(result())
    assert done.payload == result()
    status = finish(running, done)
    run = status.last_run
    assert run is not None
    assert run.result == TestResult.PASSED and run.job_name == JOB
    assert run.backup_id == "20300101T020000Z-logical"
    assert run.started_at == datetime(2030, 1, 1, 3, tzinfo=UTC)  # the Job's times
    assert run.completed_at == datetime(2030, 1, 1, 3, 12, 45, tzinfo=UTC)
    assert (run.restore_duration_seconds, run.restore_duration, run.rto_met) == (
        750.4, "12m30s", True)
    assert [(c.name, c.passed, c.value) for c in run.checks or ()] == [
        ("users-present", True, "42"), ("no-orphans", True, "0")]
    assert run.message == "backup 20300101T020000Z-logical restored in 12m30s; 2 checks passed"
    assert status.run_count == 1
    assert status.last_successful_run_time == run.completed_at
    assert cond(status, "Passed") == ("True", "ChecksPassed", f"{run.message} (Job {JOB})")
    assert cond(status, "RTOMet") == (
        "True", "RTOMet", f"restored in 12m30s, within objectives.rto 4h (Job {JOB})")
    passed = conditions.get_condition(status.conditions, "Passed")
    assert passed is not None and passed.observed_generation == 2
    # The same Job seen again (an operator restart, a repeated event) counts once.
    assert finish(status, done) == status
    assert finish(status, outcome(result(), code=0)) == status


def test_failed_checks_fail_the_run_and_name_the_checks() -> None:
    passed = finish(None, outcome(result(), job="earlier", start="2029-10-01T03:00:00Z"))
    checks = [
        {"name": "users-present", "passed": False, "value": 0,
         "message": "expected at least 1, got 0"},
        {"name": "no-orphans", "passed": True, "value": "0", "message": None},
    ]
    done = outcome(failure(15, "ChecksFailed", "1 of 2 checks failed", checks=checks,
                           passed=False), code=15)
    assert (done.state, done.reason) == ("failed", "ChecksFailed")
    status = finish(passed, done)
    run = status.last_run
    assert run is not None and run.result == TestResult.FAILED
    assert next((c.name, c.passed, c.value, c.message) for c in run.checks or ()) == (
        "users-present", False, "0", "expected at least 1, got 0")
    state, reason, message = cond(status, "Passed")
    assert (state, reason) == ("False", "ChecksFailed")
    assert "1 of 2 checks failed (users-present: expected at least 1, got 0)" in message
    assert cond(status, "RTOMet")[0] == "True"  # it restored in time
    assert status.run_count == 2
    assert status.last_successful_run_time == passed.last_successful_run_time


def test_a_slow_restore_passes_its_checks_and_misses_the_rto() -> None:
    done = outcome(failure(16, "RTOMissed", "restore took 5h2m, over the RTO of 4h",
                           restore_duration_seconds=18120, rto_met=False), code=16)
    status = finish(None, done)
    run = status.last_run
    assert run is not None and run.result == TestResult.PASSED and run.rto_met is False
    assert run.message is not None and run.message.endswith("; over objectives.rto 4h")
    assert cond(status, "Passed")[:2] == ("True", "ChecksPassed")
    assert cond(status, "RTOMet") == (
        "False", "RTOMissed", f"restored in 5h2m, over objectives.rto 4h (Job {JOB})")
    assert status.last_successful_run_time == run.completed_at


def test_a_run_that_could_not_restore_fails_with_the_runners_reason() -> None:
    message = "object base/x/data.zst: SHA-256 mismatch"
    done = outcome({"error": "IntegrityCheckFailed", "message": message, "exit_code": 7},
                   code=7)
    status = finish(None, done)
    run = status.last_run
    assert run is not None and run.result == TestResult.FAILED
    assert run.checks is None and run.restore_duration is None and run.rto_met is None
    assert run.started_at == datetime(2030, 1, 1, 3, tzinfo=UTC)  # the Job's start
    state, reason, text = cond(status, "Passed")
    assert (state, reason) == ("False", "IntegrityCheckFailed") and message in text
    rto = cond(status, "RTOMet")
    assert rto[:2] == ("Unknown", "NotMeasured") and "IntegrityCheckFailed" in rto[2]
    assert status.last_successful_run_time is None and status.run_count == 1


def test_without_an_objective_the_restore_time_is_measured_not_judged() -> None:
    status = finish(None, outcome(result(rto_met=None, rto_seconds=None)), rto=None)
    assert status.last_run is not None and status.last_run.rto_met is None
    assert status.last_run.restore_duration == "12m30s"
    assert cond(status, "RTOMet")[:2] == ("Unknown", "NoObjective")
    # A runner result without its own judgement is judged against the objective.
    judged = finish(None, outcome(result(rto_met=None)), rto=timedelta(minutes=10))
    assert judged.last_run is not None and judged.last_run.rto_met is False


def test_a_job_that_left_no_result_passes_on_its_exit_code() -> None:
    status = finish(None, outcome(None))
    assert status.last_run is not None and status.last_run.result == TestResult.PASSED
    assert cond(status, "Passed")[:2] == ("True", "ChecksPassed")
    assert cond(status, "RTOMet")[:2] == ("Unknown", "NotMeasured")


def test_an_older_run_finishing_late_changes_nothing() -> None:
    newer = rt_status.run_started(None, job_name="newer", started_at=NOW)
    late = outcome(failure(15, "ChecksFailed", "x", passed=False), code=15, job="older")
    assert finish(newer, late) == newer


@pytest.mark.parametrize("garbage", [
    "not json at all", "[1, 2]", json.dumps({"checks": "many", "backup_id": 7}),
    json.dumps({"checks": [1, {"name": 3}, {"name": "ok", "passed": "yes"}],
                "restore_duration_seconds": -5, "started_at": "yesterday"}),
])
def test_garbage_results_never_raise(garbage: str) -> None:
    status = finish(None, outcome(garbage))
    assert status.last_run is not None and status.last_run.checks in (None, [])
    assert status.last_run.restore_duration is None


def test_a_deleted_running_job_fails_the_run() -> None:
    running = rt_status.run_started(None, job_name=JOB, started_at=NOW - timedelta(hours=1))
    gone = rt_status.run_vanished(running, job_name=JOB, rto=RTO, generation=2, now=NOW)
    assert gone.last_run is not None and gone.last_run.result == TestResult.FAILED
    assert gone.last_run.started_at == NOW - timedelta(hours=1)
    assert cond(gone, "Passed")[:2] == ("False", "JobDeleted")
    assert cond(gone, "RTOMet")[:2] == ("Unknown", "NotMeasured")
    assert rt_status.run_vanished(gone, job_name=JOB, rto=RTO, generation=2, now=NOW) == gone
    assert rt_status.run_vanished(running, job_name="other", rto=RTO, generation=2,
                                  now=NOW) == running


# --- the spec -------------------------------------------------------------------------------


def test_reconciled_sets_ready_source_and_generation() -> None:
    status = rt_status.reconciled(None, rt(), source="tonebridge-db", message="m", now=NOW)
    assert cond(status, "Ready") == ("True", "Reconciled", "m")
    assert status.observed_generation == 3 and status.source == "tonebridge-db"
    assert conditions.get_condition(status.conditions, "RTOMet") is None  # no run yet
    without = rt_status.reconciled(status, rt(objectives=None), source="s", message="m",
                                   now=NOW)
    assert cond(without, "RTOMet")[:2] == ("Unknown", "NoObjective")
    again = rt_status.reconciled(without, rt(), source="s", message="m", now=NOW)
    assert cond(again, "RTOMet") == ("Unknown", "Pending",
                                    "no run measured against objectives.rto 4h yet")
    unjudged = finish(without, outcome(result(rto_met=None)), rto=None)
    assert "(12m30s)" in cond(unjudged, "RTOMet")[2]
    kept_time = rt_status.reconciled(unjudged, rt(objectives=None), source="s", message="m",
                                     now=NOW)
    assert cond(kept_time, "RTOMet") == cond(unjudged, "RTOMet")  # not rewritten
    measured = finish(again, outcome(result()))
    kept = rt_status.reconciled(measured, rt(), source="s", message="m", now=NOW)
    assert cond(kept, "RTOMet") == cond(measured, "RTOMet") and cond(kept, "RTOMet")[0] == "True"


# --- notifications --------------------------------------------------------------------------


def test_notifications_once_per_change_of_state() -> None:
    def events(before: RestoreTestStatus | None, after: RestoreTestStatus) -> list[str]:
        return [news.event.value for news in rt_status.notifications(before, after)]

    first = finish(None, outcome(result(), job="a", start="2030-01-01T00:00:00Z"))
    assert events(None, first) == ["RestoreTestPassed"]
    second = finish(first, outcome(result(), job="b", start="2030-01-01T01:00:00Z"))
    assert events(first, second) == []
    failed = finish(second, outcome(failure(15, "ChecksFailed", "x", passed=False), code=15,
                                    job="c", start="2030-01-01T02:00:00Z"))
    assert events(second, failed) == ["RestoreTestFailed"]
    slow = finish(failed, outcome(failure(16, "RTOMissed", "slow", rto_met=False), code=16,
                                  job="d", start="2030-01-01T03:00:00Z"))
    news = rt_status.notifications(failed, slow)
    assert [(n.event, n.state) for n in news] == [
        (NotificationEvent.RESTORE_TEST_PASSED, "Passed"), (NotificationEvent.RTO_MISSED, "Missed")]
    assert news[1].condition.reason == "RTOMissed"
    assert events(slow, finish(slow, outcome(failure(16, "RTOMissed", "slow", rto_met=False),
                                             code=16, job="e",
                                             start="2030-01-01T04:00:00Z"))) == []
