"""`immutability.retain_until`: the Object Lock date of a kept backup follows the rule that
keeps it (pure; no storage)."""

from __future__ import annotations

import datetime as dt

import pytest

from tonebridge_dr.runner.repository import immutability, retention
from tonebridge_dr.runner.repository.retention import RetentionPolicy

UTC = dt.UTC
NOW = dt.datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
FLOOR = immutability.ROLLING_FLOOR


def _until(reasons: list[str], started: dt.datetime, policy: RetentionPolicy) -> dt.datetime:
    return immutability.retain_until(reasons, started, policy, now=NOW)


def test_a_yearly_backup_under_yearly_7_is_locked_seven_years_from_its_start() -> None:
    started = dt.datetime(2026, 1, 1, 2, 0, tzinfo=UTC)
    policy = RetentionPolicy(daily=30, yearly=7)
    assert _until(["yearly"], started, policy) == dt.datetime(2033, 1, 1, 2, 0, tzinfo=UTC)
    # kept by daily too: the longest rule wins
    assert _until(["daily", "yearly"], started, policy) == dt.datetime(2033, 1, 1, 2, 0,
                                                                     tzinfo=UTC)


@pytest.mark.parametrize(("rule", "count", "expected"), [
    ("hourly", 168, dt.datetime(2026, 12, 11, 9, 0, tzinfo=UTC)),
    ("daily", 30, dt.datetime(2027, 1, 3, 9, 0, tzinfo=UTC)),
    ("weekly", 8, dt.datetime(2027, 1, 29, 9, 0, tzinfo=UTC)),
    ("monthly", 12, dt.datetime(2027, 12, 4, 9, 0, tzinfo=UTC)),
    ("yearly", 7, dt.datetime(2033, 12, 4, 9, 0, tzinfo=UTC)),
])
def test_each_period_rule_gives_start_plus_its_count_of_periods(
    rule: str, count: int, expected: dt.datetime
) -> None:
    started = dt.datetime(2026, 12, 4, 9, 0, tzinfo=UTC)
    assert _until([rule], started, RetentionPolicy(**{rule: count})) == expected


def test_calendar_months_and_years_clamp_to_the_last_day() -> None:
    leap = dt.datetime(2028, 2, 29, 12, 0, tzinfo=UTC)
    assert immutability.add_months(leap, 12) == dt.datetime(2029, 2, 28, 12, 0, tzinfo=UTC)
    jan31 = dt.datetime(2027, 1, 31, tzinfo=UTC)
    assert immutability.add_months(jan31, 1) == dt.datetime(2027, 2, 28, tzinfo=UTC)
    assert immutability.add_months(jan31, 13) == dt.datetime(2028, 2, 29, tzinfo=UTC)


@pytest.mark.parametrize("reasons", [["newest"], ["last"], ["no-rule"], ["unknown-rule"], []])
def test_reasons_without_a_period_get_the_rolling_floor_from_now(reasons: list[str]) -> None:
    started = NOW - dt.timedelta(days=400)
    assert _until(reasons, started, RetentionPolicy(keep_last=3)) == NOW + FLOOR


def test_min_age_counts_from_the_start_and_the_floor_from_now() -> None:
    policy = RetentionPolicy(daily=2, min_age=dt.timedelta(days=10))
    started = NOW - dt.timedelta(days=1)
    assert _until(["min-age"], started, policy) == started + dt.timedelta(days=10)
    # an old backup whose rule ended long ago still holds until the next run
    old = NOW - dt.timedelta(days=90)
    assert _until(["daily"], old, policy) == NOW + FLOOR


def test_the_dates_follow_explain_keep_for_a_whole_repository() -> None:
    """A year of daily backups under daily 7 / monthly 12 / yearly 7: every kept backup is
    locked at least until the rule keeping it lets it go, and at least the floor."""
    policy = RetentionPolicy(daily=7, monthly=12, yearly=7)
    backups = [(f"b{i:03d}", NOW - dt.timedelta(days=i)) for i in range(365)]
    started = dict(backups)
    reasons = retention.explain_keep(backups, policy, NOW)
    for backup_id, why in reasons.items():
        until = _until(why, started[backup_id], policy)
        assert until >= NOW + FLOOR
        if "yearly" in why:
            assert until.year == started[backup_id].year + 7
        elif "monthly" in why:
            assert until >= immutability.add_months(started[backup_id], 12)
        else:
            assert until >= started[backup_id] + dt.timedelta(days=7)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        immutability.retain_until(["daily"], dt.datetime(2026, 1, 1), RetentionPolicy(daily=1),
                                  now=NOW)


def test_a_chain_link_is_locked_as_long_as_the_incremental_that_reads_it() -> None:
    now = dt.datetime(2026, 12, 5, tzinfo=dt.UTC)
    dates = {"full": now + dt.timedelta(days=2), "incr1": now + dt.timedelta(days=700),
             "incr2": now + dt.timedelta(days=30), "alone": now + dt.timedelta(days=9)}
    depends = {"incr1": ("full",), "incr2": ("full", "incr1", "incr2"), "alone": ()}
    out = immutability.follow_dependencies(dates, depends)
    assert out["full"] == now + dt.timedelta(days=700)  # the longest reader decides
    assert out["incr1"] == now + dt.timedelta(days=700)  # never shortened by incr2
    assert out["incr2"] == now + dt.timedelta(days=30)
    assert out["alone"] == now + dt.timedelta(days=9)
    # a link the dates do not name (kept only for the chain) gets the reader's date
    assert immutability.follow_dependencies({"i": now}, {"i": ("f",)}) == {"i": now, "f": now}
