"""Recording finished backup Jobs on their policy.

For each Job labelled with a policy that has finished (Complete / Failed) and is not
yet marked as recorded:

1. list its pods, `job_outcome` (termination message -> result or readable error);
2. write the policy status (`apply_job_outcome`, compare-and-set; idempotent and
   order-tolerant, so an old Job seen again never overwrites newer news);
3. metrics; an Event on the policy (Normal BackupSucceeded / Warning BackupFailed);
   a webhook notification when the policy asks for it; when a Redis backup found AOF
   newly disabled, a Warning AppendOnlyDisabled Event (Normal AppendOnlyEnabled when it
   is back on);
4. annotate the Job `dr.tonebridge.io/recorded=<state>`.

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
from tonebridge_dr.controller import policies
from tonebridge_dr.controller.core import kube as kubemod
from tonebridge_dr.controller.core import objects
from tonebridge_dr.controller.core.context import Context
from tonebridge_dr.status import backuppolicy as policy_status
from tonebridge_dr.status.jobs import JobOutcome, job_outcome

log = logging.getLogger(__name__)

ANNOTATION_RECORDED = "dr.tonebridge.io/recorded"
"""On a Job: its outcome is in the policy status (value: succeeded / failed)."""
LABEL_JOB_NAME = "batch.kubernetes.io/job-name"

Json = dict[str, Any]


def finished(job: Mapping[str, Any]) -> bool:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            return True
    return False


def recorded(job: Mapping[str, Any]) -> bool:
    annotations = (job.get("metadata") or {}).get("annotations") or {}
    return ANNOTATION_RECORDED in annotations


def _policy_owner(obj: Mapping[str, Any]) -> str | None:
    for owner in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if owner.get("kind") == policies.KIND.kind and owner.get("apiVersion") == (
            policies.KIND.api_version
        ):
            return str(owner.get("name"))
    return None


def policy_name(ctx: Context, job: Mapping[str, Any]) -> str | None:
    """The owning policy: a run-now Job is owned by it; a scheduled Job by its CronJob,
    which is owned by the policy. The policy label (shortened for very long names) is
    the last resort."""
    metadata = job.get("metadata") or {}
    direct = _policy_owner(job)
    if direct is not None:
        return direct
    for owner in metadata.get("ownerReferences") or []:
        if owner.get("kind") == "CronJob":
            cronjob = ctx.kube.get_or_none(kubemod.CRONJOB, metadata.get("namespace"),
                                           str(owner.get("name")))
            if cronjob is not None:
                return _policy_owner(cronjob)
    label = (metadata.get("labels") or {}).get(names.LABEL_POLICY)
    return str(label) if label else None


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


def record(ctx: Context, job: Mapping[str, Any]) -> JobOutcome | None:
    """Record one Job if it is finished and not recorded yet; returns its outcome.
    Raises kube.ApiError on API trouble (nothing is marked, so it is retried)."""
    if not finished(job) or recorded(job):
        return None
    namespace, job_name = objects.ident(job)
    owner = policy_name(ctx, job)
    if owner is None:
        return None
    policy_body = ctx.kube.get_or_none(policies.KIND, namespace, owner)
    if policy_body is None or (policy_body.get("metadata") or {}).get("deletionTimestamp"):
        return None
    pods = ctx.kube.list(kubemod.POD, namespace, label_selector=f"{LABEL_JOB_NAME}={job_name}")
    outcome = job_outcome(objects.plain(job), pods)
    if outcome.state == "running":
        return None
    now = ctx.clock()
    aof: list[Condition | None] = [None]  # what the write that counted changed about AOF

    def mutate(current: Json, status: BackupPolicyStatus | None) -> BackupPolicyStatus:
        generation = (current.get("metadata") or {}).get("generation")
        new = policy_status.apply_job_outcome(status, outcome, generation=generation, now=now)
        aof[0] = policy_status.aof_change(status, new)
        return new

    policy_body = policies.update_status(ctx, namespace, owner, mutate, body=policy_body)
    if policy_body is None:
        return None
    message = _describe(outcome)
    log.info("%s/%s: %s", namespace, owner, message)
    _report(ctx, policy_body, outcome, message)
    _report_aof(ctx, policy_body, aof[0])
    ctx.kube.merge_patch(
        kubemod.JOB, namespace, job_name,
        {"metadata": {"annotations": {ANNOTATION_RECORDED: outcome.state}}},
    )
    return outcome


def _report(ctx: Context, policy_body: Json, outcome: JobOutcome, message: str) -> None:
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
    policies.event(
        ctx, policy_body, warning=not succeeded,
        reason=Reason.BACKUP_SUCCEEDED.value if succeeded else Reason.BACKUP_FAILED.value,
        message=message,
    )
    try:
        policy = policies.parse(policy_body)
    except policies.InvalidPolicy:
        return
    policies.send_notification(
        ctx, policy,
        NotificationEvent.BACKUP_SUCCEEDED if succeeded else NotificationEvent.BACKUP_FAILED,
        state="Succeeded" if succeeded else "Failed",
        message=message,
    )


def _report_aof(ctx: Context, policy_body: Json, change: Condition | None) -> None:
    """One Event when AOFEnabled just turned False (Warning) or back to True (Normal). A
    status write that changed nothing (the Job recorded again) sees no change: no repeat."""
    if change is None:
        return
    namespace, name = objects.ident(policy_body)
    disabled = change.status == ConditionStatus.FALSE
    if disabled:
        log.warning("%s/%s: %s", namespace, name, change.message)
    policies.event(ctx, policy_body, warning=disabled, reason=change.reason,
                   message=change.message)
