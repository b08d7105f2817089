"""`restore-test postgres` of logical backups end to end: real PostgreSQL 15, file:// and S3 on
moto, the scratch target (a database, or a private instance) always removed, the report kept."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import procs
from tests.fixtures.postgres import (
    Cli,
    CliResult,
    PgFactory,
    PgServer,
    populate_sample,
    user_table_names,
)
from tonebridge_dr.runner.engines.postgres.restoretest import run
from tonebridge_dr.runner.repository import reports
from tonebridge_dr.runner.repository.catalog import Repository
from tonebridge_dr.runner.storage import open_storage

ROWS = 300
#: Checks that hold for the sample database (tests/fixtures/postgres.py populate_sample).
SAMPLE_CHECKS: list[dict[str, Any]] = [
    {"name": "transformations", "query": "SELECT count(*) FROM transformations",
     "expect": {"equals": str(ROWS)}},
    {"name": "documents", "query": "SELECT count(*) FROM app.documents",
     "expect": {"min": 50, "max": 50}},
    {"name": "second-day", "query": "SELECT id FROM transformations "
     "WHERE created_at >= '2024-01-02 00:00+00' ORDER BY id", "expect": {"nonEmpty": True}},
    {"name": "large-object", "query": "SELECT count(*) FROM pg_largeobject_metadata",
     "expect": {"equals": "1"}},
]


def dbname_of(dsn: str) -> str:
    return dsn.rsplit("dbname=", 1)[1]


def sample_backup(pg: PgServer, cli: Cli, repo: str, *extra_sql: str) -> str:
    src = pg.create_database("rtsrc")
    populate_sample(pg, dbname_of(src), rows=ROWS)
    if extra_sql:
        pg.execute(dbname_of(src), *extra_sql)
    made = cli("backup", "postgres", "--dsn", src, "--repo", repo, "--json")
    assert made.code == 0, made.err
    backup_id: str = made.json["id"]
    return backup_id


def restore_test(
    cli: Cli, repo: str, *args: str, checks: list[dict[str, Any]] | None = None
) -> CliResult:
    given = ["--checks-json", json.dumps(SAMPLE_CHECKS if checks is None else checks)]
    return cli("restore-test", "postgres", "--repo", repo, "--json", *given, *args)


def error_lines(res: CliResult) -> list[str]:
    return [line for line in res.err_lines if line.startswith("error:")]


def manifest_sha256(repo: str, backup_id: str) -> str:
    data = open_storage(repo).get_bytes(f"base/{backup_id}/manifest.json")
    return hashlib.sha256(data).hexdigest()


def stored_report(repo: str, key: str) -> dict[str, Any]:
    storage = open_storage(repo)
    data = storage.get_bytes(key)
    recorded = storage.get_bytes(key + ".sha256").decode().split()
    assert recorded == [hashlib.sha256(data).hexdigest(), key.rsplit("/", 1)[1]]
    report: dict[str, Any] = json.loads(data)
    return report


# --- passing ----------------------------------------------------------------------------------
def test_a_passing_test_restores_into_a_scratch_database_that_it_drops_afterwards(
    pg: PgServer, cli: Cli, file_repo_url: str
) -> None:
    backup_id = sample_backup(pg, cli, file_repo_url)
    scratch = pg.dsn("rt_scratch_pass")
    res = restore_test(cli, file_repo_url, "--scratch-dsn", scratch, "--name", "nightly",
                       "--rto", "1h")
    assert res.code == 0, res.err
    out = res.json
    assert list(out) == list(run.RESULT_KEYS)
    assert out["name"] == "nightly" and out["engine"] == "postgres"
    assert out["method"] == "logical" and out["backup_id"] == backup_id
    assert out["manifest_sha256"] == manifest_sha256(file_repo_url, backup_id)
    assert out["passed"] is True and out["rto_seconds"] == 3600 and out["rto_met"] is True
    assert [(c["name"], c["passed"], c["value"], c["message"]) for c in out["checks"]] == [
        ("transformations", True, "300", None),
        ("documents", True, "50", None),
        ("second-day", True, "25", None),
        ("large-object", True, "1", None),
    ]
    assert 0 < out["restore_duration_seconds"] < 3600
    assert cli.termination() == out
    assert not pg.database_exists("rt_scratch_pass")  # created for the test, dropped after

    key = out["report_key"]
    assert key.startswith("restore-tests/") and key.endswith("-nightly.json")
    report = stored_report(file_repo_url, key)
    assert {k: report[k] for k in run.RESULT_KEYS} == out
    assert report["tonebridge_dr_version"] and "error" not in report
    assert report["details"]["scratch"] == "database"
    assert report["details"]["created_database"] is True

    listed = cli("restore-tests", "list", "--repo", file_repo_url, "--json")
    assert listed.code == 0, listed.err
    [row] = listed.json
    assert row["key"] == key and row["checksum"] == "ok" and row["passed"] is True
    assert row["backup_id"] == backup_id and row["rto_met"] is True
    assert row["restore_duration_seconds"] == out["restore_duration_seconds"]
    human = cli("restore-tests", "list", "--repo", file_repo_url)
    assert human.code == 0 and "nightly" in human.out and backup_id in human.out
    print(f"logical restore test of the sample database (scratch database): "
          f"restore_duration_seconds={out['restore_duration_seconds']}")


def test_database_replaces_the_database_of_the_scratch_dsn(
    pg: PgServer, cli: Cli, file_repo_url: str
) -> None:
    sample_backup(pg, cli, file_repo_url)
    before = pg.query("postgres", "SELECT count(*) FROM pg_class")
    res = restore_test(cli, file_repo_url, "--scratch-dsn", pg.dsn("postgres"),
                       "--database", "rt_named")
    assert res.code == 0, res.err
    report = stored_report(file_repo_url, res.json["report_key"])
    assert report["details"]["database"] == "rt_named"
    assert report["details"]["target"].endswith("/rt_named")
    assert not pg.database_exists("rt_named")
    assert pg.query("postgres", "SELECT count(*) FROM pg_class") == before


def test_an_existing_empty_database_is_restored_into_and_emptied_again(
    pg: PgServer, cli: Cli, file_repo_url: str
) -> None:
    sample_backup(pg, cli, file_repo_url)
    scratch = pg.create_database("rt_existing")
    db = dbname_of(scratch)
    # Not data: a schema and a function of the scratch server's owners stay as they were.
    pg.execute(db, "CREATE SCHEMA ops",
               "CREATE FUNCTION ops.answer() RETURNS int LANGUAGE sql AS 'SELECT 42'")
    res = restore_test(cli, file_repo_url, "--scratch-dsn", scratch)
    assert res.code == 0, res.err
    assert res.json["passed"] is True
    assert pg.database_exists(db)
    assert user_table_names(pg, db) == []
    assert pg.query(db, "SELECT count(*) FROM pg_largeobject_metadata") == [(0,)]
    assert pg.query(db, "SELECT nspname FROM pg_namespace WHERE oid >= 16384") == [("ops",)]
    assert pg.query(db, "SELECT ops.answer()") == [(42,)]
    assert pg.query(db, "SELECT count(*) FROM pg_class WHERE oid >= 16384") == [(0,)]


def test_a_passing_test_into_a_scratch_instance(
    pg: PgServer, pg_factory: PgFactory, cli: Cli, file_repo_url: str
) -> None:
    backup_id = sample_backup(pg, cli, file_repo_url)
    folder = pg_factory.new_root("rt-instance") / "scratch"  # missing: created, then removed
    res = restore_test(cli, file_repo_url, "--scratch-instance", str(folder), "--name", "inst")
    assert res.code == 0, res.err
    out = res.json
    assert out["passed"] is True and out["backup_id"] == backup_id and out["method"] == "logical"
    assert [c["value"] for c in out["checks"]] == ["300", "50", "25", "1"]
    assert not folder.exists()
    assert procs.mentioning(str(folder)) == []
    report = stored_report(file_repo_url, out["report_key"])
    assert report["details"]["scratch"] == "instance"
    assert report["details"]["database"].startswith("rtsrc_")  # the backed-up database's name

    existing = pg_factory.new_root("rt-instance-kept")  # an existing empty folder stays, empty
    again = restore_test(cli, file_repo_url, "--scratch-instance", str(existing))
    assert again.code == 0, again.err
    assert existing.is_dir() and list(existing.iterdir()) == []
    assert procs.mentioning(str(existing)) == []
    print(f"logical restore test of the sample database (scratch instance): "
          f"restore_duration_seconds={out['restore_duration_seconds']}")


def test_s3_repository_keeps_and_lists_reports_and_flags_a_changed_one(
    pg: PgServer, cli: Cli, s3_repo_url: str
) -> None:
    backup_id = sample_backup(pg, cli, s3_repo_url)
    first = restore_test(cli, s3_repo_url, "--scratch-dsn", pg.dsn("rt_s3_a"), "--name", "a")
    second = restore_test(cli, s3_repo_url, "--scratch-dsn", pg.dsn("rt_s3_b"), "--name", "b")
    assert first.code == 0 and second.code == 0, first.err + second.err
    assert not pg.database_exists("rt_s3_a") and not pg.database_exists("rt_s3_b")
    storage = open_storage(s3_repo_url)
    changed = json.loads(storage.get_bytes(first.json["report_key"]))
    changed["passed"] = False
    storage.put_bytes(first.json["report_key"], reports.encode(changed))

    listed = cli("restore-tests", "list", "--repo", s3_repo_url, "--json")
    assert listed.code == 0, listed.err
    assert [(r["name"], r["checksum"], r["backup_id"]) for r in listed.json] == [
        ("b", "ok", backup_id), ("a", "mismatch", backup_id)  # newest first
    ]
    assert any("checksum mismatch" in line for line in listed.err_lines)


# --- verdicts ---------------------------------------------------------------------------------
def test_a_failing_check_exits_15_with_the_value_it_got_and_every_check_runs(
    pg: PgServer, cli: Cli, file_repo_url: str
) -> None:
    sample_backup(pg, cli, file_repo_url, "CREATE TABLE events (id int)")
    checks = [
        {"name": "events", "query": "SELECT count(*) FROM events", "expect": {"min": 1}},
        {"name": "bad-sql", "query": "SELECT x FROM nowhere", "expect": {"nonEmpty": True}},
        {"name": "transformations", "query": "SELECT count(*) FROM transformations",
         "expect": {"min": 1}},
    ]
    res = restore_test(cli, file_repo_url, "--scratch-dsn", pg.dsn("rt_fail"), "--rto", "1h",
                       checks=checks)
    assert res.code == 15, res.err
    [line] = error_lines(res)
    assert line.startswith("error: restore test restore-test: 2 of 3 checks failed: events "
                           "(expected at least 1, got 0); bad-sql (query failed: ")
    out = res.json
    assert out["passed"] is False and out["rto_met"] is False
    assert out["error"] == "ChecksFailed" and out["exit_code"] == 15
    events, bad, rows = out["checks"]
    assert (events["passed"], events["value"]) == (False, "0")
    assert events["message"] == "expected at least 1, got 0"
    assert bad["passed"] is False and bad["value"] is None
    assert 'relation "nowhere" does not exist' in bad["message"]
    assert (rows["passed"], rows["value"], rows["message"]) == (True, "300", None)
    termination = cli.termination()
    assert termination["error"] == "ChecksFailed" and termination["exit_code"] == 15
    assert termination["checks"] == out["checks"]
    assert {k: termination[k] for k in run.RESULT_KEYS} == {k: out[k] for k in run.RESULT_KEYS}
    assert not pg.database_exists("rt_fail")
    report = stored_report(file_repo_url, out["report_key"])
    assert report["error"] == "ChecksFailed" and report["passed"] is False


def test_a_restore_slower_than_the_rto_exits_16_with_the_measured_duration(
    pg: PgServer, cli: Cli, file_repo_url: str
) -> None:
    sample_backup(pg, cli, file_repo_url)
    res = restore_test(cli, file_repo_url, "--scratch-dsn", pg.dsn("rt_rto"), "--rto", "1ms")
    assert res.code == 16, res.err
    out = res.json
    assert out["passed"] is True and all(c["passed"] for c in out["checks"])
    assert out["rto_seconds"] == 0.001 and out["rto_met"] is False
    assert out["restore_duration_seconds"] > 0.001
    [line] = error_lines(res)
    assert line == (
        f"error: restore test restore-test: the checks passed after "
        f"{out['restore_duration_seconds']:.3f} s, longer than the RTO of 0.001 s"
    )
    termination = cli.termination()
    assert termination["error"] == "RTOMissed" and termination["exit_code"] == 16
    assert termination["restore_duration_seconds"] == out["restore_duration_seconds"]
    assert not pg.database_exists("rt_rto")


def test_checks_are_read_only(pg: PgServer, cli: Cli, file_repo_url: str) -> None:
    sample_backup(pg, cli, file_repo_url)
    checks = [
        {"name": "insert", "query": "INSERT INTO analytics VALUES ('2030-01-01', 'x', 1) "
         "RETURNING hits", "expect": {"nonEmpty": True}},
        {"name": "escape", "query": "COMMIT; DELETE FROM analytics RETURNING 1",
         "expect": {"nonEmpty": True}},
        {"name": "nextval", "query": "SELECT nextval('standalone_seq')",
         "expect": {"min": 1}},
        {"name": "unchanged", "query": "SELECT count(*) || '/' || max(day)::text FROM analytics",
         "expect": {"equals": "90/2024-01-30"}},
        {"name": "sequence", "query": "SELECT last_value FROM standalone_seq",
         "expect": {"equals": "42"}},
    ]
    res = restore_test(cli, file_repo_url, "--scratch-dsn", pg.dsn("rt_ro"), checks=checks)
    assert res.code == 15, res.err
    outcome = {c["name"]: c for c in res.json["checks"]}
    assert "cannot execute INSERT in a read-only transaction" in outcome["insert"]["message"]
    assert "cannot insert multiple commands" in outcome["escape"]["message"]
    assert "read-only transaction" in outcome["nextval"]["message"]
    assert outcome["unchanged"]["passed"] and outcome["sequence"]["passed"]
    assert not pg.database_exists("rt_ro")


# --- failures ---------------------------------------------------------------------------------
def _corrupt(repo: str, backup_id: str) -> str:
    manifest = Repository.open(repo).get(backup_id)
    entry = manifest.object("database.dump")
    assert entry is not None
    path = Path(repo.removeprefix("file://")) / entry.key
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x55
    path.write_bytes(bytes(data))
    return entry.key


@pytest.mark.parametrize("scratch_kind", ["database", "instance"])
def test_a_corrupt_backup_exits_7_and_leaves_no_scratch_target(
    pg: PgServer, pg_factory: PgFactory, cli: Cli, file_repo_url: str, scratch_kind: str
) -> None:
    sample_backup(pg, cli, file_repo_url)  # an older good one: the test takes the latest
    backup_id = sample_backup(pg, cli, file_repo_url)
    key = _corrupt(file_repo_url, backup_id)
    folder = pg_factory.new_root("rt-corrupt")
    scratch = (["--scratch-dsn", pg.dsn("rt_corrupt")] if scratch_kind == "database"
               else ["--scratch-instance", str(folder)])
    res = restore_test(cli, file_repo_url, *scratch)
    assert res.code == 7, res.err
    [line] = error_lines(res)
    assert key in line
    termination = cli.termination()
    assert termination["error"] == "IntegrityCheckFailed" and termination["exit_code"] == 7
    assert termination["backup_id"] == backup_id and termination["passed"] is False
    assert not pg.database_exists("rt_corrupt")
    assert list(folder.iterdir()) == [] and procs.mentioning(str(folder)) == []
    report = stored_report(file_repo_url, termination["report_key"])
    assert report["error"] == "IntegrityCheckFailed" and report["backup_id"] == backup_id
    assert report["restore_duration_seconds"] is None and report["details"]["cleaned_up"]


def test_a_scratch_database_with_data_is_refused_and_untouched(
    pg: PgServer, cli: Cli, file_repo_url: str
) -> None:
    sample_backup(pg, cli, file_repo_url)
    scratch = pg.create_database("rt_busy")
    db = dbname_of(scratch)
    pg.execute(db, "CREATE TABLE precious (v text)", "INSERT INTO precious VALUES ('keep me')")
    res = restore_test(cli, file_repo_url, "--scratch-dsn", scratch)
    assert res.code == 11, res.err
    [line] = error_lines(res)
    assert line == (
        f"error: scratch database '{db}' is not empty (1 user relations or large objects); a "
        "restore test restores only into an empty database or one it creates itself, and never "
        "touches one with data"
    )
    assert pg.query(db, "SELECT v FROM precious") == [("keep me",)]
    assert user_table_names(pg, db) == ["public.precious"]
    assert reports.list_reports(open_storage(file_repo_url)) == []  # nothing was read


def test_bad_input_is_a_usage_error_before_any_work(
    pg: PgServer, cli: Cli, file_repo_url: str, tmp_path: Path
) -> None:
    sample_backup(pg, cli, file_repo_url)
    base = ["restore-test", "postgres", "--repo", file_repo_url]
    cases = [
        ([], "no scratch target"),
        (["--scratch-dsn", pg.dsn("x"), "--scratch-instance", str(tmp_path)], "not both"),
        (["--scratch-dsn", pg.dsn("x"), "--method", "physical"], "needs --scratch-instance"),
        (["--scratch-dsn", pg.dsn("x"), "--name", "Bad_Name"], "invalid restore test name"),
        (["--scratch-dsn", pg.dsn("x"), "--rto", "soon"], "--rto"),
        (["--scratch-dsn", pg.dsn("x"), "--checks-json", "[{\"name\": \"a\"}]"], "query"),
        (["--scratch-dsn", pg.dsn("x"), "--checks-json",
          '[{"name": "a", "query": "SELECT 1", "expect": {}}]'], "expect needs at least one"),
    ]
    for args, needle in cases:
        res = cli(*base, *args)
        assert res.code == 2, (args, res.err)
        [line] = res.err_lines
        assert line.startswith("error: ") and needle in line, (args, line)
    assert not pg.database_exists("x")
    unsupported = cli("restore-test", "bucket", "--repo", file_repo_url)
    assert unsupported.code == 2
    assert unsupported.err_lines[-1].startswith("error: tonebridge-dr restore-test bucket: ")
    assert "(restore-test works for: postgres, redis)" in unsupported.err_lines[-1]
    helped = cli("--help")
    assert helped.code == 0 and "restore-test" in helped.out and "restore-tests" in helped.out
