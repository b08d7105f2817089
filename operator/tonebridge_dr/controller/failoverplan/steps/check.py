"""check: probe (the trigger's probes: postgres like pg_isready, tcp, http 2xx) until
`rise` probes in a row succeed, at most one probe per `intervalSeconds`; a failure
starts the count again. Bounded by the step's `timeout` (the engine fails a step still
running at its deadline; without a timeout a check waits as long as it takes).

Read-only, so a drill runs it for real."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from tonebridge_dr.api.failoverplan import Step
from tonebridge_dr.controller.failoverplan import probes
from tonebridge_dr.controller.failoverplan.steps import StepContext, StepProgress, StepState


class CheckExecutor:
    def advance(self, step: Step, ctx: StepContext, memo: Mapping[str, Any]) -> StepProgress:
        check = step.check
        assert check is not None
        last = memo.get("lastProbe")
        if last is not None:
            since = (ctx.now - dt.datetime.fromisoformat(str(last))).total_seconds()
            if since < check.interval_seconds:
                return StepProgress(StepState.RUNNING, str(memo.get("message", "probing")),
                                    memo)
        result = probes.probe(check)
        successes = int(memo.get("successes", 0)) + 1 if result.ok else 0
        new = {"successes": successes, "lastProbe": ctx.now.isoformat(),
               "message": result.message}
        if successes >= check.rise:
            return StepProgress(StepState.SUCCEEDED,
                                f"{result.message} ({successes} in a row)", new)
        waiting = f"{result.message} ({successes}/{check.rise} successes in a row)"
        if ctx.deadline is not None and ctx.now >= ctx.deadline:
            return StepProgress(StepState.FAILED, f"timed out: {waiting}", new)
        return StepProgress(StepState.RUNNING, waiting, new)
