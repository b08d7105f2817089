"""A private, throwaway `redis-server` that loads a verified RDB for a restore.

It listens on a Unix socket only (`--port 0`, mode 700 in a private temp dir),
so nothing else on the host or in the pod network can reach it and there is
no free-port race. Persistence is off: it never writes the RDB back. The data
dir and the RDB in it are removed when the context ends, whatever happened.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis

from tonebridge_dr.runner import errors

DEFAULT_BINARY = "redis-server"
DEFAULT_LOAD_TIMEOUT = 6 * 3600.0
RDB_NAME = "dump.rdb"


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    wanted = [line for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(line.strip() for line in wanted)


class ScratchServer:
    """Start with `with ScratchServer(dir) as server:`; `dir/dump.rdb` must exist."""

    def __init__(
        self,
        data_dir: Path,
        *,
        binary: str = DEFAULT_BINARY,
        databases: int = 16,
        load_timeout: float = DEFAULT_LOAD_TIMEOUT,
    ) -> None:
        self.data_dir = data_dir
        self.binary = binary
        self.databases = max(16, databases)
        self.load_timeout = load_timeout
        self.socket_path = data_dir / "redis.sock"
        self.log_path = data_dir / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ScratchServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket_path), db=db, socket_timeout=600)

    def start(self) -> None:
        path = shutil.which(self.binary)
        if path is None:
            raise errors.ToolError(
                f"{self.binary} not found: restoring into a live Redis loads the RDB into a "
                "scratch redis-server first (use --redis-server PATH, or --data-dir)"
            )
        args = [
            path,
            "--port", "0",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.data_dir),
            "--dbfilename", RDB_NAME,
            "--databases", str(self.databases),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", str(self.log_path),
            "--loglevel", "notice",
        ]  # fmt: skip
        self._proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            self._wait_loaded()
        except BaseException:
            self.stop()
            raise

    def _wait_loaded(self) -> None:
        """Poll until the RDB is loaded; fail at once when the server exits."""
        assert self._proc is not None
        deadline = time.monotonic() + self.load_timeout
        client = self.client()
        delay = 0.01
        try:
            while True:
                code = self._proc.poll()
                if code is not None:
                    raise errors.ToolError(
                        f"scratch redis-server could not load the backup (exit {code}): "
                        f"{_tail(self.log_path) or 'no log output'}"
                    )
                try:
                    client.ping()
                    return
                except redis.BusyLoadingError:
                    pass
                except (redis.ConnectionError, FileNotFoundError):
                    pass  # socket not there yet
                if time.monotonic() > deadline:
                    raise errors.ToolError(
                        f"scratch redis-server did not finish loading the backup within "
                        f"{self.load_timeout:g}s"
                    )
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
        finally:
            client.close()

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()  # SIGTERM: with save "" it exits without writing anything
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=30)
