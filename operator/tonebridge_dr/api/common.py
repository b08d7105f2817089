"""Pieces shared by several kinds: references, repository, codecs, retention, objectives,
notifications, resources."""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import Field, StrictInt
from pydantic.json_schema import JsonSchemaValue

from tonebridge_dr.api import formats
from tonebridge_dr.api.base import (
    Duration,
    Matches,
    ObjectName,
    PositiveDuration,
    Quantity,
    Rule,
    SpecModel,
    _PlainType,
    unique,
)

__all__ = [
    "FROM_RETENTION",
    "Archive",
    "BackupMethod",
    "Compression",
    "CompressionAlgorithm",
    "Contact",
    "DatabaseName",
    "Encryption",
    "EscalationLevel",
    "LocalObjectRef",
    "NotificationEvent",
    "Notifications",
    "ObjectLock",
    "ObjectLockMode",
    "Objectives",
    "PolicyRepository",
    "Region",
    "Replica",
    "Repository",
    "ResourceList",
    "ResourceRequirements",
    "Retention",
    "SecretKeyRef",
    "SecretRef",
    "ServerSideEncryption",
    "StorageClass",
    "TableName",
]

SecretKey = Annotated[
    str, Field(max_length=253), Matches(formats.SECRET_KEY_RE, formats.SECRET_KEY_MESSAGE)
]


TableName = Annotated[str, Field(max_length=127), Matches(formats.TABLE_RE, formats.TABLE_MESSAGE)]
"""A table, optionally schema-qualified: `transformations`, `public.users`."""

DatabaseName = Annotated[
    str,
    Field(max_length=63),
    Matches(r"^[A-Za-z_][A-Za-z0-9_$-]*$", "must be a database name, e.g. tonebridge_db"),
]
"""A PostgreSQL database name."""


Region = Annotated[
    str,
    Field(max_length=64),
    Matches(r"^[a-z0-9-]+$", "must be an AWS region, e.g. ap-northeast-1"),
]
"""An AWS region name."""


class SecretRef(SpecModel):
    """A whole Secret in the same namespace; its keys become environment variables of the Job."""

    name: ObjectName
    """Name of the Secret."""


class SecretKeyRef(SpecModel):
    """One key of a Secret in the same namespace."""

    name: ObjectName
    """Name of the Secret."""
    key: SecretKey
    """Key inside the Secret."""


class LocalObjectRef(SpecModel):
    """A reference to an object of the same kind family in the same namespace."""

    name: ObjectName
    """Name of the object."""


class BackupMethod(StrEnum):
    """How a backup is taken; which methods apply depends on the target."""

    LOGICAL = "logical"
    """PostgreSQL: pg_dump in custom format (whole database or chosen tables)."""
    PHYSICAL = "physical"
    """PostgreSQL: base backup of the cluster (pg_basebackup); with WAL it allows PITR."""
    SNAPSHOT = "snapshot"
    """Redis: RDB snapshot fetched over the replication protocol."""
    EXPORT = "export"
    """Kubernetes: export of the chosen objects as clean YAML."""
    SYNC = "sync"
    """Object storage: incremental copy of a bucket."""


class StorageClass(StrEnum):
    """S3 storage classes."""

    STANDARD = "STANDARD"
    STANDARD_IA = "STANDARD_IA"
    ONEZONE_IA = "ONEZONE_IA"
    INTELLIGENT_TIERING = "INTELLIGENT_TIERING"
    GLACIER_IR = "GLACIER_IR"
    GLACIER = "GLACIER"
    DEEP_ARCHIVE = "DEEP_ARCHIVE"
    REDUCED_REDUNDANCY = "REDUCED_REDUNDANCY"


class ServerSideEncryption(StrEnum):
    """S3 server-side encryption."""

    AES256 = "AES256"
    KMS = "aws:kms"


def _is_file(url: str) -> bool:
    return url.startswith("file://")


class ObjectLockMode(StrEnum):
    """S3 Object Lock retention modes."""

    GOVERNANCE = "GOVERNANCE"
    """Nobody deletes or overwrites a locked object version, except a user with the
    s3:BypassGovernanceRetention permission (a break-glass role)."""
    COMPLIANCE = "COMPLIANCE"
    """Nobody, not even the account root, deletes a locked version or shortens its lock
    until the date passes. Choose with care: a mistake costs storage until then."""


FROM_RETENTION: Final = "fromRetention"
"""`retainFor` value: the lock follows the retention rule that keeps each backup."""
RETAIN_FOR_MESSAGE = (
    "must be fromRetention or a duration longer than zero like 30d, 7d12h or 2555d"
)


class _RetainForType(_PlainType):
    """`retainFor`: a positive duration (a `timedelta`) or the word `fromRetention`."""

    @staticmethod
    def _serialize(value: timedelta | str) -> str:
        return value if isinstance(value, str) else formats.format_duration(value)

    def _validate(self, value: Any) -> timedelta | str:
        if value == FROM_RETENTION:
            return FROM_RETENTION
        if isinstance(value, timedelta):
            parsed = value
        elif isinstance(value, str):
            try:
                parsed = formats.parse_duration(value)
            except ValueError:
                raise ValueError(f"{value!r} {RETAIN_FOR_MESSAGE}") from None
        else:
            raise ValueError(f"{value!r} {RETAIN_FOR_MESSAGE}")
        if parsed <= timedelta(0) or parsed.microseconds:
            raise ValueError(f"{value!r} {RETAIN_FOR_MESSAGE}")
        return parsed

    def _json_schema(self) -> JsonSchemaValue:
        rule = (
            f"self == '{FROM_RETENTION}' || (self.size() > 0"
            f" && self.matches(r'{formats.DURATION_RE}') && self.matches('[1-9]'))"
        )
        return {
            "type": "string",
            "maxLength": 32,
            "x-kubernetes-validations": [{"rule": rule, "message": RETAIN_FOR_MESSAGE}],
        }


RetainFor = Annotated[timedelta | Literal["fromRetention"], _RetainForType()]


class ObjectLock(SpecModel):
    """S3 Object Lock (immutability, spec 11): every object the Jobs write (backups,
    manifests, WAL, restore-test reports) carries a retention mode and a retain-until
    date, so nobody holding the backup credentials can delete or overwrite it before
    then. The bucket must have Object Lock enabled (the operator checks: Ready=False,
    reason ObjectLockNotEnabled)."""

    mode: ObjectLockMode
    """GOVERNANCE or COMPLIANCE."""
    retain_for: RetainFor
    """How long each object stays locked after it is written, e.g. 30d; or fromRetention:
    written with a 2-day lock, which the retention run extends to the start of the backup
    plus the period of the longest rule keeping it (a yearly backup under yearly: 7 stays
    locked 7 years)."""

    @property
    def from_retention(self) -> bool:
        return self.retain_for == FROM_RETENTION


RepositoryUrl = Annotated[
    str,
    Field(max_length=1024),
    Matches(formats.REPOSITORY_URL_RE, formats.REPOSITORY_URL_MESSAGE),
]
Endpoint = Annotated[
    str, Field(max_length=1024), Matches(formats.HTTP_URL_RE, formats.HTTP_URL_MESSAGE)
]

REPLICA_LIMIT: Final = 3
"""Most replicas of one repository (runner_contract.REPLICA_LIMIT)."""


class Replica(SpecModel):
    """A second repository, typically in another region, that receives a verified copy of
    every backup and of the WAL archive (geo-redundancy, spec 11.1; docs/replicas.md). A
    restore can name it as `source.repository` when the primary region is gone."""

    url: RepositoryUrl
    """s3://bucket/prefix (or file:///path); the policy's folder inside it is named like
    the primary's: <url>/<policy name>."""
    credentials_secret_ref: SecretRef | None = None
    """Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (optionally
    AWS_SESSION_TOKEN) for the replica; it needs to read, list and write. Omit to use the
    pod's own identity."""
    region: Region | None = None
    """AWS region of the replica bucket."""
    endpoint: Endpoint | None = None
    """Endpoint of an S3-compatible service (MinIO, moto); omit for AWS."""

    cel_rules = (
        Rule(
            "!self.url.startsWith('file://') || !(has(self.region) || has(self.endpoint))",
            "region and endpoint only apply to s3:// replicas",
            lambda r: not _is_file(r.url) or (r.region is None and r.endpoint is None),
        ),
    )


class Repository(SpecModel):
    """Where backups are stored: an S3 bucket (and prefix) or a local directory."""

    url: RepositoryUrl
    """s3://bucket/prefix, or file:///path for a laptop or a mounted volume."""
    credentials_secret_ref: SecretRef | None = None
    """Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (optionally AWS_SESSION_TOKEN)
    used by backup Jobs; it needs to write only. Omit to use the pod's own identity."""
    restore_credentials_secret_ref: SecretRef | None = None
    """Secret with read-only credentials used by restore Jobs (a separate role, spec 8.2).
    Defaults to credentialsSecretRef."""
    region: Region | None = None
    """AWS region of the bucket."""
    endpoint: Endpoint | None = None
    """Endpoint of an S3-compatible service (MinIO, moto); omit for AWS."""
    storage_class: StorageClass | None = None
    """Storage class of new backup objects (default: the bucket's default, STANDARD)."""
    sse: ServerSideEncryption | None = None
    """S3 server-side encryption: AES256 or aws:kms."""
    kms_key_id: Annotated[str, Field(max_length=2048)] | None = None
    """KMS key (id or ARN) for sse: aws:kms; omit to use the account's default key."""
    object_lock: ObjectLock | None = None
    """S3 Object Lock of every object written (docs/object-lock.md); the bucket must have
    Object Lock enabled."""

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "!self.url.startsWith('file://') || !(has(self.region) || has(self.endpoint)"
            " || has(self.storageClass) || has(self.sse) || has(self.kmsKeyId))",
            "region, endpoint, storageClass, sse and kmsKeyId only apply to s3:// repositories",
            lambda r: (
                not _is_file(r.url)
                or all(
                    v is None for v in (r.region, r.endpoint, r.storage_class, r.sse, r.kms_key_id)
                )
            ),
        ),
        Rule(
            "!has(self.kmsKeyId) || (has(self.sse) && self.sse == 'aws:kms')",
            "kmsKeyId requires sse: aws:kms",
            lambda r: r.kms_key_id is None or r.sse == ServerSideEncryption.KMS,
        ),
        Rule(
            "!has(self.objectLock) || self.url.startsWith('s3://')",
            "objectLock needs an s3:// repository (Object Lock is an S3 feature)",
            lambda r: r.object_lock is None or r.url.startswith("s3://"),
        ),
    )


class PolicyRepository(Repository):
    """A BackupPolicy's repository: a Repository that may have replicas."""

    replicas: Annotated[list[Replica], Field(max_length=REPLICA_LIMIT)] | None = None
    """Up to 3 replica repositories (another region) that receive a verified copy of every
    backup after it commits and of the WAL every 15 minutes (docs/replicas.md). A restore
    from one names it as its source.repository."""

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        *Repository.cel_rules,
        Rule(
            "!has(self.replicas) || self.replicas.all(r, r.url.lowerAscii() != "
            "self.url.lowerAscii() && r.url.lowerAscii() != self.url.lowerAscii() + '/'"
            " && r.url.lowerAscii() + '/' != self.url.lowerAscii())",
            "a replica's url must differ from the repository's own url",
            lambda r: all(
                rep.url.lower().rstrip("/") != r.url.lower().rstrip("/")
                for rep in r.replicas or ()
            ),
        ),
        Rule(
            "!has(self.replicas) || self.replicas.all(r, self.replicas.exists_one(x, "
            "x.url == r.url))",
            "replica urls must be unique",
            lambda r: len({rep.url for rep in r.replicas or ()}) == len(r.replicas or ()),
        ),
    )


class CompressionAlgorithm(StrEnum):
    """Compression applied before encryption."""

    ZSTD = "zstd"
    GZIP = "gzip"
    NONE = "none"


class Compression(SpecModel):
    """Compression of backup streams."""

    algorithm: CompressionAlgorithm = CompressionAlgorithm.ZSTD
    """zstd (default), gzip or none."""
    level: Annotated[StrictInt, Field(ge=1, le=22)] | None = None
    """Compression level: zstd 1-22, gzip 1-9; omit for the codec's default."""

    cel_rules = (
        Rule(
            "!has(self.level) || self.algorithm != 'none'",
            "level cannot be set when algorithm is none",
            lambda c: c.level is None or c.algorithm != CompressionAlgorithm.NONE,
        ),
        Rule(
            "!has(self.level) || self.algorithm != 'gzip' || self.level <= 9",
            "gzip levels are 1 to 9",
            lambda c: c.level is None or c.algorithm != CompressionAlgorithm.GZIP or c.level <= 9,
        ),
    )


class Encryption(SpecModel):
    """Client-side OpenPGP encryption: backups are encrypted to a public key, so the backup
    side can never decrypt them; only restores get the private key."""

    public_key_secret_ref: SecretKeyRef
    """Secret key holding the recipient's ASCII-armoured OpenPGP public key."""
    private_key_secret_ref: SecretKeyRef | None = None
    """Secret key holding the OpenPGP private key; mounted only into restore Jobs."""


RetentionCount = Annotated[StrictInt, Field(ge=0, le=100000)]


class Retention(SpecModel):
    """Which backups to keep (grandfather-father-son): a backup survives when any rule keeps it.
    The newest backup is always kept. Omit retention to keep every backup."""

    keep_last: RetentionCount | None = None
    """Keep the newest N backups."""
    hourly: RetentionCount | None = None
    """Keep the newest backup of each of the last N hours."""
    daily: RetentionCount | None = None
    """Keep the newest backup of each of the last N days."""
    weekly: RetentionCount | None = None
    """Keep the newest backup of each of the last N ISO weeks."""
    monthly: RetentionCount | None = None
    """Keep the newest backup of each of the last N months."""
    yearly: RetentionCount | None = None
    """Keep the newest backup of each of the last N years (e.g. 7 for accounting data)."""
    min_age: Duration | None = None
    """Never delete a backup younger than this, whatever the counts say."""

    cel_rules = (
        Rule(
            "(has(self.keepLast) && self.keepLast > 0) || (has(self.hourly) && self.hourly > 0)"
            " || (has(self.daily) && self.daily > 0) || (has(self.weekly) && self.weekly > 0)"
            " || (has(self.monthly) && self.monthly > 0) || (has(self.yearly) && self.yearly > 0)",
            "retention must keep something: set keepLast, hourly, daily, weekly, monthly or "
            "yearly above 0 (omit retention to keep every backup)",
            lambda r: any(
                (count or 0) > 0
                for count in (r.keep_last, r.hourly, r.daily, r.weekly, r.monthly, r.yearly)
            ),
        ),
    )


class Archive(SpecModel):
    """Move older backups to a cheaper, slower storage class (spec 2.2: S3 -> Glacier)."""

    after: PositiveDuration
    """Age at which a backup moves to the archive class, e.g. 30d."""
    storage_class: StorageClass = StorageClass.GLACIER
    """Archive storage class, e.g. GLACIER or DEEP_ARCHIVE."""


class Objectives(SpecModel):
    """Recovery objectives (spec 6.1); the operator reports RPOMet / RTOMet conditions."""

    rpo: PositiveDuration | None = None
    """Recovery point objective: the newest recovery point must never be older than this."""
    rto: PositiveDuration | None = None
    """Recovery time objective: restores (measured by RestoreTests) must finish within this."""
    stale_after: PositiveDuration | None = None
    """Raise BackupStale when the newest backup is older than this (default: rpo, else 25h)."""
    replica_rpo: PositiveDuration | None = None
    """Recovery point objective of the replicas (repository.replicas): RPOMet is False while
    the worst replica is further behind than this (how long ago it last held everything
    the primary held, or the primary's own recovery point age when that is older)."""


class NotificationEvent(StrEnum):
    """Events that can be sent to the webhook."""

    BACKUP_SUCCEEDED = "BackupSucceeded"
    BACKUP_FAILED = "BackupFailed"
    BACKUP_STALE = "BackupStale"
    RPO_MISSED = "RPOMissed"
    RESTORE_SUCCEEDED = "RestoreSucceeded"
    RESTORE_FAILED = "RestoreFailed"
    RESTORE_TEST_PASSED = "RestoreTestPassed"
    RESTORE_TEST_FAILED = "RestoreTestFailed"
    RTO_MISSED = "RTOMissed"
    FAILOVER_STARTED = "FailoverStarted"
    FAILOVER_SUCCEEDED = "FailoverSucceeded"
    FAILOVER_FAILED = "FailoverFailed"
    TARGET_DOWN = "TargetDown"
    TARGET_UP = "TargetUp"
    DRILL_SUCCEEDED = "DrillSucceeded"
    DRILL_FAILED = "DrillFailed"
    ESCALATION = "Escalation"
    RESOLVED = "Resolved"


DEFAULT_NOTIFICATION_EVENTS: tuple[NotificationEvent, ...] = (
    NotificationEvent.BACKUP_FAILED,
    NotificationEvent.BACKUP_STALE,
    NotificationEvent.RPO_MISSED,
    NotificationEvent.RESTORE_FAILED,
    NotificationEvent.RESTORE_TEST_FAILED,
    NotificationEvent.RTO_MISSED,
    NotificationEvent.FAILOVER_STARTED,
    NotificationEvent.FAILOVER_SUCCEEDED,
    NotificationEvent.FAILOVER_FAILED,
    NotificationEvent.TARGET_DOWN,
    NotificationEvent.TARGET_UP,
)
"""What is sent when `notifications.events` is omitted: failures, staleness and failovers."""

ContactAddress = Annotated[str, Field(min_length=1, max_length=254)]


class EscalationLevel(SpecModel):
    """Who is told when a problem is still open after some time (spec 10.2)."""

    level: Annotated[StrictInt, Field(ge=1, le=9)]
    """Escalation level, 1 first."""
    after: Duration
    """How long a problem stays open before this level is notified (0s: immediately)."""
    contacts: Annotated[list[ContactAddress], Field(min_length=1, max_length=16)]
    """E-mail addresses, phone numbers or chat handles to mention."""
    webhook_secret_ref: SecretKeyRef | None = None
    """A different webhook for this level (default: notifications.webhookSecretRef)."""


class Contact(SpecModel):
    """An entry of the emergency contact list, included in incident notifications."""

    role: Annotated[str, Field(min_length=1, max_length=63)]
    """Role or team, e.g. incident-commander, database-team."""
    primary: ContactAddress
    """Primary contact (lead)."""
    backup: ContactAddress | None = None
    """Backup contact (on-call)."""


class Notifications(SpecModel):
    """Slack-compatible webhook notifications with escalation (spec 7.2, 10.2)."""

    webhook_secret_ref: SecretKeyRef | None = None
    """Secret key holding a Slack-compatible incoming webhook URL."""
    events: Annotated[list[NotificationEvent], Field(max_length=16)] | None = None
    """Events to send; default: failures, staleness and failovers."""
    escalation: (
        Annotated[
            list[EscalationLevel],
            Field(
                max_length=9,
                json_schema_extra={
                    "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["level"],
                },
            ),
        ]
        | None
    ) = None
    """Escalation levels, notified in turn while a problem stays open."""
    contacts: Annotated[list[Contact], Field(max_length=32)] | None = None
    """Emergency contact list (spec 10.2), included in incident notifications."""

    cel_rules = (
        Rule(None, "escalation levels must be unique", lambda n: unique(n.escalation, "level")),
        Rule(
            "has(self.webhookSecretRef) || (has(self.escalation) && size(self.escalation) > 0"
            " && self.escalation.all(e, has(e.webhookSecretRef)))",
            "notifications need webhookSecretRef (or a webhookSecretRef on every escalation level)",
            lambda n: (
                n.webhook_secret_ref is not None
                or (bool(n.escalation) and all(e.webhook_secret_ref for e in n.escalation))
            ),
        ),
    )


class ResourceList(SpecModel):
    """CPU and memory quantities."""

    cpu: Quantity | None = None
    """CPU, e.g. 500m or 2."""
    memory: Quantity | None = None
    """Memory, e.g. 512Mi or 2Gi."""


class ResourceRequirements(SpecModel):
    """Resources of the Jobs' containers."""

    requests: ResourceList | None = None
    """Minimum resources reserved."""
    limits: ResourceList | None = None
    """Maximum resources allowed."""
