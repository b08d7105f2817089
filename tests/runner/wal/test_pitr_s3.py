"""Archiving to S3 (moto) through an outage: nothing acknowledged is lost, nothing is lost.

moto keeps its state in memory, so the outage is a TCP proxy in front of it
that stops listening: connections are refused exactly as when the endpoint is
down, and resuming brings back the same bucket.
"""

from __future__ import annotations

import pytest

from tests.fixtures import s3 as s3_fixtures
from tests.fixtures.pg_wal import (
    PausableProxy,
    batches,
    commit_batch,
    restore_started,
    start_archiving,
    switch_wal,
    wait_archived,
    wait_for,
)
from tests.fixtures.postgres import ADMIN_PASSWORD, PgFactory
from tonebridge_dr.runner.engines.postgres import basebackup
from tonebridge_dr.runner.engines.postgres.wal import catalog, naming, pitr
from tonebridge_dr.runner.repository import Repository

pytestmark = pytest.mark.timeout(600)


def test_s3_outage_fails_archiving_until_it_is_back_and_loses_nothing(
    pg_factory: PgFactory, moto_server: str, s3_proxy: PausableProxy,
    monkeypatch: pytest.MonkeyPatch, postgres_runs_cli: None,
) -> None:
    s3_fixtures.s3_env(monkeypatch, s3_proxy.url)
    monkeypatch.setenv("PGPASSWORD", ADMIN_PASSWORD)
    bucket = s3_fixtures.new_bucket(moto_server)
    url = f"s3://{bucket}/repo"
    server = start_archiving(pg_factory, "s3-outage", url)
    server.execute("postgres", "CREATE TABLE t (batch int NOT NULL, i int NOT NULL)")
    repo = Repository.open(url)
    basebackup.backup_physical(repo, server.dsn(), basebackup.PhysicalBackupOptions())
    commit_batch(server, 1)
    wait_archived(server, switch_wal(server))

    s3_proxy.pause()
    commit_batch(server, 2)
    during = switch_wal(server)

    def failed() -> bool:
        row = server.query("postgres", "SELECT failed_count, last_failed_wal FROM pg_stat_archiver")
        return bool(row[0][0] and row[0][1] == during)

    wait_for(failed, "archive_command to fail while S3 is down")
    archived = s3_fixtures.client(moto_server).list_objects_v2(Bucket=bucket, Prefix="repo/wal/")
    assert not any(during in item["Key"] for item in archived.get("Contents", []))
    assert "cannot reach S3 endpoint" in server.logfile.read_text(errors="replace")

    s3_proxy.resume()
    commit_batch(server, 3)
    last = switch_wal(server)  # a new .ready file also wakes the archiver up
    wait_archived(server, last)
    status = catalog.archive_status(repo)
    assert status.last_segment is not None and status.last_segment >= last
    found = catalog.WalArchive(repo.storage).find(during)
    assert found.name == during and naming.parse_key(found.key) is not None

    restored, result = restore_started(pg_factory, repo, "s3-outage-restore",
                                       pitr.Target("latest"))
    try:
        assert batches(restored) == [(1, 10), (2, 10), (3, 10)]
        assert result["wal_to"] == last
    finally:
        restored.stop()
