"""Kind declarations -> kopf handlers and settings, for every kind at once.

`register(registry, ctx, declarations)` adds, per kind, its create / resume / `spec`
update / delete handlers (each runs `Controller.reconcile` under the retry policy) and
its own `extra` handlers; then ONE handler for the Jobs of every kind, which routes
each Job event to the kind that owns the Job's component label
(`app.kubernetes.io/component`). `configure(settings, ctx, declarations)` sets kopf's
settings, among them the one server-side selector of that Job watch, computed from all
declarations together: the order in which kinds are registered or configured does not
matter.

Registered on an explicit registry, so a process (or a test) can build as many
operators, with as many kinds, as it likes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import kopf

from tonebridge_dr.api.kinds import GROUP, VERSION
from tonebridge_dr.builders import names
from tonebridge_dr.controller.core import objects
from tonebridge_dr.controller.core.context import Context
from tonebridge_dr.controller.core.kind import Cause, Controller, KindDeclaration, Trigger, Wait

log = logging.getLogger(__name__)

JOBS = ("batch", "v1", "jobs")
JOB_HANDLER_ID = "job-event"
#: A deleted object keeps its finalizer until a timer tick that is still running ends;
#: kopf looks again after this many seconds (its default, 60, made deletes that met a
#: tick hang for a minute).
TIMER_EXIT_POLL = 1.0
_TRIGGERS = {"create": Trigger.CREATE, "update": Trigger.UPDATE}


def resource(controller: Controller[Any, Any]) -> tuple[str, str, str]:
    """kopf's (group, version, plural) of the controller's kind."""
    return GROUP, VERSION, controller.declaration.info.plural


def job_selector(declarations: Sequence[KindDeclaration[Any, Any]]) -> str | None:
    """The server-side label selector of the one Job watch: our Jobs of every component
    a kind owns (None: no kind owns Jobs)."""
    components = sorted({d.jobs.component for d in declarations if d.jobs is not None})
    if not components:
        return None
    return (f"{names.LABEL_MANAGED_BY}={names.MANAGED_BY},"
            f"{names.LABEL_COMPONENT} in ({','.join(components)})")


def register(
    registry: kopf.OperatorRegistry,
    ctx: Context,
    declarations: Sequence[KindDeclaration[Any, Any]],
    *,
    login: bool = True,
) -> list[Controller[Any, Any]]:
    """Add the handlers of every kind in `declarations` (and, with `login`, kopf's
    client login) to `registry`; returns the bound controllers."""
    if login:
        @kopf.on.login(id="login", registry=registry)
        def login_handler(**kwargs: Any) -> kopf.ConnectionInfo | None:
            return kopf.login_via_client(**kwargs)

    controllers = [Controller(ctx, declaration) for declaration in declarations]
    routes: dict[str, Controller[Any, Any]] = {}
    for controller in controllers:
        _register_kind(registry, controller)
        route = controller.declaration.jobs
        if route is not None:
            if route.component in routes:
                raise ValueError(f"two kinds own the Jobs of component {route.component!r}")
            routes[route.component] = controller
    if routes:
        _register_jobs(registry, routes)
    return controllers


def _register_kind(registry: kopf.OperatorRegistry, controller: Controller[Any, Any]) -> None:
    declaration = controller.declaration
    ids = declaration.ids
    where = resource(controller)

    # One function for every changing cause: kopf runs a function registered under one
    # id for create AND resume once only (an object created while the operator was down).
    def reconcile(body: kopf.Body, retry: int, reason: str, **_: Any) -> None:
        cause = Cause(_TRIGGERS.get(str(reason), Trigger.RESUME), retry)
        waiting = controller.attempt(lambda: controller.reconcile(body, cause), retry)
        if isinstance(waiting, Wait):
            raise kopf.TemporaryError(waiting.message, delay=waiting.delay)
        if waiting is not None:
            raise kopf.TemporaryError(waiting, delay=controller.retry.pending_delay)

    kopf.on.create(*where, id=ids.create, registry=registry)(reconcile)
    kopf.on.resume(*where, id=ids.resume, registry=registry)(reconcile)
    if ids.update is not None:
        kopf.on.update(*where, id=ids.update, field="spec", registry=registry)(reconcile)
    forget = declaration.forget
    if forget is not None:
        @kopf.on.delete(*where, id=ids.delete, optional=True, registry=registry)
        def deleted(body: kopf.Body, **_: Any) -> None:
            forget(controller, objects.plain(body))

    if declaration.extra is not None:
        declaration.extra(registry, controller)


def _register_jobs(
    registry: kopf.OperatorRegistry, routes: Mapping[str, Controller[Any, Any]]
) -> None:
    def owner_of(job: Mapping[str, Any]) -> Controller[Any, Any] | None:
        labels = (job.get("metadata") or {}).get("labels") or {}
        return routes.get(str(labels.get(names.LABEL_COMPONENT, "")))

    # Runs in kopf's event loop: most Job events never cost a worker thread.
    def wanted(body: kopf.Body, **_: Any) -> bool:
        controller = owner_of(body)
        route = controller.declaration.jobs if controller is not None else None
        return route is not None and route.wanted(body)

    @kopf.on.event(*JOBS, id=JOB_HANDLER_ID, when=wanted, registry=registry)
    def job_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        controller = owner_of(body)
        if controller is None or controller.declaration.jobs is None:
            return
        observe = controller.declaration.jobs.observe
        job = objects.plain(body)
        namespace, name = objects.ident(job)
        controller.retry.run_event(
            lambda: observe(controller, job, type == "DELETED"), f"Job {namespace}/{name}"
        )


def configure(
    settings: kopf.OperatorSettings,
    ctx: Context,
    declarations: Sequence[KindDeclaration[Any, Any]],
) -> None:
    """The kopf settings this operator relies on."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=GROUP, v1=False
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration", v1=False
    )
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.watching.server_timeout = max(1, round(ctx.settings.watch_timeout))  # whole seconds
    settings.watching.client_timeout = ctx.settings.watch_timeout + 15
    settings.watching.connect_timeout = 10
    selector = job_selector(declarations)
    if selector is not None:
        settings.watching.label_selectors[JOBS] = selector
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "tonebridge-dr"
    settings.posting.event_name_prefix = "tonebridge-dr-"
    settings.execution.max_workers = ctx.settings.workers
    settings.background.cancellation_polling = TIMER_EXIT_POLL
    settings.networking.request_timeout = 60
