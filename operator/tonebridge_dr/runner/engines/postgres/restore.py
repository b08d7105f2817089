"""Restores of logical backups: a whole database, or chosen tables, in ONE transaction.

Whole database (`database.dump`): the verified stream goes straight into
`pg_restore --dbname=<target> --single-transaction --exit-on-error`. pg_restore
needs every byte of the archive before it can COMMIT, and the repository
withholds the final bytes of a corrupt object, so a bad object can never be
committed: the tool is terminated and the transaction rolls back.

Tables (`--table`, or a backup made with `--table`): the entries of the chosen
tables are picked from the archive's table of contents (see toc.py), rendered as
SQL by `pg_restore -L list -f -` and run by ONE `psql -v ON_ERROR_STOP=1` whose
stdin we hold, inside a transaction the script itself opens (`BEGIN`): the
`COMMIT` is written only after every object was read to its end and verified
(pg_restore stops reading after the last entry it needs; the rest is drained).
Input that ends without it (we were killed with SIGKILL, a tool died) ends psql's
session and the server rolls back; `psql --single-transaction` would COMMIT
whatever it had read at the end of its input. On any failure psql is killed
first. With several
table archives the definitions and data of all tables go first and indexes,
constraints and foreign keys second, so foreign keys between restored tables
work whatever the order.

Rules:
- `--backup latest` is the newest logical backup that fits (`newest_fitting`): one
  with `database.dump` for a whole database, one listing every `--table` (a
  whole-database dump or a table backup holding them) for tables and repair;
  physical base backups never qualify.
- The target database must exist, or be created with `create=True` (dropped
  again when the restore fails). A target holding user relations (or, for a
  table restore, one of the tables) is refused with TargetNotEmpty unless
  `clean=True`: whole database -> `pg_restore --clean --if-exists` (drops and
  recreates what the backup contains; other objects stay); tables -> one
  `DROP TABLE IF EXISTS` of exactly the restored tables first (fails, and rolls
  back, when other tables' foreign keys point at them).
- Ownership and grants are not restored by default (`--no-owner --no-acl`): the
  restoring role owns everything, so a restore works on any cluster whatever roles
  exist. `with_owners=True` keeps them; restore the roles first (`restore_globals`).
- `restore_globals=True` runs `globals.sql` (roles without passwords, memberships,
  tablespaces) through psql before the database, in its own transaction;
  existing roles are kept (CREATE ROLE becomes "create unless it exists").
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import itertools
import logging
import os
import secrets
import tempfile
from collections.abc import Iterable, Iterator, Sequence
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
    toc,
    tools,
)
from tonebridge_dr.runner.repository import tiering
from tonebridge_dr.runner.repository.catalog import Repository
from tonebridge_dr.runner.repository.manifest import Manifest, format_time

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RestoreOptions:
    tables: tuple[str, ...] = ()
    clean: bool = False
    create: bool = False
    with_owners: bool = False
    restore_globals: bool = False
    decrypt_key: Path | None = None


@dataclasses.dataclass
class Target:
    """The restore target: where it is, which tools match it, whether we created it."""

    info: connection.ConnInfo
    major: int
    created: bool = False

    def tool(self, name: str) -> str:
        return tools.tool(name, self.major)


# --- checks before anything is written -------------------------------------------------------
def load_manifest(
    repo: Repository, backup: str, decrypt_key: Path | None, tables: Sequence[str] = ()
) -> Manifest:
    """The backup to restore; UsageError/EncryptionError when it cannot be restored here.

    `backup` is an id, or "latest": the newest backup that fits the request
    (`newest_fitting`, with `tables` the --table arguments).
    """
    manifest = newest_fitting(repo, tables) if backup == "latest" else repo.get(backup)
    if manifest.engine != "postgres":
        raise errors.UsageError(f"backup {manifest.id} is a {manifest.engine} backup, not postgres")
    if manifest.method != "logical":
        raise errors.UsageError(
            f"backup {manifest.id} is a {manifest.method} backup; `restore postgres` restores "
            "logical backups (a physical base backup is restored by extracting base.tar)"
        )
    check_decrypt_key(manifest, decrypt_key)
    tiering.require_readable(repo, manifest)  # archived: exit 17 before the target is touched
    return manifest


def newest_fitting(repo: Repository, tables: Sequence[str] = ()) -> Manifest:
    """The newest complete logical PostgreSQL backup that can serve the request.

    Whole database (no `tables`): a backup holding `database.dump` (not a physical base
    backup, not a table backup). Tables: a backup whose manifest lists every one of
    them with its object stored (a whole-database dump, or a table backup containing
    them). BackupNotFound naming what was looked for when none fits.
    """
    wanted = [catalog.split_table_arg(value) for value in tables]  # UsageError when malformed
    for manifest in reversed(repo.list_backups(engine="postgres", method="logical")):
        if _fits(manifest, tables, wanted):
            return manifest
    if tables:
        what = (
            f"no logical PostgreSQL backup containing table(s) {', '.join(tables)} "
            "(a whole-database dump or a table backup holding them)"
        )
    else:
        what = (
            f"no logical PostgreSQL backup of a whole database (with {dump.DATABASE_OBJECT}; "
            "table backups and physical base backups cannot restore a whole database)"
        )
    raise errors.BackupNotFound(
        f"{what} in {repo.url}; `tonebridge-dr backups list` shows what exists"
    )


def _fits(
    manifest: Manifest, tables: Sequence[str], wanted: Sequence[tuple[str | None, str]]
) -> bool:
    if not tables:
        return manifest.object(dump.DATABASE_OBJECT) is not None
    listed = manifest.extra.get("tables")
    if not isinstance(listed, list):
        return False
    entries = [t for t in listed if isinstance(t, dict) and "schema" in t and "name" in t]
    for schema, name in wanted:
        matches = _matching(entries, schema, name)
        if not matches:
            return False
        for entry in matches:
            if manifest.object(str(entry.get("object") or dump.DATABASE_OBJECT)) is None:
                return False
    return True


def _matching(
    tables: Sequence[dict[str, Any]], schema: str | None, name: str
) -> list[dict[str, Any]]:
    """Entries named by a --table argument: exact, else (without schema) case-insensitive."""
    matches = [t for t in tables if t["name"] == name and (schema is None or t["schema"] == schema)]
    if not matches and schema is None:
        matches = [t for t in tables if str(t["name"]).lower() == name.lower()]
    return matches


def check_decrypt_key(manifest: Manifest, decrypt_key: Path | None) -> None:
    if manifest.encryption is None:
        return
    fingerprint = manifest.encryption.recipient_fingerprint
    if decrypt_key is None:
        raise errors.EncryptionError(
            f"backup {manifest.id} is encrypted to key {fingerprint}: "
            "pass --decrypt-key PRIVATE_KEY_FILE"
        )
    if not decrypt_key.is_file():
        raise errors.EncryptionError(f"decryption key file {decrypt_key} does not exist")


def manifest_tables(manifest: Manifest) -> list[dict[str, Any]]:
    tables = manifest.extra.get("tables")
    if not isinstance(tables, list):
        raise errors.IntegrityError(f"manifest of backup {manifest.id} lists no tables")
    return [t for t in tables if isinstance(t, dict) and "schema" in t and "name" in t]


def choose_tables(manifest: Manifest, wanted: Iterable[str]) -> list[dict[str, Any]]:
    """The manifest entries of the `--table` arguments (`table` or `schema.table`)."""
    tables = manifest_tables(manifest)
    chosen: list[dict[str, Any]] = []
    for value in wanted:
        schema, name = catalog.split_table_arg(value)
        matches = _matching(tables, schema, name)
        if not matches:
            known = ", ".join(f"{t['schema']}.{t['name']}" for t in tables) or "none"
            raise errors.UsageError(
                f"backup {manifest.id} has no table {value!r} (it has: {known})"
            )
        if len(matches) > 1:
            names = ", ".join(f"{t['schema']}.{t['name']}" for t in matches)
            raise errors.UsageError(f"table {value!r} is ambiguous ({names}): use schema.table")
        if matches[0] not in chosen:
            chosen.append(matches[0])
    return chosen


def open_target(
    info: connection.ConnInfo, *, create: bool, manifest: Manifest
) -> tuple[psycopg.Connection[Any], bool]:
    """Connect to the target database, creating it first when asked; (conn, created)."""
    try:
        return connection.connect(info, purpose="target database"), False
    except connection.MissingDatabase:
        if not create:
            raise errors.SourceError(
                f"target database {info.dbname!r} does not exist on "
                f"{info.host}:{info.port}; create it or pass --create"
            ) from None
    create_database(info, manifest)
    return connection.connect(info, purpose="target database"), True


def maintenance(info: connection.ConnInfo) -> psycopg.Connection[Any]:
    """An autocommit connection to the server of `info` for CREATE / DROP DATABASE (to its
    `postgres` database, else `template1`), with the same credentials."""
    last: errors.DRError | None = None
    for dbname in ("postgres", "template1"):
        try:
            return connection.connect(
                info.with_dbname(dbname), autocommit=True, purpose="maintenance database"
            )
        except connection.MissingDatabase as exc:
            last = exc
    assert last is not None
    raise last


def create_database(info: connection.ConnInfo, manifest: Manifest) -> None:
    """CREATE DATABASE like the source (encoding, locale) from template0."""
    extra = manifest.extra
    name = sql.Identifier(info.dbname)
    with maintenance(info) as conn:
        attempts = []
        if extra.get("encoding") and extra.get("lc_collate") and extra.get("lc_ctype"):
            attempts.append(
                sql.SQL(
                    "CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}"
                ).format(
                    name,
                    sql.Literal(extra["encoding"]),
                    sql.Literal(extra["lc_collate"]),
                    sql.Literal(extra["lc_ctype"]),
                )
            )
        attempts.append(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(name))
        for n, statement in enumerate(attempts, 1):
            try:
                conn.execute(statement)
                log.info("created target database %s", info.dbname)
                return
            except psycopg.errors.InsufficientPrivilege as exc:
                reason = connection.describe_error(info, exc)
                raise errors.AuthenticationError(
                    f"cannot create database {info.dbname!r}: {reason}"
                ) from None
            except psycopg.Error as exc:
                if n == len(attempts):
                    raise errors.SourceError(
                        f"cannot create database {info.dbname!r}: "
                        f"{connection.describe_error(info, exc)}"
                    ) from None
                log.warning(
                    "cannot create %s with the source's locale (%s); using the server default",
                    info.dbname,
                    connection.describe_error(info, exc),
                )


def drop_database(info: connection.ConnInfo) -> None:
    """Best effort: remove a database this restore created and could not fill."""
    try:
        with maintenance(info) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(info.dbname)))
        log.warning("dropped the database %s created by the failed restore", info.dbname)
    except (errors.DRError, psycopg.Error) as exc:
        log.warning("could not drop database %s after the failed restore: %s", info.dbname, exc)


# --- the restore -------------------------------------------------------------------------------
def restore_logical(
    repo: Repository, backup: str, target_dsn: str, options: RestoreOptions
) -> dict[str, Any]:
    """Restore a logical backup into the database named by `target_dsn`; return the result."""
    started = dt.datetime.now(dt.UTC)
    manifest = load_manifest(repo, backup, options.decrypt_key, options.tables)
    info = connection.ConnInfo.parse(target_dsn)
    scope = manifest.extra.get("scope", "database")
    if options.tables:
        chosen = choose_tables(manifest, options.tables)
    elif scope == "tables":
        chosen = manifest_tables(manifest)
    else:
        chosen = []
    if not chosen and manifest.object(dump.DATABASE_OBJECT) is None:
        raise errors.IntegrityError(f"backup {manifest.id} has no {dump.DATABASE_OBJECT}")
    if options.restore_globals and manifest.object(dump.GLOBALS_OBJECT) is None:
        raise errors.UsageError(f"backup {manifest.id} has no {dump.GLOBALS_OBJECT} to restore")

    conn, created = open_target(info, create=options.create, manifest=manifest)
    target = Target(info=info, major=conn.info.server_version // 10000, created=created)
    result: dict[str, Any] = {
        "backup": manifest.id,
        "engine": "postgres",
        "method": manifest.method,
        "mode": "tables" if chosen else "database",
        "target": info.masked(),
        "database": info.dbname,
        "created_database": created,
        "clean": options.clean,
        "with_owners": options.with_owners,
        "globals_restored": False,
    }
    try:
        with conn:
            existing = {t for t, _ in catalog.user_tables(conn)}
            existing_schemas = catalog.schemas(conn)
            if not chosen:
                count = catalog.user_relation_count(conn)
                if count and not options.clean:
                    raise errors.TargetNotEmpty(
                        f"target database {info.dbname!r} is not empty ({count} user relations "
                        "or large objects); pass --clean to replace what the backup contains, "
                        "or restore into an empty database"
                    )
            else:
                names = [catalog.TableName(t["schema"], t["name"]) for t in chosen]
                present = [t.qualified for t in names if t in existing]
                if present and not options.clean:
                    raise errors.TargetNotEmpty(
                        f"table(s) {', '.join(present)} already exist in target database "
                        f"{info.dbname!r}; pass --clean to replace them"
                    )
        if options.restore_globals:
            restore_globals(repo, manifest, target, options.decrypt_key)
            result["globals_restored"] = True
        if chosen:
            result.update(
                restore_tables(repo, manifest, target, chosen, existing, existing_schemas, options)
            )
        else:
            restore_database(repo, manifest, target, options)
    except BaseException:
        if created:
            drop_database(info)
        raise
    finished = dt.datetime.now(dt.UTC)
    result.update(
        {
            "started_at": format_time(started, timespec="seconds"),
            "finished_at": format_time(finished, timespec="seconds"),
            "duration_seconds": round((finished - started).total_seconds(), 3),
        }
    )
    log.info("restore of backup %s into %s finished", manifest.id, info.masked())
    return result


def _pg_restore_flags(options: RestoreOptions) -> list[str]:
    return [] if options.with_owners else ["--no-owner", "--no-acl"]


def _explain_failure(
    failed: process.ToolProcess, rest: Iterator[bytes], *, sink: process.ToolProcess | None
) -> errors.DRError:
    """Why a restore tool failed: a bad object beats its consumer's error beats the tool's."""
    try:
        feeding.drain(rest)
    except errors.IntegrityError as exc:
        return exc
    if sink is not None and sink.proc.poll() not in (None, 0):
        return errors.ToolError(sink.failure_message())
    return errors.ToolError(failed.failure_message())


def restore_database(
    repo: Repository, manifest: Manifest, target: Target, options: RestoreOptions
) -> None:
    """`database.dump` -> pg_restore --single-transaction into the target database."""
    argv = [
        target.tool("pg_restore"),
        "--dbname",
        target.info.without_secrets(),
        "--no-password",
        "--single-transaction",
        "--exit-on-error",
        *_pg_restore_flags(options),
    ]
    if options.clean:
        argv += ["--clean", "--if-exists"]
    log.info(
        "restoring %s of backup %s into %s", dump.DATABASE_OBJECT, manifest.id, target.info.masked()
    )
    chunks = iter(repo.read_object(manifest, dump.DATABASE_OBJECT, decrypt_key=options.decrypt_key))
    with process.ToolProcess(
        argv, env=target.info.child_env(), stdin=process.PIPE, scrub=target.info.scrub
    ) as tool:
        complete = tool.feed(chunks)
        if tool.wait() != 0:
            raise _explain_failure(tool, chunks, sink=None)
    if not complete:
        # pg_restore committed without reading to the end: cannot happen for a whole
        # archive, but if it did, say so rather than claim a verified restore.
        feeding.drain(chunks)


# --- tables ------------------------------------------------------------------------------------
def read_toc(
    repo: Repository, manifest: Manifest, name: str, target: Target, decrypt_key: Path | None
) -> dict[int, toc.Entry]:
    """The archive's table of contents (only its head is read)."""
    argv = [target.tool("pg_restore"), "--list", "--verbose"]
    chunks = repo.read_object(manifest, name, decrypt_key=decrypt_key)
    with process.ToolProcess(argv, stdin=process.PIPE, stdout=process.PIPE) as tool:
        feeder = feeding.BackgroundFeeder(tool, chunks, drain_rest=False).start()
        try:
            listing = b"".join(tool.iter_stdout())
            rc = tool.wait()
        except BaseException as exc:
            feeder.stop()
            tool.terminate()
            feeder.join()
            if isinstance(exc, Exception):
                feeder.raise_error(exc)
            raise
        feeder.stop()
        feeder.join()
        feeder.raise_error()
        if rc != 0:
            verify_object(repo, manifest, name, decrypt_key)  # a bad object explains it best
            raise errors.ToolError(tool.failure_message(rc))
    return toc.parse(listing.decode("utf-8", "replace"))


def verify_object(
    repo: Repository, manifest: Manifest, name: str, decrypt_key: Path | None
) -> None:
    """Read one object to its end; IntegrityError when it does not match the manifest."""
    feeding.drain(iter(repo.read_object(manifest, name, decrypt_key=decrypt_key)))


class _TablePlan:
    """Which archives to read and which of their entries to restore."""

    def __init__(
        self, manifest: Manifest, chosen: list[dict[str, Any]], existing: set[catalog.TableName]
    ) -> None:
        self.objects: dict[str, set[int]] = {}
        self.restored: set[int] = set()
        self.names: list[catalog.TableName] = []
        for table in chosen:
            obj = str(table.get("object") or dump.DATABASE_OBJECT)
            oids = {int(table["oid"])} | {int(p["oid"]) for p in table.get("partitions", [])}
            self.objects.setdefault(obj, set()).update(oids)
            self.restored |= oids
            self.names.append(catalog.TableName(table["schema"], table["name"]))
            self.names += [
                catalog.TableName(p["schema"], p["name"]) for p in table.get("partitions", [])
            ]
        self.existing = existing
        self.fk_owner: dict[int, int] = {}
        self.fk_ref: dict[int, tuple[int, catalog.TableName]] = {}
        self.fk_label: dict[int, str] = {}
        for table in manifest_tables(manifest):
            for fk in table.get("foreign_keys", []):
                ref = fk["references"]
                self.fk_owner[int(fk["oid"])] = int(table["oid"])
                self.fk_ref[int(fk["oid"])] = (
                    int(ref["oid"]),
                    catalog.TableName(ref["schema"], ref["name"]),
                )
                self.fk_label[int(fk["oid"])] = (
                    f"{table['schema']}.{table['name']}.{fk['constraint']} -> "
                    f"{ref['schema']}.{ref['name']}"
                )

    def verdict(self, constraint_oid: int) -> str | None:
        if constraint_oid not in self.fk_owner:
            return None
        if self.fk_owner[constraint_oid] not in self.restored:
            return "foreign"
        ref_oid, ref_name = self.fk_ref[constraint_oid]
        if ref_oid in self.restored or ref_name in self.existing:
            return "keep"
        return "skip"


def restore_tables(
    repo: Repository,
    manifest: Manifest,
    target: Target,
    chosen: list[dict[str, Any]],
    existing: set[catalog.TableName],
    existing_schemas: set[str],
    options: RestoreOptions,
) -> dict[str, Any]:
    """Restore the chosen tables (definition, data, what belongs to them) in one transaction."""
    plan = _TablePlan(manifest, chosen, existing)
    selections: dict[str, toc.Selection] = {}
    for name, oids in plan.objects.items():
        entries = read_toc(repo, manifest, name, target, options.decrypt_key)
        selection = toc.select(entries, oids, plan.verdict)
        found = {e.oid for e in selection.entries if e.kind == "TABLE"}
        if not oids <= found:
            raise errors.IntegrityError(
                f"object {name} of backup {manifest.id} lacks table(s) the manifest lists there"
            )
        selections[name] = selection
    skipped = [
        plan.fk_label.get(oid, str(oid))
        for s in selections.values()
        for oid in s.skipped_foreign_keys
    ]
    for label in skipped:
        log.warning(
            "not restoring foreign key %s: the referenced table is not restored "
            "and does not exist in the target",
            label,
        )
    passes: list[list[str]] = (
        [[]]
        if len(selections) == 1
        else [["--section=pre-data", "--section=data"], ["--section=post-data"]]
    )
    psql = _psql_script(target)
    read_fd, write_fd = os.pipe()
    with (
        tempfile.TemporaryDirectory(prefix="tonebridge-dr-") as tmp,
        process.ToolProcess(
            psql, env=target.info.child_env(), stdin=read_fd, scrub=target.info.scrub
        ) as sink,
    ):
        os.close(read_fd)
        try:
            _send(write_fd, BEGIN)
            # The tables' schemas may be missing in the target (created, never dropped; only
            # the missing ones: CREATE SCHEMA IF NOT EXISTS still needs CREATE on the database).
            for schema in dict.fromkeys(t.schema for t in plan.names):
                if schema in existing_schemas:
                    continue
                statement = f"CREATE SCHEMA IF NOT EXISTS {catalog.quote_ident(schema)};\n"
                _send(write_fd, statement.encode())
            if options.clean:
                names = ", ".join(t.sql() for t in plan.names)
                _send(write_fd, f"DROP TABLE IF EXISTS {names};\n".encode())
            for n, section in enumerate(passes):
                for name, selection in selections.items():
                    listfile = Path(tmp) / f"{n}-{secrets.token_hex(4)}.list"
                    listfile.write_text(selection.list_file())
                    _render(
                        repo,
                        manifest,
                        name,
                        target,
                        options,
                        listfile,
                        section,
                        write_fd,
                        sink,
                        verify=(n == 0),
                    )
            _send(write_fd, COMMIT)
        except BaseException:
            sink.terminate()  # before our end of its stdin closes: psql must not COMMIT
            raise
        finally:
            os.close(write_fd)
        if sink.wait() != 0:
            raise errors.ToolError(sink.failure_message())
    return {
        "tables": [t.qualified for t in plan.names],
        "skipped_foreign_keys": skipped,
    }


def _render(
    repo: Repository,
    manifest: Manifest,
    name: str,
    target: Target,
    options: RestoreOptions,
    listfile: Path,
    section: list[str],
    out_fd: int,
    sink: process.ToolProcess,
    *,
    verify: bool,
) -> None:
    """`pg_restore -L listfile -f -` of one archive into psql's stdin."""
    argv = [
        target.tool("pg_restore"),
        "--file=-",
        f"--use-list={listfile}",
        *section,
        *_pg_restore_flags(options),
    ]
    log.info("restoring tables from %s of backup %s", name, manifest.id)
    chunks = iter(repo.read_object(manifest, name, decrypt_key=options.decrypt_key))
    with process.ToolProcess(argv, stdin=process.PIPE, stdout=out_fd) as tool:
        complete = tool.feed(chunks)
        if tool.wait() != 0:
            raise _explain_failure(tool, chunks, sink=sink)
    if not complete and verify:
        feeding.drain(chunks)  # the object must check out before psql may commit
    elif not complete:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    if sink.proc.poll() not in (None, 0):
        raise errors.ToolError(sink.failure_message())


# --- globals -----------------------------------------------------------------------------------
def _globals_sql(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """pg_dumpall's globals with `CREATE ROLE x;` made idempotent (existing roles are kept)."""
    tag = f"tbdr{secrets.token_hex(6)}"
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield b"".join(_globals_line(line, tag) + b"\n" for line in lines)
    if pending:
        yield _globals_line(pending, tag)


def _globals_line(line: bytes, tag: str) -> bytes:
    if line.startswith(b"CREATE ROLE ") and line.endswith(b";"):
        return (
            f"DO ${tag}$ BEGIN ".encode()
            + line
            + b" EXCEPTION WHEN duplicate_object THEN RAISE NOTICE 'role exists'; "
            + f"END ${tag}$;".encode()
        )
    return line


#: The transaction of a psql script is opened and committed by the script itself: psql
#: `--single-transaction` sends COMMIT at the end of its input, and its input also ends when
#: the runner dies mid-stream (SIGKILL, OOM), which would commit a partial restore. Input
#: ending without COMMIT ends psql's session instead, and the server rolls back.
BEGIN = b"BEGIN;\n"
COMMIT = b"\nCOMMIT;\n"


def _send(fd: int, statement: bytes) -> None:
    """Write one of our statements to psql's stdin; a psql that stopped already
    (ON_ERROR_STOP, a lost connection) says why through its exit status, not through a
    broken pipe of ours."""
    with contextlib.suppress(BrokenPipeError):
        os.write(fd, statement)


def _psql_script(target: Target) -> list[str]:
    """psql running the SQL on its stdin, stopping at the first error. The script opens its
    transaction (BEGIN) and commits it last (COMMIT), after everything was verified."""
    return [
        target.tool("psql"),
        "--dbname",
        target.info.without_secrets(),
        "--no-password",
        "--no-psqlrc",
        "--quiet",
        "--set=ON_ERROR_STOP=1",
        "--file=-",
    ]


def restore_globals(
    repo: Repository, manifest: Manifest, target: Target, decrypt_key: Path | None
) -> None:
    """Run globals.sql (roles, memberships, tablespaces) in one transaction on the target."""
    psql = _psql_script(target)
    log.info("restoring roles and tablespaces (%s) of backup %s", dump.GLOBALS_OBJECT, manifest.id)
    chunks = iter(repo.read_object(manifest, dump.GLOBALS_OBJECT, decrypt_key=decrypt_key))
    with process.ToolProcess(
        psql, env=target.info.child_env(), stdin=process.PIPE, scrub=target.info.scrub
    ) as tool:
        # COMMIT follows the last byte of the verified stream, never a truncated one.
        complete = tool.feed(itertools.chain([BEGIN], _globals_sql(chunks), [COMMIT]))
        if tool.wait() != 0 or not complete:
            raise _explain_failure(tool, chunks, sink=None)
