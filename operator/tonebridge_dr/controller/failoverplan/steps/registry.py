"""StepKind -> executor. Each action lives in its own module of this package, imported
by name when first needed: a build without one of them (a module missing) still runs
every other step, and a step of the missing kind fails with a sentence saying so."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from tonebridge_dr.api.failoverplan import Step, StepKind
from tonebridge_dr.controller.failoverplan.steps import (
    StepContext,
    StepExecutor,
    StepProgress,
    StepState,
)

#: kind -> (module of this package, class).
EXECUTORS: dict[StepKind, tuple[str, str]] = {
    StepKind.PROMOTE_POSTGRES: ("promote", "PromotePostgresExecutor"),
    StepKind.SWITCH_SERVICE: ("service", "SwitchServiceExecutor"),
    StepKind.ROLLOUT_RESTART: ("rollout", "RolloutRestartExecutor"),
    StepKind.UPDATE_DNS: ("dns", "UpdateDnsExecutor"),
    StepKind.RESTORE_REQUEST: ("restore", "RestoreRequestExecutor"),
    StepKind.WAIT: ("wait", "WaitExecutor"),
    StepKind.CHECK: ("check", "CheckExecutor"),
}


class Unavailable:
    """The executor of a kind this build does not have: every call fails the step."""

    def __init__(self, kind: StepKind, why: str) -> None:
        self.kind = kind
        self.why = why

    def advance(self, step: Step, ctx: StepContext, memo: Mapping[str, Any]) -> StepProgress:
        return StepProgress(StepState.FAILED, f"step kind {self.kind.value} is not available "
                            f"in this version of tonebridge-dr ({self.why})", memo)


def executor_for(kind: StepKind, executors: Mapping[StepKind, tuple[str, str]] = EXECUTORS
                 ) -> StepExecutor:
    """A new executor of `kind` (an `Unavailable` one when its module is missing)."""
    module_name, class_name = executors[kind]
    qualified = f"{__package__}.{module_name}"
    try:
        module = importlib.import_module(qualified)
    except ModuleNotFoundError as exc:
        if exc.name != qualified:
            raise
        return Unavailable(kind, f"module {qualified} is missing")
    cls = getattr(module, class_name, None)
    if cls is None:
        return Unavailable(kind, f"{qualified} has no {class_name}")
    executor: StepExecutor = cls()
    return executor
