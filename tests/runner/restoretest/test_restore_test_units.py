"""The pure parts of restore tests: the check language, reading checks, durations, the report
store on a file:// repository, and what survives the 4096-byte termination message."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tonebridge_dr.api.restoretest import Expectation
from tonebridge_dr.runner import errors, result
from tonebridge_dr.runner.engines.postgres import commands
from tonebridge_dr.runner.engines.postgres.restoretest import checks
from tonebridge_dr.runner.repository import reports
from tonebridge_dr.runner.storage import open_storage


def expect(**given: Any) -> Expectation:
    return Expectation.model_validate(given)


# --- the check language -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("given", "rows", "value", "verdict"),
    [
        ({"equals": "42"}, 1, "42", (True, None)),
        ({"equals": "42"}, 1, "42.0", (False, "expected '42', got '42.0'")),
        ({"equals": "42"}, 3, None, (False, "expected '42', got NULL")),
        ({"equals": "42"}, 0, None, (False, "expected '42', got no row")),
        ({"equals": ""}, 1, "", (True, None)),
        ({"min": 1}, 1, "1", (True, None)),
        ({"min": 1}, 1, "0", (False, "expected at least 1, got 0")),
        ({"min": 1}, 1, "0.5", (False, "expected at least 1, got 0.5")),
        ({"min": 1}, 1, "1.25", (True, None)),
        ({"max": 10}, 1, "10", (True, None)),
        ({"max": 10}, 1, "11", (False, "expected at most 10, got 11")),
        ({"min": -5, "max": 5}, 1, "-5", (True, None)),
        ({"min": 1}, 0, None, (False, "expected a number at least 1, got no row")),
        ({"min": 1}, 1, None, (False, "expected a number at least 1, got NULL")),
        ({"min": 1}, 1, "many", (False, "expected a number at least 1, got 'many'")),
        ({"max": 1}, 1, "NaN", (False, "expected a number at most 1, got 'NaN'")),
        ({"nonEmpty": True}, 2, None, (True, None)),
        ({"nonEmpty": True}, 0, None, (False, "expected at least one row, got none")),
        (
            {"nonEmpty": True, "min": 3},
            0,
            None,
            (False, "expected at least one row, got none; expected a number at least 3, "
             "got no row"),
        ),
        ({"nonEmpty": True, "equals": "t"}, 1, "t", (True, None)),
    ],
)
def test_evaluate(
    given: dict[str, Any], rows: int, value: str | None, verdict: tuple[bool, str | None]
) -> None:
    assert checks.evaluate(expect(**given), rows, value) == verdict


def test_a_long_value_is_quoted_short_and_kept_up_to_the_limit() -> None:
    passed, message = checks.evaluate(expect(equals="x"), 1, "y" * 5000)
    assert not passed and message is not None and len(message) < 260
    kept = checks.CheckResult("c", False, "y" * 5000, message).result()
    assert kept["value"] == "y" * checks.VALUE_LIMIT + "..."


# --- reading checks ---------------------------------------------------------------------------
SPEC_CHECKS = [
    {"name": "users-present", "query": "SELECT count(*) FROM users", "expect": {"min": 1}},
    {"name": "schema-version", "query": "SELECT v FROM meta", "expect": {"equals": "12"}},
    {"name": "any-order", "query": "SELECT 1 FROM orders", "expect": {"nonEmpty": True}},
]


def test_checks_are_the_spec_list_from_a_file_text_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(checks.CHECKS_ENV, raising=False)
    assert checks.load_checks() == []
    file = tmp_path / "checks.json"
    file.write_text(json.dumps(SPEC_CHECKS))
    from_file = checks.load_checks(file)
    assert [c.name for c in from_file] == ["users-present", "schema-version", "any-order"]
    assert from_file[2].expect.non_empty is True and from_file[0].expect.min == 1
    assert checks.load_checks(text=json.dumps(SPEC_CHECKS)) == from_file
    monkeypatch.setenv(checks.CHECKS_ENV, json.dumps(SPEC_CHECKS))
    assert checks.load_checks() == from_file
    with pytest.raises(errors.UsageError, match="not both"):
        checks.load_checks(file, "[]")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not JSON"),
        ('{"name": "a"}', "expected a JSON list of checks"),
        ('[{"name": "a", "query": "SELECT 1"}]', "0.expect: Field required"),
        ('[{"name": "Not_A_Label", "query": "SELECT 1", "expect": {"min": 1}}]', "0.name"),
        ('[{"name": "a", "query": "SELECT 1", "expect": {"non_empty": true, "x": 1}}]',
         "Extra inputs are not permitted"),
        ('[{"name": "a", "query": "SELECT 1", "expect": {"equals": "1", "min": 1}}]',
         "equals cannot be combined with min or max"),
        ('[{"name": "a", "query": "SELECT 1", "expect": {"min": 2, "max": 1}}]',
         "min must not be greater than max"),
        ('[{"name": "a", "query": "SELECT 1", "expect": {"nonEmpty": false}}]',
         "expect needs at least one"),
        ('[{"name": "a", "query": "SELECT 1", "expect": {"min": "1"}}]', "0.expect.min"),
        ('[{"name": "a", "query": "1", "expect": {"min": 1}},'
         ' {"name": "a", "query": "2", "expect": {"min": 1}}]', "check name 'a' is used twice"),
    ],
)
def test_checks_the_api_server_would_refuse_are_usage_errors(text: str, message: str) -> None:
    with pytest.raises(errors.UsageError, match="--checks-json") as refused:
        checks.load_checks(text=text)
    assert message in str(refused.value)


def test_at_most_32_checks() -> None:
    many = [{"name": f"c{i}", "query": "SELECT 1", "expect": {"min": 1}} for i in range(33)]
    with pytest.raises(errors.UsageError, match="33 checks, at most 32"):
        checks.parse_checks(json.dumps(many))


# --- durations --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "seconds"),
    [("15m", 900), ("1h30m", 5400), ("90s", 90), ("90", 90), ("2.5", 2.5), ("1ms", 0.001),
     ("500ms", 0.5), ("1d", 86400)],
)
def test_rto_durations(text: str, seconds: float) -> None:
    assert commands.parse_seconds(text, "--rto") == seconds


@pytest.mark.parametrize("text", ["0", "0s", "0ms", "soon", "-5", "1.5h", ""])
def test_bad_rto_durations(text: str) -> None:
    with pytest.raises(errors.UsageError, match="--rto"):
        commands.parse_seconds(text, "--rto")


# --- reports ----------------------------------------------------------------------------------
def test_reports_are_stored_with_their_checksum_listed_newest_first_and_verified(
    tmp_path: Path,
) -> None:
    import datetime as dt

    storage = open_storage((tmp_path / "repo").as_uri())
    first = dt.datetime(2026, 1, 1, 3, 0, 0, tzinfo=dt.UTC)
    key_a = reports.free_key(storage, first, "quarterly")
    assert key_a == "restore-tests/20260101T030000Z-quarterly.json"
    reports.write_report(storage, key_a, {"name": "quarterly", "passed": True, "backup_id": "x"})
    assert reports.free_key(storage, first, "quarterly") == (
        "restore-tests/20260101T030000Z-quarterly-2.json"
    )
    key_b = reports.free_key(storage, first + dt.timedelta(days=1), "quarterly")
    reports.write_report(storage, key_b, {"name": "quarterly", "passed": False})
    key_c = reports.free_key(storage, first + dt.timedelta(days=2), "other")
    storage.put_bytes(key_c, b'{"name": "other"}\n')  # its checksum never got written

    listed = reports.list_reports(storage)
    assert [(r.key, r.checksum) for r in listed] == [
        (key_c, reports.CHECKSUM_MISSING),
        (key_b, reports.CHECKSUM_OK),
        (key_a, reports.CHECKSUM_OK),
    ]
    assert listed[2].row()["passed"] is True and listed[1].row()["passed"] is False

    storage.put_bytes(key_a, storage.get_bytes(key_a).replace(b"true", b"false"))
    storage.put_bytes(key_b + reports.CHECKSUM_SUFFIX, b"not a checksum\n")
    verdicts = {r.key: r.checksum for r in reports.list_reports(storage)}
    assert verdicts[key_a] == reports.CHECKSUM_MISMATCH
    assert verdicts[key_b] == reports.CHECKSUM_UNREADABLE


@pytest.mark.parametrize("name", ["quarterly-db", "a", "db.prod-1", "x" * 253])
def test_report_names(name: str) -> None:
    assert reports.check_name(name) == name


@pytest.mark.parametrize("name", ["", "Upper", "under_score", "-lead", "trail-", "a..b",
                                  "a/b", "x" * 254])
def test_bad_report_names(name: str) -> None:
    with pytest.raises(errors.UsageError, match="invalid restore test name"):
        reports.check_name(name)


# --- the termination message ------------------------------------------------------------------
def test_checks_survive_the_termination_limit_with_shortened_values() -> None:
    outcome: dict[str, Any] = {
        "name": "quarterly-db",
        "engine": "postgres",
        "method": "logical",
        "backup_id": "20260101T030000Z",
        "backup_finished_at": "2026-01-01T03:00:10Z",
        "manifest_sha256": "a" * 64,
        "started_at": "2026-04-01T03:00:00.000Z",
        "completed_at": "2026-04-01T03:12:30.000Z",
        "restore_duration_seconds": 750.0,
        "rto_seconds": 900.0,
        "rto_met": False,
        "passed": False,
        "checks": [
            {"name": f"check-number-{i}", "passed": False, "value": "v" * 1024,
             "message": "query failed: " + "m" * 500}
            for i in range(12)
        ],
        "report_key": "restore-tests/20260401T030000Z-quarterly-db.json",
        "error": "ChecksFailed",
        "message": "restore test quarterly-db: 12 of 12 checks failed: " + "x" * 3000,
        "exit_code": 15,
    }
    encoded = result.compact(outcome)
    assert len(encoded) <= 4096
    data = json.loads(encoded)
    assert [c["name"] for c in data["checks"]] == [f"check-number-{i}" for i in range(12)]
    assert all(c["passed"] is False and c["value"].startswith("vvv") for c in data["checks"])
    for key in ("backup_id", "manifest_sha256", "error", "exit_code", "report_key", "rto_met"):
        assert data[key] == outcome[key], key
