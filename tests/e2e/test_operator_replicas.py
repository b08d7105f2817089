"""Repository replicas end to end (issue 16): a PostgreSQL policy with one replica in
another moto region. After a run-now backup the operator's replication Job leaves a
verified copy (manifest last) and the WAL in the replica; the primary bucket is then
deleted, and a RestoreRequest naming the replica as its source restores the database."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_restore_request import (  # noqa: F401 (fixture)
    POLICY,
    World,
    dbname_of,
    place,
    wait_until,
)
from tests.fixtures.operator import OperatorProcess, get_policy, run_now
from tests.fixtures.pg_wal import write_segment
from tests.fixtures.postgres import table_checksums
from tests.fixtures.s3 import client
from tonebridge_dr.runner.engines.postgres.wal import archive, catalog
from tonebridge_dr.runner.repository import Repository
from tonebridge_dr.runner.storage import S3Config, open_storage

pytestmark = pytest.mark.timeout(400)

REGION = "eu-west-1"
SEGMENT = "000000010000000000000001"


def _replica_bucket(endpoint: str) -> str:
    name = f"tbdr-dr-{uuid.uuid4().hex[:12]}"
    client(endpoint).create_bucket(Bucket=name,
                                   CreateBucketConfiguration={"LocationConstraint": REGION})
    return name


def _drop_bucket(endpoint: str, url: str) -> None:
    s3 = client(endpoint)
    bucket = url.removeprefix("s3://").split("/")[0]
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})
    s3.delete_bucket(Bucket=bucket)


def test_a_replica_in_another_region_restores_the_database_when_the_primary_is_gone(
    place: World, operator_factory: Callable[..., OperatorProcess], tmp_path: Path  # noqa: F811
) -> None:
    world = place
    replica = f"s3://{_replica_bucket(world.endpoint)}/dr"
    world.secret("s3-replica", {"AWS_ACCESS_KEY_ID": "replica",
                                "AWS_SECRET_ACCESS_KEY": "replica-secret-key"})
    src = world.source_db(rows=150)
    world.dsn_secret("db-backup", dbname_of(src))
    # WAL archived by the database's archive_command (wal-push) before the backup
    primary_folder = f"{world.bucket_url}/{POLICY}"
    archive.Pusher(catalog.WalArchive(open_storage(primary_folder)),
                   archive.PushSettings(primary_folder)).push_file(
        write_segment(tmp_path, SEGMENT))
    world.policy(
        repository=world.repository(
            credentialsSecretRef={"name": "s3-writer"},
            restoreCredentialsSecretRef={"name": "s3-reader"},
            replicas=[{"url": replica, "region": REGION, "endpoint": world.endpoint,
                       "credentialsSecretRef": {"name": "s3-replica"}}],
        ),
        objectives={"rpo": "1h", "replicaRpo": "1h"},
    )
    op = operator_factory(world.namespace)
    run_now(world.sandbox, world.namespace, POLICY, "first")

    def replicated() -> dict[str, Any] | None:
        status = get_policy(world.sandbox, world.namespace, POLICY).get("status") or {}
        backup_id = (status.get("runNow") or {}).get("backupId")
        rows = status.get("replicas") or []
        if backup_id and rows and rows[0].get("lastBackup") == backup_id:
            return dict(status)
        return None

    status = wait_until(replicated, timeout=240, what="the backup to reach the replica")
    backup_id = status["runNow"]["backupId"]
    (row,) = status["replicas"]
    assert row["url"] == f"{replica}/{POLICY}", op.log_tail()
    assert row["lastWalSegment"] == SEGMENT and row["syncedAt"] and not row.get("lastError")
    assert row["lagSeconds"] == 0

    # The replica (its own region, its own credentials) holds a verified copy ...
    config = S3Config("replica", "replica-secret-key", endpoint_url=world.endpoint,
                      region=REGION, from_env=False)
    copy = Repository(open_storage(f"{replica}/{POLICY}", create=False, s3=config))
    assert [m.id for m in copy.list_backups()] == [backup_id]
    report = copy.verify(backup_id)
    assert report.problems == [] and report.objects_checked >= 2
    # ... whose manifest was written after every object it lists ...
    stored = {i.key: i.last_modified for i in copy.storage.list(f"base/{backup_id}/")}
    manifest_key = f"base/{backup_id}/manifest.json"
    assert all(stored[manifest_key] >= when for when in stored.values())
    # ... and the WAL.
    assert catalog.WalArchive(copy.storage).find(SEGMENT).name == SEGMENT
    location = client(world.endpoint).get_bucket_location(
        Bucket=replica.removeprefix("s3://").split("/")[0])["LocationConstraint"]
    assert location == REGION

    # The primary region is gone.
    _drop_bucket(world.endpoint, world.bucket_url)

    target = world.pg.create_database("rebuilt")
    world.dsn_secret("db-restore", dbname_of(target))
    world.request("from-replica", {
        "source": {
            "repository": {"url": replica, "region": REGION, "endpoint": world.endpoint,
                           "credentialsSecretRef": {"name": "s3-replica"}},
            "policyName": POLICY,
        },
        "latest": True,
        "method": "logical",
        "target": {"database": {"dsnSecretRef": {"name": "db-restore", "key": "dsn"}}},
    })
    body = world.finished("from-replica")
    assert body["status"]["phase"] == "Succeeded", (body["status"], op.log_tail())
    assert body["status"]["restored"]["backupId"] == backup_id
    assert table_checksums(world.pg, dbname_of(target)) == table_checksums(
        world.pg, dbname_of(src))
    assert "replica-secret-key" not in op.log()
    assert "replica-secret-key" not in str(get_policy(world.sandbox, world.namespace, POLICY))
