"""Bucket snapshots on moto S3: incremental and deduplicated uploads (counted), exact
restores with metadata, a crash mid-snapshot, tampered content, garbage collection after
retention and a snapshot running during a collection."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import s3 as s3_fixtures
from tests.runner.bucket import harness
from tonebridge_dr.runner import cli, errors
from tonebridge_dr.runner.engines.bucket import content, gc, restore, snapshot
from tonebridge_dr.runner.repository.retention import RetentionPolicy

MIB = 1024 * 1024


@pytest.fixture
def s3(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    s3_fixtures.s3_env(monkeypatch, moto_server)
    return s3_fixtures.client(moto_server)


def _objects(count: int) -> dict[str, tuple[bytes, str, dict[str, str]]]:
    """`count` uploads: mostly small, a few multi-MiB (some above the in-memory limit),
    every 7th with user metadata, every 50th a duplicate of another's bytes."""
    def size_of(n: int) -> int:
        return 9 * MIB if n in (3, 500) else 2 * MIB if n % 250 == 7 else 200 + n % 700

    objects = {}
    for n in range(count):
        twin = n - 1 if n % 50 == 49 else n
        data = harness.body(twin, size_of(twin))
        metadata = {"owner": f"user-{n}", "kind": "avatar"} if n % 7 == 0 else {}
        content_type = "image/png" if n % 3 == 0 else "application/octet-stream"
        objects[f"u/{n // 100:02d}/{n:04d}.bin"] = (data, content_type, metadata)
    return objects


def _restored(s3: Any, repo_url: str, backup_id: str) -> dict[str, Any]:
    bucket = harness.new_bucket(s3.meta.endpoint_url)
    target = harness.source(f"s3://{bucket}/r")
    repo, _ = harness.counting_repo(repo_url)
    restore.restore(repo, backup_id, target)
    return harness.state(s3, bucket, "r/")


def test_incremental_snapshots_upload_only_new_content_and_restore_exactly(s3: Any) -> None:
    src = harness.new_bucket(s3.meta.endpoint_url)
    repo_url = f"s3://{harness.new_bucket(s3.meta.endpoint_url)}/repo"
    first = _objects(1000)
    harness.fill(s3, src, first)
    repo, counting = harness.counting_repo(repo_url)

    one = snapshot.snapshot(harness.source(f"s3://{src}"), repo, parallel=4)
    distinct = {harness.address(data) for data, _, _ in first.values()}
    assert len(distinct) == 980  # 20 duplicates
    assert sorted(counting.content_puts) == sorted(content.key_of(a) for a in distinct)
    assert one["bucket"]["objects"] == 1000 and one["bucket"]["new_objects"] == 980

    second = dict(first)
    keys = sorted(first)
    for n, key in enumerate(keys[100:110]):  # modify 10
        second[key] = (harness.body(5000 + n, 300), "text/plain", {"rev": "2"})
    for key in keys[200:210]:  # delete 10
        del second[key]
        s3.delete_object(Bucket=src, Key=key)
    for n in range(10):  # add 10
        second[f"v/new-{n}.txt"] = (harness.body(6000 + n, 1000 + n), "text/plain", {})
    harness.fill(s3, src, {k: v for k, v in second.items() if first.get(k) != v})
    counting.content_puts.clear()

    two = snapshot.snapshot(harness.source(f"s3://{src}"), repo, parallel=4)
    new = {harness.address(second[k][0]) for k in second if first.get(k) != second[k]}
    assert len(new) == 20
    assert sorted(counting.content_puts) == sorted(content.key_of(a) for a in new)
    summary = two["bucket"]
    assert (summary["objects"], summary["unchanged_objects"], summary["read_objects"],
            summary["new_objects"]) == (1000, 980, 20, 20)
    assert summary["base"] == one["id"]
    assert summary["deduplicated_bytes"] == summary["bytes"] - summary["new_bytes"]

    assert _restored(s3, repo_url, one["id"]) == first
    assert _restored(s3, repo_url, two["id"]) == second


def test_a_killed_snapshot_is_invisible_and_its_rerun_uploads_nothing_twice(
    s3: Any, tmp_path: Path
) -> None:
    src = harness.new_bucket(s3.meta.endpoint_url)
    repo_bucket = harness.new_bucket(s3.meta.endpoint_url)
    repo_url = f"s3://{repo_bucket}/repo"
    objects = {f"k{n:04d}": (harness.body(n, 3000), "text/plain", {"n": str(n)})
               for n in range(400)}
    harness.fill(s3, src, objects)
    env = {**os.environ, "TONEBRIDGE_DR_TERMINATION_LOG": str(tmp_path / "term")}
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "tonebridge-dr"), "backup", "bucket", "--source",
         f"s3://{src}",
         "--repo", repo_url, "--parallel", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        while len(harness.stored_contents(s3, repo_bucket, "repo")) < 60:
            assert process.poll() is None, "the snapshot ended before it could be killed"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    before = harness.stored_contents(s3, repo_bucket, "repo")
    assert 60 <= len(before) < 400
    repo, counting = harness.counting_repo(repo_url)
    assert repo.list_backups() == []  # no manifest: the half snapshot does not exist

    done = snapshot.snapshot(harness.source(f"s3://{src}"), repo)
    assert len(counting.content_puts) == 400 - len(before)
    assert not set(counting.content_puts) & set(before)
    after = harness.stored_contents(s3, repo_bucket, "repo")
    assert {key: after[key] for key in before} == before  # not one rewritten
    assert [m.id for m in repo.list_backups()] == [done["id"]]
    assert _restored(s3, repo_url, done["id"]) == objects


def test_tampered_content_fails_restore_and_verify_and_never_reaches_the_target(
    s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    src = harness.new_bucket(s3.meta.endpoint_url)
    repo_bucket = harness.new_bucket(s3.meta.endpoint_url)
    repo_url = f"s3://{repo_bucket}/repo"
    objects = {f"f{n}": (harness.body(n, 5000), "text/plain", {}) for n in range(5)}
    harness.fill(s3, src, objects)
    repo, _ = harness.counting_repo(repo_url)
    taken = snapshot.snapshot(harness.source(f"s3://{src}"), repo)
    bad = content.key_of(harness.address(objects["f2"][0]))
    stored = s3.get_object(Bucket=repo_bucket, Key=f"repo/{bad}")["Body"].read()
    tampered = bytes([stored[0]]) + bytes([stored[1] ^ 0xFF]) + stored[2:]
    s3.put_object(Bucket=repo_bucket, Key=f"repo/{bad}", Body=tampered)

    assert cli.main(["backups", "verify", taken["id"], "--repo", repo_url]) == 7
    assert bad in capsys.readouterr().err

    target = harness.new_bucket(s3.meta.endpoint_url)
    code = cli.main(["restore", "bucket", "--repo", repo_url, "--backup", taken["id"],
                     "--to", f"s3://{target}/r"])
    assert code == errors.IntegrityError.exit_code
    assert "f2" in capsys.readouterr().err
    restored = harness.state(s3, target, "r/")
    assert sorted(restored) == ["f0", "f1", "f3", "f4"]  # everything else came back
    assert all(restored[k] == objects[k] for k in restored)


def test_restore_mode_missing_keeps_live_objects_and_replace_overwrites_them(s3: Any) -> None:
    src = harness.new_bucket(s3.meta.endpoint_url)
    repo_url = f"s3://{harness.new_bucket(s3.meta.endpoint_url)}/repo"
    objects = {"a/1": (b"one", "text/plain", {"m": "1"}), "a/2": (b"two", "text/plain", {}),
               "b/3": (b"three", "text/csv", {})}
    harness.fill(s3, src, objects)
    repo, _ = harness.counting_repo(repo_url)
    taken = snapshot.snapshot(harness.source(f"s3://{src}"), repo)
    s3.put_object(Bucket=src, Key="a/1", Body=b"live", ContentType="text/plain")
    s3.delete_object(Bucket=src, Key="a/2")
    target = harness.source(f"s3://{src}")
    result = restore.restore(repo, "latest", target, prefix="a/", mode="missing")
    assert (result["objects_restored"], result["objects_skipped"]) == (1, 1)
    assert harness.state(s3, src)["a/1"][0] == b"live"
    assert harness.state(s3, src)["a/2"] == objects["a/2"]
    restore.restore(repo, taken["id"], target, mode="replace")
    assert harness.state(s3, src) == objects


def _addresses(objects: dict[str, tuple[bytes, str, dict[str, str]]]) -> set[str]:
    return {harness.address(data) for data, _, _ in objects.values()}


def test_gc_after_retention_deletes_exactly_the_unreferenced_content(s3: Any) -> None:
    src = harness.new_bucket(s3.meta.endpoint_url)
    repo_bucket = harness.new_bucket(s3.meta.endpoint_url)
    repo_url = f"s3://{repo_bucket}/repo"
    first = {f"k{n}": (harness.body(n, 2000), "text/plain", {}) for n in range(30)}
    harness.fill(s3, src, first)
    repo, _ = harness.counting_repo(repo_url)
    snapshot.snapshot(harness.source(f"s3://{src}"), repo)
    second = {k: v for k, v in first.items() if k not in ("k1", "k2", "k3")}
    for key in ("k1", "k2", "k3"):
        s3.delete_object(Bucket=src, Key=key)
    second["k4"] = (harness.body(100, 2000), "text/plain", {})
    second["k5"] = first["k6"]  # same bytes as another key: no new content
    harness.fill(s3, src, {k: second[k] for k in ("k4", "k5")})
    two = snapshot.snapshot(harness.source(f"s3://{src}"), repo)

    now = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    young = gc.collect_garbage(repo, now=now, grace=dt.timedelta(hours=1))
    assert (young.deleted, young.young) == (0, 0)  # all referenced by snapshot 1 still
    pruned = repo.prune(RetentionPolicy(keep_last=1), now=now)
    assert pruned.kept == [two["id"]]
    kept_young = gc.collect_garbage(repo, now=now, grace=dt.timedelta(hours=1))
    assert (kept_young.deleted, kept_young.young) == (0, 5)

    report = gc.collect_garbage(repo, now=now + dt.timedelta(hours=2),
                                grace=dt.timedelta(hours=1))
    garbage = _addresses(first) - _addresses(second)
    assert len(garbage) == 5  # k1, k2, k3 and the old bytes of k4 and k5
    assert sorted(report.deleted_keys) == sorted(content.key_of(a) for a in garbage)
    assert set(harness.stored_contents(s3, repo_bucket, "repo")) == {
        content.key_of(a) for a in _addresses(second)}
    assert _restored(s3, repo_url, two["id"]) == second
    again = gc.collect_garbage(repo, now=now + dt.timedelta(hours=2),
                               grace=dt.timedelta(hours=1))
    assert again.deleted == 0 and again.referenced == again.stored == len(_addresses(second))


class _Blocking(harness.S3Storage):
    """A source whose second download waits until released (a snapshot caught mid-run)."""

    reached: threading.Event
    release: threading.Event

    def download(self, key: str) -> Any:
        if key == "k05":
            self.reached.set()
            assert self.release.wait(60)
        return super().download(key)


def test_a_snapshot_running_during_gc_keeps_what_it_reuses_and_restores_fully(s3: Any) -> None:
    src = harness.new_bucket(s3.meta.endpoint_url)
    repo_bucket = harness.new_bucket(s3.meta.endpoint_url)
    repo_url = f"s3://{repo_bucket}/repo"
    objects = {f"k{n:02d}": (harness.body(n, 1500), "text/plain", {}) for n in range(20)}
    harness.fill(s3, src, objects)
    repo, counting = harness.counting_repo(repo_url)
    old = snapshot.snapshot(harness.source(f"s3://{src}"), repo)
    repo.delete_backup(old["id"])  # its content is now garbage, and old enough
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)

    blocking = _Blocking("s3://" + src, bucket=src, prefix="")
    blocking.reached, blocking.release = threading.Event(), threading.Event()
    counting.content_puts.clear()
    results: list[Any] = []
    worker = threading.Thread(target=lambda: results.append(
        snapshot.snapshot(blocking, repo, parallel=1)))
    worker.start()
    try:
        assert blocking.reached.wait(60)
        report = gc.collect_garbage(repo, now=later, grace=dt.timedelta(minutes=15))
    finally:
        blocking.release.set()
        worker.join(120)
    assert len(report.deferred) == 1 and report.deleted == 0
    (taken,) = results
    assert counting.content_puts == []  # it reused the stored content: nothing uploaded
    assert gc.collect_garbage(repo, now=later).deleted == 0
    assert _restored(s3, repo_url, taken["id"]) == objects


def test_gc_stops_when_a_snapshot_starts_during_its_sweep(s3: Any) -> None:
    src = harness.new_bucket(s3.meta.endpoint_url)
    repo_bucket = harness.new_bucket(s3.meta.endpoint_url)
    repo_url = f"s3://{repo_bucket}/repo"
    harness.fill(s3, src, {"a": (b"a" * 100, "text/plain", {})})
    repo, counting = harness.counting_repo(repo_url)
    old = snapshot.snapshot(harness.source(f"s3://{src}"), repo)
    repo.delete_backup(old["id"])
    writer = repo.begin(engine="bucket", method="sync", heartbeat=0)
    try:
        # the claim exists only from the sweep on: a snapshot that started after the check
        writer.storage.delete(writer._claim_key or "")
        counting.before_content_list = lambda: writer.storage.put_marker(
            writer._claim_key or "", b"")
        report = gc.collect_garbage(repo, now=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    finally:
        writer.abort()
    assert report.interrupted and report.deleted == 0
    assert len(harness.stored_contents(s3, repo_bucket, "repo")) == 1  # garbage, but kept


def test_backups_list_shows_object_counts_new_and_deduplicated_bytes(
    s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    src = harness.new_bucket(s3.meta.endpoint_url)
    repo_url = f"s3://{harness.new_bucket(s3.meta.endpoint_url)}/repo"
    harness.fill(s3, src, {f"k{n}": (harness.body(n, 1024), "text/plain", {}) for n in range(4)})
    assert cli.main(["backup", "bucket", "--source", f"s3://{src}", "--repo", repo_url]) == 0
    assert cli.main(["backup", "bucket", "--source", f"s3://{src}", "--repo", repo_url]) == 0
    capsys.readouterr()
    assert cli.main(["backups", "list", "--repo", repo_url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-3:] == ["OBJECTS", "NEW", "DEDUPLICATED"]
    assert lines[1].split()[-5:] == ["4", "4.0", "KiB", "0", "B"]
    assert lines[2].split()[-5:] == ["4", "0", "B", "4.0", "KiB"]
    assert cli.main(["backups", "list", "--repo", repo_url, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["bucket_objects"], r["new_size_bytes"], r["deduplicated_size_bytes"])
            for r in rows] == [(4, 4096, 0), (4, 0, 4096)]
