"""Notifications of a FailoverPlan and the escalation of an open problem (spec 10.2).

A problem is open while a real run is in progress or failed, or while the target is
down (`status.failoverplan.open_problem`). From the moment it opens, each level of
`notifications.escalation` is notified once when its `after` has passed (level 1 at
0s, level 2 after its `after`, ...), to the level's own webhook when it has one, else
to `notifications.webhookSecretRef`, mentioning the level's contacts. When the problem
closes, every webhook that was told gets one resolution message and the escalation
ends. The levels notified are written to `status.escalation` before they are handed to
the outbox: an operator restart never repeats a level (at most once per level).

Deliveries never block a failover: the `Outbox` posts from background threads and
retries a failed delivery with back-off (1 s, 2 s, 4 s, ... `attempts` tries); the
webhook URL is read from its Secret in that thread and goes nowhere else.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tonebridge_dr.api.common import (
    EscalationLevel,
    NotificationEvent,
    Notifications,
    SecretKeyRef,
)
from tonebridge_dr.api.failoverplan import FailoverPlanStatus
from tonebridge_dr.api.kinds import FailoverPlan
from tonebridge_dr.controller.core import notify, objects
from tonebridge_dr.controller.core.context import Context
from tonebridge_dr.status import failoverplan as plan_status

log = logging.getLogger(__name__)

Json = dict[str, Any]
ATTEMPTS = 6
FIRST_DELAY = 1.0


class Outbox:
    """Background webhook deliveries with retries (one daemon thread per delivery)."""

    def __init__(self, ctx: Context, *, attempts: int = ATTEMPTS,
                 first_delay: float = FIRST_DELAY) -> None:
        self.ctx = ctx
        self.attempts = attempts
        self.first_delay = first_delay

    def post(self, namespace: str, name: str, ref: SecretKeyRef,
             notification: notify.Notification) -> None:
        thread = threading.Thread(
            target=self._deliver, args=(namespace, name, ref, notification),
            name=f"notify-{name}", daemon=True,
        )
        thread.start()

    def _deliver(self, namespace: str, name: str, ref: SecretKeyRef,
                 notification: notify.Notification) -> None:
        delay = self.first_delay
        for attempt in range(self.attempts):
            url = notify.webhook_url(self.ctx, namespace, name, ref)
            if url is not None and notify.send(url, notification,
                                               timeout=self.ctx.settings.notify_timeout):
                return
            if attempt < self.attempts - 1:
                time.sleep(delay)
                delay *= 2
        log.warning("gave up delivering %s of %s/%s after %d attempts",
                    notification.event.value, namespace, name, self.attempts)

    def notify(self, plan: FailoverPlan, event: NotificationEvent, *, state: str,
               message: str) -> None:
        """An ordinary notification (if `notifications.events` asks for it)."""
        notifications = plan.spec.notifications
        if not notify.wanted(notifications, event):
            return
        namespace, name = plan.metadata.namespace or "", plan.metadata.name or ""
        notification = notify.Notification(
            namespace=namespace, policy=name, event=event, state=state, message=message,
            contacts=notify.first_contacts(notifications),
        )
        for ref in notify.webhooks(notifications):
            self.post(namespace, name, ref, notification)


def level_webhook(notifications: Notifications, level: EscalationLevel) -> SecretKeyRef | None:
    return level.webhook_secret_ref or notifications.webhook_secret_ref


def tick(
    plan: FailoverPlan, body: Json, outbox: Outbox,
    write: Callable[[Json, Callable[[Json, FailoverPlanStatus | None],
                                    FailoverPlanStatus | None]], Json | None],
) -> Json:
    """Open, extend or close the escalation of `body` (returns the body after writing)."""
    notifications = plan.spec.notifications
    levels: Sequence[EscalationLevel] = (notifications.escalation or []) if notifications \
        else []
    status = objects.status_of(body, FailoverPlanStatus)
    problem = plan_status.open_problem(status)
    current = status.escalation if status else None
    if notifications is None or not levels or (problem is None and current is None):
        return body
    now = outbox.ctx.clock()
    sent: list[EscalationLevel] = []
    resolved: list[int] = []

    def mutate(_current: Json, old: FailoverPlanStatus | None) -> FailoverPlanStatus | None:
        sent.clear()
        resolved.clear()
        old = old or FailoverPlanStatus()
        still = plan_status.open_problem(old)
        if still is None:
            if old.escalation is None:
                return None
            resolved.extend(old.escalation.notified_levels or ())
            return plan_status.escalate(old, problem=None, notified=(), now=now)
        opened = plan_status.escalate(old, problem=still, notified=(), now=now)
        assert opened.escalation is not None
        due = plan_status.due_levels(opened.escalation, levels, now)
        sent.extend(due)
        return plan_status.escalate(opened, problem=still,
                                    notified=[lv.level for lv in due], now=now)

    written = write(body, mutate)
    namespace, name = objects.ident(body)
    new_status = objects.status_of(written or body, FailoverPlanStatus)
    reason = (new_status.escalation.reason if new_status and new_status.escalation
              else problem or "")
    phase = str(new_status.phase.value) if new_status and new_status.phase else ""
    for level in sent:
        ref = level_webhook(notifications, level)
        if ref is None:
            continue
        log.info("%s/%s: escalation level %d: %s", namespace, name, level.level, reason)
        outbox.post(namespace, name, ref, notify.Notification(
            namespace=namespace, policy=name, event=NotificationEvent.ESCALATION,
            state=phase, message=f"escalation level {level.level}: {reason}",
            contacts=tuple(level.contacts),
        ))
    if resolved:
        told = _refs_of(notifications, levels, resolved)
        log.info("%s/%s: resolved, escalation ends", namespace, name)
        for ref in told:
            outbox.post(namespace, name, ref, notify.Notification(
                namespace=namespace, policy=name, event=NotificationEvent.RESOLVED,
                state=phase, message=f"resolved: {phase or 'the problem is closed'}",
            ))
    return written or body


def _refs_of(notifications: Notifications, levels: Sequence[EscalationLevel],
             numbers: Sequence[int]) -> list[SecretKeyRef]:
    refs: list[SecretKeyRef] = []
    wanted: Mapping[int, EscalationLevel] = {lv.level: lv for lv in levels}
    for number in numbers:
        level = wanted.get(number)
        ref = level_webhook(notifications, level) if level is not None else None
        if ref is not None and ref not in refs:
            refs.append(ref)
    return refs
