"""Invalid manifests are rejected by the API server itself, with a message a person understands.

Each case starts from a valid manifest in `examples/`, breaks it in one way, and names the
message `kubectl apply` shows. The same table runs twice: against a real kube-apiserver with
the committed CRDs (`sandbox` marker), and against the pydantic models, which must reject the
same manifest (with the same message wherever the rule is ours rather than the schema's).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from tests.fixtures import EXAMPLES
from tonebridge_dr.api import (
    GROUP,
    formats,
    kind_info,
)

BP = "01-postgres-backup/backuppolicy.yaml"
BP_LOCAL = "00-local-demo/backuppolicy.yaml"
BP_CONFIG = "06-config-backup/backuppolicy.yaml"
RR_PITR = "03-restore/restorerequest-pitr.yaml"
RR_TABLE = "03-restore/restorerequest-table.yaml"
RR_REPAIR = "03-restore/restorerequest-repair.yaml"
RR_DISASTER = "03-restore/restorerequest-disaster.yaml"
FP = "04-failover/failoverplan-region.yaml"
FP_AUTO = "04-failover/failoverplan-database.yaml"
RT = "05-restore-test/restoretest.yaml"

Edit = Callable[[dict[str, Any]], None]
_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _path(path: str) -> list[str | int]:
    return [name if name else int(index) for name, index in _TOKEN.findall(path)]


def put(path: str, value: Any) -> Edit:
    """Set `path` (e.g. `spec.schedules[0].cron`) to `value`, creating objects on the way."""

    def edit(doc: dict[str, Any]) -> None:
        *parents, last = _path(path)
        node: Any = doc
        for key in parents:
            node = node.setdefault(key, {}) if isinstance(key, str) else node[key]
        node[last] = copy.deepcopy(value)

    return edit


def drop(path: str) -> Edit:
    """Remove `path`."""

    def edit(doc: dict[str, Any]) -> None:
        *parents, last = _path(path)
        node: Any = doc
        for key in parents:
            node = node[key]
        del node[last]

    return edit


SAME = "same as the API server"


@dataclass(frozen=True)
class Case:
    """One invalid manifest: a valid example, broken by `edits`."""

    id: str
    base: str
    edits: tuple[Edit, ...]
    server: str
    """Substring of the API server's error message."""
    python: str | None = SAME
    """Substring of the pydantic error; None when only the API server can judge (updates)."""
    update: bool = False
    """Create the base first and submit the broken manifest as an update."""


def case(
    id: str,
    base: str,
    *edits: Edit,
    server: str,
    python: str | None = SAME,
    update: bool = False,
) -> Case:
    return Case(id, base, edits, server, python, update)


POSTGRES_TARGET = {"database": "db", "dsnSecretRef": {"name": "pg", "key": "dsn"}}
REDIS_TARGET = {"urlSecretRef": {"name": "redis", "key": "url"}}
DATABASE_TARGET = {"dsnSecretRef": {"name": "restore", "key": "dsn"}}
CHOOSE_ONE = (
    "choose exactly one of backupId, latest: true, targetTime, targetLSN or beforeTransaction"
)

CASES: tuple[Case, ...] = (
    # --- BackupPolicy: targets ---------------------------------------------------------
    case("bp-missing-target", BP, drop("spec.target"),
         server="spec.target: Required value", python="Field required"),
    case("bp-zero-targets", BP, put("spec.target", {}),
         server="exactly one target must be set: postgres, redis, kubernetes or bucket"),
    case("bp-two-targets", BP, put("spec.target.redis", REDIS_TARGET),
         server="exactly one target must be set: postgres, redis, kubernetes or bucket"),
    case("bp-secrets-without-encryption", BP_CONFIG, drop("spec.encryption"),
         server="exporting secrets needs spec.encryption: Secrets are only stored encrypted"),
    case("bp-bad-database-name", BP, put("spec.target.postgres.database", "tonebridge db"),
         server="must be a database name, e.g. tonebridge_db"),
    case("bp-bad-secret-name", BP, put("spec.target.postgres.dsnSecretRef.name", "Bad_Name"),
         server="must be a Kubernetes object name"),
    case("bp-unknown-wal-mode", BP, put("spec.target.postgres.walArchive.mode", "rsync"),
         server='Unsupported value: "rsync": supported values: "archive_command", "stream"',
         python="Input should be 'archive_command' or 'stream'"),
    case("bp-slot-with-archive-command", BP,
         put("spec.target.postgres.walArchive", {"mode": "archive_command", "slot": "s1"}),
         server="slot is only used with mode: stream"),
    # --- BackupPolicy: repository replicas ----------------------------------------------
    case("bp-replica-equals-primary", BP,
         put("spec.repository.replicas", [{"url": "s3://tonebridge-backups/postgresql/"}]),
         server="a replica's url must differ from the repository's own url"),
    case("bp-replica-twice", BP,
         put("spec.repository.replicas", [{"url": "s3://dr-bucket/x"}, {"url": "s3://dr-bucket/x"}]),
         server="replica urls must be unique"),
    case("bp-four-replicas", BP,
         put("spec.repository.replicas", [{"url": f"s3://dr-bucket-{i}/x"} for i in range(4)]),
         server="must have at most 3 items", python="List should have at most 3 items"),
    case("bp-replica-file-with-region", BP,
         put("spec.repository.replicas", [{"url": "file:///dr", "region": "eu-west-1"}]),
         server="region and endpoint only apply to s3:// replicas"),
    case("bp-replica-bad-scheme", BP,
         put("spec.repository.replicas", [{"url": "https://dr/x"}]),
         server=formats.REPOSITORY_URL_MESSAGE),
    # --- BackupPolicy: schedules ---------------------------------------------------------
    case("bp-missing-schedules", BP, drop("spec.schedules"),
         server="spec.schedules: Required value", python="Field required"),
    case("bp-empty-schedules", BP, put("spec.schedules", []),
         server="should have at least 1 items", python="List should have at least 1 item"),
    case("bp-cron-four-fields", BP, put("spec.schedules[0].cron", "0 2 * *"),
         server=formats.CRON_MESSAGE),
    case("bp-cron-six-fields", BP, put("spec.schedules[0].cron", "0 0 2 * * *"),
         server=formats.CRON_MESSAGE),
    case("bp-cron-minute-out-of-range", BP, put("spec.schedules[0].cron", "61 2 * * *"),
         server=formats.CRON_MESSAGE),
    case("bp-cron-unknown-macro", BP, put("spec.schedules[0].cron", "@fortnightly"),
         server=formats.CRON_MESSAGE),
    case("bp-schedule-name-not-dns", BP, put("spec.schedules[0].name", "Daily_Full"),
         server=formats.DNS_LABEL_MESSAGE),
    case("bp-duplicate-schedule-names", BP, put("spec.schedules[1].name", "daily-full"),
         server='spec.schedules[1]: Duplicate value: {"name":"daily-full"}',
         python="schedule names must be unique"),
    case("bp-bad-time-zone", BP, put("spec.schedules[0].timeZone", "Tokyo time"),
         server=formats.TIME_ZONE_MESSAGE),
    case("bp-method-does-not-suit-target", BP, put("spec.schedules[0].method", "snapshot"),
         server="schedule method must suit the target: logical or physical for postgres"),
    case("bp-unknown-method", BP, put("spec.schedules[0].method", "incremental"),
         server='Unsupported value: "incremental"', python="Input should be 'logical'"),
    case("bp-tables-with-physical", BP, put("spec.schedules[2].tables", ["users"]),
         server="tables can only be used with method: logical"),
    case("bp-incremental-with-logical", BP_LOCAL, put("spec.schedules[0].incremental", True),
         server="incremental can only be used with method: physical"),
    case("bp-full-every-without-incremental", BP, put("spec.schedules[2].fullEvery", "3d"),
         server="fullEvery can only be used with incremental: true"),
    case("bp-incremental-encrypted", BP, put("spec.schedules[2].incremental", True),
         server="incremental backups cannot be encrypted"),
    case("bp-tables-for-redis", "02-redis-backup/backuppolicy.yaml",
         put("spec.schedules[0].tables", ["users"]),
         server="tables can only be listed for a postgres target"),
    case("bp-table-injection", BP, put("spec.schedules[1].tables[0]", "analytics; DROP TABLE x"),
         server=formats.TABLE_MESSAGE),
    # --- BackupPolicy: repository, codecs ------------------------------------------------
    case("bp-bad-repository-url", BP, put("spec.repository.url", "ftp://backups/pg"),
         server=formats.REPOSITORY_URL_MESSAGE),
    case("bp-s3-options-on-file-repository", BP,
         put("spec.repository.url", "file:///var/tmp/repo"),
         server="region, endpoint, storageClass, sse and kmsKeyId only apply to s3:// "
         "repositories"),
    case("bp-kms-key-without-kms", BP, put("spec.repository.sse", "AES256"),
         server="kmsKeyId requires sse: aws:kms"),
    case("bp-unknown-storage-class", BP, put("spec.repository.storageClass", "COLD"),
         server='Unsupported value: "COLD"', python="Input should be 'STANDARD'"),
    case("bp-unknown-compression", BP, put("spec.compression.algorithm", "lz4"),
         server='Unsupported value: "lz4": supported values: "zstd", "gzip", "none"',
         python="Input should be 'zstd', 'gzip' or 'none'"),
    case("bp-gzip-level-too-high", BP, put("spec.compression", {"algorithm": "gzip", "level": 12}),
         server="gzip levels are 1 to 9"),
    case("bp-level-without-compression", BP,
         put("spec.compression", {"algorithm": "none", "level": 3}),
         server="level cannot be set when algorithm is none"),
    case("bp-archive-on-file-repository", BP_LOCAL,
         put("spec.archive", {"after": "30d"}),
         server="archive needs an s3:// repository"),
    # --- BackupPolicy: Object Lock ----------------------------------------------------------
    case("bp-object-lock-on-file-repository", BP_LOCAL,
         put("spec.repository.objectLock", {"mode": "GOVERNANCE", "retainFor": "30d"}),
         server="objectLock needs an s3:// repository"),
    case("bp-object-lock-unknown-mode", BP,
         put("spec.repository.objectLock", {"mode": "STRICT", "retainFor": "30d"}),
         server='Unsupported value: "STRICT": supported values: "GOVERNANCE", "COMPLIANCE"',
         python="Input should be 'GOVERNANCE' or 'COMPLIANCE'"),
    case("bp-object-lock-zero-duration", BP,
         put("spec.repository.objectLock", {"mode": "GOVERNANCE", "retainFor": "0d"}),
         server="must be fromRetention or a duration longer than zero"),
    case("bp-object-lock-from-retention-without-rules", BP,
         put("spec.repository.objectLock", {"mode": "COMPLIANCE", "retainFor": "fromRetention"}),
         drop("spec.retention"), drop("spec.schedules[0].retention"),
         drop("spec.schedules[1].retention"), drop("spec.schedules[2].retention"),
         server="objectLock retainFor: fromRetention needs retention rules"),
    # --- BackupPolicy: retention, objectives, misc ---------------------------------------
    case("bp-negative-retention", BP, put("spec.retention.daily", -1),
         server="spec.retention.daily in body should be greater than or equal to 0",
         python="Input should be greater than or equal to 0"),
    case("bp-retention-keeps-nothing", BP, put("spec.retention", {"daily": 0, "hourly": 0}),
         server="retention must keep something"),
    case("bp-duration-in-words", BP, put("spec.objectives.rpo", "1 hour"),
         server=formats.DURATION_MESSAGE),
    case("bp-duration-units-out-of-order", BP, put("spec.objectives.rto", "30m4h"),
         server=formats.DURATION_MESSAGE),
    case("bp-duration-iso8601", BP, put("spec.archive.after", "P30D"),
         server=formats.DURATION_MESSAGE),
    case("bp-zero-rpo", BP, put("spec.objectives.rpo", "0m"),
         server=formats.POSITIVE_DURATION_MESSAGE),
    case("bp-wrong-type", BP, put("spec.suspend", "yes"),
         server="spec.suspend in body must be of type boolean",
         python="Input should be a valid boolean"),
    case("bp-bad-quantity", BP, put("spec.resources.requests.memory", "lots"),
         server=formats.QUANTITY_MESSAGE),
    case("bp-notifications-without-webhook", BP, drop("spec.notifications.webhookSecretRef"),
         server="notifications need webhookSecretRef"),
    case("bp-duplicate-escalation-level", BP, put("spec.notifications.escalation[1].level", 1),
         server='Duplicate value: {"level":1}', python="escalation levels must be unique"),
    case("bp-unknown-event", BP, put("spec.notifications.events[0]", "Everything"),
         server='Unsupported value: "Everything"', python="Input should be 'BackupSucceeded'"),
    case("bp-unknown-field", BP, put("spec.bogus", True),
         server='unknown field "spec.bogus"', python="Extra inputs are not permitted"),
    case("bp-unknown-nested-field", BP, put("spec.repository.bucket", "tonebridge-backups"),
         server='unknown field "spec.repository.bucket"', python="Extra inputs are not permitted"),
    # --- RestoreRequest ----------------------------------------------------------------
    case("rr-missing-source", RR_PITR, drop("spec.source"),
         server="spec.source: Required value", python="Field required"),
    case("rr-no-backup-selection", RR_PITR, drop("spec.targetTime"),
         server=CHOOSE_ONE),
    case("rr-latest-false", RR_PITR, drop("spec.targetTime"), put("spec.latest", False),
         server=CHOOSE_ONE),
    case("rr-two-backup-selections", RR_PITR, put("spec.backupId", "20240115T020000Z-x"),
         server=CHOOSE_ONE),
    case("rr-target-time-without-zone", RR_PITR, put("spec.targetTime", "2024-01-15 10:30:00"),
         server=formats.RFC3339_MESSAGE),
    case("rr-target-time-bad-month", RR_PITR, put("spec.targetTime", "2024-13-15T10:30:00Z"),
         server=formats.RFC3339_MESSAGE),
    case("rr-time-and-transaction", RR_PITR, put("spec.beforeTransaction", 739),
         server=CHOOSE_ONE),
    case("rr-before-time-alone", RR_PITR, put("spec.beforeTime", "2024-01-15T10:30:00Z"),
         server="beforeTime is the commit time of beforeTransaction"),
    case("rr-bad-transaction", RR_PITR, drop("spec.targetTime"), put("spec.beforeTransaction", 2),
         server="should be greater than or equal to 3",
         python="Input should be greater than or equal to 3"),
    case("rr-transaction-into-database", RR_PITR, drop("spec.method"), drop("spec.targetTime"),
         put("spec.beforeTransaction", 739), put("spec.target", {"database": DATABASE_TARGET}),
         server="targetTime, targetLSN and beforeTransaction replay WAL onto a physical"),
    case("rr-bad-lsn", RR_PITR, drop("spec.targetTime"), put("spec.targetLSN", "3000060"),
         server=formats.LSN_MESSAGE),
    case("rr-two-sources", RR_PITR,
         put("spec.source.repository", {"url": "s3://tonebridge-backups/postgresql"}),
         put("spec.source.policyName", "tonebridge-db"),
         server="source needs exactly one of policyRef or repository"),
    case("rr-repository-without-policy-name", RR_DISASTER, drop("spec.source.policyName"),
         server="source.repository needs policyName"),
    case("rr-policy-name-with-policy-ref", RR_PITR, put("spec.source.policyName", "x"),
         server="policyName is only used with repository"),
    case("rr-pitr-into-database", RR_PITR, drop("spec.method"),
         put("spec.target", {"database": DATABASE_TARGET}),
         server="targetTime, targetLSN and beforeTransaction replay WAL onto a physical"),
    case("rr-method-does-not-suit-target", RR_TABLE, put("spec.method", "physical"),
         server="method must suit the target: logical for database, physical for volume"),
    case("rr-tables-into-volume", RR_PITR, drop("spec.targetTime"), put("spec.latest", True),
         put("spec.tables", ["users"]),
         server="tables and repair restore from a logical backup: they need target.database"),
    case("rr-two-targets", RR_TABLE, put("spec.target.volume", {"claimName": "data"}),
         server="exactly one restore target must be set: database, volume, redis, kubernetes or "
         "bucket"),
    case("rr-instance-without-volume", RR_TABLE, put("spec.target.instance", {}),
         server="instance runs PostgreSQL on the restored volume: it needs volume"),
    case("rr-volume-claim-and-template", RR_PITR, put("spec.target.volume.claimName", "data"),
         server="volume needs exactly one of claimName or claimTemplate"),
    case("rr-repair-backwards", RR_REPAIR, put("spec.repair.to", "2024-01-01T00:00:00+09:00"),
         server="repair.from must be before repair.to"),
    case("rr-repair-bad-column", RR_REPAIR, put("spec.repair.column", "created at"),
         server=formats.SQL_NAME_MESSAGE),
    case("rr-unknown-method", RR_PITR, put("spec.method", "incremental"),
         server='Unsupported value: "incremental"', python="Input should be 'logical'"),
    case("rr-unknown-field", RR_PITR, put("spec.target.volume.claimTemplate.storage", "1Gi"),
         server='unknown field "spec.target.volume.claimTemplate.storage"',
         python="Extra inputs are not permitted"),
    case("rr-spec-is-immutable", RR_PITR, put("spec.targetTime", "2024-01-15T11:00:00+09:00"),
         server="spec is immutable: a RestoreRequest runs once; create a new RestoreRequest",
         python=None, update=True),
    # --- FailoverPlan --------------------------------------------------------------------
    case("fp-unknown-mode", FP, put("spec.mode", "yolo"),
         server='Unsupported value: "yolo": supported values: "automatic", "manual", "drill"',
         python="Input should be 'automatic', 'manual' or 'drill'"),
    case("fp-automatic-without-trigger", FP_AUTO, drop("spec.trigger"),
         server="mode: automatic needs trigger.healthCheck"),
    case("fp-stages-out-of-order", FP, put("spec.stages[0].priority", 7),
         server="stages must be listed in priority order"),
    case("fp-duplicate-stage-names", FP, put("spec.stages[1].name", "auth"),
         server='Duplicate value: {"name":"auth"}', python="stage names must be unique"),
    case("fp-no-stages", FP, put("spec.stages", []),
         server="should have at least 1 items", python="List should have at least 1 item"),
    case("fp-step-with-two-actions", FP, put("spec.stages[0].steps[0].wait", {"duration": "1m"}),
         server="each step needs exactly one action: promotePostgres, switchService, updateDNS"),
    case("fp-step-without-action", FP, put("spec.stages[3].steps[0]", {"name": "nothing"}),
         server="each step needs exactly one action"),
    case("fp-stage-rto-in-words", FP, put("spec.stages[0].rto", "30 minutes"),
         server=formats.DURATION_MESSAGE),
    case("fp-http-check-needs-url", FP, put("spec.trigger.healthCheck.target", "api:443"),
         server="target must be host:port for kind postgres or tcp"),
    case("fp-tcp-check-needs-host-port", FP_AUTO,
         put("spec.trigger.healthCheck.target", "db-primary.internal"),
         server="target must be host:port for kind postgres or tcp"),
    case("fp-unknown-check-kind", FP, put("spec.trigger.healthCheck.kind", "icmp"),
         server='Unsupported value: "icmp"', python="Input should be 'postgres', 'tcp' or 'http'"),
    case("fp-fall-zero", FP, put("spec.trigger.healthCheck.fall", 0),
         server="should be greater than or equal to 1",
         python="Input should be greater than or equal to 1"),
    case("fp-cname-two-values", FP, put("spec.stages[1].steps[2].updateDNS.values", ["a", "b"]),
         server="a CNAME record takes exactly one value"),
    case("fp-bad-hosted-zone", FP, put("spec.stages[1].steps[2].updateDNS.hostedZoneId", "z-1"),
         server=formats.HOSTED_ZONE_MESSAGE),
    case("fp-invalid-embedded-restore", FP,
         put("spec.stages[4].steps[0].restoreRequest.spec.latest", False),
         server=CHOOSE_ONE),
    # --- RestoreTest -------------------------------------------------------------------
    case("rt-missing-schedule", RT, drop("spec.schedule"),
         server="spec.schedule: Required value", python="Field required"),
    case("rt-schedule-in-words", RT, put("spec.schedule", "quarterly"),
         server=formats.CRON_MESSAGE),
    case("rt-empty-expectation", RT, put("spec.checks[0].expect", {}),
         server="expect needs at least one of equals, min, max or nonEmpty: true"),
    case("rt-equals-and-min", RT, put("spec.checks[3].expect.min", 0),
         server="equals cannot be combined with min or max"),
    case("rt-min-above-max", RT, put("spec.checks[0].expect", {"min": 5, "max": 1}),
         server="min must not be greater than max"),
    case("rt-duplicate-check-names", RT, put("spec.checks[1].name", "users-present"),
         server='Duplicate value: {"name":"users-present"}',
         python="check names must be unique"),
    case("rt-query-too-long", RT, put("spec.checks[0].query", "SELECT 1 " * 600),
         server="may not be more than 4096 bytes",
         python="String should have at most 4096 characters"),
    case("rt-two-scratch-targets", RT, put("spec.scratch.database", DATABASE_TARGET),
         server="scratch needs exactly one of instance or database"),
    case("rt-backup-id-and-latest", RT, put("spec.backupId", "20240115T020000Z-daily-full"),
         server="backupId and latest: true exclude each other"),
    case("rt-export-method", RT, put("spec.method", "export"),
         server="RestoreTests restore PostgreSQL (method logical or physical) and Redis"),
    case("rt-redis-into-database", RT, put("spec.method", "snapshot"),
         put("spec.scratch", {"database": DATABASE_TARGET}),
         server="a Redis restore test needs scratch.instance"),
    case("rt-physical-into-database", RT, put("spec.method", "physical"),
         put("spec.scratch", {"database": DATABASE_TARGET}),
         server="a physical restore test needs scratch.instance"),
    case("rt-zero-rto", RT, put("spec.objectives.rto", "0s"),
         server=formats.POSITIVE_DURATION_MESSAGE),
)  # fmt: skip


def load_example(relative: str) -> dict[str, Any]:
    """The dr.tonebridge.io document of an example file."""
    for document in yaml.safe_load_all((EXAMPLES / relative).read_text()):
        if document and document["apiVersion"].startswith(GROUP + "/"):
            return dict(document)
    raise LookupError(f"no {GROUP} object in {relative}")


def broken(item: Case) -> dict[str, Any]:
    document = copy.deepcopy(load_example(item.base))
    for edit in item.edits:
        edit(document)
    return document


def test_the_table_is_large_and_ids_are_unique() -> None:
    ids = [item.id for item in CASES]
    assert len(ids) == len(set(ids))
    assert len(CASES) >= 30
    assert {item.base.split("/")[0] for item in CASES} >= {
        "01-postgres-backup",
        "03-restore",
        "04-failover",
        "05-restore-test",
    }


@pytest.mark.parametrize("item", CASES, ids=lambda c: c.id)
def test_base_example_is_valid(item: Case) -> None:
    """Each case breaks a manifest that is valid on its own (so the edit is what fails)."""
    document = load_example(item.base)
    kind_info(document["kind"]).resource_model.model_validate(document)


PYTHON_CASES = [item for item in CASES if item.python is not None]


@pytest.mark.parametrize("item", PYTHON_CASES, ids=lambda c: c.id)
def test_models_reject(item: Case) -> None:
    document = broken(item)
    model = kind_info(document["kind"]).resource_model
    with pytest.raises(ValidationError) as raised:
        model.model_validate(document)
    expected = item.server if item.python == SAME else item.python
    assert expected is not None
    assert expected in str(raised.value)
