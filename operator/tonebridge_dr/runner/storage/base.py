"""The small storage interface every repository backend implements.

Backends (`local.LocalStorage`, `s3.S3Storage`) implement five primitives;
everything above them (checksums, codecs, manifests) is shared. Keys are
relative, `/`-separated, never start with `/` and never contain `..`.

Contracts:
- `put_stream` is atomic: a reader never sees a partial object under `key`.
  On any error (including the iterator raising) nothing is left under `key`
  and a multipart upload is aborted. Memory is bounded by the part size.
- `get_stream` yields the object's bytes in chunks; a missing key raises
  `ObjectNotFound` before the first chunk.
- `list` yields objects under a prefix in key order; missing prefix -> nothing.
- `delete` of a missing key is not an error (idempotent).

Optional operations with a default built on the primitives (backends override
them when they can do better): `list_after` (a bounded, resumable listing: S3's
StartAfter/MaxKeys, so a caller can find the newest of millions of keys with a
few small requests) and `delete_many` (S3 DeleteObjects, 1000 keys a request).

Archive tiers (S3 only; other backends refuse them with a UsageError, and every object
of theirs is always readable): `archive_state` says whether an object can be read now (an
object in an archive class such as GLACIER is readable only while a rehydrated copy
exists), `change_storage_class` moves an object to another class in place (same key,
same bytes), `request_rehydration` asks for a temporary readable copy. `ObjectInfo`
carries the storage class a listing reports (None: the backend has no classes).

Object Lock (S3 only; docs/object-lock.md): a backend configured with an `ObjectLock`
puts its mode and a retain-until date (write time + `retain`) on every object it
writes, except markers written with `put_marker` (claims: rewritten every minute and
deleted by their writer). `retained_until` tells which keys are still locked and
`extend_retention` pushes a key's date later (never earlier). Deleting a locked version
raises ObjectLocked. Backends without locks inherit the defaults: nothing is locked.

Leftovers: a writer killed with SIGKILL cannot clean up after itself. What it
leaves outside the key space (a local temp file, an S3 multipart upload that was
never completed or aborted) is listed by `list_leftovers` and removed by
`discard_leftover`; `prune` removes those older than its grace.
"""

from __future__ import annotations

import abc
import dataclasses
import datetime as dt
from collections.abc import Iterable, Iterator

from tonebridge_dr.runner import errors


@dataclasses.dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    last_modified: dt.datetime  # timezone-aware UTC
    storage_class: str | None = None
    etag: str | None = None  # S3's ETag without quotes (None: the backend has none)


#: Storage classes whose objects cannot be read without a rehydration (S3 RestoreObject).
ARCHIVE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})
#: What `request_rehydration` found: asked now, already asked (in progress), or readable.
REHYDRATION_REQUESTED = "requested"
REHYDRATION_IN_PROGRESS = "in-progress"
REHYDRATION_READABLE = "readable"


@dataclasses.dataclass(frozen=True)
class ArchiveState:
    """Whether one object can be read now (`archive_state`)."""

    key: str
    storage_class: str | None
    readable: bool  # a GET works now
    restoring: bool = False  # archived, and a rehydration is in progress
    restored_until: dt.datetime | None = None  # when the rehydrated copy expires


@dataclasses.dataclass(frozen=True)
class ObjectLock:
    """The S3 Object Lock every written object gets: `mode` and `retain` after the write."""

    mode: str  # GOVERNANCE | COMPLIANCE
    retain: dt.timedelta

    def until(self, now: dt.datetime) -> dt.datetime:
        """The retain-until date of an object written at `now`."""
        return retain_date(now + self.retain)


def retain_date(value: dt.datetime) -> dt.datetime:
    """`value` as S3 stores a retain-until date: UTC, whole seconds (rounded up, so a lock
    never ends before the date asked for)."""
    value = value.astimezone(dt.UTC)
    return value.replace(microsecond=0) + dt.timedelta(seconds=1 if value.microsecond else 0)


#: What `retained_until` reports for a legal hold: locked with no date.
LEGAL_HOLD = dt.datetime.max.replace(tzinfo=dt.UTC)


@dataclasses.dataclass(frozen=True)
class Leftover:
    """Something an interrupted write left behind, never visible as an object."""

    key: str  # the key the write was for
    started: dt.datetime  # timezone-aware UTC: when the write began (S3) or last wrote (file)
    handle: str  # the backend's name for it (temp file path, multipart upload id)


class Storage(abc.ABC):
    """A flat key -> bytes store rooted at one repository URL."""

    #: Chunk size used when reading objects.
    read_chunk_size: int = 1024 * 1024
    #: The Object Lock new objects get (None: none).
    object_lock: ObjectLock | None = None

    def __init__(self, url: str) -> None:
        self.url = url

    @abc.abstractmethod
    def put_stream(
        self, key: str, chunks: Iterable[bytes], *, storage_class: str | None = None
    ) -> int:
        """Store the concatenation of `chunks` under `key`; return the byte count."""

    @abc.abstractmethod
    def get_stream(self, key: str) -> Iterator[bytes]:
        """Yield the bytes stored under `key`."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield every object whose key starts with `prefix`, in key order."""

    @abc.abstractmethod
    def head(self, key: str) -> ObjectInfo | None:
        """Return the object's info, or None when it does not exist."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; a missing key is fine."""

    def list_after(
        self, prefix: str = "", start_after: str = "", limit: int | None = None
    ) -> Iterator[ObjectInfo]:
        """Objects under `prefix` whose key sorts strictly after `start_after`, in key
        order, at most `limit` of them (None: all).

        The default filters `list(prefix)`; backends override it so that the cost
        depends on `limit`, not on how many keys sort before `start_after`.
        """
        if limit is not None and limit <= 0:
            return
        count = 0
        for info in self.list(prefix):
            if info.key <= start_after:
                continue
            yield info
            count += 1
            if limit is not None and count >= limit:
                return

    def delete_many(self, keys: Iterable[str]) -> int:
        """Delete every key (missing ones are fine); returns how many were asked for."""
        count = 0
        for key in keys:
            self.delete(key)
            count += 1
        return count

    def list_leftovers(self, prefix: str = "") -> Iterator[Leftover]:
        """What interrupted writes under `prefix` left behind (nothing, by default)."""
        return iter(())

    def discard_leftover(self, leftover: Leftover) -> None:
        """Remove one leftover (missing is fine)."""
        raise NotImplementedError(f"{type(self).__name__} lists no leftovers")

    def archive_state(self, key: str) -> ArchiveState | None:
        """Whether `key` can be read now; None when it does not exist. Backends without
        storage classes: every object is readable."""
        info = self.head(key)
        if info is None:
            return None
        return ArchiveState(key=key, storage_class=info.storage_class, readable=True)

    def change_storage_class(self, key: str, storage_class: str) -> None:
        """Move `key` to `storage_class` in place (same key and bytes). Refused here."""
        raise self._no_classes("change the storage class of")

    def request_rehydration(self, key: str, *, days: int, tier: str) -> str:
        """Ask for a readable copy of archived `key` for `days` days at retrieval `tier`;
        returns one of the REHYDRATION_* words. Idempotent. Refused here."""
        raise self._no_classes("rehydrate")

    def _no_classes(self, action: str) -> errors.UsageError:
        return errors.UsageError(
            f"cannot {action} objects in {self.url}: only s3:// repositories have storage "
            "classes (archive tiers need an s3:// repository)"
        )

    def put_marker(self, key: str, data: bytes) -> None:
        """Store a short-lived marker its writer deletes (a claim): never under Object Lock."""
        self.put_bytes(key, data)

    def retained_until(self, keys: Iterable[str]) -> dict[str, dt.datetime]:
        """The Object Lock retain-until date of each of `keys` that some version of is
        locked by this backend's store: the latest date over its versions, LEGAL_HOLD for a
        legal hold. Dates may lie in the past (an expired lock); keys never locked are
        absent. Default: a backend without locks, nothing is locked."""
        return {}

    def extend_retention(self, key: str, until: dt.datetime, mode: str | None = None) -> bool:
        """Make every version of `key` locked until at least `until` (never shorter; `mode`
        or the version's own mode or `object_lock.mode`; COMPLIANCE is never weakened).
        True when a date changed. Default: this backend has no Object Lock."""
        raise errors.RepositoryConfigError(
            f"{self.url} has no S3 Object Lock: objectLock needs an s3:// repository"
        )

    # Shared helpers built on the primitives.
    def put_bytes(self, key: str, data: bytes, *, storage_class: str | None = None) -> int:
        return self.put_stream(key, [data], storage_class=storage_class)

    def get_bytes(self, key: str) -> bytes:
        return b"".join(self.get_stream(key))

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def check(self) -> None:
        """Raise RepositoryConfigError/StorageError when the repository cannot be used."""
        next(iter(self.list("")), None)
