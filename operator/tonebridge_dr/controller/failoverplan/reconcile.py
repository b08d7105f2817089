"""Reconciling one FailoverPlan: observe -> decide -> act, with nothing to observe yet.

The plan parsed (the skeleton refuses a spec that does not, InvalidSpec); this version
of tonebridge-dr has no health checks and no failover steps, so every valid plan gets
Ready=False, reason NotImplemented, with its generation observed: `kubectl get fp` and
GitOps health checks show plainly that nothing guards the target yet.
"""

from __future__ import annotations

from typing import Any

from tonebridge_dr.api.conditions import Reason
from tonebridge_dr.api.failoverplan import FailoverPlanStatus
from tonebridge_dr.api.kinds import FailoverPlan
from tonebridge_dr.controller.core.kind import Cause, Controller

MESSAGE = (
    "FailoverPlan is accepted and validated, but this version of tonebridge-dr does not run "
    "health checks or fail over yet: nothing watches the target and no step of the plan "
    "runs, in any mode (automatic, manual or drill)"
)


def reconcile(controller: Controller[FailoverPlan, FailoverPlanStatus], plan: FailoverPlan,
              body: dict[str, Any], cause: Cause) -> None:
    controller.refuse(body, Reason.NOT_IMPLEMENTED, MESSAGE)
