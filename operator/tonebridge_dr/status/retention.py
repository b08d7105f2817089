"""Retention runs of the operator -> `status.retention` and the RetentionApplied condition.

`apply_retention(status, outcome, ...)` is pure: the controller runs retention (through
controller.core.maintenance) and hands the outcome here. Condition reasons:

| outcome | RetentionApplied | reason |
|---|---|---|
| backups or WAL deleted | True | Pruned |
| nothing to delete | True | NothingToPrune |
| no rule anywhere in the policy | True | NoRetentionRules |
| a running restore without a pinned backup id | True (unchanged when set) | PruneDeferred |
| the run failed (repository, credentials, bug) | False | PruneFailed |

A deferred run keeps the previous counters; the next trigger (the next backup, or the
daily run) applies the rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from tonebridge_dr.api.backuppolicy import BackupPolicyStatus, RetentionStatus
from tonebridge_dr.api.conditions import Reason
from tonebridge_dr.status import conditions

__all__ = ["MAX_IDS", "RETENTION_APPLIED", "RetentionOutcome", "apply_retention"]

RETENTION_APPLIED = "RetentionApplied"
#: How many deleted ids the status lists (Events and the log carry all of them).
MAX_IDS = 20


@dataclass(frozen=True)
class RetentionOutcome:
    """What one retention run did (or why it did nothing)."""

    trigger: str  # "backup" | "schedule"
    rules: str = ""
    kept: int = 0
    deleted: tuple[str, ...] = ()
    protected: tuple[str, ...] = ()
    locked: tuple[str, ...] = ()
    orphans: int = 0
    oldest_kept_id: str | None = None
    oldest_kept_time: datetime | None = None
    wal_deleted: int = 0
    wal_deleted_bytes: int = 0
    pitr_window_start: datetime | None = None
    pitr_window_end: datetime | None = None
    archived: int = 0  # backups moved to the archive storage class by this run
    no_rules: bool = False
    deferred: str | None = None  # why the run was skipped
    error: str | None = None
    extra: tuple[str, ...] = field(default=())  # more sentences (archive tier, audit, ...)

    @property
    def changed_anything(self) -> bool:
        return bool(self.deleted or self.wal_deleted or self.orphans or self.archived)

    def message(self) -> str:
        """One sentence for the condition, the status and the Event."""
        if self.error is not None:
            return f"retention failed: {self.error}"
        if self.deferred is not None:
            return f"retention deferred: {self.deferred}"
        if self.no_rules:
            return " ".join(["no retention rules: every backup is kept", *self.extra])
        parts = [f"kept {self.kept} backup{'s' if self.kept != 1 else ''}"]
        if self.deleted:
            parts.append(f"deleted {len(self.deleted)}: {_ids(self.deleted)}")
        if self.orphans:
            parts.append(f"removed {self.orphans} incomplete backup folder(s)")
        if self.wal_deleted:
            parts.append(
                f"deleted {self.wal_deleted} archived WAL file(s) ({self.wal_deleted_bytes} bytes)"
            )
        if self.protected:
            parts.append(f"kept for running restores: {_ids(self.protected)}")
        if self.locked:
            parts.append(f"still under Object Lock: {_ids(self.locked)}")
        sentence = "; ".join(parts) + f" ({self.rules})" if self.rules else "; ".join(parts)
        return " ".join([sentence, *self.extra])


def _ids(values: tuple[str, ...]) -> str:
    shown = ", ".join(values[:MAX_IDS])
    return shown + (f" and {len(values) - MAX_IDS} more" if len(values) > MAX_IDS else "")


def _reason(outcome: RetentionOutcome) -> tuple[conditions.StatusValue, str]:
    if outcome.error is not None:
        return "False", Reason.PRUNE_FAILED.value
    if outcome.deferred is not None:
        return "True", Reason.PRUNE_DEFERRED.value
    if outcome.no_rules:
        return "True", Reason.NO_RETENTION_RULES.value  # (archiving may still have run)
    if outcome.changed_anything:
        return "True", Reason.PRUNED.value
    return "True", Reason.NOTHING_TO_PRUNE.value


def apply_retention(
    status: BackupPolicyStatus | None,
    outcome: RetentionOutcome,
    *,
    generation: int | None,
    now: datetime,
) -> BackupPolicyStatus:
    """`status` after a retention run: `status.retention` and RetentionApplied.

    A failed or deferred run keeps the counters of the last run that did its work
    (`last_run_time` then still says when that was, so the daily run retries).
    """
    current = status or BackupPolicyStatus()
    value, reason = _reason(outcome)
    message = outcome.message()
    old = current.retention or RetentionStatus()
    if outcome.error is not None or outcome.deferred is not None:
        retention = old.model_copy(update={"message": message})
        if outcome.deferred is not None:
            previous = conditions.get_condition(current.conditions, RETENTION_APPLIED)
            if previous is not None and previous.status.value == "False":
                value = "False"  # a deferral does not clear a failure
    else:
        retention = RetentionStatus(
            last_run_time=now,
            trigger=outcome.trigger,
            rules=outcome.rules or None,
            kept=outcome.kept,
            deleted=len(outcome.deleted),
            deleted_ids=list(outcome.deleted[:MAX_IDS]) or None,
            protected_ids=list(outcome.protected) or None,
            oldest_kept_time=outcome.oldest_kept_time,
            oldest_kept_id=outcome.oldest_kept_id,
            wal_deleted=outcome.wal_deleted,
            archived=outcome.archived,
            pitr_window_start=outcome.pitr_window_start,
            pitr_window_end=outcome.pitr_window_end,
            message=message,
        )
    updated = conditions.set_condition(
        current.conditions,
        type=RETENTION_APPLIED,
        status=value,
        reason=reason,
        message=message,
        observed_generation=generation,
        now=now,
    )
    return current.model_copy(update={"retention": retention, "conditions": updated})
