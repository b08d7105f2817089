"""RestoreTest status as small pure transitions: `(status, event) -> status`.

Conditions:
* Ready: the CronJob is applied (True, Reconciled) or why it is not (False, with the
  reason: SecretNotFound, PolicyNotFound, InvalidSpec, ...);
* Passed: the newest run restored the backup and every check passed (True,
  ChecksPassed); False with ChecksFailed, or with the runner's reason of a run that did
  not restore (IntegrityCheckFailed, BackupNotFound, ..., JobDeleted). A run that was only
  too slow (exit 16, RTOMissed) restored and checked fine: Passed stays about the data;
  RTOMet says it was too slow;
* RTOMet: the newest run's restore time within `objectives.rto` (True, RTOMet; False,
  RTOMissed); Unknown with NoObjective without an objective, NotMeasured when the run
  ended before it measured a restore.

`lastRun` is the newest run by start time: a Job that started before it and finishes
later changes nothing (an old Job seen again after an operator restart never replaces
newer news). Every transition is idempotent: the same Job observed twice counts once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from tonebridge_dr.api import formats
from tonebridge_dr.api.common import NotificationEvent
from tonebridge_dr.api.conditions import Condition, ConditionType, Reason
from tonebridge_dr.api.kinds import RestoreTest
from tonebridge_dr.api.restoretest import CheckResult, RestoreTestStatus, TestResult, TestRun
from tonebridge_dr.status import conditions
from tonebridge_dr.status.jobs import JobOutcome, parse_time

__all__ = [
    "PASSED",
    "RTO_MET",
    "News",
    "Verdict",
    "finished_run",
    "notifications",
    "reconciled",
    "run_finished",
    "run_started",
    "run_vanished",
    "verdict",
]

PASSED = ConditionType.PASSED.value
RTO_MET = ConditionType.RTO_MET.value
_CHECKS_NAMED = 3
_VALUE_LIMIT = 256
_RESTORED = frozenset({Reason.CHECKS_FAILED.value, Reason.RTO_MISSED.value})
"""Failure reasons of a run that restored the backup (its whole result comes along)."""


def _base(status: RestoreTestStatus | None) -> RestoreTestStatus:
    return status if status is not None else RestoreTestStatus()


def _rto_text(rto: timedelta) -> str:
    return formats.format_duration(rto)


# --- the spec is applied ------------------------------------------------------------------------


def reconciled(
    status: RestoreTestStatus | None, rt: RestoreTest, *, source: str, message: str,
    now: datetime,
) -> RestoreTestStatus:
    """The CronJob is applied: Ready=True (Reconciled, `message`), `observedGeneration`,
    the SOURCE column. Without `objectives.rto` RTOMet is Unknown (NoObjective); an
    objective set after that waits for the next run (Unknown, Pending)."""
    current = _base(status)
    generation = rt.metadata.generation
    updated = conditions.set_condition(
        current.conditions, type=conditions.READY, status="True",
        reason=Reason.RECONCILED.value, message=message, observed_generation=generation,
        now=now,
    )
    rto = rt.spec.objectives.rto if rt.spec.objectives is not None else None
    rto_met = conditions.get_condition(updated, RTO_MET)
    # A run may have said NoObjective already, with its restore time: not rewritten.
    said = rto_met is not None and rto_met.reason == Reason.NO_OBJECTIVE.value
    if rto is None and not said:
        updated = conditions.set_condition(
            updated, type=RTO_MET, status="Unknown", reason=Reason.NO_OBJECTIVE.value,
            message="spec.objectives.rto is not set: restore times are measured, not judged",
            observed_generation=generation, now=now,
        )
    elif rto is not None and said:
        updated = conditions.set_condition(
            updated, type=RTO_MET, status="Unknown", reason=Reason.PENDING.value,
            message=f"no run measured against objectives.rto {_rto_text(rto)} yet",
            observed_generation=generation, now=now,
        )
    return current.model_copy(
        update={"observed_generation": generation, "conditions": updated, "source": source}
    )


# --- runs ---------------------------------------------------------------------------------------


def _older(started: datetime | None, job_name: str, current: TestRun | None) -> bool:
    """Whether a run of `job_name` that started at `started` is older than `current`."""
    if current is None or current.job_name == job_name:
        return False
    return started is not None and current.started_at is not None and (
        started < current.started_at
    )


def run_started(
    status: RestoreTestStatus | None, *, job_name: str, started_at: datetime,
) -> RestoreTestStatus:
    """A test Job exists: `lastRun` is that run, Running (unless it is known already, or
    older than the run `lastRun` names)."""
    current = _base(status)
    last = current.last_run
    if (last is not None and last.job_name == job_name) or _older(started_at, job_name, last):
        return current
    run = TestRun(started_at=started_at, result=TestResult.RUNNING, job_name=job_name)
    return current.model_copy(update={"last_run": run})


def _text(value: Any, limit: int = _VALUE_LIMIT) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    text = str(value).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _checks(value: Any) -> list[CheckResult] | None:
    """The runner's `checks` (tolerant: entries that are not objects with a name and a
    boolean `passed` are left out)."""
    if not isinstance(value, list):
        return None
    found = []
    for item in value:
        if not isinstance(item, Mapping):
            continue
        name, passed = item.get("name"), item.get("passed")
        if not isinstance(name, str) or not name or not isinstance(passed, bool):
            continue
        found.append(CheckResult(name=name[:_VALUE_LIMIT], passed=passed,
                                 value=_text(item.get("value")),
                                 message=_text(item.get("message"), 1024)))
    return found


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return float(value)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What one finished run says: the Passed condition's status, reason and message."""

    passed: bool
    reason: str
    message: str


def _failed_checks(checks: list[CheckResult] | None) -> list[CheckResult]:
    return [check for check in checks or () if not check.passed]


def _describe_checks(failed: list[CheckResult], total: int) -> str:
    named = "; ".join(
        f"{check.name}: {check.message or f'got {check.value}'}" for check in failed[:_CHECKS_NAMED]
    )
    more = f"; and {len(failed) - _CHECKS_NAMED} more" if len(failed) > _CHECKS_NAMED else ""
    return f"{len(failed)} of {total} checks failed ({named}{more})"


def verdict(outcome: JobOutcome, run: TestRun) -> Verdict:
    """Passed or not, why, in one sentence (see the module docstring)."""
    restored = outcome.state == "succeeded" or outcome.reason in _RESTORED
    if not restored:
        return Verdict(False, outcome.reason, f"the restore test failed ({outcome.reason}): "
                       f"{outcome.message}")
    backup = f"backup {run.backup_id}" if run.backup_id else "the backup"
    took = f" in {run.restore_duration}" if run.restore_duration else ""
    failed = _failed_checks(run.checks)
    total = len(run.checks or ())
    said_failed = (outcome.payload or {}).get("passed") is False
    if failed or outcome.reason == Reason.CHECKS_FAILED.value or said_failed:
        what = _describe_checks(failed, total) if failed else (
            f"the checks failed: {outcome.message}" if outcome.state == "failed"
            else "the runner reported the checks as not passed")
        return Verdict(False, Reason.CHECKS_FAILED.value, f"{backup} restored{took}, but {what}")
    checks = f"{total} check{'s' if total != 1 else ''} passed" if total else "no checks to run"
    return Verdict(True, Reason.CHECKS_PASSED.value, f"{backup} restored{took}; {checks}")


def finished_run(outcome: JobOutcome, *, rto: timedelta | None, now: datetime) -> TestRun:
    """The finished run `outcome` describes (nothing in it is trusted: unknown shapes are
    left out). `rtoMet` is the runner's judgement, else computed against `rto`."""
    payload = outcome.payload or {}
    duration = _seconds(payload.get("restore_duration_seconds"))
    rto_met = payload.get("rto_met")
    if not isinstance(rto_met, bool):
        rto_met = None if rto is None or duration is None else duration <= rto.total_seconds()
    backup_id = payload.get("backup_id")
    # Times as Kubernetes saw the Job (what orders runs, also while one is running); the
    # runner's own clock only where the Job has none.
    run = TestRun(
        started_at=outcome.started_at or parse_time(payload.get("started_at")),
        completed_at=outcome.finished_at or parse_time(payload.get("completed_at")) or now,
        job_name=outcome.job_name,
        backup_id=backup_id if isinstance(backup_id, str) and backup_id else None,
        restore_duration_seconds=duration,
        restore_duration=formats.format_duration(duration) if duration is not None else None,
        rto_met=rto_met,
        checks=_checks(payload.get("checks")),
    )
    judged = verdict(outcome, run)
    message = judged.message
    if rto is not None and rto_met is False:
        message += f"; over objectives.rto {_rto_text(rto)}"
    return run.model_copy(update={
        "result": TestResult.PASSED if judged.passed else TestResult.FAILED,
        "message": message,
    })


def _rto_condition(run: TestRun, rto: timedelta | None) -> tuple[conditions.StatusValue, str, str]:
    job = f"Job {run.job_name}"
    if rto is None:
        took = f" ({run.restore_duration})" if run.restore_duration else ""
        return ("Unknown", Reason.NO_OBJECTIVE.value,
                f"spec.objectives.rto is not set: the restore time{took} is measured, not judged")
    if run.rto_met is None:
        return ("Unknown", Reason.NOT_MEASURED.value,
                f"the newest run ({job}) ended before it measured a restore: {run.message}")
    took = run.restore_duration or "?"
    if run.rto_met:
        return ("True", Reason.RTO_MET.value,
                f"restored in {took}, within objectives.rto {_rto_text(rto)} ({job})")
    return ("False", Reason.RTO_MISSED.value,
            f"restored in {took}, over objectives.rto {_rto_text(rto)} ({job})")


def run_finished(
    status: RestoreTestStatus | None,
    outcome: JobOutcome,
    *,
    rto: timedelta | None,
    generation: int | None,
    now: datetime,
) -> RestoreTestStatus:
    """Record a finished test Job (`outcome.state` succeeded or failed; running changes
    nothing): `lastRun`, `runCount`, `lastSuccessfulRunTime`, Passed, RTOMet. `rto` is
    the spec's `objectives.rto`. Idempotent; a run older than `lastRun` is ignored."""
    current = _base(status)
    last = current.last_run
    if outcome.state == "running":
        return current
    known = last is not None and last.job_name == outcome.job_name
    if (known and last is not None and last.result in (TestResult.PASSED, TestResult.FAILED)) or (
        _older(outcome.started_at, outcome.job_name, last)
    ):
        return current
    run = finished_run(outcome, rto=rto, now=now)
    if known and last is not None and last.started_at is not None:
        run = run.model_copy(update={"started_at": run.started_at or last.started_at})
    judged = verdict(outcome, run)
    text = f"{run.message} (Job {outcome.job_name})"
    updated = conditions.set_condition(
        current.conditions, type=PASSED, status="True" if judged.passed else "False",
        reason=judged.reason, message=text, observed_generation=generation, now=now,
    )
    rto_status, rto_reason, rto_message = _rto_condition(run, rto)
    updated = conditions.set_condition(
        updated, type=RTO_MET, status=rto_status, reason=rto_reason, message=rto_message,
        observed_generation=generation, now=now,
    )
    updates: dict[str, Any] = {
        "last_run": run,
        "run_count": (current.run_count or 0) + 1,
        "conditions": updated,
    }
    if judged.passed:
        updates["last_successful_run_time"] = run.completed_at
    return current.model_copy(update=updates)


def run_vanished(
    status: RestoreTestStatus | None, *, job_name: str, rto: timedelta | None,
    generation: int | None, now: datetime,
) -> RestoreTestStatus:
    """The Job of the running `lastRun` was deleted before it finished: the run failed
    (JobDeleted). Anything else is no news."""
    current = _base(status)
    last = current.last_run
    if last is None or last.job_name != job_name or last.result != TestResult.RUNNING:
        return current
    outcome = JobOutcome(
        state="failed", job_name=job_name, schedule=None, started_at=last.started_at,
        finished_at=now, result=None, reason=Reason.JOB_DELETED.value,
        message=f"the test Job {job_name} was deleted before it finished",
    )
    return run_finished(current, outcome, rto=rto, generation=generation, now=now)


# --- what is news -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class News:
    """One notification: the event, the payload's `state`, and why (the condition's
    message)."""

    event: NotificationEvent
    state: str
    condition: Condition


_NEWS: tuple[tuple[NotificationEvent, str, str, conditions.StatusValue], ...] = (
    (NotificationEvent.RESTORE_TEST_PASSED, "Passed", PASSED, "True"),
    (NotificationEvent.RESTORE_TEST_FAILED, "Failed", PASSED, "False"),
    (NotificationEvent.RTO_MISSED, "Missed", RTO_MET, "False"),
)


def notifications(before: RestoreTestStatus | None, after: RestoreTestStatus) -> list[News]:
    """The notifications a change of status deserves, once per change of state: Passed
    turned True (RestoreTestPassed) or False (RestoreTestFailed), RTOMet turned False
    (RTOMissed)."""
    old = before.conditions if before is not None else None
    news: list[News] = []
    for event, state, kind, status in _NEWS:
        changed = conditions.turned(old, after.conditions, kind, status)
        if changed is not None:
            news.append(News(event, state, changed))
    return news
