"""Deciding what a RestoreTest owns: `plan_test(test, policy, settings) -> TestPlan |
Refusal`, and `decide(plan, problems, ...)` -> Decision.

Pure (no API calls; tested without a cluster): from the typed test, the BackupPolicy its
`source.policyRef` names (None for a repository given directly) and the runner settings,
it yields the CronJob, the Secrets its Jobs read (and the notification webhooks), the
ServiceAccount they run as and the words of the Ready condition. A test whose backups
cannot be read as asked (a policy of another engine or without such backups, encrypted
backups without a key) is a `Refusal`; it may work once the policy changes, so the
operator looks again.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tonebridge_dr.api import formats
from tonebridge_dr.api.conditions import Reason
from tonebridge_dr.api.kinds import BackupPolicy, RestoreTest
from tonebridge_dr.builders import restoretest as builders
from tonebridge_dr.builders.settings import RunnerSettings
from tonebridge_dr.controller.core import secrets
from tonebridge_dr.controller.core.kind import Refusal
from tonebridge_dr.controller.core.secrets import SecretUse

Json = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class TestPlan:
    """What one test needs and makes."""

    __test__ = False  # not a pytest test class

    source: builders.ResolvedSource
    cronjob: Json
    secrets: tuple[SecretUse, ...]
    """What the test Jobs read (blocking), then the notification webhooks (not blocking)."""
    service_account: str
    summary: str
    """The Ready=True message: what runs when, from where, into what."""


@dataclasses.dataclass(frozen=True)
class Decision:
    """What reconcile will do, decided from one observation."""

    apply: bool
    """Apply the CronJob (False: leave what exists as it is)."""
    ready: bool
    reason: Reason
    message: str


def job_secrets(rt: RestoreTest, source: builders.ResolvedSource) -> tuple[SecretUse, ...]:
    """The Secrets (and keys) a test Job cannot start without."""
    return tuple(SecretUse(need.name, need.keys, need.purpose)
                 for need in builders.secret_requirements(rt, source))


def summary(rt: RestoreTest, source: builders.ResolvedSource, cronjob: Json) -> str:
    """One sentence about what the test does (no secrets: Secret names only)."""
    spec = rt.spec
    when = f"'{spec.schedule}'" + (f" ({spec.time_zone})" if spec.time_zone else "")
    method = builders.effective_method(rt)
    kind = f" {method.value}" if method is not None else ""
    backup = f"backup {spec.backup_id}" if spec.backup_id else f"the latest{kind} backup"
    database = spec.scratch.database
    server = "redis-server" if source.engine.value == "redis" else "PostgreSQL"
    into = (f'the database of Secret "{database.dsn_secret_ref.name}"' if database is not None
            else f"a throwaway {server} in the test Job")
    count = len(spec.checks or ())
    parts = [
        f"CronJob {cronjob['metadata']['name']} runs {when}: restores {backup} from "
        f"{source.describe()} into {into}, then runs {count} check{'s' if count != 1 else ''}",
    ]
    if spec.objectives is not None and spec.objectives.rto is not None:
        parts.append(f"RTO {formats.format_duration(spec.objectives.rto)}")
    if spec.suspend:
        parts.append("suspended: no run is scheduled (run-now still works)")
    if source.uses_write_credentials:
        parts.append(f'BackupPolicy "{source.policy_name}" has no '
                     "repository.restoreCredentialsSecretRef: the test reads with the backup "
                     "credentials; give restores a read-only role (spec 8.2)")
    parts.extend(builders.unused_settings(rt))
    return "; ".join(parts)


def plan_test(
    rt: RestoreTest, policy: BackupPolicy | None, settings: RunnerSettings
) -> TestPlan | Refusal:
    """The plan of `rt`, or why it cannot run. `policy` must be the BackupPolicy of
    `source.policyRef` when the test has one (the caller looked it up)."""
    try:
        source = builders.resolve_source(rt, policy)
        cronjob = builders.build_restore_test_cronjob(rt, policy, settings)
    except builders.RestoreSpecError as exc:
        return Refusal(Reason(exc.reason), exc.message)
    uses = job_secrets(rt, source) + tuple(secrets.notification_uses(rt.spec.notifications))
    return TestPlan(
        source=source,
        cronjob=cronjob,
        secrets=uses,
        service_account=settings.restore_service_account,
        summary=summary(rt, source, cronjob),
    )


def decide(
    plan: TestPlan, problems: list[secrets.SecretProblem], *, service_account_missing: bool
) -> Decision:
    """Apply the CronJob unless its Jobs could not start (a Secret or key they read is
    missing: the CronJob is left as it is); Ready says what is missing, or the summary."""
    blocking = [problem for problem in problems if problem.blocking]
    if problems:
        message = secrets.describe(problems)
        if blocking:
            message += "; the test's CronJob is left unchanged until it exists"
        return Decision(apply=not blocking, ready=False, reason=problems[0].reason,
                        message=message)
    if service_account_missing:
        return Decision(
            apply=True, ready=False, reason=Reason.SERVICE_ACCOUNT_NOT_FOUND,
            message=f'ServiceAccount "{plan.service_account}" (test Jobs run as it) not found; '
            "create it (the Helm chart's restore RBAC): until then no test Job can start",
        )
    return Decision(apply=True, ready=True, reason=Reason.RECONCILED, message=plan.summary)
