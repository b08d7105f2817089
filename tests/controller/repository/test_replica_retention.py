"""The operator's retention run applies the policy's plan in each replica too (with the
replica's own credentials), never a mirror of deletions in the primary."""

from __future__ import annotations

import datetime as dt

import pytest

from tests.controller.repository.test_catalog_reader import _clean_aws_env
from tests.controller.test_operator_units import _policy, _Secrets
from tests.fixtures import s3 as s3_fixtures
from tonebridge_dr.controller.core import maintenance
from tonebridge_dr.runner.repository import replication
from tonebridge_dr.runner.repository.catalog import Repository
from tonebridge_dr.runner.storage import S3Config, open_storage

T0 = dt.datetime(2026, 11, 1, 2, 0, tzinfo=dt.UTC)


def test_replica_keeps_what_the_rules_keep_and_survives_a_wiped_primary(
    moto_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _clean_aws_env(monkeypatch)
    primary_bucket = s3_fixtures.new_bucket(moto_server)
    replica_bucket = s3_fixtures.new_bucket(moto_server)
    creds = {"AWS_ACCESS_KEY_ID": "AKIAW", "AWS_SECRET_ACCESS_KEY": "w-secret"}
    replica_creds = {"AWS_ACCESS_KEY_ID": "AKIAR", "AWS_SECRET_ACCESS_KEY": "r-secret"}
    config = S3Config("AKIAW", "w-secret", endpoint_url=moto_server)
    replica_config = S3Config("AKIAR", "r-secret", endpoint_url=moto_server,
                              region="eu-west-1", from_env=False)
    primary = Repository(open_storage(f"s3://{primary_bucket}/pg/p", s3=config))
    replica = Repository(open_storage(f"s3://{replica_bucket}/dr/p", s3=replica_config))
    ids = []
    for day in range(3):
        with primary.begin(engine="postgres", method="logical", schedule="daily",
                           now=T0 + dt.timedelta(days=day)) as writer:
            writer.put_object("database.dump", [b"x" * 100])
            ids.append(writer.commit(databases=["db"], server_version="16", tools={}).id)
    assert replication.replicate_backups(primary, replica).copied == ids
    policy = _policy({
        "schedules": [{"name": "daily", "cron": "0 2 * * *"}],
        "retention": {"keepLast": 2},
        "repository": {"url": f"s3://{primary_bucket}/pg", "endpoint": moto_server,
                       "credentialsSecretRef": {"name": "writer"},
                       "replicas": [{"url": f"s3://{replica_bucket}/dr", "region": "eu-west-1",
                                     "endpoint": moto_server,
                                     "credentialsSecretRef": {"name": "replica"}}]},
    })
    kube = _Secrets({"writer": creds, "replica": replica_creds})
    outcome = maintenance.apply_retention(policy, kube, trigger="backup",  # type: ignore[arg-type]
                                          now=T0 + dt.timedelta(days=3))
    assert outcome.error is None, outcome
    assert [m.id for m in primary.list_backups()] == ids[1:]
    assert [m.id for m in replica.list_backups()] == ids[1:]
    assert any("Replica s3://" in sentence and "deleted 1 backup" in sentence
               for sentence in outcome.extra)

    # The primary is wiped (a compromised account, a deleted bucket's contents): the
    # replica keeps everything its own rules keep, and the next run deletes nothing more.
    for manifest in primary.list_backups():
        primary.delete_backup(manifest.id)
    outcome = maintenance.apply_retention(policy, kube, trigger="backup",  # type: ignore[arg-type]
                                          now=T0 + dt.timedelta(days=3))
    assert [m.id for m in replica.list_backups()] == ids[1:]
    assert "w-secret" not in str(outcome) and "r-secret" not in str(outcome)
