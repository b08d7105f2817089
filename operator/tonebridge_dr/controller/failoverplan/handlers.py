"""kopf glue of FailoverPlan: the kind's declaration (`KIND`): create, resume and `spec`
updates run `reconcile.reconcile` (handler ids `reconcile`, `resume`, `reconcile-spec`)."""

from __future__ import annotations

from tonebridge_dr.api.failoverplan import FailoverPlanStatus
from tonebridge_dr.api.kinds import FAILOVER_PLAN, FailoverPlan
from tonebridge_dr.controller.core.kind import KindDeclaration, ready_false
from tonebridge_dr.controller.failoverplan import reconcile

KIND: KindDeclaration[FailoverPlan, FailoverPlanStatus] = KindDeclaration(
    FAILOVER_PLAN, FailoverPlan, FailoverPlanStatus, reconcile.reconcile,
    ready_false(FailoverPlanStatus),
)
