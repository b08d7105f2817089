"""BackupPolicy: what to back up, when, where to, and how long to keep it."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, StrictBool

from tonebridge_dr.api import formats, runner_contract
from tonebridge_dr.api.base import (
    Cron,
    DnsLabel,
    FreeForm,
    Matches,
    PositiveDuration,
    Rule,
    SpecModel,
    StatusModel,
    Time,
    unique,
)
from tonebridge_dr.api.common import (
    Archive,
    BackupMethod,
    Compression,
    DatabaseName,
    Encryption,
    Notifications,
    Objectives,
    PolicyRepository,
    Region,
    ResourceRequirements,
    Retention,
    SecretKeyRef,
    SecretRef,
    TableName,
)
from tonebridge_dr.api.conditions import ConditionList

__all__ = [
    "BackupPolicySpec",
    "BackupPolicyStatus",
    "BackupSummary",
    "BucketTarget",
    "ExportKind",
    "ExportKindName",
    "FailureSummary",
    "GitPush",
    "KubernetesTarget",
    "PostgresTarget",
    "RedisTarget",
    "ReplicaStatus",
    "RestoreTestSummary",
    "Schedule",
    "TableBackupSummary",
    "Target",
    "TargetKind",
    "WalArchive",
    "WalArchiveMode",
    "WalStatus",
]


class WalArchiveMode(StrEnum):
    """How WAL reaches the repository."""

    ARCHIVE_COMMAND = "archive_command"
    """The database runs `tonebridge-dr wal-push %p` as its archive_command."""
    STREAM = "stream"
    """A pg_receivewal Deployment streams WAL over a replication slot; no change to the
    database pod is needed."""


class WalArchive(SpecModel):
    """Continuous WAL archiving (spec 3.3): with physical base backups it allows
    point-in-time recovery."""

    mode: WalArchiveMode
    """archive_command or stream."""
    archive_timeout: PositiveDuration = Field(default="5m", validate_default=True)
    """Longest time a finished WAL position may wait before it is in the repository
    (PostgreSQL archive_timeout; in stream mode, how often the partial segment is flushed)."""
    slot: (
        Annotated[
            str,
            Field(max_length=63),
            Matches(r"^[a-z0-9_]+$", "must be a replication slot name: a-z, 0-9 and '_'"),
        ]
        | None
    ) = None
    """Replication slot used in stream mode (default: tonebridge_dr_<policy>)."""

    cel_rules = (
        Rule(
            "!has(self.slot) || self.mode == 'stream'",
            "slot is only used with mode: stream",
            lambda w: w.slot is None or w.mode == WalArchiveMode.STREAM,
        ),
    )


class PostgresTarget(SpecModel):
    """A PostgreSQL database."""

    database: DatabaseName
    """Database to back up, e.g. tonebridge_db."""
    dsn_secret_ref: SecretKeyRef
    """Secret key holding a libpq connection string or URI of the backup role, e.g.
    postgresql://backup_user:...@tonebridge-postgres:5432/tonebridge_db. Physical backups and
    WAL streaming need the REPLICATION attribute."""
    wal_archive: WalArchive | None = None
    """Continuous WAL archiving for point-in-time recovery."""


class RedisTarget(SpecModel):
    """A Redis server; snapshots are fetched over the replication protocol, so no access to
    the Redis data directory is needed."""

    url_secret_ref: SecretKeyRef
    """Secret key holding redis://[:password@]host:port (or rediss:// for TLS)."""


class ExportKind(StrEnum):
    """Kubernetes resources that can be exported."""

    CONFIGMAPS = "configmaps"
    SECRETS = "secrets"
    DEPLOYMENTS = "deployments"
    STATEFULSETS = "statefulsets"
    DAEMONSETS = "daemonsets"
    CRONJOBS = "cronjobs"
    SERVICES = "services"
    INGRESSES = "ingresses"
    SERVICEACCOUNTS = "serviceaccounts"
    ROLES = "roles"
    ROLEBINDINGS = "rolebindings"
    PERSISTENTVOLUMECLAIMS = "persistentvolumeclaims"
    HORIZONTALPODAUTOSCALERS = "horizontalpodautoscalers"
    NETWORKPOLICIES = "networkpolicies"


DEFAULT_EXPORT_KINDS: tuple[ExportKind, ...] = tuple(ExportKind)
"""What `kinds` means when omitted: every ExportKind, Secrets included (so a policy
without `kinds` needs `encryption`: the operator says so with Ready=False,
SecretsNeedEncryption)."""

_EXPORT_KIND_RE = (
    r"^(" + "|".join(kind.value for kind in ExportKind)
    + r"|[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z][A-Za-z0-9]*)$"
)
ExportKindName = Annotated[
    str, Field(max_length=317),
    Matches(_EXPORT_KIND_RE, "must be one of " + ", ".join(k.value for k in ExportKind)
            + ", or a custom resource as group/Kind (e.g. stable.example.com/CronTab)"),
]
"""A kind to export: an ExportKind value, or a custom resource as `group/Kind`."""


class GitPush(SpecModel):
    """Also commit the exported YAML to a git repository (spec 5.2). Secrets are never pushed."""

    url: Annotated[
        str, Field(max_length=1024), Matches(formats.GIT_URL_RE, formats.GIT_URL_MESSAGE)
    ]
    """Repository URL."""
    branch: Annotated[str, Field(min_length=1, max_length=255)] = "main"
    """Branch to push to."""
    path: Annotated[str, Field(max_length=255)] | None = None
    """Folder inside the repository (default: the root)."""
    credentials_secret_ref: SecretRef | None = None
    """Secret with `username`/`password` (https; the password may be a token) or
    `ssh-privatekey` (and optionally `known_hosts`) for ssh."""


class KubernetesTarget(SpecModel):
    """Kubernetes configuration: objects of chosen namespaces exported as clean YAML."""

    namespaces: Annotated[list[DnsLabel], Field(min_length=1, max_length=64)]
    """Namespaces to export."""
    kinds: Annotated[list[ExportKindName], Field(min_length=1, max_length=32)] | None = None
    """Resources to export: configmaps, secrets, deployments, statefulsets, daemonsets,
    cronjobs, services, ingresses, serviceaccounts, roles, rolebindings,
    persistentvolumeclaims (spec only), horizontalpodautoscalers, networkpolicies, or a
    custom resource as group/Kind. Default: all of those built-in kinds, secrets included.
    Secrets are only stored encrypted: they need spec.encryption."""
    label_selector: (
        Annotated[dict[str, Annotated[str, Field(max_length=63)]], Field(max_length=16)] | None
    ) = None
    """Export only objects with all of these labels."""
    git: GitPush | None = None
    """Also push the export to a git repository (never Secrets)."""

    @property
    def effective_kinds(self) -> tuple[str, ...]:
        """`kinds`, or the default kinds."""
        return tuple(self.kinds) if self.kinds else tuple(k.value for k in DEFAULT_EXPORT_KINDS)

    @property
    def exports_secrets(self) -> bool:
        return ExportKind.SECRETS.value in self.effective_kinds


class BucketTarget(SpecModel):
    """An object storage bucket (user uploads), copied incrementally into the repository."""

    url: Annotated[str, Field(max_length=1024), Matches(formats.S3_URL_RE, formats.S3_URL_MESSAGE)]
    """Source bucket and optional prefix: s3://bucket/prefix."""
    credentials_secret_ref: SecretRef | None = None
    """Read credentials for the source bucket (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)."""
    region: Region | None = None
    """Region of the source bucket."""
    endpoint: (
        Annotated[
            str, Field(max_length=1024), Matches(formats.HTTP_URL_RE, formats.HTTP_URL_MESSAGE)
        ]
        | None
    ) = None
    """Endpoint of an S3-compatible source."""


class TargetKind(StrEnum):
    """The four kinds of backup target."""

    POSTGRES = "postgres"
    REDIS = "redis"
    KUBERNETES = "kubernetes"
    BUCKET = "bucket"


_METHODS: dict[TargetKind, tuple[BackupMethod, ...]] = {
    TargetKind(engine.name): tuple(BackupMethod(method) for method in engine.methods)
    for engine in runner_contract.ENGINES
}
"""The methods of each target (the first is the default): the runner contract's engines."""


class Target(SpecModel):
    """What is backed up: exactly one of postgres, redis, kubernetes, bucket."""

    postgres: PostgresTarget | None = None
    """A PostgreSQL database (logical and physical backups, WAL archiving)."""
    redis: RedisTarget | None = None
    """A Redis server (RDB snapshots)."""
    kubernetes: KubernetesTarget | None = None
    """Kubernetes objects (configuration export)."""
    bucket: BucketTarget | None = None
    """An object storage bucket (incremental copy)."""

    cel_rules = (
        Rule(
            "(has(self.postgres) ? 1 : 0) + (has(self.redis) ? 1 : 0)"
            " + (has(self.kubernetes) ? 1 : 0) + (has(self.bucket) ? 1 : 0) == 1",
            "exactly one target must be set: postgres, redis, kubernetes or bucket",
            lambda t: (
                sum(x is not None for x in (t.postgres, t.redis, t.kubernetes, t.bucket)) == 1
            ),
        ),
    )

    @property
    def kind(self) -> TargetKind:
        """Which target is set."""
        for kind in TargetKind:
            if getattr(self, kind.value) is not None:
                return kind
        raise AssertionError("validated Target has exactly one kind")  # pragma: no cover

    def describe(self) -> str:
        """One-line summary for the TARGET column: `postgres/tonebridge_db`, `redis`, ..."""
        if self.postgres is not None:
            return f"postgres/{self.postgres.database}"
        if self.kubernetes is not None:
            return "kubernetes/" + ",".join(self.kubernetes.namespaces)
        if self.bucket is not None:
            return f"bucket/{self.bucket.url}"
        return self.kind.value


class Schedule(SpecModel):
    """One named cron schedule of backups."""

    name: DnsLabel
    """Name of the schedule (part of the CronJob name), e.g. daily-full."""
    cron: Cron
    """When to run, in cron syntax: '0 2 * * *', '@hourly'."""
    time_zone: (
        Annotated[
            str, Field(max_length=64), Matches(formats.TIME_ZONE_RE, formats.TIME_ZONE_MESSAGE)
        ]
        | None
    ) = None
    """Time zone of the cron expression, e.g. Asia/Tokyo (default: the controller's, UTC)."""
    method: BackupMethod | None = None
    """Backup method; default: logical for postgres, snapshot for redis, export for
    kubernetes, sync for bucket."""
    tables: Annotated[list[TableName], Field(min_length=1, max_length=64)] | None = None
    """Only these tables (logical PostgreSQL backups), e.g. hot tables backed up hourly."""
    retention: Retention | None = None
    """Retention of this schedule's backups (default: spec.retention)."""
    incremental: StrictBool | None = None
    """method: physical only: store only the data files' chunks that changed since this
    schedule's previous physical backup (a chain of incrementals on a full backup;
    restore assembles and verifies the chain; retention keeps whole chains). Not with
    spec.encryption."""
    full_every: PositiveDuration | None = None
    """With incremental: take a full backup once the chain's full backup is this old
    (default 7d)."""

    cel_rules = (
        Rule(
            "!has(self.tables) || !has(self.method) || self.method == 'logical'",
            "tables can only be used with method: logical",
            lambda s: s.tables is None or s.method in (None, BackupMethod.LOGICAL),
        ),
        Rule(
            "!has(self.incremental) || !self.incremental"
            " || (has(self.method) && self.method == 'physical')",
            "incremental can only be used with method: physical",
            lambda s: not s.incremental or s.method == BackupMethod.PHYSICAL,
        ),
        Rule(
            "!has(self.fullEvery) || (has(self.incremental) && self.incremental)",
            "fullEvery can only be used with incremental: true",
            lambda s: s.full_every is None or s.incremental is True,
        ),
    )


def _methods_match(spec: BackupPolicySpec) -> bool:
    allowed = _METHODS[spec.target.kind]
    return all(s.method is None or s.method in allowed for s in spec.schedules)


class BackupPolicySpec(SpecModel):
    """Desired backups of one target."""

    target: Target
    """What to back up: exactly one of postgres, redis, kubernetes, bucket."""
    schedules: Annotated[
        list[Schedule],
        Field(
            min_length=1,
            max_length=16,
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
            },
        ),
    ]
    """Named cron schedules, e.g. daily-full (logical), hourly-hot (hot tables), daily-physical."""
    repository: PolicyRepository
    """Where backups go."""
    compression: Compression = Field(default_factory=Compression)
    """Compression of backup streams (default zstd)."""
    encryption: Encryption | None = None
    """Client-side OpenPGP encryption."""
    retention: Retention | None = None
    """Which backups to keep; omit to keep everything."""
    archive: Archive | None = None
    """Move older backups to an archive storage class."""
    audit_retention: PositiveDuration = Field(default="1095d", validate_default=True)
    """How long audit records (`audit/` in the repository: who backed up, restored or
    deleted what, when) are kept; the operator's daily retention run deletes older ones.
    Default 3 years (spec 11.1)."""
    objectives: Objectives | None = None
    """RPO / RTO objectives."""
    notifications: Notifications | None = None
    """Webhook notifications and escalation."""
    suspend: StrictBool = False
    """Stop scheduling new backups, and delete nothing (no retention run) while suspended:
    existing backups stay as they are."""
    resources: ResourceRequirements | None = None
    """Resources of backup Jobs."""

    cel_rules = (
        Rule(
            None,  # list-type map: "spec.schedules[1]: Duplicate value: {"name":"daily"}"
            "schedule names must be unique",
            lambda p: unique(p.schedules, "name"),
        ),
        Rule(
            "!(has(self.target.postgres) || has(self.target.redis)"
            " || has(self.target.kubernetes) || has(self.target.bucket))"
            " || self.schedules.all(s, !has(s.method)"
            " || (has(self.target.postgres) && (s.method == 'logical' || s.method == 'physical'))"
            " || (has(self.target.redis) && s.method == 'snapshot')"
            " || (has(self.target.kubernetes) && s.method == 'export')"
            " || (has(self.target.bucket) && s.method == 'sync'))",
            "schedule method must suit the target: logical or physical for postgres, "
            "snapshot for redis, export for kubernetes, sync for bucket",
            _methods_match,
        ),
        Rule(
            "!(has(self.target.redis) || has(self.target.kubernetes) || has(self.target.bucket))"
            " || self.schedules.all(s, !has(s.tables))",
            "tables can only be listed for a postgres target",
            lambda p: p.target.postgres is not None or all(s.tables is None for s in p.schedules),
        ),
        Rule(
            "!has(self.encryption)"
            " || self.schedules.all(s, !has(s.incremental) || !s.incremental)",
            "incremental backups cannot be encrypted (the backup side could not read the "
            "previous backup's file index)",
            lambda p: p.encryption is None or not any(s.incremental for s in p.schedules),
        ),
        Rule(
            "!has(self.archive) || !self.repository.url.startsWith('file://')",
            "archive needs an s3:// repository (storage classes are an S3 feature)",
            lambda p: p.archive is None or not p.repository.url.startswith("file://"),
        ),
        Rule(
            "!has(self.target.kubernetes) || !has(self.target.kubernetes.kinds)"
            " || !('secrets' in self.target.kubernetes.kinds) || has(self.encryption)",
            "exporting secrets needs spec.encryption: Secrets are only stored encrypted",
            lambda p: (
                p.target.kubernetes is None
                or not p.target.kubernetes.kinds
                or "secrets" not in p.target.kubernetes.kinds
                or p.encryption is not None
            ),
        ),
        Rule(
            "!has(self.repository.objectLock)"
            " || self.repository.objectLock.retainFor != 'fromRetention'"
            " || has(self.retention) || self.schedules.exists(s, has(s.retention))",
            "objectLock retainFor: fromRetention needs retention rules (spec.retention or a "
            "schedule's retention); or give a duration such as 30d",
            lambda p: (
                p.repository.object_lock is None
                or not p.repository.object_lock.from_retention
                or p.retention is not None
                or any(s.retention is not None for s in p.schedules)
            ),
        ),
    )

    def describe_schedules(self) -> str:
        """One-line summary for the SCHEDULE column: `daily-full,hourly-hot,daily-physical`."""
        return ",".join(s.name for s in self.schedules)

    def method_of(self, schedule: Schedule) -> BackupMethod:
        """The schedule's method, or the target's default method."""
        return schedule.method or _METHODS[self.target.kind][0]


class BackupSummary(StatusModel):
    """One backup in the repository catalog."""

    id: str
    """Backup id (the repository folder name)."""
    schedule: str | None = None
    """Schedule that took it."""
    method: BackupMethod
    """logical, physical, snapshot, export or sync."""
    time: Time
    """When the backup finished (its manifest was written)."""
    started_at: Time | None = None
    """When the backup started."""
    size_bytes: Annotated[int, Field(ge=0)] | None = None
    """Stored size (after compression and encryption)."""
    duration_seconds: Annotated[float, Field(ge=0)] | None = None
    """How long the backup took."""
    objects: Annotated[int, Field(ge=0)] | None = None
    """Kubernetes targets: objects in the backup."""


class TableBackupSummary(StatusModel):
    """The newest backup of a subset of tables (a hot-table dump). It restores those tables
    only, so it is never the policy's recovery point and never satisfies the RPO."""

    id: str
    """Backup id."""
    schedule: str | None = None
    """Schedule that took it."""
    time: Time
    """When the backup finished."""
    tables: Annotated[list[Annotated[str, Field(max_length=256)]], Field(max_length=64)]
    """Tables it holds, schema-qualified, e.g. public.transformations."""


class FailureSummary(StatusModel):
    """The last failed backup attempt."""

    time: Time
    """When it failed."""
    reason: str
    """CamelCase reason, e.g. JobFailed."""
    message: str = ""
    """Error reported by the Job (its termination message)."""
    job: str | None = None
    """Name of the failed Job."""
    schedule: str | None = None
    """Schedule that ran it."""


class WalStatus(StatusModel):
    """State of continuous WAL archiving."""

    last_archived_segment: str | None = None
    """Newest WAL segment in the repository."""
    last_archived_time: Time | None = None
    """When it was archived."""
    deployment: str | None = None
    """Name of the WAL streamer Deployment (stream mode)."""


class RunNowPhase(StrEnum):
    """Where the backup of the last run-now token is."""

    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class RunNowStatus(StatusModel):
    """The backup the last `dr.tonebridge.io/run-now` token started, so that
    `kubectl wait --for=jsonpath='{.status.runNow.phase}'=Succeeded` waits for THIS backup."""

    token: str
    """The annotation value handled."""
    phase: RunNowPhase
    """Running (the Job exists), Succeeded or Failed (also: the request was refused)."""
    job: str | None = None
    """The Job it created."""
    backup_id: str | None = None
    """The backup it made."""
    started_at: Time | None = None
    """When the Job was created (or the token refused)."""
    completed_at: Time | None = None
    """When the Job finished."""
    message: str | None = None
    """What happened, e.g. why it was refused or failed."""


class RetentionStatus(StatusModel):
    """The last retention run of the operator (after each backup, and daily)."""

    last_run_time: Time | None = None
    """When it ran."""
    trigger: str | None = None
    """What started it: backup (a backup Job succeeded) or schedule (the daily run)."""
    rules: str | None = None
    """The rules applied, e.g. "schedule daily-full: daily=30 monthly=12 yearly=7"."""
    kept: Annotated[int, Field(ge=0)] | None = None
    """Complete backups kept."""
    deleted: Annotated[int, Field(ge=0)] | None = None
    """Backups deleted by the last run."""
    deleted_ids: list[str] | None = None
    """Their ids (at most 20; the BackupsPruned Event and the operator log have all)."""
    protected_ids: list[str] | None = None
    """Backups the rules let go but a running restore or restore test uses: kept for now."""
    oldest_kept_time: Time | None = None
    """Start of the oldest backup kept."""
    oldest_kept_id: str | None = None
    """Its id."""
    wal_deleted: Annotated[int, Field(ge=0)] | None = None
    """Archived WAL files deleted by the last run (older than every retained physical backup)."""
    archived: Annotated[int, Field(ge=0)] | None = None
    """Backups the last run moved to `spec.archive.storageClass`."""
    pitr_window_start: Time | None = None
    """Earliest point-in-time recovery target: the end of the oldest retained physical
    backup (None without a physical backup: no PITR)."""
    pitr_window_end: Time | None = None
    """Latest point-in-time recovery target: the newest archived WAL."""
    message: str | None = None
    """What happened, in one sentence (also on the RetentionApplied condition)."""


class RestoreTestSummary(StatusModel):
    """The newest finished run of the RestoreTests that test this policy: the evidence
    behind the Restorable and RTOMet conditions."""

    name: str
    """The RestoreTest."""
    passed: bool
    """Whether its run restored the backup and every check passed."""
    reason: str | None = None
    """Why it did not pass (the test's Passed reason, e.g. ChecksFailed)."""
    completed_at: Time | None = None
    """When the run finished."""
    backup_id: str | None = None
    """Backup it restored."""
    restore_duration_seconds: Annotated[float, Field(ge=0)] | None = None
    """Measured restore time."""
    rto_met: bool | None = None
    """The test's own judgement against its objectives.rto."""


class ReplicaStatus(StatusModel):
    """One replica of the repository (spec.repository.replicas), from its newest
    replication Job (`tonebridge-dr replicate`)."""

    url: str
    """The replica's folder for this policy (no credentials)."""
    last_backup: str | None = None
    """Newest backup of the primary the replica holds (verified, manifest last)."""
    last_backup_time: Time | None = None
    """When that backup finished."""
    last_wal_segment: str | None = None
    """Newest complete WAL segment the replica holds."""
    synced_at: Time | None = None
    """Start of the newest replication that left nothing missing: the replica then held
    every backup and WAL file the primary held."""
    lag_seconds: Annotated[float, Field(ge=0)] | None = None
    """How far the replica was behind the primary when the newest replication ended (0: in
    sync)."""
    last_run_time: Time | None = None
    """When the newest replication Job finished."""
    last_error: str | None = None
    """Reason of the newest replication's failure for this replica (None: it succeeded)."""
    message: str | None = None
    """What was not copied, one line."""


class BackupPolicyStatus(StatusModel):
    """Observed state of a BackupPolicy, computed from Jobs and the repository catalog."""

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The metadata.generation last reconciled."""
    conditions: ConditionList | None = None
    """Ready, LastBackupSucceeded, RPOMet, BackupStale, Restorable, RTOMet."""
    target: str | None = None
    """Summary of the target for `kubectl get`, e.g. postgres/tonebridge_db."""
    schedules: str | None = None
    """Summary of the schedules for `kubectl get`, e.g. daily-full,hourly-hot."""
    last_backup: BackupSummary | None = None
    """The newest backup attempt that produced a backup."""
    last_successful_backup: BackupSummary | None = None
    """The newest complete backup in the catalog."""
    last_failure: FailureSummary | None = None
    """The newest failed attempt."""
    backup_count: Annotated[int, Field(ge=0)] | None = None
    """Number of complete backups in the catalog."""
    total_size_bytes: Annotated[int, Field(ge=0)] | None = None
    """Stored size of all backups."""
    recovery_point: Time | None = None
    """Newest point in time to which the whole database can be restored: the newest full
    backup (not a table-subset dump), or the newest archived WAL that follows a retained
    physical base backup without a gap; the RPOMet message names which."""
    recovery_window_start: Time | None = None
    """Oldest point in time that can be restored: the end of the oldest full backup kept
    (the recoverability window is from here to recoveryPoint)."""
    last_table_backup: TableBackupSummary | None = None
    """The newest table-subset (hot-table) backup; it counts for its tables only."""
    rpo_age_seconds: Annotated[float, Field(ge=0)] | None = None
    """Age of the recovery point when status was last written."""
    wal: WalStatus | None = None
    """WAL archiving state (postgres targets with walArchive)."""
    last_restore_test: RestoreTestSummary | None = None
    """The newest finished run of a RestoreTest of this policy (spec.source.policyRef)."""
    retention: RetentionStatus | None = None
    """The last retention run of the operator."""
    run_now: RunNowStatus | None = None
    """The backup of the last run-now token (wait on its phase)."""
    replicas: Annotated[list[ReplicaStatus], Field(max_length=3)] | None = None
    """Each replica of the repository: newest copied backup and WAL, lag, last error."""
    kopf: FreeForm | None = None
    """Reserved for the kopf framework's own bookkeeping."""
