"""Run-now of a BackupPolicy: `kubectl annotate bp/NAME dr.tonebridge.io/run-now=<token>
--overwrite` (the semantics every kind shares: `core.runnow`).

What a token starts: ONE backup Job from the first schedule; `<schedule>:<anything>` (the
part before the first `:` names a schedule of the policy) starts it from that schedule
instead. The Job needs the Secrets backup Jobs read (`referenced_secrets`).

Both the policy watch (at once) and the periodic monitor (as a retry after API trouble)
call `handle`; it does nothing when there is nothing new.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tonebridge_dr.api.backuppolicy import BackupPolicyStatus
from tonebridge_dr.api.conditions import Reason
from tonebridge_dr.api.kinds import BackupPolicy
from tonebridge_dr.builders import backup as builders
from tonebridge_dr.controller.backuppolicy.reconcile import PolicyController, referenced_secrets
from tonebridge_dr.controller.core import runnow
from tonebridge_dr.controller.core.runnow import pending_token
from tonebridge_dr.status import runnow as runnow_status

Json = dict[str, Any]

__all__ = ["handle", "pending_token", "pick_schedule", "plan"]


def pick_schedule(policy: BackupPolicy, token: str) -> str:
    """`<schedule>:...` names a schedule; anything else means the first schedule."""
    prefix, colon, _rest = token.partition(":")
    known = [schedule.name for schedule in policy.spec.schedules]
    if colon and prefix in known:
        return prefix
    return known[0]


def plan(controller: PolicyController, policy: BackupPolicy, token: str) -> runnow.RunNow:
    """The backup Job of `token` (ValueError: the policy cannot run one)."""
    schedule = pick_schedule(policy, token)
    (job,) = builders.build_run_now_jobs(policy, controller.ctx.settings.runner, token,
                                         schedules=[schedule])
    return runnow.RunNow(job=job, secrets=referenced_secrets(policy),
                         started=Reason.BACKUP_STARTED,
                         what=f"a backup of schedule {schedule}")


def handle(controller: PolicyController, body: Mapping[str, Any]) -> str | None:
    """Start the backup a new run-now value asks for (`core.runnow.handle`), and say so in
    `status.runNow` (Running, or Failed when refused); `record` finishes the entry."""

    def record(current: Mapping[str, Any], token: str, job: str | None,
               refusal: str | None) -> None:
        now = controller.ctx.clock()

        def mutate(_: Json, status: BackupPolicyStatus | None) -> BackupPolicyStatus:
            if job is None:
                return runnow_status.refused(status, token, refusal or "refused", now)
            return runnow_status.started(status, token, job, now)

        controller.write_status(current, mutate)

    return runnow.handle(controller, body, plan, record)
