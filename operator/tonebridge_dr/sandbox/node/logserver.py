"""The node agent's kubelet endpoint, so `kubectl logs` works.

The API server proxies `pods/log` to https://<node InternalIP>:<kubeletEndpoint
port>/containerLogs/<ns>/<pod>/<container>; this serves that path from the
container's log file (query: follow, tailLines, limitBytes; timestamps,
sinceSeconds and previous are ignored). Only the API server (a client
certificate of the sandbox CA) may connect.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from tonebridge_dr.sandbox.pki import Pki

#: (namespace, pod, container) -> (log file, container still running); KeyError if unknown.
LogFinder = Callable[[str, str, str], tuple[Path, bool]]


def _tail(data: bytes, lines: int) -> bytes:
    if lines < 0:
        return data
    if lines == 0:
        return b""
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:])


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        return  # the API server logs requests already

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        if parts == ["healthz"]:
            self._reply(200, b"ok")
            return
        if len(parts) != 4 or parts[0] != "containerLogs":
            self._reply(404, b"the sandbox node agent only serves containerLogs\n")
            return
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            path, _ = self.server.find(parts[1], parts[2], parts[3])
        except KeyError as error:
            self._reply(404, f"{error.args[0]}\n".encode())
            return
        follow = query.get("follow") in ("true", "1")
        tail_lines = int(query.get("tailLines", "-1"))
        limit = int(query.get("limitBytes", "0")) or None
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            data = b""
        offset = len(data)
        body = _tail(data, tail_lines)
        if limit is not None:
            body = body[:limit]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        if not follow:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if not follow or (limit is not None and len(body) >= limit):
            return
        self._follow(parts[1:], path, offset)

    def _follow(self, key: list[str], path: Path, offset: int) -> None:
        """Stream what the container appends until it is no longer running."""
        running = True
        while running and not self.server.stopping.is_set():
            try:
                running = self.server.find(key[0], key[1], key[2])[1]
            except KeyError:
                running = False
            # Read after the check, so output written just before the exit is sent.
            try:
                with path.open("rb") as f:
                    f.seek(offset)
                    chunk = f.read()
            except FileNotFoundError:
                chunk = b""
            if chunk:
                offset += len(chunk)
                try:
                    self.wfile.write(chunk)
                    self.wfile.flush()
                except OSError:
                    return
            elif running:
                time.sleep(0.2)

    def _reply(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, find: LogFinder) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.find = find
        self.stopping = threading.Event()


class KubeletServer:
    def __init__(self, keys: Pki, find: LogFinder) -> None:
        self.keys = keys
        self._server = _Server(find)
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Serve in a background thread; returns the port."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self.keys.kubelet_cert), str(self.keys.kubelet_key))
        context.load_verify_locations(str(self.keys.ca_cert))
        context.verify_mode = ssl.CERT_REQUIRED
        self._server.socket = context.wrap_socket(
            self._server.socket, server_side=True, do_handshake_on_connect=False
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="kubelet-logs"
        )
        self._thread.daemon = True
        self._thread.start()
        return int(self._server.server_address[1])

    def stop(self) -> None:
        self._server.stopping.set()
        self._server.shutdown()
        self._server.server_close()
