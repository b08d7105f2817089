"""Pure FailoverPlan status transitions: rise/fall hysteresis, a run's stages and steps,
reset, and escalation levels."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from tonebridge_dr.api.common import EscalationLevel
from tonebridge_dr.api.failoverplan import (
    FailoverPhase,
    FailoverPlanSpec,
    FailoverPlanStatus,
    HealthState,
    HealthStatus,
    StageState,
    StepRunState,
)
from tonebridge_dr.status import conditions
from tonebridge_dr.status import failoverplan as fp

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)


def _at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def _spec(**extra: Any) -> FailoverPlanSpec:
    return FailoverPlanSpec.model_validate({
        "mode": "automatic",
        "trigger": {"healthCheck": {"kind": "tcp", "target": "127.0.0.1:5432",
                                    "intervalSeconds": 1, "rise": 2, "fall": 3}},
        "stages": [
            {"name": "database", "priority": 1, "rto": "10s",
             "steps": [{"wait": {"duration": "1s"}},
                       {"name": "probe", "wait": {"duration": "1s"}}]},
            {"name": "api", "priority": 2, "rto": "30s", "steps": [{"wait": {"duration": "1s"}}]},
        ],
        **extra,
    })


def _probes(results: list[bool], rise: int = 2, fall: int = 3,
            start: HealthStatus | None = None) -> list[HealthStatus]:
    health, seen = start, []
    for index, ok in enumerate(results):
        health = fp.observe_probe(health, ok=ok, message="ok" if ok else "refused",
                                  now=_at(index), rise=rise, fall=fall)
        seen.append(health)
    return seen


# --- hysteresis ------------------------------------------------------------------------
def test_rise_successes_make_the_target_up_and_fall_failures_down() -> None:
    seen = _probes([True, True, False, False, False])
    assert [h.state for h in seen] == [
        HealthState.UNKNOWN, HealthState.UP, HealthState.UP, HealthState.UP, HealthState.DOWN,
    ]
    assert seen[-1].healthy is False and seen[-1].consecutive_failures == 3
    assert seen[-1].last_error == "refused" and seen[-1].last_transition_time == _at(4)
    assert seen[1].last_transition_time == _at(1)


def test_a_flapping_target_never_goes_down() -> None:
    """Down for fewer than `fall` probes, then up again: the count starts over."""
    seen = _probes([True, True, False, False, True, False, False, True, False, False])
    assert all(h.state == HealthState.UP for h in seen[1:])
    assert max(h.consecutive_failures or 0 for h in seen) == 2


def test_down_needs_rise_successes_in_a_row_to_be_up_again() -> None:
    seen = _probes([False, False, False, True, False, True, True])
    assert [h.state for h in seen] == [HealthState.UNKNOWN] * 2 + [HealthState.DOWN] * 4 + [
        HealthState.UP]


def test_hysteresis_continues_from_a_stored_status() -> None:
    """An operator restart reads the counts back from status: the third failure after
    two before the restart declares the target down."""
    before = _probes([True, True, False, False])
    stored = HealthStatus.model_validate(before[-1].model_dump(mode="json"))
    (after,) = _probes([False], start=stored)
    assert after.state == HealthState.DOWN and after.consecutive_failures == 3


def test_transitions_are_reported_once() -> None:
    seen = _probes([True, True, True, False, False, False, False])
    previous: list[HealthStatus | None] = [None, *seen[:-1]]
    changes = [fp.health_transition(old, new) for old, new in zip(previous, seen, strict=True)]
    assert changes == [None, HealthState.UP, None, None, None, HealthState.DOWN, None]


def test_healthy_condition_follows_the_state() -> None:
    status = FailoverPlanStatus(health=_probes([False, False, False])[-1])
    cond = conditions.get_condition(
        fp.healthy_condition(status, generation=2, now=T0).conditions, "Healthy")
    assert cond is not None and (cond.status.value, cond.reason) == ("False",
                                                                     "HealthCheckFailing")


# --- runs ------------------------------------------------------------------------------
def _succeed(status: FailoverPlanStatus, now: dt.datetime, **memo: Any) -> FailoverPlanStatus:
    at = fp.position(status)
    assert at is not None
    return fp.record_step(status, at, state=StepRunState.SUCCEEDED, message="done",
                          memo=memo or None, diff=None, now=now, generation=1)


def test_a_run_goes_through_stages_in_order_and_measures_them_against_rto() -> None:
    spec = _spec()
    status = fp.start_run(None, spec, drill=False, now=T0, triggered_by="test", token=None)
    assert status.phase == FailoverPhase.RUNNING and fp.position(status) == (0, 0)
    assert [s.steps[0].name for s in status.stages or [] if s.steps] == ["wait-1", "wait-1"]
    running = fp.record_step(status, (0, 0), state=StepRunState.RUNNING, message="waiting",
                             memo={"until": "x"}, diff=None, now=_at(0.5), generation=1)
    assert fp.position(running) == (0, 0)
    assert (running.stages or [])[0].steps[0].memo == {"until": "x"}  # type: ignore[index]
    status = _succeed(running, _at(1))
    assert fp.position(status) == (0, 1)
    status = _succeed(status, _at(4))
    database, api = status.stages or []
    assert database.state == StageState.SUCCEEDED and database.elapsed_seconds == 4.0
    assert database.rto_met is True and database.rto_seconds == 10
    assert api.state == StageState.RUNNING and status.current_stage == "api"
    status = _succeed(status, _at(40))
    assert status.phase == FailoverPhase.SUCCEEDED and status.completed_at == _at(40)
    assert (status.stages or [])[1].rto_met is False and status.elapsed == "40s"
    rto = conditions.get_condition(status.conditions, "RTOMet")
    assert rto is not None and rto.status.value == "False" and "api" in rto.message
    assert fp.position(status) is None


def test_a_failed_step_fails_its_stage_and_skips_everything_after_it() -> None:
    status = fp.start_run(None, _spec(), drill=False, now=T0, triggered_by="t", token=None)
    status = fp.record_step(status, (0, 0), state=StepRunState.FAILED, message="refused",
                            memo=None, diff=None, now=_at(2), generation=1)
    database, api = status.stages or []
    assert status.phase == FailoverPhase.FAILED
    assert database.state == StageState.FAILED and "wait-1 failed: refused" in (
        database.message or "")
    assert [s.state for s in database.steps or []] == [StepRunState.FAILED,
                                                       StepRunState.SKIPPED]
    assert api.state == StageState.SKIPPED and api.started_at is None
    assert fp.position(status) is None


@pytest.mark.parametrize(("ok", "phase"), [(True, FailoverPhase.DRILL_SUCCEEDED),
                                           (False, FailoverPhase.DRILL_FAILED)])
def test_drills_end_in_their_own_phases(ok: bool, phase: FailoverPhase) -> None:
    status = fp.start_run(None, _spec(), drill=True, now=T0, triggered_by="t", token="d1")
    assert status.run_mode == "drill" and status.run_token == "d1"
    state = StepRunState.SUCCEEDED if ok else StepRunState.FAILED
    while fp.position(status) is not None:
        at = fp.position(status)
        assert at is not None
        status = fp.record_step(status, at, state=state, message="m", memo=None,
                                diff={"x": 1}, now=_at(1), generation=1)
    assert status.phase == phase
    assert fp.open_problem(status) is None  # drills escalate nothing


def test_reset_returns_to_watching_and_keeps_the_last_run() -> None:
    spec = _spec()
    status = fp.start_run(None, spec, drill=False, now=T0, triggered_by="t", token=None)
    while fp.position(status) is not None:
        status = _succeed(status, _at(1))
    again = fp.reset(status, spec, token="r1", now=_at(9))
    assert again.phase == FailoverPhase.MONITORING and again.reset_token == "r1"
    assert again.stages == status.stages


# --- escalation ------------------------------------------------------------------------
def _levels() -> list[EscalationLevel]:
    return [EscalationLevel.model_validate(x) for x in (
        {"level": 2, "after": "30s", "contacts": ["manager@example.com"]},
        {"level": 1, "after": "0s", "contacts": ["lead@example.com"]},
    )]


def test_escalation_levels_fire_once_each_after_their_delay() -> None:
    status = FailoverPlanStatus(health=_probes([False, False, False])[-1])
    problem = fp.open_problem(status)
    assert problem == "the target is down"
    opened = fp.escalate(status, problem=problem, notified=(), now=T0)
    assert opened.escalation is not None
    due = fp.due_levels(opened.escalation, _levels(), _at(1))
    assert [lv.level for lv in due] == [1]
    told = fp.escalate(opened, problem=problem, notified=[1], now=_at(1))
    assert told.escalation is not None and told.escalation.opened_at == T0
    # opened_at is stored with whole seconds: the problem may have opened up to 1 s
    # after it, so level 2 (30s) is due at 31 s, never early
    assert fp.due_levels(told.escalation, _levels(), _at(30)) == []
    assert [lv.level for lv in fp.due_levels(told.escalation, _levels(), _at(31))] == [2]
    closed = fp.escalate(told, problem=None, notified=(), now=_at(32))
    assert closed.escalation is None


def test_open_problems() -> None:
    spec = _spec()
    running = fp.start_run(None, spec, drill=False, now=T0, triggered_by="t", token=None)
    assert fp.open_problem(running) == "failover running (stage database)"
    failed = fp.record_step(running, (0, 0), state=StepRunState.FAILED, message="x",
                            memo=None, diff=None, now=_at(1), generation=1)
    assert fp.open_problem(failed) == "failover failed"
    assert fp.open_problem(FailoverPlanStatus(health=_probes([True, True])[-1])) is None


def test_elapsed_text() -> None:
    assert [fp.elapsed_text(s) for s in (0, 59.9, 61, 3723)] == ["0s", "59s", "1m1s",
                                                                  "1h2m3s"]
