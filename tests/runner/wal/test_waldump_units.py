"""pg_waldump lines -> destructive events, and the xid target's settings (no server).

The lines are PostgreSQL 15's own output (taken from a real server), shortened to the
records that matter; the real-server test is test_wal_inspect.py.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.postgres.wal import pitr, waldump

_LINE = (
    "rmgr: {rmgr:<11} len (rec/tot):     54/    54, tx: {xid:>10}, lsn: 0/{lsn:08X}, "
    "prev 0/{prev:08X}, desc: {desc}"
)


class Wal:
    """Writes records with increasing LSNs, feeding an Inspector."""

    def __init__(self, min_rows: int = 5) -> None:
        self.inspector = waldump.Inspector(min_rows=min_rows)
        self.lsn = 0x1928390

    def add(self, rmgr: str, xid: int, desc: str) -> list[waldump.Event]:
        line = _LINE.format(rmgr=rmgr, xid=xid, lsn=self.lsn, prev=self.lsn - 0x38, desc=desc)
        self.lsn += 0x38
        return self.inspector.feed(line)

    def deletes(self, xid: int, rows: int, rel: str = "1663/16384/16385") -> None:
        for off in range(1, rows + 1):
            self.add("Heap", xid, f"DELETE off {off} flags 0x00 KEYS_UPDATED , "
                     f"blkref #0: rel {rel} blk 0")

    def commit(self, xid: int, extra: str = "") -> list[waldump.Event]:
        return self.add("Transaction", xid, f"COMMIT 2026-12-05 10:48:18.834037 UTC{extra}")


def test_a_mass_delete_counts_its_subtransactions_and_a_small_one_is_not_reported() -> None:
    wal = Wal(min_rows=5)
    wal.deletes(730, 3)
    assert wal.commit(730) == []  # 3 rows: under --min-rows
    wal.deletes(741, 4)
    wal.deletes(740, 3)
    (event,) = wal.commit(740, "; subxacts: 741")
    assert (event.kind, event.xid, event.rows) == ("DELETE", 740, 7)
    assert event.commit_time == dt.datetime(2026, 12, 5, 10, 48, 18, 834037, tzinfo=dt.UTC)
    assert event.restore_hint() == {
        "beforeTransaction": 740, "beforeTime": "2026-12-05T10:48:18.834037Z"
    }


def test_aborted_transactions_and_catalog_rows_are_not_damage() -> None:
    wal = Wal(min_rows=2)
    wal.deletes(750, 10)
    assert wal.add("Transaction", 750, "ABORT 2026-12-05 10:48:18.9 UTC") == []
    wal.deletes(751, 10, rel="1663/16384/1249")  # pg_attribute rows of a DROP
    assert wal.commit(751) == []


def test_a_record_read_twice_counts_once() -> None:
    wal = Wal(min_rows=2)
    line = _LINE.format(rmgr="Heap", xid=760, lsn=0x100, prev=0xC8,
                        desc="DELETE off 1 flags 0x00 , blkref #0: rel 1663/16384/16385 blk 0")
    for _ in range(3):
        wal.inspector.feed(line)
    wal.deletes(760, 2)
    (event,) = wal.commit(760)
    assert event.rows == 3 and wal.inspector.records == 4  # 1 + 2 deletes, 1 commit


def test_drop_table_truncate_and_rewrite_are_told_apart() -> None:
    wal = Wal()
    wal.add("Standby", 734, "LOCK xid 734 db 16384 rel 16392 ")
    wal.add("Storage", 734, "CREATE base/16384/16395")
    (truncate,) = wal.commit(734, "; rels: base/16384/16392; inval msgs: relcache 16392")
    assert truncate.kind == "TRUNCATE"
    assert [(r.filenode, r.oid) for r in truncate.relations] == [(16392, 16392)]
    wal.add("Standby", 735, "LOCK xid 735 db 16384 rel 16385 ")
    (drop,) = wal.commit(735, "; rels: base/16384/16385 base/16384/16388; dropped stats: "
                         "2/16384/16388 2/16384/16385; inval msgs: catcache 32")
    assert drop.kind == "DROP TABLE" and drop.databases == [16384]
    assert sorted(r.filenode for r in drop.relations) == [16385, 16388]
    # VACUUM FULL: new files written with the rows, old ones removed: not damage.
    wal.add("Storage", 736, "CREATE base/16384/16400")
    wal.add("XLOG", 736, "FPI , blkref #0: rel 1663/16384/16400 blk 0 FPW")
    assert wal.commit(736, "; rels: base/16384/16396") == []


def test_drop_database_stops_before_the_invalidating_inplace_record() -> None:
    wal = Wal()
    wal.commit(736)
    inplace_prev = wal.lsn - 0x38
    wal.add("Heap", 0, "INPLACE off 7, blkref #0: rel 1664/0/1262 blk 0")
    first = wal.lsn
    wal.add("Heap", 737, "DELETE off 7 flags 0x00 KEYS_UPDATED , blkref #0: rel 1664/0/1262 blk 0")
    wal.add("Database", 737, "DROP dir 1663/16396")
    (event,) = wal.commit(737, "; dropped stats: 1/16396/0; inval msgs: catcache 21; sync")
    assert (event.kind, event.databases, event.first_lsn) == ("DROP DATABASE", [16396], first)
    assert event.restore_lsn == inplace_prev
    assert event.restore_hint() == {"targetLSN": f"0/{inplace_prev:X}"}


def test_the_xid_target_and_its_recovery_settings() -> None:
    target = pitr.parse_target(None, None, False, "739", "2026-12-05T10:48:18.8Z")
    assert (target.kind, target.xid) == ("xid", 739)
    assert target.time == dt.datetime(2026, 12, 5, 10, 48, 18, 800000, tzinfo=dt.UTC)
    assert "just before transaction 739" in target.describe()
    for bad in ("abc", "0", "-5", str(2**32)):
        with pytest.raises(errors.UsageError, match="invalid transaction id"):
            pitr.parse_target(None, None, False, bad)
    with pytest.raises(errors.UsageError, match="exactly one"):
        pitr.parse_target(None, None, True, "739")
    with pytest.raises(errors.UsageError, match="give both"):
        pitr.parse_target(None, None, True, None, "2026-12-05T10:48:18Z")
    options = pitr.RestoreOptions(Path("/nonexistent"), target)
    settings = pitr.recovery_settings("file:///repo", options, None)  # type: ignore[arg-type]
    assert settings["recovery_target_xid"] == "739"
    assert settings["recovery_target_inclusive"] == "false"
    assert "recovery_target_time" not in settings
