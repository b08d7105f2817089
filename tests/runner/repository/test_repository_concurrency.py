"""Prune and running backups, together: claims with a heartbeat, commits that re-check
what they list, and the leftovers of writes killed with SIGKILL.

A backup folder without manifest is either a running write or a crashed one. A running
writer renews its claim every heartbeat, prune removes a folder only when everything in
it is older than its grace, and a writer that was stalled longer than that (SIGSTOP, a
frozen VM) finds out at commit: it fails with exit 4 instead of writing a manifest that
points at deleted objects.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.repository import Repository
from tonebridge_dr.runner.repository import catalog as catalog_mod
from tonebridge_dr.runner.repository.retention import RetentionPolicy
from tonebridge_dr.runner.storage import open_storage
from tonebridge_dr.runner.storage.local import LocalStorage

UTC = dt.UTC
KEEP_ALL = RetentionPolicy(keep_last=100_000)


@pytest.fixture(params=["file", "s3"])
def repo(request: pytest.FixtureRequest) -> Repository:
    return Repository.open(str(request.getfixturevalue(f"{request.param}_repo_url")))


def _slow(data: bytes, pause: float, pieces: int = 4) -> Iterator[bytes]:
    step = max(1, len(data) // pieces)
    for pos in range(0, len(data), step):
        time.sleep(pause)
        yield data[pos : pos + step]


def _backdate(root: Path, seconds: float) -> None:
    when = time.time() - seconds
    for folder, _dirs, files in os.walk(root):
        for name in files:
            os.utime(Path(folder) / name, (when, when))


def _claim_time(repo: Repository, backup_id: str) -> dt.datetime:
    [claim] = [i for i in repo.storage.list(f"base/{backup_id}/") if ".claim-" in i.key]
    return claim.last_modified


def test_a_running_backup_renews_its_claim(repo: Repository) -> None:
    writer = repo.begin(engine="postgres", method="logical", heartbeat=0.2)
    with writer:
        writer.put_object("database.dump", [b"x" * 100])
        first = _claim_time(repo, writer.id)
        deadline = time.monotonic() + 10
        while _claim_time(repo, writer.id) <= first:  # S3 times have whole seconds
            assert time.monotonic() < deadline, "the claim was never renewed"
            time.sleep(0.1)
        manifest = writer.commit(databases=["app"], server_version="15", tools={})
    assert [m.id for m in repo.list_backups()] == [manifest.id]
    assert not [i for i in repo.storage.list(f"base/{manifest.id}/") if ".claim-" in i.key]
    assert repo.verify(manifest.id).ok


def test_prune_spares_a_running_backup_whose_objects_are_old(tmp_path: Path) -> None:
    repo = Repository.open((tmp_path / "repo").as_uri())
    with repo.begin(engine="postgres", method="logical", heartbeat=0.1) as writer:
        writer.put_object("database.dump", [b"old bytes"])
        _backdate(tmp_path / "repo", 3600)  # a long first object; the claim beats on
        time.sleep(0.5)
        report = repo.prune(KEEP_ALL, now=dt.datetime.now(UTC),
                            orphan_grace=dt.timedelta(seconds=30))
        assert report.orphans == []
        manifest = writer.commit(databases=["app"], server_version="15", tools={})
    assert repo.verify(manifest.id).ok


def test_a_stalled_writer_whose_folder_was_pruned_fails_its_commit(tmp_path: Path) -> None:
    repo = Repository.open((tmp_path / "repo").as_uri())
    with pytest.raises(errors.StorageError, match=r"lost .*no manifest was kept") as caught:  # noqa: SIM117
        with repo.begin(engine="postgres", method="logical", heartbeat=0) as writer:
            writer.put_object("database.dump", [b"data"])
            _backdate(tmp_path / "repo", 3600)  # what a stall longer than the grace looks like
            report = repo.prune(KEEP_ALL, now=dt.datetime.now(UTC),
                                orphan_grace=dt.timedelta(seconds=30))
            assert report.orphans == [writer.id]
            writer.commit(databases=["app"], server_version="15", tools={})
    assert caught.value.exit_code == 4
    assert repo.list_backups() == []
    assert list(repo.storage.list("")) == []


_WRITER = textwrap.dedent("""
    import sys
    from tonebridge_dr.runner import errors
    from tonebridge_dr.runner.repository import Repository

    repo = Repository.open(sys.argv[1])
    try:
        with repo.begin(engine="postgres", method="logical", heartbeat=0.1) as writer:
            writer.put_object("database.dump", [b"a" * 4096])
            print(writer.id, flush=True)
            sys.stdin.readline()
            writer.commit(databases=["app"], server_version="15", tools={})
    except errors.DRError as exc:
        print(exc, file=sys.stderr)
        sys.exit(exc.exit_code)
""")


def test_sigstop_longer_than_the_grace_then_prune_makes_the_commit_fail(tmp_path: Path) -> None:
    """The adversarial run's scenario with a real process: stopped with SIGSTOP (its
    heartbeat stops too), pruned, continued: exit 4 and no manifest, never exit 0."""
    root = tmp_path / "repo"
    repo = Repository.open(root.as_uri())
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, root.as_uri()],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        backup_id = proc.stdout.readline().strip()
        os.kill(proc.pid, signal.SIGSTOP)
        _backdate(root, 3600)
        report = repo.prune(KEEP_ALL, now=dt.datetime.now(UTC),
                            orphan_grace=dt.timedelta(seconds=60))
        assert report.orphans == [backup_id]
        os.kill(proc.pid, signal.SIGCONT)
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=60) == 4, proc.stderr.read() if proc.stderr else ""
    finally:
        proc.kill()
        proc.wait()
    assert repo.list_backups() == []


def test_backups_and_prunes_in_a_loop_never_leave_a_broken_backup(repo: Repository) -> None:
    """Writers commit backups of slowly streamed objects while another thread prunes with
    a short grace: every commit succeeds (the heartbeat keeps each folder young) and every
    listed backup verifies."""
    stop = threading.Event()
    failures: list[BaseException] = []
    committed: list[str] = []
    prunes = 0

    def write(seed: int) -> None:
        try:
            for round_ in range(3):
                with repo.begin(engine="postgres", method="logical", heartbeat=0.1) as writer:
                    for index in range(2):
                        data = bytes([seed, round_, index]) * 2000
                        writer.put_object(f"t{index}.dump", _slow(data, 0.05))
                    committed.append(writer.commit(databases=["app"], server_version="15",
                                                   tools={}).id)
        except BaseException as exc:
            failures.append(exc)

    def prune() -> None:
        nonlocal prunes
        while not stop.is_set():
            repo.prune(KEEP_ALL, now=dt.datetime.now(UTC), orphan_grace=dt.timedelta(seconds=5))
            prunes += 1

    writers = [threading.Thread(target=write, args=(seed,)) for seed in range(4)]
    pruner = threading.Thread(target=prune)
    pruner.start()
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join(timeout=300)
    stop.set()
    pruner.join(timeout=60)
    assert failures == []
    assert prunes > 0 and len(committed) == 12
    listed = [m.id for m in repo.list_backups()]
    assert sorted(listed) == sorted(committed)
    for backup_id in listed:
        assert repo.verify(backup_id).ok, backup_id


def test_retention_racing_20_concurrent_backups_leaves_only_whole_backups(
    repo: Repository,
) -> None:
    """Twenty writers commit at once while prunes with real rules (keep the newest 3 of
    each series) run in a loop: no commit fails, every prune keeps the newest of each
    series, and every manifest that exists afterwards verifies."""
    rule = RetentionPolicy(keep_last=3)
    stop = threading.Event()
    failures: list[BaseException] = []
    committed: list[str] = []
    reports: list[catalog_mod.PruneReport] = []

    def write(seed: int) -> None:
        try:
            schedule = "hot" if seed % 2 else "daily"
            with repo.begin(engine="postgres", method="logical", heartbeat=0.1,
                            schedule=schedule) as writer:
                for index in range(2):
                    writer.put_object(f"t{index}.dump", _slow(bytes([seed, index]) * 3000, 0.02))
                committed.append(writer.commit(databases=["app"], server_version="15",
                                               tools={}).id)
        except BaseException as exc:
            failures.append(exc)

    def prune() -> None:
        while not stop.is_set():
            reports.append(repo.prune(rule, now=dt.datetime.now(UTC),
                                      orphan_grace=dt.timedelta(seconds=5)))

    pruners = [threading.Thread(target=prune) for _ in range(2)]  # two prunes at once too
    writers = [threading.Thread(target=write, args=(seed,)) for seed in range(20)]
    for thread in [*pruners, *writers]:
        thread.start()
    for thread in writers:
        thread.join(timeout=300)
    stop.set()
    for thread in pruners:
        thread.join(timeout=60)
    assert failures == []
    assert len(committed) == 20 and reports
    assert all(report.orphans == [] for report in reports)  # no running write was taken
    final = repo.prune(rule, now=dt.datetime.now(UTC))
    listed = repo.list_backups()
    assert sorted(m.id for m in listed) == sorted(final.kept)
    assert sorted(m.schedule or "" for m in listed) == ["daily"] * 3 + ["hot"] * 3
    for manifest in listed:
        assert repo.verify(manifest.id).ok, manifest.id


def test_prune_removes_old_temp_files_of_crashed_writes_and_their_folders(
    tmp_path: Path,
) -> None:
    root = tmp_path / "repo"
    repo = Repository.open(root.as_uri())
    folder = root / "base" / "20261205T010203Z"
    folder.mkdir(parents=True)
    crashed = folder / ".database.dump.zst.abcd1234.part"
    crashed.write_bytes(b"half an object")
    running = root / "wal" / "0000000100000000"
    running.mkdir(parents=True)
    young = running / ".000000010000000000000001.zst.q1w2e3r4.part"
    young.write_bytes(b"being written")
    _backdate(folder, 3600)
    assert list(repo.storage.list("")) == []  # never visible as objects
    dry = repo.prune(KEEP_ALL, now=dt.datetime.now(UTC), dry_run=True)
    assert dry.leftovers == ["base/20261205T010203Z/database.dump.zst"] and crashed.exists()
    report = repo.prune(KEEP_ALL, now=dt.datetime.now(UTC))
    assert report.leftovers == dry.leftovers
    assert not folder.exists() and not (root / "base").exists()  # rmdir works now
    assert young.exists()  # younger than the grace: a write in progress


def test_prune_aborts_multipart_uploads_of_crashed_writes_only(s3_repo_url: str) -> None:
    repo = Repository.open(s3_repo_url)
    storage = repo.storage
    key = "base/20261205T010203Z/database.dump.zst"
    client, bucket = storage.client, storage.bucket  # type: ignore[attr-defined]
    upload = client.create_multipart_upload(Bucket=bucket, Key=storage._full(key))  # type: ignore[attr-defined]
    [left] = list(storage.list_leftovers())
    assert (left.key, left.handle) == (key, upload["UploadId"])
    # S3 tells only when an upload began: a claim renewed by its writer keeps it alive.
    storage.put_bytes("base/20261205T010203Z/.claim-0123456789abcdef", b"")
    later = dt.datetime.now(UTC) + dt.timedelta(hours=1)
    spared = repo.prune(KEEP_ALL, now=later - dt.timedelta(minutes=59))
    assert spared.leftovers == [] and spared.orphans == []
    assert list(storage.list_leftovers()) == [left]
    report = repo.prune(KEEP_ALL, now=later)  # the claim is old too: a crashed write
    assert report.leftovers == [key] and report.orphans == ["20261205T010203Z"]
    assert list(storage.list_leftovers()) == []


class _Undeletable(LocalStorage):
    def delete(self, key: str) -> None:
        raise errors.StorageError(f"injected: cannot delete {key}")


def test_abort_says_what_it_could_not_remove(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = (tmp_path / "repo").as_uri()
    repo = Repository(_Undeletable(url, tmp_path / "repo"))
    with caplog.at_level(logging.WARNING), pytest.raises(RuntimeError):  # noqa: SIM117
        with repo.begin(engine="postgres", method="logical", heartbeat=0) as writer:
            writer.put_object("database.dump", [b"x"])
            raise RuntimeError("the dump failed")
    assert "could not be removed" in caplog.text
    assert "its objects were removed" not in caplog.text


def test_the_default_grace_and_heartbeat_fit_together() -> None:
    assert catalog_mod.DEFAULT_ORPHAN_GRACE.total_seconds() >= catalog_mod.CLAIM_HEARTBEAT * 5


def test_a_write_whose_empty_folder_a_delete_removes_meanwhile_still_lands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race the 20-writer test hit once in CI: a writer creates base/<id>/, another
    process's delete removes that folder while it is still empty (`_drop_empty_folders`),
    then the writer's temp file has no folder. The real rmdir runs in exactly that window
    here, twice; the write creates the folder again and lands."""
    storage = open_storage(tmp_path.as_uri())
    real_mkstemp = tempfile.mkstemp
    removed: list[str] = []

    def mkstemp_after_a_rmdir(*args: object, **kwargs: object) -> tuple[int, str]:
        folder = Path(str(kwargs["dir"]))
        if len(removed) < 2:
            folder.rmdir()  # what a concurrent delete of its last key does
            removed.append(str(folder))
        return real_mkstemp(*args, **kwargs)  # type: ignore[call-overload, no-any-return]

    monkeypatch.setattr("tonebridge_dr.runner.storage.local.tempfile.mkstemp",
                        mkstemp_after_a_rmdir)
    storage.put_bytes("base/20261205T134612Z/.claim-x", b"claim")
    assert len(removed) == 2
    assert storage.get_bytes("base/20261205T134612Z/.claim-x") == b"claim"
