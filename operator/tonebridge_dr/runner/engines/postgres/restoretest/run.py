"""One restore test: choose a backup, restore it into scratch space, run the checks, measure
the RTO, remove the scratch target, keep a report.

Order (each step only once the one before succeeded):
1. inspect the scratch target (scratch.py), before anything is read from the repository:
   a database with data or a non-empty folder is refused (TargetNotEmpty) untouched;
2. the clock starts; choose the backup (the given id, else the newest complete backup
   of the method: a whole-database logical dump, or a physical base backup) and hash
   its manifest.json;
3. restore it: logical -> create the scratch database (or initdb and start a scratch
   instance) and `pg_restore --single-transaction` into it (restore.py); physical ->
   pitr.restore_physical to the end of the archive, started and promoted;
4. run the checks (checks.py); the clock stops when the last one returned;
5. remove the scratch target (always: the `with` of scratch.py);
6. write the report into the repository (repository/reports.py), for every run that
   got as far as step 2, failed or not; then the verdict.

What the RTO measures (`restore_duration_seconds`): wall time on a monotonic clock from
the first request to the repository (step 2) until the last check returned (step 4):
choosing the backup, preparing the scratch target, reading and restoring every byte
(and for a physical backup, WAL replay and promotion), and the checks. Input
validation and the inspection before, the clean-up and the report after, are not in
it. Only a run whose checks passed has one; `rto_met` says whether it was within
`--rto` (null without it; false when the checks did not pass: such a restore
recovered nothing usable).

Verdict: 0 when every check passed and the RTO (if given) was met; ChecksFailed (15)
when a check failed; RTOMissed (16) when the checks passed too late. Those two, and
any other failure after step 2, carry the result (DRError.result), so the front door
prints it and puts it into the termination message.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tonebridge_dr
from tonebridge_dr.runner import errors
from tonebridge_dr.runner import result as results
from tonebridge_dr.runner.contract import runner_contract
from tonebridge_dr.runner.engines.postgres import connection, dump, restore
from tonebridge_dr.runner.engines.postgres.restoretest import checks as checks_
from tonebridge_dr.runner.engines.postgres.restoretest.scratch import (
    ScratchDatabase,
    ScratchInstance,
)
from tonebridge_dr.runner.engines.postgres.wal import pitr
from tonebridge_dr.runner.repository import ids, reports
from tonebridge_dr.runner.repository.catalog import Repository
from tonebridge_dr.runner.repository.manifest import Manifest, format_time

log = logging.getLogger(__name__)

#: Keys of the result, in this order (the contract's RestoreTestResult).
RESULT_KEYS: tuple[str, ...] = tuple(runner_contract.RestoreTestResult.__annotations__)
METHODS = ("logical", "physical")
#: The database a physical restore test checks when neither --database nor $PGDATABASE say.
DEFAULT_PHYSICAL_DATABASE = "postgres"


@dataclasses.dataclass(frozen=True)
class TestOptions:
    """What to test and how (the scratch target is passed on its own)."""

    __test__ = False  # not a pytest test class

    name: str
    backup_id: str | None = None  # None: the newest complete backup of the method
    method: str | None = None  # None: logical into a database; the newest of both otherwise
    checks: tuple[checks_.Check, ...] = ()
    rto: float | None = None  # seconds
    check_timeout: float = checks_.DEFAULT_TIMEOUT
    decrypt_key: Path | None = None
    passphrase: str | None = None
    database: str | None = None  # scratch instance: the database restored into / checked
    # (with a scratch database, --database is already in its connection info)


class _Clock:
    """The RTO clock: wall time of its start, monotonic seconds since, named marks."""

    def __init__(self) -> None:
        self.started = dt.datetime.now(dt.UTC)
        self._began = time.monotonic()
        self.marks: dict[str, float] = {}

    def elapsed(self) -> float:
        return time.monotonic() - self._began

    def mark(self, name: str) -> float:
        self.marks[name] = round(self.elapsed(), 3)
        return self.marks[name]


# --- choosing the backup ------------------------------------------------------------------------
def _restorable(manifest: Manifest) -> bool:
    if manifest.method == "logical":
        return manifest.object(dump.DATABASE_OBJECT) is not None
    return manifest.method == "physical"


def _newest(repo: Repository, method: str | None) -> Manifest:
    """The newest complete PostgreSQL backup a restore test can restore, of `method` (None:
    either): a whole-database logical dump or a physical base backup."""
    found = [
        m
        for m in repo.list_backups(engine="postgres", method=method)
        if _restorable(m)
    ]
    if not found:
        what = {
            "logical": "logical PostgreSQL backup of a whole database "
            f"(with {dump.DATABASE_OBJECT}; table backups cannot be restore-tested)",
            "physical": "physical PostgreSQL base backup",
        }.get(method or "", "whole-database logical or physical PostgreSQL backup")
        raise errors.BackupNotFound(
            f"no complete {what} in {repo.url}; `tonebridge-dr backups list` shows what exists"
        )
    return max(found, key=lambda m: ids.sort_key(m.id))


def choose_backup(
    repo: Repository, options: TestOptions, instance: bool
) -> tuple[Manifest, bytes]:
    """The backup to test and the exact bytes of its manifest.json (read, not yet checked:
    `check_backup` says whether it can be tested this way)."""
    wanted = options.backup_id if options.backup_id not in (None, "latest") else None
    if wanted is None:
        method = options.method or (None if instance else "logical")
        wanted = _newest(repo, method).id
    return repo.get_with_bytes(wanted)


def check_backup(manifest: Manifest, options: TestOptions, instance: bool) -> None:
    """UsageError (or EncryptionError) when `manifest` cannot be restore-tested this way."""
    if manifest.engine != "postgres":
        raise errors.UsageError(f"backup {manifest.id} is a {manifest.engine} backup, not postgres")
    if manifest.method not in METHODS:
        raise errors.UsageError(f"backup {manifest.id} has unknown method {manifest.method!r}")
    if options.method is not None and manifest.method != options.method:
        raise errors.UsageError(
            f"backup {manifest.id} is a {manifest.method} backup, not {options.method}"
        )
    if manifest.method == "physical" and not instance:
        raise errors.UsageError(
            f"backup {manifest.id} is a physical base backup: restore-testing it needs "
            "--scratch-instance DIR (a whole cluster restored, started and recovered)"
        )
    if not _restorable(manifest):
        raise errors.UsageError(
            f"backup {manifest.id} is a table backup; restore tests restore whole databases "
            f"(a backup with {dump.DATABASE_OBJECT})"
        )
    if manifest.method == "logical":
        restore.check_decrypt_key(manifest, options.decrypt_key)


# --- restoring --------------------------------------------------------------------------------
def _major(manifest: Manifest) -> int | None:
    head = (manifest.server_version or "").split(".", 1)[0]
    return int(head) if head.isdigit() else None


def _restore(
    repo: Repository,
    manifest: Manifest,
    scratch: ScratchDatabase | ScratchInstance,
    options: TestOptions,
    details: dict[str, Any],
) -> connection.ConnInfo:
    """Restore `manifest` into the scratch target; how to reach the restored database."""
    logical = restore.RestoreOptions(decrypt_key=options.decrypt_key)
    if isinstance(scratch, ScratchDatabase):
        target = scratch.prepare(manifest)
        details["database"] = scratch.info.dbname
        details["created_database"] = scratch.created
        restore.restore_database(repo, manifest, target, logical)
        return scratch.check_info()
    if manifest.method == "logical":
        dbname = options.database or (manifest.databases[0] if manifest.databases else "restored")
        details["database"] = dbname
        major = scratch.start_empty(_major(manifest))
        info = scratch.info(dbname)
        restore.create_database(info, manifest)
        restore.restore_database(repo, manifest, restore.Target(info, major, True), logical)
        return info
    dbname = options.database or os.environ.get("PGDATABASE") or DEFAULT_PHYSICAL_DATABASE
    user = os.environ.get("PGUSER") or scratch.user
    details["database"] = dbname
    recovered = pitr.restore_physical(
        repo,
        scratch.physical_options(
            manifest.id, dbname, user, options.decrypt_key, options.passphrase
        ),
    )
    details["recovery"] = {
        key: recovered.get(key)
        for key in (
            "recovery_timeline",
            "wal_from",
            "wal_to",
            "wal_segments",
            "recovered_to_lsn",
            "recovered_to_time",
            "extract_seconds",
            "recovery_seconds",
        )
    }
    return scratch.info(dbname, user=user)


# --- the run ---------------------------------------------------------------------------------
def run_restore_test(
    repo: Repository, scratch: ScratchDatabase | ScratchInstance, options: TestOptions
) -> dict[str, Any]:
    """Test one backup (module docstring); the result, or a DRError carrying it."""
    instance = isinstance(scratch, ScratchInstance)
    scratch.inspect()
    clock = _Clock()
    manifest, raw = choose_backup(repo, options, instance)
    out: dict[str, Any] = {
        "name": options.name,
        "engine": "postgres",
        "method": manifest.method,
        "backup_id": manifest.id,
        "backup_finished_at": format_time(manifest.finished_at, timespec="seconds"),
        "manifest_sha256": hashlib.sha256(raw).hexdigest(),
        "started_at": format_time(clock.started, timespec="milliseconds"),
        "completed_at": None,
        "restore_duration_seconds": None,
        "rto_seconds": options.rto,
        "rto_met": None,
        "passed": False,
        "checks": [],
        "report_key": None,
    }
    details: dict[str, Any] = {
        "scratch": scratch.kind,
        "target": scratch.describe(),
        "database": None,
        "server_version": manifest.server_version,
        "marks_seconds": clock.marks,
        "cleaned_up": False,
    }
    clock.mark("backup_chosen")
    try:
        check_backup(manifest, options, instance)
        log.info(
            "restore test %s: restoring %s backup %s into scratch %s %s",
            options.name,
            manifest.method,
            manifest.id,
            scratch.kind,
            scratch.describe(),
        )
        with scratch:
            info = _restore(repo, manifest, scratch, options, details)
            restored = clock.mark("restored")
            log.info(
                "restore test %s: restored in %.3f s; running %d checks",
                options.name,
                restored,
                len(options.checks),
            )
            outcomes = checks_.run_checks(info, options.checks, options.check_timeout)
            duration = clock.mark("checked")
            out["completed_at"] = format_time(dt.datetime.now(dt.UTC), timespec="milliseconds")
            out["checks"] = [outcome.result() for outcome in outcomes]
            out["passed"] = all(outcome.passed for outcome in outcomes)
            out["restore_duration_seconds"] = round(duration, 3)
            if options.rto is not None:
                out["rto_met"] = bool(out["passed"]) and duration <= options.rto
            for outcome in outcomes:
                verdict = "passed" if outcome.passed else f"FAILED: {outcome.message}"
                log.info("check %s %s", outcome.name, verdict)
    except BaseException as exc:
        details["cleaned_up"] = scratch.cleaned
        _failed(out, details, clock, options)
        _keep_report(repo, clock, out, details, _failure_fields(exc))
        if isinstance(exc, errors.DRError) and exc.result is None:
            exc.result = out
        raise
    details["cleaned_up"] = scratch.cleaned
    failure = _verdict(out, options)
    stored = _keep_report(repo, clock, out, details, _failure_fields(failure) if failure else None)
    if failure is not None:
        failure.result = out  # with the report's key
        raise failure
    if stored is not None:
        raise errors.StorageError(
            f"restore test {options.name} passed, but its report could not be stored: {stored}",
            result=out,
        )
    log.info("restore test %s passed in %.3f s", options.name, out["restore_duration_seconds"])
    return out


def _failed(
    out: dict[str, Any], details: dict[str, Any], clock: _Clock, options: TestOptions
) -> None:
    """A run that failed: when it did not get through its checks, it measured no RTO and
    did not pass (a clean-up failure after them keeps what they found)."""
    details["failed_after_seconds"] = round(clock.elapsed(), 3)
    if out["restore_duration_seconds"] is not None:
        return
    out["completed_at"] = format_time(dt.datetime.now(dt.UTC), timespec="milliseconds")
    out["passed"] = False
    if options.rto is not None:
        out["rto_met"] = False


def _failure_fields(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, errors.DRError):
        code, reason = exc.exit_code, exc.reason
    elif isinstance(exc, KeyboardInterrupt):  # the front door's Terminated (SIGTERM) is one
        code = int(getattr(exc, "exit_code", runner_contract.EXIT_INTERRUPTED))
        reason = "Cancelled"
    else:
        code, reason = 1, "InternalError"
    message = str(exc) or type(exc).__name__
    return {"error": reason, "message": results.scrub(" ".join(message.split())),
            "exit_code": code}


def _keep_report(
    repo: Repository,
    clock: _Clock,
    out: dict[str, Any],
    details: Mapping[str, Any],
    failure: Mapping[str, Any] | None,
) -> Exception | None:
    """Store the report (sets `out["report_key"]`); the error when that failed (logged)."""
    try:
        key = reports.free_key(repo.storage, clock.started, str(out["name"]))
        out["report_key"] = key
        payload = {
            **out,
            **(failure or {}),
            "tonebridge_dr_version": tonebridge_dr.__version__,
            "details": dict(details),
        }
        reports.write_report(repo.storage, key, payload)
    except Exception as exc:
        out["report_key"] = None
        log.error("could not store the restore test report: %s", exc)
        return exc
    return None


#: A ChecksFailed message names this many failed checks, each message cut to _SHORT.
_NAMED = 5
_SHORT = 160


def _short(text: str | None) -> str:
    text = text or "failed"
    return text if len(text) <= _SHORT else text[:_SHORT] + "..."


def _verdict(out: dict[str, Any], options: TestOptions) -> errors.DRError | None:
    """ChecksFailed or RTOMissed, or None when the test passed."""
    failed = [c for c in out["checks"] if not c["passed"]]
    if failed:
        named = "; ".join(f"{c['name']} ({_short(c['message'])})" for c in failed[:_NAMED])
        if len(failed) > _NAMED:
            named += f"; and {len(failed) - _NAMED} more"
        return errors.ChecksFailed(
            f"restore test {options.name}: {len(failed)} of {len(out['checks'])} checks failed: "
            f"{named}"
        )
    if out["rto_met"] is False:
        return errors.RTOMissed(
            f"restore test {options.name}: the checks passed after "
            f"{out['restore_duration_seconds']:.3f} s, longer than the RTO of "
            f"{options.rto:g} s"
        )
    return None
