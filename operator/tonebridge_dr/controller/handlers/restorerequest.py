"""kopf handlers of RestoreRequest and of its restore Jobs (thin glue).

| trigger | handler | does |
|---|---|---|
| request created / operator resumed | `start_restore` | `restores.reconcile` |
| restore Job events | `restore_job_event` | `restores.observe_job` (Job -> status, Events) |

The logic and its contracts live in `tonebridge_dr.controller.restores`.
Registered on an explicit registry (`register`), like the BackupPolicy handlers; call
`configure` after the BackupPolicy handlers' own, so the one Job watch also delivers
restore Jobs (`SHARED_JOB_SELECTOR`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import kopf

from tonebridge_dr.api.kinds import (
    GROUP,
    RESTORE_REQUEST,
    VERSION,
)
from tonebridge_dr.builders import names
from tonebridge_dr.builders import restore as builders
from tonebridge_dr.controller.core.context import Context
from tonebridge_dr.controller.core.kube import ApiError
from tonebridge_dr.controller.core.objects import plain
from tonebridge_dr.controller.restores import observe_job, reconcile

log = logging.getLogger(__name__)

REQUESTS = (GROUP, VERSION, RESTORE_REQUEST.plural)
JOBS = ("batch", "v1", "jobs")
JOB_LABELS: dict[str, Any] = {
    builders.LABEL_RESTORE_REQUEST: kopf.PRESENT,
    names.LABEL_COMPONENT: names.COMPONENT_RESTORE,
}
JOB_SELECTOR = f"{builders.LABEL_RESTORE_REQUEST},{names.LABEL_COMPONENT}={names.COMPONENT_RESTORE}"
"""Server-side selector of restore Jobs alone (a process running only these handlers)."""
PENDING_RETRY = 10.0
TRANSIENT_DELAY = 5.0
PERSISTENT_DELAY = 60.0
OBSERVE_ATTEMPTS = 5


def register(registry: kopf.OperatorRegistry, ctx: Context) -> None:
    """Add the RestoreRequest handlers to `registry` (no login handler: the process's
    other registration, or the caller, provides one)."""

    @kopf.on.resume(*REQUESTS, id="start_restore", registry=registry)
    @kopf.on.create(*REQUESTS, id="start_restore", registry=registry)
    def start_restore(body: kopf.Body, **_: Any) -> None:
        try:
            waiting = reconcile(ctx, body)
        except ApiError as exc:
            raise kopf.TemporaryError(
                f"API error: {exc}", delay=TRANSIENT_DELAY if exc.transient else PERSISTENT_DELAY
            ) from None
        if waiting is not None:
            raise kopf.TemporaryError(waiting, delay=PENDING_RETRY)

    @kopf.on.event(*JOBS, labels=JOB_LABELS, id="restore_job_event", registry=registry)
    def restore_job_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        # Watch-event handlers are not retried by kopf: retry API trouble here, briefly
        # (a resumed operator observes the Job again anyway).
        for attempt in range(OBSERVE_ATTEMPTS):
            try:
                observe_job(ctx, plain(body), deleted=type == "DELETED")
                return
            except ApiError as exc:
                if attempt == OBSERVE_ATTEMPTS - 1 or not exc.transient:
                    log.error("could not record restore Job %s/%s: %s",
                              body.metadata.namespace, body.metadata.name, exc)
                    return
                time.sleep(min(2.0**attempt, 8.0))


SHARED_JOB_SELECTOR = (
    f"{names.LABEL_POLICY},{names.LABEL_COMPONENT} in "
    f"({names.COMPONENT_BACKUP},{names.COMPONENT_RESTORE})"
)
"""One server-side selector for backup and restore Jobs (restore Jobs carry the policy
label too), for a process that runs both kinds of handlers."""


def configure(settings: kopf.OperatorSettings, ctx: Context) -> None:
    """kopf settings the RestoreRequest handlers need, on top of the BackupPolicy ones:
    the one Job watch (kopf watches a resource once) must also deliver restore Jobs."""
    settings.watching.label_selectors[JOBS] = SHARED_JOB_SELECTOR


