"""Operator-wide settings of the pods the builders create (one value per operator install).

The controller fills this from its own configuration (Helm values / environment);
builders only read it. Frozen, so it can be shared by every handler.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tonebridge_dr.api import runner_contract as contract


def _default_resources() -> dict[str, Any]:
    return {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}


DEFAULT_NON_RETRIABLE_EXIT_CODES: tuple[int, ...] = contract.non_retriable_backup_codes()
"""Runner exit codes that a retry of a backup cannot fix (api/runner_contract.py): usage (2),
repository configuration (3), encryption (8), authentication (10), and the verdicts of a
restore test (15 checks failed, 16 RTO missed: a backup never exits with them)."""


@dataclass(frozen=True)
class RunnerSettings:
    """Image, identities and Job limits of runner pods."""

    image: str = "tonebridge-dr:dev"
    image_pull_policy: str = "IfNotPresent"
    backup_service_account: str = "tonebridge-dr-backup"
    restore_service_account: str = "tonebridge-dr-restore"
    starting_deadline_seconds: int = 300
    active_deadline_seconds: int = 6 * 3600
    backoff_limit: int = 1
    ttl_seconds_after_finished: int = 7 * 24 * 3600
    successful_jobs_history_limit: int = 3
    failed_jobs_history_limit: int = 3
    default_resources: dict[str, Any] = field(default_factory=_default_resources)
    command: tuple[str, ...] = ("tonebridge-dr",)
    """Entrypoint of the runner in the image; builders append the verb and flags as args."""
    run_as_user: int | None = None
    """Numeric uid for runner pods (also runAsGroup and fsGroup); None keeps the image's
    USER, which must then be numeric and non-root (runAsNonRoot is always set)."""
    non_retriable_exit_codes: tuple[int, ...] = DEFAULT_NON_RETRIABLE_EXIT_CODES
    """Exit codes that fail a backup Job at once (podFailurePolicy FailJob) instead of
    spending its backoffLimit; empty for no podFailurePolicy."""
    wal_stream_termination_grace_seconds: int = 60
    """Time the WAL streamer gets to flush and upload its partial segment on shutdown."""
