"""The honest recovery point (pure): only backups of the whole database and WAL that
follows a retained physical base backup without a gap count; hot-table dumps never do."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tonebridge_dr.api.common import Objectives
from tonebridge_dr.api.conditions import Condition
from tonebridge_dr.status import conditions, freshness
from tonebridge_dr.status.freshness import CatalogSummary
from tonebridge_dr.status.recoverypoint import (
    BackupRecord,
    WalChainEnd,
    WalObject,
    WalStart,
    find_recovery_point,
    newest_full_backup,
    newest_table_backup,
    wal_base,
    wal_chain_end,
)

T0 = datetime(2024, 1, 15, 2, 0, 0, tzinfo=UTC)
HOUR = Objectives(rpo=timedelta(hours=1))
HYPOTHESIS = settings(derandomize=True, max_examples=200, deadline=None)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def full(backup_id: str, minutes: float, method: str = "logical") -> BackupRecord:
    return BackupRecord(backup_id, "postgres", method, at(minutes))


def hot(backup_id: str, minutes: float, *tables: str) -> BackupRecord:
    return BackupRecord(backup_id, "postgres", "logical", at(minutes), tables=tables,
                        schedule="hourly-hot")


def physical(backup_id: str, minutes: float, first: int = 10, timeline: int = 1) -> BackupRecord:
    return BackupRecord(backup_id, "postgres", "physical", at(minutes),
                        wal=WalStart(timeline=timeline, first_segno=first))


def seg(segno: int, minutes: float, timeline: int = 1, partial: bool = False) -> WalObject:
    name = f"{timeline:08X}{segno // 256:08X}{segno % 256:08X}"
    return WalObject(timeline, segno, name + (".partial" if partial else ""), at(minutes),
                     partial)


def cond(status_conditions: list[Condition] | None, type_: str) -> Condition:
    found = conditions.get_condition(status_conditions, type_)
    assert found is not None
    return found


def summary(backups: tuple[BackupRecord, ...], chain: WalChainEnd | None = None,
            wal_at: datetime | None = None) -> CatalogSummary:
    newest = max(backups, key=lambda b: b.finished_at) if backups else None
    return CatalogSummary(
        newest_backup_id=newest.id if newest else None,
        newest_backup_time=newest.finished_at if newest else None,
        backup_count=len(backups),
        newest_backup_method=newest.method if newest else None,
        newest_backup_engine=newest.engine if newest else None,
        newest_wal_time=wal_at,
        backups=backups,
        wal_chain=chain,
    )


# --- full backups versus table dumps -------------------------------------------------------


def test_table_dumps_are_never_a_recovery_point() -> None:
    dumps = (hot("h1", 10, "public.transformations"),
             hot("h2", 50, "public.transformations", "public.analytics"))
    assert newest_full_backup(dumps) is None
    assert newest_table_backup(dumps) == dumps[1]
    assert find_recovery_point(dumps, None) is None
    # a newer table dump does not move the recovery point of an older full backup
    both = (full("f1", 0), *dumps)
    point = find_recovery_point(both, None)
    assert point is not None and (point.backup.id, point.time) == ("f1", at(0))
    assert point.describe() == "full logical backup f1 at 2024-01-15T02:00:00Z"


def test_physical_and_redis_backups_restore_the_whole_target() -> None:
    redis = BackupRecord("r1", "redis", "rdb", at(5))
    assert find_recovery_point((redis,), None) is not None
    assert find_recovery_point((redis,), None).describe() == (  # type: ignore[union-attr]
        "Redis snapshot r1 at 2024-01-15T02:05:00Z")
    point = find_recovery_point((physical("p1", 7), hot("h1", 9, "public.t")), None)
    assert point is not None
    assert point.describe() == "physical backup p1 at 2024-01-15T02:07:00Z"


def test_only_table_dumps_miss_the_rpo_with_their_own_reason_then_a_full_backup_meets_it(
) -> None:
    dumps = (hot("h1", 10, "public.transformations", "public.analytics"),
             hot("h2", 50, "public.usage_tracking"))
    status, change = freshness.assess_freshness(None, summary(dumps), HOUR, generation=3,
                                                now=at(55))
    rpo = cond(status.conditions, conditions.RPO_MET)
    assert (rpo.status, rpo.reason) == ("False", "NoFullRecoveryPoint")
    assert rpo.message == (
        "no full recovery point: only table dumps of public.analytics, public.transformations,"
        " public.usage_tracking, which never meet the RPO of 1h"
    )
    assert change is not None and (change.old_state, change.new_state) == (None, "False")
    assert change.reason == "NoFullRecoveryPoint"
    assert status.recovery_point is None and status.rpo_age_seconds is None
    assert status.last_table_backup is not None
    assert (status.last_table_backup.id, status.last_table_backup.time) == ("h2", at(50))
    assert status.last_table_backup.tables == ["public.usage_tracking"]
    assert status.last_table_backup.schedule == "hourly-hot"
    dumped = status.model_dump(mode="json", exclude_none=True)
    assert dumped["lastTableBackup"]["tables"] == ["public.usage_tracking"]

    status, change = freshness.assess_freshness(
        status, summary((*dumps, full("f1", 56))), HOUR, generation=3, now=at(60))
    rpo = cond(status.conditions, conditions.RPO_MET)
    assert (rpo.status, rpo.reason) == ("True", "ObjectiveMet")
    assert rpo.message == ("the newest recovery point, full logical backup f1 at "
                           "2024-01-15T02:56:00Z, is 4m old, within the RPO of 1h")
    assert change is not None and (change.old_state, change.new_state) == ("False", "True")
    assert status.recovery_point == at(56)
    assert status.last_table_backup is not None and status.last_table_backup.id == "h2"
    # once retention removed the table dumps, the status no longer shows one
    status, _ = freshness.assess_freshness(
        status, summary((full("f1", 56),)), HOUR, generation=3, now=at(61))
    assert status.last_table_backup is None
    # an unreadable repository keeps the last known one
    kept, _ = freshness.assess_freshness(
        None, summary(dumps), HOUR, generation=3, now=at(55))
    kept, _ = freshness.assess_freshness(
        kept, CatalogSummary(error="timeout"), HOUR, generation=3, now=at(56))
    assert kept.last_table_backup is not None and kept.last_table_backup.id == "h2"


def test_table_dumps_without_an_objective_are_unknown_and_say_why() -> None:
    status, _ = freshness.assess_freshness(None, summary((hot("h1", 1, "public.t"),)), None,
                                           generation=1, now=at(2))
    rpo = cond(status.conditions, conditions.RPO_MET)
    assert (rpo.status, rpo.reason) == ("Unknown", "NoObjective")
    assert rpo.message == ("no full recovery point: only table dumps of public.t; "
                           "no objectives.rpo is set")


def test_a_fresh_table_dump_does_not_hide_an_old_full_backup() -> None:
    backups = (full("f1", 0), hot("h1", 70, "public.transformations"))
    status, _ = freshness.assess_freshness(None, summary(backups), HOUR, generation=1,
                                           now=at(75))
    rpo = cond(status.conditions, conditions.RPO_MET)
    assert (rpo.status, rpo.reason) == ("False", "ObjectiveMissed")
    assert rpo.message.startswith("the newest recovery point, full logical backup f1 at ")
    assert status.rpo_age_seconds == 75 * 60


# --- WAL -------------------------------------------------------------------------------------


def test_wal_chain_stops_at_the_first_gap() -> None:
    base = physical("p1", 0, first=10)
    chain = wal_chain_end(base, [seg(9, 0), seg(10, 1), seg(11, 2), seg(13, 4), seg(14, 5)])
    assert chain == WalChainEnd("p1", "00000001000000000000000B", at(2))


def test_wal_chain_is_empty_without_its_first_segment() -> None:
    base = physical("p1", 0, first=10)
    assert wal_chain_end(base, [seg(11, 2), seg(12, 3)]) is None
    assert wal_chain_end(base, []) is None
    point = find_recovery_point((base,), None)
    assert point is not None and point.source == "backup"  # the base backup itself


def test_wal_on_another_timeline_never_extends_the_chain() -> None:
    base = physical("p1", 0, first=10, timeline=1)
    assert wal_chain_end(base, [seg(10, 1, timeline=2), seg(11, 2, timeline=2)]) is None
    mixed = [seg(10, 1), seg(11, 2, timeline=2), seg(12, 3, timeline=2)]
    assert wal_chain_end(base, mixed) == WalChainEnd("p1", "00000001000000000000000A", at(1))
    on_two = physical("p2", 0, first=10, timeline=2)
    assert wal_chain_end(on_two, [seg(10, 1), seg(11, 2)]) is None


def test_a_partial_counts_only_as_the_last_segment() -> None:
    base = physical("p1", 0, first=10)
    ends = wal_chain_end(base, [seg(10, 1), seg(11, 2), seg(12, 3, partial=True)])
    assert ends == WalChainEnd("p1", "00000001000000000000000C.partial", at(3))
    # a complete later segment means the .partial's segment is missing
    gap = wal_chain_end(base, [seg(10, 1), seg(11, 2, partial=True), seg(12, 3)])
    assert gap == WalChainEnd("p1", "00000001000000000000000A", at(1))
    # a complete segment supersedes its .partial
    done = wal_chain_end(base, [seg(10, 1), seg(10, 2, partial=True), seg(11, 3)])
    assert done == WalChainEnd("p1", "00000001000000000000000B", at(3))


def test_wal_without_a_physical_backup_counts_for_nothing() -> None:
    logical = (full("f1", 0),)
    assert wal_base(logical) is None
    # a chain handed in for a backup that is not physical, or not retained, is ignored
    for backup_id in ("f1", "gone"):
        chain = WalChainEnd(backup_id, "00000001000000000000000B", at(50))
        point = find_recovery_point(logical, chain)
        assert point is not None and point.time == at(0)
    status, _ = freshness.assess_freshness(None, summary(logical, wal_at=at(50)), HOUR,
                                           generation=1, now=at(61))
    assert cond(status.conditions, conditions.RPO_MET).status == "False"  # WAL did not count
    assert status.recovery_point == at(0)
    assert status.wal is not None  # still shown as archiving state


def test_wal_after_a_physical_backup_is_the_recovery_point_and_says_so() -> None:
    base = physical("p1", 0, first=10)
    backups = (full("f0", 5), base, hot("h1", 40, "public.t"))
    assert wal_base(backups) == base
    chain = wal_chain_end(base, [seg(10, 10), seg(11, 30)])
    status, _ = freshness.assess_freshness(None, summary(backups, chain, at(30)), HOUR,
                                           generation=1, now=at(35))
    rpo = cond(status.conditions, conditions.RPO_MET)
    assert (rpo.status, rpo.reason) == ("True", "ObjectiveMet")
    assert rpo.message == (
        "the newest recovery point, WAL up to segment 00000001000000000000000B at "
        "2024-01-15T02:30:00Z after physical backup p1, is 5m old, within the RPO of 1h")
    assert status.recovery_point == at(30)
    # a full backup newer than the WAL wins; a tie goes to the WAL past the backup
    point = find_recovery_point((*backups, full("f2", 31)), chain)
    assert point is not None and (point.source, point.backup.id) == ("backup", "f2")
    point = find_recovery_point((*backups, full("f2", 30)), chain)
    assert point is not None and (point.source, point.backup.id) == ("wal", "p1")


def test_wal_archived_in_the_second_the_backup_finished_still_follows_it() -> None:
    """S3 LastModified has whole seconds (and another clock): a segment archived right
    after the backup can look older than it. WAL past the backup's own is newer anyway."""
    finished = T0 + timedelta(seconds=0.38)
    base = BackupRecord("p1", "postgres", "physical", finished,
                        wal=WalStart(timeline=1, first_segno=10))
    chain = wal_chain_end(base, [seg(10, 0), seg(11, 0)])
    assert chain == WalChainEnd("p1", "00000001000000000000000B", finished)
    point = find_recovery_point((base,), chain)
    assert point is not None and (point.source, point.segment) == (
        "wal", "00000001000000000000000B")
    assert point.time == finished
    # a newer full backup still wins; one finished in the same instant does not
    newer = find_recovery_point((base, full("f1", 1)), chain)
    assert newer is not None and (newer.source, newer.backup.id) == ("backup", "f1")
    for other in ("a", "z"):  # whatever its name
        same = find_recovery_point((base, BackupRecord(other, "postgres", "logical",
                                                       finished)), chain)
        assert same is not None and (same.source, same.backup.id) == ("wal", "p1")


def test_wal_a_backup_needs_for_itself_adds_nothing_to_it() -> None:
    """A backup without its own WAL needs the archive from its start segment; WAL up to
    its stop segment only makes it consistent, the chain extends it only past that."""
    base = BackupRecord("p1", "postgres", "physical", at(10),
                        wal=WalStart(timeline=1, first_segno=5, stop_segno=7))
    inside = wal_chain_end(base, [seg(5, 2), seg(6, 5), seg(7, 9)])
    assert inside == WalChainEnd("p1", "000000010000000000000007", at(9),
                                 extends_backup=False)
    point = find_recovery_point((base,), inside)
    assert point is not None and (point.source, point.time) == ("backup", at(10))
    past = wal_chain_end(base, [seg(5, 2), seg(6, 5), seg(7, 9), seg(8, 10)])
    assert past == WalChainEnd("p1", "000000010000000000000008", at(10))
    point = find_recovery_point((base,), past)
    assert point is not None and (point.source, point.time) == ("wal", at(10))


def test_the_newest_physical_backup_decides_the_wal_chain() -> None:
    old, new = physical("p1", 0, first=3), physical("p2", 60, first=40)
    assert wal_base((new, old, full("f", 90))) == new


def test_the_listing_is_abandoned_at_the_gap() -> None:
    """The chain reads no further than the object that shows the gap (cost bound)."""
    consumed: list[int] = []

    def listing() -> Iterator[WalObject]:
        for number in (10, 11, 12, 20, 21, 22):
            consumed.append(number)
            yield seg(number, number)
        pytest.fail("the listing was read past the gap")

    chain = wal_chain_end(physical("p1", 0, first=10), listing())
    assert chain is not None and chain.segment == "00000001000000000000000C"
    assert consumed == [10, 11, 12, 20]


@HYPOTHESIS
@given(
    first=st.integers(min_value=0, max_value=600),
    present=st.sets(st.integers(min_value=0, max_value=40), max_size=40),
    other=st.sets(st.integers(min_value=0, max_value=40), max_size=10),
)
def test_wal_chain_is_the_longest_gap_free_run_from_the_first_segment(
    first: int, present: set[int], other: set[int]
) -> None:
    """Segments `first + i` for i in `present` on timeline 1, noise on timeline 2: the chain
    ends at the last segment of the unbroken run starting at `first`, archived in order."""
    objects = sorted(
        [seg(first + i, i) for i in present] + [seg(first + i, i, timeline=2) for i in other],
        key=lambda o: (o.timeline, o.segno),
    )
    chain = wal_chain_end(physical("p1", 0, first=first), objects)
    run = 0
    while run in present:
        run += 1
    if run == 0:
        assert chain is None
    else:
        assert chain is not None
        assert chain.segment == seg(first + run - 1, 0).name
        assert chain.time == at(run - 1)
