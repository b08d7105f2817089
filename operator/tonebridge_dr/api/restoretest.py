"""RestoreTest: scheduled proof that backups restore, in time, with the right data (spec 7.1)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, StrictBool, StrictInt

from tonebridge_dr.api import formats
from tonebridge_dr.api.base import (
    Cron,
    DnsLabel,
    FreeForm,
    Matches,
    ObjectName,
    PositiveDuration,
    Quantity,
    Rule,
    SpecModel,
    StatusModel,
    Time,
    unique,
)
from tonebridge_dr.api.common import BackupMethod, Notifications, ResourceRequirements
from tonebridge_dr.api.conditions import ConditionList
from tonebridge_dr.api.restorerequest import BackupId, DatabaseTarget, RestoreSource

__all__ = [
    "Check",
    "CheckResult",
    "Expectation",
    "RestoreTestObjectives",
    "RestoreTestSpec",
    "RestoreTestStatus",
    "Scratch",
    "ScratchInstance",
    "TestResult",
    "TestRun",
]


class ScratchInstance(SpecModel):
    """A throwaway PostgreSQL started for the test and deleted afterwards."""

    image: (
        Annotated[str, Field(max_length=512), Matches(formats.IMAGE_RE, formats.IMAGE_MESSAGE)]
        | None
    ) = None
    """PostgreSQL image (default: postgres:<major version recorded in the backup>)."""
    storage_size: Quantity | None = None
    """Size of a PersistentVolumeClaim for the data (default: an emptyDir volume)."""
    storage_class_name: ObjectName | None = None
    """StorageClass of that claim."""
    resources: ResourceRequirements | None = None
    """Resources of the PostgreSQL container."""


class Scratch(SpecModel):
    """Where the test restores to: exactly one of instance, database. Never production."""

    instance: ScratchInstance | None = None
    """Start a throwaway PostgreSQL (works for logical and physical backups)."""
    database: DatabaseTarget | None = None
    """An existing scratch server (logical backups only); the database is replaced."""

    cel_rules = (
        Rule(
            "has(self.instance) != has(self.database)",
            "scratch needs exactly one of instance or database",
            lambda s: (s.instance is None) != (s.database is None),
        ),
    )


class Expectation(SpecModel):
    """What the first column of the first row must look like."""

    equals: Annotated[str, Field(max_length=1024)] | None = None
    """Exact text of the value."""
    min: StrictInt | None = None
    """Smallest acceptable number."""
    max: StrictInt | None = None
    """Largest acceptable number."""
    non_empty: StrictBool | None = None
    """The query must return at least one row."""

    cel_rules = (
        Rule(
            "has(self.equals) || has(self.min) || has(self.max)"
            " || (has(self.nonEmpty) && self.nonEmpty)",
            "expect needs at least one of equals, min, max or nonEmpty: true",
            lambda e: (
                e.equals is not None
                or e.min is not None
                or e.max is not None
                or e.non_empty is True
            ),
        ),
        Rule(
            "!has(self.equals) || !(has(self.min) || has(self.max))",
            "equals cannot be combined with min or max",
            lambda e: e.equals is None or (e.min is None and e.max is None),
        ),
        Rule(
            "!has(self.min) || !has(self.max) || self.min <= self.max",
            "min must not be greater than max",
            lambda e: e.min is None or e.max is None or e.min <= e.max,
        ),
    )


class Check(SpecModel):
    """An integrity query run against the restored data."""

    name: DnsLabel
    """Check name, e.g. users-present."""
    query: Annotated[str, Field(min_length=1, max_length=4096)]
    """SQL run read-only, e.g. SELECT count(*) FROM users."""
    expect: Expectation
    """What the result must be."""


class RestoreTestObjectives(SpecModel):
    """Objectives the test measures."""

    rto: PositiveDuration | None = None
    """The restore must finish within this (RTOMet condition)."""


class RestoreTestSpec(SpecModel):
    """A scheduled restore of a backup into scratch space, with integrity checks."""

    schedule: Cron
    """When to run, e.g. quarterly '0 3 1 1,4,7,10 *'."""
    time_zone: (
        Annotated[
            str, Field(max_length=64), Matches(formats.TIME_ZONE_RE, formats.TIME_ZONE_MESSAGE)
        ]
        | None
    ) = None
    """Time zone of the schedule, e.g. Asia/Tokyo."""
    suspend: StrictBool = False
    """Stop scheduling runs."""
    source: RestoreSource
    """Where the backups come from."""
    backup_id: BackupId | None = None
    """Test this backup (default: the latest)."""
    latest: StrictBool | None = None
    """Test the newest complete backup (the default)."""
    method: BackupMethod | None = None
    """logical or physical for PostgreSQL (default: logical with scratch.database, else the
    newest backup's); snapshot for Redis (the default when the policy backs up Redis)."""
    scratch: Scratch
    """Where to restore to."""
    checks: (
        Annotated[
            list[Check],
            Field(
                max_length=32,
                json_schema_extra={
                    "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["name"],
                },
            ),
        ]
        | None
    ) = None
    """Integrity queries run after the restore."""
    objectives: RestoreTestObjectives | None = None
    """RTO to measure against."""
    notifications: Notifications | None = None
    """Webhook notifications."""
    resources: ResourceRequirements | None = None
    """Resources of the test Job."""

    cel_rules = (
        Rule(None, "check names must be unique", lambda t: unique(t.checks, "name")),
        Rule(
            "!has(self.backupId) || !has(self.latest) || !self.latest",
            "backupId and latest: true exclude each other (omit both to test the latest backup)",
            lambda t: t.backup_id is None or t.latest is not True,
        ),
        Rule(
            "!has(self.method) || self.method == 'logical' || self.method == 'physical'"
            " || self.method == 'snapshot'",
            "RestoreTests restore PostgreSQL (method logical or physical) and Redis (method "
            "snapshot) backups",
            lambda t: t.method
            in (None, BackupMethod.LOGICAL, BackupMethod.PHYSICAL, BackupMethod.SNAPSHOT),
        ),
        Rule(
            "!has(self.method) || self.method != 'snapshot' || has(self.scratch.instance)",
            "a Redis restore test needs scratch.instance (a private redis-server in the Job)",
            lambda t: t.method != BackupMethod.SNAPSHOT or t.scratch.instance is not None,
        ),
        Rule(
            "!has(self.method) || self.method != 'physical' || has(self.scratch.instance)",
            "a physical restore test needs scratch.instance (PostgreSQL on its own volume)",
            lambda t: t.method != BackupMethod.PHYSICAL or t.scratch.instance is not None,
        ),
    )


class TestResult(StrEnum):
    """Outcome of a run."""

    __test__ = False  # not a pytest test class

    RUNNING = "Running"
    PASSED = "Passed"
    FAILED = "Failed"


class CheckResult(StatusModel):
    """Outcome of one check."""

    name: str
    """Check name."""
    passed: bool
    """Whether the expectation held."""
    value: str | None = None
    """The value the query returned."""
    message: str | None = None
    """Why it failed."""


class TestRun(StatusModel):
    """One run of the test."""

    __test__ = False  # not a pytest test class

    started_at: Time | None = None
    """When the run started."""
    completed_at: Time | None = None
    """When it finished."""
    result: TestResult | None = None
    """Running, Passed or Failed."""
    backup_id: str | None = None
    """Backup that was restored."""
    job_name: str | None = None
    """The test Job."""
    restore_duration_seconds: Annotated[float, Field(ge=0)] | None = None
    """Measured restore time (the RTO evidence)."""
    restore_duration: str | None = None
    """The same, as text for `kubectl get` (e.g. 12m30s)."""
    rto_met: bool | None = None
    """Whether the restore finished within objectives.rto."""
    checks: list[CheckResult] | None = None
    """Check outcomes."""
    message: str | None = None
    """What the run found, in one line: the backup, the restore time and the checks, or
    why it failed."""


class RestoreTestStatus(StatusModel):
    """Observed state of a RestoreTest."""

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The metadata.generation last reconciled."""
    conditions: ConditionList | None = None
    """Ready, Passed, RTOMet."""
    source: str | None = None
    """Summary of the source for `kubectl get` (the BackupPolicy, or URL and policy name)."""
    last_run: TestRun | None = None
    """The newest run."""
    last_successful_run_time: Time | None = None
    """When a run last passed."""
    run_count: Annotated[int, Field(ge=0)] | None = None
    """Runs so far."""
    kopf: FreeForm | None = None
    """Reserved for the kopf framework's own bookkeeping."""
