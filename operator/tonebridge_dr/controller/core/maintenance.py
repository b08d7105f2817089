"""Repository maintenance run by the operator: retention of a policy's backups and WAL.

The second (and last) seam between the controller and the repository besides the catalog
reader: it deletes, so it uses the policy's *backup* credentials
(`spec.repository.credentialsSecretRef`; without one, the operator's own identity), never
the read-only restore credentials.

`apply_retention(policy, kube, protect=..., now=...)` never raises: every failure becomes
`RetentionOutcome.error`, one sentence without any secret in it.

What one run does (see runner/repository/retention.py for the rules):
1. `Repository.prune` with the policy's plan: each schedule's `retention`, else
   `spec.retention`, per series, in the schedule's time zone; `protect` (backups running
   restores use) kept; crashed writes older than the grace removed.
2. For PostgreSQL targets: archived WAL older than the oldest retained physical backup is
   deleted (none without a physical backup), so the PITR window is exactly the retained
   physical backups up to the newest archived WAL.
3. With `repository.objectLock.retainFor: fromRetention`: every kept backup's objects are
   locked until the end of the longest rule that keeps it (a yearly backup under
   `yearly: 7` for 7 years from its start); a lock is never shortened.
4. For bucket targets: content objects no kept snapshot references (and older than the
   grace) are garbage-collected (runner/engines/bucket/gc.py; deferred while a snapshot
   runs).
5. With `spec.archive`: the data objects of retained backups older than `archive.after`
   move to `archive.storageClass` in place (manifests stay readable), and so does WAL
   that no non-archived physical backup needs (runner/repository/tiering.py,
   runner/engines/postgres/wal/tiering.py). After the prune, so nothing is archived only
   to be deleted.
5. With `repository.replicas`: the same plan (and the same protected ids) is applied in
   each replica's folder, with the replica's own credentials, and so is the WAL rule: a
   replica loses what its own retention lets go, never what merely vanished from the
   primary (docs/replicas.md). One sentence per replica in the outcome; a replica that
   cannot be pruned is a sentence too, never an error of the primary's run.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import socket
import urllib.parse
from pathlib import Path
from typing import Any

from tonebridge_dr.api import runner_contract
from tonebridge_dr.api.common import Replica, Retention
from tonebridge_dr.api.common import Repository as ApiRepository
from tonebridge_dr.api.kinds import BackupPolicy
from tonebridge_dr.builders import names
from tonebridge_dr.controller.core import catalog
from tonebridge_dr.controller.core.kube import ApiError, Kube
from tonebridge_dr.runner import errors as runner_errors
from tonebridge_dr.runner.repository import audit, retention
from tonebridge_dr.runner.repository.catalog import PruneReport, Repository, candidate_of
from tonebridge_dr.runner.repository.manifest import Manifest
from tonebridge_dr.runner.storage import S3Config, open_storage
from tonebridge_dr.runner.storage.base import ObjectLock
from tonebridge_dr.status.retention import RetentionOutcome

log = logging.getLogger(__name__)

TRIGGER_BACKUP = "backup"
TRIGGER_SCHEDULE = "schedule"


def _policy(rules: Retention) -> retention.RetentionPolicy:
    return retention.RetentionPolicy(
        keep_last=rules.keep_last or 0,
        hourly=rules.hourly or 0,
        daily=rules.daily or 0,
        weekly=rules.weekly or 0,
        monthly=rules.monthly or 0,
        yearly=rules.yearly or 0,
        min_age=rules.min_age,
    )


def plan_of(policy: BackupPolicy) -> retention.RetentionPlan:
    """The policy's retention plan: one rule per schedule that has its own `retention`
    (counted in that schedule's time zone), `spec.retention` for the rest.

    The default rule counts periods in UTC for backups without a schedule; for a
    schedule's backups it counts in that schedule's time zone (`Rule` per schedule).
    """
    spec = policy.spec
    schedules: dict[str, retention.Rule] = {}
    for schedule in spec.schedules:
        rules = schedule.retention or spec.retention
        if rules is not None:
            schedules[schedule.name] = retention.Rule(_policy(rules), schedule.time_zone)
    default = retention.Rule(_policy(spec.retention)) if spec.retention is not None else None
    return retention.RetentionPlan(default=default, schedules=schedules)


def _storage_config(policy: BackupPolicy, kube: Kube) -> S3Config | None:
    """The backup credentials, and the policy's Object Lock: what the operator writes
    (audit records) is locked like what its Jobs write."""
    url = policy.spec.repository.url
    if urllib.parse.urlsplit(url).scheme == "file":
        return None
    config = catalog.s3_config(policy, kube, writer=True)
    lock = policy.spec.repository.object_lock
    if lock is None:
        return config
    retain = (runner_contract.FROM_RETENTION_INITIAL_LOCK if lock.from_retention
              else lock.retain_for)
    assert isinstance(retain, dt.timedelta)
    return dataclasses.replace(config, object_lock=ObjectLock(lock.mode.value, retain))


def _outcome(
    report: PruneReport,
    kept: list[Manifest],
    trigger: str,
    *,
    wal_deleted: int,
    wal_bytes: int,
    wal_end: dt.datetime | None,
) -> RetentionOutcome:
    oldest = min(kept, key=lambda m: m.started_at, default=None)
    physical = [m for m in kept if m.engine == "postgres" and m.method == "physical"]
    oldest_physical = min(physical, key=lambda m: m.started_at, default=None)
    return RetentionOutcome(
        trigger=trigger,
        rules=report.policy,
        kept=len(report.kept),
        deleted=tuple(report.deleted),
        protected=tuple(report.protected),
        locked=tuple(report.locked),
        orphans=len(report.orphans),
        oldest_kept_id=oldest.id if oldest else None,
        oldest_kept_time=oldest.started_at if oldest else None,
        wal_deleted=wal_deleted,
        wal_deleted_bytes=wal_bytes,
        pitr_window_start=(
            oldest_physical.finished_at if oldest_physical and wal_end is not None else None
        ),
        pitr_window_end=wal_end if oldest_physical else None,
    )


def apply_retention(
    policy: BackupPolicy,
    kube: Kube,
    *,
    trigger: str,
    protect: frozenset[str] = frozenset(),
    now: dt.datetime | None = None,
) -> RetentionOutcome:
    """Run retention on the policy's repository (see the module docstring); never raises.

    Every run that touched the repository leaves one audit record (operation `prune`);
    the daily run (`trigger="schedule"`) also deletes audit records older than
    `spec.auditRetention`. Without any rule and without `spec.archive`, a run after a
    backup does nothing at all.
    """
    plan = plan_of(policy)
    idle = plan.is_empty and policy.spec.archive is None
    if idle and trigger != TRIGGER_SCHEDULE:
        return RetentionOutcome(trigger=trigger, no_rules=True)
    url = names.policy_repository_url(policy.spec.repository.url, policy.metadata.name or "")
    when = now or dt.datetime.now(dt.UTC)
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "file" and not Path(urllib.parse.unquote(parsed.path)).is_dir():
        # No backup ran yet (the folder is made by the first one): nothing to keep or delete.
        return RetentionOutcome(trigger=trigger, no_rules=idle)
    repo: Repository | None = None
    try:
        storage = open_storage(url, create=False, s3=_storage_config(policy, kube))
        repo = Repository(storage)
        outcome = (
            RetentionOutcome(trigger=trigger, no_rules=True) if idle
            else _prune(policy, repo, plan, trigger, protect, when)
        )
        if not idle and not plan.is_empty:
            replicas = _prune_replicas(policy, kube, plan, protect, when)
            outcome = dataclasses.replace(outcome, extra=(*outcome.extra, *replicas))
        if trigger == TRIGGER_SCHEDULE:
            old = audit.prune_audit(repo, older_than=policy.spec.audit_retention, now=when)
            if old.deleted:
                outcome = dataclasses.replace(outcome, extra=(
                    *outcome.extra, f"Deleted {len(old.deleted)} audit record(s) older than "
                    f"the audit retention."))
    except catalog.CredentialsMissing as exc:
        outcome = RetentionOutcome(trigger=trigger, error=str(exc))
    except ApiError as exc:
        outcome = RetentionOutcome(
            trigger=trigger, error=f"cannot read the credentials Secret: {exc}"
        )
    except runner_errors.DRError as exc:
        outcome = RetentionOutcome(trigger=trigger, error=f"repository: {exc}")
    except Exception as exc:  # a bug or an unexpected library error: still a condition
        log.exception("retention of %s failed", url)
        outcome = RetentionOutcome(trigger=trigger, error=f"unexpected {type(exc).__name__}")
    if repo is not None:
        _audit(policy, repo, outcome, when)
    return outcome


def _prune(
    policy: BackupPolicy,
    repo: Repository,
    plan: retention.RetentionPlan,
    trigger: str,
    protect: frozenset[str],
    when: dt.datetime,
) -> RetentionOutcome:
    report = repo.prune(plan, now=when, protect=protect)
    wal_deleted = wal_bytes = 0
    wal_end: dt.datetime | None = None
    postgres = policy.spec.target.postgres
    if postgres is not None and not plan.is_empty:  # no rules: keep all WAL too
        from tonebridge_dr.runner.engines.postgres.wal import catalog as wal_catalog
        from tonebridge_dr.runner.engines.postgres.wal import retention as wal_retention

        wal = wal_retention.prune_wal(repo)
        wal_deleted, wal_bytes = wal.deleted, wal.deleted_bytes
        if postgres.wal_archive is not None:
            archived = wal_catalog.archive_status(repo.storage).last_archived_at
            wal_end = archived.astimezone(dt.UTC) if archived else None
    kept = [m for m in repo.list_backups() if m.id in set(report.kept)]
    extended = _extend_locks(policy, repo, plan, report, kept, when)
    collected: tuple[str, ...] = ()
    if policy.spec.target.bucket is not None:  # content shared by snapshots: mark and sweep
        from tonebridge_dr.runner.engines.bucket import gc

        garbage = gc.collect_garbage(repo, now=when)
        if garbage.deleted or garbage.deferred or garbage.interrupted:
            collected = (garbage.sentence(),)
    tiered = _archive(policy, repo, when)
    if report.deleted:
        log.info("%s: retention deleted %s", repo.url, ", ".join(report.deleted))
    outcome = _outcome(
        report, kept, trigger, wal_deleted=wal_deleted, wal_bytes=wal_bytes, wal_end=wal_end
    )
    sentences = (*collected, *tiered[1])
    if extended:
        sentences = (f"Extended the Object Lock of {extended} kept backup(s) to what their "
                     "rules keep.", *sentences)
    return dataclasses.replace(
        outcome, archived=tiered[0], extra=sentences, no_rules=plan.is_empty
    )


def _replica_config(policy: BackupPolicy, replica: Replica, kube: Kube) -> S3Config | None:
    if urllib.parse.urlsplit(replica.url).scheme == "file":
        return None
    as_repository = ApiRepository(url=replica.url, region=replica.region,
                                  endpoint=replica.endpoint,
                                  credentials_secret_ref=replica.credentials_secret_ref)
    name = replica.credentials_secret_ref.name if replica.credentials_secret_ref else None
    config = catalog.repository_s3_config(as_repository, policy.metadata.namespace or "default",
                                          name, kube)
    return dataclasses.replace(config, from_env=False)


def _prune_replicas(policy: BackupPolicy, kube: Kube, plan: retention.RetentionPlan,
                    protect: frozenset[str], when: dt.datetime) -> list[str]:
    """Apply `plan` in every replica (step 5 of the module docstring); one sentence each
    that deleted something or failed."""
    sentences: list[str] = []
    for replica in policy.spec.repository.replicas or ():
        url = names.policy_repository_url(replica.url, policy.metadata.name or "")
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme == "file" and not Path(urllib.parse.unquote(parsed.path)).is_dir():
            continue  # nothing replicated yet
        try:
            repo = Repository(open_storage(url, create=False,
                                           s3=_replica_config(policy, replica, kube)))
            report = repo.prune(plan, now=when, protect=protect)
            wal_deleted = 0
            if policy.spec.target.postgres is not None:
                from tonebridge_dr.runner.engines.postgres.wal import retention as wal_retention

                wal_deleted = wal_retention.prune_wal(repo).deleted
        except (catalog.CredentialsMissing, ApiError, runner_errors.DRError) as exc:
            log.warning("retention of replica %s failed: %s", url, exc)
            sentences.append(f"Replica {url}: retention failed: {exc}")
            continue
        if report.deleted or wal_deleted:
            log.info("%s: retention deleted %s", url, ", ".join(report.deleted) or "WAL only")
            sentences.append(f"Replica {url}: deleted {len(report.deleted)} backup(s) and "
                             f"{wal_deleted} WAL file(s) the same rules let go.")
    return sentences


def _audit(policy: BackupPolicy, repo: Repository, outcome: RetentionOutcome,
           started: dt.datetime) -> None:
    """One audit record of this run (best effort: a failure is one warning line)."""
    namespace = policy.metadata.namespace or "default"
    failed = outcome.error is not None
    record = audit.AuditRecord(
        operation="prune",
        started_at=started,
        finished_at=max(dt.datetime.now(dt.UTC), started),
        outcome=audit.FAILED if failed else audit.SUCCEEDED,
        who={"kind": "operator", "principal": "tonebridge-dr operator",
             "host": socket.gethostname(), "policy": f"{namespace}/{policy.metadata.name}",
             "trigger": outcome.trigger},
        backup_ids=outcome.deleted,
        repository=repo.url,
        details={"kept": outcome.kept, "deleted": len(outcome.deleted),
                 "protected": list(outcome.protected), "locked": list(outcome.locked),
                 "wal_deleted": outcome.wal_deleted, "archived": outcome.archived,
                 "rules": outcome.rules},
        error_reason="PruneFailed" if failed else None,
        error_message=outcome.error,
        exit_code=1 if failed else 0,
    )
    try:
        audit.write_record(repo.storage, record)
    except Exception as exc:  # never turns a retention run into a failure
        log.warning("%s: could not write the audit record of retention: %s", repo.url, exc)


def _extend_locks(
    policy: BackupPolicy,
    repo: Repository,
    plan: retention.RetentionPlan,
    report: PruneReport,
    kept: list[Manifest],
    now: dt.datetime,
) -> int:
    """`objectLock.retainFor: fromRetention`: lock every kept backup until the end of the
    longest rule that keeps it, and every link of a chain as long as the incremental that
    reads it (runner/repository/immutability.py); never shortens a lock. Returns how many
    backups got a later date."""
    lock = policy.spec.repository.object_lock
    if lock is None or not lock.from_retention:
        return 0
    from tonebridge_dr.runner.repository import immutability

    dates: dict[str, dt.datetime] = {}
    for manifest in kept:
        reasons = report.reasons.get(manifest.id)
        rule = plan.rule_for(candidate_of(manifest))
        if reasons is None or rule is None:
            continue
        dates[manifest.id] = immutability.retain_until(reasons, manifest.started_at,
                                                       rule.policy, now=now)
    # a chain's links stay locked as long as the incremental that reads them
    dates = immutability.follow_dependencies(dates, {m.id: m.depends_on for m in kept})
    extended = 0
    for manifest in kept:
        until = dates.get(manifest.id)
        if until is not None and immutability.extend_locks(repo, manifest.id, until,
                                                           mode=lock.mode.value):
            extended += 1
    return extended


def _archive(
    policy: BackupPolicy, repo: Repository, now: dt.datetime
) -> tuple[int, tuple[str, ...]]:
    """Move old backups (and WAL no readable physical backup needs) to the archive class:
    (backups moved, sentences for the message)."""
    archive = policy.spec.archive
    if archive is None:
        return 0, ()
    if policy.spec.target.bucket is not None:
        # Garbage collection reads every kept snapshot's content index: it stays readable.
        return 0, ("spec.archive does not apply to bucket snapshots (their content "
                   "indexes must stay readable for garbage collection).",)
    from tonebridge_dr.runner.repository import tiering

    storage_class = archive.storage_class.value
    report = tiering.archive_backups(repo, after=archive.after, storage_class=storage_class,
                                     now=now)
    sentences = []
    if report.moved:
        sentences.append(
            f"Moved {len(report.moved)} backup(s) ({report.objects} objects, {report.bytes} "
            f"bytes) to {storage_class}."
        )
    if policy.spec.target.postgres is not None:
        from tonebridge_dr.runner.engines.postgres.wal import tiering as wal_tiering

        wal = wal_tiering.archive_wal(repo, storage_class=storage_class)
        if wal.moved:
            sentences.append(f"Moved {wal.moved} archived WAL file(s) to {storage_class}.")
    return len(report.moved), tuple(sentences)


def record_run(
    policy: BackupPolicy,
    kube: Kube,
    *,
    name: str,
    report: dict[str, Any],
    succeeded: bool,
    started: dt.datetime,
) -> str:
    """Store a FailoverPlan run's `report` under `drills/` in `policy`'s repository (with
    its SHA-256, like restore-test reports) and one audit record (operation `failover`);
    returns the report's key. Raises DRError / CredentialsMissing / ApiError: the caller
    reports the failure (the run itself is over either way)."""
    from tonebridge_dr.runner.repository import reports

    url = names.policy_repository_url(policy.spec.repository.url, policy.metadata.name or "")
    storage = open_storage(url, create=True, s3=_storage_config(policy, kube))
    key = reports.free_key(storage, started, name, prefix=reports.DRILL_PREFIX)
    reports.write_report(storage, key, report)
    record = audit.AuditRecord(
        operation="failover",
        started_at=started,
        finished_at=max(dt.datetime.now(dt.UTC), started),
        outcome=audit.SUCCEEDED if succeeded else audit.FAILED,
        who={"kind": "operator", "principal": "tonebridge-dr operator",
             "host": socket.gethostname(), "plan": f"{report.get('namespace')}/"
             f"{report.get('plan')}", "trigger": report.get("triggered_by")},
        repository=storage.url,
        details={"mode": report.get("mode"), "phase": report.get("phase"),
                 "report": key, "stages": len(report.get("stages") or [])},
        error_reason=None if succeeded else str(report.get("phase")),
        error_message=None if succeeded else "see the report",
        exit_code=0 if succeeded else 1,
    )
    try:
        audit.write_record(storage, record)
    except Exception as exc:  # the report is stored; the record is best effort
        log.warning("%s: could not write the audit record of a failover run: %s", url, exc)
    return key
