"""The Ready=False transition every kind's status shares: the object's spec cannot be
served as it stands (invalid, a Secret missing, not implemented in this version).

Works on any status model with `conditions` and `observedGeneration` (all four kinds);
everything else in the status is kept.
"""

from __future__ import annotations

from datetime import datetime
from typing import TypeVar

from tonebridge_dr.api.base import StatusModel
from tonebridge_dr.status import conditions

__all__ = ["not_ready"]

StatusT = TypeVar("StatusT", bound=StatusModel)


def not_ready(
    status: StatusT | None,
    *,
    model: type[StatusT],
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> StatusT:
    """`status` (a new `model` when None) with Ready=False, `reason` and `message`; the
    generation counts as observed. Idempotent: the same call twice gives equal statuses,
    and `lastTransitionTime` moves only when Ready was not False before."""
    current = status if status is not None else model()
    updated = conditions.set_condition(
        getattr(current, "conditions", None),
        type=conditions.READY,
        status="False",
        reason=reason,
        message=message,
        observed_generation=generation,
        now=now,
    )
    return current.model_copy(update={"observed_generation": generation, "conditions": updated})
