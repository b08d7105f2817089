"""Time-range repair (spec 9.2): put back the rows of a time range that went missing.

For `table`, `column` and the half-open range [from, to): every row of the backup
whose `column` falls in the range and whose primary key is not in the live table
any more is inserted again. Rows still present are left exactly as they are (the
live version wins); nothing is deleted or updated.

How, and why this way:
- The backup's rows come from `pg_restore -L <the table's TABLE DATA> -f -`: the
  archive renders the data as `COPY ... FROM stdin;` text, which we stream
  straight into `COPY <scratch> FROM STDIN WHERE <column in range>` on the
  target. Only the COPY header is interpreted (we address our own scratch table);
  row data is passed through untouched, so no SQL text rewriting can be fooled
  by data that looks like SQL, and only rows of the range are stored.
- The scratch table is a TEMPORARY table `tonebridge_repair_<random>` created
  `LIKE` the live table `ON COMMIT DROP`: it lives in the session's own temp
  schema, is invisible to others, needs no CREATE privilege on any schema, no
  second database and no dblink, and disappears on commit, rollback or a lost
  connection, so a crashed repair leaves nothing behind.
- Everything runs in ONE transaction on the target: the scratch load, then
  `INSERT INTO t (cols) OVERRIDING SYSTEM VALUE SELECT ... FROM scratch s WHERE
  NOT EXISTS (SELECT 1 FROM t WHERE (pk) = (s.pk)) ON CONFLICT (pk) DO NOTHING`
  (composite keys work; ON CONFLICT covers rows inserted concurrently). It
  commits only after the backup object was read to its end and verified.
- A table without a primary key cannot tell missing rows from present ones and
  is refused before anything is read.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
import secrets
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.postgres import (
    catalog,
    connection,
    dump,
    feeding,
    process,
    restore,
)
from tonebridge_dr.runner.repository.catalog import Repository
from tonebridge_dr.runner.repository.manifest import format_time

log = logging.getLogger(__name__)

_IDENT = re.compile(r'"((?:[^"]|"")*)"|([^\s,."()]+)')


@dataclasses.dataclass(frozen=True)
class RepairOptions:
    table: str
    column: str
    from_value: str
    to_value: str
    decrypt_key: Path | None = None


def parse_copy_header(line: str) -> tuple[str, list[str]] | None:
    """`COPY public.t (id, "Odd Col") FROM stdin;` -> ("public.t", ["id", "Odd Col"])."""
    if not line.startswith("COPY ") or not line.endswith(" FROM stdin;"):
        return None
    body = line[5 : -len(" FROM stdin;")]
    names: list[str] = []
    pos = 0
    # the (possibly qualified) table name
    while True:
        match = _IDENT.match(body, pos)
        if match is None:
            return None
        pos = match.end()
        if pos < len(body) and body[pos] == ".":
            pos += 1
            continue
        break
    table = body[:pos]
    rest = body[pos:].strip()
    if not rest:
        return table, names
    if not (rest.startswith("(") and rest.endswith(")")):
        return None
    inner = rest[1:-1]
    pos = 0
    while pos < len(inner):
        match = _IDENT.match(inner, pos)
        if match is None:
            return None
        names.append(
            match.group(1).replace('""', '"') if match.group(1) is not None else match.group(2)
        )
        pos = match.end()
        if inner.startswith(", ", pos):
            pos += 2
        elif pos != len(inner):
            return None
    return table, names


class CopySplitter:
    """Splits pg_restore's SQL output into COPY blocks and streams each block's rows.

    Calls `begin(columns)` at each `COPY ... FROM stdin;`, `write(data)` with row
    bytes (whole or partial lines, untouched) and `end()` at the `\\.` line. Outside
    COPY blocks everything (SET statements, comments) is ignored.
    """

    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self.buf = bytearray()
        self.in_copy = False
        self.at_line_start = True
        self.blocks = 0

    def feed(self, chunk: bytes) -> None:
        self.buf += chunk
        while self._step():
            pass

    def _step(self) -> bool:
        buf = self.buf
        if not self.in_copy:
            newline = buf.find(b"\n")
            if newline < 0:
                return False
            line = bytes(buf[:newline]).decode("utf-8", "replace")
            del buf[: newline + 1]
            if line.startswith("COPY "):
                header = parse_copy_header(line)
                if header is None:
                    raise errors.ToolError(f"cannot understand pg_restore output: {line[:200]}")
                self.sink.begin(header[1])
                self.in_copy = True
                self.at_line_start = True
                self.blocks += 1
            return True
        if self.at_line_start and buf.startswith(b"\\.\n"):
            del buf[:3]
            return self._finish()
        end = buf.find(b"\n\\.\n")
        if end >= 0:
            self.sink.write(bytes(buf[: end + 1]))
            del buf[: end + 4]
            return self._finish()
        if len(buf) > 3:  # keep a tail that may be the start of the end marker
            data = bytes(buf[:-3])
            del buf[:-3]
            self.sink.write(data)
            self.at_line_start = data.endswith(b"\n")
        return False

    def _finish(self) -> bool:
        self.sink.end()
        self.in_copy = False
        return True

    def close(self) -> None:
        if self.in_copy:
            raise errors.ToolError("pg_restore output ended inside a COPY block")


class _ScratchLoader:
    """Loads COPY blocks into the scratch table, keeping only rows of the range."""

    def __init__(
        self,
        cur: psycopg.Cursor[Any],
        scratch: sql.Identifier,
        where: sql.Composable,
        live_columns: dict[str, str],
    ) -> None:
        self.cur = cur
        self.scratch = scratch
        self.where = where
        self.live_columns = live_columns
        self.columns: list[str] | None = None
        self._copy: Any = None
        self._cm: Any = None

    def begin(self, columns: list[str]) -> None:
        missing = [c for c in columns if c not in self.live_columns]
        if missing:
            raise errors.UsageError(
                f"the backup has column(s) {', '.join(missing)} that the live table lacks; "
                "repair needs the backup's columns to exist in the live table"
            )
        if self.columns is None:
            self.columns = columns
        statement = sql.SQL("COPY {} ({}) FROM STDIN WHERE {}").format(
            self.scratch, sql.SQL(", ").join(map(sql.Identifier, columns)), self.where
        )
        self._cm = self.cur.copy(statement)
        self._copy = self._cm.__enter__()

    def write(self, data: bytes) -> None:
        self._copy.write(data)

    def end(self) -> None:
        cm, self._cm, self._copy = self._cm, None, None
        cm.__exit__(None, None, None)

    def abort(self) -> None:
        if self._cm is not None:
            cm, self._cm = self._cm, None
            try:
                cm.__exit__(errors.ToolError, errors.ToolError("aborted"), None)
            except Exception as exc:  # the transaction is rolled back anyway
                log.debug("aborting COPY: %s", exc)


def repair_time_range(
    repo: Repository, backup: str, target_dsn: str, options: RepairOptions
) -> dict[str, Any]:
    """Insert the backup's rows of the range that are missing from the live table."""
    started = dt.datetime.now(dt.UTC)
    manifest = restore.load_manifest(repo, backup, options.decrypt_key, [options.table])
    [entry] = restore.choose_tables(manifest, [options.table])
    table = catalog.TableName(entry["schema"], entry["name"])
    info = connection.ConnInfo.parse(target_dsn)
    obj = str(entry.get("object") or dump.DATABASE_OBJECT)
    oids = {int(entry["oid"])} | {int(p["oid"]) for p in entry.get("partitions", [])}

    with connection.connect(info, purpose="target database") as conn:
        if not catalog.table_exists(conn, table):
            raise errors.UsageError(
                f"table {table.qualified} does not exist in target database {info.dbname!r}; "
                "restore it with --table first"
            )
        key = catalog.primary_key(conn, table)
        if not key:
            raise errors.UsageError(
                f"table {table.qualified} has no primary key: time-range repair needs one to "
                "tell missing rows from present ones"
            )
        live_columns = catalog.columns(conn, table)
        if options.column not in live_columns:
            raise errors.UsageError(f"table {table.qualified} has no column {options.column!r}")
        column = sql.Identifier(options.column)
        col_type = sql.SQL(live_columns[options.column])  # format_type() output: valid SQL
        low, high = sql.Literal(options.from_value), sql.Literal(options.to_value)
        try:
            row = conn.execute(
                sql.SQL("SELECT {}::{} < {}::{}").format(low, col_type, high, col_type)
            ).fetchone()
        except psycopg.Error as exc:
            raise errors.UsageError(
                f"--from/--to are not valid {live_columns[options.column]} values: "
                f"{connection.describe_error(info, exc)}"
            ) from None
        conn.rollback()
        if not row or not row[0]:
            raise errors.UsageError(
                f"--from {options.from_value!r} must be before --to {options.to_value!r}"
            )
        where = sql.SQL("{} >= {} AND {} < {}").format(column, low, column, high)

        major = conn.info.server_version // 10000
        target = restore.Target(info=info, major=major)
        entries = restore.read_toc(repo, manifest, obj, target, options.decrypt_key)
        data = [e for e in entries.values() if e.kind == "TABLE DATA" and e.oid in oids]
        if not data:
            raise errors.IntegrityError(
                f"object {obj} of backup {manifest.id} holds no data of {table.qualified}"
            )
        scratch = sql.Identifier(f"tonebridge_repair_{secrets.token_hex(6)}")
        with tempfile.TemporaryDirectory(prefix="tonebridge-dr-") as tmp:
            listfile = Path(tmp) / "data.list"
            listfile.write_text("".join(e.line + "\n" for e in data))
            argv = [target.tool("pg_restore"), "--file=-", f"--use-list={listfile}"]
            try:
                with conn.transaction(), conn.cursor() as cur:
                    cur.execute(
                        sql.SQL("CREATE TEMPORARY TABLE {} (LIKE {}) ON COMMIT DROP").format(
                            scratch, sql.SQL(table.sql())
                        )
                    )
                    loader = _ScratchLoader(cur, scratch, where, live_columns)
                    _load(repo, manifest, obj, argv, loader, options.decrypt_key)
                    cur.execute(sql.SQL("SELECT count(*) FROM {}").format(scratch))
                    count_row = cur.fetchone()
                    in_range = int(count_row[0]) if count_row else 0
                    inserted = _insert_missing(
                        cur, table, scratch, key, loader.columns or [], live_columns
                    )
            except psycopg.Error as exc:
                raise errors.ToolError(
                    f"target database {info.masked()} refused the repair of {table.qualified}: "
                    f"{connection.describe_error(info, exc)}"
                ) from None
    finished = dt.datetime.now(dt.UTC)
    log.info(
        "repaired %s: %d row(s) of the range were missing and were inserted, %d were present",
        table.qualified,
        inserted,
        in_range - inserted,
    )
    return {
        "backup": manifest.id,
        "engine": "postgres",
        "method": manifest.method,
        "mode": "repair",
        "target": info.masked(),
        "database": info.dbname,
        "table": table.qualified,
        "column": options.column,
        "from": options.from_value,
        "to": options.to_value,
        "primary_key": key,
        "rows_in_range": in_range,
        "rows_inserted": inserted,
        "rows_already_present": in_range - inserted,
        "started_at": format_time(started, timespec="seconds"),
        "finished_at": format_time(finished, timespec="seconds"),
        "duration_seconds": round((finished - started).total_seconds(), 3),
    }


def _load(
    repo: Repository,
    manifest: Any,
    obj: str,
    argv: list[str],
    loader: _ScratchLoader,
    decrypt_key: Path | None,
) -> None:
    """Stream the table's COPY data from the archive into the scratch table, verified."""
    chunks: Iterable[bytes] = repo.read_object(manifest, obj, decrypt_key=decrypt_key)
    splitter = CopySplitter(loader)
    with process.ToolProcess(argv, stdin=process.PIPE, stdout=process.PIPE) as tool:
        feeder = feeding.BackgroundFeeder(tool, chunks, drain_rest=True).start()
        try:
            for chunk in tool.iter_stdout():
                splitter.feed(chunk)
            splitter.close()
            rc = tool.wait()
        except BaseException as exc:
            loader.abort()
            feeder.stop()
            tool.terminate()
            feeder.join()
            if isinstance(exc, Exception):
                feeder.raise_error(exc)  # a bad object explains a broken stream best
            raise
        feeder.join()  # it drains the object to its end: verified before we commit
        feeder.raise_error()
        if rc != 0:
            raise errors.ToolError(tool.failure_message(rc))


def _insert_missing(
    cur: psycopg.Cursor[Any],
    table: catalog.TableName,
    scratch: sql.Identifier,
    key: list[str],
    backup_columns: list[str],
    live_columns: dict[str, str],
) -> int:
    columns = [c for c in live_columns if c in set(backup_columns)]
    cols = sql.SQL(", ").join(map(sql.Identifier, columns))
    s_cols = sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in columns)
    live = sql.SQL(table.sql())
    key_cols = sql.SQL(", ").join(map(sql.Identifier, key))
    match = sql.SQL(" AND ").join(sql.SQL("l.{0} = s.{0}").format(sql.Identifier(c)) for c in key)
    cur.execute(
        sql.SQL(
            "INSERT INTO {live} ({cols}) OVERRIDING SYSTEM VALUE "
            "SELECT {s_cols} FROM {scratch} s "
            "WHERE NOT EXISTS (SELECT 1 FROM {live} l WHERE {match}) "
            "ON CONFLICT ({key}) DO NOTHING"
        ).format(live=live, cols=cols, s_cols=s_cols, scratch=scratch, match=match, key=key_cols)
    )
    return max(cur.rowcount, 0)
