"""Reports: the evidence restore tests and failover drills leave in the repository.

Layout, relative to the repository URL (next to `base/` and `wal/`):

    restore-tests/<UTC start>-<name>.json          the report (indented JSON)
    restore-tests/<UTC start>-<name>.json.sha256   its SHA-256, `sha256sum` format, written last
    drills/<UTC start>-<namespace>.<plan>.json     a FailoverPlan run's report (same scheme)

`<UTC start>` is `YYYYMMDDTHHMMSSZ` (when the test started), so key order is time
order; a second report of the same test in the same second gets `-2`, `-3`, ...
after its name. Both objects are written through the storage interface, each
atomically (`put_stream`); the checksum goes last, so a report without one is a
write that did not finish. An auditor can check a downloaded pair with
`sha256sum -c NAME.json.sha256`; `list_reports` checks every pair and says which
do not match. Reports are never rewritten; retention of backups does not touch them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import re
from collections.abc import Mapping
from typing import Any

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.contract import runner_contract
from tonebridge_dr.runner.storage.base import Storage

log = logging.getLogger(__name__)

PREFIX = runner_contract.RESTORE_TEST_REPORTS
DRILL_PREFIX = runner_contract.DRILL_REPORTS
REPORT_SUFFIX = ".json"
CHECKSUM_SUFFIX = ".sha256"
#: Checksum states `list_reports` gives each report.
CHECKSUM_OK = "ok"
CHECKSUM_MISMATCH = "mismatch"
CHECKSUM_MISSING = "missing"
CHECKSUM_UNREADABLE = "unreadable"

_STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
#: A test name: a Kubernetes object name (RFC 1123 subdomain), so it is safe in a key.
_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", re.ASCII)
_MAX_SUFFIX = 1000


def check_name(name: str) -> str:
    """`name` when it can name a report (lowercase letters, digits, `-` and `.`, at most 253
    characters, starting and ending with a letter or digit); UsageError otherwise."""
    if not _NAME_RE.fullmatch(name) or ".." in name:
        raise errors.UsageError(
            f"invalid restore test name {name!r}: use lowercase letters, digits, '-' and '.' "
            "(a Kubernetes object name), e.g. quarterly-db"
        )
    return name


def free_key(storage: Storage, started_at: dt.datetime, name: str, *,
             prefix: str = PREFIX) -> str:
    """The key a report of `name` started at `started_at` gets: the first one free."""
    stamp = started_at.astimezone(dt.UTC).strftime(_STAMP_FORMAT)
    for n in range(1, _MAX_SUFFIX):
        key = f"{prefix}{stamp}-{name}{'' if n == 1 else f'-{n}'}{REPORT_SUFFIX}"
        if storage.head(key) is None:
            return key
    raise errors.ConflictError(f"no free report key for {name} at {stamp}")


def encode(payload: Mapping[str, Any]) -> bytes:
    """The bytes stored for a report (what its SHA-256 is of)."""
    return json.dumps(payload, indent=2, default=str).encode() + b"\n"


def write_report(storage: Storage, key: str, payload: Mapping[str, Any]) -> str:
    """Store `payload` under `key`, then its checksum object; returns the SHA-256 (hex).

    Each put is atomic; a failure leaves at most a report without checksum, which
    `list_reports` shows as such.
    """
    data = encode(payload)
    digest = hashlib.sha256(data).hexdigest()
    storage.put_bytes(key, data)
    storage.put_bytes(key + CHECKSUM_SUFFIX, f"{digest}  {key.rsplit('/', 1)[-1]}\n".encode())
    log.info("report stored as %s (sha256 %s)", key, digest)
    return digest


@dataclasses.dataclass(frozen=True)
class StoredReport:
    """One report as found in the repository, with the verdict on its checksum."""

    key: str
    #: CHECKSUM_OK; _MISSING (no checksum object: the write did not finish); _MISMATCH (the
    #: report changed after it was written); _UNREADABLE (checksum or report not parseable)
    checksum: str
    sha256: str  # of the stored bytes
    data: Mapping[str, Any] | None  # None when the report is not a JSON object

    def row(self) -> dict[str, Any]:
        """The stable `--json` row of `restore-tests list`."""
        data = self.data or {}
        return {
            "key": self.key,
            "name": data.get("name"),
            "started_at": data.get("started_at"),
            "completed_at": data.get("completed_at"),
            "backup_id": data.get("backup_id"),
            "method": data.get("method"),
            "passed": data.get("passed"),
            "restore_duration_seconds": data.get("restore_duration_seconds"),
            "rto_seconds": data.get("rto_seconds"),
            "rto_met": data.get("rto_met"),
            "error": data.get("error"),
            "sha256": self.sha256,
            "checksum": self.checksum,
        }

    def drill_row(self) -> dict[str, Any]:
        """The stable `--json` row of `drills list`."""
        data = self.data or {}
        return {
            "key": self.key,
            "plan": data.get("plan"),
            "namespace": data.get("namespace"),
            "mode": data.get("mode"),
            "phase": data.get("phase"),
            "token": data.get("token"),
            "started_at": data.get("started_at"),
            "completed_at": data.get("completed_at"),
            "elapsed_seconds": data.get("elapsed_seconds"),
            "rto_met": data.get("rto_met"),
            "stages": data.get("stages"),
            "sha256": self.sha256,
            "checksum": self.checksum,
        }


def _recorded(text: bytes) -> str | None:
    head = text.decode("ascii", "replace").split()
    return head[0].lower() if head and re.fullmatch(r"[0-9a-fA-F]{64}", head[0]) else None


def list_reports(storage: Storage, *, prefix: str = PREFIX) -> list[StoredReport]:
    """Every report under `prefix` (default `restore-tests/`), newest first, each read and
    checked against its recorded SHA-256 (one LIST, two GETs per report)."""
    keys = {info.key for info in storage.list(prefix)}
    found: list[StoredReport] = []
    for key in sorted((k for k in keys if k.endswith(REPORT_SUFFIX)), reverse=True):
        try:
            data = storage.get_bytes(key)
        except errors.ObjectNotFound:
            continue  # deleted between LIST and GET
        digest = hashlib.sha256(data).hexdigest()
        recorded = None
        if key + CHECKSUM_SUFFIX in keys:
            try:
                recorded = _recorded(storage.get_bytes(key + CHECKSUM_SUFFIX))
            except errors.ObjectNotFound:
                recorded = None
        try:
            parsed = json.loads(data)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            parsed = None
        if key + CHECKSUM_SUFFIX not in keys:
            verdict = CHECKSUM_MISSING
        elif recorded is None:
            verdict = CHECKSUM_UNREADABLE
        elif recorded != digest:
            verdict = CHECKSUM_MISMATCH
        else:
            verdict = CHECKSUM_OK if parsed is not None else CHECKSUM_UNREADABLE
        found.append(StoredReport(key, verdict, digest, parsed))
    return found
