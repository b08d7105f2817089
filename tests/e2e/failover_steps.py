"""Helpers for the FailoverPlan step executor tests: a StepContext built by hand (what the
run engine would hand over) and a loop that calls `advance` as the engine's ticks would."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from tonebridge_dr.api.failoverplan import Step
from tonebridge_dr.controller.core.kube import Kube
from tonebridge_dr.controller.failoverplan.steps import (
    StepContext,
    StepExecutor,
    StepProgress,
    StepState,
)

T = TypeVar("T")
#: How long a step may keep RUNNING in a test before the test gives up (a readiness
#: bound, not a timing assertion).
STEP_WAIT = 120.0


def step(body: Mapping[str, Any]) -> Step:
    return Step.model_validate(dict(body))


def context(
    kube: Kube,
    namespace: str,
    *,
    drill: bool = False,
    started_at: dt.datetime | None = None,
    deadline: dt.datetime | None = None,
    step_name: str = "step",
) -> StepContext:
    now = dt.datetime.now(dt.UTC)

    def secret_value(name: str, key: str) -> str | None:
        return (kube.secret_data(namespace, name) or {}).get(key)

    return StepContext(
        kube=kube,
        namespace=namespace,
        plan_name="plan",
        plan_uid="00000000-0000-0000-0000-000000000000",
        stage="stage",
        step_name=step_name,
        drill=drill,
        now=now,
        started_at=started_at or now,
        deadline=deadline,
        secret_value=secret_value,
    )


def run_step(
    executor: StepExecutor,
    the_step: Step,
    make_context: Callable[[], StepContext],
    memo: Mapping[str, Any] | None = None,
) -> tuple[StepProgress, list[StepProgress]]:
    """Call `advance` (a fresh context each time, the memo handed back) until the step is
    no longer RUNNING; returns the last progress and every progress seen."""
    seen: list[StepProgress] = []
    current: Mapping[str, Any] = dict(memo or {})
    deadline = time.monotonic() + STEP_WAIT
    while True:
        progress = executor.advance(the_step, make_context(), current)
        seen.append(progress)
        current = progress.memo
        if progress.state != StepState.RUNNING:
            return progress, seen
        if time.monotonic() > deadline:
            raise AssertionError(f"step still running: {progress.message}")
        time.sleep(0.2)


def wait_until(check: Callable[[], T | None], what: str, timeout: float = 120) -> T:
    """Poll `check` until it returns something truthy (a readiness bound)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
