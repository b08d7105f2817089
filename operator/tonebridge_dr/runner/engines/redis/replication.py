"""Fetch a point-in-time RDB over the network, the way a replica does.

Sequence on one connection:

1. `AUTH [user] password` (when we have a password).
2. Facts for the manifest, each optional (a user may lack the permission):
   `INFO` (version, role, keyspace, aof_enabled) and `CONFIG GET appendonly`
   / `appendfsync` (falling back to INFO's `aof_enabled`).
3. `REPLCONF capa eof` (lets the server stream a diskless RDB instead of
   writing one to its own disk) and `REPLCONF rdb-only 1` (Redis >= 7: the
   server sends the RDB and then drops us, it never keeps us as a replica).
   A server that does not know them (`-ERR`) gets plain SYNC; a user that may
   not run them (`-NOPERM`) gets a clear error.
4. `SYNC`; the server answers with keepalive newlines while it forks, then
   `$<length>\\r\\n` + payload (disk-based) or `$EOF:<40-byte mark>\\r\\n` +
   payload + mark (diskless).
5. The payload is yielded in chunks of at most `chunk_size` bytes; after the
   last byte we close the connection, so even a server that treats us as a
   full replica only sees a replica that went away.

Nothing is buffered beyond one chunk; no file is written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.redis import resp
from tonebridge_dr.runner.engines.redis.endpoints import Endpoint

EOF_MARK_SIZE = 40
DEFAULT_CHUNK_SIZE = 1024 * 1024
DEFAULT_TIMEOUT = 300.0
REPLICATION_GRANT = "+sync +psync +replconf"


@dataclasses.dataclass
class ServerFacts:
    """What the source told us about itself; None where it would not say."""

    version: str | None = None
    role: str | None = None
    keyspace: dict[int, dict[str, int]] = dataclasses.field(default_factory=dict)
    appendonly: str | None = None  # "yes" / "no"
    appendfsync: str | None = None  # "always" / "everysec" / "no"
    aof_source: str | None = None  # "config" / "info"
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def keys(self) -> int | None:
        if not self.keyspace and self.version is None:
            return None
        return sum(db.get("keys", 0) for db in self.keyspace.values())


@dataclasses.dataclass(frozen=True)
class SyncInfo:
    transfer: str  # "diskless" (EOF-mark form) or "disk" (length-prefixed)
    rdb_only: bool  # the server accepted REPLCONF rdb-only
    length: int | None  # payload length announced (disk form only)


def parse_info(text: str) -> dict[str, str]:
    """INFO's `key:value` lines as a dict (section headers and blanks dropped)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or ":" not in line:
            continue
        key, value = line.split(":", 1)
        out[key] = value.strip()
    return out


def parse_keyspace(info: dict[str, str]) -> dict[int, dict[str, int]]:
    """`db0:keys=3,expires=1,avg_ttl=0` -> {0: {"keys": 3, "expires": 1, ...}}."""
    out: dict[int, dict[str, int]] = {}
    for key, value in info.items():
        if not (key.startswith("db") and key[2:].isdigit()):
            continue
        fields: dict[str, int] = {}
        for item in value.split(","):
            name, _, number = item.partition("=")
            if number.lstrip("-").isdigit():
                fields[name] = int(number)
        out[int(key[2:])] = fields
    return dict(sorted(out.items()))


class ReplicationClient:
    """One replication session against `endpoint`; use as a context manager."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        if chunk_size < 2 * EOF_MARK_SIZE:
            raise ValueError("chunk_size is too small")
        self.endpoint = endpoint
        self.timeout = timeout
        self.chunk_size = chunk_size
        self._conn: resp.Connection | None = None
        self.rdb_only = False
        self.capa_eof = False
        self.warnings: list[str] = []

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> ReplicationClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def conn(self) -> resp.Connection:
        if self._conn is None:
            raise errors.SourceError(f"not connected to Redis at {self.endpoint}")
        return self._conn

    def connect(self) -> None:
        """Connect and authenticate; raises AuthenticationError on bad credentials."""
        self._conn = resp.Connection(self.endpoint, self.timeout)
        try:
            self._authenticate()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- steps -------------------------------------------------------------------------------

    def _authenticate(self) -> None:
        ep = self.endpoint
        if ep.password is None and ep.username is None:
            return
        args: list[str] = ["AUTH"]
        if ep.username is not None:
            args.append(ep.username)
        args.append(ep.password or "")
        reply = self.conn.call(*args)
        if not isinstance(reply, resp.ServerError):
            return
        if "without any password configured" in reply.message:
            # The server wants no password; go on as the default user.
            self.warnings.append(
                f"Redis at {ep} has no password set, but one was given; it was not needed"
            )
            return
        if reply.code in ("WRONGPASS", "ERR", "NOPERM"):
            raise errors.AuthenticationError(
                f"Redis at {ep} rejected the credentials of user '{ep.user_label}' ({reply.code})"
            )
        raise errors.SourceError(f"AUTH on Redis at {ep} failed: {reply.message}")

    def _refused(self, command: str, reply: resp.ServerError) -> errors.DRError:
        ep = self.endpoint
        if reply.code == "NOAUTH":
            return errors.AuthenticationError(
                f"Redis at {ep} requires a password: set REDIS_PASSWORD or put it in the URL"
            )
        if reply.code == "NOPERM":
            user = ep.user_label
            return errors.AuthenticationError(
                f"user '{user}' may not run {command} on Redis at {ep}: a backup needs the "
                f"replication permissions (ACL SETUSER {user} {REPLICATION_GRANT})"
            )
        return errors.SourceError(f"Redis at {ep} refused {command}: {reply.message}")

    def inspect(self) -> ServerFacts:
        """Gather the facts the manifest records; missing permissions only cost a warning."""
        facts = ServerFacts(warnings=self.warnings)
        ep = self.endpoint
        info: dict[str, str] = {}
        reply = self.conn.call("INFO")
        if isinstance(reply, resp.ServerError):
            if reply.code == "NOAUTH":
                raise self._refused("INFO", reply)
            facts.warnings.append(
                f"cannot run INFO on Redis at {ep} as user '{ep.user_label}' ({reply.code}): "
                "server version and key counts are not recorded"
            )
        elif isinstance(reply, bytes):
            info = parse_info(reply.decode("utf-8", "replace"))
            facts.version = info.get("redis_version")
            facts.role = info.get("role")
            facts.keyspace = parse_keyspace(info)

        for name in ("appendonly", "appendfsync"):
            value = self._config_get(name)
            if value is not None:
                setattr(facts, name, value)
                facts.aof_source = "config"
        if facts.appendonly is None and "aof_enabled" in info:
            facts.appendonly = "yes" if info["aof_enabled"] == "1" else "no"
            facts.aof_source = "info"
        if facts.appendonly is None:
            facts.warnings.append(
                f"cannot tell whether AOF is enabled on Redis at {ep}: user "
                f"'{ep.user_label}' may run neither CONFIG GET nor INFO"
            )
        elif facts.appendonly != "yes":
            facts.warnings.append(
                f"AOF is disabled on Redis at {ep} (appendonly no): writes after the last "
                "snapshot are lost when it crashes; set appendonly yes and appendfsync everysec"
            )
        elif facts.appendfsync == "no":
            facts.warnings.append(
                f"Redis at {ep} has appendonly yes but appendfsync no: the OS decides when "
                "the AOF reaches the disk; appendfsync everysec is recommended"
            )
        return facts

    def _config_get(self, name: str) -> str | None:
        reply = self.conn.call("CONFIG", "GET", name)
        if isinstance(reply, list) and len(reply) >= 2 and isinstance(reply[1], bytes):
            return reply[1].decode()
        if isinstance(reply, resp.ServerError) and reply.code == "NOAUTH":
            raise self._refused("CONFIG GET", reply)
        return None  # not permitted, renamed away, or unknown parameter

    def negotiate(self) -> None:
        """REPLCONF capa eof / rdb-only; an older server (-ERR) gets plain SYNC."""
        reply = self.conn.call("REPLCONF", "capa", "eof")
        if isinstance(reply, resp.ServerError):
            if reply.code in ("NOPERM", "NOAUTH"):
                raise self._refused("REPLCONF", reply)
        else:
            self.capa_eof = True
        reply = self.conn.call("REPLCONF", "rdb-only", "1")
        if isinstance(reply, resp.ServerError):
            if reply.code in ("NOPERM", "NOAUTH"):
                raise self._refused("REPLCONF", reply)
            self.warnings.append(
                f"Redis at {self.endpoint} does not support REPLCONF rdb-only (Redis < 7): "
                "used plain SYNC and disconnected after the RDB"
            )
        else:
            self.rdb_only = True

    def sync(self) -> tuple[SyncInfo, Iterator[bytes]]:
        """Send SYNC and wait for the payload header; return it and the payload chunks.

        The iterator closes the connection when the payload is complete (or on any
        error); a short payload raises SourceError.
        """
        conn = self.conn
        conn.send("SYNC")
        while True:
            line = conn.read_line()
            if not line:
                continue  # keepalive while the server forks / waits for more replicas
            if line.startswith(b"-"):
                raise self._refused("SYNC", resp.ServerError(line[1:].decode("utf-8", "replace")))
            if line.startswith(b"+"):
                continue  # +FULLRESYNC or similar chatter: not for plain SYNC, but harmless
            if line.startswith(b"$EOF:"):
                mark = line[5:]
                if len(mark) != EOF_MARK_SIZE:
                    raise errors.SourceError(
                        f"Redis at {self.endpoint} sent a malformed SYNC header"
                    )
                info = SyncInfo(transfer="diskless", rdb_only=self.rdb_only, length=None)
                return info, self._guarded(self._read_until_mark(mark))
            if line.startswith(b"$") and line[1:].isdigit():
                length = int(line[1:])
                info = SyncInfo(transfer="disk", rdb_only=self.rdb_only, length=length)
                return info, self._guarded(self._read_length(length))
            raise errors.SourceError(
                f"Redis at {self.endpoint} answered SYNC with {line[:40]!r}, not an RDB transfer"
            )

    def _guarded(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        try:
            yield from chunks
        finally:
            self.close()

    def _read_length(self, length: int) -> Iterator[bytes]:
        conn = self.conn
        buf = bytearray(min(self.chunk_size, max(length, 1)))
        view = memoryview(buf)
        remaining = length
        while remaining:
            filled = 0
            want = min(len(buf), remaining)
            while filled < want:
                n = conn.recv_into(view[filled:want])
                if n == 0:
                    raise self._short(length - remaining + filled, length)
                filled += n
            remaining -= filled
            yield bytes(view[:filled])

    def _short(self, got: int, expected: int | None) -> errors.SourceError:
        of = f" of {expected}" if expected is not None else ""
        return errors.SourceError(
            f"Redis at {self.endpoint} closed the connection after {got}{of} bytes of the RDB"
        )

    def _read_until_mark(self, mark: bytes) -> Iterator[bytes]:
        # buf[:filled] holds stream bytes not yet yielded; the last EOF_MARK_SIZE of
        # them are always held back, since they might be the mark.
        conn = self.conn
        size = self.chunk_size
        buf = bytearray(size + EOF_MARK_SIZE)
        view = memoryview(buf)
        filled = 0
        total = 0
        while True:
            n = conn.recv_into(view[filled:])
            if n == 0:
                raise self._short(total + filled, None)
            filled += n
            if filled >= EOF_MARK_SIZE and view[filled - EOF_MARK_SIZE : filled] == mark:
                if filled > EOF_MARK_SIZE:
                    yield bytes(view[: filled - EOF_MARK_SIZE])
                return
            if filled >= size:
                out = filled - EOF_MARK_SIZE
                yield bytes(view[:out])
                total += out
                view[:EOF_MARK_SIZE] = view[out:filled]
                filled = EOF_MARK_SIZE
