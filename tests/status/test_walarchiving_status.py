"""The WALArchiving condition (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tonebridge_dr.api.backuppolicy import BackupPolicyStatus, WalArchiveMode
from tonebridge_dr.status import conditions
from tonebridge_dr.status.dataatrisk import ArchiverState
from tonebridge_dr.status.walarchiving import assess_wal_archiving

NOW = datetime(2026, 12, 5, tzinfo=UTC)


def wal(status: BackupPolicyStatus) -> tuple[str, str, str]:
    found = conditions.get_condition(status.conditions, "WALArchiving")
    assert found is not None
    return found.status.value, found.reason, found.message


def assess(mode: WalArchiveMode | None, status: BackupPolicyStatus | None = None,
           **kw: object) -> BackupPolicyStatus:
    args: dict[str, object] = {"deployment": "db-wal-stream", "available": None,
                               "archiver": None, "newest_wal_time": None}
    args.update(kw)
    return assess_wal_archiving(status or BackupPolicyStatus(), mode, generation=1, now=NOW,
                                **args)  # type: ignore[arg-type]


def test_stream_mode_follows_the_deployment() -> None:
    none = assess(WalArchiveMode.STREAM)
    assert wal(none)[:2] == ("False", "StreamerUnavailable")
    assert "not created yet" in wal(none)[2]
    down = assess(WalArchiveMode.STREAM, available=0)
    assert wal(down)[:2] == ("False", "StreamerUnavailable")
    up = assess(WalArchiveMode.STREAM, available=1, newest_wal_time=NOW)
    assert wal(up)[:2] == ("True", "StreamerAvailable") and "2026-12-05T00:00:00Z" in wal(up)[2]


def test_archive_command_mode_follows_the_servers_archiver() -> None:
    ok = ArchiverState(current_lsn=1, last_archived_wal="000000010000000000000001",
                       last_archived_time=NOW)
    assert wal(assess(WalArchiveMode.ARCHIVE_COMMAND, archiver=ok))[:2] == ("True", "Archiving")
    failing = ArchiverState(current_lsn=1, last_archived_wal="000000010000000000000001",
                            last_archived_time=NOW - timedelta(hours=1),
                            last_failed_wal="000000010000000000000002", last_failed_time=NOW)
    value, reason, message = wal(assess(WalArchiveMode.ARCHIVE_COMMAND, archiver=failing))
    assert (value, reason) == ("False", "ArchivingFailing") and "...0002" not in message
    assert "000000010000000000000002 failed" in message
    unknown = assess(WalArchiveMode.ARCHIVE_COMMAND, archiver=ArchiverState(error="refused"))
    assert wal(unknown)[:2] == ("Unknown", "DatabaseUnreachable")


def test_without_wal_archiving_the_condition_goes() -> None:
    had = assess(WalArchiveMode.STREAM, available=1)
    gone = assess(None, had)
    assert conditions.get_condition(gone.conditions, "WALArchiving") is None
    assert assess(None) == BackupPolicyStatus()
