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
* a policy that cannot run (invalid spec, missing Secret that backup Jobs need) refuses:
  a Warning Event says why and the token counts as handled.

Both the policy watch (at once) and the periodic monitor (as a retry after API trouble)
call `handle`; it does nothing when there is nothing new.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from tonebridge_dr.api.kinds import BackupPolicy
from tonebridge_dr.builders import backup as builders
from tonebridge_dr.builders import names
from tonebridge_dr.controller import policies
from tonebridge_dr.controller.core import kube as kubemod
from tonebridge_dr.controller.core import objects
from tonebridge_dr.controller.core.context import Context

log = logging.getLogger(__name__)

REASON_STARTED = "BackupStarted"
REASON_REFUSED = "RunNowRefused"


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


def _mark_handled(ctx: Context, body: Mapping[str, Any], token: str) -> None:
    namespace, name = objects.ident(body)
    ctx.kube.merge_patch(
        policies.KIND,
        namespace,
        name,
        {"metadata": {"annotations": {names.ANNOTATION_RUN_NOW_HANDLED: token}}},
    )


def handle(ctx: Context, body: Mapping[str, Any]) -> str | None:
    """Start the backup a new run-now value asks for; returns the Job name (None when
    nothing was pending or the request was refused). Raises kube.ApiError on API
    trouble (nothing is marked handled then, so it is retried)."""
    token = pending_token(body)
    metadata = body.get("metadata") or {}
    if token is None or metadata.get("deletionTimestamp"):
        return None
    namespace, name = objects.ident(body)
    try:
        policy = policies.parse(body)
        schedule = pick_schedule(policy, token)
        jobs = builders.build_run_now_jobs(
            policy, ctx.settings.runner, token, schedules=[schedule]
        )
    except (policies.InvalidPolicy, builders.UnsupportedTarget, ValueError) as exc:
        message = f"run-now {token!r} refused: {exc}"
        log.info("%s/%s: %s", namespace, name, message)
        policies.event(ctx, body, warning=True, reason=REASON_REFUSED, message=message)
        _mark_handled(ctx, body, token)
        return None
    blocking = [use for use in policies.missing_secrets(ctx, policy) if use.needed_by_jobs]
    if blocking:
        message = f"run-now {token!r} refused: {policies.describe_missing(blocking)}"
        log.info("%s/%s: %s", namespace, name, message)
        policies.event(ctx, body, warning=True, reason=REASON_REFUSED, message=message)
        _mark_handled(ctx, body, token)
        return None
    job = jobs[0]
    job_name = job["metadata"]["name"]
    try:
        ctx.kube.create(job)
        created = True
    except kubemod.ApiError as exc:
        if not exc.already_exists:
            raise
        created = False  # a previous attempt created it and died before recording
    _mark_handled(ctx, body, token)
    log.info("%s/%s: run-now %r: Job %s for schedule %s (%s)", namespace, name, token,
             job_name, schedule, "created" if created else "already existed")
    if created:
        policies.event(
            ctx, body, warning=False, reason=REASON_STARTED,
            message=f"run-now: Job {job_name} started a backup of schedule {schedule}",
        )
    return str(job_name)
