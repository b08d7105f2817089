"""The pure parts of a RestoreRequest meeting an archived backup: the decision to wait
(plan.rehydration_wait) and the Rehydrating status transition."""

from __future__ import annotations

import datetime as dt

from tonebridge_dr.api.restorerequest import (
    Rehydration,
    RehydrationTier,
    RestorePhase,
    RestoreRequestStatus,
)
from tonebridge_dr.controller.core.catalog import RestoreReadiness
from tonebridge_dr.controller.restorerequest.plan import rehydration_wait
from tonebridge_dr.status import restorerequest as rr_status

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


def test_readable_or_unknown_backups_do_not_wait() -> None:
    assert rehydration_wait(RestoreReadiness("b1", checked=3), Rehydration()) is None
    assert rehydration_wait(RestoreReadiness(error="bucket gone"), Rehydration()) is None


def test_an_archived_backup_waits_with_counts_and_the_tier() -> None:
    readiness = RestoreReadiness(
        "20260101T020000Z", checked=4, unreadable=3, requested=2, in_progress=1,
        classes=("GLACIER",),
    )
    assert rehydration_wait(readiness, Rehydration()) == (
        "backup 20260101T020000Z: 3 of 4 objects are in storage class GLACIER and not "
        "readable yet; rehydration 2 requested now, 1 in progress (tier Standard, readable "
        "for 1 day)"
    )
    bulk = Rehydration(days=3, tier=RehydrationTier.BULK)
    again = RestoreReadiness("b", checked=1, unreadable=1, in_progress=1, classes=("GLACIER",))
    message = rehydration_wait(again, bulk)
    assert message is not None and "(tier Bulk, readable for 3 days)" in message


def test_rehydrating_status_and_then_running() -> None:
    status = rr_status.rehydrating(
        None, message="backup b: 1 of 1 objects are in storage class GLACIER", source="p",
        generation=1, now=NOW,
    )
    assert status.phase == RestorePhase.REHYDRATING
    ready = next(c for c in status.conditions or [] if c.type == "Ready")
    assert (ready.status, ready.reason) == ("False", "Rehydrating")
    assert ready.message.startswith("backup b: 1 of 1 objects are in storage class GLACIER.")
    running = rr_status.job_created(status, job_name="j", source="p", generation=1, now=NOW)
    assert running.phase == RestorePhase.RUNNING
    finished = RestoreRequestStatus(phase=RestorePhase.SUCCEEDED)
    assert rr_status.rehydrating(
        finished, message="m", source=None, generation=1, now=NOW
    ) == finished
