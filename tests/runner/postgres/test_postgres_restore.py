"""PostgreSQL restores end to end: whole databases, chosen tables, time-range repair,
and what happens when a stored object is corrupt, truncated or missing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.postgres import (
    SAMPLE_TABLES,
    Cli,
    PgServer,
    populate_sample,
    table_checksums,
    user_table_names,
)
from tonebridge_dr.runner.repository.catalog import Repository

DAY2 = ("2024-01-02 00:00+00", "2024-01-03 00:00+00")  # transformations ids 25..48


def dbname_of(dsn: str) -> str:
    return dsn.rsplit("dbname=", 1)[1]


def sample_db(pg: PgServer, rows: int = 120) -> str:
    dsn = pg.create_database("src")
    populate_sample(pg, dbname_of(dsn), rows=rows)
    return dsn


def backup(cli: Cli, dsn: str, repo: str, *extra: str) -> str:
    result = cli("backup", "postgres", "--dsn", dsn, "--repo", repo, "--json", *extra)
    assert result.code == 0, result.err
    backup_id: str = result.json["id"]
    return backup_id


def restore(cli: Cli, repo: str, backup_id: str, target: str, *extra: str) -> Any:
    return cli(
        "restore", "postgres", "--repo", repo, "--backup", backup_id, "--target-dsn", target, *extra
    )


def rows(pg: PgServer, dsn: str, query: str) -> list[tuple[Any, ...]]:
    return pg.query(dbname_of(dsn), query)


# --- whole database -----------------------------------------------------------------------------
def test_clean_restore_replaces_changed_contents(
    pg: PgServer, cli: Cli, file_repo_url: str
) -> None:
    src = sample_db(pg)
    backup_id = backup(cli, src, file_repo_url)
    target = pg.create_database("clean")
    assert restore(cli, file_repo_url, backup_id, target).code == 0
    pg.execute(dbname_of(target), "DELETE FROM app.documents", "UPDATE analytics SET hits = 0")

    refused = restore(cli, file_repo_url, backup_id, target)
    assert refused.code == 11
    assert refused.err_lines == [
        f"error: target database '{dbname_of(target)}' is not empty (10 user relations or large "
        "objects); pass --clean to replace what the backup contains, or restore into an empty "
        "database"
    ]
    assert rows(pg, target, "SELECT count(*) FROM app.documents") == [(0,)]

    cleaned = restore(cli, file_repo_url, backup_id, target, "--clean", "--json")
    assert cleaned.code == 0, cleaned.err
    assert cleaned.json["clean"] is True and cleaned.json["mode"] == "database"
    assert table_checksums(pg, dbname_of(target)) == table_checksums(pg, dbname_of(src))


def test_missing_target_database_needs_create(pg: PgServer, cli: Cli, file_repo_url: str) -> None:
    src = sample_db(pg, rows=10)
    backup_id = backup(cli, src, file_repo_url)
    target = pg.dsn("never_created_db")
    missing = restore(cli, file_repo_url, backup_id, target)
    assert missing.code == 9
    assert missing.err_lines == [
        "error: target database 'never_created_db' does not exist on 127.0.0.1:"
        f"{pg.port}; create it or pass --create"
    ]
    assert not pg.database_exists("never_created_db")


def test_physical_backup_is_not_restored_by_restore_postgres(
    pg: PgServer, cli: Cli, file_repo_url: str
) -> None:
    backup_id = backup(cli, pg.dsn(), file_repo_url, "--method", "physical")
    result = restore(cli, file_repo_url, backup_id, pg.create_database("phys"))
    assert result.code == 2
    assert "is a physical backup" in result.err_lines[0] and len(result.err_lines) == 1


def test_latest_is_the_newest_backup_that_fits_the_request(
    pg: PgServer, cli: Cli, file_repo_url: str
) -> None:
    src = sample_db(pg, rows=30)
    whole = backup(cli, src, file_repo_url)
    hot = backup(cli, src, file_repo_url, "--table", "transformations")
    physical = backup(cli, pg.dsn(), file_repo_url, "--method", "physical")
    assert whole < hot < physical

    # a whole database: only database.dump will do (not the base backup, not the table one)
    target = pg.create_database("latest_whole")
    result = restore(cli, file_repo_url, "latest", target, "--json")
    assert result.code == 0, result.err
    assert (result.json["backup"], result.json["mode"]) == (whole, "database")
    assert table_checksums(pg, dbname_of(target)) == table_checksums(pg, dbname_of(src))

    # a table: the newest backup holding it
    target = pg.create_database("latest_tables")
    result = restore(cli, file_repo_url, "latest", target, "--table", "transformations", "--json")
    assert result.code == 0, result.err
    assert result.json["backup"] == hot
    result = restore(cli, file_repo_url, "latest", target, "--table", "public.analytics", "--json")
    assert result.code == 0, result.err
    assert result.json["backup"] == whole  # the table backup does not hold analytics

    # none fits: BackupNotFound naming what was looked for, nothing written
    missing = restore(cli, file_repo_url, "latest", target, "--table", "no_such_table")
    assert missing.code == 6
    assert missing.err_lines == [
        "error: no logical PostgreSQL backup containing table(s) no_such_table (a "
        "whole-database dump or a table backup holding them) in "
        f"{file_repo_url}; `tonebridge-dr backups list` shows what exists"
    ]
    only_tables = file_repo_url + "-tables"
    backup(cli, src, only_tables, "--table", "transformations")
    empty = pg.create_database("latest_none")
    refused = restore(cli, only_tables, "latest", empty)
    assert refused.code == 6
    assert refused.err_lines[0].startswith(
        "error: no logical PostgreSQL backup of a whole database (with database.dump; "
        "table backups and physical base backups cannot restore a whole database) in "
    )
    assert user_table_names(pg, dbname_of(empty)) == []


def test_target_database_overrides_the_database_of_the_dsn(
    pg: PgServer, cli: Cli, file_repo_url: str
) -> None:
    src = sample_db(pg, rows=20)
    backup_id = backup(cli, src, file_repo_url)
    other = pg.create_database("dsn_names_this")
    result = restore(
        cli, file_repo_url, backup_id, other, "--target-database", "renamed_target", "--create",
        "--json",
    )
    assert result.code == 0, result.err
    assert result.json["database"] == "renamed_target" and result.json["created_database"]
    assert table_checksums(pg, "renamed_target") == table_checksums(pg, dbname_of(src))
    assert user_table_names(pg, dbname_of(other)) == []  # the DSN's own database is untouched

    # a table restore into the database the flag names (here: the DSN's own, spelled out)
    result = restore(
        cli, file_repo_url, backup_id, other, "--target-database", dbname_of(other),
        "--table", "transformations", "--json",
    )
    assert result.code == 0, result.err
    assert user_table_names(pg, dbname_of(other)) == ["public.transformations"]

    for name, message in (
        ("", "cannot be empty"),
        (" padded", "cannot be empty or start or end with blanks"),
        ("x" * 64, "longer than 63 bytes"),
        ("tab\there", "control characters"),
    ):
        bad = restore(cli, file_repo_url, backup_id, other, "--target-database", name)
        assert bad.code == 2 and len(bad.err_lines) == 1, bad.err
        assert message in bad.err_lines[0]
    physical = cli(
        "restore", "postgres", "--repo", file_repo_url, "--data-dir", "/nonexistent",
        "--latest", "--target-database", "x",
    )
    assert physical.code == 2 and "--target-database" in physical.err_lines[0]


# --- tables ---------------------------------------------------------------------------------------
def test_table_restore_takes_definition_data_and_what_belongs_to_the_table(
    pg: PgServer, cli: Cli, file_repo_url: str
) -> None:
    src = sample_db(pg)
    backup_id = backup(cli, src, file_repo_url)
    target = pg.create_database("tables")
    result = restore(
        cli,
        file_repo_url,
        backup_id,
        target,
        "--table",
        "transformations",
        "--table",
        "app.documents",
        "--json",
    )
    assert result.code == 0, result.err
    assert result.json["mode"] == "tables"
    assert result.json["tables"] == ["public.transformations", "app.documents"]
    assert result.json["skipped_foreign_keys"] == []
    assert user_table_names(pg, dbname_of(target)) == ["app.documents", "public.transformations"]
    chosen = {k: SAMPLE_TABLES[k] for k in ("public.transformations", "app.documents")}
    assert table_checksums(pg, dbname_of(target), chosen) == table_checksums(
        pg, dbname_of(src), chosen
    )
    # indexes, keys, sequences (with their values) and defaults came along
    indexes = rows(
        pg,
        target,
        "SELECT indexname FROM pg_indexes WHERE tablename = 'transformations' ORDER BY 1",
    )
    assert indexes == [("transformations_created_at",), ("transformations_pkey",)]
    assert rows(pg, target, "SELECT conname FROM pg_constraint WHERE contype = 'f'") == [
        ("documents_transformation_id_fkey",)
    ]
    assert rows(pg, target, "SELECT last_value FROM transformations_id_seq") == [(120,)]
    pg.execute(dbname_of(target), "INSERT INTO transformations (created_at) VALUES (now())")
    assert rows(pg, target, "SELECT max(id) FROM transformations") == [(121,)]


def test_table_restore_skips_foreign_keys_to_tables_it_does_not_restore(
    pg: PgServer, cli: Cli, file_repo_url: str
) -> None:
    src = sample_db(pg, rows=60)
    backup_id = backup(cli, src, file_repo_url)
    target = pg.create_database("lonely")
    result = restore(cli, file_repo_url, backup_id, target, "--table", "documents", "--json")
    assert result.code == 0, result.err
    assert result.json["skipped_foreign_keys"] == [
        "app.documents.documents_transformation_id_fkey -> public.transformations"
    ]
    assert user_table_names(pg, dbname_of(target)) == ["app.documents"]
    assert rows(pg, target, "SELECT count(*) FROM app.documents") == [(50,)]


def test_table_restore_into_the_live_database(pg: PgServer, cli: Cli, file_repo_url: str) -> None:
    live = sample_db(pg)
    db = dbname_of(live)
    before = table_checksums(pg, db)
    backup_id = backup(cli, live, file_repo_url)
    pg.execute(db, "DELETE FROM analytics WHERE region = 'eu'", "UPDATE analytics SET hits = -1")
    damaged = table_checksums(pg, db)

    refused = restore(cli, file_repo_url, backup_id, live, "--table", "analytics")
    assert refused.code == 11
    assert refused.err_lines == [
        f"error: table(s) public.analytics already exist in target database '{db}'; "
        "pass --clean to replace them"
    ]
    assert table_checksums(pg, db) == damaged

    # a table other tables point at cannot be dropped: the whole restore rolls back
    blocked = restore(cli, file_repo_url, backup_id, live, "--table", "transformations", "--clean")
    assert blocked.code == 12
    assert "other objects depend on it" in blocked.err_lines[-1]
    assert table_checksums(pg, db) == damaged

    fixed = restore(cli, file_repo_url, backup_id, live, "--table", "analytics", "--clean")
    assert fixed.code == 0, fixed.err
    assert table_checksums(pg, db) == before


def test_table_restore_from_a_hot_table_backup(pg: PgServer, cli: Cli, file_repo_url: str) -> None:
    live = sample_db(pg)
    db = dbname_of(live)
    before = table_checksums(pg, db)
    backup_id = backup(
        cli, live, file_repo_url, "--table", "transformations", "--table", "usage_tracking"
    )
    pg.execute(db, "DELETE FROM usage_tracking WHERE id % 2 = 0")
    result = restore(cli, file_repo_url, backup_id, live, "--table", "usage_tracking", "--clean")
    assert result.code == 0, result.err
    assert table_checksums(pg, db) == before
    pg.execute(db, "INSERT INTO usage_tracking (created_at) VALUES (now())")  # identity continues
    assert rows(pg, live, "SELECT max(id) FROM usage_tracking") == [(121,)]


# --- time-range repair ------------------------------------------------------------------------
def _repair_args(
    repo: str, backup_id: str, target: str, table: str, column: str,
    bounds: tuple[str, str], *extra: str,
) -> list[str]:
    """`restore postgres` repairing `table` by `column` within `bounds` (spec 9.2)."""
    return [
        "restore", "postgres", "--repo", repo, "--backup", backup_id, "--target-dsn", target,
        "--table", table, "--repair-column", column, "--from", bounds[0], "--to", bounds[1],
        *extra,
    ]


def _snapshot(pg: PgServer, dsn: str, table: str, order: str) -> dict[Any, str]:
    return {
        key: text for key, text in rows(pg, dsn, f"SELECT ({order})::text, t::text FROM {table} t")
    }


@pytest.mark.parametrize("hot", [False, True], ids=["database-backup", "table-backup"])
def test_repair_inserts_exactly_the_missing_rows_of_the_range(
    pg: PgServer, cli: Cli, file_repo_url: str, hot: bool
) -> None:
    live = sample_db(pg)
    original = _snapshot(pg, live, "transformations", "id")
    extra = ("--table", "transformations") if hot else ()
    backup_id = backup(cli, live, file_repo_url, *extra)
    pg.execute(
        dbname_of(live),
        "DELETE FROM app.documents",
        "DELETE FROM transformations WHERE id IN (25, 30, 31, 48)",  # inside [day 2, day 3)
        "DELETE FROM transformations WHERE id IN (10, 24, 49, 100)",  # outside
        "UPDATE transformations SET note = 'edited after the backup' WHERE id = 33",
    )
    result = cli(*_repair_args(
        file_repo_url, backup_id, live, "transformations", "created_at", DAY2, "--json"
    ))
    assert result.code == 0, result.err
    report = result.json
    assert (report["rows_in_range"], report["rows_inserted"], report["rows_already_present"]) == (
        24,
        4,
        20,
    )
    assert report["primary_key"] == ["id"] and report["mode"] == "repair"
    after = _snapshot(pg, live, "transformations", "id")
    assert sorted(set(original) - set(after), key=int) == ["10", "24", "49", "100"]
    for key in ("25", "30", "31", "48"):
        assert after[key] == original[key]  # byte-identical rows: jsonb, bytea, arrays, text
    assert "edited after the backup" in after["33"]  # the live version wins
    assert cli.termination()["rows_inserted"] == 4
    # no scratch table is left behind, and a second run finds nothing to do
    assert rows(
        pg, live, "SELECT count(*) FROM pg_class WHERE relname LIKE 'tonebridge_repair_%'"
    ) == [(0,)]
    again = cli(*_repair_args(
        file_repo_url, backup_id, live, "transformations", "created_at", DAY2, "--json"
    ))
    assert again.json["rows_inserted"] == 0


def test_repair_with_a_composite_primary_key_and_identity_column(
    pg: PgServer, cli: Cli, file_repo_url: str
) -> None:
    live = sample_db(pg)
    analytics = _snapshot(pg, live, "analytics", "day, region")
    usage = _snapshot(pg, live, "usage_tracking", "id")
    backup_id = backup(cli, live, file_repo_url)
    pg.execute(
        dbname_of(live),
        "DELETE FROM analytics WHERE day IN ('2024-01-05', '2024-01-20') AND region <> 'us'",
        "DELETE FROM usage_tracking WHERE id IN (5, 6, 70)",
    )
    result = cli(*_repair_args(
        file_repo_url, backup_id, live, "analytics", "day", ("2024-01-01", "2024-01-10"), "--json"
    ))
    assert result.code == 0, result.err
    assert result.json["primary_key"] == ["day", "region"]
    assert result.json["rows_inserted"] == 2
    after = _snapshot(pg, live, "analytics", "day, region")
    assert set(analytics) - set(after) == {"(2024-01-20,ap)", "(2024-01-20,eu)"}
    # GENERATED ALWAYS identity: the backup's ids go back in (OVERRIDING SYSTEM VALUE)
    result = cli(*_repair_args(
        file_repo_url, backup_id, live, "usage_tracking", "created_at",
        ("2024-01-01", "2024-01-02"), "--json",
    ))
    assert result.code == 0, result.err
    assert result.json["rows_inserted"] == 2
    assert set(usage) - set(_snapshot(pg, live, "usage_tracking", "id")) == {"70"}


@pytest.mark.parametrize(
    ("table", "column", "bounds", "message"),
    [
        (
            "audit_log",
            "logged_at",
            DAY2,
            "error: table public.audit_log has no primary key: time-range repair needs one to tell "
            "missing rows from present ones",
        ),
        (
            "transformations",
            "no_such_column",
            DAY2,
            "error: table public.transformations has no column 'no_such_column'",
        ),
        (
            "transformations",
            "created_at",
            (DAY2[1], DAY2[0]),
            f"error: --from '{DAY2[1]}' must be before --to '{DAY2[0]}'",
        ),
        (
            "transformations",
            "created_at",
            ("yesterday-ish", DAY2[1]),
            "error: --from/--to are not valid timestamp with time zone values: invalid input "
            'syntax for type timestamp with time zone: "yesterday-ish"',
        ),
    ],
    ids=["no-primary-key", "no-column", "empty-range", "bad-timestamp"],
)
def test_repair_refuses_bad_requests_before_writing(
    pg: PgServer,
    cli: Cli,
    file_repo_url: str,
    table: str,
    column: str,
    bounds: tuple[str, str],
    message: str,
) -> None:
    live = sample_db(pg, rows=60)
    backup_id = backup(cli, live, file_repo_url)
    pg.execute(
        dbname_of(live),
        "DELETE FROM audit_log",
        "DELETE FROM app.documents",
        "DELETE FROM transformations",
    )
    before = table_checksums(pg, dbname_of(live))
    result = cli(*_repair_args(file_repo_url, backup_id, live, table, column, bounds))
    assert result.code == 2
    assert result.err_lines == [message]
    assert table_checksums(pg, dbname_of(live)) == before


# --- corruption -------------------------------------------------------------------------------
def _object_path(repo_url: str, backup_id: str, name: str) -> tuple[Path, str]:
    manifest = Repository.open(repo_url).get(backup_id)
    entry = manifest.object(name)
    assert entry is not None
    return Path(repo_url.removeprefix("file://")) / entry.key, entry.key


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "flip-middle":
        data[len(data) // 2] ^= 0x55
    elif how == "flip-last":
        data[-1] ^= 0x01
    elif how == "truncate":
        del data[-100:]
    elif how == "delete":
        path.unlink()
        return
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("compression", ["zstd", "none"])
@pytest.mark.parametrize("how", ["flip-middle", "flip-last", "truncate", "delete"])
def test_damaged_object_fails_restore_and_verify_and_restores_nothing(
    pg: PgServer, cli: Cli, file_repo_url: str, compression: str, how: str
) -> None:
    src = sample_db(pg, rows=400)
    backup_id = backup(cli, src, file_repo_url, "--compression", compression)
    path, key = _object_path(file_repo_url, backup_id, "database.dump")
    _damage(path, how)

    target = pg.create_database("victim")
    result = restore(cli, file_repo_url, backup_id, target)
    assert result.code == 7, result.err
    errors_ = [line for line in result.err_lines if line.startswith("error:")]
    assert len(errors_) == 1 and key in errors_[0]
    assert cli.termination()["error"] == "IntegrityCheckFailed"
    assert user_table_names(pg, dbname_of(target)) == []  # one transaction: nothing restored
    assert rows(pg, target, "SELECT count(*) FROM pg_largeobject_metadata") == [(0,)]

    verify = cli("backups", "verify", backup_id, "--repo", file_repo_url)
    assert verify.code == 7
    assert verify.err_lines[-1].startswith(f"error: backup {backup_id}: object {key} is ")

    created = restore(
        cli, file_repo_url, backup_id, pg.dsn(f"created_{how.replace('-', '_')}"), "--create"
    )
    assert created.code == 7
    assert not pg.database_exists(f"created_{how.replace('-', '_')}")  # dropped again


@pytest.mark.parametrize("how", ["flip-middle", "flip-last"])
def test_damaged_table_object_restores_no_table(
    pg: PgServer, cli: Cli, file_repo_url: str, how: str
) -> None:
    src = sample_db(pg, rows=400)
    backup_id = backup(
        cli,
        src,
        file_repo_url,
        "--compression",
        "none",
        "--table",
        "analytics",
        "--table",
        "transformations",
    )
    path, key = _object_path(file_repo_url, backup_id, "table.public.transformations.dump")
    _damage(path, how)
    target = pg.create_database("victim_tables")
    result = restore(cli, file_repo_url, backup_id, target)
    assert result.code == 7, result.err
    assert key in result.err_lines[-1]
    assert user_table_names(pg, dbname_of(target)) == []  # analytics was not committed either


@pytest.mark.parametrize("how", ["flip-middle", "flip-last", "truncate"])
def test_damaged_object_fails_repair_and_inserts_nothing(
    pg: PgServer, cli: Cli, file_repo_url: str, how: str
) -> None:
    live = sample_db(pg, rows=400)
    backup_id = backup(cli, live, file_repo_url, "--compression", "none")
    pg.execute(
        dbname_of(live),
        "DELETE FROM app.documents",
        "DELETE FROM transformations WHERE id BETWEEN 25 AND 48",
    )
    before = table_checksums(pg, dbname_of(live))
    path, key = _object_path(file_repo_url, backup_id, "database.dump")
    _damage(path, how)
    result = cli(*_repair_args(
        file_repo_url, backup_id, live, "transformations", "created_at", DAY2
    ))
    assert result.code == 7, result.err
    assert key in result.err_lines[-1]
    assert table_checksums(pg, dbname_of(live)) == before
