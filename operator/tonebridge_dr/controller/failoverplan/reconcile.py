"""Reconciling one FailoverPlan on create, resume and `spec` changes: Ready=True with
what the plan will do in its mode, the generation observed, a first phase (Monitoring
with a health check, else Idle) when there is none. The watching and running is the
engine's (`engine.py`, a timer per plan); this only says the plan is accepted.
"""

from __future__ import annotations

from typing import Any

from tonebridge_dr.api.conditions import Reason
from tonebridge_dr.api.failoverplan import FailoverMode, FailoverPlanStatus
from tonebridge_dr.api.kinds import FailoverPlan
from tonebridge_dr.builders import names
from tonebridge_dr.controller.core import objects
from tonebridge_dr.controller.core.kind import Cause, Controller
from tonebridge_dr.status import conditions
from tonebridge_dr.status import failoverplan as plan_status

Json = dict[str, Any]


def describe(plan: FailoverPlan) -> str:
    """One sentence: what the plan does in its mode."""
    spec = plan.spec
    stages = f"{len(spec.stages)} stage{'s' if len(spec.stages) != 1 else ''}"
    watch = (f"watches {spec.trigger.health_check.kind.value} {spec.trigger.health_check.target}"
             if spec.trigger else "watches nothing (no trigger)")
    if spec.mode == FailoverMode.AUTOMATIC:
        return f"automatic: {watch}; runs {stages} when it is down"
    if spec.mode == FailoverMode.MANUAL:
        return f"manual: {watch}; runs {stages} on {names.ANNOTATION_FAILOVER_NOW}=<token>"
    return (f"drill: {watch}; rehearses {stages} on {names.ANNOTATION_FAILOVER_NOW}=<token> "
            "without changing production")


def reconcile(controller: Controller[FailoverPlan, FailoverPlanStatus], plan: FailoverPlan,
              body: Json, _cause: Cause) -> str | None:
    now = controller.ctx.clock()
    generation = objects.generation(body)
    message = describe(plan)

    def mutate(_b: Json, status: FailoverPlanStatus | None) -> FailoverPlanStatus:
        current = status or FailoverPlanStatus()
        updated = conditions.set_condition(
            current.conditions, type=conditions.READY, status="True",
            reason=Reason.RECONCILED.value, message=message, observed_generation=generation,
            now=now,
        )
        new = current.model_copy(update={
            "conditions": updated, "observed_generation": generation,
            "phase": current.phase or plan_status.idle_phase(plan.spec),
        })
        if plan.spec.trigger is None:
            return new
        return plan_status.healthy_condition(new, generation=generation, now=now)

    controller.write_status(body, mutate)
    return None
