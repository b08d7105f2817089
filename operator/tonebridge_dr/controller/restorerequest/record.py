"""Restore Job -> RestoreRequest status (the kind's `JobRoute`), idempotently.

Every event of a restore Job folds its state into the request that owns it (owner
reference with the request's uid): running, then Succeeded or Failed once, with one
Event (RestoreSucceeded / RestoreFailed) and a webhook notification when the policy
asks for restore events. A Job deleted before it finished fails the request
(JobDeleted). A request that succeeded with `target.instance` gets its PostgreSQL
StatefulSet and Service then. Finished requests never change again.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from tonebridge_dr.api.common import NotificationEvent
from tonebridge_dr.api.conditions import Reason
from tonebridge_dr.api.kinds import BackupPolicy, RestoreRequest
from tonebridge_dr.api.restorerequest import RestorePhase, RestoreRequestStatus
from tonebridge_dr.builders import restore as builders
from tonebridge_dr.controller.core import jobs, notify, objects, sources
from tonebridge_dr.controller.core.kind import Controller
from tonebridge_dr.controller.core.kube import ApiError
from tonebridge_dr.controller.restorerequest.plan import target_info
from tonebridge_dr.status import restorerequest as rr_status
from tonebridge_dr.status.jobs import JobOutcome

log = logging.getLogger(__name__)

Json = dict[str, Any]
RequestController = Controller[RestoreRequest, RestoreRequestStatus]


def read_policy(controller: RequestController, rr: RestoreRequest) -> BackupPolicy | None:
    """The BackupPolicy of `source.policyRef`; None without one or when it does not
    exist; objects.InvalidSpec when it does not parse."""
    return sources.read_policy(controller.ctx, rr.spec.source, rr.metadata.namespace or "default")


def observe(controller: RequestController, job: Json, deleted: bool) -> None:
    """The kind's Job route: fold `job` into its request's status (idempotent)."""
    owner = objects.owner(job, controller.kind)
    if owner is None:
        return
    namespace = objects.ident(job)[0] or "default"
    body = controller.get(namespace, owner[0])
    metadata = (body or {}).get("metadata") or {}
    if body is None or metadata.get("uid") != owner[1] or metadata.get("deletionTimestamp"):
        return  # the request is gone (deleting it deleted the Job)
    try:
        rr = controller.parse(body)
    except objects.InvalidSpec:
        return
    if rr_status.is_finished(rr.status):
        return
    if deleted:
        vanished(controller, rr, body, objects.ident(job)[1])
        return
    observe_request(controller, rr, body, job)


def vanished(controller: RequestController, rr: RestoreRequest, body: Json,
             job_name: str) -> None:
    """The request's Job was deleted before it finished: the request fails (final)."""
    target = target_info(rr, None)
    written = controller.write_status(body, lambda b, s: rr_status.job_vanished(
        s, job_name=job_name, target=target, generation=objects.generation(b),
        now=controller.ctx.clock(),
    ))
    if written is not None:
        controller.event(written, Reason.JOB_DELETED,
                         f"restore Job {job_name} was deleted before it finished", warning=True)


def observe_request(controller: RequestController, rr: RestoreRequest, body: Json,
                    job: Json) -> None:
    """Fold the state of `job`, the request's own Job, into its status."""
    ctx = controller.ctx
    outcome = jobs.outcome(ctx, job)
    policy = _policy_or_none(controller, rr)
    target = target_info(rr, policy)
    before = rr.status.phase if rr.status else None
    attempts = jobs.attempts(job)
    written = controller.write_status(body, lambda b, s: rr_status.job_observed(
        s, outcome, target=target, generation=objects.generation(b), now=ctx.clock(),
        attempts=attempts,
    ))
    if written is None:
        return
    after = controller.status_of(written)
    phase = after.phase if after else None
    if phase == before or phase not in (RestorePhase.SUCCEEDED, RestorePhase.FAILED):
        return
    message = (after.message if after else None) or outcome.message
    succeeded = phase == RestorePhase.SUCCEEDED
    log.info("%s/%s: %s", *objects.ident(written), message)
    controller.event(written, Reason.RESTORE_SUCCEEDED if succeeded else Reason.RESTORE_FAILED,
                     message, warning=not succeeded)
    if succeeded and rr.spec.target.instance is not None:
        _start_instance(controller, rr, policy, written, outcome)
    # The request's own notifications, else its policy's (a restore from a repository
    # given directly has no policy: it notifies only with its own).
    notifications, about = rr.spec.notifications, rr.metadata.name or ""
    if notifications is None and policy is not None:
        notifications, about = policy.spec.notifications, policy.metadata.name or ""
    if notifications is not None:
        notify.send_notification(
            ctx, rr.metadata.namespace or "default", about, notifications,
            NotificationEvent.RESTORE_SUCCEEDED if succeeded else NotificationEvent.RESTORE_FAILED,
            state="Succeeded" if succeeded else "Failed",
            message=message,
        )


def _start_instance(
    controller: RequestController, rr: RestoreRequest, policy: BackupPolicy | None,
    body: Json, outcome: JobOutcome,
) -> None:
    major = builders.server_major(outcome.result)
    image = builders.instance_image(rr, major)
    problem = builders.instance_image_problem(image, major) if image is not None else None
    if image is None:
        note = ("The PostgreSQL instance was not started: the backup records no PostgreSQL "
                "version; start one with spec.target.instance.image set, or by hand.")
    elif problem is not None:
        note = f"The PostgreSQL instance was not started: {problem}."
        controller.event(body, Reason.INSTANCE_NOT_STARTED, note, warning=True)
    else:
        name = builders.instance_name(rr.metadata.name or "")
        port = rr.spec.target.instance.port if rr.spec.target.instance else 5432
        note = (f"PostgreSQL ({image}) is starting on it: StatefulSet {name}, Service "
                f"{name} port {port} (`kubectl rollout status statefulset/{name}`).")
        created = True
        for obj in builders.build_instance(rr, policy, image=image):
            try:
                controller.ctx.kube.create(obj)
            except ApiError as exc:
                if exc.already_exists:
                    continue
                # The restore itself succeeded: say what is missing instead of failing it.
                note = (f"The PostgreSQL instance could not be created ({obj['kind']} "
                        f"{name}: {exc}); the restored volume is ready to start by hand.")
                created = False
                break
        if created:  # `instance.check` says when its pod is Ready
            started = functools.partial(rr_status.instance_started, name=name, image=image,
                                        note=note)
            controller.write_status(body, lambda _b, s: started(s))
            return
    controller.write_status(body, lambda _b, s: rr_status.finished(s, note=note))


def _policy_or_none(controller: RequestController, rr: RestoreRequest) -> BackupPolicy | None:
    try:
        return read_policy(controller, rr)
    except objects.InvalidSpec:
        return None
