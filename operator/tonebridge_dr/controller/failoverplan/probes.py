"""Health probes of a FailoverPlan's trigger and of its `check` steps: one probe, one
verdict, bounded by the check's `timeoutSeconds`. No state: hysteresis is
`status.failoverplan.observe_probe`.

- `postgres` decides like `pg_isready` (libpq's PQping): it sends a protocol 3.0
  StartupMessage as a role that needs no password to exist and reads the first answer.
  The server is up when it answers at all - an authentication request, or an error
  such as "password authentication failed" or "role does not exist" (the postmaster
  and a backend are serving). It is down when nothing answers (refused, timed out,
  closed) or when it answers 57P03 cannot_connect_now (starting up, shutting down, in
  recovery without hot standby): exactly what pg_isready reports as "rejecting
  connections" or "no response". No credentials are needed or sent.
- `tcp`: the TCP connection opens.
- `http`: a GET answers 2xx (redirects are not followed; no proxy).

Messages never contain more than host:port or the URL given in the spec.
"""

from __future__ import annotations

import dataclasses
import http.client
import socket
import struct
import time
import urllib.parse

from tonebridge_dr.api.failoverplan import HealthCheck, HealthCheckKind

__all__ = ["ProbeResult", "probe"]

PROBE_ROLE = "tonebridge_dr_probe"
_PROTOCOL_3 = 196608
_CANNOT_CONNECT_NOW = "57P03"


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    ok: bool
    message: str
    seconds: float


def _split(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host.strip("[]"), int(port)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("connection closed by the server")
        data += chunk
    return data


def _postgres(target: str, timeout: float) -> tuple[bool, str]:
    host, port = _split(target)
    params = b"user\0" + PROBE_ROLE.encode() + b"\0database\0postgres\0" \
        b"application_name\0tonebridge-dr-probe\0\0"
    startup = struct.pack("!II", len(params) + 8, _PROTOCOL_3) + params
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(startup)
        tag = _recv_exact(sock, 1)
        length = struct.unpack("!I", _recv_exact(sock, 4))[0]
        body = _recv_exact(sock, min(max(length - 4, 0), 8192))
    if tag == b"R":
        return True, f"PostgreSQL at {target} accepts connections"
    if tag == b"E":
        fields = {item[:1]: item[1:].decode(errors="replace")
                  for item in body.split(b"\0") if item}
        code = fields.get(b"C", "")
        if code == _CANNOT_CONNECT_NOW:
            return False, f"PostgreSQL at {target} rejects connections: {fields.get(b'M', '')}"
        return True, f"PostgreSQL at {target} answers (SQLSTATE {code})"
    return False, f"{target} answered something that is not PostgreSQL"


def _tcp(target: str, timeout: float) -> tuple[bool, str]:
    host, port = _split(target)
    with socket.create_connection((host, port), timeout=timeout):
        return True, f"TCP {target} open"


def _http(target: str, timeout: float) -> tuple[bool, str]:
    url = urllib.parse.urlsplit(target)
    cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    conn = cls(url.hostname or "", url.port, timeout=timeout)
    try:
        path = url.path or "/"
        if url.query:
            path += "?" + url.query
        conn.request("GET", path, headers={"User-Agent": "tonebridge-dr-probe"})
        status = conn.getresponse().status
    finally:
        conn.close()
    if 200 <= status <= 299:
        return True, f"HTTP {status} from {target}"
    return False, f"HTTP {status} from {target}"


_PROBES = {
    HealthCheckKind.POSTGRES: _postgres,
    HealthCheckKind.TCP: _tcp,
    HealthCheckKind.HTTP: _http,
}


def probe(check: HealthCheck) -> ProbeResult:
    """One probe of `check` (never raises for an unreachable or failing target)."""
    start = time.monotonic()
    try:
        ok, message = _PROBES[check.kind](check.target, float(check.timeout_seconds))
    except TimeoutError:
        ok, message = False, f"{check.target}: no answer within {check.timeout_seconds}s"
    except (OSError, http.client.HTTPException, ValueError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        if isinstance(exc, ConnectionError) and not exc.strerror:
            detail = str(exc) or type(exc).__name__
        ok, message = False, f"{check.target}: {detail}"
    return ProbeResult(ok, message, time.monotonic() - start)
