"""Backup Jobs whose pod cannot start (pure): reported within one monitoring round, not
after the Job's deadline (hours).

A pod waits with a reason the kubelet gives when it cannot start the container: a Secret
or key the env refers to is missing (CreateContainerConfigError), the image cannot be
pulled (ErrImagePull, ImagePullBackOff), the image name is invalid. A running backup Job
with such a pod makes LastBackupSucceeded False with reason `PodCannotStart` and the
kubelet's message; the Job's end (success once the cause is fixed, or its deadline) is
recorded as usual and replaces it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tonebridge_dr.api.backuppolicy import BackupPolicyStatus
from tonebridge_dr.api.conditions import Reason
from tonebridge_dr.status import conditions

__all__ = ["STUCK_REASONS", "StuckPod", "apply_stuck_pods", "stuck_pods"]

STUCK_REASONS = frozenset({
    "CreateContainerConfigError", "CreateContainerError", "ErrImagePull", "ImagePullBackOff",
    "InvalidImageName", "ErrImageNeverPull",
})


@dataclass(frozen=True)
class StuckPod:
    job: str
    pod: str
    reason: str
    message: str

    def sentence(self) -> str:
        text = f"the backup Job {self.job} cannot start its pod {self.pod}: {self.reason}"
        return f"{text}: {self.message}" if self.message else text


def stuck_pods(job: str, pods: Iterable[Mapping[str, Any]]) -> list[StuckPod]:
    """The pods of `job` that wait for a reason they will not get past by themselves."""
    found = []
    for pod in pods:
        name = str((pod.get("metadata") or {}).get("name") or "")
        status = pod.get("status") or {}
        for container in [*(status.get("initContainerStatuses") or []),
                          *(status.get("containerStatuses") or [])]:
            waiting = (container.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            if reason in STUCK_REASONS:
                found.append(StuckPod(job, name, str(reason), str(waiting.get("message") or "")))
                break
    return found


def apply_stuck_pods(status: BackupPolicyStatus | None, stuck: list[StuckPod], *,
                     generation: int | None, now: datetime) -> BackupPolicyStatus | None:
    """`status` with LastBackupSucceeded False (PodCannotStart) for the first stuck pod;
    None when there is nothing to say (no stuck pod: the condition is left to the Jobs)."""
    if not stuck:
        return None
    current = status or BackupPolicyStatus()
    first = stuck[0]
    message = first.sentence()
    if len(stuck) > 1:
        message += f" (and {len(stuck) - 1} more)"
    updated = conditions.set_condition(
        current.conditions, type=conditions.LAST_BACKUP_SUCCEEDED, status="False",
        reason=Reason.POD_CANNOT_START.value, message=message, observed_generation=generation,
        now=now,
    )
    return current.model_copy(update={"conditions": updated})
