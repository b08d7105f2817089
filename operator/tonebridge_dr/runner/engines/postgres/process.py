"""Cancellable external tools (pg_dump, pg_restore, psql, pg_basebackup).

Each tool runs in its own process group (session) so that cancelling it stops
the whole tree, Patroni `CancellableSubprocess` style. Its stderr is drained by
a thread: every line goes to the log (secrets scrubbed) and the last lines are
kept for the error message. Leaving the `with` block with an exception (error,
cancellation, KeyboardInterrupt from SIGTERM) terminates the group: SIGTERM,
then SIGKILL after a grace period, and always reaps the child.

Contracts:
- `iter_stdout()` yields the tool's stdout in chunks, never buffering more than
  one chunk; it stops at EOF.
- `feed(chunks)` writes to the tool's stdin and closes it; it returns False
  when the tool closed its end early (it did not want more input), and the
  caller decides whether that is an error.
- `check()` waits for the exit and raises `ToolError` with the tool's last
  error line on a non-zero status.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import io
import logging
import os
import re
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import IO, Any

from tonebridge_dr.runner import errors

log = logging.getLogger(__name__)

CHUNK_SIZE = 1024 * 1024
#: Seconds between SIGTERM and SIGKILL when cancelling a tool.
TERMINATE_GRACE = 5.0
_ERROR_LINE = re.compile(r"(\berror:|\bERROR:|\bFATAL:|\bPANIC:|could not|failed)")

PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL


def _identity(text: str) -> str:
    return text


#: Linux F_SETPIPE_SZ; a 1 MiB pipe lets a tool write (and us read) in large steps instead of
#: 64 KiB ones: fewer wake-ups and system calls on both sides of a multi-GB stream.
_F_SETPIPE_SZ = 1031
PIPE_SIZE = 1024 * 1024
#: `stream_stdout`: a read of less than this waits BATCH_DELAY before the next one.
SMALL_READ = 128 * 1024
BATCH_DELAY = 0.001
#: `prefetch_stdout`: the most it holds (memory), and how often it checks to stop.
PREFETCH_LIMIT = 16 * 1024 * 1024
PREFETCH_POLL_MS = 5


def _widen_pipe(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)


class ToolProcess:
    """One running tool; use as a context manager."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdin: int | IO[Any] | None = DEVNULL,
        stdout: int | IO[Any] | None = DEVNULL,
        scrub: Callable[[str], str] = _identity,
        name: str | None = None,
        keep_lines: int = 30,
    ) -> None:
        self.name = name or os.path.basename(argv[0])
        self.scrub = scrub
        self._tail: collections.deque[str] = collections.deque(maxlen=keep_lines)
        self._lines: list[str] = []
        self._collect = False
        self._prefetch_thread: threading.Thread | None = None
        self._prefetch_stop = threading.Event()
        self._prefetched: collections.deque[bytes] = collections.deque()
        self._prefetch_eof = False
        log.debug("starting %s", self.name)
        try:
            self.proc = subprocess.Popen(
                list(argv),
                stdin=stdin,
                stdout=stdout,
                stderr=PIPE,
                env=dict(env) if env is not None else None,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise errors.ToolError(f"cannot run {self.name}: {exc.strerror or exc}") from None
        for pipe in (self.proc.stdout, self.proc.stdin):
            if pipe is not None:
                _widen_pipe(pipe.fileno())
        self._stderr_thread = threading.Thread(
            target=self._drain_stderr, name=f"{self.name}-stderr", daemon=True
        )
        self._stderr_thread.start()

    # --- stderr ----------------------------------------------------------------------------
    def collect_stderr(self) -> None:
        """Also keep every stderr line (for tools whose stderr carries results)."""
        self._collect = True

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in iter(self.proc.stderr.readline, b""):
            line = self.scrub(raw.decode("utf-8", "replace").rstrip())
            if not line:
                continue
            self._tail.append(line)
            if self._collect:
                self._lines.append(line)
            level = logging.WARNING if "warning:" in line.lower() else logging.INFO
            log.log(level, "%s: %s", self.name, line)
        self.proc.stderr.close()

    @property
    def stderr_lines(self) -> list[str]:
        """Every stderr line seen so far (only with `collect_stderr()`)."""
        return list(self._lines)

    def error_line(self) -> str:
        """The most telling stderr line: the last one that reads like an error."""
        self._stderr_thread.join(timeout=TERMINATE_GRACE)
        lines = list(self._tail)
        for line in reversed(lines):
            if _ERROR_LINE.search(line):
                return " ".join(line.split())
        return " ".join(lines[-1].split()) if lines else "no error output"

    # --- stdout / stdin --------------------------------------------------------------------
    def iter_stdout(self, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        assert self.proc.stdout is not None, "started without stdout=PIPE"
        fd = self.proc.stdout.fileno()
        while True:
            chunk = os.read(fd, chunk_size)
            if not chunk:
                return
            yield chunk

    def prefetch_stdout(self, limit: int = PREFETCH_LIMIT) -> None:
        """Start reading stdout in a thread now, keeping at most `limit` bytes, until
        `stream_stdout` takes over: a tool started before its consumer is ready (pg_dump
        while the repository code loads) does not stall on a full pipe meanwhile."""
        assert self.proc.stdout is not None, "started without stdout=PIPE"
        self._prefetch_stop = threading.Event()
        self._prefetch_thread = threading.Thread(
            target=self._prefetch, args=(limit,), name=f"{self.name}-prefetch", daemon=True
        )
        self._prefetch_thread.start()

    def _prefetch(self, limit: int) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        size = 0
        try:
            while size < limit and not self._prefetch_stop.is_set():
                if not poller.poll(PREFETCH_POLL_MS):
                    continue
                chunk = os.read(fd, min(CHUNK_SIZE, limit - size))
                if not chunk:
                    self._prefetch_eof = True
                    return
                self._prefetched.append(chunk)
                size += len(chunk)
                if len(chunk) < SMALL_READ:
                    time.sleep(BATCH_DELAY)
        except (OSError, ValueError):  # the pipe was closed: the tool is being stopped
            self._prefetch_eof = True

    def stream_stdout(self, chunk_size: int = CHUNK_SIZE) -> Iterator[memoryview]:
        """Like `iter_stdout`, for multi-GB streams: every chunk is a view of one reused
        buffer (no allocation, no page faults per chunk), valid only until the next chunk
        is asked for, so a consumer that keeps data must copy it. Output prefetched by
        `prefetch_stdout` comes first.

        When a read finds little in the pipe (the tool writes slower than we read), the
        next one waits BATCH_DELAY first: the pipe then collects a batch instead of every
        4-8 KiB write of the tool waking us (and costing both sides a context switch).
        The pipe holds PIPE_SIZE, far more than a tool writes in that time.
        """
        assert self.proc.stdout is not None, "started without stdout=PIPE"
        if self._prefetch_thread is not None:
            self._prefetch_stop.set()
            self._prefetch_thread.join()
            self._prefetch_thread = None
            while self._prefetched:
                yield memoryview(self._prefetched.popleft())
            if self._prefetch_eof:
                return
        reader = io.FileIO(self.proc.stdout.fileno(), "rb", closefd=False)
        buffer = memoryview(bytearray(chunk_size))
        while True:
            size = reader.readinto(buffer)
            if not size:
                return
            yield buffer[:size]
            if size < SMALL_READ:
                time.sleep(BATCH_DELAY)

    def feed(self, chunks: Iterable[bytes]) -> bool:
        """Write every chunk to stdin, then close it. False when the tool stopped reading.

        When `chunks` raises, stdin stays open: the tool must not see a clean end of
        input (psql would COMMIT); leaving the `with` block terminates it first.
        """
        assert self.proc.stdin is not None, "started without stdin=PIPE"
        fd = self.proc.stdin.fileno()
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
        except BrokenPipeError:
            self.close_stdin()
            return False
        self.close_stdin()
        return True

    def close_stdin(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    # --- exit ------------------------------------------------------------------------------
    def wait(self) -> int:
        rc = self.proc.wait()
        self._stderr_thread.join()
        return rc

    def check(self) -> None:
        """Wait for the tool; ToolError with its last error line unless it exited 0."""
        rc = self.wait()
        if rc != 0:
            raise errors.ToolError(self.failure_message(rc))

    def failure_message(self, rc: int | None = None) -> str:
        rc = self.proc.returncode if rc is None else rc
        status = f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exit status {rc}"
        return f"{self.name} failed ({status}): {self.error_line()}"

    def terminate(self) -> None:
        """Stop the whole process group: SIGTERM, then SIGKILL after the grace period."""
        if self.proc.poll() is None:
            log.warning("stopping %s (pid %d) and its process group", self.name, self.proc.pid)
        for sig, grace in ((signal.SIGTERM, TERMINATE_GRACE), (signal.SIGKILL, None)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        # The leader may be gone while others in its group linger; make sure they are not.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def close(self) -> None:
        """Release our ends of the pipes (after the tool exited or was terminated)."""
        if self._prefetch_thread is not None:  # stop reading before the fd can be reused
            self._prefetch_stop.set()
            self._prefetch_thread.join()
            self._prefetch_thread = None
            self._prefetched.clear()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._stderr_thread.join(timeout=TERMINATE_GRACE)

    def __enter__(self) -> ToolProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is not None or self.proc.poll() is None:
                self.terminate()
        finally:
            self.close()


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    scrub: Callable[[str], str] = _identity,
    name: str | None = None,
) -> str:
    """Run a short tool to completion and return its stdout (e.g. `pg_dump --version`)."""
    with ToolProcess(argv, env=env, stdout=PIPE, scrub=scrub, name=name) as tool:
        out = b"".join(tool.iter_stdout())
        tool.check()
    return out.decode("utf-8", "replace")
