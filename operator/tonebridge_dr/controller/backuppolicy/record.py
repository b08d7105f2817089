"""Recording finished backup Jobs on their policy (the kind's `JobRoute`).

For each Job labelled with a policy that has finished (Complete / Failed) and is not
yet marked as recorded:

1. list its pods, `job_outcome` (termination message -> result or readable error);
2. write the policy status (`apply_job_outcome`, compare-and-set; idempotent and
   order-tolerant, so an old Job seen again never overwrites newer news);
3. metrics; an Event on the policy (Normal BackupSucceeded / Warning BackupFailed);
   a webhook notification when the policy asks for it; when a Redis backup found AOF
   newly disabled, a Warning AppendOnlyDisabled Event (Normal AppendOnlyEnabled when it
   is back on);
4. annotate the Job `dr.tonebridge.io/recorded=<state>`;
5. after a backup that succeeded, run retention (`retention.run`; it never raises for
   repository trouble, which becomes the RetentionApplied condition), then start the
   replication Job when the repository has replicas (`replication.start_after_backup`).

Replication Jobs (label `dr.tonebridge.io/task: replicate`) go to `replication.record`.

The Job watch lists every existing Job when the operator starts (and kopf handles
one Job's events one after another), so Jobs that finished while the operator was
down are recorded then, exactly once. A crash between 3 and 4 repeats the
Event and the notification once (at-least-once delivery); everything else is
idempotent.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from tonebridge_dr.api.backuppolicy import BackupPolicyStatus
from tonebridge_dr.api.common import NotificationEvent
from tonebridge_dr.api.conditions import Condition, ConditionStatus, Reason
from tonebridge_dr.builders import names
from tonebridge_dr.controller.backuppolicy import replication, retention
from tonebridge_dr.controller.backuppolicy.reconcile import PolicyController
from tonebridge_dr.controller.core import jobs, notify, objects
from tonebridge_dr.status import backuppolicy as policy_status
from tonebridge_dr.status import runnow as runnow_status
from tonebridge_dr.status.jobs import JobOutcome

log = logging.getLogger(__name__)

Json = dict[str, Any]


def to_record(job: Mapping[str, Any]) -> bool:
    """Whether a Job event can matter: the Job finished and is not recorded yet."""
    return jobs.finished(job) and not jobs.recorded(job)


def policy_name(controller: PolicyController, job: Mapping[str, Any]) -> str | None:
    """The owning policy: a run-now Job is owned by it; a scheduled Job by its CronJob,
    which is owned by the policy. The policy label (shortened for very long names) is
    the last resort."""
    return jobs.owner_name(controller.ctx, job, controller.kind, names.LABEL_POLICY)


def _describe(outcome: JobOutcome) -> str:
    if outcome.state == "succeeded" and outcome.result is not None:
        result = outcome.result
        parts = [f"backup {result.get('id')} finished"]
        if outcome.schedule:
            parts.append(f"schedule {outcome.schedule}")
        if isinstance(result.get("duration_seconds"), int | float):
            parts.append(f"in {float(result['duration_seconds']):.1f}s")
        if isinstance(result.get("size_bytes"), int):
            parts.append(f"{result['size_bytes']} bytes")
        return f"{', '.join(parts)} (Job {outcome.job_name})"
    if outcome.state == "succeeded":
        return f"Job {outcome.job_name} completed but reported no backup result"
    return f"Job {outcome.job_name} failed: {outcome.reason}: {outcome.message}"


def observe(controller: PolicyController, job: Json, deleted: bool) -> None:
    """The kind's Job route: record `job` (a deleted Job is no news); replication Jobs
    are recorded by `replication.record`."""
    if deleted:
        return
    if replication.is_replication(job):
        if to_record(job):
            replication.record(controller, job)
        return
    record(controller, job)


def record(controller: PolicyController, job: Mapping[str, Any]) -> JobOutcome | None:
    """Record one Job if it is finished and not recorded yet; returns its outcome.
    Raises kube.ApiError on API trouble (nothing is marked, so it is retried)."""
    if not to_record(job):
        return None
    ctx = controller.ctx
    namespace = objects.ident(job)[0]
    owner = policy_name(controller, job)
    if owner is None:
        return None
    policy_body = controller.get(namespace, owner)
    if policy_body is None or (policy_body.get("metadata") or {}).get("deletionTimestamp"):
        return None
    outcome = jobs.outcome(ctx, job)
    if outcome.state == "running":
        return None
    now = ctx.clock()
    aof: list[Condition | None] = [None]  # what the write that counted changed about AOF

    def mutate(current: Json, status: BackupPolicyStatus | None) -> BackupPolicyStatus:
        generation = (current.get("metadata") or {}).get("generation")
        new = policy_status.apply_job_outcome(status, outcome, generation=generation, now=now)
        new = runnow_status.finished(new, outcome)
        aof[0] = policy_status.aof_change(status, new)
        return new

    policy_body = controller.write_status(policy_body, mutate)
    if policy_body is None:
        return None
    message = _describe(outcome)
    log.info("%s/%s: %s", namespace, owner, message)
    _report(controller, policy_body, outcome, message)
    _report_aof(controller, policy_body, aof[0])
    jobs.mark_recorded(ctx, job, outcome.state)
    if outcome.state == "succeeded":
        retention.run(controller, policy_body, retention.TRIGGER_BACKUP)
        replication.start_after_backup(controller, policy_body, outcome)
    return outcome


def _report(controller: PolicyController, policy_body: Json, outcome: JobOutcome,
            message: str) -> None:
    ctx = controller.ctx
    namespace, name = objects.ident(policy_body)
    succeeded = outcome.state == "succeeded"
    if succeeded:
        result = outcome.result or {}
        finished_at = outcome.finished_at.timestamp() if outcome.finished_at else None
        duration = result.get("duration_seconds")
        size = result.get("size_bytes")
        ctx.metrics.backup_succeeded(
            namespace, name,
            finished_at=finished_at,
            duration_seconds=float(duration) if isinstance(duration, int | float) else None,
            size_bytes=size if isinstance(size, int) else None,
        )
    else:
        ctx.metrics.backup_failed(namespace, name)
    controller.event(
        policy_body, Reason.BACKUP_SUCCEEDED if succeeded else Reason.BACKUP_FAILED, message,
        warning=not succeeded,
    )
    try:
        policy = controller.parse(policy_body)
    except objects.InvalidSpec:
        return
    notify.send_notification(
        ctx, namespace, name, policy.spec.notifications,
        NotificationEvent.BACKUP_SUCCEEDED if succeeded else NotificationEvent.BACKUP_FAILED,
        state="Succeeded" if succeeded else "Failed",
        message=message,
    )


def _report_aof(controller: PolicyController, policy_body: Json,
                change: Condition | None) -> None:
    """One Event when AOFEnabled just turned False (Warning) or back to True (Normal). A
    status write that changed nothing (the Job recorded again) sees no change: no repeat."""
    if change is None:
        return
    namespace, name = objects.ident(policy_body)
    disabled = change.status == ConditionStatus.FALSE
    if disabled:
        log.warning("%s/%s: %s", namespace, name, change.message)
    controller.event(policy_body, Reason(change.reason), change.message, warning=disabled)
