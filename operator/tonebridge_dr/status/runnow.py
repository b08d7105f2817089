"""`status.runNow` of a BackupPolicy: the backup the last run-now token started (pure).

Started (the Job exists) -> Running; refused -> Failed at once; the Job of that token
finished -> Succeeded with the backup id, or Failed with the runner's reason. A Job of an
older token finishing later never touches the newer token's entry.
"""

from __future__ import annotations

from datetime import datetime

from tonebridge_dr.api.backuppolicy import BackupPolicyStatus, RunNowPhase, RunNowStatus
from tonebridge_dr.status.jobs import JobOutcome

__all__ = ["finished", "refused", "started"]


def started(status: BackupPolicyStatus | None, token: str, job: str,
            now: datetime) -> BackupPolicyStatus:
    current = status or BackupPolicyStatus()
    if current.run_now is not None and current.run_now.token == token and (
        current.run_now.job == job and current.run_now.phase != RunNowPhase.RUNNING
    ):
        return current  # the Job already finished and was recorded: keep its result
    entry = RunNowStatus(token=token, phase=RunNowPhase.RUNNING, job=job, started_at=now,
                         message=f"Job {job} created")
    return current.model_copy(update={"run_now": entry})


def refused(status: BackupPolicyStatus | None, token: str, message: str,
            now: datetime) -> BackupPolicyStatus:
    current = status or BackupPolicyStatus()
    entry = RunNowStatus(token=token, phase=RunNowPhase.FAILED, started_at=now,
                         completed_at=now, message=message)
    return current.model_copy(update={"run_now": entry})


def finished(status: BackupPolicyStatus, outcome: JobOutcome) -> BackupPolicyStatus:
    """`status` after the Job `outcome` finished: only the entry of that Job changes."""
    entry = status.run_now
    if entry is None or entry.job != outcome.job_name or outcome.state == "running":
        return status
    result = outcome.result or {}
    ok = outcome.state == "succeeded" and bool(result.get("id"))
    message = (f"backup {result.get('id')} finished" if ok
               else f"{outcome.reason}: {outcome.message}")
    update = entry.model_copy(update={
        "phase": RunNowPhase.SUCCEEDED if ok else RunNowPhase.FAILED,
        "backup_id": str(result["id"]) if ok else None,
        "completed_at": outcome.finished_at,
        "message": message,
    })
    return status.model_copy(update={"run_now": update})
