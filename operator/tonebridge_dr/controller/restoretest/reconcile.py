"""Reconciling one RestoreTest: observe -> decide -> act.

observe  the BackupPolicy its `source.policyRef` names, the Secrets its Jobs read (checked
         by key through `core.secrets`), the restore ServiceAccount;
decide   `plan.plan_test` (pure: the CronJob, the Secrets, the words) and `plan.decide`;
act      server-side apply the CronJob, write Ready (and the SOURCE column).

Idempotent and safe to repeat (create, `spec` update, resume): the CronJob's name is a
function of the test's, apply of an unchanged object writes nothing, status is written only
when it changes. What the operator cannot create (the policy, a Secret or a key in it, the
ServiceAccount) or what a policy change may fix (it backs up something else, encrypted
backups without a key) is Ready=False with that reason and looked at again every
`RetryPolicy.pending_delay` seconds (the skeleton retries). A Secret the Jobs cannot start
without leaves the CronJob as it is. Deleting the test deletes its CronJob and Jobs by
garbage collection; the repository is never touched here.
"""

from __future__ import annotations

import logging
from typing import Any

from tonebridge_dr.api.conditions import Reason
from tonebridge_dr.api.kinds import BackupPolicy, RestoreTest
from tonebridge_dr.api.restoretest import RestoreTestStatus, TestResult
from tonebridge_dr.controller.core import kube, objects, secrets, sources
from tonebridge_dr.controller.core.kind import Cause, Controller, Refusal
from tonebridge_dr.controller.restoretest.plan import decide, plan_test
from tonebridge_dr.status import restoretest as rt_status

log = logging.getLogger(__name__)

Json = dict[str, Any]
TestController = Controller[RestoreTest, RestoreTestStatus]


def read_policy(controller: TestController, rt: RestoreTest) -> BackupPolicy | None:
    """The BackupPolicy of `source.policyRef` (see `core.sources.read_policy`)."""
    return sources.read_policy(controller.ctx, rt.spec.source, rt.metadata.namespace or "")


def report_metrics(controller: TestController, namespace: str, name: str,
                   status: RestoreTestStatus | None) -> None:
    """The test's gauges from its status (the newest finished run): refilled on every
    reconcile, so an operator restart does not leave them empty until the next run."""
    run = status.last_run if status is not None else None
    if run is None or run.result not in (TestResult.PASSED, TestResult.FAILED):
        return
    success = status.last_successful_run_time if status is not None else None
    controller.ctx.metrics.restore_test_run(
        namespace, name, passed=run.result == TestResult.PASSED,
        duration_seconds=run.restore_duration_seconds,
        last_success=success.timestamp() if success is not None else None,
    )


def _wait(controller: TestController, body: Json, reason: Reason, message: str) -> str:
    """Ready=False with `reason` (a Warning Event when it is news); returns why the test
    waits, so the skeleton looks again."""
    controller.refuse(body, reason, message)
    return message


def reconcile(controller: TestController, rt: RestoreTest, body: Json,
              cause: Cause) -> str | None:
    """Bring the test's CronJob and Ready in line with its spec. Returns why it waits.
    Raises kube.ApiError on API trouble (the skeleton retries)."""
    ctx = controller.ctx
    namespace, name = objects.ident(body)
    report_metrics(controller, namespace, name, rt.status)
    # observe
    ref = rt.spec.source.policy_ref
    try:
        policy = read_policy(controller, rt)
    except objects.InvalidSpec as exc:
        return _wait(controller, body, Reason.INVALID_POLICY,
                     f'BackupPolicy "{ref.name if ref else "?"}" cannot be read: {exc}')
    if ref is not None and policy is None:
        return _wait(controller, body, Reason.POLICY_NOT_FOUND,
                     f'BackupPolicy "{ref.name}" not found in namespace "{namespace}"')
    plan = plan_test(rt, policy, ctx.settings.runner)
    if isinstance(plan, Refusal):
        return _wait(controller, body, plan.reason, plan.message)
    problems = secrets.check(ctx.kube, namespace, plan.secrets)
    missing_account = objects.service_account_missing(ctx, namespace, plan.service_account)
    # decide
    decision = decide(plan, problems, service_account_missing=missing_account)
    # act
    if decision.apply:
        try:
            ctx.kube.apply(plan.cronjob)
        except kube.ApiError as exc:
            if not exc.transient:  # e.g. refused as invalid, or forbidden by RBAC: say so
                controller.refuse(body, Reason.APPLY_FAILED, str(exc))
            raise
    if not decision.ready:
        return _wait(controller, body, decision.reason, decision.message)
    source = rt.spec.source.describe()
    now = ctx.clock()
    controller.write_status(body, lambda _b, status: rt_status.reconciled(
        status, rt, source=source, message=decision.message, now=now))
    log.debug("%s/%s: CronJob %s applied (%s)", namespace, name,
              plan.cronjob["metadata"]["name"], cause.trigger)
    return None
