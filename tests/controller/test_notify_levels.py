"""Where ordinary notifications go when only escalation levels have webhooks (accepted by
the CRD, and before this fix never sent)."""

from __future__ import annotations

from tonebridge_dr.api.common import NotificationEvent, Notifications
from tonebridge_dr.controller.core import notify


def _notifications(**extra: object) -> Notifications:
    return Notifications.model_validate({"escalation": [
        {"level": 2, "after": "30m", "contacts": ["manager@example.com"],
         "webhookSecretRef": {"name": "hook-2", "key": "url"}},
        {"level": 1, "after": "0s", "contacts": ["lead@example.com"],
         "webhookSecretRef": {"name": "hook-1", "key": "url"}},
    ], **extra})


def test_per_level_webhooks_only_go_to_the_levels_due_at_once() -> None:
    notifications = _notifications()
    assert [ref.name for ref in notify.webhooks(notifications)] == ["hook-1"]
    assert notify.wanted(notifications, NotificationEvent.FAILOVER_FAILED)
    assert not notify.wanted(notifications, NotificationEvent.BACKUP_SUCCEEDED)  # not asked
    assert notify.first_contacts(notifications) == ("lead@example.com",)


def test_the_plan_webhook_wins_when_there_is_one() -> None:
    notifications = _notifications(webhookSecretRef={"name": "main", "key": "url"})
    assert [ref.name for ref in notify.webhooks(notifications)] == ["main"]
    assert notify.webhooks(None) == []
    assert not notify.wanted(None, NotificationEvent.FAILOVER_FAILED)
