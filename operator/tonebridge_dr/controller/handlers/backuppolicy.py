"""kopf handlers of BackupPolicy and of its backup Jobs. Thin by design: each one
calls one controller function and maps API trouble to kopf's retry semantics.

| trigger | handler | does |
|---|---|---|
| policy created | `reconcile_new` | reconcile: owned objects, status |
| operator (re)started | `reconcile_existing` | the same, also deleting stale owned objects |
| `spec` changed | `reconcile_spec` | reconcile (labels, annotations, status: ignored) |
| any policy watch event | `policy_event` | run-now, when a new token is there |
| every `freshness_interval` | `monitor` | re-check SecretNotFound, retry run-now, catalog |
| policy deleted | `forget_policy` | drop its metrics (owned objects go by garbage collection) |
| backup Job events | `job_event` | record finished Jobs on their policy |

Registered on an explicit registry (`register`), so a process (or a test) can build
as many operators as it likes.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable
from typing import Any

import kopf

from tonebridge_dr.api.kinds import BACKUP_POLICY, GROUP, VERSION
from tonebridge_dr.builders import names
from tonebridge_dr.controller import freshness, jobs, reconcile, runnow
from tonebridge_dr.controller.core.context import Context
from tonebridge_dr.controller.core.kube import ApiError

log = logging.getLogger(__name__)

POLICY = (GROUP, VERSION, BACKUP_POLICY.plural)
JOBS = ("batch", "v1", "jobs")
JOB_LABELS: dict[str, Any] = {
    names.LABEL_POLICY: kopf.PRESENT,
    names.LABEL_COMPONENT: names.COMPONENT_BACKUP,
}
JOB_SELECTOR = f"{names.LABEL_POLICY},{names.LABEL_COMPONENT}={names.COMPONENT_BACKUP}"
TRANSIENT_DELAY = 5.0
PERSISTENT_DELAY = 60.0
RECORD_ATTEMPTS = 5
#: A deleted policy keeps its finalizer until a monitor tick that is still running ends;
#: kopf looks again after this many seconds (its default, 60, made deletes that met a
#: tick hang for a minute).
TIMER_EXIT_POLL = 1.0


def _retry_later(exc: ApiError) -> kopf.TemporaryError:
    return kopf.TemporaryError(
        f"API error: {exc}", delay=TRANSIENT_DELAY if exc.transient else PERSISTENT_DELAY
    )


def _spread(interval: float) -> Callable[..., float]:
    """First tick of a policy's timer at a stable offset within the interval, so a
    thousand policies do not all read their repositories in the same second."""

    def delay(*, body: Any, **_: Any) -> float:
        uid = str((body.get("metadata") or {}).get("uid", ""))
        return (zlib.crc32(uid.encode()) % 1000) / 1000 * min(interval, 60.0)

    return delay


def _run_now_pending(body: kopf.Body, **_: Any) -> bool:
    return runnow.pending_token(body) is not None


def _job_to_record(body: kopf.Body, **_: Any) -> bool:
    return jobs.finished(body) and not jobs.recorded(body)


def register(registry: kopf.OperatorRegistry, ctx: Context) -> None:
    """Add every BackupPolicy handler to `registry`."""
    interval = ctx.settings.freshness_interval

    @kopf.on.login(id="login", registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)

    @kopf.on.create(*POLICY, id="reconcile", registry=registry)
    def reconcile_new(body: kopf.Body, retry: int, **_: Any) -> None:
        try:
            reconcile.reconcile(ctx, body, prune=retry > 0)
        except ApiError as exc:
            raise _retry_later(exc) from None

    @kopf.on.resume(*POLICY, id="resume", registry=registry)
    def reconcile_existing(body: kopf.Body, **_: Any) -> None:
        try:
            reconcile.reconcile(ctx, body)
        except ApiError as exc:
            raise _retry_later(exc) from None

    @kopf.on.update(*POLICY, id="reconcile-spec", field="spec", registry=registry)
    def reconcile_spec(body: kopf.Body, **_: Any) -> None:
        try:
            reconcile.reconcile(ctx, body)
        except ApiError as exc:
            raise _retry_later(exc) from None

    # The `when` filters run in kopf's event loop: most watch events (status writes)
    # never cost a worker thread.
    @kopf.on.event(*POLICY, id="run-now", registry=registry,
                   annotations={names.ANNOTATION_RUN_NOW: kopf.PRESENT}, when=_run_now_pending)
    def policy_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        if type == "DELETED":
            return
        try:
            runnow.handle(ctx, body)
        except ApiError as exc:  # the monitor retries on its next tick
            log.warning("run-now of %s/%s failed, will retry: %s",
                        body.metadata.namespace, body.metadata.name, exc)

    @kopf.timer(*POLICY, id="monitor", interval=interval, initial_delay=_spread(interval),
                registry=registry)
    def monitor(body: kopf.Body, **_: Any) -> None:
        try:
            if reconcile.needs_recheck(body):
                reconcile.reconcile(ctx, body)
            if runnow.pending_token(body) is not None:
                runnow.handle(ctx, body)
            freshness.tick(ctx, body)
        except ApiError as exc:
            raise _retry_later(exc) from None

    @kopf.on.delete(*POLICY, id="forget", optional=True, registry=registry)
    def forget_policy(body: kopf.Body, **_: Any) -> None:
        ctx.metrics.forget(body.metadata.namespace or "", body.metadata.name or "")

    @kopf.on.event(*JOBS, id="record-job", labels=JOB_LABELS, when=_job_to_record,
                   registry=registry)
    def job_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        if type == "DELETED":
            return
        # Watch-event handlers are not retried by kopf and a finished Job sends no more
        # events: retry here, briefly (the catalog monitor sees the backup anyway).
        for attempt in range(RECORD_ATTEMPTS):
            try:
                jobs.record(ctx, body)
                return
            except ApiError as exc:
                if attempt == RECORD_ATTEMPTS - 1:
                    log.error("could not record Job %s/%s: %s",
                              body.metadata.namespace, body.metadata.name, exc)
                    return
                time.sleep(min(2.0**attempt, 8.0))


def configure(settings: kopf.OperatorSettings, ctx: Context) -> None:
    """kopf settings this operator relies on."""
    prefix = GROUP
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=prefix, v1=False
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=prefix, key="last-handled-configuration", v1=False
    )
    settings.persistence.finalizer = f"{prefix}/finalizer"
    settings.watching.server_timeout = max(1, round(ctx.settings.watch_timeout))  # whole seconds
    settings.watching.client_timeout = ctx.settings.watch_timeout + 15
    settings.watching.connect_timeout = 10
    settings.watching.label_selectors[JOBS] = JOB_SELECTOR
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "tonebridge-dr"
    settings.posting.event_name_prefix = "tonebridge-dr-"
    settings.execution.max_workers = ctx.settings.workers
    settings.background.cancellation_polling = TIMER_EXIT_POLL
    settings.networking.request_timeout = 60
