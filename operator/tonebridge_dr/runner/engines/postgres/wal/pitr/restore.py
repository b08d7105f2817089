"""The restore: plan, extract, configure recovery, and run the server to promotion.

The data directory must be empty (or `overwrite`). `base.tar` is
streamed from the repository (SHA-256 verified; a bad object removes what
was extracted); an incremental backup is assembled from its chain instead
(`assemble`: every chunk verified before it is written), then
`recovery.signal` is written and `postgresql.auto.conf` gets restore_command
(`wal-fetch --repo URL --allow-partial %f %p`), the target,
`recovery_target_action = 'promote'`, `recovery_target_timeline`,
`archive_mode = 'off'` unless `keep_archiving` (a restored copy must not
archive a new timeline into the source's archive unless asked to), and the
`settings` given (`--set`: meant to stay, for every later server too).

With `start`, the server is started as `run_as` (the data directory is
chowned to it when we are root), recovery is awaited until the server is
promoted (`pg_controldata` says "in production"; plus `pg_is_in_recovery()`
when a DSN is given); `stop_after` then shuts it down cleanly and checks that
pg_control says "shut down".

What the result reports (the RestoreRequest status shows the first two):
- `recovered_to_lsn`: the switch point of the new timeline in its history file
  (`pg_wal/<tli>.history`, written by PostgreSQL when it promotes): the end of
  the last WAL record replayed, i.e. the same as `pg_last_wal_replay_lsn()`.
  Not `pg_current_wal_lsn()` of the promoted server, nor the checkpoint in
  pg_control: both include what the server wrote itself after recovery (the
  end-of-recovery and shutdown checkpoints on the new timeline).
- `recovered_to_time`: the commit (or abort) time of the last transaction
  replayed, `pg_last_xact_replay_timestamp()`: read with the DSN when one is
  given, else from the server log line PostgreSQL writes with the same value at
  the end of recovery ("last completed transaction was at log time ..."). None
  when recovery replayed no transaction (the data is as of the backup's end).
- `server_version_major`: from the restored data directory's PG_VERSION;
  `server_version`: the full version the backup was taken from.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.postgres.wal import fetch
from tonebridge_dr.runner.engines.postgres.wal import tiering as wal_tiering
from tonebridge_dr.runner.engines.postgres.wal.pitr import assemble
from tonebridge_dr.runner.engines.postgres.wal.pitr.base import extract_base, prepare_dir
from tonebridge_dr.runner.engines.postgres.wal.pitr.plan import (
    BASE_OBJECT,
    RestoreOptions,
    plan_restore,
)
from tonebridge_dr.runner.engines.postgres.wal.pitr.server import (
    Server,
    chown_tree,
    controldata,
    last_transaction_time,
    newest_history,
    private_socket_dir,
    remove_socket_dir,
    switch_point,
    user,
)
from tonebridge_dr.runner.engines.postgres.wal.pitr.settings import (
    check_settings,
    conf_quote,
    dsn_endpoint,
    needs_private_socket_dir,
    neutralise_recovery_settings,
    recovery_settings,
    run_settings,
)
from tonebridge_dr.runner.engines.postgres.wal.pitr.verification import (
    mark_ended_early,
    recovery_shortfall,
    verify_sql,
)
from tonebridge_dr.runner.repository import tiering
from tonebridge_dr.runner.repository.catalog import Repository
from tonebridge_dr.runner.repository.manifest import Manifest, format_time

log = logging.getLogger(__name__)


def _major(backup: Manifest) -> int | None:
    version = backup.server_version or ""
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else None


def _data_dir_major(data_dir: Path) -> int | None:
    """The major version of the cluster in `data_dir` (its PG_VERSION file)."""
    try:
        head = (data_dir / "PG_VERSION").read_text().strip().split(".", 1)[0]
    except OSError:
        return None
    return int(head) if head.isdigit() else None


def restore_physical(repo: Repository, options: RestoreOptions) -> dict[str, Any]:
    """Plan, then restore into `options.data_dir` (and start/await/stop when asked)."""
    check_settings(options.settings)
    if options.stop_after and not options.start:
        raise errors.UsageError("--stop-after needs --start")
    dsn_endpoint(options.dsn)  # a malformed DSN fails before anything is written
    account = user(options.run_as) if options.start or os.geteuid() == 0 else None
    data_dir = options.data_dir.absolute()
    plan = plan_restore(repo, options)
    # An archived base backup (or WAL) fails here, before the data directory is touched.
    tiering.require_readable(repo, plan.backup, wal_tiering.restore_needs(repo, plan.backup))
    if plan.backup.object(BASE_OBJECT) is None:
        for member in assemble.chain_of(repo, plan.backup)[:-1]:
            tiering.require_readable(repo, member)
    log.info(
        "restoring backup %s to %s (timeline %d, WAL %s .. %s)",
        plan.backup.id,
        options.target.describe(),
        plan.timeline,
        plan.first_segment or "-",
        plan.last_segment or "-",
    )
    created = prepare_dir(data_dir, options.overwrite)
    began = time.monotonic()
    try:
        if plan.backup.object(BASE_OBJECT) is None:  # an incremental: assembled from its chain
            raw_bytes = assemble.assemble(
                repo, plan.backup, data_dir,
                decrypt_key=options.decrypt_key, passphrase=options.passphrase,
            )
        else:
            stream = repo.read_object(
                plan.backup,
                BASE_OBJECT,
                decrypt_key=options.decrypt_key,
                passphrase=options.passphrase,
            )
            raw_bytes = extract_base(stream, data_dir)
    except BaseException:
        for entry in list(data_dir.iterdir()) if data_dir.is_dir() else []:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        if created:
            shutil.rmtree(data_dir, ignore_errors=True)
        raise
    extracted_seconds = time.monotonic() - began
    for stale in ("postmaster.pid", "postmaster.opts", "standby.signal"):
        (data_dir / stale).unlink(missing_ok=True)
    (data_dir / "pg_wal" / "archive_status").mkdir(mode=0o700, parents=True, exist_ok=True)
    settings = recovery_settings(repo.url, options, plan)
    with (data_dir / "postgresql.auto.conf").open("a") as conf:
        conf.write(
            f"\n# tonebridge-dr: point-in-time restore of backup {plan.backup.id} to "
            f"{options.target.describe()}\n"
        )
        for key, value in settings.items():
            conf.write(f"{key} = {conf_quote(value)}\n")
    (data_dir / "recovery.signal").write_bytes(b"")
    if account is not None:
        chown_tree(data_dir, account)
    os.chmod(data_dir, 0o700)
    major = _data_dir_major(data_dir) or _major(plan.backup)
    result: dict[str, Any] = {
        **plan.result(),
        "engine": "postgres",
        "method": "physical",
        "data_dir": str(data_dir),
        "target": options.target.result(),
        "server_version": plan.backup.server_version,
        "server_version_major": major,
        "restored_bytes": raw_bytes,
        "extract_seconds": round(extracted_seconds, 3),
        "started": False,
        "stopped": False,
        "recovered_to_time": None,
        "recovered_to_lsn": None,
    }
    if not options.start:
        return result
    log_file = options.log_file or data_dir / "log" / "tonebridge-dr-restore.log"
    private_dir = private_socket_dir(account) if needs_private_socket_dir(options) else None
    run = run_settings(options, private_dir)
    server = Server(data_dir, major, account, repo.url, log_file, run)
    recovery_began = time.monotonic()
    try:
        server.start(options.timeout)
        result["started"] = True
        server.await_promotion(options.timeout)
    except BaseException:
        remove_socket_dir(private_dir, data_dir)
        raise
    finally:  # every way out: a failed start leaves recovery.signal, which keeps it alive
        fetch.stop_prefetcher(data_dir / "pg_wal")
    result["recovery_seconds"] = round(time.monotonic() - recovery_began, 3)
    control = controldata(data_dir, major)
    state = control.get("Database cluster state", "")
    if state != "in production":
        raise errors.ToolError(f"the restored server is not in production after recovery: {state}")
    result["in_recovery"] = False
    result["new_timeline"] = newest_history(data_dir / "pg_wal")
    result["recovered_to_lsn"] = switch_point(data_dir / "pg_wal", result["new_timeline"])
    short = recovery_shortfall(plan, options.target, result["recovered_to_lsn"])
    if short is not None:
        mark_ended_early(server, data_dir, short)
    replayed_at = last_transaction_time(log_file, server.log_offset)
    if options.dsn:
        checked = verify_sql(options.dsn)
        if checked["in_recovery"]:
            raise errors.ToolError("the restored server still reports pg_is_in_recovery() = true")
        replayed_at = checked.pop("last_replayed_at") or replayed_at
        result.update(checked)
    result["recovered_to_time"] = format_time(replayed_at) if replayed_at else None
    result["removed_settings"] = neutralise_recovery_settings(data_dir)
    if options.stop_after:
        server.stop()
        remove_socket_dir(private_dir, data_dir)
        result["stopped"] = True
    elif private_dir is not None:
        result["socket_dir"] = str(private_dir)  # the running server's; remove it after
    return result
