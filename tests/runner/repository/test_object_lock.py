"""S3 Object Lock on moto (a bucket created with Object Lock, so versioned): what the runner
writes carries a lock, a locked version cannot be deleted, prune leaves locked backups whole
and reports them, an expired lock lets prune delete, `extend_locks` only ever lengthens.

moto ignores the lock headers of CreateMultipartUpload (S3 honours them): the storage then
sets the retention after completing the upload, which is what the multipart case sees.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from tests.fixtures import s3 as s3_fixtures
from tests.fixtures.pg_wal import SMALL_SEGMENT, write_segment
from tests.fixtures.postgres import Cli, PgServer, populate_sample
from tonebridge_dr.runner import cli as runner_cli
from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.postgres.wal import retention as wal_retention
from tonebridge_dr.runner.repository import immutability, reports
from tonebridge_dr.runner.repository import manifest as manifests
from tonebridge_dr.runner.repository.catalog import Repository
from tonebridge_dr.runner.repository.retention import RetentionPolicy
from tonebridge_dr.runner.storage import open_storage
from tonebridge_dr.runner.storage.base import LEGAL_HOLD
from tonebridge_dr.runner.storage.s3 import LOCK_MODE_ENV, LOCK_RETAIN_ENV, S3Storage

PREFIX = "repo/p"
DAY = dt.timedelta(days=1)


def _locked_bucket(moto_server: str, monkeypatch: pytest.MonkeyPatch, mode: str = "GOVERNANCE",
                   retain: str | None = "30d") -> str:
    """A fresh Object Lock bucket, the AWS env aimed at moto and the lock env set (or not)."""
    s3_fixtures.s3_env(monkeypatch, moto_server)
    if retain is not None:
        monkeypatch.setenv(LOCK_MODE_ENV, mode)
        monkeypatch.setenv(LOCK_RETAIN_ENV, retain)
    return s3_fixtures.new_bucket(moto_server, object_lock=True)


def _heads(moto_server: str, bucket: str, prefix: str = PREFIX) -> dict[str, dict[str, Any]]:
    """HEAD of the current version of every key under `prefix` (relative keys)."""
    client = s3_fixtures.client(moto_server)
    listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/").get("Contents", [])
    return {item["Key"][len(prefix) + 1:]: client.head_object(Bucket=bucket, Key=item["Key"])
            for item in listed}


def _versions(moto_server: str, bucket: str, prefix: str) -> list[str]:
    answer = s3_fixtures.client(moto_server).list_object_versions(Bucket=bucket, Prefix=prefix)
    return [v["Key"] for v in answer.get("Versions", []) + answer.get("DeleteMarkers", [])]


def _assert_locked(head: dict[str, Any], mode: str, at_least: dt.datetime) -> None:
    assert head.get("ObjectLockMode") == mode, head
    until = head["ObjectLockRetainUntilDate"].astimezone(dt.UTC)
    assert until >= at_least.replace(microsecond=0), (until, at_least)


def _backup(repo: Repository, started: dt.datetime, payload: bytes = b"x" * 100) -> str:
    with repo.begin(engine="postgres", method="logical", now=started, heartbeat=0) as writer:
        writer.put_object("database.dump", [payload])
        return writer.commit(databases=["db"], server_version="16", tools={}).id


# -- writes ------------------------------------------------------------------------------


def test_every_object_written_carries_mode_and_date_but_claims_do_not(
    moto_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = _locked_bucket(moto_server, monkeypatch, mode="COMPLIANCE", retain="30d")
    # S3 refuses locked uploads without a checksum: a config that would drop it is overruled
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
    storage = open_storage(f"s3://{bucket}/{PREFIX}")
    assert isinstance(storage, S3Storage)
    storage.part_size = S3Storage.MIN_PART_SIZE
    before = dt.datetime.now(dt.UTC)
    storage.put_bytes("base/one/small", b"small")
    storage.put_stream("base/one/large", [b"z" * (S3Storage.MIN_PART_SIZE + 10)])  # multipart
    storage.put_marker("base/one/.claim-0123456789abcdef", b"")
    report = reports.free_key(storage, before, "nightly")
    reports.write_report(storage, report, {"name": "nightly", "passed": True})
    heads = _heads(moto_server, bucket)
    assert set(heads) == {"base/one/small", "base/one/large", "base/one/.claim-0123456789abcdef",
                          report, report + reports.CHECKSUM_SUFFIX}
    for key, head in heads.items():
        if ".claim-" in key:
            assert "ObjectLockMode" not in head and "ObjectLockRetainUntilDate" not in head
        else:
            _assert_locked(head, "COMPLIANCE", before + 30 * DAY)
    # the claim goes without a trace; the locked object stays, whole
    storage.delete("base/one/.claim-0123456789abcdef")
    assert _versions(moto_server, bucket, f"{PREFIX}/base/one/.claim") == []
    assert storage.get_bytes("base/one/small") == b"small"


def test_a_postgres_backup_and_its_wal_are_locked_object_by_object(
    moto_server: str, monkeypatch: pytest.MonkeyPatch, pg: PgServer, cli: Cli, tmp_path: Path
) -> None:
    bucket = _locked_bucket(moto_server, monkeypatch, retain="7d")
    url = f"s3://{bucket}/{PREFIX}"
    dsn = pg.create_database("locked")
    populate_sample(pg, dsn.rsplit("dbname=", 1)[1], rows=20)
    before = dt.datetime.now(dt.UTC)
    result = cli("backup", "postgres", "--dsn", dsn, "--repo", url, "--json",
                 "--table", "transformations", "--table", "analytics")
    assert result.code == 0, result.err
    pg_wal = tmp_path / "data" / "pg_wal"
    (pg_wal / "archive_status").mkdir(parents=True)
    segment = write_segment(pg_wal, "000000010000000000000001", size=SMALL_SEGMENT)
    assert runner_cli.main(["wal-push", "--repo", url, str(segment)]) == 0
    heads = _heads(moto_server, bucket)
    backup_keys = [k for k in heads if k.startswith(f"base/{result.json['id']}/")]
    assert manifests.manifest_key(result.json["id"]) in backup_keys
    assert len(backup_keys) >= 3  # two tables and the manifest, no claim left
    assert [k for k in heads if k.startswith("wal/")], heads
    for head in heads.values():
        _assert_locked(head, "GOVERNANCE", before + 7 * DAY)


# -- deletes -----------------------------------------------------------------------------


def test_deleting_a_locked_version_is_refused_by_s3_and_reported_as_object_locked(
    moto_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = _locked_bucket(moto_server, monkeypatch, retain="1d")
    storage = open_storage(f"s3://{bucket}/{PREFIX}")
    storage.put_bytes("base/b/data", b"keep me")
    client = s3_fixtures.client(moto_server)  # the same (backup) credentials as the runner
    version = client.head_object(Bucket=bucket, Key=f"{PREFIX}/base/b/data")["VersionId"]
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        client.delete_object(Bucket=bucket, Key=f"{PREFIX}/base/b/data", VersionId=version)
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    with pytest.raises(errors.ObjectLocked) as locked:
        storage.delete("base/b/data")
    assert locked.value.exit_code == 18 and locked.value.until is not None
    assert "base/b/data" in str(locked.value) and "Object Lock (GOVERNANCE) until" in str(
        locked.value)
    with pytest.raises(errors.ObjectLocked):
        storage.delete_many(["base/b/data"])
    assert storage.get_bytes("base/b/data") == b"keep me"  # no delete marker either
    assert storage.retained_until(["base/b/data", "base/b/none"]) == {
        "base/b/data": locked.value.until
    }


def test_deletes_on_a_versioned_bucket_remove_every_version(
    moto_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = _locked_bucket(moto_server, monkeypatch, retain=None)  # Object Lock bucket, no lock
    storage = open_storage(f"s3://{bucket}/{PREFIX}")
    storage.put_bytes("wal/a", b"1")
    storage.put_bytes("wal/a", b"2")  # a second version
    storage.put_bytes("wal/b", b"3")
    storage.put_bytes("base/c/x", b"4")
    s3_fixtures.client(moto_server).delete_object(Bucket=bucket, Key=f"{PREFIX}/base/c/x")
    assert len(_versions(moto_server, bucket, f"{PREFIX}/wal/")) == 3
    storage.delete_many(["wal/a", "wal/b"])
    storage.delete("base/c/x")  # a version hidden behind a delete marker
    assert _versions(moto_server, bucket, f"{PREFIX}/") == []
    assert storage.retained_until(["wal/a"]) == {}


# -- prune -------------------------------------------------------------------------------


def test_prune_leaves_locked_backups_whole_and_reports_them(
    moto_server: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = _locked_bucket(moto_server, monkeypatch, retain="1d")
    repo = Repository.open(f"s3://{bucket}/{PREFIX}")
    now = dt.datetime.now(dt.UTC)
    old = [_backup(repo, now - dt.timedelta(days=d)) for d in (3, 2)]
    newest = _backup(repo, now - dt.timedelta(hours=1))
    policy = RetentionPolicy(keep_last=1)
    dry = repo.prune(policy, now=now, dry_run=True)
    assert dry.locked == old and dry.deleted == [] and dry.kept == [newest]
    report = repo.prune(policy, now=now)
    assert report.locked == old and report.deleted == [] and report.kept == [newest]
    assert report.result()["locked"] == old
    assert [m.id for m in repo.list_backups()] == [*old, newest]
    for backup_id in (*old, newest):
        assert repo.verify(backup_id).problems == []
    # the CLI says so too, in --json and in text, and exits 0
    capsys.readouterr()
    url = f"s3://{bucket}/{PREFIX}"
    assert runner_cli.main(["backups", "prune", "--keep-last", "1", "--repo", url,
                            "--engine", "redis", "--json"]) == 0  # other engine: untouched
    assert json.loads(capsys.readouterr().out)["locked"] == []
    assert runner_cli.main(["backups", "prune", "--keep-last", "1", "--repo", url]) == 0
    assert f"under S3 Object Lock (kept until it lapses): {', '.join(old)}" in (
        capsys.readouterr().out)
    assert [m.id for m in repo.list_backups()] == [*old, newest]


def test_prune_deletes_a_backup_once_its_lock_has_passed(
    moto_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = _locked_bucket(moto_server, monkeypatch, retain="1s")
    repo = Repository.open(f"s3://{bucket}/{PREFIX}")
    now = dt.datetime.now(dt.UTC)
    old = _backup(repo, now - DAY)
    monkeypatch.setenv(LOCK_RETAIN_ENV, "1d")
    repo = Repository.open(f"s3://{bucket}/{PREFIX}")
    newest = _backup(repo, now)
    lapsed = max(repo.storage.retained_until(
        info.key for info in repo.storage.list(manifests.backup_prefix(old))).values())
    while dt.datetime.now(dt.UTC) <= lapsed:  # wait for the 1-second lock to pass
        time.sleep(0.2)
    report = repo.prune(RetentionPolicy(keep_last=1), now=dt.datetime.now(dt.UTC))
    assert report.deleted == [old] and report.locked == [] and report.kept == [newest]
    assert _versions(moto_server, bucket, f"{PREFIX}/base/{old}/") == []
    assert repo.verify(newest).problems == []


def test_wal_prune_keeps_locked_segments_and_counts_them(
    moto_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bucket = _locked_bucket(moto_server, monkeypatch, retain="1d")
    url = f"s3://{bucket}/{PREFIX}"
    pg_wal = tmp_path / "pg_wal"
    (pg_wal / "archive_status").mkdir(parents=True)
    locked = write_segment(pg_wal, "000000010000000000000001", size=SMALL_SEGMENT)
    assert runner_cli.main(["wal-push", "--repo", url, str(locked)]) == 0
    monkeypatch.delenv(LOCK_MODE_ENV)
    monkeypatch.delenv(LOCK_RETAIN_ENV)
    free = write_segment(pg_wal, "000000010000000000000002", size=SMALL_SEGMENT)
    assert runner_cli.main(["wal-push", "--repo", url, str(free)]) == 0
    repo = Repository.open(url)
    with repo.begin(engine="postgres", method="physical", heartbeat=0) as writer:
        writer.put_object("base.tar", [b"pretend"])
        writer.commit(databases=[], server_version="16", tools={}, extra={
            "wal_segment_size": SMALL_SEGMENT},
            wal=manifests.WalRange(start_lsn="0/300028", stop_lsn="0/300100", timeline=1))
    report = wal_retention.prune_wal(repo)
    assert report.locked == 1 and report.deleted == 1
    assert report.deleted_names == ["000000010000000000000002"]
    left = [info.key for info in repo.storage.list("wal/")]
    assert len(left) == 1 and "000000010000000000000001" in left[0]


# -- extend_locks ---------------------------------------------------------------------------


def test_extend_locks_lengthens_every_object_of_a_backup_and_never_shortens(
    moto_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = _locked_bucket(moto_server, monkeypatch, mode="COMPLIANCE", retain="2d")
    repo = Repository.open(f"s3://{bucket}/{PREFIX}")
    now = dt.datetime.now(dt.UTC)
    backup_id = _backup(repo, now)
    other = _backup(repo, now)
    keys = sorted(info.key for info in repo.storage.list(manifests.backup_prefix(backup_id)))
    far = now + 7 * 365 * DAY
    changed = immutability.extend_locks(repo, backup_id, far, mode="GOVERNANCE")
    assert sorted(changed) == keys and manifests.manifest_key(backup_id) in keys
    heads = _heads(moto_server, bucket)
    for key in keys:  # COMPLIANCE is never weakened to the GOVERNANCE asked for
        _assert_locked(heads[key], "COMPLIANCE", far)
    assert immutability.extend_locks(repo, backup_id, now + 30 * DAY) == []  # never shorter
    assert immutability.extend_locks(repo, backup_id, far) == []  # idempotent
    for key in keys:
        _assert_locked(_heads(moto_server, bucket)[key], "COMPLIANCE", far)
    other_until = repo.storage.retained_until([manifests.manifest_key(other)])
    assert max(other_until.values()) < now + 3 * DAY  # only the backup asked for moved
    with pytest.raises(errors.BackupNotFound):
        immutability.extend_locks(repo, "20200101T000000Z", far)


def test_a_legal_hold_is_a_lock_without_a_date(
    moto_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = _locked_bucket(moto_server, monkeypatch, retain=None)
    storage = open_storage(f"s3://{bucket}/{PREFIX}")
    storage.put_bytes("audit/a.json", b"{}")
    s3_fixtures.client(moto_server).put_object_legal_hold(
        Bucket=bucket, Key=f"{PREFIX}/audit/a.json", LegalHold={"Status": "ON"})
    assert storage.retained_until(["audit/a.json"]) == {"audit/a.json": LEGAL_HOLD}
    with pytest.raises(errors.ObjectLocked, match="under an S3 Object Lock legal hold") as held:
        storage.delete("audit/a.json")
    assert held.value.until is None
    assert storage.get_bytes("audit/a.json") == b"{}"
