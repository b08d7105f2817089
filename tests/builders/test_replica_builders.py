"""Replication builders: the `<policy>-replicate` CronJob and the Job after a backup
(golden files; regenerate with `UPDATE_GOLDEN=1 .venv/bin/pytest tests/builders`)."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from tests import fixtures
from tests.builders.test_builders import SETTINGS, load_policy, pod_specs, walk
from tests.fixtures import golden
from tonebridge_dr.api import runner_contract as contract
from tonebridge_dr.api.kinds import BackupPolicy
from tonebridge_dr.builders import backup, names, replicas

GOLDEN = fixtures.GOLDEN / "replicas"
EXAMPLE = "01-postgres-backup"
BACKUP_ID = "20261129T024100Z"
REPLICAS = [
    {"url": "s3://tonebridge-backups-dr/postgresql", "region": "eu-west-1",
     "credentialsSecretRef": {"name": "tonebridge-dr-replica-writer"}},
    {"url": "s3://tonebridge-backups-minio/postgresql",
     "endpoint": "https://minio.dr.example:9000"},
]


def policy(replica_list: list[dict[str, Any]] | None = None) -> BackupPolicy:
    base = load_policy(EXAMPLE)
    spec = base.model_dump(mode="json", by_alias=True, exclude_none=True)["spec"]
    repository = dict(spec["repository"], replicas=REPLICAS if replica_list is None
                      else replica_list)
    return load_policy(EXAMPLE, repository=repository)


def objects() -> list[dict[str, Any]]:
    p = policy()
    cronjob = replicas.build_replicate_cronjob(p, SETTINGS)
    job = replicas.build_replicate_job(p, SETTINGS, BACKUP_ID)
    assert cronjob is not None and job is not None
    return [cronjob, job]


@pytest.mark.parametrize("index", [0, 1])
def test_replication_manifests_match_golden_files(index: int) -> None:
    obj = objects()[index]
    golden.compare(GOLDEN / f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml", obj)


def test_no_stale_golden_files() -> None:
    expected = {GOLDEN / f"{o['kind'].lower()}-{o['metadata']['name']}.yaml" for o in objects()}
    assert golden.stale(GOLDEN, expected) == []


def test_the_cronjob_is_owned_only_with_replicas_and_names_every_replica_folder() -> None:
    with_replicas = backup.desired_objects(policy(), SETTINGS)
    assert [o["metadata"]["name"] for o in with_replicas][-1] == "tonebridge-db-replicate"
    without = backup.desired_objects(load_policy(EXAMPLE), SETTINGS)
    assert all(o["metadata"]["name"] != "tonebridge-db-replicate" for o in without)
    assert replicas.build_replicate_job(load_policy(EXAMPLE), SETTINGS, BACKUP_ID) is None
    cronjob = with_replicas[-1]
    labels = cronjob["spec"]["jobTemplate"]["metadata"]["labels"]
    assert labels[names.LABEL_TASK] == names.TASK_REPLICATE
    assert labels[names.LABEL_COMPONENT] == names.COMPONENT_BACKUP
    args = pod_specs(cronjob)[0]["containers"][0]["args"]
    assert args == ["replicate", "--to", "s3://tonebridge-backups-dr/postgresql/tonebridge-db",
                    "--to", "s3://tonebridge-backups-minio/postgresql/tonebridge-db", "--json"]


def test_replica_credentials_reach_the_pod_by_secret_key_ref_only() -> None:
    env = {v["name"]: v for v in pod_specs(objects()[0])[0]["containers"][0]["env"]}
    key = contract.replica_env(1, "AWS_SECRET_ACCESS_KEY")
    assert env[key]["valueFrom"]["secretKeyRef"] == {
        "name": "tonebridge-dr-replica-writer", "key": "AWS_SECRET_ACCESS_KEY"}
    assert env[contract.replica_env(1, "AWS_REGION")]["value"] == "eu-west-1"
    assert env[contract.replica_env(2, "AWS_ENDPOINT_URL_S3")]["value"] == (
        "https://minio.dr.example:9000")
    assert contract.replica_env(2, "AWS_ACCESS_KEY_ID") not in env  # pod identity
    # the primary is read with the read-only role, and nothing the primary writes with
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == (
        "tonebridge-backup-reader")
    assert contract.ENV_S3_SSE not in env
    for name, value in walk(objects()):
        if name == "value" and isinstance(value, str):
            assert "SECRET" not in value.upper() or value.startswith("tonebridge-")


def test_the_job_after_a_backup_is_named_from_the_backup() -> None:
    job = objects()[1]
    assert job["metadata"]["name"] == names.replicate_job_name("tonebridge-db", BACKUP_ID)
    assert job["metadata"]["name"] != names.replicate_job_name("tonebridge-db", "20261130T000000Z")
    assert job["spec"]["template"]["metadata"]["labels"][names.LABEL_TASK] == "replicate"


@pytest.mark.parametrize(("replica_list", "message"), [
    ([{"url": "s3://tonebridge-backups/postgresql"}], "must differ"),
    ([{"url": "s3://tonebridge-backups/postgresql/"}], "must differ"),
    ([{"url": "s3://dr-bucket/x"}, {"url": "s3://dr-bucket/x"}], "unique"),
    ([{"url": f"s3://dr-bucket-{i}/x"} for i in range(4)], "at most 3"),
    ([{"url": "file:///dr", "region": "eu-west-1"}], "only apply to s3://"),
    ([{"url": "http://dr/x"}], "s3://"),
])
def test_invalid_replicas_are_refused(replica_list: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        policy(replica_list)
    assert message in str(caught.value)
