"""`tonebridge-dr replicate`: backups and WAL copied to a replica in another moto region,
verified, manifest last; idempotent; tampered and interrupted copies."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.pg_wal import write_segment
from tests.fixtures.s3 import client, s3_env
from tonebridge_dr.runner import cli, errors
from tonebridge_dr.runner.engines.postgres.wal import archive, catalog, replication
from tonebridge_dr.runner.repository import Repository
from tonebridge_dr.runner.repository import replication as backup_replication
from tonebridge_dr.runner.storage import open_storage
from tonebridge_dr.runner.storage.base import Storage

REPLICA_REGION = "eu-west-1"
SEG1 = "000000010000000000000001"
SEG2 = "000000010000000000000002"


def _bucket(endpoint: str, region: str) -> str:
    import uuid

    name = f"tbdr-{uuid.uuid4().hex[:16]}"
    if region == "us-east-1":
        client(endpoint).create_bucket(Bucket=name)
    else:
        client(endpoint).create_bucket(
            Bucket=name, CreateBucketConfiguration={"LocationConstraint": region}
        )
    return name


@pytest.fixture
def urls(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """(primary policy folder in us-east-1, replica policy folder in eu-west-1); the
    replica is reached with its own variables only."""
    s3_env(monkeypatch, moto_server)
    primary = f"s3://{_bucket(moto_server, 'us-east-1')}/repo/db"
    replica = f"s3://{_bucket(moto_server, REPLICA_REGION)}/dr/db"
    monkeypatch.setenv("TONEBRIDGE_DR_REPLICA_1_AWS_REGION", REPLICA_REGION)
    monkeypatch.setenv("TONEBRIDGE_DR_REPLICA_1_AWS_ENDPOINT_URL_S3", moto_server)
    monkeypatch.setenv("TONEBRIDGE_DR_REPLICA_1_AWS_ACCESS_KEY_ID", "replica-key")
    monkeypatch.setenv("TONEBRIDGE_DR_REPLICA_1_AWS_SECRET_ACCESS_KEY", "replica-secret")
    return primary, replica


def _backup(url: str, seed: int, size: int = 3 * 1024 * 1024) -> str:
    repo = Repository.open(url)
    data = random.Random(seed).randbytes(size)
    with repo.begin(engine="postgres", method="logical", compression="none") as writer:
        writer.put_object("globals.sql", [b"-- globals\n"])
        writer.put_object("database.dump", [data[i:i + 65536] for i in range(0, size, 65536)])
        manifest = writer.commit(databases=["app"], server_version="16", tools={})
    return manifest.id


def _push_wal(url: str, folder: Path, name: str) -> None:
    path = write_segment(folder, name)
    settings = archive.PushSettings(url)
    archive.Pusher(catalog.WalArchive(open_storage(url)), settings).push_file(path)


def _replicate(primary: str, replica: str, capsys: pytest.CaptureFixture[str],
               *extra: str) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = cli.main(["replicate", "--repo", primary, "--to", replica, "--json", *extra])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else {}


def _keys(url: str) -> list[str]:
    return sorted(info.key for info in open_storage(url, create=False).list(""))


def test_backups_and_wal_reach_the_replica_verified_and_a_second_run_copies_nothing(
    urls: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    primary, replica = urls
    first, second = _backup(primary, 1), _backup(primary, 2)
    _push_wal(primary, tmp_path, SEG1)
    _push_wal(primary, tmp_path, SEG2)

    code, result = _replicate(primary, replica, capsys)
    assert code == 0, result
    [row] = result["replicas"]
    assert row["backups_copied"] == 2 and row["wal_copied"] == 2
    assert row["last_backup"] == second and row["last_wal_segment"] == SEG2
    assert row["synced_at"] is not None and row["lag_seconds"] == 0.0
    assert row["error"] is None and "replica-secret" not in json.dumps(result)

    # The replica bucket is in the other region and holds exactly the primary's keys.
    bucket = replica.removeprefix("s3://").split("/")[0]
    endpoint = open_storage(primary).endpoint  # type: ignore[attr-defined]
    location = client(endpoint).get_bucket_location(Bucket=bucket)["LocationConstraint"]
    assert location == REPLICA_REGION
    primary_keys = [k for k in _keys(primary) if not k.startswith("audit/")]
    assert [k for k in _keys(replica)] == primary_keys
    copy = Repository.open(replica, create=False)
    assert [m.id for m in copy.list_backups()] == [first, second]
    for backup_id in (first, second):
        copy.verify(backup_id).raise_for_problems()
    assert catalog.WalArchive(copy.storage).find(SEG2).name == SEG2

    code, again = _replicate(primary, replica, capsys)
    assert code == 0
    [row] = again["replicas"]
    assert (row["backups_copied"], row["wal_copied"], row["bytes_copied"]) == (0, 0, 0)


def test_a_tampered_object_in_the_primary_is_detected_and_not_copied_as_good(
    urls: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    primary, replica = urls
    good, bad = _backup(primary, 1), _backup(primary, 2)
    source = Repository.open(primary, create=False)
    entry = source.get(bad).object("database.dump")
    assert entry is not None
    data = bytearray(source.storage.get_bytes(entry.key))
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    source.storage.put_bytes(entry.key, bytes(data))
    _push_wal(primary, tmp_path, SEG1)
    wal_key = next(k for k in _keys(primary) if k.startswith("wal/"))
    wal_data = bytearray(source.storage.get_bytes(wal_key))
    wal_data[-8] ^= 0x01
    source.storage.put_bytes(wal_key, bytes(wal_data))

    code, result = _replicate(primary, replica, capsys)
    assert code == errors.IntegrityError.exit_code
    [row] = result["replicas"]
    assert row["error"] == "IntegrityCheckFailed" and row["synced_at"] is None
    assert row["backups_copied"] == 1 and row["backups_missing"] == 1
    assert row["wal_missing"] == 1
    assert entry.key in row["message"]
    copy = Repository.open(replica, create=False)
    assert [m.id for m in copy.list_backups()] == [good]
    replica_keys = _keys(replica)
    assert entry.key not in replica_keys  # the bad object never landed, not even alone
    assert f"base/{bad}/manifest.json" not in replica_keys
    assert wal_key not in replica_keys


class _FailAfter(Storage):
    """The replica's real storage, whose `limit`-th put dies mid-stream (a crash)."""

    def __init__(self, inner: Storage, limit: int) -> None:
        super().__init__(inner.url)
        self.inner, self.limit, self.puts = inner, limit, 0

    def put_stream(self, key: str, chunks: Iterable[bytes], *,
                   storage_class: str | None = None) -> int:
        self.puts += 1
        if self.puts >= self.limit:
            def dying() -> Iterator[bytes]:
                for n, chunk in enumerate(chunks):
                    if n == 1:
                        raise KeyboardInterrupt("killed mid-copy")
                    yield chunk
            return self.inner.put_stream(key, dying(), storage_class=storage_class)
        return self.inner.put_stream(key, chunks, storage_class=storage_class)

    def get_stream(self, key: str) -> Iterator[bytes]:
        return self.inner.get_stream(key)

    def list(self, prefix: str = "") -> Iterator[Any]:
        return self.inner.list(prefix)

    def head(self, key: str) -> Any:
        return self.inner.head(key)

    def delete(self, key: str) -> None:
        self.inner.delete(key)


def test_an_interrupted_copy_leaves_no_manifest_and_the_next_run_completes_it(
    urls: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    primary, replica = urls
    backup_id = _backup(primary, 3)
    source = Repository.open(primary, create=False)
    manifest = source.get(backup_id)
    order = [e.key for e in manifest.objects]
    # Objects are copied in manifest order: the second object's put dies mid-stream.
    target = Repository(_FailAfter(open_storage(replica), limit=2))
    with pytest.raises(KeyboardInterrupt):
        backup_replication.replicate_backups(source, target)
    keys = _keys(replica)
    assert order[0] in keys and order[1] not in keys
    assert manifest.key not in keys
    assert Repository.open(replica, create=False).list_backups() == []

    code, result = _replicate(primary, replica, capsys, "--no-wal")
    assert code == 0, result
    [row] = result["replicas"]
    assert row["backups_copied"] == 1 and row["last_backup"] == backup_id
    # the first object was verified in place, not uploaded again
    assert row["bytes_copied"] == manifest.objects[1].size
    copy = Repository.open(replica, create=False)
    copy.verify(backup_id).raise_for_problems()
    assert copy.get(backup_id) == manifest


def test_replica_settings_never_come_from_the_primary_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tonebridge_dr.runner.engines import replicas

    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("TONEBRIDGE_DR_S3_SSE", "aws:kms")
    monkeypatch.setenv("TONEBRIDGE_DR_S3_SSE_KMS_KEY_ID", "primary-key")
    config = replicas.replica_config(2, {"TONEBRIDGE_DR_REPLICA_2_AWS_REGION": "eu-west-1"})
    assert config.region == "eu-west-1" and config.access_key_id is None
    storage = open_storage("s3://bucket/x", s3=config)
    assert storage.region == "eu-west-1"  # type: ignore[attr-defined]
    assert storage._extra == {}  # type: ignore[attr-defined]
    assert storage.object_lock is None


def test_replicate_refuses_a_replica_equal_to_the_primary(
    urls: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    primary, _ = urls
    capsys.readouterr()
    code = cli.main(["replicate", "--repo", primary, "--to", primary + "/"])
    assert code == errors.UsageError.exit_code
    assert "must differ" in capsys.readouterr().err


def test_wal_replication_keeps_one_partial_per_name(
    urls: tuple[str, str], tmp_path: Path
) -> None:
    primary, replica = urls
    source, target = open_storage(primary), open_storage(replica)
    name = f"{SEG1}.partial"
    _push_wal(primary, tmp_path, name)
    assert replication.replicate_wal(source, target).copied == 1
    old = [k for k in _keys(replica) if k.startswith("wal/")]
    # wal-stream replaces the partial by a longer one in the primary
    for key in [k for k in _keys(primary) if k.startswith("wal/")]:
        source.delete(key)
    write_segment(tmp_path, name, seed=9)
    archive.Pusher(catalog.WalArchive(source), archive.PushSettings(primary)).push_file(
        tmp_path / name
    )
    report = replication.replicate_wal(source, target)
    assert report.copied == 1
    new = [k for k in _keys(replica) if k.startswith("wal/")]
    assert len(new) == 1 and new != old
