"""kopf glue of RestoreTest: the kind's declaration (`KIND`): create, resume and `spec`
updates run `reconcile.reconcile` (handler ids `reconcile`, `resume`, `reconcile-spec`)."""

from __future__ import annotations

from tonebridge_dr.api.kinds import RESTORE_TEST, RestoreTest
from tonebridge_dr.api.restoretest import RestoreTestStatus
from tonebridge_dr.controller.core.kind import KindDeclaration, ready_false
from tonebridge_dr.controller.restoretest import reconcile

KIND: KindDeclaration[RestoreTest, RestoreTestStatus] = KindDeclaration(
    RESTORE_TEST, RestoreTest, RestoreTestStatus, reconcile.reconcile,
    ready_false(RestoreTestStatus),
)
