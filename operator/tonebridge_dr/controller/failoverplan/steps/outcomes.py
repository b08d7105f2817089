"""Progress values the Kubernetes and DNS step executors share: waiting with a deadline,
and riding out a few transient API failures in a row (counted in the memo) before failing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tonebridge_dr.controller.core.kube import ApiError
from tonebridge_dr.controller.failoverplan.steps import StepContext, StepProgress, StepState

#: Consecutive transient failures (API server or Route 53 unreachable, throttled, 5xx) a
#: step rides out, one per call, before it fails.
TRANSIENT_LIMIT = 5
_TRANSIENT_KEY = "transientErrors"


def failed(message: str, memo: Mapping[str, Any], diff: Mapping[str, Any] | None = None
           ) -> StepProgress:
    return StepProgress(StepState.FAILED, message, _settled(memo), diff)


def succeeded(message: str, memo: Mapping[str, Any], diff: Mapping[str, Any] | None = None
              ) -> StepProgress:
    return StepProgress(StepState.SUCCEEDED, message, _settled(memo), diff)


def waiting(ctx: StepContext, message: str, memo: Mapping[str, Any]) -> StepProgress:
    """RUNNING with `message` (what the step waits for), or FAILED once the step's
    deadline has passed."""
    if ctx.deadline is not None and ctx.now >= ctx.deadline:
        return failed(f"step timeout expired while {message}", memo)
    return StepProgress(StepState.RUNNING, message, _settled(memo))


def transient(ctx: StepContext, message: str, memo: Mapping[str, Any]) -> StepProgress:
    """RUNNING (retry on the next call) after a transient failure, FAILED after
    TRANSIENT_LIMIT of them in a row or past the deadline."""
    count = int(memo.get(_TRANSIENT_KEY, 0)) + 1
    if count >= TRANSIENT_LIMIT:
        return failed(f"{message} ({count} times in a row)", memo)
    if ctx.deadline is not None and ctx.now >= ctx.deadline:
        return failed(f"step timeout expired: {message}", memo)
    return StepProgress(
        StepState.RUNNING, f"{message}; retrying", {**memo, _TRANSIENT_KEY: count}
    )


def _settled(memo: Mapping[str, Any]) -> dict[str, Any]:
    """`memo` without the transient-failure count (a call that got through resets it)."""
    return {k: v for k, v in memo.items() if k != _TRANSIENT_KEY}


def api_failure(
    ctx: StepContext, doing: str, error: ApiError, memo: Mapping[str, Any]
) -> StepProgress:
    """A refused or failed Kubernetes API call: retried while transient (see `transient`),
    else FAILED. The API server's message names objects, never Secret values."""
    if error.transient:
        return transient(ctx, f"{doing}: {error}", memo)
    return failed(f"{doing}: {error}", memo)
