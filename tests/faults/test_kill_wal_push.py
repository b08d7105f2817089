"""kill -9 of `wal-push` (PostgreSQL's archive_command) at random moments, into file://
and S3, with 16 MiB segments of random bytes (an S3 multipart upload each).

What PostgreSQL relies on after an archive_command died: the archive holds either
nothing for the segment or its exact content (never a part under the final key), the
retry it makes exits 0 and leaves exactly one copy, and the next prune with its grace
passed removes the temp file or unfinished upload of the killed push."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.faults import harness

KILLS = 16


@pytest.mark.parametrize("repo_kind", ["file", "s3"])
def test_killed_wal_pushes_leave_the_segment_whole_or_absent_and_a_retry_works(
    repo_url: str, ledger: harness.Ledger, rnd: random.Random, tmp_path: Path,
) -> None:
    segments = harness.Segments(tmp_path / "pg_wal", rnd)
    env = harness.runner_env(TONEBRIDGE_DR_WAL_PUSH_AHEAD="1")  # no background pusher
    kind = f"wal-push ({repo_url.split(':')[0]})"
    current: list[Path] = []

    def argv() -> list[str]:
        current[:] = [segments.next()]
        return ["wal-push", "--repo", repo_url, str(current[0])]

    def check(done: harness.Run, where: str) -> None:
        path = current[0]
        harness.check_exit(ledger, done, where, expected=[0])
        harness.check_tree_gone(ledger, done, where)
        harness.check_wal_push(ledger, repo_url, path, done, env, tmp_path / "retry", where)
        path.unlink()

    typical = harness.measure(argv, env, tmp_path / "typical", ledger,
                              lambda done: check(done, f"{kind}, unhurt"))
    for n, fault in enumerate(harness.faults(rnd, typical, harness.count(KILLS), 0)):
        done = harness.inject(fault, argv, env, tmp_path / f"fault-{n}")
        if done.killed:
            ledger.fault(f"kill -9 {kind}")
        check(done, f"{kind}, fault {n}: {fault}")
