"""Reconciling one BackupPolicy: observe -> decide -> act.

observe  the Secrets it names (`referenced_secrets`, checked by `core.secrets`), what
         it owns;
decide   desired objects (pure builders), stale objects (owned, labelled, not desired),
         the Ready condition (`decide`, pure);
act      server-side apply the desired objects, delete the stale ones, write status.

Idempotent and safe to repeat (create, update, resume, periodic re-check): names are
deterministic, apply of an unchanged object writes nothing, status is written only
when it changes. A Secret (or a key in it) that backup Jobs need and that is missing
leaves the owned objects as they are (Ready=False, reason SecretNotFound /
SecretKeyNotFound); missing monitoring / notification Secrets only turn Ready False.
Repository contents are never touched here.
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
from tonebridge_dr.controller.core import kube, objects, secrets
from tonebridge_dr.controller.core.context import Context
from tonebridge_dr.controller.core.kind import Cause, Controller, Trigger
from tonebridge_dr.status import backuppolicy as policy_status
from tonebridge_dr.status import conditions

log = logging.getLogger(__name__)

OWNED_KINDS: tuple[kube.Kind, ...] = (kube.CRONJOB, kube.DEPLOYMENT)
#: Ready=False reasons that can fix themselves (a Secret created later): the monitor
#: reconciles again while Ready says one of them.
RECHECKED_REASONS = frozenset({Reason.SECRET_NOT_FOUND, Reason.SECRET_KEY_NOT_FOUND,
                               Reason.OBJECT_LOCK_NOT_ENABLED})

Json = dict[str, Any]
PolicyController = Controller[BackupPolicy, BackupPolicyStatus]


@dataclasses.dataclass(frozen=True)
class Decision:
    """What reconcile will do, decided from one observation."""

    apply: list[Json]
    delete: list[Json]
    ready: bool
    reason: Reason
    message: str


def referenced_secrets(policy: BackupPolicy) -> list[secrets.SecretUse]:
    """Every use of a Secret by the policy, in a stable order. The encryption private
    key is left out: only restore Jobs use it."""
    spec = policy.spec
    use = secrets.SecretUse
    uses: list[secrets.SecretUse] = []
    if spec.target.postgres is not None:
        ref = spec.target.postgres.dsn_secret_ref
        uses.append(use(ref.name, (ref.key,), "database DSN"))
    if spec.target.redis is not None:
        ref = spec.target.redis.url_secret_ref
        uses.append(use(ref.name, (ref.key,), "Redis URL"))
    repository = spec.repository
    if repository.credentials_secret_ref is not None:
        uses.append(use(repository.credentials_secret_ref.name, secrets.REPOSITORY_KEYS,
                        "repository credentials"))
    if spec.encryption is not None:
        ref = spec.encryption.public_key_secret_ref
        uses.append(use(ref.name, (ref.key,), "encryption public key"))
    if repository.restore_credentials_secret_ref is not None:
        uses.append(use(repository.restore_credentials_secret_ref.name, secrets.REPOSITORY_KEYS,
                        "read-only repository credentials", blocking=False))
    for replica in repository.replicas or ():
        if replica.credentials_secret_ref is not None:
            # Not blocking: backups go on while one replica's Secret is missing.
            uses.append(use(replica.credentials_secret_ref.name, secrets.REPOSITORY_KEYS,
                            f"credentials of replica {replica.url}", blocking=False))
    return uses + secrets.notification_uses(spec.notifications)


def observe_owned(ctx: Context, policy: BackupPolicy) -> list[Json]:
    """Objects of the kinds a policy owns that carry its labels and its owner uid."""
    namespace = policy.metadata.namespace
    selector = names.selector_for_policy(policy.metadata.name or "")
    owned: list[Json] = []
    for kind in OWNED_KINDS:
        for obj in ctx.kube.list(kind, namespace, label_selector=selector):
            if objects.owned_by(obj, policy.metadata.uid):
                owned.append(obj)
    return owned


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    return (str(obj.get("kind", "")), str((obj.get("metadata") or {}).get("name", "")))


def object_lock_problem(policy: BackupPolicy, enabled: bool | None) -> str | None:
    """Why the policy's objectLock cannot work (`enabled`: what the bucket says, None when
    it could not be asked), or None."""
    if policy.spec.repository.object_lock is None or enabled is not False:
        return None
    bucket = policy.spec.repository.url.removeprefix("s3://").split("/", 1)[0]
    return (
        f"bucket {bucket} does not have S3 Object Lock enabled, but spec.repository.objectLock "
        "asks for locked objects (S3 would refuse every backup): enable Object Lock on the "
        "bucket (aws s3api put-object-lock-configuration) or remove objectLock; backup "
        "objects are left unchanged until then"
    )


def secrets_encryption_problem(policy: BackupPolicy) -> str | None:
    """Why a kubernetes target cannot run: it exports Secrets (listed, or by the default
    kinds) without spec.encryption. The API server refuses a policy that lists secrets
    without encryption; the default kinds include secrets, which only the operator sees."""
    target = policy.spec.target.kubernetes
    if target is None or not target.exports_secrets or policy.spec.encryption is not None:
        return None
    listed = "lists secrets" if target.kinds else "exports secrets (the default kinds include them)"
    return (
        f"target.kubernetes {listed}, but spec.encryption is not set: Secrets are only ever "
        "stored encrypted. Set spec.encryption.publicKeySecretRef (an OpenPGP public key), or "
        "set target.kubernetes.kinds to the kinds to export without secrets; no backup runs "
        "until then"
    )


def decide(
    policy: BackupPolicy,
    desired: list[Json],
    owned: list[Json],
    problems: list[secrets.SecretProblem],
    object_lock: str | None = None,
    encryption: str | None = None,
) -> Decision:
    """`object_lock`: `object_lock_problem`'s sentence; like a missing Secret that backup
    Jobs need, it leaves the owned objects as they are. `encryption`:
    `secrets_encryption_problem`'s sentence: nothing is applied (no backup would store a
    Secret unencrypted) and the owned objects are left as they are."""
    if encryption is not None:
        return Decision(apply=[], delete=[], ready=False,
                        reason=Reason.SECRETS_NEED_ENCRYPTION, message=encryption)
    if object_lock is not None and not any(problem.blocking for problem in problems):
        return Decision(apply=[], delete=[], ready=False,
                        reason=Reason.OBJECT_LOCK_NOT_ENABLED, message=object_lock)
    blocking = [problem for problem in problems if problem.blocking]
    wanted = {_key(obj) for obj in desired}
    stale = [obj for obj in owned if _key(obj) not in wanted]
    if problems:
        message = secrets.describe(problems)
        if blocking:
            message += "; backup objects are left unchanged until it exists"
        return Decision(
            apply=[] if blocking else desired,
            delete=[] if blocking else stale,
            ready=False,
            reason=problems[0].reason,
            message=message,
        )
    return Decision(apply=desired, delete=stale, ready=True, reason=Reason.RECONCILED,
                    message="")


def _wal_deployment(desired: list[Json]) -> str | None:
    for obj in desired:
        if obj.get("kind") == "Deployment":
            return str(obj["metadata"]["name"])
    return None


def act(ctx: Context, policy: BackupPolicy, decision: Decision) -> None:
    """Apply the desired objects, then delete the stale ones (only that incarnation)."""
    for obj in decision.apply:
        ctx.kube.apply(obj)
    for obj in decision.delete:
        kind = kube.kind_of(obj)
        meta = obj["metadata"]
        log.info("%s/%s: deleting %s %s (no longer in the spec)", policy.metadata.namespace,
                 policy.metadata.name, obj.get("kind"), meta["name"])
        ctx.kube.delete(kind, meta.get("namespace"), meta["name"], uid=meta.get("uid"))


def reconcile(controller: PolicyController, policy: BackupPolicy, body: Json,
              cause: Cause) -> None:
    """Bring what the policy owns and its Ready condition in line with its spec.
    Raises kube.ApiError on API trouble (the skeleton retries).

    A policy that was just created owns nothing but what this call applies: its first
    run skips looking for stale owned objects (two LISTs less per new policy)."""
    ctx = controller.ctx
    namespace, name = objects.ident(body)
    ctx.metrics.track(namespace, name)
    # observe
    try:
        desired = builders.desired_objects(policy, ctx.settings.runner)
    except builders.UnsupportedTarget as exc:
        controller.refuse(body, Reason(exc.reason), str(exc))
        return None
    problems = secrets.check(ctx.kube, namespace, referenced_secrets(policy))
    lock_enabled = (
        ctx.catalog.object_lock_enabled(policy, ctx.kube)
        if policy.spec.repository.object_lock is not None
        and not any(problem.blocking for problem in problems) else None
    )
    prune = cause.trigger is not Trigger.CREATE or cause.retry > 0
    owned = observe_owned(ctx, policy) if prune else []
    # decide
    decision = decide(policy, desired, owned, problems,
                      object_lock_problem(policy, lock_enabled),
                      secrets_encryption_problem(policy))
    # act
    try:
        act(ctx, policy, decision)
    except kube.ApiError as exc:
        if not exc.transient:  # e.g. refused as invalid, or forbidden by RBAC: say so
            controller.refuse(body, Reason.APPLY_FAILED, str(exc))
        raise
    if not decision.ready:
        controller.refuse(body, decision.reason, decision.message)
        return None
    now = ctx.clock()
    wal_deployment = _wal_deployment(desired)

    def mutate(_current: Json, status: BackupPolicyStatus | None) -> BackupPolicyStatus:
        return policy_status.apply_reconciled(status, policy, now=now,
                                              wal_deployment=wal_deployment)

    controller.write_status(body, mutate)
    return None


def needs_recheck(controller: PolicyController, body: Mapping[str, Any]) -> bool:
    """Whether the periodic monitor should reconcile again: Ready is False for a reason
    that can fix itself (a Secret created later)."""
    status = controller.status_of(body)
    ready = conditions.get_condition(status.conditions if status else None, conditions.READY)
    return ready is not None and ready.status.value == "False" and (
        ready.reason in RECHECKED_REASONS
    )
