"""The runner pod skeleton, once: every Job and Deployment that runs `tonebridge-dr <verb>`
builds its pod here, so security and the runner contract are spelled in one place.

A runner pod has one container, `settings.command` plus the verb's arguments, and:
* a non-root, read-only root filesystem with an emptyDir at /tmp (also HOME: gpg and
  libpq want a writable home), no privilege escalation, no capabilities, the
  RuntimeDefault seccomp profile;
* no service-account token unless the pod talks to the Kubernetes API (`kube_api`);
* its termination message at the path the runner writes (`FallbackToLogsOnError`:
  a crash before the runner wrote it still leaves the log tail);
* credentials only as `secretKeyRef` env vars or mounted `secret` volumes: builders never
  see values;
* its own identity from the downward API (pod, namespace, ServiceAccount, Job), which the
  runner writes into its audit records.

Jobs fail at once on exit codes a retry cannot fix (`pod_failure_policy`, codes from
`api.runner_contract`), and do not count evictions against their backoffLimit. Scheduled
runs are CronJobs of such a Job (`runner_cronjob_spec`), and "run now" is a Job made from
a CronJob's template (`run_now_job`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tonebridge_dr.api import formats
from tonebridge_dr.api import runner_contract as contract
from tonebridge_dr.api.common import Repository, ResourceRequirements, SecretKeyRef, SecretRef
from tonebridge_dr.builders import names
from tonebridge_dr.builders.settings import RunnerSettings

__all__ = [
    "AWS_CREDENTIAL_KEYS",
    "ENV_AWS_ENDPOINT",
    "ENV_AWS_REGION",
    "ENV_HOME",
    "IDENTITY_FIELDS",
    "TERMINATION_MESSAGE_PATH",
    "TERMINATION_MESSAGE_POLICY",
    "TMP_MOUNT_PATH",
    "RunnerPod",
    "bucket_env",
    "container_security_context",
    "field_env",
    "object_lock_env",
    "pod_failure_policy",
    "pod_security_context",
    "pod_template",
    "repository_env",
    "resources",
    "run_now_job",
    "runner_cronjob_spec",
    "runner_env",
    "runner_job_spec",
    "runner_pod_spec",
    "secret_env",
    "secret_key_env",
    "value_env",
]

Manifest = dict[str, Any]

TERMINATION_MESSAGE_PATH = "/dev/termination-log"
"""Where the kubelet reads the termination message; the runner's default
$TONEBRIDGE_DR_TERMINATION_LOG (a test holds the two together)."""
TERMINATION_MESSAGE_POLICY = "FallbackToLogsOnError"
TMP_MOUNT_PATH = "/tmp"
_TMP_VOLUME = "tmp"

ENV_HOME = "HOME"
#: The label the Job controller puts on a Job's pods (Kubernetes 1.27+).
LABEL_JOB_NAME = "batch.kubernetes.io/job-name"
ENV_AWS_REGION = "AWS_REGION"
ENV_AWS_ENDPOINT = "AWS_ENDPOINT_URL_S3"
AWS_CREDENTIAL_KEYS: tuple[tuple[str, bool], ...] = (
    ("AWS_ACCESS_KEY_ID", False),
    ("AWS_SECRET_ACCESS_KEY", False),
    ("AWS_SESSION_TOKEN", True),  # optional: only temporary credentials have one
)
"""Keys of a repository credentials Secret, each an env var of the same name, and whether
the pod starts without it."""


# --- environment -----------------------------------------------------------------------------


def secret_env(name: str, secret: str, key: str, *, optional: bool = False) -> Manifest:
    """`name` from key `key` of Secret `secret` (optional: the pod starts without it)."""
    selector: Manifest = {"name": secret, "key": key}
    if optional:
        selector["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": selector}}


def secret_key_env(name: str, ref: SecretKeyRef) -> Manifest:
    """`name` from the Secret key `ref` names."""
    return secret_env(name, ref.name, ref.key)


def value_env(name: str, value: str) -> Manifest:
    return {"name": name, "value": value}


def repository_env(
    repository: Repository, url: str, credentials: SecretRef | None, *, writes: bool
) -> list[Manifest]:
    """How the runner reaches a policy's folder of `repository`: its URL
    ($TONEBRIDGE_DR_REPO), `credentials` by secretKeyRef, region and endpoint; `writes`
    adds the server-side encryption of new objects (backups only: a reader never needs
    the write role's settings)."""
    env = [value_env(contract.ENV_REPO, url)]
    if credentials is not None:
        env.extend(
            secret_env(key, credentials.name, key, optional=optional)
            for key, optional in AWS_CREDENTIAL_KEYS
        )
    if repository.region is not None:
        env.append(value_env(ENV_AWS_REGION, repository.region))
    if repository.endpoint is not None:
        env.append(value_env(ENV_AWS_ENDPOINT, repository.endpoint))
    if writes and repository.sse is not None:
        env.append(value_env(contract.ENV_S3_SSE, repository.sse.value))
    if writes and repository.kms_key_id is not None:
        env.append(value_env(contract.ENV_S3_SSE_KMS_KEY_ID, repository.kms_key_id))
    if writes:
        env.extend(object_lock_env(repository))
    return env


_BUCKET_CREDENTIAL_ENV = {
    "AWS_ACCESS_KEY_ID": contract.ENV_BUCKET_ACCESS_KEY_ID,
    "AWS_SECRET_ACCESS_KEY": contract.ENV_BUCKET_SECRET_ACCESS_KEY,
    "AWS_SESSION_TOKEN": contract.ENV_BUCKET_SESSION_TOKEN,
}


def bucket_env(
    credentials: SecretRef | None, region: str | None, endpoint: str | None
) -> list[Manifest]:
    """How the runner reaches the bucket a bucket backup reads or a bucket restore writes:
    the Secret's AWS_* keys (by secretKeyRef) as TONEBRIDGE_DR_BUCKET_AWS_*, region and
    endpoint; what is left out comes from the repository's AWS environment."""
    env: list[Manifest] = []
    if credentials is not None:
        env.extend(
            secret_env(_BUCKET_CREDENTIAL_ENV[key], credentials.name, key, optional=optional)
            for key, optional in AWS_CREDENTIAL_KEYS
        )
    if region is not None:
        env.append(value_env(contract.ENV_BUCKET_REGION, region))
    if endpoint is not None:
        env.append(value_env(contract.ENV_BUCKET_ENDPOINT, endpoint))
    return env


def field_env(name: str, field_path: str) -> Manifest:
    """`name` from the pod's own `field_path` (downward API)."""
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field_path}}}


IDENTITY_FIELDS: tuple[tuple[str, str], ...] = (
    (contract.ENV_POD_NAME, "metadata.name"),
    (contract.ENV_POD_NAMESPACE, "metadata.namespace"),
    (contract.ENV_SERVICE_ACCOUNT, "spec.serviceAccountName"),
    (contract.ENV_JOB_NAME, f"metadata.labels['{LABEL_JOB_NAME}']"),
)
"""Who the runner is, for its audit records: env var and downward-API field path."""


def object_lock_env(repository: Repository) -> list[Manifest]:
    """The S3 Object Lock every object a pod writes gets (none without `objectLock`): its
    mode, and how long after the write it lasts (`retainFor`; with fromRetention the
    initial lock, which the retention run extends)."""
    lock = repository.object_lock
    if lock is None:
        return []
    retain = (
        contract.FROM_RETENTION_INITIAL_LOCK if isinstance(lock.retain_for, str)
        else lock.retain_for
    )
    return [
        value_env(contract.ENV_S3_OBJECT_LOCK_MODE, lock.mode.value),
        value_env(contract.ENV_S3_OBJECT_LOCK_RETAIN, formats.format_duration(retain)),
    ]


def runner_env(entries: Iterable[Manifest]) -> list[Manifest]:
    """`entries`, then the pod's identity (`IDENTITY_FIELDS`, for audit records) and HOME on
    the /tmp emptyDir, each unless `entries` set it (idempotent)."""
    env = list(entries)
    given = {entry.get("name") for entry in env}
    env.extend(field_env(name, path) for name, path in IDENTITY_FIELDS if name not in given)
    if ENV_HOME not in given:
        env.append(value_env(ENV_HOME, TMP_MOUNT_PATH))
    return env


# --- pod parts -------------------------------------------------------------------------------


def resources(requested: ResourceRequirements | None, settings: RunnerSettings) -> Manifest:
    """`requested` (a spec's `resources`) when it says anything, else the operator default."""
    if requested is not None:
        dumped: Manifest = requested.model_dump(mode="json", exclude_none=True)
        if dumped:
            return dumped
    return copy.deepcopy(settings.default_resources)


def container_security_context() -> Manifest:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def pod_security_context(settings: RunnerSettings) -> Manifest:
    context: Manifest = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    if settings.run_as_user is not None:
        context["runAsUser"] = settings.run_as_user
        context["runAsGroup"] = settings.run_as_user
        # Mounted Secrets and volumes become readable by the runner's group.
        context["fsGroup"] = settings.run_as_user
    return context


def pod_failure_policy(container: str, exit_codes: Iterable[int]) -> Manifest | None:
    """FailJob on `exit_codes` of `container` (a retry cannot fix them), and evictions or
    preemptions not counted (not the runner's fault); None without codes."""
    codes = sorted(exit_codes)
    if not codes:
        return None
    return {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": container, "operator": "In", "values": codes},
            },
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        ]
    }


# --- the skeleton ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunnerPod:
    """What one runner pod does; everything else is the same for every runner pod."""

    container: str
    """The container's name (also podFailurePolicy's and kubectl's default container)."""
    args: Sequence[str]
    """Arguments after `settings.command`: the verb and its flags, never a secret."""
    env: Sequence[Manifest]
    """Environment; HOME is added (`runner_env`)."""
    service_account: str
    requested_resources: ResourceRequirements | None = None
    """The spec's `resources`; None or empty for `settings.default_resources`."""
    volumes: Sequence[Manifest] = ()
    """Volumes besides /tmp, e.g. a key Secret or the volume a restore fills."""
    mounts: Sequence[Manifest] = ()
    """Their volumeMounts in the container."""
    restart_policy: str = "Never"
    kube_api: bool = False
    """Mount the service-account token: only for steps that call the Kubernetes API."""
    termination_grace_seconds: int | None = None


def runner_pod_spec(pod: RunnerPod, settings: RunnerSettings) -> Manifest:
    """The pod spec of `pod`: image, command, security, /tmp, termination message."""
    container: Manifest = {
        "name": pod.container,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": list(settings.command),
        "args": list(pod.args),
        "env": runner_env(pod.env),
        "resources": resources(pod.requested_resources, settings),
        "securityContext": container_security_context(),
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": TERMINATION_MESSAGE_POLICY,
        "volumeMounts": [{"name": _TMP_VOLUME, "mountPath": TMP_MOUNT_PATH}, *pod.mounts],
    }
    spec: Manifest = {
        "serviceAccountName": pod.service_account,
        "automountServiceAccountToken": pod.kube_api,
        "restartPolicy": pod.restart_policy,
        "securityContext": pod_security_context(settings),
        "containers": [container],
        "volumes": [{"name": _TMP_VOLUME, "emptyDir": {}}, *pod.volumes],
    }
    if pod.termination_grace_seconds is not None:
        spec["terminationGracePeriodSeconds"] = pod.termination_grace_seconds
    return spec


def pod_template(labels: Mapping[str, str], spec: Manifest) -> Manifest:
    """A pod template with `labels`, its first container kubectl's default one."""
    default = spec["containers"][0]["name"]
    return {
        "metadata": {
            "labels": dict(labels),
            "annotations": {names.ANNOTATION_DEFAULT_CONTAINER: default},
        },
        "spec": spec,
    }


def runner_job_spec(
    pod: RunnerPod,
    labels: Mapping[str, str],
    settings: RunnerSettings,
    *,
    non_retriable_exit_codes: Iterable[int],
    backoff_limit: int | None = None,
) -> Manifest:
    """The spec of a Job running `pod` once: `backoff_limit` retries (default
    `settings.backoff_limit`), none for `non_retriable_exit_codes`, the deadline (a hung
    run becomes a failed one, reason DeadlineExceeded) and the TTL of finished Jobs."""
    spec: Manifest = {
        "backoffLimit": settings.backoff_limit if backoff_limit is None else backoff_limit,
        "activeDeadlineSeconds": settings.active_deadline_seconds,
        "ttlSecondsAfterFinished": settings.ttl_seconds_after_finished,
    }
    failure_policy = pod_failure_policy(pod.container, non_retriable_exit_codes)
    if failure_policy is not None:
        spec["podFailurePolicy"] = failure_policy
    spec["template"] = pod_template(labels, runner_pod_spec(pod, settings))
    return spec


def runner_cronjob_spec(
    *,
    schedule: str,
    time_zone: str | None,
    suspend: bool,
    labels: Mapping[str, str],
    job_spec: Manifest,
    settings: RunnerSettings,
) -> Manifest:
    """The spec of a CronJob running `job_spec` (a `runner_job_spec`) on `schedule`.

    One run at a time (`concurrencyPolicy: Forbid`; the Job's deadline makes a hung run a
    failed one instead of blocking every later run), a starting deadline, the history
    limits of `settings`; `suspend` stops scheduling (Jobs already running go on)."""
    spec: Manifest = {
        "schedule": schedule,
        "concurrencyPolicy": "Forbid",
        "startingDeadlineSeconds": settings.starting_deadline_seconds,
        "suspend": suspend,
        "successfulJobsHistoryLimit": settings.successful_jobs_history_limit,
        "failedJobsHistoryLimit": settings.failed_jobs_history_limit,
    }
    if time_zone is not None:
        spec["timeZone"] = time_zone
    spec["jobTemplate"] = {"metadata": {"labels": dict(labels)}, "spec": job_spec}
    return spec


def run_now_job(
    cronjob: Mapping[str, Any],
    *,
    name: str,
    token: str,
    owner_references: Sequence[Mapping[str, Any]] | None = None,
) -> Manifest:
    """A Job from `cronjob`'s jobTemplate, like `kubectl create job --from=cronjob/x`.

    Labels and spec are the template's; annotations add `cronjob.kubernetes.io/instantiate:
    manual` and `dr.tonebridge.io/run-now: <token>`. The owner is the CronJob's own owner
    (the BackupPolicy or RestoreTest: the CronJob's owner references, or
    `owner_references`), not the CronJob, so the Job does not count against the CronJob's
    concurrency or history and survives a CronJob replacement; `ttlSecondsAfterFinished`
    cleans it up. Name it deterministically from `token` (`names.run_now_job_name`,
    `names.restore_test_run_now_job_name`) so a repeated request creates nothing new.
    """
    template = cronjob["spec"]["jobTemplate"]
    template_meta = template.get("metadata") or {}
    cronjob_meta = cronjob["metadata"]
    owners = owner_references if owner_references is not None else (
        cronjob_meta.get("ownerReferences") or []
    )
    meta: Manifest = {"name": name}
    if cronjob_meta.get("namespace"):
        meta["namespace"] = cronjob_meta["namespace"]
    meta["labels"] = dict(template_meta.get("labels") or cronjob_meta.get("labels") or {})
    meta["annotations"] = {
        **dict(template_meta.get("annotations") or {}),
        names.ANNOTATION_INSTANTIATE: "manual",
        names.ANNOTATION_RUN_NOW: token,
    }
    meta["ownerReferences"] = [dict(o) for o in owners]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": copy.deepcopy(dict(template["spec"])),
    }
