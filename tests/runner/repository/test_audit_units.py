"""The audit library without servers: keys, secret-free targets, who, prune by age (over a
file:// folder)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.repository import audit
from tonebridge_dr.runner.storage import open_storage
from tonebridge_dr.runner.storage.base import Storage

NOW = dt.datetime(2026, 12, 5, 10, 0, 0, tzinfo=dt.UTC)


def record(started: dt.datetime, operation: str = "backup") -> audit.AuditRecord:
    return audit.AuditRecord(
        operation=operation, started_at=started, finished_at=started + dt.timedelta(seconds=3),
        outcome="succeeded", who=audit.identity({}),
    )


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    return open_storage((tmp_path / "repo").as_uri())


def test_keys_sort_by_time_and_parse_back() -> None:
    first = dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC)
    early = audit.record_key("backup", first, "ab12cd34")
    assert early == "audit/2026/01/02/20260102T030405.000006Z-backup-ab12cd34.json"
    second = dt.datetime(2026, 1, 2, 3, 4, 6, tzinfo=dt.UTC)
    late = audit.record_key("restore-test", second, "0000abcd")
    assert early < late
    assert audit.parse_key(late) == (dt.datetime(2026, 1, 2, 3, 4, 6, tzinfo=dt.UTC),
                                     "restore-test")
    assert audit.parse_key("audit/2026/01/02/notes.txt") is None
    with pytest.raises(ValueError):
        audit.record_key("backups", NOW, "ab12cd34")


@pytest.mark.parametrize(
    ("given", "described"),
    [
        ("host=db port=5432 user=app dbname=prod password=S3cret-Pw", "app@db:5432/prod"),
        ("host=db password='with space' dbname=prod", "db/prod"),
        ("postgresql://app:S3cret-Pw@db:5432/prod?sslpassword=S3cret-Pw",
         "postgresql://app@db:5432/prod"),
        ("redis://:S3cret-Pw@cache:6379/0", "redis://cache:6379/0"),
        ("s3://bucket/prefix/policy", "s3://bucket/prefix/policy"),
        ("/var/lib/postgresql/data", "/var/lib/postgresql/data"),
        ("", None),
        (None, None),
    ],
)
def test_targets_are_described_without_secrets(given: str | None, described: str | None) -> None:
    assert audit.describe_target(given) == described


def test_a_record_scrubs_every_string(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASSWORD", "Env-S3cret-Pw")
    rec = audit.AuditRecord(
        operation="restore", started_at=NOW, finished_at=NOW, outcome="failed",
        who=audit.identity({}), error_reason="AuthenticationFailed", exit_code=10,
        error_message="connect to host=db password=Dsn-S3cret failed (Env-S3cret-Pw)",
        details={"note": "postgresql://u:Url-S3cret@db/x"},
    )
    text = json.dumps(rec.payload())
    for secret in ("Env-S3cret-Pw", "Dsn-S3cret", "Url-S3cret"):
        assert secret not in text
    assert rec.payload()["error"] == {"reason": "AuthenticationFailed", "exit_code": 10,
                                      "message": "connect to host=db password=*** failed (***)"}


def test_who_outside_and_inside_kubernetes() -> None:
    outside = audit.identity({})
    assert outside["kind"] == "cli" and outside["principal"] == (
        f"cli:{outside['user']}@{outside['host']}"
    )
    inside = audit.identity({"TONEBRIDGE_DR_POD_NAME": "p", "TONEBRIDGE_DR_POD_NAMESPACE": "ns",
                             "TONEBRIDGE_DR_SERVICE_ACCOUNT": "sa", "TONEBRIDGE_DR_JOB_NAME": ""})
    assert inside == {"kind": "kubernetes", "principal": "system:serviceaccount:ns:sa",
                      "service_account": "sa", "namespace": "ns", "pod": "p", "job": None}


def test_records_are_written_once_each(storage: Storage) -> None:
    keys = {audit.write_record(storage, record(NOW)) for _ in range(5)}
    assert len(keys) == 5  # same instant, same operation: five objects
    stored = audit.list_records(storage)
    assert [r.key for r in stored] == sorted(keys)
    assert all(r.data is not None and r.data["operation"] == "backup" for r in stored)


def test_prune_removes_only_records_older_than_the_retention(storage: Storage) -> None:
    ages = {"old": 4 * 365, "edge-old": 3 * 365 + 1, "edge-young": 3 * 365 - 1, "new": 10}
    keys = {name: audit.write_record(storage, record(NOW - dt.timedelta(days=days)))
            for name, days in ages.items()}
    storage.put_bytes("audit/README.txt", b"not a record")
    storage.put_bytes("base/x/manifest.json", b"{}")

    dry = audit.prune_audit(storage, older_than=audit.DEFAULT_RETENTION, now=NOW, dry_run=True)
    assert sorted(dry.deleted) == sorted([keys["old"], keys["edge-old"]]) and dry.kept == 2
    assert len(audit.list_records(storage)) == 4  # a dry run deletes nothing

    report = audit.prune_audit(storage, older_than=audit.parse_age("3y"), now=NOW, dry_run=False)
    assert sorted(report.deleted) == sorted([keys["old"], keys["edge-old"]])
    assert [r.key for r in audit.list_records(storage)] == [keys["edge-young"], keys["new"]]
    assert storage.exists("audit/README.txt") and storage.exists("base/x/manifest.json")
    again = audit.prune_audit(storage, older_than=audit.DEFAULT_RETENTION, now=NOW)
    assert again.deleted == []  # idempotent


def test_list_since_and_operation(storage: Storage) -> None:
    for days, op in ((40, "backup"), (20, "prune"), (1, "backup")):
        audit.write_record(storage, record(NOW - dt.timedelta(days=days), op))
    since = NOW - dt.timedelta(days=30)
    assert [r.operation for r in audit.list_records(storage, since=since)] == ["prune", "backup"]
    assert [r.operation for r in audit.list_records(storage, operation="backup")] == [
        "backup", "backup"
    ]


@pytest.mark.parametrize(("text", "age"), [("3y", dt.timedelta(days=1095)),
                                          ("400d", dt.timedelta(days=400)),
                                          ("12h", dt.timedelta(hours=12)),
                                          ("90", dt.timedelta(seconds=90))])
def test_ages(text: str, age: dt.timedelta) -> None:
    assert audit.parse_age(text) == age


def test_a_bad_age_is_a_usage_error(storage: Storage) -> None:
    with pytest.raises(errors.UsageError):
        audit.parse_age("three years")
    with pytest.raises(errors.UsageError):
        audit.prune_audit(storage, older_than=dt.timedelta(0), now=NOW)
