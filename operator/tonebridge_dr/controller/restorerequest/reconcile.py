"""RestoreRequest reconciliation: from a new request to a running Job.

observe  the request's status and Job, the BackupPolicy its `source.policyRef` names;
decide   `plan.plan_restore` (pure): source, Secrets to check, claim, Job, names;
act      check the Secrets and the restore ServiceAccount; check (through the catalog
         reader) that the chosen backup can be read now, else request its rehydration
         from the archive tier and wait in phase Rehydrating, checked again every
         `--rehydration-interval` seconds; then the claim, the Job, status Running.

A request runs once. `reconcile` is idempotent: a finished request is left alone; a
request whose Job exists is only observed (a Job that finished while the operator was
down is recorded then); names are deterministic, so a second attempt meets its own
objects (409 AlreadyExists) instead of starting a second restore. What the operator
cannot create (a Secret or a key in it, the policy, an existing claim) makes the request
Pending with a precise Ready=False condition and is looked for again every
`RetryPolicy.pending_delay` seconds (the skeleton retries); what can never work (a
policy of the wrong kind, encrypted backups without a key) fails it at once. Deleting a
request deletes its Job by garbage collection (owner reference), which stops the pod
and so the runner; the runner's single transaction (or its cleanup of a half-extracted
volume) leaves the target as it was.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from tonebridge_dr.api.conditions import Reason
from tonebridge_dr.api.kinds import BackupPolicy, RestoreRequest
from tonebridge_dr.api.restorerequest import RestorePhase, RestoreRequestStatus
from tonebridge_dr.builders import names
from tonebridge_dr.builders import restore as builders
from tonebridge_dr.controller.core import kube, objects, secrets
from tonebridge_dr.controller.core.kind import Cause, Refusal, Wait
from tonebridge_dr.controller.core.kube import ApiError
from tonebridge_dr.controller.restorerequest import record
from tonebridge_dr.controller.restorerequest.plan import (
    ClaimPlan,
    RestorePlan,
    plan_restore,
    point_in_time,
    rehydration,
    rehydration_wait,
)
from tonebridge_dr.controller.restorerequest.record import RequestController
from tonebridge_dr.status import restorerequest as rr_status

log = logging.getLogger(__name__)

Json = dict[str, Any]


def reconcile(controller: RequestController, rr: RestoreRequest, body: Json,
              cause: Cause) -> str | Wait | None:
    """Bring one request forward. Returns why it waits (Pending), or None.
    Raises kube.ApiError on API trouble (the skeleton retries)."""
    status = rr.status
    if rr_status.is_finished(status):
        return None
    namespace = rr.metadata.namespace or "default"
    source_text = rr.spec.source.describe()
    # observe
    job = _find_job(controller, rr, status)
    if job is not None:
        record.observe_request(controller, rr, body, job)
        return None
    if status is not None and status.job_name and status.phase == RestorePhase.RUNNING:
        record.vanished(controller, rr, body, status.job_name)
        return None
    ref = rr.spec.source.policy_ref
    try:
        policy = record.read_policy(controller, rr)
    except objects.InvalidSpec as exc:
        assert ref is not None
        _refuse(controller, body, Reason.INVALID_POLICY,
                f'BackupPolicy "{ref.name}" cannot be read: {exc}', source_text)
        return None
    if ref is not None and policy is None:
        return _wait(controller, body, Reason.POLICY_NOT_FOUND,
                     f'BackupPolicy "{ref.name}" not found in namespace "{namespace}"',
                     source_text)
    # decide
    plan = plan_restore(rr, policy, controller.ctx.settings.runner)
    if isinstance(plan, Refusal):
        _refuse(controller, body, plan.reason, plan.message, source_text)
        return None
    # act
    return _act(controller, rr, policy, body, plan, source_text)


def _act(controller: RequestController, rr: RestoreRequest, policy: BackupPolicy | None,
         body: Json, plan: RestorePlan, source_text: str) -> str | Wait | None:
    ctx = controller.ctx
    namespace, name = objects.ident(body)
    problems = secrets.check(ctx.kube, namespace, plan.secrets)
    if problems:
        return _wait(controller, body, problems[0].reason, secrets.describe(problems),
                     source_text)
    if objects.service_account_missing(ctx, namespace, plan.service_account):
        return _wait(controller, body, Reason.SERVICE_ACCOUNT_NOT_FOUND,
                     f'ServiceAccount "{plan.service_account}" (restore Jobs run as it) not '
                     f'found in namespace "{namespace}"; create it (the Helm chart\'s restore '
                     "RBAC)", source_text)
    timing = _point_in_time(controller, rr, policy, body, plan, source_text)
    if isinstance(timing, Refusal):
        _refuse(controller, body, timing.reason, timing.message, source_text)
        return None
    if timing is not None:
        return timing
    waiting = _rehydrate(controller, rr, body, plan, source_text)
    if waiting is not None:
        return waiting
    if plan.claim is not None:
        problem = _prepare_claim(controller, rr, plan.claim)
        if isinstance(problem, Refusal):
            _refuse(controller, body, problem.reason, problem.message, source_text)
            return None
        if problem is not None:
            return _wait(controller, body, Reason.CLAIM_NOT_FOUND, problem, source_text)
    try:
        ctx.kube.create(plan.job)
        log.info("%s/%s: created restore Job %s", namespace, name, plan.job_name)
        if plan.write_credentials is not None:
            controller.event(body, Reason.WRITE_CREDENTIALS, plan.write_credentials,
                             warning=True)
        controller.event(body, Reason.RESTORE_STARTED, plan.started, warning=False)
    except ApiError as exc:
        if not exc.already_exists:
            raise
        found = ctx.kube.get_or_none(kube.JOB, namespace, plan.job_name)
        if found is not None and not objects.owned_by(found, rr.metadata.uid):
            _refuse(controller, body, Reason.NAME_CONFLICT,
                    f"a Job named {plan.job_name} already exists and does not belong to this "
                    "RestoreRequest; delete it or choose another RestoreRequest name",
                    source_text)
            return None
    controller.write_status(body, lambda b, s: rr_status.job_created(
        s, job_name=plan.job_name, source=source_text, generation=objects.generation(b),
        now=ctx.clock(),
    ))
    return None


#: How often a request waiting for WAL looks again.
WAL_RECHECK_SECONDS = 15.0


def _point_in_time(controller: RequestController, rr: RestoreRequest,
                   policy: BackupPolicy | None, body: Json, plan: RestorePlan,
                   source_text: str) -> Refusal | Wait | None:
    """A targetTime in the future is refused (before anything is created: no volume is
    left behind); one whose WAL is due within archiveTimeout waits (WaitingForWAL)."""
    if rr.spec.target_time is None:
        return None
    ctx = controller.ctx
    now = ctx.clock()
    if rr.spec.target_time > now:  # read the archive only when it can matter
        newest = None
    else:
        newest = ctx.catalog.newest_wal(ctx.kube, rr.metadata.namespace or "default",
                                        plan.source)
    decision = point_in_time(rr, policy, now=now, newest_wal=newest)
    if decision is None or isinstance(decision, Refusal):
        return decision
    _wait(controller, body, Reason.WAITING_FOR_WAL, decision, source_text)
    return Wait(decision, WAL_RECHECK_SECONDS)


def _rehydrate(controller: RequestController, rr: RestoreRequest, body: Json,
               plan: RestorePlan, source_text: str) -> Wait | None:
    """Rehydrating while the backup's objects are in an archive class (readable copies
    requested, idempotently, on every check); None once everything is readable."""
    ctx = controller.ctx
    settings = rehydration(rr)
    readiness = ctx.catalog.restore_readiness(
        ctx.kube, rr.metadata.namespace or "default", plan.source, rr.spec,
        days=settings.days, tier=settings.tier.value,
    )
    if readiness.error is not None:
        log.info("%s/%s: no archive check (%s); the restore Job checks for itself",
                 rr.metadata.namespace, rr.metadata.name, readiness.error)
    message = rehydration_wait(readiness, settings)
    if message is None:
        return None
    first = rr.status is None or rr.status.phase != RestorePhase.REHYDRATING
    controller.write_status(body, lambda b, s: rr_status.rehydrating(
        s, message=message, source=source_text, generation=objects.generation(b),
        now=ctx.clock(),
    ))
    if first:
        controller.event(body, Reason.REHYDRATING, message, warning=False)
    return Wait(message, ctx.settings.rehydration_interval)


def _wait(controller: RequestController, body: Json, reason: Reason, message: str,
          source: str) -> str:
    """Pending: Ready=False with `reason`; returns why it waits (the skeleton retries)."""
    controller.write_status(body, lambda b, s: rr_status.waiting(
        s, reason=reason.value, message=message, source=source,
        generation=objects.generation(b), now=controller.ctx.clock(),
    ))
    return message


def _refuse(controller: RequestController, body: Json, reason: Reason, message: str,
            source: str) -> None:
    """Fail the request for good (a Warning Event says why); nothing to wait for."""
    controller.refuse(body, reason, message,
                      transition=functools.partial(rr_status.refused, source=source))


def _prepare_claim(controller: RequestController, rr: RestoreRequest,
                   claim: ClaimPlan) -> str | Refusal | None:
    """Make sure the volume target exists: why to wait, why to refuse, or None."""
    ctx = controller.ctx
    namespace = rr.metadata.namespace or "default"
    if claim.manifest is None:
        if ctx.kube.get_or_none(kube.PERSISTENT_VOLUME_CLAIM, namespace, claim.name) is None:
            return f'PersistentVolumeClaim "{claim.name}" not found in namespace "{namespace}"'
        return None
    try:
        ctx.kube.create(claim.manifest)
        log.info("%s/%s: created PersistentVolumeClaim %s", namespace, rr.metadata.name,
                 claim.name)
    except ApiError as exc:
        if not exc.already_exists:
            raise
        found = ctx.kube.get_or_none(kube.PERSISTENT_VOLUME_CLAIM, namespace, claim.name) or {}
        labels = (found.get("metadata") or {}).get("labels") or {}
        if labels.get(builders.LABEL_RESTORE_REQUEST) != names.label_value(
            rr.metadata.name or ""
        ):
            return Refusal(Reason.CLAIM_EXISTS,
                           f'PersistentVolumeClaim "{claim.name}" already exists and was not '
                           "made for this RestoreRequest; to restore into it, use "
                           "target.volume.claimName")
    return None


def _find_job(controller: RequestController, rr: RestoreRequest,
              status: RestoreRequestStatus | None) -> Json | None:
    name = (status.job_name if status else None) or builders.restore_job_name(
        rr.metadata.name or ""
    )
    job = controller.ctx.kube.get_or_none(kube.JOB, rr.metadata.namespace or "default", name)
    if job is None or not objects.owned_by(job, rr.metadata.uid):
        return None
    return job


