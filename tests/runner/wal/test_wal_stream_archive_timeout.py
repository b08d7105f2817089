"""wal-stream's archive timeout: on a quiet server the newest commit reaches the repository
(as the current segment's `.partial`) while the streamer keeps running, and a restore to
the latest point has it; the streamer is stopped only after that restore.

`tonebridge-dr check --archive-timeout` against a real server archiving with
archive_command warns about its archive_timeout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.pg_wal import (
    VENV_PYTHON,
    batches,
    commit_batch,
    restore_started,
    wait_for,
)
from tests.fixtures.postgres import Cli, PgFactory, PgServer
from tonebridge_dr.runner.engines.postgres import basebackup
from tonebridge_dr.runner.engines.postgres.wal import catalog, pitr
from tonebridge_dr.runner.repository import Repository

pytestmark = pytest.mark.timeout(600)

SLOT = "tbdr_timeout_test"


def _start(server: PgServer, repo_url: str, work: Path, timeout: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(VENV_PYTHON), "-m", "tonebridge_dr.runner.engines.postgres.wal", "wal-stream",
         "--dsn", server.dsn(), "--repo", repo_url, "--slot", SLOT, "--work-dir", str(work),
         "--status-interval", "1", "--archive-timeout", timeout, "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
    )


def _stop(proc: subprocess.Popen[str]) -> dict[str, object]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return dict(json.loads(out))


def _slot_active(server: PgServer) -> bool:
    rows = server.query(
        "postgres", "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (SLOT,)
    )
    return bool(rows and rows[0][0])


def _received(server: PgServer, lsn: str) -> bool:
    rows = server.query(
        "postgres",
        "SELECT write_lsn >= %s::pg_lsn FROM pg_stat_replication "
        "WHERE application_name = 'pg_receivewal'",
        (lsn,),
    )
    return bool(rows and rows[0][0])


def _archived_through(server: PgServer, repo: Repository, lsn: str) -> bool:
    """The repository's copy of the segment holding the byte before `lsn` (complete or
    `.partial`) has the server's WAL up to `lsn`, byte for byte."""
    ((name, offset),) = server.query(
        "postgres", "SELECT file_name, file_offset FROM pg_walfile_name_offset(%s::pg_lsn - 1)",
        (lsn,),
    )
    end = int(offset) + 1
    wal = (server.datadir / "pg_wal" / str(name)).read_bytes()[:end]
    assert wal.strip(b"\0"), "the server's own WAL file should hold the commit"
    archive = catalog.WalArchive(repo.storage)
    try:
        stored = archive.read_bytes(archive.find(str(name), allow_partial=True))
    except catalog.WalNotFound:
        return False
    return stored[:end] == wal


def test_a_quiet_commit_is_archived_within_the_archive_timeout(
    pg_factory: PgFactory, s3_repo_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    postgres_runs_cli: None,
) -> None:
    server = pg_factory.start("timeout")
    monkeypatch.setenv("PGPASSWORD", server.password)
    server.execute("postgres", "CREATE TABLE t (batch int NOT NULL, i int NOT NULL)")
    repo = Repository.open(s3_repo_url)
    streamer = _start(server, s3_repo_url, tmp_path / "work", "2s")
    try:
        wait_for(lambda: _slot_active(server), "the slot in use")
        basebackup.backup_physical(repo, server.dsn(), basebackup.PhysicalBackupOptions())
        _, lsn = commit_batch(server, 1)  # then nothing: the server stays quiet
        wait_for(lambda: _received(server, lsn), "pg_receivewal to write the commit")
        wait_for(lambda: _archived_through(server, repo, lsn), "the commit in the repository")
        assert streamer.poll() is None, "the streamer must still run (no upload at a stop)"
        status = catalog.archive_status(repo)
        assert status.last_partial is not None

        restored, result = restore_started(pg_factory, repo, "timeout-r", pitr.Target("latest"))
        try:
            assert result["ends_with_partial"] is True
            assert batches(restored) == [(1, 10)]
        finally:
            restored.stop()
        assert streamer.poll() is None
    finally:
        stats = _stop(streamer)
    assert int(str(stats["partial_uploads"])) >= 1
    assert stats["archive_timeout_seconds"] == 2.0


def test_check_warns_about_the_servers_archive_timeout(
    pg_factory: PgFactory, cli: Cli, file_repo_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = pg_factory.start(
        "archiving", archive_mode="on", archive_command="'/bin/true'", archive_timeout="3600"
    )
    monkeypatch.setenv("PGPASSWORD", server.password)
    Repository.open(file_repo_url)  # creates it
    checked = cli("check", "--repo", file_repo_url, "--dsn", server.dsn(),
                  "--archive-timeout", "5m", "--json")
    assert checked.code == 0, checked.err
    assert checked.json["database"]["archive_mode"] == "on"
    assert checked.json["database"]["archive_timeout_seconds"] == 3600
    (warning,) = checked.json["warnings"]
    assert "larger than the policy's archiveTimeout 5m" in warning
    assert "archive_timeout is 1h" in checked.err  # logged too

    fine = cli("check", "--repo", file_repo_url, "--dsn", server.dsn(),
               "--archive-timeout", "2h", "--json")
    assert fine.code == 0, fine.err
    assert fine.json["warnings"] == []
