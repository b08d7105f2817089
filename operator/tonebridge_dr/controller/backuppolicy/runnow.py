"""Run-now: `kubectl annotate bp/NAME dr.tonebridge.io/run-now=<token> --overwrite`.

Semantics:
* any new value starts ONE backup Job, from the first schedule;
* `<schedule>:<anything>` (the part before the first `:` names a schedule of the policy)
  starts it from that schedule instead;
* the value handled last is kept in the annotation `dr.tonebridge.io/run-now-handled`, so
  the same value never runs twice; write a new value (e.g. a timestamp) to run again;
* the Job is named from the token (`names.run_now_job_name`): if the operator dies after
  creating it and before recording the token, the retry finds the Job (AlreadyExists)
  and only records the token;
* a suspended policy still runs on demand (suspend stops the schedule, like
  `kubectl create job --from=cronjob/...` works on a suspended CronJob);
* a policy that cannot run (invalid spec, a Secret or key backup Jobs need missing) refuses:
  a Warning Event says why and the token counts as handled.

Both the policy watch (at once) and the periodic monitor (as a retry after API trouble)
call `handle`; it does nothing when there is nothing new.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from tonebridge_dr.api.conditions import Reason
from tonebridge_dr.api.kinds import BackupPolicy
from tonebridge_dr.builders import backup as builders
from tonebridge_dr.builders import names
from tonebridge_dr.controller.backuppolicy.reconcile import PolicyController, referenced_secrets
from tonebridge_dr.controller.core import kube, objects, secrets

log = logging.getLogger(__name__)


def pending_token(body: Mapping[str, Any]) -> str | None:
    """The run-now value still to handle, or None."""
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    token = annotations.get(names.ANNOTATION_RUN_NOW)
    if not token or token == annotations.get(names.ANNOTATION_RUN_NOW_HANDLED):
        return None
    return str(token)


def pick_schedule(policy: BackupPolicy, token: str) -> str:
    """`<schedule>:...` names a schedule; anything else means the first schedule."""
    prefix, colon, _rest = token.partition(":")
    known = [schedule.name for schedule in policy.spec.schedules]
    if colon and prefix in known:
        return prefix
    return known[0]


def _mark_handled(controller: PolicyController, body: Mapping[str, Any], token: str) -> None:
    namespace, name = objects.ident(body)
    controller.ctx.kube.merge_patch(
        controller.kind,
        namespace,
        name,
        {"metadata": {"annotations": {names.ANNOTATION_RUN_NOW_HANDLED: token}}},
    )


def _refuse(controller: PolicyController, body: Mapping[str, Any], token: str,
            problem: str) -> None:
    namespace, name = objects.ident(body)
    message = f"run-now {token!r} refused: {problem}"
    log.info("%s/%s: %s", namespace, name, message)
    controller.event(body, Reason.RUN_NOW_REFUSED, message, warning=True)
    _mark_handled(controller, body, token)


def handle(controller: PolicyController, body: Mapping[str, Any]) -> str | None:
    """Start the backup a new run-now value asks for; returns the Job name (None when
    nothing was pending or the request was refused). Raises kube.ApiError on API
    trouble (nothing is marked handled then, so it is retried)."""
    token = pending_token(body)
    metadata = body.get("metadata") or {}
    if token is None or metadata.get("deletionTimestamp"):
        return None
    ctx = controller.ctx
    namespace, name = objects.ident(body)
    try:
        policy = controller.parse(body)
        schedule = pick_schedule(policy, token)
        jobs = builders.build_run_now_jobs(
            policy, ctx.settings.runner, token, schedules=[schedule]
        )
    except (objects.InvalidSpec, builders.UnsupportedTarget, ValueError) as exc:
        _refuse(controller, body, token, str(exc))
        return None
    problems = secrets.check(ctx.kube, namespace, referenced_secrets(policy))
    blocking = [problem for problem in problems if problem.blocking]
    if blocking:
        _refuse(controller, body, token, secrets.describe(blocking))
        return None
    job = jobs[0]
    job_name = job["metadata"]["name"]
    try:
        ctx.kube.create(job)
        created = True
    except kube.ApiError as exc:
        if not exc.already_exists:
            raise
        created = False  # a previous attempt created it and died before recording
    _mark_handled(controller, body, token)
    log.info("%s/%s: run-now %r: Job %s for schedule %s (%s)", namespace, name, token,
             job_name, schedule, "created" if created else "already existed")
    if created:
        controller.event(
            body, Reason.BACKUP_STARTED,
            f"run-now: Job {job_name} started a backup of schedule {schedule}", warning=False,
        )
    return str(job_name)
