"""The typed API: examples round-trip, defaults, names on the wire, formats, status shapes."""

from __future__ import annotations

import types
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from tests.fixtures import EXAMPLES
from tonebridge_dr.api import (
    API_VERSION,
    KINDS,
    BackupMethod,
    BackupPolicy,
    BackupPolicySpec,
    BackupPolicyStatus,
    Condition,
    ConditionStatus,
    ConditionType,
    FailoverPlan,
    RestorePhase,
    RestoreRequest,
    RestoreRequestSpec,
    RestoreTest,
    format_duration,
    kind_info,
    parse_duration,
)
from tonebridge_dr.api.base import Cron, Duration, Quantity, camel
from tonebridge_dr.api.failoverplan import FailoverMode, FailoverPhase, StageState, StepKind
from tonebridge_dr.api.formats import parse_lsn, parse_rfc3339
from tonebridge_dr.api.restoretest import TestResult


def _ours() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(EXAMPLES.rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document["apiVersion"] == API_VERSION:
                found.append((f"{path.relative_to(EXAMPLES)}:{document['kind']}", document))
    return found


DOCUMENTS = _ours()


def _load(relative: str) -> dict[str, Any]:
    (document,) = [d for name, d in DOCUMENTS if name.startswith(relative + ":")]
    return document


# --- examples ----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "document"), DOCUMENTS, ids=[n for n, _ in DOCUMENTS])
def test_example_round_trips(name: str, document: dict[str, Any]) -> None:
    model = kind_info(document["kind"]).resource_model.model_validate(document)
    assert model.model_dump(mode="json", exclude_unset=True) == document


def test_a_kopf_body_parses_from_read_only_mappings() -> None:
    document = _load("01-postgres-backup/backuppolicy.yaml")

    def frozen(node: Any) -> Any:
        if isinstance(node, dict):
            return types.MappingProxyType({k: frozen(v) for k, v in node.items()})
        if isinstance(node, list):
            return [frozen(v) for v in node]
        return node

    policy = BackupPolicy.from_body(frozen(document))
    assert policy.metadata.name == "tonebridge-db"
    assert policy.spec == BackupPolicySpec.model_validate(document["spec"])


def test_spec_reads_camel_case_and_exposes_snake_case() -> None:
    spec = BackupPolicySpec.model_validate(_load("01-postgres-backup/backuppolicy.yaml")["spec"])
    postgres = spec.target.postgres
    assert postgres is not None and postgres.wal_archive is not None
    assert postgres.wal_archive.archive_timeout == timedelta(minutes=5)
    assert postgres.dsn_secret_ref.name == "tonebridge-db-backup"
    assert spec.repository.kms_key_id is not None
    assert spec.objectives is not None and spec.objectives.rpo == timedelta(hours=1)
    assert [s.name for s in spec.schedules] == ["daily-full", "hourly-hot", "daily-physical"]
    assert spec.schedules[1].tables == ["transformations", "analytics", "usage_tracking"]
    assert spec.target.describe() == "postgres/tonebridge_db"
    assert spec.describe_schedules() == "daily-full,hourly-hot,daily-physical"


def test_wire_names_keep_initialisms_and_python_keywords() -> None:
    assert camel("target_lsn") == "targetLSN"
    assert camel("update_dns") == "updateDNS"
    assert camel("from_") == "from"
    assert camel("kms_key_id") == "kmsKeyId"
    rr = RestoreRequestSpec.model_validate(
        {
            "source": {"policyRef": {"name": "db"}},
            "targetLSN": "16/B374D848",
            "target": {"volume": {"claimName": "data"}},
        }
    )
    assert rr.target_lsn == "16/B374D848"
    dumped = rr.model_dump(mode="json", exclude_unset=True)
    assert dumped["targetLSN"] == "16/B374D848"
    repair = _load("03-restore/restorerequest-repair.yaml")["spec"]["repair"]
    parsed = RestoreRequest.model_validate(_load("03-restore/restorerequest-repair.yaml"))
    assert parsed.spec.repair is not None
    assert parsed.spec.repair.from_ == parse_rfc3339(repair["from"])


def test_models_accept_python_names_and_are_frozen() -> None:
    spec = RestoreRequestSpec(
        source={"policy_ref": {"name": "db"}},  # type: ignore[arg-type]
        latest=True,
        target={"database": {"dsn_secret_ref": {"name": "s", "key": "dsn"}}},  # type: ignore[arg-type]
    )
    assert spec.effective_method is BackupMethod.LOGICAL
    with pytest.raises(ValidationError):
        spec.latest = False


def test_defaults() -> None:
    spec = BackupPolicySpec.model_validate(_load("02-redis-backup/backuppolicy.yaml")["spec"])
    assert spec.compression.algorithm == "zstd" and spec.compression.level is None
    assert spec.suspend is False
    assert spec.method_of(spec.schedules[0]) is BackupMethod.SNAPSHOT
    assert spec.target.describe() == "redis"

    plan = FailoverPlan.model_validate(_load("04-failover/failoverplan-database.yaml")).spec
    check = plan.trigger.health_check if plan.trigger else None
    assert check is not None
    assert (check.interval_seconds, check.timeout_seconds, check.rise, check.fall) == (2, 5, 2, 3)
    steps = plan.stages[0].steps
    assert [s.kind for s in steps] == [StepKind.PROMOTE_POSTGRES, StepKind.CHECK]
    assert steps[0].promote_postgres is not None
    assert steps[0].promote_postgres.wait_seconds == 60
    assert steps[1].check is not None and steps[1].check.timeout_seconds == 5

    minimal = {"stages": [{"name": "a", "priority": 1, "rto": "1h", "steps": [{"wait": {
        "duration": "1m"}}]}]}  # fmt: skip
    assert (
        FailoverPlan.model_validate({"metadata": {"name": "p"}, "spec": minimal}).spec.mode
        is FailoverMode.MANUAL
    )

    pitr = RestoreRequest.model_validate(_load("03-restore/restorerequest-pitr.yaml")).spec
    assert pitr.overwrite is False
    assert pitr.target.instance is not None and pitr.target.instance.port == 5432
    assert pitr.target_time == datetime(2024, 1, 15, 1, 30, tzinfo=UTC)
    assert pitr.source.describe() == "tonebridge-db"

    test = RestoreTest.model_validate(_load("05-restore-test/restoretest.yaml")).spec
    assert test.suspend is False and test.backup_id is None


def test_wal_archive_timeout_default() -> None:
    spec = BackupPolicySpec.model_validate(
        {
            "target": {
                "postgres": {
                    "database": "db",
                    "dsnSecretRef": {"name": "s", "key": "dsn"},
                    "walArchive": {"mode": "archive_command"},
                }
            },
            "schedules": [{"name": "daily", "cron": "@daily", "method": "physical"}],
            "repository": {"url": "file:///var/tmp/repo"},
        }
    )
    assert spec.target.postgres is not None and spec.target.postgres.wal_archive is not None
    assert spec.target.postgres.wal_archive.archive_timeout == timedelta(minutes=5)
    assert (
        spec.model_dump(mode="json")["target"]["postgres"]["walArchive"]["archiveTimeout"] == "5m"
    )


def test_strings_are_not_coerced_into_booleans_or_numbers() -> None:
    """Like the API server: `suspend: "yes"` and `keepLast: "3"` are errors, not guesses."""
    document = _load("02-redis-backup/backuppolicy.yaml")
    with pytest.raises(ValidationError, match="valid boolean"):
        BackupPolicySpec.model_validate({**document["spec"], "suspend": "yes"})
    with pytest.raises(ValidationError, match="valid integer"):
        BackupPolicySpec.model_validate({**document["spec"], "retention": {"keepLast": "3"}})


# --- formats -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30m", 1800),
        ("1h", 3600),
        ("7d", 7 * 86400),
        ("1h30m", 5400),
        ("90s", 90),
        ("0s", 0),
        ("1d2h3m4s", 93784),
        ("90m", 5400),
    ],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "text", ["", "1", "1 h", "1H", "30m1h", "1h1h", "PT1H", "-1h", "1.5h", "1w", "1h ", "h"]
)
def test_parse_duration_rejects_with_a_human_message(text: str) -> None:
    with pytest.raises(ValueError, match=r"must be a duration like 30m, 1h, 7d or 1h30m"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59, "59s"), (5400, "1h30m"), (86400, "1d"), (90061, "1d1h1m1s"), (2.9, "2s")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert format_duration(timedelta(seconds=seconds)) == text


def test_format_duration_rejects_negative() -> None:
    with pytest.raises(ValueError, match="negative"):
        format_duration(timedelta(seconds=-1))


@settings(derandomize=True)
@given(st.integers(min_value=0, max_value=999_999 * 86400))
def test_duration_text_round_trips(seconds: int) -> None:
    text = format_duration(seconds)
    assert parse_duration(text) == timedelta(seconds=seconds)
    assert format_duration(parse_duration(text)) == text


def test_duration_fields_are_timedeltas_in_python_and_text_on_the_wire() -> None:
    adapter = TypeAdapter(Duration)
    assert adapter.validate_python("1h30m") == timedelta(hours=1, minutes=30)
    assert adapter.validate_python(timedelta(minutes=2)) == timedelta(minutes=2)
    assert adapter.dump_python(timedelta(minutes=90), mode="json") == "1h30m"
    for bad in (3600, "1 hour", timedelta(seconds=1.5), timedelta(seconds=-1)):
        with pytest.raises(ValidationError):
            adapter.validate_python(bad)


@pytest.mark.parametrize(
    "cron",
    [
        "0 2 * * *",
        "*/15 * * * *",
        "15 * * * *",
        "0 3 1 1,4,7,10 *",
        "0 0 * * MON-FRI",
        "0 0 1 jan *",
        "0 0 ? * 1",
        "0-30/5 8-18 * * 1-5",
        "59 23 31 12 7",
        "@hourly",
        "@daily",
        "@midnight",
        "@weekly",
        "@monthly",
        "@yearly",
        "@annually",
    ],
)
def test_cron_accepts(cron: str) -> None:
    assert TypeAdapter(Cron).validate_python(cron) == cron


@pytest.mark.parametrize(
    "cron",
    [
        "",
        "0 2 * *",
        "0 0 2 * * *",
        "60 * * * *",
        "* 24 * * *",
        "0 0 32 * *",
        "0 0 * 13 *",
        "0 0 * * 8",
        "@fortnightly",
        "@every 1h",
        "daily",
        "TZ=UTC 0 2 * * *",
    ],
)
def test_cron_rejects(cron: str) -> None:
    with pytest.raises(ValidationError, match="must be a cron schedule with 5 fields"):
        TypeAdapter(Cron).validate_python(cron)


def test_lsn() -> None:
    assert parse_lsn("0/3000060") == 0x3000060
    assert parse_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848
    with pytest.raises(ValueError, match="must be a PostgreSQL LSN"):
        parse_lsn("3000060")


def test_rfc3339() -> None:
    assert parse_rfc3339("2024-01-15T10:30:00+09:00") == datetime(
        2024, 1, 15, 10, 30, tzinfo=timezone(timedelta(hours=9))
    )
    assert parse_rfc3339("2024-01-15T01:30:00.123456789Z") == datetime(
        2024, 1, 15, 1, 30, 0, 123456, tzinfo=UTC
    )
    for bad in ("2024-01-15 10:30:00", "2024-01-15T10:30:00", "2024-13-01T00:00:00Z"):
        with pytest.raises(ValueError, match="must be an RFC 3339 date-time with a time zone"):
            parse_rfc3339(bad)
    with pytest.raises(ValueError, match="not a real date-time"):
        parse_rfc3339("2024-02-30T00:00:00Z")


def test_quantities() -> None:
    adapter = TypeAdapter(Quantity)
    for good in (2, "500m", "1Gi", "1.5", "1e3"):
        assert adapter.validate_python(good) == good
    for bad in ("lots", "1 Gi", -1, True, 1.5):
        with pytest.raises(ValidationError):
            adapter.validate_python(bad)


# --- status ------------------------------------------------------------------------------


def test_status_dumps_in_kubernetes_shapes() -> None:
    when = datetime(2024, 1, 15, 10, 30, 5, 123456, tzinfo=timezone(timedelta(hours=9)))
    status = BackupPolicyStatus(
        observed_generation=3,
        conditions=[
            Condition(
                type=ConditionType.READY,
                status=ConditionStatus.TRUE,
                reason="Reconciled",
                last_transition_time=when,
                observed_generation=3,
            )
        ],
        last_successful_backup={  # type: ignore[arg-type]
            "id": "20240115T013005Z-daily-full",
            "method": "logical",
            "time": when,
            "size_bytes": 1024,
            "duration_seconds": 12.5,
        },
        recovery_point=when,
        kopf={"progress": {"handler": {"retries": 1}}},
    )
    dumped = status.model_dump(mode="json", exclude_none=True)
    assert dumped == {
        "observedGeneration": 3,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Reconciled",
                "message": "",
                "lastTransitionTime": "2024-01-15T01:30:05Z",
                "observedGeneration": 3,
            }
        ],
        "lastSuccessfulBackup": {
            "id": "20240115T013005Z-daily-full",
            "method": "logical",
            "time": "2024-01-15T01:30:05Z",
            "sizeBytes": 1024,
            "durationSeconds": 12.5,
        },
        "recoveryPoint": "2024-01-15T01:30:05Z",
        "kopf": {"progress": {"handler": {"retries": 1}}},
    }
    assert BackupPolicyStatus.model_validate(dumped).recovery_point == when.replace(microsecond=0)


def test_status_ignores_fields_it_does_not_know() -> None:
    status = BackupPolicyStatus.model_validate({"backupCount": 2, "somethingNew": {"a": 1}})
    assert status.backup_count == 2


def test_condition_reasons_must_be_camel_case() -> None:
    with pytest.raises(ValidationError):
        Condition(
            type="Ready",
            status=ConditionStatus.FALSE,
            reason="not camel case",
            last_transition_time=datetime.now(UTC),
        )


def test_enum_values_are_stable() -> None:
    """Monitoring and GitOps health checks depend on these strings: never rename them."""
    assert [s.value for s in ConditionStatus] == ["True", "False", "Unknown"]
    assert {c.value for c in ConditionType} >= {
        "Ready",
        "Succeeded",
        "RPOMet",
        "RTOMet",
        "BackupStale",
        "Healthy",
        "Passed",
    }
    assert [p.value for p in RestorePhase] == [
        "Pending", "Rehydrating", "Running", "Succeeded", "Failed"
    ]
    assert [p.value for p in FailoverPhase] == [
        "Idle",
        "Monitoring",
        "Running",
        "Succeeded",
        "Failed",
        "DrillSucceeded",
        "DrillFailed",
    ]
    assert [s.value for s in StageState] == [
        "Pending",
        "Running",
        "Succeeded",
        "Failed",
        "Skipped",
    ]
    assert [r.value for r in TestResult] == ["Running", "Passed", "Failed"]
    assert [m.value for m in BackupMethod] == ["logical", "physical", "snapshot", "export", "sync"]
    assert [m.value for m in FailoverMode] == ["automatic", "manual", "drill"]


def test_kind_registry() -> None:
    assert [k.kind for k in KINDS] == [
        "BackupPolicy",
        "RestoreRequest",
        "FailoverPlan",
        "RestoreTest",
    ]
    assert kind_info("bp") is kind_info("BackupPolicy") is kind_info("backuppolicies")
    assert kind_info("rr").crd_name == "restorerequests.dr.tonebridge.io"
    assert kind_info("fp").resource_model is FailoverPlan
    assert kind_info("rt").list_kind == "RestoreTestList"
    with pytest.raises(KeyError):
        kind_info("nope")
