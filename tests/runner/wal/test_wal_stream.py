"""wal-stream end to end: pg_receivewal with a slot into S3 (moto), then restores.

The streamer runs as its own process (as in its Deployment) and is stopped with
SIGTERM; rows committed while it ran must be restorable, including those only
in the partial segment uploaded at the stop. A restart reuses the slot.
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
    switch_wal,
    wait_for,
)
from tests.fixtures.postgres import PgFactory, PgServer
from tonebridge_dr.runner.engines.postgres import basebackup
from tonebridge_dr.runner.engines.postgres.wal import catalog, naming, pitr
from tonebridge_dr.runner.repository import Repository

pytestmark = pytest.mark.timeout(600)

SLOT = "tbdr_stream_test"


def _start(server: PgServer, repo_url: str, work: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(VENV_PYTHON), "-m", "tonebridge_dr.runner.engines.postgres.wal", "wal-stream",
         "--dsn", server.dsn(), "--repo", repo_url, "--slot", SLOT, "--work-dir", str(work),
         "--status-interval", "1", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
    )


def _stop(proc: subprocess.Popen[str]) -> dict[str, object]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return dict(json.loads(out))


def _slots(server: PgServer) -> list[tuple[str, bool, str | None]]:
    rows = server.query(
        "postgres",
        "SELECT slot_name, active, restart_lsn::text FROM pg_replication_slots "
        "WHERE slot_type = 'physical'",
    )
    return [(str(r[0]), bool(r[1]), r[2]) for r in rows]


def _received(server: PgServer, lsn: str) -> bool:
    """pg_receivewal reported having written WAL up to `lsn`."""
    rows = server.query(
        "postgres",
        "SELECT write_lsn >= %s::pg_lsn FROM pg_stat_replication "
        "WHERE application_name = 'pg_receivewal'",
        (lsn,),
    )
    return bool(rows and rows[0][0])


def test_streamed_wal_is_restorable_and_the_slot_is_reused(
    pg_factory: PgFactory, s3_repo_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    postgres_runs_cli: None,
) -> None:
    server = pg_factory.start("stream")  # archive_mode off: nothing changes on the server
    monkeypatch.setenv("PGPASSWORD", server.password)
    server.execute("postgres", "CREATE TABLE t (batch int NOT NULL, i int NOT NULL)")
    repo = Repository.open(s3_repo_url)
    work = tmp_path / "work"

    streamer = _start(server, s3_repo_url, work)
    try:
        wait_for(lambda: any(s[0] == SLOT and s[1] for s in _slots(server)), "the slot in use")
        basebackup.backup_physical(repo, server.dsn(), basebackup.PhysicalBackupOptions())
        _, lsn = commit_batch(server, 1)
        wait_for(lambda: _received(server, lsn), "pg_receivewal to write batch 1")
    finally:
        first = _stop(streamer)
    # Batch 1 lives only in the current, incomplete segment: uploaded as .partial.
    assert first["partial"] and str(first["partial"]).endswith(".partial")
    status = catalog.archive_status(repo)
    assert status.last_partial == first["partial"]
    restored, result = restore_started(pg_factory, repo, "stream-1", pitr.Target("latest"))
    try:
        assert result["ends_with_partial"] is True
        assert batches(restored) == [(1, 10)]
    finally:
        restored.stop()

    restart_lsn = dict((s[0], s[2]) for s in _slots(server))[SLOT]
    streamer = _start(server, s3_repo_url, work)
    try:
        wait_for(lambda: any(s[0] == SLOT and s[1] for s in _slots(server)), "the slot reused")
        assert [s[0] for s in _slots(server)] == [SLOT]  # reused, not a second slot
        commit_batch(server, 2)
        segment = switch_wal(server)
        wait_for(
            lambda: (catalog.archive_status(repo).newest_by_timeline.get(1) or "") >= segment,
            f"{segment} to be uploaded",
        )
        _, lsn = commit_batch(server, 3)
        wait_for(lambda: _received(server, lsn), "pg_receivewal to write batch 3")
    finally:
        second = _stop(streamer)
    assert int(str(second["uploaded"])) >= 1 and second["partial"]
    new_restart = dict((s[0], s[2]) for s in _slots(server))[SLOT]
    assert naming.parse_lsn(str(new_restart)) >= naming.parse_lsn(str(restart_lsn))
    restored, result = restore_started(pg_factory, repo, "stream-2", pitr.Target("latest"))
    try:
        assert batches(restored) == [(1, 10), (2, 10), (3, 10)]
    finally:
        restored.stop()
