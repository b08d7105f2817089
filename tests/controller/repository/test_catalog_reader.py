"""The controller's catalog reader against a real repository on moto S3: explicit
per-policy credentials (never the operator's environment), its error sentences."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.controller.test_operator_units import _policy, _Secrets
from tests.fixtures import s3 as s3_fixtures
from tonebridge_dr.controller.core import catalog
from tonebridge_dr.runner.repository.catalog import Repository
from tonebridge_dr.runner.storage import S3Config, open_storage


def _clean_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                 "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def test_open_storage_with_explicit_s3_config(
    moto_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _clean_aws_env(monkeypatch)
    bucket = s3_fixtures.new_bucket(moto_server)
    config = S3Config(access_key_id="AKIAX", secret_access_key="top-secret",
                      endpoint_url=moto_server, region="eu-west-1")
    storage = open_storage(f"s3://{bucket}/p", create=False, s3=config)
    storage.put_bytes("a/b", b"data")
    assert storage.get_bytes("a/b") == b"data"
    assert "AKIAX" not in repr(config) and "top-secret" not in repr(config)
    assert storage.region == "eu-west-1"


def test_catalog_reader(
    moto_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _clean_aws_env(monkeypatch)
    bucket = s3_fixtures.new_bucket(moto_server)
    repo_url = f"s3://{bucket}/repo"
    creds = {"AWS_ACCESS_KEY_ID": "AKIAREAD", "AWS_SECRET_ACCESS_KEY": "read-secret"}
    config = S3Config("AKIAWRITE", "write-secret", endpoint_url=moto_server)
    # the policy (named "p") reads its own folder of the repository
    repo = Repository(open_storage(f"{repo_url}/p", s3=config))
    with repo.begin(engine="postgres", method="logical") as writer:
        writer.put_object("database.dump", [b"x" * 100])
        manifest = writer.commit(databases=["db"], server_version="15", tools={})
    spec = {"repository": {"url": repo_url, "endpoint": moto_server,
                           "credentialsSecretRef": {"name": "writer"},
                           "restoreCredentialsSecretRef": {"name": "reader"}}}
    policy = _policy(spec)
    reader = catalog.CatalogReader()
    read = reader.read(policy, _Secrets({"reader": creds}))  # type: ignore[arg-type]
    assert read.summary.error is None
    assert read.summary.newest_backup_id == manifest.id
    assert read.summary.backup_count == 1
    assert read.summary.total_size_bytes == manifest.size_bytes == read.newest_size_bytes
    assert read.summary.newest_backup_method == "logical"

    missing = reader.read(policy, _Secrets({}))  # type: ignore[arg-type]
    assert missing.summary.error == 'repository credentials Secret "reader" not found'
    incomplete = reader.read(policy, _Secrets({"reader": {"AWS_ACCESS_KEY_ID": "k"}}))  # type: ignore[arg-type]
    assert "needs keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in str(
        incomplete.summary.error
    )
    gone = _policy({"repository": {**spec["repository"], "url": "s3://no-such-bucket-x/r"}})
    unreachable = reader.read(gone, _Secrets({"reader": creds}))  # type: ignore[arg-type]
    assert "bucket no-such-bucket-x does not exist" in str(unreachable.summary.error)
    assert "read-secret" not in str(unreachable.summary.error)

    empty = _policy({"repository": {"url": (tmp_path / "none").as_uri()}})
    assert reader.read(empty, _Secrets({})).summary == catalog.CatalogSummary()  # type: ignore[arg-type]


def test_object_lock_check_reads_the_bucket_configuration(
    moto_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _clean_aws_env(monkeypatch)
    creds = {"AWS_ACCESS_KEY_ID": "AKIAREAD", "AWS_SECRET_ACCESS_KEY": "read-secret"}
    lock = {"mode": "COMPLIANCE", "retainFor": "30d"}

    def policy(bucket: str) -> Any:
        return _policy({"repository": {
            "url": f"s3://{bucket}/repo", "endpoint": moto_server, "objectLock": lock,
            "credentialsSecretRef": {"name": "writer"},
            "restoreCredentialsSecretRef": {"name": "reader"}}})

    reader = catalog.CatalogReader()
    kube: Any = _Secrets({"reader": creds})
    locked = s3_fixtures.new_bucket(moto_server, object_lock=True)
    plain = s3_fixtures.new_bucket(moto_server)
    assert reader.object_lock_enabled(policy(locked), kube) is True
    assert reader.object_lock_enabled(policy(plain), kube) is False
    # cannot tell (no Secret, no bucket, no s3://): no verdict, no exception
    assert reader.object_lock_enabled(policy(locked), _Secrets({})) is None  # type: ignore[arg-type]
    assert reader.object_lock_enabled(policy("no-such-bucket-y"), kube) is None
    assert reader.object_lock_enabled(_policy(), kube) is None
