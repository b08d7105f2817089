"""RestoreRequest: one restore, run once (its spec is immutable)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, StrictBool, StrictInt

from tonebridge_dr.api import formats
from tonebridge_dr.api.base import (
    DnsLabel,
    FreeForm,
    Lsn,
    Matches,
    ObjectName,
    Quantity,
    Rfc3339,
    Rule,
    SpecModel,
    StatusModel,
    Time,
)
from tonebridge_dr.api.common import (
    BackupMethod,
    DatabaseName,
    LocalObjectRef,
    Notifications,
    Region,
    Repository,
    ResourceRequirements,
    SecretKeyRef,
    SecretRef,
    TableName,
)
from tonebridge_dr.api.conditions import ConditionList

__all__ = [
    "IMMUTABLE_SPEC_RULE",
    "AccessMode",
    "BackupId",
    "BucketRestoreTarget",
    "ClaimTemplate",
    "DatabaseTarget",
    "Instance",
    "KubernetesRestoreMode",
    "KubernetesRestoreTarget",
    "NamespaceMapping",
    "RedisRestoreTarget",
    "Rehydration",
    "RehydrationTier",
    "Repair",
    "RestorePhase",
    "RestoreRequestSpec",
    "RestoreRequestStatus",
    "RestoreSource",
    "RestoreTarget",
    "RestoredSummary",
    "VolumeTarget",
]

BackupId = Annotated[
    str,
    Field(max_length=253),
    Matches(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$", "must be a backup id as listed by `backups list`"),
]
"""A backup id as shown by `tonebridge-dr backups list` and in BackupPolicy status."""

ColumnName = Annotated[
    str, Field(max_length=63), Matches(formats.SQL_NAME_RE, formats.SQL_NAME_MESSAGE)
]


class RestoreSource(SpecModel):
    """Where the backups come from: a BackupPolicy in this namespace, or a repository given
    directly (the disaster case: a new cluster that only has the bucket)."""

    policy_ref: LocalObjectRef | None = None
    """The BackupPolicy whose repository, credentials and keys to use."""
    repository: Repository | None = None
    """A repository given directly; its credentialsSecretRef needs read access only."""
    policy_name: ObjectName | None = None
    """With repository: the name of the BackupPolicy that wrote the backups (its folder)."""
    private_key_secret_ref: SecretKeyRef | None = None
    """OpenPGP private key for encrypted backups (default: the policy's
    encryption.privateKeySecretRef)."""

    cel_rules = (
        Rule(
            "has(self.policyRef) != has(self.repository)",
            "source needs exactly one of policyRef or repository",
            lambda s: (s.policy_ref is None) != (s.repository is None),
        ),
        Rule(
            "!has(self.repository) || has(self.policyName)",
            "source.repository needs policyName: the BackupPolicy whose backups to read",
            lambda s: s.repository is None or s.policy_name is not None,
        ),
        Rule(
            "!has(self.policyName) || has(self.repository)",
            "policyName is only used with repository (policyRef already names the policy)",
            lambda s: s.policy_name is None or s.repository is not None,
        ),
    )

    def describe(self) -> str:
        """One-line summary for the SOURCE column."""
        if self.policy_ref is not None:
            return self.policy_ref.name
        assert self.repository is not None
        return f"{self.repository.url} ({self.policy_name})"


class DatabaseTarget(SpecModel):
    """A running PostgreSQL server that receives a logical restore."""

    dsn_secret_ref: SecretKeyRef
    """Secret key holding the connection string of the restore role (spec 8.2)."""
    database: DatabaseName | None = None
    """Database to restore into (default: the one in the connection string)."""


class AccessMode(StrEnum):
    """PersistentVolumeClaim access modes."""

    READ_WRITE_ONCE = "ReadWriteOnce"
    READ_WRITE_ONCE_POD = "ReadWriteOncePod"
    READ_WRITE_MANY = "ReadWriteMany"


class ClaimTemplate(SpecModel):
    """A PersistentVolumeClaim created for the restore."""

    size: Quantity
    """Requested storage, e.g. 100Gi."""
    storage_class_name: ObjectName | None = None
    """StorageClass of the claim (default: the cluster default)."""
    access_modes: Annotated[list[AccessMode], Field(min_length=1, max_length=3)] | None = None
    """Access modes (default: ReadWriteOnce)."""


class VolumeTarget(SpecModel):
    """A volume that receives a physical restore as a PostgreSQL data directory."""

    claim_name: ObjectName | None = None
    """An existing PersistentVolumeClaim."""
    claim_template: ClaimTemplate | None = None
    """A new PersistentVolumeClaim (named after the RestoreRequest)."""

    cel_rules = (
        Rule(
            "has(self.claimName) != has(self.claimTemplate)",
            "volume needs exactly one of claimName or claimTemplate",
            lambda v: (v.claim_name is None) != (v.claim_template is None),
        ),
    )


class Instance(SpecModel):
    """Run PostgreSQL on the restored volume (a Deployment and a Service named after the
    RestoreRequest), e.g. to inspect data or to repoint applications."""

    image: (
        Annotated[str, Field(max_length=512), Matches(formats.IMAGE_RE, formats.IMAGE_MESSAGE)]
        | None
    ) = None
    """PostgreSQL image (default: postgres:<major version recorded in the backup>)."""
    port: Annotated[StrictInt, Field(ge=1, le=65535)] = 5432
    """Port of the Service."""
    resources: ResourceRequirements | None = None
    """Resources of the PostgreSQL container."""


class RedisRestoreTarget(SpecModel):
    """A running Redis server that receives the keys of a snapshot. Keys it already has
    are left as they are unless `overwrite: true` (then the backup's value replaces
    them); keys the backup lacks are never deleted, and the server is never flushed."""

    url_secret_ref: SecretKeyRef
    """Secret key holding redis://[user[:password]@]host:port[/db] of the server."""
    pattern: Annotated[str, Field(min_length=1, max_length=1024)] | None = None
    """Restore only keys matching this glob (Redis SCAN MATCH syntax, e.g. `session:*`)."""
    db: Annotated[StrictInt, Field(ge=0, le=2147483647)] | None = None
    """Restore only this logical database of the backup, into the database named in the
    URL (default: the same number). Without it every database keeps its number, and the
    URL must not name one."""


class KubernetesRestoreMode(StrEnum):
    """What a Kubernetes restore does with objects that exist."""

    MISSING = "missing"
    REPLACE = "replace"


class NamespaceMapping(SpecModel):
    """Restore the objects of one backed-up namespace into another."""

    source: DnsLabel
    """Namespace in the backup."""
    target: DnsLabel
    """Namespace in this cluster (created when missing)."""


class KubernetesRestoreTarget(SpecModel):
    """Re-apply an exported Kubernetes configuration (server-side, in dependency order)."""

    namespace: (
        Annotated[
            str, Field(max_length=63), Matches(formats.DNS_LABEL_RE, formats.DNS_LABEL_MESSAGE)
        ]
        | None
    ) = None
    """Restore every object into this namespace (default: each object's own namespace)."""
    namespace_map: (
        Annotated[list[NamespaceMapping], Field(min_length=1, max_length=64)] | None
    ) = None
    """Restore the objects of `source` into `target`; other namespaces keep their names."""
    namespaces: Annotated[list[DnsLabel], Field(min_length=1, max_length=64)] | None = None
    """Only objects of these namespaces of the backup (default: all)."""
    kinds: (
        Annotated[list[Annotated[str, Field(min_length=1, max_length=317)]],
                  Field(min_length=1, max_length=32)] | None
    ) = None
    """Only these kinds: configmaps, ConfigMap, or group/Kind (default: all)."""
    names: (
        Annotated[list[Annotated[str, Field(min_length=1, max_length=253)]],
                  Field(min_length=1, max_length=256)] | None
    ) = None
    """Only objects with these names (default: all)."""
    mode: KubernetesRestoreMode = KubernetesRestoreMode.MISSING
    """missing: create what does not exist and leave live objects exactly as they are;
    replace: live objects become the backup's version (cluster-assigned fields such as a
    Service's clusterIP kept), and objects whose immutable fields differ are deleted and
    created again."""

    cel_rules = (
        Rule(
            "!has(self.__namespace__) || !has(self.namespaceMap)",
            "namespace and namespaceMap cannot be combined: namespace moves every object",
            lambda t: t.namespace is None or t.namespace_map is None,
        ),
    )


class BucketRestoreTarget(SpecModel):
    """An S3 bucket that receives the objects of a bucket snapshot, with their content type
    and user metadata. Objects it already has are left as they are unless `overwrite:
    true`; objects the snapshot lacks are never deleted."""

    url: Annotated[str, Field(max_length=1024), Matches(formats.S3_URL_RE, formats.S3_URL_MESSAGE)]
    """Where the objects go: s3://bucket/prefix (key K of the snapshot becomes prefix/K)."""
    credentials_secret_ref: SecretRef | None = None
    """Write credentials for the target bucket (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY;
    default: the repository's credentials or the pod's identity)."""
    region: Region | None = None
    """Region of the target bucket."""
    endpoint: (
        Annotated[
            str, Field(max_length=1024), Matches(formats.HTTP_URL_RE, formats.HTTP_URL_MESSAGE)
        ]
        | None
    ) = None
    """Endpoint of an S3-compatible target."""
    prefix: Annotated[str, Field(min_length=1, max_length=1024)] | None = None
    """Restore only the snapshot's keys that start with this (e.g. `avatars/`)."""


class RestoreTarget(SpecModel):
    """Where the data goes: exactly one of database, volume, redis, kubernetes, bucket."""

    database: DatabaseTarget | None = None
    """A running PostgreSQL server (logical restores, tables, repair)."""
    volume: VolumeTarget | None = None
    """A PostgreSQL data directory on a volume (physical restores, PITR)."""
    instance: Instance | None = None
    """With volume: also run PostgreSQL on it once restored."""
    redis: RedisRestoreTarget | None = None
    """A Redis server."""
    kubernetes: KubernetesRestoreTarget | None = None
    """The Kubernetes API of this cluster."""
    bucket: BucketRestoreTarget | None = None
    """An S3 bucket (objects of a bucket snapshot)."""

    cel_rules = (
        Rule(
            "(has(self.database) ? 1 : 0) + (has(self.volume) ? 1 : 0)"
            " + (has(self.redis) ? 1 : 0) + (has(self.kubernetes) ? 1 : 0)"
            " + (has(self.bucket) ? 1 : 0) == 1",
            "exactly one restore target must be set: database, volume, redis, kubernetes or "
            "bucket",
            lambda t: (
                sum(x is not None
                    for x in (t.database, t.volume, t.redis, t.kubernetes, t.bucket)) == 1
            ),
        ),
        Rule(
            "!has(self.instance) || has(self.volume)",
            "instance runs PostgreSQL on the restored volume: it needs volume",
            lambda t: t.instance is None or t.volume is not None,
        ),
    )


class Repair(SpecModel):
    """Re-insert rows of a time range that are missing from a live table (spec 9.2): rows of
    the backup whose primary key is absent from the table are inserted; nothing is updated.
    The range is half-open, [from, to): from inclusive, to exclusive."""

    table: TableName
    """Table to repair."""
    column: ColumnName
    """Timestamp column that defines the range, e.g. created_at."""
    from_: Rfc3339
    """Start of the range (inclusive: rows with column = from are repaired)."""
    to: Rfc3339
    """End of the range (exclusive: rows with column = to are not repaired)."""

    cel_rules = (
        Rule(
            f"!self.from.matches(r'{formats.RFC3339_RE}')"
            f" || !self.to.matches(r'{formats.RFC3339_RE}')"
            " || timestamp(self.from) < timestamp(self.to)",
            "repair.from must be before repair.to",
            lambda r: r.from_ < r.to,
        ),
    )


class RehydrationTier(StrEnum):
    """S3 retrieval tiers (RestoreObject): how fast an archived object becomes readable."""

    STANDARD = "Standard"
    BULK = "Bulk"
    EXPEDITED = "Expedited"


class Rehydration(SpecModel):
    """How to bring back a backup in an archive storage class (GLACIER, DEEP_ARCHIVE)
    before restoring it. Without this field: 1 day, Standard tier."""

    days: Annotated[StrictInt, Field(ge=1, le=365)] = 1
    """How long the rehydrated copies stay readable (S3 keeps the archived object)."""
    tier: RehydrationTier = RehydrationTier.STANDARD
    """Retrieval tier: Standard (hours), Bulk (cheaper, slower), Expedited (minutes;
    not for DEEP_ARCHIVE)."""


class RestoreRequestSpec(SpecModel):
    """One restore. Choose exactly one of backupId, latest, targetTime, targetLSN,
    beforeTransaction."""

    source: RestoreSource
    """Where the backups come from."""
    backup_id: BackupId | None = None
    """Restore this backup."""
    latest: StrictBool | None = None
    """Restore the newest complete backup (of `method`, when set)."""
    target_time: Rfc3339 | None = None
    """Point-in-time recovery: newest base backup before this time, plus WAL up to it."""
    target_lsn: Lsn | None = None
    """Point-in-time recovery up to this WAL position."""
    before_transaction: Annotated[StrictInt, Field(ge=3, le=4294967295)] | None = None
    """Point-in-time recovery to just before this transaction (recovery_target_xid, not
    inclusive): the xid `tonebridge-dr wal-inspect` shows for a DROP TABLE, TRUNCATE or
    mass DELETE/UPDATE. For a DROP DATABASE use the targetLSN wal-inspect names."""
    before_time: Rfc3339 | None = None
    """With beforeTransaction: its commit time as wal-inspect shows it. Picks the newest
    base backup that ended before it (without it: the oldest base backup, slower)."""
    method: BackupMethod | None = None
    """Kind of backup to restore: logical (database), physical (volume), snapshot (redis),
    export (kubernetes), sync (bucket); default: implied by the target."""
    target: RestoreTarget
    """Where the data goes."""
    tables: Annotated[list[TableName], Field(min_length=1, max_length=32)] | None = None
    """Restore only these tables (logical restores)."""
    repair: Repair | None = None
    """Re-insert missing rows of a time range [from, to) instead of replacing the table."""
    overwrite: StrictBool = False
    """Allow replacing existing data (a non-empty database, tables or volume; Redis keys
    or bucket objects the target already has)."""
    resources: ResourceRequirements | None = None
    """Resources of the restore Job."""
    rehydration: Rehydration | None = None
    """When the backup (or the WAL it needs) is in an archive storage class: the operator
    requests readable copies with these settings (default 1 day, Standard), reports phase
    Rehydrating and starts the restore once every object is readable."""
    notifications: Notifications | None = None
    """Webhook notifications of this restore (RestoreSucceeded / RestoreFailed); default: the
    notifications of the BackupPolicy in source.policyRef. A restore from a repository
    given directly (no policy: the disaster case) notifies only with these."""

    cel_rules = (
        Rule(
            "(has(self.backupId) ? 1 : 0) + ((has(self.latest) && self.latest) ? 1 : 0)"
            " + (has(self.targetTime) ? 1 : 0) + (has(self.targetLSN) ? 1 : 0)"
            " + (has(self.beforeTransaction) ? 1 : 0) == 1",
            "choose exactly one of backupId, latest: true, targetTime, targetLSN or "
            "beforeTransaction",
            lambda r: (
                sum(
                    (
                        r.backup_id is not None,
                        r.latest is True,
                        r.target_time is not None,
                        r.target_lsn is not None,
                        r.before_transaction is not None,
                    )
                )
                == 1
            ),
        ),
        Rule(
            "!has(self.beforeTime) || has(self.beforeTransaction)",
            "beforeTime is the commit time of beforeTransaction: it needs beforeTransaction",
            lambda r: r.before_time is None or r.before_transaction is not None,
        ),
        Rule(
            "!has(self.method)"
            " || (self.method == 'logical' && has(self.target.database))"
            " || (self.method == 'physical' && has(self.target.volume))"
            " || (self.method == 'snapshot' && has(self.target.redis))"
            " || (self.method == 'export' && has(self.target.kubernetes))"
            " || (self.method == 'sync' && has(self.target.bucket))",
            "method must suit the target: logical for database, physical for volume, "
            "snapshot for redis, export for kubernetes, sync for bucket",
            lambda r: r.method is None or r.method == _method_for(r.target),
        ),
        Rule(
            "!(has(self.targetTime) || has(self.targetLSN) || has(self.beforeTransaction))"
            " || has(self.target.volume)",
            "targetTime, targetLSN and beforeTransaction replay WAL onto a physical base "
            "backup: they need target.volume",
            lambda r: (
                (r.target_time is None and r.target_lsn is None and r.before_transaction is None)
                or r.target.volume is not None
            ),
        ),
        Rule(
            "!(has(self.tables) || has(self.repair)) || has(self.target.database)",
            "tables and repair restore from a logical backup: they need target.database",
            lambda r: (r.tables is None and r.repair is None) or r.target.database is not None,
        ),
    )

    @property
    def effective_method(self) -> BackupMethod:
        """The method to restore with: `method`, or the one the target implies."""
        return self.method or _method_for(self.target)


def _method_for(target: RestoreTarget) -> BackupMethod:
    if target.database is not None:
        return BackupMethod.LOGICAL
    if target.volume is not None:
        return BackupMethod.PHYSICAL
    if target.redis is not None:
        return BackupMethod.SNAPSHOT
    if target.bucket is not None:
        return BackupMethod.SYNC
    return BackupMethod.EXPORT


IMMUTABLE_SPEC_RULE = {
    "rule": "self == oldSelf",
    "message": "spec is immutable: a RestoreRequest runs once; create a new RestoreRequest "
    "to restore again",
}
"""Transition rule crdgen puts on RestoreRequest.spec (not on the model: the spec is also
embedded in FailoverPlan steps, where it may change)."""


class RestorePhase(StrEnum):
    """Lifecycle of a RestoreRequest."""

    PENDING = "Pending"
    REHYDRATING = "Rehydrating"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class RestoredSummary(StatusModel):
    """What a finished restore recovered."""

    backup_id: str | None = None
    """Backup that was restored (the base backup for PITR)."""
    method: BackupMethod | None = None
    """Method of that backup."""
    recovered_to_time: Time | None = None
    """Time of the last transaction recovered."""
    recovered_to_lsn: str | None = None
    """WAL position recovery stopped at."""
    tables: list[str] | None = None
    """Tables restored."""
    repaired_rows: Annotated[int, Field(ge=0)] | None = None
    """Rows re-inserted by repair."""
    keys_restored: Annotated[int, Field(ge=0)] | None = None
    """Redis: keys written into the target."""
    keys_skipped: Annotated[int, Field(ge=0)] | None = None
    """Redis: keys of the backup the target already had, left as they were (restores
    without overwrite)."""
    objects_created: Annotated[int, Field(ge=0)] | None = None
    """Kubernetes: objects created."""
    objects_updated: Annotated[int, Field(ge=0)] | None = None
    """Kubernetes: live objects changed to the backup's version (replace mode)."""
    objects_recreated: Annotated[int, Field(ge=0)] | None = None
    """Kubernetes: live objects deleted and created again (an immutable field differed)."""
    objects_unchanged: Annotated[int, Field(ge=0)] | None = None
    """Kubernetes: live objects that already were the backup's version."""
    objects_skipped: Annotated[int, Field(ge=0)] | None = None
    """Kubernetes: live objects left as they were (missing mode); bucket: objects the
    target already had, left as they were (without overwrite)."""
    objects_failed: Annotated[int, Field(ge=0)] | None = None
    """Kubernetes: objects the API server refused."""
    failures: Annotated[list[Annotated[str, Field(max_length=512)]],
                        Field(max_length=10)] | None = None
    """Kubernetes: the first refused objects and why."""
    objects_restored: Annotated[int, Field(ge=0)] | None = None
    """Bucket: objects written into the target bucket."""


class InstanceStatus(StatusModel):
    """The PostgreSQL instance started on a restored volume (`target.instance`)."""

    name: str
    """Its StatefulSet and Service."""
    image: str
    """The PostgreSQL image it runs."""
    ready: bool = False
    """Whether its pod is Ready (PostgreSQL accepts connections)."""


class RestoreRequestStatus(StatusModel):
    """Observed state of a RestoreRequest."""

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The metadata.generation last reconciled."""
    conditions: ConditionList | None = None
    """Ready, Succeeded."""
    phase: RestorePhase | None = None
    """Pending, Rehydrating, Running, Succeeded or Failed."""
    source: str | None = None
    """Summary of the source for `kubectl get`."""
    job_name: str | None = None
    """The restore Job."""
    started_at: Time | None = None
    """When the restore Job started."""
    completed_at: Time | None = None
    """When it finished."""
    duration_seconds: Annotated[float, Field(ge=0)] | None = None
    """Wall-clock duration of the restore."""
    duration: str | None = None
    """The same, as text for `kubectl get` (e.g. 12m30s)."""
    restored: RestoredSummary | None = None
    """What was recovered."""
    message: str | None = None
    """Last error or progress note."""
    instance: InstanceStatus | None = None
    """The PostgreSQL instance on the restored volume, once started (target.instance)."""
    kopf: FreeForm | None = None
    """Reserved for the kopf framework's own bookkeeping."""
