"""The freshness monitor (spec 7.2, done right): one tick per policy and interval.

Each tick reads the repository catalog with the policy's read-only credentials (the
truth, not Job history), turns it into a CatalogSummary, runs `assess_freshness` and
writes the status. When RPOMet changes (and only then) it posts one Event and sends
at most one notification (the objective is missed; a miss is over); the previous
state lives in the status, so an operator restart does not notify again. An empty
or unreachable repository is a condition (NoBackups / RepositoryUnreachable), never
a crash.

The same tick, in the same status write, sets Restorable and RTOMet from the policy's
RestoreTests (`status.restorable.assess_restorable`) when the caller passes them.

Writes are kept few: the age of the recovery point grows on every tick, so a status
whose only difference is that age (and the ages in condition messages) is written
when the stored age is at least `refresh_after(interval)` old; metrics are updated
on every tick.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from typing import Any

from tonebridge_dr.api.backuppolicy import BackupPolicyStatus, WalArchiveMode
from tonebridge_dr.api.common import NotificationEvent
from tonebridge_dr.api.conditions import Reason
from tonebridge_dr.api.kinds import BackupPolicy
from tonebridge_dr.api.restoretest import RestoreTestStatus
from tonebridge_dr.builders import metadata, names
from tonebridge_dr.builders.replicas import replica_urls
from tonebridge_dr.controller.backuppolicy.reconcile import PolicyController
from tonebridge_dr.controller.core import database, kube, notify, objects
from tonebridge_dr.status import conditions, restorable
from tonebridge_dr.status.freshness import (
    CatalogSummary,
    FreshnessChange,
    assess_freshness,
    recovery_point,
)
from tonebridge_dr.status.jobs import parse_time
from tonebridge_dr.status.walarchiving import assess_wal_archiving

log = logging.getLogger(__name__)

REFRESH_MIN_SECONDS = 300.0
_VOLATILE_CONDITIONS = frozenset({conditions.RPO_MET, conditions.BACKUP_STALE,
                                  restorable.RESTORABLE, restorable.RTO_MET})

Json = dict[str, Any]


def refresh_after(interval: float) -> float:
    """Seconds after which an unchanged status is rewritten just for its age."""
    return max(REFRESH_MIN_SECONDS, 5 * interval)


def _stable(status: Json) -> Json:
    """The status without what changes on every tick by itself."""
    stable = {k: v for k, v in status.items() if k != "rpoAgeSeconds"}
    stable["conditions"] = [
        {k: v for k, v in c.items() if k != "message"} if c.get("type") in _VOLATILE_CONDITIONS
        else c
        for c in status.get("conditions") or []
    ]
    return stable


def significant(refresh: float) -> Callable[[Json, Json], bool]:
    def check(old: Json, new: Json) -> bool:
        if _stable(old) != _stable(new):
            return True
        old_age, new_age = old.get("rpoAgeSeconds"), new.get("rpoAgeSeconds")
        if old_age is None or new_age is None:
            return old_age != new_age
        return abs(float(new_age) - float(old_age)) >= refresh

    return check


def _streamer(controller: PolicyController, policy: BackupPolicy) -> tuple[str | None,
                                                                          int | None]:
    """(name, available pods) of the policy's WAL streamer Deployment; (None, None) without
    one; available None when it does not exist (yet) or cannot be read."""
    postgres = policy.spec.target.postgres
    if postgres is None or postgres.wal_archive is None or (
        postgres.wal_archive.mode != WalArchiveMode.STREAM
    ):
        return None, None
    name = names.wal_stream_name(metadata.owner_name(policy))
    try:
        found = controller.ctx.kube.get_or_none(kube.DEPLOYMENT,
                                                policy.metadata.namespace or "default", name)
    except kube.ApiError:
        return name, None
    if found is None:
        return name, None
    return name, int((found.get("status") or {}).get("availableReplicas") or 0)


def tick(
    controller: PolicyController,
    body: Mapping[str, Any],
    restore_tests: Mapping[str, RestoreTestStatus | None] | None = None,
) -> FreshnessChange | None:
    """One monitoring round for one policy; returns the RPOMet change, if any.
    `restore_tests` (name -> status of the policy's RestoreTests; None: unknown this
    tick) decides Restorable and RTOMet."""
    ctx = controller.ctx
    metadata = body.get("metadata") or {}
    namespace, name = objects.ident(body)
    if metadata.get("deletionTimestamp"):
        return None
    try:
        policy = controller.parse(body)
    except objects.InvalidSpec:
        return None  # reconcile reports it
    read = ctx.catalog.read(policy, ctx.kube)
    summary = read.summary
    archiver = database.observe(policy, ctx.kube)
    if archiver is not None and archiver.error is not None:
        log.info("%s/%s: RPO from the catalog only: %s", namespace, name, archiver.error)
    created_at = parse_time(metadata.get("creationTimestamp"))
    streamer, available = _streamer(controller, policy)
    now = ctx.clock()
    changes: list[FreshnessChange | None] = [None]
    objectives = policy.spec.objectives

    def mutate(current: Json, status: BackupPolicyStatus | None) -> BackupPolicyStatus:
        generation = (current.get("metadata") or {}).get("generation")
        new, change = assess_freshness(status, summary, objectives, generation=generation,
                                       now=now, archiver=archiver, created_at=created_at,
                                       replicas=replica_urls(policy))
        changes[0] = change
        postgres = policy.spec.target.postgres
        new = assess_wal_archiving(
            new, postgres.wal_archive.mode if postgres and postgres.wal_archive else None,
            deployment=streamer, available=available, archiver=archiver,
            newest_wal_time=summary.newest_wal_time if summary.error is None else None,
            generation=generation, now=now)
        if restore_tests is not None:
            new = restorable.assess_restorable(
                new, restore_tests, rto=objectives.rto if objectives is not None else None,
                generation=generation, now=now)
        return new

    refresh = refresh_after(ctx.settings.freshness_interval)
    current = controller.write_status(body, mutate, significant=significant(refresh))
    if current is None:
        return None
    status = controller.status_of(current)
    ctx.metrics.catalog_read(
        namespace, name,
        ok=summary.error is None,
        rpo_age_seconds=_age(summary, now),
        backups=summary.backup_count if summary.error is None else None,
    )
    if summary.error is None and summary.newest_backup_time is not None:
        ctx.metrics.backup_succeeded(
            namespace, name,
            finished_at=summary.newest_backup_time.timestamp(),
            duration_seconds=read.newest_duration_seconds,
            size_bytes=read.newest_size_bytes,
        )
    change = changes[0]
    if change is not None:
        _report(controller, current, policy, change, status)
    return change


def _age(summary: CatalogSummary, now: dt.datetime) -> float | None:
    """Age of the honest recovery point (the one RPOMet judges), for the metric."""
    point = recovery_point(summary)
    return max(0.0, (now - point).total_seconds()) if point is not None else None


def _report(
    controller: PolicyController,
    body: Json,
    policy: BackupPolicy,
    change: FreshnessChange,
    status: BackupPolicyStatus | None,
) -> None:
    namespace, name = objects.ident(body)
    log.info("%s/%s: RPOMet %s -> %s: %s", namespace, name, change.old_state,
             change.new_state, change.message)
    if change.new_state == "False":
        reason, warning, state = Reason.RPO_MISSED, True, "Missed"
    elif change.new_state == "True":
        reason, warning, state = Reason.RPO_MET, False, "Resolved"
    else:
        reason = Reason(change.reason) if change.reason else Reason.RPO_UNKNOWN
        warning, state = True, "Unknown"
    controller.event(body, reason, change.message, warning=warning)
    # Notify when the objective is missed, and when a miss is over; not for Unknown
    # (no backup yet / unreadable repository: Events and metrics cover those).
    if change.new_state == "Unknown" or (
        change.new_state == "True" and change.old_state != "False"
    ):
        return
    stale = conditions.get_condition(status.conditions if status else None,
                                     conditions.BACKUP_STALE)
    # ONE notification per change: RPOMissed if the policy wants it, else BackupStale
    # (the same situation seen from the backups' side); recovery goes to the same event.
    event = NotificationEvent.RPO_MISSED
    if not _wants(policy, event) and (
        _wants(policy, NotificationEvent.BACKUP_STALE)
        and (change.new_state == "True" or (stale is not None and stale.status.value == "True"))
    ):
        event = NotificationEvent.BACKUP_STALE
    notify.send_notification(controller.ctx, namespace, name, policy.spec.notifications, event,
                             state=state, message=change.message)


def _wants(policy: BackupPolicy, event: NotificationEvent) -> bool:
    return notify.wanted(policy.spec.notifications, event)
