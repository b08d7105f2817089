"""One restore test of a PostgreSQL backup: what is PostgreSQL's in the engine-independent run
of restoretest/run.py (the order, the RTO, the verdict and the report are there).

- choosing: the given id, else the newest complete backup of the method: a
  whole-database logical dump, or a physical base backup;
- restoring: logical -> create the scratch database (or initdb and start a scratch
  instance) and `pg_restore --single-transaction` into it (restore.py); physical ->
  pitr.restore_physical to the end of the archive, started and promoted;
- checking: checks.py, SQL read-only on the restored database.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.postgres import connection, dump, restore
from tonebridge_dr.runner.engines.postgres.restoretest import checks as checks_
from tonebridge_dr.runner.engines.postgres.restoretest.scratch import (
    ScratchDatabase,
    ScratchInstance,
)
from tonebridge_dr.runner.engines.postgres.wal import pitr
from tonebridge_dr.runner.engines.restoretest import run as shared
from tonebridge_dr.runner.engines.restoretest.run import RESULT_KEYS
from tonebridge_dr.runner.repository import ids
from tonebridge_dr.runner.repository.catalog import Repository
from tonebridge_dr.runner.repository.manifest import Manifest

__all__ = ["RESULT_KEYS", "TestOptions", "check_backup", "choose_backup", "run_restore_test"]

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
class _Plan:
    """The PostgreSQL part of a run (restoretest.run.Plan)."""

    engine = "postgres"

    def __init__(self, scratch: ScratchDatabase | ScratchInstance, options: TestOptions) -> None:
        self.scratch = scratch
        self.options = options
        self.checks = options.checks
        self.instance = isinstance(scratch, ScratchInstance)
        self._info: connection.ConnInfo | None = None

    def choose_backup(self, repo: Repository) -> tuple[Manifest, bytes]:
        return choose_backup(repo, self.options, self.instance)

    def check_backup(self, manifest: Manifest) -> None:
        check_backup(manifest, self.options, self.instance)

    def details(self, manifest: Manifest) -> dict[str, Any]:
        return {"database": None, "server_version": manifest.server_version}

    def restore(self, repo: Repository, manifest: Manifest, details: dict[str, Any]) -> None:
        self._info = _restore(repo, manifest, self.scratch, self.options, details)

    def run_checks(self) -> list[checks_.CheckResult]:
        assert self._info is not None
        return checks_.run_checks(self._info, self.checks, self.options.check_timeout)


def run_restore_test(
    repo: Repository, scratch: ScratchDatabase | ScratchInstance, options: TestOptions
) -> dict[str, Any]:
    """Test one PostgreSQL backup (restoretest/run.py); the result, or a DRError carrying it."""
    return shared.run_restore_test(repo, scratch, _Plan(scratch, options), options.name,
                                   options.rto)
