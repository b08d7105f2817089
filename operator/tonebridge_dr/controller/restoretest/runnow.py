"""Run-now of a RestoreTest: `kubectl annotate rt/NAME dr.tonebridge.io/run-now=<token>
--overwrite` runs the test once, now (the semantics every kind shares: `core.runnow`;
a suspended test still runs on demand). The Job is the CronJob's, owned by the test and
named from the token; `lastRun` says Running at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tonebridge_dr.api.conditions import Reason
from tonebridge_dr.api.kinds import RestoreTest
from tonebridge_dr.builders import restoretest as builders
from tonebridge_dr.controller.core import objects, runnow
from tonebridge_dr.controller.restoretest import record
from tonebridge_dr.controller.restoretest.plan import job_secrets
from tonebridge_dr.controller.restoretest.reconcile import TestController, read_policy


def plan(controller: TestController, rt: RestoreTest, token: str) -> runnow.RunNow:
    """The test Job of `token`; ValueError when the test cannot run (its policy is
    missing or unreadable, or its backups cannot be read as asked)."""
    ref = rt.spec.source.policy_ref
    policy = read_policy(controller, rt)  # objects.InvalidSpec is a ValueError
    if ref is not None and policy is None:
        raise ValueError(f'BackupPolicy "{ref.name}" not found')
    job = builders.build_run_now_job(rt, policy, controller.ctx.settings.runner, token)
    source = builders.resolve_source(rt, policy)
    backup = f"backup {rt.spec.backup_id}" if rt.spec.backup_id else "the latest backup"
    return runnow.RunNow(job=job, secrets=job_secrets(rt, source),
                         started=Reason.RESTORE_TEST_STARTED,
                         what=f"a restore test of {backup} of {source.describe()}")


def handle(controller: TestController, body: Mapping[str, Any]) -> str | None:
    """Start the run a new run-now value asks for; `lastRun` says Running."""
    job_name = runnow.handle(controller, body, plan)
    if job_name is not None:
        now = controller.ctx.clock()
        record.started(controller, objects.plain(body), job_name, now)
    return job_name
