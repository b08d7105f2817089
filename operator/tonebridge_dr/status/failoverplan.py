"""Pure transitions of a FailoverPlan's status: health hysteresis, the run of its stages
and steps, reset, and the escalation of an open problem.

Everything here is (status, observation) -> status, no clock and no I/O: the engine
(controller/failoverplan/) observes, calls one of these, and writes the result with a
compare-and-set. Because the whole state lives in the status, an operator restarted at
any point continues from what was written last.

Health (HAProxy `check inter 2000 rise 2 fall 3`, spec 6.3): the target is Up after
`rise` successful probes in a row and Down after `fall` failed probes in a row; in
between it keeps its state (Unknown until the first verdict). A target that fails fewer
than `fall` probes and then answers again never becomes Down, so a flap never starts a
run.

A run: stages in the order of the spec (already sorted by priority), steps in order;
one step at a time is Running. A failed step fails its stage, the later stages and
steps are Skipped (never started) and the run ends Failed (DrillFailed). A stage's
elapsed time counts from the start of the run (spec 10.1: target times of the whole
recovery) and meets its RTO when it ends within it. A finished real run stays Succeeded
or Failed until `reset`: no automatic fail-back.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from tonebridge_dr.api.common import EscalationLevel
from tonebridge_dr.api.conditions import ConditionType, Reason
from tonebridge_dr.api.failoverplan import (
    EscalationStatus,
    FailoverMode,
    FailoverPhase,
    FailoverPlanSpec,
    FailoverPlanStatus,
    HealthState,
    HealthStatus,
    Stage,
    StageState,
    StageStatus,
    StepRunState,
    StepStatus,
)
from tonebridge_dr.status import conditions

__all__ = [
    "FINISHED_PHASES",
    "Position",
    "due_levels",
    "elapsed_text",
    "escalate",
    "health_transition",
    "healthy_condition",
    "idle_phase",
    "observe_probe",
    "open_problem",
    "position",
    "record_step",
    "refresh_elapsed",
    "reset",
    "start_run",
    "step_names",
]

FINISHED_PHASES = frozenset({
    FailoverPhase.SUCCEEDED, FailoverPhase.FAILED,
    FailoverPhase.DRILL_SUCCEEDED, FailoverPhase.DRILL_FAILED,
})
_DONE_STEP = frozenset({StepRunState.SUCCEEDED, StepRunState.FAILED, StepRunState.SKIPPED})

Position = tuple[int, int]
"""(stage index, step index) of the step to advance."""


# --- health ---------------------------------------------------------------------------
def observe_probe(
    health: HealthStatus | None, *, ok: bool, message: str, now: dt.datetime, rise: int,
    fall: int,
) -> HealthStatus:
    """`health` after one probe (hysteresis: `rise` successes in a row make the target
    Up, `fall` failures in a row make it Down, anything else keeps the state)."""
    current = health or HealthStatus()
    state = current.state or HealthState.UNKNOWN
    successes = (current.consecutive_successes or 0) + 1 if ok else 0
    failures = 0 if ok else (current.consecutive_failures or 0) + 1
    new_state = state
    if ok and successes >= rise:
        new_state = HealthState.UP
    elif not ok and failures >= fall:
        new_state = HealthState.DOWN
    changed = new_state != state
    return HealthStatus(
        state=new_state,
        healthy=None if new_state == HealthState.UNKNOWN else new_state == HealthState.UP,
        consecutive_successes=successes,
        consecutive_failures=failures,
        last_probe_time=now,
        message=message,
        last_error=current.last_error if ok else message,
        last_transition_time=now if changed else current.last_transition_time,
    )


def health_transition(old: HealthStatus | None, new: HealthStatus) -> HealthState | None:
    """The new state when a probe moved the target to Up or Down, else None."""
    before = (old.state if old else None) or HealthState.UNKNOWN
    after = new.state or HealthState.UNKNOWN
    return after if after != before and after != HealthState.UNKNOWN else None


def healthy_condition(
    status: FailoverPlanStatus, *, generation: int | None, now: dt.datetime
) -> FailoverPlanStatus:
    """Healthy from `status.health` (Unknown until the first verdict)."""
    health = status.health or HealthStatus()
    state = health.state or HealthState.UNKNOWN
    value, reason = {
        HealthState.UP: ("True", Reason.HEALTH_CHECK_PASSING),
        HealthState.DOWN: ("False", Reason.HEALTH_CHECK_FAILING),
        HealthState.UNKNOWN: ("Unknown", Reason.HEALTH_UNKNOWN),
    }[state]
    message = health.message or "not probed yet"
    updated = conditions.set_condition(
        status.conditions, type=ConditionType.HEALTHY, status=value,  # type: ignore[arg-type]
        reason=reason.value, message=message, observed_generation=generation, now=now,
    )
    return status.model_copy(update={"conditions": updated})


def idle_phase(spec: FailoverPlanSpec) -> FailoverPhase:
    """Phase of a plan with no run in progress or waiting for a reset."""
    return FailoverPhase.MONITORING if spec.trigger is not None else FailoverPhase.IDLE


# --- runs -----------------------------------------------------------------------------
def step_names(stage: Stage) -> list[str]:
    """Each step's name: its own, or <action>-<position> (1-based)."""
    return [step.name or f"{step.kind.value}-{index + 1}"
            for index, step in enumerate(stage.steps)]


def elapsed_text(seconds: float) -> str:
    """1h2m3s, 4m5s, 6s (whole seconds)."""
    total = max(int(seconds), 0)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def start_run(
    status: FailoverPlanStatus | None, spec: FailoverPlanSpec, *, drill: bool,
    now: dt.datetime, triggered_by: str, token: str | None,
) -> FailoverPlanStatus:
    """A new run: every stage and step Pending, the first stage Running."""
    current = status or FailoverPlanStatus()
    stages = []
    for index, stage in enumerate(spec.stages):
        stages.append(StageStatus(
            name=stage.name,
            state=StageState.RUNNING if index == 0 else StageState.PENDING,
            started_at=now if index == 0 else None,
            rto_seconds=stage.rto.total_seconds(),
            steps=[StepStatus(name=name, kind=step.kind.value, state=StepRunState.PENDING)
                   for name, step in zip(step_names(stage), stage.steps, strict=True)],
        ))
    kept = conditions.remove_condition(current.conditions, ConditionType.RTO_MET)
    return current.model_copy(update={
        "phase": FailoverPhase.RUNNING,
        "run_mode": FailoverMode.DRILL if drill else spec.mode,
        "current_stage": spec.stages[0].name,
        "triggered_at": now,
        "triggered_by": triggered_by,
        "completed_at": None,
        "run_token": token,
        "elapsed": "0s",
        "stages": stages,
        "conditions": kept,
    })


def position(status: FailoverPlanStatus | None) -> Position | None:
    """The step to advance: the first unfinished step of the running stage (None: no run
    in progress)."""
    if status is None or status.phase != FailoverPhase.RUNNING:
        return None
    for stage_index, stage in enumerate(status.stages or ()):
        if stage.state not in (StageState.RUNNING, StageState.PENDING):
            continue
        for step_index, step in enumerate(stage.steps or ()):
            if step.state not in _DONE_STEP:
                return stage_index, step_index
        return None
    return None


#: Seconds of resolution of a time stored in a status (api.base.Time: whole seconds).
STATUS_TIME_RESOLUTION = 1.0


def _seconds(since: dt.datetime | None, now: dt.datetime) -> float:
    return max((now - since).total_seconds(), 0.0) if since is not None else 0.0


def refresh_elapsed(status: FailoverPlanStatus, now: dt.datetime) -> FailoverPlanStatus:
    """`elapsed` of the run and of the running stage brought up to `now`."""
    if status.phase != FailoverPhase.RUNNING:
        return status
    run_elapsed = _seconds(status.triggered_at, now)
    stages = [
        stage.model_copy(update={"elapsed_seconds": round(run_elapsed, 1)})
        if stage.state == StageState.RUNNING else stage
        for stage in status.stages or ()
    ]
    return status.model_copy(update={"elapsed": elapsed_text(run_elapsed), "stages": stages})


def _finish_stage(stage: StageStatus, state: StageState, run_start: dt.datetime | None,
                  now: dt.datetime) -> StageStatus:
    elapsed = round(_seconds(run_start, now), 1)
    met = (state == StageState.SUCCEEDED and stage.rto_seconds is not None
           and elapsed <= stage.rto_seconds)
    return stage.model_copy(update={
        "state": state, "completed_at": now, "elapsed_seconds": elapsed, "rto_met": met,
        "current_step": None,
    })


def _rto_condition(status: FailoverPlanStatus, *, generation: int | None,
                   now: dt.datetime) -> FailoverPlanStatus:
    missed = [s.name for s in status.stages or () if s.rto_met is False]
    if missed:
        value, reason = "False", Reason.STAGE_RTO_MISSED
        message = "stages over their RTO or not finished: " + ", ".join(missed)
    else:
        value, reason = "True", Reason.RTO_MET
        message = "every stage finished within its RTO"
    updated = conditions.set_condition(
        status.conditions, type=ConditionType.RTO_MET, status=value,  # type: ignore[arg-type]
        reason=reason.value, message=message, observed_generation=generation, now=now,
    )
    return status.model_copy(update={"conditions": updated})


def record_step(
    status: FailoverPlanStatus, at: Position, *, state: StepRunState, message: str,
    memo: Mapping[str, Any] | None, diff: Mapping[str, Any] | None, now: dt.datetime,
    generation: int | None,
) -> FailoverPlanStatus:
    """`status` with the step at `at` reported as `state` (Running, Succeeded, Failed):
    a success moves on (next step, next stage, end of the run), a failure ends the run."""
    stage_index, step_index = at
    stages = list(status.stages or ())
    stage = stages[stage_index]
    steps = list(stage.steps or ())
    step = steps[step_index]
    finished = state in (StepRunState.SUCCEEDED, StepRunState.FAILED)
    steps[step_index] = step.model_copy(update={
        "state": state,
        "started_at": step.started_at or now,
        "completed_at": now if finished else None,
        "message": message,
        "memo": dict(memo) if memo else None,
        "diff": dict(diff) if diff else step.diff,
    })
    stage = stage.model_copy(update={
        "steps": steps, "current_step": step.name, "message": message,
        "started_at": stage.started_at or now, "state": StageState.RUNNING,
    })
    drill = status.run_mode == FailoverMode.DRILL
    update: dict[str, Any] = {}
    if state == StepRunState.FAILED:
        stage = _finish_stage(stage, StageState.FAILED, status.triggered_at, now)
        stage = stage.model_copy(update={
            "message": f"step {step.name} failed: {message}",
            "steps": [s.model_copy(update={"state": StepRunState.SKIPPED})
                      if i > step_index else s for i, s in enumerate(steps)],
        })
        stages[stage_index] = stage
        for later in range(stage_index + 1, len(stages)):
            stages[later] = stages[later].model_copy(update={
                "state": StageState.SKIPPED,
                "steps": [s.model_copy(update={"state": StepRunState.SKIPPED})
                          for s in stages[later].steps or ()],
            })
        update = {"phase": FailoverPhase.DRILL_FAILED if drill else FailoverPhase.FAILED,
                  "completed_at": now, "current_stage": stage.name}
    elif state == StepRunState.SUCCEEDED and step_index == len(steps) - 1:
        stages[stage_index] = _finish_stage(stage, StageState.SUCCEEDED, status.triggered_at,
                                            now)
        if stage_index + 1 < len(stages):
            stages[stage_index + 1] = stages[stage_index + 1].model_copy(update={
                "state": StageState.RUNNING, "started_at": now,
            })
            update = {"current_stage": stages[stage_index + 1].name}
        else:
            update = {
                "phase": FailoverPhase.DRILL_SUCCEEDED if drill else FailoverPhase.SUCCEEDED,
                "completed_at": now, "current_stage": None,
            }
    else:
        stages[stage_index] = stage
    new = status.model_copy(update={"stages": stages, **update})
    if new.phase in FINISHED_PHASES:
        new = new.model_copy(update={
            "elapsed": elapsed_text(_seconds(new.triggered_at, now)),
        })
        return _rto_condition(new, generation=generation, now=now)
    return refresh_elapsed(new, now)


def reset(status: FailoverPlanStatus, spec: FailoverPlanSpec, *, token: str,
          now: dt.datetime) -> FailoverPlanStatus:
    """A person's reset of a finished run: the plan watches (and may run) again. The
    last run's stages stay for reference until the next run replaces them."""
    del now
    return status.model_copy(update={
        "phase": idle_phase(spec), "current_stage": None, "reset_token": token,
    })


# --- escalation -----------------------------------------------------------------------
def open_problem(status: FailoverPlanStatus | None) -> str | None:
    """What is open and must be escalated (None: nothing): a real run in progress or
    failed, or the target down. Drills escalate nothing."""
    if status is None:
        return None
    drill = status.run_mode == FailoverMode.DRILL
    if status.phase == FailoverPhase.RUNNING and not drill:
        return f"failover running (stage {status.current_stage})"
    if status.phase == FailoverPhase.FAILED:
        return "failover failed"
    if status.health is not None and status.health.state == HealthState.DOWN:
        return "the target is down"
    return None


def due_levels(
    escalation: EscalationStatus, levels: Sequence[EscalationLevel], now: dt.datetime
) -> list[EscalationLevel]:
    """Levels whose `after` has passed since the problem opened and that were not
    notified yet, lowest first.

    `opened_at` comes back from the API server with whole seconds (api.base.Time): the
    problem may have opened up to a second after it. A level with an `after` is due only
    once `after` has passed even then (never early, at most a second late); `0s` is due
    at once."""
    done = set(escalation.notified_levels or ())
    open_for = _seconds(escalation.opened_at, now)

    def due(level: EscalationLevel) -> bool:
        after = level.after.total_seconds()
        return after <= 0 or after + STATUS_TIME_RESOLUTION <= open_for

    return sorted((lv for lv in levels if lv.level not in done and due(lv)),
                  key=lambda lv: lv.level)


def escalate(
    status: FailoverPlanStatus, *, problem: str | None, notified: Sequence[int],
    now: dt.datetime,
) -> FailoverPlanStatus:
    """Open, extend (levels notified) or close (problem None) the escalation."""
    if problem is None:
        return status.model_copy(update={"escalation": None})
    current = status.escalation or EscalationStatus(opened_at=now, reason=problem)
    levels = sorted(set(current.notified_levels or ()) | set(notified))
    return status.model_copy(update={"escalation": current.model_copy(update={
        "reason": problem, "notified_levels": levels or None,
    })})
