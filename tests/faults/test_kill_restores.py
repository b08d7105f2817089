"""kill -9 of a logical restore at random moments, from file:// and S3: a whole database
(`pg_restore --single-transaction`) and chosen tables (`pg_restore -L | psql`).

A restore runs in one transaction, so whatever moment it dies at, its target holds
either nothing (as before) or everything the source had, never a part; a restore that
exits 0 has restored everything. Its tools (pg_restore, psql) end by themselves and
leave no session on the target database, which can then be dropped. Half the kills
come by timer, half once the target's COPY (pg_stat_progress_copy) took a number of
bytes drawn at random: the moment a partial commit would do harm."""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

import pytest

from tests.faults import harness
from tests.faults.conftest import RESTORED_TABLES, PgSource

TIMED = 8
COUNTED = 8


def _check_target(
    ledger: harness.Ledger, source: PgSource, dbname: str, done: harness.Run, where: str,
    tables: tuple[str, ...] | None, expected: dict[str, Any],
) -> None:
    harness.check_exit(ledger, done, where, expected=[0])
    harness.check_tree_gone(ledger, done, where)
    harness.check_pg_idle(ledger, source.server, where, database=dbname)
    complete = source.fingerprint(dbname, tables) == expected
    if done.code == 0:
        ledger.check(complete, lambda: f"{where}: exit 0 but the target differs from the "
                     f"source: {source.fingerprint(dbname, tables)}")
    else:
        ledger.check(
            source.is_untouched(dbname) or (done.killed and complete),
            lambda: f"{where}: the target holds part of the backup: "
            f"{source.fingerprint(dbname, tables)}",
        )
    source.server.execute("postgres", f'DROP DATABASE "{dbname}"')  # nobody is connected


@pytest.mark.parametrize("repo_kind", ["file", "s3"])
@pytest.mark.parametrize("mode", ["database", "tables"])
def test_killed_logical_restores_leave_the_target_empty_or_complete(
    pg_source: PgSource, repo_url: str, mode: str, ledger: harness.Ledger,
    rnd: random.Random, tmp_path: Path,
) -> None:
    env = pg_source.env()
    backup = harness.run(
        ["backup", "postgres", "--dsn", pg_source.dsn, "--repo", repo_url, "--json"],
        env, tmp_path / "backup",
    )
    assert backup.code == 0, backup.describe()
    backup_id = backup.result()["id"]
    tables = RESTORED_TABLES if mode == "tables" else None
    expected = pg_source.fingerprint(pg_source.dbname, tables)
    table_args = [arg for table in RESTORED_TABLES for arg in ("--table", table)]
    kind = f"restore postgres ({mode}, {repo_url.split(':')[0]})"
    targets = (f"target_{n}" for n in itertools.count())
    target = next(targets)

    def argv() -> list[str]:
        return ["restore", "postgres", "--repo", repo_url, "--backup", backup_id,
                "--target-dsn", pg_source.server.dsn(target), "--json",
                *(table_args if tables else [])]

    def progress() -> harness.Progress:
        return harness.Progress(pg_source.server, "copy", target)

    def check(done: harness.Run, where: str) -> None:
        nonlocal target
        _check_target(ledger, pg_source, target, done, where, tables, expected)
        target = next(targets)
        pg_source.server.execute("postgres", f'CREATE DATABASE "{target}"')

    pg_source.server.execute("postgres", f'CREATE DATABASE "{target}"')
    typical = harness.measure(argv, env, tmp_path / "typical", ledger,
                              lambda done: check(done, f"{kind}, unhurt"), progress)
    chosen = harness.faults(rnd, typical, harness.count(TIMED), harness.count(COUNTED))
    for n, fault in enumerate(chosen):
        done = harness.inject(fault, argv, env, tmp_path / f"fault-{n}", progress)
        if done.killed:
            ledger.fault(f"kill -9 {kind}")
        check(done, f"{kind}, fault {n}: {fault}")
    pg_source.server.execute("postgres", f'DROP DATABASE "{target}"')
