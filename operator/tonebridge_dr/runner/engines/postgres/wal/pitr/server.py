"""The restored cluster's server: its account, the temporary run (start, await promotion,
clean stop) and what its data directory and log say once recovery has ended."""
from __future__ import annotations

import contextlib
import datetime as dt
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.postgres import tools
from tonebridge_dr.runner.engines.postgres.wal import naming
from tonebridge_dr.runner.engines.postgres.wal.pitr.plan import parse_time
from tonebridge_dr.runner.engines.postgres.wal.pitr.settings import postmaster_options

_POLL = 0.2
#: A Unix socket path holds at most 107 bytes; PostgreSQL adds `/.s.PGSQL.<port>.lock`.
_SOCKET_DIR_LIMIT = 80
_LAST_XACT_RE = re.compile(r"last completed transaction was at log time (\S+ \S+)")


def postmaster_pid(data_dir: Path) -> int | None:
    try:
        first = (data_dir / "postmaster.pid").read_text().splitlines()[0]
        return int(first)
    except (OSError, ValueError, IndexError):
        return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def user(run_as: str) -> pwd.struct_passwd | None:
    """The account to own and run the cluster, when we are root; None otherwise."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(run_as)
    except KeyError:
        raise errors.UsageError(f"--run-as user {run_as!r} does not exist") from None


def chown_tree(root: Path, account: pwd.struct_passwd) -> None:
    for folder, dirs, files in os.walk(root):
        os.chown(folder, account.pw_uid, account.pw_gid)
        for name in (*dirs, *files):
            os.lchown(os.path.join(folder, name), account.pw_uid, account.pw_gid)


def _as_user(account: pwd.struct_passwd | None) -> dict[str, Any]:
    if account is None:
        return {}
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def _server_env(repo_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PGDATA", "PGPORT", "PGHOST")}
    env["TONEBRIDGE_DR_REPO"] = repo_url
    return env


def _log_tail(log_file: Path) -> str:
    try:
        lines = log_file.read_text(errors="replace").splitlines()
    except OSError:
        return "no server log"
    for line in reversed(lines):
        if "FATAL:" in line or "PANIC:" in line:
            return line.strip()
    return lines[-1].strip() if lines else "empty server log"


def controldata(data_dir: Path, major: int | None) -> dict[str, str]:
    binary = tools.tool("pg_controldata", major)
    proc = subprocess.run(
        [binary, "-D", str(data_dir)],
        capture_output=True,
        text=True,
        env={**os.environ, "LC_ALL": "C"},
        check=False,
    )
    if proc.returncode != 0:
        raise errors.ToolError(f"pg_controldata failed: {proc.stderr.strip()[-300:]}")
    fields: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def newest_history(wal_dir: Path) -> int | None:
    found = [
        int(entry.name[:8], 16)
        for entry in wal_dir.iterdir()
        if naming.is_valid(entry.name) and entry.name.endswith(".history")
    ]
    return max(found) if found else None


def switch_point(wal_dir: Path, timeline: int | None) -> str | None:
    """Where `timeline` branched off its parent (its history file's last switch LSN): the
    end of the last record recovery replayed before the server promoted onto it."""
    if timeline is None or timeline < 2:
        return None
    try:
        text = (wal_dir / f"{timeline:08X}.history").read_text(errors="replace")
        spans = naming.parse_history(timeline, text)
    except (OSError, errors.IntegrityError):
        return None
    return naming.format_lsn(spans[-1].begin)


def last_transaction_time(log_file: Path, offset: int) -> dt.datetime | None:
    """pg_last_xact_replay_timestamp() as PostgreSQL logs it when recovery ends (written
    after `offset`, i.e. by this run); None when no transaction was replayed."""
    try:
        with log_file.open("rb") as handle:
            handle.seek(offset)
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return None
    found = _LAST_XACT_RE.findall(text)
    if not found:
        return None
    try:
        return parse_time(found[-1])
    except errors.UsageError:
        return None


def private_socket_dir(account: pwd.struct_passwd | None) -> Path:
    """A fresh 0700 folder for the run's Unix sockets, owned by the server's account."""
    base = tempfile.gettempdir()
    if len(base) > _SOCKET_DIR_LIMIT - 16:
        base = "/tmp"
    folder = Path(tempfile.mkdtemp(prefix="tbdr-pg-", dir=base))
    if account is not None:
        os.chown(folder, account.pw_uid, account.pw_gid)
    return folder


def remove_socket_dir(folder: Path | None, data_dir: Path) -> None:
    """Remove our socket folder unless a server still runs with its lock file there."""
    if folder is None:
        return
    pid = postmaster_pid(data_dir)
    if pid is not None and alive(pid):
        return
    shutil.rmtree(folder, ignore_errors=True)


def shut_down(
    data_dir: Path, major: int | None, account: pwd.struct_passwd | None, timeout: float = 60.0
) -> None:
    """Stop whatever postmaster runs in `data_dir`, for a cluster about to be thrown away.

    `pg_ctl stop -m immediate` (no shutdown checkpoint: nothing of it is kept), then
    SIGQUIT and finally SIGKILL to the postmaster if it is still alive; returns once
    it is gone (its children follow it). A no-op when nothing runs.
    """
    pid = postmaster_pid(data_dir)
    if pid is None or not alive(pid):
        return
    with contextlib.suppress(subprocess.TimeoutExpired, OSError, errors.ToolError):
        subprocess.run(
            [tools.tool("pg_ctl", major), "-D", str(data_dir), "-m", "immediate", "-w",
             "-t", str(int(timeout)), "stop"],
            capture_output=True,
            env=_server_env(""),
            timeout=timeout + 10,
            check=False,
            **_as_user(account),
        )
    for signum, grace in ((signal.SIGQUIT, 10.0), (signal.SIGKILL, 10.0)):
        if not _running(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
        deadline = time.monotonic() + grace
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(_POLL / 4)
    if _running(pid):
        raise errors.ToolError(f"the PostgreSQL server (pid {pid}) in {data_dir} does not stop")


def _running(pid: int) -> bool:
    """`alive`, but a zombie is dead (and reaped when it is ours: a runner that is PID 1 of
    its container inherits the postmaster pg_ctl left behind)."""
    if not alive(pid):
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    if state != "Z":
        return True
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return False


class Server:
    """Starting, awaiting and stopping the restored cluster."""

    def __init__(
        self,
        data_dir: Path,
        major: int | None,
        account: pwd.struct_passwd | None,
        repo_url: str,
        log_file: Path,
        run: dict[str, str],
    ) -> None:
        self.data_dir = data_dir
        self.major = major
        self.account = account
        self.repo_url = repo_url
        self.log_file = log_file
        self.run = run
        self.log_offset = 0

    def _pg_ctl(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        argv = [tools.tool("pg_ctl", self.major), "-D", str(self.data_dir), *args]
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env=_server_env(self.repo_url),
            timeout=timeout + 30,
            check=False,
            **_as_user(self.account),
        )

    def start(self, timeout: float) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        if self.account is not None:
            os.chown(self.log_file.parent, self.account.pw_uid, self.account.pw_gid)
        try:
            self.log_offset = self.log_file.stat().st_size
        except FileNotFoundError:
            self.log_offset = 0
        proc = self._pg_ctl(
            "-l",
            str(self.log_file),
            "-o",
            postmaster_options(self.run),
            "-w",
            "-t",
            str(int(timeout)),
            "start",
            timeout=timeout,
        )
        if proc.returncode != 0:
            pid = postmaster_pid(self.data_dir)
            if pid is None or not alive(pid):
                raise errors.ToolError(
                    f"the restored server did not start: {_log_tail(self.log_file)} "
                    f"(log: {self.log_file})"
                )

    def await_promotion(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            pid = postmaster_pid(self.data_dir)
            if pid is None or not alive(pid):
                raise errors.ToolError(
                    f"the restored server stopped during recovery: {_log_tail(self.log_file)} "
                    f"(log: {self.log_file})"
                )
            # recovery.signal goes first, then pg_control says "in production" (the
            # postmaster status line says "ready" as soon as hot standby accepts connections).
            if not (self.data_dir / "recovery.signal").exists():
                state = controldata(self.data_dir, self.major).get("Database cluster state")
                if state == "in production":
                    return
            if time.monotonic() > deadline:
                raise errors.ToolError(
                    f"recovery did not finish within {timeout:.0f} s; the server keeps "
                    f"running (log: {self.log_file})"
                )
            time.sleep(_POLL)

    def stop(self, timeout: float = 120.0) -> None:
        """Shut down cleanly (fast mode: a shutdown checkpoint) and check pg_control."""
        proc = self._pg_ctl("-m", "fast", "-w", "-t", str(int(timeout)), "stop", timeout=timeout)
        if proc.returncode != 0:
            raise errors.ToolError(f"pg_ctl stop failed: {proc.stderr.strip()[-300:]}")
        state = controldata(self.data_dir, self.major).get("Database cluster state", "")
        if state != "shut down":
            raise errors.ToolError(
                f"the restored server did not shut down cleanly: pg_control says {state!r} "
                f"(log: {self.log_file})"
            )
        # pg_ctl restart would replay the temporary run's command line from it.
        (self.data_dir / "postmaster.opts").unlink(missing_ok=True)

