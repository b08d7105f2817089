"""Typed API of tonebridge-dr (`dr.tonebridge.io/v1alpha1`): the source of truth for the CRDs.

Pure pydantic: no kopf, no Kubernetes client. Parse a kopf body or spec with
`BackupPolicy.from_body(body)` or `BackupPolicySpec.model_validate(spec)`; write status
with `status.model_dump(mode="json", exclude_none=True)`. Wire names are camelCase,
Python attributes snake_case. `crds/` is generated from these models by `crdgen`.

Names are loaded on first use (PEP 562): importing one module of the package, e.g.
`tonebridge_dr.api.runner_contract` (which the runner reads at every start), does not load
pydantic and every model.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from tonebridge_dr.api.restorerequest import (
        RestorePhase,
        RestoreRequestSpec,
        RestoreRequestStatus,
    )
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

_WHERE: dict[str, str] = {
    "API_VERSION": "tonebridge_dr.api.kinds",
    "BACKUP_POLICY": "tonebridge_dr.api.kinds",
    "BackupMethod": "tonebridge_dr.api.common",
    "BackupPolicy": "tonebridge_dr.api.kinds",
    "BackupPolicySpec": "tonebridge_dr.api.backuppolicy",
    "BackupPolicyStatus": "tonebridge_dr.api.backuppolicy",
    "Condition": "tonebridge_dr.api.conditions",
    "ConditionStatus": "tonebridge_dr.api.conditions",
    "ConditionType": "tonebridge_dr.api.conditions",
    "FAILOVER_PLAN": "tonebridge_dr.api.kinds",
    "FailoverPlan": "tonebridge_dr.api.kinds",
    "FailoverPlanSpec": "tonebridge_dr.api.failoverplan",
    "FailoverPlanStatus": "tonebridge_dr.api.failoverplan",
    "GROUP": "tonebridge_dr.api.kinds",
    "KINDS": "tonebridge_dr.api.kinds",
    "KindInfo": "tonebridge_dr.api.kinds",
    "RESTORE_REQUEST": "tonebridge_dr.api.kinds",
    "RESTORE_TEST": "tonebridge_dr.api.kinds",
    "Reason": "tonebridge_dr.api.conditions",
    "RestorePhase": "tonebridge_dr.api.restorerequest",
    "RestoreRequest": "tonebridge_dr.api.kinds",
    "RestoreRequestSpec": "tonebridge_dr.api.restorerequest",
    "RestoreRequestStatus": "tonebridge_dr.api.restorerequest",
    "RestoreTest": "tonebridge_dr.api.kinds",
    "RestoreTestSpec": "tonebridge_dr.api.restoretest",
    "RestoreTestStatus": "tonebridge_dr.api.restoretest",
    "VERSION": "tonebridge_dr.api.kinds",
    "format_duration": "tonebridge_dr.api.formats",
    "kind_info": "tonebridge_dr.api.kinds",
    "parse_duration": "tonebridge_dr.api.formats",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
