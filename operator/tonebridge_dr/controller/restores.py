"""RestoreRequest reconciliation: from a new request to a running Job, and Job -> status.

Called by the thin kopf handlers in `controller/handlers/restorerequest.py`: `reconcile`
when a request is created or the operator resumes, `observe_job` on restore Job events.

`reconcile` validates, resolves the source, checks Secrets and the claim, creates the
claim and the Job, and sets the status to Running.

A request runs once. `reconcile` is idempotent: a finished request is left alone; a
request whose Job exists is only observed (a Job that finished while the operator was
down is recorded then); names are deterministic, so a second attempt meets its own
objects (409 AlreadyExists) instead of starting a second restore. What the operator
cannot create (a Secret, the policy, an existing claim) makes the request Pending with
a precise Ready=False condition and is looked for again every `PENDING_RETRY` seconds
(the handler retries);
what can never work (a policy of the wrong kind, encrypted backups without a key) fails
it at once. Deleting a request deletes its Job by garbage collection (owner reference),
which stops the pod and so the runner; the runner's single transaction (or its cleanup
of a half-extracted volume) leaves the target as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import pydantic

from tonebridge_dr.api.common import NotificationEvent
from tonebridge_dr.api.kinds import (
    API_VERSION,
    BACKUP_POLICY,
    RESTORE_REQUEST,
    BackupPolicy,
    RestoreRequest,
)
from tonebridge_dr.api.restorerequest import RestorePhase, RestoreRequestStatus
from tonebridge_dr.builders import names
from tonebridge_dr.builders import restore as builders
from tonebridge_dr.controller.core import kube as kubemod
from tonebridge_dr.controller.core import objects
from tonebridge_dr.controller.core.context import Context
from tonebridge_dr.controller.core.kube import ApiError
from tonebridge_dr.status import restorerequest as rr_status
from tonebridge_dr.status.jobs import JobOutcome, job_outcome

log = logging.getLogger(__name__)

Json = dict[str, Any]
Mutation = Callable[[Json, RestoreRequestStatus | None], RestoreRequestStatus | None]



# --- reconcile: from a new request to a running Job ------------------------------------------


def reconcile(ctx: Context, body: Mapping[str, Any]) -> str | None:
    """Bring one request forward. Returns why it waits (Pending), or None.

    Raises kube.ApiError on API trouble (the caller retries)."""
    current = objects.plain(body)
    namespace, name = objects.ident(current)
    generation = objects.generation(current)
    try:
        rr = RestoreRequest.from_body(current)
    except pydantic.ValidationError as exc:
        problem = objects.validation_message(exc)
        _write(ctx, current, lambda _b, s: rr_status.refused(
            s, reason="InvalidSpec", message=problem, source=None,
            generation=generation, now=ctx.clock(),
        ))
        return None
    status = rr.status
    if rr_status.is_finished(status):
        return None
    source_text = rr.spec.source.describe()

    existing_job = _find_job(ctx, rr, status)
    if existing_job is not None:
        _observe(ctx, rr, current, existing_job)
        return None
    if status is not None and status.job_name and status.phase == RestorePhase.RUNNING:
        _write(ctx, current, lambda _b, s: rr_status.job_vanished(
            s, job_name=status.job_name or "", target=_target_info(rr, None),
            generation=generation, now=ctx.clock(),
        ))
        return None

    policy: BackupPolicy | None = None
    policy_ref = rr.spec.source.policy_ref
    if policy_ref is not None:
        policy_body = ctx.kube.get_or_none(POLICY_KIND, namespace, policy_ref.name)
        if policy_body is None:
            return _wait(ctx, current, "PolicyNotFound",
                         f'BackupPolicy "{policy_ref.name}" not found in namespace "{namespace}"',
                         source_text)
        try:
            policy = BackupPolicy.from_body(policy_body)
        except pydantic.ValidationError as exc:
            return _refuse(ctx, current, "InvalidPolicy",
                           f'BackupPolicy "{policy_ref.name}" cannot be read: '
                           f"{objects.validation_message(exc)}", source_text)

    try:
        source = builders.resolve_source(rr, policy)
    except builders.RestoreSpecError as exc:
        return _refuse(ctx, current, exc.reason, exc.message, source_text)

    missing = _missing_secrets(ctx, namespace, builders.secret_requirements(rr, source))
    if missing:
        return _wait(ctx, current, missing[0], missing[1], source_text)
    account = ctx.settings.runner.restore_service_account
    if _service_account_missing(ctx, namespace, account):
        return _wait(ctx, current, "ServiceAccountNotFound",
                     f'ServiceAccount "{account}" (restore Jobs run as it) not found in '
                     f'namespace "{namespace}"; create it (the Helm chart\'s restore RBAC)',
                     source_text)

    volume_problem = _prepare_volume(ctx, rr, policy)
    if volume_problem is not None:
        kind, reason, message = volume_problem
        if kind == "wait":
            return _wait(ctx, current, reason, message, source_text)
        return _refuse(ctx, current, reason, message, source_text)

    job = builders.build_restore_job(rr, policy, ctx.settings.runner)
    job_name = job["metadata"]["name"]
    try:
        ctx.kube.create(job)
        log.info("%s/%s: created restore Job %s", namespace, name, job_name)
        if source.uses_write_credentials:
            _event(ctx, current, warning=True, reason="WriteCredentials",
                   message=f'BackupPolicy "{source.policy_name}" has no '
                   "repository.restoreCredentialsSecretRef: the restore Job uses the backup "
                   "credentials; give restores a read-only role (spec 8.2)")
        _event(ctx, current, warning=False, reason="RestoreStarted",
               message=f"restore Job {job_name} started: {builders.target_description(rr)} "
               f"from {source.describe()}")
    except ApiError as exc:
        if not exc.already_exists:
            raise
        found = ctx.kube.get_or_none(kubemod.JOB, namespace, job_name)
        if found is not None and not _owned_by(found, rr.metadata.uid):
            return _refuse(ctx, current, "NameConflict",
                           f"a Job named {job_name} already exists and does not belong to this "
                           "RestoreRequest; delete it or choose another RestoreRequest name",
                           source_text)
    _write(ctx, current, lambda _b, s: rr_status.job_created(
        s, job_name=job_name, source=source_text, generation=generation, now=ctx.clock(),
    ))
    return None


def _wait(ctx: Context, current: Json, reason: str, message: str, source: str) -> str:
    _write(ctx, current, lambda b, s: rr_status.waiting(
        s, reason=reason, message=message, source=source, generation=objects.generation(b),
        now=ctx.clock(),
    ))
    return message


def _refuse(ctx: Context, current: Json, reason: str, message: str, source: str) -> str | None:
    """Fail the request for good (returns None: nothing to wait for)."""
    written = _write(ctx, current, lambda b, s: rr_status.refused(
        s, reason=reason, message=message, source=source, generation=objects.generation(b),
        now=ctx.clock(),
    ))
    status = objects.status_of(written, RestoreRequestStatus) if written is not None else None
    _event(ctx, current, warning=True, reason=reason,
           message=(status.message if status and status.message else message))
    return None


def _service_account_missing(ctx: Context, namespace: str, account: str) -> bool:
    """Whether the restore ServiceAccount is known to be missing (without it the Job
    controller cannot create the pod and the request would look stuck). An operator
    not allowed to read ServiceAccounts skips the check."""
    try:
        return ctx.kube.get_or_none(SERVICEACCOUNT, namespace, account) is None
    except ApiError as exc:
        if exc.status == 403:
            return False
        raise


def _missing_secrets(
    ctx: Context, namespace: str, wanted: list[builders.SecretRequirement]
) -> tuple[str, str] | None:
    """(reason, message) for the Secrets / keys the restore Job would wait for forever.
    Only key names are looked at; values are never logged or returned."""
    problems: list[str] = []
    reason = "SecretNotFound"
    for requirement in wanted:
        data = ctx.kube.secret_data(namespace, requirement.name)
        if data is None:
            problems.append(f'Secret "{requirement.name}" ({requirement.purpose}) not found')
            continue
        absent = [key for key in requirement.keys if key not in data]
        if absent:
            if len(problems) == 0:
                reason = "SecretKeyNotFound"
            keys = ", ".join(f'"{key}"' for key in absent)
            problems.append(
                f'Secret "{requirement.name}" ({requirement.purpose}) has no key '
                f"{keys}"
            )
    if not problems:
        return None
    return reason, "; ".join(problems)


def _prepare_volume(
    ctx: Context, rr: RestoreRequest, policy: BackupPolicy | None
) -> tuple[str, str, str] | None:
    """Make sure the volume target exists: ("wait" | "refuse", reason, message) if not."""
    volume = rr.spec.target.volume
    if volume is None:
        return None
    namespace = rr.metadata.namespace or "default"
    claim = builders.claim_name(rr) or ""
    if volume.claim_name is not None:
        if ctx.kube.get_or_none(PVC, namespace, claim) is None:
            return ("wait", "ClaimNotFound",
                    f'PersistentVolumeClaim "{claim}" not found in namespace "{namespace}"')
        return None
    manifest = builders.build_restore_claim(rr, policy)
    assert manifest is not None
    try:
        ctx.kube.create(manifest)
        log.info("%s/%s: created PersistentVolumeClaim %s", namespace, rr.metadata.name, claim)
    except ApiError as exc:
        if not exc.already_exists:
            raise
        found = ctx.kube.get_or_none(PVC, namespace, claim) or {}
        labels = (found.get("metadata") or {}).get("labels") or {}
        if labels.get(builders.LABEL_RESTORE_REQUEST) != names.label_value(
            rr.metadata.name or ""
        ):
            return ("refuse", "ClaimExists",
                    f'PersistentVolumeClaim "{claim}" already exists and was not made for this '
                    "RestoreRequest; to restore into it, use target.volume.claimName")
    return None


# --- the restore Job ---------------------------------------------------------------------------


def _find_job(ctx: Context, rr: RestoreRequest, status: RestoreRequestStatus | None) -> Json | None:
    namespace = rr.metadata.namespace or "default"
    name = (status.job_name if status else None) or builders.restore_job_name(
        rr.metadata.name or ""
    )
    job = ctx.kube.get_or_none(kubemod.JOB, namespace, name)
    if job is None or not _owned_by(job, rr.metadata.uid):
        return None
    return job


def _owned_by(obj: Mapping[str, Any], uid: str | None) -> bool:
    owners = (obj.get("metadata") or {}).get("ownerReferences") or []
    return bool(uid) and any(owner.get("uid") == uid for owner in owners)


def _owner(job: Mapping[str, Any]) -> tuple[str, str] | None:
    for owner in (job.get("metadata") or {}).get("ownerReferences") or []:
        if owner.get("kind") == RESTORE_REQUEST.kind and owner.get("apiVersion") == API_VERSION:
            return str(owner.get("name")), str(owner.get("uid"))
    return None


def observe_job(ctx: Context, job: Json, *, deleted: bool = False) -> None:
    """Fold a restore Job's state into its request's status (idempotent)."""
    owner = _owner(job)
    if owner is None:
        return
    namespace = (job.get("metadata") or {}).get("namespace") or "default"
    body = ctx.kube.get_or_none(KIND, namespace, owner[0])
    if body is None or (body.get("metadata") or {}).get("uid") != owner[1]:
        return  # the request is gone (deleting it deleted the Job)
    if (body.get("metadata") or {}).get("deletionTimestamp"):
        return
    try:
        rr = RestoreRequest.from_body(body)
    except pydantic.ValidationError:
        return
    if rr_status.is_finished(rr.status):
        return
    if deleted:
        job_name = (job.get("metadata") or {}).get("name") or ""
        _write(ctx, body, lambda b, s: rr_status.job_vanished(
            s, job_name=job_name, target=_target_info(rr, None), generation=objects.generation(b),
            now=ctx.clock(),
        ))
        _event(ctx, body, warning=True, reason="JobDeleted",
               message=f"restore Job {job_name} was deleted before it finished")
        return
    _observe(ctx, rr, body, job)


def _observe(ctx: Context, rr: RestoreRequest, body: Json, job: Json) -> None:
    namespace = rr.metadata.namespace or "default"
    job_name = (job.get("metadata") or {}).get("name") or ""
    pods = ctx.kube.list(
        kubemod.POD, namespace, label_selector=f"batch.kubernetes.io/job-name={job_name}"
    )
    outcome = job_outcome(job, pods)
    policy = _policy_or_none(ctx, rr)
    target = _target_info(rr, policy)
    before = rr.status.phase if rr.status else None
    counts = job.get("status") or {}
    attempts = int(counts.get("failed") or 0) + int(counts.get("succeeded") or 0)
    written = _write(ctx, body, lambda b, s: rr_status.job_observed(
        s, outcome, target=target, generation=objects.generation(b), now=ctx.clock(),
        attempts=attempts,
    ))
    if written is None:
        return
    after = objects.status_of(written, RestoreRequestStatus)
    phase = after.phase if after else None
    if phase == before or phase not in (RestorePhase.SUCCEEDED, RestorePhase.FAILED):
        return
    message = (after.message if after else None) or outcome.message
    succeeded = phase == RestorePhase.SUCCEEDED
    log.info("%s/%s: %s", namespace, rr.metadata.name, message)
    _event(ctx, written, warning=not succeeded,
           reason="RestoreSucceeded" if succeeded else "RestoreFailed", message=message)
    if succeeded and rr.spec.target.instance is not None:
        _start_instance(ctx, rr, policy, written, outcome)
    _notify(ctx, policy, succeeded=succeeded, message=message)


def _start_instance(
    ctx: Context, rr: RestoreRequest, policy: BackupPolicy | None, body: Json,
    outcome: JobOutcome,
) -> None:
    image = builders.instance_image(rr, builders.server_major(outcome.result))
    if image is None:
        note = ("The PostgreSQL instance was not started: the backup records no PostgreSQL "
                "version; start one with spec.target.instance.image set, or by hand.")
    else:
        name = builders.instance_name(rr.metadata.name or "")
        port = rr.spec.target.instance.port if rr.spec.target.instance else 5432
        note = (f"PostgreSQL ({image}) runs on it: StatefulSet {name}, Service {name} "
                f"port {port}.")
        for obj in builders.build_instance(rr, policy, image=image):
            try:
                ctx.kube.create(obj)
            except ApiError as exc:
                if exc.already_exists:
                    continue
                # The restore itself succeeded: say what is missing instead of failing it.
                note = (f"The PostgreSQL instance could not be created ({obj['kind']} "
                        f"{name}: {exc}); the restored volume is ready to start by hand.")
                break
    _write(ctx, body, lambda _b, s: rr_status.finished(s, note=note))


def _notify(ctx: Context, policy: BackupPolicy | None, *, succeeded: bool, message: str) -> None:
    if policy is None:
        return
    from tonebridge_dr.controller import policies  # the BackupPolicy handlers' plumbing

    try:
        policies.send_notification(
            ctx, policy,
            NotificationEvent.RESTORE_SUCCEEDED if succeeded else NotificationEvent.RESTORE_FAILED,
            state="Succeeded" if succeeded else "Failed",
            message=message,
        )
    except Exception as exc:  # notifications are best effort
        log.warning("restore notification failed: %s", exc)


def _policy_or_none(ctx: Context, rr: RestoreRequest) -> BackupPolicy | None:
    ref = rr.spec.source.policy_ref
    if ref is None:
        return None
    body = ctx.kube.get_or_none(POLICY_KIND, rr.metadata.namespace or "default", ref.name)
    if body is None:
        return None
    try:
        return BackupPolicy.from_body(body)
    except pydantic.ValidationError:
        return None


def _target_info(rr: RestoreRequest, policy: BackupPolicy | None) -> rr_status.TargetInfo:
    kind = builders.target_kind(rr)  # the values of rr_status.TargetKind
    repository = rr.spec.source.repository or (policy.spec.repository if policy else None)
    policy_name = rr.spec.source.policy_name or (
        rr.spec.source.policy_ref.name if rr.spec.source.policy_ref else ""
    )
    url = builders.policy_repository_url(repository.url, policy_name) if repository else ""
    return rr_status.TargetInfo(
        kind=kind, description=builders.target_description(rr), repository_url=url
    )


# --- status and events --------------------------------------------------------------------------


def _write(ctx: Context, body: Mapping[str, Any], mutate: Mutation) -> Json | None:
    """`objects.update_status` of this request: the one way its status is written."""
    return objects.update_status(
        ctx, KIND, RestoreRequestStatus, *objects.ident(body), mutate, body=body
    )


def _event(ctx: Context, body: Mapping[str, Any], *, warning: bool, reason: str,
           message: str) -> None:
    objects.event(ctx, KIND, body, warning=warning, reason=reason, message=message)


# --- API kinds ------------------------------------------------------------------------------------

KIND = kubemod.register_kind(
    kubemod.Kind(API_VERSION, RESTORE_REQUEST.kind, RESTORE_REQUEST.plural)
)
POLICY_KIND = kubemod.Kind(API_VERSION, BACKUP_POLICY.kind, BACKUP_POLICY.plural)
PVC = kubemod.PERSISTENT_VOLUME_CLAIM
SERVICEACCOUNT = kubemod.SERVICE_ACCOUNT
