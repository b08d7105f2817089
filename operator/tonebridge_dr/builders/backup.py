"""Pure builders of everything a BackupPolicy owns: backup CronJobs, run-now Jobs and the
WAL streamer Deployment.

Each function maps a validated policy (plus operator settings) to plain Kubernetes
manifests (dicts); nothing here talks to the API server, so the same input always gives
the same output and the controller can apply the result as often as it likes.

Security contract (tested; the pod parts are builders/pods.py):
* credentials reach pods only as `secretKeyRef` env vars or mounted `secret` volumes,
  never as literal values;
* backup pods get the encryption PUBLIC key only; the private key is never referenced;
* pods run as non-root with a read-only root filesystem (an emptyDir at /tmp), no
  privilege escalation, no capabilities, the RuntimeDefault seccomp profile, no
  service-account token, under the dedicated backup ServiceAccount.

WAL archiving: `walArchive.mode: stream` gets a one-replica Deployment running
`tonebridge-dr wal-stream` (pg_receivewal over a replication slot). `mode:
archive_command` needs no object here: the database pod itself runs
`tonebridge-dr wal-push %p` as its PostgreSQL `archive_command`, configured by whoever
runs the database.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from tonebridge_dr.api import formats
from tonebridge_dr.api import runner_contract as contract
from tonebridge_dr.api.backuppolicy import KubernetesTarget, Schedule, TargetKind, WalArchiveMode
from tonebridge_dr.api.common import BackupMethod
from tonebridge_dr.api.kinds import BackupPolicy
from tonebridge_dr.api.runner_contract import (  # re-exported: the runner environment
    ENV_COMPRESSION,
    ENV_COMPRESSION_LEVEL,
    ENV_DSN,
    ENV_ENCRYPT_TO,
    ENV_REDIS_URL,
    ENV_REPO,
    ENV_S3_OBJECT_LOCK_RETAIN,
    ENV_S3_SSE,
    ENV_S3_SSE_KMS_KEY_ID,
    FROM_RETENTION_INITIAL_LOCK,
)
from tonebridge_dr.builders import metadata, names, pods, replicas
from tonebridge_dr.builders.names import CONTAINER_BACKUP, CONTAINER_WAL_STREAM
from tonebridge_dr.builders.pods import TERMINATION_MESSAGE_PATH, TMP_MOUNT_PATH
from tonebridge_dr.builders.pods import run_now_job as build_run_now_job
from tonebridge_dr.builders.settings import RunnerSettings

__all__ = [
    "CONTAINER_BACKUP",
    "CONTAINER_WAL_STREAM",
    "ENCRYPTION_MOUNT_PATH",
    "ENV_DSN",
    "ENV_REDIS_URL",
    "ENV_REPO",
    "ENV_S3_SSE",
    "ENV_S3_SSE_KMS_KEY_ID",
    "SUPPORTED_TARGETS",
    "TERMINATION_MESSAGE_PATH",
    "TMP_MOUNT_PATH",
    "UnsupportedTarget",
    "build_backup_cronjob",
    "build_backup_cronjobs",
    "build_run_now_job",
    "build_run_now_jobs",
    "build_wal_stream_deployment",
    "desired_objects",
    "encrypt_to_path",
    "kubernetes_args",
    "owner_reference",
    "pod_env",
    "runner_args",
    "wal_slot",
    "wal_stream_args",
]

Manifest = dict[str, Any]

ENCRYPTION_MOUNT_PATH = "/etc/tonebridge-dr/encryption"
_ENCRYPTION_VOLUME = "encryption-public-key"

SUPPORTED_TARGETS: frozenset[TargetKind] = frozenset(
    TargetKind(engine.name) for engine in contract.ENGINES if engine.backup
)
"""Targets the runner backs up (the contract's engines with `backup`)."""


class UnsupportedTarget(ValueError):
    """The policy's target kind has no runner yet (kubernetes, bucket).

    The controller reports it as Ready=False, reason TargetNotSupported; retrying does not
    help until the operator is upgraded.
    """

    reason = "TargetNotSupported"

    def __init__(self, kind: TargetKind) -> None:
        self.kind = kind
        supported = ", ".join(sorted(k.value for k in SUPPORTED_TARGETS))
        super().__init__(
            f"{kind.value} targets are not supported by this version of tonebridge-dr yet "
            f"(supported: {supported})"
        )


def _require_supported(policy: BackupPolicy) -> TargetKind:
    kind = policy.spec.target.kind
    if kind not in SUPPORTED_TARGETS:
        raise UnsupportedTarget(kind)
    return kind


# --- metadata ------------------------------------------------------------------------------------


def owner_reference(policy: BackupPolicy) -> Manifest:
    """The controller owner reference to `policy` (garbage collection deletes what it owns)."""
    return metadata.owner_reference(policy)


# --- container parts ----------------------------------------------------------------------------


def pod_env(policy: BackupPolicy) -> list[Manifest]:
    """Environment of backup and WAL streamer containers: the repository (URL, write
    credentials by secretKeyRef, region, endpoint, SSE) and the target's connection
    secret (TONEBRIDGE_DR_DSN or TONEBRIDGE_DR_REDIS_URL, by secretKeyRef); for a bucket
    the source URL and its read credentials (TONEBRIDGE_DR_BUCKET_*, by secretKeyRef)."""
    target = policy.spec.target
    env: list[Manifest] = []
    if target.postgres is not None:
        env.append(pods.secret_key_env(ENV_DSN, target.postgres.dsn_secret_ref))
    elif target.redis is not None:
        env.append(pods.secret_key_env(ENV_REDIS_URL, target.redis.url_secret_ref))
    elif target.kubernetes is not None:
        env.extend(_git_env(target.kubernetes))
    elif target.bucket is not None:
        bucket = target.bucket
        env.append(pods.value_env(contract.ENV_BUCKET_SOURCE, bucket.url))
        env.extend(pods.bucket_env(bucket.credentials_secret_ref, bucket.region, bucket.endpoint))
    else:
        raise UnsupportedTarget(target.kind)
    repository = policy.spec.repository
    url = names.policy_repository_url(repository.url, metadata.owner_name(policy))
    env.extend(
        pods.repository_env(repository, url, repository.credentials_secret_ref, writes=True)
    )
    return pods.runner_env(env)


_GIT_CREDENTIAL_KEYS: tuple[tuple[str, str], ...] = (
    (contract.ENV_GIT_USERNAME, "username"),
    (contract.ENV_GIT_PASSWORD, "password"),
    (contract.ENV_GIT_SSH_KEY, "ssh-privatekey"),
    (contract.ENV_GIT_KNOWN_HOSTS, "known_hosts"),
)
"""Runner variables of the Git copy and the keys of `git.credentialsSecretRef` they come
from (each optional: https needs username/password, ssh needs ssh-privatekey)."""


def _git_env(target: KubernetesTarget) -> list[Manifest]:
    git = target.git
    if git is None or git.credentials_secret_ref is None:
        return []
    name = git.credentials_secret_ref.name
    return [pods.secret_env(env, name, key, optional=True) for env, key in _GIT_CREDENTIAL_KEYS]


def kubernetes_args(target: KubernetesTarget) -> list[str]:
    """`--namespace`, `--kind`, `--selector` and `--git-*` of a kubernetes backup."""
    args: list[str] = []
    for namespace in target.namespaces:
        args += ["--namespace", namespace]
    for kind in target.effective_kinds:
        args += ["--kind", kind]
    if target.label_selector:
        selector = ",".join(f"{k}={v}" for k, v in sorted(target.label_selector.items()))
        args += ["--selector", selector]
    if target.git is not None:
        args += ["--git-url", target.git.url, "--git-branch", target.git.branch]
        if target.git.path:
            args += ["--git-path", target.git.path]
    return args


def encrypt_to_path(policy: BackupPolicy) -> str | None:
    """Where the encryption public key is mounted in backup pods (None: no encryption)."""
    encryption = policy.spec.encryption
    if encryption is None:
        return None
    return f"{ENCRYPTION_MOUNT_PATH}/{encryption.public_key_secret_ref.key}"


def _codec_args(policy: BackupPolicy) -> list[str]:
    spec = policy.spec
    args = ["--compression", spec.compression.algorithm.value]
    if spec.compression.level is not None:
        args += ["--level", str(spec.compression.level)]
    key_path = encrypt_to_path(policy)
    if key_path is not None:
        args += ["--encrypt-to", key_path]
    if spec.repository.storage_class is not None:
        args += ["--storage-class", spec.repository.storage_class.value]
    return args


def runner_args(policy: BackupPolicy, schedule: Schedule) -> list[str]:
    """Arguments after the runner's command for one scheduled backup, e.g.
    `backup postgres --method logical --table t --compression zstd --level 6 --json`.

    Connection strings and the repository come from the environment (`pod_env`), never
    from arguments (arguments are visible to anyone who can read the pod).
    """
    kind = _require_supported(policy)
    args = ["backup", kind.value]
    if kind is TargetKind.POSTGRES:
        method = policy.spec.method_of(schedule)
        args += ["--method", method.value]
        if method is BackupMethod.LOGICAL:
            for table in schedule.tables or ():
                args += ["--table", table]
        elif schedule.incremental:
            args += ["--incremental"]
            if schedule.full_every is not None:
                args += ["--full-every", formats.format_duration(schedule.full_every)]
    elif policy.spec.target.kubernetes is not None:
        args += kubernetes_args(policy.spec.target.kubernetes)
    args += _codec_args(policy)
    args += ["--schedule", schedule.name, "--json"]
    return args


def _key_volume(policy: BackupPolicy) -> tuple[list[Manifest], list[Manifest]]:
    """(volumes, volumeMounts) of the public key when encrypting (besides /tmp)."""
    encryption = policy.spec.encryption
    if encryption is None:
        return [], []
    ref = encryption.public_key_secret_ref
    volume: Manifest = {
        "name": _ENCRYPTION_VOLUME,
        "secret": {
            "secretName": ref.name,
            "items": [{"key": ref.key, "path": ref.key}],
            # A public key is not secret; readable whatever uid the image runs as.
            "defaultMode": 0o444,
        },
    }
    mount = {"name": _ENCRYPTION_VOLUME, "mountPath": ENCRYPTION_MOUNT_PATH, "readOnly": True}
    return [volume], [mount]


def _runner_pod(
    policy: BackupPolicy,
    settings: RunnerSettings,
    container: str,
    args: list[str],
    *,
    restart_policy: str = "Never",
    termination_grace_seconds: int | None = None,
    extra_env: list[Manifest] | None = None,
) -> pods.RunnerPod:
    """A backup or WAL streamer pod. Database and Redis backups talk to their server and
    the bucket, never to the Kubernetes API: no token. A kubernetes target's backup reads
    the API with the backup ServiceAccount's token (what that account may list is the
    RBAC the chart grants it: docs/kubernetes-config.md)."""
    volumes, mounts = _key_volume(policy)
    return pods.RunnerPod(
        container=container,
        args=args,
        env=_env_with(pod_env(policy), extra_env or []),
        service_account=settings.backup_service_account,
        requested_resources=policy.spec.resources,
        volumes=volumes,
        mounts=mounts,
        restart_policy=restart_policy,
        kube_api=policy.spec.target.kubernetes is not None,
        termination_grace_seconds=termination_grace_seconds,
    )


# --- backup CronJobs and Jobs -------------------------------------------------------------------


def build_backup_cronjob(
    policy: BackupPolicy, schedule: Schedule, settings: RunnerSettings
) -> Manifest:
    """The CronJob of one schedule (see `build_backup_cronjobs`)."""
    _require_supported(policy)
    policy_name = metadata.owner_name(policy)
    labels = names.standard_labels(policy_name, names.COMPONENT_BACKUP, schedule.name)
    pod = _runner_pod(policy, settings, CONTAINER_BACKUP, runner_args(policy, schedule))
    job_spec = pods.runner_job_spec(
        pod, labels, settings, non_retriable_exit_codes=settings.non_retriable_exit_codes
    )
    spec = pods.runner_cronjob_spec(
        schedule=schedule.cron, time_zone=schedule.time_zone, suspend=policy.spec.suspend,
        labels=labels, job_spec=job_spec, settings=settings,
    )
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": metadata.object_metadata(
            policy, names.cronjob_name(policy_name, schedule.name), labels
        ),
        "spec": spec,
    }


def build_backup_cronjobs(policy: BackupPolicy, settings: RunnerSettings) -> list[Manifest]:
    """One CronJob per `spec.schedules` entry, in spec order.

    Raises `UnsupportedTarget` for kubernetes and bucket targets and `ValueError` when the
    policy lacks metadata.name or metadata.uid.
    """
    return [build_backup_cronjob(policy, s, settings) for s in policy.spec.schedules]


def build_run_now_jobs(
    policy: BackupPolicy,
    settings: RunnerSettings,
    token: str,
    schedules: Iterable[str] | None = None,
) -> list[Manifest]:
    """Run-now Jobs for `schedules` (default: every schedule), named deterministically
    from `token` with `names.run_now_job_name`."""
    wanted = None if schedules is None else set(schedules)
    policy_name = metadata.owner_name(policy)
    jobs = []
    for schedule in policy.spec.schedules:
        if wanted is not None and schedule.name not in wanted:
            continue
        cronjob = build_backup_cronjob(policy, schedule, settings)
        name = names.run_now_job_name(policy_name, schedule.name, token)
        jobs.append(build_run_now_job(cronjob, name=name, token=token))
    return jobs


# --- WAL streaming ------------------------------------------------------------------------------


def wal_slot(policy: BackupPolicy) -> str | None:
    """Replication slot of the WAL streamer: spec's `walArchive.slot`, else derived from the
    policy name (`tonebridge_dr_<policy>`); None when the policy does not stream WAL."""
    postgres = policy.spec.target.postgres
    if postgres is None or postgres.wal_archive is None:
        return None
    if postgres.wal_archive.mode is not WalArchiveMode.STREAM:
        return None
    return postgres.wal_archive.slot or names.wal_slot_name(metadata.owner_name(policy))


def wal_stream_args(policy: BackupPolicy) -> list[str]:
    """`wal-stream --slot <slot> --archive-timeout <walArchive.archiveTimeout>` (DSN and
    repository come from the environment)."""
    slot = wal_slot(policy)
    postgres = policy.spec.target.postgres
    if slot is None or postgres is None or postgres.wal_archive is None:
        raise ValueError("the policy does not use walArchive.mode: stream")
    timeout = formats.format_duration(postgres.wal_archive.archive_timeout)
    return ["wal-stream", "--slot", slot, "--archive-timeout", timeout]


def _env_with(env: list[Manifest], extra: list[Manifest]) -> list[Manifest]:
    """`env` with `extra` (an entry of `extra` replaces the one of the same name in place)."""
    replaced = {var["name"]: var for var in extra}
    out = [replaced.pop(var["name"], var) for var in env]
    return out + [var for var in extra if var["name"] in replaced]


#: Longest a rule of each period can keep a backup, per count (months and years at
#: their longest), for the lock of streamed WAL under `fromRetention`.
_PERIODS = (("hourly", timedelta(hours=1)), ("daily", timedelta(days=1)),
            ("weekly", timedelta(weeks=1)), ("monthly", timedelta(days=31)),
            ("yearly", timedelta(days=366)))


def wal_lock_period(policy: BackupPolicy) -> timedelta:
    """How long streamed WAL is locked under `objectLock.retainFor: fromRetention`.

    WAL is needed as long as a retained physical backup that it follows; a physical backup
    started before the WAL was written and is kept at most the longest period of its rule
    (or its minAge), so that period from the write is always enough, and never much more.
    Without a physical schedule (or with only keepLast rules) the initial lock."""
    longest = FROM_RETENTION_INITIAL_LOCK
    for schedule in policy.spec.schedules:
        if policy.spec.method_of(schedule) is not BackupMethod.PHYSICAL:
            continue
        rules = schedule.retention or policy.spec.retention
        if rules is None:
            continue
        for field, unit in _PERIODS:
            count = getattr(rules, field) or 0
            longest = max(longest, unit * count)
        if rules.min_age is not None:
            longest = max(longest, rules.min_age)
    return longest


def wal_codec_env(policy: BackupPolicy) -> list[Manifest]:
    """Compression and encryption of streamed WAL, as the policy's backups have them
    (wal-push takes the same variables from the archive_command's environment). The level
    only when the policy sets one: WAL has its own faster default."""
    compression = policy.spec.compression
    env: list[Manifest] = [{"name": ENV_COMPRESSION, "value": compression.algorithm.value}]
    if compression.level is not None:
        env.append({"name": ENV_COMPRESSION_LEVEL, "value": str(compression.level)})
    key_path = encrypt_to_path(policy)
    if key_path is not None:
        env.append({"name": ENV_ENCRYPT_TO, "value": key_path})
    lock = policy.spec.repository.object_lock
    if lock is not None and lock.from_retention:
        env.append({"name": ENV_S3_OBJECT_LOCK_RETAIN,
                    "value": formats.format_duration(wal_lock_period(policy))})
    return env


def build_wal_stream_deployment(
    policy: BackupPolicy, settings: RunnerSettings
) -> Manifest | None:
    """The WAL streamer for `walArchive.mode: stream` (postgres only), else None.

    One replica with the Recreate strategy: two streamers on one slot would fight over
    it, so the old pod is gone before the new one starts.
    """
    if wal_slot(policy) is None:
        return None
    policy_name = metadata.owner_name(policy)
    labels = names.standard_labels(policy_name, names.COMPONENT_WAL_STREAM)
    selector = {
        names.LABEL_POLICY: labels[names.LABEL_POLICY],
        names.LABEL_COMPONENT: names.COMPONENT_WAL_STREAM,
        names.LABEL_MANAGED_BY: names.MANAGED_BY,
    }
    pod = _runner_pod(
        policy,
        settings,
        CONTAINER_WAL_STREAM,
        wal_stream_args(policy),
        restart_policy="Always",
        termination_grace_seconds=settings.wal_stream_termination_grace_seconds,
        extra_env=wal_codec_env(policy),
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata.object_metadata(policy, names.wal_stream_name(policy_name), labels),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector},
            "template": pods.pod_template(labels, pods.runner_pod_spec(pod, settings)),
        },
    }


def desired_objects(policy: BackupPolicy, settings: RunnerSettings) -> list[Manifest]:
    """Everything `policy` owns: its CronJobs, the WAL streamer Deployment if any, then
    the replication CronJob when the repository has replicas (builders/replicas.py).

    The controller applies these and deletes owned objects (same owner uid) that are not
    in the list. Raises `UnsupportedTarget` before building anything for targets without
    a runner.
    """
    _require_supported(policy)
    objects = build_backup_cronjobs(policy, settings)
    deployment = build_wal_stream_deployment(policy, settings)
    if deployment is not None:
        objects.append(deployment)
    replicate = replicas.build_replicate_cronjob(policy, settings)
    if replicate is not None:
        objects.append(replicate)
    return objects
