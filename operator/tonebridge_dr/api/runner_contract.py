"""The contract between the operator and the runner inside its Jobs, in one place.

The operator (builders write Jobs, status reads their results) and the runner
(`tonebridge-dr <verb>` in the pod) are released together but run apart: what
one writes the other reads. Everything they must agree on lives here and only
here: environment variable names, exit codes and what they mean, the shape of
the termination message, and the engines with their methods. Builders, status
and the runner import this module (the runner may import `api`, nothing else of
the operator); tests check that the runner's `errors.py` and the engine registry
say the same as this module.

Values here are shipped: monitoring, alert rules and old Jobs depend on them.
Add, never rename or renumber.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Final, TypedDict

__all__ = [
    "AUDIT_PREFIX",
    "DRILL_REPORTS",
    "ENGINES",
    "ENGINE_NAMES",
    "ENV_BUCKET_ACCESS_KEY_ID",
    "ENV_BUCKET_ENDPOINT",
    "ENV_BUCKET_REGION",
    "ENV_BUCKET_SECRET_ACCESS_KEY",
    "ENV_BUCKET_SESSION_TOKEN",
    "ENV_BUCKET_SOURCE",
    "ENV_CHECKS",
    "ENV_CLAIM_HEARTBEAT",
    "ENV_COMPRESSION",
    "ENV_COMPRESSION_LEVEL",
    "ENV_DECRYPT_PASSPHRASE",
    "ENV_DSN",
    "ENV_ENCRYPT_TO",
    "ENV_GIT_KNOWN_HOSTS",
    "ENV_GIT_PASSWORD",
    "ENV_GIT_SSH_KEY",
    "ENV_GIT_USERNAME",
    "ENV_JOB_NAME",
    "ENV_LOG_LEVEL",
    "ENV_POD_NAME",
    "ENV_POD_NAMESPACE",
    "ENV_REDIS_TARGET_URL",
    "ENV_REDIS_URL",
    "ENV_REPO",
    "ENV_S3_OBJECT_LOCK_MODE",
    "ENV_S3_OBJECT_LOCK_RETAIN",
    "ENV_S3_SSE",
    "ENV_S3_SSE_KMS_KEY_ID",
    "ENV_SERVICE_ACCOUNT",
    "ENV_STORAGE_TIMEOUT",
    "ENV_TARGET_DSN",
    "ENV_TERMINATION_LOG",
    "EXIT_CODES",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TERMINATED",
    "FROM_RETENTION_INITIAL_LOCK",
    "REPLICA_ENV_KEYS",
    "REPLICA_LIMIT",
    "RESTORE_TEST_REPORTS",
    "TERMINATION_LIMIT",
    "WAL_FETCH_ABORT",
    "WAL_FETCH_DELIVERED",
    "WAL_FETCH_NOT_FOUND",
    "EngineSpec",
    "ExitCode",
    "ReplicaResult",
    "RestoreTestCheck",
    "RestoreTestResult",
    "TerminationError",
    "exit_code",
    "non_retriable_backup_codes",
    "non_retriable_restore_codes",
    "replica_env",
]

# -- environment of runner pods ---------------------------------------------------------------

ENV_REPO: Final = "TONEBRIDGE_DR_REPO"
"""The repository folder of one policy: `<spec.repository.url>/<policy name>`."""
ENV_DSN: Final = "TONEBRIDGE_DR_DSN"
"""libpq DSN of the database a backup reads (from a Secret, never a literal value)."""
ENV_TARGET_DSN: Final = "TONEBRIDGE_DR_TARGET_DSN"
"""libpq DSN of the database a restore writes (a restore test's scratch database)."""
ENV_REDIS_URL: Final = "TONEBRIDGE_DR_REDIS_URL"
"""redis:// URL of the server a backup reads."""
ENV_REDIS_TARGET_URL: Final = "TONEBRIDGE_DR_REDIS_TARGET_URL"
"""redis:// URL of the server a restore writes."""
ENV_BUCKET_SOURCE: Final = "TONEBRIDGE_DR_BUCKET_SOURCE"
"""s3://bucket/prefix of the bucket a bucket backup snapshots."""
ENV_BUCKET_ACCESS_KEY_ID: Final = "TONEBRIDGE_DR_BUCKET_AWS_ACCESS_KEY_ID"
"""Credentials of the bucket a bucket backup reads or a bucket restore writes (from a
Secret); unset: the standard AWS chain, as for the repository."""
ENV_BUCKET_SECRET_ACCESS_KEY: Final = "TONEBRIDGE_DR_BUCKET_AWS_SECRET_ACCESS_KEY"
ENV_BUCKET_SESSION_TOKEN: Final = "TONEBRIDGE_DR_BUCKET_AWS_SESSION_TOKEN"
ENV_BUCKET_REGION: Final = "TONEBRIDGE_DR_BUCKET_REGION"
ENV_BUCKET_ENDPOINT: Final = "TONEBRIDGE_DR_BUCKET_ENDPOINT"
"""Endpoint of an S3-compatible source or target bucket (default: the repository's)."""
ENV_S3_SSE: Final = "TONEBRIDGE_DR_S3_SSE"
"""S3 server-side encryption of stored objects (`AES256` or `aws:kms`)."""
ENV_S3_SSE_KMS_KEY_ID: Final = "TONEBRIDGE_DR_S3_SSE_KMS_KEY_ID"
"""The KMS key of `aws:kms` server-side encryption."""
ENV_S3_OBJECT_LOCK_MODE: Final = "TONEBRIDGE_DR_S3_OBJECT_LOCK_MODE"
"""S3 Object Lock mode of every object written (`GOVERNANCE` or `COMPLIANCE`); unset: no
lock. Set together with ENV_S3_OBJECT_LOCK_RETAIN."""
ENV_S3_OBJECT_LOCK_RETAIN: Final = "TONEBRIDGE_DR_S3_OBJECT_LOCK_RETAIN"
"""How long an object is locked after it is written, as a duration (`30d`, `1h30m`): its
retain-until date is the write time plus this."""
FROM_RETENTION_INITIAL_LOCK: Final = timedelta(days=2)
"""The lock written with `retainFor: fromRetention`, and the least a retention run leaves
on any backup it keeps: the run (after each backup, and daily) extends locks to the date
the keeping rule gives, so this only has to outlast the time until the next run; two days
let one daily run be missed or late."""
ENV_DECRYPT_PASSPHRASE: Final = "TONEBRIDGE_DR_DECRYPT_PASSPHRASE"
"""Passphrase of the OpenPGP private key a restore decrypts with."""
ENV_ENCRYPT_TO: Final = "TONEBRIDGE_DR_ENCRYPT_TO"
"""OpenPGP public key file WAL is encrypted to (wal-push, wal-stream)."""
ENV_COMPRESSION: Final = "TONEBRIDGE_DR_COMPRESSION"
ENV_COMPRESSION_LEVEL: Final = "TONEBRIDGE_DR_COMPRESSION_LEVEL"
ENV_LOG_LEVEL: Final = "TONEBRIDGE_DR_LOG_LEVEL"
ENV_TERMINATION_LOG: Final = "TONEBRIDGE_DR_TERMINATION_LOG"
"""Where the runner writes its termination message (default /dev/termination-log)."""
ENV_STORAGE_TIMEOUT: Final = "TONEBRIDGE_DR_STORAGE_TIMEOUT"
"""Seconds an S3 call may go without progress over all its attempts (default 120)."""
ENV_CLAIM_HEARTBEAT: Final = "TONEBRIDGE_DR_CLAIM_HEARTBEAT"
"""Seconds between two renewals of a running backup's claim (default 60; 0: off)."""
ENV_POD_NAME: Final = "TONEBRIDGE_DR_POD_NAME"
"""The runner pod's name (downward API `metadata.name`): who ran it, in audit records."""
ENV_POD_NAMESPACE: Final = "TONEBRIDGE_DR_POD_NAMESPACE"
"""The runner pod's namespace (downward API `metadata.namespace`)."""
ENV_SERVICE_ACCOUNT: Final = "TONEBRIDGE_DR_SERVICE_ACCOUNT"
"""The runner pod's ServiceAccount (downward API `spec.serviceAccountName`)."""
ENV_JOB_NAME: Final = "TONEBRIDGE_DR_JOB_NAME"
"""The Job that made the pod (downward API, label `batch.kubernetes.io/job-name`); empty
for a pod of a Deployment."""
ENV_CHECKS: Final = "TONEBRIDGE_DR_CHECKS"
"""The checks of a restore test: a JSON list of {"name", "query", "expect": {"equals" |
"min" | "max" | "nonEmpty"}}, exactly the RestoreTest spec's `checks` (camelCase)."""


REPLICA_ENV_KEYS: Final = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_ENDPOINT_URL_S3",
)
"""What `replicate` reads for its N-th `--to` replica (1-based), each as
`replica_env(N, key)`: the replica's own credentials (secretKeyRef only), region and
endpoint. A key that is unset falls back to nothing (never to the primary's)."""
REPLICA_LIMIT: Final = 3
"""Most replicas a policy may have (`spec.repository.replicas`): keeps one Job's
termination message within TERMINATION_LIMIT."""


def replica_env(index: int, key: str) -> str:
    """`TONEBRIDGE_DR_REPLICA_<index>_<key>`, e.g. TONEBRIDGE_DR_REPLICA_1_AWS_REGION."""
    return f"TONEBRIDGE_DR_REPLICA_{index}_{key}"

ENV_GIT_USERNAME: Final = "TONEBRIDGE_DR_GIT_USERNAME"
"""User name for an https Git copy (kubernetes backups; default `git`)."""
ENV_GIT_PASSWORD: Final = "TONEBRIDGE_DR_GIT_PASSWORD"
"""Password or token for an https Git copy (from a Secret)."""
ENV_GIT_SSH_KEY: Final = "TONEBRIDGE_DR_GIT_SSH_KEY"
"""OpenSSH private key for an ssh Git copy (from a Secret)."""
ENV_GIT_KNOWN_HOSTS: Final = "TONEBRIDGE_DR_GIT_KNOWN_HOSTS"
"""known_hosts lines for an ssh Git copy (from the same Secret; default: accept-new)."""

# -- exit codes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExitCode:
    """One exit status of `tonebridge-dr`: the reason it reports and whether a retry helps.

    `backup_retryable` / `restore_retryable`: False puts the code into the Job's
    podFailurePolicy (FailJob) so the Job fails at once instead of spending its
    backoffLimit on something a retry cannot fix.
    """

    code: int
    reason: str
    meaning: str
    backup_retryable: bool = True
    restore_retryable: bool = True


EXIT_OK: Final = 0
EXIT_INTERRUPTED: Final = 130
EXIT_TERMINATED: Final = 143

EXIT_CODES: Final[tuple[ExitCode, ...]] = (
    ExitCode(1, "InternalError", "an unexpected error (a bug: the message names it)"),
    ExitCode(2, "InvalidArguments", "bad command-line input, found before any work",
             backup_retryable=False, restore_retryable=False),
    ExitCode(3, "RepositoryUnavailable", "the repository URL is malformed or its bucket or "
             "folder is missing", backup_retryable=False, restore_retryable=False),
    ExitCode(4, "StorageError", "a storage call failed (network, permissions, endpoint down)"),
    ExitCode(5, "ObjectNotFound", "an object that should exist does not"),
    ExitCode(6, "BackupNotFound", "no complete backup matches (or no backup plus WAL reaches "
             "the recovery target)", restore_retryable=False),
    ExitCode(7, "IntegrityCheckFailed", "a stored object is corrupt or truncated",
             restore_retryable=False),
    ExitCode(8, "EncryptionError", "encryption or decryption failed (missing or wrong key)",
             backup_retryable=False, restore_retryable=False),
    ExitCode(9, "SourceUnavailable", "the database or Redis server is unreachable"),
    ExitCode(10, "AuthenticationFailed", "the database or Redis server rejected the "
             "credentials", backup_retryable=False, restore_retryable=False),
    ExitCode(11, "TargetNotEmpty", "the restore target already holds data",
             restore_retryable=False),
    ExitCode(12, "ToolFailed", "an external tool (pg_dump, gpg, ...) failed"),
    ExitCode(13, "Conflict", "a write would overwrite different existing content"),
    ExitCode(14, "RecoveryEndedEarly", "point-in-time recovery promoted before the end of "
             "its plan; the data directory is stopped and marked", restore_retryable=False),
    # A restore test's verdicts: a retry only repeats them. Their termination message
    # carries the whole result besides error, message and exit_code.
    ExitCode(15, "ChecksFailed", "a restore test restored the backup, but at least one of "
             "its checks failed", backup_retryable=False, restore_retryable=False),
    ExitCode(16, "RTOMissed", "a restore test passed its checks, but later than its RTO",
             backup_retryable=False, restore_retryable=False),
    # An archived backup needs a rehydration (S3 RestoreObject) that takes hours: a retry
    # within the Job's backoff cannot help; `backups rehydrate` (or the operator) can.
    # Backups never exit 17, so their podFailurePolicy needs no entry for it.
    ExitCode(17, "BackupArchived", "objects of the backup (or the WAL it needs) are in an "
             "archive storage class and not readable yet; rehydrate them first",
             restore_retryable=False),
    # Retryable: prune skips what is locked, so this only comes from a race with a lock's
    # date (clock skew, a lock added meanwhile); a retry checks the locks again.
    ExitCode(18, "ObjectLocked", "an object is under S3 Object Lock (retention or legal "
             "hold): it cannot be deleted or overwritten before its retain-until date"),
    # A Kubernetes restore that applied what it could: its result lists the refusals
    # (invalid objects, admission webhooks, RBAC); a retry meets the same refusals.
    ExitCode(19, "ObjectsNotRestored", "a Kubernetes restore tried every object, but the "
             "API server refused some (the result lists the first ones)",
             restore_retryable=False),
    ExitCode(EXIT_INTERRUPTED, "Cancelled", "interrupted (SIGINT)"),
    ExitCode(EXIT_TERMINATED, "Cancelled", "terminated (SIGTERM: the Job was deleted or "
             "ran past its deadline)"),
)


def exit_code(code: int) -> ExitCode | None:
    """The contract entry of `code`, None for a status the runner never uses."""
    return next((entry for entry in EXIT_CODES if entry.code == code), None)


def non_retriable_backup_codes() -> tuple[int, ...]:
    """Exit codes that fail a backup Job at once (podFailurePolicy FailJob)."""
    return tuple(e.code for e in EXIT_CODES if not e.backup_retryable)


def non_retriable_restore_codes() -> tuple[int, ...]:
    """Exit codes that fail a restore Job at once (podFailurePolicy FailJob)."""
    return tuple(e.code for e in EXIT_CODES if not e.restore_retryable)


#: `wal-fetch` (restore_command) answers PostgreSQL with these three statuses only:
#: PostgreSQL reads any status up to 125 as "not in the archive" and promotes.
WAL_FETCH_DELIVERED: Final = 0
WAL_FETCH_NOT_FOUND: Final = 1
WAL_FETCH_ABORT: Final = 255

# -- the termination message -------------------------------------------------------------------

TERMINATION_LIMIT: Final = 4096
"""The kubelet keeps at most this many bytes of a termination message."""


class TerminationError(TypedDict):
    """The termination message of a failed run; a succeeded run writes its result dict.

    A failure that has a result (a restore test's ChecksFailed / RTOMissed, or any
    failure of a restore test after it chose its backup) writes that result with
    these three keys added.
    """

    error: str  # the ExitCode's reason (CamelCase: copied into a condition)
    message: str  # one line, secrets scrubbed
    exit_code: int


class RestoreTestCheck(TypedDict):
    """One check of a restore test's result."""

    name: str
    passed: bool
    value: str | None  # postgres: the first column of the first row, as text; redis: the
    # reply as text; None: NULL, no row or nil
    message: str | None  # why it failed (the value got, or the SQL error); None when passed


class RestoreTestResult(TypedDict):
    """What `restore-test` prints with `--json` and writes as its termination message, in
    this key order. Exit 0 writes it as is; ChecksFailed (15), RTOMissed (16) and any
    failure after the backup was chosen write it with TerminationError's three keys
    added. In the termination message long values and messages of `checks` may be cut
    (ending in "...") to stay within TERMINATION_LIMIT.
    """

    name: str
    engine: str
    method: str  # postgres: logical | physical; redis: rdb
    backup_id: str
    backup_finished_at: str  # RFC 3339, UTC
    manifest_sha256: str  # of the backup's manifest.json bytes
    started_at: str  # when the RTO clock started: the first repository read
    completed_at: str | None  # when the checks finished (or the run failed)
    restore_duration_seconds: float | None  # the measured RTO; None unless the checks ran
    rto_seconds: float | None  # --rto; None without it
    rto_met: bool | None  # the checks passed within rto_seconds; None without --rto
    passed: bool  # every check passed
    checks: list[RestoreTestCheck]
    report_key: str | None  # the report in the repository; None when it could not be stored


class ReplicaResult(TypedDict):
    """One replica in the result of `replicate` (`{"replicas": [...]}`, also its
    termination message; a failed run adds TerminationError's three keys to the whole)."""

    url: str  # the replica's policy folder, without credentials
    backups_copied: int  # complete backups copied by this run
    backups_missing: int  # complete backups of the primary the replica still lacks
    wal_copied: int  # WAL objects copied by this run
    wal_missing: int  # WAL objects of the primary the replica still lacks
    bytes_copied: int  # stored bytes uploaded (backups and WAL)
    last_backup: str | None  # newest backup of the primary the replica holds
    last_backup_time: str | None  # its finished_at, RFC 3339 UTC
    last_wal_segment: str | None  # newest complete WAL segment the replica holds
    synced_at: str | None  # start of this run when it left nothing missing, else None
    lag_seconds: float | None  # newest primary recovery data minus newest in the replica
    error: str | None  # an ExitCode reason when something was not copied
    message: str | None  # one line, no secrets


RESTORE_TEST_REPORTS: Final = "restore-tests/"
"""Where restore tests keep their reports, relative to the repository (policy) folder:
`<UTC start YYYYMMDDTHHMMSSZ>-<name>.json` and its `.json.sha256`."""


DRILL_REPORTS: Final = "drills/"
"""Where FailoverPlan run reports (drills and real failovers) go in a policy's repository."""
AUDIT_PREFIX: Final = "audit/"
"""Where audit records live, relative to the repository (policy) folder:
`audit/YYYY/MM/DD/<UTC start YYYYMMDDTHHMMSS.ffffffZ>-<operation>-<random>.json`, one per
backup, restore, prune and restore test; written once, never rewritten."""


# -- engines --------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineSpec:
    """One kind of backup target as both sides see it.

    `methods` are the API's BackupMethod values (the first is the default);
    `result_methods` maps what the runner writes into a result's `method` when it
    differs from the API name. `backup` / `restore`: the runner implements them;
    `restore_test`: the runner implements `restore-test` (what RestoreTest Jobs run).
    """

    name: str
    title: str
    methods: tuple[str, ...]
    result_methods: tuple[tuple[str, str], ...] = ()
    backup: bool = False
    restore: bool = False
    restore_test: bool = False

    @property
    def default_method(self) -> str:
        return self.methods[0]


ENGINES: Final[tuple[EngineSpec, ...]] = (
    EngineSpec("postgres", "PostgreSQL", ("logical", "physical"), backup=True, restore=True,
               restore_test=True),
    EngineSpec("redis", "Redis", ("snapshot",), (("rdb", "snapshot"),), backup=True,
               restore=True, restore_test=True),
    EngineSpec("kubernetes", "Kubernetes", ("export",), backup=True, restore=True),
    EngineSpec("bucket", "object storage bucket", ("sync",), (("copy", "sync"),),
               backup=True, restore=True),
)
ENGINE_NAMES: Final[tuple[str, ...]] = tuple(engine.name for engine in ENGINES)


def engine(name: str) -> EngineSpec | None:
    """The contract entry of engine `name`, None when there is no such engine."""
    return next((spec for spec in ENGINES if spec.name == name), None)
