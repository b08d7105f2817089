"""Pure status transitions of a RestoreRequest: `(status, event) -> status`.

Phases: Pending (waiting for something the operator cannot create: a Secret, a
policy, a claim) -> Running (the restore Job exists) -> Succeeded | Failed. A finished
request never changes phase again: its status is the record of what was restored.

Conditions (types are API, never renamed):
* `Ready`    - the spec could be served: source resolved, Secrets present, Job created.
* `Complete` - True once the restore finished and was verified by the runner
               (`kubectl wait --for=condition=Complete rr/NAME`).
* `Failed`   - True once the restore failed or was refused; the message says why and
               what state the target is in (untouched, rolled back, incomplete, or
               for Redis: the keys restored so far stay).

Messages are one paragraph meant for an operator at 3 a.m.: what happened, whether
anything was changed, and what to do next. They carry no secrets: runner messages are
already scrubbed, and DSNs/keys never reach the operator.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tonebridge_dr.api import formats
from tonebridge_dr.api.common import BackupMethod
from tonebridge_dr.api.restorerequest import (
    InstanceStatus,
    RestoredSummary,
    RestorePhase,
    RestoreRequestStatus,
)
from tonebridge_dr.status import conditions
from tonebridge_dr.status.jobs import JobOutcome, parse_time

__all__ = [
    "COMPLETE",
    "FAILED",
    "READY",
    "REFUSED_REASONS",
    "TargetInfo",
    "TargetKind",
    "finished",
    "is_finished",
    "job_created",
    "job_observed",
    "job_vanished",
    "refused",
    "restored_summary",
    "waiting",
]

READY = conditions.READY
COMPLETE = conditions.COMPLETE
FAILED = conditions.FAILED

REFUSED_REASONS = frozenset(
    {
        "TargetNotEmpty",
        "BackupNotFound",
        "RecoveryTargetUnreachable",
        "InvalidArguments",
        "RepositoryUnavailable",
        "AuthenticationFailed",
        "SourceUnavailable",
        "EncryptionError",
    }
)
"""Runner reasons raised before anything was written to the target (checks first)."""

_HINTS: dict[str, str] = {
    "TargetNotEmpty": (
        "To replace the existing data, create a new RestoreRequest with spec.overwrite: true "
        "(or restore into an empty database or volume)."
    ),
    "BackupNotFound": (
        "List what the repository holds with `tonebridge-dr backups list --repo {repo}` and "
        "create a new RestoreRequest with one of those ids (or latest: true)."
    ),
    "RecoveryTargetUnreachable": (
        "Choose a targetTime / targetLSN covered by a base backup and the WAL archive "
        "(`tonebridge-dr backups list --repo {repo}`, `tonebridge-dr wal-status --repo "
        "{repo}`), or latest: true, in a new RestoreRequest."
    ),
    "EncryptionError": (
        "Give the restore the OpenPGP private key: spec.source.privateKeySecretRef (or the "
        "policy's encryption.privateKeySecretRef), a Secret holding the ASCII-armoured key."
    ),
    "AuthenticationFailed": (
        "Check the credentials in the DSN Secret of the target (the restore role, spec 8.2)."
    ),
    "SourceUnavailable": "Check that the target database server is reachable from the cluster.",
    "IntegrityCheckFailed": (
        "The backup is damaged; restore another backup id (`tonebridge-dr backups verify`)."
    ),
    "DeadlineExceeded": (
        "The restore ran longer than the operator allows for a restore Job "
        "(activeDeadlineSeconds)."
    ),
    "Cancelled": "The restore process was stopped before it finished.",
    "ObjectsNotRestored": (
        "status.restored.failures lists the first refused objects; fix them (or leave them "
        "out with target.kubernetes.kinds / names) and restore again in a new RestoreRequest."
    ),
    "RecoveryEndedEarly": (
        "PostgreSQL promoted before replaying all the WAL the archive holds: the restored "
        "data directory misses committed transactions, was shut down and carries the file "
        "TONEBRIDGE_DR_RECOVERY_ENDED_EARLY. Do not start applications on it; find why a "
        "WAL file could not be fetched (`kubectl logs`), then restore again with "
        "spec.overwrite: true."
    ),
}
_REDIS_HINTS: dict[str, str] = {
    "AuthenticationFailed": (
        "Check the user and password in the URL Secret of the target; the user needs "
        "PING, SELECT, RESTORE and FUNCTION RESTORE, on every key it restores."
    ),
    "SourceUnavailable": "Check that the target Redis server is reachable from the cluster.",
}

_REDIS_CHECKED_FIRST = frozenset(
    {"BackupNotFound", "InvalidArguments", "RepositoryUnavailable", "EncryptionError"}
)
"""Reasons the Redis runner raises before its first write (it fetches and verifies the
whole snapshot before touching the target); other failures may come after some keys."""

# Runner messages speak CLI; a RestoreRequest user needs the spec field instead.
_CLI_TO_SPEC = (
    (re.compile(r"pass --clean\b"), "set spec.overwrite: true"),
    (re.compile(r"pass --overwrite\b"), "set spec.overwrite: true"),
    (
        re.compile(r"pass --decrypt-key(?: PRIVATE_KEY_FILE)?"),
        "set spec.source.privateKeySecretRef",
    ),
    (re.compile(r"or pass --create\b"), "or let the restore create it"),
)


class TargetKind:
    DATABASE = "database"
    VOLUME = "volume"
    REDIS = "redis"
    KUBERNETES = "kubernetes"
    BUCKET = "bucket"


@dataclass(frozen=True)
class TargetInfo:
    """What the messages need to know about the request (computed by the handler)."""

    kind: str
    """TargetKind.DATABASE, VOLUME, REDIS or KUBERNETES."""
    description: str
    """builders.restore.target_description: e.g. `volume "pg-data"`."""
    repository_url: str = ""


def _phase_is_final(status: RestoreRequestStatus | None) -> bool:
    return status is not None and status.phase in (RestorePhase.SUCCEEDED, RestorePhase.FAILED)


def is_finished(status: RestoreRequestStatus | None) -> bool:
    """Whether the request reached Succeeded or Failed (it never runs again)."""
    return _phase_is_final(status)


def _base(status: RestoreRequestStatus | None) -> RestoreRequestStatus:
    return status if status is not None else RestoreRequestStatus()


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


def _translate(message: str) -> str:
    for pattern, replacement in _CLI_TO_SPEC:
        message = pattern.sub(replacement, message)
    return message


def _sentence(text: str) -> str:
    text = text.strip()
    return text if not text or text[-1] in ".!?" else text + "."


# --- before the Job ------------------------------------------------------------------------------


def waiting(
    status: RestoreRequestStatus | None,
    *,
    reason: str,
    message: str,
    source: str | None,
    generation: int | None,
    now: datetime,
) -> RestoreRequestStatus:
    """Pending: something the request needs is missing (a Secret, the policy, the claim);
    the operator looks again and starts the restore once it exists. Nothing was touched."""
    current = _base(status)
    if _phase_is_final(current):
        return current
    text = f"{_sentence(message)} Nothing was restored yet; the restore starts once it exists."
    updated = conditions.set_condition(
        current.conditions, type=READY, status="False", reason=reason, message=text,
        observed_generation=generation, now=now,
    )
    return current.model_copy(
        update={
            "phase": RestorePhase.PENDING,
            "conditions": updated,
            "source": source if source is not None else current.source,
            "message": text,
            "observed_generation": generation,
        }
    )


def rehydrating(
    status: RestoreRequestStatus | None,
    *,
    message: str,
    source: str | None,
    generation: int | None,
    now: datetime,
) -> RestoreRequestStatus:
    """Rehydrating: the backup (or WAL it needs) is in an archive storage class; readable
    copies were requested and the restore starts once all are readable. Nothing touched."""
    current = _base(status)
    if _phase_is_final(current):
        return current
    text = f"{_sentence(message)} Nothing was restored yet; the restore starts once every " \
        "object is readable."
    updated = conditions.set_condition(
        current.conditions, type=READY, status="False", reason="Rehydrating", message=text,
        observed_generation=generation, now=now,
    )
    return current.model_copy(
        update={
            "phase": RestorePhase.REHYDRATING,
            "conditions": updated,
            "source": source if source is not None else current.source,
            "message": text,
            "observed_generation": generation,
        }
    )


def refused(
    status: RestoreRequestStatus | None,
    *,
    reason: str,
    message: str,
    source: str | None,
    generation: int | None,
    now: datetime,
) -> RestoreRequestStatus:
    """Failed before any Job ran (the request cannot be served as written). Final."""
    current = _base(status)
    if _phase_is_final(current):
        return current
    text = (
        f"Restore refused: {_sentence(message)} Nothing was changed. Fix it in a new "
        "RestoreRequest (the spec of this one cannot change)."
    )
    return _final_failure(current, reason, text, generation, now, completed=now).model_copy(
        update={"source": source if source is not None else current.source}
    )


def _final_failure(
    current: RestoreRequestStatus,
    reason: str,
    text: str,
    generation: int | None,
    now: datetime,
    *,
    completed: datetime | None,
) -> RestoreRequestStatus:
    updated = conditions.set_condition(
        current.conditions, type=READY, status="False", reason=reason, message=text,
        observed_generation=generation, now=now,
    )
    updated = conditions.set_condition(
        updated, type=COMPLETE, status="False", reason=reason, message=text,
        observed_generation=generation, now=now,
    )
    updated = conditions.set_condition(
        updated, type=FAILED, status="True", reason=reason, message=text,
        observed_generation=generation, now=now,
    )
    duration = _seconds(current.started_at, completed)
    return current.model_copy(
        update={
            "phase": RestorePhase.FAILED,
            "conditions": updated,
            "completed_at": completed,
            "duration_seconds": duration,
            "duration": formats.format_duration(duration) if duration is not None else None,
            "message": text,
            "observed_generation": generation,
        }
    )


# --- the Job -------------------------------------------------------------------------------------


def job_created(
    status: RestoreRequestStatus | None,
    *,
    job_name: str,
    source: str,
    generation: int | None,
    now: datetime,
) -> RestoreRequestStatus:
    """Running: the restore Job exists. `startedAt` is set once (the RTO clock starts when
    the operator accepted the request and created its Job)."""
    current = _base(status)
    if _phase_is_final(current):
        return current
    text = f"restore Job {job_name} started"
    updated = conditions.set_condition(
        current.conditions, type=READY, status="True", reason="JobCreated",
        message=f"restore Job {job_name} created", observed_generation=generation, now=now,
    )
    for kind in (COMPLETE, FAILED):
        updated = conditions.set_condition(
            updated, type=kind, status="False", reason="Running", message=text,
            observed_generation=generation, now=now,
        )
    return current.model_copy(
        update={
            "phase": RestorePhase.RUNNING,
            "conditions": updated,
            "source": source,
            "job_name": job_name,
            "started_at": current.started_at or now,
            "message": text,
            "observed_generation": generation,
        }
    )


def _count(value: Any) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return value if ok else None


def restored_summary(result: Mapping[str, Any] | None) -> RestoredSummary | None:
    """What the runner's result says was restored (tolerant: unknown shapes give None)."""
    if not result:
        return None
    backup = result.get("backup_id", result.get("backup"))
    method = result.get("method")
    tables: list[str] | None = None
    raw_tables = result.get("tables")
    if isinstance(raw_tables, list) and all(isinstance(t, str) for t in raw_tables):
        tables = list(raw_tables) or None
    elif isinstance(result.get("table"), str):
        tables = [result["table"]]
    if method not in tuple(BackupMethod) and result.get("engine") == "redis":
        method = BackupMethod.SNAPSHOT  # the runner says "rdb": the API calls it snapshot
    lsn = result.get("recovered_to_lsn")
    if result.get("engine") == "kubernetes":
        return _kubernetes_summary(result, backup)
    summary = RestoredSummary(
        backup_id=backup if isinstance(backup, str) else None,
        method=BackupMethod(method) if method in tuple(BackupMethod) else None,
        recovered_to_time=parse_time(result.get("recovered_to_time")),
        recovered_to_lsn=lsn if isinstance(lsn, str) else None,
        tables=tables,
        repaired_rows=_count(result.get("rows_inserted")),
        keys_restored=_count(result.get("keys_restored")),
        keys_skipped=_count(result.get("keys_skipped")),
        objects_restored=_count(result.get("objects_restored")),
        objects_skipped=_count(result.get("objects_skipped")),
    )
    return summary if summary.model_dump(exclude_none=True) else None


_OBJECT_COUNTS = ("created", "updated", "recreated", "unchanged", "skipped", "failed")


def _kubernetes_summary(result: Mapping[str, Any], backup: Any) -> RestoredSummary:
    failures = []
    for failure in result.get("failures") or []:
        if isinstance(failure, dict):
            text = (f"{failure.get('kind')} {failure.get('namespace')}/{failure.get('name')}: "
                    f"{failure.get('error')}")
            failures.append(text[:512])
    return RestoredSummary(
        backup_id=backup if isinstance(backup, str) else None,
        method=BackupMethod.EXPORT,
        objects_created=_count(result.get("created")),
        objects_updated=_count(result.get("updated")),
        objects_recreated=_count(result.get("recreated")),
        objects_unchanged=_count(result.get("unchanged")),
        objects_skipped=_count(result.get("skipped")),
        objects_failed=_count(result.get("failed")),
        failures=failures[:10] or None,
    )


def _objects(summary: RestoredSummary) -> str:
    counts = [(name, getattr(summary, f"objects_{name}")) for name in _OBJECT_COUNTS]
    return ", ".join(f"{count} {name}" for name, count in counts if count)


def _keys(count: int) -> str:
    return f"{count} key{'' if count == 1 else 's'}"


def _success_message(target: TargetInfo, summary: RestoredSummary | None,
                     result: Mapping[str, Any] | None) -> str:
    backup = summary.backup_id if summary and summary.backup_id else "the backup"
    text = f"Restored backup {backup} into {target.description}"
    details: list[str] = []
    if summary is not None:
        if summary.repaired_rows is not None:
            present = (result or {}).get("rows_already_present")
            extra = f", {present} of the range already present" if isinstance(present, int) else ""
            details.append(f"{summary.repaired_rows} missing rows re-inserted{extra}")
        elif summary.tables:
            details.append("tables " + ", ".join(summary.tables))
        if summary.method is BackupMethod.EXPORT:
            details.append(f"objects: {_objects(summary) or 'none matched'}")
        if summary.keys_restored is not None:
            details.append(f"{_keys(summary.keys_restored)} restored")
        if summary.keys_skipped:
            details.append(f"{_keys(summary.keys_skipped)} it already had left as they were")
        if summary.objects_restored is not None:
            details.append(f"{summary.objects_restored} object(s) restored")
        if summary.objects_skipped:
            details.append(f"{summary.objects_skipped} object(s) it already had left as "
                           "they were")
        if summary.recovered_to_time is not None:
            details.append(
                "recovered to " + summary.recovered_to_time.strftime("%Y-%m-%dT%H:%M:%SZ")
            )
        if summary.recovered_to_lsn:
            details.append(f"recovered to LSN {summary.recovered_to_lsn}")
    if target.kind == TargetKind.VOLUME:
        details.append("the data directory is promoted and cleanly shut down, ready to start")
    return text + (f" ({'; '.join(details)})" if details else "") + "."


def _target_state(target: TargetInfo, reason: str, attempts: int = 1) -> str:
    # A refusal only proves nothing was written when no earlier attempt ran before it
    # (a database restore is one transaction: every attempt rolled back).
    untouched = _REDIS_CHECKED_FIRST if target.kind == TargetKind.REDIS else REFUSED_REASONS
    if reason in untouched and (attempts <= 1 or target.kind == TargetKind.DATABASE):
        return f"Nothing was changed in {target.description}."
    if target.kind == TargetKind.REDIS:
        return (
            "A Redis restore is not one transaction: keys restored before the failure, if "
            f"any, stay in {target.description}; no key was deleted. Restoring again is safe "
            "(without spec.overwrite, keys already there are skipped)."
        )
    if target.kind == TargetKind.KUBERNETES:
        return (
            "A Kubernetes restore is not one transaction: objects applied before the failure "
            f"stay in {target.description}. Restoring again is safe (mode missing skips what "
            "exists)."
        )
    if target.kind == TargetKind.BUCKET:
        return (
            "A bucket restore is not one transaction: objects restored before the failure, "
            f"if any, stay in {target.description}; every object written was checked first, "
            "and none was deleted. Restoring again is safe (without spec.overwrite, objects "
            "already there are skipped)."
        )
    if target.kind == TargetKind.VOLUME:
        return (
            f"{target.description[0].upper()}{target.description[1:]} may hold an INCOMPLETE "
            "data directory: do not start PostgreSQL on it; restore again into it with "
            "spec.overwrite: true or into a new volume."
        )
    return (
        f"The restore runs in one transaction, which was rolled back: {target.description} "
        "is unchanged."
    )


def _failure_message(target: TargetInfo, outcome: JobOutcome, attempts: int) -> str:
    what = "Restore refused" if outcome.reason in REFUSED_REASONS else "Restore failed"
    text = f"{what} ({outcome.reason}): {_sentence(_translate(outcome.message))}"
    if attempts > 1:
        text += f" (attempt {attempts}; earlier attempts failed too)"
    text += f" {_target_state(target, outcome.reason, attempts)}"
    hint = (_REDIS_HINTS if target.kind == TargetKind.REDIS else {}).get(
        outcome.reason, _HINTS.get(outcome.reason)
    )
    if hint:
        text += " " + hint.format(repo=target.repository_url or "URL")
    text += f" Details: `kubectl logs job/{outcome.job_name}`."
    return text


def job_observed(
    status: RestoreRequestStatus | None,
    outcome: JobOutcome,
    *,
    target: TargetInfo,
    generation: int | None,
    now: datetime,
    attempts: int = 1,
) -> RestoreRequestStatus:
    """Fold what the restore Job did into the status. Final phases are never left.
    `attempts`: how many pods of the Job ran to their end (retries included)."""
    current = _base(status)
    if _phase_is_final(current):
        return current
    started = current.started_at or outcome.started_at or now
    if outcome.state == "running":
        text = outcome.message or f"restore Job {outcome.job_name} is running"
        updated = current.conditions
        for kind in (COMPLETE, FAILED):
            updated = conditions.set_condition(
                updated, type=kind, status="False", reason=outcome.reason, message=text,
                observed_generation=generation, now=now,
            )
        return current.model_copy(
            update={
                "phase": RestorePhase.RUNNING,
                "conditions": updated,
                "job_name": outcome.job_name,
                "started_at": started,
                "message": text,
            }
        )
    completed = outcome.finished_at or now
    current = current.model_copy(update={"started_at": started, "job_name": outcome.job_name})
    if outcome.state == "failed":
        failed = _final_failure(
            current, outcome.reason, _failure_message(target, outcome, attempts), generation, now,
            completed=completed,
        )
        done = outcome.result or outcome.payload  # a failure's payload: what it did anyway
        if target.kind == TargetKind.KUBERNETES and done and done.get("engine") == "kubernetes":
            failed = failed.model_copy(update={"restored": restored_summary(done)})
        return failed
    summary = restored_summary(outcome.result)
    text = _success_message(target, summary, outcome.result)
    # Ready no longer says "JobCreated": the request is done, and says how it ended.
    updated = conditions.set_condition(
        current.conditions, type=READY, status="True", reason="Succeeded", message=text,
        observed_generation=generation, now=now,
    )
    updated = conditions.set_condition(
        updated, type=COMPLETE, status="True", reason="Succeeded", message=text,
        observed_generation=generation, now=now,
    )
    updated = conditions.set_condition(
        updated, type=FAILED, status="False", reason="Succeeded", message=text,
        observed_generation=generation, now=now,
    )
    duration = _seconds(started, completed)
    return current.model_copy(
        update={
            "phase": RestorePhase.SUCCEEDED,
            "conditions": updated,
            "completed_at": completed,
            "duration_seconds": duration,
            "duration": formats.format_duration(duration) if duration is not None else None,
            "restored": summary,
            "message": text,
            "observed_generation": generation,
        }
    )


def job_vanished(
    status: RestoreRequestStatus | None,
    *,
    job_name: str,
    target: TargetInfo,
    generation: int | None,
    now: datetime,
) -> RestoreRequestStatus:
    """The restore Job was deleted before it finished (by hand, or its namespace is going):
    the restore did not complete. Final."""
    current = _base(status)
    if _phase_is_final(current):
        return current
    text = (
        f"Restore failed (JobDeleted): the restore Job {job_name} was deleted before it "
        f"finished, which stopped the restore. {_target_state(target, 'JobDeleted')}"
    )
    return _final_failure(current, "JobDeleted", text, generation, now, completed=now)


def finished(status: RestoreRequestStatus | None, *, note: str) -> RestoreRequestStatus:
    """Append a note to the message of a finished request (e.g. the instance it started)."""
    current = _base(status)
    message = current.message or ""
    if note in message:
        return current
    return current.model_copy(update={"message": f"{message} {note}".strip()})


def instance_started(status: RestoreRequestStatus | None, *, name: str, image: str,
                     note: str) -> RestoreRequestStatus:
    """The instance's StatefulSet exists; it is not Ready yet (`instance_ready` says when)."""
    current = finished(status, note=note)
    if current.instance is not None:
        return current
    return current.model_copy(update={"instance": InstanceStatus(name=name, image=image)})


def instance_ready(status: RestoreRequestStatus | None, *, note: str) -> RestoreRequestStatus:
    """The instance's pod is Ready: only now does the message say PostgreSQL runs on it."""
    current = finished(status, note=note)
    if current.instance is None or current.instance.ready:
        return current
    return current.model_copy(update={"instance": current.instance.model_copy(
        update={"ready": True})})
