"""`restore redis` into live servers and data dirs, against real redis-server instances."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.redis import (
    ADMIN_PASSWORD,
    POPULATED_KEYS,
    RedisFactory,
    RedisServer,
    populate,
    snapshot,
)
from tests.runner.redis.test_redis_rdb import make_rdb
from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.redis import backup, commands, endpoints
from tonebridge_dr.runner.repository.catalog import Repository


def run_restore(*argv: str) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    commands.add_restore_arguments(parser)
    return commands.run_restore(parser.parse_args(list(argv)))


def make_backup(server: RedisServer, repo_url: str) -> str:
    result = backup.backup(endpoints.parse(server.url(), {"REDIS_PASSWORD": server.password or ""}),
                           Repository.open(repo_url))  # fmt: skip
    return str(result["id"])


def stored_path(repo_url: str, backup_id: str) -> Path:
    manifest = Repository.open(repo_url).get(backup_id)
    entry = manifest.object("dump.rdb")
    assert entry is not None
    return Path(repo_url.removeprefix("file://")) / entry.key


def functions(server: RedisServer) -> list[Any]:
    client = server.client()
    try:
        return list(client.function_list(withcode=True))
    finally:
        client.close()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (endpoints.PASSWORD_ENV, endpoints.USERNAME_ENV, endpoints.TARGET_URL_ENV):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def source(redis_factory: RedisFactory) -> RedisServer:
    server = redis_factory.start()
    populate(server)
    return server


# -- into a live server -------------------------------------------------------------------------


def test_backup_flushall_restore_gives_back_every_key(
    source: RedisServer, file_repo_url: str, tmp_path: Path
) -> None:
    before, before_functions = snapshot(source), functions(source)
    backup_id = make_backup(source, file_repo_url)
    source.client().flushall()
    source.client().function_flush()

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    result = run_restore(
        "--repo", file_repo_url, "--backup", backup_id, "--target-url", source.url(),
        "--scratch-dir", str(scratch), "--batch-size", "97",
    )  # fmt: skip
    assert result["backup_id"] == backup_id
    assert result["databases"] == {
        str(db): {"restored": n, "skipped": 0} for db, n in POPULATED_KEYS.items()
    }
    assert result["keys_restored"] == sum(POPULATED_KEYS.values())
    assert result["functions_restored"] == 1
    assert result["rdb"]["checksum"] == "ok"
    # Every DUMP payload and every absolute expiry time is back, exactly.
    assert snapshot(source) == before
    assert functions(source) == before_functions
    assert list(scratch.iterdir()) == []  # the scratch server and its RDB are gone


def test_restore_into_a_password_protected_server(
    source: RedisServer, redis_factory: RedisFactory, file_repo_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    before = snapshot(source)
    make_backup(source, file_repo_url)
    target = redis_factory.start(password=ADMIN_PASSWORD)
    monkeypatch.setenv("REDIS_PASSWORD", ADMIN_PASSWORD)
    monkeypatch.setenv("TONEBRIDGE_DR_REDIS_TARGET_URL", target.url())
    result = run_restore("--repo", file_repo_url)
    assert result["keys_restored"] == sum(POPULATED_KEYS.values())
    assert snapshot(target) == before


def test_wrong_target_password_fails_before_any_work(
    source: RedisServer, redis_factory: RedisFactory, file_repo_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    make_backup(source, file_repo_url)
    target = redis_factory.start(password=ADMIN_PASSWORD)
    monkeypatch.setenv("REDIS_PASSWORD", "Wrong-pw-123")
    with pytest.raises(errors.AuthenticationError) as info:
        run_restore("--repo", file_repo_url, "--target-url", target.url())
    assert "Wrong-pw-123" not in str(info.value)


def test_mode_missing_keeps_existing_keys_and_replace_overwrites(
    source: RedisServer, redis_factory: RedisFactory, file_repo_url: str
) -> None:
    make_backup(source, file_repo_url)
    target = redis_factory.start()
    target.client().set("str", "changed-on-target")
    target.client().set("only-on-target", "stays")
    target.client(7).set("db7:k5", "changed")

    result = run_restore("--repo", file_repo_url, "--target-url", target.url())
    assert result["mode"] == "missing"
    assert result["databases"]["0"] == {"restored": POPULATED_KEYS[0] - 1, "skipped": 1}
    assert result["databases"]["7"] == {"restored": POPULATED_KEYS[7] - 1, "skipped": 1}
    assert target.client().get("str") == b"changed-on-target"
    assert target.client().get("only-on-target") == b"stays"
    assert target.client(7).get("db7:k5") == b"changed"

    again = run_restore("--repo", file_repo_url, "--target-url", target.url())  # idempotent
    assert again["keys_restored"] == 0
    assert again["keys_skipped"] == sum(POPULATED_KEYS.values())

    result = run_restore(
        "--repo", file_repo_url, "--target-url", target.url(), "--mode", "replace"
    )  # fmt: skip
    assert result["keys_restored"] == sum(POPULATED_KEYS.values())
    assert result["keys_skipped"] == 0
    assert target.client().get("str") == b"hello"
    assert target.client(7).get("db7:k5") == b"5"
    assert target.client().get("only-on-target") == b"stays"  # restore never deletes


def test_pattern_and_single_database(
    source: RedisServer, redis_factory: RedisFactory, file_repo_url: str
) -> None:
    make_backup(source, file_repo_url)
    target = redis_factory.start()
    result = run_restore(
        "--repo", file_repo_url, "--target-url", target.url(), "--db", "7",
        "--pattern", "db7:k1*",
    )  # fmt: skip
    expected = 1 + 10 + 100 + 200  # k1, k10-k19, k100-k199, k1000-k1199
    assert result["databases"] == {"7": {"restored": expected, "skipped": 0}}
    assert result["functions_restored"] == 0
    assert target.client(7).dbsize() == expected
    assert target.client(0).dbsize() == 0

    # --db 1 with a database in the target URL: backup db 1 lands in target db 5.
    result = run_restore("--repo", file_repo_url, "--target-url", target.url(5), "--db", "1")
    assert result["databases"] == {"5": {"restored": 3, "skipped": 0}}
    assert target.client(5).get("db1:key") == b"one"
    assert target.client(1).dbsize() == 0


def test_target_database_without_db_option_is_a_usage_error(
    source: RedisServer, file_repo_url: str
) -> None:
    make_backup(source, file_repo_url)
    with pytest.raises(errors.UsageError, match="--db N"):
        run_restore("--repo", file_repo_url, "--target-url", source.url(3))


def test_missing_redis_server_binary_is_a_tool_error(
    source: RedisServer, redis_factory: RedisFactory, file_repo_url: str
) -> None:
    make_backup(source, file_repo_url)
    target = redis_factory.start()
    with pytest.raises(errors.ToolError, match="not found"):
        run_restore(
            "--repo", file_repo_url, "--target-url", target.url(),
            "--redis-server", "/nonexistent/redis-server",
        )  # fmt: skip
    assert target.client().dbsize() == 0


# -- corrupt or truncated backups never touch the target ---------------------------------------


def _flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x55
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])


@pytest.mark.parametrize("damage", [_flip_middle_byte, _truncate], ids=["corrupt", "truncated"])
def test_damaged_stored_object_leaves_the_target_untouched(
    source: RedisServer, redis_factory: RedisFactory, file_repo_url: str, tmp_path: Path,
    damage: Any,
) -> None:  # fmt: skip
    backup_id = make_backup(source, file_repo_url)
    damage(stored_path(file_repo_url, backup_id))
    target = redis_factory.start()
    target.client().set("str", "target-value")
    target.client(3).set("other", "x", ex=1000)
    before = snapshot(target)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    for mode in ("missing", "replace"):
        with pytest.raises(errors.IntegrityError, match=r"base/.*dump\.rdb"):
            run_restore(
                "--repo", file_repo_url, "--target-url", target.url(), "--mode", mode,
                "--scratch-dir", str(scratch),
            )  # fmt: skip
    assert snapshot(target) == before
    assert list(scratch.iterdir()) == []


def test_rdb_with_a_bad_crc_inside_an_intact_object_is_refused(
    redis_factory: RedisFactory, file_repo_url: str
) -> None:
    # The repository's SHA-256 matches (the RDB was stored like this), but the RDB itself
    # fails its CRC-64: the second line of defence.
    bad = bytearray(make_rdb(b"\x00\x02k2\x02v2"))
    bad[-1] ^= 0xFF
    repo = Repository.open(file_repo_url)
    with repo.begin(engine="redis", method="rdb") as writer:
        writer.put_object("dump.rdb", [bytes(bad)])
        writer.commit(databases=["db0"], server_version="7.0.15", tools={})
    target = redis_factory.start()
    target.client().set("keep", "me")
    with pytest.raises(errors.IntegrityError, match="CRC-64"):
        run_restore("--repo", file_repo_url, "--target-url", target.url())
    assert target.client().dbsize() == 1
    data_dir = redis_factory.root / "crc-data"
    data_dir.mkdir()
    with pytest.raises(errors.IntegrityError, match="CRC-64"):
        run_restore("--repo", file_repo_url, "--data-dir", str(data_dir))
    assert list(data_dir.iterdir()) == []


def test_a_non_redis_backup_is_refused(redis_factory: RedisFactory, file_repo_url: str) -> None:
    repo = Repository.open(file_repo_url)
    with repo.begin(engine="postgres", method="logical") as writer:
        writer.put_object("database.dump", [b"PGDMP"])
        writer.commit(databases=["app"], server_version="16", tools={})
    target = redis_factory.start()
    with pytest.raises(errors.UsageError, match="not a Redis RDB"):
        run_restore("--repo", file_repo_url, "--target-url", target.url())


# -- as a file for a stopped server -------------------------------------------------------------


def test_data_dir_restore_is_loaded_by_a_new_server(
    source: RedisServer, redis_factory: RedisFactory, file_repo_url: str, tmp_path: Path
) -> None:
    before, before_functions = snapshot(source), functions(source)
    make_backup(source, file_repo_url)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    result = run_restore("--repo", file_repo_url, "--data-dir", str(data_dir))
    assert result["path"] == str(data_dir / "dump.rdb")
    assert result["rdb_check"] == "ok"
    assert result["warnings"] == []
    assert sorted(p.name for p in data_dir.iterdir()) == ["dump.rdb"]

    restored = redis_factory.start(data_dir=data_dir)
    assert snapshot(restored) == before
    assert functions(restored) == before_functions


def test_data_dir_refuses_an_existing_dump_unless_overwrite(
    source: RedisServer, file_repo_url: str, tmp_path: Path
) -> None:
    make_backup(source, file_repo_url)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "dump.rdb").write_bytes(b"old")
    (data_dir / "appendonlydir").mkdir()
    with pytest.raises(errors.TargetNotEmpty, match="--overwrite"):
        run_restore("--repo", file_repo_url, "--data-dir", str(data_dir))
    assert (data_dir / "dump.rdb").read_bytes() == b"old"

    result = run_restore("--repo", file_repo_url, "--data-dir", str(data_dir), "--overwrite")
    assert (data_dir / "dump.rdb").read_bytes().startswith(b"REDIS")
    assert any("AOF" in w for w in result["warnings"])


@pytest.mark.parametrize("damage", [_flip_middle_byte, _truncate], ids=["corrupt", "truncated"])
def test_data_dir_restore_of_a_damaged_backup_changes_nothing(
    source: RedisServer, file_repo_url: str, tmp_path: Path, damage: Any
) -> None:
    backup_id = make_backup(source, file_repo_url)
    damage(stored_path(file_repo_url, backup_id))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "dump.rdb").write_bytes(b"old")
    with pytest.raises(errors.IntegrityError):
        run_restore("--repo", file_repo_url, "--data-dir", str(data_dir), "--overwrite")
    assert sorted(p.name for p in data_dir.iterdir()) == ["dump.rdb"]
    assert (data_dir / "dump.rdb").read_bytes() == b"old"


def test_conflicting_restore_options_are_usage_errors(file_repo_url: str, tmp_path: Path) -> None:
    with pytest.raises(errors.UsageError, match="either"):
        run_restore(
            "--repo", file_repo_url, "--target-url", "redis://127.0.0.1:1",
            "--data-dir", str(tmp_path),
        )  # fmt: skip
    with pytest.raises(errors.UsageError, match="--pattern"):
        run_restore("--repo", file_repo_url, "--data-dir", str(tmp_path), "--pattern", "a*")
    with pytest.raises(errors.UsageError, match="--target-url or --data-dir"):
        run_restore("--repo", file_repo_url)
