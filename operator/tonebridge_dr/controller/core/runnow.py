"""Run-now, for every kind that runs Jobs on a schedule (BackupPolicy, RestoreTest):
`kubectl annotate <kind>/NAME dr.tonebridge.io/run-now=<token> --overwrite`.

Semantics (the same for every kind):
* any new value starts ONE Job (what it runs, the kind's `plan` decides from the token);
* the value handled last is kept in the annotation `dr.tonebridge.io/run-now-handled`, so
  the same value never runs twice; write a new value (e.g. a timestamp) to run again;
* the Job is named from the token: if the operator dies after creating it and before
  recording the token, the retry finds the Job (AlreadyExists) and only records the token;
* a suspended object still runs on demand (suspend stops the schedule, like
  `kubectl create job --from=cronjob/...` works on a suspended CronJob);
* an object that cannot run (invalid spec, a Secret or key the Job needs missing, what
  the kind's `plan` refuses) refuses: a Warning Event (RunNowRefused) says why and the
  token counts as handled.

`register` adds the watch-event trigger (at once); a kind may also call `handle` from a
timer (a retry after API trouble); it does nothing when there is nothing new.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import kopf

from tonebridge_dr.api.conditions import Reason
from tonebridge_dr.builders import names
from tonebridge_dr.controller.core import kube, objects, registration, secrets
from tonebridge_dr.controller.core.kind import Controller

log = logging.getLogger(__name__)

HANDLER_ID = "run-now"
Json = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class RunNow:
    """What one run-now value starts (the kind's `plan`)."""

    job: Json
    """The Job to create, named from the token."""
    secrets: Sequence[secrets.SecretUse]
    """What the Job reads (blocking uses are checked before it is created)."""
    started: Reason
    """The Normal Event's reason once the Job is created."""
    what: str
    """What the Job does, for the Event and the log (e.g. "a backup of schedule daily")."""


Plan = Callable[[Controller[Any, Any], Any, str], RunNow]
"""(controller, parsed object, token) -> RunNow; raises ValueError (a builder's refusal,
with a readable message) to refuse, kube.ApiError on API trouble."""

Record = Callable[[Mapping[str, Any], str, str | None, str | None], None]
"""(object body, token, Job name or None, refusal or None): a kind's own bookkeeping of
what a token did (e.g. BackupPolicy `status.runNow`): with the Job's name right BEFORE the
Job is created (so the Job's end is always recorded after it), with the refusal before
the token is marked handled. A crash repeats it: it must be idempotent."""


def pending_value(body: Mapping[str, Any], annotation: str, handled: str) -> str | None:
    """The value of the token annotation `annotation` still to handle (differs from the
    one recorded in `handled`), or None. Every one-shot token annotation works like
    run-now: FailoverPlan's failover-now and reset too."""
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    token = annotations.get(annotation)
    if not token or token == annotations.get(handled):
        return None
    return str(token)


def mark_handled(controller: Controller[Any, Any], body: Mapping[str, Any], handled: str,
                 token: str) -> None:
    """Record `token` as handled in the annotation `handled`."""
    namespace, name = objects.ident(body)
    controller.ctx.kube.merge_patch(
        controller.kind, namespace, name, {"metadata": {"annotations": {handled: token}}},
    )


def pending_token(body: Mapping[str, Any]) -> str | None:
    """The run-now value still to handle, or None."""
    return pending_value(body, names.ANNOTATION_RUN_NOW, names.ANNOTATION_RUN_NOW_HANDLED)


def _mark_handled(controller: Controller[Any, Any], body: Mapping[str, Any],
                  token: str) -> None:
    mark_handled(controller, body, names.ANNOTATION_RUN_NOW_HANDLED, token)


def _refuse(controller: Controller[Any, Any], body: Mapping[str, Any], token: str,
            problem: str, record: Record | None) -> None:
    namespace, name = objects.ident(body)
    message = f"run-now {token!r} refused: {problem}"
    log.info("%s/%s: %s", namespace, name, message)
    controller.event(body, Reason.RUN_NOW_REFUSED, message, warning=True)
    if record is not None:
        record(body, token, None, message)
    _mark_handled(controller, body, token)


def handle(controller: Controller[Any, Any], body: Mapping[str, Any], plan: Plan,
           record: Record | None = None) -> str | None:
    """Start the Job a new run-now value asks for; returns its name (None when nothing
    was pending or the request was refused). Raises kube.ApiError on API trouble
    (nothing is marked handled then, so it is retried)."""
    token = pending_token(body)
    if token is None or (body.get("metadata") or {}).get("deletionTimestamp"):
        return None
    ctx = controller.ctx
    namespace, name = objects.ident(body)
    try:
        run = plan(controller, controller.parse(body), token)
    except ValueError as exc:  # objects.InvalidSpec, a builder's refusal
        _refuse(controller, body, token, str(exc), record)
        return None
    blocking = [p for p in secrets.check(ctx.kube, namespace, run.secrets) if p.blocking]
    if blocking:
        _refuse(controller, body, token, secrets.describe(blocking), record)
        return None
    job_name = str(run.job["metadata"]["name"])
    if record is not None:  # before the Job exists: its end can only be recorded after this
        record(body, token, job_name, None)
    try:
        ctx.kube.create(run.job)
        created = True
    except kube.ApiError as exc:
        if not exc.already_exists:
            raise
        created = False  # a previous attempt created it and died before recording
    _mark_handled(controller, body, token)
    log.info("%s/%s: run-now %r: Job %s for %s (%s)", namespace, name, token, job_name,
             run.what, "created" if created else "already existed")
    if created:
        controller.event(body, run.started, f"run-now: Job {job_name} started {run.what}",
                         warning=False)
    return job_name


def _pending(body: kopf.Body, **_: Any) -> bool:
    return pending_token(body) is not None


def register(
    registry: kopf.OperatorRegistry,
    controller: Controller[Any, Any],
    handler: Callable[[Controller[Any, Any], Mapping[str, Any]], object],
) -> None:
    """Run `handler(controller, body)` (which calls `handle`) on every watch event of an
    object with a new run-now value. The `when` filter runs in kopf's event loop: most
    watch events (status writes) never cost a worker thread."""

    @kopf.on.event(*registration.resource(controller), id=HANDLER_ID, registry=registry,
                   annotations={names.ANNOTATION_RUN_NOW: kopf.PRESENT}, when=_pending)
    def run_now_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        if type != "DELETED":
            what = f"run-now of {body.metadata.namespace}/{body.metadata.name}"
            controller.retry.run_event(lambda: handler(controller, body), what)
