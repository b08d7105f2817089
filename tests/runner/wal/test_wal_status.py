"""Archive position from the repository alone, bounded listings, and WAL pruning rules.

Objects are written straight under their keys (content is irrelevant to the
catalog), so large archives are cheap to lay out. A counting wrapper around our
own Storage interface measures how many listing requests a call makes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator

import pytest

from tonebridge_dr.runner.engines.postgres.wal import catalog, naming, retention
from tonebridge_dr.runner.repository import Repository, WalRange
from tonebridge_dr.runner.storage import Storage, open_storage
from tonebridge_dr.runner.storage.base import ObjectInfo

MB16 = 16 * 1024 * 1024


@pytest.fixture(params=["file", "s3"])
def repo_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_repo_url"))


class CountingStorage(Storage):
    """Delegates to a real backend and counts listing requests (list_after pages)."""

    def __init__(self, inner: Storage) -> None:
        super().__init__(inner.url)
        self.inner = inner
        self.lists = 0

    def put_stream(
        self, key: str, chunks: Iterable[bytes], *, storage_class: str | None = None
    ) -> int:
        return self.inner.put_stream(key, chunks, storage_class=storage_class)

    def get_stream(self, key: str) -> Iterator[bytes]:
        return self.inner.get_stream(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self.lists += 1
        return self.inner.list(prefix)

    def list_after(
        self, prefix: str = "", start_after: str = "", limit: int | None = None
    ) -> Iterator[ObjectInfo]:
        self.lists += 1
        return self.inner.list_after(prefix, start_after, limit)

    def head(self, key: str) -> ObjectInfo | None:
        return self.inner.head(key)

    def delete(self, key: str) -> None:
        self.inner.delete(key)


def _put(storage: Storage, name: str, sha: str = "0" * 64) -> str:
    key = naming.object_key(naming.parse(name), sha, ".zst")
    storage.put_bytes(key, b"x")
    return key


def test_list_after_is_ordered_bounded_and_resumable(repo_url: str) -> None:
    storage = open_storage(repo_url)
    keys = ["a-", "a.b/x", "a/1", "a/2/z", "a/3", "ab", "b/1", "wal/history/x", "wal/0/y"]
    for key in keys:
        storage.put_bytes(key, b"k")
    assert [i.key for i in storage.list_after("")] == sorted(keys)
    assert [i.key for i in storage.list_after("a/")] == ["a/1", "a/2/z", "a/3"]
    assert [i.key for i in storage.list_after("a", start_after="a/1")] == ["a/2/z", "a/3", "ab"]
    assert [i.key for i in storage.list_after("", start_after="a/2", limit=2)] == ["a/2/z", "a/3"]
    assert [i.key for i in storage.list_after("", start_after="zz")] == []
    assert [i.key for i in storage.list_after("wal/", limit=1)] == ["wal/0/y"]
    assert list(storage.list_after("", limit=0)) == []
    assert storage.delete_many(["a-", "a/1", "missing"]) == 3
    assert [i.key for i in storage.list_after("a")] == ["a.b/x", "a/2/z", "a/3", "ab"]


def test_list_after_pages_through_s3(s3_repo_url: str) -> None:
    storage = open_storage(s3_repo_url)
    storage.list_page_size = 3  # type: ignore[attr-defined]
    keys = [f"k/{n:03d}" for n in range(10)]
    for key in keys:
        storage.put_bytes(key, b"")
    assert [i.key for i in storage.list_after("k/", start_after="k/002")] == keys[3:]
    assert [i.key for i in storage.list_after("k/", limit=5)] == keys[:5]
    assert storage.delete_many(keys) == 10
    assert list(storage.list_after("k/")) == []


def test_empty_archive(repo_url: str) -> None:
    status = catalog.archive_status(open_storage(repo_url))
    assert status.result() == {
        "last_segment": None, "last_archived_at": None, "timeline": None, "timelines": [],
        "last_partial": None, "last_partial_at": None, "newest_by_timeline": {},
    }
    assert status.rpo_seconds(dt.datetime.now(dt.UTC)) is None


def test_status_finds_the_newest_segment_with_few_requests(repo_url: str) -> None:
    inner = open_storage(repo_url)
    folders = 300 if repo_url.startswith("file:") else 120
    # Timeline 1: one segment in each of `folders` logs, and a stray .backup/.partial.
    for log_no in range(folders):
        _put(inner, naming.segment_name(1, log_no * 256 + 7, MB16))
    _put(inner, naming.segment_name(1, 5, MB16) + ".00000028.backup")
    # Timeline 2 branched later; its newest folder holds only a .partial above its last
    # complete segment, which sits in an older folder.
    _put(inner, "00000002.history")
    _put(inner, naming.segment_name(2, (folders - 3) * 256 + 1, MB16))
    _put(inner, naming.segment_name(2, (folders - 3) * 256 + 2, MB16))
    _put(inner, naming.segment_name(2, (folders + 5) * 256, MB16) + ".partial")
    storage = CountingStorage(inner)
    status = catalog.archive_status(storage)
    assert status.last_segment == naming.segment_name(2, (folders - 3) * 256 + 2, MB16)
    assert status.timeline == 2 and status.timelines == [1, 2]
    assert status.last_partial == naming.segment_name(2, (folders + 5) * 256, MB16) + ".partial"
    assert status.last_archived_at is not None
    assert status.newest_by_timeline == {
        1: naming.segment_name(1, (folders - 1) * 256 + 7, MB16),
        2: status.last_segment,
    }
    assert storage.lists <= 45, storage.lists  # ~2*log2(folders) per timeline, not a scan
    # With the previous answer as a hint, the search starts where it left off.
    storage.lists = 0
    again = catalog.WalArchive(storage).status(hint=status)
    assert again.last_segment == status.last_segment
    assert storage.lists <= 16, storage.lists  # 3 timeline probes, ~4 per timeline, 3 folders
    newest_1, _ = catalog.WalArchive(inner).newest_on_timeline(1)
    assert newest_1 is not None
    assert newest_1.name == naming.segment_name(1, (folders - 1) * 256 + 7, MB16)


def _backup(repo: Repository, start_lsn: str, timeline: int = 1) -> str:
    lsn = naming.parse_lsn(start_lsn)
    with repo.begin(engine="postgres", method="physical") as writer:
        writer.put_object("base.tar", [b"tar"])
        manifest = writer.commit(
            databases=[], server_version="15.0", tools={},
            wal=WalRange(
                start_lsn=start_lsn,
                stop_lsn=naming.format_lsn(lsn + 0x100),
                timeline=timeline,
                start_wal_file=naming.segment_name(timeline, lsn // MB16, MB16),
                stop_wal_file=naming.segment_name(timeline, lsn // MB16, MB16),
            ),
            extra={"wal_segment_size": MB16},
        )
    return manifest.id


def _names(repo: Repository) -> set[str]:
    return {obj.name for obj in catalog.WalArchive(repo.storage).all_objects()}


def test_prune_deletes_exactly_what_lies_before_the_oldest_backup(repo_url: str) -> None:
    repo = Repository.open(repo_url)
    everything = []
    for segno in range(1, 0x205):  # spans three folders of timeline 1
        everything.append(naming.segment_name(1, segno, MB16))
    for segno in range(0x1F0, 0x210):  # timeline 2 forked at 0x1F0
        everything.append(naming.segment_name(2, segno, MB16))
    everything += [
        "00000002.history",
        naming.segment_name(1, 0x1F0, MB16) + ".partial",
        naming.segment_name(1, 0x0FF, MB16) + ".00000028.backup",
        naming.segment_name(1, 0x1F1, MB16) + ".00000060.backup",
    ]
    for name in everything:
        _put(repo.storage, name)
    assert retention.prune_wal(repo).reason is not None  # no backup: nothing is pruned
    assert _names(repo) == set(everything)
    first = _backup(repo, "1/FF000028")  # segment 0x1FF... of timeline 1
    _backup(repo, "2/2000060", timeline=2)
    cut = 0x1FF
    doomed = {
        name for name in everything
        if not name.endswith(".history") and naming.parse(name).segno(MB16) < cut
    }
    dry = retention.prune_wal(repo, dry_run=True)
    assert dry.deleted == len(doomed) and _names(repo) == set(everything)
    report = retention.prune_wal(repo)
    assert report.oldest_backup == first and report.cut_segment == naming.segment_name(1, cut, MB16)
    assert report.deleted == len(doomed)
    assert _names(repo) == set(everything) - doomed
    assert "00000002.history" in _names(repo)
    assert retention.prune_wal(repo).deleted == 0  # idempotent
