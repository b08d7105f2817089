"""Standard status conditions (the shape of `metav1.Condition`) and their stable vocabulary.

Condition types and reasons are part of the API: monitoring, GitOps health
checks and `kubectl wait --for=condition=...` depend on them, so values are
never renamed once shipped. Add new members instead.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field

from tonebridge_dr.api import formats
from tonebridge_dr.api.base import StatusModel, Time

__all__ = ["Condition", "ConditionList", "ConditionStatus", "ConditionType", "Reason"]


class ConditionStatus(StrEnum):
    """Whether a condition holds: True, False or Unknown."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class ConditionType(StrEnum):
    """Condition types used by the four kinds."""

    READY = "Ready"
    """The object is valid and everything it needs exists (all kinds)."""
    SUCCEEDED = "Succeeded"
    """RestoreRequest finished and verified the restore."""
    RPO_MET = "RPOMet"
    """BackupPolicy: the newest recovery point is younger than `objectives.rpo`."""
    RTO_MET = "RTOMet"
    """RestoreTest / FailoverPlan: the measured recovery time is within the objective;
    BackupPolicy: the newest finished RestoreTest of the policy restored within
    `objectives.rto` (the policy's, else the test's)."""
    BACKUP_STALE = "BackupStale"
    """BackupPolicy: the newest backup in the repository is older than allowed."""
    HEALTHY = "Healthy"
    """FailoverPlan: the health-checked primary answers."""
    PASSED = "Passed"
    """RestoreTest: the last run restored and every check passed."""
    RESTORABLE = "Restorable"
    """BackupPolicy: the newest finished RestoreTest of the policy passed."""
    WAL_ARCHIVING = "WALArchiving"
    """BackupPolicy with walArchive: the streamer runs / the server's archiver succeeds."""
    RETENTION_APPLIED = "RetentionApplied"
    """BackupPolicy: the last retention run applied the rules (or found nothing to do)."""


class Reason(StrEnum):
    """Machine-readable reasons (CamelCase) used in conditions and Events."""

    RECONCILED = "Reconciled"
    INVALID_SPEC = "InvalidSpec"
    SECRET_NOT_FOUND = "SecretNotFound"
    POLICY_NOT_FOUND = "PolicyNotFound"
    REPOSITORY_UNREACHABLE = "RepositoryUnreachable"
    SUSPENDED = "Suspended"
    NO_OBJECTIVE = "NoObjective"
    OBJECTIVE_MET = "ObjectiveMet"
    OBJECTIVE_MISSED = "ObjectiveMissed"
    NO_BACKUPS = "NoBackups"
    BACKUP_FRESH = "BackupFresh"
    BACKUP_TOO_OLD = "BackupTooOld"
    BACKUP_SUCCEEDED = "BackupSucceeded"
    BACKUP_FAILED = "BackupFailed"
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    JOB_FAILED = "JobFailed"
    BACKUP_NOT_FOUND = "BackupNotFound"
    VERIFICATION_FAILED = "VerificationFailed"
    CHECKS_PASSED = "ChecksPassed"
    CHECKS_FAILED = "ChecksFailed"
    HEALTH_CHECK_PASSING = "HealthCheckPassing"
    HEALTH_CHECK_FAILING = "HealthCheckFailing"
    FAILOVER_STARTED = "FailoverStarted"
    STAGE_RTO_MISSED = "StageRTOMissed"
    DRILL = "Drill"
    # BackupPolicy: owned objects, run-now, the freshness monitor, Redis AOF.
    APPLY_FAILED = "ApplyFailed"
    TARGET_NOT_SUPPORTED = "TargetNotSupported"
    SECRET_KEY_NOT_FOUND = "SecretKeyNotFound"
    BACKUP_STARTED = "BackupStarted"
    RUN_NOW_REFUSED = "RunNowRefused"
    RPO_MET = "RPOMet"
    RPO_MISSED = "RPOMissed"
    RPO_UNKNOWN = "RPOUnknown"
    NO_FULL_RECOVERY_POINT = "NoFullRecoveryPoint"
    NO_BACKUP_YET = "NoBackupYet"
    POD_CANNOT_START = "PodCannotStart"
    # BackupPolicy: WALArchiving.
    STREAMER_AVAILABLE = "StreamerAvailable"
    STREAMER_UNAVAILABLE = "StreamerUnavailable"
    ARCHIVING = "Archiving"
    ARCHIVING_FAILING = "ArchivingFailing"
    DATABASE_UNREACHABLE = "DatabaseUnreachable"
    """RPOMet: the repository holds only table-subset dumps (hot tables), nothing that
    restores the whole database."""
    REPLICA_BEHIND = "ReplicaBehind"
    """RPOMet: a replica of the repository is further behind than objectives.replicaRpo
    (or never held a complete copy)."""
    REPLICATED = "Replicated"
    """Event: a replication Job copied new backups or WAL to every replica."""
    REPLICATION_FAILED = "ReplicationFailed"
    """Event: a replication Job left a replica without something the primary holds."""
    APPEND_ONLY_ENABLED = "AppendOnlyEnabled"
    APPEND_ONLY_DISABLED = "AppendOnlyDisabled"
    APPEND_ONLY_UNKNOWN = "AppendOnlyUnknown"
    OBJECT_LOCK_NOT_ENABLED = "ObjectLockNotEnabled"
    SECRETS_NEED_ENCRYPTION = "SecretsNeedEncryption"
    # RestoreRequest: what it waits for, why it is refused, what its Job did.
    INVALID_POLICY = "InvalidPolicy"
    UNSUPPORTED_TARGET = "UnsupportedTarget"
    MISSING_DECRYPTION_KEY = "MissingDecryptionKey"
    SERVICE_ACCOUNT_NOT_FOUND = "ServiceAccountNotFound"
    CLAIM_NOT_FOUND = "ClaimNotFound"
    CLAIM_EXISTS = "ClaimExists"
    NAME_CONFLICT = "NameConflict"
    WRITE_CREDENTIALS = "WriteCredentials"
    RESTORE_STARTED = "RestoreStarted"
    REHYDRATING = "Rehydrating"
    RESTORE_SUCCEEDED = "RestoreSucceeded"
    RESTORE_FAILED = "RestoreFailed"
    JOB_DELETED = "JobDeleted"
    INSTANCE_NOT_STARTED = "InstanceNotStarted"
    INSTANCE_READY = "InstanceReady"
    TARGET_TIME_IN_FUTURE = "TargetTimeInFuture"
    REPORT_STORED = "ReportStored"
    REPORT_NOT_STORED = "ReportNotStored"
    WAITING_FOR_WAL = "WaitingForWAL"
    # RestoreTest: its runs, their verdict (Passed) and the measured restore time (RTOMet).
    RESTORE_TEST_STARTED = "RestoreTestStarted"
    RESTORE_TEST_PASSED = "RestoreTestPassed"
    RESTORE_TEST_FAILED = "RestoreTestFailed"
    RTO_MET = "RTOMet"
    RTO_MISSED = "RTOMissed"
    NOT_MEASURED = "NotMeasured"
    # BackupPolicy: what its RestoreTests proved (Restorable, RTOMet).
    NEVER_TESTED = "NeverTested"
    # BackupPolicy: retention run by the operator (RetentionApplied, Events).
    PRUNED = "Pruned"
    NOTHING_TO_PRUNE = "NothingToPrune"
    PRUNE_FAILED = "PruneFailed"
    PRUNE_DEFERRED = "PruneDeferred"
    NO_RETENTION_RULES = "NoRetentionRules"
    BACKUPS_PRUNED = "BackupsPruned"
    # FailoverPlan: health transitions, runs, their steps, reset and escalation.
    HEALTH_UNKNOWN = "HealthUnknown"
    NO_HEALTH_CHECK = "NoHealthCheck"
    TARGET_DOWN = "TargetDown"
    TARGET_UP = "TargetUp"
    FAILOVER_SUCCEEDED = "FailoverSucceeded"
    FAILOVER_FAILED = "FailoverFailed"
    FAILOVER_NOW_REFUSED = "FailoverNowRefused"
    DRILL_STARTED = "DrillStarted"
    DRILL_SUCCEEDED = "DrillSucceeded"
    DRILL_FAILED = "DrillFailed"
    STEP_SUCCEEDED = "StepSucceeded"
    STEP_FAILED = "StepFailed"
    STAGE_RTO_MET = "StageRTOMet"
    PLAN_RESET = "PlanReset"
    RESET_REFUSED = "ResetRefused"
    ESCALATED = "Escalated"
    RESOLVED = "Resolved"
    # Kinds this version accepts and validates but does not act on yet.
    NOT_IMPLEMENTED = "NotImplemented"


class Condition(StatusModel):
    """One observation about the object, in the standard Kubernetes shape."""

    type: Annotated[str, Field(max_length=316)]
    """Condition type in CamelCase, e.g. Ready, RPOMet, BackupStale."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: Annotated[str, Field(max_length=1024, pattern=formats.REASON_RE)]
    """Machine-readable CamelCase reason for the last transition."""
    message: Annotated[str, Field(max_length=32768)] = ""
    """Human-readable details."""
    last_transition_time: Time
    """When `status` last changed."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The `metadata.generation` this condition was computed from."""


ConditionList = Annotated[
    list[Condition],
    Field(
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}
    ),
]
"""`status.conditions`: at most one condition per type."""
