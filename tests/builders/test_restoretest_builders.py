"""Pure restore-test builders: golden manifests for examples/05-restore-test and a
scratch.database variant, the Job contract with the runner verb (args, env, volumes),
source resolution shared with restore Jobs, refusals, names.

Regenerate the golden files after an intended change with
`UPDATE_GOLDEN=1 .venv/bin/pytest tests/builders/test_restoretest_builders.py` and review
the diff.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import fixtures
from tests.fixtures import EXAMPLES, golden
from tonebridge_dr.api import runner_contract as contract
from tonebridge_dr.api.kinds import BackupPolicy, RestoreTest
from tonebridge_dr.builders import names, pods, restore
from tonebridge_dr.builders import restoretest as builders
from tonebridge_dr.builders.settings import RunnerSettings

GOLDEN = fixtures.GOLDEN / "restoretest"
NAMESPACE = "tonebridge"
RT_UID = "3c2b1a09-8f7e-4d6c-b5a4-0a9b8c7d0003"
POLICY_UID = "8f0b6c1e-5a52-4f7e-9d3a-2c9e3f7a0001"
SETTINGS = RunnerSettings()
TOKEN = "2030-01-01T00:00:00Z"
SCRATCH_DATABASE = {"database": {"dsnSecretRef": {"name": "scratch-db", "key": "dsn"}}}
Json = dict[str, Any]


def _document(path: Path) -> Json:
    (body,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return dict(body)


def policy(folder: str = "01-postgres-backup", **spec_changes: Any) -> BackupPolicy:
    body = _document(EXAMPLES / folder / "backuppolicy.yaml")
    body["metadata"].update(uid=POLICY_UID, namespace=NAMESPACE, generation=1)
    body["spec"].update(spec_changes)
    return BackupPolicy.from_body(body)


def rt_body(**spec_changes: Any) -> Json:
    body = _document(EXAMPLES / "05-restore-test" / "restoretest.yaml")
    body["metadata"].update(uid=RT_UID, namespace=NAMESPACE, generation=1)
    body["spec"].update(spec_changes)
    return {**body, "spec": {k: v for k, v in body["spec"].items() if v is not None}}


def restore_test(**spec_changes: Any) -> RestoreTest:
    return RestoreTest.from_body(rt_body(**spec_changes))


VARIANTS: dict[str, dict[str, Any]] = {
    "restoretest": {},
    "restoretest-scratch-database": {
        "scratch": SCRATCH_DATABASE,
        "method": None,
        "latest": None,
        "backupId": "20300101T020000Z-logical",
        "suspend": True,
        "timeZone": None,
        "objectives": {"rto": "1h30m"},
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"},
                      "limits": {"memory": "2Gi"}},
    },
    "restoretest-redis": {
        "source": {"policyRef": {"name": "tonebridge-redis"}},
        "method": None,
        "checks": [
            {"name": "sessions-present", "query": "COUNT session:*", "expect": {"min": 1}},
            {"name": "config-is-a-hash", "query": "TYPE config", "expect": {"equals": "hash"}},
        ],
    },
}
"""The golden cases: the example as it is, a test into an existing scratch database, and a
Redis policy's snapshots into a private redis-server."""
POLICY_OF = {"restoretest-redis": "02-redis-backup"}


def objects(variant: str) -> list[Json]:
    rt = restore_test(**VARIANTS[variant])
    source = policy(POLICY_OF.get(variant, "01-postgres-backup"))
    return [
        builders.build_restore_test_cronjob(rt, source, SETTINGS),
        builders.build_run_now_job(rt, source, SETTINGS, TOKEN),
    ]


def container(obj: Json) -> Json:
    spec = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
    return dict(spec["template"]["spec"]["containers"][0])


def pod_spec(obj: Json) -> Json:
    spec = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
    return dict(spec["template"]["spec"])


def env_of(obj: Json) -> dict[str, Json]:
    return {entry["name"]: entry for entry in container(obj)["env"]}


# --- golden files -----------------------------------------------------------------------------


def golden_cases() -> list[tuple[str, str]]:
    return [
        (variant, f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml")
        for variant in VARIANTS
        for obj in objects(variant)
    ]



@pytest.mark.parametrize(("variant", "filename"), golden_cases())
def test_manifest_matches_golden_file(variant: str, filename: str) -> None:
    obj = next(
        o for o in objects(variant)
        if f"{o['kind'].lower()}-{o['metadata']['name']}.yaml" == filename
    )
    path = GOLDEN / variant / filename
    golden.compare(path, obj)


def test_no_stale_golden_files() -> None:
    expected = {GOLDEN / variant / name for variant, name in golden_cases()}
    assert golden.stale(GOLDEN, expected) == []


# --- the CronJob ------------------------------------------------------------------------------


def test_cronjob_honours_schedule_time_zone_and_suspend() -> None:
    cronjob = builders.build_restore_test_cronjob(restore_test(), policy(), SETTINGS)
    spec = cronjob["spec"]
    assert cronjob["metadata"]["name"] == "tonebridge-db-quarterly-restore-test"
    assert (spec["schedule"], spec["timeZone"], spec["suspend"]) == (
        "0 3 1 1,4,7,10 *", "Asia/Tokyo", False)
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] == SETTINGS.starting_deadline_seconds
    suspended = builders.build_restore_test_cronjob(
        restore_test(suspend=True, timeZone=None), policy(), SETTINGS)
    assert suspended["spec"]["suspend"] is True and "timeZone" not in suspended["spec"]


def test_cronjob_and_run_now_job_are_owned_labelled_and_run_as_the_restore_account() -> None:
    rt = restore_test()
    for obj in objects("restoretest"):
        (owner,) = obj["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
            "RestoreTest", "tonebridge-db-quarterly", RT_UID, True)
        labels = obj["metadata"]["labels"]
        assert labels[names.LABEL_COMPONENT] == "restore-test"
        assert labels[names.LABEL_RESTORE_TEST] == labels[names.LABEL_INSTANCE] == (
            "tonebridge-db-quarterly")
        assert labels[names.LABEL_POLICY] == "tonebridge-db"
        pod = pod_spec(obj)
        assert pod["serviceAccountName"] == SETTINGS.restore_service_account
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container(obj)["securityContext"]["readOnlyRootFilesystem"] is True
    assert rt.metadata.name == "tonebridge-db-quarterly"


def test_run_now_job_is_the_cronjob_template_named_from_the_token() -> None:
    rt = restore_test(suspend=True)
    cronjob = builders.build_restore_test_cronjob(rt, policy(), SETTINGS)
    job = builders.build_run_now_job(rt, policy(), SETTINGS, TOKEN)
    assert job["spec"] == cronjob["spec"]["jobTemplate"]["spec"]
    assert job["metadata"]["annotations"] == {
        names.ANNOTATION_INSTANTIATE: "manual", names.ANNOTATION_RUN_NOW: TOKEN}
    assert job["metadata"]["name"] == builders.build_run_now_job(
        rt, policy(), SETTINGS, TOKEN)["metadata"]["name"]
    assert job["metadata"]["name"] != builders.build_run_now_job(
        rt, policy(), SETTINGS, "other")["metadata"]["name"]


def test_verdicts_and_unfixable_failures_fail_the_job_at_once() -> None:
    job = builders.build_run_now_job(restore_test(), policy(), SETTINGS, TOKEN)
    rule = job["spec"]["podFailurePolicy"]["rules"][0]
    assert rule["onExitCodes"]["containerName"] == names.CONTAINER_RESTORE_TEST
    assert rule["onExitCodes"]["values"] == sorted(contract.non_retriable_restore_codes())
    assert {15, 16, 6, 7} <= set(rule["onExitCodes"]["values"])


def test_resources_come_from_the_spec() -> None:
    asked = {"requests": {"cpu": "2", "memory": "4Gi"}}
    job = builders.build_run_now_job(restore_test(resources=asked), policy(), SETTINGS, TOKEN)
    assert container(job)["resources"] == asked
    default = builders.build_run_now_job(restore_test(resources=None), policy(), SETTINGS,
                                         TOKEN)
    assert container(default)["resources"] == SETTINGS.default_resources


# --- the runner contract ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, ["restore-test", "postgres", "--json", "--method", "logical",
              "--scratch-instance", builders.SCRATCH_MOUNT_PATH, "--rto", "4h",
              "--decrypt-key", restore.DECRYPT_KEY_PATH, "--name", "tonebridge-db-quarterly"]),
        ({"scratch": SCRATCH_DATABASE, "method": None, "objectives": None},
         ["restore-test", "postgres", "--json", "--method", "logical",
          "--decrypt-key", restore.DECRYPT_KEY_PATH, "--name", "tonebridge-db-quarterly"]),
        ({"method": None, "latest": None, "backupId": "b-1", "objectives": {"rto": "1h30m"}},
         ["restore-test", "postgres", "--json", "--backup", "b-1",
          "--scratch-instance", builders.SCRATCH_MOUNT_PATH, "--rto", "1h30m",
          "--decrypt-key", restore.DECRYPT_KEY_PATH, "--name", "tonebridge-db-quarterly"]),
        ({"method": "physical"},
         ["restore-test", "postgres", "--json", "--method", "physical",
          "--scratch-instance", builders.SCRATCH_MOUNT_PATH, "--rto", "4h",
          "--decrypt-key", restore.DECRYPT_KEY_PATH, "--name", "tonebridge-db-quarterly"]),
    ],
)
def test_runner_args(changes: Json, expected: list[str]) -> None:
    job = builders.build_run_now_job(restore_test(**changes), policy(), SETTINGS, TOKEN)
    assert container(job)["args"] == expected
    assert container(job)["command"] == list(SETTINGS.command)


def test_unencrypted_backups_get_no_key() -> None:
    rt = restore_test(source={"policyRef": {"name": "demo-db"}})
    job = builders.build_run_now_job(rt, policy("00-local-demo"), SETTINGS, TOKEN)
    assert "--decrypt-key" not in container(job)["args"]
    assert [v["name"] for v in pod_spec(job)["volumes"]] == ["tmp", "scratch"]


def test_env_reads_like_a_restore_job_and_carries_the_checks() -> None:
    rt = restore_test()
    job = builders.build_run_now_job(rt, policy(), SETTINGS, TOKEN)
    env = env_of(job)
    source = builders.resolve_source(rt, policy())
    for entry in restore.source_env(source):  # exactly what restore Jobs get
        assert env[entry["name"]] == entry
    assert env[contract.ENV_REPO]["value"] == "s3://tonebridge-backups/postgresql/tonebridge-db"
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == (
        "tonebridge-backup-reader")
    assert contract.ENV_S3_SSE not in env and contract.ENV_S3_SSE_KMS_KEY_ID not in env
    assert contract.ENV_TARGET_DSN not in env  # scratch.instance: the runner starts one
    checks = json.loads(env[contract.ENV_CHECKS]["value"])
    assert checks == rt_body()["spec"]["checks"]  # CRD keys, as written
    assert env[pods.ENV_HOME]["value"] == pods.TMP_MOUNT_PATH


def test_scratch_database_dsn_comes_from_its_secret() -> None:
    rt = restore_test(scratch=SCRATCH_DATABASE, method=None,
                      checks=[{"name": "rows", "query": "SELECT 1",
                               "expect": {"nonEmpty": True}}])
    env = env_of(builders.build_run_now_job(rt, policy(), SETTINGS, TOKEN))
    assert env[contract.ENV_TARGET_DSN] == {
        "name": contract.ENV_TARGET_DSN,
        "valueFrom": {"secretKeyRef": {"name": "scratch-db", "key": "dsn"}},
    }
    assert json.loads(env[contract.ENV_CHECKS]["value"]) == [
        {"name": "rows", "query": "SELECT 1", "expect": {"nonEmpty": True}}]
    no_checks = restore_test(scratch=SCRATCH_DATABASE, method=None, checks=None)
    assert builders.checks_json(no_checks) == "[]"


def test_no_secret_value_and_only_secret_refs() -> None:
    for variant in VARIANTS:
        for obj in objects(variant):
            for entry in container(obj)["env"]:
                if entry["name"] in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                     contract.ENV_TARGET_DSN):
                    assert "value" not in entry and "secretKeyRef" in entry["valueFrom"]


@pytest.mark.parametrize(
    ("instance", "volume"),
    [
        ({}, {"name": "scratch", "emptyDir": {}}),
        ({"storageSize": "20Gi", "storageClassName": "fast"},
         {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {
             "metadata": {"labels": names.restore_test_labels("tonebridge-db",
                                                              "tonebridge-db-quarterly")},
             "spec": {"accessModes": ["ReadWriteOnce"],
                      "resources": {"requests": {"storage": "20Gi"}},
                      "volumeMode": "Filesystem", "storageClassName": "fast"}}}}),
    ],
)
def test_scratch_instance_volume(instance: Json, volume: Json) -> None:
    job = builders.build_run_now_job(restore_test(scratch={"instance": instance}), policy(),
                                     SETTINGS, TOKEN)
    volumes = {v["name"]: v for v in pod_spec(job)["volumes"]}
    assert volumes["scratch"] == volume
    assert {"name": "scratch", "mountPath": builders.SCRATCH_MOUNT_PATH} in (
        container(job)["volumeMounts"])


def test_scratch_database_has_no_scratch_volume() -> None:
    rt = restore_test(scratch=SCRATCH_DATABASE, method=None)
    job = builders.build_run_now_job(rt, policy(), SETTINGS, TOKEN)
    assert "scratch" not in {v["name"] for v in pod_spec(job)["volumes"]}
    assert "--scratch-instance" not in container(job)["args"]


# --- the source -------------------------------------------------------------------------------


def test_a_repository_given_directly_is_read_with_its_credentials() -> None:
    rt = restore_test(source={
        "repository": {"url": "s3://dr-bucket/pg", "region": "eu-west-1",
                       "credentialsSecretRef": {"name": "dr-reader"}},
        "policyName": "tonebridge-db",
        "privateKeySecretRef": {"name": "restore-key", "key": "key.asc"},
    })
    job = builders.build_run_now_job(rt, None, SETTINGS, TOKEN)
    env = env_of(job)
    assert env[contract.ENV_REPO]["value"] == "s3://dr-bucket/pg/tonebridge-db"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "dr-reader"
    assert job["metadata"]["labels"][names.LABEL_POLICY] == "tonebridge-db"
    source = builders.resolve_source(rt, None)
    assert [(s.name, s.keys) for s in builders.secret_requirements(rt, source)] == [
        ("dr-reader", ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")),
        ("restore-key", ("key.asc",)),
    ]


def test_secret_requirements_in_a_stable_order() -> None:
    rt = restore_test(scratch=SCRATCH_DATABASE, method=None)
    source = builders.resolve_source(rt, policy())
    assert [(s.name, s.keys, s.purpose) for s in builders.secret_requirements(rt, source)] == [
        ("scratch-db", ("dsn",), "scratch database DSN"),
        ("tonebridge-backup-reader", ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
         "repository read credentials"),
        ("tonebridge-restore-gpg", ("private.asc",), "OpenPGP private key"),
    ]


@pytest.mark.parametrize(
    ("rt_changes", "policy_folder", "policy_changes", "reason", "words"),
    [
        ({"source": {"policyRef": {"name": "tonebridge-redis"}}}, "02-redis-backup", {},
         "InvalidSpec", "backs up redis, not PostgreSQL: it has no backups this RestoreTest"),
        ({"scratch": SCRATCH_DATABASE, "method": None}, "01-postgres-backup",
         {"schedules": [{"name": "p", "cron": "0 1 * * *", "method": "physical"}]},
         "InvalidSpec", "takes no logical backups (its schedules take physical): "
         "scratch.database needs logical backups"),
        ({}, "01-postgres-backup",
         {"encryption": {"publicKeySecretRef": {"name": "k", "key": "public.asc"}}},
         "MissingDecryptionKey", "names the OpenPGP private key"),
    ],
)
def test_tests_that_cannot_read_the_backups_are_refused(
    rt_changes: Json, policy_folder: str, policy_changes: Json, reason: str, words: str,
) -> None:
    rt = restore_test(**rt_changes)
    with pytest.raises(builders.RestoreSpecError) as caught:
        builders.build_restore_test_cronjob(rt, policy(policy_folder, **policy_changes),
                                            SETTINGS)
    assert caught.value.reason == reason and words in caught.value.message


def test_the_policy_of_the_source_is_required() -> None:
    with pytest.raises(ValueError, match="tonebridge-db"):
        builders.build_restore_test_cronjob(restore_test(), None, SETTINGS)


# --- names and honesty ------------------------------------------------------------------------


def test_names_fit_kubernetes_limits() -> None:
    long = "a" * 60 + "-x"
    rt = restore_test()
    body = rt_body()
    body["metadata"]["name"] = long
    rt = RestoreTest.from_body(body)
    cronjob = builders.build_restore_test_cronjob(rt, policy(), SETTINGS)
    job = builders.build_run_now_job(rt, policy(), SETTINGS, TOKEN)
    assert len(cronjob["metadata"]["name"]) <= names.CRONJOB_NAME_LIMIT
    assert len(job["metadata"]["name"]) <= names.JOB_NAME_LIMIT
    assert len(job["metadata"]["labels"][names.LABEL_RESTORE_TEST]) <= names.NAME_LIMIT


def test_unused_settings_are_named() -> None:
    assert builders.unused_settings(restore_test()) == []  # the example uses what works
    with_image = restore_test(scratch={"instance": {"image": "postgres:16"}})
    assert builders.unused_settings(with_image) == [
        "scratch.instance.image is not used: the scratch PostgreSQL runs inside the test Job "
        f"(runner image, spec.resources) on its volume at {builders.SCRATCH_MOUNT_PATH}"
    ]
    assert builders.unused_settings(restore_test(scratch=SCRATCH_DATABASE, method=None)) == []
    named = {"database": {**SCRATCH_DATABASE["database"], "database": "scratch"}}
    assert builders.unused_settings(restore_test(scratch=named, method=None)) == []
    rt = restore_test(scratch=named, method=None)
    args = builders.runner_args(rt, builders.resolve_source(rt, policy()))
    assert args[args.index("--database") + 1] == "scratch"  # replaces the DSN's database
    both = restore_test(scratch={"instance": {"image": "postgres:16",
                                              "resources": {"limits": {"memory": "1Gi"}}}})
    assert builders.unused_settings(both)[0].startswith(
        "scratch.instance.image and scratch.instance.resources are not used")


def test_a_redis_policy_is_tested_with_the_redis_verb_and_a_private_server() -> None:
    rt = restore_test(**VARIANTS["restoretest-redis"])
    job = builders.build_run_now_job(rt, policy("02-redis-backup"), SETTINGS, TOKEN)
    args = container(job)["args"]
    assert args[:3] == ["restore-test", "redis", "--json"]
    assert "--method" not in args and "--database" not in args
    assert args[args.index("--scratch-instance") + 1] == builders.SCRATCH_MOUNT_PATH
    into_database = restore_test(**{**VARIANTS["restoretest-redis"], "scratch": SCRATCH_DATABASE})
    with pytest.raises(restore.RestoreSpecError, match=r"use scratch\.instance"):
        builders.resolve_source(into_database, policy("02-redis-backup"))
    postgres_only = restore_test(**{**VARIANTS["restoretest-redis"], "method": "logical"})
    with pytest.raises(restore.RestoreSpecError, match="backs up redis"):
        builders.resolve_source(postgres_only, policy("02-redis-backup"))
