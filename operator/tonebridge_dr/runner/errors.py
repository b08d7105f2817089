"""The one exception root of the runner, and the exit codes it maps to.

Every failure the runner can explain is a `DRError` subclass carrying a stable
`exit_code` and a `reason` (a CamelCase word the operator copies into a
condition). Messages are one human sentence and never contain secrets
(passwords, keys, full DSNs with passwords).

A failure may carry the command's `result` as well (a restore test whose checks
failed still has everything it measured): the front door then prints it like a
success and writes it into the termination message with `error`, `message` and
`exit_code` added.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any


class DRError(Exception):
    """Base of every error the runner reports; `str(err)` is the one-line message."""

    exit_code: int = 1
    reason: str = "Failed"

    def __init__(self, *args: object, result: Mapping[str, Any] | None = None) -> None:
        super().__init__(*args)
        self.result: dict[str, Any] | None = dict(result) if result is not None else None


class UsageError(DRError):
    """Bad command-line input detected before any work started."""

    exit_code = 2
    reason = "InvalidArguments"


class RepositoryConfigError(DRError):
    """The repository URL is malformed, has an unknown scheme, or its bucket/folder is missing."""

    exit_code = 3
    reason = "RepositoryUnavailable"


class StorageError(DRError):
    """A storage backend call failed (network, permissions, endpoint down)."""

    exit_code = 4
    reason = "StorageError"


class ObjectNotFound(StorageError):
    """A key that should exist does not."""

    exit_code = 5
    reason = "ObjectNotFound"


class BackupNotFound(DRError):
    """No complete backup (with a manifest) matches the requested id."""

    exit_code = 6
    reason = "BackupNotFound"


class IntegrityError(DRError):
    """A stored object is corrupt, truncated or missing: its checksum or size does not match."""

    exit_code = 7
    reason = "IntegrityCheckFailed"


class EncryptionError(DRError):
    """Encryption or decryption failed (missing/wrong key, gpg failure)."""

    exit_code = 8
    reason = "EncryptionError"


class SourceError(DRError):
    """The data source (database, Redis, ...) is unreachable or refused us."""

    exit_code = 9
    reason = "SourceUnavailable"


class AuthenticationError(SourceError):
    """The data source rejected our credentials."""

    exit_code = 10
    reason = "AuthenticationFailed"


class TargetNotEmpty(DRError):
    """The restore target already holds data and overwrite/--clean was not asked for."""

    exit_code = 11
    reason = "TargetNotEmpty"


class ToolError(DRError):
    """An external tool (pg_dump, gpg, ...) failed; the message carries its last stderr line."""

    exit_code = 12
    reason = "ToolFailed"


class ConflictError(DRError):
    """A write would overwrite different existing content (e.g. a WAL segment pushed twice),
    or a delete would take objects another backup reads (a link of an incremental chain)."""

    exit_code = 13
    reason = "Conflict"


class RecoveryEndedEarly(DRError):
    """Point-in-time recovery promoted before it reached the WAL its plan said it would.

    The data directory is stopped and marked; it misses transactions that are in the
    archive and must not be used as the recovered database.
    """

    exit_code = 14
    reason = "RecoveryEndedEarly"


class ChecksFailed(DRError):
    """A restore test restored its backup, but at least one check failed (`result` says which,
    with the value each got)."""

    exit_code = 15
    reason = "ChecksFailed"


class RTOMissed(DRError):
    """A restore test passed its checks, but the restore took longer than its RTO."""

    exit_code = 16
    reason = "RTOMissed"


class BackupArchived(DRError):
    """Objects of a backup (or WAL it needs) are in an archive storage class (S3 GLACIER,
    DEEP_ARCHIVE) without a readable rehydrated copy; found before the target is touched.
    The message names the backup, the class and the `backups rehydrate` command."""

    exit_code = 17
    reason = "BackupArchived"


class ObjectLocked(StorageError):
    """S3 refused to delete an object version that Object Lock retains (`until`: its
    retain-until date, None for a legal hold or when S3 did not say)."""

    exit_code = 18
    reason = "ObjectLocked"

    def __init__(self, *args: object, until: dt.datetime | None = None) -> None:
        super().__init__(*args)
        self.until = until


class ObjectsNotRestored(DRError):
    """A Kubernetes restore tried every object, but the API server refused some of them;
    `result` has the counts and the first failures."""

    exit_code = 19
    reason = "ObjectsNotRestored"
