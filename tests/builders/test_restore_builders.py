"""Pure restore builders: golden manifests from examples/03-restore, the security contract,
runner arguments per kind of restore (checked against the runner's own parser), names.

Regenerate the golden files after an intended change with
`UPDATE_GOLDEN=1 .venv/bin/pytest tests/builders/test_restore_builders.py` and review the diff.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import fixtures
from tests.fixtures import ROOT, golden
from tonebridge_dr.api.kinds import BackupPolicy, RestoreRequest
from tonebridge_dr.builders import names
from tonebridge_dr.builders import restore as builders
from tonebridge_dr.builders.settings import RunnerSettings
from tonebridge_dr.runner import cli

EXAMPLES = ROOT / "examples"
GOLDEN = fixtures.GOLDEN / "restore"
NAMESPACE = "tonebridge"
RR_UID = "5d1c0a9e-3b7f-4c2a-8e61-0a9b8c7d0002"
POLICY_UID = "8f0b6c1e-5a52-4f7e-9d3a-2c9e3f7a0001"
SETTINGS = RunnerSettings()
REQUESTS = sorted(p.name for p in (EXAMPLES / "03-restore").glob("restorerequest-*.yaml"))
POLICY_EXAMPLES = {"tonebridge-db": "01-postgres-backup", "tonebridge-redis": "02-redis-backup",
                   "tonebridge-config": "06-config-backup",
                   "tonebridge-uploads": "07-uploads-backup"}
"""The example folder of each BackupPolicy the restore examples name."""


def _yaml(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def policy(name: str = "tonebridge-db", **spec_changes: Any) -> BackupPolicy:
    (body,) = _yaml(EXAMPLES / POLICY_EXAMPLES[name] / "backuppolicy.yaml")
    body["metadata"].update(uid=POLICY_UID, namespace=NAMESPACE, generation=1)
    body["spec"].update(spec_changes)
    return BackupPolicy.from_body(body)


def request_body(filename: str) -> dict[str, Any]:
    (body,) = _yaml(EXAMPLES / "03-restore" / filename)
    body["metadata"].update(uid=RR_UID, namespace=NAMESPACE, generation=1)
    return body


def request(filename: str, **spec_changes: Any) -> RestoreRequest:
    body = request_body(filename)
    body["spec"].update(spec_changes)
    return RestoreRequest.from_body(body)


def policy_for(rr: RestoreRequest) -> BackupPolicy | None:
    ref = rr.spec.source.policy_ref
    return policy(ref.name) if ref is not None else None


def objects(filename: str) -> list[dict[str, Any]]:
    rr = request(filename)
    found = [builders.build_restore_job(rr, policy_for(rr), SETTINGS)]
    claim = builders.build_restore_claim(rr, policy_for(rr))
    if claim is not None:
        found.append(claim)
    image = builders.instance_image(rr, 15)
    if image is not None:
        found.extend(builders.build_instance(rr, policy_for(rr), image=image))
    return found


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return dict(obj["spec"]["template"]["spec"])


def walk(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


# --- golden files -----------------------------------------------------------------------------


def golden_cases() -> list[tuple[str, str]]:
    return [
        (filename, f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml")
        for filename in REQUESTS
        for obj in objects(filename)
    ]



@pytest.mark.parametrize(("example", "filename"), golden_cases())
def test_manifest_matches_golden_file(example: str, filename: str) -> None:
    obj = next(
        o for o in objects(example)
        if f"{o['kind'].lower()}-{o['metadata']['name']}.yaml" == filename
    )
    path = GOLDEN / example.removesuffix(".yaml") / filename
    golden.compare(path, obj)


def test_no_stale_golden_files() -> None:
    expected = {GOLDEN / e.removesuffix(".yaml") / name for e, name in golden_cases()}
    assert golden.stale(GOLDEN, expected) == []


def test_every_kind_of_restore_has_an_example() -> None:
    kinds = set()
    for filename in REQUESTS:
        spec = request(filename).spec
        if spec.repair is not None:
            kinds.add("repair")
        elif spec.tables:
            kinds.add("tables")
        elif spec.target.volume is not None:
            kinds.add("pitr" if spec.target_time else "physical")
        elif spec.target.redis is not None:
            kinds.add("redis")
        elif spec.target.bucket is not None:
            kinds.add("bucket")
        else:
            kinds.add("logical")
        if spec.source.repository is not None:
            kinds.add("disaster")
    assert kinds == {"repair", "tables", "pitr", "physical", "logical", "disaster", "redis",
                     "bucket"}


# --- security contract ------------------------------------------------------------------------


def secret_values() -> list[str]:
    values: list[str] = []
    for folder in ("01-postgres-backup", "02-redis-backup", "03-restore", "07-uploads-backup"):
        for doc in _yaml(EXAMPLES / folder / "secrets.yaml"):
            for value in (doc.get("stringData") or {}).values():
                values.append(value.strip())
                values.extend(line.strip() for line in value.splitlines() if len(line) > 8)
    return values


@pytest.mark.parametrize("example", REQUESTS)
def test_no_secret_value_appears_in_any_manifest(example: str) -> None:
    text = "\n".join(golden.render(o) for o in objects(example))
    for value in secret_values():
        if value and not value.startswith("-----") and value not in ("(export with:",):
            assert value not in text


@pytest.mark.parametrize("example", REQUESTS)
def test_restore_pods_read_with_the_restore_role_and_never_see_the_public_key(
    example: str,
) -> None:
    job = builders.build_restore_job(request(example), policy_for(request(example)), SETTINGS)
    text = golden.render(job)
    assert "tonebridge-backup-writer" not in text  # the write role stays with backups
    assert "tonebridge-backup-gpg" not in text  # backups' public key: not needed here
    pod = pod_spec(job)
    (container,) = pod["containers"]
    refs = {
        v["valueFrom"]["secretKeyRef"]["name"]
        for v in container["env"] if "secretKeyRef" in v.get("valueFrom", {})
    }
    assert refs <= {"tonebridge-backup-reader", "tonebridge-db-restore", "tonebridge-redis-restore",
                    "uploads-writer"}
    assert pod["serviceAccountName"] == SETTINGS.restore_service_account
    # only a Kubernetes restore talks to the API (it applies the objects)
    assert pod["automountServiceAccountToken"] is (example == "restorerequest-config.yaml")
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    for scheme in ("postgresql://", "redis://"):
        assert not any(isinstance(v, str) and scheme in v for _, v in walk(job))


def _encrypted(example: str) -> bool:
    rr = request(example)
    return builders.resolve_source(rr, policy_for(rr)).private_key is not None


ENCRYPTED = [example for example in REQUESTS if _encrypted(example)]


def test_the_examples_cover_encrypted_and_plain_backups() -> None:
    # the Redis and the uploads policies do not encrypt
    assert "restorerequest-redis.yaml" not in ENCRYPTED
    assert "restorerequest-bucket.yaml" not in ENCRYPTED
    assert len(ENCRYPTED) == len(REQUESTS) - 2
    job = builders.build_restore_job(request("restorerequest-redis.yaml"),
                                     policy("tonebridge-redis"), SETTINGS)
    pod = pod_spec(job)
    assert not [v for v in pod["volumes"] if "secret" in v]
    assert "--decrypt-key" not in pod["containers"][0]["args"]


@pytest.mark.parametrize("example", ENCRYPTED)
def test_the_private_key_is_a_mounted_file_named_in_the_arguments(example: str) -> None:
    job = builders.build_restore_job(request(example), policy_for(request(example)), SETTINGS)
    pod = pod_spec(job)
    (container,) = pod["containers"]
    (key_volume,) = [v for v in pod["volumes"] if "secret" in v]
    assert key_volume["secret"]["secretName"] == "tonebridge-restore-gpg"
    assert key_volume["secret"]["items"] == [{"key": "private.asc", "path": "private.asc"}]
    assert key_volume["secret"]["defaultMode"] == 0o440
    mount = next(m for m in container["volumeMounts"] if m["name"] == key_volume["name"])
    assert mount == {"name": key_volume["name"], "mountPath": builders.KEY_MOUNT_PATH,
                     "readOnly": True}
    args = container["args"]
    assert args[args.index("--decrypt-key") + 1] == builders.DECRYPT_KEY_PATH
    assert not any("PRIVATE KEY" in str(v) for _, v in walk(job))


def test_the_job_is_owned_by_the_request_and_labelled_for_it() -> None:
    job = builders.build_restore_job(request("restorerequest-table.yaml"), policy(), SETTINGS)
    metadata = job["metadata"]
    assert metadata["name"] == "restore-transformations-restore"
    assert metadata["namespace"] == NAMESPACE
    assert metadata["ownerReferences"] == [
        {
            "apiVersion": "dr.tonebridge.io/v1alpha1",
            "kind": "RestoreRequest",
            "name": "restore-transformations",
            "uid": RR_UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    labels = metadata["labels"]
    assert labels[builders.LABEL_RESTORE_REQUEST] == "restore-transformations"
    assert labels[names.LABEL_COMPONENT] == names.COMPONENT_RESTORE
    assert labels[names.LABEL_POLICY] == "tonebridge-db"
    assert job["spec"]["template"]["metadata"]["labels"] == labels
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert {6, 7, 11} <= set(rules[0]["onExitCodes"]["values"])
    assert rules[0]["action"] == "FailJob"


def test_volume_claims_and_instances_outlive_the_request() -> None:
    rr = request("restorerequest-pitr.yaml")
    claim = builders.build_restore_claim(rr, policy())
    assert claim is not None
    assert "ownerReferences" not in claim["metadata"]
    assert claim["metadata"]["name"] == "tonebridge-db-pitr"
    assert claim["spec"]["resources"]["requests"]["storage"] == "100Gi"
    assert claim["spec"]["storageClassName"] == "gp3"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    statefulset, service = builders.build_instance(rr, policy(), image="postgres:16")
    for obj in (statefulset, service):
        assert "ownerReferences" not in obj["metadata"]
    pod = pod_spec(statefulset)
    assert pod["volumes"] == [
        {"name": "data", "persistentVolumeClaim": {"claimName": "tonebridge-db-pitr"}}
    ]
    (container,) = pod["containers"]
    assert container["image"] == "postgres:16"
    assert {"name": "PGDATA", "value": builders.DATA_DIR} in container["env"]
    assert service["spec"]["selector"] == statefulset["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["port"] == 5432


def test_instance_image_defaults_to_the_restored_major_version() -> None:
    rr = request("restorerequest-pitr.yaml")
    assert builders.instance_image(rr, 15) == "postgres:16"  # the spec's image wins
    body = request_body("restorerequest-pitr.yaml")
    del body["spec"]["target"]["instance"]["image"]
    bare = RestoreRequest.from_body(body)
    assert builders.instance_image(bare, 15) == "postgres:15"
    assert builders.instance_image(bare, None) is None
    assert builders.server_major({"server_version": "15.8 (Debian 15.8-0+deb12u1)"}) == 15
    assert builders.server_major({"server_version": 160004}) == 16
    assert builders.server_major({}) is None


# --- runner arguments per kind ------------------------------------------------------------------


def args_of(rr: RestoreRequest) -> list[str]:
    source = builders.resolve_source(rr, policy_for(rr))
    return builders.runner_args(rr, source)


def test_logical_latest_arguments() -> None:
    assert args_of(request("restorerequest-logical-latest.yaml")) == [
        "restore", "postgres", "--backup", "latest", "--create",
        "--decrypt-key", builders.DECRYPT_KEY_PATH, "--json",
    ]


def test_table_arguments_replace_only_with_overwrite() -> None:
    assert args_of(request("restorerequest-table.yaml")) == [
        "restore", "postgres", "--backup", "latest", "--table", "transformations", "--clean",
        "--decrypt-key", builders.DECRYPT_KEY_PATH, "--json",
    ]
    assert "--clean" not in args_of(request("restorerequest-table.yaml", overwrite=False))


def test_repair_arguments() -> None:
    assert args_of(request("restorerequest-repair.yaml")) == [
        "restore", "postgres", "--backup", "20240115T020000Z-daily-full",
        "--table", "transformations", "--repair-column", "created_at",
        "--from", "2024-01-10T00:00:00+09:00", "--to", "2024-01-15T00:00:00+09:00",
        "--decrypt-key", builders.DECRYPT_KEY_PATH, "--json",
    ]


def test_physical_arguments() -> None:
    assert args_of(request("restorerequest-pitr.yaml")) == [
        "restore", "postgres", "--data-dir", builders.DATA_DIR,
        "--target-time", "2024-01-15T10:30:00+09:00", "--start", "--stop-after",
        "--decrypt-key", builders.DECRYPT_KEY_PATH, "--json",
    ]
    disaster = args_of(request("restorerequest-disaster.yaml", overwrite=True))
    assert disaster == [
        "restore", "postgres", "--data-dir", builders.DATA_DIR, "--latest", "--overwrite",
        "--start", "--stop-after", "--decrypt-key", builders.DECRYPT_KEY_PATH, "--json",
    ]
    by_id = args_of(request("restorerequest-disaster.yaml", latest=None, backupId="b1"))
    assert by_id[4:7] == ["--backup", "b1", "--latest"]
    by_lsn = args_of(request("restorerequest-pitr.yaml", targetTime=None, targetLSN="0/3000060"))
    assert by_lsn[4:6] == ["--target-lsn", "0/3000060"]
    by_xid = args_of(request(
        "restorerequest-pitr.yaml", targetTime=None, beforeTransaction=739,
        beforeTime="2024-01-15T01:30:00.123456Z",
    ))
    assert by_xid[4:9] == [
        "--before-xid", "739", "--before-time", "2024-01-15T01:30:00.123456Z", "--start",
    ]
    bare_xid = args_of(request("restorerequest-pitr.yaml", targetTime=None, beforeTransaction=7))
    assert bare_xid[4:7] == ["--before-xid", "7", "--start"]


@pytest.mark.parametrize(
    ("example", "changes"),
    [
        ("restorerequest-logical-latest.yaml", {}),
        ("restorerequest-table.yaml", {}),
        ("restorerequest-table.yaml", {"tables": ["transformations", "app.documents"]}),
        ("restorerequest-repair.yaml", {}),
    ],
)
def test_logical_arguments_are_accepted_by_the_runner(example: str, changes: Any) -> None:
    argv = args_of(request(example, **changes))
    args = cli.build_parser(argv).parse_args(argv)
    assert (args.verb, args.engine, args.json) == ("restore", "postgres", True)


def test_target_database_overrides_the_database_of_the_dsn_secret() -> None:
    body = request_body("restorerequest-logical-latest.yaml")
    body["spec"]["target"]["database"]["database"] = "tonebridge_restored"
    rr = RestoreRequest.from_body(body)
    argv = args_of(rr)
    assert argv[:6] == [
        "restore", "postgres", "--backup", "latest", "--target-database", "tonebridge_restored",
    ]
    args = cli.build_parser(argv).parse_args(argv)
    assert args.target_database == "tonebridge_restored"
    from tonebridge_dr.runner.engines.postgres import commands

    assert commands.check_database_name(args.target_database) == "tonebridge_restored"
    assert "--target-database" not in args_of(request("restorerequest-logical-latest.yaml"))


def test_the_environment_names_the_policy_folder_and_the_read_credentials() -> None:
    rr = request("restorerequest-table.yaml")
    (container,) = pod_spec(builders.build_restore_job(rr, policy(), SETTINGS))["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env[builders.ENV_REPO]["value"] == "s3://tonebridge-backups/postgresql/tonebridge-db"
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
        "name": "tonebridge-backup-reader", "key": "AWS_ACCESS_KEY_ID",
    }
    assert env["AWS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert env[builders.ENV_TARGET_DSN]["valueFrom"]["secretKeyRef"] == {
        "name": "tonebridge-db-restore", "key": "dsn",
    }
    assert env["AWS_REGION"]["value"] == "ap-northeast-1"
    assert "TONEBRIDGE_DR_S3_SSE" not in env  # server-side encryption settings are for writes


def test_disaster_source_needs_no_policy_object() -> None:
    rr = request("restorerequest-disaster.yaml")
    source = builders.resolve_source(rr, None)
    assert source.repository_url == "s3://tonebridge-backups/postgresql/tonebridge-db"
    assert source.credentials is not None and source.credentials.name == "tonebridge-backup-reader"
    assert source.uses_write_credentials is False
    requirements = builders.secret_requirements(rr, source)
    assert [(r.name, r.keys) for r in requirements] == [
        ("tonebridge-backup-reader", ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")),
        ("tonebridge-restore-gpg", ("private.asc",)),
    ]
    pod = pod_spec(builders.build_restore_job(rr, None, SETTINGS))
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "tonebridge-postgres-data"}} \
        in pod["volumes"]


# --- what only the operator can judge ----------------------------------------------------------


def test_a_policy_without_read_credentials_falls_back_to_its_own_and_says_so() -> None:
    repository = policy().spec.repository.model_dump(by_alias=True, exclude_none=True)
    del repository["restoreCredentialsSecretRef"]
    source = builders.resolve_source(request("restorerequest-table.yaml"),
                                     policy(repository=repository))
    assert source.credentials is not None and source.credentials.name == "tonebridge-backup-writer"
    assert source.uses_write_credentials is True


def test_encrypted_backups_without_a_private_key_are_refused() -> None:
    encryption = {"publicKeySecretRef": {"name": "tonebridge-backup-gpg", "key": "public.asc"}}
    with pytest.raises(builders.RestoreSpecError) as caught:
        builders.resolve_source(request("restorerequest-table.yaml"),
                                policy(encryption=encryption))
    assert caught.value.reason == "MissingDecryptionKey"
    assert "privateKeySecretRef" in caught.value.message


def test_a_redis_policy_cannot_feed_a_database() -> None:
    (redis,) = _yaml(EXAMPLES / "02-redis-backup" / "backuppolicy.yaml")
    redis["metadata"].update(name="tonebridge-db", uid=POLICY_UID, namespace=NAMESPACE)
    with pytest.raises(builders.RestoreSpecError, match="backs up redis, not PostgreSQL"):
        builders.resolve_source(request("restorerequest-table.yaml"),
                                BackupPolicy.from_body(redis))


def test_a_physical_restore_needs_physical_backups() -> None:
    schedules = [{"name": "daily", "cron": "0 2 * * *", "method": "logical"}]
    with pytest.raises(builders.RestoreSpecError, match="takes no physical backups"):
        builders.resolve_source(request("restorerequest-pitr.yaml"),
                                policy(schedules=schedules))


def test_a_postgres_policy_cannot_feed_a_redis_target() -> None:
    (postgres,) = _yaml(EXAMPLES / "01-postgres-backup" / "backuppolicy.yaml")
    postgres["metadata"].update(name="tonebridge-redis", uid=POLICY_UID, namespace=NAMESPACE)
    with pytest.raises(builders.RestoreSpecError, match="backs up postgres, not Redis") as caught:
        builders.resolve_source(request("restorerequest-redis.yaml"),
                                BackupPolicy.from_body(postgres))
    assert caught.value.reason == "InvalidSpec"


def test_kubernetes_restores_need_a_kubernetes_policy() -> None:
    body = request_body("restorerequest-logical-latest.yaml")
    body["spec"].update(method="export", target={"kubernetes": {}})
    with pytest.raises(builders.RestoreSpecError, match="not Kubernetes") as caught:
        builders.resolve_source(RestoreRequest.from_body(body), policy("tonebridge-db"))
    assert caught.value.reason == "InvalidSpec"


def test_kubernetes_restore_arguments_and_pod() -> None:
    rr = request("restorerequest-config.yaml")
    assert args_of(rr) == [
        "restore", "kubernetes", "--backup", "latest", "--mode", "missing",
        "--namespace-map", "tonebridge=tonebridge-restored", "--namespace-map",
        "monitoring=monitoring-restored", "--kind", "configmaps", "--kind", "secrets",
        "--kind", "deployments", "--kind", "services",
        "--decrypt-key", builders.DECRYPT_KEY_PATH, "--json",
    ]
    job = builders.build_restore_job(rr, policy_for(rr), SETTINGS)
    pod = job["spec"]["template"]["spec"]
    # the restore identity (spec 8.2) with its token: it applies objects through the API
    assert pod["serviceAccountName"] == "tonebridge-dr-restore"
    assert pod["automountServiceAccountToken"] is True
    replace = request("restorerequest-config.yaml", target={"kubernetes": {
        "namespace": "scratch", "kinds": ["ConfigMap"], "names": ["app"], "mode": "replace"}})
    assert args_of(replace)[:10] == [
        "restore", "kubernetes", "--backup", "latest", "--mode", "replace",
        "--all-namespaces-to", "scratch", "--kind", "ConfigMap",
    ]
    assert builders.target_description(replace) == 'namespace "scratch", mode replace'


# --- Redis targets ------------------------------------------------------------------------------


def redis_request(**redis: Any) -> RestoreRequest:
    body = request_body("restorerequest-redis.yaml")
    body["spec"]["target"]["redis"].update(redis)
    return RestoreRequest.from_body(body)


def test_redis_restores_only_missing_keys_unless_overwrite() -> None:
    assert args_of(request("restorerequest-redis.yaml")) == [
        "restore", "redis", "--backup", "latest", "--mode", "missing", "--json",
    ]
    assert args_of(request("restorerequest-redis.yaml", overwrite=True, latest=None,
                           backupId="20240115T020000Z-hourly")) == [
        "restore", "redis", "--backup", "20240115T020000Z-hourly", "--mode", "replace", "--json",
    ]


@pytest.mark.parametrize(
    ("redis", "overwrite", "expected"),
    [
        ({}, False, {"mode": "missing", "pattern": None, "db": None}),
        ({}, True, {"mode": "replace", "pattern": None, "db": None}),
        ({"pattern": "session:*", "db": 3}, False,
         {"mode": "missing", "pattern": "session:*", "db": 3}),
        ({"pattern": "-odd[ab]*"}, False, {"mode": "missing", "pattern": "-odd[ab]*", "db": None}),
    ],
)
def test_redis_arguments_are_accepted_by_the_runner(
    redis: dict[str, Any], overwrite: bool, expected: dict[str, Any]
) -> None:
    body = request_body("restorerequest-redis.yaml")
    body["spec"]["target"]["redis"].update(redis)
    body["spec"]["overwrite"] = overwrite
    argv = args_of(RestoreRequest.from_body(body))
    args = cli.build_parser(argv).parse_args(argv)
    assert (args.verb, args.engine, args.json, args.backup) == ("restore", "redis", True, "latest")
    assert {key: getattr(args, key) for key in expected} == expected
    assert args.target_url is None and args.data_dir is None  # the URL comes from the env


def test_bucket_restores_only_missing_objects_unless_overwrite() -> None:
    assert args_of(request("restorerequest-bucket.yaml")) == [
        "restore", "bucket", "--backup", "latest", "--to", "s3://tonebridge-uploads",
        "--mode", "missing", "--json",
    ]
    body = request_body("restorerequest-bucket.yaml")
    body["spec"]["target"]["bucket"]["prefix"] = "-avatars/"
    body["spec"].update(overwrite=True, latest=None, backupId="20240115T020000Z")
    argv = args_of(RestoreRequest.from_body(body))
    assert argv == [
        "restore", "bucket", "--backup", "20240115T020000Z", "--to", "s3://tonebridge-uploads",
        "--mode", "replace", "--prefix=-avatars/", "--json",
    ]
    args = cli.build_parser(argv).parse_args(argv)
    assert (args.verb, args.engine, args.backup, args.to, args.mode, args.prefix) == (
        "restore", "bucket", "20240115T020000Z", "s3://tonebridge-uploads", "replace",
        "-avatars/")


def test_bucket_target_credentials_come_from_their_secret_by_reference() -> None:
    rr = request("restorerequest-bucket.yaml")
    job = builders.build_restore_job(rr, policy_for(rr), SETTINGS)
    env = {var["name"]: var for var in pod_spec(job)["containers"][0]["env"]}
    assert env["TONEBRIDGE_DR_BUCKET_AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
        "name": "uploads-writer", "key": "AWS_ACCESS_KEY_ID"}
    assert env["TONEBRIDGE_DR_BUCKET_REGION"]["value"] == "ap-northeast-1"
    # the repository is read with the policy's credentials, not the target's
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == (
        "tonebridge-backup-reader")
    names_needed = [req.name for req in builders.secret_requirements(
        rr, builders.resolve_source(rr, policy_for(rr)))]
    assert names_needed == ["uploads-writer", "tonebridge-backup-reader"]
    assert builders.target_description(rr) == "bucket s3://tonebridge-uploads"


def test_a_postgres_policy_cannot_feed_a_bucket_target() -> None:
    body = request_body("restorerequest-bucket.yaml")
    body["spec"]["source"]["policyRef"]["name"] = "tonebridge-db"
    rr = RestoreRequest.from_body(body)
    with pytest.raises(builders.RestoreSpecError, match="backs up postgres, not object storage"):
        builders.build_restore_job(rr, policy("tonebridge-db"), SETTINGS)


def test_the_redis_url_comes_from_its_secret_by_reference() -> None:
    rr = request("restorerequest-redis.yaml")
    source = builders.resolve_source(rr, policy("tonebridge-redis"))
    assert source.repository_url == "s3://tonebridge-backups/redis/tonebridge-redis"
    assert source.credentials is not None and source.credentials.name == "tonebridge-backup-reader"
    assert source.uses_write_credentials is False
    assert [(r.name, r.keys, r.purpose) for r in builders.secret_requirements(rr, source)] == [
        ("tonebridge-redis-restore", ("url",), "target Redis URL"),
        ("tonebridge-backup-reader", ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
         "repository read credentials"),
    ]
    job = builders.build_restore_job(rr, policy("tonebridge-redis"), SETTINGS)
    (container,) = pod_spec(job)["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env[builders.ENV_REDIS_TARGET_URL] == {
        "name": builders.ENV_REDIS_TARGET_URL,
        "valueFrom": {"secretKeyRef": {"name": "tonebridge-redis-restore", "key": "url"}},
    }
    assert builders.ENV_TARGET_DSN not in env
    assert env[builders.ENV_REPO]["value"] == source.repository_url
    assert container["resources"] == {"requests": {"memory": "1Gi"}, "limits": {"memory": "2Gi"}}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]  # scratch server
    assert job["spec"]["backoffLimit"] == SETTINGS.backoff_limit  # a retry is safe
    assert not [v for v in pod_spec(job)["volumes"] if "persistentVolumeClaim" in v]


def test_redis_target_descriptions_name_the_secret_and_the_part_restored() -> None:
    assert builders.target_description(request("restorerequest-redis.yaml")) == (
        'the Redis of Secret "tonebridge-redis-restore"'
    )
    assert builders.target_description(redis_request(pattern="session:*", db=2)) == (
        'keys matching "session:*" in the Redis of Secret "tonebridge-redis-restore" '
        "(database 2 of the backup)"
    )
    assert builders.target_kind(request("restorerequest-redis.yaml")) == "redis"
    assert builders.target_kind(request("restorerequest-pitr.yaml")) == "volume"
    assert builders.target_kind(request("restorerequest-table.yaml")) == "database"


def test_a_redis_request_from_the_bucket_alone_needs_no_policy() -> None:
    body = request_body("restorerequest-redis.yaml")
    body["spec"]["source"] = {
        "repository": {"url": "s3://tonebridge-backups/redis",
                       "credentialsSecretRef": {"name": "tonebridge-backup-reader"}},
        "policyName": "tonebridge-redis",
    }
    rr = RestoreRequest.from_body(body)
    job = builders.build_restore_job(rr, None, SETTINGS)
    (container,) = pod_spec(job)["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env[builders.ENV_REPO]["value"] == "s3://tonebridge-backups/redis/tonebridge-redis"
    assert container["args"][:2] == ["restore", "redis"]


# --- names --------------------------------------------------------------------------------------


def test_long_names_are_cut_with_a_stable_hash() -> None:
    long = "a" * 200
    job = builders.restore_job_name(long)
    assert len(job) <= 63 and job.endswith("-restore")
    assert job == builders.restore_job_name(long)
    assert builders.restore_job_name(long + "b") != job
    assert builders.restore_job_name("short") == "short-restore"
    instance = builders.instance_name("1.restore." + long)
    assert len(instance) <= 52 and instance[0].isalpha() and "." not in instance


def test_restore_names_are_spelled_in_names_and_still_importable_here() -> None:
    for name in ("LABEL_RESTORE_REQUEST", "COMPONENT_DATABASE", "CONTAINER_RESTORE",
                 "CONTAINER_POSTGRES", "restore_job_name", "instance_name",
                 "selector_for_request", "policy_repository_url"):
        assert getattr(builders, name) is getattr(names, name), name
    assert builders.selector_for_request("r") == (
        "app.kubernetes.io/managed-by=tonebridge-dr,dr.tonebridge.io/restore-request=r")


def test_environment_names_match_the_runner() -> None:
    from tonebridge_dr.runner import result, storage
    from tonebridge_dr.runner.engines.postgres import connection
    from tonebridge_dr.runner.engines.redis import endpoints

    assert builders.ENV_REPO == storage.REPO_ENV
    assert builders.ENV_TARGET_DSN == connection.TARGET_DSN_ENV
    assert builders.ENV_REDIS_TARGET_URL == endpoints.TARGET_URL_ENV
    assert builders.TERMINATION_MESSAGE_PATH == result.DEFAULT_TERMINATION_LOG


def test_physical_restores_are_not_retried_logical_ones_are() -> None:
    volume = builders.build_restore_job(request("restorerequest-pitr.yaml"), policy(), SETTINGS)
    database = builders.build_restore_job(request("restorerequest-table.yaml"), policy(),
                                          SETTINGS)
    assert volume["spec"]["backoffLimit"] == 0
    assert database["spec"]["backoffLimit"] == SETTINGS.backoff_limit


@pytest.mark.parametrize(("image", "major"), [
    ("postgres:16", 16), ("postgres:15.6-alpine", 15), ("registry:5000/team/pg:16.2.0", 16),
    ("postgres:latest", None), ("postgres", None), ("registry:5000/postgres", None),
    ("postgres@sha256:" + "a" * 64, None),
])
def test_image_major(image: str, major: int | None) -> None:
    assert builders.image_major(image) == major


def test_an_instance_image_must_match_the_backups_major_version() -> None:
    assert builders.instance_image_problem("postgres:15", 15) is None
    assert builders.instance_image_problem("postgres:latest", 15) is None  # cannot tell
    assert builders.instance_image_problem("postgres:16", None) is None
    problem = builders.instance_image_problem("postgres:16", 15)
    assert problem is not None and "PostgreSQL 16 but the backup is PostgreSQL 15" in problem
    assert "postgres:15" in problem
