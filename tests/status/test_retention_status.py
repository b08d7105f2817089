"""status.retention and RetentionApplied from retention outcomes (pure)."""

from __future__ import annotations

import datetime as dt

from tonebridge_dr.api.backuppolicy import BackupPolicyStatus
from tonebridge_dr.status import conditions
from tonebridge_dr.status.retention import MAX_IDS, RetentionOutcome, apply_retention

NOW = dt.datetime(2026, 12, 5, 10, 0, tzinfo=dt.UTC)
LATER = NOW + dt.timedelta(hours=1)


def _cond(status: BackupPolicyStatus) -> tuple[str, str, str]:
    found = conditions.get_condition(status.conditions, "RetentionApplied")
    assert found is not None
    return found.status.value, found.reason, found.message


def test_a_run_that_deleted_records_counts_ids_and_the_pitr_window() -> None:
    ids = tuple(f"2026010{d}T000000Z" for d in range(1, 4))
    outcome = RetentionOutcome(
        trigger="backup", rules="schedule daily: daily=3", kept=5, deleted=ids, wal_deleted=7,
        wal_deleted_bytes=700, oldest_kept_id="20251201T000000Z",
        oldest_kept_time=NOW - dt.timedelta(days=4), pitr_window_start=NOW - dt.timedelta(days=3),
        pitr_window_end=NOW,
    )
    status = apply_retention(None, outcome, generation=2, now=NOW)
    assert status.retention is not None
    assert status.retention.deleted == 3 and status.retention.deleted_ids == list(ids)
    assert status.retention.kept == 5 and status.retention.wal_deleted == 7
    assert status.retention.last_run_time == NOW and status.retention.trigger == "backup"
    assert status.retention.pitr_window_start == NOW - dt.timedelta(days=3)
    value, reason, message = _cond(status)
    assert (value, reason) == ("True", "Pruned")
    assert message.startswith("kept 5 backups; deleted 3: 20260101T000000Z")
    assert "7 archived WAL file(s)" in message and "(schedule daily: daily=3)" in message


def test_nothing_to_prune_no_rules_and_many_ids() -> None:
    status = apply_retention(None, RetentionOutcome(trigger="schedule", kept=2), generation=1,
                             now=NOW)
    assert _cond(status)[:2] == ("True", "NothingToPrune")
    status = apply_retention(status, RetentionOutcome(trigger="schedule", no_rules=True),
                             generation=1, now=NOW)
    assert _cond(status) == ("True", "NoRetentionRules",
                             "no retention rules: every backup is kept")
    many = tuple(f"20260101T0000{n:02d}Z" for n in range(MAX_IDS + 5))
    status = apply_retention(status, RetentionOutcome(trigger="backup", deleted=many),
                             generation=1, now=NOW)
    assert status.retention is not None and status.retention.deleted == MAX_IDS + 5
    assert status.retention.deleted_ids == list(many[:MAX_IDS])
    assert _cond(status)[2].count(", ") == MAX_IDS - 1 and "and 5 more" in _cond(status)[2]


def test_failure_and_deferral_keep_the_last_good_run() -> None:
    good = apply_retention(None, RetentionOutcome(trigger="backup", kept=4), generation=1,
                           now=NOW)
    failed = apply_retention(good, RetentionOutcome(trigger="schedule", error="denied"),
                             generation=1, now=LATER)
    assert failed.retention is not None and failed.retention.last_run_time == NOW
    assert failed.retention.kept == 4
    assert _cond(failed) == ("False", "PruneFailed", "retention failed: denied")
    deferred = apply_retention(
        failed, RetentionOutcome(trigger="schedule", deferred="RestoreRequest r is running"),
        generation=1, now=LATER,
    )
    assert _cond(deferred)[:2] == ("False", "PruneDeferred")  # a deferral clears no failure
    assert deferred.retention is not None and deferred.retention.last_run_time == NOW
    fresh = apply_retention(None, RetentionOutcome(trigger="schedule", deferred="busy"),
                            generation=1, now=NOW)
    assert _cond(fresh)[:2] == ("True", "PruneDeferred")
    assert fresh.retention is not None and fresh.retention.last_run_time is None
