"""PostgreSQL backups end to end: real clusters, real pg_dump / pg_basebackup, real repositories.

Restores here only prove what a backup contains; restore behaviour itself is in
test_postgres_restore.py and the command line's error contract in test_cli.py.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import s3 as s3_fixtures
from tests.fixtures.gpg import GpgKeys
from tests.fixtures.postgres import (
    SAMPLE_ROLE,
    SAMPLE_TABLES,
    SECRET_MARKER,
    Cli,
    PgFactory,
    PgServer,
    chown_postgres,
    clean_env,
    large_objects,
    populate_sample,
    sequence_values,
    table_checksums,
    user_table_names,
)
from tests.fixtures.procs import children
from tonebridge_dr.runner.engines.postgres import basebackup
from tonebridge_dr.runner.repository.catalog import Repository

HOT_TABLES = ("transformations", "analytics", "usage_tracking")


def dbname_of(dsn: str) -> str:
    return dsn.rsplit("dbname=", 1)[1]


def sample_db(pg: PgServer, rows: int = 300) -> str:
    dsn = pg.create_database("src")
    populate_sample(pg, dbname_of(dsn), rows=rows)
    return dsn


def backup(cli: Cli, dsn: str, repo: str, *extra: str) -> dict[str, Any]:
    result = cli("backup", "postgres", "--dsn", dsn, "--repo", repo, "--json", *extra)
    assert result.code == 0, result.err
    data: dict[str, Any] = result.json
    return data


def stored_bytes(root: Path) -> list[tuple[Path, bytes]]:
    return [(path, path.read_bytes()) for path in sorted(root.rglob("*")) if path.is_file()]


# --- logical ---------------------------------------------------------------------------------
def test_logical_round_trip_into_a_fresh_cluster(
    pg: PgServer, pg_factory: PgFactory, cli: Cli, file_repo_url: str
) -> None:
    src = sample_db(pg)
    db = dbname_of(src)
    result = backup(cli, src, file_repo_url)
    for key in ("id", "engine", "method", "size_bytes", "started_at", "finished_at"):
        assert key in result
    assert (result["engine"], result["method"], result["databases"]) == (
        "postgres",
        "logical",
        [db],
    )
    assert cli.termination()["id"] == result["id"]

    target = pg_factory.start("roundtrip-target")  # same admin password: PGPASSWORD fits both
    assert not target.query("postgres", "SELECT 1 FROM pg_roles WHERE rolname = %s", (SAMPLE_ROLE,))
    restored = cli(
        "restore",
        "postgres",
        "--repo",
        file_repo_url,
        "--backup",
        result["id"],
        "--target-dsn",
        target.dsn("restored"),
        "--create",
        "--globals",
        "--with-owners",
        "--json",
    )
    assert restored.code == 0, restored.err
    assert restored.json["created_database"] is True
    assert restored.json["globals_restored"] is True

    assert table_checksums(target, "restored") == table_checksums(pg, db)
    assert all(count > 0 for count, _ in table_checksums(pg, db).values())
    assert sequence_values(target, "restored") == sequence_values(pg, db)
    assert large_objects(target, "restored") == large_objects(pg, db)
    assert len(large_objects(pg, db)) == 1
    # roles come back from globals.sql, grants with --with-owners
    assert target.query("postgres", "SELECT 1 FROM pg_roles WHERE rolname = %s", (SAMPLE_ROLE,))
    grant = target.query(
        "restored",
        "SELECT has_table_privilege(%s, 'public.transformations', 'SELECT')",
        (SAMPLE_ROLE,),
    )
    assert grant == [(True,)]
    # the restored database is writable and its sequences continue where the source stood
    target.execute("restored", "INSERT INTO transformations (created_at) VALUES (now())")
    assert target.query("restored", "SELECT max(id) FROM transformations") == [(301,)]


def test_logical_manifest_records_versions_database_and_tables(
    pg: PgServer, cli: Cli, file_repo_url: str
) -> None:
    src = sample_db(pg, rows=20)
    result = backup(cli, src, file_repo_url)
    manifest = Repository.open(file_repo_url).get(result["id"])
    assert re.fullmatch(r"15\.\d+", manifest.server_version or "")
    assert manifest.tools["pg_dump"].startswith("pg_dump (PostgreSQL) 15.")
    assert manifest.tools["pg_dumpall"].startswith("pg_dumpall (PostgreSQL) 15.")
    assert manifest.databases == [dbname_of(src)]
    assert {o.name for o in manifest.objects} == {"database.dump", "globals.sql"}
    assert all(o.key.endswith(".zst") for o in manifest.objects)
    assert manifest.extra["scope"] == "database"
    assert manifest.extra["database"] == dbname_of(src)
    assert manifest.extra["consistent_snapshot"] is True
    listed = {f"{t['schema']}.{t['name']}" for t in manifest.extra["tables"]}
    assert listed == set(SAMPLE_TABLES)
    documents = next(t for t in manifest.extra["tables"] if t["name"] == "documents")
    assert [fk["references"]["name"] for fk in documents["foreign_keys"]] == ["transformations"]
    # pg_dump wrote an uncompressed custom archive: the repository compressed it
    raw = b"".join(Repository.open(file_repo_url).read_object(manifest, "database.dump"))
    assert raw.startswith(b"PGDMP")
    entry = manifest.object("database.dump")
    assert entry is not None and entry.raw_size == len(raw) and entry.size < entry.raw_size


def test_hot_table_backup_has_one_object_per_table(
    pg: PgServer, cli: Cli, file_repo_url: str
) -> None:
    src = sample_db(pg, rows=50)
    db = dbname_of(src)
    args = [arg for table in HOT_TABLES for arg in ("--table", table)]
    result = backup(cli, src, file_repo_url, *args)
    manifest = Repository.open(file_repo_url).get(result["id"])
    assert {o.name for o in manifest.objects} == {
        "table.public.transformations.dump",
        "table.public.analytics.dump",
        "table.public.usage_tracking.dump",
        "globals.sql",
    }
    assert manifest.extra["scope"] == "tables"
    assert [t["name"] for t in manifest.extra["tables"]] == list(HOT_TABLES)

    # restoring the whole backup gives exactly those tables, with their sequences
    target = pg.create_database("hot")
    restored = cli(
        "restore",
        "postgres",
        "--repo",
        file_repo_url,
        "--backup",
        result["id"],
        "--target-dsn",
        target,
        "--json",
    )
    assert restored.code == 0, restored.err
    assert user_table_names(pg, dbname_of(target)) == [f"public.{t}" for t in sorted(HOT_TABLES)]
    hot = {k: v for k, v in SAMPLE_TABLES.items() if k.split(".")[1] in HOT_TABLES}
    assert table_checksums(pg, dbname_of(target), hot) == table_checksums(pg, db, hot)
    assert pg.query(dbname_of(target), "SELECT last_value FROM transformations_id_seq") == [(50,)]


def test_unknown_table_is_a_usage_error_and_stores_nothing(
    pg: PgServer, cli: Cli, file_repo_url: str
) -> None:
    src = sample_db(pg, rows=5)
    result = cli(
        "backup", "postgres", "--dsn", src, "--repo", file_repo_url, "--table", "no_such_table"
    )
    assert result.code == 2
    assert result.err_lines == [
        "error: table 'no_such_table' does not exist in the source database"
    ]
    assert not list(Path(file_repo_url.removeprefix("file://")).rglob("*.zst"))


def test_non_superuser_backup_keeps_passwords_out_of_globals(
    pg: PgServer, cli: Cli, file_repo_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = sample_db(pg, rows=5)
    pg.execute(
        "postgres",
        "DO $$ BEGIN CREATE ROLE tbdr_backup LOGIN PASSWORD 'backup-role-pw' "
        "IN ROLE pg_read_all_data; EXCEPTION WHEN duplicate_object THEN NULL; END $$",
    )
    # pg_read_all_data covers tables, not large objects (PostgreSQL 15): grant those
    [(lo_oid,)] = pg.query(dbname_of(src), "SELECT oid FROM pg_largeobject_metadata")
    pg.execute(dbname_of(src), f"GRANT SELECT ON LARGE OBJECT {lo_oid} TO tbdr_backup")
    monkeypatch.setenv("PGPASSWORD", "backup-role-pw")
    dsn = src.replace("user=postgres", "user=tbdr_backup")
    result = backup(cli, dsn, file_repo_url)
    repo = Repository.open(file_repo_url)
    manifest = repo.get(result["id"])
    globals_sql = b"".join(repo.read_object(manifest, "globals.sql")).decode()
    assert "CREATE ROLE tbdr_backup;" in globals_sql
    assert "PASSWORD" not in globals_sql.upper().replace("NOPASSWORD", "")
    assert "SCRAM-SHA-256" not in globals_sql
    assert manifest.extra["role_passwords"] is False

    monkeypatch.setenv("PGPASSWORD", pg.password)
    with_passwords = backup(cli, src, file_repo_url, "--role-passwords")
    manifest = repo.get(with_passwords["id"])
    assert "SCRAM-SHA-256$" in b"".join(repo.read_object(manifest, "globals.sql")).decode()


def test_logical_backup_to_s3(pg: PgServer, cli: Cli, s3_repo_url: str) -> None:
    src = sample_db(pg, rows=40)
    result = backup(cli, src, s3_repo_url, "--storage-class", "STANDARD_IA")
    assert result["storage_class"] == "STANDARD_IA"
    listed = cli("backups", "list", "--repo", s3_repo_url, "--json")
    assert [b["id"] for b in listed.json] == [result["id"]]
    target = pg.create_database("from_s3")
    restored = cli(
        "restore", "postgres", "--repo", s3_repo_url, "--backup", "latest", "--target-dsn", target
    )
    assert restored.code == 0, restored.err
    assert table_checksums(pg, dbname_of(target)) == table_checksums(pg, dbname_of(src))


# --- encryption ------------------------------------------------------------------------------
def test_encrypted_backup_holds_no_plaintext_and_needs_the_key(
    pg: PgServer, cli: Cli, tmp_path: Path, gpg_keys: GpgKeys, other_gpg_keys: GpgKeys
) -> None:
    src = sample_db(pg, rows=20)
    plain_repo, secret_repo = tmp_path / "plain", tmp_path / "secret"
    # control: without encryption (and without compression) the marker is in the stored bytes
    backup(cli, src, plain_repo.as_uri(), "--compression", "none")
    assert any(SECRET_MARKER.encode() in data for _, data in stored_bytes(plain_repo))

    result = backup(
        cli,
        src,
        secret_repo.as_uri(),
        "--compression",
        "none",
        "--encrypt-to",
        str(gpg_keys.public_key),
    )
    assert result["encrypted"] is True
    assert result["recipient_fingerprint"] == gpg_keys.fingerprint
    files = stored_bytes(secret_repo)
    assert any(path.name.endswith(".dump.gpg") for path, _ in files)
    for path, data in files:
        assert SECRET_MARKER.encode() not in data, path
        assert b"transformations" not in data or path.name == "manifest.json", path

    target = pg.create_database("decrypted")
    missing = cli(
        "restore",
        "postgres",
        "--repo",
        secret_repo.as_uri(),
        "--backup",
        "latest",
        "--target-dsn",
        target,
    )
    assert missing.code == 8
    assert len(missing.err_lines) == 1 and "--decrypt-key" in missing.err_lines[0]
    wrong = cli(
        "restore",
        "postgres",
        "--repo",
        secret_repo.as_uri(),
        "--backup",
        "latest",
        "--target-dsn",
        target,
        "--decrypt-key",
        str(other_gpg_keys.private_key),
    )
    assert wrong.code == 8, wrong.err
    assert wrong.err_lines[-1].startswith("error: ")
    assert user_table_names(pg, dbname_of(target)) == []

    right = cli(
        "restore",
        "postgres",
        "--repo",
        secret_repo.as_uri(),
        "--backup",
        "latest",
        "--target-dsn",
        target,
        "--decrypt-key",
        str(gpg_keys.private_key),
    )
    assert right.code == 0, right.err
    assert table_checksums(pg, dbname_of(target)) == table_checksums(pg, dbname_of(src))


# --- physical --------------------------------------------------------------------------------
def test_physical_backup_records_wal_and_starts_as_a_cluster(
    pg: PgServer,
    pg_factory: PgFactory,
    cli: Cli,
    file_repo_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    marker_db = dbname_of(pg.create_database("physical"))
    pg.execute(
        marker_db,
        "CREATE TABLE marker (id int PRIMARY KEY, note text)",
        "INSERT INTO marker VALUES (1, 'before the base backup')",
    )
    pg.execute(
        "postgres",
        "DO $$ BEGIN CREATE ROLE tbdr_repl LOGIN REPLICATION PASSWORD 'repl-role-pw'; "
        "EXCEPTION WHEN duplicate_object THEN NULL; END $$",
    )
    monkeypatch.setenv("PGPASSWORD", "repl-role-pw")  # a replication-only role suffices
    result = backup(
        cli, pg.dsn("postgres", user="tbdr_repl"), file_repo_url, "--method", "physical"
    )
    assert result["method"] == "physical"
    wal = result["wal"]
    lsn = re.compile(r"^[0-9A-F]+/[0-9A-F]+$")
    assert lsn.match(wal["start_lsn"]) and lsn.match(wal["stop_lsn"])
    assert basebackup.parse_lsn(wal["stop_lsn"]) > basebackup.parse_lsn(wal["start_lsn"])
    assert wal["timeline"] == 1
    assert re.fullmatch(r"00000001[0-9A-F]{16}", wal["start_wal_file"])
    assert wal["stop_wal_file"] >= wal["start_wal_file"]
    repo = Repository.open(file_repo_url)
    manifest = repo.get(result["id"])
    assert manifest.wal is not None and manifest.wal.start_lsn == wal["start_lsn"]
    assert f"START WAL LOCATION: {wal['start_lsn']}" in manifest.extra["backup_label"]
    assert manifest.tools["pg_basebackup"].startswith("pg_basebackup (PostgreSQL) 15.")

    root = pg_factory.new_root("physical-restore")
    datadir = root / "data"
    datadir.mkdir(mode=0o700)
    with subprocess.Popen(["tar", "-xf", "-", "-C", str(datadir)], stdin=subprocess.PIPE) as tar:
        assert tar.stdin is not None
        for chunk in repo.read_object(manifest, "base.tar"):
            tar.stdin.write(chunk)
        tar.stdin.close()
        assert tar.wait() == 0
    assert (datadir / "backup_label").exists()
    assert any((datadir / "pg_wal").glob("00000001*"))
    chown_postgres(root)
    restored = pg_factory.start_datadir("physical-restored", datadir)
    assert restored.query(marker_db, "SELECT note FROM marker") == [("before the base backup",)]


# --- failures while writing ------------------------------------------------------------------
class KillableProxy:
    """A TCP proxy to an S3 endpoint that dies for good after `kill_after` request bytes.

    It stands in for the endpoint: when it dies the listening socket and every open
    connection are closed, so the client sees the endpoint vanish mid-upload, while
    the moto server behind it keeps its state for the test to inspect.
    """

    def __init__(self, upstream_port: int, kill_after: int) -> None:
        self.upstream_port = upstream_port
        self.kill_after = kill_after
        self.sent = 0
        self.dead = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.dead.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, counted: bool) -> None:
        try:
            while not self.dead.is_set():
                data = src.recv(65536)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                if counted:
                    with self._lock:
                        self.sent += len(data)
                        if self.sent > self.kill_after:
                            self.kill()
                            return
                dst.sendall(data)
        except OSError:
            return

    def kill(self) -> None:
        self.dead.set()
        for sock in [self.listener, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


def test_s3_endpoint_dying_mid_upload_leaves_no_backup(
    pg: PgServer, cli: Cli, start_moto: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = pg.create_database("bigish")
    # ~24 MiB of dump text: three 8 MiB parts, so the upload is a multipart one
    pg.execute(
        dbname_of(src),
        "CREATE TABLE filler (id int PRIMARY KEY, body text)",
        "INSERT INTO filler SELECT i, repeat(md5(i::text), 24) FROM generate_series(1, 32000) AS i",
    )
    server = start_moto()
    bucket = s3_fixtures.new_bucket(server.url)
    url = f"s3://{bucket}/repo"
    proxy = KillableProxy(server.port, kill_after=12 * 1024 * 1024)  # during part two
    s3_fixtures.s3_env(monkeypatch, proxy.url)

    failed = cli("backup", "postgres", "--dsn", src, "--repo", url, "--compression", "none")
    assert proxy.dead.is_set()
    assert failed.code == 4, failed.err
    assert failed.err_lines[-1].startswith("error: cannot reach S3 endpoint")
    assert "upload part" in failed.err_lines[-1]
    assert len([line for line in failed.err_lines if line.startswith("error:")]) == 1
    assert cli.termination()["error"] == "StorageError"

    # the moto server behind the dead endpoint kept everything that reached it:
    # parts of an upload never completed, but no object and no manifest
    direct = s3_fixtures.client(server.url)
    keys = [o["Key"] for o in direct.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert not any(key.endswith("manifest.json") for key in keys)
    assert not any(key.endswith("database.dump") for key in keys)
    assert direct.list_multipart_uploads(Bucket=bucket).get("Uploads")  # it really was mid-upload
    s3_fixtures.s3_env(monkeypatch, server.url)
    listed = cli("backups", "list", "--repo", url, "--json")
    assert listed.code == 0 and listed.json == []

    # a later backup on a working endpoint succeeds and is the only one listed
    later = backup(cli, src, url, "--compression", "none")
    listed = cli("backups", "list", "--repo", url, "--json")
    assert [b["id"] for b in listed.json] == [later["id"]]


def _wait_for(predicate: Any, what: str) -> Any:
    for _ in range(600):  # a wait-until with a generous bound, not a timing assertion
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what}")


def test_sigterm_stops_pg_dump_and_leaves_no_backup(
    pg: PgServer, file_repo_url: str, tmp_path: Path
) -> None:
    src = sample_db(pg, rows=10)
    db = dbname_of(src)
    env = clean_env(PGPASSWORD=pg.password, TONEBRIDGE_DR_TERMINATION_LOG=str(tmp_path / "tl"))
    with pg.connect(db) as locker:
        locker.execute("LOCK TABLE transformations IN ACCESS EXCLUSIVE MODE")  # pg_dump waits
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tonebridge_dr.cli",
                "backup",
                "postgres",
                "--dsn",
                src,
                "--repo",
                file_repo_url,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            _wait_for(
                lambda: pg.query(
                    "postgres",
                    "SELECT 1 FROM pg_stat_activity WHERE datname = %s "
                    "AND application_name = 'pg_dump' AND wait_event_type = 'Lock'",
                    (db,),
                ),
                "pg_dump to wait for its lock",
            )
            tools = children(proc.pid)
            assert tools, "pg_dump should be a child of the runner"
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        locker.rollback()
    assert proc.returncode == 143, err
    lines = [line for line in err.decode().splitlines() if line.startswith("error:")]
    assert lines == ["error: terminated by SIGTERM; work in progress was rolled back"]
    for pid in tools:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in _state(pid)
    assert Repository.open(file_repo_url).list_backups() == []
    root = Path(file_repo_url.removeprefix("file://"))
    left = [p.relative_to(root) for p in root.rglob("*") if p.is_file()]
    # Nothing but the run's audit record, which says it was cancelled.
    (record,) = left
    assert record.parts[0] == "audit"
    data = json.loads((root / record).read_text())
    assert (data["outcome"], data["error"]["reason"], data["exit_code"]) == (
        "failed", "Cancelled", 143
    )


def _state(pid: int) -> str:
    with contextlib.suppress(OSError):
        return (Path(f"/proc/{pid}") / "status").read_text()
    return "zombie"
