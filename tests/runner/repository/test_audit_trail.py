"""The audit trail end to end: each backup, restore, prune and restore test run through the
runner's front door leaves exactly one record under `audit/` (real PostgreSQL; file://
and moto S3), with who, what, when and the outcome, and never a secret; `audit list`
and `audit prune` read and trim them."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from tests.fixtures.postgres import Cli, PgServer
from tonebridge_dr.runner.repository import audit
from tonebridge_dr.runner.storage import open_storage

CHECKS = [{"name": "rows", "query": "SELECT count(*) FROM t", "expect": {"equals": "20"}}]


def dbname_of(dsn: str) -> str:
    return dsn.rsplit("dbname=", 1)[1]


def records(repo: str) -> list[dict[str, Any]]:
    """Every stored record (raw objects, not through `audit list`), oldest first."""
    storage = open_storage(repo, create=False)
    keys = sorted(info.key for info in storage.list("audit/"))
    return [json.loads(storage.get_bytes(key)) for key in keys]


def raw_records(repo: str) -> bytes:
    storage = open_storage(repo, create=False)
    return b"".join(storage.get_bytes(info.key) for info in storage.list("audit/"))


def one_new(repo: str, before: int) -> dict[str, Any]:
    """The operation just run left exactly one record: return it."""
    now = records(repo)
    assert len(now) == before + 1, [r["operation"] for r in now]
    return now[-1]


def test_each_operation_leaves_exactly_one_record_without_secrets(
    pg: PgServer, cli: Cli, file_repo_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = file_repo_url
    src = pg.create_database("audsrc")
    pg.execute(dbname_of(src), "CREATE TABLE t (id int PRIMARY KEY, v text)",
               "INSERT INTO t SELECT i, 'v' || i FROM generate_series(1, 20) i")
    # The password only inside the DSNs: nothing else could hide it from the records.
    monkeypatch.delenv("PGPASSWORD")
    secret = f" password={pg.password}"

    made = cli("backup", "postgres", "--dsn", src + secret, "--repo", repo, "--json")
    assert made.code == 0, made.err
    first = made.json["id"]
    rec = one_new(repo, 0)
    assert (rec["operation"], rec["engine"], rec["method"]) == ("backup", "postgres", "logical")
    assert (rec["outcome"], rec["exit_code"], rec["error"]) == ("succeeded", 0, None)
    assert rec["backup_ids"] == [first]
    assert rec["target"] == f"{pg.user}@127.0.0.1:{pg.port}/{dbname_of(src)}"
    assert rec["repository"] == repo
    assert rec["who"]["kind"] == "cli" and rec["who"]["principal"].startswith("cli:")
    started = dt.datetime.fromisoformat(rec["started_at"])
    assert started <= dt.datetime.fromisoformat(rec["finished_at"])
    assert rec["duration_seconds"] >= 0

    target = pg.create_database("audtgt")
    restored = cli("restore", "postgres", "--repo", repo, "--backup", "latest",
                   "--target-dsn", target + secret, "--json")
    assert restored.code == 0, restored.err
    rec = one_new(repo, 1)
    assert (rec["operation"], rec["outcome"], rec["backup_ids"]) == ("restore", "succeeded",
                                                                     [first])
    assert rec["target"] == f"{pg.user}@127.0.0.1:{pg.port}/{dbname_of(target)}"

    missing = cli("restore", "postgres", "--repo", repo, "--backup", "20200101T000000Z",
                  "--target-dsn", pg.create_database("audmiss") + secret)
    assert missing.code == 6
    rec = one_new(repo, 2)
    assert (rec["operation"], rec["outcome"], rec["exit_code"]) == ("restore", "failed", 6)
    assert rec["error"]["reason"] == "BackupNotFound"
    assert "20200101T000000Z" in rec["error"]["message"]

    scratch = pg.create_database("audscratch")
    tested = cli("restore-test", "postgres", "--repo", repo, "--scratch-dsn", scratch + secret,
                 "--checks-json", json.dumps(CHECKS), "--name", "audit-check", "--json")
    assert tested.code == 0, tested.err
    rec = one_new(repo, 3)
    assert (rec["operation"], rec["outcome"], rec["backup_ids"]) == ("restore-test",
                                                                     "succeeded", [first])
    assert rec["details"]["passed"] is True and rec["details"]["name"] == "audit-check"

    # In a pod: who comes from the downward API variables the builders set.
    for name, value in (("TONEBRIDGE_DR_POD_NAME", "db-daily-29000000-x7k2p"),
                        ("TONEBRIDGE_DR_POD_NAMESPACE", "tonebridge"),
                        ("TONEBRIDGE_DR_SERVICE_ACCOUNT", "tonebridge-dr-backup"),
                        ("TONEBRIDGE_DR_JOB_NAME", "db-daily-29000000")):
        monkeypatch.setenv(name, value)
    second = cli("backup", "postgres", "--dsn", src + secret, "--repo", repo, "--json")
    assert second.code == 0, second.err
    rec = one_new(repo, 4)
    assert rec["who"] == {
        "kind": "kubernetes",
        "principal": "system:serviceaccount:tonebridge:tonebridge-dr-backup",
        "service_account": "tonebridge-dr-backup",
        "namespace": "tonebridge",
        "pod": "db-daily-29000000-x7k2p",
        "job": "db-daily-29000000",
    }

    pruned = cli("backups", "prune", "--repo", repo, "--keep-last", "1", "--json")
    assert pruned.code == 0, pruned.err
    rec = one_new(repo, 5)
    assert (rec["operation"], rec["outcome"]) == ("prune", "succeeded")
    assert rec["backup_ids"] == [first]  # the one it deleted
    assert rec["details"]["dry_run"] is False

    # Reads are not operations: listing leaves nothing.
    assert cli("backups", "list", "--repo", repo).code == 0
    listed = cli("audit", "list", "--repo", repo, "--json")
    assert listed.code == 0, listed.err
    assert len(records(repo)) == 6
    assert [row["operation"] for row in listed.json] == [
        "backup", "restore", "restore", "restore-test", "backup", "prune"
    ]
    assert all(row["key"].startswith("audit/") for row in listed.json)
    assert pg.password.encode() not in raw_records(repo)
    assert pg.password not in listed.out


def test_audit_list_filters_and_prune_keeps_the_young(
    pg: PgServer, cli: Cli, s3_repo_url: str
) -> None:
    repo = s3_repo_url
    storage = open_storage(repo)
    now = dt.datetime.now(dt.UTC)
    who = audit.identity({})
    for years, op in ((5, "backup"), (4, "prune"), (1, "restore")):  # backdated records
        started = now - dt.timedelta(days=365 * years)
        audit.write_record(storage, audit.AuditRecord(
            operation=op, started_at=started, finished_at=started, outcome="succeeded", who=who,
        ))
    src = pg.create_database("auds3")
    pg.execute(dbname_of(src), "CREATE TABLE t (id int)")
    made = cli("backup", "postgres", "--dsn", src, "--repo", repo, "--json")
    assert made.code == 0, made.err

    everything = cli("audit", "list", "--repo", repo, "--json")
    assert [r["operation"] for r in everything.json] == ["backup", "prune", "restore", "backup"]
    recent = cli("audit", "list", "--repo", repo, "--since", "30d", "--json")
    assert [r["backup_ids"] for r in recent.json] == [[made.json["id"]]]
    since = (now - dt.timedelta(days=365 * 4 + 1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    later = cli("audit", "list", "--repo", repo, "--since", since, "--json")
    assert [r["operation"] for r in later.json] == ["prune", "restore", "backup"]
    only = cli("audit", "list", "--repo", repo, "--operation", "prune", "--json")
    assert [r["operation"] for r in only.json] == ["prune"]
    human = cli("audit", "list", "--repo", repo)
    assert human.code == 0 and "OPERATION" in human.out.splitlines()[0]

    dry = cli("audit", "prune", "--repo", repo, "--dry-run", "--json")
    assert dry.code == 0, dry.err
    assert (dry.json["deleted_count"], dry.json["kept"], dry.json["dry_run"]) == (2, 2, True)
    assert len(cli("audit", "list", "--repo", repo, "--json").json) == 4 + 1  # + the dry run's
    done = cli("audit", "prune", "--repo", repo, "--older-than", "3y", "--json")
    assert done.code == 0, done.err
    assert done.json["deleted_count"] == 2
    left = cli("audit", "list", "--repo", repo, "--json").json
    assert [r["operation"] for r in left] == ["restore", "backup", "audit-prune", "audit-prune"]
    assert left[-1]["details"]["deleted_count"] == 2
