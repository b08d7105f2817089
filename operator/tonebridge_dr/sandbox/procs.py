"""Child processes that cannot outlive the sandbox.

Three layers, so nothing is orphaned however the sandbox ends:

1. every child runs in its own process group (session), so a whole tree is
   signalled at once with `killpg`;
2. every child asks the kernel for a parent-death signal
   (`prctl(PR_SET_PDEATHSIG)`), so it dies when the process (precisely: the
   thread) that spawned it dies, even by SIGKILL;
3. every group is recorded in a pidfile (`ProcessTable`) with the leader's start
   time; `tonebridge-dr sandbox down` kills what is left of each recorded group,
   found by scanning /proc, which also catches grandchildren that survived.

Start times (clock ticks since boot, /proc/<pid>/stat field 22) guard against
pid reuse: a pid counts as ours only while its start time matches.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name, or None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name is in parentheses and may itself contain ") ".
    return raw[raw.rindex(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """Start time of a live (non-zombie) process in clock ticks since boot, else None."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def is_alive(pid: int, started: int | None = None) -> bool:
    """True if `pid` runs and, when given, started at `started` (not a reused pid)."""
    current = start_time(pid)
    return current is not None and (started is None or current == started)


def group_members(pgid: int, since: int = 0) -> list[int]:
    """Live processes in process group `pgid` that started at or after `since`."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is None or fields[0] in ("Z", "X"):
            continue
        if int(fields[2]) == pgid and int(fields[19]) >= since:
            members.append(int(entry.name))
    return members


def kill_group(pgid: int, since: int, grace: float) -> None:
    """SIGTERM every member of the group, SIGKILL whoever is left after `grace` seconds.

    Returns when no member started at or after `since` is left (zombies do not count).
    """
    members = group_members(pgid, since)
    if not members:
        return
    for pid in members:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not group_members(pgid, since):
            return
        time.sleep(0.05)
    for _ in range(100):
        members = group_members(pgid, since)
        if not members:
            return
        for pid in members:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def _death_signal_setup(sig: int, parent: int) -> Callable[[], None]:
    def setup() -> None:  # runs in the child between fork and exec
        _prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return setup


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path | str | None = None,
    stdout: IO[bytes] | int | None = None,
    stderr: IO[bytes] | int | None = None,
    death_signal: int = signal.SIGKILL,
) -> subprocess.Popen[bytes]:
    """Start `argv` as the leader of a new session with a parent-death signal.

    The death signal fires when the *calling thread* exits, so call this from a
    thread that outlives the child (the main thread, or the thread that waits on it).
    """
    return subprocess.Popen(
        list(argv),
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
        close_fds=True,
        preexec_fn=_death_signal_setup(death_signal, os.getpid()),
    )


def exit_code(returncode: int) -> int:
    """A Popen return code as a shell / container runtime reports it (128+signal)."""
    return 128 - returncode if returncode < 0 else returncode


@dataclass(frozen=True)
class ProcessRecord:
    """One process group the sandbox started."""

    name: str
    pid: int
    pgid: int
    started: int


class ProcessTable:
    """The pidfile: every process group the sandbox started and not yet reaped.

    Thread-safe; the file is rewritten atomically on every change, so a reader in
    another process (`sandbox down`) always sees a complete list.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._records: dict[int, ProcessRecord] = {}

    def add(self, name: str, pid: int) -> ProcessRecord:
        started = start_time(pid) or 0
        record = ProcessRecord(name=name, pid=pid, pgid=pid, started=started)
        with self._lock:
            self._records[pid] = record
            self._write()
        return record

    def remove(self, pid: int) -> None:
        with self._lock:
            if self._records.pop(pid, None) is not None:
                self._write()

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps([asdict(r) for r in self._records.values()], indent=1))
        tmp.replace(self.path)

    @staticmethod
    def read(path: Path) -> list[ProcessRecord]:
        try:
            return [ProcessRecord(**item) for item in json.loads(path.read_text())]
        except (FileNotFoundError, ValueError, TypeError):
            return []


def kill_recorded(path: Path, grace: float = 5.0) -> list[ProcessRecord]:
    """Kill what is left of every group in the pidfile at `path`; return those that had
    live members. Safe to call when the file or the processes are gone."""
    killed = []
    for record in ProcessTable.read(path):
        if group_members(record.pgid, record.started):
            killed.append(record)
            kill_group(record.pgid, record.started, grace)
    return killed


def wait_gone(pid: int, started: int | None, timeout: float) -> bool:
    """Wait until `pid` (with start time `started`) no longer runs; True if it is gone."""
    deadline = time.monotonic() + timeout
    while is_alive(pid, started):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def iter_lines_tail(path: Path, max_bytes: int) -> Iterator[str]:
    """Lines of the last `max_bytes` bytes of a file (the first, partial line dropped)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except FileNotFoundError:
        return
    lines = data.decode("utf-8", "replace").splitlines()
    if size > max_bytes and lines:
        lines = lines[1:]
    yield from lines
