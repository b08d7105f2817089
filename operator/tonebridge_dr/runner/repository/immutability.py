"""S3 Object Lock dates that follow the retention rules (`retainFor: fromRetention`).

Objects are written with a short lock (runner contract FROM_RETENTION_INITIAL_LOCK,
two days). A retention run then, for every backup it keeps, computes the date with
`retain_until` (pure) and calls `extend_locks`, which pushes the lock of each object of
the backup to that date and never shortens one:

    reasons = retention.explain_keep(backups, policy, now)
    for backup_id, why in reasons.items():
        until = immutability.retain_until(why, started[backup_id], policy, now=now)
        immutability.extend_locks(repo, backup_id, until)

The date of a kept backup is the latest of:

- for each period rule that keeps it (`hourly`, `daily`, `weekly`, `monthly`, `yearly`
  = N): its start plus N of those periods (calendar months and years: a yearly backup
  under `yearly: 7` started 2026-03-01 is locked until 2033-03-01);
- with `min_age`: its start plus `min_age`;
- always: `now` plus the rolling floor (FROM_RETENTION_INITIAL_LOCK). Reasons whose end
  no rule can foresee (`newest`, `last`, `no-rule`, anything unknown) get only this: the
  next run extends them again while they are kept, so a kept backup never stands
  unlocked between two runs;
- for a backup another kept backup builds on (an incremental's chain): that backup's
  date too (`follow_dependencies`), so no link is unlocked while its chain is locked.
"""

from __future__ import annotations

import calendar
import datetime as dt
import logging
from collections.abc import Mapping, Sequence

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.contract import runner_contract
from tonebridge_dr.runner.repository import ids
from tonebridge_dr.runner.repository import manifest as manifests
from tonebridge_dr.runner.repository.catalog import CLAIM_PREFIX, Repository
from tonebridge_dr.runner.repository.retention import RetentionPolicy

log = logging.getLogger(__name__)

#: The least a kept backup stays locked after a retention run (and the initial lock).
ROLLING_FLOOR = runner_contract.FROM_RETENTION_INITIAL_LOCK

_FIXED_PERIODS: dict[str, dt.timedelta] = {
    "hourly": dt.timedelta(hours=1),
    "daily": dt.timedelta(days=1),
    "weekly": dt.timedelta(weeks=1),
}


def add_months(start: dt.datetime, months: int) -> dt.datetime:
    """`start` moved `months` calendar months on; a day the month lacks becomes its last
    (Jan 31 + 1 month = Feb 28/29; Feb 29 + 12 months = Feb 28)."""
    index = start.month - 1 + months
    year, month = start.year + index // 12, index % 12 + 1
    day = min(start.day, calendar.monthrange(year, month)[1])
    return start.replace(year=year, month=month, day=day)


def rule_end(rule: str, started: dt.datetime, policy: RetentionPolicy) -> dt.datetime | None:
    """`started` plus the periods of `rule` in `policy` (None: the rule names no period,
    or the policy does not set it)."""
    count = getattr(policy, rule, 0) if rule in (*_FIXED_PERIODS, "monthly", "yearly") else 0
    if not count:
        return None
    if rule in _FIXED_PERIODS:
        return started + count * _FIXED_PERIODS[rule]
    return add_months(started, count * (12 if rule == "yearly" else 1))


def retain_until(
    reasons: Sequence[str],
    started: dt.datetime,
    policy: RetentionPolicy,
    *,
    now: dt.datetime,
    floor: dt.timedelta = ROLLING_FLOOR,
) -> dt.datetime:
    """The Object Lock date of a backup that `policy` keeps for `reasons` (the list
    `retention.explain_keep` gives for it), started at `started`; see the module docstring.
    Pure; timezone-aware datetimes in, UTC out."""
    if started.tzinfo is None or now.tzinfo is None:
        raise ValueError("retain_until works on timezone-aware datetimes")
    started = started.astimezone(dt.UTC)
    candidates = [now.astimezone(dt.UTC) + floor]
    for reason in reasons:
        end = rule_end(reason, started, policy)
        if end is not None:
            candidates.append(end)
    if policy.min_age is not None:
        candidates.append(started + policy.min_age)
    return max(candidates)


def follow_dependencies(
    dates: Mapping[str, dt.datetime], depends_on: Mapping[str, Sequence[str]]
) -> dict[str, dt.datetime]:
    """`dates` (backup id -> lock date) with every backup locked at least as long as each
    backup that reads its objects (`Manifest.depends_on`: an incremental's whole chain).
    A full backup kept only as a link of a chain has no period rule of its own (reason
    `chain-of:<id>`): without this it would stay locked for the rolling floor while the
    incremental that needs it is locked for years, and could be deleted under it."""
    out = dict(dates)
    for backup_id, until in dates.items():
        for other in depends_on.get(backup_id, ()):
            if other != backup_id and (other not in out or out[other] < until):
                out[other] = until
    return out


def extend_locks(
    repo: Repository, backup_id: str, until: dt.datetime, *, mode: str | None = None
) -> list[str]:
    """Extend the Object Lock of every object of backup `backup_id` (its data objects and
    its manifest; not a writer's claim) to at least `until`, never shortening one.

    `mode`: GOVERNANCE or COMPLIANCE; default each object's own mode, else the
    repository's configured one (TONEBRIDGE_DR_S3_OBJECT_LOCK_MODE); COMPLIANCE is never
    weakened. Returns the keys whose date changed (empty when all were late enough).
    Idempotent and safe to retry. BackupNotFound when the backup has no objects;
    RepositoryConfigError on a repository without Object Lock (file://).
    """
    ids.check_backup_id(backup_id)
    keys = [
        info.key
        for info in repo.storage.list(manifests.backup_prefix(backup_id))
        if not info.key.rsplit("/", 1)[-1].startswith(CLAIM_PREFIX)
    ]
    if not keys:
        raise errors.BackupNotFound(f"backup {backup_id} not found in {repo.url}")
    changed = [key for key in keys if repo.storage.extend_retention(key, until, mode)]
    if changed:
        log.info(
            "extended the Object Lock of %d of %d objects of backup %s to %s",
            len(changed), len(keys), backup_id, until.astimezone(dt.UTC).isoformat(),
        )
    return changed
