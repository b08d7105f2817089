"""The monitor's look at running backup Jobs: a pod that cannot start is reported on the
policy within one round (status/stuckpods.py decides), with one Warning Event per change
of the message. Costs one LIST of the policy's Jobs per round, and one LIST of pods per
running Job."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from tonebridge_dr.api.backuppolicy import BackupPolicyStatus
from tonebridge_dr.api.conditions import Reason
from tonebridge_dr.builders import names
from tonebridge_dr.controller.backuppolicy.reconcile import PolicyController
from tonebridge_dr.controller.core import jobs, kube, objects
from tonebridge_dr.status import conditions
from tonebridge_dr.status.jobs import LABEL_JOB_NAME
from tonebridge_dr.status.stuckpods import StuckPod, apply_stuck_pods, stuck_pods

log = logging.getLogger(__name__)

Json = dict[str, Any]


def _stuck(controller: PolicyController, namespace: str, policy: str) -> list[StuckPod]:
    selector = (f"{names.LABEL_POLICY}={names.label_value(policy)},"
                f"{names.LABEL_COMPONENT}={names.COMPONENT_BACKUP}")
    found: list[StuckPod] = []
    for job in controller.ctx.kube.list(kube.JOB, namespace, label_selector=selector):
        if jobs.finished(job):
            continue
        name = objects.ident(job)[1]
        pods = controller.ctx.kube.list(kube.POD, namespace,
                                        label_selector=f"{LABEL_JOB_NAME}={name}")
        found.extend(stuck_pods(name, pods))
    return found


def tick(controller: PolicyController, body: Mapping[str, Any]) -> None:
    """Report backup Jobs whose pod cannot start (API trouble: the next round retries)."""
    namespace, name = objects.ident(body)
    try:
        stuck = _stuck(controller, namespace, name)
    except kube.ApiError as exc:
        log.info("%s/%s: cannot look at running backup Jobs: %s", namespace, name, exc)
        return
    if not stuck:
        return
    now = controller.ctx.clock()
    before = conditions.get_condition(
        (controller.status_of(body) or BackupPolicyStatus()).conditions,
        conditions.LAST_BACKUP_SUCCEEDED)

    def mutate(current: Json, status: BackupPolicyStatus | None) -> BackupPolicyStatus | None:
        return apply_stuck_pods(status, stuck, generation=objects.generation(current), now=now)

    written = controller.write_status(body, mutate)
    if written is None:
        return
    message = stuck[0].sentence()
    if before is None or before.reason != Reason.POD_CANNOT_START.value or (
        not before.message.startswith(message)
    ):
        log.warning("%s/%s: %s", namespace, name, message)
        controller.event(written, Reason.POD_CANNOT_START, message, warning=True)
