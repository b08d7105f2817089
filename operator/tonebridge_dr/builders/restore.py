"""Pure builders of what a RestoreRequest runs: the restore Job, the volume claim made from
`target.volume.claimTemplate`, and the optional PostgreSQL instance on the restored volume.

Every function maps a validated RestoreRequest (plus the BackupPolicy named by
`source.policyRef`, when there is one, and operator settings) to plain Kubernetes
manifests; nothing here talks to the API server. Problems only the operator can judge
(an unsupported target, a policy of the wrong kind, encrypted backups without a private
key) raise `RestoreSpecError` with a `reason` and one sentence for the condition.

Security contract (tested):
* restore pods get the repository's READ credentials (`restoreCredentialsSecretRef`;
  only when a policy has none, its `credentialsSecretRef`, as the API documents) by
  `secretKeyRef`, and the OpenPGP private key as a mounted `secret` volume file; they
  never get the public key or the write role's SSE settings, and backup pods never get
  the private key (builders/backup.py);
* connection strings and Redis URLs come from a `secretKeyRef` env var, never from
  arguments;
* pods run non-root, read-only root filesystem, no privilege escalation, no
  capabilities, no service-account token (except a Kubernetes restore, which applies
  objects with it), under the restore ServiceAccount.

Layout contract with the backup side: a policy's backups live in the folder named after
it, `<repository.url>/<policy name>` (`policy_repository_url`), so a new cluster can
find them from the bucket and the policy name alone.

How a restore runs (the runner, `tonebridge-dr restore postgres|redis`):
* database targets: a logical backup restored in ONE transaction (whole database, the
  chosen `tables`, or a `repair` of a time range); a non-empty target is refused
  (TargetNotEmpty) unless `overwrite: true` (`--clean`);
* volume targets: a base backup extracted into `<claim>/pgdata`, recovered with
  archived WAL to `targetTime` / `targetLSN` / just before `beforeTransaction` / the
  end of the archive (`latest`, and `backupId`, which picks the base backup), promoted
  and shut down cleanly, ready for any PostgreSQL pod with
  `PGDATA=/var/lib/postgresql/data/pgdata`; a non-empty data
  directory is refused unless `overwrite: true` (`--overwrite`);
* redis targets: the snapshot is fetched and verified completely, loaded into a private
  scratch `redis-server` inside the pod (memory for the whole dataset: size
  `resources` for it), and its keys are copied with DUMP/RESTORE, TTLs kept. Without
  `overwrite` (`--mode missing`) a key the target already has is skipped, so live data
  always wins; `overwrite: true` (`--mode replace`) replaces it. Keys the backup lacks
  are never deleted. Not one transaction, but safe to run again.
* kubernetes targets: the objects of an export applied server-side in dependency order
  with the restore ServiceAccount's token (`missing` leaves live objects alone,
  `replace` makes them the backup's and recreates on immutable fields). Not one
  transaction, but safe to run again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tonebridge_dr.api import runner_contract as contract
from tonebridge_dr.api.backuppolicy import TargetKind
from tonebridge_dr.api.common import (
    BackupMethod,
    Repository,
    ResourceRequirements,
    SecretKeyRef,
    SecretRef,
)
from tonebridge_dr.api.kinds import BackupPolicy, RestoreRequest
from tonebridge_dr.api.restorerequest import (
    AccessMode,
    BucketRestoreTarget,
    DatabaseTarget,
    KubernetesRestoreTarget,
    RedisRestoreTarget,
    RestoreRequestSpec,
    RestoreSource,
)
from tonebridge_dr.api.runner_contract import (  # re-exported: the runner environment
    ENV_REDIS_TARGET_URL,
    ENV_REPO,
    ENV_TARGET_DSN,
)
from tonebridge_dr.builders import metadata, names, pods
from tonebridge_dr.builders.names import (
    COMPONENT_DATABASE,
    CONTAINER_POSTGRES,
    CONTAINER_RESTORE,
    LABEL_RESTORE_REQUEST,
    instance_name,
    policy_repository_url,
    restore_job_name,
    selector_for_request,
)
from tonebridge_dr.builders.pods import TERMINATION_MESSAGE_PATH, TMP_MOUNT_PATH
from tonebridge_dr.builders.settings import RunnerSettings

__all__ = [
    "COMPONENT_DATABASE",
    "CONTAINER_POSTGRES",
    "CONTAINER_RESTORE",
    "DATA_DIR",
    "DATA_MOUNT_PATH",
    "DECRYPT_KEY_PATH",
    "ENV_REDIS_TARGET_URL",
    "ENV_REPO",
    "ENV_TARGET_DSN",
    "KEY_MOUNT_PATH",
    "LABEL_RESTORE_REQUEST",
    "NON_RETRIABLE_RESTORE_EXIT_CODES",
    "TERMINATION_MESSAGE_PATH",
    "TMP_MOUNT_PATH",
    "ResolvedSource",
    "RestoreSpecError",
    "SecretRequirement",
    "build_instance",
    "build_restore_claim",
    "build_restore_job",
    "claim_name",
    "decrypt_args",
    "decrypt_key_volume",
    "instance_name",
    "policy_repository_url",
    "reader_job_spec",
    "reader_pod",
    "resolve_backup_source",
    "resolve_source",
    "restore_job_name",
    "runner_args",
    "secret_requirements",
    "selector_for_request",
    "source_env",
    "source_secret_requirements",
    "target_description",
    "target_kind",
]

Manifest = dict[str, Any]

KEY_MOUNT_PATH = "/etc/tonebridge-dr/restore-key"
DECRYPT_KEY_FILE = "private.asc"
DECRYPT_KEY_PATH = f"{KEY_MOUNT_PATH}/{DECRYPT_KEY_FILE}"
DATA_MOUNT_PATH = "/var/lib/postgresql/data"
"""Where the restored volume is mounted, in the restore Job and in the instance (the
official postgres image's volume)."""
DATA_DIR = f"{DATA_MOUNT_PATH}/pgdata"
"""The data directory inside the volume (a subfolder: a volume's root may hold
lost+found, which PostgreSQL refuses). PGDATA of the instance."""
POSTGRES_PORT = 5432
_KEY_VOLUME = "restore-key"
_DATA_VOLUME = "data"

NON_RETRIABLE_RESTORE_EXIT_CODES: tuple[int, ...] = tuple(
    code
    for code in contract.non_retriable_restore_codes()
    if code not in contract.non_retriable_backup_codes()
)
"""Besides the settings' (backup) codes, what a retry of a restore cannot fix
(api/runner_contract.py): backup not found / target unreachable (6), corrupt backup (7),
target not empty (11), recovery ended before its planned end (14: the volume holds a
promoted, marked data directory; a person decides). The Job fails at once."""

_REFUSED_BY_PLATFORM = (
    "RestoreRequest restores PostgreSQL (a database or a data volume), Redis, Kubernetes "
    "exports and buckets in this version"
)
_ENGINE_NAMES: dict[TargetKind, str] = {
    TargetKind(engine.name): engine.title for engine in contract.ENGINES if engine.restore
}
"""Engines the runner restores, by their titles (the contract's engines with `restore`)."""


class RestoreSpecError(ValueError):
    """The request cannot run as written; `reason` goes into the Failed condition."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# --- names ----------------------------------------------------------------------------------


def claim_name(rr: RestoreRequest) -> str | None:
    """The PersistentVolumeClaim a physical restore fills: `claimName`, or the request's
    name for a `claimTemplate`; None for database targets."""
    volume = rr.spec.target.volume
    if volume is None:
        return None
    return volume.claim_name or names.restore_claim_name(metadata.owner_name(rr))


# --- the source -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedSource:
    """Where the backups are and what the restore Job needs to read them."""

    policy_name: str
    repository: Repository
    repository_url: str
    """`<repository.url>/<policy>`: what the runner opens."""
    credentials: SecretRef | None
    """Read credentials for the repository (None: the pod's own identity)."""
    private_key: SecretKeyRef | None
    """OpenPGP private key for encrypted backups."""
    uses_write_credentials: bool
    """True when the policy has no restoreCredentialsSecretRef and the restore falls back
    to its backup credentials (warn: spec 8.2 wants a separate read-only role)."""
    engine: TargetKind = TargetKind.POSTGRES
    """Whose backups these are (what the runner restores)."""

    def describe(self) -> str:
        """One line for the SOURCE column and messages (no secrets: URLs carry none)."""
        return f"{self.repository_url}"


def target_kind(rr: RestoreRequest) -> str:
    """`database`, `volume`, `redis`, `bucket` or `kubernetes`: which target the request
    sets."""
    target = rr.spec.target
    for kind in ("database", "volume", "redis", "bucket"):
        if getattr(target, kind) is not None:
            return kind
    return "kubernetes"


def _engine_of(rr: RestoreRequest) -> TargetKind | None:
    """What a BackupPolicy must back up to feed this request (None: not served here)."""
    target = rr.spec.target
    if target.database is not None or target.volume is not None:
        return TargetKind.POSTGRES
    if target.redis is not None:
        return TargetKind.REDIS
    if target.kubernetes is not None:
        return TargetKind.KUBERNETES
    if target.bucket is not None:
        return TargetKind.BUCKET
    return None


def _check_policy(
    policy: BackupPolicy, engine: TargetKind, method: BackupMethod | None, reader: str,
    needs: str,
) -> None:
    policy_name = policy.metadata.name or "?"
    target = policy.spec.target
    if target.kind is not engine:
        raise RestoreSpecError(
            "InvalidSpec",
            f'BackupPolicy "{policy_name}" backs up {target.kind.value}, not '
            f"{_ENGINE_NAMES[engine]}: it has no backups {reader} could restore",
        )
    if method is None:
        return
    methods = {policy.spec.method_of(s) for s in policy.spec.schedules}
    if method not in methods:
        raise RestoreSpecError(
            "InvalidSpec",
            f'BackupPolicy "{policy_name}" takes no {method.value} backups (its schedules '
            f"take {', '.join(sorted(m.value for m in methods))}): {needs} needs "
            f"{method.value} backups",
        )


def resolve_source(rr: RestoreRequest, policy: BackupPolicy | None) -> ResolvedSource:
    """Repository, folder, credentials and key of the request's backups.

    `policy` is the BackupPolicy named by `source.policyRef` (None for a repository given
    directly). Raises RestoreSpecError when the request cannot be served.
    """
    engine = _engine_of(rr)
    if engine is None:
        raise RestoreSpecError("UnsupportedTarget", _REFUSED_BY_PLATFORM)
    return resolve_backup_source(
        rr.spec.source, policy, engine=engine, method=rr.spec.effective_method,
        reader="this RestoreRequest", needs=f"a {target_kind(rr)} target",
    )


def resolve_backup_source(
    source: RestoreSource,
    policy: BackupPolicy | None,
    *,
    engine: TargetKind,
    method: BackupMethod | None,
    reader: str,
    needs: str,
) -> ResolvedSource:
    """Repository, folder, credentials and key of the backups `source` names, for whatever
    reads them (a RestoreRequest, a RestoreTest): the one place spec 8.2's read role, the
    policy folder and the decryption key are chosen.

    `policy` is the BackupPolicy named by `source.policyRef` (None for a repository given
    directly); it must back up `engine` and, when `method` is given, take such backups
    (`reader` and `needs` word the refusal). Raises RestoreSpecError when the backups
    cannot be read as asked.
    """
    if source.policy_ref is not None:
        if policy is None or policy.metadata.name != source.policy_ref.name:
            raise ValueError(f'resolve_source needs BackupPolicy "{source.policy_ref.name}"')
        _check_policy(policy, engine, method, reader, needs)
        repository: Repository = policy.spec.repository
        policy_name = source.policy_ref.name
        credentials = repository.restore_credentials_secret_ref
        fallback = credentials is None and repository.credentials_secret_ref is not None
        if credentials is None:
            credentials = repository.credentials_secret_ref
        encryption = policy.spec.encryption
        private_key = source.private_key_secret_ref or (
            encryption.private_key_secret_ref if encryption is not None else None
        )
        if encryption is not None and private_key is None:
            raise RestoreSpecError(
                "MissingDecryptionKey",
                f'backups of BackupPolicy "{policy_name}" are encrypted, but neither '
                "spec.source.privateKeySecretRef nor the policy's "
                "encryption.privateKeySecretRef names the OpenPGP private key to decrypt them",
            )
    else:
        assert source.repository is not None and source.policy_name is not None
        repository = source.repository
        policy_name = source.policy_name
        credentials = repository.restore_credentials_secret_ref or (
            repository.credentials_secret_ref
        )
        fallback = False
        private_key = source.private_key_secret_ref
    return ResolvedSource(
        policy_name=policy_name,
        repository=repository,
        repository_url=policy_repository_url(repository.url, policy_name),
        credentials=credentials,
        private_key=private_key,
        uses_write_credentials=fallback,
        engine=engine,
    )


@dataclass(frozen=True)
class SecretRequirement:
    """A Secret (and the keys in it) the restore Job cannot start without."""

    name: str
    keys: tuple[str, ...]
    purpose: str


def secret_requirements(rr: RestoreRequest, source: ResolvedSource) -> list[SecretRequirement]:
    """Secrets the restore Job reads, in a stable order; the handler checks they exist
    before creating the Job, so a typo is a precise condition, not a pod stuck in
    CreateContainerConfigError."""
    wanted: list[SecretRequirement] = []
    target = _target_secret(rr)
    if target is not None:
        ref, purpose = target
        wanted.append(SecretRequirement(ref.name, (ref.key,), purpose))
    bucket = rr.spec.target.bucket
    if bucket is not None and bucket.credentials_secret_ref is not None:
        keys = tuple(key for key, optional in pods.AWS_CREDENTIAL_KEYS if not optional)
        wanted.append(SecretRequirement(bucket.credentials_secret_ref.name, keys,
                                        "target bucket credentials"))
    return wanted + source_secret_requirements(source)


def source_secret_requirements(source: ResolvedSource) -> list[SecretRequirement]:
    """The Secrets a Job needs to read `source`: read credentials, the private key."""
    wanted: list[SecretRequirement] = []
    if source.credentials is not None:
        keys = tuple(key for key, optional in pods.AWS_CREDENTIAL_KEYS if not optional)
        wanted.append(
            SecretRequirement(source.credentials.name, keys, "repository read credentials")
        )
    if source.private_key is not None:
        ref = source.private_key
        wanted.append(SecretRequirement(ref.name, (ref.key,), "OpenPGP private key"))
    return wanted


def _target_secret(rr: RestoreRequest) -> tuple[SecretKeyRef, str] | None:
    """The Secret key that says how to reach the target (DSN or URL), and what it is."""
    target = rr.spec.target
    if target.database is not None:
        return target.database.dsn_secret_ref, "target database DSN"
    if target.redis is not None:
        return target.redis.url_secret_ref, "target Redis URL"
    return None


def target_description(rr: RestoreRequest) -> str:
    """What receives the data, in words (no secrets): for conditions and Events."""
    spec = rr.spec
    target = spec.target
    if target.database is not None:
        where = f'the database of Secret "{target.database.dsn_secret_ref.name}"'
        if target.database.database is not None:
            where = f'database "{target.database.database}" (server of Secret '
            where += f'"{target.database.dsn_secret_ref.name}")'
        if spec.repair is not None:
            return f'table "{spec.repair.table}" in {where}'
        if spec.tables:
            quoted = ", ".join(f'"{t}"' for t in spec.tables)
            return f"table{'s' if len(spec.tables) > 1 else ''} {quoted} in {where}"
        return where
    if target.volume is not None:
        return f'volume "{claim_name(rr)}"'
    if target.redis is not None:
        where = f'the Redis of Secret "{target.redis.url_secret_ref.name}"'
        if target.redis.pattern is not None:
            where = f'keys matching "{target.redis.pattern}" in {where}'
        if target.redis.db is not None:
            where += f" (database {target.redis.db} of the backup)"
        return where
    if target.kubernetes is not None:
        return _kubernetes_description(target.kubernetes)
    if target.bucket is not None:
        where = f"bucket {target.bucket.url}"
        if target.bucket.prefix is not None:
            where = f'keys starting with "{target.bucket.prefix}" into {where}'
        return where
    return "the target"


def _kubernetes_description(kubernetes: KubernetesRestoreTarget) -> str:
    if kubernetes.namespace is not None:
        where = f'namespace "{kubernetes.namespace}"'
    elif kubernetes.namespace_map:
        moved = ", ".join(f"{m.source}->{m.target}" for m in kubernetes.namespace_map)
        where = f"the cluster (namespaces {moved})"
    else:
        where = "the namespaces of the backup"
    return f"{where}, mode {kubernetes.mode.value}"


# --- the restore Job -------------------------------------------------------------------------


def _format_time(value: datetime) -> str:
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _backup_arg(spec: RestoreRequestSpec) -> str:
    return spec.backup_id if spec.backup_id is not None else "latest"


def _database_args(spec: RestoreRequestSpec, database: DatabaseTarget) -> list[str]:
    args = ["--backup", _backup_arg(spec)]
    if database.database is not None:
        args += ["--target-database", database.database]
    if spec.repair is not None:
        repair = spec.repair
        return [
            *args,
            "--table", repair.table,
            "--repair-column", repair.column,
            "--from", _format_time(repair.from_),
            "--to", _format_time(repair.to),
        ]
    for table in spec.tables or ():
        args += ["--table", table]
    if spec.overwrite:
        args.append("--clean")
    if not spec.tables:
        args.append("--create")  # a brand-new server has no database yet
    return args


def _volume_args(spec: RestoreRequestSpec) -> list[str]:
    args = ["--data-dir", DATA_DIR]
    if spec.target_time is not None:
        args += ["--target-time", _format_time(spec.target_time)]
    elif spec.target_lsn is not None:
        args += ["--target-lsn", spec.target_lsn]
    elif spec.before_transaction is not None:
        args += ["--before-xid", str(spec.before_transaction)]
        if spec.before_time is not None:
            args += ["--before-time", _format_time(spec.before_time)]
    else:  # latest, or backupId: that base backup plus every archived WAL after it
        if spec.backup_id is not None:
            args += ["--backup", spec.backup_id]
        args.append("--latest")
    if spec.overwrite:
        args.append("--overwrite")
    # Recover, promote, then shut down cleanly: the volume is left ready for any
    # PostgreSQL pod (no recovery.signal, a new timeline, a clean shutdown checkpoint).
    return [*args, "--start", "--stop-after"]


def _redis_args(spec: RestoreRequestSpec, redis: RedisRestoreTarget) -> list[str]:
    # `missing` never touches a key the target has (RESTORE without REPLACE: no
    # check-then-write race with live writers); only overwrite replaces them.
    args = ["--backup", _backup_arg(spec), "--mode", "replace" if spec.overwrite else "missing"]
    if redis.pattern is not None:
        args.append(f"--pattern={redis.pattern}")  # one token: a glob may start with "-"
    if redis.db is not None:
        args += ["--db", str(redis.db)]
    return args


def _kubernetes_args(spec: RestoreRequestSpec, kubernetes: KubernetesRestoreTarget) -> list[str]:
    args = ["--backup", _backup_arg(spec), "--mode", kubernetes.mode.value]
    for namespace in kubernetes.namespaces or ():
        args += ["--namespace", namespace]
    if kubernetes.namespace is not None:  # every namespace of the backup into this one
        args += ["--all-namespaces-to", kubernetes.namespace]
    for mapping in kubernetes.namespace_map or ():
        args += ["--namespace-map", f"{mapping.source}={mapping.target}"]
    for kind in kubernetes.kinds or ():
        args += ["--kind", kind]
    for name in kubernetes.names or ():
        args += ["--name", name]
    return args


def _bucket_args(spec: RestoreRequestSpec, bucket: BucketRestoreTarget) -> list[str]:
    args = ["--backup", _backup_arg(spec), "--to", bucket.url,
            "--mode", "replace" if spec.overwrite else "missing"]
    if bucket.prefix is not None:
        args.append(f"--prefix={bucket.prefix}")  # one token: a prefix may start with "-"
    return args


def runner_args(rr: RestoreRequest, source: ResolvedSource) -> list[str]:
    """Arguments after the runner's command, e.g. `restore postgres --backup latest
    --table transformations --clean --json` or `restore redis --backup latest --mode
    missing --json`. The repository comes from $TONEBRIDGE_DR_REPO, the target DSN from
    $TONEBRIDGE_DR_TARGET_DSN and the Redis URL from $TONEBRIDGE_DR_REDIS_TARGET_URL
    (never arguments: anyone who can read the pod sees those)."""
    spec = rr.spec
    target = spec.target
    if target.database is not None:
        args = ["restore", "postgres", *_database_args(spec, target.database)]
    elif target.volume is not None:
        args = ["restore", "postgres", *_volume_args(spec)]
    elif target.redis is not None:
        args = ["restore", "redis", *_redis_args(spec, target.redis)]
    elif target.kubernetes is not None:
        args = ["restore", "kubernetes", *_kubernetes_args(spec, target.kubernetes)]
    elif target.bucket is not None:
        args = ["restore", "bucket", *_bucket_args(spec, target.bucket)]
    else:
        raise RestoreSpecError("UnsupportedTarget", _REFUSED_BY_PLATFORM)
    return [*args, *decrypt_args(source), "--json"]


def _labels(rr: RestoreRequest, source: ResolvedSource, component: str) -> dict[str, str]:
    return names.restore_labels(source.policy_name, metadata.owner_name(rr), component)


def owner_reference(rr: RestoreRequest) -> Manifest:
    """The controller owner reference to `rr`: deleting the request deletes its Job (and
    so stops the restore)."""
    return metadata.owner_reference(rr)


def source_env(source: ResolvedSource) -> list[Manifest]:
    """How a Job reads `source`: repository folder, read credentials (by secretKeyRef),
    region, endpoint; never the write role's encryption settings."""
    return pods.repository_env(
        source.repository, source.repository_url, source.credentials, writes=False
    )


def restore_env(rr: RestoreRequest, source: ResolvedSource) -> list[Manifest]:
    """Environment of the restore container: repository folder, read credentials (by
    secretKeyRef), region, endpoint, the target DSN or Redis URL (by secretKeyRef), HOME."""
    env = source_env(source)
    target = _target_secret(rr)
    if target is not None:
        name = ENV_REDIS_TARGET_URL if rr.spec.target.redis is not None else ENV_TARGET_DSN
        env.append(pods.secret_key_env(name, target[0]))
    bucket = rr.spec.target.bucket
    if bucket is not None:
        env.extend(pods.bucket_env(bucket.credentials_secret_ref, bucket.region, bucket.endpoint))
    return pods.runner_env(env)


def decrypt_key_volume(source: ResolvedSource) -> tuple[list[Manifest], list[Manifest]]:
    """(volumes, volumeMounts) of the OpenPGP private key file at DECRYPT_KEY_PATH (what
    `--decrypt-key` names), or ([], []) for unencrypted backups."""
    if source.private_key is None:
        return [], []
    ref = source.private_key
    volume = {
        "name": _KEY_VOLUME,
        "secret": {
            "secretName": ref.name,
            "items": [{"key": ref.key, "path": DECRYPT_KEY_FILE}],
            # Readable by the pod's user and fsGroup only.
            "defaultMode": 0o440,
        },
    }
    return [volume], [{"name": _KEY_VOLUME, "mountPath": KEY_MOUNT_PATH, "readOnly": True}]


def decrypt_args(source: ResolvedSource) -> list[str]:
    """`--decrypt-key DECRYPT_KEY_PATH` for encrypted backups, else nothing."""
    return ["--decrypt-key", DECRYPT_KEY_PATH] if source.private_key is not None else []


def _volumes(rr: RestoreRequest, source: ResolvedSource) -> tuple[list[Manifest], list[Manifest]]:
    """(volumes, volumeMounts) besides /tmp: the private key, the volume a restore fills."""
    volumes, mounts = decrypt_key_volume(source)
    claim = claim_name(rr)
    if claim is not None:
        volumes.append({"name": _DATA_VOLUME, "persistentVolumeClaim": {"claimName": claim}})
        mounts.append({"name": _DATA_VOLUME, "mountPath": DATA_MOUNT_PATH})
    return volumes, mounts


def build_restore_job(
    rr: RestoreRequest, policy: BackupPolicy | None, settings: RunnerSettings
) -> Manifest:
    """The Job that performs the restore, owned by the request.

    Retries: a failure a retry cannot fix (refused target, missing or corrupt backup,
    usage, repository configuration, key, authentication) fails the Job at once
    (podFailurePolicy). Otherwise a logical restore gets `settings.backoff_limit`
    retries, which is safe because a failed attempt rolls back; so does a Redis restore
    (a retry skips, or with overwrite rewrites, the keys an earlier attempt restored);
    a physical restore gets none (a failed recovery leaves its files for diagnosis).
    """
    source = resolve_source(rr, policy)
    request = metadata.owner_name(rr)
    labels = _labels(rr, source, names.COMPONENT_RESTORE)
    volumes, mounts = _volumes(rr, source)
    pod = reader_pod(CONTAINER_RESTORE, runner_args(rr, source), restore_env(rr, source),
                     settings, resources=rr.spec.resources, volumes=volumes, mounts=mounts,
                     kube_api=rr.spec.target.kubernetes is not None)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata.object_metadata(rr, restore_job_name(request), labels),
        # A failed physical attempt may leave files in the data directory, which a retry
        # would only refuse (TargetNotEmpty), hiding the first error: no retry.
        "spec": reader_job_spec(pod, labels, settings,
                                backoff_limit=0 if rr.spec.target.volume is not None else None),
    }


def reader_pod(
    container: str,
    args: list[str],
    env: list[Manifest],
    settings: RunnerSettings,
    *,
    resources: ResourceRequirements | None,
    volumes: list[Manifest],
    mounts: list[Manifest],
    kube_api: bool = False,
) -> pods.RunnerPod:
    """A pod that reads backups (a restore, a restore test): the restore ServiceAccount
    (spec 8.2); no Kubernetes API token (it talks to the repository and a database only)
    except for a Kubernetes restore (`kube_api`), which applies objects with it."""
    return pods.RunnerPod(
        container=container, args=args, env=env,
        service_account=settings.restore_service_account, requested_resources=resources,
        volumes=volumes, mounts=mounts, kube_api=kube_api,
    )


def reader_job_spec(
    pod: pods.RunnerPod, labels: dict[str, str], settings: RunnerSettings, *,
    backoff_limit: int | None = None,
) -> Manifest:
    """The Job spec of a `reader_pod`: besides the settings' codes, what a retry of a
    restore cannot fix (NON_RETRIABLE_RESTORE_EXIT_CODES) fails it at once."""
    non_retriable = set(settings.non_retriable_exit_codes) | set(NON_RETRIABLE_RESTORE_EXIT_CODES)
    return pods.runner_job_spec(pod, labels, settings, non_retriable_exit_codes=non_retriable,
                                backoff_limit=backoff_limit)


# --- the volume and the instance ---------------------------------------------------------------


def build_restore_claim(rr: RestoreRequest, policy: BackupPolicy | None) -> Manifest | None:
    """The PersistentVolumeClaim of `target.volume.claimTemplate` (named after the
    request), or None. Not owned by the request: the restored data outlives it."""
    volume = rr.spec.target.volume
    if volume is None or volume.claim_template is None:
        return None
    template = volume.claim_template
    source = resolve_source(rr, policy)
    modes = template.access_modes or [AccessMode.READ_WRITE_ONCE]
    spec: Manifest = {
        "accessModes": [mode.value for mode in modes],
        "resources": {"requests": {"storage": str(template.size)}},
        "volumeMode": "Filesystem",
    }
    if template.storage_class_name is not None:
        spec["storageClassName"] = template.storage_class_name
    labels = _labels(rr, source, COMPONENT_DATABASE)
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata.object_metadata(
            rr, names.restore_claim_name(metadata.owner_name(rr)), labels, owned=False
        ),
        "spec": spec,
    }


def instance_image(rr: RestoreRequest, server_major: int | None) -> str | None:
    """`instance.image`, else `postgres:<major of the restored cluster>`, else None."""
    instance = rr.spec.target.instance
    if instance is None:
        return None
    if instance.image is not None:
        return instance.image
    return f"postgres:{server_major}" if server_major else None


_MAJOR_RE = re.compile(r"^(\d+)")


def image_major(image: str) -> int | None:
    """The PostgreSQL major version an image tag names (`postgres:16`, `postgres:15.6-alpine`,
    `registry:5000/team/pg:16.2.0` -> 16), None when the tag does not say (`latest`, a
    digest, no tag)."""
    if "@" in image:
        return None
    name, colon, tag = image.rpartition(":")
    if not colon or "/" in tag or not name:
        return None
    match = _MAJOR_RE.match(tag)
    return int(match.group(1)) if match else None


def instance_image_problem(image: str, server_major: int | None) -> str | None:
    """Why `image` cannot run the restored data directory of PostgreSQL `server_major`, or
    None (also when either version is unknown: then nothing can be judged)."""
    major = image_major(image)
    if major is None or server_major is None or major == server_major:
        return None
    return (f"image {image} is PostgreSQL {major} but the backup is PostgreSQL {server_major}: "
            f"a data directory only starts on its own major version; set "
            f"spec.target.instance.image to a PostgreSQL {server_major} image (or omit it for "
            f"postgres:{server_major})")


def server_major(result: Mapping[str, Any] | None) -> int | None:
    """The PostgreSQL major version a physical restore result records, if any."""
    for key in ("server_version_major", "server_major", "server_version"):
        value = (result or {}).get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value // 10000 if value >= 10000 else value
        if isinstance(value, str) and (match := _MAJOR_RE.match(value)):
            return int(match.group(1))
    return None


def build_instance(
    rr: RestoreRequest, policy: BackupPolicy | None, *, image: str
) -> list[Manifest]:
    """A one-replica StatefulSet running PostgreSQL (`image`) on the restored volume, and a
    Service in front of it; [] without `target.instance`. Created only after the restore
    succeeded, and not owned by the request (applications may be using it)."""
    instance = rr.spec.target.instance
    claim = claim_name(rr)
    if instance is None or claim is None:
        return []
    source = resolve_source(rr, policy)
    name = instance_name(metadata.owner_name(rr))
    labels = _labels(rr, source, COMPONENT_DATABASE)
    selector = {
        LABEL_RESTORE_REQUEST: labels[LABEL_RESTORE_REQUEST],
        names.LABEL_COMPONENT: COMPONENT_DATABASE,
        names.LABEL_MANAGED_BY: names.MANAGED_BY,
    }
    container: Manifest = {
        "name": CONTAINER_POSTGRES,
        "image": image,
        "ports": [{"name": "postgres", "containerPort": POSTGRES_PORT, "protocol": "TCP"}],
        "env": [pods.value_env("PGDATA", DATA_DIR)],
        "volumeMounts": [{"name": _DATA_VOLUME, "mountPath": DATA_MOUNT_PATH}],
        "readinessProbe": {
            "exec": {"command": ["pg_isready", "--host=127.0.0.1", f"--port={POSTGRES_PORT}"]},
            "periodSeconds": 5,
        },
    }
    if instance.resources is not None:
        resources = instance.resources.model_dump(mode="json", exclude_none=True)
        if resources:
            container["resources"] = resources
    statefulset: Manifest = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata.object_metadata(rr, name, labels, owned=False),
        "spec": {
            "replicas": 1,
            "serviceName": name,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "containers": [container],
                    "volumes": [
                        {"name": _DATA_VOLUME, "persistentVolumeClaim": {"claimName": claim}}
                    ],
                },
            },
        },
    }
    service: Manifest = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata.object_metadata(rr, name, labels, owned=False),
        "spec": {
            "selector": dict(selector),
            "ports": [
                {
                    "name": "postgres",
                    "port": instance.port,
                    "targetPort": "postgres",
                    "protocol": "TCP",
                }
            ],
        },
    }
    return [statefulset, service]
