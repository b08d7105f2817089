"""What a policy's RestoreTests proved: the Restorable and RTOMet conditions of a BackupPolicy.

`assess_restorable` is called on every monitoring tick with the statuses of the
RestoreTests whose `spec.source.policyRef` names the policy (read by the controller). It
takes the newest finished run among them (by `lastRun.completedAt`) and writes:

* `lastRestoreTest`: that run in short (test, passed, reason, backup, restore time);
* Restorable: True (RestoreTestPassed) when it restored and every check passed, False
  (RestoreTestFailed) when not, Unknown (NeverTested) when no test of the policy has
  finished a run. The message names the test and the age of its run;
* RTOMet: its restore time against the policy's `objectives.rto` (True RTOMet, False
  RTOMissed; a run that did not pass recovered nothing usable: False, as the runner
  judges); without a policy objective, the test's own judgement against its
  `objectives.rto`; Unknown with NotMeasured (the run measured no restore), NoObjective
  (neither sets `objectives.rto`) or NeverTested.

A run in progress changes nothing: while no test of the policy has a finished run but
one is running, the previous verdict stands (status returned unchanged).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from tonebridge_dr.api.backuppolicy import BackupPolicyStatus, RestoreTestSummary
from tonebridge_dr.api.conditions import Condition, ConditionType, Reason
from tonebridge_dr.api.formats import format_duration
from tonebridge_dr.api.restoretest import RestoreTestStatus, TestResult, TestRun
from tonebridge_dr.status import conditions

__all__ = ["RESTORABLE", "RTO_MET", "assess_restorable", "newest_finished"]

RESTORABLE = ConditionType.RESTORABLE.value
RTO_MET = ConditionType.RTO_MET.value
_FINISHED = (TestResult.PASSED, TestResult.FAILED)


def newest_finished(
    tests: Mapping[str, RestoreTestStatus | None],
) -> tuple[str, RestoreTestStatus, TestRun] | None:
    """The test whose `lastRun` finished last (ties: by name), with its status and run."""
    found: list[tuple[datetime, str, RestoreTestStatus, TestRun]] = []
    for name, status in tests.items():
        if status is None or status.last_run is None:
            continue
        run = status.last_run
        if run.result not in _FINISHED or run.completed_at is None:
            continue
        found.append((run.completed_at, name, status, run))
    if not found:
        return None
    _, name, status, run = max(found, key=lambda item: (item[0], item[1]))
    return name, status, run


def _running(tests: Mapping[str, RestoreTestStatus | None]) -> bool:
    return any(
        s is not None and s.last_run is not None and s.last_run.result == TestResult.RUNNING
        for s in tests.values()
    )


def _text(age: timedelta) -> str:
    return format_duration(timedelta(seconds=max(int(age.total_seconds()), 0)))


def _took(run: TestRun) -> str:
    if run.restore_duration:
        return run.restore_duration
    seconds = run.restore_duration_seconds or 0.0
    return format_duration(timedelta(seconds=seconds))


def _rto(
    name: str, run: TestRun, passed: bool, rto: timedelta | None, said: str,
) -> tuple[conditions.StatusValue, str, str]:
    measured = run.restore_duration_seconds
    if rto is not None:
        objective = f"objectives.rto {format_duration(rto)}"
        if measured is None:
            return ("Unknown", Reason.NOT_MEASURED.value,
                    f"{said} measured no restore time, so nothing is known about {objective}")
        if not passed:
            return ("False", Reason.RTO_MISSED.value,
                    f"{said} restored in {_took(run)} but did not pass: nothing usable was "
                    f"recovered within {objective}")
        if measured <= rto.total_seconds():
            return ("True", Reason.RTO_MET.value,
                    f"{said} restored in {_took(run)}, within {objective}")
        return ("False", Reason.RTO_MISSED.value,
                f"{said} restored in {_took(run)}, over {objective}")
    if run.rto_met is None:
        if measured is None:
            return ("Unknown", Reason.NOT_MEASURED.value, f"{said} measured no restore time")
        return ("Unknown", Reason.NO_OBJECTIVE.value,
                f"{said} restored in {_took(run)}; neither the policy nor RestoreTest {name} "
                "sets objectives.rto: measured, not judged")
    within = "within" if run.rto_met else "over"
    return ("True" if run.rto_met else "False",
            Reason.RTO_MET.value if run.rto_met else Reason.RTO_MISSED.value,
            f"{said} restored in {_took(run)}, {within} the test's objectives.rto "
            "(the policy sets none)")


def assess_restorable(
    status: BackupPolicyStatus | None,
    tests: Mapping[str, RestoreTestStatus | None],
    *,
    rto: timedelta | None,
    generation: int | None,
    now: datetime,
) -> BackupPolicyStatus:
    """Status with `lastRestoreTest`, Restorable and RTOMet set from `tests` (name ->
    status of every RestoreTest of the policy) at `now`; `rto` is the policy's
    `objectives.rto`. Pure and idempotent (see the module docstring)."""
    current = status or BackupPolicyStatus()
    newest = newest_finished(tests)
    if newest is None and _running(tests) and conditions.get_condition(
        current.conditions, RESTORABLE
    ) is not None:
        return current

    def put(conds: Sequence[Condition] | None, type_: str, value: conditions.StatusValue,
            reason: str, message: str) -> list[Condition]:
        return conditions.set_condition(conds, type=type_, status=value, reason=reason,
                                        message=message, observed_generation=generation,
                                        now=now)

    if newest is None:
        message = ("no RestoreTest of this policy has finished a run yet"
                   if tests else "no RestoreTest names this policy in source.policyRef")
        updated = put(current.conditions, RESTORABLE, "Unknown", Reason.NEVER_TESTED.value,
                      message)
        updated = put(updated, RTO_MET, "Unknown", Reason.NEVER_TESTED.value, message)
        return current.model_copy(update={"conditions": updated, "last_restore_test": None})

    name, test_status, run = newest
    passed = run.result == TestResult.PASSED
    verdict = conditions.get_condition(test_status.conditions, ConditionType.PASSED.value)
    why = verdict.reason if verdict is not None and not passed else None
    ago = _text(now - run.completed_at) if run.completed_at is not None else "?"
    job = f" (Job {run.job_name})" if run.job_name else ""
    said = f"RestoreTest {name} ({ago} ago)"
    if passed:
        restorable: conditions.StatusValue = "True"
        reason = Reason.RESTORE_TEST_PASSED.value
        message = f"RestoreTest {name} passed {ago} ago: {run.message or 'restored'}{job}"
    else:
        restorable, reason = "False", Reason.RESTORE_TEST_FAILED.value
        because = f" ({why})" if why else ""
        message = (f"RestoreTest {name} failed {ago} ago{because}: "
                   f"{run.message or 'no details'}{job}")
    updated = put(current.conditions, RESTORABLE, restorable, reason, message)
    updated = put(updated, RTO_MET, *_rto(name, run, passed, rto, said))
    summary = RestoreTestSummary(
        name=name, passed=passed, reason=why, completed_at=run.completed_at,
        backup_id=run.backup_id, restore_duration_seconds=run.restore_duration_seconds,
        rto_met=run.rto_met,
    )
    return current.model_copy(update={"conditions": updated, "last_restore_test": summary})
