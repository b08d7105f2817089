"""kopf glue of FailoverPlan: the kind's declaration (`KIND`) and its engine timer.

| trigger | handler id | does |
|---|---|---|
| plan created | `reconcile` | `reconcile.reconcile`: Ready, first phase |
| operator (re)started | `resume` | the same |
| `spec` changed | `reconcile-spec` | the same |
| every `engine.TICK` s | `engine` | `engine.Engine.tick`: reset, health, start, steps, |
| | | escalation (only the active operator with peering) |
"""

from __future__ import annotations

from typing import Any

import kopf

from tonebridge_dr.api.failoverplan import FailoverPlanStatus
from tonebridge_dr.api.kinds import FAILOVER_PLAN, FailoverPlan
from tonebridge_dr.controller.core import objects, registration
from tonebridge_dr.controller.core.kind import KindDeclaration, ready_false
from tonebridge_dr.controller.failoverplan import engine, reconcile


def _register_engine(registry: kopf.OperatorRegistry,
                     controller: engine.PlanController) -> None:
    runner = engine.Engine(controller)

    @kopf.timer(*registration.resource(controller), id="engine", interval=engine.TICK,
                registry=registry)
    def tick(body: kopf.Body, **kwargs: Any) -> None:
        retry = int(kwargs.get("retry") or 0)
        controller.attempt(lambda: runner.tick(objects.plain(body)), retry)


KIND: KindDeclaration[FailoverPlan, FailoverPlanStatus] = KindDeclaration(
    FAILOVER_PLAN, FailoverPlan, FailoverPlanStatus, reconcile.reconcile,
    ready_false(FailoverPlanStatus), extra=_register_engine,
)
