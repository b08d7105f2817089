"""Repository replicas of a BackupPolicy (docs/replicas.md): starting the replication Job
after each successful backup, and recording finished replication Jobs.

Replication Jobs (`tonebridge-dr replicate`, builders/replicas.py) carry the backup
component, so they reach the policy's Job route; `record.observe` hands those labelled
`dr.tonebridge.io/task: replicate` here instead of treating them as backups.

Recording one: `status.replicas` from its termination message (status/replicas.py, pure,
order-tolerant), metrics per replica, one Event (Normal Replicated when it copied
something, Warning ReplicationFailed when a replica was left behind), then the Job is
marked recorded. The RPO condition judges the replicas on the monitor's next tick
(status/freshness.py, with objectives.replicaRpo).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from tonebridge_dr.api.backuppolicy import BackupPolicyStatus
from tonebridge_dr.api.conditions import Reason
from tonebridge_dr.builders import names, replicas
from tonebridge_dr.controller.backuppolicy.reconcile import PolicyController
from tonebridge_dr.controller.core import jobs, kube, objects
from tonebridge_dr.status import jobs as job_status
from tonebridge_dr.status import replicas as replica_status
from tonebridge_dr.status.jobs import JobOutcome

log = logging.getLogger(__name__)

Json = dict[str, Any]


def is_replication(job: Mapping[str, Any]) -> bool:
    """Whether `job` is a replication Job (not a backup)."""
    labels = (job.get("metadata") or {}).get("labels") or {}
    return labels.get(names.LABEL_TASK) == names.TASK_REPLICATE


def start_after_backup(controller: PolicyController, policy_body: Mapping[str, Any],
                       outcome: JobOutcome) -> str | None:
    """Create the replication Job for the backup `outcome` committed (named from its id,
    so recording the backup Job twice creates one Job); returns its name, None when the
    policy has no replicas. Raises kube.ApiError on API trouble."""
    backup_id = (outcome.result or {}).get("id")
    if not isinstance(backup_id, str) or not backup_id:
        return None
    try:
        policy = controller.parse(policy_body)
    except objects.InvalidSpec:
        return None
    job = replicas.build_replicate_job(policy, controller.ctx.settings.runner, backup_id)
    if job is None:
        return None
    name = str(job["metadata"]["name"])
    try:
        controller.ctx.kube.create(job)
    except kube.ApiError as exc:
        if not exc.already_exists:
            raise
    namespace, policy_name = objects.ident(policy_body)
    log.info("%s/%s: replication Job %s started after backup %s", namespace, policy_name,
             name, backup_id)
    return name


def _describe(outcome: JobOutcome, rows: Mapping[str, Mapping[str, Any]]) -> str:
    parts = []
    for url, row in rows.items():
        if row.get("error"):
            parts.append(f"{url}: {row.get('error')}: {row.get('message')}")
        else:
            parts.append(f"{url}: {row.get('backups_copied', 0)} backups and "
                         f"{row.get('wal_copied', 0)} WAL files copied, in sync")
    if not parts:
        parts.append(f"{outcome.reason}: {outcome.message}")
    return f"replication Job {outcome.job_name}: " + "; ".join(parts)


def record(controller: PolicyController, job: Mapping[str, Any]) -> JobOutcome | None:
    """Record one finished replication Job on its policy (see module docstring). Raises
    kube.ApiError on API trouble (nothing is marked, so it is retried)."""
    ctx = controller.ctx
    namespace = objects.ident(job)[0]
    owner = jobs.owner_name(ctx, job, controller.kind, names.LABEL_POLICY)
    if owner is None:
        return None
    policy_body = controller.get(namespace, owner)
    if policy_body is None or (policy_body.get("metadata") or {}).get("deletionTimestamp"):
        return None
    try:
        policy = controller.parse(policy_body)
    except objects.InvalidSpec:
        return None
    outcome = jobs.outcome(ctx, job)
    if outcome.state == "running":
        return None
    urls = replicas.replica_urls(policy)

    def mutate(_current: Json, status: BackupPolicyStatus | None) -> BackupPolicyStatus:
        return replica_status.apply_replication(status, outcome, urls)

    written = controller.write_status(policy_body, mutate)
    if written is None:
        return None
    rows = replica_status.rows_of(outcome)
    for url in urls:
        row = rows.get(url) or {}
        synced = job_status.parse_time(row.get("synced_at"))
        lag, copied = row.get("lag_seconds"), row.get("bytes_copied")
        ctx.metrics.replication_run(
            namespace, owner, url,
            in_sync=bool(row) and not row.get("error"),
            synced_at=synced.timestamp() if synced is not None else None,
            lag_seconds=float(lag) if isinstance(lag, int | float) else None,
            copied_bytes=copied if isinstance(copied, int) else None,
        )
    failed = outcome.state != "succeeded" or any(row.get("error") for row in rows.values())
    copied_any = any(row.get("backups_copied") or row.get("wal_copied") for row in rows.values())
    message = _describe(outcome, rows)
    log.info("%s/%s: %s", namespace, owner, message)
    if failed or copied_any:
        controller.event(written, Reason.REPLICATION_FAILED if failed else Reason.REPLICATED,
                         message[:1024], warning=failed)
    jobs.mark_recorded(ctx, job, outcome.state)
    return outcome
