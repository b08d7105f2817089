"""Deciding a restore: `plan_restore(request, policy, settings) -> RestorePlan | Refusal`.

Pure (no API calls; tested without a cluster): from the typed request, the BackupPolicy
its `source.policyRef` names (None for a repository given directly) and the runner
settings, it yields everything `reconcile` then checks and creates: the resolved
source, the Secrets (and keys) the restore Job reads, the ServiceAccount it runs as,
the volume claim, the Job and its name, and the words of its Events. A request that
can never run as written is a `Refusal` (reason and one sentence).
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

from tonebridge_dr.api import formats
from tonebridge_dr.api.conditions import Reason
from tonebridge_dr.api.kinds import BackupPolicy, RestoreRequest
from tonebridge_dr.api.restorerequest import Rehydration
from tonebridge_dr.builders import restore as builders
from tonebridge_dr.builders.settings import RunnerSettings
from tonebridge_dr.controller.core.catalog import RestoreReadiness
from tonebridge_dr.controller.core.kind import Refusal
from tonebridge_dr.controller.core.secrets import SecretUse
from tonebridge_dr.status import restorerequest as rr_status

Json = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ClaimPlan:
    """The PersistentVolumeClaim a volume target fills."""

    name: str
    manifest: Json | None
    """What to create (`claimTemplate`); None: `claimName` names a claim that must exist."""


@dataclasses.dataclass(frozen=True)
class RestorePlan:
    """What one request needs and makes."""

    source: builders.ResolvedSource
    secrets: tuple[SecretUse, ...]
    """What the restore Job reads: checked before it is created."""
    service_account: str
    claim: ClaimPlan | None
    job: Json
    job_name: str
    target: rr_status.TargetInfo
    started: str
    """The RestoreStarted Event's message."""
    write_credentials: str | None
    """A WriteCredentials warning (the restore reads with the backup role), or None."""


def target_info(request: RestoreRequest, policy: BackupPolicy | None) -> rr_status.TargetInfo:
    """What status messages say about the target and the repository."""
    source = request.spec.source
    repository = source.repository or (policy.spec.repository if policy else None)
    policy_name = source.policy_name or (source.policy_ref.name if source.policy_ref else "")
    url = builders.policy_repository_url(repository.url, policy_name) if repository else ""
    return rr_status.TargetInfo(
        kind=builders.target_kind(request),  # the values of rr_status.TargetKind
        description=builders.target_description(request),
        repository_url=url,
    )


def _claim(request: RestoreRequest, policy: BackupPolicy | None) -> ClaimPlan | None:
    volume = request.spec.target.volume
    if volume is None:
        return None
    manifest = None if volume.claim_name is not None else (
        builders.build_restore_claim(request, policy)
    )
    return ClaimPlan(name=builders.claim_name(request) or "", manifest=manifest)


def plan_restore(
    request: RestoreRequest, policy: BackupPolicy | None, settings: RunnerSettings
) -> RestorePlan | Refusal:
    """The plan of `request`, or why it can never run. `policy` must be the BackupPolicy
    of `source.policyRef` when the request has one (the caller looked it up)."""
    try:
        source = builders.resolve_source(request, policy)
        job = builders.build_restore_job(request, policy, settings)
        claim = _claim(request, policy)
    except builders.RestoreSpecError as exc:
        return Refusal(Reason(exc.reason), exc.message)
    secrets = tuple(
        SecretUse(need.name, need.keys, need.purpose)
        for need in builders.secret_requirements(request, source)
    )
    job_name = str(job["metadata"]["name"])
    write_credentials = None
    if source.uses_write_credentials:
        write_credentials = (
            f'BackupPolicy "{source.policy_name}" has no repository.restoreCredentialsSecretRef: '
            "the restore Job uses the backup credentials; give restores a read-only role "
            "(spec 8.2)"
        )
    return RestorePlan(
        source=source,
        secrets=secrets,
        service_account=settings.restore_service_account,
        claim=claim,
        job=job,
        job_name=job_name,
        target=target_info(request, policy),
        started=f"restore Job {job_name} started: {builders.target_description(request)} "
        f"from {source.describe()}",
        write_credentials=write_credentials,
    )


#: A targetTime this much past "now" is a mistake (a time zone offset), not clock skew.
FUTURE_SLACK = timedelta(seconds=60)
#: On top of archiveTimeout: the upload of the segment that closes it.
WAL_SLACK = timedelta(seconds=60)
#: Object times have whole seconds (S3 LastModified): a segment archived "at" T may hold
#: commits of up to T + 1 s.
WAL_TIME_RESOLUTION = timedelta(seconds=1)
#: archiveTimeout of a repository given directly (no policy): PostgreSQL's own default
#: for tonebridge-dr's documented setting.
DEFAULT_ARCHIVE_TIMEOUT = timedelta(minutes=5)


def _utc_text(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def archive_timeout(policy: BackupPolicy | None) -> timedelta:
    postgres = policy.spec.target.postgres if policy is not None else None
    if postgres is not None and postgres.wal_archive is not None:
        return postgres.wal_archive.archive_timeout
    return DEFAULT_ARCHIVE_TIMEOUT


def point_in_time(
    request: RestoreRequest, policy: BackupPolicy | None, *, now: datetime,
    newest_wal: datetime | None,
) -> Refusal | str | None:
    """A `targetTime` the archive cannot cover yet: a Refusal when it lies in the future
    (before anything is created: no volume is left behind), the WaitingForWAL message when
    the WAL holding it is due within archiveTimeout (the newest archived WAL is older than
    the target, and the target is younger than archiveTimeout + a minute), else None (the
    runner decides; too late a target then fails with a message naming `wal-status`)."""
    target = request.spec.target_time
    if target is None:
        return None
    shown = _utc_text(target)
    if target > now + FUTURE_SLACK:
        return Refusal(
            Reason.TARGET_TIME_IN_FUTURE,
            f"targetTime {shown} is in the future (now {_utc_text(now)}): only a "
            "point in time that has passed can be restored; check the time zone offset, or "
            "use latest: true",
        )
    if newest_wal is None or target < newest_wal + WAL_TIME_RESOLUTION:
        return None
    timeout = archive_timeout(policy)
    if now - target > timeout + WAL_SLACK:
        return None
    return (
        f"waiting for WAL up to targetTime {shown}: the newest archived WAL is from "
        f"{_utc_text(newest_wal)}, and WAL is archived at least every "
        f"{formats.format_duration(timeout)} (walArchive.archiveTimeout); "
        "`tonebridge-dr wal-status` shows the archive"
    )


def rehydration(request: RestoreRequest) -> Rehydration:
    """The request's rehydration settings, or the documented defaults (1 day, Standard)."""
    return request.spec.rehydration or Rehydration()


def rehydration_wait(readiness: RestoreReadiness, settings: Rehydration) -> str | None:
    """Why the restore waits for a rehydration (the Rehydrating message), or None: every
    object is readable, or the check could not tell (then the Job runs and reports; its
    runner refuses an archived backup with exit 17 before touching the target)."""
    if readiness.error is not None or readiness.unreadable == 0:
        return None
    asked = f"{readiness.requested} requested now" if readiness.requested else "requested"
    return (
        f"backup {readiness.backup_id}: {readiness.unreadable} of {readiness.checked} objects "
        f"are in storage class {', '.join(readiness.classes) or 'archive'} and not readable "
        f"yet; rehydration {asked}, {readiness.in_progress} in progress (tier "
        f"{settings.tier.value}, readable for {settings.days} "
        f"day{'s' if settings.days != 1 else ''})"
    )

