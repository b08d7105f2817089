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
from tonebridge_dr.controller.core import kube as kubemod
from tonebridge_dr.controller.core import notify, objects
from tonebridge_dr.controller.core.context import Context

log = logging.getLogger(__name__)

KIND = kubemod.register_kind(
    kubemod.Kind(f"{GROUP}/{VERSION}", BACKUP_POLICY.kind, BACKUP_POLICY.plural)
)

Json = dict[str, Any]
Mutation = Callable[[Json, BackupPolicyStatus | None], BackupPolicyStatus | None]


class InvalidPolicy(ValueError):
    """The body does not parse into a BackupPolicy (what the schema could not catch)."""


def parse(body: Mapping[str, Any]) -> BackupPolicy:
    """The typed policy; InvalidPolicy with one readable sentence (field: problem)."""
    try:
        return BackupPolicy.from_body(body)
    except pydantic.ValidationError as exc:
        raise InvalidPolicy(objects.validation_message(exc)) from None


def status_of(body: Mapping[str, Any]) -> BackupPolicyStatus | None:
    return objects.status_of(body, BackupPolicyStatus)


def update_status(
    ctx: Context,
    namespace: str,
    name: str,
    mutate: Mutation,
    *,
    body: Mapping[str, Any] | None = None,
    significant: Callable[[Json, Json], bool] | None = None,
) -> Json | None:
    """`objects.update_status` of a BackupPolicy: the one way its status is written."""
    return objects.update_status(
        ctx, KIND, BackupPolicyStatus, namespace, name, mutate, body=body,
        significant=significant,
    )


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


def event(
    ctx: Context, policy_body: Mapping[str, Any], *, warning: bool, reason: str, message: str
) -> None:
    objects.event(ctx, KIND, policy_body, warning=warning, reason=reason, message=message)


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
