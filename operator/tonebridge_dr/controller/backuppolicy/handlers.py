"""kopf glue of BackupPolicy: the kind's declaration (`KIND`) and its own triggers. Thin by
design: each handler calls one function of this package; `core.registration` adds the
common ones and the retry policy.

| trigger | handler id | does |
|---|---|---|
| policy created | `reconcile` | `reconcile.reconcile`: owned objects, status |
| operator (re)started | `resume` | the same, also deleting stale owned objects |
| `spec` changed | `reconcile-spec` | the same (labels, annotations, status: ignored) |
| any policy watch event | `run-now` | `runnow.handle`, when a new token is there |
| every `freshness_interval` | `monitor` | Secrets, run-now, `retention.tick` (when due), |
| | | `stuck.tick` (pods that cannot start), `freshness.tick` + `restorable` |
| policy deleted | `forget` | drop its metrics (owned objects go by garbage collection) |
| backup Job events | `job-event` (core) | `record.observe`: finished Jobs -> policy status |
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import kopf

from tonebridge_dr.api.backuppolicy import BackupPolicyStatus
from tonebridge_dr.api.kinds import BACKUP_POLICY, BackupPolicy
from tonebridge_dr.builders import names
from tonebridge_dr.controller.backuppolicy import (
    freshness,
    reconcile,
    record,
    restorable,
    retention,
    runnow,
    stuck,
)
from tonebridge_dr.controller.backuppolicy.reconcile import PolicyController
from tonebridge_dr.controller.core import objects, registration
from tonebridge_dr.controller.core import runnow as core_runnow
from tonebridge_dr.controller.core.kind import Cause, HandlerIds, JobRoute, KindDeclaration, Trigger
from tonebridge_dr.status import backuppolicy as policy_status


def _spread(interval: float) -> Callable[..., float]:
    """First tick of a policy's timer at a stable offset within the interval, so a
    thousand policies do not all read their repositories in the same second."""

    def delay(*, body: Any, **_: Any) -> float:
        uid = str((body.get("metadata") or {}).get("uid", ""))
        return (zlib.crc32(uid.encode()) % 1000) / 1000 * min(interval, 60.0)

    return delay


def _monitor_tick(controller: PolicyController, tests: restorable.RestoreTests,
                  body: kopf.Body, retry: int) -> None:
    if reconcile.needs_recheck(controller, body):
        controller.reconcile(body, Cause(Trigger.TIMER, retry))
    if runnow.pending_token(body) is not None:
        runnow.handle(controller, body)
    retention.tick(controller, body)
    stuck.tick(controller, body)
    freshness.tick(controller, body, tests.of_policy(*objects.ident(body)))


def _register_triggers(registry: kopf.OperatorRegistry, controller: PolicyController) -> None:
    interval = controller.ctx.settings.freshness_interval
    where = registration.resource(controller)
    tests = restorable.RestoreTests(controller.ctx.kube, ttl=interval)
    # The monitor retries on its next tick what fails here.
    core_runnow.register(registry, controller, runnow.handle)

    @kopf.timer(*where, id="monitor", interval=interval, initial_delay=_spread(interval),
                registry=registry)
    def monitor(body: kopf.Body, **kwargs: Any) -> None:
        retry = int(kwargs.get("retry") or 0)
        controller.attempt(lambda: _monitor_tick(controller, tests, body, retry), retry)


def _forget(controller: PolicyController, body: dict[str, Any]) -> None:
    controller.ctx.metrics.forget(*objects.ident(body))


KIND: KindDeclaration[BackupPolicy, BackupPolicyStatus] = KindDeclaration(
    info=BACKUP_POLICY,
    model=BackupPolicy,
    status_model=BackupPolicyStatus,
    reconcile=reconcile.reconcile,
    refused=policy_status.apply_not_ready,
    ids=HandlerIds(create="reconcile", resume="resume", update="reconcile-spec"),
    forget=_forget,
    jobs=JobRoute(component=names.COMPONENT_BACKUP, observe=record.observe,
                  wanted=record.to_record),
    extra=_register_triggers,
)
