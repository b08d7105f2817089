"""BackupPolicy Restorable / RTOMet from its RestoreTests: the newest finished run decides,
a run in progress changes nothing, the policy's objectives.rto judges the measured time
(else the test's own judgement)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tonebridge_dr.api.backuppolicy import BackupPolicyStatus
from tonebridge_dr.api.restoretest import RestoreTestStatus, TestResult, TestRun
from tonebridge_dr.status import conditions
from tonebridge_dr.status.restorable import assess_restorable

NOW = datetime(2030, 1, 1, 6, 0, tzinfo=UTC)


def status(result: TestResult, *, finished: datetime | None = NOW - timedelta(hours=3),
           passed_reason: str | None = None, **run: Any) -> RestoreTestStatus:
    """A RestoreTest status whose lastRun has `result` (finished at `finished`)."""
    values: dict[str, Any] = {
        "started_at": (finished or NOW) - timedelta(minutes=5), "completed_at": finished,
        "result": result, "backup_id": "b1", "job_name": "quarterly-restore-test-1",
        "restore_duration_seconds": 750.0, "restore_duration": "12m30s", "rto_met": True,
        "message": "backup b1 restored in 12m30s; 2 checks passed",
    }
    values.update(run)
    conds = None
    if passed_reason is not None:
        conds = conditions.set_condition(
            None, type="Passed", status="True" if result == TestResult.PASSED else "False",
            reason=passed_reason, message="", observed_generation=1, now=NOW)
    return RestoreTestStatus(last_run=TestRun(**values), conditions=conds)


def assess(tests: dict[str, RestoreTestStatus | None], *, rto: timedelta | None = None,
           before: BackupPolicyStatus | None = None) -> BackupPolicyStatus:
    return assess_restorable(before, tests, rto=rto, generation=4, now=NOW)


def cond(status: BackupPolicyStatus, type_: str) -> tuple[str, str, str]:
    found = conditions.get_condition(status.conditions, type_)
    assert found is not None
    return found.status.value, found.reason, found.message


def test_no_test_of_the_policy_is_never_tested() -> None:
    new = assess({})
    assert cond(new, "Restorable") == (
        "Unknown", "NeverTested", "no RestoreTest names this policy in source.policyRef")
    assert cond(new, "RTOMet")[:2] == ("Unknown", "NeverTested")
    assert new.last_restore_test is None
    assert cond(assess({"quarterly": None}), "Restorable")[2] == (
        "no RestoreTest of this policy has finished a run yet")


def test_a_passed_run_makes_the_policy_restorable_with_the_test_and_its_age() -> None:
    new = assess({"quarterly": status(TestResult.PASSED)})
    assert cond(new, "Restorable") == (
        "True", "RestoreTestPassed", "RestoreTest quarterly passed 3h ago: backup b1 restored "
        "in 12m30s; 2 checks passed (Job quarterly-restore-test-1)")
    summary = new.last_restore_test
    assert summary is not None
    assert (summary.name, summary.passed, summary.backup_id, summary.reason) == (
        "quarterly", True, "b1", None)
    # No policy objective: the test's own judgement, said as such.
    assert cond(new, "RTOMet") == (
        "True", "RTOMet", "RestoreTest quarterly (3h ago) restored in 12m30s, within the "
        "test's objectives.rto (the policy sets none)")


def test_the_newest_finished_run_decides_and_names_why_it_failed() -> None:
    tests = {
        "old-pass": status(TestResult.PASSED, finished=NOW - timedelta(days=2)),
        "new-fail": status(TestResult.FAILED, passed_reason="IntegrityCheckFailed",
                           restore_duration_seconds=None, restore_duration=None, rto_met=False,
                           message="the restore test failed (IntegrityCheckFailed): bad"),
        "never-ran": RestoreTestStatus(),
    }
    new = assess(tests, rto=timedelta(hours=1))
    status_, reason, message = cond(new, "Restorable")
    assert (status_, reason) == ("False", "RestoreTestFailed")
    assert message.startswith("RestoreTest new-fail failed 3h ago (IntegrityCheckFailed): ")
    assert new.last_restore_test is not None
    assert new.last_restore_test.reason == "IntegrityCheckFailed"
    assert cond(new, "RTOMet")[:2] == ("Unknown", "NotMeasured")


def test_the_policy_rto_judges_the_measured_time() -> None:
    passed = {"quarterly": status(TestResult.PASSED)}
    assert cond(assess(passed, rto=timedelta(minutes=15)), "RTOMet") == (
        "True", "RTOMet", "RestoreTest quarterly (3h ago) restored in 12m30s, within "
        "objectives.rto 15m")
    # The test met its own objective; the policy's is stricter: the policy's wins.
    assert cond(assess(passed, rto=timedelta(minutes=10)), "RTOMet")[:2] == (
        "False", "RTOMissed")
    failed = {"quarterly": status(TestResult.FAILED, passed_reason="ChecksFailed",
                                  rto_met=False)}
    assert cond(assess(failed, rto=timedelta(hours=1)), "RTOMet")[:2] == ("False", "RTOMissed")
    unjudged = {"quarterly": status(TestResult.PASSED, rto_met=None)}
    assert cond(assess(unjudged), "RTOMet")[:2] == ("Unknown", "NoObjective")


def test_a_run_in_progress_keeps_the_last_verdict_and_repeats_are_idempotent() -> None:
    first = assess({"quarterly": status(TestResult.PASSED)})
    running = {"quarterly": status(TestResult.RUNNING, finished=None)}
    assert assess(running, before=first) == first
    assert assess({"quarterly": status(TestResult.PASSED)}, before=first) == first
    # A later failure flips it, with a new transition time.
    later = NOW + timedelta(hours=1)
    failed = assess_restorable(
        first, {"quarterly": status(TestResult.FAILED, finished=later, rto_met=False)},
        rto=None, generation=4, now=later)
    old = conditions.get_condition(first.conditions, "Restorable")
    new = conditions.get_condition(failed.conditions, "Restorable")
    assert old is not None and new is not None
    assert (new.status.value, new.last_transition_time) == ("False", later)
    assert old.last_transition_time == NOW
