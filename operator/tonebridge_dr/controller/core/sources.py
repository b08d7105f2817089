"""The BackupPolicy a restore source names: what RestoreRequests and RestoreTests read
their backups through (`source.policyRef`)."""

from __future__ import annotations

from tonebridge_dr.api.kinds import BACKUP_POLICY, BackupPolicy
from tonebridge_dr.api.restorerequest import RestoreSource
from tonebridge_dr.controller.core import objects
from tonebridge_dr.controller.core.context import Context
from tonebridge_dr.controller.core.kind import api_kind

POLICY_KIND = api_kind(BACKUP_POLICY)


def read_policy(ctx: Context, source: RestoreSource, namespace: str) -> BackupPolicy | None:
    """The BackupPolicy of `source.policyRef` in `namespace`; None without one or when it
    does not exist; objects.InvalidSpec when it does not parse. Raises kube.ApiError on
    API trouble."""
    ref = source.policy_ref
    if ref is None:
        return None
    return objects.read(ctx, POLICY_KIND, BackupPolicy, namespace, ref.name)
