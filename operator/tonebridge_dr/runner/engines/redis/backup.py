"""`backup redis`: one RDB, fetched over the replication protocol, into the repository.

The RDB streams from the socket through the RDB check (magic, version, CRC-64)
into `BackupWriter.put_object("dump.rdb", ...)`: no temp file, memory bounded
by one chunk plus the codec buffers. The check finishes when the stream ends,
inside put_object, so a corrupt or short RDB aborts the writer and no manifest
is ever written for it. The Redis pod's disk is never needed.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import tonebridge_dr
from tonebridge_dr.runner.engines.redis import rdb, replication
from tonebridge_dr.runner.engines.redis.endpoints import Endpoint
from tonebridge_dr.runner.repository.catalog import Repository

log = logging.getLogger(__name__)

ENGINE = "redis"
METHOD = "rdb"
OBJECT_NAME = "dump.rdb"
#: zstd level when none is given. RDB strings are already LZF-compressed where that
#: helps; on the rest level 1 compresses as well as level 3 (measured on text-like
#: values: ratio 0.50 vs 0.52) at about six times the speed, which keeps a backup
#: as fast as `redis-cli --rdb` (bench/README.md).
ZSTD_LEVEL = 1


def backup(
    endpoint: Endpoint,
    repo: Repository,
    *,
    compression: str = "zstd",
    encrypt_to: Path | None = None,
    level: int | None = None,
    storage_class: str | None = None,
    schedule: str | None = None,
    timeout: float = replication.DEFAULT_TIMEOUT,
    chunk_size: int = replication.DEFAULT_CHUNK_SIZE,
) -> dict[str, Any]:
    """Back up the Redis at `endpoint` into `repo`; return the JSON result.

    Connects, authenticates and checks the replication permissions before
    anything is stored. Raises AuthenticationError (bad credentials, missing
    ACL permissions), SourceError (unreachable, transfer cut short) or
    IntegrityError (the RDB failed its checks); in each case nothing is left
    in the repository.
    """
    if level is None and compression == "zstd":
        level = ZSTD_LEVEL
    with replication.ReplicationClient(endpoint, timeout=timeout, chunk_size=chunk_size) as client:
        facts = client.inspect()
        client.negotiate()
        with repo.begin(
            engine=ENGINE,
            method=METHOD,
            compression=compression,
            encrypt_to=encrypt_to,
            level=level,
            storage_class=storage_class,
            schedule=schedule,
        ) as writer:
            log.info("backup %s: SYNC from Redis at %s", writer.id, endpoint)
            began = time.monotonic()
            sync, payload = client.sync()
            check = rdb.RdbCheck(f"RDB from Redis at {endpoint}")
            entry = writer.put_object(OBJECT_NAME, rdb.checked(payload, check))
            transfer_seconds = time.monotonic() - began
            info = check.info or check.finish()
            if info.checksum == rdb.CHECKSUM_DISABLED:
                facts.warnings.append(
                    f"Redis at {endpoint} writes RDB files without a checksum "
                    "(rdbchecksum no): only the repository's SHA-256 protects this backup"
                )
            extra = _extra(facts, sync, info, transfer_seconds)
            extra["redis"]["compression_level"] = level
            manifest = writer.commit(
                databases=[f"db{n}" for n in facts.keyspace],
                server_version=facts.version,
                tools={"tonebridge-dr": tonebridge_dr.__version__, "transfer": "redis-sync"},
                extra=extra,
            )
    log.info(
        "backup %s: %d RDB bytes (%d stored), checksum %s",
        manifest.id,
        entry.raw_size,
        entry.size,
        info.checksum,
    )
    result = manifest.result()
    result["redis"] = extra["redis"]
    result["warnings"] = list(facts.warnings)
    return result


def _extra(
    facts: replication.ServerFacts,
    sync: replication.SyncInfo,
    info: rdb.RdbInfo,
    transfer_seconds: float,
) -> dict[str, Any]:
    """The manifest's `extra`: what a restore and the operator want to know later."""
    return {
        "redis": {
            "server_version": facts.version,
            "role": facts.role,
            "rdb_version": info.version,
            "rdb_size": info.size,
            "checksum": info.checksum,
            "crc64": info.crc64,
            "keys": facts.keys,
            "databases": {
                str(n): {"keys": db.get("keys", 0), "expires": db.get("expires", 0)}
                for n, db in facts.keyspace.items()
            },
            "key_counts_from": "INFO keyspace just before SYNC",
            "appendonly": facts.appendonly,
            "appendfsync": facts.appendfsync,
            "aof_source": facts.aof_source,
            "transfer": sync.transfer,
            "rdb_only": sync.rdb_only,
            "transfer_seconds": round(transfer_seconds, 3),
        },
        "warnings": list(facts.warnings),
    }
