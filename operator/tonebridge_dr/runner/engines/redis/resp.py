"""A minimal RESP2 connection on a raw socket.

redis-py cannot hand over the socket after `SYNC` (the reply is not RESP), so
the replication client speaks the protocol itself: commands as RESP arrays,
replies parsed just enough for AUTH / INFO / CONFIG GET / REPLCONF, then raw
reads of the RDB payload from the same buffer and socket.

Socket failures become `SourceError`s naming the endpoint, never the password.
"""

from __future__ import annotations

import socket
from typing import Union

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.redis.endpoints import Endpoint

Reply = Union[bytes, int, None, list["Reply"], "ServerError"]

_RECV_SIZE = 256 * 1024


class ServerError(Exception):
    """An error reply (`-ERR ...`, `-NOPERM ...`); `code` is its first word."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = message.split(" ", 1)[0] if message else "ERR"


def encode_command(*args: str | bytes | int) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class Connection:
    """One TCP connection; `timeout` bounds every single read and write, not the whole call."""

    def __init__(self, endpoint: Endpoint, timeout: float) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._buf = bytearray()
        try:
            self._sock: socket.socket | None = socket.create_connection(
                (endpoint.host, endpoint.port), timeout=timeout
            )
        except TimeoutError:
            raise errors.SourceError(
                f"cannot connect to Redis at {endpoint}: no answer within {timeout:g}s"
            ) from None
        except OSError as exc:
            raise errors.SourceError(
                f"cannot connect to Redis at {endpoint}: {exc.strerror or exc}"
            ) from None
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @property
    def sock(self) -> socket.socket:
        if self._sock is None:
            raise errors.SourceError(f"connection to Redis at {self.endpoint} is closed")
        return self._sock

    def close(self) -> None:
        """Close at once; safe to call twice. Closing is how we stop a SYNC transfer."""
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def _lost(self, exc: OSError) -> errors.SourceError:
        if isinstance(exc, TimeoutError):
            return errors.SourceError(
                f"Redis at {self.endpoint} sent nothing for {self.timeout:g}s"
            )
        return errors.SourceError(
            f"connection to Redis at {self.endpoint} failed: {exc.strerror or exc}"
        )

    def send(self, *args: str | bytes | int) -> None:
        try:
            self.sock.sendall(encode_command(*args))
        except OSError as exc:
            raise self._lost(exc) from None

    def recv_into(self, view: memoryview) -> int:
        """Raw read for payloads: first drains what the line reader buffered."""
        if self._buf:
            n = min(len(view), len(self._buf))
            view[:n] = self._buf[:n]
            del self._buf[:n]
            return n
        try:
            return self.sock.recv_into(view)
        except OSError as exc:
            raise self._lost(exc) from None

    def _fill(self) -> None:
        try:
            data = self.sock.recv(_RECV_SIZE)
        except OSError as exc:
            raise self._lost(exc) from None
        if not data:
            raise errors.SourceError(f"Redis at {self.endpoint} closed the connection")
        self._buf += data

    def read_line(self) -> bytes:
        """One line without its line end (`\\r\\n`, or the bare `\\n` keepalives of SYNC)."""
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[: end + 1]
                return line[:-1] if line.endswith(b"\r") else line
            self._fill()

    def _read_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._fill()
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def read_reply(self) -> Reply:
        line = self.read_line()
        if not line:
            raise errors.SourceError(f"Redis at {self.endpoint} sent an empty reply line")
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            return ServerError(rest.decode("utf-8", "replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self._read_exact(size + 2)
            return data[:-2]
        if kind == b"*":
            count = int(rest)
            if count < 0:
                return None
            return [self.read_reply() for _ in range(count)]
        raise errors.SourceError(
            f"Redis at {self.endpoint} sent an unexpected reply starting with {line[:20]!r}"
        )

    def call(self, *args: str | bytes | int) -> Reply:
        """Send one command and return its reply; an error reply is returned, not raised."""
        self.send(*args)
        return self.read_reply()
