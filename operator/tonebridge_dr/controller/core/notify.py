"""Slack-compatible webhook notifications.

One POST of a JSON payload with a short timeout. Slack shows `text` (and ignores
the other keys); other receivers get the structured fields too:

    {"text": "...", "namespace": "...", "policy": "...", "event": "BackupFailed",
     "state": "Failed", "message": "...", "contacts": [...]}

The webhook URL is a credential (whoever has it can post to the channel): it is
read from the object's Secret just before sending (`send_notification`) and never
logged, stored or put into an error message. A failed delivery is logged (without the
URL) and reported as False; it never fails a handler.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import urllib.error
import urllib.request
from typing import Any

from tonebridge_dr.api.common import (
    DEFAULT_NOTIFICATION_EVENTS,
    NotificationEvent,
    Notifications,
    SecretKeyRef,
)
from tonebridge_dr.controller.core.context import Context
from tonebridge_dr.controller.core.kube import ApiError

log = logging.getLogger(__name__)

USER_AGENT = "tonebridge-dr"


@dataclasses.dataclass(frozen=True)
class Notification:
    """What happened to which policy."""

    namespace: str
    policy: str
    event: NotificationEvent
    state: str
    message: str
    contacts: tuple[str, ...] = ()

    def payload(self) -> dict[str, Any]:
        icon = ":white_check_mark:" if self.event.value.endswith(("Succeeded", "Passed")) else (
            ":rotating_light:"
        )
        text = f"{icon} [{self.namespace}/{self.policy}] {self.event.value}: {self.message}"
        if self.contacts:
            text += "\ncc " + ", ".join(self.contacts)
        return {
            "text": text,
            "namespace": self.namespace,
            "policy": self.policy,
            "event": self.event.value,
            "state": self.state,
            "message": self.message,
            "contacts": list(self.contacts),
        }


def webhooks(notifications: Notifications | None) -> list[SecretKeyRef]:
    """Where ordinary notifications go: `webhookSecretRef`, else the webhooks of the
    escalation levels due at once (after: 0s), so notifications configured with
    per-level webhooks only are delivered too."""
    if notifications is None:
        return []
    if notifications.webhook_secret_ref is not None:
        return [notifications.webhook_secret_ref]
    refs: list[SecretKeyRef] = []
    for level in notifications.escalation or ():
        ref = level.webhook_secret_ref
        if level.after.total_seconds() == 0 and ref is not None and ref not in refs:
            refs.append(ref)
    return refs


def wanted(notifications: Notifications | None, event: NotificationEvent) -> bool:
    """Whether `spec.notifications` asks for `event` (and has somewhere to send it)."""
    if notifications is None or not webhooks(notifications):
        return False
    events = notifications.events or DEFAULT_NOTIFICATION_EVENTS
    return event in events


def first_contacts(notifications: Notifications | None) -> tuple[str, ...]:
    """Contacts of the escalation levels due at once (after: 0s)."""
    if notifications is None or not notifications.escalation:
        return ()
    due = [level for level in notifications.escalation if level.after.total_seconds() == 0]
    return tuple(contact for level in due for contact in level.contacts)


def send(url: str, notification: Notification, *, timeout: float) -> bool:
    """POST the notification; True when the receiver answered 2xx."""
    body = json.dumps(notification.payload()).encode()
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": USER_AGENT},
    )
    where = f"{notification.namespace}/{notification.policy}"
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        log.warning("webhook for %s answered HTTP %d", where, exc.code)
        return False
    except (urllib.error.URLError, OSError, ValueError) as exc:
        # Messages of these errors may contain the host or URL: log the type only.
        reason = getattr(exc, "reason", None)
        detail = type(reason).__name__ if isinstance(reason, BaseException) else type(exc).__name__
        log.warning("webhook for %s could not be delivered (%s)", where, detail)
        return False
    if not 200 <= status <= 299:
        log.warning("webhook for %s answered HTTP %d", where, status)
        return False
    log.info("sent %s notification for %s", notification.event.value, where)
    return True


def webhook_url(ctx: Context, namespace: str, name: str, ref: SecretKeyRef) -> str | None:
    """The URL in the Secret key `ref` (None, logged without the URL, when unreadable)."""
    try:
        data = ctx.kube.secret_data(namespace, ref.name)
    except ApiError as exc:
        log.warning("cannot read the webhook Secret of %s/%s: %s", namespace, name, exc)
        return None
    url = (data or {}).get(ref.key, "").strip()
    if not url:
        log.warning('webhook Secret "%s" of %s/%s has no key "%s"', ref.name, namespace, name,
                    ref.key)
        return None
    return url


def send_notification(
    ctx: Context,
    namespace: str,
    name: str,
    notifications: Notifications | None,
    event: NotificationEvent,
    *,
    state: str,
    message: str,
) -> bool:
    """Send one webhook notification about the object `namespace/name` if its
    `notifications` ask for `event` (to every webhook of `webhooks`). The URL is read
    from its Secret here and goes nowhere else. Never raises for API trouble (best
    effort, like `send`). True when every webhook took it."""
    if not wanted(notifications, event):
        return False
    notification = Notification(
        namespace=namespace,
        policy=name,
        event=event,
        state=state,
        message=message,
        contacts=first_contacts(notifications),
    )
    delivered = True
    for ref in webhooks(notifications):
        url = webhook_url(ctx, namespace, name, ref)
        delivered = (url is not None and send(url, notification,
                                              timeout=ctx.settings.notify_timeout)
                     and delivered)
    return delivered
