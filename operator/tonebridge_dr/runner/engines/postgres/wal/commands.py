"""Command-line verbs of WAL archiving and physical restore.

For the runner CLI (runner/cli.py, the one front door: parsing, logging, signals,
exit codes, termination message): each verb has `add_<verb>_arguments(parser)` and
`run_<verb>(args)`, like every engine's commands module:

| verb                      | run returns     | errors                                      |
|---------------------------|-----------------|---------------------------------------------|
| `wal-push PATH`           | exit code (int) | handled inside: stderr line, DRError's code |
| `wal-fetch NAME DEST`     | see below       | `fetch_slow` 0 / 1 not found, raises the rest |
| `wal-stream --dsn --repo` | result dict     | raises DRError                              |
| `wal-status --repo`       | result dict     | raises DRError                              |
| `wal-prune --repo`        | result dict     | raises DRError                              |
| `wal-inspect --repo --from --to` | result dict (`show_wal_inspect` prints it) | raises DRError |
| `restore postgres --data-dir ...` (physical) | result dict | raises DRError          |
| `wal-prefetch ...` (internal, started by wal-fetch) | exit code | logged |
| `wal-pusher ...` (internal, started by wal-push) | exit code | logged |

wal-fetch's one front door is `spool.fetch_main` (every entry point calls it): it
maps whatever `fetch_slow` raises to 255. wal-push and wal-fetch keep their exit
codes to themselves because PostgreSQL reads them (see fetch.py: an ordinary
error code would look like "not found" to recovery). Call `spool.fast_main(argv)`
before importing anything heavy to keep their fast paths fast (the entry points
do: tonebridge_dr/cli.py, wal/__main__.py, wal/spool.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tonebridge_dr.runner import console, errors
from tonebridge_dr.runner.contract import runner_contract
from tonebridge_dr.runner.engines.postgres.wal import spool

log = logging.getLogger("tonebridge_dr.runner.engines.postgres.wal")

REPO_ENV = runner_contract.ENV_REPO


def _repo(value: str | None) -> str:
    from tonebridge_dr.runner.storage import repo_from_env

    return repo_from_env(value)


def _fail(verb: str, message: str) -> None:
    sys.stderr.write(f"{verb}: {' '.join(message.split())}\n")
    sys.stderr.flush()


def _add_repo(parser: argparse.ArgumentParser) -> None:
    if not _has_option(parser, "--repo"):
        parser.add_argument("--repo", help=f"repository URL (default ${REPO_ENV})")


def _has_option(parser: argparse.ArgumentParser, option: str) -> bool:
    return option in parser._option_string_actions


# -- wal-push ----------------------------------------------------------------------------


def add_wal_push_arguments(parser: argparse.ArgumentParser) -> None:
    _add_repo(parser)
    parser.add_argument("path", metavar="PATH", help="the WAL file (archive_command's %%p)")


def run_wal_push(args: argparse.Namespace) -> int:
    """archive_command: 0 once PATH is durable in the repository, else non-zero."""
    repo = args.repo or os.environ.get(REPO_ENV, "")
    if spool.try_push_fast(args.path, repo):
        return 0
    try:
        from tonebridge_dr.runner.engines.postgres.wal import archive

        settings = archive.PushSettings.from_env(_repo(args.repo))
        archive.push(args.path, settings)
    except errors.DRError as exc:
        _fail("wal-push", f"{Path(args.path).name}: {exc}")
        return exc.exit_code
    return 0


# -- wal-pusher (internal) -------------------------------------------------------------


def add_wal_pusher_arguments(parser: argparse.ArgumentParser) -> None:
    _add_repo(parser)
    parser.add_argument("--wal-dir", type=Path, required=True, help="the server's pg_wal")
    parser.add_argument(
        "--lock-fd", type=int, help="an inherited fd that already holds the pusher lock"
    )


def run_wal_pusher(args: argparse.Namespace) -> int:
    """The background pusher of `wal-push` (archive.py); holds the spool's pusher lock."""
    from tonebridge_dr.runner.engines.postgres.wal import archive

    if runner_contract.ENV_LOG_LEVEL not in os.environ:
        logging.getLogger("tonebridge_dr").setLevel(logging.WARNING)  # pusher.log stays small
    lock_fd = args.lock_fd
    if lock_fd is None:
        lock_fd = spool.take_pusher_lock(str(args.wal_dir))
        if lock_fd is None:
            return 0  # another pusher runs
    try:
        settings = archive.PushSettings.from_env(_repo(args.repo))
        spool.describe_pusher(lock_fd, settings.repo_url, os.getpid())
        linger = archive.linger_from_env()
        return archive.run_background(args.wal_dir, settings, linger=linger)
    except errors.DRError as exc:
        log.warning("background pusher stopped: %s", exc)
        return exc.exit_code
    finally:
        os.close(lock_fd)


# -- wal-fetch ---------------------------------------------------------------------------


def add_wal_fetch_arguments(parser: argparse.ArgumentParser) -> None:
    _add_repo(parser)
    if not _has_option(parser, "--decrypt-key"):
        parser.add_argument(
            "--decrypt-key",
            type=Path,
            metavar="PRIVKEY_FILE",
            help="OpenPGP secret key file for an encrypted archive",
        )
    parser.add_argument(
        "--allow-partial",
        action="store_true",
        help="answer a never-completed segment with its .partial",
    )
    parser.add_argument("--no-prefetch", action="store_true", help="do not prefetch")
    parser.add_argument("name", metavar="NAME", help="WAL file name (restore_command's %%f)")
    parser.add_argument("dest", metavar="DEST", help="where to write it (restore_command's %%p)")


def fetch_slow(argv: Sequence[str]) -> int:
    """wal-fetch once the spool had nothing: 0 delivered, 1 not in the archive; raises the rest.

    Only `spool.fetch_main` calls this: it turns whatever is raised here into 255.
    """
    from tonebridge_dr.runner.engines.postgres.wal import catalog

    parser = console.Parser(prog="tonebridge-dr wal-fetch")
    add_wal_fetch_arguments(parser)
    args = parser.parse_args(list(argv))
    handler = console.start_logging()
    try:
        _deliver(args)
    except catalog.WalNotFound as exc:
        _fail("wal-fetch", str(exc))
        return spool.FETCH_NOT_FOUND
    finally:
        console.stop_logging(handler)
    return spool.FETCH_DELIVERED


def _deliver(args: argparse.Namespace) -> None:
    from tonebridge_dr.runner.engines.postgres.wal import fetch

    repo = _repo(args.repo)
    settings = fetch.FetchSettings.from_env(
        repo, decrypt_key=args.decrypt_key, allow_partial=args.allow_partial
    )
    if args.no_prefetch:
        settings = dataclasses.replace(settings, window=0, parallel=1)
    elif settings.window > 0:
        folder = spool.prefetch_dir(os.path.dirname(os.path.abspath(args.dest)))
        if os.path.isdir(folder):
            spool.note_wanted(folder, args.name)
            if spool.take_prefetched(folder, args.name, os.path.abspath(args.dest), repo):
                return
    fetch.fetch(args.name, args.dest, settings)


# -- wal-prefetch (internal) -----------------------------------------------------------


def add_wal_prefetch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spool", type=Path, required=True)
    _add_repo(parser)
    parser.add_argument("--start", required=True)
    parser.add_argument("--segment-size", type=int, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--decrypt-key", type=Path)
    parser.add_argument("--allow-partial", action="store_true")
    parser.add_argument(
        "--lock-fd", type=int, help="an inherited fd that already holds the prefetcher lock"
    )


def run_wal_prefetch(args: argparse.Namespace) -> int:
    from tonebridge_dr.runner.engines.postgres.wal import fetch

    settings = fetch.FetchSettings(
        _repo(args.repo),
        args.decrypt_key,
        args.allow_partial,
        max(1, args.window),
        max(1, args.parallel),
    )
    return fetch.run_prefetcher(
        args.spool,
        settings,
        start=args.start,
        segment_size=args.segment_size,
        data_dir=args.data_dir,
        idle_exit=fetch.idle_exit_from_env(),
        lock_fd=args.lock_fd,
    )


# -- wal-stream -------------------------------------------------------------------------


def add_wal_stream_arguments(parser: argparse.ArgumentParser) -> None:
    _add_repo(parser)
    parser.add_argument(
        "--dsn",
        help="libpq DSN of the server (default $TONEBRIDGE_DR_DSN); password from PGPASSWORD",
    )
    parser.add_argument(
        "--slot", default=None, help="physical replication slot (default tonebridge_dr)"
    )
    parser.add_argument(
        "--status-interval",
        type=int,
        default=10,
        metavar="SECONDS",
        help="how often pg_receivewal reports its position (default 10)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where pg_receivewal writes (default $TMPDIR/tonebridge-dr-wal-stream-<slot>)",
    )
    parser.add_argument(
        "--archive-timeout",
        default=None,
        metavar="DUR",
        help="upload the current partial segment when it changed and the last upload is "
        "this long ago, e.g. 5m, 60s, 60 (seconds); 0: only at the stop (default "
        "$TONEBRIDGE_DR_WAL_ARCHIVE_TIMEOUT or 5m)",
    )


def run_wal_stream(args: argparse.Namespace) -> dict[str, Any]:
    """Stream until SIGTERM/SIGINT; returns what was uploaded."""
    import tempfile

    from tonebridge_dr.runner.engines.postgres import connection
    from tonebridge_dr.runner.engines.postgres.wal import archive, stream

    dsn = connection.dsn_from(args.dsn)
    connection.ConnInfo.parse(dsn)
    slot = stream.check_slot_name(args.slot or stream.DEFAULT_SLOT)
    work_dir = args.work_dir or Path(tempfile.gettempdir()) / f"tonebridge-dr-wal-stream-{slot}"
    settings = stream.StreamSettings(
        dsn=dsn,
        slot=slot,
        work_dir=work_dir,
        push=archive.PushSettings.from_env(_repo(args.repo)),
        status_interval=max(1, args.status_interval),
        archive_timeout=stream.archive_timeout_seconds(args.archive_timeout),
    )
    stop = threading.Event()
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        stats = stream.WalStreamer(settings, stop).run()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return {
        "slot": slot,
        "uploaded": len(stats.uploaded),
        "last_uploaded": stats.uploaded[-1] if stats.uploaded else None,
        "partial": stats.partial,
        "partial_uploads": stats.partial_uploads,
        "restarts": stats.restarts,
        "archive_timeout_seconds": settings.archive_timeout,
    }


# -- wal-status / wal-prune -----------------------------------------------------------


def add_wal_status_arguments(parser: argparse.ArgumentParser) -> None:
    _add_repo(parser)


def run_wal_status(args: argparse.Namespace) -> dict[str, Any]:
    from tonebridge_dr.runner.engines.postgres.wal import catalog

    return catalog.archive_status(_repo(args.repo)).result()


def add_wal_prune_arguments(parser: argparse.ArgumentParser) -> None:
    _add_repo(parser)
    parser.add_argument("--dry-run", action="store_true", help="report, delete nothing")


def run_wal_prune(args: argparse.Namespace) -> dict[str, Any]:
    from tonebridge_dr.runner.engines.postgres.wal import retention
    from tonebridge_dr.runner.repository.catalog import Repository

    repo = Repository.open(_repo(args.repo), create=False)
    return retention.prune_wal(repo, dry_run=args.dry_run).result()


# -- wal-inspect ------------------------------------------------------------------------


def add_wal_inspect_arguments(parser: argparse.ArgumentParser) -> None:
    from tonebridge_dr.runner.engines.postgres.wal import inspection, waldump

    _add_repo(parser)
    parser.add_argument(
        "--from", dest="start", required=True, metavar="T1",
        help="events committed at or after this time (ISO 8601; without offset: UTC)",
    )
    parser.add_argument(
        "--to", dest="end", default=None, metavar="T2",
        help="... and at or before this time (default: now)",
    )
    parser.add_argument(
        "--database", default=None, metavar="D",
        help="only events in this database: an OID, or a name with --dsn",
    )
    parser.add_argument(
        "--min-rows", type=int, default=waldump.DEFAULT_MIN_ROWS, metavar="N",
        help="report DELETE/UPDATE transactions touching more than N rows "
        f"(default {waldump.DEFAULT_MIN_ROWS})",
    )
    parser.add_argument(
        "--dsn", default=None,
        help="a server (live, or restored to before the event) to map OIDs and filenodes "
        "to names; password from PGPASSWORD",
    )
    parser.add_argument(
        "--timeline", type=int, default=None,
        help="follow this timeline's history (default: the newest in the archive)",
    )
    parser.add_argument(
        "--batch", type=int, default=inspection.DEFAULT_BATCH, metavar="N",
        help=f"segments downloaded at a time (disk: N+1 segments; default "
        f"{inspection.DEFAULT_BATCH})",
    )
    if not _has_option(parser, "--decrypt-key"):
        parser.add_argument(
            "--decrypt-key", type=Path, metavar="PRIVKEY_FILE",
            help="OpenPGP secret key file for an encrypted archive",
        )


def run_wal_inspect(args: argparse.Namespace) -> dict[str, Any]:
    import datetime as dt

    from tonebridge_dr.runner.engines.postgres.wal import inspection, pitr
    from tonebridge_dr.runner.repository.catalog import Repository

    if args.min_rows < 0:
        raise errors.UsageError("--min-rows must be 0 or more")
    start = pitr.parse_time(args.start)
    end = pitr.parse_time(args.end) if args.end else dt.datetime.now(dt.UTC)
    options = inspection.InspectOptions(
        start=start, end=end, min_rows=args.min_rows, database=args.database,
        dsn=args.dsn, timeline=args.timeline, batch=args.batch, decrypt_key=args.decrypt_key,
        passphrase=os.environ.get(runner_contract.ENV_DECRYPT_PASSPHRASE) or None,
    )
    repo = Repository.open(_repo(args.repo), create=False)
    return inspection.inspect(repo, options)


_INSPECT_COLUMNS = (
    ("commit_time", "COMMIT TIME"),
    ("xid", "XID"),
    ("kind", "EVENT"),
    ("database", "DATABASE"),
    ("relations", "RELATIONS"),
    ("rows", "ROWS"),
    ("commit_lsn", "COMMIT LSN"),
    ("restore", "RESTORE WITH"),
)


def show_wal_inspect(data: dict[str, Any], out: Any) -> None:
    """The events as a table, then what was read and how to map numbers to names."""
    from tonebridge_dr.runner import result

    rows = []
    for event in data["events"]:
        dbs = [name or str(oid) for name, oid in zip(
            event["databases"], event["database_oids"], strict=True)]
        rels = []
        for rel in event["relations"]:
            label = rel["name"] or (
                f"oid {rel['oid']}" if rel["filenode"] is None else f"filenode {rel['filenode']}"
            )
            rels.append(label + (f" ({rel['rows']})" if rel["rows"] is not None else ""))
        restore = ", ".join(f"{k}: {v}" for k, v in event["restore"].items())
        rows.append({**event, "database": ",".join(dbs), "relations": ", ".join(rels) or "-",
                     "restore": restore})
    if rows:
        result.print_table(rows, _INSPECT_COLUMNS, out)
    else:
        out.write("no destructive events\n")
    out.write(
        f"\nread {data['segments']} segments ({data['first_segment'] or '-'} .. "
        f"{data['last_segment'] or '-'}), {data['records']} records, "
        f"{data['from']} .. {data['to']}; DELETE/UPDATE counted above {data['min_rows']} rows\n"
    )
    if data.get("hint"):
        out.write(f"names: {data['hint']}\n")


# -- restore postgres (physical) ------------------------------------------------------


def add_restore_arguments(parser: argparse.ArgumentParser) -> None:
    """Physical-restore options; options the logical restore already has are not repeated."""
    _add_repo(parser)
    if not _has_option(parser, "--backup"):
        parser.add_argument(
            "--backup",
            default=None,
            help="base backup id (default: the newest that ends before the target)",
        )
    if not _has_option(parser, "--decrypt-key"):
        parser.add_argument(
            "--decrypt-key",
            type=Path,
            metavar="PRIVKEY_FILE",
            help="OpenPGP secret key file for an encrypted backup and archive",
        )
    parser.add_argument("--data-dir", type=Path, help="empty folder to restore the cluster into")
    parser.add_argument(
        "--target-time",
        metavar="TS",
        help="recover up to this time (ISO 8601; without offset: UTC)",
    )
    parser.add_argument("--target-lsn", metavar="LSN", help="recover up to this WAL position")
    parser.add_argument("--latest", action="store_true", help="recover all archived WAL")
    parser.add_argument(
        "--before-xid", metavar="XID", default=None,
        help="recover up to just before this transaction (recovery_target_xid, not "
        "inclusive): the xid `wal-inspect` shows for a DROP TABLE, TRUNCATE or mass DELETE",
    )
    parser.add_argument(
        "--before-time", metavar="TS", default=None,
        help="with --before-xid: its commit time as wal-inspect shows it; picks the newest "
        "base backup that ended before it (without it: the oldest base backup)",
    )
    parser.add_argument(
        "--target-timeline", type=int, default=None, help="timeline to follow (default: the latest)"
    )
    parser.add_argument("--overwrite", action="store_true", help="empty a non-empty --data-dir")
    parser.add_argument(
        "--start",
        action="store_true",
        help="start the server, wait until recovery ended and it is promoted",
    )
    parser.add_argument(
        "--stop-after",
        action="store_true",
        help="with --start: shut the server down cleanly afterwards",
    )
    parser.add_argument(
        "--run-as",
        default="postgres",
        help="OS user owning and running the cluster when run as root",
    )
    parser.add_argument(
        "--keep-archiving",
        action="store_true",
        help="leave archive_mode on in the restored cluster (it archives its "
        "new timeline into the same repository)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra postgresql.auto.conf setting, e.g. port=5433; repeatable",
    )
    parser.add_argument(
        "--verify-dsn",
        default=None,
        help="with --start: DSN to confirm pg_is_in_recovery() is false",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=3600.0,
        help="seconds to wait for recovery with --start (default 3600)",
    )


def is_physical_restore(args: argparse.Namespace) -> bool:
    """True when restore arguments ask for a physical restore (a data directory)."""
    return getattr(args, "data_dir", None) is not None


def run_restore(args: argparse.Namespace) -> dict[str, Any]:
    from tonebridge_dr.runner.engines.postgres.wal import pitr
    from tonebridge_dr.runner.repository.catalog import Repository

    if args.data_dir is None:
        raise errors.UsageError("a physical restore needs --data-dir")
    target = pitr.parse_target(
        args.target_time, args.target_lsn, args.latest, args.before_xid, args.before_time
    )
    settings: dict[str, str] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise errors.UsageError(f"--set wants NAME=VALUE, got {item!r}")
        settings[key.strip()] = value
    backup = args.backup if args.backup not in (None, "latest") else None
    options = pitr.RestoreOptions(
        data_dir=args.data_dir,
        target=target,
        backup_id=backup,
        target_timeline=args.target_timeline,
        overwrite=args.overwrite,
        start=args.start,
        stop_after=args.stop_after,
        run_as=args.run_as,
        decrypt_key=args.decrypt_key,
        passphrase=os.environ.get(runner_contract.ENV_DECRYPT_PASSPHRASE) or None,
        keep_archiving=args.keep_archiving,
        settings=settings,
        dsn=args.verify_dsn,
        timeout=args.timeout,
    )
    repo = Repository.open(_repo(args.repo), create=False)
    return pitr.restore_physical(repo, options)

