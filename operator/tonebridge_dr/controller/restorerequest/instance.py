"""Watching the PostgreSQL instance a restore started on its volume (`target.instance`):
the request says PostgreSQL runs on it only once the instance's pod is Ready.

A timer on requests whose `status.instance.ready` is false (the `when` filter runs in
kopf's event loop, so other requests cost nothing) reads the StatefulSet; at one ready
replica it writes `instance.ready`, the note, and a Normal Event `InstanceReady`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from tonebridge_dr.api.conditions import Reason
from tonebridge_dr.controller.core import kube, objects, registration
from tonebridge_dr.controller.restorerequest.record import RequestController
from tonebridge_dr.status import restorerequest as rr_status

INTERVAL = 5.0


def _pending(body: kopf.Body, **_: Any) -> bool:
    instance = (body.get("status") or {}).get("instance") or {}
    return bool(instance) and not instance.get("ready")


def check(controller: RequestController, body: Mapping[str, Any]) -> bool:
    """Whether the instance is Ready now (and recorded as such). Raises kube.ApiError."""
    instance = (body.get("status") or {}).get("instance") or {}
    name = instance.get("name")
    if not name or instance.get("ready"):
        return bool(instance.get("ready"))
    namespace = objects.ident(body)[0]
    found = controller.ctx.kube.get_or_none(kube.STATEFULSET, namespace, str(name))
    if found is None or int((found.get("status") or {}).get("readyReplicas") or 0) < 1:
        return False
    note = f"PostgreSQL ({instance.get('image')}) runs on it: its pod is Ready."
    written = controller.write_status(body, lambda _b, s: rr_status.instance_ready(s, note=note))
    if written is not None:
        controller.event(written, Reason.INSTANCE_READY,
                         f"PostgreSQL ({instance.get('image')}) runs on the restored volume: "
                         f"StatefulSet {name} has a Ready pod", warning=False)
    return True


def register(registry: kopf.OperatorRegistry, controller: RequestController) -> None:
    @kopf.timer(*registration.resource(controller), id="instance", interval=INTERVAL,
                when=_pending, registry=registry)
    def instance(body: kopf.Body, **kwargs: Any) -> None:
        retry = int(kwargs.get("retry") or 0)
        controller.attempt(lambda: check(controller, body), retry)
