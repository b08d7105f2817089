"""wait: pause (e.g. for DNS TTLs to expire) until `duration` after the step started.

The end is computed from `ctx.started_at` (persisted in status), so an operator restart
neither restarts nor shortens the pause. Drills wait too: the rehearsal measures the
time a real run would take."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tonebridge_dr.api.failoverplan import Step
from tonebridge_dr.controller.failoverplan.steps import StepContext, StepProgress, StepState


class WaitExecutor:
    def advance(self, step: Step, ctx: StepContext, memo: Mapping[str, Any]) -> StepProgress:
        assert step.wait is not None
        until = ctx.started_at + step.wait.duration
        memo = {**memo, "until": until.isoformat()}
        if ctx.now >= until:
            return StepProgress(StepState.SUCCEEDED, f"waited {step.wait.duration}", memo)
        left = (until - ctx.now).total_seconds()
        return StepProgress(StepState.RUNNING, f"waiting {left:.0f}s more", memo)
