"""`wal-fetch`: restore_command, and the background prefetcher that keeps it fast.

`wal-fetch NAME DEST` writes the archived file NAME to DEST (PostgreSQL passes
`%f %p`; DEST is relative to the data directory, e.g. `pg_wal/RECOVERYXLOG`).
Exit status, as PostgreSQL reads it (decided in one place, `spool.fetch_main`,
which every entry point calls):

- 0: DEST holds the file, complete, verified (SHA-256 of the raw content
  equals the digest in its key) and fsynced (written to a temp file, renamed).
- 1: the archive has no such file. A normal answer: PostgreSQL asks for history
  files and for the segment after the last one, which need not exist.
- 255: anything else (repository unreachable, corrupt object, wrong key, an
  OS error writing DEST such as EACCES, ENOSPC or EIO, bad arguments). An
  exit status above 125 makes PostgreSQL abort recovery ("child process exited
  with exit code 255") instead of taking the failure for the end of the
  archive and promoting a database that silently misses WAL. Fix the cause and
  start the server again: recovery resumes where it stopped. A name that is no
  WAL file name at all (a misconfigured restore_command) is such a failure too.

Prefetch: PostgreSQL runs restore_command once per file, one at a time, so a
call that has to download starts (when none is running) a detached prefetcher
process. It follows the segment PostgreSQL asked for last
(`prefetch/.wanted`), keeps the next `window` segments of that timeline
downloaded (`parallel` at a time) into `pg_wal/tonebridge-dr/prefetch/`, each
verified, fsynced and renamed into place, and removes files that fell out of
the window. Later calls move their file from there (one rename, no download,
no boto3 import). The prefetcher stops when recovery is over (no
recovery.signal / standby.signal), when the data directory is gone, when no live
postmaster has the data directory for `ORPHAN_EXIT` seconds (a failed start
leaves recovery.signal behind: without this the prefetcher would poll the archive
forever), or after `IDLE_EXIT` seconds (`$TONEBRIDGE_DR_WAL_PREFETCH_IDLE`)
without a new request from PostgreSQL (downloads and retries of a missing
segment do not count); a later miss starts another one.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.contract import runner_contract
from tonebridge_dr.runner.engines.postgres.wal import catalog, envvars, naming, spool
from tonebridge_dr.runner.storage import open_storage

log = logging.getLogger(__name__)

PREFETCH_ENV = "TONEBRIDGE_DR_WAL_PREFETCH"
PARALLEL_ENV = "TONEBRIDGE_DR_WAL_PARALLEL"
PASSPHRASE_ENV = runner_contract.ENV_DECRYPT_PASSPHRASE
DEFAULT_WINDOW = 16
DEFAULT_PARALLEL = 8
IDLE_ENV = "TONEBRIDGE_DR_WAL_PREFETCH_IDLE"
#: A prefetcher that PostgreSQL asked nothing new of for this long exits.
IDLE_EXIT = 60.0
#: A prefetcher whose data directory has no live postmaster for this long exits.
ORPHAN_EXIT = 5.0
#: How long a "not in the archive" answer is believed before asking again.
MISSING_RETRY = 2.0
#: Lookups of a `.partial` that vanished between lookup and read (a running wal-stream
#: replaced it) before the fetch fails.
PARTIAL_ATTEMPTS = 3


@dataclasses.dataclass(frozen=True)
class FetchSettings:
    repo_url: str
    decrypt_key: Path | None = None
    allow_partial: bool = False
    window: int = DEFAULT_WINDOW  # 0 disables prefetching
    parallel: int = DEFAULT_PARALLEL

    @classmethod
    def from_env(
        cls,
        repo_url: str,
        *,
        decrypt_key: Path | None = None,
        allow_partial: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> FetchSettings:
        env = os.environ if env is None else env
        return cls(
            repo_url=repo_url,
            decrypt_key=decrypt_key,
            allow_partial=allow_partial,
            window=envvars.number(
                env, PREFETCH_ENV, DEFAULT_WINDOW, parse=int, what="an integer", minimum=0
            ),
            parallel=max(
                1,
                envvars.number(
                    env, PARALLEL_ENV, DEFAULT_PARALLEL, parse=int, what="an integer", minimum=0
                ),
            ),
        )

    @property
    def passphrase(self) -> str | None:
        return os.environ.get(PASSPHRASE_ENV) or None


def download(
    archive: catalog.WalArchive,
    name: str,
    dest: Path,
    settings: FetchSettings,
    *,
    durable: bool = False,
) -> catalog.ArchivedObject:
    """Write archived `name` to `dest` (temp file, verify, rename); WalNotFound if absent.

    `durable` fsyncs the file and its folder (for spooled files that must
    survive a crash of the host before PostgreSQL consumes them).
    """
    obj = archive.find(name, allow_partial=settings.allow_partial)
    tmp = dest.parent / f".{dest.name}.{os.getpid()}.tmp"
    try:
        for attempt in range(PARTIAL_ATTEMPTS):
            try:
                _write(archive, obj, tmp, settings, durable=durable)
                break
            except errors.ObjectNotFound:
                # A running wal-stream replaced this partial by a longer one (or by the
                # complete segment) between the lookup and the read: look again.
                if obj.wal.kind != naming.PARTIAL or attempt + 1 >= PARTIAL_ATTEMPTS:
                    raise
                obj = archive.find(name, allow_partial=settings.allow_partial)
        os.replace(tmp, dest)
        if durable:
            fd = os.open(dest.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return obj


def _write(
    archive: catalog.WalArchive,
    obj: catalog.ArchivedObject,
    tmp: Path,
    settings: FetchSettings,
    *,
    durable: bool,
) -> None:
    with tmp.open("wb") as out:
        for chunk in archive.read(
            obj, decrypt_key=settings.decrypt_key, passphrase=settings.passphrase
        ):
            out.write(chunk)
        if durable:
            out.flush()
            os.fsync(out.fileno())


def fetch(name: str, dest_arg: str, settings: FetchSettings, *, cwd: str | None = None) -> str:
    """The restore_command's slow path: download `name` to `dest_arg` (verified, fsynced),
    start prefetching. Returns "archive". The caller tried the spool (fast path) first.
    """
    wal = naming.parse(name)
    dest = Path(os.path.abspath(dest_arg))
    archive = catalog.WalArchive(open_storage(settings.repo_url, create=False))
    download(archive, wal.name, dest, settings, durable=True)
    if wal.is_segment and settings.window > 0:
        ensure_prefetcher(wal.name, dest, settings, cwd=cwd)
    return "archive"


def ensure_prefetcher(
    name: str, dest: Path, settings: FetchSettings, *, cwd: str | None = None
) -> bool:
    """Start a prefetcher for the segments after `name` unless one runs. True if started."""
    folder = spool.prefetch_dir(str(dest.parent))
    try:
        segment_size = dest.stat().st_size
        lock_fd = spool.take_prefetcher_lock(folder)
    except OSError as exc:
        log.warning("prefetch not started: %s", exc)
        return False
    if lock_fd is None:
        return False  # one runs
    try:
        # Under the lock, before the prefetcher runs: the spool is this repository's, so
        # the next calls can wait for the prefetcher while it starts.
        if spool.read_text(os.path.join(folder, spool.REPO)) != settings.repo_url:
            _clear(Path(folder))
            Path(folder, spool.REPO).write_text(settings.repo_url)
    except OSError as exc:
        os.close(lock_fd)
        log.warning("prefetch not started: %s", exc)
        return False
    argv = spool.prefetcher_argv(
        folder,
        repo_url=settings.repo_url,
        start=name,
        segment_size=segment_size,
        data_dir=cwd or os.getcwd(),
        window=settings.window,
        parallel=settings.parallel,
        decrypt_key=str(settings.decrypt_key) if settings.decrypt_key is not None else None,
        allow_partial=settings.allow_partial,
    )
    spool.note_wanted(folder, name)
    spool.start_prefetcher(folder, lock_fd, argv)
    return True


# -- the prefetcher process -----------------------------------------------------------------


def _recovering(data_dir: Path) -> bool:
    return (data_dir / "recovery.signal").exists() or (data_dir / "standby.signal").exists()


def _postmaster_alive(data_dir: Path) -> bool:
    """True while postmaster.pid names a live process (the one PostgreSQL that may ask)."""
    text = spool.read_text(str(data_dir / "postmaster.pid")) or ""
    first = text.split("\n", 1)[0].strip()
    if not first.isdigit():
        return False
    try:
        os.kill(int(first), 0)
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def idle_exit_from_env(env: Mapping[str, str] | None = None) -> float:
    return envvars.number(
        os.environ if env is None else env, IDLE_ENV, IDLE_EXIT,
        parse=float, what="a number of seconds", minimum=0.0,
    )


def _clear(folder: Path, keep: set[str] | None = None, names: set[str] | None = None) -> None:
    """Remove spooled files but `keep` (of `names`, when the caller listed them already)."""
    for name in _spooled(folder) if names is None else names:
        if name.startswith(".") and not name.endswith(".tmp"):
            continue  # .wanted/.repo/.lock
        if name.startswith(_CALL_TEMP_PREFIXES):
            continue  # a call writing .wanted / .waiting right now: never pull it away
        if name == spool.LOG or (keep is not None and name in keep):
            continue
        with contextlib.suppress(OSError):
            (folder / name).unlink()


#: Temp files of the control files calls write (`_write_atomic`: `<name>.<pid>.tmp`).
_CALL_TEMP_PREFIXES = (f"{spool.WANTED}.", f"{spool.WAITING}.", f"{spool.FAILED}.")


def _spooled(folder: Path) -> set[str]:
    try:
        return {entry.name for entry in os.scandir(folder)}
    except OSError:
        return set()


def run_prefetcher(
    folder: Path,
    settings: FetchSettings,
    *,
    start: str,
    segment_size: int,
    data_dir: Path,
    idle_exit: float = IDLE_EXIT,
    lock_fd: int | None = None,
) -> int:
    """Keep the window after the wanted segment filled; returns when not needed any more.
    `lock_fd`: an inherited fd that already holds the prefetcher lock (start_prefetcher)."""
    naming.check_segment_size(segment_size)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if lock_fd is None:
        lock_fd = spool.take_prefetcher_lock(str(folder))
        if lock_fd is None:
            return 0  # another prefetcher is running
    try:
        os.ftruncate(lock_fd, 0)
        os.pwrite(lock_fd, f"{os.getpid()}\n".encode(), 0)
        if spool.read_text(str(folder / spool.REPO)) != settings.repo_url:
            _clear(folder)
            (folder / spool.REPO).write_text(settings.repo_url)
        archive = catalog.WalArchive(open_storage(settings.repo_url, create=False))
        _prefetch_loop(archive, folder, settings, start, segment_size, data_dir, idle_exit)
        if not _recovering(data_dir):
            with contextlib.suppress(OSError):
                _clear(folder)
        return 0
    finally:
        os.close(lock_fd)


def _prefetch_loop(
    archive: catalog.WalArchive,
    folder: Path,
    settings: FetchSettings,
    start: str,
    segment_size: int,
    data_dir: Path,
    idle_exit: float = IDLE_EXIT,
) -> None:
    inflight: dict[str, concurrent.futures.Future[catalog.ArchivedObject]] = {}
    missing: dict[str, float] = {}
    last_wanted: tuple[str, int] = ("", 0)
    served: tuple[str | None, int] = (None, 0)  # the last `.waiting` request acted on
    last_request = time.monotonic()  # idle is PostgreSQL's idleness, not ours
    server_seen = time.monotonic()
    # one worker more than the window uses: a segment a call waits for starts at once
    pool = concurrent.futures.ThreadPoolExecutor(settings.parallel + 1,
                                                 thread_name_prefix="prefetch")
    try:
        while data_dir.is_dir() and _recovering(data_dir):
            now = time.monotonic()
            if now - server_seen < 1.0:
                pass  # seen within the last second: no need to read postmaster.pid again
            elif _postmaster_alive(data_dir):
                server_seen = now
            elif now - server_seen > ORPHAN_EXIT:
                log.info("no PostgreSQL runs on %s any more, exiting", data_dir)
                return
            waiting = spool.read_text(str(folder / spool.WAITING))
            request = (waiting, _mtime_ns(folder / spool.WAITING))  # each wait writes anew
            for name, future in list(inflight.items()):
                if not future.done():
                    continue
                del inflight[name]
                try:
                    future.result()
                    missing.pop(name, None)
                except catalog.WalNotFound:
                    missing[name] = now
                except Exception as exc:  # restore_command reports it properly
                    log.warning("prefetch of %s failed: %s", name, exc)
                    missing[name] = now
                if name in missing and name == waiting:
                    _tell_failed(folder, name)  # the waiting call goes the slow way
            # Finished downloads first, then what is spooled, then what is wanted: a
            # download renames its file in before it counts as finished, and a call
            # writes `.wanted` before it moves its file out, so a file found missing
            # here is never one that is done (read in another order, a call landing
            # in between made the prefetcher download its file again).
            present = _spooled(folder)
            wanted = spool.read_text(str(folder / spool.WANTED)) or start
            if not naming.is_valid(wanted) or not naming.parse(wanted).is_segment:
                wanted = start
            asked = (wanted, _mtime_ns(folder / spool.WANTED))  # asking again counts too
            if asked != last_wanted:
                last_wanted, last_request = asked, now
            window = [
                naming.next_segment(wanted, segment_size, step)
                for step in range(settings.window + 1)
            ]
            if (request != served and waiting == wanted and wanted not in present
                    and wanted not in inflight):
                # A call waits for the segment it asked for: fetch it first, once per wait
                # (after it took the file, the same `.waiting` must not fetch it again).
                served = request
                if wanted in missing and now - missing[wanted] < MISSING_RETRY:
                    _tell_failed(folder, wanted)  # not in the archive a moment ago
                else:
                    inflight[wanted] = pool.submit(
                        download, archive, wanted, folder / wanted, settings, durable=True
                    )
            _clear(
                folder,
                keep=set(window) | {f".{name}.{os.getpid()}.tmp" for name in inflight},
                names=present,
            )
            for name in window[1:]:
                if len(inflight) >= settings.parallel:
                    break
                if name in inflight or name in present:
                    continue
                if name in missing and now - missing[name] < MISSING_RETRY:
                    break  # the end of the archive (for now): nothing beyond it either
                inflight[name] = pool.submit(
                    download, archive, name, folder / name, settings, durable=True
                )
            if not inflight and now - last_request > idle_exit:
                log.info("no request from PostgreSQL for %.0f s, exiting", idle_exit)
                return
            time.sleep(0.02 if inflight else 0.1)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _tell_failed(folder: Path, name: str) -> None:
    """Tell the call waiting for `name` that the prefetcher could not get it (best effort:
    without it the call's own timeout ends the wait)."""
    if spool.read_text(str(folder / spool.FAILED)) == name:
        return
    tmp = folder / f"{spool.FAILED}.{os.getpid()}.tmp"
    with contextlib.suppress(OSError):
        tmp.write_text(name)
        os.replace(tmp, folder / spool.FAILED)


def stop_prefetcher(wal_dir: Path, *, timeout: float = 10.0) -> None:
    """Stop a running prefetcher of this pg_wal (if any) and remove its spool."""
    import signal

    folder = Path(spool.prefetch_dir(str(wal_dir)))
    deadline = time.monotonic() + timeout
    pid_text = spool.read_text(str(folder / spool.LOCK))
    # A prefetcher holds its lock from before it starts (start_prefetcher): its pid is in
    # the lock file a moment later.
    while not (pid_text and pid_text.isdigit()) and spool.prefetcher_running(str(folder)) \
            and time.monotonic() < deadline:
        time.sleep(0.02)
        pid_text = spool.read_text(str(folder / spool.LOCK))
    if pid_text and pid_text.isdigit() and spool.prefetcher_running(str(folder)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(int(pid_text), signal.SIGTERM)
        while spool.prefetcher_running(str(folder)) and time.monotonic() < deadline:
            time.sleep(0.05)
    if folder.is_dir():
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
