"""`backup bucket`: one snapshot of a source bucket/prefix into the policy's repository.

How a run goes:
1. `Repository.begin` claims the snapshot's id first (so retention's garbage collection
   sees it in flight before it reads anything), then the newest complete snapshot of the
   same source is the base.
2. The source is listed page by page (key order) and merged with the base's key map (key
   order too): a key whose size, ETag and last-modified equal the base's keeps the base's
   entry and is neither downloaded nor hashed again. Memory holds one line of each.
3. Every other key is read (GetObject: bytes, content type, user metadata) and hashed;
   its content goes to `objects/<sha[:2]>/<sha>` only when no object is stored there yet
   (dedup across keys and snapshots; a stored one nobody references, e.g. a crashed
   run's, is checked and reused). Objects up to SMALL_OBJECT bytes are held in memory
   for this; larger ones are read twice (hash, then upload streamed in parts), so memory
   stays bounded by `parallel` x SMALL_OBJECT whatever the object sizes. Transfers run in
   `parallel` threads; the key map keeps key order.
4. The key map (`keys.jsonl`) streams into the repository as it is produced, then the
   sorted content index (`content.idx`); the manifest is written last with the counts in
   `extra["bucket"]`. Until then the snapshot does not exist; a crash leaves content
   objects a re-run reuses without uploading them again.

Deletions in the source delete nothing in the repository: the key is simply not in the
new map. A key that vanishes between LIST and GET is left out (it is gone).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tonebridge_dr
from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.bucket import content, keymap
from tonebridge_dr.runner.repository import manifest as manifests
from tonebridge_dr.runner.repository.catalog import Repository
from tonebridge_dr.runner.storage.base import ObjectInfo
from tonebridge_dr.runner.storage.s3 import S3Storage

log = logging.getLogger(__name__)

ENGINE = "bucket"
METHOD = "sync"
#: Objects up to this size are read into memory once; larger ones are read twice.
SMALL_OBJECT = 8 * 1024 * 1024
DEFAULT_PARALLEL = 8
#: Addresses this run stored or checked, remembered so repeated content costs nothing.
KNOWN_LIMIT = 100_000
PROGRESS_SECONDS = 10.0
#: How often a changed-while-read object is read again before the snapshot fails.
READ_ATTEMPTS = 3


class SourceChanged(errors.SourceError):
    """An object changed between two reads of one transfer."""


@dataclasses.dataclass
class Counts:
    objects: int = 0
    bytes: int = 0
    unchanged: int = 0  # taken from the base snapshot without reading them
    read: int = 0  # downloaded and hashed
    read_bytes: int = 0
    new_objects: int = 0  # content objects this snapshot uploaded
    new_bytes: int = 0  # their raw bytes
    new_stored_bytes: int = 0
    vanished: int = 0  # listed, gone before they could be read
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def result(self) -> dict[str, int]:
        return {
            "objects": self.objects,
            "bytes": self.bytes,
            "unchanged_objects": self.unchanged,
            "read_objects": self.read,
            "read_bytes": self.read_bytes,
            "new_objects": self.new_objects,
            "new_bytes": self.new_bytes,
            "new_stored_bytes": self.new_stored_bytes,
            "deduplicated_bytes": self.bytes - self.new_bytes,
            "vanished_objects": self.vanished,
        }


class _Contents:
    """Which addresses are stored (and how), shared by the transfer threads: each address
    is stored or checked once per run, by whichever thread meets it first."""

    def __init__(self, repo: Repository, *, encrypt_to: Path | None, level: int | None,
                 storage_class: str | None, counts: Counts) -> None:
        self.repo = repo
        self.encrypt_to = encrypt_to
        self.level = level
        self.storage_class = storage_class
        self.counts = counts
        self._known: collections.OrderedDict[str, content.Stored] = collections.OrderedDict()
        self._pending: dict[str, concurrent.futures.Future[content.Stored]] = {}
        self._lock = threading.Lock()
        #: Addresses of stored objects this run took over without uploading them: they may
        #: be old enough for a garbage collection to delete, so commit checks they remain.
        self.adopted: set[str] = set()

    def remember(self, stored: content.Stored) -> None:
        with self._lock:
            self._remember(stored)

    def _remember(self, stored: content.Stored) -> None:
        self._known[stored.sha256] = stored
        self._known.move_to_end(stored.sha256)
        while len(self._known) > KNOWN_LIMIT:
            self._known.popitem(last=False)

    def ensure(self, sha256: str, size: int, chunks: Any) -> content.Stored:
        """The stored content of `sha256`, uploading `chunks()` only when it is not stored."""
        with self._lock:
            known = self._known.get(sha256)
            if known is not None:
                return known
            waiting = self._pending.get(sha256)
            if waiting is None:
                mine: concurrent.futures.Future[content.Stored] = concurrent.futures.Future()
                self._pending[sha256] = mine
        if waiting is not None:
            return waiting.result()
        try:
            stored = self._ensure(sha256, size, chunks)
        except BaseException as exc:
            with self._lock:
                del self._pending[sha256]
            mine.set_exception(exc)
            raise
        with self._lock:
            self._remember(stored)
            del self._pending[sha256]
        mine.set_result(stored)
        return stored

    def _ensure(self, sha256: str, size: int, chunks: Any) -> content.Stored:
        storage = self.repo.storage
        if storage.head(content.key_of(sha256)) is not None:
            adopted = content.adopt(storage, sha256, size, encrypted=self.encrypt_to is not None)
            if adopted is not None:
                log.debug("reusing stored content %s", sha256)
                with self._lock:
                    self.adopted.add(sha256)
                return adopted
            log.warning("stored content object %s is unusable: storing it again",
                        content.key_of(sha256))
        stored = content.store(storage, sha256, size, chunks(), encrypt_to=self.encrypt_to,
                               level=self.level, storage_class=self.storage_class)
        with self.counts.lock:
            self.counts.new_objects += 1
            self.counts.new_bytes += size
            self.counts.new_stored_bytes += stored.stored_size
        return stored


def _transfer(source: S3Storage, listed: ObjectInfo, contents: _Contents,
              counts: Counts) -> keymap.Entry | None:
    """Read one listed object, store its content if new; its key map entry (None: gone)."""
    for attempt in range(READ_ATTEMPTS):
        try:
            return _transfer_once(source, listed, contents, counts)
        except errors.ObjectNotFound:
            with counts.lock:
                counts.vanished += 1
            log.info("%s vanished from the source before it was read: left out", listed.key)
            return None
        except SourceChanged as exc:
            if attempt + 1 == READ_ATTEMPTS:
                raise
            log.info("%s; reading it again", exc)
    raise AssertionError("unreachable")  # pragma: no cover


def _transfer_once(source: S3Storage, listed: ObjectInfo, contents: _Contents,
                   counts: Counts) -> keymap.Entry:
    download = source.download(listed.key)
    info = download.info
    digest = hashlib.sha256()
    if info.size <= SMALL_OBJECT:
        data = bytearray()
        for chunk in download.chunks:
            data += chunk
        if len(data) != info.size:
            raise SourceChanged(f"{listed.key} changed while it was read")
        body = bytes(data)
        digest.update(body)
        sha = digest.hexdigest()
        stored = contents.ensure(sha, len(body), lambda: [body])
    else:
        count = 0
        for chunk in download.chunks:
            digest.update(chunk)
            count += len(chunk)
        if count != info.size:
            raise SourceChanged(f"{listed.key} changed while it was read")
        sha = digest.hexdigest()

        def again() -> Iterator[bytes]:
            second = source.download(listed.key)
            if second.info.etag != info.etag or second.info.size != info.size:
                raise SourceChanged(f"{listed.key} changed while it was read")
            yield from second.chunks

        try:
            stored = contents.ensure(sha, info.size, again)
        except content.HashMismatch as exc:
            raise SourceChanged(f"{listed.key} changed while it was read") from exc
    with counts.lock:
        counts.read += 1
        counts.read_bytes += info.size
    # Change detection compares listings: keep the listing's values when this is the
    # version that was listed (GetObject's Last-Modified has only whole seconds).
    version = listed if info.etag == listed.etag and info.size == listed.size else info
    return keymap.Entry(
        key=listed.key, size=info.size, etag=version.etag,
        last_modified=version.last_modified, attributes=download.attributes, stored=stored,
    )


def _listing(source: S3Storage) -> Iterator[ObjectInfo]:
    """The source's objects page by page, checked to come in strictly increasing key order
    (the merge with the base map relies on it)."""
    last: str | None = None
    for info in source.list_after(""):
        if last is not None and info.key <= last:
            raise errors.SourceError(
                f"{source.url} lists keys out of order ({info.key!r} after {last!r}); "
                "bucket snapshots need S3's key-ordered listing"
            )
        last = info.key
        yield info


def base_snapshot(repo: Repository, source_url: str) -> manifests.Manifest | None:
    """The newest complete snapshot of `source_url` in `repo`."""
    found = [m for m in repo.list_backups(engine=ENGINE)
             if (m.extra.get("bucket") or {}).get("source") == source_url]
    return found[-1] if found else None


def _base_entries(repo: Repository, base: manifests.Manifest | None) -> Iterator[keymap.Entry]:
    if base is None:
        return iter(())
    return keymap.parse(repo.read_object(base, keymap.NAME))


def snapshot(
    source: S3Storage,
    repo: Repository,
    *,
    compression: str = "zstd",
    encrypt_to: Path | None = None,
    level: int | None = None,
    storage_class: str | None = None,
    schedule: str | None = None,
    parallel: int = DEFAULT_PARALLEL,
) -> dict[str, Any]:
    """Take one snapshot of `source` into `repo` (see the module docstring); the result.

    Safe to run again after any failure: whatever content a failed run stored is reused,
    and without a manifest the failed snapshot does not exist.
    """
    if parallel < 1:
        raise errors.UsageError("--parallel must be at least 1")
    counts = Counts()
    began = time.monotonic()
    with repo.begin(engine=ENGINE, method=METHOD, compression=compression,
                    encrypt_to=encrypt_to, level=level, storage_class=storage_class,
                    schedule=schedule) as writer:
        base = base_snapshot(repo, source.url)
        log.info("snapshot %s of %s: base %s", writer.id, source.url,
                 base.id if base else "none (first snapshot)")
        contents = _Contents(repo, encrypt_to=encrypt_to, level=level,
                             storage_class=storage_class, counts=counts)
        index = content.IndexSorter()
        pool = concurrent.futures.ThreadPoolExecutor(parallel, thread_name_prefix="bucket")
        try:
            lines = _entries(source, repo, base, contents, counts, index, pool, parallel,
                             writer.id, began)
            writer.put_object(keymap.NAME, lines, encrypt=False)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        writer.put_object(keymap.INDEX_NAME,
                          (line.encode() for line in index.lines()), encrypt=False)
        missing = [sha for sha in sorted(contents.adopted)
                   if repo.storage.head(content.key_of(sha)) is None]
        if missing:
            raise errors.StorageError(
                f"snapshot {writer.id}: {len(missing)} stored content object(s) it reuses are gone "
                f"(e.g. {content.key_of(missing[0])}: deleted by a garbage collection that "
                "ran meanwhile?); no manifest was kept, run the snapshot again")
        summary = {"source": source.url, "base": base.id if base else None,
                   "content_encrypted": encrypt_to is not None, **counts.result()}
        manifest = writer.commit(
            databases=[source.url], server_version=None,
            tools={"tonebridge-dr": tonebridge_dr.__version__, "transfer": "s3"},
            extra={"bucket": summary},
        )
    seconds = time.monotonic() - began
    log.info("snapshot %s: %d objects (%d bytes), %d read, %d new contents (%d bytes) in %.1f s",
             manifest.id, counts.objects, counts.bytes, counts.read, counts.new_objects,
             counts.new_bytes, seconds)
    result = manifest.result()
    result["bucket"] = summary
    return result


def _entries(
    source: S3Storage,
    repo: Repository,
    base: manifests.Manifest | None,
    contents: _Contents,
    counts: Counts,
    index: content.IndexSorter,
    pool: concurrent.futures.ThreadPoolExecutor,
    parallel: int,
    snapshot_id: str,
    began: float,
) -> Iterator[bytes]:
    """Key map lines in key order, driving the transfers (at most 4 x parallel in flight)."""
    window: collections.deque[concurrent.futures.Future[keymap.Entry | None]] = (
        collections.deque())
    old = _base_entries(repo, base)
    previous = next(old, None)
    last_report = time.monotonic()

    def emit(future: concurrent.futures.Future[keymap.Entry | None]) -> Iterator[bytes]:
        entry = future.result()
        if entry is None:
            return
        counts.objects += 1
        counts.bytes += entry.size
        index.add(entry.stored)
        yield entry.line()

    for listed, info in enumerate(_listing(source), start=1):
        while previous is not None and previous.key < info.key:
            previous = next(old, None)
        future: concurrent.futures.Future[keymap.Entry | None]
        if previous is not None and previous.key == info.key and previous.same_version(
            info.size, info.etag, info.last_modified
        ):
            future = concurrent.futures.Future()
            future.set_result(previous)
            counts.unchanged += 1
        else:
            future = pool.submit(_transfer, source, info, contents, counts)
        window.append(future)
        while window and (len(window) > 4 * parallel or window[0].done()):
            yield from emit(window.popleft())
        if time.monotonic() - last_report >= PROGRESS_SECONDS:
            last_report = time.monotonic()
            log.info("snapshot %s: %d listed, %d unchanged, %d read, %d new contents "
                     "(%d bytes), %.0f s", snapshot_id, listed, counts.unchanged, counts.read,
                     counts.new_objects, counts.new_bytes, last_report - began)
    while window:
        yield from emit(window.popleft())
