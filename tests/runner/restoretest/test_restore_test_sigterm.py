"""SIGTERM to a running `restore-test` (the Job was deleted or ran past its deadline), in a
fresh process as in a pod: exit 143, and neither a scratch database nor a PostgreSQL
process is left. pg_restore is wrapped so that it stalls after the first bytes of the
archive: the signal always arrives mid-restore."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures import procs
from tests.fixtures.postgres import (
    PG_BIN,
    Cli,
    PgFactory,
    PgServer,
    clean_env,
    populate_sample,
)
from tonebridge_dr.runner.repository import reports
from tonebridge_dr.runner.storage import open_storage

pytestmark = pytest.mark.timeout(300)


def _stalling_bin(folder: Path) -> Path:
    """PostgreSQL's bin folder, but pg_restore passes 4 KiB, touches $STALL_MARK and stalls."""
    folder.mkdir()
    for tool in PG_BIN.iterdir():
        if tool.name != "pg_restore":
            (folder / tool.name).symlink_to(tool)
    wrapper = folder / "pg_restore"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'{{ head -c 4096; : > "$STALL_MARK"; sleep 600; cat; }} | {PG_BIN}/pg_restore "$@"\n'
    )
    wrapper.chmod(0o755)
    os.chmod(folder, 0o755)
    return folder


def _group(pgid: int) -> list[int]:
    """Live processes of process group `pgid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z" and int(fields[2]) == pgid:
                found.append(int(entry.name))
    return found


def _wait(path: Path, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            _out, err = proc.communicate()
            raise AssertionError(f"restore-test ended early ({proc.returncode}): {err.decode()}")
        if time.monotonic() > deadline:
            raise AssertionError("pg_restore never started")
        time.sleep(0.05)


@pytest.mark.parametrize("scratch_kind", ["database", "instance"])
def test_sigterm_mid_restore_exits_143_and_leaves_nothing(
    pg: PgServer,
    pg_factory: PgFactory,
    cli: Cli,
    file_repo_url: str,
    tmp_path: Path,
    scratch_kind: str,
) -> None:
    src = pg.create_database("rtsig")
    populate_sample(pg, src.rsplit("dbname=", 1)[1], rows=2000)
    made = cli("backup", "postgres", "--dsn", src, "--repo", file_repo_url, "--json")
    assert made.code == 0, made.err
    scratch_db = f"rt_sigterm_{scratch_kind}"
    folder = pg_factory.new_root("rt-sigterm")
    scratch = (["--scratch-dsn", pg.dsn(scratch_db)] if scratch_kind == "database"
               else ["--scratch-instance", str(folder)])
    mark = tmp_path / "stalled"
    termination = tmp_path / "termination-log"
    env = clean_env(
        PGPASSWORD=pg.password,
        TONEBRIDGE_DR_PG_BIN=str(_stalling_bin(pg_factory.new_root("rt-bin") / "bin")),
        STALL_MARK=str(mark),
        TONEBRIDGE_DR_TERMINATION_LOG=str(termination),
    )
    checks = json.dumps([{"name": "one", "query": "SELECT 1", "expect": {"equals": "1"}}])
    proc = subprocess.Popen(
        [sys.executable, "-m", "tonebridge_dr.cli", "restore-test", "postgres", "--repo",
         file_repo_url, "--checks-json", checks, "--name", "sigterm", *scratch],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        _wait(mark, proc)
        restoring = procs.children(proc.pid)
        assert restoring, "pg_restore (its wrapper) should be a child of the runner"
        assert all(len(_group(pid)) > 1 for pid in restoring)  # sh, head, sleep, pg_restore
        if scratch_kind == "database":
            assert pg.database_exists(scratch_db)
        else:
            assert procs.mentioning(str(folder)), "the scratch instance should be running"
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err.decode()
    lines = [line for line in err.decode().splitlines() if line.startswith("error:")]
    assert lines == ["error: terminated by SIGTERM; work in progress was rolled back"]
    assert json.loads(termination.read_text())["exit_code"] == 143
    for pid in restoring:  # each tool ran in its own process group: all of it is gone
        assert _group(pid) == [], f"processes of tool group {pid} survived"
    assert procs.mentioning(str(folder)) == []
    assert list(folder.iterdir()) == []
    assert not pg.database_exists(scratch_db)
    assert pg.query("postgres", "SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                    (scratch_db,)) == [(0,)]
    [report] = reports.list_reports(open_storage(file_repo_url))
    assert report.checksum == reports.CHECKSUM_OK
    assert report.data is not None
    assert (report.data["error"], report.data["exit_code"]) == ("Cancelled", 143)
    assert report.data["details"]["cleaned_up"] is True
