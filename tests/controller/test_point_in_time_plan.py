"""When a RestoreRequest's targetTime waits for WAL, is refused, or goes ahead (pure)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from tonebridge_dr.api.conditions import Reason
from tonebridge_dr.api.kinds import RestoreRequest
from tonebridge_dr.controller.core.kind import Refusal
from tonebridge_dr.controller.restorerequest.plan import point_in_time

NOW = dt.datetime(2026, 12, 5, 10, 0, tzinfo=dt.UTC)


def request(target: dt.datetime | None) -> RestoreRequest:
    spec: dict[str, Any] = {"source": {"policyRef": {"name": "db"}},
                            "target": {"volume": {"claimTemplate": {"size": "1Gi"}}},
                            "method": "physical"}
    if target is None:
        spec["latest"] = True
    else:
        spec["targetTime"] = target.isoformat()
    return RestoreRequest.from_body({"apiVersion": "dr.tonebridge.io/v1alpha1",
                                     "kind": "RestoreRequest",
                                     "metadata": {"name": "r", "namespace": "ns"},
                                     "spec": spec})


def test_latest_and_covered_targets_go_ahead() -> None:
    assert point_in_time(request(None), None, now=NOW, newest_wal=None) is None
    covered = NOW - dt.timedelta(minutes=2)
    assert point_in_time(request(covered), None, now=NOW,
                         newest_wal=NOW - dt.timedelta(minutes=1)) is None
    assert point_in_time(request(covered), None, now=NOW, newest_wal=None) is None  # unknown


def test_a_future_target_is_refused() -> None:
    refused = point_in_time(request(NOW + dt.timedelta(hours=9)), None, now=NOW,
                            newest_wal=NOW)
    assert isinstance(refused, Refusal) and refused.reason == Reason.TARGET_TIME_IN_FUTURE
    assert "2026-12-05T19:00:00Z is in the future" in refused.message
    # clock skew of a few seconds is no mistake
    assert point_in_time(request(NOW + dt.timedelta(seconds=30)), None, now=NOW,
                         newest_wal=NOW - dt.timedelta(minutes=1)) is not None


def test_wal_due_within_archive_timeout_waits_older_targets_go_to_the_runner() -> None:
    newest = NOW - dt.timedelta(minutes=3)
    waiting = point_in_time(request(NOW - dt.timedelta(minutes=1)), None, now=NOW,
                            newest_wal=newest)
    assert isinstance(waiting, str) and "archiveTimeout" in waiting and "wal-status" in waiting
    # default archiveTimeout 5m + 1m slack: a target 10 minutes old will not get its WAL
    assert point_in_time(request(NOW - dt.timedelta(minutes=10)), None, now=NOW,
                         newest_wal=NOW - dt.timedelta(minutes=20)) is None
