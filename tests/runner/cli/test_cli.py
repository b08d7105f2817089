"""The runner command line: output contract, exit codes, bad input, catalog commands."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import s3 as s3_fixtures
from tests.fixtures.postgres import Cli, PgServer, clean_env, populate_sample
from tonebridge_dr.runner import cli as runner_cli
from tonebridge_dr.runner import result


def dbname_of(dsn: str) -> str:
    return dsn.rsplit("dbname=", 1)[1]


def repo_files(url: str) -> list[Path]:
    root = Path(url.removeprefix("file://"))
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def audit_files(url: str) -> list[Path]:
    """The audit records of a file:// repository (repository/audit.py)."""
    return sorted(p for p in repo_files(url) if "audit" in p.relative_to(url[7:]).parts[:1])


def data_files(url: str) -> list[Path]:
    """Everything but the audit records: what backups wrote."""
    return sorted(set(repo_files(url)) - set(audit_files(url)))


def tiny_db(pg: PgServer) -> str:
    dsn = pg.create_database("cli")
    pg.execute(
        dbname_of(dsn),
        "CREATE TABLE t (id int PRIMARY KEY, v text)",
        "INSERT INTO t SELECT i, 'v' || i FROM generate_series(1, 20) i",
    )
    return dsn


def one_error_line(res: Any, code: int) -> str:
    """The failure contract: exit code, and stderr is exactly one `error: ...` line."""
    assert res.code == code, res.err
    assert len(res.err_lines) == 1, res.err
    line: str = res.err_lines[0]
    assert line.startswith("error: ")
    return line


# --- basics -------------------------------------------------------------------------------
def test_version_and_help(cli: Cli) -> None:
    version = cli("--version")
    assert version.code == 0 and re.fullmatch(r"tonebridge-dr \S+\n", version.out)
    helped = cli("backup", "postgres", "--help")
    assert helped.code == 0 and "--dsn" in helped.out and "--encrypt-to" in helped.out


def test_entry_point_runs_as_a_program(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tonebridge_dr.cli", "backups", "list", "--repo", "nope://x"],
        capture_output=True,
        text=True,
        env=clean_env(),
        check=False,
    )
    assert proc.returncode == 3
    assert proc.stderr == (
        "error: unknown repository scheme 'nope' in 'nope://x': use "
        "s3://bucket/prefix or file:///path\n"
    )
    assert proc.stdout == ""


def test_backup_output_json_human_logs_and_termination_message(
    pg: PgServer, cli: Cli, file_repo_url: str
) -> None:
    dsn = tiny_db(pg)
    res = cli("backup", "postgres", "--dsn", dsn, "--repo", file_repo_url, "--json")
    assert res.code == 0, res.err
    data = res.json
    assert {"id", "engine", "method", "size_bytes", "started_at", "finished_at"} <= set(data)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", data["started_at"])
    assert cli.termination() == json.loads(json.dumps(data))
    stamp = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (INFO|WARNING) "
    assert res.err_lines and all(re.match(stamp, line) for line in res.err_lines)

    human = cli("backup", "postgres", "--dsn", dsn, "--repo", file_repo_url)
    assert human.code == 0
    assert re.search(r"^id\s+\d{8}T\d{6}Z", human.out, re.M)
    assert re.search(r"^size_bytes\s+[\d.]+ (B|KiB)$", human.out, re.M)

    quiet = cli("-q", "backup", "postgres", "--dsn", dsn, "--repo", file_repo_url)
    assert quiet.code == 0 and quiet.err == ""


def test_repo_and_dsn_from_the_environment(
    pg: PgServer, cli: Cli, file_repo_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TONEBRIDGE_DR_REPO", file_repo_url)
    monkeypatch.setenv("TONEBRIDGE_DR_DSN", tiny_db(pg))
    res = cli("backup", "postgres", "--json")
    assert res.code == 0, res.err
    target = pg.create_database("envtarget")
    monkeypatch.setenv("TONEBRIDGE_DR_TARGET_DSN", target)
    restored = cli("restore", "postgres", "--json")
    assert restored.code == 0, restored.err
    assert restored.json["backup"] == res.json["id"]
    assert pg.query(dbname_of(target), "SELECT count(*) FROM t") == [(20,)]


# --- bad input --------------------------------------------------------------------------------
def test_bad_input_gives_one_line_distinct_codes_and_writes_nothing(
    pg: PgServer,
    cli: Cli,
    file_repo_url: str,
    moto_server: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    dsn = tiny_db(pg)
    codes: dict[str, int] = {}

    line = one_error_line(cli("backup", "postgres", "--dsn", dsn, "--repo", "ftp://host/x"), 3)
    assert "unknown repository scheme 'ftp'" in line
    codes["scheme"] = 3

    s3_fixtures.s3_env(monkeypatch, moto_server)
    line = one_error_line(
        cli("backup", "postgres", "--dsn", dsn, "--repo", "s3://tbdr-no-such-bucket/x"), 3
    )
    assert "tbdr-no-such-bucket" in line
    codes["bucket"] = 3

    closed = s3_fixtures._free_port()
    unreachable = f"host=127.0.0.1 port={closed} user=postgres dbname=x"
    line = one_error_line(
        cli("backup", "postgres", "--dsn", unreachable, "--repo", file_repo_url), 9
    )
    assert line == (
        f"error: cannot connect to source database postgres@127.0.0.1:{closed}/x: "
        "Connection refused"
    )
    codes["unreachable"] = 9

    monkeypatch.setenv("PGPASSWORD", "Wr0ng-Passw0rd-123")
    res = cli("backup", "postgres", "--dsn", dsn, "--repo", file_repo_url)
    line = one_error_line(res, 10)
    assert "password authentication failed" in line
    assert "Wr0ng-Passw0rd-123" not in res.err + res.out
    assert "Wr0ng-Passw0rd-123" not in cli.termination_log.read_text()
    assert cli.termination()["error"] == "AuthenticationFailed"
    # a password inside the DSN is not echoed either
    res = cli(
        "backup", "postgres", "--dsn", dsn + " password=In-Dsn-S3cret", "--repo", file_repo_url
    )
    one_error_line(res, 10)
    assert "In-Dsn-S3cret" not in res.err
    codes["password"] = 10
    monkeypatch.setenv("PGPASSWORD", pg.password)
    assert data_files(file_repo_url) == []
    # Each failed backup that reached the repository left its audit record, without secrets.
    failed = audit_files(file_repo_url)
    assert len(failed) == 3
    for path in failed:
        text = path.read_text()
        assert "Wr0ng-Passw0rd-123" not in text and "In-Dsn-S3cret" not in text
        assert json.loads(text)["outcome"] == "failed"

    good = cli("backup", "postgres", "--dsn", dsn, "--repo", file_repo_url, "--json")
    assert good.code == 0, good.err
    before = data_files(file_repo_url)
    audited = audit_files(file_repo_url)

    line = one_error_line(
        cli(
            "restore",
            "postgres",
            "--repo",
            file_repo_url,
            "--backup",
            "20200101T000000Z",
            "--target-dsn",
            pg.create_database("t"),
        ),
        6,
    )
    assert line.startswith("error: backup 20200101T000000Z not found in ")
    one_error_line(cli("backups", "show", "20200101T000000Z", "--repo", file_repo_url), 6)
    codes["backup id"] = 6

    line = one_error_line(
        cli(
            "restore",
            "postgres",
            "--repo",
            file_repo_url,
            "--backup",
            "latest",
            "--target-dsn",
            dsn,
        ),
        11,
    )
    assert "is not empty" in line and "--clean" in line
    assert pg.query(dbname_of(dsn), "SELECT count(*) FROM t") == [(20,)]
    codes["not empty"] = 11

    for args in (
        ["backup", "postgres", "--dsn", dsn, "--repo", file_repo_url, "--method", "logicl"],
        ["backup", "postgres", "--repo", file_repo_url],  # no --dsn, no env
        ["backup", "postgres", "--dsn", dsn],  # no --repo, no env
        [
            "restore",
            "postgres",
            "--repo",
            file_repo_url,
            "--backup",
            "yesterday",
            "--target-dsn",
            dsn,
        ],
        [
            "restore",
            "postgres",
            "--repo",
            file_repo_url,
            "--target-dsn",
            dsn,
            "--repair-column",
            "created_at",
        ],
        ["backups", "prune", "--repo", file_repo_url],
        ["backups", "prune", "--repo", file_repo_url, "--keep-last", "2", "--min-age", "soon"],
        ["frobnicate"],
    ):
        one_error_line(cli(*args), 2)
    codes["usage"] = 2

    assert data_files(file_repo_url) == before  # nothing written by any of them
    # ... but an audit record for each of the two failed restores (usage errors: none)
    assert len(audit_files(file_repo_url)) == len(audited) + 2
    assert sorted(set(codes.values())) == [2, 3, 6, 9, 10, 11]


# --- catalog commands -----------------------------------------------------------------------
def test_list_show_verify(pg: PgServer, cli: Cli, file_repo_url: str) -> None:
    dsn = tiny_db(pg)
    empty = cli("backups", "list", "--repo", file_repo_url)
    assert (empty.code, empty.out) == (3, "")  # a repository that does not exist yet
    ids = [
        cli("backup", "postgres", "--dsn", dsn, "--repo", file_repo_url, "--json").json["id"]
        for _ in range(2)
    ]
    listed = cli("backups", "list", "--repo", file_repo_url, "--json")
    assert [b["id"] for b in listed.json] == ids
    table = cli("backups", "list", "--repo", file_repo_url)
    header, *rows = table.out.splitlines()
    assert header.split() == [
        "ID",
        "ENGINE",
        "METHOD",
        "DATABASES",
        "SCHEDULE",
        "TABLES",
        "STARTED",
        "SECONDS",
        "SIZE",
        "ENCRYPTED",
        "CLASS",
    ]
    assert [row.split()[0] for row in rows] == ids
    assert [(b["schedule"], b["tables"]) for b in listed.json] == [(None, [])] * 2
    assert [row.split()[-1] for row in rows] == ["-", "-"]  # file:// has no storage classes
    assert [b["current_storage_class"] for b in listed.json] == [None, None]
    assert cli.termination() == {"backups": 2, "latest": ids[-1]}

    shown = cli("backups", "show", "latest", "--repo", file_repo_url, "--json")
    assert shown.json["id"] == ids[-1]
    assert {o["name"] for o in shown.json["objects"]} == {"database.dump", "globals.sql"}
    human = cli("backups", "show", ids[0], "--repo", file_repo_url)
    assert "database.dump" in human.out and "SHA256" in human.out

    verified = cli("backups", "verify", ids[0], "--repo", file_repo_url, "--json")
    assert verified.code == 0
    assert verified.json["ok"] is True and verified.json["objects_checked"] == 2


def test_an_empty_listing_says_where_the_backups_are(
    pg: PgServer, cli: Cli, s3_repo_url: str
) -> None:
    """A policy writes to <url>/<policy>: listing <url> (or a typo) finds no backups and
    says why on stderr, instead of a bare "no backups"."""
    dsn = tiny_db(pg)
    cli("backup", "postgres", "--dsn", dsn, "--repo", f"{s3_repo_url}/orders", "--json",
        "--schedule", "hot", "--table", "t")
    above = cli("backups", "list", "--repo", s3_repo_url)
    assert (above.code, above.out) == (0, "no backups\n")
    assert f"there are in: {s3_repo_url}/orders" in above.err
    typo = cli("backups", "list", "--repo", f"{s3_repo_url}/ordres", "--json")
    assert (typo.code, typo.json) == (0, [])
    assert "nothing is stored under" in typo.err
    listed = cli("backups", "list", "--repo", f"{s3_repo_url}/orders")
    _header, row = listed.out.splitlines()
    assert "hot" in row.split() and "public.t" in row


def test_prune_on_a_real_repository(pg: PgServer, cli: Cli, file_repo_url: str) -> None:
    dsn = tiny_db(pg)
    ids = [
        cli(
            "backup", "postgres", "--dsn", dsn, "--repo", file_repo_url, "--no-globals", "--json"
        ).json["id"]
        for _ in range(4)
    ]

    young = cli(
        "backups", "prune", "--repo", file_repo_url, "--keep-last", "1", "--min-age", "1d", "--json"
    )
    assert young.code == 0 and young.json["deleted"] == []

    dry = cli(
        "backups", "prune", "--repo", file_repo_url, "--keep-last", "2", "--dry-run", "--json"
    )
    assert dry.code == 0, dry.err
    assert dry.json["dry_run"] is True
    assert dry.json["deleted"] == ids[:2] and dry.json["kept"] == ids[2:]
    assert len(cli("backups", "list", "--repo", file_repo_url, "--json").json) == 4

    pruned = cli("backups", "prune", "--repo", file_repo_url, "--keep-last", "2")
    assert pruned.code == 0, pruned.err
    assert f"deleted (2): {ids[0]}, {ids[1]}" in pruned.out
    assert cli.termination()["deleted"] == ids[:2]
    assert [b["id"] for b in cli("backups", "list", "--repo", file_repo_url, "--json").json] == (
        ids[2:]
    )
    root = Path(file_repo_url.removeprefix("file://")) / "base"
    assert sorted(p.name for p in root.iterdir()) == ids[2:]  # the objects went too


def test_check_mode(pg: PgServer, cli: Cli, file_repo_url: str) -> None:
    dsn = tiny_db(pg)
    assert cli("backup", "postgres", "--dsn", dsn, "--repo", file_repo_url).code == 0
    checked = cli("check", "--repo", file_repo_url, "--dsn", dsn, "--json")
    assert checked.code == 0, checked.err
    assert checked.json["backups"] == 1 and checked.json["repository_ok"] is True
    assert checked.json["database"]["superuser"] is True
    assert checked.json["database"]["server_version"].startswith("15.")
    one_error_line(cli("check", "--repo", "file:///nonexistent/tbdr/repo"), 3)
    one_error_line(
        cli(
            "check",
            "--repo",
            file_repo_url,
            "--dsn",
            dsn.replace("user=postgres", "user=nobody_here"),
        ),
        10,
    )


# --- pieces ---------------------------------------------------------------------------------
def test_termination_message_is_compact_and_bounded() -> None:
    big = {"id": "x", "objects": [{"name": "n" * 100}] * 200, "message": "m" * 10_000}
    encoded = result.compact(big)
    assert len(encoded) <= 4096
    data = json.loads(encoded)
    assert data["id"] == "x" and data["objects"] == "(omitted)"


def test_scrub_masks_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASSWORD", "env-secret-value")
    text = (
        "postgresql://app:uri-secret@db:5432/x host=h password=kv-secret "
        "password='quoted secret' and env-secret-value"
    )
    masked = result.scrub(text)
    for secret in ("uri-secret", "kv-secret", "quoted secret", "env-secret-value"):
        assert secret not in masked


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30d", 30 * 86400), ("12h", 43200), ("1d12h", 36 * 3600), ("90m", 5400), ("3600", 3600)],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert runner_cli.parse_duration(text).total_seconds() == seconds


def test_populate_sample_smoke(pg: PgServer) -> None:
    # the fixture data the engine tests rely on (ids hourly from 2024-01-01)
    dsn = pg.create_database("sample")
    populate_sample(pg, dbname_of(dsn), rows=30)
    assert pg.query(
        dbname_of(dsn), "SELECT id FROM transformations WHERE created_at = '2024-01-02 00:00+00'"
    ) == [(25,)]
