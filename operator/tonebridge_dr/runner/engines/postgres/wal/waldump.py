"""Destructive events in `pg_waldump` output (PostgreSQL 15 format; pure, no I/O).

`Inspector.feed(line)` takes pg_waldump's record lines in WAL order (a record seen twice,
as the overlapping batches of `inspection.py` do, is skipped by its LSN) and keeps, per
open transaction, what it did; at the transaction's COMMIT it decides whether that was
destructive and returns the events. An ABORT forgets the transaction (it changed
nothing). What each kind looks like in the WAL at `wal_level = replica`:

- DROP DATABASE: `Database DROP dir <spc>/<db>`, after a `Heap INPLACE` on pg_database
  (1262) that marks the database invalid.
- DROP TABLE: COMMIT with `rels:` (files removed at commit) and `dropped stats:
  2/<db>/<oid>` (indexes and materialized views look the same).
- TRUNCATE: `Heap TRUNCATE` (only at wal_level logical), or a COMMIT with `rels:` whose
  files new ones (`Storage CREATE` in that transaction) replace and that stay empty (a
  rewrite of an empty table, VACUUM FULL, looks the same; rewrites that copy rows do not).
- DELETE / UPDATE: `Heap DELETE`, `Heap UPDATE` / `HOT_UPDATE` (one record per row),
  counted per transaction, subtransactions included.

Rows are counted only in user relations (relfilenode >= 16384, PostgreSQL's first normal
OID): a DROP TABLE deletes catalog rows too, and that is not a mass DELETE. What the WAL
names are relfilenodes (`base/<db oid>/<filenode>`) and, in lock records and dropped
stats, relation OIDs; `inspection.py` maps them to names with a DSN.

Where to stop a restore: a DROP TABLE / TRUNCATE / DELETE / UPDATE changes nothing
visible before its COMMIT record (the old files are removed at commit), so
`recovery_target_xid = <xid>` with `recovery_target_inclusive = false` stops exactly
before it. A DROP DATABASE does not wait for its commit: the INPLACE record marks the
database invalid and `DROP dir` removes its files while the transaction is still open,
and replay does the same. Stopping before that transaction's commit would leave a
database that cannot be opened, so its restore point is the WAL position just before
the first of those records (`targetLSN`, inclusive: the record that starts there is the
last one replayed).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import re
from typing import Any

from tonebridge_dr.runner.engines.postgres.wal import naming

#: PostgreSQL's FirstNormalObjectId: relations below are catalogs created by initdb.
FIRST_USER_OID = 16384
DEFAULT_MIN_ROWS = 1000
PG_DATABASE = "1664/0/1262"
#: How far before a DROP DATABASE transaction its invalidating INPLACE record may lie.
_INPLACE_REACH = 64 * 1024

DROP_DATABASE = "DROP DATABASE"
DROP_TABLE = "DROP TABLE"
TRUNCATE = "TRUNCATE"
DELETE = "DELETE"
UPDATE = "UPDATE"
KINDS = (DROP_DATABASE, DROP_TABLE, TRUNCATE, DELETE, UPDATE)

_RECORD_RE = re.compile(
    r"rmgr: (?P<rmgr>\S+)\s+len \(rec/tot\):\s*\d+/\s*\d+, tx:\s*(?P<xid>\d+), "
    r"lsn: (?P<lsn>[0-9A-F]+/[0-9A-F]+), prev (?P<prev>[0-9A-F]+/[0-9A-F]+), desc: (?P<desc>.*)"
)
_BLKREF_RE = re.compile(r"blkref #\d+: rel (\d+)/(\d+)/(\d+)")
_LOCK_RE = re.compile(r"xid (\d+) db (\d+) rel (\d+)")
_DIR_RE = re.compile(r"(\d+)/(\d+)")
_TIME_RE = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) (\w+)")
_REL_PATH_RE = re.compile(r"(?:base/(\d+)/(\d+)|pg_tblspc/(\d+)/[^/]+/(\d+)/(\d+))$")


@dataclasses.dataclass(frozen=True)
class Record:
    """One pg_waldump line."""

    rmgr: str
    xid: int
    lsn: int
    prev: int
    desc: str

    @property
    def op(self) -> str:
        """The record type: `DELETE`, `UPDATE` (`+INIT` dropped), `COMMIT`, ..."""
        word = self.desc.split(" ", 1)[0].rstrip(";,")
        return word.split("+", 1)[0]

    def blocks(self) -> list[tuple[int, int, int]]:
        """(tablespace, database, relfilenode) of each block reference."""
        return [(int(s), int(d), int(r)) for s, d, r in _BLKREF_RE.findall(self.desc)]


def parse_record(line: str) -> Record | None:
    """A record line of pg_waldump, else None (its errors and any other line)."""
    match = _RECORD_RE.match(line)
    if match is None:
        return None
    return Record(
        rmgr=match["rmgr"],
        xid=int(match["xid"]),
        lsn=naming.parse_lsn(match["lsn"]),
        prev=naming.parse_lsn(match["prev"]),
        desc=match["desc"].rstrip(),
    )


def parse_commit_time(desc: str) -> dt.datetime | None:
    """The timestamp of a COMMIT/ABORT description (pg_waldump runs with TZ=UTC)."""
    match = _TIME_RE.search(desc)
    if match is None:
        return None
    text, zone = match.groups()
    moment = dt.datetime.fromisoformat(text)
    if zone not in ("UTC", "GMT", "Z"):  # pg_waldump uses the process's zone: we pass UTC
        return None
    return moment.replace(tzinfo=dt.UTC)


def _commit_parts(desc: str) -> dict[str, str]:
    """`COMMIT <time>; rels: a b; subxacts: 1 2; dropped stats: ...` -> {"rels": "a b", ...}."""
    parts: dict[str, str] = {}
    for piece in desc.split("; ")[1:]:
        key, sep, value = piece.partition(": ")
        if sep:
            parts[key.strip()] = value.strip()
    return parts


def _rel_of_path(path: str) -> tuple[int, int, int] | None:
    """(tablespace, database, relfilenode) of `base/16384/16385` or a pg_tblspc path."""
    match = _REL_PATH_RE.search(path)
    if match is None:
        return None
    if match.group(1) is not None:
        return 1663, int(match.group(1)), int(match.group(2))
    return int(match.group(3)), int(match.group(4)), int(match.group(5))


@dataclasses.dataclass
class _Xact:
    """What one transaction (or subtransaction) did, so far."""

    first_lsn: int
    first_prev: int
    deletes: collections.Counter[tuple[int, int, int]] = dataclasses.field(
        default_factory=collections.Counter
    )
    updates: collections.Counter[tuple[int, int, int]] = dataclasses.field(
        default_factory=collections.Counter
    )
    created: set[tuple[int, int, int]] = dataclasses.field(default_factory=set)
    written: set[tuple[int, int, int]] = dataclasses.field(default_factory=set)
    dropped_dirs: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    truncated: list[int] = dataclasses.field(default_factory=list)
    locks: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    #: prev LSN of the pg_database INPLACE right before this transaction began, if any.
    invalidated_at: int | None = None

    def merge(self, other: _Xact) -> None:
        self.first_lsn = min(self.first_lsn, other.first_lsn)
        if other.first_lsn <= self.first_lsn:
            self.first_prev = other.first_prev
        self.deletes.update(other.deletes)
        self.updates.update(other.updates)
        self.created |= other.created
        self.written |= other.written
        self.dropped_dirs += other.dropped_dirs
        self.truncated += other.truncated
        self.locks += other.locks
        if self.invalidated_at is None:
            self.invalidated_at = other.invalidated_at


@dataclasses.dataclass
class Relation:
    """A relation an event touched, as the WAL names it (and, mapped, its name)."""

    database_oid: int
    filenode: int | None = None
    oid: int | None = None
    tablespace: int = 1663
    rows: int | None = None
    name: str | None = None

    def result(self) -> dict[str, Any]:
        return {
            "database_oid": self.database_oid,
            "tablespace": self.tablespace,
            "filenode": self.filenode,
            "oid": self.oid,
            "name": self.name,
            "rows": self.rows,
        }


@dataclasses.dataclass
class Event:
    """One destructive transaction."""

    kind: str
    xid: int
    commit_time: dt.datetime | None
    commit_lsn: int
    first_lsn: int
    #: The restore point just before the damage (module docstring): for DROP DATABASE a
    #: WAL position (replay up to and including the record that starts there).
    restore_lsn: int | None = None
    databases: list[int] = dataclasses.field(default_factory=list)
    relations: list[Relation] = dataclasses.field(default_factory=list)
    rows: int | None = None
    evidence: str = ""
    database_names: dict[int, str] = dataclasses.field(default_factory=dict)

    def restore_hint(self) -> dict[str, Any]:
        """The RestoreRequest fields that restore to just before this event."""
        if self.restore_lsn is not None:
            return {"targetLSN": naming.format_lsn(self.restore_lsn)}
        hint: dict[str, Any] = {"beforeTransaction": self.xid}
        if self.commit_time is not None:
            hint["beforeTime"] = _format_time(self.commit_time)
        return hint

    def result(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "xid": self.xid,
            "commit_time": _format_time(self.commit_time) if self.commit_time else None,
            "commit_lsn": naming.format_lsn(self.commit_lsn),
            "first_lsn": naming.format_lsn(self.first_lsn),
            "database_oids": list(self.databases),
            "databases": [self.database_names.get(oid) for oid in self.databases],
            "rows": self.rows,
            "relations": [rel.result() for rel in self.relations],
            "evidence": self.evidence,
            "restore": self.restore_hint(),
        }


def _format_time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


class Inspector:
    """Feed pg_waldump lines in WAL order; collect the destructive events (module docstring)."""

    def __init__(self, min_rows: int = DEFAULT_MIN_ROWS) -> None:
        self.min_rows = min_rows
        self.events: list[Event] = []
        self.records = 0
        self.last_lsn = -1
        self.first_commit: dt.datetime | None = None
        self.last_commit: dt.datetime | None = None
        self._open: dict[int, _Xact] = {}
        # The newest INPLACE on pg_database: (its LSN, its prev, commits seen since).
        self._inplace: tuple[int, int, int] | None = None

    def feed(self, line: str) -> list[Event]:
        record = parse_record(line)
        if record is None or record.lsn <= self.last_lsn:
            return []
        self.last_lsn = record.lsn
        self.records += 1
        return self.add(record)

    def add(self, record: Record) -> list[Event]:
        if record.rmgr == "Transaction":
            return self._transaction(record)
        if record.rmgr == "Heap" and record.op == "INPLACE":
            if any(f"{s}/{d}/{r}" == PG_DATABASE for s, d, r in record.blocks()):
                self._inplace = (record.lsn, record.prev, 0)
            return []
        if record.xid == 0:
            return []
        xact = self._open.get(record.xid)
        if xact is None:
            xact = self._open[record.xid] = _Xact(record.lsn, record.prev)
            xact.invalidated_at = self._inplace_just_before(record.lsn)
        self._track(xact, record)
        return []

    def _track(self, xact: _Xact, record: Record) -> None:
        op = record.op
        blocks = record.blocks()
        for block in blocks:
            if block in xact.created:
                xact.written.add(block)
        if record.rmgr == "Heap":
            counter = {"DELETE": xact.deletes, "UPDATE": xact.updates,
                       "HOT_UPDATE": xact.updates}.get(op)
            if counter is not None and blocks and blocks[0][2] >= FIRST_USER_OID:
                counter[blocks[0]] += 1
            elif op == "TRUNCATE":
                match = re.search(r"relids((?: \d+)+)", record.desc)
                if match:
                    xact.truncated += [int(oid) for oid in match.group(1).split()]
        elif record.rmgr == "Storage" and op == "CREATE":
            rel = _rel_of_path(record.desc.split(" ", 1)[1] if " " in record.desc else "")
            if rel is not None:
                xact.created.add(rel)
        elif record.rmgr == "Database" and op == "DROP":
            dirs = [(int(s), int(d)) for s, d in _DIR_RE.findall(record.desc)]
            xact.dropped_dirs += dirs
        elif record.rmgr == "Standby" and op == "LOCK":
            xact.locks += [(int(db), int(rel)) for _, db, rel in _LOCK_RE.findall(record.desc)]

    def _transaction(self, record: Record) -> list[Event]:
        op = record.op
        if op not in ("COMMIT", "ABORT"):
            return []  # COMMIT_PREPARED / PREPARE / ASSIGNMENT: two-phase commit is not read
        parts = _commit_parts(record.desc)
        subxacts = [int(x) for x in parts.get("subxacts", "").split() if x.isdigit()]
        xact = self._open.pop(record.xid, None)
        for sub in subxacts:
            child = self._open.pop(sub, None)
            if child is None:
                continue
            if xact is None:
                xact = child
            else:
                xact.merge(child)
        when = parse_commit_time(record.desc)
        if op == "COMMIT":
            self._note_commit(when)
        if op == "ABORT" or xact is None:
            return []
        events = self._judge(record, xact, parts, when)
        self.events += events
        return events

    def _inplace_just_before(self, lsn: int) -> int | None:
        """The prev LSN of the pg_database INPLACE that directly precedes `lsn`, if any.

        DROP DATABASE writes it (the database marked invalid) right before its transaction's
        first record. One from long ago (a VACUUM's) is not taken: commits happened since
        and it lies more than `_INPLACE_REACH` bytes back.
        """
        if self._inplace is None:
            return None
        at, prev, commits = self._inplace
        if commits == 0 or lsn - at < _INPLACE_REACH:
            return prev
        return None

    def _note_commit(self, when: dt.datetime | None) -> None:
        if self._inplace is not None:
            at, prev, commits = self._inplace
            self._inplace = (at, prev, commits + 1)
        if when is None:
            return
        self.first_commit = self.first_commit or when
        self.last_commit = when

    def _judge(
        self, record: Record, xact: _Xact, parts: dict[str, str], when: dt.datetime | None
    ) -> list[Event]:
        def event(kind: str, **fields: Any) -> Event:
            return Event(kind, record.xid, when, record.lsn, xact.first_lsn, **fields)

        found: list[Event] = []
        if xact.dropped_dirs:
            dbs = sorted({db for _, db in xact.dropped_dirs})
            start = xact.invalidated_at if xact.invalidated_at is not None else xact.first_prev
            found.append(event(
                DROP_DATABASE, databases=dbs, restore_lsn=start,
                evidence="Database DROP dir " + " ".join(f"{s}/{d}" for s, d in xact.dropped_dirs),
            ))
        dropped = [
            rel for rel in (_rel_of_path(p) for p in parts.get("rels", "").split())
            if rel is not None and rel not in xact.created and rel[1] not in
            {db for _, db in xact.dropped_dirs}
        ]
        stats = [
            tuple(int(x) for x in item.split("/"))
            for item in parts.get("dropped stats", "").split()
            if re.fullmatch(r"\d+/\d+/\d+", item)
        ]
        dropped_oids = [(db, oid) for kind, db, oid in stats if kind == 2]
        if dropped:
            empty_replacements = [rel for rel in xact.created if rel not in xact.written]
            if xact.truncated:
                found.append(self._relations_event(
                    event(TRUNCATE, evidence="Heap TRUNCATE record"), dropped,
                    [(dropped[0][1], oid) for oid in xact.truncated],
                ))
            elif dropped_oids or not xact.created:
                found.append(self._relations_event(
                    event(DROP_TABLE, evidence="relation files removed at commit, their "
                          "statistics dropped"), dropped, dropped_oids,
                ))
            elif empty_replacements:
                found.append(self._relations_event(
                    event(TRUNCATE, evidence="relation files replaced by new empty ones at "
                          "commit (TRUNCATE; or a rewrite of an empty table)"),
                    dropped, [lock for lock in xact.locks if lock[1] >= FIRST_USER_OID],
                ))
            # else: files replaced by rewritten ones (VACUUM FULL, CLUSTER, ALTER TABLE)
        for kind, counter in ((DELETE, xact.deletes), (UPDATE, xact.updates)):
            rows = sum(n for rel, n in counter.items() if rel not in xact.created)
            if rows > self.min_rows:
                rels = [
                    Relation(database_oid=d, filenode=r, tablespace=s, rows=n)
                    for (s, d, r), n in sorted(counter.items(), key=lambda item: -item[1])
                    if (s, d, r) not in xact.created
                ]
                found.append(event(
                    kind, databases=sorted({rel.database_oid for rel in rels}), relations=rels,
                    rows=rows, evidence=f"{rows} Heap {kind} records in one transaction",
                ))
        return found

    @staticmethod
    def _relations_event(
        event: Event, files: list[tuple[int, int, int]], oids: list[tuple[int, int]]
    ) -> Event:
        event.relations = [Relation(database_oid=d, filenode=r, tablespace=s) for s, d, r in files]
        by_file = {(rel.database_oid, rel.filenode): rel for rel in event.relations}
        for db, oid in dict.fromkeys(oids):
            same = by_file.get((db, oid))  # a relation never rewritten: filenode = OID
            if same is not None:
                same.oid = oid
            else:
                event.relations.append(Relation(database_oid=db, oid=oid))
        event.databases = sorted({rel.database_oid for rel in event.relations})
        return event

    def open_transactions(self) -> int:
        """Transactions seen without their COMMIT/ABORT (still running at the end)."""
        return len(self._open)
