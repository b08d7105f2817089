"""`restore redis`: into a live Redis (key by key) or as `dump.rdb` into a data dir.

Both paths first stream the stored object to a file and verify it completely
(the repository's SHA-256 via `read_object`, then the RDB's own magic, EOF
marker and CRC-64) before the target is touched, so a corrupt or truncated
backup fails loudly and changes nothing.

Into a live server: the verified RDB is the data file of a private scratch
`redis-server` (see scratch.py; the file is that server's own data and is
deleted with it). Keys move with `DUMP` + `PTTL` on the scratch server and
`RESTORE key ttl payload [REPLACE]` on the target, pipelined per SCAN page:

- mode `missing` (default): RESTORE without REPLACE; a key the target already
  has answers BUSYKEY and is counted as skipped, so existing data always wins
  and there is no check-then-write race;
- mode `replace`: RESTORE ... REPLACE overwrites.

Moved keys are deleted from the scratch server, which makes SCAN's possible
duplicates harmless (a second DUMP finds nothing) and frees memory as we go.
The target is never flushed. Redis Functions (7.0+) in the backup are
restored too (FUNCTION RESTORE, APPEND or REPLACE by mode).

DUMP payloads carry the scratch server's RDB version: a target older than the
scratch `redis-server` may refuse them (`--redis-server` picks the binary).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import redis

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.redis import rdb, scratch
from tonebridge_dr.runner.engines.redis.endpoints import Endpoint
from tonebridge_dr.runner.repository import manifest as manifests
from tonebridge_dr.runner.repository import tiering
from tonebridge_dr.runner.repository.catalog import Repository

OBJECT_NAME = "dump.rdb"
MODES = ("missing", "replace")
DEFAULT_BATCH = 500
TARGET_TIMEOUT = 120.0


def load_manifest(repo: Repository, backup_id: str) -> manifests.Manifest:
    manifest = repo.get(backup_id)
    if manifest.engine != "redis" or manifest.object(OBJECT_NAME) is None:
        raise errors.UsageError(
            f"backup {manifest.id} is a {manifest.engine}/{manifest.method} backup, not a Redis RDB"
        )
    tiering.require_readable(repo, manifest)  # archived: exit 17 before the target is touched
    return manifest


def fetch_verified(
    repo: Repository,
    manifest: manifests.Manifest,
    dest: Path,
    *,
    decrypt_key: Path | None = None,
) -> rdb.RdbInfo:
    """Write the backup's RDB to `dest` (created exclusively) and verify it fully.

    On any error `dest` is removed and the error propagates; on success the file
    is fsynced and the RDB's facts are returned.
    """
    check = rdb.RdbCheck(f"RDB of backup {manifest.id}")
    try:
        with dest.open("xb") as out:
            for chunk in repo.read_object(manifest, OBJECT_NAME, decrypt_key=decrypt_key):
                check.feed(chunk)
                out.write(chunk)
            info = check.finish()
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return info


def rdb_databases(manifest: manifests.Manifest) -> int:
    """How many logical databases the scratch server needs for this backup."""
    dbs = manifest.extra.get("redis", {}).get("databases", {})
    numbers = [int(n) for n in dbs if str(n).isdigit()]
    return max(numbers, default=0) + 1


# -- into a live server ----------------------------------------------------------------------


def _target_client(target: Endpoint, db: int) -> redis.Redis:
    return redis.Redis(
        host=target.host,
        port=target.port,
        db=db,
        username=target.username,
        password=target.password,
        socket_timeout=TARGET_TIMEOUT,
        socket_connect_timeout=30,
    )


def _target_error(target: Endpoint, exc: redis.RedisError) -> errors.DRError:
    """Map a redis-py error on the target to our errors (messages carry no password)."""
    user = target.username or "default"
    if isinstance(exc, redis.AuthenticationError | redis.AuthenticationWrongNumberOfArgsError):
        return errors.AuthenticationError(
            f"Redis at {target} rejected the credentials of user '{user}'"
        )
    message = str(exc)
    if message.startswith("NOAUTH") or "Authentication required" in message:
        return errors.AuthenticationError(
            f"Redis at {target} requires a password: set REDIS_PASSWORD or put it in the URL"
        )
    if isinstance(exc, redis.exceptions.NoPermissionError) or message.startswith("NOPERM"):
        return errors.AuthenticationError(
            f"user '{user}' may not restore keys on Redis at {target} "
            f"(needs RESTORE, SELECT and PING): {message}"
        )
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return errors.SourceError(f"cannot reach the target Redis at {target}: {message}")
    return errors.SourceError(f"the target Redis at {target} failed: {message}")


def _check_target(target: Endpoint, dbs: Iterable[int]) -> None:
    """Connect, authenticate and SELECT every target db before anything else happens."""
    for db in dbs:
        client = _target_client(target, db)
        try:
            client.ping()
        except redis.RedisError as exc:
            raise _target_error(target, exc) from None
        finally:
            client.close()


def _batches(keys: Iterator[bytes], size: int) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for key in keys:
        batch.append(key)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _has_pexpiretime(client: redis.Redis) -> bool:
    try:
        client.pexpiretime("tonebridge-dr:probe")
    except redis.ResponseError:
        return False  # unknown command: Redis < 7
    return True


def copy_keys(
    source: redis.Redis,
    target: redis.Redis,
    target_label: Endpoint,
    *,
    mode: str,
    pattern: str | None,
    batch_size: int,
) -> tuple[int, int]:
    """Move every (matching) key of `source`'s db into `target`'s db; (restored, skipped).

    Deletes moved keys from `source` (the scratch server).
    """
    restored = skipped = 0
    replace = mode == "replace"
    # PEXPIRETIME (Redis >= 7) keeps the stored absolute expiry exactly (RESTORE ... ABSTTL);
    # older scratch servers only have the relative PTTL.
    absolute = _has_pexpiretime(source)
    keys = source.scan_iter(match=pattern or "*", count=batch_size)
    for batch in _batches(keys, batch_size):
        pipe = source.pipeline(transaction=False)
        for key in batch:
            pipe.dump(key)
            if absolute:
                pipe.pexpiretime(key)  # type: ignore[arg-type]  # binary keys are fine
            else:
                pipe.pttl(key)
        dumped = pipe.execute()
        writes = target.pipeline(transaction=False)
        sent: list[bytes] = []
        for i, key in enumerate(batch):
            payload, ttl = dumped[2 * i], dumped[2 * i + 1]
            if payload is None or ttl == -2:
                continue  # expired meanwhile, or a SCAN duplicate of a key already moved
            ttl = max(int(ttl), 0)
            writes.restore(key, ttl, payload, replace=replace, absttl=absolute and ttl > 0)
            sent.append(key)
        try:
            results = writes.execute(raise_on_error=False) if sent else []
        except redis.RedisError as exc:
            raise _target_error(target_label, exc) from None
        for key, outcome in zip(sent, results, strict=True):
            if not isinstance(outcome, Exception):
                restored += 1
            elif str(outcome).startswith("BUSYKEY"):
                skipped += 1
            elif isinstance(outcome, redis.RedisError):
                name = key.decode("utf-8", "backslashreplace")
                error = _target_error(target_label, outcome)
                raise type(error)(f"restoring key {name!r}: {error}")
            else:
                raise outcome
        source.unlink(*batch)
    return restored, skipped


def _copy_functions(source: redis.Redis, target: Endpoint, mode: str) -> int:
    """Restore Redis Functions libraries; returns how many the backup had (0 before 7.0)."""
    try:
        libraries = source.function_list()
    except redis.ResponseError:
        return 0  # the scratch server predates functions
    if not libraries:
        return 0
    payload = source.function_dump()
    client = _target_client(target, 0)
    try:
        policy = "REPLACE" if mode == "replace" else "APPEND"
        client.function_restore(payload, policy=policy)  # type: ignore[arg-type]  # bytes is fine
    except redis.ResponseError as exc:
        if mode == "missing" and "already exists" in str(exc):
            return 0  # the target has these libraries: existing data wins
        raise _target_error(target, exc) from None
    except redis.RedisError as exc:
        raise _target_error(target, exc) from None
    finally:
        client.close()
    return len(libraries)


def _scratch_dbs(server: scratch.ScratchServer) -> list[int]:
    client = server.client()
    try:
        keyspace = client.info("keyspace")
    finally:
        client.close()
    return sorted(int(name[2:]) for name in keyspace if name.startswith("db"))


def restore_to_server(
    repo: Repository,
    backup_id: str,
    target: Endpoint,
    *,
    mode: str = "missing",
    pattern: str | None = None,
    db: int | None = None,
    decrypt_key: Path | None = None,
    scratch_dir: Path | None = None,
    redis_server: str = scratch.DEFAULT_BINARY,
    batch_size: int = DEFAULT_BATCH,
) -> dict[str, Any]:
    """Restore a backup's keys into the live Redis at `target`; return the JSON result.

    `db` restricts the restore to that logical database; its keys land in the
    database named in the target URL, else in the same number. Without `db`
    every database lands in its own number and the URL must not name one.
    Safe to retry: in `missing` mode a second run skips what the first restored.
    """
    if mode not in MODES:
        raise errors.UsageError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    if batch_size < 1:
        raise errors.UsageError("--batch-size must be at least 1")
    if db is None and target.db is not None:
        raise errors.UsageError(
            f"the target URL names database {target.db}: add --db N to say which database "
            "of the backup goes there (without --db every database keeps its number)"
        )
    started = time.monotonic()
    manifest = load_manifest(repo, backup_id)
    target_db = (target.db if target.db is not None else db) if db is not None else None
    _check_target(target, [target_db] if target_db is not None else [0])

    with tempfile.TemporaryDirectory(prefix="tonebridge-redis-", dir=scratch_dir) as tmp:
        work = Path(tmp)
        os.chmod(work, 0o700)
        info = fetch_verified(repo, manifest, work / scratch.RDB_NAME, decrypt_key=decrypt_key)
        with scratch.ScratchServer(
            work, binary=redis_server, databases=rdb_databases(manifest)
        ) as server:
            dbs = _scratch_dbs(server)
            if db is not None:
                dbs = [n for n in dbs if n == db]
            _check_target(target, [target_db if target_db is not None else n for n in dbs])
            per_db: dict[str, dict[str, int]] = {}
            for n in dbs:
                to_db = target_db if target_db is not None else n
                source = server.client(n)
                dest = _target_client(target, to_db)
                try:
                    restored, skipped = copy_keys(
                        source, dest, target, mode=mode, pattern=pattern, batch_size=batch_size
                    )
                except redis.RedisError as exc:
                    raise _target_error(target, exc) from None
                finally:
                    source.close()
                    dest.close()
                per_db[str(to_db)] = {"restored": restored, "skipped": skipped}
            functions = 0
            if db is None and pattern is None:
                source = server.client()
                try:
                    functions = _copy_functions(source, target, mode)
                finally:
                    source.close()

    return {
        "engine": "redis",
        "backup_id": manifest.id,
        "target": str(target),
        "mode": mode,
        "pattern": pattern,
        "databases": per_db,
        "keys_restored": sum(d["restored"] for d in per_db.values()),
        "keys_skipped": sum(d["skipped"] for d in per_db.values()),
        "functions_restored": functions,
        "rdb": info.as_dict(),
        "duration_seconds": round(time.monotonic() - started, 3),
        "warnings": [],
    }


# -- as a file ---------------------------------------------------------------------------------


def _check_rdb_file(path: Path, tool: str) -> str:
    """Run redis-check-rdb on `path`: "ok", or "skipped" when the tool is missing."""
    found = shutil.which(tool)
    if found is None:
        return "skipped"
    proc = subprocess.run(
        [found, str(path)], capture_output=True, text=True, errors="replace", check=False
    )
    if proc.returncode != 0:
        lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
        detail = " | ".join(line.strip() for line in lines[-3:]) or f"exit {proc.returncode}"
        raise errors.IntegrityError(f"redis-check-rdb rejected the restored RDB: {detail}")
    return "ok"


def restore_to_data_dir(
    repo: Repository,
    backup_id: str,
    data_dir: Path,
    *,
    overwrite: bool = False,
    decrypt_key: Path | None = None,
    check_tool: str | None = "redis-check-rdb",
) -> dict[str, Any]:
    """Place the backup's RDB as `data_dir/dump.rdb` for a stopped Redis to load on start.

    The file is written next to its destination under a temp name, verified
    (SHA-256, CRC-64, and `redis-check-rdb` unless `check_tool` is None), then
    renamed into place atomically: a reader sees the old file or the whole new
    one. An existing dump.rdb is refused (TargetNotEmpty) unless `overwrite`.
    """
    started = time.monotonic()
    manifest = load_manifest(repo, backup_id)
    if not data_dir.is_dir():
        raise errors.UsageError(f"--data-dir {data_dir} is not a directory")
    final = data_dir / scratch.RDB_NAME
    if final.exists() and not overwrite:
        raise errors.TargetNotEmpty(f"{final} exists; pass --overwrite to replace it")
    warnings: list[str] = []
    if (data_dir / "appendonlydir").exists() or any(data_dir.glob("appendonly*.aof")):
        warnings.append(
            f"{data_dir} holds an AOF: a Redis started with appendonly yes loads the AOF, not "
            "dump.rdb; move the AOF away or start it once with appendonly no"
        )
    fd, tmp_name = tempfile.mkstemp(prefix=".dump.rdb.", suffix=".part", dir=data_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()  # fetch_verified creates it exclusively
    try:
        info = fetch_verified(repo, manifest, tmp, decrypt_key=decrypt_key)
        checked = _check_rdb_file(tmp, check_tool) if check_tool else "skipped"
        if final.exists() and not overwrite:  # appeared while we downloaded
            raise errors.TargetNotEmpty(f"{final} exists; pass --overwrite to replace it")
        tmp.chmod(0o640)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    with contextlib.suppress(OSError):
        shutil.chown(final, data_dir.stat().st_uid, data_dir.stat().st_gid)
    return {
        "engine": "redis",
        "backup_id": manifest.id,
        "data_dir": str(data_dir),
        "path": str(final),
        "size_bytes": info.size,
        "rdb": info.as_dict(),
        "rdb_check": checked,
        "duration_seconds": round(time.monotonic() - started, 3),
        "warnings": warnings,
    }
