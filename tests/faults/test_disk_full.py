"""A full disk under a file:// repository: a real tmpfs (we are root) whose free space a
ballast file cuts to a random amount below (and a little above) what one backup needs,
so that ENOSPC strikes at a different point of every run: the claim, an object, the
manifest. Logical, physical and Redis backups and wal-push.

A run on a disk too small for its backup must exit 4 (storage), never 1 and never 0; a
run that exits 0 has a listed backup that verifies. A failed write removes its temp file
at once (the storage contract), no tool or session outlives the run, and after the
ballast is gone a prune leaves nothing of the failed run and a retried wal-push works."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults import harness
from tests.faults.conftest import PgSource, RedisSource
from tests.fixtures.filesystems import tiny_filesystem
from tonebridge_dr.runner.engines.postgres.wal import catalog, naming
from tonebridge_dr.runner.storage import open_storage

FAULTS = 10
#: Free space is drawn from [0, SPREAD x what one backup needs]: most runs cannot fit.
SPREAD = 1.25
#: Below this share of what a backup needs, the run cannot succeed (page rounding aside).
CANNOT_FIT = 0.95


class Disk:
    """A tmpfs with the repository in `repo/` and a ballast file that takes the rest."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.repo = root / "repo"
        self.repo.mkdir()
        self.ballast = root / "ballast"

    @property
    def url(self) -> str:
        return self.repo.as_uri()

    def free(self) -> int:
        stat = os.statvfs(self.root)
        return stat.f_bavail * stat.f_frsize

    def leave_free(self, size: int) -> None:
        self.release()
        take = self.free() - size
        if take > 0:
            fd = os.open(self.ballast, os.O_CREAT | os.O_WRONLY, 0o600)
            try:
                os.posix_fallocate(fd, 0, take)
            finally:
                os.close(fd)

    def release(self) -> None:
        self.ballast.unlink(missing_ok=True)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    with tiny_filesystem(tmp_path / "fs", size="64m") as root:
        yield Disk(root)


def _disk_full_loop(
    ledger: harness.Ledger, rnd: random.Random, tmp_path: Path, disk: Disk, kind: str,
    argv: Callable[[], list[str]], env: dict[str, str], check: Callable[[harness.Run, str], None],
) -> None:
    before = disk.free()
    needed = 0

    def unhurt(done: harness.Run) -> None:
        nonlocal needed
        needed = before - disk.free()  # one complete backup (or segment), in pages
        check(done, f"{kind}, disk not full")

    harness.measure(argv, env, tmp_path / "typical", ledger, unhurt, runs=1)
    for n, free in enumerate(harness.spread(rnd, needed * SPREAD, harness.count(FAULTS))):
        where = f"{kind}, fault {n}: {round(free)} of {needed} bytes free"
        disk.leave_free(round(free))
        try:
            done = harness.run(argv(), env, tmp_path / f"fault-{n}")
        finally:
            disk.release()
        cannot_fit = free < needed * CANNOT_FIT
        if cannot_fit:
            ledger.fault(f"disk full: {kind}")
        harness.check_exit(ledger, done, where, expected=[4] if cannot_fit else [0, 4])
        if done.code == 4:
            ledger.check("No space left on device" in done.err,
                         f"{where}: the error does not say why: {done.describe()}")
        parts = [str(p) for p in disk.repo.rglob(".*.part")]
        ledger.check(not parts, f"{where}: a failed write kept {parts}")
        check(done, where)


@pytest.mark.parametrize("method", ["logical", "physical"])
def test_postgres_backups_on_a_full_disk_fail_with_exit_4_and_leave_nothing(
    pg_source: PgSource, disk: Disk, method: str, ledger: harness.Ledger, rnd: random.Random,
    tmp_path: Path,
) -> None:
    argv = ["backup", "postgres", "--dsn", pg_source.dsn, "--repo", disk.url,
            "--method", method, "--json"]

    def check(done: harness.Run, where: str) -> None:
        harness.check_repository(ledger, disk.url, done, where)
        harness.check_pg_idle(ledger, pg_source.server, where)

    _disk_full_loop(ledger, rnd, tmp_path, disk, f"backup postgres --method {method}",
                    lambda: argv, pg_source.env(), check)


def test_redis_backups_on_a_full_disk_fail_with_exit_4_and_leave_nothing(
    redis_source: RedisSource, disk: Disk, ledger: harness.Ledger, rnd: random.Random,
    tmp_path: Path,
) -> None:
    argv = ["backup", "redis", "--url", redis_source.server.url(), "--repo", disk.url, "--json"]

    def check(done: harness.Run, where: str) -> None:
        harness.check_repository(ledger, disk.url, done, where)
        harness.check_redis_idle(ledger, redis_source.server, where)

    _disk_full_loop(ledger, rnd, tmp_path, disk, "backup redis", lambda: argv,
                    redis_source.env(), check)


def test_wal_pushes_on_a_full_disk_fail_with_exit_4_and_a_retry_works(
    disk: Disk, ledger: harness.Ledger, rnd: random.Random, tmp_path: Path,
) -> None:
    segments = harness.Segments(tmp_path / "pg_wal", rnd)
    env = harness.runner_env(TONEBRIDGE_DR_WAL_PUSH_AHEAD="1")
    current: list[Path] = []

    def argv() -> list[str]:
        current[:] = [segments.next()]
        return ["wal-push", "--repo", disk.url, str(current[0])]

    def check(done: harness.Run, where: str) -> None:
        path = current[0]
        harness.check_wal_push(ledger, disk.url, path, done, env, tmp_path / "retry", where)
        path.unlink()
        archive = catalog.WalArchive(open_storage(disk.url))
        for obj in archive.objects_for(naming.parse(path.name)):  # room for the next one
            archive.storage.delete(obj.key)

    _disk_full_loop(ledger, rnd, tmp_path, disk, "wal-push", argv, env, check)
