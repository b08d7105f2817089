"""Logical backups: `pg_dump -Fc -Z0` streamed into the repository, never to a local file.

One backup holds, all taken from ONE exported snapshot so they agree with each other:

- `database.dump`: the whole database (custom format, compression off in pg_dump:
  the repository compresses), including large objects; or, when tables are chosen,
- `table.<schema>.<table>.dump` per chosen table instead (spec 3.2 hot tables). A
  partitioned table's dump includes its partitions. Large objects belong to the
  database, not to a table, so table backups do not contain them.
- `globals.sql`: roles, role memberships and tablespaces (`pg_dumpall --globals-only
  --no-role-passwords`). Without role passwords this works for a non-superuser too
  and keeps password hashes out of the repository; `role_passwords=True` includes
  them (needs a superuser).

The manifest records the database, server and tool versions, and in `extra` the
scope, every table with its object (and, for table backups, its foreign keys so a
restore can order tables and decide which constraints it can recreate).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.postgres import catalog, connection, process, tools

if TYPE_CHECKING:  # the repository (pydantic, ~80 ms to load) is imported once pg_dump runs
    from tonebridge_dr.runner.repository.catalog import Repository
    from tonebridge_dr.runner.repository.manifest import Manifest

log = logging.getLogger(__name__)

DATABASE_OBJECT = "database.dump"
#: zstd level when none is given: level 1 keeps the output within ~10% of gzip -6's size
#: (bench/README.md) at the least CPU (~3.5 s per GB of dump on the 2-core bench machine,
#: the largest part of a backup's cost beyond pg_dump's own); level 3 costs 60% more CPU and
#: ~40 MB more memory (zstd workers) for ~10% smaller objects.
DEFAULT_ZSTD_LEVEL = 1
GLOBALS_OBJECT = "globals.sql"
_SAFE_NAME_PART = re.compile(r"[^A-Za-z0-9_-]")


def table_object_name(table: catalog.TableName) -> str:
    """`table.<schema>.<table>.dump`, each part %-escaped outside [A-Za-z0-9_-]."""

    def part(text: str) -> str:
        return _SAFE_NAME_PART.sub(
            lambda m: "".join(f"%{b:02X}" for b in m.group(0).encode()), text
        )

    return f"table.{part(table.schema)}.{part(table.name)}.dump"


@dataclasses.dataclass(frozen=True)
class LogicalBackupOptions:
    tables: tuple[str, ...] = ()
    include_globals: bool = True
    role_passwords: bool = False
    compression: str = "zstd"
    level: int | None = None  # None: DEFAULT_ZSTD_LEVEL for zstd, the codec default otherwise
    encrypt_to: Path | None = None
    storage_class: str | None = None
    schedule: str | None = None


def default_level(compression: str, level: int | None) -> int | None:
    if level is None and compression == "zstd":
        return DEFAULT_ZSTD_LEVEL
    return level


class _Snapshot:
    """A read-only REPEATABLE READ transaction whose snapshot every pg_dump imports."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.id: str | None = None

    def export(self) -> None:
        self.conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        self.conn.read_only = True
        try:
            row = self.conn.execute("SELECT pg_catalog.pg_export_snapshot()").fetchone()
            self.id = str(row[0]) if row else None
        except psycopg.Error as exc:
            # e.g. a standby that cannot export: every pg_dump then takes its own snapshot.
            log.warning("cannot export a snapshot (%s); objects may differ in time", exc)
            self.conn.rollback()


def _dump_stream(tool: process.ToolProcess) -> Iterator[memoryview]:
    """The tool's stdout; a non-zero exit raises inside the stream, so the upload aborts.

    Chunks are views of one reused buffer (`ToolProcess.stream_stdout`): the writer's
    codecs consume each chunk before asking for the next.
    """
    yield from tool.stream_stdout()
    tool.check()


class _Collected:
    """A small tool output (globals) collected in memory by a thread while other work runs."""

    LIMIT = 256 * 1024 * 1024

    def __init__(self, argv: list[str], info: connection.ConnInfo) -> None:
        self.tool = process.ToolProcess(
            argv, env=info.child_env(), stdout=process.PIPE, scrub=info.scrub
        )
        self.chunks: list[bytes] = []
        self.size = 0
        self._thread = threading.Thread(target=self._read, name="collect-globals", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for chunk in self.tool.iter_stdout():
            self.size += len(chunk)
            if self.size > self.LIMIT:
                self.tool.terminate()
                return
            self.chunks.append(chunk)

    def result(self) -> list[bytes]:
        self._thread.join()
        if self.size > self.LIMIT:
            raise errors.ToolError(f"{self.tool.name} wrote more than {self.LIMIT} bytes")
        self.tool.check()
        return self.chunks

    def __enter__(self) -> _Collected:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.tool.__exit__(*exc_info)  # type: ignore[arg-type]
        self._thread.join()


def _start(argv: list[str], info: connection.ConnInfo) -> process.ToolProcess:
    return process.ToolProcess(argv, env=info.child_env(), stdout=process.PIPE, scrub=info.scrub)


def _store(writer: Any, name: str, tool: process.ToolProcess) -> None:
    log.info("dumping %s", name)
    with tool:
        writer.put_object(name, _dump_stream(tool))


def _database_settings(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """Encoding and locale of the database, so a restore with --create can match them."""
    row = conn.execute(
        "SELECT pg_catalog.pg_encoding_to_char(encoding), datcollate, datctype "
        "FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()"
    ).fetchone()
    if row is None:
        return {}
    return {"encoding": str(row[0]), "lc_collate": str(row[1]), "lc_ctype": str(row[2])}


def backup_logical(
    repo: Repository | Callable[[], Repository], dsn: str, options: LogicalBackupOptions
) -> Manifest:
    """Dump the database at `dsn` into a new backup in `repo`; return its manifest.

    `repo` may be a callable that opens the repository: it is called once pg_dump runs,
    so loading the repository code overlaps pg_dump's own start (the CLI's way).

    Everything is checked (connection, credentials, tables, tools) before the
    repository is touched; a failure after that leaves no backup (the writer
    removes what it stored and never writes the manifest). A whole-database pg_dump
    starts as soon as the snapshot is exported: the catalog queries, tool versions,
    globals and the repository's claim run while it reads the schema (its output
    prefetched meanwhile), and anything failing stops it.
    """
    info = connection.ConnInfo.parse(dsn)
    with (
        connection.connect(info, purpose="source database") as conn,
        contextlib.ExitStack() as stack,
    ):
        server_version = connection.server_version(conn)
        major = conn.info.server_version // 10000
        pg_dump = tools.tool("pg_dump", major)
        pg_dumpall = tools.tool("pg_dumpall", major)
        snapshot = _Snapshot(conn)
        # The backup starts with its snapshot: the manifest's started_at (and the id) must
        # not be later than the data, even though the repository opens once pg_dump runs.
        started_at = dt.datetime.now(dt.UTC)
        snapshot.export()
        chosen: list[tuple[catalog.TableName, int]] = []
        for value in dict.fromkeys(options.tables):  # keep order, drop duplicates
            table, oid = catalog.resolve_table(conn, value)
            if all(oid != seen for _, seen in chosen):
                chosen.append((table, oid))

        base = [pg_dump, "--format=custom", "--compress=0", "--no-password"]
        base += ["--dbname", info.without_secrets()]
        if snapshot.id:
            base += ["--snapshot", snapshot.id]
        first: process.ToolProcess | None = None
        if not chosen:
            first = stack.enter_context(_start(base, info))
            first.prefetch_stdout()  # pg_dump keeps going while the repository opens

        versions = {"pg_dump": stack.enter_context(tools.VersionProbe(pg_dump))}
        globals_dump: _Collected | None = None
        if options.include_globals:
            versions["pg_dumpall"] = stack.enter_context(tools.VersionProbe(pg_dumpall))
            # Small (roles, tablespaces): taken alongside the main dump, stored after it.
            argv = [pg_dumpall, "--globals-only", "--no-password"]
            argv += ["--dbname", info.without_secrets(), "-l", str(conn.info.dbname)]
            if not options.role_passwords:
                argv.append("--no-role-passwords")
            globals_dump = stack.enter_context(_Collected(argv, info))

        dbname = str(conn.info.dbname)
        encoding = _database_settings(conn)
        table_entries = catalog.describe_tables(conn, chosen or catalog.user_tables(conn))
        for entry in table_entries:
            name = catalog.TableName(entry["schema"], entry["name"])
            entry["object"] = table_object_name(name) if chosen else DATABASE_OBJECT

        repository = repo() if callable(repo) else repo
        with repository.begin(
            engine="postgres",
            method="logical",
            now=started_at,
            compression=options.compression,
            encrypt_to=options.encrypt_to,
            level=default_level(options.compression, options.level),
            storage_class=options.storage_class,
            schedule=options.schedule,
        ) as writer:
            log.info("logical backup %s of %s to %s", writer.id, info.masked(), repository.url)
            if first is not None:
                _store(writer, DATABASE_OBJECT, first)
            for entry in table_entries if chosen else []:
                argv = list(base)
                for rel in (entry, *entry.get("partitions", [])):
                    name = catalog.TableName(rel["schema"], rel["name"])
                    argv += ["--table", name.pattern()]
                _store(writer, entry["object"], _start(argv, info))
            if globals_dump is not None:
                log.info("storing %s", GLOBALS_OBJECT)
                writer.put_object(GLOBALS_OBJECT, globals_dump.result())
            manifest = writer.commit(
                databases=[dbname],
                server_version=server_version,
                tools={name: probe.result() for name, probe in versions.items()},
                extra={
                    "database": dbname,
                    **encoding,
                    "scope": "tables" if chosen else "database",
                    "tables": table_entries,
                    "globals": GLOBALS_OBJECT if options.include_globals else None,
                    "role_passwords": options.include_globals and options.role_passwords,
                    "consistent_snapshot": snapshot.id is not None,
                    "format": "pg_dump custom",
                },
            )
        with contextlib.suppress(psycopg.Error):
            conn.rollback()  # release the snapshot
    return manifest
