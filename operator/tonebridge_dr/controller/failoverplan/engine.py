"""The FailoverPlan engine: one `tick` per plan every TICK seconds (a kopf timer; with
peering only the active operator ticks). observe -> decide -> act, one sentence of log
per decision, the whole state in `status` (compare-and-set writes), so a restarted
operator continues where the last write left it.

A tick, in order:
1. reset: a new `dr.tonebridge.io/reset` value ends a finished run (the plan watches and
   may run again); refused (Event ResetRefused) while a run is in progress.
2. health: when `intervalSeconds` have passed since the last probe, probe the trigger
   (while a run is in progress: after step 4, so a slow probe never delays a step),
   apply the hysteresis (`status.failoverplan.observe_probe`), write `status.health`
   and Healthy; an Event and a notification on each Up/Down transition only.
3. start: a new `dr.tonebridge.io/failover-now` value starts a run (a drill in mode
   drill), or, in mode automatic, the target being Down does. Never a second run while
   one runs; never after a finished real run until reset (no ping-pong); a failover-now
   while one runs or before a reset is refused with an Event (FailoverNowRefused).
4. advance: call the current step's executor (`steps.registry`), write its progress;
   finished steps let the next one start in the same tick (a tick spends at most
   ADVANCE_BUDGET seconds on steps). A step still running at its `timeout` fails.
5. escalate (`escalation.tick`).

The run's token is written into the status together with the run's start, before the
token is marked handled: a tick that dies in between finds the run already started
with that token and only marks it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from tonebridge_dr.api.common import NotificationEvent
from tonebridge_dr.api.conditions import Reason
from tonebridge_dr.api.failoverplan import (
    FailoverMode,
    FailoverPhase,
    FailoverPlanStatus,
    HealthState,
    StepRunState,
)
from tonebridge_dr.api.kinds import BACKUP_POLICY, BackupPolicy, FailoverPlan
from tonebridge_dr.builders import names
from tonebridge_dr.controller.core import maintenance, objects, runnow
from tonebridge_dr.controller.core.kind import Controller, api_kind
from tonebridge_dr.controller.core.kube import ApiError
from tonebridge_dr.controller.failoverplan import escalation, probes
from tonebridge_dr.controller.failoverplan.steps import StepContext, StepProgress, StepState
from tonebridge_dr.controller.failoverplan.steps import registry as step_registry
from tonebridge_dr.status import failoverplan as plan_status

log = logging.getLogger(__name__)

Json = dict[str, Any]
PlanController = Controller[FailoverPlan, FailoverPlanStatus]
TICK = 0.5
ADVANCE_BUDGET = 2.0
_STEP_STATES = {
    StepState.RUNNING: StepRunState.RUNNING,
    StepState.SUCCEEDED: StepRunState.SUCCEEDED,
    StepState.FAILED: StepRunState.FAILED,
}


def _status(body: Json) -> FailoverPlanStatus | None:
    return objects.status_of(body, FailoverPlanStatus)


def _probe_due(plan: FailoverPlan, status: FailoverPlanStatus | None,
               now: dt.datetime) -> bool:
    trigger = plan.spec.trigger
    if trigger is None:
        return False
    last = status.health.last_probe_time if status and status.health else None
    if last is None:
        return True
    # Times are whole seconds on the wire: the truncation makes a probe come early by
    # less than a second, never late.
    return (now - last).total_seconds() >= trigger.health_check.interval_seconds


def has_work(controller: PlanController, body: Json) -> bool:
    """Whether a tick on (a possibly stale) `body` may have anything to do; cheap, no
    API call. A stale body only makes a tick read the object again."""
    try:
        plan = controller.parse(body)
    except objects.InvalidSpec:
        return False
    status = _status(body)
    now = controller.ctx.clock()
    return bool(
        (status is not None and (status.phase == FailoverPhase.RUNNING
                                 or status.escalation is not None))
        or _probe_due(plan, status, now)
        or runnow.pending_value(body, names.ANNOTATION_FAILOVER_NOW,
                                names.ANNOTATION_FAILOVER_NOW_HANDLED)
        or runnow.pending_value(body, names.ANNOTATION_RESET, names.ANNOTATION_RESET_HANDLED)
        or (_escalates(plan) and plan_status.open_problem(status) is not None)
    )


def _escalates(plan: FailoverPlan) -> bool:
    notifications = plan.spec.notifications
    return bool(notifications is not None and notifications.escalation)


class Engine:
    """Ticks of the plans of one operator (shares the notification outbox)."""

    def __init__(self, controller: PlanController) -> None:
        self.controller = controller
        self.ctx = controller.ctx
        self.outbox = escalation.Outbox(controller.ctx)

    # --- the tick -----------------------------------------------------------------------
    def tick(self, stale: Json) -> None:
        if not has_work(self.controller, stale):
            return
        namespace, name = objects.ident(stale)
        body = self.ctx.kube.get_or_none(self.controller.kind, namespace, name)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            return
        try:
            plan = self.controller.parse(body)
        except objects.InvalidSpec:
            return  # the reconcile refused it (Ready=False, InvalidSpec)
        body = self._reset(plan, body)
        running = self._running(body)
        if not running:  # a probe of a dead target may take timeoutSeconds: steps first
            body = self._health(plan, body)
        body = self._start(plan, body)
        body = self._advance(plan, body)
        if running:
            body = self._health(plan, body)
        escalation.tick(plan, body, self.outbox, self._write)

    @staticmethod
    def _running(body: Json) -> bool:
        status = _status(body)
        return status is not None and status.phase == FailoverPhase.RUNNING

    def _write(self, body: Json, mutate: Callable[[Json, FailoverPlanStatus | None],
                                                  FailoverPlanStatus | None]) -> Json | None:
        return self.controller.write_status(body, mutate)

    def _event(self, body: Json, reason: Reason, message: str, *, warning: bool) -> None:
        self.controller.event(body, reason, message, warning=warning)

    # --- 1. reset ------------------------------------------------------------------------
    def _reset(self, plan: FailoverPlan, body: Json) -> Json:
        token = runnow.pending_value(body, names.ANNOTATION_RESET, names.ANNOTATION_RESET_HANDLED)
        if token is None:
            return body
        status = _status(body)
        namespace, name = objects.ident(body)
        if status is not None and status.phase == FailoverPhase.RUNNING:
            message = f"reset {token!r} refused: a run is in progress"
            self._event(body, Reason.RESET_REFUSED, message, warning=True)
        elif status is not None and status.phase in plan_status.FINISHED_PHASES:
            now = self.ctx.clock()
            written = self._write(body, lambda _b, s: plan_status.reset(
                s or FailoverPlanStatus(), plan.spec, token=token, now=now))
            body = written or body
            message = f"reset {token!r}: the plan watches again (last run: {status.phase})"
            log.info("%s/%s: %s", namespace, name, message)
            self._event(body, Reason.PLAN_RESET, message, warning=False)
        runnow.mark_handled(self.controller, body, names.ANNOTATION_RESET_HANDLED, token)
        return self._reread(body)

    def _reread(self, body: Json) -> Json:
        fresh = self.ctx.kube.get_or_none(self.controller.kind, *objects.ident(body))
        return fresh or body

    # --- 2. health -----------------------------------------------------------------------
    def _health(self, plan: FailoverPlan, body: Json) -> Json:
        trigger = plan.spec.trigger
        if trigger is None or not _probe_due(plan, _status(body), self.ctx.clock()):
            return body
        check = trigger.health_check
        result = probes.probe(check)
        now = self.ctx.clock()
        generation = objects.generation(body)
        change: list[HealthState | None] = [None]

        def mutate(_b: Json, status: FailoverPlanStatus | None) -> FailoverPlanStatus:
            current = status or FailoverPlanStatus(phase=plan_status.idle_phase(plan.spec))
            health = plan_status.observe_probe(
                current.health, ok=result.ok, message=result.message, now=now,
                rise=check.rise, fall=check.fall)
            change[0] = plan_status.health_transition(current.health, health)
            new = current.model_copy(update={"health": health})
            return plan_status.healthy_condition(new, generation=generation, now=now)

        written = self._write(body, mutate) or body
        turned = change[0]
        if turned is not None:
            namespace, name = objects.ident(body)
            down = turned == HealthState.DOWN
            message = (f"target {check.target} is down: {result.message} ({check.fall} "
                       f"failed probes in a row)" if down else
                       f"target {check.target} is up: {result.message}")
            log.info("%s/%s: %s", namespace, name, message)
            self._event(written, Reason.TARGET_DOWN if down else Reason.TARGET_UP, message,
                        warning=down)
            self.outbox.notify(plan, NotificationEvent.TARGET_DOWN if down
                               else NotificationEvent.TARGET_UP,
                               state=turned.value, message=message)
        return written

    # --- 3. start ------------------------------------------------------------------------
    def _start(self, plan: FailoverPlan, body: Json) -> Json:
        status = _status(body)
        phase = status.phase if status else None
        token = runnow.pending_value(body, names.ANNOTATION_FAILOVER_NOW,
                                     names.ANNOTATION_FAILOVER_NOW_HANDLED)
        drill = plan.spec.mode == FailoverMode.DRILL
        if token is not None:
            if status is not None and status.run_token == token:
                pass  # started by a tick that died before marking the token
            elif phase == FailoverPhase.RUNNING:
                self._refuse_now(body, token, "a run is in progress")
            elif phase in (FailoverPhase.SUCCEEDED, FailoverPhase.FAILED) and not drill:
                self._refuse_now(body, token, f"the last failover ended {phase}; annotate "
                                 f"{names.ANNOTATION_RESET}=<token> first")
            else:
                body = self._begin(plan, body, drill=drill, token=token,
                                   why=f"{names.ANNOTATION_FAILOVER_NOW}={token}")
            runnow.mark_handled(self.controller, body, names.ANNOTATION_FAILOVER_NOW_HANDLED,
                                token)
            return self._reread(body)
        health = status.health if status else None
        if (plan.spec.mode == FailoverMode.AUTOMATIC and health is not None
                and health.state == HealthState.DOWN
                and phase not in (FailoverPhase.RUNNING, *plan_status.FINISHED_PHASES)):
            trigger = plan.spec.trigger
            target = trigger.health_check.target if trigger else "the target"
            body = self._begin(plan, body, drill=False, token=None,
                               why=f"health check: {target} down")
        return body

    def _refuse_now(self, body: Json, token: str, problem: str) -> None:
        message = f"failover-now {token!r} refused: {problem}"
        log.info("%s/%s: %s", *objects.ident(body), message)
        self._event(body, Reason.FAILOVER_NOW_REFUSED, message, warning=True)

    def _begin(self, plan: FailoverPlan, body: Json, *, drill: bool, token: str | None,
               why: str) -> Json:
        now = self.ctx.clock()
        started = [False]

        def mutate(_b: Json, status: FailoverPlanStatus | None) -> FailoverPlanStatus | None:
            started[0] = False
            if status is not None and status.phase == FailoverPhase.RUNNING:
                return None  # someone started one meanwhile: never two runs
            started[0] = True
            return plan_status.start_run(status, plan.spec, drill=drill, now=now,
                                         triggered_by=why, token=token)

        written = self._write(body, mutate) or body
        if started[0]:
            what = "drill" if drill else "failover"
            message = f"{what} started ({why}): {len(plan.spec.stages)} stages"
            log.info("%s/%s: %s", *objects.ident(body), message)
            self._event(written, Reason.DRILL_STARTED if drill else Reason.FAILOVER_STARTED,
                        message, warning=not drill)
            if not drill:
                self.outbox.notify(plan, NotificationEvent.FAILOVER_STARTED,
                                   state=FailoverPhase.RUNNING.value, message=message)
        return written

    # --- 4. advance ----------------------------------------------------------------------
    def _advance(self, plan: FailoverPlan, body: Json) -> Json:
        budget = time.monotonic() + ADVANCE_BUDGET
        while time.monotonic() < budget:
            status = _status(body)
            at = plan_status.position(status)
            if status is None or at is None:
                return body
            if [s.name for s in status.stages or ()] != [s.name for s in plan.spec.stages]:
                progress = StepProgress(StepState.FAILED, "the plan's stages changed during "
                                        "the run")
            else:
                progress = self._step(plan, body, status, at)
            body, finished = self._record(plan, body, at, progress)
            if progress.state == StepState.RUNNING or finished or body is None:
                return body
        return body

    def _step(self, plan: FailoverPlan, body: Json, status: FailoverPlanStatus,
              at: plan_status.Position) -> StepProgress:
        stage_index, step_index = at
        stage = plan.spec.stages[stage_index]
        step = stage.steps[step_index]
        step_status = (status.stages or [])[stage_index].steps or []
        recorded = step_status[step_index] if step_index < len(step_status) else None
        now = self.ctx.clock()
        started = recorded.started_at if recorded and recorded.started_at else now
        deadline = started + step.timeout if step.timeout is not None else None
        namespace, name = objects.ident(body)
        cache: dict[str, dict[str, str] | None] = {}

        def secret_value(secret: str, key: str) -> str | None:
            if secret not in cache:
                cache[secret] = self.ctx.kube.secret_data(namespace, secret)
            return (cache[secret] or {}).get(key)

        names_ = plan_status.step_names(stage)
        ctx = StepContext(
            kube=self.ctx.kube, namespace=namespace, plan_name=name,
            plan_uid=str((body.get("metadata") or {}).get("uid") or ""),
            stage=stage.name, step_name=names_[step_index],
            drill=status.run_mode == FailoverMode.DRILL, now=now, started_at=started,
            deadline=deadline, secret_value=secret_value, drill_targets=plan.spec.drill,
        )
        memo = dict(recorded.memo or {}) if recorded else {}
        executor = step_registry.executor_for(step.kind)
        try:
            progress = executor.advance(step, ctx, memo)
        except ApiError as exc:
            if exc.transient:
                return StepProgress(StepState.RUNNING, f"API trouble, retrying: {exc}", memo)
            progress = StepProgress(StepState.FAILED, str(exc), memo)
        except Exception as exc:  # an executor bug must fail the step, not stall the plan
            log.exception("%s/%s: step %s raised", namespace, name, ctx.step_name)
            progress = StepProgress(StepState.FAILED, f"internal error: {type(exc).__name__}",
                                    memo)
        if (progress.state == StepState.RUNNING and deadline is not None
                and self.ctx.clock() >= deadline):
            limit = plan_status.elapsed_text(step.timeout.total_seconds()) if step.timeout \
                else ""
            progress = StepProgress(StepState.FAILED, f"timed out after {limit}: "
                                    f"{progress.message}", progress.memo, progress.diff)
        return progress

    def _record(self, plan: FailoverPlan, body: Json, at: plan_status.Position,
                progress: StepProgress) -> tuple[Json, bool]:
        now = self.ctx.clock()
        generation = objects.generation(body)
        applied = [False]

        def mutate(_b: Json, status: FailoverPlanStatus | None) -> FailoverPlanStatus | None:
            applied[0] = False
            if status is None or plan_status.position(status) != at:
                return None  # someone else moved the run on: this progress is stale
            applied[0] = True
            return plan_status.record_step(
                status, at, state=_STEP_STATES[progress.state], message=progress.message,
                memo=progress.memo, diff=progress.diff, now=now, generation=generation)

        written = self._write(body, mutate)
        if written is None:
            return body, True
        if not applied[0]:
            return written, True
        status = _status(written)
        stage = plan.spec.stages[at[0]]
        step_name = plan_status.step_names(stage)[at[1]]
        if progress.state != StepState.RUNNING:
            ok = progress.state == StepState.SUCCEEDED
            message = f"stage {stage.name} step {step_name}: {progress.message}"
            log.info("%s/%s: %s", *objects.ident(body), message)
            self._event(written, Reason.STEP_SUCCEEDED if ok else Reason.STEP_FAILED,
                        message, warning=not ok)
        finished = status is not None and status.phase in plan_status.FINISHED_PHASES
        if finished and status is not None:
            self._finished(plan, written, status)
        return written, finished

    def _finished(self, plan: FailoverPlan, body: Json, status: FailoverPlanStatus) -> None:
        reason, event = {
            FailoverPhase.SUCCEEDED: (Reason.FAILOVER_SUCCEEDED,
                                      NotificationEvent.FAILOVER_SUCCEEDED),
            FailoverPhase.FAILED: (Reason.FAILOVER_FAILED, NotificationEvent.FAILOVER_FAILED),
            FailoverPhase.DRILL_SUCCEEDED: (Reason.DRILL_SUCCEEDED,
                                            NotificationEvent.DRILL_SUCCEEDED),
            FailoverPhase.DRILL_FAILED: (Reason.DRILL_FAILED, NotificationEvent.DRILL_FAILED),
        }[status.phase or FailoverPhase.FAILED]
        report = drill_report(status)
        ok = status.phase in (FailoverPhase.SUCCEEDED, FailoverPhase.DRILL_SUCCEEDED)
        summary = f"{status.phase} after {status.elapsed}: " + json.dumps(
            report, separators=(",", ":"))
        log.info("%s/%s: %s", *objects.ident(body), summary)
        self._event(body, reason, summary, warning=not ok)
        self.outbox.notify(plan, event, state=str(status.phase), message=summary[:900])
        if plan.spec.policy_ref is not None:
            self._store_report(plan, body, status, ok)

    def _store_report(self, plan: FailoverPlan, body: Json, status: FailoverPlanStatus,
                      ok: bool) -> None:
        """The whole run report (stages, steps, diffs) into the repository of
        `spec.policyRef`, plus an audit record; a failure is a Warning Event."""
        assert plan.spec.policy_ref is not None
        namespace, name = objects.ident(body)
        policy_name = plan.spec.policy_ref.name
        try:
            found = self.ctx.kube.get_or_none(api_kind(BACKUP_POLICY), namespace, policy_name)
            if found is None:
                raise LookupError(f'BackupPolicy "{policy_name}" not found')
            policy = objects.parse(BackupPolicy, found)
            started = status.triggered_at or self.ctx.clock()
            key = maintenance.record_run(
                policy, self.ctx.kube, name=f"{namespace}.{name}",
                report=run_report(namespace, name, status), succeeded=ok, started=started,
            )
        except Exception as exc:  # the run is over either way: say what was not kept
            message = (f"the report of this run could not be stored in the repository of "
                       f"BackupPolicy {policy_name}: {exc}")
            log.warning("%s/%s: %s", namespace, name, message)
            self._event(body, Reason.REPORT_NOT_STORED, message, warning=True)
            return
        self._event(body, Reason.REPORT_STORED,
                    f"run report stored as {key} in the repository of BackupPolicy "
                    f"{policy_name} (`tonebridge-dr drills list`)", warning=False)


def run_report(namespace: str, name: str, status: FailoverPlanStatus) -> dict[str, Any]:
    """What `drills list` shows of a run: identity, outcome, timings, every stage and step
    with its message and diff (the status, which the next run overwrites, kept)."""
    rto = next((c for c in status.conditions or () if c.type == "RTOMet"), None)
    dumped = status.model_dump(mode="json", by_alias=False, exclude_none=True)
    return {
        "plan": name,
        "namespace": namespace,
        "mode": str(status.run_mode) if status.run_mode else None,
        "phase": str(status.phase) if status.phase else None,
        "token": status.run_token,
        "triggered_by": status.triggered_by,
        "started_at": dumped.get("triggered_at"),
        "completed_at": dumped.get("completed_at"),
        "elapsed_seconds": _elapsed_seconds(status),
        "rto_met": None if rto is None else rto.status.value == "True",
        "stages": dumped.get("stages") or [],
    }


def _elapsed_seconds(status: FailoverPlanStatus) -> float | None:
    if status.triggered_at is None or status.completed_at is None:
        return None
    return round((status.completed_at - status.triggered_at).total_seconds(), 3)


def drill_report(status: FailoverPlanStatus) -> dict[str, Any]:
    """The run in short: per stage its state, elapsed vs RTO, and how many steps
    reported a diff (the diffs themselves are in status.stages[].steps[].diff)."""
    return {
        "stages": [
            {"name": s.name, "state": str(s.state), "elapsed": s.elapsed_seconds,
             "rto": s.rto_seconds, "rtoMet": s.rto_met,
             "diffs": sum(1 for step in s.steps or () if step.diff)}
            for s in status.stages or ()
        ],
    }
