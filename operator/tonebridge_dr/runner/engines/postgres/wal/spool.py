"""The local spool next to pg_wal, and the fast paths of wal-push / wal-fetch.

Location: `<pg_wal>/tonebridge-dr/` (or `$TONEBRIDGE_DR_WAL_SPOOL`). Inside
pg_wal because pg_basebackup and PostgreSQL's own WAL recycling both ignore
unknown folders there, so the spool lives and dies with the data directory and
is never copied into a base backup (a restored cluster must not inherit the
markers of the one it was copied from).

    pushed/<file>       marker: <file> is durably stored in the repository
    pusher.lock         flock()ed by the running background pusher (its repository, pid)
    pusher.log          the background pusher's warnings and errors
    pusher.stop         asks the running pusher to exit (archive_command changed repository)
    prefetch/<segment>  a prefetched, verified, fsynced segment waiting for PostgreSQL
    prefetch/.wanted    the segment PostgreSQL asked for last (the prefetcher follows it)
    prefetch/.waiting   the segment a call waits for (it was not prefetched yet)
    prefetch/.failed    the prefetcher could not get the waited-for segment: the call
                        goes the slow way, which decides (not found, or an error)
    prefetch/.repo      the repository the prefetched files came from
    prefetch/.lock      flock()ed by the running prefetcher (holds its pid)

A push marker is written only after the repository acknowledged the upload
(S3 answered the PUT, or the file and its folder were fsynced), and records the
repository URL plus size, mtime and inode of the file it describes. The fast
path acknowledges a file only when all of them still match: a different
repository, or a file rewritten or copied since, goes the slow way (which
checks the repository itself). Markers are consumed (deleted) when used.

While a background pusher runs (archive.py: it uploads every `.ready` file
PostgreSQL has not asked for yet), a call that finds no marker for its own
`.ready` file waits for one: it polls the marker until it appears, the pusher
exits (an upload failed, or it went idle) or `TONEBRIDGE_DR_WAL_PUSH_WAIT`
seconds (default 60) pass, and otherwise takes the slow path.

This module is what a fast-path call imports: only `os`, `sys`, `time` and
`fcntl` (built in). Nothing here talks to the repository. So it spells the few
values of the operator/runner contract it needs (api/runner_contract.py, each named
where it stands; a test checks they agree) instead of importing it.
"""

from __future__ import annotations

import os
import sys
import time

#: runner_contract.ENV_REPO: the repository when `--repo` is not given.
REPO_ENV = "TONEBRIDGE_DR_REPO"
SPOOL_ENV = "TONEBRIDGE_DR_WAL_SPOOL"
SPOOL_NAME = "tonebridge-dr"
PUSHED = "pushed"
PREFETCH = "prefetch"
WANTED = ".wanted"
WAITING = ".waiting"
FAILED = ".failed"
REPO = ".repo"
LOCK = ".lock"
LOG = "prefetch.log"
PUSHER_LOCK = "pusher.lock"
PUSHER_LOG = "pusher.log"
PUSHER_STOP = "pusher.stop"
#: The compiled front door of these fast paths (walfast.c), installed next to the Python.
WALFAST_NAME = "tonebridge-dr-walfast"
PUSH_WAIT_ENV = "TONEBRIDGE_DR_WAL_PUSH_WAIT"
DEFAULT_PUSH_WAIT = 60.0
#: Seconds between two looks at the marker while waiting for the background pusher.
PUSH_POLL = 0.003
FETCH_WAIT_ENV = "TONEBRIDGE_DR_WAL_FETCH_WAIT"
DEFAULT_FETCH_WAIT = 60.0
#: Seconds between two looks at the spool while waiting for the prefetcher.
FETCH_POLL = 0.002

_HEX = frozenset("0123456789ABCDEF")


def spool_root(wal_dir: str) -> str:
    """The spool folder for the pg_wal folder `wal_dir`."""
    return os.environ.get(SPOOL_ENV) or os.path.join(wal_dir, SPOOL_NAME)


def pushed_dir(wal_dir: str) -> str:
    return os.path.join(spool_root(wal_dir), PUSHED)


def prefetch_dir(wal_dir: str) -> str:
    return os.path.join(spool_root(wal_dir), PREFETCH)


def _is_segment_name(name: str) -> bool:
    return len(name) == 24 and set(name) <= _HEX


def _plausible_wal_name(name: str) -> bool:
    """Cheap pre-check (the slow path validates properly)."""
    return len(name) >= 16 and set(name[:8]) <= _HEX and "/" not in name


def _stat_fields(path: str) -> dict[str, str]:
    st = os.stat(path)
    return {"size": str(st.st_size), "mtime_ns": str(st.st_mtime_ns), "ino": str(st.st_ino)}


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _read_fields(path: str) -> dict[str, str]:
    with open(path) as handle:
        text = handle.read()
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key] = value
    return fields


# -- push markers ----------------------------------------------------------------------


def write_push_marker(
    path: str, repo_url: str, key: str, sha256: str, stat: dict[str, str]
) -> None:
    """Record that `path` (whose stat fields were taken before reading it) is stored as `key`."""
    folder = pushed_dir(os.path.dirname(os.path.abspath(path)))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    name = os.path.basename(path)
    fields = {"name": name, "repo": repo_url, "key": key, "sha256": sha256, **stat}
    _write_atomic(os.path.join(folder, name), "".join(f"{k}={v}\n" for k, v in fields.items()))


def file_stat(path: str) -> dict[str, str]:
    """The stat fields a push marker records (taken before the file is read)."""
    return _stat_fields(path)


def _valid_marker(path: str, repo_url: str) -> str | None:
    """The marker path when a marker for `path` matches it and `repo_url`, else None."""
    name = os.path.basename(path)
    if not _plausible_wal_name(name) or not repo_url:
        return None
    marker = os.path.join(pushed_dir(os.path.dirname(path)), name)
    try:
        fields = _read_fields(marker)
        current = _stat_fields(path)
    except OSError:
        return None
    if fields.get("name") != name or fields.get("repo") != repo_url:
        return None
    if any(fields.get(key) != value for key, value in current.items()):
        return None
    return marker


def has_push_marker(path: str, repo_url: str) -> bool:
    """True when `path` was pushed ahead to `repo_url` and has not changed since."""
    return _valid_marker(os.path.abspath(path), repo_url) is not None


def try_push_fast(path_arg: str, repo_url: str) -> bool:
    """True when a marker proves `path_arg` is already stored in `repo_url` (marker consumed)."""
    marker = _valid_marker(os.path.abspath(path_arg), repo_url)
    if marker is None:
        return False
    try:  # noqa: SIM105 - contextlib is not worth importing on the fast path
        os.unlink(marker)
    except OSError:
        pass
    return True


def forget_push_markers(wal_dir: str, keep: set[str] | None = None) -> int:
    """Remove markers of files that are gone from pg_wal (PostgreSQL removed them)."""
    folder = pushed_dir(wal_dir)
    removed = 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        if keep is not None and name in keep:
            continue
        if name.endswith(".tmp") or not os.path.exists(os.path.join(wal_dir, name)):
            try:
                os.unlink(os.path.join(folder, name))
                removed += 1
            except OSError:
                pass
    return removed


# -- the background pusher ------------------------------------------------------------------


def pusher_lock_path(wal_dir: str) -> str:
    return os.path.join(spool_root(wal_dir), PUSHER_LOCK)


def is_ready(path: str) -> bool:
    """True while PostgreSQL has `path` marked `.ready` (not archived yet)."""
    folder, name = os.path.split(path)
    return os.path.exists(os.path.join(folder, "archive_status", f"{name}.ready"))


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, "").strip() or default)
    except ValueError:
        return default


def wait_for_pusher(path_arg: str, repo_url: str, timeout: float | None = None) -> bool:
    """True once the background pusher stored `path_arg` (its marker is consumed).

    False at once when no pusher runs or PostgreSQL has not marked the file
    `.ready`; False when the pusher exits without storing it or after `timeout`
    seconds: the caller then takes the slow path, which reports any error.
    """
    path = os.path.abspath(path_arg)
    if not repo_url or not _plausible_wal_name(os.path.basename(path)) or not is_ready(path):
        return False
    lock = pusher_lock_path(os.path.dirname(path))
    if pusher_repo(os.path.dirname(path)) != repo_url:
        return False  # no pusher, or one for another repository: its markers would not match
    limit = _env_float(PUSH_WAIT_ENV, DEFAULT_PUSH_WAIT) if timeout is None else timeout
    deadline = time.monotonic() + limit
    while lock_held(lock):
        if try_push_fast(path, repo_url):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(PUSH_POLL)
    return try_push_fast(path, repo_url)  # it may have stored it just before it exited


def take_pusher_lock(wal_dir: str) -> int | None:
    """The fd holding the background pusher's lock, or None when a pusher runs.

    The holder writes `describe_pusher(...)` into it: the waiting calls read the
    repository from it.
    """
    import fcntl

    folder = spool_root(wal_dir)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(folder, PUSHER_LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def pusher_repo(wal_dir: str) -> str | None:
    """The repository the running (or last) background pusher described in its lock file."""
    text = read_text(pusher_lock_path(wal_dir))
    return text.split("\n")[0] if text else None


def request_pusher_stop(wal_dir: str) -> None:
    """Ask the running background pusher to exit after its current batch."""
    _write_atomic(os.path.join(spool_root(wal_dir), PUSHER_STOP), "stop\n")


def pusher_stop_requested(wal_dir: str) -> bool:
    return os.path.exists(os.path.join(spool_root(wal_dir), PUSHER_STOP))


def clear_pusher_stop(wal_dir: str) -> None:
    try:  # noqa: SIM105
        os.unlink(os.path.join(spool_root(wal_dir), PUSHER_STOP))
    except OSError:
        pass


def describe_pusher(fd: int, repo_url: str, pid: int | None = None) -> None:
    """Write the repository (and pid) of the pusher holding the lock file `fd` into it."""
    text = repo_url + (f"\n{pid}" if pid is not None else "") + "\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode(), 0)


def start_pusher(wal_dir: str, lock_fd: int, argv: list[str]) -> int:
    """Start the background pusher detached, handing it the lock `lock_fd` (then closed here).

    The child inherits the locked open file, so there is no moment in which the
    lock is free between this call and the pusher running. Its log goes to
    `pusher.log`, cut when it exceeds 1 MiB. Returns the pusher's pid.
    """
    log_path = os.path.join(spool_root(wal_dir), PUSHER_LOG)
    try:
        if os.path.getsize(log_path) > 1024 * 1024:
            os.replace(log_path, f"{log_path}.1")
    except OSError:
        pass
    return _spawn_with_lock(log_path, lock_fd, argv)


def _spawn_with_lock(log_path: str, lock_fd: int, argv: list[str]) -> int:
    """`python -m ...wal ARGV --lock-fd N` detached (its own session), logging to
    `log_path`, inheriting the locked open file `lock_fd` (closed here, whatever happens).
    Returns the child's pid."""
    import subprocess

    try:
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            child = subprocess.Popen(
                [sys.executable, "-m", "tonebridge_dr.runner.engines.postgres.wal", *argv,
                 "--lock-fd", str(lock_fd)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                close_fds=True,
                pass_fds=(lock_fd,),
            )
        finally:
            os.close(log)
    finally:
        os.close(lock_fd)
    return child.pid


# -- prefetch queue --------------------------------------------------------------------


def note_wanted(spool: str, name: str) -> None:
    """Tell the prefetcher which segment PostgreSQL asked for (best effort)."""
    try:  # noqa: SIM105
        _write_atomic(os.path.join(spool, WANTED), name)
    except OSError:
        pass


def read_text(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None


def take_prefetched(spool: str, name: str, dest: str, repo_url: str) -> bool:
    """Move a prefetched `name` to `dest` when it came from `repo_url`; True on success."""
    if not _is_segment_name(name):
        return False
    source = os.path.join(spool, name)
    if not os.path.exists(source) or read_text(os.path.join(spool, REPO)) != repo_url:
        return False
    try:
        os.replace(source, dest)
    except OSError:
        return False
    return True


def wait_for_prefetched(
    spool: str, name: str, dest: str, repo_url: str, timeout: float | None = None
) -> bool:
    """True once the running prefetcher delivered `name` and it was moved to `dest`.

    For a segment PostgreSQL asks for before the prefetcher has it: the call writes
    `.waiting` and the prefetcher fetches that segment first (or finishes the download it
    has in flight). False, and the caller takes the slow path, which decides and reports
    everything, when no prefetcher of `repo_url` runs, when it exits, when it writes
    `.failed` naming the segment (not in the archive, or an error), or after `timeout`
    seconds (`TONEBRIDGE_DR_WAL_FETCH_WAIT`, default 60).
    """
    lock = os.path.join(spool, LOCK)
    if read_text(os.path.join(spool, REPO)) != repo_url or not lock_held(lock):
        return False
    failed = os.path.join(spool, FAILED)
    try:  # noqa: SIM105 - an answer about an earlier wait is no answer about this one
        os.unlink(failed)
    except OSError:
        pass
    try:
        _write_atomic(os.path.join(spool, WAITING), name)
    except OSError:
        return False
    limit = _env_float(FETCH_WAIT_ENV, DEFAULT_FETCH_WAIT) if timeout is None else timeout
    deadline = time.monotonic() + limit
    wanted = os.path.join(spool, WANTED)
    while True:
        if take_prefetched(spool, name, dest, repo_url):
            return True
        if read_text(failed) == name or time.monotonic() >= deadline:
            return False
        if read_text(wanted) != name:  # the prefetcher serves `.waiting` = `.wanted` only
            note_wanted(spool, name)
        if not lock_held(lock):  # it exited; it may have delivered just before
            return take_prefetched(spool, name, dest, repo_url)
        time.sleep(FETCH_POLL)


def lock_held(path: str) -> bool:
    """True while another process holds the flock() on `path`."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing releases a lock we may just have taken
    return False


def prefetcher_running(spool: str) -> bool:
    """True while a prefetcher holds the spool lock."""
    return lock_held(os.path.join(spool, LOCK))


def take_prefetcher_lock(spool: str) -> int | None:
    """The fd holding the prefetcher's lock, or None when a prefetcher runs."""
    import fcntl

    os.makedirs(spool, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(spool, LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def start_prefetcher(spool: str, lock_fd: int, argv: list[str]) -> None:
    """Start the prefetcher detached (its own session), logging to `prefetch.log`, handing
    it the lock `lock_fd` (then closed here): from this moment on a prefetcher runs, so
    PostgreSQL's next calls wait for it (`wait_for_prefetched`) while it starts, instead
    of each downloading its own segment in a new interpreter."""
    _spawn_with_lock(os.path.join(spool, LOG), lock_fd, argv)


def prefetcher_argv(
    folder: str,
    *,
    repo_url: str,
    start: str,
    segment_size: int,
    data_dir: str,
    window: int,
    parallel: int,
    decrypt_key: str | None,
    allow_partial: bool,
) -> list[str]:
    """The `wal-prefetch` arguments of a prefetcher for `folder`."""
    argv = [
        "wal-prefetch",
        "--spool",
        folder,
        "--repo",
        repo_url,
        "--start",
        start,
        "--segment-size",
        str(segment_size),
        "--data-dir",
        data_dir,
        "--window",
        str(window),
        "--parallel",
        str(parallel),
    ]
    if decrypt_key:
        argv += ["--decrypt-key", decrypt_key]
    if allow_partial:
        argv.append("--allow-partial")
    return argv


# -- the fast paths --------------------------------------------------------------------------

_FETCH_FLAGS = frozenset({"--allow-partial", "--no-prefetch"})


def _split(
    argv: list[str], valued: frozenset[str], flags: frozenset[str]
) -> tuple[dict[str, str], list[str]] | None:
    """Tiny argv parser for the fast path; None for anything it does not understand."""
    options: dict[str, str] = {}
    positional: list[str] = []
    items = iter(argv)
    for item in items:
        if item.startswith("--"):
            key, sep, value = item.partition("=")
            if key in flags and not sep:
                options[key] = "1"
            elif key in valued:
                if not sep:
                    value = next(items, "")
                if not value:
                    return None
                options[key] = value
            else:
                return None
        elif item.startswith("-") and item != "-":
            return None
        else:
            positional.append(item)
    return options, positional


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw.isdigit() else default


def fast_main(argv: list[str]) -> int | None:
    """Answer `wal-push` / `wal-fetch` from the spool when possible, else None.

    Importing only built-in modules, this is what makes the calls after a
    push-ahead or a prefetch cheap. None means: take the normal (slow) path,
    which also reports every error properly.
    """
    if not argv or argv[0] not in ("wal-push", "wal-fetch"):
        return None
    if argv[0] == "wal-push":
        parsed = _split(argv[1:], frozenset({"--repo"}), frozenset())
        if parsed is None or len(parsed[1]) != 1:
            return None
        repo = parsed[0].get("--repo") or os.environ.get(REPO_ENV, "")
        if try_push_fast(parsed[1][0], repo) or wait_for_pusher(parsed[1][0], repo):
            return 0
        return None
    parsed = _split(argv[1:], frozenset({"--repo", "--decrypt-key"}), _FETCH_FLAGS)
    if parsed is None or len(parsed[1]) != 2:
        return None
    options, (name, dest_arg) = parsed
    repo = options.get("--repo") or os.environ.get(REPO_ENV, "")
    if not repo or not _is_segment_name(name) or "--no-prefetch" in options:
        return None
    dest = os.path.abspath(dest_arg)
    folder = prefetch_dir(os.path.dirname(dest))
    if not os.path.isdir(folder):
        return None
    note_wanted(folder, name)
    window = _env_int("TONEBRIDGE_DR_WAL_PREFETCH", 16)
    if not take_prefetched(folder, name, dest, repo) and not (
        window > 0 and wait_for_prefetched(folder, name, dest, repo)
    ):
        return None
    # A prefetcher is only an optimisation: the file is delivered whatever happens here.
    try:
        size = os.stat(dest).st_size
        lock_fd = take_prefetcher_lock(folder) if window > 0 else None
    except OSError:
        return 0
    if lock_fd is not None:  # none runs: start one (the spool's .repo is this repository)
        try:  # noqa: SIM105
            start_prefetcher(
                folder,
                lock_fd,  # start_prefetcher closes it, whatever happens
                prefetcher_argv(
                    folder,
                    repo_url=repo,
                    start=name,
                    segment_size=size,
                    data_dir=os.getcwd(),
                    window=window,
                    parallel=max(1, _env_int("TONEBRIDGE_DR_WAL_PARALLEL", 8)),
                    decrypt_key=options.get("--decrypt-key"),
                    allow_partial="--allow-partial" in options,
                ),
            )
        except OSError:
            pass
    return 0


# -- the front door of restore_command -------------------------------------------------------

#: wal-fetch's only exit codes. PostgreSQL takes any other status up to 125 for "not in
#: the archive" too, ends recovery there and promotes: an error answered with 1 (Python's
#: status for an uncaught exception) silently loses every transaction after that point.
FETCH_DELIVERED = 0  # runner_contract.WAL_FETCH_DELIVERED
FETCH_NOT_FOUND = 1  # runner_contract.WAL_FETCH_NOT_FOUND
FETCH_ABORT = 255  # runner_contract.WAL_FETCH_ABORT


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    try:  # the runner's scrubber, when the package can be imported at all
        from tonebridge_dr.runner.result import scrub
    except BaseException:  # a broken install must still get its one line out
        return line
    return scrub(line)


def fetch_main(argv: list[str]) -> int:
    """`wal-fetch NAME DEST`, whatever started it: exit status 0, 1 or 255, by construction.

    0: DEST holds the file (verified; fsynced when downloaded here, a prefetched file
    was fsynced before it was spooled). 1: the archive answered that NAME does not exist
    (`commands.fetch_slow` returns 1 from its WalNotFound clause and nowhere else). 255:
    everything else: a DRError, an OSError while writing DEST (EACCES, ENOSPC, EIO), bad
    arguments, a failed import, SIGINT, a bug. PostgreSQL then aborts recovery instead of
    promoting; recovery resumes where it stopped when the server is started again.
    """
    name = argv[-2] if len(argv) >= 3 else "?"  # restore_command ends with `%f %p`
    try:
        code = fast_main(argv)
        if code is None:
            from tonebridge_dr.runner.engines.postgres.wal import commands

            code = commands.fetch_slow(argv[1:])
    except SystemExit as exc:  # argparse: --help printed (0), or bad arguments
        if exc.code == 0 and any(arg in ("-h", "--help") for arg in argv[1:]):
            return FETCH_DELIVERED
        code = FETCH_ABORT
        detail = f"invalid arguments {argv[1:]!r}"
    except BaseException as exc:  # the contract: nothing unexplained is "not found"
        code = FETCH_ABORT
        detail = str(exc) or type(exc).__name__
        if not _is_runner_error(exc):
            detail = f"{type(exc).__name__}: {detail}"
    else:
        if code in (FETCH_DELIVERED, FETCH_NOT_FOUND):
            return code
        detail = f"unexpected status {code}"
    sys.stderr.write(
        _one_line(f"wal-fetch: {name}: {detail} (recovery stops here; fix the cause and "
                  "start the server again)") + "\n"
    )
    sys.stderr.flush()
    return FETCH_ABORT


def _is_runner_error(exc: BaseException) -> bool:
    """True for a DRError (its message is already one human sentence)."""
    return any(cls.__name__ == "DRError" for cls in type(exc).__mro__)


def light_main(argv: list[str]) -> int | None:
    """What every entry point answers before it loads the runner's front door (cli.py):
    all of wal-fetch (`fetch_main`: 0, 1 or 255, whatever happens), and a wal-push the
    spool proves stored (`fast_main`). None: run the full command."""
    if argv[:1] == ["wal-fetch"]:
        return fetch_main(argv)
    return fast_main(argv)


if __name__ == "__main__":
    # `python .../wal/spool.py wal-push %p`: the lightest entry point. A spool hit costs
    # an interpreter start and nothing else (not even the tonebridge_dr package); any
    # other call becomes the full command in place (exec keeps pid, env and cwd).
    _code = light_main(sys.argv[1:])
    if _code is not None:
        sys.exit(_code)
    _argv = [sys.executable, "-m", "tonebridge_dr.runner.engines.postgres.wal", *sys.argv[1:]]
    os.execv(sys.executable, _argv)
