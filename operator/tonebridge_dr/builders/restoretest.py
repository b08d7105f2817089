"""Pure builders of what a RestoreTest owns: one CronJob (its `schedule`) and the run-now
Job made from it, both running `tonebridge-dr restore-test postgres`.

Every function maps a validated RestoreTest (plus the BackupPolicy its
`source.policyRef` names, when it has one, and operator settings) to plain Kubernetes
manifests; nothing here talks to the API server. What only the operator can judge (a
policy that backs up something else, encrypted backups without a private key) raises
`restore.RestoreSpecError` with a `reason` and one sentence for the Ready condition.

The Job (contract with the runner verb, api/runner_contract.py):
* args: `restore-test postgres --json [--backup ID] [--method logical|physical]
  [--scratch-instance /var/lib/tonebridge-dr/scratch] [--database NAME] [--rto DURATION]
  [--decrypt-key PATH] --name <test>`; `--method logical` is spelled out for
  `scratch.database` (the API's default there), else only when the spec sets it;
* env: the backups' folder and READ credentials exactly as restore Jobs get them
  (`restore.resolve_backup_source`, `restore.source_env`: spec 8.2's read role),
  TONEBRIDGE_DR_TARGET_DSN from `scratch.database`'s Secret (secretKeyRef; not with
  `scratch.instance`), TONEBRIDGE_DR_CHECKS (`spec.checks` as a JSON list, CRD keys);
* volumes: the private key like a restore Job's (`restore.decrypt_key_volume`); with
  `scratch.instance` the scratch volume at /var/lib/tonebridge-dr/scratch: an emptyDir,
  or with `storageSize` a generic ephemeral volume (a PersistentVolumeClaim of that size
  and `storageClassName`, made for the pod and deleted with it: a test always cleans up);
* the restore ServiceAccount, no service-account token, the restricted pod of
  builders/pods.py, `spec.resources`; exit codes a retry cannot fix (among them 15
  ChecksFailed and 16 RTOMissed: a verdict, not an accident) fail the Job at once.

`scratch.instance.image` and `scratch.instance.resources` are not used by this version:
the scratch PostgreSQL runs inside the test Job's container (`unused_settings` says so).
`scratch.database.database` replaces the database of the scratch DSN (`--database`).
"""

from __future__ import annotations

import json
from typing import Any

from tonebridge_dr.api import formats
from tonebridge_dr.api.backuppolicy import TargetKind
from tonebridge_dr.api.common import BackupMethod
from tonebridge_dr.api.kinds import BackupPolicy, RestoreTest
from tonebridge_dr.api.runner_contract import (  # re-exported: the runner environment
    ENV_CHECKS,
    ENV_REPO,
    ENV_TARGET_DSN,
)
from tonebridge_dr.builders import metadata, names, pods, restore
from tonebridge_dr.builders.names import COMPONENT_RESTORE_TEST, CONTAINER_RESTORE_TEST
from tonebridge_dr.builders.restore import ResolvedSource, RestoreSpecError, SecretRequirement
from tonebridge_dr.builders.settings import RunnerSettings

__all__ = [
    "COMPONENT_RESTORE_TEST",
    "CONTAINER_RESTORE_TEST",
    "ENV_CHECKS",
    "ENV_REPO",
    "ENV_TARGET_DSN",
    "SCRATCH_MOUNT_PATH",
    "ResolvedSource",
    "RestoreSpecError",
    "SecretRequirement",
    "build_restore_test_cronjob",
    "build_run_now_job",
    "checks_json",
    "effective_method",
    "pod_env",
    "resolve_source",
    "runner_args",
    "secret_requirements",
    "unused_settings",
]

Manifest = dict[str, Any]

SCRATCH_MOUNT_PATH = "/var/lib/tonebridge-dr/scratch"
"""Where the scratch volume of `scratch.instance` is mounted (`--scratch-instance`)."""
_SCRATCH_VOLUME = "scratch"


def engine_of(rt: RestoreTest, policy: BackupPolicy | None) -> TargetKind:
    """Redis for `method: snapshot` or a policy that backs up Redis; PostgreSQL otherwise
    (a repository source without a method holds PostgreSQL backups)."""
    if rt.spec.method == BackupMethod.SNAPSHOT:
        return TargetKind.REDIS
    if rt.spec.method is None and policy is not None and policy.spec.target.redis is not None:
        return TargetKind.REDIS
    return TargetKind.POSTGRES


def effective_method(rt: RestoreTest) -> BackupMethod | None:
    """`spec.method`; logical for `scratch.database` (the only restore a database takes);
    None otherwise: the runner restores the newest backup's method."""
    spec = rt.spec
    if spec.method is not None:
        return spec.method
    return BackupMethod.LOGICAL if spec.scratch.database is not None else None


def resolve_source(rt: RestoreTest, policy: BackupPolicy | None) -> ResolvedSource:
    """Repository folder, read credentials and key of the backups the test restores.
    `policy` must be the BackupPolicy of `source.policyRef` when there is one. Raises
    RestoreSpecError when they cannot be tested as asked."""
    engine = engine_of(rt, policy)
    if engine is TargetKind.REDIS:
        if rt.spec.scratch.database is not None:
            raise restore.RestoreSpecError(
                "InvalidSpec",
                "a Redis restore test restores into a private redis-server in the test Job: "
                "use scratch.instance, not scratch.database",
            )
        return restore.resolve_backup_source(
            rt.spec.source, policy, engine=engine, method=None,
            reader="this RestoreTest", needs="a Redis restore test",
        )
    method = effective_method(rt)
    needs = "scratch.database" if rt.spec.method is None else f"spec.method {rt.spec.method}"
    return restore.resolve_backup_source(
        rt.spec.source, policy, engine=engine, method=method,
        reader="this RestoreTest", needs=needs,
    )


def secret_requirements(rt: RestoreTest, source: ResolvedSource) -> list[SecretRequirement]:
    """Secrets the test Job reads, in a stable order: the scratch database's DSN, the
    repository read credentials, the private key."""
    wanted: list[SecretRequirement] = []
    database = rt.spec.scratch.database
    if database is not None:
        ref = database.dsn_secret_ref
        wanted.append(SecretRequirement(ref.name, (ref.key,), "scratch database DSN"))
    return wanted + restore.source_secret_requirements(source)


def checks_json(rt: RestoreTest) -> str:
    """`spec.checks` as the runner reads them from TONEBRIDGE_DR_CHECKS: a compact JSON
    list with the CRD's keys (`[]` without checks)."""
    checks = [
        check.model_dump(mode="json", exclude_none=True) for check in rt.spec.checks or ()
    ]
    return json.dumps(checks, separators=(",", ":"))


def runner_args(rt: RestoreTest, source: ResolvedSource) -> list[str]:
    """Arguments after the runner's command (see the module docstring). The repository,
    the scratch DSN and the checks come from the environment (never arguments: anyone
    who can read the pod sees those)."""
    spec = rt.spec
    args = ["restore-test", source.engine.value, "--json"]
    if spec.backup_id is not None:
        args += ["--backup", spec.backup_id]
    method = effective_method(rt)
    if method is not None and source.engine is TargetKind.POSTGRES:
        args += ["--method", method.value]
    if spec.scratch.instance is not None:
        args += ["--scratch-instance", SCRATCH_MOUNT_PATH]
    if spec.scratch.database is not None and spec.scratch.database.database is not None:
        args += ["--database", spec.scratch.database.database]
    if spec.objectives is not None and spec.objectives.rto is not None:
        args += ["--rto", formats.format_duration(spec.objectives.rto)]
    return [*args, *restore.decrypt_args(source), "--name", metadata.owner_name(rt)]


def pod_env(rt: RestoreTest, source: ResolvedSource) -> list[Manifest]:
    """Environment of the test container: how to read the backups (as a restore Job),
    the Object Lock of the report it writes, the scratch database's DSN (secretKeyRef),
    the checks, HOME."""
    env = restore.source_env(source)
    env.extend(pods.object_lock_env(source.repository))
    database = rt.spec.scratch.database
    if database is not None:
        env.append(pods.secret_key_env(ENV_TARGET_DSN, database.dsn_secret_ref))
    env.append(pods.value_env(ENV_CHECKS, checks_json(rt)))
    return pods.runner_env(env)


def _scratch_volume(rt: RestoreTest, labels: dict[str, str]) -> tuple[list[Manifest],
                                                                      list[Manifest]]:
    instance = rt.spec.scratch.instance
    if instance is None:
        return [], []
    volume: Manifest = {"name": _SCRATCH_VOLUME}
    if instance.storage_size is None:
        volume["emptyDir"] = {}
    else:
        claim: Manifest = {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": str(instance.storage_size)}},
            "volumeMode": "Filesystem",
        }
        if instance.storage_class_name is not None:
            claim["storageClassName"] = instance.storage_class_name
        volume["ephemeral"] = {
            "volumeClaimTemplate": {"metadata": {"labels": dict(labels)}, "spec": claim}
        }
    return [volume], [{"name": _SCRATCH_VOLUME, "mountPath": SCRATCH_MOUNT_PATH}]


def build_restore_test_cronjob(
    rt: RestoreTest, policy: BackupPolicy | None, settings: RunnerSettings
) -> Manifest:
    """The test's CronJob (`<test>-restore-test`), owned by the test: `schedule`,
    `timeZone`, `suspend`, one run at a time. Raises RestoreSpecError (see the module
    docstring) and ValueError for a test without metadata.name or uid."""
    source = resolve_source(rt, policy)
    test = metadata.owner_name(rt)
    labels = names.restore_test_labels(source.policy_name, test)
    key_volumes, key_mounts = restore.decrypt_key_volume(source)
    scratch_volumes, scratch_mounts = _scratch_volume(rt, labels)
    pod = restore.reader_pod(
        CONTAINER_RESTORE_TEST, runner_args(rt, source), pod_env(rt, source), settings,
        resources=rt.spec.resources, volumes=[*key_volumes, *scratch_volumes],
        mounts=[*key_mounts, *scratch_mounts],
    )
    job_spec = restore.reader_job_spec(pod, labels, settings)
    spec = rt.spec
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": metadata.object_metadata(rt, names.restore_test_cronjob_name(test), labels),
        "spec": pods.runner_cronjob_spec(
            schedule=spec.schedule, time_zone=spec.time_zone, suspend=spec.suspend,
            labels=labels, job_spec=job_spec, settings=settings,
        ),
    }


def build_run_now_job(
    rt: RestoreTest, policy: BackupPolicy | None, settings: RunnerSettings, token: str
) -> Manifest:
    """One run of the test now, for run-now value `token`: the CronJob's Job, owned by the
    test, named from the token (`names.restore_test_run_now_job_name`). A suspended test
    still runs on demand."""
    cronjob = build_restore_test_cronjob(rt, policy, settings)
    name = names.restore_test_run_now_job_name(metadata.owner_name(rt), token)
    return pods.run_now_job(cronjob, name=name, token=token)


def unused_settings(rt: RestoreTest) -> list[str]:
    """Spec fields this version accepts but does not act on, one sentence each."""
    instance = rt.spec.scratch.instance
    if instance is None:
        return []
    unused = [field for field, value in (("image", instance.image),
                                         ("resources", instance.resources)) if value is not None]
    if not unused:
        return []
    fields = " and ".join(f"scratch.instance.{field}" for field in unused)
    return [
        f"{fields} {'is' if len(unused) == 1 else 'are'} not used: the scratch PostgreSQL runs "
        f"inside the test Job (runner image, spec.resources) on its volume at "
        f"{SCRATCH_MOUNT_PATH}"
    ]
