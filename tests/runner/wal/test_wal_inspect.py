"""Find the damage in archived WAL, then restore to just before it (real PostgreSQL 15).

One archiving cluster per module (archive_command = wal-push into a file://
repository): two base backups, rows committed in batches, then, after a time T, the
human errors a runbook must undo: a small DELETE (under --min-rows), a mass DELETE,
a TRUNCATE, a DROP TABLE, rows committed after the DROP, and a DROP DATABASE. The
transaction ids are taken from the server (txid_current() inside each statement's
transaction); `wal-inspect` must find each with that xid, and a restore to just before
the DROP must hold every row committed before it and nothing after.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import time
from collections.abc import Iterator
from contextlib import redirect_stdout
from typing import Any

import pytest

from tests.fixtures.pg_wal import (
    commit_batch,
    restore_started,
    start_archiving,
    switch_wal,
    wait_archived,
)
from tests.fixtures.postgres import ADMIN_PASSWORD, PgFactory, PgServer, chown_postgres
from tonebridge_dr.runner import cli
from tonebridge_dr.runner.engines.postgres import basebackup
from tonebridge_dr.runner.engines.postgres.wal import naming, pitr
from tonebridge_dr.runner.repository import Manifest, Repository

pytestmark = pytest.mark.timeout(900)

ROWS = 10
MIN_ROWS = 50


@dataclasses.dataclass
class World:
    server: PgServer
    repo_url: str
    backups: list[Manifest]
    before: dt.datetime  # T: every destructive statement comes after it
    after: dt.datetime  # after the last of them
    xids: dict[str, int]
    filenodes: dict[str, int]
    shop_oid: int
    postgres_oid: int

    @property
    def repo(self) -> Repository:
        return Repository.open(self.repo_url, create=False)


def _xact(server: PgServer, *statements: str, db: str = "postgres") -> int:
    """Run `statements` in one transaction; its xid."""
    with server.connect(db, autocommit=True) as conn, conn.transaction():
        for statement in statements:
            conn.execute(statement)
        row = conn.execute("SELECT txid_current()").fetchone()
    assert row is not None
    return int(row[0])


def _now(server: PgServer) -> dt.datetime:
    value = server.query("postgres", "SELECT clock_timestamp()")[0][0]
    assert isinstance(value, dt.datetime)
    return value


@pytest.fixture(scope="module")
def world(pg_factory: PgFactory, postgres_runs_cli: None) -> Iterator[World]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PGPASSWORD", ADMIN_PASSWORD)
        repo_dir = pg_factory.new_root("inspect-repo") / "repo"
        repo_dir.mkdir()
        chown_postgres(repo_dir)
        url = repo_dir.as_uri()
        server = start_archiving(pg_factory, "inspect", url)
        server.execute("postgres", "CREATE TABLE t (batch int NOT NULL, i int NOT NULL)")
        server.execute("postgres", "CREATE TABLE mass (id int PRIMARY KEY, v text)")
        server.execute("postgres", "INSERT INTO mass SELECT g, 'v' FROM generate_series(1, 300) g")
        server.execute("postgres", "CREATE TABLE scratch (id int PRIMARY KEY)")
        server.execute("postgres", "INSERT INTO scratch SELECT generate_series(1, 40)")
        server.execute("postgres", "CREATE DATABASE shop")
        server.execute("shop", "CREATE TABLE items (id int)")
        server.execute("shop", "INSERT INTO items SELECT generate_series(1, 25)")
        repo = Repository.open(url)
        options = basebackup.PhysicalBackupOptions()
        backups = [basebackup.backup_physical(repo, server.dsn(), options)]
        commit_batch(server, 1, ROWS)
        backups.append(basebackup.backup_physical(repo, server.dsn(), options))
        commit_batch(server, 2, ROWS)
        time.sleep(1.1)  # T lies between the setup and the damage, by a whole second
        before = _now(server)
        time.sleep(1.1)
        filenodes = {
            name: int(server.query("postgres", f"SELECT pg_relation_filenode('{name}')")[0][0])
            for name in ("t", "mass", "scratch")
        }
        oids = dict(server.query("postgres", "SELECT datname, oid FROM pg_database"))
        xids = {
            "small": _xact(server, "DELETE FROM mass WHERE id <= 3"),
            "mass": _xact(server, "DELETE FROM mass WHERE id > 3 AND id <= 153"),
            "truncate": _xact(server, "TRUNCATE scratch"),
        }
        commit_batch(server, 3, ROWS)
        xids["drop"] = _xact(server, "DROP TABLE t")
        xids["later"] = _xact(server, "CREATE TABLE later (x int)", "INSERT INTO later VALUES (1)")
        server.execute("postgres", "DROP DATABASE shop")
        time.sleep(1.1)
        after = _now(server)
        last = switch_wal(server)
        wait_archived(server, last)
        yield World(
            server, url, backups, before, after, xids, filenodes,
            int(oids["shop"]), int(oids["postgres"]),
        )


def _inspect(world: World, *extra: str) -> dict[str, Any]:
    out = io.StringIO()
    argv = [
        "wal-inspect", "--repo", world.repo_url, "--from", world.before.isoformat(),
        "--to", world.after.isoformat(), "--min-rows", str(MIN_ROWS), "--batch", "2", "--json",
        *extra,
    ]
    with redirect_stdout(out):
        code = cli.main(argv)
    assert code == 0, out.getvalue()
    data: dict[str, Any] = json.loads(out.getvalue())
    return data


def _by_xid(data: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {event["xid"]: event for event in data["events"]}


def test_wal_inspect_finds_each_destructive_transaction(world: World) -> None:
    data = _inspect(world)
    events = _by_xid(data)
    assert data["segments"] >= 2 and data["records"] > 0
    kinds = [(event["kind"], event["xid"]) for event in data["events"]]
    xids = world.xids
    # Exactly these, in commit order: no insert batch, no small DELETE, no CREATE TABLE.
    assert [kind for kind, _ in kinds] == [
        "DELETE", "TRUNCATE", "DROP TABLE", "DROP DATABASE"
    ], kinds
    assert xids["small"] not in events and xids["later"] not in events
    mass = events[xids["mass"]]
    assert mass["rows"] == 150
    assert [(r["filenode"], r["rows"]) for r in mass["relations"]] == [
        (world.filenodes["mass"], 150)
    ]
    assert mass["database_oids"] == [world.postgres_oid]
    truncate = events[xids["truncate"]]
    assert truncate["kind"] == "TRUNCATE"
    assert world.filenodes["scratch"] in [r["filenode"] for r in truncate["relations"]]
    drop = events[xids["drop"]]
    assert drop["kind"] == "DROP TABLE"
    assert world.filenodes["t"] in [r["filenode"] for r in drop["relations"]]
    # Commit times in order and inside [T, after]; the restore hint names the transaction.
    times = [pitr.parse_time(event["commit_time"]) for event in data["events"]]
    assert times == sorted(times) and world.before <= times[0] and times[-1] <= world.after
    assert drop["restore"] == {"beforeTransaction": xids["drop"], "beforeTime": drop["commit_time"]}
    dropdb = data["events"][-1]
    assert dropdb["database_oids"] == [world.shop_oid]
    # Its restore point is a WAL position before the transaction's first record.
    assert set(dropdb["restore"]) == {"targetLSN"}
    stop = naming.parse_lsn(dropdb["restore"]["targetLSN"])
    assert stop < naming.parse_lsn(dropdb["first_lsn"]) < naming.parse_lsn(dropdb["commit_lsn"])
    assert "hint" in data  # numbers only: how to map them is said


def test_min_rows_and_database_filter_and_window(world: World) -> None:
    low = _by_xid(_inspect(world, "--min-rows", "2"))
    assert low[world.xids["small"]]["rows"] == 3  # counted once the bar is lower
    only_shop = _inspect(world, "--database", str(world.shop_oid))
    assert [event["kind"] for event in only_shop["events"]] == ["DROP DATABASE"]
    # A window that ends before the damage reports none of it.
    out = io.StringIO()
    with redirect_stdout(out):
        code = cli.main([
            "wal-inspect", "--repo", world.repo_url, "--from",
            (world.before - dt.timedelta(minutes=10)).isoformat(), "--to",
            world.before.isoformat(), "--min-rows", str(MIN_ROWS), "--json",
        ])
    assert code == 0
    assert json.loads(out.getvalue())["events"] == []


def test_names_come_from_a_dsn_and_the_table_reads_well(world: World) -> None:
    dsn = world.server.dsn()
    data = _inspect(world, "--dsn", dsn, "--database", "postgres")
    events = _by_xid(data)
    assert events[world.xids["mass"]]["relations"][0]["name"] == "mass"
    assert events[world.xids["mass"]]["databases"] == ["postgres"]
    assert "hint" not in data
    assert world.xids["drop"] in events and all(
        event["database_oids"] == [world.postgres_oid] for event in data["events"]
    )
    out = io.StringIO()
    with redirect_stdout(out):
        code = cli.main([
            "wal-inspect", "--repo", world.repo_url, "--from", world.before.isoformat(),
            "--to", world.after.isoformat(), "--min-rows", str(MIN_ROWS), "--dsn", dsn,
        ])
    text = out.getvalue()
    assert code == 0
    assert "COMMIT TIME" in text and "mass (150)" in text
    assert f"beforeTransaction: {world.xids['drop']}" in text
    assert ADMIN_PASSWORD not in text


def test_the_planner_picks_the_backup_before_the_transaction(world: World) -> None:
    drop = _by_xid(_inspect(world))[world.xids["drop"]]
    hinted = pitr.parse_target(None, None, False, str(drop["xid"]), drop["commit_time"])
    options = pitr.RestoreOptions(data_dir=world.server.datadir / "nope", target=hinted)
    assert pitr.plan_restore(world.repo, options).backup.id == world.backups[1].id
    bare = pitr.parse_target(None, None, False, str(drop["xid"]))
    options = pitr.RestoreOptions(data_dir=world.server.datadir / "nope", target=bare)
    assert pitr.plan_restore(world.repo, options).backup.id == world.backups[0].id


def _batches(server: PgServer) -> list[tuple[int, int]]:
    rows = server.query("postgres", "SELECT batch, count(*) FROM t GROUP BY batch ORDER BY 1")
    return [(int(batch), int(count)) for batch, count in rows]


def test_restore_before_the_drop_has_every_row_before_it_and_nothing_after(
    world: World, pg_factory: PgFactory
) -> None:
    drop = _by_xid(_inspect(world))[world.xids["drop"]]
    target = pitr.parse_target(
        None, None, False, str(drop["restore"]["beforeTransaction"]),
        drop["restore"]["beforeTime"],
    )
    server, result = restore_started(pg_factory, world.repo, "inspect-xid", target)
    try:
        assert result["backup_id"] == world.backups[1].id
        assert result["target"] == {
            "type": "xid", "value": str(world.xids["drop"]), "inclusive": False,
            "before_time": drop["commit_time"],
        }
        assert _batches(server) == [(1, ROWS), (2, ROWS), (3, ROWS)]  # t is back, whole
        assert server.query("postgres", "SELECT count(*) FROM mass") == [(147,)]
        assert server.query("postgres", "SELECT count(*) FROM scratch") == [(0,)]
        assert server.query("postgres", "SELECT to_regclass('later')") == [(None,)]
        recovered = pitr.parse_time(result["recovered_to_time"])
        assert recovered < pitr.parse_time(drop["commit_time"])
    finally:
        server.stop()


def test_restore_before_the_drop_database_at_the_lsn_it_names(
    world: World, pg_factory: PgFactory
) -> None:
    dropdb = _inspect(world)["events"][-1]
    target = pitr.Target("lsn", lsn=naming.parse_lsn(dropdb["restore"]["targetLSN"]))
    server, _ = restore_started(pg_factory, world.repo, "inspect-dropdb", target)
    try:
        assert server.query("shop", "SELECT count(*) FROM items") == [(25,)]
        assert server.query("postgres", "SELECT count(*) FROM later") == [(1,)]  # all before
    finally:
        server.stop()


def test_why_drop_database_is_not_undone_by_its_xid(world: World, pg_factory: PgFactory) -> None:
    # Its INPLACE and `DROP dir` records act before its commit: stopping before the commit
    # leaves the database invalid. So wal-inspect names a WAL position for it instead.
    dropdb = _inspect(world)["events"][-1]
    target = pitr.parse_target(None, None, False, str(dropdb["xid"]), dropdb["commit_time"])
    server, _ = restore_started(pg_factory, world.repo, "inspect-dropdb-xid", target)
    try:
        assert server.query("postgres", "SELECT count(*) FROM later") == [(1,)]
        rows = server.query(
            "postgres", "SELECT datconnlimit FROM pg_database WHERE datname = 'shop'"
        )
        assert rows == [(-2,)]  # DATCONNLIMIT_INVALID_DB: "cannot connect to invalid database"
    finally:
        server.stop()
