"""Reconciling one BackupPolicy: observe -> decide -> act.

observe  parse the body, look up the Secrets it names, list what it owns;
decide   desired objects (pure builders), stale objects (owned, labelled, not desired),
         the Ready condition;
act      server-side apply the desired objects, delete the stale ones, write status.

Idempotent and safe to repeat (create, update, resume, periodic re-check): names are
deterministic, apply of an unchanged object writes nothing, status is written only
when it changes. Missing Secrets that backup Jobs need leave the owned objects as they
are (Ready=False, reason SecretNotFound); missing monitoring / notification Secrets
only turn Ready False. Repository contents are never touched here.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from tonebridge_dr.api.backuppolicy import BackupPolicyStatus
from tonebridge_dr.api.conditions import Reason
from tonebridge_dr.api.kinds import BackupPolicy
from tonebridge_dr.builders import backup as builders
from tonebridge_dr.builders import names
from tonebridge_dr.controller import policies
from tonebridge_dr.controller.core import kube as kubemod
from tonebridge_dr.controller.core import objects
from tonebridge_dr.controller.core.context import Context
from tonebridge_dr.status import backuppolicy as policy_status
from tonebridge_dr.status import conditions

log = logging.getLogger(__name__)

OWNED_KINDS: tuple[kubemod.Kind, ...] = (kubemod.CRONJOB, kubemod.DEPLOYMENT)
REASON_APPLY_FAILED = "ApplyFailed"

Json = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Decision:
    """What reconcile will do, decided from one observation."""

    apply: list[Json]
    delete: list[Json]
    ready: bool
    reason: str
    message: str


def _owned_by(obj: Mapping[str, Any], uid: str | None) -> bool:
    owners = (obj.get("metadata") or {}).get("ownerReferences") or []
    return bool(uid) and any(owner.get("uid") == uid for owner in owners)


def observe_owned(ctx: Context, policy: BackupPolicy) -> list[Json]:
    """Objects of the kinds a policy owns that carry its labels and its owner uid."""
    namespace = policy.metadata.namespace
    selector = names.selector_for_policy(policy.metadata.name or "")
    owned: list[Json] = []
    for kind in OWNED_KINDS:
        for obj in ctx.kube.list(kind, namespace, label_selector=selector):
            if _owned_by(obj, policy.metadata.uid):
                owned.append(obj)
    return owned


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    return (str(obj.get("kind", "")), str((obj.get("metadata") or {}).get("name", "")))


def decide(
    policy: BackupPolicy,
    desired: list[Json],
    owned: list[Json],
    missing: list[policies.SecretUse],
) -> Decision:
    blocking = [use for use in missing if use.needed_by_jobs]
    wanted = {_key(obj) for obj in desired}
    stale = [obj for obj in owned if _key(obj) not in wanted]
    if missing:
        message = policies.describe_missing(missing)
        if blocking:
            message += "; backup objects are left unchanged until it exists"
        return Decision(
            apply=[] if blocking else desired,
            delete=[] if blocking else stale,
            ready=False,
            reason=Reason.SECRET_NOT_FOUND.value,
            message=message,
        )
    return Decision(apply=desired, delete=stale, ready=True, reason=Reason.RECONCILED.value,
                    message="")


def _wal_deployment(desired: list[Json]) -> str | None:
    for obj in desired:
        if obj.get("kind") == "Deployment":
            return str(obj["metadata"]["name"])
    return None


def _not_ready(ctx: Context, body: Mapping[str, Any], *, reason: str, message: str) -> None:
    """Ready=False with `reason`; a Warning Event only when Ready changes (not on every
    re-check)."""
    metadata = body.get("metadata") or {}
    namespace, name = objects.ident(body)
    generation = metadata.get("generation")
    now = ctx.clock()
    changed: list[bool] = []

    def mutate(_current: Json, status: BackupPolicyStatus | None) -> BackupPolicyStatus:
        old = conditions.get_condition(status.conditions if status else None, conditions.READY)
        changed[:] = [
            old is None or old.status.value != "False" or old.reason != reason
            or old.message != message
        ]
        return policy_status.apply_not_ready(
            status, reason=reason, message=message, generation=generation, now=now
        )

    policies.update_status(ctx, namespace, name, mutate, body=body)
    if changed and changed[0]:
        log.info("%s/%s is not ready: %s: %s", namespace, name, reason, message)
        policies.event(ctx, body, warning=True, reason=reason, message=message)


def act(ctx: Context, policy: BackupPolicy, decision: Decision) -> None:
    """Apply the desired objects, then delete the stale ones (only that incarnation)."""
    for obj in decision.apply:
        ctx.kube.apply(obj)
    for obj in decision.delete:
        kind = kubemod.kind_of(obj)
        meta = obj["metadata"]
        log.info("%s/%s: deleting %s %s (no longer in the spec)", policy.metadata.namespace,
                 policy.metadata.name, obj.get("kind"), meta["name"])
        ctx.kube.delete(kind, meta.get("namespace"), meta["name"], uid=meta.get("uid"))


def reconcile(ctx: Context, body: Mapping[str, Any], *, prune: bool = True) -> bool:
    """Bring what the policy owns and its Ready condition in line with its spec.
    Returns True when the policy ended Ready. Raises kube.ApiError on API trouble
    (the handler turns transient ones into retries).

    `prune=False` skips looking for stale owned objects: right for a policy that was
    just created (it owns nothing but what this call applies), and it saves two LISTs
    per new policy."""
    metadata = body.get("metadata") or {}
    namespace, name = objects.ident(body)
    if metadata.get("deletionTimestamp"):
        return False
    # observe
    try:
        policy = policies.parse(body)
    except policies.InvalidPolicy as exc:
        _not_ready(ctx, body, reason=Reason.INVALID_SPEC.value, message=str(exc))
        return False
    ctx.metrics.track(namespace, name)
    try:
        desired = builders.desired_objects(policy, ctx.settings.runner)
    except builders.UnsupportedTarget as exc:
        _not_ready(ctx, body, reason=exc.reason, message=str(exc))
        return False
    missing = policies.missing_secrets(ctx, policy)
    owned = observe_owned(ctx, policy) if prune else []
    # decide
    decision = decide(policy, desired, owned, missing)
    # act
    try:
        act(ctx, policy, decision)
    except kubemod.ApiError as exc:
        if not exc.transient:  # e.g. refused as invalid, or forbidden by RBAC: say so
            _not_ready(ctx, body, reason=REASON_APPLY_FAILED, message=str(exc))
        raise
    if not decision.ready:
        _not_ready(ctx, body, reason=decision.reason, message=decision.message)
        return False
    now = ctx.clock()
    wal_deployment = _wal_deployment(desired)

    def mutate(_current: Json, status: BackupPolicyStatus | None) -> BackupPolicyStatus:
        return policy_status.apply_reconciled(status, policy, now=now,
                                              wal_deployment=wal_deployment)

    policies.update_status(ctx, namespace, name, mutate, body=body)
    return True


def needs_recheck(body: Mapping[str, Any]) -> bool:
    """Whether the periodic monitor should reconcile again: Ready is False for a reason
    that can fix itself (a Secret created later)."""
    status = policies.status_of(body)
    ready = conditions.get_condition(status.conditions if status else None, conditions.READY)
    return ready is not None and ready.status.value == "False" and ready.reason == (
        Reason.SECRET_NOT_FOUND.value
    )
