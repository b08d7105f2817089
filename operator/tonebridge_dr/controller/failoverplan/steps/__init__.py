"""Step executors of a FailoverPlan: the seam between the run engine and each action.

The engine (controller/failoverplan/) runs a plan's stages by priority and their steps in
order. It never blocks for long: on every tick it calls `advance` of the current step's
executor, writes the returned progress (including `memo`) into the plan's status with a
compare-and-set, and calls again on the next tick until the step is no longer RUNNING.
Because the memo lives in the status, an operator killed between two ticks resumes
where it stopped (a new process, the same memo).

Contract of every executor (one module per action, e.g. `promote.py`, `service.py`,
`rollout.py`, `dns.py`, `restore.py`, `wait.py`, `check.py`):

- `advance` is idempotent: called again with the same memo it never repeats a side effect
  it already made (it records in the memo what it did: a Route 53 change id, the
  `restartedAt` value it set, that it issued pg_promote...), and it detects work done by
  an earlier process whose memo write was lost (already promoted counts as done; a
  Service whose selector already is the wanted one counts as switched).
- `advance` returns quickly (a probe or an API call, bounded by a few seconds); waiting is
  done by returning RUNNING and being called again.
- In drill mode (`ctx.drill`) it never changes production: it validates, uses
  server-side dry run, or acts on the drill copies the plan names, and reports in
  `diff` what a real run would change.
- It raises nothing for expected failures (unreachable, refused, timed out): they are
  `FAILED` progress with a message. Secrets never appear in messages.
- `ctx.deadline` is when the step's `timeout` expires (None: no timeout); an executor
  that is still waiting at the deadline returns FAILED saying what it waited for.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any, Protocol

from tonebridge_dr.api.failoverplan import Drill, Step
from tonebridge_dr.controller.core.kube import Kube


class StepState(StrEnum):
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclasses.dataclass(frozen=True)
class StepContext:
    """What an executor may use; no kopf, no status writing."""

    kube: Kube
    namespace: str
    plan_name: str
    plan_uid: str
    stage: str
    step_name: str
    drill: bool
    now: dt.datetime
    started_at: dt.datetime  # when this step first started (from status)
    deadline: dt.datetime | None
    secret_value: Callable[[str, str], str | None]  # (secret name, key) -> value or None
    drill_targets: Drill | None = None
    """The plan's `spec.drill`: throwaway copies a drill acts on (promotePostgres: a
    standby to really promote; updateDNS: a zone to really submit to)."""


@dataclasses.dataclass(frozen=True)
class StepProgress:
    state: StepState
    message: str
    memo: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """JSON-able facts to persist and hand back on the next call (never secrets)."""
    diff: Mapping[str, Any] | None = None
    """Drill: what a real run would change (e.g. {"selector": {"from": ..., "to": ...}})."""


class StepExecutor(Protocol):
    def advance(self, step: Step, ctx: StepContext, memo: Mapping[str, Any]) -> StepProgress:
        """One bounded move of `step` towards completion (see the module docstring)."""
        ...
