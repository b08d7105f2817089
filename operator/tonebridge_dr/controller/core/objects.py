"""What the controllers of every kind do with their objects the same way: plain copies of
kopf bodies, identity and ownership, parsing with readable validation errors, Events, and
the typed status compare-and-set on top of `Kube.write_status`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import pydantic

from tonebridge_dr.api.kinds import plain_value
from tonebridge_dr.controller.core import kube
from tonebridge_dr.controller.core.context import Context
from tonebridge_dr.controller.core.kube import Kind

log = logging.getLogger(__name__)

Json = dict[str, Any]
StatusT = TypeVar("StatusT", bound=pydantic.BaseModel)
ModelT = TypeVar("ModelT", bound=pydantic.BaseModel)


class InvalidSpec(ValueError):
    """The body does not parse into its kind's model (what the schema could not catch);
    the message is one readable sentence (field: problem)."""


def plain(body: Mapping[str, Any]) -> Json:
    """A kopf body (read-only views) as plain dicts and lists."""
    return {key: plain_value(value) for key, value in body.items()}


def ident(body: Mapping[str, Any]) -> tuple[str, str]:
    """(namespace, name) of an object."""
    metadata = body.get("metadata") or {}
    return str(metadata.get("namespace") or ""), str(metadata.get("name") or "")


def generation(body: Mapping[str, Any]) -> int | None:
    value = (body.get("metadata") or {}).get("generation")
    return value if isinstance(value, int) else None


def owned_by(obj: Mapping[str, Any], uid: str | None) -> bool:
    """Whether one of `obj`'s owner references is the object with `uid`."""
    owners = (obj.get("metadata") or {}).get("ownerReferences") or []
    return bool(uid) and any(owner.get("uid") == uid for owner in owners)


def owner(obj: Mapping[str, Any], kind: Kind) -> tuple[str, str] | None:
    """(name, uid) of `obj`'s owner of `kind`, or None."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == kind.kind and ref.get("apiVersion") == kind.api_version:
            return str(ref.get("name")), str(ref.get("uid"))
    return None


def parse(model: type[ModelT], body: Mapping[str, Any]) -> ModelT:
    """`body` as `model` (a whole-object model with `from_body` or any pydantic model);
    InvalidSpec with one readable sentence."""
    try:
        return model.model_validate(plain_value(body))
    except pydantic.ValidationError as exc:
        raise InvalidSpec(validation_message(exc)) from None


def read(
    ctx: Context, kind: Kind, model: type[ModelT], namespace: str, name: str
) -> ModelT | None:
    """The object `namespace/name` of `kind` as `model`; None when it does not exist;
    InvalidSpec when it does not parse. Raises kube.ApiError on API trouble."""
    body = ctx.kube.get_or_none(kind, namespace, name)
    return parse(model, body) if body is not None else None


def validation_message(exc: pydantic.ValidationError) -> str:
    """The first three problems, one readable sentence (field: problem; ...)."""
    problems = []
    for error in exc.errors()[:3]:
        where = ".".join(str(part) for part in error.get("loc", ()))
        problems.append(f"{where}: {error.get('msg', 'invalid')}" if where else error["msg"])
    return "; ".join(problems)


def event(
    ctx: Context, kind: Kind, body: Mapping[str, Any], *, warning: bool, reason: str,
    message: str,
) -> None:
    """Post an Event about the object `body` (of `kind`)."""
    metadata = body.get("metadata") or {}
    ctx.kube.post_event(
        {
            "apiVersion": kind.api_version,
            "kind": kind.kind,
            "metadata": {
                "name": metadata.get("name"),
                "namespace": metadata.get("namespace"),
                "uid": metadata.get("uid"),
            },
        },
        type="Warning" if warning else "Normal",
        reason=reason,
        message=message,
    )


def status_of(body: Mapping[str, Any], model: type[StatusT]) -> StatusT | None:
    """The object's status as `model`; None when there is none or it does not parse."""
    raw = body.get("status")
    if not raw:
        return None
    try:
        return model.model_validate(plain_value(raw))
    except pydantic.ValidationError:
        log.warning("ignoring an unreadable status of %s/%s", *ident(body))
        return None


def _dump(status: pydantic.BaseModel | None) -> Json:
    return status.model_dump(mode="json", exclude_none=True) if status is not None else {}


def update_status(
    ctx: Context,
    kind: Kind,
    model: type[StatusT],
    namespace: str,
    name: str,
    mutate: Callable[[Json, StatusT | None], StatusT | None],
    *,
    body: Mapping[str, Any] | None = None,
    significant: Callable[[Json, Json], bool] | None = None,
) -> Json | None:
    """Read-modify-write of the status with the resourceVersion as precondition.

    `mutate(body, status)` returns the new status (None: leave it). It may run several
    times: on a conflict the object is read again and `mutate` sees the newer status.
    Nothing is written when the result equals the stored status (or when
    `significant(old, new)` says the difference does not matter). kopf's own
    `status.kopf` is kept as it is. Returns the body that is current after the call, or
    None when the object is gone. `body` saves the first read.
    """

    def compute(current: Json) -> Json | None:
        old = status_of(current, model)
        new = mutate(current, old)
        if new is None:
            return None
        old_dump, new_dump = _dump(old), _dump(new)
        if new_dump == old_dump:
            return None
        if significant is not None and not significant(old_dump, new_dump):
            return None
        kopf_state = (current.get("status") or {}).get("kopf")
        if kopf_state is not None:
            new_dump["kopf"] = kopf_state
        return new_dump

    first = plain(body) if body is not None else None
    return ctx.kube.write_status(kind, namespace, name, compute, body=first)


def service_account_missing(ctx: Context, namespace: str, account: str) -> bool:
    """Whether the ServiceAccount a Job runs as is known to be missing (without it the Job
    controller cannot create the pod and the run would look stuck). An operator not
    allowed to read ServiceAccounts skips the check. Raises kube.ApiError on other API
    trouble."""
    try:
        return ctx.kube.get_or_none(kube.SERVICE_ACCOUNT, namespace, account) is None
    except kube.ApiError as exc:
        if exc.status == 403:
            return False
        raise
