"""The runner's command line: what every backup / restore Job runs.

```
tonebridge-dr --version
tonebridge-dr backup  <engine> --repo URL ... [--json]
tonebridge-dr restore <engine> --repo URL --backup ID|latest ... [--json]
tonebridge-dr restore-test <engine> --repo URL (--scratch-dsn DSN | --scratch-instance DIR) ...
tonebridge-dr backups list|show ID|verify ID|prune [...] --repo URL [--json]
tonebridge-dr backups archive --after DUR [--storage-class C] [--wal] [--dry-run] --repo URL
tonebridge-dr backups rehydrate ID [--days N] [--tier T] [--wait] --repo URL [--json]
tonebridge-dr backups gc [--grace DUR] [--dry-run] --repo URL [--json]
tonebridge-dr restore-tests list --repo URL [--json]
tonebridge-dr check --repo URL [--dsn DSN] [--archive-timeout DUR]
tonebridge-dr audit list --repo URL [--since T] [--operation OP] [--json]
tonebridge-dr audit prune --repo URL [--older-than 3y] [--dry-run] [--json]
tonebridge-dr wal-push PATH | wal-fetch NAME DEST | wal-stream | wal-status | wal-prune
tonebridge-dr replicate --repo URL --to URL [--to URL ...] [--no-wal] [--json]
tonebridge-dr wal-inspect --repo URL --from T1 [--to T2] [--database D] [--min-rows N] [--dsn DSN]
```

Audit trail: after `backup`, `restore`, `restore-test`, `backups prune`, `wal-prune` and
`audit prune` finish, successful or not, one record goes to `audit/` in the repository
(`repository/audit.py`, `_audited`). A record that cannot be written is a warning in
the log; it never changes the exit code.

Engines plug in through the registry (`engines/registry.py`: each engine's
`add_backup_arguments` / `run_backup`, `add_restore_arguments` / `run_restore`,
optionally `add_restore_test_arguments` / `run_restore_test`, each run returning
the `--json` result dict); a verb offers the engines the contract says implement
it, and naming another (or one whose module is not installed) is a usage error.

This is the one front door: `tonebridge-dr` (tonebridge_dr/cli.py) and `python -m
tonebridge_dr.runner.engines.postgres.wal` come here once the import-light fast
paths of wal-push / wal-fetch (wal/spool.py) had nothing to answer. wal-fetch is
handed to `spool.fetch_main` (restore_command's 0 / 1 / 255 are decided there);
wal-push, wal-prefetch and wal-pusher return their own exit codes (PostgreSQL
reads wal-push's; it prints its own `wal-push: NAME: ...` line).

Contract: `main(argv) -> int` never raises. `--repo` defaults to
$TONEBRIDGE_DR_REPO. Success prints the result (JSON with `--json`, else a
readable table) and exits 0. A failure prints exactly one line `error: <message>`
on stderr and exits with the DRError's code (2 usage, 3 repository config, 4
storage, 5 object missing, 6 backup missing, 7 integrity, 8 encryption, 9
source, 10 authentication, 11 target not empty, 12 tool, 13 conflict, 14 recovery
ended before its planned end, 15 restore-test checks failed, 16 restore-test RTO
missed, 17 backup archived (rehydrate it first); 1 for an unexpected error, 130/143
when interrupted/terminated). A failure
that carries a result (15, 16) prints it like a success before the error line. In a
pod the result or the error (added to a result it carries) also goes to
/dev/termination-log (or $TONEBRIDGE_DR_TERMINATION_LOG) for the operator. Logs
go to stderr with UTC timestamps, level from -v/-q or $TONEBRIDGE_DR_LOG_LEVEL
(default INFO); nothing is logged before input is validated, and secrets never are.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import datetime as dt
import gc
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, TextIO

import tonebridge_dr
from tonebridge_dr.runner import console, errors, result
from tonebridge_dr.runner.contract import runner_contract
from tonebridge_dr.runner.engines import registry

log = logging.getLogger("tonebridge_dr.runner.cli")

# At exit the collector would walk and free every object of the ~600 modules a backup
# loads (pydantic, psycopg, botocore): ~15 ms added to every Job, to free memory the OS
# takes back anyway. Frozen objects are skipped; files are closed by their `with` blocks
# and the standard streams are flushed by the interpreter regardless.
atexit.register(gc.freeze)


@dataclasses.dataclass
class Outcome:
    """What a command produced: `payload` for --json, `show` for humans, `summary` for the pod."""

    payload: Any
    show: Callable[[TextIO], None]
    summary: dict[str, Any]


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (the Job was deleted or timed out): stop tools, clean up, exit 143."""

    exit_code = runner_contract.EXIT_TERMINATED


# --- engines ------------------------------------------------------------------------------------
def _selected_engine(argv: Sequence[str]) -> tuple[str, str] | tuple[None, None]:
    """The verb (`backup`/`restore`) and the engine named after it in argv: only that
    engine's module is imported, and only its options for that verb are added (start-up
    time counts in every Job; an engine's imports can take 100 ms)."""
    for pos, token in enumerate(argv[:-1]):
        if token in registry.VERBS:
            following = argv[pos + 1]
            return (token, following) if following in registry.ENGINES else (None, None)
    return None, None


class _VersionAction(argparse.Action):
    """`--version`, looked up only when asked for (importlib.metadata costs ~20 ms)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.setdefault("help", "show program's version number and exit")
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        sys.stdout.write(f"tonebridge-dr {tonebridge_dr.__version__}\n")
        parser.exit()


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--repo",
        help="repository URL: s3://bucket/prefix or file:///path "
        f"(default ${runner_contract.ENV_REPO})",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _repo_arg(args: argparse.Namespace) -> str:
    from tonebridge_dr.runner.storage import repo_from_env

    return repo_from_env(args.repo)


def _mapping_outcome(data: dict[str, Any]) -> Outcome:
    return Outcome(data, lambda out: result.print_mapping(data, out), data)


def _engine_runner(
    run: Callable[[argparse.Namespace], dict[str, Any]],
    show: Callable[[dict[str, Any], TextIO], None] | None = None,
) -> Callable[..., Outcome]:
    def handler(args: argparse.Namespace) -> Outcome:
        data = run(args)
        if show is None:
            return _mapping_outcome(data)
        return Outcome(data, lambda out: show(data, out), data)

    return handler


# --- backups ------------------------------------------------------------------------------------
_LIST_COLUMNS = (
    ("id", "ID"),
    ("engine", "ENGINE"),
    ("method", "METHOD"),
    ("databases", "DATABASES"),
    ("schedule", "SCHEDULE"),
    ("tables", "TABLES"),
    ("started_at", "STARTED"),
    ("duration_seconds", "SECONDS"),
    ("size_bytes", "SIZE"),
    ("encrypted", "ENCRYPTED"),
    ("current_storage_class", "CLASS"),
)


#: Extra columns when the list has bucket snapshots: keys in the snapshot, the bytes of
#: content it uploaded, and the bytes it references without uploading them.
_BUCKET_COLUMNS = (
    ("bucket_objects", "OBJECTS"),
    ("new_size_bytes", "NEW"),
    ("deduplicated_size_bytes", "DEDUPLICATED"),
)


def _bucket_row(manifest: Any) -> dict[str, Any]:
    """A bucket snapshot's counts for `backups list` (nothing for other backups)."""
    summary = manifest.extra.get("bucket") if manifest.engine == "bucket" else None
    if not isinstance(summary, dict):
        return {}
    return {
        "bucket_objects": summary.get("objects"),
        "bucket_bytes": summary.get("bytes"),
        "new_size_bytes": summary.get("new_bytes"),
        "deduplicated_size_bytes": summary.get("deduplicated_bytes"),
        "bucket_source": summary.get("source"),
    }


def _open_repo(args: argparse.Namespace) -> Any:
    from tonebridge_dr.runner.repository.catalog import Repository

    return Repository.open(_repo_arg(args), create=False)


def _backups_list(args: argparse.Namespace) -> Outcome:
    from tonebridge_dr.runner.repository import tiering

    repo = _open_repo(args)
    manifests = repo.list_backups(engine=args.engine, method=args.method)
    objects = tiering.listing(repo) if manifests else {}
    # `storage_class` is the class the backup was written with; this is where its data
    # objects are now (one class, "mixed", or None for storage without classes).
    rows = [
        {**m.result(), "current_storage_class": tiering.class_of(m, objects), **_bucket_row(m)}
        for m in manifests
    ]
    summary = {"backups": len(rows), "latest": rows[-1]["id"] if rows else None}
    if not rows and args.engine is None and args.method is None:
        hint = _empty_repository_hint(repo)
        if hint:
            sys.stderr.write(f"backups list: {hint}\n")
    columns: tuple[tuple[str, str], ...] = _LIST_COLUMNS
    if any(m.engine == "bucket" for m in manifests):
        columns = (*_LIST_COLUMNS, *_BUCKET_COLUMNS)

    def show(out: TextIO) -> None:
        if rows:
            result.print_table(rows, columns, out)
        else:
            out.write("no backups\n")

    return Outcome(rows, show, summary)


#: How many keys `backups list` looks at to explain an empty answer.
_HINT_KEYS = 1000


def _empty_repository_hint(repo: Any) -> str | None:
    """Why a repository without backups may be the wrong URL: nothing stored at all, or
    backups of policies one folder further down (a BackupPolicy writes to
    `<spec.repository.url>/<policy name>`)."""
    from itertools import islice

    keys = [info.key for info in islice(repo.storage.list(""), _HINT_KEYS)]
    if not keys:
        return (f"nothing is stored under {repo.url}; a BackupPolicy's backups are under "
                "<spec.repository.url>/<policy name>, and the folder appears with its first "
                "backup")
    folders = sorted({key.split("/", 1)[0] for key in keys if "/base/" in key})
    if folders:
        shown = ", ".join(f"{repo.url.rstrip('/')}/{name}" for name in folders[:5])
        return f"no backups directly under {repo.url}, but there are in: {shown}"
    return None


def _backups_show(args: argparse.Namespace) -> Outcome:
    manifest = _open_repo(args).get(args.id)
    payload = manifest.model_dump(mode="json")

    def show(out: TextIO) -> None:
        result.print_mapping(manifest.result(), out)
        out.write("\n")
        result.print_table(
            [o.model_dump() for o in manifest.objects],
            (("name", "OBJECT"), ("size", "STORED"), ("raw_size", "RAW"), ("sha256", "SHA256")),
            out,
        )

    return Outcome(payload, show, manifest.result())


def _backups_verify(args: argparse.Namespace) -> Outcome:
    repo = _open_repo(args)
    report = repo.verify(args.id)
    manifest = repo.get(report.backup_id)
    if manifest.engine == "bucket":
        from tonebridge_dr.runner.engines.bucket import verify as bucket_verify

        if bucket_verify.is_snapshot(manifest) and report.ok:
            bucket_verify.verify_contents(repo, manifest, report)
    payload = report.result()
    if not report.ok:
        if args.json:
            result.print_json(payload, sys.stdout)
        report.raise_for_problems()
    return _mapping_outcome(payload)


def parse_duration(text: str) -> dt.timedelta:
    """`30d`, `12h`, `1h30m` (the CRDs' duration format) or plain seconds -> timedelta."""
    from tonebridge_dr.api import formats

    value = text.strip().lower()
    if value.isdigit():
        return dt.timedelta(seconds=int(value))
    try:
        return formats.parse_duration(value)
    except ValueError as exc:
        raise errors.UsageError(f"invalid duration: {exc}") from None


def _backups_prune(args: argparse.Namespace) -> Outcome:
    from tonebridge_dr.runner.repository.catalog import DEFAULT_ORPHAN_GRACE
    from tonebridge_dr.runner.repository.retention import RetentionPolicy

    counts = {
        "keep_last": args.keep_last,
        "hourly": args.keep_hourly,
        "daily": args.keep_daily,
        "weekly": args.keep_weekly,
        "monthly": args.keep_monthly,
        "yearly": args.keep_yearly,
    }
    if not any(counts.values()):
        raise errors.UsageError(
            "prune needs at least one of --keep-last/--keep-hourly/--keep-daily/--keep-weekly/"
            "--keep-monthly/--keep-yearly (a policy without rules would keep everything)"
        )
    min_age = parse_duration(args.min_age) if args.min_age else None
    grace = parse_duration(args.grace) if args.grace else DEFAULT_ORPHAN_GRACE
    policy = RetentionPolicy(**counts, min_age=min_age)
    repo = _open_repo(args)
    report = repo.prune(
        policy,
        now=dt.datetime.now(dt.UTC),
        dry_run=args.dry_run,
        orphan_grace=grace,
        engine=args.engine,
        method=args.method,
    )
    payload = report.result()
    wal_report = None
    if args.engine in (None, "postgres"):
        from tonebridge_dr.runner.engines.postgres.wal import retention as wal_retention

        wal_report = wal_retention.prune_wal(repo, dry_run=args.dry_run).result()
        payload["wal"] = wal_report

    def show(out: TextIO) -> None:
        verb = "would delete" if report.dry_run else "deleted"
        out.write(f"policy: {report.policy}\n")
        out.write(f"kept ({len(report.kept)}): {', '.join(report.kept) or '-'}\n")
        out.write(f"{verb} ({len(report.deleted)}): {', '.join(report.deleted) or '-'}\n")
        if report.orphans:
            out.write(f"incomplete folders {verb}: {', '.join(report.orphans)}\n")
        if report.locked:
            out.write(f"under S3 Object Lock (kept until it lapses): {', '.join(report.locked)}\n")
        if report.unreadable:
            out.write(f"unreadable manifests (left alone): {', '.join(report.unreadable)}\n")
        if report.leftovers:
            out.write(f"leftovers of interrupted writes {verb}: {', '.join(report.leftovers)}\n")
        if wal_report is not None:
            out.write(f"wal: {wal_report}\n")

    summary = {k: payload[k]
               for k in ("kept", "deleted", "orphans", "locked", "dry_run", "policy")}
    return Outcome(payload, show, summary)


def _backups_gc(args: argparse.Namespace) -> Outcome:
    from tonebridge_dr.runner.engines.bucket import gc

    grace = parse_duration(args.grace) if args.grace else gc.DEFAULT_GRACE
    report = gc.collect_garbage(_open_repo(args), grace=grace, dry_run=args.dry_run)
    payload = report.result()

    def show(out: TextIO) -> None:
        out.write(report.sentence() + "\n")

    return Outcome(payload, show, payload)


def _backups_archive(args: argparse.Namespace) -> Outcome:
    from tonebridge_dr.runner.repository import tiering

    after = parse_duration(args.after)
    repo = _open_repo(args)
    report = tiering.archive_backups(
        repo, after=after, storage_class=args.storage_class, now=dt.datetime.now(dt.UTC),
        dry_run=args.dry_run,
    )
    payload = report.result()
    wal_report: dict[str, Any] | None = None
    if args.wal:
        from tonebridge_dr.runner.engines.postgres.wal import tiering as wal_tiering

        wal_report = wal_tiering.archive_wal(
            repo, storage_class=args.storage_class, dry_run=args.dry_run
        ).result()
        payload["wal"] = wal_report

    def show(out: TextIO) -> None:
        verb = "would move" if report.dry_run else "moved"
        out.write(f"backups started before {payload['cut']} go to {report.storage_class}\n")
        out.write(
            f"{verb} {report.objects} objects ({report.bytes} bytes) of "
            f"{len(report.moved)} backups: {', '.join(report.moved) or '-'}\n"
        )
        out.write(f"already there ({len(report.already)}): {', '.join(report.already) or '-'}\n")
        if report.skipped:
            out.write(f"left in another archive class: {len(report.skipped)} objects\n")
        if report.missing:
            out.write(f"listed but not stored (see backups verify): {', '.join(report.missing)}\n")
        if wal_report is not None:
            out.write(
                f"wal: {verb} {wal_report['moved']} files ({wal_report['moved_bytes']} bytes)"
                f" before {wal_report['cut_segment'] or '-'}"
                f"{'; ' + wal_report['reason'] if wal_report['reason'] else ''}\n"
            )

    summary = {
        k: payload[k] for k in ("storage_class", "cut", "moved", "objects", "bytes", "dry_run")
    }
    return Outcome(payload, show, summary)


def _backups_rehydrate(args: argparse.Namespace) -> Outcome:
    from tonebridge_dr.runner.repository import tiering

    repo = _open_repo(args)
    manifest = repo.get(args.id)
    extra: list[Any] = []
    if manifest.engine == "postgres" and manifest.method == "physical":
        from tonebridge_dr.runner.engines.postgres.wal import tiering as wal_tiering

        extra = wal_tiering.restore_needs(repo, manifest)
    first = report = tiering.rehydrate(repo, manifest, extra, days=args.days, tier=args.tier)
    while args.wait and report.pending:
        # Checks again at once (a rehydration may be done already), then every --poll
        # seconds; asks again only for objects neither readable nor in progress (e.g. a
        # rehydrated copy that expired meanwhile).
        report = tiering.rehydrate(repo, manifest, extra, days=args.days, tier=args.tier)
        if report.pending:
            log.info(
                "backup %s: %d objects not readable yet; checking again in %.0f s",
                manifest.id, report.pending, args.poll,
            )
            time.sleep(args.poll)
    # What was asked for the first time, and where things stand now.
    payload = {**first.result(), "pending": report.pending, "ready": report.pending == 0}
    return Outcome(
        payload,
        lambda out: result.print_mapping({k: v for k, v in payload.items() if k != "keys"}, out),
        {k: v for k, v in payload.items() if k != "keys"},
    )


def _replicate(args: argparse.Namespace) -> Outcome:
    from tonebridge_dr.runner.engines import replicas

    payload = replicas.run(args, _repo_arg(args))

    def show(out: TextIO) -> None:
        for row in payload["replicas"]:
            result.print_mapping(row, out)

    return Outcome(payload, show, payload)


def _check_archive_command(command: str) -> dict[str, Any]:
    from tonebridge_dr.runner.engines.postgres.wal import setup

    report = setup.check_archive_command(command)
    if report["problems"]:
        raise errors.RepositoryConfigError(
            f"archive_command would fail for user {report['user']}: "
            + "; ".join(report["problems"])
        )
    return report


def _check(args: argparse.Namespace) -> Outcome:
    from tonebridge_dr.runner.repository.catalog import Repository

    archive: dict[str, Any] | None = None
    if args.archive_command is not None:
        archive = _check_archive_command(args.archive_command)
        if not (args.repo or os.environ.get(runner_contract.ENV_REPO)):
            return _mapping_outcome({"archive_command": archive})
    url = _repo_arg(args)
    repo = Repository.open(url, create=False)
    repo.storage.check()
    manifests = repo.list_backups()
    data: dict[str, Any] = {
        "repository": url,
        "repository_ok": True,
        "backups": len(manifests),
        "latest": manifests[-1].id if manifests else None,
    }
    if archive is not None:
        data["archive_command"] = archive
    dsn = args.dsn or os.environ.get(runner_contract.ENV_DSN)
    wanted = parse_duration(args.archive_timeout).total_seconds() if args.archive_timeout else None
    if dsn:
        from tonebridge_dr.runner.engines.postgres import commands as pg_commands

        database = pg_commands.check(dsn)
        data["database"] = database
        data["database_ok"] = True
        warnings = pg_commands.archive_timeout_warnings(
            database.get("archive_mode"), database.get("archive_timeout_seconds"), wanted
        )
        for warning in warnings:
            log.warning("%s", warning)
        data["warnings"] = warnings
    return _mapping_outcome(data)


# --- restore tests ------------------------------------------------------------------------------
_CHECK_COLUMNS = (
    ("name", "CHECK"),
    ("passed", "PASSED"),
    ("value", "VALUE"),
    ("message", "MESSAGE"),
)
_REPORT_COLUMNS = (
    ("started_at", "STARTED"),
    ("name", "NAME"),
    ("backup_id", "BACKUP"),
    ("method", "METHOD"),
    ("passed", "PASSED"),
    ("restore_duration_seconds", "SECONDS"),
    ("rto_met", "RTO MET"),
    ("error", "ERROR"),
    ("checksum", "CHECKSUM"),
)


def _show_restore_test(data: dict[str, Any], out: TextIO) -> None:
    """The result as `key  value` lines, then its checks as a table."""
    result.print_mapping({k: v for k, v in data.items() if k != "checks"}, out)
    checks = data.get("checks") or []
    out.write("\n")
    if checks:
        result.print_table(checks, _CHECK_COLUMNS, out)
    else:
        out.write("no checks\n")


_ENGINE_VERB_SHOW: dict[str, Callable[[dict[str, Any], TextIO], None]] = {
    "restore-test": _show_restore_test,
}


def _restore_tests_list(args: argparse.Namespace) -> Outcome:
    from tonebridge_dr.runner.repository import reports

    stored = reports.list_reports(_open_repo(args).storage)
    rows = [report.row() for report in stored]
    bad = [row["key"] for row in rows if row["checksum"] != reports.CHECKSUM_OK]
    for row in rows:
        if row["checksum"] != reports.CHECKSUM_OK:
            log.warning("restore test report %s: checksum %s", row["key"], row["checksum"])
    summary = {"reports": len(rows), "latest": rows[0]["key"] if rows else None, "unverified": bad}

    def show(out: TextIO) -> None:
        if rows:
            result.print_table(rows, _REPORT_COLUMNS, out)
        else:
            out.write("no restore test reports\n")

    return Outcome(rows, show, summary)


_DRILL_COLUMNS = (
    ("completed_at", "COMPLETED"),
    ("namespace", "NAMESPACE"),
    ("plan", "PLAN"),
    ("mode", "MODE"),
    ("phase", "PHASE"),
    ("elapsed_seconds", "SECONDS"),
    ("rto_met", "RTO MET"),
    ("checksum", "CHECKSUM"),
)


def _drills_list(args: argparse.Namespace) -> Outcome:
    from tonebridge_dr.runner.repository import reports

    stored = reports.list_reports(_open_repo(args).storage, prefix=reports.DRILL_PREFIX)
    rows = [report.drill_row() for report in stored]
    bad = [row["key"] for row in rows if row["checksum"] != reports.CHECKSUM_OK]
    for key in bad:
        log.warning("failover report %s: its checksum does not verify", key)
    summary = {"reports": len(rows), "latest": rows[0]["key"] if rows else None, "unverified": bad}

    def show(out: TextIO) -> None:
        if rows:
            result.print_table(rows, _DRILL_COLUMNS, out)
        else:
            out.write("no failover or drill reports\n")

    return Outcome(rows, show, summary)


# --- audit trail --------------------------------------------------------------------------------
_AUDIT_COLUMNS = (
    ("started_at", "STARTED"),
    ("operation", "OPERATION"),
    ("engine", "ENGINE"),
    ("outcome", "OUTCOME"),
    ("principal", "WHO"),
    ("backup_ids", "BACKUPS"),
    ("reason", "REASON"),
)
#: Payload keys that name the backups an operation made, read or deleted.
_BACKUP_ID_KEYS = ("id", "backup", "backup_id", "deleted")
#: Payload keys copied into a record's `details`: small, never secret (scrubbed anyway),
#: and no names from inside the database (an encrypted backup keeps its table names out of
#: the repository but for its manifest).
_DETAIL_KEYS = (
    "dry_run", "schedule", "name", "passed", "rto_met", "restore_duration_seconds",
    "target", "size_bytes", "deleted_count", "cutoff", "policy",
)
#: Where each verb's target comes from: options first, then the contract's variables.
_TARGET_OPTIONS = ("target_dsn", "target_url", "data_dir", "scratch_dsn", "scratch_instance",
                   "dsn", "url")
_TARGET_ENV = {
    ("backup", "postgres"): runner_contract.ENV_DSN,
    ("backup", "redis"): runner_contract.ENV_REDIS_URL,
    ("restore", "postgres"): runner_contract.ENV_TARGET_DSN,
    ("restore", "redis"): runner_contract.ENV_REDIS_TARGET_URL,
    ("restore-test", "postgres"): runner_contract.ENV_TARGET_DSN,
}


#: Seconds the audit record's write may take at most (S3 storage timeout).
_AUDIT_STORAGE_TIMEOUT = 30.0
#: Failures that leave no record: input rejected before any work (2), and a repository
#: that cannot be used at all (3), where no record could be stored either.
_NOT_AUDITED = (errors.UsageError, errors.RepositoryConfigError)


def _audit_operation(args: argparse.Namespace) -> str | None:
    """The audit operation of a parsed command line, None for verbs that change nothing."""
    verb, action = args.verb, getattr(args, "action", None)
    if verb in ("backup", "restore", "restore-test"):
        return str(verb)
    if (verb, action) == ("backups", "prune") or verb == "wal-prune":
        return "prune"
    if (verb, action) == ("audit", "prune"):
        return "audit-prune"
    return None


def _audit_ids(payload: Any) -> list[str]:
    if not isinstance(payload, dict):
        return []
    found: list[str] = []
    for key in _BACKUP_ID_KEYS:
        value = payload.get(key)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and item and item not in found:
                found.append(item)
    return found


def _audit_target(args: argparse.Namespace, operation: str) -> str | None:
    from tonebridge_dr.runner.repository import audit

    for option in _TARGET_OPTIONS:
        value = getattr(args, option, None)
        if value:
            return audit.describe_target(value)
    variable = _TARGET_ENV.get((operation, getattr(args, "engine", None) or ""))
    return audit.describe_target(os.environ.get(variable, "")) if variable else None


def _write_audit(
    args: argparse.Namespace,
    operation: str,
    started: dt.datetime,
    payload: Any,
    failure: BaseException | None,
) -> None:
    """Store the one audit record of this run; a failure to do so is only a warning."""
    try:
        from tonebridge_dr.runner.repository import audit
        from tonebridge_dr.runner.storage import open_storage

        url = _repo_arg(args)
        mapping = payload if isinstance(payload, dict) else {}
        details = {key: mapping[key] for key in _DETAIL_KEYS if key in mapping}
        if args.verb == "wal-prune":
            details["scope"] = "wal"
        reason = message = None
        code = runner_contract.EXIT_OK
        if failure is not None:
            if isinstance(failure, errors.DRError):
                code, reason = failure.exit_code, failure.reason
            elif isinstance(failure, Terminated):
                code, reason = runner_contract.EXIT_TERMINATED, "Cancelled"
            elif isinstance(failure, KeyboardInterrupt):
                code, reason = runner_contract.EXIT_INTERRUPTED, "Cancelled"
            else:
                code, reason = 1, "InternalError"
            message = " ".join((str(failure) or type(failure).__name__).split())
        record = audit.AuditRecord(
            operation=operation,
            started_at=started,
            finished_at=dt.datetime.now(dt.UTC),
            outcome=audit.FAILED if failure is not None else audit.SUCCEEDED,
            who=audit.identity(),
            engine=getattr(args, "engine", None) or (
                "postgres" if args.verb == "wal-prune" else None
            ),
            method=getattr(args, "method", None) or mapping.get("method"),
            backup_ids=tuple(_audit_ids(payload)),
            target=_audit_target(args, operation),
            repository=audit.describe_target(url),
            details=details,
            error_reason=reason,
            error_message=message,
            exit_code=code,
            tool_version=tonebridge_dr.__version__,
        )
        # One small write: after a storage failure it must not take a second full
        # --storage-timeout before the Job can report.
        timeout = os.environ.get(runner_contract.ENV_STORAGE_TIMEOUT)
        os.environ[runner_contract.ENV_STORAGE_TIMEOUT] = str(
            min(_AUDIT_STORAGE_TIMEOUT, float(timeout or _AUDIT_STORAGE_TIMEOUT))
        )
        try:
            audit.write_record(open_storage(url, create=False), record)
        finally:
            if timeout is None:
                os.environ.pop(runner_contract.ENV_STORAGE_TIMEOUT, None)
            else:
                os.environ[runner_contract.ENV_STORAGE_TIMEOUT] = timeout
    except Exception as exc:  # the operation's outcome stands whatever happens here
        log.warning(
            "could not write the audit record of %s: %s",
            operation, result.scrub(" ".join(str(exc).split()) or type(exc).__name__),
        )


def _run_audited(args: argparse.Namespace) -> Outcome:
    """Run the command; for audited verbs write its record after it finished (either way)."""
    operation = _audit_operation(args)
    if operation is None:
        outcome: Outcome = args.handler(args)
        return outcome
    started = dt.datetime.now(dt.UTC)
    try:
        outcome = args.handler(args)
    except BaseException as exc:
        if not isinstance(exc, _NOT_AUDITED):
            payload = exc.result if isinstance(exc, errors.DRError) else None
            _write_audit(args, operation, started, payload, exc)
        raise
    _write_audit(args, operation, started, outcome.payload, None)
    return outcome


def _parse_since(text: str, now: dt.datetime) -> dt.datetime:
    """`--since`: an ISO 8601 time (without offset: UTC) or an age such as 7d or 12h."""
    value = text.strip()
    if re.fullmatch(r"[0-9dhms]+", value.lower()) and not value.isdigit():
        return now - parse_duration(value)
    try:
        moment = dt.datetime.fromisoformat(value[:-1] + "+00:00" if value[-1:] in "Zz" else value)
    except ValueError:
        raise errors.UsageError(
            f"invalid --since {text!r}: use an ISO 8601 time (2026-01-31T00:00:00Z) or an "
            "age (7d, 12h)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _audit_list(args: argparse.Namespace) -> Outcome:
    from tonebridge_dr.runner.repository import audit

    since = _parse_since(args.since, dt.datetime.now(dt.UTC)) if args.since else None
    stored = audit.list_records(_open_repo(args).storage, since=since, operation=args.operation)
    rows = [record.row() for record in stored]
    summary = {"records": len(rows), "latest": rows[-1]["key"] if rows else None}

    def show(out: TextIO) -> None:
        if not rows:
            out.write("no audit records\n")
            return
        table = [
            {
                **row,
                "principal": (row.get("who") or {}).get("principal"),
                "backup_ids": ",".join(row.get("backup_ids") or []),
                "reason": (row.get("error") or {}).get("reason"),
            }
            for row in rows
        ]
        result.print_table(table, _AUDIT_COLUMNS, out)

    return Outcome(rows, show, summary)


def _audit_prune(args: argparse.Namespace) -> Outcome:
    from tonebridge_dr.runner.repository import audit

    report = audit.prune_audit(
        _open_repo(args),
        older_than=audit.parse_age(args.older_than),
        now=dt.datetime.now(dt.UTC),
        dry_run=args.dry_run,
    )
    payload = report.result()
    summary = {k: v for k, v in payload.items() if k != "deleted"}
    return Outcome(payload, lambda out: result.print_mapping(summary, out), summary)


# --- parser -------------------------------------------------------------------------------------
_ENGINE_VERB_HELP: dict[registry.Verb, str] = {
    "backup": "take a backup into a repository",
    "restore": "restore a backup from a repository",
    "restore-test": "restore a backup into scratch space, run checks, measure the RTO, and "
    "keep a report in the repository",
}


def _engines_for(verb: registry.Verb) -> tuple[str, ...]:
    """The engines that implement `verb`, as the contract says (a test checks the registry
    says the same)."""
    flag = verb.replace("-", "_")
    return tuple(spec.name for spec in runner_contract.ENGINES if getattr(spec, flag))


def _unsupported(verb: str, name: str, offered: Sequence[str]) -> errors.UsageError:
    spec = runner_contract.engine(name)
    title = spec.title if spec is not None else name
    return errors.UsageError(
        f"tonebridge-dr {verb} {name}: the {title} engine has no {verb} in this version "
        f"({verb} works for: {', '.join(offered) or 'none'})"
    )


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The full parser; engine options only for the engine `argv` selects."""
    parser = console.Parser(
        prog="tonebridge-dr", description="ToneBridge backup and disaster recovery"
    )
    parser.add_argument("--version", action=_VersionAction)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument(
        "--storage-timeout",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="the longest an S3 call may go without progress over all its attempts, so a "
        f"hung endpoint fails the run with exit 4 (default ${runner_contract.ENV_STORAGE_TIMEOUT}"
        " or 120)",
    )
    verbs = parser.add_subparsers(
        dest="verb", required=True, metavar="COMMAND", parser_class=console.Parser
    )
    selected_verb, selected = _selected_engine(argv)

    engine_parsers = {
        kind: verbs.add_parser(kind, help=_ENGINE_VERB_HELP[kind]).add_subparsers(
            dest="engine", required=True, metavar="ENGINE", parser_class=console.Parser
        )
        for kind in registry.VERBS
    }
    for kind in registry.VERBS:
        offered = _engines_for(kind)
        for name in registry.NAMES:
            if name not in offered:
                if (kind, name) == (selected_verb, selected):
                    raise _unsupported(kind, name, offered)
                continue
            # Only the selected engine is imported, and only for the selected verb.
            command = None
            if (kind, name) == (selected_verb, selected):
                command = registry.command(name, kind)
                if command is None:  # the engine's package is not installed
                    raise _unsupported(kind, name, [n for n in offered if n != name])
            sub = engine_parsers[kind].add_parser(name, help=f"{kind} {name}")
            _common(sub)
            if command is not None:
                command.add_arguments(sub)
                shown = _ENGINE_VERB_SHOW.get(kind)
                sub.set_defaults(handler=_engine_runner(command.run, shown), show_result=shown)

    backups = verbs.add_parser("backups", help="list, show, verify and prune backups")
    actions = backups.add_subparsers(
        dest="action", required=True, metavar="ACTION", parser_class=console.Parser
    )
    listing = actions.add_parser("list", help="complete backups, oldest first")
    _common(listing)
    for parser_ in (listing,):
        parser_.add_argument("--engine", choices=registry.NAMES, default=None)
        parser_.add_argument("--method", default=None)
    listing.set_defaults(handler=_backups_list)
    show = actions.add_parser("show", help="one backup's manifest")
    show.add_argument("id", help="backup id or 'latest'")
    _common(show)
    show.set_defaults(handler=_backups_show)
    verify = actions.add_parser("verify", help="re-read every object and check its SHA-256")
    verify.add_argument("id", help="backup id or 'latest'")
    _common(verify)
    verify.set_defaults(handler=_backups_verify)
    prune = actions.add_parser("prune", help="delete backups the retention rules do not keep")
    _common(prune)
    for flag in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
        prune.add_argument(f"--keep-{flag}", type=_count, default=0, metavar="N")
    prune.add_argument(
        "--min-age",
        default=None,
        metavar="DUR",
        help="never delete backups younger than this (e.g. 7d, 12h)",
    )
    prune.add_argument(
        "--grace",
        default=None,
        metavar="DUR",
        help="a folder without manifest, or a leftover of an interrupted write, is removed "
        "once untouched this long (default 15m; running backups renew their claim every "
        "minute)",
    )
    prune.add_argument("--dry-run", action="store_true", help="report, delete nothing")
    prune.add_argument("--engine", choices=registry.NAMES, default=None)
    prune.add_argument("--method", default=None)
    prune.set_defaults(handler=_backups_prune)
    gc_parser = actions.add_parser(
        "gc", help="delete content objects no bucket snapshot references (mark and sweep)"
    )
    _common(gc_parser)
    gc_parser.add_argument(
        "--grace", default=None, metavar="DUR",
        help="never delete content younger than this (default 15m); nothing is deleted "
        "while a snapshot runs",
    )
    gc_parser.add_argument("--dry-run", action="store_true", help="report, delete nothing")
    gc_parser.set_defaults(handler=_backups_gc)
    archive = actions.add_parser(
        "archive", help="move the data objects of old backups to an archive storage class"
    )
    _common(archive)
    archive.add_argument(
        "--after", required=True, metavar="DUR",
        help="archive backups that started more than this long ago (e.g. 30d)",
    )
    archive.add_argument(
        "--storage-class", default="GLACIER", metavar="CLASS",
        help="the S3 storage class to move to (default GLACIER; manifests stay STANDARD)",
    )
    archive.add_argument(
        "--wal", action="store_true",
        help="also move WAL older than the oldest physical backup outside the archive tier",
    )
    archive.add_argument("--dry-run", action="store_true", help="report, move nothing")
    archive.set_defaults(handler=_backups_archive)
    rehydrate = actions.add_parser(
        "rehydrate",
        help="request readable copies of an archived backup (and the WAL a physical one needs)",
    )
    rehydrate.add_argument("id", help="backup id or 'latest'")
    _common(rehydrate)
    rehydrate.add_argument(
        "--days", type=_positive, default=1, metavar="N",
        help="how long the rehydrated copies stay readable (default 1)",
    )
    rehydrate.add_argument(
        "--tier", choices=("Standard", "Bulk", "Expedited"), default="Standard",
        help="retrieval tier (default Standard: hours; Bulk: cheaper, slower)",
    )
    rehydrate.add_argument(
        "--wait", action="store_true", help="poll until every object is readable"
    )
    rehydrate.add_argument(
        "--poll", type=_seconds, default=60.0, metavar="SECONDS",
        help="with --wait: seconds between checks (default 60)",
    )
    rehydrate.set_defaults(handler=_backups_rehydrate)

    tests = verbs.add_parser(
        "restore-tests", help="the reports restore tests kept in the repository"
    )
    test_actions = tests.add_subparsers(
        dest="action", required=True, metavar="ACTION", parser_class=console.Parser
    )
    test_listing = test_actions.add_parser(
        "list", help="reports, newest first, each checked against its recorded SHA-256"
    )
    _common(test_listing)
    test_listing.set_defaults(handler=_restore_tests_list)

    drills = verbs.add_parser(
        "drills", help="reports of FailoverPlan runs (drills and real failovers)"
    )
    drill_actions = drills.add_subparsers(
        dest="action", required=True, metavar="ACTION", parser_class=console.Parser
    )
    drill_listing = drill_actions.add_parser(
        "list", help="reports, newest first, each checked against its recorded SHA-256"
    )
    _common(drill_listing)
    drill_listing.set_defaults(handler=_drills_list)

    audit_parser = verbs.add_parser(
        "audit", help="the audit trail: one record per backup, restore, prune and restore test"
    )
    audit_actions = audit_parser.add_subparsers(
        dest="action", required=True, metavar="ACTION", parser_class=console.Parser
    )
    audit_listing = audit_actions.add_parser("list", help="audit records, oldest first")
    _common(audit_listing)
    audit_listing.add_argument(
        "--since", default=None, metavar="T",
        help="records started at or after T: ISO 8601 (UTC without offset) or an age (7d)",
    )
    audit_listing.add_argument(
        "--operation", default=None,
        choices=("backup", "restore", "prune", "restore-test", "failover", "audit-prune"),
    )
    audit_listing.set_defaults(handler=_audit_list)
    audit_prune = audit_actions.add_parser(
        "prune", help="delete audit records older than the audit retention"
    )
    _common(audit_prune)
    audit_prune.add_argument(
        "--older-than", default="3y", metavar="AGE",
        help="delete records started longer ago than this: 3y (default), 400d, ...",
    )
    audit_prune.add_argument("--dry-run", action="store_true", help="report, delete nothing")
    audit_prune.set_defaults(handler=_audit_prune)

    _add_wal_verbs(verbs, argv)

    replicate = verbs.add_parser(
        "replicate", help="copy new backups and WAL to replica repositories (verified)"
    )
    _common(replicate)
    if "replicate" in argv:
        from tonebridge_dr.runner.engines import replicas

        replicas.add_arguments(replicate)
    replicate.set_defaults(handler=_replicate)

    check = verbs.add_parser("check", help="check the repository (and a database) can be used")
    _common(check)
    check.add_argument(
        "--dsn", help=f"also check this database (default ${runner_contract.ENV_DSN})"
    )
    check.add_argument(
        "--archive-command",
        default=None,
        metavar="CMD",
        help="check that this archive_command works for the user running the check (run "
        "it as the database server's OS user): executable, TONEBRIDGE_DR_REPO, repository "
        "writable",
    )
    check.add_argument(
        "--archive-timeout",
        default=None,
        metavar="DUR",
        help="the policy's walArchive.archiveTimeout (e.g. 5m): warn when the database "
        "archives with archive_command and its archive_timeout is 0 or larger",
    )
    check.set_defaults(handler=_check)
    return parser


_WAL_VERBS = {
    "wal-push": "archive one WAL file (archive_command = 'tonebridge-dr wal-push %%p')",
    "wal-fetch": "fetch one WAL file (restore_command = 'tonebridge-dr wal-fetch %%f %%p')",
    "wal-prefetch": "(internal) prefetch WAL segments for wal-fetch",
    "wal-pusher": "(internal) push WAL files ahead of wal-push",
    "wal-stream": "stream WAL with pg_receivewal into the repository",
    "wal-status": "the archive position: newest archived segment and its time",
    "wal-prune": "delete WAL no retained base backup needs",
    "wal-inspect": "find destructive events (DROP, TRUNCATE, mass DELETE/UPDATE) in archived "
    "WAL, with the transaction id to restore to just before each",
}
#: Verbs that return their own exit code: PostgreSQL reads wal-push's (and gets its own
#: `wal-push: NAME: ...` line); the internal ones log to their spool files.
_RAW_EXIT_VERBS = ("wal-push", "wal-prefetch", "wal-pusher")


def _add_wal_verbs(verbs: Any, argv: Sequence[str]) -> None:
    """The WAL verbs; their module is imported only when one of them is used.

    wal-fetch is listed for `--help` only: main() hands it to spool.fetch_main first.
    """
    selected = next((a for a in argv if a in _WAL_VERBS), None)
    for verb, help_text in _WAL_VERBS.items():
        sub = verbs.add_parser(verb, help=help_text)
        if verb != selected or verb == "wal-fetch":
            continue
        from tonebridge_dr.runner.engines.postgres.wal import commands as wal

        name = verb.replace("-", "_")
        getattr(wal, f"add_{name}_arguments")(sub)
        run = getattr(wal, f"run_{name}")
        if verb in _RAW_EXIT_VERBS:
            sub.set_defaults(handler=run, raw_exit=True)
        else:
            if not any(o == "--json" for a in sub._actions for o in a.option_strings):
                sub.add_argument("--json", action="store_true", help="print the result as JSON")
            show = getattr(wal, f"show_{name}", None)
            sub.set_defaults(handler=_engine_runner(run, show), show_result=show)


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if seconds < 1:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 1, got {value!r}")
    return seconds


def _verb_position(argv: Sequence[str]) -> int | None:
    """Where the verb is: the first word that is neither an option nor an option's value."""
    skip = False
    for pos, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg == "--storage-timeout":
            skip = True
        elif not arg.startswith("-"):
            return pos
    return None


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return int(value)


def _count(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value!r}")
    return int(value)


# --- signals ------------------------------------------------------------------------------------
def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


# --- main ---------------------------------------------------------------------------------------
def _fail(
    code: int,
    message: str,
    reason: str | None = None,
    *,
    payload: dict[str, Any] | None = None,
    args: argparse.Namespace | None = None,
) -> int:
    """`error: <message>` on stderr and in the termination message; returns `code`.

    `reason` defaults to the contract's reason for `code`. A failure with a `payload`
    (the command's result, e.g. a restore test's checks) prints it on stdout like a
    success would (JSON with `--json`: the payload plus the three error keys) and
    writes it into the termination message with the error keys added.
    """
    entry = runner_contract.exit_code(code)
    message = result.scrub(" ".join(message.split()))
    termination: runner_contract.TerminationError = {
        "error": reason or (entry.reason if entry else "InternalError"),
        "message": message,
        "exit_code": code,
    }
    full: dict[str, Any] = {**(payload or {}), **termination}
    if payload is not None and args is not None:
        if getattr(args, "json", False):
            result.print_json(full, sys.stdout)
        else:
            show = getattr(args, "show_result", None) or result.print_mapping
            show(payload, sys.stdout)
        sys.stdout.flush()
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    result.write_termination(full)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (never raises, never calls sys.exit)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verb_at = _verb_position(argv)
    if verb_at is not None and argv[verb_at] == "wal-fetch":
        # restore_command: its exit codes are PostgreSQL's contract, decided in one place.
        from tonebridge_dr.runner.engines.postgres.wal import spool

        return spool.fetch_main(argv[verb_at:])
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    handler: logging.Handler | None = None
    args: argparse.Namespace | None = None
    try:
        try:
            args = build_parser(argv).parse_args(argv)
        except SystemExit as exc:  # --help / --version printed and want to exit
            return int(exc.code or 0) if isinstance(exc.code, int | None) else 2
        handler = console.start_logging(verbose=args.verbose, quiet=args.quiet)
        if args.storage_timeout is not None:  # read where each S3 client is made
            os.environ[runner_contract.ENV_STORAGE_TIMEOUT] = str(args.storage_timeout)
        if getattr(args, "raw_exit", False):
            return int(args.handler(args))
        outcome = _run_audited(args)
        if getattr(args, "json", False):
            result.print_json(outcome.payload, sys.stdout)
        else:
            outcome.show(sys.stdout)
        sys.stdout.flush()
        result.write_termination(outcome.summary)
        return runner_contract.EXIT_OK
    except errors.DRError as exc:
        return _fail(
            exc.exit_code, str(exc) or type(exc).__name__, exc.reason, payload=exc.result, args=args
        )
    except Terminated:
        return _fail(
            runner_contract.EXIT_TERMINATED,
            "terminated by SIGTERM; work in progress was rolled back",
        )
    except KeyboardInterrupt:
        return _fail(
            runner_contract.EXIT_INTERRUPTED, "interrupted; work in progress was rolled back"
        )
    except Exception as exc:
        log.debug("unexpected error", exc_info=True)
        return _fail(1, f"internal error: {type(exc).__name__}: {exc}")
    finally:
        if handler is not None:
            console.stop_logging(handler)
        if in_main_thread and previous is not None:
            signal.signal(signal.SIGTERM, previous)
