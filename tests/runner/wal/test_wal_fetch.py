"""wal-fetch's prefetcher: real processes, as PostgreSQL runs restore_command.

A fake data directory (pg_wal/ and recovery.signal) stands in for a cluster in
recovery; each restore_command call is a fresh `python -m ...wal wal-fetch`.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from tests.fixtures.pg_wal import SMALL_SEGMENT, run_wal, segment_bytes, wait_for, write_segment
from tonebridge_dr.runner.engines.postgres.wal import archive, catalog, fetch, naming, spool
from tonebridge_dr.runner.storage import open_storage

COUNT = 24
WINDOW = 6


@pytest.fixture(params=["file", "s3"])
def repo_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_repo_url"))


def _names(count: int = COUNT) -> list[str]:
    return [naming.segment_name(1, n, SMALL_SEGMENT) for n in range(1, count + 1)]


def _archive(repo_url: str, folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pusher = archive.Pusher(
        catalog.WalArchive(open_storage(repo_url)), archive.PushSettings(repo_url)
    )
    for index, name in enumerate(names):
        pusher.push_file(write_segment(folder, name, seed=index))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    (data / "pg_wal").mkdir(parents=True)
    (data / "recovery.signal").write_bytes(b"")
    # The prefetcher serves a live postmaster only: this test process stands in for it.
    (data / "postmaster.pid").write_text(f"{os.getpid()}\n{data}\n")
    return data


def _env(repo_url: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "TONEBRIDGE_DR_REPO": repo_url, "TONEBRIDGE_DR_WAL_PREFETCH":
            str(WINDOW), **extra}


def _prefetched(data_dir: Path) -> set[str]:
    folder = Path(spool.prefetch_dir(str(data_dir / "pg_wal")))
    if not folder.is_dir():
        return set()
    return {p.name for p in folder.iterdir() if naming.is_valid(p.name)}


def test_first_call_downloads_later_calls_take_prefetched_files(
    repo_url: str, data_dir: Path, tmp_path: Path
) -> None:
    names = _names()
    _archive(repo_url, tmp_path / "src", names)
    env = _env(repo_url)
    first = run_wal("wal-fetch", names[0], "pg_wal/RECOVERYXLOG", env=env, cwd=data_dir)
    assert first.returncode == 0, first.stderr
    assert (data_dir / "pg_wal" / "RECOVERYXLOG").read_bytes() == segment_bytes(names[0], seed=0)
    wait_for(lambda: _prefetched(data_dir) >= set(names[1 : 1 + WINDOW]), "the prefetch window")
    # The window never runs further ahead than asked for.
    assert _prefetched(data_dir) == set(names[1 : 1 + WINDOW])
    for index, name in enumerate(names[1:12], start=1):
        wait_for(lambda name=name: name in _prefetched(data_dir), f"{name} prefetched")
        later = run_wal("wal-fetch", name, "pg_wal/RECOVERYXLOG", env=env, cwd=data_dir)
        assert later.returncode == 0 and later.stderr == ""  # a spool hit: no log, no download
        assert (data_dir / "pg_wal" / "RECOVERYXLOG").read_bytes() == segment_bytes(
            name, seed=index
        )
        assert name not in _prefetched(data_dir)  # moved, not copied
    wait_for(lambda: _prefetched(data_dir) == set(names[12 : 12 + WINDOW]), "window moved on")
    # The end of the archive: the next segment is simply not there.
    for name in names[12:]:
        wait_for(lambda name=name: name in _prefetched(data_dir), f"{name} prefetched")
        assert run_wal("wal-fetch", name, "pg_wal/X", env=env, cwd=data_dir).returncode == 0
    beyond = naming.next_segment(names[-1], SMALL_SEGMENT)
    missing = run_wal("wal-fetch", beyond, "pg_wal/X", env=env, cwd=data_dir)
    assert missing.returncode == 1 and "not in the archive" in missing.stderr
    # Recovery over: the prefetcher notices, exits and empties its spool.
    (data_dir / "recovery.signal").unlink()
    folder = spool.prefetch_dir(str(data_dir / "pg_wal"))
    wait_for(lambda: not spool.prefetcher_running(folder), "the prefetcher to exit")
    assert _prefetched(data_dir) == set()


def test_prefetched_files_of_another_repository_are_not_used(
    file_repo_url: str, data_dir: Path, tmp_path: Path
) -> None:
    names = _names(4)
    _archive(file_repo_url, tmp_path / "src", names)
    folder = Path(spool.prefetch_dir(str(data_dir / "pg_wal")))
    folder.mkdir(parents=True)
    (folder / spool.REPO).write_text("file:///elsewhere")
    (folder / names[1]).write_bytes(b"stale bytes from another archive")
    env = _env(file_repo_url, TONEBRIDGE_DR_WAL_PREFETCH="0")
    result = run_wal("wal-fetch", names[1], "pg_wal/RECOVERYXLOG", env=env, cwd=data_dir)
    assert result.returncode == 0, result.stderr
    assert (data_dir / "pg_wal" / "RECOVERYXLOG").read_bytes() == segment_bytes(names[1], seed=1)


def test_prefetch_does_not_outlive_a_removed_data_directory(
    file_repo_url: str, data_dir: Path, tmp_path: Path
) -> None:
    names = _names(3)
    _archive(file_repo_url, tmp_path / "src", names)
    env = _env(file_repo_url)
    assert run_wal("wal-fetch", names[0], "pg_wal/R", env=env, cwd=data_dir).returncode == 0
    folder = spool.prefetch_dir(str(data_dir / "pg_wal"))
    wait_for(lambda: spool.prefetcher_running(folder) or _prefetched(data_dir), "prefetch")
    pid_text = spool.read_text(os.path.join(folder, spool.LOCK)) or ""
    import shutil

    shutil.rmtree(data_dir)
    if pid_text.isdigit():
        pid = int(pid_text)
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), "the prefetcher to exit")


def test_a_file_taken_while_the_prefetcher_reads_wanted_is_not_downloaded_again(
    file_repo_url: str, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The interleaving that made CI flaky, forced: a restore_command call writes
    `.wanted` and moves its file out right after the prefetcher read `.wanted`."""
    names = _names(8)
    _archive(file_repo_url, tmp_path / "src", names)
    folder = Path(spool.prefetch_dir(str(data_dir / "pg_wal")))
    settings = fetch.FetchSettings(file_repo_url, window=3, parallel=2)
    downloads: list[str] = []
    real_download, real_read_text = fetch.download, spool.read_text

    def counting_download(archive: object, name: str, *args: object, **kwargs: object) -> object:
        downloads.append(name)
        return real_download(archive, name, *args, **kwargs)  # type: ignore[arg-type]

    taken: list[str] = []

    def read_text(path: str) -> str | None:
        value = real_read_text(path)
        victim = names[1]
        if path.endswith(spool.WANTED) and not taken and (folder / victim).exists():
            # PostgreSQL's next call, landing between the two looks at the spool.
            spool.note_wanted(str(folder), victim)
            assert spool.take_prefetched(
                str(folder), victim, str(data_dir / "pg_wal" / "RECOVERYXLOG"), file_repo_url
            )
            taken.append(victim)
        return value

    monkeypatch.setattr(fetch, "download", counting_download)
    monkeypatch.setattr(spool, "read_text", read_text)
    folder.mkdir(parents=True)
    (folder / spool.REPO).write_text(file_repo_url)
    runner = threading.Thread(
        target=fetch.run_prefetcher,
        args=(folder, settings),
        kwargs={"start": names[0], "segment_size": SMALL_SEGMENT, "data_dir": data_dir},
    )
    runner.start()
    try:
        wait_for(lambda: _prefetched(data_dir) >= set(names[2:5]), "the window after the take")
        time.sleep(0.5)  # several more rounds of the loop: none may fetch the taken file again
        assert taken == [names[1]]
        assert names[1] not in _prefetched(data_dir)
        assert sorted(downloads) == names[1:5]  # each once
    finally:
        (data_dir / "recovery.signal").unlink()
        runner.join(30)
    assert not runner.is_alive()


def _prefetcher_pid(data_dir: Path) -> int:
    folder = spool.prefetch_dir(str(data_dir / "pg_wal"))
    lock = os.path.join(folder, spool.LOCK)
    # the lock is held from before the prefetcher starts; its pid follows
    wait_for(lambda: (spool.read_text(lock) or "").isdigit(), "the prefetcher to start")
    return int(spool.read_text(lock) or "0")


def test_the_prefetcher_of_a_server_that_is_gone_exits(
    file_repo_url: str, data_dir: Path, tmp_path: Path
) -> None:
    """A failed start leaves recovery.signal: the prefetcher must not poll the archive
    forever for a PostgreSQL that no longer runs (it was seen alive 13+ minutes)."""
    names = _names(3)
    _archive(file_repo_url, tmp_path / "src", names)
    env = _env(file_repo_url)
    assert run_wal("wal-fetch", names[0], "pg_wal/R", env=env, cwd=data_dir).returncode == 0
    pid = _prefetcher_pid(data_dir)
    (data_dir / "postmaster.pid").write_text("999999999\n")  # stale: no such process
    began = time.monotonic()
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), "the prefetcher to exit", timeout=30)
    assert time.monotonic() - began < fetch.ORPHAN_EXIT + 10
    assert (data_dir / "recovery.signal").exists()  # it did not need the signal file gone


def test_idle_is_measured_from_postgresql_requests_not_from_retries(
    file_repo_url: str, data_dir: Path, tmp_path: Path
) -> None:
    """At the end of the archive the prefetcher retries the missing segment every
    MISSING_RETRY seconds; those retries must not keep it alive when nobody asks."""
    names = _names(3)
    _archive(file_repo_url, tmp_path / "src", names)
    env = _env(file_repo_url, TONEBRIDGE_DR_WAL_PREFETCH_IDLE="3")
    assert run_wal("wal-fetch", names[0], "pg_wal/R", env=env, cwd=data_dir).returncode == 0
    pid = _prefetcher_pid(data_dir)
    wait_for(lambda: _prefetched(data_dir) == set(names[1:]), "the rest prefetched")
    # Several MISSING_RETRY rounds pass; a request from PostgreSQL keeps it alive.
    time.sleep(2)
    assert run_wal("wal-fetch", names[1], "pg_wal/R", env=env, cwd=data_dir).returncode == 0
    time.sleep(2)
    assert Path(f"/proc/{pid}").exists()
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), "the idle prefetcher to exit", timeout=20)
    assert (data_dir / "recovery.signal").exists()


def _prefetcher_thread(
    folder: Path, repo_url: str, data_dir: Path, start: str, window: int = 2
) -> threading.Thread:
    settings = fetch.FetchSettings(repo_url, window=window, parallel=2)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / spool.REPO).write_text(repo_url)
    runner = threading.Thread(
        target=fetch.run_prefetcher, args=(folder, settings),
        kwargs={"start": start, "segment_size": SMALL_SEGMENT, "data_dir": data_dir},
    )
    runner.start()
    wait_for(lambda: spool.prefetcher_running(str(folder)), "the prefetcher to start")
    return runner


def test_a_call_the_prefetcher_has_not_served_yet_waits_for_it_instead_of_downloading(
    file_repo_url: str, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL asks for a segment outside the prefetched window (it replays faster than
    the window fills): the call does not start its own download in a new interpreter (the
    slow path), it asks the running prefetcher, which fetches that segment first."""
    names = _names(8)
    _archive(file_repo_url, tmp_path / "src", names)
    downloads: list[str] = []
    real_download = fetch.download

    def counting_download(archive: object, name: str, *args: object, **kwargs: object) -> object:
        downloads.append(name)
        return real_download(archive, name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fetch, "download", counting_download)
    folder = data_dir / "pg_wal" / spool.SPOOL_NAME / spool.PREFETCH
    runner = _prefetcher_thread(folder, file_repo_url, data_dir, names[0])
    try:
        wait_for(lambda: _prefetched(data_dir) == set(names[1:3]), "the window")
        monkeypatch.chdir(data_dir)
        monkeypatch.setenv("TONEBRIDGE_DR_WAL_PREFETCH", "2")
        # names[5]: beyond the window, nobody fetches it unless the call asks
        answer = spool.fast_main(["wal-fetch", "--repo", file_repo_url, names[5],
                                  "pg_wal/RECOVERYXLOG"])
        assert answer == 0  # answered by the spool: no slow path, no download of its own
        assert (data_dir / "pg_wal" / "RECOVERYXLOG").read_bytes() == segment_bytes(
            names[5], seed=5)
        wait_for(lambda: _prefetched(data_dir) >= set(names[6:8]), "the window moved on")
        time.sleep(0.5)  # many loops with the same `.waiting`: no second download of it
        assert downloads.count(names[5]) == 1
        assert names[5] not in _prefetched(data_dir)
    finally:
        (data_dir / "recovery.signal").unlink()
        runner.join(30)
    assert not runner.is_alive()


def test_a_waited_for_segment_not_in_the_archive_goes_the_slow_way_at_once(
    file_repo_url: str, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The end of the archive (recovery asks for the segment after the last): the
    prefetcher says it could not get it, and the slow path answers "not found" (1)."""
    names = _names(3)
    _archive(file_repo_url, tmp_path / "src", names)
    folder = data_dir / "pg_wal" / spool.SPOOL_NAME / spool.PREFETCH
    runner = _prefetcher_thread(folder, file_repo_url, data_dir, names[0])
    beyond = naming.next_segment(names[-1], SMALL_SEGMENT, 2)
    try:
        monkeypatch.chdir(data_dir)
        began = time.monotonic()
        spool.note_wanted(str(folder), beyond)  # what every call writes first
        assert not spool.wait_for_prefetched(str(folder), beyond,
                                             str(data_dir / "pg_wal" / "X"), file_repo_url)
        assert time.monotonic() - began < 10  # not the 60 s wait
        assert spool.read_text(str(folder / spool.FAILED)) == beyond
        env = _env(file_repo_url, TONEBRIDGE_DR_WAL_PREFETCH="2")
        done = run_wal("wal-fetch", beyond, "pg_wal/X", env=env, cwd=data_dir)
        assert done.returncode == 1 and "not in the archive" in done.stderr
        # `.wanted` lost (a write that failed, or was removed under the call): the wait
        # writes it again instead of waiting out its 60 s
        further = naming.next_segment(beyond, SMALL_SEGMENT)
        (folder / spool.WANTED).write_text(names[0])
        began = time.monotonic()
        assert not spool.wait_for_prefetched(str(folder), further,
                                             str(data_dir / "pg_wal" / "X"), file_repo_url)
        assert time.monotonic() - began < 10
        # a call's temp file of `.wanted` / `.waiting` is never cleared under it
        for temp in (".wanted.4242.tmp", ".waiting.4242.tmp"):
            (folder / temp).write_text(further)
        time.sleep(0.5)  # many loops of the prefetcher, each clearing what it does not keep
        assert (folder / ".wanted.4242.tmp").exists() and (folder / ".waiting.4242.tmp").exists()
        # another repository's call never waits on this prefetcher
        assert not spool.wait_for_prefetched(str(folder), names[1], str(data_dir / "Y"),
                                             "file:///elsewhere", timeout=30)
    finally:
        (data_dir / "recovery.signal").unlink()
        runner.join(30)
