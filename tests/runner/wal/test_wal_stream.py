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
import yaml

from tests.fixtures import EXAMPLES
from tests.fixtures.gpg import GpgKeys
from tests.fixtures.pg_wal import (
    VENV_PYTHON,
    batches,
    commit_batch,
    restore_started,
    switch_wal,
    wait_for,
)
from tests.fixtures.postgres import PgFactory, PgServer
from tonebridge_dr.api import runner_contract as contract
from tonebridge_dr.api.kinds import BackupPolicy
from tonebridge_dr.builders import backup as backup_builders
from tonebridge_dr.runner.codecs import encryption
from tonebridge_dr.runner.engines.postgres import basebackup
from tonebridge_dr.runner.engines.postgres.wal import catalog, naming, pitr
from tonebridge_dr.runner.repository import Repository

pytestmark = pytest.mark.timeout(600)

SLOT = "tbdr_stream_test"


def _start(server: PgServer, repo_url: str, work: Path,
           env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(VENV_PYTHON), "-m", "tonebridge_dr.runner.engines.postgres.wal", "wal-stream",
         "--dsn", server.dsn(), "--repo", repo_url, "--slot", SLOT, "--work-dir", str(work),
         "--status-interval", "1", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})},
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


def test_streamed_wal_is_compressed_and_encrypted_as_the_policy_says(
    pg_factory: PgFactory, s3_repo_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    postgres_runs_cli: None, gpg_keys: GpgKeys,
) -> None:
    """The WAL streamer Deployment's env (from the builder) makes wal-stream store OpenPGP
    objects: before the fix the Deployment mounted the key but set no variable, and every
    streamed segment was stored in clear text."""
    body = yaml.safe_load((EXAMPLES / "01-postgres-backup" / "backuppolicy.yaml").read_text())
    body["metadata"].update(uid="u", namespace="ns")
    policy = BackupPolicy.from_body(body)
    env = {var["name"]: var["value"] for var in backup_builders.wal_codec_env(policy)}
    assert env[contract.ENV_ENCRYPT_TO] == backup_builders.encrypt_to_path(policy)
    env[contract.ENV_ENCRYPT_TO] = str(gpg_keys.public_key)  # where the pod mounts it
    server = pg_factory.start("stream-enc")
    monkeypatch.setenv("PGPASSWORD", server.password)
    server.execute("postgres", "CREATE TABLE secret_rows (v text)")
    server.execute("postgres", "INSERT INTO secret_rows SELECT 'PLAINTEXT-MARKER' "
                               "FROM generate_series(1, 1000)")
    repo = Repository.open(s3_repo_url)
    streamer = _start(server, s3_repo_url, tmp_path / "work", env)
    try:
        wait_for(lambda: any(s[0] == SLOT and s[1] for s in _slots(server)), "the slot in use")
        server.execute("postgres", "INSERT INTO secret_rows VALUES ('PLAINTEXT-MARKER')")
        segment = switch_wal(server)
        wait_for(
            lambda: (catalog.archive_status(repo).newest_by_timeline.get(1) or "") >= segment,
            f"{segment} to be uploaded",
        )
    finally:
        _stop(streamer)
    objects = list(catalog.WalArchive(repo.storage).all_objects())
    assert objects
    for obj in objects:
        assert obj.key.endswith(".zst.gpg"), obj.key
        data = repo.storage.get_bytes(obj.key)
        assert encryption.is_encrypted(data[:4096]), obj.key
        assert b"PLAINTEXT-MARKER" not in data
