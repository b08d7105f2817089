"""Pure builders: golden manifests from the examples, security contract, names and limits.

Regenerate the golden files after an intended change with
`UPDATE_GOLDEN=1 .venv/bin/pytest tests/builders/test_builders.py` and review the diff.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import fixtures
from tests.fixtures import ROOT, golden
from tonebridge_dr.api import formats
from tonebridge_dr.api import runner_contract as contract
from tonebridge_dr.api.backuppolicy import TargetKind
from tonebridge_dr.api.common import Repository, ResourceRequirements, SecretRef
from tonebridge_dr.api.kinds import BackupPolicy
from tonebridge_dr.builders import backup, names, pods
from tonebridge_dr.builders.settings import RunnerSettings

EXAMPLES = ROOT / "examples"
GOLDEN = fixtures.GOLDEN / "builders"

SUPPORTED_EXAMPLES = ("00-local-demo", "01-postgres-backup", "02-redis-backup",
                      "06-config-backup", "07-uploads-backup")
UID = "8f0b6c1e-5a52-4f7e-9d3a-2c9e3f7a0001"
NAMESPACE = "tonebridge"
RUN_NOW_TOKEN = "2024-01-15T10:30:00Z"
SETTINGS = RunnerSettings()
HYPOTHESIS = settings(derandomize=True, max_examples=150, deadline=None)
#: The runner pod's identity from the downward API (pods.IDENTITY_FIELDS).
IDENTITY = dict(pods.IDENTITY_FIELDS)


def is_secret(var: dict[str, Any]) -> bool:
    return "secretKeyRef" in var.get("valueFrom", {})


def policy_body(example: str) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((EXAMPLES / example / "backuppolicy.yaml").read_text())
    body["metadata"].update(uid=UID, namespace=NAMESPACE, generation=3)
    return body


def load_policy(example: str, **spec_changes: Any) -> BackupPolicy:
    body = policy_body(example)
    body["spec"].update(spec_changes)
    return BackupPolicy.from_body(body)


def secret_values(example: str) -> list[str]:
    """Every value (and every line of every value) of the example's Secrets."""
    values: list[str] = []
    for doc in yaml.safe_load_all((EXAMPLES / example / "secrets.yaml").read_text()):
        for value in (doc or {}).get("stringData", {}).values():
            values.append(value.strip())
            values.extend(line.strip() for line in value.splitlines() if len(line.strip()) > 8)
    return values


def all_objects(example: str) -> list[dict[str, Any]]:
    policy = load_policy(example)
    objects = backup.desired_objects(policy, SETTINGS)
    return [*objects, *backup.build_run_now_jobs(policy, SETTINGS, RUN_NOW_TOKEN)]


def pod_specs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj["spec"]
    if obj["kind"] == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]["spec"]]
    return [spec["template"]["spec"]]


def pod_templates(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj["spec"]
    if obj["kind"] == "CronJob":
        return dict(spec["jobTemplate"]["spec"]["template"])
    return dict(spec["template"])


def walk(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


# --- golden files ---------------------------------------------------------------------------


def golden_cases() -> list[tuple[str, str]]:
    cases = []
    for example in SUPPORTED_EXAMPLES:
        for obj in all_objects(example):
            cases.append((example, f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"))
    return cases



@pytest.mark.parametrize(("example", "filename"), golden_cases())
def test_manifest_matches_golden_file(example: str, filename: str) -> None:
    obj = next(
        o
        for o in all_objects(example)
        if f"{o['kind'].lower()}-{o['metadata']['name']}.yaml" == filename
    )
    path = GOLDEN / example / filename
    golden.compare(path, obj)


def test_no_stale_golden_files() -> None:
    expected = {GOLDEN / example / name for example, name in golden_cases()}
    assert golden.stale(GOLDEN, expected) == []


def test_golden_files_cover_every_object_kind() -> None:
    kinds = {name.split("-")[0] for _, name in golden_cases()}
    assert kinds == {"cronjob", "job", "deployment"}


# --- what the policy owns -----------------------------------------------------------------------


def test_one_cronjob_per_schedule_in_spec_order() -> None:
    policy = load_policy("01-postgres-backup")
    cronjobs = backup.build_backup_cronjobs(policy, SETTINGS)
    assert [c["metadata"]["name"] for c in cronjobs] == [
        "tonebridge-db-daily-full",
        "tonebridge-db-hourly-hot",
        "tonebridge-db-daily-physical",
    ]
    assert [c["spec"]["schedule"] for c in cronjobs] == ["0 2 * * *", "15 * * * *", "30 3 * * *"]
    assert [c["metadata"]["labels"][names.LABEL_SCHEDULE] for c in cronjobs] == [
        "daily-full",
        "hourly-hot",
        "daily-physical",
    ]


def test_desired_objects_are_cronjobs_then_the_wal_streamer() -> None:
    kinds = [o["kind"] for o in backup.desired_objects(load_policy("01-postgres-backup"), SETTINGS)]
    assert kinds == ["CronJob", "CronJob", "CronJob", "Deployment"]
    kinds = [o["kind"] for o in backup.desired_objects(load_policy("02-redis-backup"), SETTINGS)]
    assert kinds == ["CronJob"]


def test_builders_are_deterministic_and_do_not_share_state() -> None:
    policy = load_policy("01-postgres-backup")
    first = backup.desired_objects(policy, SETTINGS)
    first[0]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["env"].clear()
    first[0]["metadata"]["labels"]["x"] = "y"
    assert backup.desired_objects(policy, SETTINGS) == backup.desired_objects(policy, SETTINGS)
    assert backup.desired_objects(policy, SETTINGS) != first
    assert SETTINGS.default_resources == RunnerSettings().default_resources


@pytest.mark.parametrize("example", SUPPORTED_EXAMPLES)
def test_every_object_is_owned_by_the_policy_and_labelled(example: str) -> None:
    name = policy_body(example)["metadata"]["name"]
    for obj in all_objects(example):
        assert obj["metadata"]["namespace"] == NAMESPACE
        assert obj["metadata"]["ownerReferences"] == [
            {
                "apiVersion": "dr.tonebridge.io/v1alpha1",
                "kind": "BackupPolicy",
                "name": name,
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        labels = obj["metadata"]["labels"]
        assert labels[names.LABEL_POLICY] == name
        assert labels[names.LABEL_MANAGED_BY] == "tonebridge-dr"
        assert labels["app.kubernetes.io/name"] == "tonebridge-dr"
        assert labels["app.kubernetes.io/instance"] == name
        assert labels["app.kubernetes.io/part-of"] == "tonebridge"
        component = "wal-stream" if obj["kind"] == "Deployment" else "backup"
        assert labels[names.LABEL_COMPONENT] == component
        # pods carry the same labels, so the selector finds Jobs and pods too
        assert pod_templates(obj)["metadata"]["labels"] == labels
        selector = dict(part.split("=") for part in names.selector_for_policy(name).split(","))
        assert selector.items() <= labels.items()
        with_component = names.selector_for_policy(name, component)
        assert dict(p.split("=") for p in with_component.split(",")).items() <= labels.items()


def test_cronjob_settings_follow_the_spec_and_operator_settings() -> None:
    custom = RunnerSettings(
        image="registry.example/tonebridge-dr:1.2.3",
        image_pull_policy="Always",
        starting_deadline_seconds=120,
        active_deadline_seconds=3600,
        backoff_limit=2,
        ttl_seconds_after_finished=600,
        successful_jobs_history_limit=5,
        failed_jobs_history_limit=7,
        backup_service_account="custom-backup",
    )
    policy = load_policy("01-postgres-backup", suspend=True)
    daily, hourly, _ = backup.build_backup_cronjobs(policy, custom)
    spec = daily["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["suspend"] is True
    assert spec["startingDeadlineSeconds"] == 120
    assert spec["successfulJobsHistoryLimit"] == 5
    assert spec["failedJobsHistoryLimit"] == 7
    assert spec["timeZone"] == "Asia/Tokyo"
    assert "timeZone" not in hourly["spec"]
    job = spec["jobTemplate"]["spec"]
    assert job["activeDeadlineSeconds"] == 3600
    assert job["backoffLimit"] == 2
    assert job["ttlSecondsAfterFinished"] == 600
    pod = job["template"]["spec"]
    assert pod["serviceAccountName"] == "custom-backup"
    assert pod["containers"][0]["image"] == "registry.example/tonebridge-dr:1.2.3"
    assert pod["containers"][0]["imagePullPolicy"] == "Always"
    not_suspended = backup.build_backup_cronjobs(load_policy("01-postgres-backup"), custom)
    assert not_suspended[0]["spec"]["suspend"] is False


def test_non_retriable_exit_codes_fail_the_job_at_once() -> None:
    cronjob = backup.build_backup_cronjobs(load_policy("02-redis-backup"), SETTINGS)[0]
    rules = cronjob["spec"]["jobTemplate"]["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob"
    assert rules[0]["onExitCodes"] == {
        "containerName": "backup", "operator": "In", "values": [2, 3, 8, 10, 15, 16]
    }
    without = backup.build_backup_cronjobs(
        load_policy("02-redis-backup"), RunnerSettings(non_retriable_exit_codes=())
    )[0]
    assert "podFailurePolicy" not in without["spec"]["jobTemplate"]["spec"]


def test_resources_come_from_the_spec_else_the_defaults() -> None:
    pg = backup.build_backup_cronjobs(load_policy("01-postgres-backup"), SETTINGS)[0]
    container = pod_specs(pg)[0]["containers"][0]
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": "512Mi"},
        "limits": {"memory": "2Gi"},
    }
    redis = backup.build_backup_cronjobs(load_policy("02-redis-backup"), SETTINGS)[0]
    assert pod_specs(redis)[0]["containers"][0]["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"memory": "512Mi"},
    }


# --- security contract --------------------------------------------------------------------------


@pytest.mark.parametrize("example", SUPPORTED_EXAMPLES)
def test_pods_are_restricted(example: str) -> None:
    for obj in all_objects(example):
        for pod in pod_specs(obj):
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            # Only a kubernetes target's backup reads the API (with the backup identity).
            kube_api = load_policy(example).spec.target.kubernetes is not None
            assert pod["automountServiceAccountToken"] is kube_api
            assert pod["serviceAccountName"] == "tonebridge-dr-backup"
            expected_restart = "Always" if obj["kind"] == "Deployment" else "Never"
            assert pod["restartPolicy"] == expected_restart
            assert {"name": "tmp", "emptyDir": {}} in pod["volumes"]
            (container,) = pod["containers"]
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
            assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
            assert container["terminationMessagePath"] == "/dev/termination-log"
            assert container["command"] == ["tonebridge-dr"]


def test_run_as_user_setting_sets_uid_gid_and_fs_group() -> None:
    cronjob = backup.build_backup_cronjobs(
        load_policy("02-redis-backup"), RunnerSettings(run_as_user=65532)
    )[0]
    context = pod_specs(cronjob)[0]["securityContext"]
    assert context["runAsUser"] == context["runAsGroup"] == context["fsGroup"] == 65532


@pytest.mark.parametrize("example", SUPPORTED_EXAMPLES)
def test_no_secret_value_appears_in_any_object(example: str) -> None:
    dumped = json.dumps(all_objects(example))
    for value in secret_values(example):
        assert value not in dumped


@pytest.mark.parametrize("example", SUPPORTED_EXAMPLES)
def test_credentials_only_come_from_secret_refs(example: str) -> None:
    policy = load_policy(example)
    repo = policy.spec.repository
    allowed_secrets = {
        ref.name
        for ref in (
            policy.spec.target.postgres.dsn_secret_ref if policy.spec.target.postgres else None,
            policy.spec.target.redis.url_secret_ref if policy.spec.target.redis else None,
            policy.spec.target.bucket.credentials_secret_ref if policy.spec.target.bucket else None,
            repo.credentials_secret_ref,
            policy.spec.encryption.public_key_secret_ref if policy.spec.encryption else None,
            policy.spec.target.kubernetes.git.credentials_secret_ref
            if policy.spec.target.kubernetes and policy.spec.target.kubernetes.git else None,
        )
        if ref is not None
    }
    plain_values = {
        "TONEBRIDGE_DR_REPO", "AWS_REGION", "AWS_ENDPOINT_URL_S3", "TONEBRIDGE_DR_S3_SSE",
        "TONEBRIDGE_DR_S3_SSE_KMS_KEY_ID", "HOME", contract.ENV_COMPRESSION,
        contract.ENV_COMPRESSION_LEVEL, contract.ENV_ENCRYPT_TO,  # a public key's path
        # the source bucket's URL, region and endpoint (its credentials: secretKeyRef)
        contract.ENV_BUCKET_SOURCE, contract.ENV_BUCKET_REGION, contract.ENV_BUCKET_ENDPOINT,
    }
    for obj in all_objects(example):
        for pod in pod_specs(obj):
            for container in pod["containers"]:
                assert "envFrom" not in container
                for var in container["env"]:
                    if "value" in var:
                        assert var["name"] in plain_values
                    elif var["name"] in IDENTITY:  # the pod's own fields, for audit records
                        path = IDENTITY[var["name"]]
                        assert var["valueFrom"] == {"fieldRef": {"fieldPath": path}}
                    else:
                        assert set(var["valueFrom"]) == {"secretKeyRef"}
                        assert var["valueFrom"]["secretKeyRef"]["name"] in allowed_secrets
            for volume in pod["volumes"]:
                if "secret" in volume:
                    assert volume["secret"]["secretName"] in allowed_secrets
        referenced = {v["secretName"] for k, v in walk(obj) if k == "secret"}
        referenced |= {v["name"] for k, v in walk(obj) if k == "secretKeyRef"}
        assert referenced <= allowed_secrets
    # the restore role's credentials never reach backup pods
    if repo.restore_credentials_secret_ref is not None:
        dumped = json.dumps(all_objects(example))
        assert repo.restore_credentials_secret_ref.name not in dumped


def test_the_private_key_is_never_referenced_by_backup_objects() -> None:
    policy = load_policy("01-postgres-backup")
    assert policy.spec.encryption is not None
    private = policy.spec.encryption.private_key_secret_ref
    assert private is not None
    dumped = json.dumps(all_objects("01-postgres-backup"))
    assert private.name not in dumped
    assert private.key not in dumped
    assert "PRIVATE KEY" not in dumped


def test_public_key_is_mounted_read_only_with_only_that_key() -> None:
    for obj in all_objects("01-postgres-backup"):
        pod = pod_specs(obj)[0]
        volume = next(v for v in pod["volumes"] if "secret" in v)
        assert volume["secret"]["secretName"] == "tonebridge-backup-gpg"
        assert volume["secret"]["items"] == [{"key": "public.asc", "path": "public.asc"}]
        mount = next(
            m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"]
        )
        assert mount == {
            "name": volume["name"],
            "mountPath": "/etc/tonebridge-dr/encryption",
            "readOnly": True,
        }
    cronjob = backup.build_backup_cronjobs(load_policy("01-postgres-backup"), SETTINGS)[0]
    args = pod_specs(cronjob)[0]["containers"][0]["args"]
    assert args[args.index("--encrypt-to") + 1] == "/etc/tonebridge-dr/encryption/public.asc"
    plain = backup.build_backup_cronjobs(load_policy("02-redis-backup"), SETTINGS)[0]
    assert "--encrypt-to" not in pod_specs(plain)[0]["containers"][0]["args"]
    assert all("secret" not in v for v in pod_specs(plain)[0]["volumes"])


def test_s3_settings_reach_the_runner_as_env() -> None:
    env = backup.pod_env(load_policy("01-postgres-backup"))
    values = {v["name"]: v.get("value") for v in env}
    # each policy has its own folder in the repository
    assert values["TONEBRIDGE_DR_REPO"] == "s3://tonebridge-backups/postgresql/tonebridge-db"
    assert values["AWS_REGION"] == "ap-northeast-1"
    assert values["TONEBRIDGE_DR_S3_SSE"] == "aws:kms"
    assert str(values["TONEBRIDGE_DR_S3_SSE_KMS_KEY_ID"]).startswith("arn:aws:kms:")
    refs = {v["name"]: v["valueFrom"]["secretKeyRef"] for v in env if is_secret(v)}
    assert refs["TONEBRIDGE_DR_DSN"] == {"name": "tonebridge-db-backup", "key": "dsn"}
    assert refs["AWS_ACCESS_KEY_ID"] == {
        "name": "tonebridge-backup-writer", "key": "AWS_ACCESS_KEY_ID"
    }
    assert refs["AWS_SESSION_TOKEN"]["optional"] is True
    body = policy_body("02-redis-backup")
    body["spec"]["repository"]["endpoint"] = "http://127.0.0.1:9000"
    env = backup.pod_env(BackupPolicy.from_body(body))
    values = {v["name"]: v.get("value") for v in env}
    assert values["AWS_ENDPOINT_URL_S3"] == "http://127.0.0.1:9000"
    assert "TONEBRIDGE_DR_S3_SSE" not in values
    refs = {v["name"]: v["valueFrom"]["secretKeyRef"] for v in env if is_secret(v)}
    assert refs["TONEBRIDGE_DR_REDIS_URL"] == {"name": "tonebridge-redis", "key": "url"}


def test_file_repository_without_credentials_has_no_aws_env() -> None:
    env = backup.pod_env(load_policy("00-local-demo"))
    assert {v["name"] for v in env} == {
        "TONEBRIDGE_DR_DSN", "TONEBRIDGE_DR_REPO", "HOME", *IDENTITY
    }


def test_env_names_match_the_runner() -> None:
    # builders may not import the runner; the test holds the two spellings together
    from tonebridge_dr.runner.engines.postgres import connection
    from tonebridge_dr.runner.engines.redis import endpoints
    from tonebridge_dr.runner.result import DEFAULT_TERMINATION_LOG
    from tonebridge_dr.runner.storage import REPO_ENV, s3

    assert backup.ENV_REPO == REPO_ENV
    assert backup.ENV_DSN == connection.DSN_ENV
    assert backup.ENV_REDIS_URL == endpoints.SOURCE_URL_ENV
    assert backup.ENV_S3_SSE == s3.SSE_ENV
    assert backup.ENV_S3_SSE_KMS_KEY_ID == s3.SSE_KMS_KEY_ENV
    assert backup.TERMINATION_MESSAGE_PATH == DEFAULT_TERMINATION_LOG


# --- the runner pod skeleton (builders/pods.py) -------------------------------------------------


def test_the_pod_skeleton_serves_a_job_of_a_new_kind() -> None:
    """A Job nobody builds yet (a failover step calling the Kubernetes API) gets the same
    restricted pod as backups and restores from `pods` alone."""
    step = pods.RunnerPod(
        container="failover-step",
        args=["failover", "promote"],
        env=[pods.secret_env("TONEBRIDGE_DR_DSN", "primary", "dsn")],
        service_account="tonebridge-dr-failover",
        kube_api=True,
    )
    labels = {names.LABEL_COMPONENT: "failover"}
    spec = pods.runner_job_spec(step, labels, SETTINGS, non_retriable_exit_codes=[10, 2])
    template = spec["template"]
    assert template["metadata"] == {
        "labels": labels, "annotations": {names.ANNOTATION_DEFAULT_CONTAINER: "failover-step"}}
    pod = template["spec"]
    assert pod["automountServiceAccountToken"] is True
    assert pod["serviceAccountName"] == "tonebridge-dr-failover"
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {}}]
    (container,) = pod["containers"]
    assert container["command"] == list(SETTINGS.command)
    assert container["args"] == ["failover", "promote"]
    assert container["env"][-1] == {"name": "HOME", "value": pods.TMP_MOUNT_PATH}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": pods.TMP_MOUNT_PATH}]
    assert container["terminationMessagePath"] == pods.TERMINATION_MESSAGE_PATH
    assert container["resources"] == SETTINGS.default_resources
    assert container["resources"] is not SETTINGS.default_resources  # callers may edit it
    (fail, ignore) = spec["podFailurePolicy"]["rules"]
    assert fail["onExitCodes"] == {
        "containerName": "failover-step", "operator": "In", "values": [2, 10]}
    assert ignore == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    assert spec["backoffLimit"] == SETTINGS.backoff_limit
    again = pods.runner_job_spec(step, labels, SETTINGS, non_retriable_exit_codes=(),
                                 backoff_limit=0)
    assert "podFailurePolicy" not in again and again["backoffLimit"] == 0


def test_the_pod_skeleton_keeps_an_explicit_home_and_takes_spec_resources() -> None:
    env = pods.runner_env([pods.value_env("HOME", "/data")])
    assert env[0] == {"name": "HOME", "value": "/data"}
    assert [v["name"] for v in env[1:]] == list(IDENTITY)
    assert env == pods.runner_env(env)  # idempotent


def test_runner_pods_know_who_they_are_from_the_downward_api() -> None:
    """Pod, namespace, ServiceAccount and Job reach the runner for its audit records."""
    for example in SUPPORTED_EXAMPLES:
        for obj in all_objects(example):
            for pod in pod_specs(obj):
                (container,) = pod["containers"]
                fields = {
                    v["name"]: v["valueFrom"]["fieldRef"]["fieldPath"]
                    for v in container["env"] if "fieldRef" in v.get("valueFrom", {})
                }
                assert fields == {
                    "TONEBRIDGE_DR_POD_NAME": "metadata.name",
                    "TONEBRIDGE_DR_POD_NAMESPACE": "metadata.namespace",
                    "TONEBRIDGE_DR_SERVICE_ACCOUNT": "spec.serviceAccountName",
                    "TONEBRIDGE_DR_JOB_NAME": "metadata.labels['batch.kubernetes.io/job-name']",
                }
    requested = ResourceRequirements.model_validate({"limits": {"memory": "1Gi"}})
    assert pods.resources(requested, SETTINGS) == {"limits": {"memory": "1Gi"}}
    assert pods.resources(ResourceRequirements(), SETTINGS) == SETTINGS.default_resources


def test_only_writers_get_the_repository_encryption_settings() -> None:
    repository = Repository.model_validate(
        {"url": "s3://bucket/prefix", "region": "eu-west-1", "sse": "aws:kms",
         "kmsKeyId": "alias/backups"})
    reader = pods.repository_env(repository, "s3://bucket/prefix/p", SecretRef(name="ro"),
                                 writes=False)
    writer = pods.repository_env(repository, "s3://bucket/prefix/p", None, writes=True)
    assert [v["name"] for v in reader] == [
        contract.ENV_REPO, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
        "AWS_REGION"]
    assert [v["name"] for v in writer] == [
        contract.ENV_REPO, "AWS_REGION", contract.ENV_S3_SSE, contract.ENV_S3_SSE_KMS_KEY_ID]


# --- runner arguments ---------------------------------------------------------------------------


def test_runner_args_per_schedule() -> None:
    policy = load_policy("01-postgres-backup")
    daily, hourly, physical = policy.spec.schedules
    codec = ["--compression", "zstd", "--level", "6",
             "--encrypt-to", "/etc/tonebridge-dr/encryption/public.asc",
             "--storage-class", "STANDARD_IA"]
    assert backup.runner_args(policy, daily) == ["backup", "postgres", "--method", "logical",
                                                 *codec, "--schedule", "daily-full", "--json"]
    assert backup.runner_args(policy, hourly) == [
        "backup", "postgres", "--method", "logical",
        "--table", "transformations", "--table", "analytics", "--table", "usage_tracking",
        *codec, "--schedule", "hourly-hot", "--json",
    ]
    assert backup.runner_args(policy, physical) == [
        "backup", "postgres", "--method", "physical", *codec,
        "--schedule", "daily-physical", "--json"]
    redis = load_policy("02-redis-backup")
    assert backup.runner_args(redis, redis.spec.schedules[0]) == [
        "backup", "redis", "--compression", "zstd",
        "--schedule", redis.spec.schedules[0].name, "--json"
    ]


def test_incremental_physical_schedules_pass_the_chain_flags() -> None:
    body = policy_body("00-local-demo")
    schedule = body["spec"]["schedules"][0]
    schedule.update(method="physical", incremental=True)
    policy = BackupPolicy.from_body(body)
    args = backup.runner_args(policy, policy.spec.schedules[0])
    assert args[:5] == ["backup", "postgres", "--method", "physical", "--incremental"]
    assert "--full-every" not in args  # the runner's default, 7d
    schedule["fullEvery"] = "72h"
    policy = BackupPolicy.from_body(body)
    args = backup.runner_args(policy, policy.spec.schedules[0])
    assert args[4:7] == ["--incremental", "--full-every", "3d"]


def test_method_defaults_to_the_targets_default() -> None:
    body = policy_body("00-local-demo")
    del body["spec"]["schedules"][0]["method"]
    policy = BackupPolicy.from_body(body)
    assert backup.runner_args(policy, policy.spec.schedules[0])[2:4] == ["--method", "logical"]


@pytest.mark.parametrize(
    ("compression", "expected"),
    [
        ({"algorithm": "gzip", "level": 9}, ["--compression", "gzip", "--level", "9"]),
        ({"algorithm": "none"}, ["--compression", "none"]),
        ({}, ["--compression", "zstd"]),
    ],
)
def test_compression_flags(compression: dict[str, Any], expected: list[str]) -> None:
    policy = load_policy("02-redis-backup", compression=compression)
    args = backup.runner_args(policy, policy.spec.schedules[0])
    assert args == [
        "backup", "redis", *expected, "--schedule", policy.spec.schedules[0].name, "--json"]


@pytest.mark.parametrize("example", SUPPORTED_EXAMPLES)
def test_the_runner_cli_accepts_every_backup_command(example: str) -> None:
    from tonebridge_dr.runner import cli

    policy = load_policy(example)
    for cronjob, schedule in zip(
        backup.build_backup_cronjobs(policy, SETTINGS), policy.spec.schedules, strict=True
    ):
        container = pod_specs(cronjob)[0]["containers"][0]
        assert container["command"] == ["tonebridge-dr"]
        # build_parser loads only the engine the arguments name (as in a real Job)
        args = cli.build_parser(container["args"]).parse_args(container["args"])
        assert args.verb == "backup"
        assert args.engine == policy.spec.target.kind.value
        assert args.json is True
        assert args.repo is None and getattr(args, "dsn", None) is None  # from env only
        if policy.spec.target.kind is TargetKind.POSTGRES:
            assert args.method == policy.spec.method_of(schedule).value
            assert args.table == list(schedule.tables or [])


# --- unsupported targets -------------------------------------------------------------------------


def test_every_target_kind_has_a_runner() -> None:
    """postgres, redis, kubernetes and bucket all back up now: nothing is refused with
    TargetNotSupported (the mechanism stays for kinds a newer API may add)."""
    assert set(backup.SUPPORTED_TARGETS) == set(TargetKind)
    for example in SUPPORTED_EXAMPLES:
        assert backup.desired_objects(load_policy(example), SETTINGS)


def test_policy_without_uid_is_refused() -> None:
    body = policy_body("02-redis-backup")
    del body["metadata"]["uid"]
    with pytest.raises(ValueError, match="uid"):
        backup.desired_objects(BackupPolicy.from_body(body), SETTINGS)


# --- WAL streaming -------------------------------------------------------------------------------


def test_wal_stream_deployment() -> None:
    policy = load_policy("01-postgres-backup")
    deployment = backup.build_wal_stream_deployment(policy, SETTINGS)
    assert deployment is not None
    assert deployment["metadata"]["name"] == "tonebridge-db-wal-stream"
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"][
        "labels"
    ].items()
    (container,) = spec["template"]["spec"]["containers"]
    assert container["name"] == "wal-stream"
    # walArchive.archiveTimeout: 5m in the example
    assert container["args"] == [
        "wal-stream", "--slot", "tonebridge_dr_tonebridge_db", "--archive-timeout", "5m"
    ]
    # Streamed WAL is compressed and encrypted like the policy's backups.
    assert container["env"] == [
        *backup.pod_env(policy),
        {"name": contract.ENV_COMPRESSION, "value": "zstd"},
        {"name": contract.ENV_COMPRESSION_LEVEL, "value": "6"},
        {"name": contract.ENV_ENCRYPT_TO, "value": "/etc/tonebridge-dr/encryption/public.asc"},
    ]


def test_wal_stream_uses_the_slot_from_the_spec() -> None:
    body = policy_body("01-postgres-backup")
    body["spec"]["target"]["postgres"]["walArchive"]["slot"] = "custom_slot"
    body["spec"]["target"]["postgres"]["walArchive"]["archiveTimeout"] = "1h30m"
    deployment = backup.build_wal_stream_deployment(BackupPolicy.from_body(body), SETTINGS)
    assert deployment is not None
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args == ["wal-stream", "--slot", "custom_slot", "--archive-timeout", "1h30m"]


def test_no_wal_streamer_for_archive_command_or_without_wal() -> None:
    body = policy_body("01-postgres-backup")
    body["spec"]["target"]["postgres"]["walArchive"] = {"mode": "archive_command"}
    policy = BackupPolicy.from_body(body)
    assert backup.build_wal_stream_deployment(policy, SETTINGS) is None
    assert [o["kind"] for o in backup.desired_objects(policy, SETTINGS)] == ["CronJob"] * 3
    assert backup.build_wal_stream_deployment(load_policy("00-local-demo"), SETTINGS) is None
    assert backup.build_wal_stream_deployment(load_policy("02-redis-backup"), SETTINGS) is None


# --- run-now Jobs --------------------------------------------------------------------------------


def test_run_now_job_is_the_cronjob_template_owned_by_the_policy() -> None:
    policy = load_policy("01-postgres-backup")
    cronjob = backup.build_backup_cronjobs(policy, SETTINGS)[1]
    original = copy.deepcopy(cronjob)
    name = names.run_now_job_name("tonebridge-db", "hourly-hot", "token-1")
    job = backup.build_run_now_job(cronjob, name=name, token="token-1")
    assert cronjob == original  # input untouched
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    assert job["metadata"]["name"] == name
    assert job["metadata"]["namespace"] == NAMESPACE
    assert job["metadata"]["labels"] == cronjob["spec"]["jobTemplate"]["metadata"]["labels"]
    assert job["metadata"]["annotations"] == {
        "cronjob.kubernetes.io/instantiate": "manual",
        "dr.tonebridge.io/run-now": "token-1",
    }
    assert job["metadata"]["ownerReferences"] == cronjob["metadata"]["ownerReferences"]
    assert job["metadata"]["ownerReferences"][0]["kind"] == "BackupPolicy"
    assert job["spec"] == cronjob["spec"]["jobTemplate"]["spec"]
    job["spec"]["backoffLimit"] = 99
    assert cronjob == original  # the Job's spec is a copy
    other_owner = [{"apiVersion": "v1", "kind": "X", "name": "x", "uid": "1"}]
    job = backup.build_run_now_job(cronjob, name=name, token="t", owner_references=other_owner)
    assert job["metadata"]["ownerReferences"] == other_owner


def test_run_now_jobs_are_named_deterministically_from_the_token() -> None:
    policy = load_policy("01-postgres-backup")
    first = backup.build_run_now_jobs(policy, SETTINGS, "abc")
    again = backup.build_run_now_jobs(policy, SETTINGS, "abc")
    other = backup.build_run_now_jobs(policy, SETTINGS, "abd")
    assert first == again
    assert len(first) == 3
    assert {j["metadata"]["name"] for j in first}.isdisjoint(
        j["metadata"]["name"] for j in other
    )
    only = backup.build_run_now_jobs(policy, SETTINGS, "abc", schedules=["daily-physical"])
    assert [j["metadata"]["labels"][names.LABEL_SCHEDULE] for j in only] == ["daily-physical"]


# --- names ---------------------------------------------------------------------------------------

DNS_SUBDOMAIN = re.compile(formats.DNS_SUBDOMAIN_RE)
DNS_LABEL = re.compile(formats.DNS_LABEL_RE)
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
SLOT = re.compile(r"^[a-z0-9_]+$")

label_names = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
policy_names = st.lists(label_names, min_size=1, max_size=5).map(".".join).filter(
    lambda n: len(n) <= 253
)


def test_short_names_are_plain() -> None:
    assert names.cronjob_name("tonebridge-db", "daily-full") == "tonebridge-db-daily-full"
    assert names.wal_stream_name("tonebridge-db") == "tonebridge-db-wal-stream"
    assert names.wal_slot_name("tonebridge-db") == "tonebridge_dr_tonebridge_db"
    assert names.run_now_job_name("db", "daily", "t").startswith("db-daily-now-")
    assert names.label_value("tonebridge-db") == "tonebridge-db"
    assert names.standard_labels("db", names.COMPONENT_BACKUP, "daily") == {
        "app.kubernetes.io/name": "tonebridge-dr",
        "app.kubernetes.io/instance": "db",
        "app.kubernetes.io/component": "backup",
        "app.kubernetes.io/managed-by": "tonebridge-dr",
        "app.kubernetes.io/part-of": "tonebridge",
        "dr.tonebridge.io/policy": "db",
        "dr.tonebridge.io/schedule": "daily",
    }
    assert names.selector_for_policy("db") == (
        "app.kubernetes.io/managed-by=tonebridge-dr,dr.tonebridge.io/policy=db"
    )


def test_long_names_are_cut_with_a_distinguishing_hash() -> None:
    a = names.cronjob_name("a" * 60, "daily")
    b = names.cronjob_name("a" * 60, "hourly")
    assert len(a) == len(b) == 52
    assert a != b
    assert a.startswith("a" * 40)


@HYPOTHESIS
@given(policy=policy_names, schedule=label_names)
def test_cronjob_names_fit_and_are_valid(policy: str, schedule: str) -> None:
    name = names.cronjob_name(policy, schedule)
    assert len(name) <= 52
    assert DNS_SUBDOMAIN.fullmatch(name)
    assert name == names.cronjob_name(policy, schedule)
    if len(policy) + len(schedule) + 1 <= 52:
        assert name == f"{policy}-{schedule}"


@HYPOTHESIS
@given(policy=policy_names, schedule=label_names, token=st.text(max_size=300))
def test_run_now_job_names_fit_and_depend_on_the_token(
    policy: str, schedule: str, token: str
) -> None:
    name = names.run_now_job_name(policy, schedule, token)
    assert len(name) <= 63
    assert DNS_SUBDOMAIN.fullmatch(name)
    assert name == names.run_now_job_name(policy, schedule, token)
    assert name != names.run_now_job_name(policy, schedule, token + "x")


@HYPOTHESIS
@given(policy=policy_names)
def test_wal_names_fit_and_are_valid(policy: str) -> None:
    deployment = names.wal_stream_name(policy)
    assert len(deployment) <= 63 and DNS_SUBDOMAIN.fullmatch(deployment)
    slot = names.wal_slot_name(policy)
    assert len(slot) <= 63 and SLOT.fullmatch(slot)
    labels = names.standard_labels(policy, names.COMPONENT_WAL_STREAM)
    assert all(len(v) <= 63 and LABEL_VALUE.fullmatch(v) for v in labels.values())


@HYPOTHESIS
@given(value=st.text(max_size=300))
def test_label_values_are_always_valid(value: str) -> None:
    result = names.label_value(value)
    assert len(result) <= 63 and LABEL_VALUE.fullmatch(result)
    if len(value) <= 63 and LABEL_VALUE.fullmatch(value):
        assert result == value


@HYPOTHESIS
@given(policy=policy_names, schedule=label_names)
def test_built_objects_fit_kubernetes_limits(policy: str, schedule: str) -> None:
    body = policy_body("01-postgres-backup")
    body["metadata"]["name"] = policy
    body["spec"]["schedules"] = [{"name": schedule, "cron": "@daily"}]
    built = BackupPolicy.from_body(body)
    for obj in backup.desired_objects(built, SETTINGS):
        assert len(obj["metadata"]["name"]) <= (52 if obj["kind"] == "CronJob" else 63)
        for value in obj["metadata"]["labels"].values():
            assert len(value) <= 63 and LABEL_VALUE.fullmatch(value)
    for job in backup.build_run_now_jobs(built, SETTINGS, "token"):
        assert len(job["metadata"]["name"]) <= 63
