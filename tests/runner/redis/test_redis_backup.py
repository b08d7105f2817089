"""`backup redis` against real redis-server instances (and a scripted master for old servers)."""

from __future__ import annotations

import argparse
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.gpg import GpgKeys
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
from tonebridge_dr.runner.engines.redis import backup, commands, endpoints, restore
from tonebridge_dr.runner.repository.catalog import Repository


def run_backup(*argv: str) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    commands.add_backup_arguments(parser)
    return commands.run_backup(parser.parse_args(list(argv)))


def repo_files(url: str) -> list[Path]:
    root = Path(url.removeprefix("file://"))
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def wait_for_no_replicas(server: RedisServer) -> bool:
    """The server noticed our disconnect (it handles the close asynchronously)."""
    client = server.client()
    try:
        for _ in range(1000):
            if client.info("replication")["connected_slaves"] == 0:
                return True
            time.sleep(0.01)
        return False
    finally:
        client.close()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (
        endpoints.PASSWORD_ENV,
        endpoints.USERNAME_ENV,
        endpoints.SOURCE_URL_ENV,
        endpoints.TARGET_URL_ENV,
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# -- real servers ------------------------------------------------------------------------------


@pytest.mark.parametrize("diskless", [True, False], ids=["diskless", "disk"])
def test_backup_records_the_rdb_and_server_facts(
    redis_factory: RedisFactory, file_repo_url: str, clean_env: pytest.MonkeyPatch, diskless: bool
) -> None:
    server = redis_factory.start(diskless=diskless)
    populate(server)
    result = run_backup("--url", server.url(), "--repo", file_repo_url, "--json")

    assert result["engine"] == "redis" and result["method"] == "rdb"
    assert result["databases"] == ["db0", "db1", "db7"]
    assert result["server_version"].startswith("7.")
    facts = result["redis"]
    assert facts["transfer"] == ("diskless" if diskless else "disk")
    assert facts["rdb_only"] is True
    assert facts["checksum"] == "ok"
    assert facts["rdb_version"] >= 10
    assert facts["compression_level"] == backup.ZSTD_LEVEL == 1
    assert facts["keys"] == sum(POPULATED_KEYS.values())
    assert facts["databases"]["7"] == {"keys": 1200, "expires": 0}
    assert facts["databases"]["0"]["expires"] == 3
    assert (facts["appendonly"], facts["appendfsync"], facts["aof_source"]) == (
        "no",
        "everysec",
        "config",
    )

    repo = Repository.open(file_repo_url)
    manifest = repo.get("latest")
    assert manifest.id == result["id"]
    assert manifest.extra["redis"] == facts
    entry = manifest.object("dump.rdb")
    assert entry is not None and entry.raw_size == facts["rdb_size"]
    # The stored object is exactly the server's RDB: redis-check-rdb accepts it.
    out = Path(file_repo_url.removeprefix("file://")) / "check.rdb"
    out.write_bytes(b"".join(repo.read_object(manifest, "dump.rdb")))
    assert restore._check_rdb_file(out, "redis-check-rdb") == "ok"


@pytest.mark.parametrize("chunk_size", [80, 81, 97, 4096])
def test_tiny_chunks_find_the_eof_mark_anywhere(
    redis_factory: RedisFactory, file_repo_url: str, chunk_size: int
) -> None:
    server = redis_factory.start(diskless=True)
    populate(server)
    result = backup.backup(
        endpoints.parse(server.url(), {}), Repository.open(file_repo_url), chunk_size=chunk_size
    )
    assert result["redis"]["transfer"] == "diskless"
    assert result["redis"]["checksum"] == "ok"


def test_aof_disabled_is_a_warning(
    redis_factory: RedisFactory, file_repo_url: str, clean_env: pytest.MonkeyPatch
) -> None:
    server = redis_factory.start(appendonly=False)
    result = run_backup("--url", server.url(), "--repo", file_repo_url)
    assert any("AOF is disabled" in w for w in result["warnings"])
    manifest = Repository.open(file_repo_url).get(result["id"])
    assert manifest.extra["warnings"] == result["warnings"]


def test_aof_enabled_gives_no_warning(
    redis_factory: RedisFactory, file_repo_url: str, clean_env: pytest.MonkeyPatch
) -> None:
    server = redis_factory.start(appendonly=True)
    server.client().set("k", "v")
    result = run_backup("--url", server.url(), "--repo", file_repo_url)
    assert result["warnings"] == []
    assert result["redis"]["appendonly"] == "yes"
    assert result["redis"]["appendfsync"] == "everysec"


def test_disabled_rdb_checksum_is_recorded(
    redis_factory: RedisFactory, file_repo_url: str, clean_env: pytest.MonkeyPatch
) -> None:
    server = redis_factory.start(appendonly=True, config=("rdbchecksum no",))
    server.client().set("k", "v")
    result = run_backup("--url", server.url(), "--repo", file_repo_url)
    assert result["redis"]["checksum"] == "disabled"
    assert any("rdbchecksum no" in w for w in result["warnings"])


def test_password_from_env(
    redis_factory: RedisFactory, file_repo_url: str, clean_env: pytest.MonkeyPatch
) -> None:
    server = redis_factory.start(password=ADMIN_PASSWORD)
    server.client().set("k", "v")
    clean_env.setenv("REDIS_PASSWORD", ADMIN_PASSWORD)
    clean_env.setenv("TONEBRIDGE_DR_REDIS_URL", server.url())
    result = run_backup("--repo", file_repo_url)
    assert result["redis"]["keys"] == 1


def test_wrong_password_is_an_authentication_error(
    redis_factory: RedisFactory, file_repo_url: str, clean_env: pytest.MonkeyPatch
) -> None:
    server = redis_factory.start(password=ADMIN_PASSWORD)
    clean_env.setenv("REDIS_PASSWORD", "not-the-Password-42")
    with pytest.raises(errors.AuthenticationError) as info:
        run_backup("--url", server.url(), "--repo", file_repo_url)
    assert "not-the-Password-42" not in str(info.value)
    assert "'default'" in str(info.value)
    assert repo_files(file_repo_url) == []


def test_missing_password_is_an_authentication_error(
    redis_factory: RedisFactory, file_repo_url: str, clean_env: pytest.MonkeyPatch
) -> None:
    server = redis_factory.start(password=ADMIN_PASSWORD)
    with pytest.raises(errors.AuthenticationError, match="requires a password"):
        run_backup("--url", server.url(), "--repo", file_repo_url)


def test_acl_user_with_only_replication_permissions(
    redis_factory: RedisFactory, file_repo_url: str, clean_env: pytest.MonkeyPatch
) -> None:
    server = redis_factory.start(password=ADMIN_PASSWORD)
    populate(server)
    server.add_user("backup", "Bk-pass-77", "+sync", "+psync", "+replconf")
    clean_env.setenv("REDIS_PASSWORD", "Bk-pass-77")
    result = run_backup("--url", server.url(username="backup"), "--repo", file_repo_url)
    assert result["redis"]["checksum"] == "ok"
    assert result["server_version"] is None  # INFO is not permitted: recorded as unknown
    text = " ".join(result["warnings"])
    assert "cannot run INFO" in text and "cannot tell whether AOF is enabled" in text
    assert "Bk-pass-77" not in text


def test_acl_user_with_info_permissions_reads_aof_from_info(
    redis_factory: RedisFactory, file_repo_url: str, clean_env: pytest.MonkeyPatch
) -> None:
    server = redis_factory.start(password=ADMIN_PASSWORD, appendonly=True)
    server.add_user("backup", "Bk-pass-77", "+sync", "+replconf", "+info")
    clean_env.setenv("REDIS_USERNAME", "backup")
    clean_env.setenv("REDIS_PASSWORD", "Bk-pass-77")
    result = run_backup("--url", server.url(), "--repo", file_repo_url)
    assert result["redis"]["appendonly"] == "yes"
    assert result["redis"]["aof_source"] == "info"
    assert result["warnings"] == []


@pytest.mark.parametrize(
    ("rules", "missing"),
    [(("+@read", "+info"), "REPLCONF"), (("+@read", "+replconf"), "SYNC")],
    ids=["no-replconf", "no-sync"],
)
def test_acl_user_without_replication_permission(
    redis_factory: RedisFactory,
    file_repo_url: str,
    clean_env: pytest.MonkeyPatch,
    rules: tuple[str, ...],
    missing: str,
) -> None:
    server = redis_factory.start(password=ADMIN_PASSWORD)
    server.add_user("reader", "Rd-pass-88", *rules)
    clean_env.setenv("REDIS_PASSWORD", "Rd-pass-88")
    with pytest.raises(errors.AuthenticationError) as info:
        run_backup("--url", server.url(username="reader"), "--repo", file_repo_url)
    message = str(info.value)
    assert f"user 'reader' may not run {missing}" in message
    assert "+sync +psync +replconf" in message
    assert "Rd-pass-88" not in message
    assert repo_files(file_repo_url) == []


def test_server_without_replconf_falls_back_to_plain_sync(
    redis_factory: RedisFactory, file_repo_url: str, clean_env: pytest.MonkeyPatch
) -> None:
    # A server that does not know REPLCONF behaves like Redis < 7 for rdb-only.
    server = redis_factory.start(config=('rename-command REPLCONF ""',))
    populate(server)
    before = snapshot(server)
    result = run_backup("--url", server.url(), "--repo", file_repo_url)
    assert result["redis"]["rdb_only"] is False
    assert result["redis"]["transfer"] == "disk"  # no "capa eof" either
    assert any("REPLCONF rdb-only" in w for w in result["warnings"])
    # The server is left without a dangling replica, and the backup restores exactly.
    assert wait_for_no_replicas(server)
    target = redis_factory.start()
    restore.restore_to_server(
        Repository.open(file_repo_url), "latest", endpoints.parse(target.url(), {})
    )
    assert snapshot(target) == before


def test_unreachable_server_is_a_source_error(
    file_repo_url: str, clean_env: pytest.MonkeyPatch
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(errors.SourceError, match="cannot connect"):
        run_backup("--url", f"redis://127.0.0.1:{port}", "--repo", file_repo_url)


def test_backup_to_s3_encrypted_and_restore(
    redis_factory: RedisFactory,
    s3_repo_url: str,
    gpg_keys: GpgKeys,
    clean_env: pytest.MonkeyPatch,
) -> None:
    server = redis_factory.start()
    populate(server)
    before = snapshot(server)
    result = run_backup(
        "--url", server.url(), "--repo", s3_repo_url, "--encrypt-to", str(gpg_keys.public_key)
    )
    assert result["encrypted"] is True
    server.client().flushall()
    parser = argparse.ArgumentParser()
    commands.add_restore_arguments(parser)
    argv = ["--repo", s3_repo_url, "--backup", result["id"], "--target-url", server.url()]
    args = parser.parse_args([*argv, "--decrypt-key", str(gpg_keys.private_key)])
    restored = commands.run_restore(args)
    assert restored["keys_restored"] == sum(POPULATED_KEYS.values())
    assert snapshot(server) == before


# -- a scripted master: truncation and corruption in flight ------------------------------------


class ScriptedMaster:
    """Answers one connection like an old Redis: -ERR to REPLCONF, then `payload`."""

    def __init__(
        self,
        payload: bytes,
        *,
        length_form: bool = True,
        announce: int | None = None,
        die: bool = False,
    ) -> None:
        self.payload = payload
        self.length_form = length_form
        self.die = die  # close the connection right after the payload
        self.announce = len(payload) if announce is None else announce
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn, conn.makefile("rb") as reader:
            while True:
                header = reader.readline()
                if not header:
                    return
                args = [reader.readline() and reader.readline().strip()
                        for _ in range(int(header[1:]))]  # fmt: skip
                name = args[0].upper()
                if name == b"INFO":
                    body = b"# Server\r\nredis_version:5.0.14\r\nrole:master\r\n"
                    body += b"# Keyspace\r\ndb0:keys=1,expires=0,avg_ttl=0\r\n"
                    conn.sendall(b"$%d\r\n%s\r\n" % (len(body), body))
                elif name == b"CONFIG":
                    value = b"yes" if args[2] == b"appendonly" else b"everysec"
                    conn.sendall(b"*2\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
                                 % (len(args[2]), args[2], len(value), value))  # fmt: skip
                elif name == b"REPLCONF":
                    conn.sendall(b"-ERR Unrecognized REPLCONF option: %s\r\n" % args[1])
                elif name == b"SYNC":
                    conn.sendall(b"\n\n")
                    if self.length_form:
                        conn.sendall(b"$%d\r\n" % self.announce)
                        conn.sendall(self.payload)
                    else:
                        mark = b"0123456789abcdef0123456789abcdef01234567"
                        conn.sendall(b"$EOF:" + mark + b"\r\n" + self.payload + mark)
                    if self.die:
                        return
                    if self.length_form:
                        # like an old master after a disk-based RDB: the command stream
                        # follows at once (after a diskless one it waits for our ACK)
                        conn.sendall(b"*1\r\n$4\r\nPING\r\n")
                    reader.read()  # until the client hangs up
                    return

    def close(self) -> None:
        self.listener.close()
        self.thread.join(timeout=30)


@pytest.fixture
def scripted() -> Iterator[list[ScriptedMaster]]:
    masters: list[ScriptedMaster] = []
    yield masters
    for master in masters:
        master.close()


@pytest.mark.parametrize("length_form", [True, False], ids=["length", "eof-mark"])
def test_old_server_without_rdb_only(
    scripted: list[ScriptedMaster], file_repo_url: str, length_form: bool
) -> None:
    payload = make_rdb(b"\x00\x02k2\x02v2")
    master = ScriptedMaster(payload, length_form=length_form)
    scripted.append(master)
    result = backup.backup(
        endpoints.parse(f"redis://127.0.0.1:{master.port}", {}),
        Repository.open(file_repo_url),
        chunk_size=128,
    )
    assert result["redis"]["rdb_only"] is False
    assert result["server_version"] == "5.0.14"
    assert any("REPLCONF rdb-only" in w for w in result["warnings"])
    repo = Repository.open(file_repo_url)
    assert b"".join(repo.read_object(repo.get("latest"), "dump.rdb")) == payload


@pytest.mark.parametrize(
    ("payload", "announce", "error", "match"),
    [
        (make_rdb(bytes(5000))[:3000], 5100, errors.SourceError, "after 3000 of 5100 bytes"),
        (make_rdb(bytes(5000))[:-1] + b"\x00", None, errors.IntegrityError, "CRC-64"),
        (b"-ERR not an rdb at all" + bytes(100), None, errors.IntegrityError, "not an RDB"),
    ],
    ids=["truncated", "corrupt", "garbage"],
)
def test_bad_transfers_leave_nothing_in_the_repository(
    scripted: list[ScriptedMaster],
    file_repo_url: str,
    payload: bytes,
    announce: int | None,
    error: type[Exception],
    match: str,
) -> None:
    master = ScriptedMaster(payload, announce=announce, die=announce is not None)
    scripted.append(master)
    with pytest.raises(error, match=match):
        backup.backup(
            endpoints.parse(f"redis://127.0.0.1:{master.port}", {}),
            Repository.open(file_repo_url),
            chunk_size=512,
            timeout=30,
        )
    assert repo_files(file_repo_url) == []
    assert Repository.open(file_repo_url).list_backups() == []
