"""Which backups to keep: grandfather-father-son retention (pure, no I/O).

The rules follow restic/borg `forget`, evaluated in a time zone (default UTC; a
policy's schedule passes its own, so "daily" means its calendar days):

- `keep_last=N` keeps the N newest backups.
- `hourly/daily/weekly/monthly/yearly=N` keep, for each of the N most recent
  periods (hour, calendar day, ISO week, month, year) *that have a backup*, the
  newest backup of that period. Periods without a backup do not use up a count.
- `min_age`: nothing younger than `min_age` (relative to `now`) is ever deleted.
- The newest backup is always kept, whatever the rules say.
- A policy without any count set keeps everything (an empty policy must never
  wipe a repository).

Properties the tests check: the result is a subset of the input; it is
deterministic (input order does not matter; ties in time are broken by id);
idempotent (applying the policy to its own result keeps all of it); monotone
(raising a count of a policy that has a rule never drops a backup that was kept).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import zoneinfo
from collections.abc import Callable, Hashable, Mapping, Sequence

from tonebridge_dr.runner.repository import ids

_Bucket = Callable[[dt.datetime], Hashable]

#: Period rules in the order they are reported; each maps a UTC time to its period.
PERIODS: tuple[tuple[str, _Bucket], ...] = (
    ("hourly", lambda t: (t.year, t.month, t.day, t.hour)),
    ("daily", lambda t: (t.year, t.month, t.day)),
    ("weekly", lambda t: tuple(t.isocalendar())[:2]),
    ("monthly", lambda t: (t.year, t.month)),
    ("yearly", lambda t: t.year),
)


@dataclasses.dataclass(frozen=True)
class RetentionPolicy:
    """How many backups to keep per rule; see the module docstring for the semantics."""

    keep_last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    min_age: dt.timedelta | None = None

    def __post_init__(self) -> None:
        for field in ("keep_last", *(name for name, _ in PERIODS)):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"retention {field} must be a non-negative integer, got {value!r}")
        if self.min_age is not None and self.min_age < dt.timedelta(0):
            raise ValueError(f"retention min_age must not be negative, got {self.min_age}")

    @property
    def is_empty(self) -> bool:
        """True when no count is set: such a policy keeps everything."""
        return self.keep_last == 0 and all(getattr(self, name) == 0 for name, _ in PERIODS)

    def describe(self) -> str:
        """A short human summary, e.g. "last=3 daily=30 yearly=7 min_age=1d"."""
        parts = [f"last={self.keep_last}"] if self.keep_last else []
        parts += [f"{name}={getattr(self, name)}" for name, _ in PERIODS if getattr(self, name)]
        if self.min_age is not None:
            parts.append(f"min_age={_duration(self.min_age)}")
        return " ".join(parts) or "keep everything"


def _duration(value: dt.timedelta) -> str:
    """Compact text of a duration: 3d, 6h, 1d12h, 90s."""
    seconds = int(value.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts) or "0s"


def _utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("retention works on timezone-aware datetimes")
    return value.astimezone(dt.UTC)


def zone(name: str | None) -> dt.tzinfo:
    """The tzinfo of an IANA name ("Asia/Tokyo"); None or "UTC" is UTC. Raises ValueError."""
    if name is None or name in ("UTC", "Etc/UTC"):
        return dt.UTC
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


def _tiebreak(backup_id: str) -> tuple[str, int]:
    try:
        return ids.sort_key(backup_id)
    except ValueError:
        return backup_id, 0


def explain_keep(
    backups: Sequence[tuple[str, dt.datetime]],
    policy: RetentionPolicy,
    now: dt.datetime,
    time_zone: dt.tzinfo = dt.UTC,
) -> dict[str, list[str]]:
    """Map every kept backup id to the rules that keep it ("newest", "last", "daily", ...).

    `backups` are (id, start time) pairs, ids unique. Ids missing from the result
    are the ones the policy lets go. Hours, days, weeks, months and years are those
    of `time_zone` (a backup at 23:30 UTC is on the next day in Asia/Tokyo).
    """
    now = _utc(now)
    seen: dict[str, dt.datetime] = {}
    for backup_id, started in backups:
        if backup_id in seen:
            raise ValueError(f"backup id {backup_id!r} appears twice")
        seen[backup_id] = _utc(started)
    # Newest first; equal times broken by id so the order never depends on the input's.
    ordered = sorted(seen.items(), key=lambda item: (item[1], _tiebreak(item[0])), reverse=True)
    reasons: dict[str, list[str]] = {}
    if not ordered:
        return reasons

    def keep(backup_id: str, reason: str) -> None:
        reasons.setdefault(backup_id, []).append(reason)

    if policy.is_empty:
        for backup_id, _ in ordered:
            keep(backup_id, "no-rule")
        return reasons

    keep(ordered[0][0], "newest")
    for backup_id, _ in ordered[: policy.keep_last]:
        keep(backup_id, "last")
    for name, bucket_of in PERIODS:
        budget: int = getattr(policy, name)
        previous: object = object()  # a sentinel no bucket equals
        for backup_id, started in ordered:
            if budget == 0:
                break
            bucket = bucket_of(started.astimezone(time_zone))
            if bucket != previous:
                keep(backup_id, name)  # newest of a new, older period
                budget -= 1
                previous = bucket
    if policy.min_age is not None:
        for backup_id, started in ordered:
            if now - started < policy.min_age:
                keep(backup_id, "min-age")
    return {backup_id: reasons[backup_id] for backup_id, _ in ordered if backup_id in reasons}


def select_keep(
    backups: Sequence[tuple[str, dt.datetime]],
    policy: RetentionPolicy,
    now: dt.datetime,
    time_zone: dt.tzinfo = dt.UTC,
) -> set[str]:
    """The ids `policy` keeps out of `backups` ((id, start time) pairs) at time `now`."""
    return set(explain_keep(backups, policy, now, time_zone))


# --- plans: which rule applies to which backups ---------------------------------------------


@dataclasses.dataclass(frozen=True)
class Rule:
    """A retention policy and the time zone its periods are counted in."""

    policy: RetentionPolicy
    time_zone: str | None = None

    def __post_init__(self) -> None:
        zone(self.time_zone)  # ValueError early for an unknown zone


@dataclasses.dataclass(frozen=True)
class Candidate:
    """What a plan needs to know of one complete backup (from its manifest)."""

    id: str
    started_at: dt.datetime
    engine: str
    method: str
    schedule: str | None = None
    tables: tuple[str, ...] = ()

    @property
    def series(self) -> tuple[str, ...]:
        """Backups that replace each other: those of one schedule, else those of one
        engine, method and table subset (a dump of 3 hot tables never stands in for a
        full dump, and a logical backup never for a physical one)."""
        if self.schedule:
            return ("schedule", self.schedule)
        return ("manual", self.engine, self.method, *self.tables)


@dataclasses.dataclass(frozen=True)
class RetentionPlan:
    """Which rule keeps which backups.

    A backup made by schedule S follows `schedules[S]` when S has its own rule, else
    `default` (BackupPolicy `spec.retention`); without either it is kept. Each rule is
    applied to each *series* separately (`Candidate.series`), so the newest backup of
    every series survives and rules never trade a physical backup for a logical one.
    `engine`/`method`, when set, restrict the plan to those backups (others are kept).
    """

    default: Rule | None = None
    schedules: Mapping[str, Rule] = dataclasses.field(default_factory=dict)
    engine: str | None = None
    method: str | None = None

    def rule_for(self, candidate: Candidate) -> Rule | None:
        if (self.engine is not None and candidate.engine != self.engine) or (
            self.method is not None and candidate.method != self.method
        ):
            return None
        if candidate.schedule is not None and candidate.schedule in self.schedules:
            return self.schedules[candidate.schedule]
        return self.default

    @property
    def is_empty(self) -> bool:
        """True when no rule would ever let a backup go."""
        rules = [self.default, *self.schedules.values()]
        return all(rule is None or rule.policy.is_empty for rule in rules)

    def describe(self) -> str:
        parts = []
        if self.default is not None:
            parts.append(f"default: {self.default.policy.describe()}")
        for name in sorted(self.schedules):
            parts.append(f"schedule {name}: {self.schedules[name].policy.describe()}")
        return "; ".join(parts) or "keep everything"


def explain_plan(
    candidates: Sequence[Candidate], plan: RetentionPlan, now: dt.datetime
) -> dict[str, list[str]]:
    """Map every kept backup id to the rules that keep it; ids missing are let go.

    Backups without a rule are kept with reason "no-rule".
    """
    groups: dict[tuple[object, ...], tuple[Rule, list[Candidate]]] = {}
    reasons: dict[str, list[str]] = {}
    for candidate in candidates:
        rule = plan.rule_for(candidate)
        if rule is None:
            reasons[candidate.id] = ["no-rule"]
            continue
        key = (candidate.series, id(rule))
        groups.setdefault(key, (rule, []))[1].append(candidate)
    for rule, members in groups.values():
        kept = explain_keep(
            [(c.id, c.started_at) for c in members], rule.policy, now, zone(rule.time_zone)
        )
        reasons.update(kept)
    return reasons
