"""Pure builders of repository replication (spec.repository.replicas, docs/replicas.md):
the `<policy>-replicate` CronJob (every 15 minutes, so WAL follows) and the Job started
after each successful backup.

Both run `tonebridge-dr replicate --to <replica folder> ... --json`. The primary is read
with the policy's read-only restore credentials when it has them (replication never
writes to the primary), else its backup credentials; the N-th replica is reached with
`TONEBRIDGE_DR_REPLICA_<N>_*` variables: its own credentials by secretKeyRef only, its
region and endpoint. Jobs carry the backup component and `dr.tonebridge.io/task:
replicate`, so the policy's Job route records them (as replication, not as a backup).
"""

from __future__ import annotations

from typing import Any

from tonebridge_dr.api import runner_contract as contract
from tonebridge_dr.api.kinds import BackupPolicy
from tonebridge_dr.builders import metadata, names, pods
from tonebridge_dr.builders.settings import RunnerSettings

__all__ = [
    "CONTAINER_REPLICATE",
    "REPLICATE_SCHEDULE",
    "build_replicate_cronjob",
    "build_replicate_job",
    "replica_urls",
    "replicate_env",
]

Manifest = dict[str, Any]

CONTAINER_REPLICATE = "replicate"
REPLICATE_SCHEDULE = "*/15 * * * *"
"""How often WAL (and any backup a failed run missed) follows to the replicas."""


def replica_urls(policy: BackupPolicy) -> list[str]:
    """The policy's folder in each replica, in spec order (empty: no replicas)."""
    policy_name = metadata.owner_name(policy)
    return [names.policy_repository_url(replica.url, policy_name)
            for replica in policy.spec.repository.replicas or ()]


def replicate_env(policy: BackupPolicy) -> list[Manifest]:
    """The primary (URL, read credentials, region, endpoint) and each replica's variables."""
    repository = policy.spec.repository
    url = names.policy_repository_url(repository.url, metadata.owner_name(policy))
    credentials = repository.restore_credentials_secret_ref or repository.credentials_secret_ref
    env = pods.repository_env(repository, url, credentials, writes=False)
    for index, replica in enumerate(repository.replicas or (), start=1):
        ref = replica.credentials_secret_ref
        if ref is not None:
            env.extend(
                pods.secret_env(contract.replica_env(index, key), ref.name, key,
                                optional=optional)
                for key, optional in pods.AWS_CREDENTIAL_KEYS
            )
        if replica.region is not None:
            env.append(pods.value_env(contract.replica_env(index, pods.ENV_AWS_REGION),
                                      replica.region))
        if replica.endpoint is not None:
            env.append(pods.value_env(contract.replica_env(index, pods.ENV_AWS_ENDPOINT),
                                      replica.endpoint))
    return pods.runner_env(env)


def _args(policy: BackupPolicy) -> list[str]:
    args = ["replicate"]
    for url in replica_urls(policy):
        args += ["--to", url]
    return [*args, "--json"]


def build_replicate_cronjob(policy: BackupPolicy, settings: RunnerSettings) -> Manifest | None:
    """`<policy>-replicate` every 15 minutes; None when the policy has no replicas."""
    if not policy.spec.repository.replicas:
        return None
    policy_name = metadata.owner_name(policy)
    labels = names.standard_labels(policy_name, names.COMPONENT_BACKUP)
    labels[names.LABEL_TASK] = names.TASK_REPLICATE
    pod = pods.RunnerPod(
        container=CONTAINER_REPLICATE,
        args=_args(policy),
        env=replicate_env(policy),
        service_account=settings.backup_service_account,
        requested_resources=policy.spec.resources,
    )
    job_spec = pods.runner_job_spec(
        pod, labels, settings, non_retriable_exit_codes=settings.non_retriable_exit_codes
    )
    spec = pods.runner_cronjob_spec(
        schedule=REPLICATE_SCHEDULE, time_zone=None, suspend=policy.spec.suspend,
        labels=labels, job_spec=job_spec, settings=settings,
    )
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": metadata.object_metadata(
            policy, names.replicate_cronjob_name(policy_name), labels
        ),
        "spec": spec,
    }


def build_replicate_job(
    policy: BackupPolicy, settings: RunnerSettings, backup_id: str
) -> Manifest | None:
    """The replication Job after backup `backup_id` committed (named from it); None when
    the policy has no replicas."""
    cronjob = build_replicate_cronjob(policy, settings)
    if cronjob is None:
        return None
    name = names.replicate_job_name(metadata.owner_name(policy), backup_id)
    return pods.run_now_job(cronjob, name=name, token=backup_id)
