"""wal-fetch's exit status is PostgreSQL's contract: 0 delivered, 1 not in the archive, and
above 125 for everything else, whichever entry point PostgreSQL runs.

PostgreSQL takes any status up to 125 for "the archive has no such file": it ends
recovery there and promotes. An error answered with 1 (Python's status for an uncaught
exception) silently drops every transaction after that point, so every failure class is
checked here, through every entry point: the installed `tonebridge-dr`, `python -m
...wal`, the light `python .../wal/spool.py` that pitr writes into restore_command, and
that behind the compiled front door `tonebridge-dr-walfast` (which pitr writes when it
is installed).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.pg_wal import (
    SMALL_SEGMENT,
    VENV_PYTHON,
    WAL_COMMAND,
    WALFAST,
    segment_bytes,
    write_segment,
)
from tests.fixtures.postgres import _as_postgres, chown_postgres
from tonebridge_dr import cli as top_cli
from tonebridge_dr.runner import cli as runner_cli
from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.postgres.wal import __main__ as wal_main
from tonebridge_dr.runner.engines.postgres.wal import archive, catalog, fetch, naming, spool
from tonebridge_dr.runner.storage import open_storage

NAMES = [naming.segment_name(1, n, SMALL_SEGMENT) for n in (1, 2)]
MISSING = naming.segment_name(1, 9, SMALL_SEGMENT)

#: The ways PostgreSQL may start wal-fetch (restore_command's prefix).
ENTRY_POINTS = {
    "tonebridge-dr": [WAL_COMMAND],
    "python -m wal": [str(VENV_PYTHON), "-m", "tonebridge_dr.runner.engines.postgres.wal"],
    "spool.py": [str(VENV_PYTHON), spool.__file__],
    # what restore postgres writes when the compiled front door is installed
    "walfast": [WALFAST, str(VENV_PYTHON), spool.__file__],
}
#: The same, called in-process.
IN_PROCESS: dict[str, Callable[[list[str]], int]] = {
    "tonebridge_dr.cli": top_cli.main,
    "runner.cli": runner_cli.main,
    "python -m wal": wal_main.main,
    "spool.fetch_main": spool.fetch_main,
}


@pytest.fixture
def repo(tmp_path: Path) -> str:
    url = (tmp_path / "repo").as_uri()
    pusher = archive.Pusher(catalog.WalArchive(open_storage(url)), archive.PushSettings(url))
    src = tmp_path / "src"
    src.mkdir()
    for index, name in enumerate(NAMES):
        pusher.push_file(write_segment(src, name, seed=index))
    return url


@pytest.fixture
def pg_wal(tmp_path: Path) -> Path:
    folder = tmp_path / "data" / "pg_wal"
    folder.mkdir(parents=True)
    return folder


def _argv(repo: str, name: str, dest: Path) -> list[str]:
    return ["wal-fetch", "--repo", repo, "--no-prefetch", name, str(dest)]


def _run(entry: str, argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ENTRY_POINTS[entry], *argv], capture_output=True, text=True, check=False,
        env={k: v for k, v in os.environ.items() if k != "TONEBRIDGE_DR_REPO"},
        **kwargs,  # type: ignore[arg-type]
    )


def _one_abort_line(stderr: str) -> None:
    lines = [line for line in stderr.splitlines() if line.startswith("wal-fetch:")]
    assert len(lines) == 1, stderr
    assert "recovery stops here" in lines[0]


# -- real processes -------------------------------------------------------------------------


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_delivered_is_0_and_not_in_the_archive_is_1(entry: str, repo: str, pg_wal: Path) -> None:
    dest = pg_wal / "RECOVERYXLOG"
    done = _run(entry, _argv(repo, NAMES[1], dest))
    assert done.returncode == 0, done.stderr
    assert dest.read_bytes() == segment_bytes(NAMES[1], seed=1)
    absent = _run(entry, _argv(repo, MISSING, pg_wal / "X"))
    assert absent.returncode == 1, absent.stderr
    assert "not in the archive" in absent.stderr and not (pg_wal / "X").exists()
    history = _run(entry, _argv(repo, "00000002.history", pg_wal / "H"))
    assert history.returncode == 1, history.stderr  # PostgreSQL asks; none exists


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_bad_arguments_and_names_abort(entry: str, repo: str, pg_wal: Path) -> None:
    for argv in (
        ["wal-fetch", "--repo", repo, NAMES[0]],  # DEST missing
        ["wal-fetch", "--repo", repo, "--no-such-flag", NAMES[0], str(pg_wal / "X")],
        _argv(repo, "../../etc/passwd", pg_wal / "X"),  # not a WAL file name
        _argv("ftp://nowhere/x", NAMES[0], pg_wal / "X"),  # unknown scheme
        _argv(repo + "-gone", NAMES[0], pg_wal / "X"),  # repository folder missing
    ):
        proc = _run(entry, argv)
        assert proc.returncode == 255, (argv, proc.returncode, proc.stderr)
        _one_abort_line(proc.stderr)


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_disk_full_while_writing_dest_aborts(entry: str, repo: str, tmp_path: Path) -> None:
    """ENOSPC for real: pg_wal is a 64 KiB tmpfs (in a private mount namespace)."""
    small = tmp_path / "small"
    small.mkdir()
    argv = _argv(repo, NAMES[0], small / "RECOVERYXLOG")
    script = f'mount -t tmpfs -o size=64k tmpfs {small} && exec "$@"'
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
         *ENTRY_POINTS[entry], *argv],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 255, proc.stderr
    _one_abort_line(proc.stderr)
    assert "No space left on device" in proc.stderr


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_unreadable_object_or_unwritable_pg_wal_abort(
    entry: str, repo: str, tmp_path: Path, postgres_runs_cli: None
) -> None:
    """EACCES for real, as user postgres (the user PostgreSQL runs restore_command as)."""
    chown_postgres(tmp_path)
    os.chmod(tmp_path, 0o755)
    pg_wal = tmp_path / "data" / "pg_wal"
    pg_wal.mkdir(parents=True, exist_ok=True)
    chown_postgres(pg_wal.parent)
    obj = catalog.WalArchive(open_storage(repo)).find(NAMES[0])
    stored = Path(repo.removeprefix("file://")) / obj.key
    stored.chmod(0)
    try:
        proc = _run(entry, _argv(repo, NAMES[0], pg_wal / "R"), **_as_postgres())
        assert proc.returncode == 255, proc.stderr
        _one_abort_line(proc.stderr)
        assert "Permission denied" in proc.stderr
    finally:
        stored.chmod(0o644)
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o755)  # owned by root: postgres may not create files in it
    proc = _run(entry, _argv(repo, NAMES[0], locked / "R"), **_as_postgres())
    assert proc.returncode == 255, proc.stderr
    _one_abort_line(proc.stderr)


def test_a_broken_installation_aborts(repo: str, pg_wal: Path, tmp_path: Path) -> None:
    """The light entry point execs the package: when that cannot be imported, 255 too."""
    light = tmp_path / "light" / "spool.py"
    light.parent.mkdir()
    shutil.copy(spool.__file__, light)
    env = {"PATH": os.environ["PATH"], "PYTHONNOUSERSITE": "1"}
    proc = subprocess.run(
        ["/usr/bin/python3", "-S", str(light), *_argv(repo, NAMES[0], pg_wal / "R")],
        capture_output=True, text=True, check=False, env=env,
    )
    assert proc.returncode == 255, proc.stderr
    _one_abort_line(proc.stderr)


# -- every failure class, in-process ---------------------------------------------------------

FAILURES: list[BaseException] = [
    *(OSError(code, os.strerror(code), "pg_wal/RECOVERYXLOG")
      for code in (errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EIO,
                   errno.EROFS, errno.ENOENT, errno.EMFILE, errno.ESTALE)),
    errors.StorageError("connection refused"),
    errors.ObjectNotFound("object vanished between listing and reading"),
    errors.IntegrityError("archived WAL is corrupt"),
    errors.EncryptionError("no secret key"),
    errors.UsageError("TONEBRIDGE_DR_WAL_PREFETCH must be an integer"),
    errors.RepositoryConfigError("unknown scheme"),
    RuntimeError("a bug"),
    ValueError("a bug"),
    MemoryError(),
    ImportError("No module named 'boto3'"),
    KeyboardInterrupt(),
]


@pytest.mark.parametrize("entry", sorted(IN_PROCESS))
@pytest.mark.parametrize("failure", FAILURES, ids=lambda exc: type(exc).__name__ + (
    f"-{errno.errorcode[exc.errno]}" if isinstance(exc, OSError) and exc.errno else ""))
def test_every_failure_but_not_found_is_255(
    entry: str, failure: BaseException, repo: str, pg_wal: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    def fail(*args: object, **kwargs: object) -> str:
        raise failure

    monkeypatch.setattr(fetch, "fetch", fail)
    assert IN_PROCESS[entry](_argv(repo, NAMES[0], pg_wal / "R")) == 255
    _one_abort_line(capsys.readouterr().err)


@pytest.mark.parametrize("entry", sorted(IN_PROCESS))
def test_only_walnotfound_is_1(
    entry: str, repo: str, pg_wal: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def absent(*args: object, **kwargs: object) -> str:
        raise catalog.WalNotFound("WAL file X is not in the archive")

    monkeypatch.setattr(fetch, "fetch", absent)
    assert IN_PROCESS[entry](_argv(repo, NAMES[0], pg_wal / "R")) == 1


def test_a_download_fsyncs_what_it_delivers(
    repo: str, pg_wal: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert spool.fetch_main(_argv(repo, NAMES[0], pg_wal / "R")) == 0
    assert len(synced) >= 2  # the file, then its folder (after the rename)
