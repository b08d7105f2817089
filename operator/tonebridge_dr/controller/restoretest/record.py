"""Test Jobs -> RestoreTest status (the kind's `JobRoute`), idempotently.

For each event of a Job labelled `app.kubernetes.io/component=restore-test` that is not
marked recorded yet, on the test that owns it (directly: a run-now Job; through its
CronJob: a scheduled one):

* running: `lastRun` is that run, Running (`run_started`); a scheduled run gets a Normal
  RestoreTestStarted Event (a run-now one got it when it was created);
* finished: its pods' termination message -> `run_finished` (compare-and-set), then the
  metrics, ONE Event (Normal RestoreTestPassed, Warning RestoreTestFailed, or Warning
  RTOMissed for a run that restored fine but too slowly), a webhook notification per
  change of state (Passed turned True/False, RTOMet turned False: `rt_status.notifications`)
  and the annotation `dr.tonebridge.io/recorded=<state>` on the Job;
* deleted before it finished: the run failed (JobDeleted).

The Job watch lists every existing Job when the operator starts, so a run that finished
while the operator was down is recorded then, once. A crash between the status write and
the annotation repeats nothing: the status already names the run, so only the annotation
is written then.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from tonebridge_dr.api.conditions import Reason
from tonebridge_dr.api.kinds import RestoreTest
from tonebridge_dr.api.restoretest import RestoreTestStatus, TestResult
from tonebridge_dr.builders import names
from tonebridge_dr.controller.core import jobs, notify, objects
from tonebridge_dr.controller.restoretest.reconcile import TestController, report_metrics
from tonebridge_dr.status import restoretest as rt_status
from tonebridge_dr.status.jobs import parse_time

log = logging.getLogger(__name__)

Json = dict[str, Any]


def wanted(job: Mapping[str, Any]) -> bool:
    """Whether a Job event can matter: the Job is not recorded yet."""
    return not jobs.recorded(job)


def _rto(rt: RestoreTest) -> timedelta | None:
    return rt.spec.objectives.rto if rt.spec.objectives is not None else None


def job_start(job: Mapping[str, Any], now: datetime) -> datetime:
    """When the Job started (its startTime, else its creation)."""
    metadata = job.get("metadata") or {}
    return (parse_time((job.get("status") or {}).get("startTime"))
            or parse_time(metadata.get("creationTimestamp")) or now)


def _changed(
    controller: TestController, body: Json,
    transition: Callable[[Json, RestoreTestStatus | None], RestoreTestStatus],
) -> Json | None:
    """Write the status `transition` makes (compare-and-set); the body after the write when
    it changed the status, else None (already known, or the test is gone)."""
    changed = [False]

    def mutate(current: Json, status: RestoreTestStatus | None) -> RestoreTestStatus:
        new = transition(current, status)
        changed[0] = new != (status or RestoreTestStatus())
        return new

    written = controller.write_status(body, mutate)
    return written if changed[0] else None


def started(controller: TestController, body: Json, job_name: str, when: datetime) -> Json | None:
    """`lastRun` is the run of `job_name`, Running; the body when that was news."""
    return _changed(controller, body, lambda _b, status: rt_status.run_started(
        status, job_name=job_name, started_at=when))


def observe(controller: TestController, job: Json, deleted: bool) -> None:
    """The kind's Job route: fold `job` into its test's status (idempotent). Raises
    kube.ApiError on API trouble (nothing is marked, so it is retried)."""
    if jobs.recorded(job):
        return
    ctx = controller.ctx
    namespace, job_name = objects.ident(job)
    owner = jobs.owner_name(ctx, job, controller.kind, names.LABEL_RESTORE_TEST)
    body = controller.get(namespace, owner) if owner is not None else None
    if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
        return
    try:
        rt = controller.parse(body)
    except objects.InvalidSpec:
        return
    now = ctx.clock()
    if deleted:
        _record(controller, rt, body, job_name, lambda b, s: rt_status.run_vanished(
            s, job_name=job_name, rto=_rto(rt), generation=objects.generation(b), now=now))
        return
    if not jobs.finished(job):
        annotations = (job.get("metadata") or {}).get("annotations") or {}
        changed = started(controller, body, job_name, job_start(job, now))
        if changed is not None and names.ANNOTATION_RUN_NOW not in annotations:
            controller.event(changed, Reason.RESTORE_TEST_STARTED,
                             f"test Job {job_name} started", warning=False)
        return
    finish(controller, rt, body, job)


def finish(controller: TestController, rt: RestoreTest, body: Json, job: Json) -> None:
    """Record the finished `job` (see the module docstring)."""
    ctx = controller.ctx
    job_name = objects.ident(job)[1]
    outcome = jobs.outcome(ctx, job)
    if outcome.state == "running":
        return
    now = ctx.clock()
    _record(controller, rt, body, job_name, lambda current, status: rt_status.run_finished(
        status, outcome, rto=_rto(rt), generation=objects.generation(current), now=now))
    jobs.mark_recorded(ctx, job, outcome.state)


def _record(
    controller: TestController, rt: RestoreTest, body: Json, job_name: str,
    transition: Callable[[Json, RestoreTestStatus | None], RestoreTestStatus],
) -> None:
    """Write the end of a run (`transition`); when that was news: metrics, one Event, a
    notification per change of state."""
    news: list[list[rt_status.News]] = [[]]

    def recording(current: Json, status: RestoreTestStatus | None) -> RestoreTestStatus:
        new = transition(current, status)
        news[0] = rt_status.notifications(status, new)
        return new

    written = _changed(controller, body, recording)
    status = controller.status_of(written) if written is not None else None
    if written is None or status is None or status.last_run is None:
        return
    namespace, name = objects.ident(written)
    run = status.last_run
    report_metrics(controller, namespace, name, status)
    log.info("%s/%s: %s (Job %s)", namespace, name, run.message, job_name)
    if run.result != TestResult.PASSED:
        reason, warning = Reason.RESTORE_TEST_FAILED, True
    elif run.rto_met is False:
        reason, warning = Reason.RTO_MISSED, True
    else:
        reason, warning = Reason.RESTORE_TEST_PASSED, False
    controller.event(written, reason, f"{run.message} (Job {job_name})", warning=warning)
    for item in news[0]:
        notify.send_notification(controller.ctx, namespace, name, rt.spec.notifications,
                                 item.event, state=item.state, message=item.condition.message)
