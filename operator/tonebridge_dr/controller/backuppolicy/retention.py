"""Retention of a policy's backups, run by the operator (observe -> decide -> act).

When (unless the policy is suspended: then nothing is deleted): after every backup Job
of the policy that succeeded (`record`), and from the monitor timer when the last run is
older than `settings.retention_interval` (default a day), so a policy whose backups
stopped still prunes; the rules never let the newest backup of a series go, so a stopped
policy never loses its last backups.

Backups in use are never deleted: a RestoreRequest or RestoreTest of this policy that
has not finished protects the backup it names (`spec.backupId`, or the backup the test
run recorded). One that does not name its backup yet (latest, a target time) defers the
whole run (RetentionApplied reason PruneDeferred); the next trigger tries again.

Act: `core.maintenance.apply_retention` (backup credentials, never raises), then
`status.retention` + RetentionApplied (compare-and-set), a Normal `BackupsPruned` Event
with the ids when something was deleted, a Warning `PruneFailed` Event on failure.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from tonebridge_dr.api.backuppolicy import BackupPolicyStatus
from tonebridge_dr.api.conditions import Reason
from tonebridge_dr.api.kinds import RESTORE_REQUEST, RESTORE_TEST
from tonebridge_dr.controller.backuppolicy.reconcile import PolicyController
from tonebridge_dr.controller.core import kube, maintenance, objects
from tonebridge_dr.controller.core.kind import api_kind
from tonebridge_dr.status import retention as retention_status
from tonebridge_dr.status.retention import RetentionOutcome

log = logging.getLogger(__name__)

Json = dict[str, Any]
TRIGGER_BACKUP = maintenance.TRIGGER_BACKUP
TRIGGER_SCHEDULE = maintenance.TRIGGER_SCHEDULE
_FINISHED_RESTORE = frozenset({"Succeeded", "Failed"})


def _source_policy(item: Mapping[str, Any]) -> str | None:
    source = (item.get("spec") or {}).get("source") or {}
    name = (source.get("policyRef") or {}).get("name")
    return name if isinstance(name, str) else None


def in_use(client: kube.Kube, namespace: str, policy: str) -> tuple[frozenset[str], str | None]:
    """(backup ids running restores of `policy` use, why the run must wait or None).

    Raises kube.ApiError when a list fails (the caller defers: never prune blind)."""
    pinned: set[str] = set()
    waiting: list[str] = []
    for item in client.list(api_kind(RESTORE_REQUEST), namespace):
        if _source_policy(item) != policy:
            continue
        status = item.get("status") or {}
        if status.get("phase") in _FINISHED_RESTORE:
            continue
        backup = (item.get("spec") or {}).get("backupId")
        if isinstance(backup, str):
            pinned.add(backup)
        else:
            waiting.append(f"RestoreRequest {objects.ident(item)[1]}")
    for item in client.list(api_kind(RESTORE_TEST), namespace):
        if _source_policy(item) != policy:
            continue
        run = (item.get("status") or {}).get("lastRun") or {}
        if run.get("result") != "Running":
            continue
        backup = run.get("backupId") or (item.get("spec") or {}).get("backupId")
        if isinstance(backup, str):
            pinned.add(backup)
        else:
            waiting.append(f"RestoreTest {objects.ident(item)[1]}")
    if waiting:
        return frozenset(pinned), (
            f"{', '.join(waiting)} is running and has not chosen its backup yet"
        )
    return frozenset(pinned), None


def due(status: BackupPolicyStatus | None, now: dt.datetime, interval: float) -> bool:
    """Whether the periodic run is due: never ran, or the last run is `interval` old."""
    last = status.retention.last_run_time if status and status.retention else None
    return last is None or (now - last).total_seconds() >= interval


def tick(controller: PolicyController, body: Mapping[str, Any]) -> None:
    """The monitor timer's part: run retention when the periodic run is due."""
    if due(controller.status_of(body), controller.ctx.clock(),
           controller.ctx.settings.retention_interval):
        run(controller, body, TRIGGER_SCHEDULE)


def run(controller: PolicyController, body: Mapping[str, Any], trigger: str) -> None:
    """One retention run of the policy `body` (see the module docstring)."""
    try:
        policy = controller.parse(body)
    except objects.InvalidSpec:
        return  # Ready=False already says why; nothing is deleted on a spec we cannot read
    if policy.spec.suspend:
        return  # a suspended policy deletes nothing either (an incident freeze)
    namespace, name = objects.ident(body)
    ctx = controller.ctx
    outcome: RetentionOutcome
    if (maintenance.plan_of(policy).is_empty and policy.spec.archive is None
            and trigger != TRIGGER_SCHEDULE):
        outcome = RetentionOutcome(trigger=trigger, no_rules=True)  # nothing to do
    else:
        try:
            protect, wait = in_use(ctx.kube, namespace, name)
        except kube.ApiError as exc:
            protect, wait = frozenset(), f"cannot list running restores: {exc}"
        if wait is not None:
            outcome = RetentionOutcome(trigger=trigger, deferred=wait)
        else:
            outcome = maintenance.apply_retention(
                policy, ctx.kube, trigger=trigger, protect=protect, now=ctx.clock()
            )
    now = ctx.clock()

    def mutate(current: Json, status: BackupPolicyStatus | None) -> BackupPolicyStatus:
        return retention_status.apply_retention(
            status, outcome, generation=objects.generation(current), now=now
        )

    written = controller.write_status(body, mutate)
    if written is None:
        return
    message = outcome.message()
    if outcome.error is not None:
        log.warning("%s/%s: %s", namespace, name, message)
        controller.event(written, Reason.PRUNE_FAILED, message, warning=True)
    elif outcome.deleted:
        log.info("%s/%s: %s", namespace, name, message)
        controller.event(written, Reason.BACKUPS_PRUNED, message, warning=False)
    elif outcome.deferred is not None:
        log.info("%s/%s: %s", namespace, name, message)
