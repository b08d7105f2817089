"""What a backup Job did, read from the Job and its pods (plain dicts as the API returns them).

The runner writes one compact JSON object to its container's termination message:
the backup result on success, `{"error": <Reason>, "message": ..., "exit_code": n}` on
failure (runner/result.py). With `terminationMessagePolicy: FallbackToLogsOnError` a
runner that died before writing it leaves the tail of its log there instead. Nothing
in a termination message is trusted: whatever it holds, `job_outcome` returns an
outcome and never raises.

Only the Job's `Complete` / `Failed` conditions end a Job (`SuccessCriteriaMet` and
`FailureTarget` come first, while pods are still terminating); until then the outcome
is `running`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from tonebridge_dr.api import formats

__all__ = [
    "LABEL_JOB_NAME",
    "LABEL_SCHEDULE",
    "JobOutcome",
    "JobState",
    "job_outcome",
    "parse_time",
    "termination_message",
]

JobState = Literal["running", "succeeded", "failed"]

LABEL_SCHEDULE = "dr.tonebridge.io/schedule"  # == builders.names.LABEL_SCHEDULE (sibling layer)
LABEL_JOB_NAME = "batch.kubernetes.io/job-name"
_LEGACY_JOB_NAME = "job-name"
_MESSAGE_LIMIT = 1024
_REASON = re.compile(formats.REASON_RE)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True)
class JobOutcome:
    """The state of one backup Job.

    `result` is the runner's JSON result (a dict with `id`, `engine`, `method`,
    `size_bytes`, `started_at`, `finished_at`, `duration_seconds`, ...) of a succeeded Job,
    or None when the pod left none that parses. `reason` is CamelCase (a condition
    reason); `message` says in one line what happened, for a failed Job why.
    """

    state: JobState
    job_name: str
    schedule: str | None
    started_at: datetime | None
    finished_at: datetime | None
    result: dict[str, Any] | None
    reason: str
    message: str
    exit_code: int | None = None
    payload: dict[str, Any] | None = None
    """The termination message of the attempt that decided the outcome, when it is a JSON
    object: on success the same as `result`; on failure the runner's error, which for a
    restore test that restored the backup but failed its checks (15) or its RTO (16) also
    carries the whole result."""


def parse_time(value: Any) -> datetime | None:
    """A Kubernetes timestamp (`2024-01-15T02:00:00Z`) as an aware datetime; None if absent
    or unreadable."""
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else None
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _clean(text: str, limit: int = _MESSAGE_LIMIT) -> str:
    text = _CONTROL.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _reason(value: Any) -> str | None:
    return value if isinstance(value, str) and _REASON.fullmatch(value) else None


def termination_message(text: Any) -> tuple[dict[str, Any] | None, str | None]:
    """(parsed JSON object, else None; last non-empty line of non-JSON text, else None)."""
    if not isinstance(text, str) or not text.strip():
        return None, None
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        return parsed, None
    lines = [line for line in text.splitlines() if line.strip()]
    return None, _clean(lines[-1]) if lines else None


def _condition(job: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for condition in _list(_mapping(job.get("status")).get("conditions")):
        condition = _mapping(condition)
        if condition.get("type") == type_ and condition.get("status") == "True":
            return condition
    return None


def _belongs(pod: Mapping[str, Any], job_name: str, job_uid: str | None) -> bool:
    metadata = _mapping(pod.get("metadata"))
    labels = _mapping(metadata.get("labels"))
    named = labels.get(LABEL_JOB_NAME, labels.get(_LEGACY_JOB_NAME))
    if named is not None and named != job_name:
        return False
    if job_uid:
        owners = [_mapping(o) for o in _list(metadata.get("ownerReferences"))]
        if owners and not any(o.get("uid") == job_uid for o in owners):
            return False
    return True


def _sort_key(pod: Mapping[str, Any]) -> tuple[str, str]:
    metadata = _mapping(pod.get("metadata"))
    created = metadata.get("creationTimestamp")
    name = metadata.get("name")
    return (created if isinstance(created, str) else "", name if isinstance(name, str) else "")


@dataclass(frozen=True)
class _Terminated:
    exit_code: int | None
    message: Any
    reason: str | None


def _terminated(pod: Mapping[str, Any]) -> _Terminated | None:
    """The terminated state of the pod's main (first terminated) container."""
    statuses = [_mapping(s) for s in _list(_mapping(pod.get("status")).get("containerStatuses"))]
    for status in statuses:
        for key in ("state", "lastState"):
            terminated = _mapping(_mapping(status.get(key)).get("terminated"))
            if terminated:
                code = terminated.get("exitCode")
                return _Terminated(
                    exit_code=code if isinstance(code, int) and not isinstance(code, bool)
                    else None,
                    message=terminated.get("message"),
                    reason=_reason(terminated.get("reason")),
                )
    return None


def _waiting(pods: Sequence[Mapping[str, Any]]) -> str | None:
    """Why the newest pod's container has not started, e.g. a missing Secret."""
    for pod in pods:
        statuses = _list(_mapping(pod.get("status")).get("containerStatuses"))
        for status in statuses:
            waiting = _mapping(_mapping(_mapping(status).get("state")).get("waiting"))
            reason = waiting.get("reason")
            if isinstance(reason, str) and reason not in ("ContainerCreating", "PodInitializing"):
                detail = waiting.get("message")
                text = f"{reason}: {detail}" if isinstance(detail, str) and detail else reason
                return _clean(text)
        break
    return None


def _is_error_payload(payload: Mapping[str, Any]) -> bool:
    return "error" in payload and "id" not in payload


def job_outcome(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> JobOutcome:
    """The outcome of `job`, using the newest of `pods` that belongs to it (by the
    `job-name` label / owner uid when present) for the termination message."""
    metadata = _mapping(job.get("metadata"))
    status = _mapping(job.get("status"))
    name, uid_value = metadata.get("name"), metadata.get("uid")
    job_name = name if isinstance(name, str) else ""
    uid = uid_value if isinstance(uid_value, str) else None
    label = _mapping(metadata.get("labels")).get(LABEL_SCHEDULE)
    schedule = label if isinstance(label, str) else None
    started_at = parse_time(status.get("startTime"))
    own = sorted(
        (p for p in (_mapping(p) for p in pods) if _belongs(p, job_name, uid)),
        key=_sort_key,
        reverse=True,
    )

    complete = _condition(job, "Complete")
    failed = _condition(job, "Failed")
    if complete is not None:
        finished_at = parse_time(status.get("completionTime")) or parse_time(
            complete.get("lastTransitionTime")
        )
        result = None
        exit_code = None
        payload = None
        for pod in own:  # the pod that succeeded is the newest one that says so
            terminated = _terminated(pod)
            if terminated is None or terminated.exit_code not in (0, None):
                continue
            payload, _ = termination_message(terminated.message)
            exit_code = terminated.exit_code
            if payload is not None and not _is_error_payload(payload):
                result = payload
            break
        message = (
            f"backup {result.get('id')} finished" if result is not None and result.get("id")
            else "the Job completed but its pod left no backup result"
        )
        return JobOutcome(
            state="succeeded",
            job_name=job_name,
            schedule=schedule,
            started_at=started_at,
            finished_at=finished_at,
            result=result,
            reason="Succeeded",
            message=message,
            exit_code=exit_code,
            payload=payload,
        )

    if failed is not None:
        finished_at = parse_time(failed.get("lastTransitionTime")) or parse_time(
            status.get("completionTime")
        )
        return _failed(job_name, schedule, started_at, finished_at, failed, own)

    waiting = _waiting(own)
    return JobOutcome(
        state="running",
        job_name=job_name,
        schedule=schedule,
        started_at=started_at,
        finished_at=None,
        result=None,
        reason="Pending" if waiting or not own else "Running",
        message=f"pod not running: {waiting}" if waiting else "",
    )


def _failed(
    job_name: str,
    schedule: str | None,
    started_at: datetime | None,
    finished_at: datetime | None,
    condition: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
) -> JobOutcome:
    job_reason = _reason(condition.get("reason"))
    job_message = condition.get("message")
    job_message = _clean(job_message) if isinstance(job_message, str) else ""

    runner_reason: str | None = None
    runner_message: str | None = None
    log_tail: str | None = None
    exit_code: int | None = None
    container_reason: str | None = None
    payload: dict[str, Any] | None = None
    for pod in pods:  # newest terminated pod: the last attempt
        terminated = _terminated(pod)
        if terminated is None:
            continue
        exit_code = terminated.exit_code
        container_reason = terminated.reason
        payload, log_tail = termination_message(terminated.message)
        if payload is not None:
            runner_reason = _reason(payload.get("error"))
            text = payload.get("message")
            runner_message = _clean(text) if isinstance(text, str) and text.strip() else None
            code = payload.get("exit_code")
            if exit_code is None and isinstance(code, int) and not isinstance(code, bool):
                exit_code = code
        break

    if job_reason == "DeadlineExceeded":
        reason = job_reason
        message = job_message or "the Job ran longer than activeDeadlineSeconds"
        if runner_message:
            message += f"; runner: {runner_message}"
    else:
        reason = runner_reason or job_reason or "JobFailed"
        if container_reason == "OOMKilled" and runner_reason is None:
            reason = "OOMKilled"
        message = runner_message or log_tail or job_message
        if not message:
            message = "the Job failed"
    if exit_code is not None and "exit code" not in message:
        message += f" (exit code {exit_code})"
    return JobOutcome(
        state="failed",
        job_name=job_name,
        schedule=schedule,
        started_at=started_at,
        finished_at=finished_at,
        result=None,
        reason=reason,
        message=_clean(message),
        exit_code=exit_code,
        payload=payload,
    )
