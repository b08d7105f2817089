"""status.runNow transitions (pure)."""

from __future__ import annotations

import datetime as dt

from tonebridge_dr.api.backuppolicy import RunNowPhase
from tonebridge_dr.status import runnow
from tonebridge_dr.status.jobs import JobOutcome

NOW = dt.datetime(2026, 12, 5, 10, 0, tzinfo=dt.UTC)


def outcome(job: str, state: str, backup: str | None = None) -> JobOutcome:
    return JobOutcome(
        state=state, job_name=job, schedule="daily", started_at=NOW,  # type: ignore[arg-type]
        finished_at=NOW + dt.timedelta(minutes=1),
        result={"id": backup} if backup else None, reason="JobFailed" if not backup else "",
        message="pg_dump: connection refused" if not backup else "",
    )


def test_started_then_succeeded_names_the_backup() -> None:
    status = runnow.started(None, "t1", "job-1", NOW)
    assert status.run_now is not None and status.run_now.phase == RunNowPhase.RUNNING
    done = runnow.finished(status, outcome("job-1", "succeeded", "20261205T100000Z"))
    assert done.run_now is not None
    assert (done.run_now.phase, done.run_now.backup_id) == (RunNowPhase.SUCCEEDED,
                                                           "20261205T100000Z")
    # The same token seen again (a retry after AlreadyExists) keeps the result.
    assert runnow.started(done, "t1", "job-1", NOW).run_now == done.run_now


def test_an_older_job_never_touches_a_newer_token() -> None:
    status = runnow.started(None, "t2", "job-2", NOW)
    assert runnow.finished(status, outcome("job-1", "succeeded", "x")) == status
    failed = runnow.finished(status, outcome("job-2", "failed"))
    assert failed.run_now is not None and failed.run_now.phase == RunNowPhase.FAILED
    assert failed.run_now.message == "JobFailed: pg_dump: connection refused"


def test_refused_is_failed_at_once() -> None:
    status = runnow.refused(None, "t3", "run-now 't3' refused: Secret missing", NOW)
    assert status.run_now is not None and status.run_now.phase == RunNowPhase.FAILED
    assert status.run_now.job is None and status.run_now.completed_at == NOW
