"""The backup repository against real backends: file:// and S3 (moto server on 127.0.0.1)."""

from __future__ import annotations

import datetime as dt
import json
import random
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.codecs import pipeline
from tonebridge_dr.runner.repository import (
    Manifest,
    Repository,
    RetentionPolicy,
    WalRange,
    integrity,
)
from tonebridge_dr.runner.repository import manifest as manifests
from tonebridge_dr.runner.repository.catalog import candidate_of
from tonebridge_dr.runner.storage import open_storage
from tonebridge_dr.runner.storage.base import ObjectInfo, Storage

UTC = dt.UTC
MARKER = b"--END-OF-DUMP-7f3a--"
T0 = dt.datetime(2026, 11, 29, 2, 41, 0, tzinfo=UTC)


def payload(size: int, seed: int = 1) -> bytes:
    """Incompressible bytes (so stored objects span several 1 MiB read chunks) + MARKER."""
    return random.Random(seed).randbytes(size) + MARKER


def chunked(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for pos in range(0, len(data), size):
        yield data[pos : pos + size]


class Recording(Storage):
    """Our Storage interface over a real backend, recording calls; can fail a chosen delete."""

    def __init__(self, inner: Storage, *, fail_delete_number: int | None = None) -> None:
        super().__init__(inner.url)
        self.inner = inner
        self.calls: list[tuple[str, str]] = []
        self.fail_delete_number = fail_delete_number
        self.deletes = 0

    def put_stream(
        self, key: str, chunks: Iterable[bytes], *, storage_class: str | None = None
    ) -> int:
        self.calls.append(("put", key))
        return self.inner.put_stream(key, chunks, storage_class=storage_class)

    def get_stream(self, key: str) -> Iterator[bytes]:
        self.calls.append(("get", key))
        return self.inner.get_stream(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self.calls.append(("list", prefix))
        return self.inner.list(prefix)

    def head(self, key: str) -> ObjectInfo | None:
        self.calls.append(("head", key))
        return self.inner.head(key)

    def delete(self, key: str) -> None:
        self.deletes += 1
        if self.deletes == self.fail_delete_number:
            raise errors.StorageError(f"injected failure deleting {key}")
        self.calls.append(("delete", key))
        self.inner.delete(key)


@pytest.fixture(params=["file", "s3"])
def repo_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_repo_url"))


@pytest.fixture
def repo(repo_url: str) -> Repository:
    return Repository.open(repo_url)


def keys(repo: Repository, prefix: str = "") -> list[str]:
    return [info.key for info in repo.storage.list(prefix)]


def write_backup(
    repo: Repository,
    objects: dict[str, bytes],
    *,
    now: dt.datetime = T0,
    engine: str = "postgres",
    method: str = "logical",
    extra: dict[str, Any] | None = None,
    **begin: Any,
) -> Manifest:
    with repo.begin(engine=engine, method=method, now=now, **begin) as writer:
        for name, data in objects.items():
            writer.put_object(name, chunked(data))
        return writer.commit(
            databases=["app"],
            server_version="16.4",
            tools={"pg_dump": "16.4"},
            finished_at=now + dt.timedelta(seconds=90),
            extra=extra,
        )


def read_all(repo: Repository, manifest: Manifest, name: str, **kw: Any) -> bytes:
    return b"".join(repo.read_object(manifest, name, **kw))


# Writing, listing, reading ----------------------------------------------------


def test_write_commit_list_get_latest(repo: Repository) -> None:
    dump, globals_sql = payload(3 * 1024 * 1024), b"CREATE ROLE app;\n" * 1000
    first = write_backup(repo, {"database.dump": dump, "globals.sql": globals_sql})
    assert first.id == "20261129T024100Z"
    assert [o.key for o in first.objects] == [
        "base/20261129T024100Z/database.dump.zst",
        "base/20261129T024100Z/globals.sql.zst",
    ]
    assert first.objects[0].raw_size == len(dump)
    assert first.objects[1].raw_size == len(globals_sql)
    assert first.objects[1].size < len(globals_sql)  # compressed
    stored = repo.storage.get_bytes(first.objects[0].key)
    assert first.objects[0].size == len(stored)
    assert first.size_bytes == sum(o.size for o in first.objects)
    assert first.duration_seconds == 90
    assert first.encryption is None and first.compression == "zstd"

    later = T0 + dt.timedelta(hours=1)
    second = write_backup(repo, {"database.dump": b"small"}, now=later)
    assert [m.id for m in repo.list_backups()] == [first.id, second.id]
    assert repo.get(first.id) == first
    assert repo.get("latest") == second
    assert repo.latest(engine="redis") is None
    assert read_all(repo, repo.get(first.id), "database.dump") == dump
    assert read_all(repo, first, "globals.sql") == globals_sql
    assert read_all(repo, second, "database.dump") == b"small"
    # Only objects and manifests remain: no claim markers, no temp files.
    assert keys(repo) == sorted(
        [o.key for o in first.objects + second.objects]
        + [manifests.manifest_key(first.id), manifests.manifest_key(second.id)]
    )
    report = repo.verify("latest")
    assert report.ok and report.objects_checked == 1
    assert report.bytes_read == second.size_bytes


def test_manifest_json_and_result(repo: Repository) -> None:
    wal = WalRange(start_lsn="0/2000028", stop_lsn="0/2000100", timeline=1)
    with repo.begin(engine="postgres", method="physical", now=T0) as writer:
        writer.put_object("base.tar", [b"tar bytes"])
        m = writer.commit(
            databases=[],
            server_version="16.4",
            tools={"pg_basebackup": "16.4"},
            wal=wal,
            extra={"label": "nightly"},
            finished_at=T0 + dt.timedelta(seconds=12.5),
        )
    raw = json.loads(repo.storage.get_bytes("base/20261129T024100Z/manifest.json"))
    assert list(raw) == [
        "format_version", "id", "engine", "method", "databases", "started_at", "finished_at",
        "server_version", "tool_version", "tools", "compression", "encryption", "storage_class",
        "schedule", "objects", "wal", "extra",
    ]  # fmt: skip
    assert raw["format_version"] == 1
    assert raw["started_at"] == "2026-11-29T02:41:00Z"
    assert raw["finished_at"] == "2026-11-29T02:41:12.500000Z"
    assert list(raw["objects"][0]) == ["name", "key", "size", "sha256", "raw_size"]
    assert raw["wal"]["timeline"] == 1 and raw["extra"] == {"label": "nightly"}
    result = m.result()
    assert result["id"] == "20261129T024100Z"
    assert result["started_at"] == "2026-11-29T02:41:00Z"
    assert result["finished_at"] == "2026-11-29T02:41:12Z"
    assert result["duration_seconds"] == 12.5
    assert result["size_bytes"] == m.size_bytes and result["objects"] == 1
    assert result["encrypted"] is False and result["method"] == "physical"
    assert result["schedule"] is None and result["tables"] == []
    assert json.loads(json.dumps(result)) == result
    assert Manifest.from_json(m.to_json()) == m


def test_manifest_is_written_last(repo_url: str) -> None:
    storage = Recording(open_storage(repo_url))
    repo = Repository(storage)
    m = write_backup(repo, {"database.dump": b"x" * 1000, "globals.sql": b"y"})
    puts = [key for op, key in storage.calls if op == "put"]
    assert puts[0].startswith(f"base/{m.id}/.claim-")
    assert puts[1:] == [o.key for o in m.objects] + [m.key]
    assert storage.calls[-1] == ("delete", puts[0])  # the claim goes after the manifest


def test_list_backups_is_one_list_plus_one_get_per_manifest(repo_url: str) -> None:
    storage = Recording(open_storage(repo_url))
    repo = Repository(storage)
    for hour in range(3):
        write_backup(repo, {"a.dump": b"a", "b.dump": b"b"}, now=T0 + dt.timedelta(hours=hour))
    storage.put_bytes("base/20261129T000000Z/a.dump.zst", b"orphan")
    storage.calls.clear()
    assert len(repo.list_backups()) == 3
    assert [op for op, _ in storage.calls] == ["list", "get", "get", "get"]
    assert storage.calls[0] == ("list", "base/")


# Failure while writing --------------------------------------------------------


def test_writer_that_raises_leaves_nothing(repo: Repository) -> None:
    with (
        pytest.raises(RuntimeError, match="dump failed"),
        repo.begin(engine="postgres", method="logical", now=T0) as writer,
    ):
        writer.put_object("globals.sql", [b"CREATE ROLE app;"])
        raise RuntimeError("dump failed")
    assert repo.list_backups() == []
    assert keys(repo) == []


def test_failing_source_stream_leaves_nothing(repo: Repository) -> None:
    def source() -> Iterator[bytes]:
        yield payload(2 * 1024 * 1024)
        raise errors.SourceError("pg_dump died")

    with (
        pytest.raises(errors.SourceError, match="pg_dump died"),
        repo.begin(engine="postgres", method="logical", now=T0) as writer,
    ):
        writer.put_object("globals.sql", [b"CREATE ROLE app;"])
        writer.put_object("database.dump", source())
    assert repo.list_backups() == []
    assert keys(repo) == []


def test_leaving_without_commit_leaves_nothing(repo: Repository) -> None:
    with repo.begin(engine="redis", method="rdb", now=T0) as writer:
        writer.put_object("dump.rdb", [b"REDIS0011"])
    assert keys(repo) == []
    with pytest.raises(RuntimeError, match="aborted"):
        writer.put_object("again.rdb", [b"x"])


def test_objects_without_manifest_do_not_exist(repo: Repository) -> None:
    with pytest.raises(errors.BackupNotFound, match="no complete backup"):
        repo.get("latest")
    write_backup(repo, {"database.dump": b"ok"})
    crashed = "20261130T000000Z"
    repo.storage.put_bytes(f"base/{crashed}/database.dump.zst", b"half a dump")
    assert [m.id for m in repo.list_backups()] == ["20261129T024100Z"]
    assert repo.get("latest").id == "20261129T024100Z"
    with pytest.raises(errors.BackupNotFound) as caught:
        repo.get(crashed)
    message = str(caught.value)
    assert crashed in message and repo.url in message and "backups list" in message


def test_unreadable_manifest_is_skipped_and_reported(repo: Repository) -> None:
    good = write_backup(repo, {"database.dump": b"ok"})
    future = json.loads(good.to_json())
    future["format_version"] = 2
    future["id"] = "20261201T000000Z"
    repo.storage.put_bytes("base/20261201T000000Z/manifest.json", json.dumps(future).encode())
    assert [m.id for m in repo.list_backups()] == [good.id]
    with pytest.raises(errors.IntegrityError, match="format_version 2 is not supported"):
        repo.get("20261201T000000Z")
    report = repo.prune(RetentionPolicy(keep_last=1), now=T0 + dt.timedelta(days=3))
    assert report.unreadable == ["20261201T000000Z"] and report.orphans == []
    assert repo.storage.exists("base/20261201T000000Z/manifest.json")


def test_invalid_input_fails_before_writing(repo: Repository, tmp_path: Path) -> None:
    with pytest.raises(errors.UsageError, match="unknown engine"):
        repo.begin(engine="mysql", method="logical")
    with pytest.raises(errors.UsageError, match="compression"):
        repo.begin(engine="postgres", method="logical", compression="lz4")
    with pytest.raises(errors.EncryptionError):
        repo.begin(engine="postgres", method="logical", encrypt_to=tmp_path / "missing.asc")
    assert keys(repo) == []
    with pytest.raises(errors.UsageError, match="invalid backup id"):
        repo.get("yesterday")
    with pytest.raises(errors.UsageError, match="invalid backup id"):
        repo.delete_backup("latest")
    with repo.begin(engine="postgres", method="logical", now=T0) as writer:
        for bad in ("a/b", ".hidden", "", "manifest.json", "x\n"):
            with pytest.raises(errors.UsageError, match="invalid object name"):
                writer.put_object(bad, [b"x"])
        writer.put_object("table.public.Order Lines.dump", [b"x"])
        with pytest.raises(errors.UsageError, match="already has"):
            writer.put_object("table.public.Order Lines.dump", [b"x"])
        m = writer.commit(databases=["app"], server_version=None, tools={})
        with pytest.raises(RuntimeError, match="committed"):
            writer.put_object("late.dump", [b"x"])
    assert read_all(repo, m, "table.public.Order Lines.dump") == b"x"
    with pytest.raises(errors.ObjectNotFound, match=r"has no object 'database\.dump'"):
        repo.read_object(m, "database.dump")


# Ids --------------------------------------------------------------------------


def test_id_collision_within_one_second(repo: Repository) -> None:
    first = write_backup(repo, {"a.dump": b"1"})
    second = write_backup(repo, {"a.dump": b"2"}, now=T0 + dt.timedelta(microseconds=500))
    assert (first.id, second.id) == ("20261129T024100Z", "20261129T024100Z-1")
    # Two writers open at once, neither has stored an object yet: their claims keep them apart.
    later = T0 + dt.timedelta(minutes=1)
    with repo.begin(engine="postgres", method="logical", now=later) as w1:
        with repo.begin(engine="postgres", method="logical", now=later) as w2:
            assert (w1.id, w2.id) == ("20261129T024200Z", "20261129T024200Z-1")
            w2.put_object("a.dump", [b"w2"])
            w2.commit(databases=[], server_version=None, tools={})
        w1.put_object("a.dump", [b"w1"])
        w1.commit(databases=[], server_version=None, tools={})
    listed = [m.id for m in repo.list_backups()]
    assert listed == [first.id, second.id, w1.id, w2.id]
    assert read_all(repo, repo.get(w1.id), "a.dump") == b"w1"


# Integrity ---------------------------------------------------------------------

DAMAGE = ["flip-first", "flip-middle", "flip-last", "truncate", "append", "delete"]


def damage(repo: Repository, key: str, how: str) -> None:
    data = bytearray(repo.storage.get_bytes(key))
    if how == "delete":
        repo.storage.delete(key)
        return
    if how.startswith("flip"):
        pos = {"flip-first": 0, "flip-middle": len(data) // 2, "flip-last": len(data) - 1}[how]
        data[pos] ^= 0x01
    elif how == "truncate":
        del data[-1000:]
    elif how == "append":
        data += b"\0"
    repo.storage.put_bytes(key, bytes(data))


@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_object_is_reported_and_never_restored(repo: Repository, how: str) -> None:
    dump = payload(3 * 1024 * 1024)
    m = write_backup(repo, {"globals.sql": b"CREATE ROLE app;\n", "database.dump": dump})
    entry = m.objects[1]
    damage(repo, entry.key, how)

    report = repo.verify(m.id)
    assert not report.ok and report.objects_checked == 2
    [problem] = report.problems
    assert problem.key == entry.key and problem.name == "database.dump"
    expected_kind = {"truncate": "truncated", "append": "size", "delete": "missing"}
    assert problem.kind == expected_kind.get(how, "checksum")
    named = re.escape(f"backup {m.id}: object {entry.key} is")
    with pytest.raises(errors.IntegrityError, match=named):
        report.raise_for_problems()
    assert report.result()["problems"][0]["key"] == entry.key

    received: list[bytes] = []
    with pytest.raises(errors.IntegrityError) as caught:
        for chunk in repo.read_object(m, "database.dump"):
            received.append(chunk)
    message = str(caught.value)
    assert f"object {entry.key} is" in message
    expected = {
        "truncate": f"truncated: {entry.size - 1000} of {entry.size} bytes",
        "delete": "missing",
        "append": "corrupt",
    }.get(how, f"corrupt: sha256 mismatch (expected {entry.sha256}, got ")
    assert expected in message
    got = b"".join(received)
    assert len(got) < len(dump) and not got.endswith(MARKER)
    # The other object is fine and still readable.
    assert read_all(repo, m, "globals.sql") == b"CREATE ROLE app;\n"


def test_verify_lists_every_problem(repo: Repository) -> None:
    m = write_backup(repo, {"a.dump": b"a" * 5000, "b.dump": b"b" * 5000, "c.dump": b"c"})
    damage(repo, m.objects[0].key, "flip-middle")
    damage(repo, m.objects[2].key, "delete")
    report = repo.verify(m.id)
    assert [(p.name, p.kind) for p in report.problems] == [
        ("a.dump", "checksum"),
        ("c.dump", "missing"),
    ]
    with pytest.raises(errors.IntegrityError, match=r"a\.dump\.zst .*\(and 1 more bad object\)"):
        report.raise_for_problems()


def stored_form(data: bytes) -> tuple[list[bytes], manifests.ObjectEntry]:
    """Encode `data` like the writer does; return stored chunks of 1 MiB and its entry."""
    import hashlib

    stored = b"".join(pipeline.encode(chunked(data), compression="zstd"))
    entry = manifests.ObjectEntry(
        name="database.dump",
        key="base/20261129T024100Z/database.dump.zst",
        size=len(stored),
        sha256=hashlib.sha256(stored).hexdigest(),
        raw_size=len(data),
    )
    return list(chunked(stored, 1024 * 1024)), entry


@pytest.mark.parametrize("cut", [1, 100, 1024 * 1024 + 1])
def test_truncation_while_streaming_withholds_the_end(cut: int) -> None:
    # A backend whose HEAD still showed the full size (e.g. the object changed between
    # HEAD and GET): the stream itself must catch it and never release the end.
    dump = payload(3 * 1024 * 1024, seed=7)
    chunks, entry = stored_form(dump)
    whole = b"".join(chunks)
    truncated = list(chunked(whole[:-cut], 1024 * 1024))
    stored = integrity.VerifiedStream(truncated, entry)
    decoded = pipeline.decode(iter(stored), compression="zstd", encrypted=False)
    received: list[bytes] = []
    with pytest.raises(errors.IntegrityError, match="is truncated"):
        for chunk in integrity.deliver(decoded, stored, lambda: iter(truncated)):
            received.append(chunk)
    assert len(b"".join(received)) < len(dump)
    assert not b"".join(received).endswith(MARKER)


def test_verified_stream_holds_back_the_final_stored_chunk() -> None:
    chunks, entry = stored_form(payload(3 * 1024 * 1024, seed=3))
    bad = [*chunks[:-1], bytes([chunks[-1][0] ^ 1]) + chunks[-1][1:]]
    passed: list[bytes] = []
    with pytest.raises(errors.IntegrityError, match="sha256 mismatch"):
        for chunk in integrity.VerifiedStream(bad, entry):
            passed.append(chunk)
    assert passed == bad[:-1]
    good = list(integrity.VerifiedStream(chunks, entry))
    assert good == chunks


# Encryption --------------------------------------------------------------------


def test_encrypted_round_trip(repo: Repository, gpg_keys: Any, other_gpg_keys: Any) -> None:
    secret = b"top secret customer row " + MARKER
    dump = secret * 2000
    m = write_backup(
        repo, {"database.dump": dump}, compression="none", encrypt_to=gpg_keys.public_key
    )
    assert m.encryption is not None
    assert m.encryption.method == "openpgp"
    assert m.encryption.recipient_fingerprint == gpg_keys.fingerprint
    entry = m.objects[0]
    assert entry.key == f"base/{m.id}/database.dump.gpg"
    stored = repo.storage.get_bytes(entry.key)
    assert MARKER not in stored and b"customer" not in stored
    raw = json.loads(repo.storage.get_bytes(m.key))
    assert raw["encryption"] == {"method": "openpgp", "recipient_fingerprint": gpg_keys.fingerprint}
    assert "-----BEGIN" not in json.dumps(raw)
    assert m.result()["recipient_fingerprint"] == gpg_keys.fingerprint

    assert repo.verify(m.id).ok  # no key needed
    assert read_all(repo, m, "database.dump", decrypt_key=gpg_keys.private_key) == dump
    with pytest.raises(errors.EncryptionError, match=gpg_keys.fingerprint):
        read_all(repo, m, "database.dump")
    with pytest.raises(errors.EncryptionError, match="does not match"):
        read_all(repo, m, "database.dump", decrypt_key=other_gpg_keys.private_key)


def test_encrypted_and_compressed_damage_is_an_integrity_error(
    repo: Repository, gpg_keys: Any
) -> None:
    dump = payload(2 * 1024 * 1024, seed=5)
    m = write_backup(repo, {"database.dump": dump}, encrypt_to=gpg_keys.public_key)
    entry = m.objects[0]
    assert entry.key.endswith(".zst.gpg")
    assert read_all(repo, m, "database.dump", decrypt_key=gpg_keys.private_key) == dump
    damage(repo, entry.key, "flip-middle")
    received: list[bytes] = []
    named = re.escape(f"object {entry.key} is corrupt: sha256")
    with pytest.raises(errors.IntegrityError, match=named):
        for chunk in repo.read_object(m, "database.dump", decrypt_key=gpg_keys.private_key):
            received.append(chunk)
    assert not b"".join(received).endswith(MARKER)


# Deleting and pruning ------------------------------------------------------------


def test_delete_backup_removes_manifest_first(repo_url: str) -> None:
    storage = Recording(open_storage(repo_url))
    repo = Repository(storage)
    m = write_backup(repo, {"a.dump": b"a", "b.dump": b"b"})
    keep = write_backup(repo, {"a.dump": b"keep"}, now=T0 + dt.timedelta(hours=1))
    storage.calls.clear()
    repo.delete_backup(m.id)
    deletes = [key for op, key in storage.calls if op == "delete"]
    assert deletes[0] == m.key
    assert sorted(deletes[1:]) == sorted(o.key for o in m.objects)
    assert keys(repo, f"base/{m.id}/") == []
    assert [b.id for b in repo.list_backups()] == [keep.id]
    with pytest.raises(errors.BackupNotFound):
        repo.delete_backup(m.id)


def test_a_link_of_an_incremental_chain_is_not_deleted_under_it(repo_url: str) -> None:
    repo = Repository(open_storage(repo_url))
    full = write_backup(repo, {"base.tar": b"f"}, method="physical")
    chain = {"incremental": {"parent": full.id, "depends_on": [full.id]}}
    incr = write_backup(repo, {"base.tar": b"i"}, method="physical", extra=chain,
                        now=T0 + dt.timedelta(hours=1))
    with pytest.raises(errors.ConflictError, match=f"chain of incremental backup.s. {incr.id}"):
        repo.delete_backup(full.id)
    assert [b.id for b in repo.list_backups()] == [full.id, incr.id]  # nothing deleted
    assert len(keys(repo, f"base/{full.id}/")) == 2  # still whole: manifest + base.tar
    repo.delete_backup(incr.id)  # newest first
    repo.delete_backup(full.id)
    assert repo.list_backups() == []


def test_interrupted_delete_never_leaves_a_dangling_manifest(repo_url: str) -> None:
    storage = Recording(open_storage(repo_url), fail_delete_number=2)
    repo = Repository(storage)
    m = write_backup(repo, {"a.dump": b"a", "b.dump": b"b"})
    storage.deletes = 0  # count from here: the manifest delete passes, the next one fails
    with pytest.raises(errors.StorageError, match="injected"):
        repo.delete_backup(m.id)
    assert repo.list_backups() == []
    with pytest.raises(errors.BackupNotFound):
        repo.get(m.id)
    assert keys(repo, f"base/{m.id}/")  # objects remain, invisible
    repo.delete_backup(m.id)  # a retry finishes the job
    assert keys(repo) == []


def test_prune_applies_policy_and_removes_orphans(repo: Repository) -> None:
    wall = dt.datetime.now(UTC).replace(microsecond=0)
    start = wall - dt.timedelta(days=10)
    days = [start + dt.timedelta(days=d) for d in range(10)]
    written = [
        write_backup(repo, {"database.dump": b"day %d" % i}, now=t) for i, t in enumerate(days)
    ]
    redis = write_backup(repo, {"dump.rdb": b"r"}, now=start, engine="redis", method="rdb")
    orphan = "20200101T000000Z"
    repo.storage.put_bytes(f"base/{orphan}/database.dump.zst", b"crashed write")
    policy = RetentionPolicy(daily=3)

    # Too young to be an orphan yet: the folder may belong to a running backup.
    early = repo.prune(policy, now=wall, engine="postgres", dry_run=True)
    assert early.orphans == []

    now = wall + dt.timedelta(hours=25)
    dry = repo.prune(policy, now=now, engine="postgres", dry_run=True)
    assert dry.dry_run and dry.kept == [m.id for m in written[-3:]]
    assert dry.deleted == [m.id for m in written[:-3]]
    assert dry.orphans == [orphan]
    assert dry.reasons[written[-1].id] == ["newest", "daily"]
    assert len(repo.list_backups()) == 11 and repo.storage.exists(
        f"base/{orphan}/database.dump.zst"
    )

    report = repo.prune(policy, now=now, engine="postgres")
    assert (report.kept, report.deleted, report.orphans) == (dry.kept, dry.deleted, dry.orphans)
    assert [m.id for m in repo.list_backups()] == sorted([redis.id, *dry.kept])
    expected = sorted(
        k for m in [redis, *written[-3:]] for k in [m.key, *(o.key for o in m.objects)]
    )
    assert keys(repo) == expected
    assert report.result()["deleted"] == dry.deleted

    again = repo.prune(policy, now=now, engine="postgres")
    assert again.deleted == [] and again.orphans == [] and again.kept == dry.kept
    # Without an engine filter the rule applies to each series on its own: the redis
    # backup never competes with the PostgreSQL dumps, and each keeps its newest.
    everything = repo.prune(RetentionPolicy(keep_last=1), now=now)
    assert sorted(everything.kept) == sorted([redis.id, written[-1].id])
    assert [m.id for m in repo.list_backups()] == sorted([redis.id, written[-1].id])


def test_prune_never_deletes_the_newest_or_young_backups(repo: Repository) -> None:
    times = [T0 + dt.timedelta(hours=h) for h in range(6)]
    for t in times:
        write_backup(repo, {"a.dump": b"x"}, now=t)
    now = times[-1] + dt.timedelta(hours=1)
    report = repo.prune(RetentionPolicy(keep_last=1, min_age=dt.timedelta(hours=3)), now=now)
    # 06:41 is younger than 3 hours at 08:41; 05:41 is exactly 3 hours old and may go.
    assert report.kept == ["20261129T064100Z", "20261129T074100Z"]
    assert report.reasons == {
        "20261129T064100Z": ["min-age"],
        "20261129T074100Z": ["newest", "last", "min-age"],
    }
    assert len(report.deleted) == 4
    empty = repo.prune(RetentionPolicy(), now=now + dt.timedelta(days=999))
    assert empty.deleted == [] and len(empty.kept) == 2


def test_table_subset_only_for_dumps_of_chosen_tables(repo: Repository) -> None:
    tables = [{"schema": "public", "name": "a"}, {"schema": "public", "name": "b"}]
    full = write_backup(repo, {"database.dump": b"x"}, now=T0,
                        extra={"scope": "database", "tables": tables})
    hot = write_backup(repo, {"table.public.a.dump": b"y"}, now=T0 + dt.timedelta(hours=1),
                       extra={"scope": "tables", "tables": tables[:1]})
    assert full.table_subset == () and full.result()["tables"] == []
    assert hot.table_subset == ("public.a",) and hot.result()["tables"] == ["public.a"]
    assert candidate_of(full).series != candidate_of(hot).series
