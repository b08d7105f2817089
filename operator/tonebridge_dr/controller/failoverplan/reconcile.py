"""Reconciling one FailoverPlan: observe -> decide -> act, with nothing to observe yet.

The plan parsed (the skeleton refuses a spec that does not, InvalidSpec); this version
of tonebridge-dr has no health checks and no failover steps, so every valid plan gets
Ready=False, reason NotImplemented, with its generation observed: `kubectl get fp` and
GitOps health checks show plainly that nothing guards the target yet.
"""

from __future__ import annotations

from tonebridge_dr.controller.core.kind import not_implemented

MESSAGE = (
    "FailoverPlan is accepted and validated, but this version of tonebridge-dr does not run "
    "health checks or fail over yet: nothing watches the target and no step of the plan "
    "runs, in any mode (automatic, manual or drill)"
)

reconcile = not_implemented(MESSAGE)
