"""kill -9 of a backup at random moments: logical (pg_dump), physical (pg_basebackup) and
Redis (replication SYNC) backups, into file:// and S3.

Each scenario first measures two unhurt backups (their wall time and, for PostgreSQL,
the bytes the server's progress views saw the tool move), then kills runs at moments
drawn from a seeded random source over that time, and after byte counts drawn over those
bytes (the moment the data flows). A few runs finish before their kill and must then be
complete. After every run: the killed runner's tools end by themselves and leave no
session on the server, every listed backup verifies, and a prune with its grace passed
removes every trace of the killed run (harness.py)."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults import harness
from tests.faults.conftest import PgSource, RedisSource

TIMED = 10
#: Redis has no progress view to count bytes by: its kills all come by timer.
REDIS_TIMED = 16
COUNTED = 8


def _kill_loop(
    ledger: harness.Ledger, rnd: random.Random, tmp_path: Path, repo_url: str,
    argv: list[str], env: dict[str, str], kind: str, server_idle: Callable[[str], None],
    progress: Callable[[], harness.Progress] | None = None, timed: int = TIMED,
) -> None:
    scheme = repo_url.split(":")[0]
    where = f"{kind} into {scheme}"

    def check(done: harness.Run, at: str) -> None:
        harness.check_backup_fault(ledger, repo_url, done, at, expected=[0])
        server_idle(at)

    typical = harness.measure(argv, env, tmp_path / "typical", ledger,
                              lambda done: check(done, f"{where}, unhurt"), progress)
    chosen = harness.faults(rnd, typical, harness.count(timed),
                            harness.count(COUNTED) if progress else 0)
    for n, fault in enumerate(chosen):
        done = harness.inject(fault, argv, env, tmp_path / f"fault-{n}", progress)
        if done.killed:
            ledger.fault(f"kill -9 {kind} ({scheme})")
        check(done, f"{where}, fault {n}: {fault}")


@pytest.mark.parametrize("repo_kind", ["file", "s3"])
@pytest.mark.parametrize("method", ["logical", "physical"])
def test_killed_postgres_backups_leave_only_complete_backups(
    pg_source: PgSource, repo_url: str, method: str, ledger: harness.Ledger,
    rnd: random.Random, tmp_path: Path,
) -> None:
    argv = ["backup", "postgres", "--dsn", pg_source.dsn, "--repo", repo_url,
            "--method", method, "--json"]

    def idle(where: str) -> None:
        harness.check_pg_idle(ledger, pg_source.server, where)

    def progress() -> harness.Progress:
        kind = "copy" if method == "logical" else "basebackup"
        return harness.Progress(pg_source.server, kind, pg_source.dbname)

    _kill_loop(ledger, rnd, tmp_path, repo_url, argv, pg_source.env(),
               f"backup postgres --method {method}", idle, progress)


@pytest.mark.parametrize("repo_kind", ["file", "s3"])
def test_killed_redis_backups_leave_only_complete_backups(
    redis_source: RedisSource, repo_url: str, ledger: harness.Ledger,
    rnd: random.Random, tmp_path: Path,
) -> None:
    argv = ["backup", "redis", "--url", redis_source.server.url(), "--repo", repo_url, "--json"]

    def idle(where: str) -> None:
        harness.check_redis_idle(ledger, redis_source.server, where)

    _kill_loop(ledger, rnd, tmp_path, repo_url, argv, redis_source.env(), "backup redis", idle,
               timed=REDIS_TIMED)
