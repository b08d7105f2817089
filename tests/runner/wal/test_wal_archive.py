"""wal-push / wal-fetch contracts on file:// and S3 (moto), without a PostgreSQL server.

Synthetic 1 MiB segments carry a valid long page header (tests.fixtures.pg_wal),
so every check wal-push makes on real segments applies to them.
"""

from __future__ import annotations

import collections
import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from tests.fixtures import s3 as s3_fixtures
from tests.fixtures.gpg import GpgKeys
from tests.fixtures.pg_wal import SMALL_SEGMENT, run_wal, segment_bytes, write_segment
from tonebridge_dr.runner import cli, errors
from tonebridge_dr.runner.engines.postgres.wal import archive, catalog, naming, spool
from tonebridge_dr.runner.storage import Storage, open_storage

SEG1 = "000000010000000000000001"
SEG2 = "000000010000000000000002"


@pytest.fixture(params=["file", "s3"])
def repo_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_repo_url"))


@pytest.fixture
def pg_wal(tmp_path: Path) -> Path:
    folder = tmp_path / "data" / "pg_wal"
    (folder / "archive_status").mkdir(parents=True)
    return folder


def _keys(url: str) -> list[str]:
    return [info.key for info in open_storage(url).list("wal/")]


def _push(url: str, path: Path, *extra: str) -> int:
    return cli.main(["wal-push", "--repo", url, *extra, str(path)])


def _fetch(url: str, name: str, dest: Path, *extra: str) -> int:
    return cli.main(["wal-fetch", "--repo", url, "--no-prefetch", *extra, name, str(dest)])


def _ready(pg_wal: Path, name: str) -> None:
    (pg_wal / "archive_status" / f"{name}.ready").write_bytes(b"")


def test_push_stores_one_object_under_its_digest_and_fetch_returns_it(
    repo_url: str, pg_wal: Path, tmp_path: Path
) -> None:
    path = write_segment(pg_wal, SEG1)
    assert _push(repo_url, path) == 0
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert _keys(repo_url) == [f"wal/0000000100000000/{SEG1}.{digest}.zst"]
    dest = tmp_path / "RECOVERYXLOG"
    assert _fetch(repo_url, SEG1, dest) == 0
    assert dest.read_bytes() == path.read_bytes()
    assert not list(tmp_path.glob(".*.tmp"))


def test_identical_second_push_succeeds_without_a_second_object(
    repo_url: str, pg_wal: Path
) -> None:
    path = write_segment(pg_wal, SEG1)
    assert _push(repo_url, path) == 0
    before = _keys(repo_url)
    settings = archive.PushSettings(repo_url)
    outcome = archive.Pusher(catalog.WalArchive(open_storage(repo_url)), settings).push_file(path)
    assert outcome.uploaded is False
    assert _push(repo_url, path) == 0
    assert _keys(repo_url) == before


def test_different_content_under_an_archived_name_fails_and_keeps_the_original(
    repo_url: str, pg_wal: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_segment(pg_wal, SEG1, seed=1)
    original = path.read_bytes()
    assert _push(repo_url, path) == 0
    before = _keys(repo_url)
    write_segment(pg_wal, SEG1, seed=2)
    capsys.readouterr()
    assert _push(repo_url, path) == errors.ConflictError.exit_code == 13
    err = capsys.readouterr().err
    assert "already archived with different content" in err and SEG1 in err
    assert _keys(repo_url) == before
    dest = tmp_path / "out"
    assert _fetch(repo_url, SEG1, dest) == 0
    assert dest.read_bytes() == original


@pytest.mark.parametrize(
    "name",
    ["RECOVERYXLOG", "00000001000000000000001", "000000010000000000000001.gz", "0000000000000000"
     "00000001", "00000000.history"],
)
def test_invalid_names_are_refused_before_any_work(
    file_repo_url: str, pg_wal: Path, name: str
) -> None:
    path = pg_wal / name
    path.write_bytes(segment_bytes(SEG1))
    assert _push(file_repo_url, path) == errors.UsageError.exit_code == 2
    # A restore_command handing us something that is no WAL name is misconfigured: abort
    # recovery (exit 255) rather than let PostgreSQL take it for the end of the archive.
    assert _fetch(file_repo_url, name, pg_wal / "x") == 255
    assert _keys(file_repo_url) == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x00" * 1000, "is not a WAL segment"),
        (os.urandom(SMALL_SEGMENT), "does not hold WAL segment"),
        (segment_bytes(SEG2), "holds WAL from 0/200000, not 0/100000"),
        (segment_bytes(SEG1, 2 * SMALL_SEGMENT)[: SMALL_SEGMENT], "segments of 2097152 bytes"),
    ],
    ids=["too-small", "random", "other-segment", "wrong-segment-size"],
)
def test_files_that_are_not_the_named_segment_are_refused(
    file_repo_url: str, pg_wal: Path, content: bytes, message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = pg_wal / SEG1
    path.write_bytes(content)
    assert _push(file_repo_url, path) == errors.IntegrityError.exit_code
    assert message in capsys.readouterr().err
    assert _keys(file_repo_url) == []


def test_history_backup_and_partial_files(repo_url: str, pg_wal: Path, tmp_path: Path) -> None:
    history = pg_wal / "00000002.history"
    history.write_text("1\t0/3000158\tno recovery target specified\n")
    label = pg_wal / f"{SEG2}.00000028.backup"
    label.write_text("START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n")
    partial = pg_wal / f"{SEG2}.partial"
    partial.write_bytes(segment_bytes(SEG2))
    for path in (history, label, partial):
        assert _push(repo_url, path) == 0
    keys = _keys(repo_url)
    assert len(keys) == 3
    assert any(k.startswith("wal/history/00000002.history.") for k in keys)
    assert any(k.startswith(f"wal/0000000100000000/{SEG2}.00000028.backup.") for k in keys)
    dest = tmp_path / "RECOVERYHISTORY"
    assert _fetch(repo_url, "00000002.history", dest) == 0
    assert dest.read_text() == history.read_text()
    # A never-completed segment is served from its .partial only when asked to.
    assert _fetch(repo_url, SEG2, tmp_path / "seg") == 1
    assert _fetch(repo_url, SEG2, tmp_path / "seg", "--allow-partial") == 0
    assert (tmp_path / "seg").read_bytes() == partial.read_bytes()


def test_missing_files_exit_1(
    repo_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    open_storage(repo_url)  # an existing, empty repository
    assert _fetch(repo_url, SEG1, tmp_path / "x") == 1
    assert _fetch(repo_url, "00000005.history", tmp_path / "x") == 1
    assert _fetch(repo_url, "00000001.history", tmp_path / "x") == 1  # asked at promotion
    assert "is not in the archive" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("damage", ["flipped-byte", "other-content", "truncated"])
def test_corrupt_archived_segment_is_detected_on_fetch(
    repo_url: str, pg_wal: Path, tmp_path: Path, damage: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = write_segment(pg_wal, SEG1)
    assert _push(repo_url, path) == 0
    storage = open_storage(repo_url)
    (key,) = _keys(repo_url)
    stored = storage.get_bytes(key)
    if damage == "flipped-byte":
        tampered = stored[:40] + bytes([stored[40] ^ 0xFF]) + stored[41:]
    elif damage == "other-content":
        from tonebridge_dr.runner.codecs import pipeline

        tampered = b"".join(pipeline.encode([segment_bytes(SEG1, seed=9)]))
    else:
        tampered = stored[: len(stored) // 2]
    storage.put_bytes(key, tampered)
    dest = tmp_path / "RECOVERYXLOG"
    assert _fetch(repo_url, SEG1, dest) == 255
    err = capsys.readouterr().err
    assert "corrupt" in err and key in err and "recovery stops here" in err
    assert not dest.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_unreachable_storage_fails_push_and_fetch(
    pg_wal: Path, tmp_path: Path, start_moto: object, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    s3_fixtures.s3_env(monkeypatch, "http://127.0.0.1:9")  # nothing listens on port 9
    path = write_segment(pg_wal, SEG1)
    assert _push("s3://bucket/repo", path) == errors.StorageError.exit_code
    assert "cannot reach S3 endpoint" in capsys.readouterr().err
    assert _fetch("s3://bucket/repo", SEG1, tmp_path / "x") == 255


def test_encrypted_archive_detects_duplicates_and_needs_the_key(
    repo_url: str, pg_wal: Path, tmp_path: Path, gpg_keys: GpgKeys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(archive.ENCRYPT_ENV, str(gpg_keys.public_key))
    path = write_segment(pg_wal, SEG1)
    assert _push(repo_url, path) == 0
    (key,) = _keys(repo_url)
    assert key.endswith(".zst.gpg")
    first = open_storage(repo_url).get_bytes(key)
    assert _push(repo_url, path) == 0  # identical: recognised by the raw digest in the key
    assert _keys(repo_url) == [key] and open_storage(repo_url).get_bytes(key) == first
    write_segment(pg_wal, SEG1, seed=5)
    assert _push(repo_url, path) == 13
    assert _fetch(repo_url, SEG1, tmp_path / "x") == 255  # no key given
    assert _fetch(repo_url, SEG1, tmp_path / "x", "--decrypt-key",
                  str(gpg_keys.private_key)) == 0
    assert (tmp_path / "x").read_bytes() == segment_bytes(SEG1)


def _pusher_running(pg_wal: Path) -> bool:
    return spool.lock_held(spool.pusher_lock_path(str(pg_wal)))


def _wait_for_pusher_exit(pg_wal: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while _pusher_running(pg_wal):
        assert time.monotonic() < deadline, "the background pusher did not exit"
        time.sleep(0.05)


def test_background_pusher_uploads_ready_files_and_later_calls_take_the_fast_path(
    repo_url: str, pg_wal: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = [naming.segment_name(1, n, SMALL_SEGMENT) for n in range(1, 13)]
    for index, name in enumerate(names):
        write_segment(pg_wal, name, seed=index)
        _ready(pg_wal, name)
    _ready(pg_wal, "not-a-wal-file")
    monkeypatch.setenv(archive.PUSH_AHEAD_ENV, "5")  # batches of 5: three rounds
    monkeypatch.setenv(archive.LINGER_ENV, "0.5")
    assert _push(repo_url, pg_wal / names[0]) == 0  # stores its own file, starts the pusher
    (pg_wal / "archive_status" / f"{names[0]}.ready").rename(
        pg_wal / "archive_status" / f"{names[0]}.done"
    )
    _wait_for_pusher_exit(pg_wal)
    archived = {naming.parse_key(k).name for k in _keys(repo_url)}  # type: ignore[union-attr]
    assert archived == set(names)
    markers = sorted(os.listdir(spool.pushed_dir(str(pg_wal))))
    assert markers == names[1:]
    # PostgreSQL's later calls: answered from the markers, which are consumed.
    for name in names[1:10]:
        assert spool.fast_main(["wal-push", "--repo", repo_url, str(pg_wal / name)]) == 0
    assert sorted(os.listdir(spool.pushed_dir(str(pg_wal)))) == names[10:]
    # A marker for another repository, or for a file changed since, is not trusted.
    assert spool.fast_main(["wal-push", "--repo", repo_url + "-other", str(pg_wal / names[10])]) \
        is None
    os.utime(pg_wal / names[10], ns=(1, 1))
    assert spool.fast_main(["wal-push", "--repo", repo_url, str(pg_wal / names[10])]) is None
    assert _push(repo_url, pg_wal / names[10]) == 0  # slow path: identical, fine
    log = Path(spool.spool_root(str(pg_wal))) / spool.PUSHER_LOG
    assert log.read_text() == ""  # warnings only, and there were none


def test_no_pusher_without_other_ready_files_or_when_turned_off(
    file_repo_url: str, pg_wal: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_segment(pg_wal, SEG1)
    _ready(pg_wal, SEG1)
    assert _push(file_repo_url, pg_wal / SEG1) == 0
    assert not _pusher_running(pg_wal)
    write_segment(pg_wal, SEG2)
    _ready(pg_wal, SEG2)
    monkeypatch.setenv(archive.PUSH_AHEAD_ENV, "1")
    assert _push(file_repo_url, pg_wal / SEG1) == 0
    assert not _pusher_running(pg_wal)
    assert not os.path.exists(spool.pushed_dir(str(pg_wal)))


def test_a_call_waits_for_the_running_pusher_and_no_longer(
    file_repo_url: str, pg_wal: Path
) -> None:
    path = write_segment(pg_wal, SEG1)
    lock_fd = spool.take_pusher_lock(str(pg_wal))  # we play the pusher
    assert lock_fd is not None and _pusher_running(pg_wal)
    argv = ["wal-push", "--repo", file_repo_url, str(path)]
    try:
        # Not marked .ready: PostgreSQL is not archiving it, nobody will push it: no wait.
        spool.describe_pusher(lock_fd, file_repo_url, os.getpid())
        began = time.monotonic()
        assert spool.fast_main(argv) is None
        assert time.monotonic() - began < 1
        _ready(pg_wal, SEG1)
        # A pusher for another repository: its markers would never match, no wait.
        spool.describe_pusher(lock_fd, file_repo_url + "-other")
        assert spool.fast_main(argv) is None
        assert time.monotonic() - began < 1
        spool.describe_pusher(lock_fd, file_repo_url, os.getpid())

        def store_later() -> None:
            time.sleep(0.3)
            archive.Pusher(
                catalog.WalArchive(open_storage(file_repo_url)),
                archive.PushSettings(file_repo_url),
            ).push_file(path)
            spool.write_push_marker(str(path), file_repo_url, "k", "s", stat)

        stat = spool.file_stat(str(path))
        worker = threading.Thread(target=store_later)
        worker.start()
        assert spool.fast_main(argv) == 0  # returned once the marker appeared
        worker.join()
        assert not os.listdir(spool.pushed_dir(str(pg_wal)))  # consumed
        # No marker coming: a bounded wait, then the slow path.
        began = time.monotonic()
        assert spool.wait_for_pusher(str(path), file_repo_url, timeout=0.3) is False
        assert 0.3 <= time.monotonic() - began < 5
    finally:
        os.close(lock_fd)
    # The pusher is gone: no wait at all.
    began = time.monotonic()
    assert spool.fast_main(argv) is None
    assert time.monotonic() - began < 1


def test_the_pusher_stops_after_a_failed_upload(
    pg_wal: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3_fixtures.s3_env(monkeypatch, "http://127.0.0.1:9")  # nothing listens on port 9
    for name in (SEG1, SEG2):
        write_segment(pg_wal, name)
        _ready(pg_wal, name)
    settings = archive.PushSettings("s3://bucket/repo")
    assert archive.run_background(pg_wal, settings, linger=60) == 1  # does not linger
    assert not os.path.exists(spool.pushed_dir(str(pg_wal))) or not os.listdir(
        spool.pushed_dir(str(pg_wal))
    )


def test_background_pusher_through_real_processes(file_repo_url: str, pg_wal: Path) -> None:
    names = [naming.segment_name(1, n, SMALL_SEGMENT) for n in range(1, 7)]
    for name in names:
        write_segment(pg_wal, name)
        _ready(pg_wal, name)
    env = {**os.environ, "TONEBRIDGE_DR_REPO": file_repo_url, archive.LINGER_ENV: "1"}
    cwd = pg_wal.parent
    for name in names:  # what PostgreSQL's archiver does, one call after the other
        call = run_wal("wal-push", f"pg_wal/{name}", env=env, cwd=cwd)
        assert call.returncode == 0, call.stderr
        (pg_wal / "archive_status" / f"{name}.ready").rename(
            pg_wal / "archive_status" / f"{name}.done"
        )
        if name != names[0]:
            assert call.stderr == ""  # answered by the pusher's marker: the fast path
    assert len(_keys(file_repo_url)) == 6
    _wait_for_pusher_exit(pg_wal)


def test_a_call_for_another_repository_stops_the_old_pusher(
    file_repo_url: str, pg_wal: Path, tmp_path: Path
) -> None:
    other_url = (tmp_path / "other-repo").as_uri()
    names = [naming.segment_name(1, n, SMALL_SEGMENT) for n in range(1, 8)]
    for name in names[:4]:
        write_segment(pg_wal, name)
        _ready(pg_wal, name)

    def call(name: str, repo: str, linger: str) -> None:
        env = {**os.environ, "TONEBRIDGE_DR_REPO": repo, archive.LINGER_ENV: linger}
        done = run_wal("wal-push", f"pg_wal/{name}", env=env, cwd=pg_wal.parent)
        assert done.returncode == 0, done.stderr
        (pg_wal / "archive_status" / f"{name}.ready").rename(
            pg_wal / "archive_status" / f"{name}.done"
        )

    call(names[0], file_repo_url, "60")  # a pusher for the first repository, lingering
    deadline = time.monotonic() + 30
    while len(_keys(file_repo_url)) < 4:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert _pusher_running(pg_wal)
    for name in names[4:]:
        write_segment(pg_wal, name)
        _ready(pg_wal, name)
    call(names[1], other_url, "0.5")  # archive_command now names another repository
    _wait_for_pusher_exit(pg_wal)  # the old pusher was asked to stop, long before 60 s
    log = Path(spool.spool_root(str(pg_wal))) / spool.PUSHER_LOG
    assert "archive_command uses another repository" in log.read_text()
    for name in names[2:]:  # the next call starts a pusher for the new repository
        call(name, other_url, "0.5")
    _wait_for_pusher_exit(pg_wal)
    archived = {naming.parse_key(k).name for k in _keys(other_url)}  # type: ignore[union-attr]
    assert archived == set(names[1:])


def test_newer_partial_replaces_the_older_one(repo_url: str, pg_wal: Path) -> None:
    path = pg_wal / f"{SEG1}.partial"
    short = segment_bytes(SEG1, fill=1000)
    long = segment_bytes(SEG1, fill=3000)
    path.write_bytes(short)
    assert _push(repo_url, path) == 0
    path.write_bytes(long)
    assert _push(repo_url, path) == 0
    (key,) = _keys(repo_url)
    assert hashlib.sha256(long).hexdigest() in key
    path.write_bytes(short)  # an older copy arriving late: the archive already has more
    assert _push(repo_url, path) == 0
    assert _keys(repo_url) == [key]
    path.write_bytes(segment_bytes(SEG1, fill=2000, seed=3))  # diverges
    assert _push(repo_url, path) == 13
    assert _keys(repo_url) == [key]


class _RacingPusher(archive.Pusher):
    """Another writer stores different content for the same name during our upload."""

    def _upload_encoded(self, key: str, packed: collections.deque[bytes]) -> int:
        stored = super()._upload_encoded(key, packed)
        ref = naming.parse_key(key)
        assert ref is not None
        self.storage.put_bytes(naming.object_key(ref.wal, "f" * 64, self.extension), b"rival")
        return stored


def test_a_racing_writer_with_different_content_makes_us_withdraw(
    file_repo_url: str, pg_wal: Path
) -> None:
    path = write_segment(pg_wal, SEG1)
    storage: Storage = open_storage(file_repo_url)
    pusher = _RacingPusher(catalog.WalArchive(storage), archive.PushSettings(file_repo_url))
    with pytest.raises(errors.ConflictError, match="archived concurrently"):
        pusher.push_file(path)
    assert _keys(file_repo_url) == [f"wal/0000000100000000/{SEG1}.{'f' * 64}.zst"]


def test_bad_settings_fail_before_anything_is_stored(
    file_repo_url: str, pg_wal: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_segment(pg_wal, SEG1)
    monkeypatch.setenv(archive.COMPRESSION_ENV, "lzma")
    assert _push(file_repo_url, path) == 2
    monkeypatch.setenv(archive.COMPRESSION_ENV, "zstd")
    monkeypatch.setenv(archive.PARALLEL_ENV, "many")
    assert _push(file_repo_url, path) == 2
    monkeypatch.delenv(archive.PARALLEL_ENV)
    monkeypatch.setenv(archive.ENCRYPT_ENV, "/nonexistent/key.asc")
    assert _push(file_repo_url, path) == errors.EncryptionError.exit_code
    monkeypatch.delenv("TONEBRIDGE_DR_REPO", raising=False)
    monkeypatch.delenv(archive.ENCRYPT_ENV)
    assert cli.main(["wal-push", str(path)]) == 2
    assert _keys(file_repo_url) == []


def test_compression_setting_is_used(
    file_repo_url: str, pg_wal: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(archive.COMPRESSION_ENV, "gzip")
    path = write_segment(pg_wal, SEG1)
    assert _push(file_repo_url, path) == 0
    (key,) = _keys(file_repo_url)
    assert key.endswith(".gz")
    assert _fetch(file_repo_url, SEG1, tmp_path / "x") == 0
    assert (tmp_path / "x").read_bytes() == path.read_bytes()


def test_large_files_stream_in_two_passes(
    repo_url: str, pg_wal: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    gpg_keys: GpgKeys,
) -> None:
    monkeypatch.setattr(archive, "IN_MEMORY_LIMIT", 0)  # as for a 1 GiB wal_segment_size
    plain = write_segment(pg_wal, SEG1)
    assert _push(repo_url, plain) == 0
    assert _push(repo_url, plain) == 0
    monkeypatch.setenv(archive.ENCRYPT_ENV, str(gpg_keys.public_key))
    encrypted = write_segment(pg_wal, SEG2)
    assert _push(repo_url, encrypted) == 0
    assert _fetch(repo_url, SEG1, tmp_path / "1") == 0
    assert _fetch(repo_url, SEG2, tmp_path / "2", "--decrypt-key", str(gpg_keys.private_key)) == 0
    assert (tmp_path / "1").read_bytes() == plain.read_bytes()
    assert (tmp_path / "2").read_bytes() == encrypted.read_bytes()


def test_the_light_entry_point_answers_hits_and_execs_the_rest(
    file_repo_url: str, pg_wal: Path
) -> None:
    names = [naming.segment_name(1, n, SMALL_SEGMENT) for n in range(1, 4)]
    for name in names:
        write_segment(pg_wal, name)
        _ready(pg_wal, name)
    env = {**os.environ, "TONEBRIDGE_DR_REPO": file_repo_url, archive.LINGER_ENV: "0.5"}
    import subprocess
    import sys

    light = [sys.executable, spool.__file__, "wal-push"]
    first = subprocess.run([*light, f"pg_wal/{names[0]}"], cwd=pg_wal.parent, env=env,
                           capture_output=True, text=True, check=False)
    assert first.returncode == 0 and "started the background pusher" in first.stderr
    for name in names[1:]:
        hit = subprocess.run([*light, f"pg_wal/{name}"], cwd=pg_wal.parent, env=env,
                             capture_output=True, text=True, check=False)
        assert hit.returncode == 0 and hit.stderr == ""
    bad = subprocess.run([*light, "pg_wal/nonsense"], cwd=pg_wal.parent, env=env,
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "invalid WAL file name" in bad.stderr
    _wait_for_pusher_exit(pg_wal)
