"""BackupPolicy status as small pure transitions: `(status, event) -> status`.

Every function takes the current status (or None), returns a new one and leaves
fields it is not about untouched, so the controller can chain them and write the
result with `status.model_dump(mode="json", exclude_none=True)`.

Idempotent and order-tolerant: applying the same Job outcome twice gives the same
status, and an outcome older than what status already records (e.g. old Jobs seen
again after an operator restart) never replaces newer information.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tonebridge_dr.api import runner_contract as contract
from tonebridge_dr.api.backuppolicy import (
    BackupPolicyStatus,
    BackupSummary,
    FailureSummary,
    WalStatus,
)
from tonebridge_dr.api.common import BackupMethod
from tonebridge_dr.api.conditions import Condition, Reason
from tonebridge_dr.api.kinds import BackupPolicy
from tonebridge_dr.status import conditions, readiness
from tonebridge_dr.status.jobs import JobOutcome, parse_time

__all__ = [
    "REASON_APPEND_ONLY_DISABLED",
    "REASON_APPEND_ONLY_ENABLED",
    "REASON_APPEND_ONLY_UNKNOWN",
    "AofObservation",
    "aof_change",
    "aof_observation",
    "apply_job_outcome",
    "apply_not_ready",
    "apply_reconciled",
    "backup_method",
    "backup_summary",
]

_ENGINE_DEFAULT_METHOD: dict[str, BackupMethod] = {
    engine.name: BackupMethod(engine.default_method) for engine in contract.ENGINES
}
_METHOD_ALIASES: dict[str, BackupMethod] = {
    written: BackupMethod(method)
    for engine in contract.ENGINES
    for written, method in engine.result_methods
}
"""What the runner writes into a result's `method` where it differs from the API name."""


def backup_method(method: Any, engine: Any = None) -> BackupMethod | None:
    """The API method of a runner result's `method` (`rdb` -> snapshot), else the engine's
    default method; None when neither is known."""
    if isinstance(method, str):
        if method in BackupMethod.__members__.values():
            return BackupMethod(method)
        if method in _METHOD_ALIASES:
            return _METHOD_ALIASES[method]
    if isinstance(engine, str):
        return _ENGINE_DEFAULT_METHOD.get(engine)
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return float(value)


def backup_summary(outcome: JobOutcome) -> BackupSummary | None:
    """The BackupSummary of a succeeded outcome whose result names a backup, else None."""
    result = outcome.result
    if outcome.state != "succeeded" or result is None:
        return None
    backup_id = result.get("id")
    method = backup_method(result.get("method"), result.get("engine"))
    finished = parse_time(result.get("finished_at")) or outcome.finished_at
    if not isinstance(backup_id, str) or not backup_id or method is None or finished is None:
        return None
    size = _number(result.get("size_bytes"))
    duration = _number(result.get("duration_seconds"))
    kubernetes = result.get("kubernetes")
    objects = _number(kubernetes.get("object_count")) if isinstance(kubernetes, dict) else None
    return BackupSummary(
        id=backup_id,
        schedule=outcome.schedule,
        method=method,
        time=finished,
        started_at=parse_time(result.get("started_at")) or outcome.started_at,
        size_bytes=int(size) if size is not None else None,
        duration_seconds=duration,
        objects=int(objects) if objects is not None else None,
    )


# --- Redis durability (spec 4.2: AOF) ---------------------------------------------------------

REASON_APPEND_ONLY_ENABLED = Reason.APPEND_ONLY_ENABLED.value
REASON_APPEND_ONLY_DISABLED = Reason.APPEND_ONLY_DISABLED.value
REASON_APPEND_ONLY_UNKNOWN = Reason.APPEND_ONLY_UNKNOWN.value
_AOF_WORDS = re.compile(r"\bAOF\b|appendonly|appendfsync")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_WARNING_LIMIT = 1024
_WARNINGS_SHOWN = 4


@dataclass(frozen=True)
class AofObservation:
    """What one Redis backup result says about the server's append-only file:
    the AOFEnabled condition's status, reason and message."""

    status: conditions.StatusValue
    reason: str
    message: str


def _warning_texts(value: Any) -> list[str]:
    """The runner's `warnings` (a list of strings; anything else counts as none), cleaned
    and clipped: the termination message they come from is not trusted."""
    if not isinstance(value, list):
        return []
    texts = []
    for item in value:
        if not isinstance(item, str):
            continue
        text = _CONTROL.sub(" ", item).strip()
        if len(text) > _WARNING_LIMIT:
            text = text[: _WARNING_LIMIT - 3] + "..."
        if text:
            texts.append(text)
    return texts


def aof_observation(result: Mapping[str, Any] | None) -> AofObservation | None:
    """AOFEnabled as seen by a Redis backup result, None for other engines and for a result
    that carries neither `redis` facts nor `warnings` (e.g. cut down to fit the termination
    message): no news, the condition stays as it is.

    * `redis.appendonly` "yes": True, AppendOnlyEnabled (an appendfsync warning, if any, is
      the message);
    * any other value ("no"): False, AppendOnlyDisabled, the runner's warning as message;
    * not known (the backup user may run neither CONFIG GET nor INFO): Unknown,
      AppendOnlyUnknown.
    """
    if result is None or result.get("engine") != "redis":
        return None
    facts = result.get("redis")
    warnings = result.get("warnings")
    if not isinstance(facts, Mapping) and not isinstance(warnings, list):
        return None
    facts = facts if isinstance(facts, Mapping) else {}
    about_aof = [w for w in _warning_texts(warnings) if _AOF_WORDS.search(w)]
    backup_id = result.get("id")
    seen = f" (seen by backup {backup_id})" if isinstance(backup_id, str) and backup_id else ""
    shown = "; ".join(about_aof[:_WARNINGS_SHOWN])
    appendonly = facts.get("appendonly")
    if appendonly == "yes":
        fsync = facts.get("appendfsync")
        detail = f", appendfsync {fsync}" if isinstance(fsync, str) and fsync else ""
        message = shown or f"AOF is enabled on the Redis server: appendonly yes{detail}"
        return AofObservation("True", REASON_APPEND_ONLY_ENABLED, message + seen)
    if isinstance(appendonly, str) and appendonly:
        message = shown or (
            f"AOF is disabled on the Redis server (appendonly {appendonly[:32]}): writes after "
            "the last snapshot are lost when it crashes; set appendonly yes"
        )
        return AofObservation("False", REASON_APPEND_ONLY_DISABLED, message + seen)
    message = shown or "the backup result does not say whether AOF is enabled on the Redis server"
    return AofObservation("Unknown", REASON_APPEND_ONLY_UNKNOWN, message + seen)


def aof_change(
    before: BackupPolicyStatus | None, after: BackupPolicyStatus
) -> Condition | None:
    """The AOFEnabled condition of `after` when it is news worth an Event: it just turned
    False (AOF found disabled: a Warning), or True again after having been False (Normal).
    Re-asserting the same status, the first True and anything about Unknown give None."""
    old = before.conditions if before is not None else None
    disabled = conditions.turned(old, after.conditions, conditions.AOF_ENABLED, "False")
    if disabled is not None:
        return disabled
    previous = conditions.get_condition(old, conditions.AOF_ENABLED)
    if previous is not None and previous.status == "False":
        return conditions.turned(old, after.conditions, conditions.AOF_ENABLED, "True")
    return None


def _latest_attempt(status: BackupPolicyStatus) -> datetime | None:
    times = [
        t
        for t in (
            status.last_backup.time if status.last_backup else None,
            status.last_failure.time if status.last_failure else None,
        )
        if t is not None
    ]
    return max(times) if times else None


def _newer(candidate: datetime, recorded: datetime | None) -> bool:
    return recorded is None or candidate >= recorded


def apply_job_outcome(
    status: BackupPolicyStatus | None,
    outcome: JobOutcome,
    *,
    generation: int | None,
    now: datetime,
) -> BackupPolicyStatus:
    """Record a finished backup Job.

    * succeeded: `lastBackup` (and `lastSuccessfulBackup`, until the catalog says
      better) from the runner's result; LastBackupSucceeded=True, reason BackupSucceeded.
      A Redis result also sets AOFEnabled (`aof_observation`), as of the newest backup:
      an older result seen late never overrides it.
    * failed: `lastFailure` (time, the outcome's reason, its message);
      LastBackupSucceeded=False with the same reason and message.
    * running: nothing changes.

    The condition follows the newest attempt only. Ready is left as it is. `now` is
    used only when the Job carries no finish time at all.
    """
    current = status or BackupPolicyStatus()
    if outcome.state == "running":
        return current
    when = outcome.finished_at or outcome.started_at or now
    latest = _latest_attempt(current)
    updates: dict[str, Any] = {}
    schedule = f"schedule {outcome.schedule}" if outcome.schedule else "a manual run"

    if outcome.state == "succeeded":
        summary = backup_summary(outcome)
        if summary is not None:
            when = summary.time
            if current.last_backup is None or _newer(when, current.last_backup.time):
                updates["last_backup"] = summary
                aof = aof_observation(outcome.result)
                if aof is not None:
                    updates["conditions"] = conditions.set_condition(
                        current.conditions,
                        type=conditions.AOF_ENABLED,
                        status=aof.status,
                        reason=aof.reason,
                        message=aof.message,
                        observed_generation=generation,
                        now=when,
                    )
            successful = current.last_successful_backup
            if successful is None or _newer(when, successful.time):
                updates["last_successful_backup"] = summary
            size = f", {summary.size_bytes} bytes" if summary.size_bytes is not None else ""
            message = f"backup {summary.id} of {schedule} finished (Job {outcome.job_name}{size})"
        else:
            message = f"Job {outcome.job_name} of {schedule} completed but reported no result"
        if _newer(when, latest):
            updates["conditions"] = conditions.set_condition(
                updates.get("conditions", current.conditions),
                type=conditions.LAST_BACKUP_SUCCEEDED,
                status="True",
                reason=Reason.BACKUP_SUCCEEDED.value,
                message=message,
                observed_generation=generation,
                now=when,
            )
    else:
        reason = outcome.reason or Reason.JOB_FAILED.value
        failure = FailureSummary(time=when, reason=reason, message=outcome.message)
        if current.last_failure is None or _newer(when, current.last_failure.time):
            updates["last_failure"] = failure
        if _newer(when, latest):
            updates["conditions"] = conditions.set_condition(
                current.conditions,
                type=conditions.LAST_BACKUP_SUCCEEDED,
                status="False",
                reason=reason,
                message=f"Job {outcome.job_name} of {schedule} failed: {outcome.message}",
                observed_generation=generation,
                now=when,
            )
    return current.model_copy(update=updates) if updates else current


def apply_reconciled(
    status: BackupPolicyStatus | None,
    policy: BackupPolicy,
    *,
    now: datetime,
    wal_deployment: str | None = None,
    message: str | None = None,
) -> BackupPolicyStatus:
    """Everything the policy owns is applied: Ready=True (reason Reconciled),
    `observedGeneration`, and the TARGET / SCHEDULE printer-column summaries
    (`status.target`, `status.schedules`); `status.wal.deployment` names the WAL streamer
    when there is one. AOFEnabled goes away when the target is no longer Redis."""
    current = status or BackupPolicyStatus()
    spec = policy.spec
    generation = policy.metadata.generation
    if message is None:
        count = len(spec.schedules)
        message = f"{count} backup schedule{'s' if count != 1 else ''}: {spec.describe_schedules()}"
        if wal_deployment is not None:
            message += f"; WAL streamed by Deployment {wal_deployment}"
        if spec.suspend:
            message += "; suspended: no new backups are scheduled"
    updates: dict[str, Any] = {
        "observed_generation": generation,
        "target": spec.target.describe(),
        "schedules": spec.describe_schedules(),
        "conditions": conditions.set_condition(
            current.conditions
            if spec.target.redis is not None
            else conditions.remove_condition(current.conditions, conditions.AOF_ENABLED),
            type=conditions.READY,
            status="True",
            reason=Reason.RECONCILED.value,
            message=message,
            observed_generation=generation,
            now=now,
        ),
    }
    if wal_deployment is not None:
        wal = current.wal or WalStatus()
        updates["wal"] = wal.model_copy(update={"deployment": wal_deployment})
    elif current.wal is not None and current.wal.deployment is not None:
        updates["wal"] = current.wal.model_copy(update={"deployment": None})
    return current.model_copy(update=updates)


def apply_not_ready(
    status: BackupPolicyStatus | None,
    *,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> BackupPolicyStatus:
    """Ready=False with `reason` (CamelCase, e.g. SecretNotFound, RepositoryUnreachable,
    TargetNotSupported, InvalidSpec) and a message that says what to fix; the generation
    counts as observed. Everything else is kept."""
    return readiness.not_ready(
        status, model=BackupPolicyStatus, reason=reason, message=message,
        generation=generation, now=now,
    )
