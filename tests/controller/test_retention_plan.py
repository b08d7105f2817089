"""The operator's retention plan of a policy, and when its periodic run is due (pure)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import yaml

from tests.fixtures import EXAMPLES
from tonebridge_dr.api.backuppolicy import BackupPolicyStatus, RetentionStatus
from tonebridge_dr.api.kinds import BackupPolicy
from tonebridge_dr.controller.backuppolicy.retention import due
from tonebridge_dr.controller.core.maintenance import plan_of
from tonebridge_dr.runner.repository.retention import RetentionPolicy


def _policy(example: str, **spec: object) -> BackupPolicy:
    body = yaml.safe_load(Path(EXAMPLES / example / "backuppolicy.yaml").read_text())
    body["metadata"].update(uid="u", namespace="ns")
    body["spec"].update(spec)
    return BackupPolicy.from_body(body)


def test_example_01_plan_is_what_its_comments_say() -> None:
    plan = plan_of(_policy("01-postgres-backup"))
    daily = plan.schedules["daily-full"]
    assert daily.policy == RetentionPolicy(daily=30, monthly=12, yearly=7)
    assert daily.time_zone == "Asia/Tokyo"
    assert plan.schedules["hourly-hot"].policy == RetentionPolicy(hourly=168)
    assert plan.schedules["daily-physical"].policy == RetentionPolicy(daily=7)
    assert plan.default is not None
    assert plan.default.policy == RetentionPolicy(daily=30, hourly=168,
                                                  min_age=dt.timedelta(hours=1))
    assert not plan.is_empty


def test_schedules_without_their_own_rule_follow_spec_retention() -> None:
    policy = _policy("00-local-demo", retention={"daily": 2})
    plan = plan_of(policy)
    for schedule in policy.spec.schedules:
        assert plan.schedules[schedule.name].policy == RetentionPolicy(daily=2)
    assert plan_of(_policy("00-local-demo", retention=None)).is_empty  # keeps everything


def test_the_periodic_run_is_due_once_per_interval() -> None:
    now = dt.datetime(2026, 12, 5, tzinfo=dt.UTC)
    assert due(None, now, 86400)
    ran = BackupPolicyStatus(retention=RetentionStatus(last_run_time=now))
    assert not due(ran, now + dt.timedelta(hours=23), 86400)
    assert due(ran, now + dt.timedelta(hours=24), 86400)
