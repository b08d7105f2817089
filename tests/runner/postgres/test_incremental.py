"""Incremental physical backups end to end: real PostgreSQL 15, a file:// repository.

One archiving cluster per module (autovacuum off, so nothing rewrites pages behind
the test's back): a chain of a full backup and three incrementals with updates,
drops and new tables between them, then, with no write in between, a plain
(non-incremental) physical backup of the same point. Restoring the last
incremental and the plain backup must give byte-identical relation files and the
same rows; a chunk corrupted in the middle backup must fail the restore before
any server starts; retention must keep the whole chain.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.pg_wal import restore_started, start_archiving, switch_wal, wait_archived
from tests.fixtures.postgres import ADMIN_PASSWORD, PgFactory, PgServer, chown_postgres
from tonebridge_dr.runner import errors
from tonebridge_dr.runner.codecs import pipeline
from tonebridge_dr.runner.engines.postgres import basebackup, incremental
from tonebridge_dr.runner.engines.postgres.wal import pitr
from tonebridge_dr.runner.repository import Manifest, Repository
from tonebridge_dr.runner.repository.retention import RetentionPolicy

pytestmark = pytest.mark.timeout(900)

OPTIONS = basebackup.PhysicalBackupOptions(schedule="nightly")
#: Relation data of every database and the shared catalogs, minus what a server rewrites
#: on every start or stop whatever the data (the control file, the relcache init files).
VOLATILE = {"pg_control", "pg_internal.init"}


@dataclasses.dataclass
class World:
    server: PgServer
    repo_url: str
    chain: list[Manifest]  # full, inc1, inc2, inc3
    plain: Manifest  # a non-incremental physical backup right after inc3
    rows: list[dict[str, tuple[int, str | None]]]  # fingerprints at each chain backup

    @property
    def repo(self) -> Repository:
        return Repository.open(self.repo_url, create=False)


TABLES = ("keep", "churn", "doomed", "mid", "late", "last")


def fingerprints(server: PgServer) -> dict[str, tuple[int, str | None]]:
    """(rows, md5 of the rows in key order) per table; (-1, None) for a missing one."""
    out: dict[str, tuple[int, str | None]] = {}
    with server.connect("app") as conn:
        for table in TABLES:
            row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
            if not row or not row[0]:
                out[table] = (-1, None)
                continue
            got = conn.execute(
                f"SELECT count(*), md5(string_agg(t::text, '|' ORDER BY id)) FROM {table} t"
            ).fetchone()
            assert got is not None
            out[table] = (int(got[0]), got[1])
    return out


def _table(server: PgServer, name: str, rows: int) -> None:
    server.execute(
        "app",
        f"CREATE TABLE {name} (id int PRIMARY KEY, body text NOT NULL)",
        f"INSERT INTO {name} SELECT i, repeat(md5(i::text || '{name}'), 8) "
        f"FROM generate_series(1, {rows}) AS i",
    )


def _next(world_repo: Repository, server: PgServer) -> Manifest:
    return incremental.backup_incremental(world_repo, server.dsn(), OPTIONS)


@pytest.fixture(scope="module")
def world(pg_factory: PgFactory, postgres_runs_cli: None) -> Iterator[World]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PGPASSWORD", ADMIN_PASSWORD)
        repo_dir = pg_factory.new_root("incr-repo") / "repo"
        repo_dir.mkdir()
        chown_postgres(repo_dir)
        url = repo_dir.as_uri()
        server = start_archiving(pg_factory, "incr", url, autovacuum="off")
        server.execute("postgres", "CREATE DATABASE app")
        _table(server, "keep", 20000)  # ~6 MB: more than one chunk, never changed
        _table(server, "churn", 3000)
        _table(server, "doomed", 2000)
        repo = Repository.open(url)
        chain = [_next(repo, server)]
        rows = [fingerprints(server)]
        # inc1: updates, and a table that never changes again (inc3 must reach into inc1)
        server.execute("app", "UPDATE churn SET body = upper(body) WHERE id % 7 = 0")
        _table(server, "mid", 1500)
        chain.append(_next(repo, server))
        rows.append(fingerprints(server))
        # inc2: a dropped table, inserts, a new table
        server.execute(
            "app",
            "DROP TABLE doomed",
            "INSERT INTO churn SELECT i, 'new ' || i FROM generate_series(3001, 3500) AS i",
        )
        _table(server, "late", 800)
        chain.append(_next(repo, server))
        rows.append(fingerprints(server))
        # inc3: deletes and a vacuum (pages change in place), one more table
        server.execute("app", "DELETE FROM churn WHERE id % 5 = 0", "VACUUM churn")
        _table(server, "last", 300)
        chain.append(_next(repo, server))
        # Right away: even a read (the fingerprints) sets hint bits, which the plain
        # backup's checkpoint would write.
        plain = basebackup.backup_physical(repo, server.dsn(), basebackup.PhysicalBackupOptions())
        rows.append(fingerprints(server))
        last = switch_wal(server)
        wait_archived(server, last)
        yield World(server, url, chain, plain, rows)


def data_checksums(data_dir: Path) -> dict[str, str]:
    """SHA-256 of every file under base/ and global/ (relation data), minus VOLATILE."""
    out = {}
    for top in ("base", "global"):
        for path in sorted((data_dir / top).rglob("*")):
            if path.is_file() and path.name not in VOLATILE:
                out[str(path.relative_to(data_dir))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def test_the_chain_is_a_full_and_three_incrementals(world: World) -> None:
    full, *incs = world.chain
    info = [m.extra[incremental.EXTRA_KEY] for m in world.chain]
    assert [i["type"] for i in info] == ["full", "incremental", "incremental", "incremental"]
    assert full.object(incremental.BASE_OBJECT) is not None  # restorable like any full
    assert all(i["full"] == full.id for i in info)
    assert [i["parent"] for i in info] == [None, *(m.id for m in world.chain[:-1])]
    for inc in incs:
        assert inc.object(incremental.CHUNKS_OBJECT) is not None
        assert inc.object(incremental.BASE_OBJECT) is None
        assert inc.extra[incremental.EXTRA_KEY]["reused_chunks"] > 0
        # Only changes are stored: far less than the full's data.
        assert inc.object(incremental.CHUNKS_OBJECT).raw_size < full.object("base.tar").raw_size / 2
    # "mid" never changed after inc1, so the last incremental reads inc1's chunks.
    assert world.chain[1].id in world.chain[3].depends_on
    assert full.id in world.chain[3].depends_on


def _restore(pg_factory: PgFactory, world: World, name: str, backup: Manifest) -> PgServer:
    server, result = restore_started(
        pg_factory, world.repo, name, pitr.Target("latest"), backup_id=backup.id,
        stop_after=True,
    )
    assert result["backup_id"] == backup.id and result["stopped"] is True
    return server


def test_the_last_incremental_restores_byte_identical_to_a_plain_backup(
    world: World, pg_factory: PgFactory
) -> None:
    from_chain = _restore(pg_factory, world, "incr-chain", world.chain[-1])
    from_plain = _restore(pg_factory, world, "incr-plain", world.plain)
    chain_sums = data_checksums(from_chain.datadir)
    plain_sums = data_checksums(from_plain.datadir)
    assert len(chain_sums) > 100
    assert chain_sums == plain_sums
    for server in (from_chain, from_plain):
        server.start()
        try:
            assert fingerprints(server) == world.rows[-1]
        finally:
            server.stop()
    assert world.rows[-1]["doomed"] == (-1, None) and world.rows[-1]["last"][0] == 300


def test_a_middle_incremental_restores_its_own_point(world: World, pg_factory: PgFactory) -> None:
    # Target: the end of inc2's own WAL, so later changes are not replayed.
    inc2 = world.chain[2]
    assert inc2.wal is not None
    server, _ = restore_started(
        pg_factory, world.repo, "incr-mid",
        pitr.Target("lsn", lsn=basebackup.parse_lsn(inc2.wal.stop_lsn)), backup_id=inc2.id,
    )
    try:
        assert fingerprints(server) == world.rows[2]
    finally:
        server.stop()


def _tamper_chunk(repo: Repository, backup: Manifest) -> None:
    """Flip one byte of `backup`'s chunks.bin and store it re-encoded, with a manifest that
    matches the new object: only the chunk's own SHA-256 in files.json can notice."""
    entry = backup.object(incremental.CHUNKS_OBJECT)
    assert entry is not None
    raw = bytearray(b"".join(repo.read_object(backup, incremental.CHUNKS_OBJECT)))
    raw[len(raw) // 2] ^= 0x01
    stored = b"".join(pipeline.encode(iter([bytes(raw)]), compression=backup.compression,
                                      encrypt_to=None, level=None))
    repo.storage.put_bytes(entry.key, stored)
    document = json.loads(repo.storage.get_bytes(backup.key))
    for obj in document["objects"]:
        if obj["name"] == incremental.CHUNKS_OBJECT:
            obj["size"] = len(stored)
            obj["sha256"] = hashlib.sha256(stored).hexdigest()
    repo.storage.put_bytes(backup.key, json.dumps(document).encode())


@pytest.mark.parametrize("how", ["chunk", "object"])
def test_a_corrupt_middle_backup_fails_the_restore_before_the_server_starts(
    world: World, pg_factory: PgFactory, how: str
) -> None:
    copy_dir = pg_factory.new_root(f"incr-corrupt-{how}") / "repo"
    shutil.copytree(Path(world.repo_url.removeprefix("file://")), copy_dir)
    chown_postgres(copy_dir)
    repo = Repository.open(copy_dir.as_uri(), create=False)
    middle = repo.get(world.chain[1].id)
    if how == "chunk":
        _tamper_chunk(repo, middle)
    else:  # the stored bytes: the object's own SHA-256 no longer matches
        key = middle.object(incremental.CHUNKS_OBJECT).key  # type: ignore[union-attr]
        data = bytearray(repo.storage.get_bytes(key))
        data[len(data) // 2] ^= 0x01
        repo.storage.put_bytes(key, bytes(data))
    root = pg_factory.new_root(f"incr-corrupt-target-{how}")
    with pytest.raises(errors.IntegrityError) as caught:
        pitr.restore_physical(
            repo,
            pitr.RestoreOptions(
                data_dir=root / "data", target=pitr.Target("latest"),
                backup_id=world.chain[-1].id, start=True, timeout=120,
            ),
        )
    message = str(caught.value)
    assert middle.id in message
    if how == "chunk":  # the object is intact: the chunk's own checksum caught it
        assert "does not match its SHA-256" in message
    # Nothing started, nothing left: the failed assembly removed what it wrote.
    assert not (root / "data").exists() or not any((root / "data").iterdir())


def test_retention_keeps_whole_chains(world: World) -> None:
    later = max(m.started_at for m in world.chain) + dt.timedelta(days=1)
    report = world.repo.prune(
        RetentionPolicy(keep_last=1), now=later, dry_run=True, engine="postgres",
        method="physical",
    )
    assert world.plain.id in report.kept  # the newest
    # The plain backup needs nothing; the chain is of schedule "nightly", whose newest is inc3.
    ids = [m.id for m in world.chain]
    assert set(ids) <= set(report.kept)
    assert report.deleted == []
    for backup_id in ids[:-1]:
        assert report.reasons[backup_id][0].startswith("chain-of:")


def test_a_new_full_starts_a_chain_once_the_old_full_is_too_old(
    world: World, pg_factory: PgFactory
) -> None:
    copy_dir = pg_factory.new_root("incr-fullevery") / "repo"
    shutil.copytree(Path(world.repo_url.removeprefix("file://")), copy_dir)
    repo = Repository.open(copy_dir.as_uri(), create=False)
    full = world.chain[0]
    manifest = incremental.backup_incremental(
        repo, world.server.dsn(), OPTIONS, full_every=dt.timedelta(days=7),
        now=full.started_at + dt.timedelta(days=7, seconds=1),
    )
    assert manifest.extra[incremental.EXTRA_KEY]["type"] == "full"
    assert manifest.depends_on == ()
