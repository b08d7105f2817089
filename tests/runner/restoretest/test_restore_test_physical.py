"""`restore-test postgres --scratch-instance` of a physical base backup plus archived WAL: real
PostgreSQL 15 archiving into a file:// repository (archive_command and restore_command run as
OS user postgres), the restored cluster started on a private socket, promoted, checked,
stopped and removed."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import procs
from tests.fixtures.pg_wal import start_archiving, switch_wal, wait_archived
from tests.fixtures.postgres import (
    ADMIN_PASSWORD,
    Cli,
    CliResult,
    PgFactory,
    PgServer,
    chown_postgres,
    populate_sample,
)
from tonebridge_dr.runner.engines.postgres import basebackup
from tonebridge_dr.runner.repository import Repository

pytestmark = pytest.mark.timeout(900)

APP = "app"
ROWS = 300


@dataclasses.dataclass
class World:
    server: PgServer
    repo_url: str
    logical_id: str
    physical_id: str


@pytest.fixture(scope="module")
def world(pg_factory: PgFactory, postgres_runs_cli: None) -> Iterator[World]:
    """An archiving cluster with the sample database `app`: a logical backup, then a base
    backup, then rows only the archived WAL has (audit_log 10 -> 15)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PGPASSWORD", ADMIN_PASSWORD)
        repo_dir = pg_factory.new_root("rt-phys-repo") / "repo"
        repo_dir.mkdir()
        chown_postgres(repo_dir)
        url = repo_dir.as_uri()
        server = start_archiving(pg_factory, "rt-phys", url)
        server.execute("postgres", f"CREATE DATABASE {APP}")
        populate_sample(server, APP, rows=ROWS)
        repo = Repository.open(url)
        from tonebridge_dr.runner.engines.postgres import dump

        logical = dump.backup_logical(lambda: repo, server.dsn(APP), dump.LogicalBackupOptions())
        physical = basebackup.backup_physical(
            repo, server.dsn(), basebackup.PhysicalBackupOptions()
        )
        server.execute(
            APP,
            "INSERT INTO audit_log SELECT timestamptz '2025-01-01 00:00+00' + i * interval '1 day',"
            " 'after the base backup ' || i FROM generate_series(1, 5) AS i",
        )
        wait_archived(server, switch_wal(server))
        yield World(server, url, logical.id, physical.id)


CHECKS: list[dict[str, Any]] = [
    {"name": "transformations", "query": "SELECT count(*) FROM transformations",
     "expect": {"equals": str(ROWS)}},
    {"name": "replayed-wal", "query": "SELECT count(*) FROM audit_log",
     "expect": {"equals": "15"}},
    {"name": "promoted", "query": "SELECT pg_is_in_recovery()", "expect": {"equals": "f"}},
]


def restore_test(cli: Cli, world: World, folder: Path, *args: str,
                 checks: list[dict[str, Any]] | None = None) -> CliResult:
    return cli(
        "restore-test", "postgres", "--repo", world.repo_url, "--scratch-instance", str(folder),
        "--checks-json", json.dumps(CHECKS if checks is None else checks), "--json", *args,
    )


def test_a_physical_backup_and_its_wal_pass_a_restore_test(
    world: World, pg_factory: PgFactory, cli: Cli
) -> None:
    folder = pg_factory.new_root("rt-phys-scratch")
    res = restore_test(cli, world, folder, "--database", APP, "--rto", "1h", "--name", "phys")
    assert res.code == 0, res.err
    out = res.json
    # With a scratch instance and no --method: the newest backup of either method.
    assert out["method"] == "physical" and out["backup_id"] == world.physical_id
    assert [(c["name"], c["passed"], c["value"]) for c in out["checks"]] == [
        ("transformations", True, "300"), ("replayed-wal", True, "15"), ("promoted", True, "f"),
    ]
    assert out["passed"] is True and out["rto_met"] is True
    print(f"physical restore test of the sample database (base backup + WAL, scratch "
          f"instance): restore_duration_seconds={out['restore_duration_seconds']}")
    assert list(folder.iterdir()) == []
    assert procs.mentioning(str(folder)) == []
    report = json.loads((Path(world.repo_url.removeprefix("file://")) / out["report_key"])
                        .read_text())
    assert report["details"]["scratch"] == "instance" and report["details"]["database"] == APP
    assert report["details"]["recovery"]["wal_segments"] >= 1
    assert report["details"]["recovery"]["recovered_to_lsn"]
    assert world.server.query(APP, "SELECT count(*) FROM audit_log") == [(15,)]  # untouched


def test_the_logical_backup_of_the_same_cluster_into_a_scratch_instance(
    world: World, pg_factory: PgFactory, cli: Cli
) -> None:
    folder = pg_factory.new_root("rt-phys-logical")
    checks = [CHECKS[0], {**CHECKS[1], "expect": {"equals": "10"}}]  # dumped before the rows
    res = restore_test(cli, world, folder, "--method", "logical", checks=checks)
    assert res.code == 0, res.err
    assert res.json["method"] == "logical" and res.json["backup_id"] == world.logical_id
    assert list(folder.iterdir()) == [] and procs.mentioning(str(folder)) == []


def test_a_failing_check_on_a_physical_restore_stops_and_removes_the_instance(
    world: World, pg_factory: PgFactory, cli: Cli
) -> None:
    folder = pg_factory.new_root("rt-phys-fail")
    checks = [{"name": "events", "query": "SELECT count(*) FROM audit_log WHERE false",
               "expect": {"min": 1}}, CHECKS[1]]
    res = restore_test(cli, world, folder, "--database", APP, "--backup", world.physical_id,
                       checks=checks)
    assert res.code == 15, res.err
    assert [(c["passed"], c["value"]) for c in res.json["checks"]] == [(False, "0"), (True, "15")]
    assert list(folder.iterdir()) == [] and procs.mentioning(str(folder)) == []


def test_a_physical_backup_needs_a_scratch_instance(
    world: World, pg: PgServer, cli: Cli
) -> None:
    res = cli("restore-test", "postgres", "--repo", world.repo_url, "--backup", world.physical_id,
              "--scratch-dsn", pg.dsn("rt_phys_dsn"))
    assert res.code == 2
    assert res.err_lines[-1] == (
        f"error: backup {world.physical_id} is a physical base backup: restore-testing it needs "
        "--scratch-instance DIR (a whole cluster restored, started and recovered)"
    )
    assert not pg.database_exists("rt_phys_dsn")
