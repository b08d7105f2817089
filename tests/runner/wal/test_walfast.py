"""The compiled front door (wal/walfast.c) decides exactly like spool.py's fast path.

Each scenario lays out a pg_wal folder and its spool (push markers, prefetched files,
the pusher's and prefetcher's locks), then runs the real binary with `/bin/false` as the
command it stands in front of: exit 0 means it answered itself, 1 that it handed the
call on. The same scenario, laid out again, goes through `spool.fast_main` in-process
(0 or None). The binary may only answer 0 where Python answers 0, and leaves the same
files behind; where it hands on, nothing of the spool is consumed.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.fixtures.pg_wal import SMALL_SEGMENT, VENV_PYTHON, WALFAST, write_segment
from tonebridge_dr.runner.engines.postgres.wal import naming, spool
from tonebridge_dr.runner.engines.postgres.wal.pitr import settings

NAME = naming.segment_name(1, 5, SMALL_SEGMENT)
REPO = "file:///srv/repo/db"
ANSWERED, HANDED_ON = 0, 1  # the binary's status with /bin/false behind it


@dataclass
class Layout:
    """A data directory with pg_wal and the spool folders."""

    data: Path
    locks: list[int] = field(default_factory=list)

    @property
    def wal(self) -> Path:
        return self.data / "pg_wal"

    @property
    def root(self) -> Path:
        return self.wal / spool.SPOOL_NAME

    def segment(self, name: str = NAME) -> Path:
        return write_segment(self.wal, name)

    def marker(self, path: Path, repo: str = REPO, **override: str) -> Path:
        spool.write_push_marker(str(path), repo, "wal/key", "0" * 64, spool.file_stat(str(path)))
        marker = self.root / spool.PUSHED / path.name
        if override:
            fields = dict(line.split("=", 1) for line in marker.read_text().splitlines())
            fields.update(override)
            marker.write_text("".join(f"{k}={v}\n" for k, v in fields.items() if v != "-"))
        return marker

    def hold(self, path: Path, text: str = "") -> int:
        """flock() `path` (as a running pusher / prefetcher does) until the test ends."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if text:
            os.ftruncate(fd, 0)
            os.pwrite(fd, text.encode(), 0)
        self.locks.append(fd)
        return fd

    def pusher(self, repo: str = REPO) -> int:
        return self.hold(self.root / spool.PUSHER_LOCK, f"{repo}\n4242\n")

    def ready(self, name: str = NAME) -> None:
        status = self.wal / "archive_status"
        status.mkdir(exist_ok=True)
        (status / f"{name}.ready").write_text("")

    def prefetched(self, name: str = NAME, repo: str = REPO, running: bool = True) -> Path:
        folder = self.root / spool.PREFETCH
        folder.mkdir(parents=True, exist_ok=True)
        (folder / spool.REPO).write_text(repo)
        if running:
            self.hold(folder / spool.LOCK, "4243\n")
        return write_segment(folder, name)

    def files(self) -> set[str]:
        """Every file under the data directory except temp and lock files and the request
        to the prefetcher that only spool.py's wait writes (the state)."""
        return {str(p.relative_to(self.data)) for p in self.data.rglob("*")
                if p.is_file() and not p.name.endswith((".tmp", ".lock"))
                and p.name != spool.WAITING}

    def release(self) -> None:
        for fd in self.locks:
            os.close(fd)
        self.locks.clear()


Scenario = Callable[[Layout], tuple[list[str], dict[str, str]]]


@pytest.fixture
def layouts(tmp_path: Path) -> Iterator[Callable[[str], Layout]]:
    made: list[Layout] = []

    def make(tag: str) -> Layout:
        layout = Layout(tmp_path / tag / "data")
        layout.wal.mkdir(parents=True)
        made.append(layout)
        return layout

    yield make
    for layout in made:
        layout.release()


def _binary(layout: Layout, argv: list[str], env: dict[str, str],
            fallback: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TONEBRIDGE_DR_")}
    return subprocess.run([WALFAST, *(fallback or ["/bin/false"]), *argv], cwd=layout.data,
                          env={**base, **env}, capture_output=True, text=True, timeout=30,
                          check=False)


def _python(layout: Layout, argv: list[str], env: dict[str, str],
            monkeypatch: pytest.MonkeyPatch) -> int | None:
    with monkeypatch.context() as patch:
        for key in [k for k in os.environ if k.startswith("TONEBRIDGE_DR_")]:
            patch.delenv(key)
        for key, value in env.items():
            patch.setenv(key, value)
        patch.chdir(layout.data)
        return spool.fast_main(argv)


# -- wal-push ---------------------------------------------------------------------------


def _push(arg: str = f"pg_wal/{NAME}", *extra: str) -> list[str]:
    return ["wal-push", "--repo", REPO, *extra, arg]


def push_marker(layout: Layout) -> tuple[list[str], dict[str, str]]:
    layout.marker(layout.segment())
    return _push(), {}


def push_marker_repo_from_env(layout: Layout) -> tuple[list[str], dict[str, str]]:
    layout.marker(layout.segment())
    return ["wal-push", f"pg_wal/{NAME}"], {"TONEBRIDGE_DR_REPO": REPO}


def push_marker_repo_with_equals(layout: Layout) -> tuple[list[str], dict[str, str]]:
    layout.marker(layout.segment())
    return ["wal-push", f"--repo={REPO}", str(layout.wal / NAME)], {}


def push_marker_in_spool_from_env(layout: Layout) -> tuple[list[str], dict[str, str]]:
    elsewhere = layout.data.parent / "spool"
    path = layout.segment()
    os.environ[spool.SPOOL_ENV] = str(elsewhere)
    try:
        layout.marker(path)
    finally:
        del os.environ[spool.SPOOL_ENV]
    return _push(), {spool.SPOOL_ENV: str(elsewhere)}


def push_no_marker(layout: Layout) -> tuple[list[str], dict[str, str]]:
    layout.segment()
    return _push(), {}


def push_marker_of_another_repository(layout: Layout) -> tuple[list[str], dict[str, str]]:
    layout.marker(layout.segment(), repo="file:///srv/other")
    return _push(), {}


def push_file_grew_since(layout: Layout) -> tuple[list[str], dict[str, str]]:
    path = layout.segment()
    layout.marker(path)
    with path.open("ab") as handle:
        handle.write(b"x")
    return _push(), {}


def push_file_touched_since(layout: Layout) -> tuple[list[str], dict[str, str]]:
    path = layout.segment()
    layout.marker(path)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    return _push(), {}


def push_file_replaced_since(layout: Layout) -> tuple[list[str], dict[str, str]]:
    path = layout.segment()
    st = path.stat()
    layout.marker(path)
    copy = path.with_suffix(".copy")
    shutil.copy2(path, copy)
    os.replace(copy, path)  # same size and mtime, another inode
    assert path.stat().st_mtime_ns == st.st_mtime_ns
    return _push(), {}


def push_marker_without_inode(layout: Layout) -> tuple[list[str], dict[str, str]]:
    layout.marker(layout.segment(), ino="-")
    return _push(), {}


def push_marker_of_another_name(layout: Layout) -> tuple[list[str], dict[str, str]]:
    layout.marker(layout.segment(), name=naming.segment_name(1, 6, SMALL_SEGMENT))
    return _push(), {}


def push_marker_with_a_later_repo_line(layout: Layout) -> tuple[list[str], dict[str, str]]:
    marker = layout.marker(layout.segment())
    marker.write_text(marker.read_text() + "repo=file:///srv/other\n")
    return _push(), {}


def push_unknown_option(layout: Layout) -> tuple[list[str], dict[str, str]]:
    layout.marker(layout.segment())
    return _push(f"pg_wal/{NAME}", "--force"), {}


def push_two_paths(layout: Layout) -> tuple[list[str], dict[str, str]]:
    layout.marker(layout.segment())
    return ["wal-push", "--repo", REPO, f"pg_wal/{NAME}", f"pg_wal/{NAME}"], {}


def push_empty_repo(layout: Layout) -> tuple[list[str], dict[str, str]]:
    layout.marker(layout.segment(), repo="")
    return ["wal-push", f"pg_wal/{NAME}"], {"TONEBRIDGE_DR_REPO": ""}


def push_history_file(layout: Layout) -> tuple[list[str], dict[str, str]]:
    path = layout.wal / "00000002.history"
    path.write_text("1\t0/3000000\tno recovery target specified\n")
    layout.marker(path)
    return _push("pg_wal/00000002.history"), {}


def push_pusher_of_another_repository(layout: Layout) -> tuple[list[str], dict[str, str]]:
    layout.segment()
    layout.ready()
    layout.pusher("file:///srv/other")
    return _push(), {}


def push_pusher_gone_no_marker(layout: Layout) -> tuple[list[str], dict[str, str]]:
    layout.segment()
    layout.ready()
    (layout.root).mkdir(parents=True, exist_ok=True)
    (layout.root / spool.PUSHER_LOCK).write_text(f"{REPO}\n1\n")  # not held
    return _push(), {}


PUSH: dict[str, tuple[Scenario, int]] = {
    "marker": (push_marker, ANSWERED),
    "repo from TONEBRIDGE_DR_REPO": (push_marker_repo_from_env, ANSWERED),
    "--repo=URL, absolute path": (push_marker_repo_with_equals, ANSWERED),
    "spool from TONEBRIDGE_DR_WAL_SPOOL": (push_marker_in_spool_from_env, ANSWERED),
    "history file with a marker": (push_history_file, ANSWERED),
    "no marker": (push_no_marker, HANDED_ON),
    "marker of another repository": (push_marker_of_another_repository, HANDED_ON),
    "file grew since": (push_file_grew_since, HANDED_ON),
    "file touched since": (push_file_touched_since, HANDED_ON),
    "file replaced since": (push_file_replaced_since, HANDED_ON),
    "marker without inode": (push_marker_without_inode, HANDED_ON),
    "marker of another name": (push_marker_of_another_name, HANDED_ON),
    "a later repo line wins": (push_marker_with_a_later_repo_line, HANDED_ON),
    "unknown option": (push_unknown_option, HANDED_ON),
    "two paths": (push_two_paths, HANDED_ON),
    "no repository": (push_empty_repo, HANDED_ON),
    "pusher of another repository": (push_pusher_of_another_repository, HANDED_ON),
    "pusher gone, no marker": (push_pusher_gone_no_marker, HANDED_ON),
}


# -- wal-fetch --------------------------------------------------------------------------


def _fetch(*extra: str, name: str = NAME, dest: str = "pg_wal/RECOVERYXLOG") -> list[str]:
    return ["wal-fetch", "--repo", REPO, *extra, name, dest]


def fetch_prefetched(layout: Layout) -> tuple[list[str], dict[str, str]]:
    layout.prefetched()
    return _fetch("--allow-partial"), {}


def fetch_prefetched_with_key(layout: Layout) -> tuple[list[str], dict[str, str]]:
    layout.prefetched()
    return _fetch("--decrypt-key", "/keys/k.asc", "--allow-partial"), {}


def fetch_prefetching_off(layout: Layout) -> tuple[list[str], dict[str, str]]:
    layout.prefetched(running=False)
    return _fetch(), {"TONEBRIDGE_DR_WAL_PREFETCH": "0"}


def fetch_other_repository(layout: Layout) -> tuple[list[str], dict[str, str]]:
    layout.prefetched(repo="file:///srv/other")
    return _fetch(), {}


def fetch_not_prefetched(layout: Layout) -> tuple[list[str], dict[str, str]]:
    """The binary hands on; spool.py asks the prefetcher (`.waiting`) and would wait for
    it: nobody serves this test's lock, so its wait is cut to nothing."""
    layout.prefetched(name=naming.segment_name(1, 6, SMALL_SEGMENT))
    return _fetch(), {spool.FETCH_WAIT_ENV: "0"}


def fetch_no_prefetch_folder(layout: Layout) -> tuple[list[str], dict[str, str]]:
    return _fetch(), {}


def fetch_no_prefetch_flag(layout: Layout) -> tuple[list[str], dict[str, str]]:
    layout.prefetched()
    return _fetch("--no-prefetch"), {}


def fetch_history_file(layout: Layout) -> tuple[list[str], dict[str, str]]:
    layout.prefetched()
    return _fetch(name="00000002.history"), {}


def fetch_unknown_flag(layout: Layout) -> tuple[list[str], dict[str, str]]:
    layout.prefetched()
    return _fetch("--verbose"), {}


def fetch_flag_with_value(layout: Layout) -> tuple[list[str], dict[str, str]]:
    layout.prefetched()
    return _fetch("--allow-partial=yes"), {}


def fetch_missing_value(layout: Layout) -> tuple[list[str], dict[str, str]]:
    layout.prefetched()
    return ["wal-fetch", NAME, "pg_wal/RECOVERYXLOG", "--repo"], {"TONEBRIDGE_DR_REPO": REPO}


FETCH: dict[str, tuple[Scenario, int]] = {
    "prefetched, prefetcher running": (fetch_prefetched, ANSWERED),
    "with --decrypt-key": (fetch_prefetched_with_key, ANSWERED),
    "prefetching off": (fetch_prefetching_off, ANSWERED),
    "prefetched from another repository": (fetch_other_repository, HANDED_ON),
    "not prefetched": (fetch_not_prefetched, HANDED_ON),
    "no prefetch folder": (fetch_no_prefetch_folder, HANDED_ON),
    "--no-prefetch": (fetch_no_prefetch_flag, HANDED_ON),
    "history file": (fetch_history_file, HANDED_ON),
    "unknown flag": (fetch_unknown_flag, HANDED_ON),
    "flag with a value": (fetch_flag_with_value, HANDED_ON),
    "option without its value": (fetch_missing_value, HANDED_ON),
}


@pytest.mark.parametrize("case", sorted({**PUSH, **FETCH}))
def test_the_binary_answers_exactly_what_spool_py_answers(
    case: str, layouts: Callable[[str], Layout], monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario, expected = {**PUSH, **FETCH}[case]
    compiled, python = layouts("c"), layouts("py")
    argv, env = scenario(compiled)
    argv_py, env_py = scenario(python)
    before = compiled.files()
    done = _binary(compiled, argv, env)
    assert done.returncode == expected, done.stderr
    assert done.stderr == ""
    answer = _python(python, argv_py, env_py, monkeypatch)
    assert answer == (0 if expected == ANSWERED else None)
    assert compiled.files() == python.files()  # the same marker consumed / file moved
    if expected == HANDED_ON:
        assert compiled.files() - {"pg_wal/tonebridge-dr/prefetch/.wanted"} == (
            before - {"pg_wal/tonebridge-dr/prefetch/.wanted"})


def test_a_prefetched_segment_is_moved_and_wanted_is_noted(
    layouts: Callable[[str], Layout]
) -> None:
    layout = layouts("c")
    source = layout.prefetched()
    content = source.read_bytes()
    done = _binary(layout, _fetch(), {})
    assert done.returncode == ANSWERED, done.stderr
    assert (layout.wal / "RECOVERYXLOG").read_bytes() == content
    assert not source.exists()
    assert (layout.root / spool.PREFETCH / spool.WANTED).read_text() == NAME


def test_without_a_prefetcher_the_python_path_takes_the_file_and_starts_one(
    layouts: Callable[[str], Layout]
) -> None:
    """The binary hands on (it starts no process itself); what it hands on to is the
    light entry point, which delivers and starts the prefetcher."""
    layout = layouts("c")
    layout.prefetched(running=False)
    argv = _fetch()
    done = _binary(layout, argv, {}, fallback=["/bin/false"])
    assert done.returncode == HANDED_ON
    assert (layout.root / spool.PREFETCH / NAME).exists()


def test_it_waits_for_the_running_pusher_like_spool_py(
    layouts: Callable[[str], Layout]
) -> None:
    layout = layouts("c")
    path = layout.segment()
    layout.ready()
    layout.pusher()
    timer = threading.Timer(0.4, lambda: layout.marker(path))
    began = time.monotonic()
    timer.start()
    try:
        done = _binary(layout, _push(), {})
    finally:
        timer.cancel()
    assert done.returncode == ANSWERED, done.stderr
    assert time.monotonic() - began >= 0.4
    assert not (layout.root / spool.PUSHED / NAME).exists()  # consumed


def test_it_stops_waiting_after_the_push_wait_or_when_the_pusher_exits(
    layouts: Callable[[str], Layout]
) -> None:
    layout = layouts("c")
    layout.segment()
    layout.ready()
    fd = layout.pusher()
    began = time.monotonic()
    done = _binary(layout, _push(), {spool.PUSH_WAIT_ENV: "0.5"})
    assert done.returncode == HANDED_ON
    assert 0.5 <= time.monotonic() - began < 10
    threading.Timer(0.3, lambda: fcntl.flock(fd, fcntl.LOCK_UN)).start()
    began = time.monotonic()
    done = _binary(layout, _push(), {})  # the default wait is 60 s: the exit ends it
    assert done.returncode == HANDED_ON
    assert time.monotonic() - began < 10


def test_what_it_hands_on_gets_every_argument_unchanged(
    layouts: Callable[[str], Layout], tmp_path: Path
) -> None:
    layout = layouts("c")
    record = tmp_path / "argv"
    script = tmp_path / "show"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\nexit 7\n')
    script.chmod(0o755)
    argv = ["wal-fetch", "--repo", "s3://b/a b", "--allow-partial", NAME, "pg_wal/R X"]
    done = _binary(layout, argv, {}, fallback=[str(script), "first arg"])
    assert done.returncode == 7  # its status is the answer
    assert record.read_text().splitlines() == ["first arg", *argv]


def test_a_command_that_cannot_run_is_255_and_no_verb_is_255(
    layouts: Callable[[str], Layout]
) -> None:
    layout = layouts("c")
    done = _binary(layout, _fetch(), {}, fallback=["/nonexistent/tonebridge-dr"])
    assert done.returncode == 255
    assert "cannot run /nonexistent/tonebridge-dr" in done.stderr
    for argv in ([], ["wal-fetch", NAME, "p"]):
        proc = subprocess.run([WALFAST, *argv], capture_output=True, text=True, check=False)
        assert proc.returncode == 255 and "usage:" in proc.stderr


def test_restore_writes_the_binary_in_front_of_the_light_entry_point(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(settings.WAL_COMMAND_ENV, raising=False)
    assert settings.walfast_path() == WALFAST  # built by make venv: the tests need it
    prefix = settings.wal_command_prefix()
    assert prefix == f"{WALFAST} {VENV_PYTHON} {spool.__file__}"
    assert settings.wal_command_prefix("tonebridge-dr") == "tonebridge-dr"
    monkeypatch.setenv(settings.WAL_COMMAND_ENV, "/opt/x/tonebridge-dr")
    assert settings.wal_command_prefix() == "/opt/x/tonebridge-dr"
