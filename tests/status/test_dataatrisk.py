"""RPO as data at risk (pure): what the server's archiver says decides the RPO of WAL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tonebridge_dr.api.common import Objectives
from tonebridge_dr.status import conditions
from tonebridge_dr.status.dataatrisk import ArchiverState, data_at_risk, segment_end
from tonebridge_dr.status.freshness import CatalogSummary, assess_freshness
from tonebridge_dr.status.recoverypoint import BackupRecord, WalChainEnd, WalStart

NOW = datetime(2026, 12, 5, 3, 0, tzinfo=UTC)
SEG = 16 * 1024 * 1024
ARCHIVED_AT = NOW - timedelta(hours=5)  # an idle night


def state(lsn: int, **extra: object) -> ArchiverState:
    return ArchiverState(current_lsn=lsn, last_archived_wal="00000001000000000000000A",
                         last_archived_time=ARCHIVED_AT, **extra)  # type: ignore[arg-type]


def test_segment_end() -> None:
    assert segment_end("00000001000000000000000A", SEG) == 11 * SEG
    assert segment_end("000000010000000100000000", SEG) == (256 + 1) * SEG
    assert segment_end("00000002.history", SEG) is None


def test_a_position_inside_or_at_the_end_of_the_archived_segment_risks_nothing() -> None:
    for lsn in (10 * SEG + 5, 11 * SEG):
        risk = data_at_risk(state(lsn), NOW)
        assert risk is not None and risk.age == timedelta(0)
        assert risk.sentence.startswith("every change is archived")


def test_changes_past_the_archived_segment_are_at_risk_since_it_was_archived() -> None:
    risk = data_at_risk(state(11 * SEG + 100), NOW)
    assert risk is not None and risk.age == timedelta(hours=5)
    assert "may not be archived yet" in risk.sentence and "set archive_timeout" in risk.sentence
    failing = data_at_risk(state(10 * SEG + 100, last_failed_wal="00000001000000000000000B",
                                 last_failed_time=NOW - timedelta(minutes=1)), NOW)
    assert failing is not None and failing.age == timedelta(hours=5)
    assert failing.sentence.startswith("archiving fails: 00000001000000000000000B")


def test_bookkeeping_wal_past_archive_timeout_is_no_risk() -> None:
    """An idle server writes running-xacts records PostgreSQL never switches a segment
    for: past archive_timeout (+ slack) without a switch, nothing real is pending."""
    idle = data_at_risk(state(11 * SEG + 0x60, archive_timeout=timedelta(minutes=5)), NOW)
    assert idle is not None and idle.age == timedelta(0)
    assert "bookkeeping WAL" in idle.sentence
    recent = ArchiverState(current_lsn=11 * SEG + 0x60,
                           last_archived_wal="00000001000000000000000A",
                           last_archived_time=NOW - timedelta(minutes=2),
                           archive_timeout=timedelta(minutes=5))
    risk = data_at_risk(recent, NOW)
    assert risk is not None and risk.age == timedelta(minutes=2)


def test_unknown_states_judge_nothing() -> None:
    assert data_at_risk(ArchiverState(error="refused"), NOW) is None
    assert data_at_risk(ArchiverState(current_lsn=5), NOW) is None  # never archived
    assert data_at_risk(ArchiverState(last_archived_wal="00000001000000000000000A",
                                      last_archived_time=NOW), NOW) is None  # a standby


def _summary() -> CatalogSummary:
    base = BackupRecord(id="20261204T020000Z", engine="postgres", method="physical",
                        finished_at=NOW - timedelta(hours=25),
                        wal=WalStart(timeline=1, first_segno=3))
    return CatalogSummary(
        newest_backup_id=base.id, newest_backup_time=base.finished_at, backup_count=1,
        backups=(base,),
        wal_chain=WalChainEnd(backup_id=base.id, segment="00000001000000000000000A",
                              time=ARCHIVED_AT),
    )


def _rpo(status: object) -> tuple[str, str, str]:
    found = conditions.get_condition(getattr(status, "conditions", None), "RPOMet")
    assert found is not None
    return found.status.value, found.reason, found.message


def test_an_idle_fully_archived_server_meets_its_rpo() -> None:
    hour = Objectives(rpo=timedelta(hours=1))
    catalog_only, _ = assess_freshness(None, _summary(), hour, generation=1, now=NOW)
    assert _rpo(catalog_only)[0] == "False"  # the old false alarm: WAL is 5 hours old
    idle, _ = assess_freshness(None, _summary(), hour, generation=1, now=NOW,
                               archiver=state(11 * SEG))
    value, reason, message = _rpo(idle)
    assert (value, reason) == ("True", "ObjectiveMet")
    assert message.startswith("every change is archived") and "within the RPO of 1h" in message
    busy, _ = assess_freshness(None, _summary(), hour, generation=1, now=NOW,
                               archiver=state(11 * SEG + 1))  # archive_timeout off
    value, reason, message = _rpo(busy)
    assert (value, reason) == ("False", "ObjectiveMissed") and "5h of changes at risk" in message


def test_an_archiver_ahead_of_the_catalog_does_not_hide_a_gap() -> None:
    ahead = ArchiverState(current_lsn=21 * SEG, last_archived_wal="000000010000000000000014",
                          last_archived_time=NOW)
    status, _ = assess_freshness(None, _summary(), Objectives(rpo=timedelta(hours=1)),
                                 generation=1, now=NOW, archiver=ahead)
    assert _rpo(status)[0] == "False"  # the chain in the repository ends at ...0A


def test_no_backup_yet_misses_the_rpo_once_the_policy_is_older_than_it() -> None:
    hour = Objectives(rpo=timedelta(hours=1))
    young, _ = assess_freshness(None, CatalogSummary(), hour, generation=1, now=NOW,
                                created_at=NOW - timedelta(minutes=10))
    assert _rpo(young)[:2] == ("Unknown", "NoBackups")
    old, change = assess_freshness(None, CatalogSummary(), hour, generation=1, now=NOW,
                                   created_at=NOW - timedelta(hours=2))
    assert _rpo(old)[:2] == ("False", "NoBackupYet")
    assert change is not None and change.new_state == "False"


def test_the_recoverability_window_starts_at_the_oldest_full_backup() -> None:
    summary = _summary()
    status, _ = assess_freshness(None, summary, None, generation=1, now=NOW)
    assert status.recovery_window_start == NOW - timedelta(hours=25)
    assert status.recovery_point == ARCHIVED_AT
