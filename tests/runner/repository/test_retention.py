"""Retention (pure): grandfather-father-son rules, property-tested with hypothesis."""

from __future__ import annotations

import datetime as dt
import random

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tonebridge_dr.runner.repository import ids
from tonebridge_dr.runner.repository.retention import (
    Candidate,
    RetentionPlan,
    RetentionPolicy,
    Rule,
    explain_keep,
    explain_plan,
    select_keep,
    zone,
)

UTC = dt.UTC
EPOCH = dt.datetime(2024, 1, 1, tzinfo=UTC)
COUNT_FIELDS = ("keep_last", "hourly", "daily", "weekly", "monthly", "yearly")

Backups = list[tuple[str, dt.datetime]]


def make_backups(times: list[dt.datetime]) -> Backups:
    """Real backup ids for `times`, with the writer's -N suffix on collisions."""
    out: Backups = []
    taken: set[str] = set()
    for t in times:
        base = ids.new_backup_id(t)
        n = 0
        while ids.with_suffix(base, n) in taken:
            n += 1
        backup_id = ids.with_suffix(base, n)
        taken.add(backup_id)
        out.append((backup_id, t))
    return out


def newest(backups: Backups) -> str:
    return max(backups, key=lambda b: (b[1], ids.sort_key(b[0])))[0]


# Times within ~3 years, at minute resolution plus some exact collisions (same second).
times_st = st.lists(
    st.integers(min_value=0, max_value=3 * 366 * 24 * 60).map(
        lambda m: EPOCH + dt.timedelta(minutes=m)
    ),
    min_size=0,
    max_size=60,
)
# Dense times: many backups per hour/day, to exercise the period rules.
dense_times_st = st.lists(
    st.integers(min_value=0, max_value=40 * 24 * 60).map(lambda m: EPOCH + dt.timedelta(minutes=m)),
    min_size=1,
    max_size=80,
)
backups_st = st.one_of(times_st, dense_times_st).map(make_backups)
count_st = st.integers(min_value=0, max_value=6)
policy_st = st.builds(
    RetentionPolicy,
    keep_last=count_st,
    hourly=count_st,
    daily=count_st,
    weekly=count_st,
    monthly=count_st,
    yearly=count_st,
    min_age=st.one_of(
        st.none(), st.integers(min_value=0, max_value=2000).map(lambda h: dt.timedelta(hours=h))
    ),
)


def now_after(backups: Backups, hours: int) -> dt.datetime:
    latest = max((t for _, t in backups), default=EPOCH)
    return latest + dt.timedelta(hours=hours)


later_st = st.integers(min_value=0, max_value=5000)
SETTINGS = settings(max_examples=300, deadline=None, derandomize=True)


@SETTINGS
@given(backups=backups_st, policy=policy_st, later=later_st)
def test_kept_is_subset_and_newest_is_kept(backups: Backups, policy: RetentionPolicy, later: int):
    kept = select_keep(backups, policy, now_after(backups, later))
    assert kept <= {b for b, _ in backups}
    if backups:
        assert newest(backups) in kept


@SETTINGS
@given(backups=backups_st, policy=policy_st, later=later_st)
def test_idempotent(backups: Backups, policy: RetentionPolicy, later: int):
    now = now_after(backups, later)
    kept = select_keep(backups, policy, now)
    survivors = [b for b in backups if b[0] in kept]
    assert select_keep(survivors, policy, now) == kept


@SETTINGS
@given(backups=backups_st, policy=policy_st, later=later_st, seed=st.integers(0, 2**32 - 1))
def test_input_order_is_irrelevant(
    backups: Backups, policy: RetentionPolicy, later: int, seed: int
):
    now = now_after(backups, later)
    shuffled = list(backups)
    random.Random(seed).shuffle(shuffled)
    assert select_keep(shuffled, policy, now) == select_keep(backups, policy, now)
    assert explain_keep(shuffled, policy, now) == explain_keep(backups, policy, now)


@SETTINGS
@given(
    backups=backups_st,
    policy=policy_st,
    later=later_st,
    field=st.sampled_from(COUNT_FIELDS),
    extra=st.integers(min_value=1, max_value=5),
)
def test_monotone_in_counts(
    backups: Backups, policy: RetentionPolicy, later: int, field: str, extra: int
):
    # Among policies with a rule: the empty policy is the special "keep everything".
    assume(not policy.is_empty)
    now = now_after(backups, later)
    bigger = RetentionPolicy(
        **{name: getattr(policy, name) + (extra if name == field else 0) for name in COUNT_FIELDS},
        min_age=policy.min_age,
    )
    assert select_keep(backups, policy, now) <= select_keep(backups, bigger, now)


@SETTINGS
@given(backups=backups_st, policy=policy_st, later=later_st)
def test_min_age_respected(backups: Backups, policy: RetentionPolicy, later: int):
    now = now_after(backups, later)
    kept = select_keep(backups, policy, now)
    if policy.min_age is not None:
        assert {b for b, t in backups if now - t < policy.min_age} <= kept


@SETTINGS
@given(backups=backups_st, later=later_st)
def test_empty_policy_keeps_everything(backups: Backups, later: int):
    now = now_after(backups, later)
    everything = {b for b, _ in backups}
    assert select_keep(backups, RetentionPolicy(), now) == everything
    only_age = RetentionPolicy(min_age=dt.timedelta(days=1))
    assert select_keep(backups, only_age, now) == everything


@SETTINGS
@given(backups=backups_st, policy=policy_st, later=later_st)
def test_kept_count_is_bounded(backups: Backups, policy: RetentionPolicy, later: int):
    now = now_after(backups, later)
    kept = select_keep(backups, policy, now)
    if policy.is_empty:
        return
    young = (
        {b for b, t in backups if now - t < policy.min_age} if policy.min_age is not None else set()
    )
    budget = 1 + sum(getattr(policy, name) for name in COUNT_FIELDS)
    assert len(kept - young) <= budget


# Examples --------------------------------------------------------------------


def hourly_series(days: int) -> Backups:
    return make_backups([EPOCH + dt.timedelta(hours=h) for h in range(days * 24)])


def test_spec_hourly_for_7_days_and_daily_for_30_days():
    backups = hourly_series(60)  # 1,440 hourly backups, 2024-01-01 00:00 .. 2024-02-29 23:00
    now = backups[-1][1] + dt.timedelta(minutes=30)
    policy = RetentionPolicy(hourly=7 * 24, daily=30)
    kept = select_keep(backups, policy, now)
    last_week = {b for b, t in backups if t >= backups[-1][1] - dt.timedelta(hours=167)}
    assert len(last_week) == 168
    dailies = {
        b
        for b, t in backups
        if t.hour == 23 and t.date() >= (backups[-1][1] - dt.timedelta(days=29)).date()
    }
    assert len(dailies) == 30
    assert kept == last_week | dailies
    assert len(kept) == 168 + 23
    reasons = explain_keep(backups, policy, now)
    assert reasons[backups[-1][0]] == ["newest", "hourly", "daily"]
    assert reasons[ids.new_backup_id(dt.datetime(2024, 1, 31, 23, tzinfo=UTC))] == ["daily"]


def test_seven_yearlies_from_monthly_backups():
    times = [dt.datetime(2016 + m // 12, m % 12 + 1, 1, 2, 41, tzinfo=UTC) for m in range(120)]
    backups = make_backups(times)  # monthly, 2016-01 .. 2025-12
    policy = RetentionPolicy(monthly=12, yearly=7)
    kept = select_keep(backups, policy, dt.datetime(2026, 1, 1, tzinfo=UTC))
    decembers = [dt.datetime(y, 12, 1, 2, 41, tzinfo=UTC) for y in range(2019, 2026)]
    yearly = {ids.new_backup_id(t) for t in decembers}
    monthly = {ids.new_backup_id(t) for t in times if t.year == 2025}
    assert kept == yearly | monthly
    assert len(kept) == 7 + 12 - 1


def test_periods_without_backups_do_not_use_up_counts():
    days = [1, 5, 10, 20]
    backups = make_backups([dt.datetime(2026, 3, d, 4, tzinfo=UTC) for d in days])
    kept = select_keep(backups, RetentionPolicy(daily=3), dt.datetime(2026, 6, 1, tzinfo=UTC))
    assert kept == {ids.new_backup_id(dt.datetime(2026, 3, d, 4, tzinfo=UTC)) for d in (5, 10, 20)}


def test_newest_of_each_day_is_the_one_kept():
    times = [dt.datetime(2026, 3, 1, h, tzinfo=UTC) for h in (1, 9, 17)]
    times += [dt.datetime(2026, 3, 2, h, tzinfo=UTC) for h in (3, 4)]
    backups = make_backups(times)
    kept = select_keep(backups, RetentionPolicy(daily=2), dt.datetime(2026, 3, 9, tzinfo=UTC))
    assert kept == {"20260301T170000Z", "20260302T040000Z"}


def test_weeks_are_iso_weeks():
    # 2026-12-28 (Mon) .. 2027-01-03 (Sun) are all ISO week 2026-W53.
    dates = [dt.date(2026, 12, 21), dt.date(2026, 12, 28), dt.date(2027, 1, 1), dt.date(2027, 1, 3)]
    backups = make_backups([dt.datetime(d.year, d.month, d.day, 3, tzinfo=UTC) for d in dates])
    now = dt.datetime(2027, 1, 3, 12, tzinfo=UTC)
    assert select_keep(backups, RetentionPolicy(weekly=1), now) == {"20270103T030000Z"}
    assert select_keep(backups, RetentionPolicy(weekly=2), now) == {
        "20270103T030000Z",
        "20261221T030000Z",
    }


def test_periods_are_utc():
    tokyo = dt.timezone(dt.timedelta(hours=9))
    # 2026-03-02 08:00 in Tokyo is 2026-03-01 23:00 UTC: the same UTC day as the other.
    backups = [
        ("20260301T220000Z", dt.datetime(2026, 3, 1, 22, tzinfo=UTC)),
        ("20260301T230000Z", dt.datetime(2026, 3, 2, 8, tzinfo=tokyo)),
        ("20260228T100000Z", dt.datetime(2026, 2, 28, 10, tzinfo=UTC)),
    ]
    kept = select_keep(backups, RetentionPolicy(daily=2), dt.datetime(2026, 3, 5, tzinfo=UTC))
    assert kept == {"20260301T230000Z", "20260228T100000Z"}


def test_keep_last_and_min_age():
    backups = hourly_series(3)
    now = backups[-1][1] + dt.timedelta(hours=1)
    kept = select_keep(backups, RetentionPolicy(keep_last=2), now)
    assert kept == {backups[-1][0], backups[-2][0]}
    young = RetentionPolicy(keep_last=1, min_age=dt.timedelta(hours=10))
    kept = select_keep(backups, young, now)
    assert kept == {b for b, t in backups if now - t < dt.timedelta(hours=10)}
    assert len(kept) == 9


def test_newest_is_kept_even_when_every_rule_points_elsewhere():
    # The newest backup carries a time in the future (clock skew); it is still kept.
    backups = make_backups([dt.datetime(2026, 1, d, tzinfo=UTC) for d in range(1, 10)])
    kept = select_keep(backups, RetentionPolicy(yearly=1), dt.datetime(2025, 1, 1, tzinfo=UTC))
    assert kept == {"20260109T000000Z"}


def test_same_second_ties_are_broken_by_suffix():
    t = dt.datetime(2026, 5, 5, 5, 5, 5, tzinfo=UTC)
    backups = make_backups([t] * 12)
    assert backups[-1][0] == "20260505T050505Z-11"
    kept = select_keep(backups, RetentionPolicy(keep_last=2), t)
    assert kept == {"20260505T050505Z-11", "20260505T050505Z-10"}


def test_empty_input():
    assert select_keep([], RetentionPolicy(daily=3), EPOCH) == set()


def test_invalid_input_is_refused():
    with pytest.raises(ValueError, match="non-negative"):
        RetentionPolicy(daily=-1)
    with pytest.raises(ValueError, match="min_age"):
        RetentionPolicy(min_age=dt.timedelta(seconds=-1))
    with pytest.raises(ValueError, match="twice"):
        select_keep([("a", EPOCH), ("a", EPOCH)], RetentionPolicy(daily=1), EPOCH)
    with pytest.raises(ValueError, match="timezone-aware"):
        select_keep([("a", dt.datetime(2026, 1, 1))], RetentionPolicy(daily=1), EPOCH)


def test_describe():
    policy = RetentionPolicy(keep_last=3, daily=30, yearly=7, min_age=dt.timedelta(hours=6))
    assert policy.describe() == "last=3 daily=30 yearly=7 min_age=6h"
    assert RetentionPolicy(daily=1, min_age=dt.timedelta(days=1, hours=12, seconds=5)).describe(
    ) == "daily=1 min_age=1d12h5s"
    assert RetentionPolicy().describe() == "keep everything"


def test_backup_ids():
    t = dt.datetime(2026, 11, 29, 11, 41, tzinfo=dt.timezone(dt.timedelta(hours=9)))
    assert ids.new_backup_id(t) == "20261129T024100Z"
    assert ids.is_backup_id("20261129T024100Z")
    assert ids.is_backup_id("20261129T024100Z-12")
    bad_ids = ["latest", "20261129T024100", "20261399T024100Z", "20261129T024100Z-0", "x"]
    for bad in [*bad_ids, "20261129T024100Z\n", "\uff120261129T024100Z"]:
        assert not ids.is_backup_id(bad)
    ordered = ["20261129T024100Z", "20261129T024100Z-1", "20261129T024100Z-9"]
    ordered += ["20261129T024100Z-10", "20261129T024101Z"]
    assert sorted(reversed(ordered), key=ids.sort_key) == ordered
    assert ids.id_time("20261129T024100Z-3") == dt.datetime(2026, 11, 29, 2, 41, tzinfo=UTC)
    with pytest.raises(ValueError):
        ids.new_backup_id(dt.datetime(2026, 1, 1))


# --- time zones and plans ------------------------------------------------------------------------

TOKYO = zone("Asia/Tokyo")


def test_days_are_counted_in_the_given_time_zone() -> None:
    # 14:30 and 15:30 UTC are one UTC day but two Tokyo days (15:00 UTC is midnight there).
    backups = make_backups([EPOCH + dt.timedelta(hours=14.5), EPOCH + dt.timedelta(hours=15.5)])
    policy = RetentionPolicy(daily=2)
    now = EPOCH + dt.timedelta(days=1)
    assert select_keep(backups, policy, now) == {backups[1][0]}
    assert select_keep(backups, policy, now, TOKYO) == {b for b, _ in backups}


def test_unknown_time_zone_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown time zone"):
        Rule(RetentionPolicy(daily=1), "Mars/Olympus")


def candidate(t: dt.datetime, schedule: str | None = None, method: str = "logical",
              tables: tuple[str, ...] = (), n: int = 0) -> Candidate:
    return Candidate(ids.with_suffix(ids.new_backup_id(t), n), t, "postgres", method,
                     schedule, tables)


def test_each_schedule_follows_its_own_rule_and_others_the_default() -> None:
    days = [EPOCH + dt.timedelta(days=d, hours=2) for d in range(10)]
    daily = [candidate(t, "daily") for t in days]
    hot = [candidate(t, "hot", tables=("a",), n=1) for t in days]
    manual = [candidate(t, None, n=2) for t in days]
    plan = RetentionPlan(
        default=Rule(RetentionPolicy(keep_last=2)),
        schedules={"daily": Rule(RetentionPolicy(daily=5))},
    )
    kept = explain_plan([*daily, *hot, *manual], plan, days[-1])
    assert [c.id for c in daily if c.id in kept] == [c.id for c in daily[-5:]]
    assert [c.id for c in hot if c.id in kept] == [c.id for c in hot[-2:]]
    assert [c.id for c in manual if c.id in kept] == [c.id for c in manual[-2:]]


def test_a_table_dump_never_stands_in_for_a_full_dump() -> None:
    t = EPOCH + dt.timedelta(days=3)
    full = candidate(t)
    hot = candidate(t + dt.timedelta(hours=1), tables=("a", "b"))
    physical = candidate(t + dt.timedelta(hours=2), method="physical")
    plan = RetentionPlan(default=Rule(RetentionPolicy(daily=1)))
    assert set(explain_plan([full, hot, physical], plan, t)) == {full.id, hot.id, physical.id}


def test_backups_without_a_rule_are_kept() -> None:
    old = candidate(EPOCH, "weekly")
    new = candidate(EPOCH + dt.timedelta(days=30), "weekly")
    plan = RetentionPlan(schedules={"daily": Rule(RetentionPolicy(daily=1))})
    assert explain_plan([old, new], plan, EPOCH + dt.timedelta(days=60)) == {
        old.id: ["no-rule"], new.id: ["no-rule"]}
    assert plan.is_empty is False and RetentionPlan().is_empty


series_st = st.sampled_from([("daily", ()), ("hot", ("t",)), (None, ()), (None, ("t",))])


@st.composite
def plan_inputs(draw: st.DrawFn) -> tuple[list[Candidate], RetentionPlan, dt.datetime]:
    times = draw(dense_times_st)
    candidates = []
    for n, t in enumerate(times):
        schedule, tables = draw(series_st)
        candidates.append(candidate(t, schedule, tables=tables, n=n % 1000))
    unique = {c.id: c for c in candidates}
    plan = RetentionPlan(
        default=draw(st.one_of(st.none(), policy_st.map(Rule))),
        schedules=draw(st.dictionaries(st.sampled_from(["daily", "hot"]),
                                       policy_st.map(lambda p: Rule(p, "Asia/Tokyo")))),
    )
    return list(unique.values()), plan, now_after([(c.id, c.started_at) for c in unique.values()],
                                                  draw(later_st))


@SETTINGS
@given(inputs=plan_inputs())
def test_plan_keeps_each_series_newest_and_every_rules_choice(
    inputs: tuple[list[Candidate], RetentionPlan, dt.datetime],
) -> None:
    candidates, plan, now = inputs
    kept = explain_plan(candidates, plan, now)
    assert set(kept) <= {c.id for c in candidates}
    by_series: dict[tuple[str, ...], list[Candidate]] = {}
    for c in candidates:
        by_series.setdefault(c.series, []).append(c)
    for members in by_series.values():
        rule = plan.rule_for(members[0])
        pairs = [(c.id, c.started_at) for c in members]
        if rule is None:
            assert all(kept[c.id] == ["no-rule"] for c in members)
            continue
        assert newest(pairs) in kept  # the newest of every series survives
        assert select_keep(pairs, rule.policy, now, zone(rule.time_zone)) <= set(kept)
    # Idempotent: applying the plan to what it kept keeps all of it.
    survivors = [c for c in candidates if c.id in kept]
    assert set(explain_plan(survivors, plan, now)) == set(kept)
