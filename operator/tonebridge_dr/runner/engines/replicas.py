"""`tonebridge-dr replicate --repo URL --to URL [--to URL ...]`: keep replicas of one
policy's repository folder in sync (geo-redundancy, spec 11.1; docs/replicas.md).

For each replica, in order: complete backups first (runner/repository/replication.py:
objects verified against the primary's manifest, the manifest written last), then the
WAL archive (engines/postgres/wal/replication.py). A replica that fails does not stop
the next one. The result lists every replica (`runner_contract.ReplicaResult`); when
any replica is missing something the run fails with the first error's exit code and
carries the result, so the operator records every replica either way.

The N-th `--to` replica (1-based) is reached with `TONEBRIDGE_DR_REPLICA_<N>_*`
(credentials, region, endpoint): never with the primary's region, endpoint,
server-side encryption or Object Lock settings.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
from typing import Any

from tonebridge_dr.runner import errors, result
from tonebridge_dr.runner.contract import runner_contract
from tonebridge_dr.runner.engines.postgres.wal import replication as wal_replication
from tonebridge_dr.runner.repository import audit, replication
from tonebridge_dr.runner.repository.catalog import Repository
from tonebridge_dr.runner.repository.manifest import format_time
from tonebridge_dr.runner.storage import S3Config, open_storage

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--to", action="append", required=True, metavar="URL", dest="replicas",
        help="a replica's folder for this policy (s3://bucket/prefix/<policy> or "
        f"file:///path); repeat for more (at most {runner_contract.REPLICA_LIMIT}); the "
        "N-th is reached with $TONEBRIDGE_DR_REPLICA_<N>_AWS_ACCESS_KEY_ID etc.",
    )
    parser.add_argument(
        "--no-wal", action="store_true", help="copy backups only, not the WAL archive"
    )


def replica_config(index: int, env: dict[str, str] | None = None) -> S3Config:
    """The S3 settings of the `index`-th replica (1-based) from its own variables."""
    source = os.environ if env is None else env

    def get(key: str) -> str | None:
        return source.get(runner_contract.replica_env(index, key)) or None

    return S3Config(
        access_key_id=get("AWS_ACCESS_KEY_ID"),
        secret_access_key=get("AWS_SECRET_ACCESS_KEY"),
        session_token=get("AWS_SESSION_TOKEN"),
        region=get("AWS_REGION"),
        endpoint_url=get("AWS_ENDPOINT_URL_S3"),
        from_env=False,
    )


def _newest_wal_time(repo: Repository) -> dt.datetime | None:
    newest = None
    for info in repo.storage.list("wal/"):
        if newest is None or info.last_modified > newest:
            newest = info.last_modified
    return newest


def _sync_one(source: Repository, url: str, index: int, copy_wal: bool,
              started: dt.datetime) -> tuple[dict[str, Any], errors.DRError | None]:
    described = audit.describe_target(url) or url
    row: dict[str, Any] = {
        "url": described, "backups_copied": 0, "backups_missing": 0, "wal_copied": 0,
        "wal_missing": 0, "bytes_copied": 0, "last_backup": None, "last_backup_time": None,
        "last_wal_segment": None, "synced_at": None, "lag_seconds": None, "error": None,
        "message": None,
    }
    try:
        target = Repository(open_storage(url, create=True, s3=replica_config(index)))
        target.storage.check()
        backups = replication.replicate_backups(source, target)
        row["backups_copied"] = len(backups.copied)
        row["backups_missing"] = len(backups.failed)
        row["bytes_copied"] = backups.bytes
        if backups.newest is not None:
            row["last_backup"] = backups.newest.id
            row["last_backup_time"] = format_time(backups.newest.finished_at,
                                                  timespec="seconds")
        problems, first = list(backups.problems), backups.first_error
        if copy_wal:
            wal = wal_replication.replicate_wal(source.storage, target.storage)
            row["wal_copied"] = wal.copied
            row["wal_missing"] = len(wal.failed)
            row["bytes_copied"] += wal.bytes
            row["last_wal_segment"] = wal.newest_segment
            problems += wal.problems
            first = first or wal.first_error
    except errors.DRError as exc:
        problems, first = [" ".join(str(exc).split())], exc
    primary_newest = [t for t in (_newest_backup_time(source),
                                  _newest_wal_time(source) if copy_wal else None) if t]
    if first is None:
        row["synced_at"] = format_time(started, timespec="seconds")
        row["lag_seconds"] = 0.0
    elif primary_newest and row["last_backup_time"] is not None:
        held = dt.datetime.fromisoformat(row["last_backup_time"].replace("Z", "+00:00"))
        row["lag_seconds"] = max(0.0, (max(primary_newest) - held).total_seconds())
    if first is not None:
        row["error"] = first.reason
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        row["message"] = result.scrub(f"{problems[0]}{more}")[:300]
    log.info("replica %s: %d backups and %d WAL objects copied%s", described,
             row["backups_copied"], row["wal_copied"],
             "" if first is None else f"; not in sync: {row['message']}")
    return row, first


def _newest_backup_time(repo: Repository) -> dt.datetime | None:
    newest = repo.latest()
    return newest.finished_at if newest is not None else None


def run(args: argparse.Namespace, url: str) -> dict[str, Any]:
    """Sync every replica; returns `{"replicas": [...]}` or raises the first replica's
    error carrying that result."""
    urls: list[str] = list(args.replicas)
    if len(urls) > runner_contract.REPLICA_LIMIT:
        raise errors.UsageError(
            f"at most {runner_contract.REPLICA_LIMIT} replicas, got {len(urls)}"
        )
    if len(set(urls)) != len(urls) or url.rstrip("/") in {u.rstrip("/") for u in urls}:
        raise errors.UsageError("every --to must differ from each other and from --repo")
    started = dt.datetime.now(dt.UTC)
    source = Repository.open(url, create=False)
    source.storage.check()
    rows: list[dict[str, Any]] = []
    first: errors.DRError | None = None
    for index, replica in enumerate(urls, start=1):
        row, error = _sync_one(source, replica, index, not args.no_wal, started)
        rows.append(row)
        first = first or error
    payload = {"replicas": rows}
    if first is not None:
        failed = [row for row in rows if row["error"]]
        error = errors.DRError(
            f"{len(failed)} of {len(rows)} replicas not in sync: {failed[0]['url']}: "
            f"{failed[0]['message']}",
            result=payload,
        )
        error.exit_code, error.reason = first.exit_code, first.reason
        raise error from first
    return payload
