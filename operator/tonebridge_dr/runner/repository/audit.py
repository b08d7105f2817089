"""The audit trail (spec 11.1): one append-only record per operation, in the repository.

Kubernetes Events expire within hours; auditors read the bucket. Every backup, restore,
prune and restore test (and, once the runner has it, failover) that the runner's front
door (runner/cli.py) runs leaves exactly one record, written after the verb finished,
whether it succeeded or failed:

    audit/YYYY/MM/DD/<UTC start YYYYMMDDTHHMMSS.ffffffZ>-<operation>-<random>.json

relative to the repository (policy) folder, next to `base/` and `wal/`. Key order is
time order (the day folders, then the start time to the microsecond); the random part
keeps two runs of one instant apart. A record is one JSON object (`AuditRecord.payload`):
who (the Kubernetes ServiceAccount, namespace, pod and Job from the downward API, or
`cli:<user>@<host>` outside Kubernetes), what (operation, engine, method, backup ids,
target, a few details), when (start, end, duration) and the outcome (succeeded or
failed, with the reason, exit code and message of a failure).

Contracts: a record is written once (`put_bytes`, atomic) under a key nobody used (it is
checked first) and never rewritten; nothing here reads one back to change it. Records
hold no secrets: targets are reduced to `user@host:port/database` (a DSN) or a URL
without password and query, and every string passes the runner's scrubber (passwords
in DSNs and URLs, $PGPASSWORD, $REDIS_PASSWORD). The only deletion is `prune_audit`,
of records older than the audit retention (default 3 years, the spec's), decided from
the key alone. Writing a record must never change the outcome of the operation it
records: the CLI logs a failure to write as a warning.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import getpass
import json
import logging
import os
import re
import secrets as random_tokens
import socket
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal

from tonebridge_dr.runner import errors, result
from tonebridge_dr.runner.contract import runner_contract
from tonebridge_dr.runner.storage.base import Storage

log = logging.getLogger(__name__)

PREFIX = runner_contract.AUDIT_PREFIX
SUFFIX = ".json"
VERSION = 1
#: The spec's retention of audit records (11.1: access logs archived for 3 years).
DEFAULT_RETENTION = dt.timedelta(days=3 * 365)
#: Operations that write a record (`failover` once the runner implements it).
OPERATIONS = ("backup", "restore", "prune", "restore-test", "failover", "audit-prune")
SUCCEEDED: Final = "succeeded"
FAILED: Final = "failed"
Outcome = Literal["succeeded", "failed"]

_STAMP = "%Y%m%dT%H%M%S.%fZ"
_KEY_RE = re.compile(
    r"^audit/(?P<y>\d{4})/(?P<m>\d{2})/(?P<d>\d{2})/"
    r"(?P<stamp>\d{8}T\d{6}\.\d{6}Z)-(?P<operation>[a-z][a-z-]*)-(?P<token>[0-9a-f]{8,})\.json$"
)
_DSN_PAIR = re.compile(r"(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")
_AGE_YEARS = re.compile(r"^(\d{1,4})y$")


# --- who -------------------------------------------------------------------------------------


def identity(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Who runs this: the pod's ServiceAccount, namespace, pod and Job (set by the builders
    through the downward API), or `cli:<user>@<host>` outside Kubernetes."""
    env = os.environ if env is None else env
    pod = env.get(runner_contract.ENV_POD_NAME, "").strip()
    namespace = env.get(runner_contract.ENV_POD_NAMESPACE, "").strip()
    account = env.get(runner_contract.ENV_SERVICE_ACCOUNT, "").strip()
    job = env.get(runner_contract.ENV_JOB_NAME, "").strip()
    if pod or account:
        principal = (
            f"system:serviceaccount:{namespace}:{account}" if account else f"pod:{namespace}/{pod}"
        )
        return {
            "kind": "kubernetes",
            "principal": principal,
            "service_account": account or None,
            "namespace": namespace or None,
            "pod": pod or None,
            "job": job or None,
        }
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for the uid (containers)
        user = f"uid{os.getuid()}"
    host = socket.gethostname()
    return {"kind": "cli", "principal": f"cli:{user}@{host}", "user": user, "host": host}


# --- what ------------------------------------------------------------------------------------


def describe_target(value: str | os.PathLike[str] | None) -> str | None:
    """A secret-free description of what an operation read or wrote: a libpq DSN becomes
    `user@host:port/dbname`, a URL loses its password, query and fragment, a path stays."""
    if value is None:
        return None
    text = os.fspath(value).strip()
    if not text:
        return None
    if "://" in text:
        parts = urllib.parse.urlsplit(text)
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        user = f"{parts.username}@" if parts.username else ""
        return result.scrub(f"{parts.scheme}://{user}{host}{parts.path}")
    pairs = {key.lower(): val.strip("'") for key, val in _DSN_PAIR.findall(text)}
    if pairs:
        host = pairs.get("host") or pairs.get("hostaddr") or ""
        port = f":{pairs['port']}" if pairs.get("port") else ""
        user = f"{pairs['user']}@" if pairs.get("user") else ""
        return result.scrub(f"{user}{host}{port}/{pairs.get('dbname', '')}")
    return result.scrub(text)


def _scrubbed(value: Any) -> Any:
    if isinstance(value, str):
        return result.scrub(value)
    if isinstance(value, Mapping):
        return {str(key): _scrubbed(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_scrubbed(item) for item in value]
    return value


def _when(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclasses.dataclass(frozen=True)
class AuditRecord:
    """One operation as the audit trail keeps it."""

    operation: str
    started_at: dt.datetime
    finished_at: dt.datetime
    outcome: Outcome
    who: Mapping[str, Any]
    engine: str | None = None
    method: str | None = None
    backup_ids: tuple[str, ...] = ()
    target: str | None = None
    repository: str | None = None
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    error_reason: str | None = None
    error_message: str | None = None
    exit_code: int = 0
    tool_version: str | None = None

    def payload(self) -> dict[str, Any]:
        """The stored JSON object (stable: add keys, never rename them), secrets scrubbed."""
        error = None
        if self.outcome == FAILED:
            error = {
                "reason": self.error_reason,
                "message": self.error_message,
                "exit_code": self.exit_code,
            }
        data: dict[str, Any] = {
            "version": VERSION,
            "operation": self.operation,
            "engine": self.engine,
            "method": self.method,
            "outcome": self.outcome,
            "exit_code": self.exit_code,
            "error": error,
            "started_at": _when(self.started_at),
            "finished_at": _when(self.finished_at),
            "duration_seconds": round((self.finished_at - self.started_at).total_seconds(), 3),
            "who": dict(self.who),
            "backup_ids": list(self.backup_ids),
            "target": self.target,
            "repository": self.repository,
            "details": dict(self.details),
            "tool_version": self.tool_version,
        }
        return dict(_scrubbed(data))


# --- write -----------------------------------------------------------------------------------


def record_key(operation: str, started_at: dt.datetime, token: str) -> str:
    """`audit/YYYY/MM/DD/<stamp>-<operation>-<token>.json` for a run started at `started_at`."""
    if operation not in OPERATIONS:
        raise ValueError(f"unknown audit operation {operation!r}")
    moment = started_at.astimezone(dt.UTC)
    return f"{PREFIX}{moment:%Y/%m/%d}/{moment.strftime(_STAMP)}-{operation}-{token}{SUFFIX}"


def write_record(storage: Storage, record: AuditRecord) -> str:
    """Store `record` under a new key (never one that exists); returns the key.

    One atomic put; a failure leaves nothing (the storage contract). Raises DRError.
    """
    body = json.dumps(record.payload(), indent=2, sort_keys=False, default=str).encode() + b"\n"
    for _ in range(8):
        key = record_key(record.operation, record.started_at, random_tokens.token_hex(4))
        if storage.head(key) is None:
            storage.put_bytes(key, body)
            log.debug("audit record stored as %s", key)
            return key
    raise errors.ConflictError("no free audit record key (eight random keys were taken)")


# --- read ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StoredRecord:
    """One record as found in the repository."""

    key: str
    started_at: dt.datetime  # from the key
    operation: str  # from the key
    data: Mapping[str, Any] | None  # None when the object is not a JSON object

    def row(self) -> dict[str, Any]:
        """The `--json` row of `audit list`: the stored record with its key (and `null`
        fields with `"unreadable": true` when it cannot be parsed)."""
        if self.data is None:
            return {"key": self.key, "operation": self.operation,
                    "started_at": _when(self.started_at), "unreadable": True}
        return {"key": self.key, **self.data}


def parse_key(key: str) -> tuple[dt.datetime, str] | None:
    """(start time, operation) of an audit record key, None for anything else."""
    match = _KEY_RE.match(key)
    if match is None:
        return None
    try:
        moment = dt.datetime.strptime(match.group("stamp"), _STAMP).replace(tzinfo=dt.UTC)
    except ValueError:
        return None
    return moment, match.group("operation")


def _keys(storage: Storage, since: dt.datetime | None) -> Iterable[tuple[str, dt.datetime, str]]:
    if since is None:
        infos: Iterable[Any] = storage.list(PREFIX)
    else:
        day = since.astimezone(dt.UTC)
        # Day folders before `since`'s are skipped by the listing itself.
        infos = storage.list_after(PREFIX, start_after=f"{PREFIX}{day:%Y/%m/%d}/")
    for info in infos:
        parsed = parse_key(info.key)
        if parsed is not None:
            yield info.key, parsed[0], parsed[1]


def list_records(
    storage: Storage, *, since: dt.datetime | None = None, operation: str | None = None
) -> list[StoredRecord]:
    """Records started at or after `since` (of `operation`), oldest first; one LIST and one
    GET per record listed. A record deleted between LIST and GET is left out."""
    found: list[StoredRecord] = []
    for key, started, op in _keys(storage, since):
        if since is not None and started < since:
            continue
        if operation is not None and op != operation:
            continue
        try:
            raw = storage.get_bytes(key)
        except errors.ObjectNotFound:
            continue
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        found.append(StoredRecord(key, started, op, parsed if isinstance(parsed, dict) else None))
    found.sort(key=lambda rec: (rec.started_at, rec.key))
    return found


# --- prune -----------------------------------------------------------------------------------


def parse_age(text: str) -> dt.timedelta:
    """`3y` (365-day years), or a duration `30d`, `12h`, `1h30m`, or seconds."""
    value = text.strip().lower()
    match = _AGE_YEARS.match(value)
    if match:
        return dt.timedelta(days=365 * int(match.group(1)))
    if value.isdigit():
        return dt.timedelta(seconds=int(value))
    from tonebridge_dr.api import formats

    try:
        return formats.parse_duration(value)
    except ValueError as exc:
        raise errors.UsageError(f"invalid age {text!r}: use e.g. 3y, 400d or 12h ({exc})") from None


@dataclasses.dataclass(frozen=True)
class AuditPruneReport:
    """What `prune_audit` deleted (or would, with `dry_run`)."""

    cutoff: dt.datetime
    deleted: list[str]
    kept: int
    dry_run: bool

    def result(self) -> dict[str, Any]:
        return {
            "cutoff": _when(self.cutoff),
            "deleted": list(self.deleted),
            "deleted_count": len(self.deleted),
            "kept": self.kept,
            "dry_run": self.dry_run,
        }


def prune_audit(
    storage_or_repo: Storage | Any,
    *,
    older_than: dt.timedelta = DEFAULT_RETENTION,
    now: dt.datetime,
    dry_run: bool = False,
) -> AuditPruneReport:
    """Delete audit records that started before `now - older_than` (judged from the key
    alone: one LIST, no GET). Takes a `Storage` or anything with a `.storage` (a
    `Repository`). Idempotent and safe to run twice at once; keys that are no audit record
    are never touched. Raises DRError when listing or deleting fails."""
    storage: Storage = getattr(storage_or_repo, "storage", storage_or_repo)
    if older_than <= dt.timedelta(0):
        raise errors.UsageError("audit records are kept for a positive age, e.g. 3y")
    cutoff = now.astimezone(dt.UTC) - older_than
    old: list[str] = []
    kept = 0
    for key, started, _op in _keys(storage, None):
        if started < cutoff:
            old.append(key)
        else:
            kept += 1
    if old and not dry_run:
        storage.delete_many(old)
        log.info("deleted %d audit records older than %s", len(old), _when(cutoff))
    return AuditPruneReport(cutoff=cutoff, deleted=old, kept=kept, dry_run=dry_run)
