"""The kind skeleton: what every kind's controller does the same way, declared once.

A kind is one `KindDeclaration`: its API names and models, its `reconcile`, the pure
status transition of a spec it cannot serve (`refused`), which object events it reacts
to (create and resume always; `spec` updates and deletion when it has handler ids for
them), the Job component it owns with the function that records those Jobs, and any
handlers of its own (`extra`: timers, annotation triggers). `registration.register`
turns declarations into kopf handlers. A `Controller` is one declaration bound to the
operator's Context; it is what a kind's code is handed, with typed `write_status`,
`event` and `refuse` bound to the kind.

One retry policy (`RetryPolicy`) for every kind:
* transient API trouble (unreachable, 409, 429, 5xx): kopf runs the handler again after
  `transient_delay`, doubled on every retry up to `transient_max_delay`;
* a persistent refusal by the API server (403, 404, 422, ...): again after the longer
  `persistent_delay` (RBAC or an admission webhook may be fixed by then);
* a spec the operator cannot serve (it does not parse, or the kind refuses it):
  Ready=False with the reason (`refuse`), and no retry;
* a reconcile that waits for something the operator cannot create (returns why):
  again after `pending_delay`, or after the delay of the `Wait` it returns (e.g. a
  rehydration from an archive tier, checked every few minutes);
* watch events (Jobs, annotations), which kopf never retries: transient trouble is
  retried in place up to `event_attempts` times with back-off; persistent trouble is
  logged and left to the next resume or timer tick.

Reasons: `event` and `refuse` take `Reason` members only (TypeError otherwise):
conditions and Events are API that monitoring reads, spelled in one enum.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

import kopf
import pydantic

from tonebridge_dr.api.conditions import Condition, Reason
from tonebridge_dr.api.kinds import API_VERSION, KindInfo
from tonebridge_dr.controller.core import kube, objects
from tonebridge_dr.controller.core.context import Context
from tonebridge_dr.controller.core.kube import ApiError
from tonebridge_dr.status import conditions, readiness

log = logging.getLogger(__name__)

Json = dict[str, Any]
ModelT = TypeVar("ModelT", bound=pydantic.BaseModel)
StatusT = TypeVar("StatusT", bound=pydantic.BaseModel)
T = TypeVar("T")
_MAX_DOUBLINGS = 10


class Trigger(enum.StrEnum):
    """What made the skeleton reconcile an object."""

    CREATE = "create"
    RESUME = "resume"
    UPDATE = "update"
    TIMER = "timer"


@dataclasses.dataclass(frozen=True)
class Cause:
    trigger: Trigger
    retry: int = 0
    """How many times kopf retried this handler so far (0: the first run)."""


@dataclasses.dataclass(frozen=True)
class Wait:
    """What a reconcile returns to wait longer (or shorter) than `pending_delay`."""

    message: str
    delay: float

    def __str__(self) -> str:
        return self.message


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """When a failed handler runs again (see the module docstring)."""

    transient_delay: float = 5.0
    transient_max_delay: float = 60.0
    persistent_delay: float = 60.0
    pending_delay: float = 10.0
    event_attempts: int = 5
    event_max_sleep: float = 8.0

    def delay(self, exc: ApiError, retry: int = 0) -> float:
        if not exc.transient:
            return self.persistent_delay
        doublings = min(max(retry, 0), _MAX_DOUBLINGS)
        return min(self.transient_delay * 2.0**doublings, self.transient_max_delay)

    def later(self, exc: ApiError, retry: int = 0) -> kopf.TemporaryError:
        """kopf's way to run the handler again after `delay`."""
        return kopf.TemporaryError(f"API error: {exc}", delay=self.delay(exc, retry))

    def run_event(self, action: Callable[[], object], what: str) -> None:
        """Run a watch-event action; transient API trouble is retried in place with
        back-off, anything else is logged (the event is not delivered again)."""
        for attempt in range(self.event_attempts):
            try:
                action()
                return
            except ApiError as exc:
                if not exc.transient or attempt == self.event_attempts - 1:
                    log.error("could not handle %s: %s", what, exc)
                    return
                time.sleep(min(2.0**attempt, self.event_max_sleep))


class Refused(Protocol):
    """The pure status transition of a spec a kind cannot serve: Ready=False, `reason`,
    `message` (final or not, as the kind decides)."""

    def __call__(
        self, status: Any, *, reason: str, message: str, generation: int | None,
        now: datetime,
    ) -> Any: ...


@dataclasses.dataclass(frozen=True)
class Refusal:
    """What a kind's pure planning says when an object cannot be served as written:
    the condition's reason and one sentence (final or not, as the kind decides)."""

    reason: Reason
    message: str


@dataclasses.dataclass(frozen=True)
class HandlerIds:
    """kopf handler ids (kopf keeps per-handler progress under them: shipped, so a
    kind keeps its ids across releases). `update` None: the kind ignores spec changes;
    `delete` is used when the kind has a `forget`."""

    create: str = "reconcile"
    resume: str = "resume"
    update: str | None = "reconcile-spec"
    delete: str = "forget"


@dataclasses.dataclass(frozen=True)
class JobRoute:
    """The Jobs a kind owns: those whose component label is `component`."""

    component: str
    observe: Callable[[Controller[Any, Any], Json, bool], None]
    """(controller, plain Job body, deleted): fold the Job into its owner. Idempotent;
    raises kube.ApiError on API trouble."""
    wanted: Callable[[Mapping[str, Any]], bool] = lambda _job: True
    """A cheap filter run in kopf's event loop: events it rejects cost no thread."""


@dataclasses.dataclass(frozen=True)
class KindDeclaration(Generic[ModelT, StatusT]):
    """Everything the skeleton needs to run a kind."""

    info: KindInfo
    model: type[ModelT]
    status_model: type[StatusT]
    reconcile: Callable[[Controller[ModelT, StatusT], ModelT, Json, Cause], str | Wait | None]
    """(controller, parsed object, plain body, cause) -> why it waits (None: done).
    Idempotent; raises kube.ApiError on API trouble."""
    refused: Refused
    ids: HandlerIds = HandlerIds()
    forget: Callable[[Controller[ModelT, StatusT], Json], None] | None = None
    """On deletion (optional: no finalizer just for it)."""
    jobs: JobRoute | None = None
    extra: Callable[[kopf.OperatorRegistry, Controller[ModelT, StatusT]], None] | None = None
    retry: RetryPolicy = RetryPolicy()


def ready_false(model: type[StatusT]) -> Refused:
    """The plain `refused` transition: Ready=False on a status of `model` (everything
    else kept; not final: a fixed spec is reconciled again)."""
    return functools.partial(readiness.not_ready, model=model)


def not_implemented(message: str) -> Callable[..., None]:
    """The `reconcile` of a kind this version accepts and validates but does not act on:
    Ready=False, reason NotImplemented, `message` (the generation counts as observed)."""

    def reconcile(controller: Controller[Any, Any], _obj: Any, body: Json, _cause: Cause) -> None:
        controller.refuse(body, Reason.NOT_IMPLEMENTED, message)

    return reconcile


def api_kind(info: KindInfo) -> kube.Kind:
    """Where one of our kinds lives in the API (registered for `kube.kind_of`)."""
    return kube.register_kind(kube.Kind(API_VERSION, info.kind, info.plural))


def _require_reason(reason: Reason) -> None:
    if not isinstance(reason, Reason):
        raise TypeError(f"reasons are api.conditions.Reason members, got {reason!r}")


def _ready(status: pydantic.BaseModel | None) -> Condition | None:
    return conditions.get_condition(getattr(status, "conditions", None), conditions.READY)


def _news(old: Condition | None, new: Condition | None) -> Condition | None:
    """`new` when it says something `old` did not (status, reason or message)."""
    if new is None:
        return None
    if old is not None and (old.status, old.reason, old.message) == (
        new.status, new.reason, new.message
    ):
        return None
    return new


class Controller(Generic[ModelT, StatusT]):
    """One kind bound to the operator's Context."""

    def __init__(self, ctx: Context, declaration: KindDeclaration[ModelT, StatusT]) -> None:
        self.ctx = ctx
        self.declaration = declaration
        self.kind = api_kind(declaration.info)
        self.retry = declaration.retry

    # --- reading ---------------------------------------------------------------------
    def parse(self, body: Mapping[str, Any]) -> ModelT:
        """The typed object; objects.InvalidSpec with one readable sentence."""
        return objects.parse(self.declaration.model, body)

    def status_of(self, body: Mapping[str, Any]) -> StatusT | None:
        return objects.status_of(body, self.declaration.status_model)

    def get(self, namespace: str, name: str) -> Json | None:
        return self.ctx.kube.get_or_none(self.kind, namespace, name)

    # --- writing ---------------------------------------------------------------------
    def write_status(
        self,
        body: Mapping[str, Any],
        mutate: Callable[[Json, StatusT | None], StatusT | None],
        *,
        significant: Callable[[Json, Json], bool] | None = None,
    ) -> Json | None:
        """`objects.update_status` of the object `body`: the one way a kind's status is
        written (compare-and-set; `mutate` may run more than once)."""
        return objects.update_status(
            self.ctx, self.kind, self.declaration.status_model, *objects.ident(body), mutate,
            body=body, significant=significant,
        )

    def event(self, body: Mapping[str, Any], reason: Reason, message: str, *,
              warning: bool) -> None:
        """Post an Event about the object `body` (best effort)."""
        _require_reason(reason)
        objects.event(self.ctx, self.kind, body, warning=warning, reason=reason.value,
                      message=message)

    def refuse(
        self, body: Mapping[str, Any], reason: Reason, message: str, *,
        transition: Refused | None = None,
    ) -> Json | None:
        """Ready=False with `reason` through the kind's `refused` transition (or
        `transition`); one log line and a Warning Event (with the condition's message)
        only when Ready changes, so a re-check that finds the same problem is quiet.
        Returns the body after the write (None: the object is gone)."""
        _require_reason(reason)
        refused = transition or self.declaration.refused
        now = self.ctx.clock()
        news: list[Condition | None] = [None]

        def mutate(current: Json, status: StatusT | None) -> StatusT:
            new = refused(status, reason=reason.value, message=message,
                          generation=objects.generation(current), now=now)
            news[0] = _news(_ready(status), _ready(new))
            return new  # type: ignore[no-any-return]

        written = self.write_status(body, mutate)
        change = news[0]
        if written is not None and change is not None:
            namespace, name = objects.ident(body)
            log.info("%s %s/%s is not ready: %s: %s", self.declaration.info.kind, namespace,
                     name, reason.value, message)
            self.event(written, reason, change.message, warning=True)
        return written

    # --- the skeleton ----------------------------------------------------------------
    def reconcile(self, body: Mapping[str, Any], cause: Cause) -> str | Wait | None:
        """Parse, then the kind's reconcile; an invalid spec is refused (InvalidSpec) and
        not retried; an object being deleted is left alone. Returns why it waits."""
        if (body.get("metadata") or {}).get("deletionTimestamp"):
            return None
        try:
            parsed = self.parse(body)
        except objects.InvalidSpec as exc:
            self.refuse(body, Reason.INVALID_SPEC, str(exc))
            return None
        return self.declaration.reconcile(self, parsed, objects.plain(body), cause)

    def attempt(self, action: Callable[[], T], retry: int = 0) -> T:
        """Run a handler's `action`; API trouble becomes kopf's TemporaryError (the
        retry policy's delay)."""
        try:
            return action()
        except ApiError as exc:
            raise self.retry.later(exc, retry) from None
