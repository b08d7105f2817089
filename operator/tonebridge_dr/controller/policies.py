"""BackupPolicy plumbing shared by the handlers: parsing, referenced Secrets, events,
notifications and the one way status is written (compare-and-set)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

import pydantic

from tonebridge_dr.api.backuppolicy import BackupPolicyStatus
from tonebridge_dr.api.common import NotificationEvent
from tonebridge_dr.api.kinds import BACKUP_POLICY, GROUP, VERSION, BackupPolicy
from tonebridge_dr.controller import kube as kubemod
from tonebridge_dr.controller import notify
from tonebridge_dr.controller.context import Context

log = logging.getLogger(__name__)

KIND = kubemod.register_kind(
    kubemod.Kind(f"{GROUP}/{VERSION}", BACKUP_POLICY.kind, BACKUP_POLICY.plural)
)

Json = dict[str, Any]
Mutation = Callable[[Json, BackupPolicyStatus | None], BackupPolicyStatus | None]


class InvalidPolicy(ValueError):
    """The body does not parse into a BackupPolicy (what the schema could not catch)."""


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def plain(body: Mapping[str, Any]) -> Json:
    """A kopf body (read-only views) as plain dicts and lists."""
    return {key: _plain(value) for key, value in body.items()}


def ident(body: Mapping[str, Any]) -> tuple[str, str]:
    """(namespace, name) of an object."""
    metadata = body.get("metadata") or {}
    return str(metadata.get("namespace") or ""), str(metadata.get("name") or "")


def parse(body: Mapping[str, Any]) -> BackupPolicy:
    """The typed policy; InvalidPolicy with one readable sentence (field: problem)."""
    try:
        return BackupPolicy.from_body(body)
    except pydantic.ValidationError as exc:
        problems = []
        for error in exc.errors()[:3]:
            where = ".".join(str(part) for part in error.get("loc", ()))
            problems.append(f"{where}: {error.get('msg', 'invalid')}" if where else error["msg"])
        raise InvalidPolicy("; ".join(problems)) from None


def status_of(body: Mapping[str, Any]) -> BackupPolicyStatus | None:
    raw = body.get("status")
    if not raw:
        return None
    try:
        return BackupPolicyStatus.model_validate(plain(raw))
    except pydantic.ValidationError:
        log.warning("ignoring an unreadable status of %s", _where(body))
        return None


def _where(body: Mapping[str, Any]) -> str:
    metadata = body.get("metadata") or {}
    return f"{metadata.get('namespace')}/{metadata.get('name')}"


def _dump(status: BackupPolicyStatus | None) -> Json:
    return status.model_dump(mode="json", exclude_none=True) if status is not None else {}


def update_status(
    ctx: Context,
    namespace: str,
    name: str,
    mutate: Mutation,
    *,
    body: Mapping[str, Any] | None = None,
    significant: Callable[[Json, Json], bool] | None = None,
) -> Json | None:
    """Read-modify-write of the status with the resourceVersion as precondition.

    `mutate(body, status)` returns the new status (None: leave it). It may run several
    times: on a conflict the object is read again and `mutate` sees the newer status.
    Nothing is written when the result equals the stored status (or when
    `significant(old, new)` says the difference does not matter). Returns the body
    that is current after the call, or None when the policy is gone.
    """

    def compute(current: Json) -> Json | None:
        old = status_of(current)
        new = mutate(current, old)
        if new is None:
            return None
        old_dump, new_dump = _dump(old), _dump(new)
        if new_dump == old_dump:
            return None
        if significant is not None and not significant(old_dump, new_dump):
            return None
        return new_dump

    first = plain(body) if body is not None else None
    return ctx.kube.write_status(KIND, namespace, name, compute, body=first)


# --- referenced Secrets ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SecretUse:
    name: str
    purpose: str
    needed_by_jobs: bool


def referenced_secrets(policy: BackupPolicy) -> list[SecretUse]:
    """Secrets the policy names, in a stable order (each once). The encryption private
    key is left out: only restore Jobs use it."""
    spec = policy.spec
    uses: list[SecretUse] = []
    if spec.target.postgres is not None:
        uses.append(SecretUse(spec.target.postgres.dsn_secret_ref.name, "database DSN", True))
    if spec.target.redis is not None:
        uses.append(SecretUse(spec.target.redis.url_secret_ref.name, "Redis URL", True))
    repository = spec.repository
    if repository.credentials_secret_ref is not None:
        uses.append(
            SecretUse(repository.credentials_secret_ref.name, "repository credentials", True)
        )
    if spec.encryption is not None:
        uses.append(
            SecretUse(spec.encryption.public_key_secret_ref.name, "encryption public key", True)
        )
    if repository.restore_credentials_secret_ref is not None:
        uses.append(
            SecretUse(
                repository.restore_credentials_secret_ref.name,
                "read-only repository credentials",
                False,
            )
        )
    notifications = spec.notifications
    if notifications is not None:
        if notifications.webhook_secret_ref is not None:
            uses.append(SecretUse(notifications.webhook_secret_ref.name, "webhook URL", False))
        for level in notifications.escalation or ():
            if level.webhook_secret_ref is not None:
                uses.append(
                    SecretUse(level.webhook_secret_ref.name, "escalation webhook URL", False)
                )
    seen: dict[str, SecretUse] = {}
    for use in uses:
        known = seen.get(use.name)
        if known is None or (use.needed_by_jobs and not known.needed_by_jobs):
            seen[use.name] = use
    return list(seen.values())


def missing_secrets(ctx: Context, policy: BackupPolicy) -> list[SecretUse]:
    namespace = policy.metadata.namespace or "default"
    return [
        use for use in referenced_secrets(policy)
        if not ctx.kube.secret_exists(namespace, use.name)
    ]


def describe_missing(missing: list[SecretUse]) -> str:
    parts = [f'Secret "{use.name}" ({use.purpose}) not found' for use in missing]
    return "; ".join(parts)


# --- events and notifications -----------------------------------------------------------------


def reference(policy_body: Mapping[str, Any]) -> Json:
    """What an Event needs to point at the policy."""
    metadata = policy_body.get("metadata") or {}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": BACKUP_POLICY.kind,
        "metadata": {
            "name": metadata.get("name"),
            "namespace": metadata.get("namespace"),
            "uid": metadata.get("uid"),
        },
    }


def event(
    ctx: Context, policy_body: Mapping[str, Any], *, warning: bool, reason: str, message: str
) -> None:
    ctx.kube.post_event(
        reference(policy_body),
        type="Warning" if warning else "Normal",
        reason=reason,
        message=message,
    )


def send_notification(
    ctx: Context,
    policy: BackupPolicy,
    notification_event: NotificationEvent,
    *,
    state: str,
    message: str,
) -> bool:
    """Send one webhook notification if the policy asks for this event. The URL is read
    from its Secret here and goes nowhere else."""
    spec = policy.spec
    if not notify.wanted(spec, notification_event):
        return False
    ref = spec.notifications.webhook_secret_ref if spec.notifications else None
    if ref is None:
        return False
    namespace = policy.metadata.namespace or "default"
    name = policy.metadata.name or ""
    try:
        data = ctx.kube.secret_data(namespace, ref.name)
    except kubemod.ApiError as exc:
        log.warning("cannot read the webhook Secret of %s/%s: %s", namespace, name, exc)
        return False
    url = (data or {}).get(ref.key, "").strip()
    if not url:
        log.warning(
            'webhook Secret "%s" of %s/%s has no key "%s"', ref.name, namespace, name, ref.key
        )
        return False
    notification = notify.Notification(
        namespace=namespace,
        policy=name,
        event=notification_event,
        state=state,
        message=message,
        contacts=notify.first_contacts(spec),
    )
    return notify.send(url, notification, timeout=ctx.settings.notify_timeout)
