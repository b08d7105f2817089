"""What every kind reads from the Jobs it owns: whether a Job finished, and its outcome
(the runner's termination message via `status.jobs.job_outcome`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tonebridge_dr.controller.core import kube, objects
from tonebridge_dr.controller.core.context import Context
from tonebridge_dr.status.jobs import LABEL_JOB_NAME, JobOutcome, job_outcome

ANNOTATION_RECORDED = "dr.tonebridge.io/recorded"
"""On a Job: its outcome is in its owner's status (value: succeeded / failed)."""


def recorded(job: Mapping[str, Any]) -> bool:
    """Whether the Job's outcome was recorded already (`mark_recorded`)."""
    annotations = (job.get("metadata") or {}).get("annotations") or {}
    return ANNOTATION_RECORDED in annotations


def mark_recorded(ctx: Context, job: Mapping[str, Any], state: str) -> None:
    """Annotate the Job: its outcome (`state`) is in its owner's status, so later events
    of it cost nothing. Raises kube.ApiError on API trouble."""
    namespace, name = objects.ident(job)
    ctx.kube.merge_patch(kube.JOB, namespace, name,
                         {"metadata": {"annotations": {ANNOTATION_RECORDED: state}}})


def finished(job: Mapping[str, Any]) -> bool:
    """Whether the Job is Complete or Failed."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            return True
    return False


def attempts(job: Mapping[str, Any]) -> int:
    """How many of the Job's pods ran to their end (retries included)."""
    counts = job.get("status") or {}
    return int(counts.get("failed") or 0) + int(counts.get("succeeded") or 0)


def owner_name(
    ctx: Context, job: Mapping[str, Any], kind: kube.Kind, label: str | None = None
) -> str | None:
    """The name of the object of `kind` that owns `job`: directly (a run-now Job) or
    through the CronJob that made it (a scheduled Job is owned by its CronJob, which is
    owned by the object). When a CronJob made it that no longer exists, the value of the
    Job's `label` is the last resort. Raises kube.ApiError on API trouble."""
    direct = objects.owner(job, kind)
    if direct is not None:
        return direct[0]
    metadata = job.get("metadata") or {}
    for ref in metadata.get("ownerReferences") or []:
        if ref.get("kind") == "CronJob":
            cronjob = ctx.kube.get_or_none(kube.CRONJOB, metadata.get("namespace"),
                                           str(ref.get("name")))
            if cronjob is not None:
                found = objects.owner(cronjob, kind)
                return found[0] if found is not None else None
    value = (metadata.get("labels") or {}).get(label) if label is not None else None
    return str(value) if value else None


def outcome(ctx: Context, job: Mapping[str, Any]) -> JobOutcome:
    """The Job's outcome from its pods' termination messages (one LIST of its pods).
    Raises kube.ApiError on API trouble."""
    namespace, name = objects.ident(job)
    pods = ctx.kube.list(kube.POD, namespace, label_selector=f"{LABEL_JOB_NAME}={name}")
    return job_outcome(objects.plain(job), pods)
