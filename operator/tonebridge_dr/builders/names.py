"""Names, labels and annotations of every object the operator creates: the one place they are
spelled (what a BackupPolicy owns, what a RestoreRequest runs, the containers inside).

Every name is a pure function of its inputs, so a handler that runs twice computes the
same names and can never create a second copy of an object. Names that would exceed a
Kubernetes limit are cut and given a short, stable hash of the full name, so two long
names that share a prefix stay distinct.

Limits that matter:
* CronJob names: 52 characters (the CronJob controller appends `-<11 digits>` to name
  its Jobs, and a Job's name must fit a 63-character label value).
* Job names: 63 characters (they become the `job-name` label of their pods).
* Label values: 63 characters, alphanumeric at both ends.
* StatefulSet names: 52 characters (its pods get a `<name>-<10-character revision hash>`
  label).
"""

from __future__ import annotations

import hashlib
import re

__all__ = [
    "ANNOTATION_DEFAULT_CONTAINER",
    "ANNOTATION_FAILOVER_NOW",
    "ANNOTATION_FAILOVER_NOW_HANDLED",
    "ANNOTATION_INSTANTIATE",
    "ANNOTATION_RESET",
    "ANNOTATION_RESET_HANDLED",
    "ANNOTATION_RUN_NOW",
    "ANNOTATION_RUN_NOW_HANDLED",
    "COMPONENT_BACKUP",
    "COMPONENT_DATABASE",
    "COMPONENT_RESTORE",
    "COMPONENT_RESTORE_TEST",
    "COMPONENT_WAL_STREAM",
    "CONTAINER_BACKUP",
    "CONTAINER_POSTGRES",
    "CONTAINER_RESTORE",
    "CONTAINER_RESTORE_TEST",
    "CONTAINER_WAL_STREAM",
    "CRONJOB_NAME_LIMIT",
    "INSTANCE_NAME_LIMIT",
    "JOB_NAME_LIMIT",
    "LABEL_COMPONENT",
    "LABEL_INSTANCE",
    "LABEL_MANAGED_BY",
    "LABEL_NAME",
    "LABEL_PART_OF",
    "LABEL_POLICY",
    "LABEL_RESTORE_REQUEST",
    "LABEL_RESTORE_TEST",
    "LABEL_SCHEDULE",
    "LABEL_TASK",
    "MANAGED_BY",
    "NAME_LIMIT",
    "TASK_REPLICATE",
    "cronjob_name",
    "instance_name",
    "label_value",
    "policy_repository_url",
    "replicate_cronjob_name",
    "replicate_job_name",
    "restore_claim_name",
    "restore_job_name",
    "restore_labels",
    "restore_test_cronjob_name",
    "restore_test_labels",
    "restore_test_run_now_job_name",
    "run_now_job_name",
    "selector_for_policy",
    "selector_for_request",
    "standard_labels",
    "wal_slot_name",
    "wal_stream_name",
]

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_POLICY = "dr.tonebridge.io/policy"
"""Name of the owning BackupPolicy (hash-shortened when longer than a label value allows)."""
LABEL_SCHEDULE = "dr.tonebridge.io/schedule"
"""Name of the schedule (`spec.schedules[].name`) a CronJob / Job belongs to."""
LABEL_TASK = "dr.tonebridge.io/task"
"""What a Job of a policy does besides backing up: `replicate` (repository replicas)."""
TASK_REPLICATE = "replicate"
LABEL_RESTORE_REQUEST = "dr.tonebridge.io/restore-request"
"""Name of the RestoreRequest a Job, claim or instance belongs to (hash-shortened)."""
LABEL_RESTORE_TEST = "dr.tonebridge.io/restore-test"
"""Name of the RestoreTest a CronJob or Job belongs to (hash-shortened)."""

APP_NAME = "tonebridge-dr"
MANAGED_BY = "tonebridge-dr"
PART_OF = "tonebridge"

COMPONENT_BACKUP = "backup"
COMPONENT_WAL_STREAM = "wal-stream"
COMPONENT_RESTORE = "restore"
COMPONENT_DATABASE = "restored-database"
"""The restored volume and the PostgreSQL instance running on it."""
COMPONENT_RESTORE_TEST = "restore-test"

CONTAINER_BACKUP = "backup"
CONTAINER_WAL_STREAM = "wal-stream"
CONTAINER_RESTORE = "restore"
CONTAINER_RESTORE_TEST = "restore-test"
CONTAINER_POSTGRES = "postgres"
"""The PostgreSQL container of a restored instance."""

ANNOTATION_RUN_NOW = "dr.tonebridge.io/run-now"
"""Set on a BackupPolicy or RestoreTest (any new value, e.g. a timestamp) to start a run now;
on a run-now Job it records the token the Job was created for."""
ANNOTATION_RUN_NOW_HANDLED = "dr.tonebridge.io/run-now-handled"
"""Stored on the BackupPolicy or RestoreTest: the run-now value that was last handled."""
ANNOTATION_FAILOVER_NOW = "dr.tonebridge.io/failover-now"
"""FailoverPlan: a new value runs the plan once (a drill in mode drill)."""
ANNOTATION_FAILOVER_NOW_HANDLED = "dr.tonebridge.io/failover-now-handled"
"""The failover-now value handled last (written by the operator)."""
ANNOTATION_RESET = "dr.tonebridge.io/reset"
"""FailoverPlan: a new value ends a finished run's Succeeded / Failed (watch again)."""
ANNOTATION_RESET_HANDLED = "dr.tonebridge.io/reset-handled"
"""The reset value handled last (written by the operator)."""
ANNOTATION_INSTANTIATE = "cronjob.kubernetes.io/instantiate"
"""What `kubectl create job --from=cronjob/x` sets (value `manual`)."""
ANNOTATION_DEFAULT_CONTAINER = "kubectl.kubernetes.io/default-container"
"""On pod templates: the container `kubectl logs` / `exec` pick without `-c`."""

NAME_LIMIT = 63
JOB_NAME_LIMIT = 63
CRONJOB_NAME_LIMIT = 52
INSTANCE_NAME_LIMIT = 52
_RESTORE_JOB_SUFFIX = "-restore"
_RESTORE_TEST_SUFFIX = "-restore-test"
_HASH_LENGTH = 8
_SLOT_LIMIT = 63  # NAMEDATALEN - 1
_LABEL_VALUE_RE = r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"


def _digest(text: str, length: int = _HASH_LENGTH) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _fit(base: str, limit: int, suffix: str = "") -> str:
    """`base + suffix` when it fits in `limit`, else a cut `base`, `-<hash of base>`, `suffix`.

    The cut never ends in `-` or `.`, so a valid DNS name stays valid.
    """
    if len(base) + len(suffix) <= limit:
        return base + suffix
    keep = limit - len(suffix) - _HASH_LENGTH - 1
    head = base[:keep].rstrip("-.")
    return f"{head}-{_digest(base)}{suffix}"


def label_value(value: str) -> str:
    """`value` as a valid label value (<= 63 chars, alphanumeric at both ends); values that
    had to change end in a hash of the original, so distinct inputs stay distinct."""
    if len(value) <= NAME_LIMIT and re.fullmatch(_LABEL_VALUE_RE, value):
        return value
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", value)
    head = cleaned[: NAME_LIMIT - _HASH_LENGTH - 1].strip("-._")
    return f"{head}-{_digest(value)}" if head else _digest(value)


def standard_labels(
    policy_name: str, component: str, schedule: str | None = None
) -> dict[str, str]:
    """The labels of every object (and pod) owned by a policy."""
    policy = label_value(policy_name)
    labels = {
        LABEL_NAME: APP_NAME,
        LABEL_INSTANCE: policy,
        LABEL_COMPONENT: component,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_PART_OF: PART_OF,
        LABEL_POLICY: policy,
    }
    if schedule is not None:
        labels[LABEL_SCHEDULE] = label_value(schedule)
    return labels


def selector_for_policy(policy_name: str, component: str | None = None) -> str:
    """Label selector of the objects (CronJobs, Jobs, pods, Deployment) a policy owns.

    Listing by label is a pre-filter: owner references (uid) decide what is really owned.
    """
    parts = [f"{LABEL_MANAGED_BY}={MANAGED_BY}", f"{LABEL_POLICY}={label_value(policy_name)}"]
    if component is not None:
        parts.append(f"{LABEL_COMPONENT}={component}")
    return ",".join(parts)


def _labels_for(policy_name: str, component: str, owner_label: str, owner: str) -> dict[str, str]:
    """The policy's standard labels with `owner` as `instance` and under `owner_label`."""
    labels = standard_labels(policy_name, component)
    value = label_value(owner)
    labels[LABEL_INSTANCE] = value
    labels[owner_label] = value
    return labels


def restore_labels(policy_name: str, request_name: str, component: str) -> dict[str, str]:
    """The labels of everything made for a RestoreRequest: the policy's standard labels
    with the request as `instance`, plus `dr.tonebridge.io/restore-request`."""
    return _labels_for(policy_name, component, LABEL_RESTORE_REQUEST, request_name)


def restore_test_labels(policy_name: str, test_name: str) -> dict[str, str]:
    """The labels of a RestoreTest's CronJob and Jobs: the labels of the policy whose
    backups it restores, component `restore-test`, the test as `instance` and
    `dr.tonebridge.io/restore-test`."""
    return _labels_for(policy_name, COMPONENT_RESTORE_TEST, LABEL_RESTORE_TEST, test_name)


def selector_for_request(request_name: str) -> str:
    """Label selector of everything made for one RestoreRequest (Jobs, claim, instance)."""
    return f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_RESTORE_REQUEST}={label_value(request_name)}"


def cronjob_name(policy_name: str, schedule_name: str) -> str:
    """`<policy>-<schedule>`, at most 52 characters."""
    return _fit(f"{policy_name}-{schedule_name}", CRONJOB_NAME_LIMIT)


def run_now_job_name(policy_name: str, schedule_name: str, token: str) -> str:
    """`<policy>-<schedule>-now-<hash of token>`, at most 63 characters.

    Deterministic in `token`: a handler that runs twice for the same run-now request
    computes the same name, and the API server refuses the duplicate (409 AlreadyExists).
    """
    return _run_now_name(f"{policy_name}-{schedule_name}", token)


def replicate_cronjob_name(policy_name: str) -> str:
    """`<policy>-replicate`, at most 52 characters."""
    return _fit(f"{policy_name}-replicate", CRONJOB_NAME_LIMIT)


def replicate_job_name(policy_name: str, backup_id: str) -> str:
    """The replication Job started after backup `backup_id` committed:
    `<policy>-replicate-now-<hash>`, deterministic (a second recording of the backup Job
    finds it there: 409 AlreadyExists)."""
    return _run_now_name(f"{policy_name}-replicate", backup_id)


def _run_now_name(base: str, token: str) -> str:
    return _fit(base, JOB_NAME_LIMIT, f"-now-{_digest(token)}")


def wal_stream_name(policy_name: str) -> str:
    """`<policy>-wal-stream`, at most 63 characters (name of the streamer Deployment)."""
    return _fit(policy_name, NAME_LIMIT, "-wal-stream")


def wal_slot_name(policy_name: str) -> str:
    """Default replication slot of a policy's WAL streamer: `tonebridge_dr_<policy>`
    (a-z, 0-9 and `_`, at most 63 characters)."""
    base = "tonebridge_dr_" + re.sub(r"[^a-z0-9_]", "_", policy_name.lower())
    if len(base) <= _SLOT_LIMIT:
        return base
    return f"{base[: _SLOT_LIMIT - _HASH_LENGTH - 1]}_{_digest(policy_name)}"


def policy_repository_url(repository_url: str, policy_name: str) -> str:
    """The folder of one policy's backups inside a repository: `<url>/<policy>`.

    Every reader and writer (backup Jobs, WAL streamers, the catalog monitor, restore
    Jobs) opens this URL, so several policies can share one bucket and a brand-new
    cluster finds a policy's backups from the bucket URL and the policy name alone.
    """
    return f"{repository_url.rstrip('/')}/{policy_name}"


def restore_job_name(request_name: str) -> str:
    """`<request>-restore`, at most 63 characters; deterministic, so a handler that runs
    twice meets its own Job (409 AlreadyExists) instead of starting a second restore."""
    return _fit(request_name, JOB_NAME_LIMIT, _RESTORE_JOB_SUFFIX)


def restore_test_cronjob_name(test_name: str) -> str:
    """`<test>-restore-test`, at most 52 characters (a CronJob name)."""
    return _fit(test_name, CRONJOB_NAME_LIMIT, _RESTORE_TEST_SUFFIX)


def restore_test_run_now_job_name(test_name: str, token: str) -> str:
    """`<test>-restore-test-now-<hash of token>`, at most 63 characters; deterministic in
    `token` like `run_now_job_name`."""
    return _run_now_name(f"{test_name}{_RESTORE_TEST_SUFFIX}", token)


def restore_claim_name(request_name: str) -> str:
    """The PersistentVolumeClaim made from a request's `target.volume.claimTemplate`: the
    request's own name (the restored data outlives the request, so a person finds it)."""
    return request_name


def instance_name(request_name: str) -> str:
    """Name of the StatefulSet and Service of a restored instance: a DNS label (Service
    names must start with a letter) of at most 52 characters."""
    base = request_name.replace(".", "-")
    if not base[:1].isalpha():
        base = f"pg-{base}"
    return _fit(base, INSTANCE_NAME_LIMIT)
