"""The S3 endpoint stops answering (moto_server stopped with SIGSTOP) or dies (SIGKILL) in
the middle of backups and WAL pushes, with TONEBRIDGE_DR_STORAGE_TIMEOUT=4.

Each round starts four runners at once (logical, physical and Redis backups, a wal-push
of a 16 MiB segment, each into its own prefix of one bucket) and hurts the server at a
random moment of the round. Every runner must end by itself within a bound of the
deadline, with exit 0 or 4 (never 1), leave no session on PostgreSQL or Redis, and a
backup it reported is listed and verifies. After a pause the server answers again:
every listed backup verifies, a retried wal-push works and a prune with its grace passed
leaves no unfinished upload, claim or folder without manifest. A killed server loses its
memory (moto keeps none): a run that ends before the kill is checked the moment it ends,
one that ends after it only for its exit code, its deadline and the servers' sessions."""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults import harness
from tests.faults.conftest import PgSource, RedisSource
from tests.fixtures import s3 as s3_fixtures

TIMEOUT = 4
#: How long after the fault a runner may still run: the deadline over all attempts of the
#: call that hangs, the calls after it, and start-up on a busy machine.
SETTLED = 4 * TIMEOUT + 10
ROUNDS = 3
#: Faults fall in the first SPAN of an unhurt round, while most of its runners still run.
SPAN = 0.7


@dataclasses.dataclass
class Member:
    """One runner of a round: what it runs and where it stores."""

    kind: str
    url: str
    argv: list[str]
    env: dict[str, str]
    segment: Path | None = None


class Round:
    """The runners of one round against one moto server, started together."""

    def __init__(self, members: list[Member], workdir: Path) -> None:
        self.members = members
        self.runners = [harness.Runner(m.argv, m.env, workdir / m.kind.replace(" ", "-"))
                        for m in members]
        self.began = time.monotonic()

    def running(self) -> list[Member]:
        return [m for m, r in zip(self.members, self.runners, strict=True) if r.proc.poll() is None]

    def wait_until(self, moment: float, on_exit: Callable[[Member, harness.Run], None]) -> None:
        """Until `moment` (monotonic), hand every runner that ends to `on_exit`."""
        seen: set[int] = set()
        while time.monotonic() < moment and len(seen) < len(self.runners):
            for n, runner in enumerate(self.runners):
                if n not in seen and runner.proc.poll() is not None:
                    seen.add(n)
                    on_exit(self.members[n], runner.finish())
            time.sleep(0.005)

    def finish(self) -> Iterator[tuple[Member, harness.Run, float]]:
        """Each member's run and when it ended (monotonic)."""
        for member, runner in zip(self.members, self.runners, strict=True):
            done = runner.finish(bound=harness.RUN_BOUND)
            yield member, done, runner.began + done.elapsed


@pytest.fixture
def crew(pg_source: PgSource, redis_source: RedisSource, tmp_path: Path,
         rnd: random.Random) -> Callable[[str], list[Member]]:
    """The four runners of a round against the S3 endpoint `endpoint` (one bucket each)."""
    segments = harness.Segments(tmp_path / "pg_wal", rnd)

    def members(endpoint: str) -> list[Member]:
        bucket = s3_fixtures.new_bucket(endpoint)
        aws = {
            "AWS_ENDPOINT_URL_S3": endpoint, "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true", "NO_PROXY": "127.0.0.1,localhost",
            "TONEBRIDGE_DR_STORAGE_TIMEOUT": str(TIMEOUT),
        }
        url = f"s3://{bucket}"
        segment = segments.next()
        return [
            Member("backup postgres --method logical", f"{url}/logical",
                   ["backup", "postgres", "--dsn", pg_source.dsn, "--repo", f"{url}/logical",
                    "--json"], pg_source.env(**aws)),
            Member("backup postgres --method physical", f"{url}/physical",
                   ["backup", "postgres", "--dsn", pg_source.dsn, "--repo", f"{url}/physical",
                    "--method", "physical", "--json"], pg_source.env(**aws)),
            Member("backup redis", f"{url}/redis",
                   ["backup", "redis", "--url", redis_source.server.url(), "--repo",
                    f"{url}/redis", "--json"], redis_source.env(**aws)),
            Member("wal-push", f"{url}/wal", ["wal-push", "--repo", f"{url}/wal", str(segment)],
                   harness.runner_env(TONEBRIDGE_DR_WAL_PUSH_AHEAD="1", **aws), segment),
        ]

    return members


def _aim(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """Our own Repository calls go to `endpoint` too, with the same deadline."""
    s3_fixtures.s3_env(monkeypatch, endpoint)
    monkeypatch.setenv("TONEBRIDGE_DR_STORAGE_TIMEOUT", str(TIMEOUT))


def _check_run(ledger: harness.Ledger, member: Member, done: harness.Run, ended: float,
               hurt: float | None, where: str) -> None:
    """Exit 0 or 4, and within SETTLED of the fault."""
    harness.check_exit(ledger, done, where, expected=[0, 4])
    if hurt is not None:
        ledger.check(ended - hurt <= SETTLED, lambda: f"{where}: ran {ended - hurt:.1f} s after "
                     f"the fault (bound {SETTLED} s): {done.describe()}")


def _check_servers(ledger: harness.Ledger, pg_source: PgSource, redis_source: RedisSource,
                   where: str) -> None:
    harness.check_pg_idle(ledger, pg_source.server, where)
    harness.check_redis_idle(ledger, redis_source.server, where)


def _typical(ledger: harness.Ledger, crew: Callable[[str], list[Member]], endpoint: str,
             tmp_path: Path) -> float:
    """Wall time of an unhurt round, every runner exiting 0."""
    round_ = Round(crew(endpoint), tmp_path / "typical")
    longest = 0.0
    for member, done, _ended in round_.finish():
        ledger.check(done.code == 0, f"an unhurt run failed: {done.describe()}")
        if member.segment is None:
            harness.check_committed(ledger, member.url, done, f"{member.kind}, unhurt")
        longest = max(longest, done.elapsed)
    return longest


def test_a_paused_s3_server_fails_runs_in_time_and_leaves_what_prune_removes(
    start_moto: Any, crew: Callable[[str], list[Member]], pg_source: PgSource,
    redis_source: RedisSource, monkeypatch: pytest.MonkeyPatch, ledger: harness.Ledger,
    rnd: random.Random, tmp_path: Path,
) -> None:
    server = start_moto()
    _aim(monkeypatch, server.url)
    typical = _typical(ledger, crew, server.url, tmp_path)
    for n, delay in enumerate(harness.spread(rnd, typical * SPAN, harness.count(ROUNDS))):
        round_ = Round(crew(server.url), tmp_path / f"round-{n}")
        time.sleep(max(0.0, round_.began + delay - time.monotonic()))
        for member in round_.running():
            ledger.fault(f"S3 paused: {member.kind}")
        os.kill(server.process.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            ended = list(round_.finish())
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        for member, done, at in ended:
            where = f"{member.kind}, round {n}: S3 paused at {delay:.3f} s"
            _check_run(ledger, member, done, at, stopped, where)
            if member.segment is None:
                harness.check_repository(ledger, member.url, done, where)
                continue
            harness.check_wal_push(ledger, member.url, member.segment, done, member.env,
                                   tmp_path / f"round-{n}" / "retry", where)
        _check_servers(ledger, pg_source, redis_source, f"round {n}")


def test_a_killed_s3_server_fails_runs_in_time(
    start_moto: Any, crew: Callable[[str], list[Member]], pg_source: PgSource,
    redis_source: RedisSource, monkeypatch: pytest.MonkeyPatch, ledger: harness.Ledger,
    rnd: random.Random, tmp_path: Path,
) -> None:
    server = start_moto()
    _aim(monkeypatch, server.url)
    typical = _typical(ledger, crew, server.url, tmp_path)
    early: dict[str, harness.Run] = {}  # runs of this round that ended before the kill
    for n, delay in enumerate(harness.spread(rnd, typical * SPAN, harness.count(ROUNDS))):
        round_ = Round(crew(server.url), tmp_path / f"round-{n}")
        early.clear()

        def exited(member: Member, done: harness.Run, n: int = n) -> None:
            where = f"{member.kind}, round {n}: ended before the kill"
            early[member.kind] = done
            _check_run(ledger, member, done, time.monotonic(), None, where)
            if member.segment is not None:
                harness.check_archived(ledger, member.url, member.segment, where,
                                       pushed=done.code == 0)
            else:
                harness.check_repository(ledger, member.url, done, where)

        round_.wait_until(round_.began + delay, exited)
        for member in round_.running():
            ledger.fault(f"S3 killed: {member.kind}")
        server.stop()  # SIGKILL
        killed = time.monotonic()
        for member, done, at in round_.finish():
            if member.kind not in early:
                _check_run(ledger, member, done, at, killed,
                           f"{member.kind}, round {n}: S3 killed at {delay:.3f} s")
        _check_servers(ledger, pg_source, redis_source, f"round {n}")
        server = start_moto()
        _aim(monkeypatch, server.url)
