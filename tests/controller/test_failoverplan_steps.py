"""FailoverPlan step plumbing that needs no server: the registry (a missing executor
module fails its step with a sentence), the wait step (resumable from its start time),
the restore step's child names."""

from __future__ import annotations

import datetime as dt
from typing import Any

from tonebridge_dr.api.failoverplan import Step, StepKind
from tonebridge_dr.controller.failoverplan.steps import StepContext, StepState, registry
from tonebridge_dr.controller.failoverplan.steps.restore import child_name
from tonebridge_dr.controller.failoverplan.steps.wait import WaitExecutor

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)


def _ctx(now: dt.datetime, started: dt.datetime = T0, **extra: Any) -> StepContext:
    return StepContext(
        kube=None,  # type: ignore[arg-type]  # these steps never call the API
        namespace="ns", plan_name="plan", plan_uid="uid", stage="db", step_name="wait-1",
        drill=False, now=now, started_at=started, deadline=None,
        secret_value=lambda _name, _key: None, **extra,
    )


def test_every_kind_has_an_executor_entry() -> None:
    assert set(registry.EXECUTORS) == set(StepKind)


def test_the_engine_helpers_own_kinds_load() -> None:
    for kind in (StepKind.PROMOTE_POSTGRES, StepKind.RESTORE_REQUEST, StepKind.WAIT,
                 StepKind.CHECK):
        assert not isinstance(registry.executor_for(kind), registry.Unavailable)


def test_a_missing_executor_module_fails_its_step_with_a_sentence() -> None:
    executor = registry.executor_for(
        StepKind.UPDATE_DNS, {StepKind.UPDATE_DNS: ("no_such_module", "UpdateDnsExecutor")})
    step = Step.model_validate({"updateDNS": {"hostedZoneId": "Z1234567890ABC",
                                              "recordName": "db.example.com",
                                              "values": ["x.example.com"]}})
    progress = executor.advance(step, _ctx(T0), {"kept": 1})
    assert progress.state == StepState.FAILED
    assert progress.message == (
        "step kind updateDNS is not available in this version of tonebridge-dr (module "
        "tonebridge_dr.controller.failoverplan.steps.no_such_module is missing)")
    assert progress.memo == {"kept": 1}


def test_wait_counts_from_the_step_start_across_restarts() -> None:
    step = Step.model_validate({"wait": {"duration": "30s"}})
    first = WaitExecutor().advance(step, _ctx(T0 + dt.timedelta(seconds=10)), {})
    assert first.state == StepState.RUNNING and first.message == "waiting 20s more"
    # a new process (new executor) with the same started_at: no new 30 s
    later = WaitExecutor().advance(step, _ctx(T0 + dt.timedelta(seconds=30)), first.memo)
    assert later.state == StepState.SUCCEEDED
    assert later.memo["until"] == (T0 + dt.timedelta(seconds=30)).isoformat()


def test_child_restore_request_names_fit_63_characters() -> None:
    assert child_name("plan", "cache", "restore-1") == "plan-cache-restore-1"
    assert child_name("plan", "cache", "restore-1", drill=True) == "plan-cache-restore-1-drill"
    # a default step name is its action's (camelCase): still a valid object name
    assert child_name("plan", "cache", "restoreRequest-1") == "plan-cache-restorerequest-1"
    long = child_name("p" * 40, "s" * 30, "restore-1")
    assert len(long) == 63 and long != child_name("p" * 40, "s" * 30, "restore-2")
