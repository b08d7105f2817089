"""The four kinds: API group, names, whole-object models and `kubectl get` columns.

Other layers take names from here (`BACKUP_POLICY.plural`, `API_VERSION`) instead of
spelling them again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict

from tonebridge_dr.api.backuppolicy import BackupPolicySpec, BackupPolicyStatus
from tonebridge_dr.api.base import SpecModel, StatusModel, camel
from tonebridge_dr.api.failoverplan import FailoverPlanSpec, FailoverPlanStatus
from tonebridge_dr.api.restorerequest import (
    IMMUTABLE_SPEC_RULE,
    RestoreRequestSpec,
    RestoreRequestStatus,
)
from tonebridge_dr.api.restoretest import RestoreTestSpec, RestoreTestStatus

__all__ = [
    "API_VERSION",
    "BACKUP_POLICY",
    "CATEGORY",
    "FAILOVER_PLAN",
    "GROUP",
    "KINDS",
    "RESTORE_REQUEST",
    "RESTORE_TEST",
    "VERSION",
    "BackupPolicy",
    "FailoverPlan",
    "KindInfo",
    "ObjectMeta",
    "PrinterColumn",
    "RestoreRequest",
    "RestoreTest",
    "kind_info",
]

GROUP = "dr.tonebridge.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "tonebridge"


class ObjectMeta(BaseModel):
    """The parts of metadata the operator reads; everything else is kept as is."""

    model_config = ConfigDict(
        alias_generator=camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="allow",
        frozen=True,
    )

    name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class _Resource(BaseModel):
    model_config = ConfigDict(
        alias_generator=camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
        frozen=True,
    )

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Self:
        """Parse a kopf body (or any mapping) into the typed object."""
        return cls.model_validate(plain_value(body))


def plain_value(value: Any) -> Any:
    """kopf bodies are read-only Mapping views; pydantic wants dicts and lists."""
    if isinstance(value, Mapping):
        return {key: plain_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain_value(item) for item in value]
    return value


class BackupPolicy(_Resource):
    """A whole BackupPolicy object."""

    api_version: Literal["dr.tonebridge.io/v1alpha1"] = "dr.tonebridge.io/v1alpha1"
    kind: Literal["BackupPolicy"] = "BackupPolicy"
    metadata: ObjectMeta
    spec: BackupPolicySpec
    status: BackupPolicyStatus | None = None


class RestoreRequest(_Resource):
    """A whole RestoreRequest object."""

    api_version: Literal["dr.tonebridge.io/v1alpha1"] = "dr.tonebridge.io/v1alpha1"
    kind: Literal["RestoreRequest"] = "RestoreRequest"
    metadata: ObjectMeta
    spec: RestoreRequestSpec
    status: RestoreRequestStatus | None = None


class FailoverPlan(_Resource):
    """A whole FailoverPlan object."""

    api_version: Literal["dr.tonebridge.io/v1alpha1"] = "dr.tonebridge.io/v1alpha1"
    kind: Literal["FailoverPlan"] = "FailoverPlan"
    metadata: ObjectMeta
    spec: FailoverPlanSpec
    status: FailoverPlanStatus | None = None


class RestoreTest(_Resource):
    """A whole RestoreTest object."""

    api_version: Literal["dr.tonebridge.io/v1alpha1"] = "dr.tonebridge.io/v1alpha1"
    kind: Literal["RestoreTest"] = "RestoreTest"
    metadata: ObjectMeta
    spec: RestoreTestSpec
    status: RestoreTestStatus | None = None


@dataclass(frozen=True)
class PrinterColumn:
    """One `additionalPrinterColumns` entry."""

    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0

    def to_crd(self) -> dict[str, Any]:
        column: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.description:
            column["description"] = self.description
        if self.priority:
            column["priority"] = self.priority
        return column


def _condition(kind: str, field_name: str = "status") -> str:
    return f'.status.conditions[?(@.type=="{kind}")].{field_name}'


AGE = PrinterColumn("AGE", ".metadata.creationTimestamp", "date")


@dataclass(frozen=True)
class KindInfo:
    """Everything needed to name, parse and define one kind."""

    kind: str
    plural: str
    singular: str
    short_name: str
    description: str
    spec_model: type[SpecModel]
    status_model: type[StatusModel]
    resource_model: type[_Resource]
    printer_columns: tuple[PrinterColumn, ...]
    spec_transition_rules: tuple[dict[str, str], ...] = field(default=())

    @property
    def crd_name(self) -> str:
        """`backuppolicies.dr.tonebridge.io`."""
        return f"{self.plural}.{GROUP}"

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"


BACKUP_POLICY = KindInfo(
    kind="BackupPolicy",
    plural="backuppolicies",
    singular="backuppolicy",
    short_name="bp",
    description="BackupPolicy schedules backups of one target (PostgreSQL, Redis, Kubernetes "
    "configuration or a bucket) into a repository, keeps them by retention rules, and reports "
    "freshness against the recovery point objective.",
    spec_model=BackupPolicySpec,
    status_model=BackupPolicyStatus,
    resource_model=BackupPolicy,
    printer_columns=(
        PrinterColumn("TARGET", ".status.target", description="What is backed up"),
        PrinterColumn("SCHEDULE", ".status.schedules", description="Schedules"),
        PrinterColumn(
            "LAST BACKUP", ".status.lastSuccessfulBackup.time", "date", "Newest complete backup"
        ),
        PrinterColumn("OBJECTS", ".status.lastSuccessfulBackup.objects", "integer",
                      "Kubernetes targets: objects in the newest complete backup"),
        PrinterColumn("RPO", ".status.recoveryPoint", "date", "Age of the newest recovery point"),
        PrinterColumn("RESTORABLE", _condition("Restorable"),
                      description="The newest finished RestoreTest of the policy passed"),
        PrinterColumn("READY", _condition("Ready"), description="Ready condition"),
        AGE,
        PrinterColumn("RECOVERABLE FROM", ".status.recoveryWindowStart", "date",
                      "Oldest point in time that can be restored", priority=1),
        PrinterColumn("KEPT", ".status.retention.kept", "integer",
                      "Backups the last retention run kept", priority=1),
        PrinterColumn("PITR FROM", ".status.retention.pitrWindowStart", "date",
                      "Earliest point-in-time recovery target", priority=1),
        PrinterColumn("MESSAGE", _condition("Ready", "message"), priority=1),
    ),
)

RESTORE_REQUEST = KindInfo(
    kind="RestoreRequest",
    plural="restorerequests",
    singular="restorerequest",
    short_name="rr",
    description="RestoreRequest restores one backup (or a point in time) into a database, a "
    "volume, Redis or the cluster. It runs once; its spec is immutable.",
    spec_model=RestoreRequestSpec,
    status_model=RestoreRequestStatus,
    resource_model=RestoreRequest,
    printer_columns=(
        PrinterColumn("PHASE", ".status.phase",
                      description="Pending, Rehydrating, Running, Succeeded, Failed"),
        PrinterColumn("SOURCE", ".status.source", description="Where the backups come from"),
        PrinterColumn("TARGET TIME", ".spec.targetTime", description="Point-in-time target"),
        PrinterColumn("DURATION", ".status.duration", description="How long the restore took"),
        AGE,
        PrinterColumn("BACKUP", ".status.restored.backupId", priority=1),
        PrinterColumn("MESSAGE", ".status.message", priority=1),
    ),
    spec_transition_rules=(IMMUTABLE_SPEC_RULE,),
)

FAILOVER_PLAN = KindInfo(
    kind="FailoverPlan",
    plural="failoverplans",
    singular="failoverplan",
    short_name="fp",
    description="FailoverPlan watches a primary with a health check and recovers service in "
    "priority-ordered stages (promote standby, switch Service or DNS, restart workloads, "
    "restore data), reporting elapsed time against each stage's RTO.",
    spec_model=FailoverPlanSpec,
    status_model=FailoverPlanStatus,
    resource_model=FailoverPlan,
    printer_columns=(
        PrinterColumn("MODE", ".spec.mode", description="automatic, manual or drill"),
        PrinterColumn("HEALTH", ".status.health.state", description="Up, Down or Unknown"),
        PrinterColumn("PHASE", ".status.phase", description="Idle, Monitoring, Running, ..."),
        PrinterColumn("STAGE", ".status.currentStage", description="Stage running now"),
        PrinterColumn("ELAPSED", ".status.elapsed",
                      description="Time since the start of the current or last run"),
        AGE,
        PrinterColumn("HEALTHY", ".status.health.healthy", "boolean", priority=1),
        PrinterColumn("RTO MET", _condition("RTOMet"), priority=1),
    ),
)

RESTORE_TEST = KindInfo(
    kind="RestoreTest",
    plural="restoretests",
    singular="restoretest",
    short_name="rt",
    description="RestoreTest regularly restores a backup into scratch space, runs integrity "
    "queries and measures the restore time against the recovery time objective.",
    spec_model=RestoreTestSpec,
    status_model=RestoreTestStatus,
    resource_model=RestoreTest,
    printer_columns=(
        PrinterColumn("SOURCE", ".status.source", description="Where the backups come from"),
        PrinterColumn("LAST RESULT", ".status.lastRun.result",
                      description="Running, Passed or Failed"),
        PrinterColumn("RESTORE TIME", ".status.lastRun.restoreDuration",
                      description="Measured restore time of the newest run"),
        PrinterColumn("RTO MET", _condition("RTOMet"),
                      description="Restore time within objectives.rto (Unknown: no objective)"),
        PrinterColumn("LAST RUN", ".status.lastRun.startedAt", "date", "Start of the newest run"),
        AGE,
        PrinterColumn("SCHEDULE", ".spec.schedule", priority=1),
        PrinterColumn("BACKUP", ".status.lastRun.backupId", priority=1),
        PrinterColumn("READY", _condition("Ready"), priority=1),
        PrinterColumn("MESSAGE", ".status.lastRun.message", priority=1),
    ),
)

KINDS: tuple[KindInfo, ...] = (BACKUP_POLICY, RESTORE_REQUEST, FAILOVER_PLAN, RESTORE_TEST)


def kind_info(kind: str) -> KindInfo:
    """Look a kind up by Kind, plural, singular or short name."""
    for info in KINDS:
        if kind in (info.kind, info.plural, info.singular, info.short_name):
            return info
    raise KeyError(kind)
