"""kopf glue of RestoreTest: the kind's declaration (`KIND`) and its run-now trigger. Thin
by design; `core.registration` adds the common handlers and the retry policy.

| trigger | handler id | does |
|---|---|---|
| test created | `reconcile` | `reconcile.reconcile`: the CronJob, Ready |
| operator (re)started | `resume` | the same |
| `spec` changed | `reconcile-spec` | the same (labels, annotations, status: ignored) |
| a new run-now value | `run-now` | `runnow.handle`: one test Job now |
| test deleted | `forget` | drop its metrics (CronJob and Jobs go by garbage collection) |
| test Job events | `job-event` (core) | `record.observe`: Job -> lastRun, Passed, RTOMet |

A test that waits (Ready=False for something that may appear: a Secret, the policy) is
reconciled again after `RetryPolicy.pending_delay`.
"""

from __future__ import annotations

from typing import Any

import kopf

from tonebridge_dr.api.kinds import RESTORE_TEST, RestoreTest
from tonebridge_dr.api.restoretest import RestoreTestStatus
from tonebridge_dr.builders import names
from tonebridge_dr.controller.core import objects
from tonebridge_dr.controller.core import runnow as core_runnow
from tonebridge_dr.controller.core.kind import HandlerIds, JobRoute, KindDeclaration, ready_false
from tonebridge_dr.controller.restoretest import reconcile, record, runnow
from tonebridge_dr.controller.restoretest.reconcile import TestController


def _register_triggers(registry: kopf.OperatorRegistry, controller: TestController) -> None:
    core_runnow.register(registry, controller, runnow.handle)


def _forget(controller: TestController, body: dict[str, Any]) -> None:
    controller.ctx.metrics.forget_restore_test(*objects.ident(body))


KIND: KindDeclaration[RestoreTest, RestoreTestStatus] = KindDeclaration(
    info=RESTORE_TEST,
    model=RestoreTest,
    status_model=RestoreTestStatus,
    reconcile=reconcile.reconcile,
    refused=ready_false(RestoreTestStatus),
    ids=HandlerIds(create="reconcile", resume="resume", update="reconcile-spec"),
    forget=_forget,
    jobs=JobRoute(component=names.COMPONENT_RESTORE_TEST, observe=record.observe,
                  wanted=record.wanted),
    extra=_register_triggers,
)
