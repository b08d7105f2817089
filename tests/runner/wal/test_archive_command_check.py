"""`check --archive-command`, run as OS user postgres (what the database server runs its
archive_command as): each way the chain breaks is named, a working one passes."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.pg_wal import WAL_COMMAND, WALFAST
from tests.fixtures.postgres import chown_postgres, clean_env

RUNUSER = shutil.which("runuser") or "/usr/sbin/runuser"


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A folder user postgres can enter (pytest's own tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="tbdr-archive-check-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def check_as_postgres(command: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RUNUSER, "-u", "postgres", "--", WAL_COMMAND, "check", "--archive-command",
         command, "--json"],
        capture_output=True, text=True, check=False,
        env=clean_env(PATH="/usr/bin:/bin", **env),
    )


def test_a_working_archive_command_passes(tmp_path: Path, postgres_runs_cli: None) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    chown_postgres(repo)
    done = check_as_postgres(f"env TONEBRIDGE_DR_REPO={repo.as_uri()} {WAL_COMMAND} wal-push %p")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)["archive_command"]
    assert report["ok"] and report["program"] == WAL_COMMAND and report["user"] == "postgres"
    assert list(repo.iterdir()) == []  # the probe is gone
    # the repository from the server's environment works the same
    assert check_as_postgres(f"{WAL_COMMAND} wal-push %p",
                             TONEBRIDGE_DR_REPO=repo.as_uri()).returncode == 0


def test_each_broken_link_is_named(tmp_path: Path, postgres_runs_cli: None) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    chown_postgres(repo)
    # not on the server's PATH (exit 127 of the documented 'tonebridge-dr wal-push %p')
    missing = check_as_postgres("tonebridge-dr wal-push %p", TONEBRIDGE_DR_REPO=repo.as_uri())
    assert missing.returncode == 3
    assert "'tonebridge-dr' is not on the PATH of user postgres" in missing.stderr
    assert "absolute path" in missing.stderr
    # no repository for the server
    no_repo = check_as_postgres(f"{WAL_COMMAND} wal-push %p")
    assert no_repo.returncode == 3 and "TONEBRIDGE_DR_REPO is set neither" in no_repo.stderr
    # a repository user postgres cannot write (owned by root, 0755)
    private = tmp_path / "private"
    private.mkdir(mode=0o755)
    denied = check_as_postgres(f"{WAL_COMMAND} wal-push %p",
                               TONEBRIDGE_DR_REPO=private.as_uri())
    assert denied.returncode == 3
    assert f"user postgres cannot write to the repository {private.as_uri()}" in denied.stderr
    # not wal-push %p
    wrong = check_as_postgres(f"{WAL_COMMAND} wal-push",
                              TONEBRIDGE_DR_REPO=repo.as_uri())
    assert wrong.returncode == 3 and "must run `wal-push %p`" in wrong.stderr


def test_a_program_behind_a_closed_folder_names_the_folder(tmp_path: Path,
                                                           postgres_runs_cli: None) -> None:
    closed = tmp_path / "closed"
    (closed / "bin").mkdir(parents=True)
    program = closed / "bin" / "tonebridge-dr"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    closed.chmod(0o700)  # like /root: user postgres cannot enter
    done = check_as_postgres(f"{program} wal-push %p", TONEBRIDGE_DR_REPO="file:///tmp")
    assert done.returncode == 3
    assert f"user postgres cannot execute {program}: it cannot enter {closed}" in done.stderr


def test_behind_the_compiled_front_door_both_programs_are_checked(
    tmp_path: Path, postgres_runs_cli: None
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    chown_postgres(repo)
    url = repo.as_uri()
    done = check_as_postgres(f"{WALFAST} {WAL_COMMAND} wal-push %p", TONEBRIDGE_DR_REPO=url)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["archive_command"]["program"] == WALFAST
    # what it hands on to must resolve too (exit 127 at the first spool miss otherwise)
    behind = check_as_postgres(f"{WALFAST} tonebridge-dr wal-push %p", TONEBRIDGE_DR_REPO=url)
    assert behind.returncode == 3
    assert "'tonebridge-dr' is not on the PATH of user postgres" in behind.stderr
