"""Typed API of tonebridge-dr (`dr.tonebridge.io/v1alpha1`): the source of truth for the CRDs.

Pure pydantic: no kopf, no Kubernetes client. Parse a kopf body or spec with
`BackupPolicy.from_body(body)` or `BackupPolicySpec.model_validate(spec)`; write status
with `status.model_dump(mode="json", exclude_none=True)`. Wire names are camelCase,
Python attributes snake_case. `crds/` is generated from these models by `crdgen`.
"""

from tonebridge_dr.api.backuppolicy import BackupPolicySpec, BackupPolicyStatus
from tonebridge_dr.api.common import BackupMethod
from tonebridge_dr.api.conditions import Condition, ConditionStatus, ConditionType, Reason
from tonebridge_dr.api.failoverplan import FailoverPlanSpec, FailoverPlanStatus
from tonebridge_dr.api.formats import format_duration, parse_duration
from tonebridge_dr.api.kinds import (
    API_VERSION,
    BACKUP_POLICY,
    FAILOVER_PLAN,
    GROUP,
    KINDS,
    RESTORE_REQUEST,
    RESTORE_TEST,
    VERSION,
    BackupPolicy,
    FailoverPlan,
    KindInfo,
    RestoreRequest,
    RestoreTest,
    kind_info,
)
from tonebridge_dr.api.restorerequest import RestorePhase, RestoreRequestSpec, RestoreRequestStatus
from tonebridge_dr.api.restoretest import RestoreTestSpec, RestoreTestStatus

__all__ = [
    "API_VERSION",
    "BACKUP_POLICY",
    "FAILOVER_PLAN",
    "GROUP",
    "KINDS",
    "RESTORE_REQUEST",
    "RESTORE_TEST",
    "VERSION",
    "BackupMethod",
    "BackupPolicy",
    "BackupPolicySpec",
    "BackupPolicyStatus",
    "Condition",
    "ConditionStatus",
    "ConditionType",
    "FailoverPlan",
    "FailoverPlanSpec",
    "FailoverPlanStatus",
    "KindInfo",
    "Reason",
    "RestorePhase",
    "RestoreRequest",
    "RestoreRequestSpec",
    "RestoreRequestStatus",
    "RestoreTest",
    "RestoreTestSpec",
    "RestoreTestStatus",
    "format_duration",
    "kind_info",
    "parse_duration",
]
