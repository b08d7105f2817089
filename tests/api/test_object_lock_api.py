"""`spec.repository.objectLock`: the forms the models accept, what they serialize to, and
the rule that `fromRetention` needs retention rules (the rejections are in
test_crd_validation.py, checked against the API server too)."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from tests.fixtures import EXAMPLES
from tonebridge_dr.api.backuppolicy import BackupPolicySpec
from tonebridge_dr.api.common import FROM_RETENTION, ObjectLockMode, Repository


def _example_spec() -> dict[str, Any]:
    doc = yaml.safe_load((EXAMPLES / "01-postgres-backup/backuppolicy.yaml").read_text())
    return dict(doc["spec"])


@pytest.mark.parametrize(("text", "expected"), [
    ("30d", dt.timedelta(days=30)),
    ("2555d", dt.timedelta(days=2555)),
    ("1h30m", dt.timedelta(hours=1, minutes=30)),
    ("fromRetention", FROM_RETENTION),
])
def test_retain_for_accepts_durations_and_from_retention(text: str, expected: object) -> None:
    repository = Repository.model_validate(
        {"url": "s3://bucket/prefix", "objectLock": {"mode": "COMPLIANCE", "retainFor": text}}
    )
    lock = repository.object_lock
    assert lock is not None and lock.mode is ObjectLockMode.COMPLIANCE
    assert lock.retain_for == expected
    assert lock.from_retention is (text == "fromRetention")
    # the wire form is what the user wrote
    assert repository.model_dump(mode="json")["objectLock"] == {
        "mode": "COMPLIANCE", "retainFor": text,
    }


@pytest.mark.parametrize("text", ["0d", "0s", "", "forever", "-1d", "30", "fromretention"])
def test_retain_for_rejects_everything_else(text: str) -> None:
    with pytest.raises(ValidationError, match="must be fromRetention or a duration"):
        Repository.model_validate(
            {"url": "s3://bucket/p", "objectLock": {"mode": "GOVERNANCE", "retainFor": text}}
        )


def test_from_retention_is_accepted_with_spec_or_schedule_retention() -> None:
    spec = _example_spec()
    spec["repository"] = {**spec["repository"],
                          "objectLock": {"mode": "GOVERNANCE", "retainFor": "fromRetention"}}
    assert BackupPolicySpec.model_validate(spec).repository.object_lock is not None
    only_schedule = copy.deepcopy(spec)
    del only_schedule["retention"]
    for schedule in only_schedule["schedules"][1:]:
        schedule.pop("retention", None)
    BackupPolicySpec.model_validate(only_schedule)  # the first schedule's rules suffice
    for schedule in only_schedule["schedules"]:
        schedule.pop("retention", None)
    with pytest.raises(ValidationError, match="fromRetention needs retention rules"):
        BackupPolicySpec.model_validate(only_schedule)
    fixed = copy.deepcopy(only_schedule)
    fixed["repository"]["objectLock"]["retainFor"] = "30d"  # a duration needs no rules
    BackupPolicySpec.model_validate(fixed)
