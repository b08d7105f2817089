"""Pure transitions of standard `status.conditions` lists.

`set_condition` follows the meta.SetStatusCondition contract of apimachinery:
`lastTransitionTime` moves only when `status` changes, so a condition that is
re-asserted on every reconcile does not flap in `kubectl get`, in GitOps health
checks or in alerts; reason, message and observedGeneration are updated in place.
Lists are never mutated; a new list is returned with the conditions in their original
order (new types appended).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from tonebridge_dr.api.conditions import Condition, ConditionStatus

__all__ = [
    "AOF_ENABLED",
    "BACKUP_STALE",
    "COMPLETE",
    "FAILED",
    "LAST_BACKUP_SUCCEEDED",
    "READY",
    "RPO_MET",
    "StatusValue",
    "get_condition",
    "is_true",
    "remove_condition",
    "set_condition",
    "turned",
]

READY = "Ready"
LAST_BACKUP_SUCCEEDED = "LastBackupSucceeded"
RPO_MET = "RPOMet"
BACKUP_STALE = "BackupStale"
COMPLETE = "Complete"
FAILED = "Failed"
AOF_ENABLED = "AOFEnabled"

StatusValue = Literal["True", "False", "Unknown"]


def get_condition(conditions: Sequence[Condition] | None, type: str) -> Condition | None:
    """The condition of `type`, or None."""
    for condition in conditions or ():
        if condition.type == type:
            return condition
    return None


def is_true(conditions: Sequence[Condition] | None, type: str) -> bool:
    """Whether the condition of `type` exists with status True."""
    condition = get_condition(conditions, type)
    return condition is not None and condition.status == ConditionStatus.TRUE


def set_condition(
    conditions: Sequence[Condition] | None,
    *,
    type: str,
    status: StatusValue,
    reason: str,
    message: str,
    observed_generation: int | None,
    now: datetime,
) -> list[Condition]:
    """`conditions` with the condition of `type` set (added at the end when new).

    `lastTransitionTime` becomes `now` only when the condition is new or its status
    changes. Idempotent: setting the same values twice returns equal lists.
    """
    current = list(conditions or ())
    wanted = ConditionStatus(status)
    for index, existing in enumerate(current):
        if existing.type != type:
            continue
        transition = existing.last_transition_time if existing.status == wanted else now
        current[index] = Condition(
            type=type,
            status=wanted,
            reason=reason,
            message=message,
            last_transition_time=transition,
            observed_generation=observed_generation,
        )
        return current
    current.append(
        Condition(
            type=type,
            status=wanted,
            reason=reason,
            message=message,
            last_transition_time=now,
            observed_generation=observed_generation,
        )
    )
    return current


def remove_condition(conditions: Sequence[Condition] | None, type: str) -> list[Condition]:
    """`conditions` without the condition of `type`."""
    return [c for c in conditions or () if c.type != type]


def turned(
    before: Sequence[Condition] | None, after: Sequence[Condition] | None, type: str,
    status: StatusValue,
) -> Condition | None:
    """The condition of `type` in `after` when it has `status` there and did not have it in
    `before` (absent or another status): a transition worth an Event. Re-asserting the same
    status, or a changed message only, gives None."""
    new = get_condition(after, type)
    if new is None or new.status != ConditionStatus(status):
        return None
    old = get_condition(before, type)
    return new if old is None or old.status != new.status else None
