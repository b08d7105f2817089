"""The WALArchiving condition of a PostgreSQL policy with `walArchive` (pure).

* `stream` mode: True while the WAL streamer Deployment has an available pod; False,
  reason `StreamerUnavailable`, when it has none (a policy used to say Ready=True while
  its streamer never ran). The newest archived WAL is named in the message.
* `archive_command` mode, when the database answered (status/dataatrisk.py): False,
  reason `ArchivingFailing`, while the server's archiver fails (its last failure is newer
  than its last success); True otherwise. Unknown when the database cannot be asked.
* No `walArchive`: the condition is removed.
"""

from __future__ import annotations

from datetime import UTC, datetime

from tonebridge_dr.api.backuppolicy import BackupPolicyStatus, WalArchiveMode
from tonebridge_dr.api.conditions import Reason
from tonebridge_dr.status import conditions
from tonebridge_dr.status.dataatrisk import ArchiverState

__all__ = ["WAL_ARCHIVING", "assess_wal_archiving"]

WAL_ARCHIVING = "WALArchiving"


def _time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def assess_wal_archiving(
    status: BackupPolicyStatus,
    mode: WalArchiveMode | None,
    *,
    deployment: str | None,
    available: int | None,
    archiver: ArchiverState | None,
    newest_wal_time: datetime | None,
    generation: int | None,
    now: datetime,
) -> BackupPolicyStatus:
    """`status` with WALArchiving set for `mode` (module docstring). `available`: available
    pods of the streamer Deployment (None: it does not exist yet)."""
    if mode is None:
        if conditions.get_condition(status.conditions, WAL_ARCHIVING) is None:
            return status
        return status.model_copy(update={
            "conditions": conditions.remove_condition(status.conditions, WAL_ARCHIVING)})
    newest = (f"; the newest archived WAL is from {_time(newest_wal_time)}"
              if newest_wal_time is not None else "; no WAL is archived yet")
    value: conditions.StatusValue
    if mode == WalArchiveMode.STREAM:
        if available:
            value, reason = "True", Reason.STREAMER_AVAILABLE.value
            message = f"the WAL streamer Deployment {deployment} is available{newest}"
        else:
            value, reason = "False", Reason.STREAMER_UNAVAILABLE.value
            message = (f"the WAL streamer Deployment {deployment} has no available pod"
                       f"{' (not created yet)' if available is None else ''}: WAL is not "
                       f"archived (`kubectl describe deployment {deployment}`){newest}")
    elif archiver is None or archiver.error is not None:
        value, reason = "Unknown", Reason.DATABASE_UNREACHABLE.value
        message = ("cannot ask the database about its archiver"
                   + (f": {archiver.error}" if archiver and archiver.error else "") + newest)
    elif archiver.last_failed_time is not None and (
        archiver.last_archived_time is None
        or archiver.last_failed_time > archiver.last_archived_time
    ):
        value, reason = "False", Reason.ARCHIVING_FAILING.value
        message = (f"archive_command fails: {archiver.last_failed_wal or 'a segment'} failed at "
                   f"{_time(archiver.last_failed_time)} (the server log says why; "
                   f"`tonebridge-dr check --archive-command` as the server's user){newest}")
    else:
        value, reason = "True", Reason.ARCHIVING.value
        last = archiver.last_archived_wal or "nothing yet"
        message = f"archive_command archives WAL (last archived segment {last}){newest}"
    updated = conditions.set_condition(
        status.conditions, type=WAL_ARCHIVING, status=value, reason=reason, message=message,
        observed_generation=generation, now=now,
    )
    return status.model_copy(update={"conditions": updated})
