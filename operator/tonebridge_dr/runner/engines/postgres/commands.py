"""Command-line glue for `tonebridge-dr backup postgres`, `restore postgres` and
`restore-test postgres`.

Same protocol as every engine (`registry.Engine`): the runner CLI builds a
sub-parser (with the shared `--repo` and `--json` already on it), calls
`add_*_arguments(parser)`, later `run_*(args)`, and prints the returned dict (the
stable `--json` result).

Credentials never need the command line: `--dsn` defaults to $TONEBRIDGE_DR_DSN,
`--target-dsn` to $TONEBRIDGE_DR_TARGET_DSN, and a password missing from the DSN
comes from PGPASSWORD / PGPASSFILE (libpq). `--target-database NAME` replaces the
database of the target DSN (a RestoreRequest's `target.database.database`), so one
Secret can serve restores into several databases of a server.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tonebridge_dr.api import formats
from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.postgres import connection
from tonebridge_dr.runner.engines.restoretest import options as test_options
from tonebridge_dr.runner.storage import open_storage, repo_from_env

if TYPE_CHECKING:
    from tonebridge_dr.runner.repository.catalog import Repository
    from tonebridge_dr.runner.storage import Storage

# Imports are local to the command that needs them: a logical backup starts pg_dump
# before it loads the repository (pydantic), restore, basebackup or WAL modules, and
# start-up time before pg_dump runs is added to every backup's wall time.


def _add(parser: argparse.ArgumentParser, *flags: str, **kwargs: Any) -> None:
    """add_argument unless the CLI already defined the option."""
    if any(flag in parser._option_string_actions for flag in flags):
        return
    parser.add_argument(*flags, **kwargs)


def _add_decrypt_key(parser: argparse.ArgumentParser) -> None:
    _add(
        parser,
        "--decrypt-key",
        type=Path,
        metavar="PRIVKEY_FILE",
        help="OpenPGP secret key file for an encrypted backup",
    )


def add_backup_arguments(parser: argparse.ArgumentParser) -> None:
    _add(
        parser,
        "--dsn",
        help=f"libpq DSN of the database (default ${connection.DSN_ENV}; password from "
        "PGPASSWORD or PGPASSFILE, never put it here in a Job)",
    )
    _add(
        parser,
        "--method",
        choices=("logical", "physical"),
        default="logical",
        help="logical: pg_dump (default); physical: pg_basebackup of the whole cluster",
    )
    _add(
        parser,
        "--table",
        action="append",
        default=[],
        metavar="TABLE",
        help="logical: back up only this table ([schema.]table), one object per table; "
        "repeat for several",
    )
    _add(parser, "--compression", default="zstd", help="zstd (default), gzip or none")
    _add(parser, "--level", type=int, default=None, help="compression level")
    _add(
        parser,
        "--encrypt-to",
        type=Path,
        metavar="PUBKEY_FILE",
        help="encrypt every object to this OpenPGP public key",
    )
    _add(parser, "--storage-class", default=None, help="storage class of the stored objects")
    _add(
        parser,
        "--schedule",
        default=None,
        help="name of the BackupPolicy schedule this backup belongs to (for retention)",
    )
    _add(
        parser,
        "--no-globals",
        action="store_true",
        help="logical: do not store roles and tablespaces (globals.sql)",
    )
    _add(
        parser,
        "--role-passwords",
        action="store_true",
        help="logical: include role password hashes in globals.sql (needs a superuser)",
    )
    _add(
        parser,
        "--checkpoint",
        choices=("fast", "spread"),
        default="fast",
        help="physical: checkpoint mode at the start of the base backup (default fast)",
    )
    _add(
        parser,
        "--incremental",
        action="store_true",
        help="physical: store only the data that changed since the schedule's previous "
        "physical backup (a full one when there is none or its chain is too old)",
    )
    _add(
        parser,
        "--full-every",
        default=None,
        metavar="DURATION",
        help="physical --incremental: take a full backup once the chain's full is this old "
        "(default 7d)",
    )


def run_backup(args: argparse.Namespace) -> dict[str, Any]:
    dsn = connection.dsn_from(args.dsn, connection.DSN_ENV, option="--dsn")
    connection.ConnInfo.parse(dsn)  # a malformed DSN is a usage error before any work
    if args.method == "physical":
        if args.table:
            raise errors.UsageError("--table needs --method logical")
        if args.no_globals or args.role_passwords:
            raise errors.UsageError("--no-globals/--role-passwords need --method logical")
    elif args.checkpoint != "fast" or args.incremental:
        raise errors.UsageError("--checkpoint/--incremental need --method physical")
    if args.full_every is not None and not args.incremental:
        raise errors.UsageError("--full-every needs --incremental")
    full_every = _full_every(args.full_every)
    storage = open_storage(repo_from_env(args.repo))
    storage.check()  # a missing bucket fails before the database is touched
    if args.method == "physical":
        from tonebridge_dr.runner.engines.postgres import basebackup

        physical = basebackup.PhysicalBackupOptions(
            checkpoint=args.checkpoint,
            compression=args.compression,
            level=args.level,
            encrypt_to=args.encrypt_to,
            storage_class=args.storage_class,
            schedule=args.schedule,
        )
        if args.incremental:
            from tonebridge_dr.runner.engines.postgres import incremental

            manifest = incremental.backup_incremental(
                _repository(storage), dsn, physical, full_every=full_every
            )
        else:
            manifest = basebackup.backup_physical(_repository(storage), dsn, physical)
    else:
        from tonebridge_dr.runner.engines.postgres import dump

        manifest = dump.backup_logical(
            lambda: _repository(storage),  # opened once pg_dump is running
            dsn,
            dump.LogicalBackupOptions(
                tables=tuple(args.table),
                include_globals=not args.no_globals,
                role_passwords=args.role_passwords,
                compression=args.compression,
                level=args.level,
                encrypt_to=args.encrypt_to,
                storage_class=args.storage_class,
                schedule=args.schedule,
            ),
        )
    return manifest.result()


def _full_every(text: str | None) -> dt.timedelta:
    if text is None:
        return dt.timedelta(days=7)
    try:
        value = formats.parse_duration(text)
    except ValueError as exc:
        raise errors.UsageError(f"--full-every: {exc}") from None
    if value <= dt.timedelta(0):
        raise errors.UsageError("--full-every must be positive")
    return value


def _repository(storage: Storage) -> Repository:
    from tonebridge_dr.runner.repository.catalog import Repository

    return Repository(storage)


def add_restore_arguments(parser: argparse.ArgumentParser) -> None:
    _add(
        parser,
        "--backup",
        default="latest",
        help="backup id or 'latest' (default): the newest logical backup holding what is "
        "restored (database.dump, or the --table tables); physical: the newest base backup "
        "that ends before the target",
    )
    _add(
        parser,
        "--target-dsn",
        help=f"libpq DSN of the database to restore into (default ${connection.TARGET_DSN_ENV};"
        " password from PGPASSWORD or PGPASSFILE)",
    )
    _add(
        parser,
        "--target-database",
        metavar="NAME",
        help="restore into this database instead of the one the target DSN names "
        "(same server, same credentials)",
    )
    _add(
        parser,
        "--table",
        action="append",
        default=[],
        metavar="TABLE",
        help="restore only this table (definition + data); repeat for several",
    )
    _add(
        parser,
        "--clean",
        action="store_true",
        help="replace what the backup contains in a non-empty target (DROP ... IF EXISTS)",
    )
    _add(
        parser,
        "--create",
        action="store_true",
        help="create the target database when it does not exist",
    )
    _add(
        parser,
        "--globals",
        action="store_true",
        help="also restore roles and tablespaces (globals.sql) first",
    )
    _add(
        parser,
        "--with-owners",
        action="store_true",
        help="keep object owners and grants (default: the restoring role owns everything)",
    )
    _add_decrypt_key(parser)
    _add(
        parser,
        "--repair-column",
        metavar="COLUMN",
        help="time-range repair: insert the backup's rows with COLUMN in [--from, --to) "
        "that are missing from the live --table (by primary key)",
    )
    _add(parser, "--from", dest="from_value", metavar="TS", help="repair range start (inclusive)")
    _add(parser, "--to", dest="to_value", metavar="TS", help="repair range end (exclusive)")
    # Physical point-in-time restore into a data directory (--data-dir and a target).
    from tonebridge_dr.runner.engines.postgres.wal import commands as wal_commands

    wal_commands.add_restore_arguments(parser)


def run_restore(args: argparse.Namespace) -> dict[str, Any]:
    from tonebridge_dr.runner.engines.postgres import repair, restore
    from tonebridge_dr.runner.engines.postgres.wal import commands as wal_commands
    from tonebridge_dr.runner.repository.catalog import Repository

    if wal_commands.is_physical_restore(args):
        if args.target_dsn or args.target_database or args.table or args.repair_column:
            raise errors.UsageError(
                "--data-dir (physical restore) cannot be combined with --target-dsn, "
                "--target-database, --table or --repair-column (logical restore)"
            )
        return wal_commands.run_restore(args)
    for flag, value in (
        ("--target-time", args.target_time),
        ("--target-lsn", args.target_lsn),
        ("--latest", args.latest),
        ("--before-xid", args.before_xid),
        ("--start", args.start),
    ):
        if value:
            raise errors.UsageError(f"{flag} needs --data-dir (a physical point-in-time restore)")
    target_dsn = connection.dsn_from(
        args.target_dsn, connection.TARGET_DSN_ENV, option="--target-dsn"
    )
    info = connection.ConnInfo.parse(target_dsn)
    if args.target_database is not None:
        name = check_database_name(args.target_database)
        target_dsn = info.with_dbname(name).conninfo()
    repair_mode = args.repair_column is not None
    if repair_mode or args.from_value is not None or args.to_value is not None:
        if not (repair_mode and args.from_value is not None and args.to_value is not None):
            raise errors.UsageError("time-range repair needs --repair-column, --from and --to")
        if len(args.table) != 1:
            raise errors.UsageError("time-range repair needs exactly one --table")
        for flag, value in (
            ("--clean", args.clean),
            ("--create", args.create),
            ("--globals", args.globals),
            ("--with-owners", args.with_owners),
        ):
            if value:
                raise errors.UsageError(f"{flag} cannot be combined with --repair-column")
    repo = Repository.open(repo_from_env(args.repo), create=False)
    if repair_mode:
        return repair.repair_time_range(
            repo,
            args.backup,
            target_dsn,
            repair.RepairOptions(
                table=args.table[0],
                column=args.repair_column,
                from_value=str(args.from_value),
                to_value=str(args.to_value),
                decrypt_key=args.decrypt_key,
            ),
        )
    return restore.restore_logical(
        repo,
        args.backup,
        target_dsn,
        restore.RestoreOptions(
            tables=tuple(args.table),
            clean=args.clean,
            create=args.create,
            with_owners=args.with_owners,
            restore_globals=args.globals,
            decrypt_key=args.decrypt_key,
        ),
    )


# --- restore-test ---------------------------------------------------------------------------
DEFAULT_TEST_NAME = test_options.DEFAULT_TEST_NAME
parse_seconds = test_options.parse_seconds


def add_restore_test_arguments(parser: argparse.ArgumentParser) -> None:
    _add(
        parser,
        "--backup",
        default=None,
        help="backup id (default: the newest complete backup of the method: a whole-database "
        "logical dump, or a physical base backup)",
    )
    _add(
        parser,
        "--method",
        choices=("logical", "physical"),
        default=None,
        help="default: logical with --scratch-dsn; with --scratch-instance the newest backup "
        "of either method",
    )
    _add(
        parser,
        "--scratch-dsn",
        metavar="DSN",
        help="restore (logical) into this database: it must be empty or missing (then it is "
        "created); whatever the test created is dropped afterwards (default "
        f"${connection.TARGET_DSN_ENV}; password from PGPASSWORD or PGPASSFILE)",
    )
    _add(
        parser,
        "--scratch-instance",
        type=Path,
        metavar="DIR",
        help="restore into a private PostgreSQL in this empty folder (initdb for a logical "
        "backup, point-in-time recovery to the end of the archive for a physical one); "
        "stopped and emptied afterwards",
    )
    _add(
        parser,
        "--database",
        metavar="NAME",
        help="the database restored into and checked: with --scratch-dsn it replaces the "
        "DSN's (same server, same credentials); with --scratch-instance default the "
        "backed-up database for a logical backup, $PGDATABASE or postgres for a physical one",
    )
    _add(
        parser,
        "--checks",
        type=Path,
        metavar="FILE",
        help="JSON list of checks, as the RestoreTest spec's checks "
        '(e.g. [{"name": "users", "query": "SELECT count(*) FROM users", "expect": {"min": 1}}];'
        " default $TONEBRIDGE_DR_CHECKS)",
    )
    _add(parser, "--checks-json", metavar="TEXT", help="the checks as JSON text")
    _add(
        parser,
        "--rto",
        metavar="DURATION",
        help="recovery time objective: from the first repository read to the checks passing "
        "(e.g. 15m, 1h30m, 90s, 500ms or seconds); a longer restore exits 16",
    )
    _add(
        parser,
        "--check-timeout",
        metavar="DURATION",
        default=None,
        help="statement_timeout of each check (default 60s)",
    )
    _add(
        parser,
        "--name",
        default=DEFAULT_TEST_NAME,
        help="the test's name, in its report's key restore-tests/<UTC time>-<name>.json "
        f"(default {DEFAULT_TEST_NAME})",
    )
    _add_decrypt_key(parser)
    _add(
        parser,
        "--timeout",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="--scratch-instance: seconds to wait for the server to start and recover "
        "(default 3600)",
    )
    _add(
        parser,
        "--run-as",
        default="postgres",
        help="--scratch-instance: OS user owning and running the server when run as root",
    )


def run_restore_test(args: argparse.Namespace) -> dict[str, Any]:
    import os

    from tonebridge_dr.runner.contract import runner_contract
    from tonebridge_dr.runner.engines.postgres.restoretest import checks, run, scratch
    from tonebridge_dr.runner.repository import ids, reports
    from tonebridge_dr.runner.repository.catalog import Repository

    name = reports.check_name(args.name)
    if args.backup not in (None, "latest"):
        ids.check_backup_id(args.backup)
    if args.scratch_dsn and args.scratch_instance is not None:
        raise errors.UsageError("give --scratch-dsn or --scratch-instance, not both")
    if args.database is not None:
        check_database_name(args.database, option="--database")
    target: scratch.ScratchDatabase | scratch.ScratchInstance
    if args.scratch_instance is not None:
        target = scratch.ScratchInstance(
            args.scratch_instance, run_as=args.run_as, timeout=args.timeout
        )
    else:
        dsn = args.scratch_dsn or os.environ.get(connection.TARGET_DSN_ENV, "")
        if not dsn:
            raise errors.UsageError(
                "no scratch target: pass --scratch-dsn DSN (or set "
                f"{connection.TARGET_DSN_ENV}) or --scratch-instance DIR"
            )
        if args.method == "physical":
            raise errors.UsageError(
                "a physical restore test needs --scratch-instance DIR (a whole cluster is "
                "restored, started and recovered)"
            )
        info = connection.ConnInfo.parse(dsn)
        if args.database is not None:
            info = info.with_dbname(args.database)
        target = scratch.ScratchDatabase(info)
    options = run.TestOptions(
        name=name,
        backup_id=args.backup,
        method=args.method,
        checks=tuple(checks.load_checks(args.checks, args.checks_json)),
        rto=parse_seconds(args.rto, "--rto") if args.rto is not None else None,
        check_timeout=(
            parse_seconds(args.check_timeout, "--check-timeout")
            if args.check_timeout is not None
            else checks.DEFAULT_TIMEOUT
        ),
        decrypt_key=args.decrypt_key,
        passphrase=os.environ.get(runner_contract.ENV_DECRYPT_PASSPHRASE) or None,
        database=args.database,
    )
    repo = Repository.open(repo_from_env(args.repo), create=False)
    return run.run_restore_test(repo, target, options)


#: PostgreSQL keeps NAMEDATALEN - 1 bytes of a name and silently cuts longer ones.
MAX_NAME_BYTES = 63


def check_database_name(name: str, *, option: str = "--target-database") -> str:
    """A database name for `option`: 1-63 bytes (UTF-8), no control characters, no
    surrounding blanks (a longer name would be cut by the server, and a restore would land
    in a database of another name). UsageError otherwise."""
    if not name or name != name.strip():
        raise errors.UsageError(
            f"{option} {name!r}: a database name cannot be empty or start or end with blanks"
        )
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise errors.UsageError(f"{option} {name!r}: control characters are not allowed")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise errors.UsageError(
            f"{option} {name[:20]!r}...: longer than {MAX_NAME_BYTES} bytes "
            "(PostgreSQL would cut it)"
        )
    return name


def check(dsn: str) -> dict[str, Any]:
    """Connectivity check of a database: version, what the role may do, and its WAL
    archiving settings (`archive_mode`, `archive_timeout` in seconds)."""
    info = connection.ConnInfo.parse(dsn)
    with connection.connect(info, purpose="database") as conn:
        row = conn.execute(
            "SELECT current_user, r.rolsuper, r.rolreplication, pg_catalog.pg_is_in_recovery() "
            "FROM pg_catalog.pg_roles r WHERE r.rolname = current_user"
        ).fetchone()
        archiving = conn.execute(
            "SELECT pg_catalog.current_setting('archive_mode'), "
            "(SELECT setting FROM pg_catalog.pg_settings WHERE name = 'archive_timeout')"
        ).fetchone()
        return {
            "target": info.masked(),
            "server_version": connection.server_version(conn),
            "database": conn.info.dbname,
            "user": str(row[0]) if row else info.user,
            "superuser": bool(row[1]) if row else False,
            "replication": bool(row[2]) if row else False,
            "in_recovery": bool(row[3]) if row else False,
            "archive_mode": str(archiving[0]) if archiving else None,
            "archive_timeout_seconds": (
                int(archiving[1]) if archiving and archiving[1] is not None else None
            ),
        }


def archive_timeout_warnings(
    archive_mode: str | None, server_seconds: int | None, wanted_seconds: float | None
) -> list[str]:
    """What `check` warns about a server that archives with `archive_command`
    (`archive_mode` on or always): an `archive_timeout` of 0 (off: on a quiet server the
    newest commits wait in an unfinished segment for as long as nothing else is written),
    or one larger than `wanted_seconds` (the policy's `walArchive.archiveTimeout`). A
    server with `archive_mode = off` gets none: it does not archive with archive_command
    (wal-stream needs no server setting)."""
    if archive_mode in (None, "off") or server_seconds is None:
        return []
    wanted = (
        f" (the policy wants at most {_duration_text(wanted_seconds)})"
        if wanted_seconds else ""
    )
    if server_seconds <= 0:
        return [
            "archive_timeout is 0 (off): on a quiet server the newest commits stay in an "
            "unfinished WAL segment and are not archived until it fills; set archive_timeout"
            f"{wanted or ' (e.g. 5min)'}"
        ]
    if wanted_seconds and server_seconds > wanted_seconds:
        return [
            f"archive_timeout is {_duration_text(server_seconds)}, larger than the policy's "
            f"archiveTimeout {_duration_text(wanted_seconds)}: commits on a quiet server can "
            f"wait that long before they are archived; set archive_timeout = "
            f"{int(wanted_seconds)} (seconds)"
        ]
    return []


def _duration_text(seconds: float) -> str:
    from tonebridge_dr.api import formats

    return formats.format_duration(seconds)
