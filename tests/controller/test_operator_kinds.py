"""The kind skeleton without a cluster: the retry policy, the one Secret check, Reason-only
reasons, invalid specs refused once, FailoverPlan reconciled to NotImplemented, and the
one Job watch routed by component. A small fake of our own
`Kube` interface stands in for the API server (status writes, Events, Secrets)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from typing import Any

import kopf
import pytest
import yaml

from tests.fixtures import EXAMPLES
from tonebridge_dr.api.conditions import Reason
from tonebridge_dr.api.failoverplan import FailoverPlanStatus
from tonebridge_dr.controller import main
from tonebridge_dr.controller.core import registration, secrets
from tonebridge_dr.controller.core.context import Context
from tonebridge_dr.controller.core.kind import (
    Cause,
    Controller,
    RetryPolicy,
    Trigger,
    not_implemented,
)
from tonebridge_dr.controller.core.kube import ApiError
from tonebridge_dr.controller.core.metrics import Metrics
from tonebridge_dr.controller.core.settings import Settings
from tonebridge_dr.controller.failoverplan import handlers as failoverplan
from tonebridge_dr.controller.restoretest import handlers as restoretest
from tonebridge_dr.status import readiness

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
Json = dict[str, Any]


class FakeKube:
    """The parts of controller.core.kube.Kube the skeleton uses, in memory."""

    def __init__(self, secret_values: dict[str, dict[str, str]] | None = None) -> None:
        self.secrets = secret_values or {}
        self.events: list[tuple[str, str, str]] = []
        self.status_writes = 0
        self.written: Json | None = None

    def secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        return self.secrets.get(name)

    def post_event(self, involved: Json, *, type: str, reason: str, message: str) -> None:
        self.events.append((type, reason, message))

    def write_status(self, kind: Any, namespace: str, name: str,
                     compute: Callable[[Json], Json | None], *, body: Json | None = None,
                     attempts: int = 8) -> Json | None:
        assert body is not None
        status = compute(body)
        if status is None:
            return body
        self.status_writes += 1
        self.written = {**body, "status": status}
        return self.written


def _context(kube: FakeKube) -> Context:
    return Context(settings=Settings(), kube=kube, metrics=Metrics(),  # type: ignore[arg-type]
                   clock=lambda: NOW)


def _example(path: str, generation: int = 3) -> Json:
    (body,) = [d for d in yaml.safe_load_all((EXAMPLES / path).read_text()) if d]
    body["metadata"].update(namespace="ns", uid="u-1", generation=generation)
    return dict(body)


# --- retry policy -------------------------------------------------------------------------------
def test_retry_policy_delays() -> None:
    policy = RetryPolicy()
    unreachable, busy = ApiError(0, "Unavailable", "x"), ApiError(503, "ServiceUnavailable", "x")
    forbidden = ApiError(403, "Forbidden", "no")
    assert [policy.delay(unreachable, retry) for retry in range(6)] == [5, 10, 20, 40, 60, 60]
    assert policy.delay(busy, 10_000) == 60
    assert policy.delay(forbidden, 0) == policy.persistent_delay == 60
    later = policy.later(forbidden)
    assert isinstance(later, kopf.TemporaryError) and later.delay == 60


def test_watch_events_retry_transient_trouble_only() -> None:
    policy = RetryPolicy(event_attempts=3, event_max_sleep=0)
    calls: list[int] = []

    def flaky() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise ApiError(409, "Conflict", "busy")

    policy.run_event(flaky, "a Job")
    assert len(calls) == 3
    refused: list[int] = []

    def forbidden() -> None:
        refused.append(1)
        raise ApiError(403, "Forbidden", "no")

    policy.run_event(forbidden, "a Job")  # logged, not raised, not retried
    assert len(refused) == 1


# --- the one Secret check -----------------------------------------------------------------------
def test_secret_check_looks_at_existence_and_keys() -> None:
    kube = FakeKube({"dsn": {"dsn": "x"}, "creds": {"AWS_ACCESS_KEY_ID": "a"}})
    uses = [
        secrets.SecretUse("dsn", ("dsn",), "database DSN"),
        secrets.SecretUse("creds", secrets.REPOSITORY_KEYS, "repository credentials"),
        secrets.SecretUse("hook", ("url",), "webhook URL", blocking=False),
        secrets.SecretUse("hook", ("other",), "escalation webhook URL"),
        secrets.SecretUse("dsn", ("hook",), "webhook URL", blocking=False),
    ]
    problems = secrets.check(kube, "ns", uses)  # type: ignore[arg-type]
    assert [(p.use.name, p.missing_keys, p.blocking) for p in problems] == [
        ("creds", ("AWS_SECRET_ACCESS_KEY",), True),
        ("hook", (), True),  # missing once; blocking because one use blocks
        ("dsn", ("hook",), False),
    ]
    assert [p.reason for p in problems] == [
        Reason.SECRET_KEY_NOT_FOUND, Reason.SECRET_NOT_FOUND, Reason.SECRET_KEY_NOT_FOUND,
    ]
    assert secrets.describe(problems) == (
        'Secret "creds" (repository credentials) has no key "AWS_SECRET_ACCESS_KEY"; '
        'Secret "hook" (webhook URL) not found; Secret "dsn" (webhook URL) has no key "hook"'
    )
    assert secrets.check(kube, "ns", uses[:1]) == []  # type: ignore[arg-type]


# --- Reason only, invalid specs, not-implemented kinds ------------------------------------------
def test_events_and_refusals_take_reason_members_only() -> None:
    controller = Controller(_context(FakeKube()), failoverplan.KIND)
    body = _example("04-failover/failoverplan-database.yaml")
    with pytest.raises(TypeError):
        controller.event(body, "NotImplemented", "m", warning=True)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        controller.refuse(body, "InvalidSpec", "m")  # type: ignore[arg-type]


#: What a kind this version accepts but does not act on says (the skeleton's
#: `not_implemented`; no kind ships that way now, the skeleton keeps the way to).
NOT_YET = "FailoverPlan is accepted and validated, but this build does not run it yet"


@pytest.mark.parametrize(
    ("declaration", "example", "message"),
    [
        (dataclasses.replace(failoverplan.KIND, reconcile=not_implemented(NOT_YET)),
         "04-failover/failoverplan-region.yaml", NOT_YET),
    ],
)
def test_accepted_kinds_say_they_are_not_implemented(
    declaration: Any, example: str, message: str
) -> None:
    kube = FakeKube()
    controller = Controller(_context(kube), declaration)
    body = _example(example)
    assert controller.reconcile(body, Cause(Trigger.CREATE)) is None
    assert kube.status_writes == 1 and kube.written is not None
    assert kube.events == [("Warning", "NotImplemented", message)]
    status = controller.status_of(kube.written)
    (ready,) = status.conditions or []
    assert (ready.type, ready.status.value, ready.reason) == ("Ready", "False", "NotImplemented")
    assert ready.observed_generation == status.observed_generation == 3
    assert "accepted and validated" in message and "yet" in message


def test_reconciling_again_writes_and_posts_nothing_new() -> None:
    kube = FakeKube()
    controller = Controller(_context(kube), failoverplan.KIND)
    body = _example("04-failover/failoverplan-database.yaml")
    first = controller.refuse(body, Reason.NOT_IMPLEMENTED, NOT_YET)
    assert first is not None
    controller.refuse(first, Reason.NOT_IMPLEMENTED, NOT_YET)
    assert kube.status_writes == 1 and len(kube.events) == 1


def test_an_invalid_spec_is_refused_once_and_not_retried() -> None:
    kube = FakeKube()
    controller = Controller(_context(kube), restoretest.KIND)
    body = _example("05-restore-test/restoretest.yaml")
    body["spec"]["checks"][0]["expect"] = {"min": 1, "unknownField": True}
    assert controller.reconcile(body, Cause(Trigger.CREATE)) is None  # no retry
    ((kind, reason, message),) = kube.events
    assert (kind, reason) == ("Warning", "InvalidSpec") and "unknownField" in message
    assert controller.reconcile({**body, "metadata": {**body["metadata"],
                                                       "deletionTimestamp": "x"}},
                                Cause(Trigger.RESUME)) is None
    assert len(kube.events) == 1


def test_not_ready_keeps_the_transition_time() -> None:
    first = readiness.not_ready(None, model=FailoverPlanStatus, reason="A", message="m",
                                generation=1, now=NOW)
    later = NOW + dt.timedelta(hours=1)
    again = readiness.not_ready(first, model=FailoverPlanStatus, reason="B", message="n",
                                generation=2, now=later)
    (ready,) = again.conditions or []
    assert ready.last_transition_time == NOW and ready.reason == "B"
    assert again.observed_generation == 2


# --- one Job watch ------------------------------------------------------------------------------
def test_one_job_watch_for_every_kind_in_any_order() -> None:
    expected = ("app.kubernetes.io/managed-by=tonebridge-dr,"
                "app.kubernetes.io/component in (backup,restore,restore-test)")
    assert registration.job_selector(main.KINDS) == expected
    assert registration.job_selector(tuple(reversed(main.KINDS))) == expected
    assert registration.job_selector([failoverplan.KIND]) is None
    ctx = _context(FakeKube())
    settings = kopf.OperatorSettings()
    registration.configure(settings, ctx, main.KINDS)
    assert settings.watching.label_selectors.collect(
        kopf.Resource("batch", "v1", "jobs")
    ) == [expected]


def test_two_kinds_cannot_own_one_job_component() -> None:
    ctx = _context(FakeKube())
    twin = dataclasses.replace(failoverplan.KIND, jobs=main.KINDS[0].jobs)
    with pytest.raises(ValueError, match="component 'backup'"):
        registration.register(kopf.OperatorRegistry(), ctx, [main.KINDS[0], twin])
