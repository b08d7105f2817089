"""The WAL archive index over a repository's storage: lookups, position, histories.

Everything reads keys only (see naming.py for the layout); contents are read
just for history files and for fetches. Listing cost is kept small:

- a file lookup lists one name prefix (`wal/<folder>/<name>.`): a handful of keys;
- `archive_status` finds the newest folder of each timeline with bounded
  `list_after(..., limit=1)` probes (a galloping then binary search over the
  32-bit log number: about 2*log2(folders) requests), then lists that one folder
  (at most a few hundred keys). It never lists the whole archive. Passing the
  previous status as `hint` starts the search there (typically 2-3 requests).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.postgres.wal import naming
from tonebridge_dr.runner.storage.base import ObjectInfo, Storage

log = logging.getLogger(__name__)

_MAX_LOG = 0xFFFFFFFF
_HEX = frozenset("0123456789ABCDEF")


class WalNotFound(errors.ObjectNotFound):
    """The requested WAL file is not in the archive (a normal answer for restore_command)."""

    reason = "WalNotFound"


@dataclasses.dataclass(frozen=True)
class ArchivedObject:
    """One stored WAL object: its parsed key and its storage info."""

    ref: naming.ArchivedKey
    info: ObjectInfo

    @property
    def key(self) -> str:
        return self.ref.key

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def wal(self) -> naming.WalName:
        return self.ref.wal

    @property
    def sha256(self) -> str:
        return self.ref.sha256

    @property
    def archived_at(self) -> dt.datetime:
        return self.info.last_modified


@dataclasses.dataclass(frozen=True)
class ArchiveStatus:
    """The archive position, from the repository alone."""

    last_segment: str | None
    last_archived_at: dt.datetime | None
    timeline: int | None
    timelines: list[int]
    last_partial: str | None = None
    last_partial_at: dt.datetime | None = None
    #: Newest complete segment of each timeline that has segments.
    newest_by_timeline: dict[int, str] = dataclasses.field(default_factory=dict)

    def rpo_seconds(self, now: dt.datetime) -> float | None:
        """Seconds between `now` and the newest archived segment (None: nothing archived)."""
        if self.last_archived_at is None:
            return None
        return max(0.0, (now - self.last_archived_at).total_seconds())

    def result(self) -> dict[str, Any]:
        """Stable `--json` form."""

        def when(value: dt.datetime | None) -> str | None:
            if value is None:
                return None
            return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")

        return {
            "last_segment": self.last_segment,
            "last_archived_at": when(self.last_archived_at),
            "timeline": self.timeline,
            "timelines": list(self.timelines),
            "last_partial": self.last_partial,
            "last_partial_at": when(self.last_partial_at),
            "newest_by_timeline": {str(k): v for k, v in sorted(self.newest_by_timeline.items())},
        }


def _folder_of(key: str) -> tuple[int, int] | None:
    """(timeline, log) of a key in a segment folder `wal/<16 hex>/...`, else None."""
    folder = key[4:20]
    if not key.startswith(naming.WAL_PREFIX) or len(key) < 21 or key[20] != "/":
        return None
    if not set(folder) <= _HEX:
        return None
    value = int(folder, 16)
    return value >> 32, value & 0xFFFFFFFF


class WalArchive:
    """The `wal/` part of one repository."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    @property
    def url(self) -> str:
        return self.storage.url

    # -- listing -----------------------------------------------------------------------
    def _objects(self, prefix: str) -> list[ArchivedObject]:
        found: list[ArchivedObject] = []
        for info in self.storage.list_after(prefix):
            ref = naming.parse_key(info.key)
            if ref is not None:
                found.append(ArchivedObject(ref, info))
        return found

    def objects_for(self, wal: naming.WalName) -> list[ArchivedObject]:
        """Every stored object of exactly this file name (normally zero or one)."""
        return [obj for obj in self._objects(naming.name_prefix(wal)) if obj.name == wal.name]

    def segment_family(self, wal: naming.WalName) -> list[ArchivedObject]:
        """Objects of this name and, for a segment, of its .partial and .backup files."""
        return self._objects(naming.name_prefix(wal))

    def folder(self, timeline: int, log_no: int) -> list[ArchivedObject]:
        """Every object in the folder of (timeline, log), in key order."""
        return self.folder_objects(f"{timeline:08X}{log_no:08X}")

    def folder_objects(self, folder: str) -> list[ArchivedObject]:
        """Every object in a repository folder (`<tli><log>` or `history`), in key order."""
        return self._objects(naming.folder_prefix(folder))

    def histories(self) -> dict[int, ArchivedObject]:
        """The stored history file of each timeline that has one."""
        found: dict[int, ArchivedObject] = {}
        for obj in self._objects(naming.folder_prefix(naming.HISTORY_FOLDER)):
            found.setdefault(obj.wal.timeline, obj)
        return found

    def all_objects(self) -> Iterator[ArchivedObject]:
        """Every archived object (a full listing: for prune, not for monitoring)."""
        for info in self.storage.list_after(naming.WAL_PREFIX):
            ref = naming.parse_key(info.key)
            if ref is not None:
                yield ArchivedObject(ref, info)

    # -- reading ----------------------------------------------------------------------
    def find(self, name: str, *, allow_partial: bool = False) -> ArchivedObject:
        """The object to restore for `name`; WalNotFound when there is none.

        With `allow_partial`, a segment that was never completed is answered with
        its `.partial` (the WAL a running or stopped wal-stream had received) when
        no complete segment of that name exists. Two versions of one partial exist
        for a moment while a running wal-stream replaces the older, shorter one
        (each is a prefix of the WAL): the newest stored is answered.
        """
        wal = naming.parse(name)
        family = self.segment_family(wal)
        exact = [obj for obj in family if obj.name == wal.name]
        if exact:
            return self._single(exact)
        if allow_partial and wal.is_segment:
            partial = [obj for obj in family if obj.name == f"{wal.name}.partial"]
            if partial:
                return max(partial, key=lambda obj: (obj.archived_at, obj.info.size))
        raise WalNotFound(f"WAL file {name} is not in the archive {self.url}")

    def _single(self, found: list[ArchivedObject]) -> ArchivedObject:
        if len({obj.sha256 for obj in found}) > 1:
            keys = ", ".join(obj.key for obj in found)
            raise errors.IntegrityError(f"the archive holds different versions of one file: {keys}")
        return found[0]

    def read(
        self,
        obj: ArchivedObject,
        *,
        decrypt_key: Path | None = None,
        passphrase: str | None = None,
    ) -> Iterator[bytes]:
        """The raw file content; IntegrityError at the end when its SHA-256 does not match.

        Consumers must treat the data as unverified until the iterator is exhausted.
        """
        from tonebridge_dr.runner.codecs import pipeline

        compression = obj.ref.compression
        stream = pipeline.decode(
            self.storage.get_stream(obj.key),
            compression=compression,
            encrypted=obj.ref.encrypted,
            decrypt_key=decrypt_key,
            passphrase=passphrase,
        )
        digest = hashlib.sha256()
        try:
            for chunk in stream:
                digest.update(chunk)
                yield chunk
        except errors.IntegrityError as exc:
            raise errors.IntegrityError(f"archived WAL {obj.key} is corrupt: {exc}") from None
        actual = digest.hexdigest()
        if actual != obj.sha256:
            raise errors.IntegrityError(
                f"archived WAL {obj.key} is corrupt: its content has sha256 {actual[:16]}..., "
                f"its key says {obj.sha256[:16]}..."
            )

    def read_bytes(self, obj: ArchivedObject, **kwargs: Any) -> bytes:
        return b"".join(self.read(obj, **kwargs))

    def history_text(self, timeline: int, **kwargs: Any) -> str | None:
        """The content of `<timeline>.history`, or None when the archive has none."""
        if timeline < 2:
            return None
        try:
            obj = self.find(f"{timeline:08X}.history")
        except WalNotFound:
            return None
        return self.read_bytes(obj, **kwargs).decode("utf-8", "replace")

    # -- the position ---------------------------------------------------------------------
    def _first_after(self, prefix: str, start_after: str) -> str | None:
        for info in self.storage.list_after(prefix, start_after=start_after, limit=1):
            return info.key
        return None

    def segment_timelines(self) -> list[int]:
        """Timelines that have segment folders, ascending (one request per timeline)."""
        found: list[int] = []
        bound = naming.WAL_PREFIX
        while True:
            key = self._first_after(naming.WAL_PREFIX, bound)
            if key is None:
                return found
            place = _folder_of(key)
            if place is None:
                if key[4:5] and key[4] in _HEX:
                    bound = key  # a stray key among the folders: step over it
                    continue
                return found
            found.append(place[0])
            bound = f"{naming.WAL_PREFIX}{place[0]:08X}~"  # '~' sorts after hex and '/'

    def _first_log_from(self, timeline: int, log_no: int) -> int | None:
        """The smallest folder log >= `log_no` on `timeline`, or None."""
        prefix = f"{naming.WAL_PREFIX}{timeline:08X}"
        bound = f"{prefix}{log_no:08X}" if log_no > 0 else prefix
        while True:
            key = self._first_after(prefix, bound)
            if key is None:
                return None
            place = _folder_of(key)
            if place is not None and place[0] == timeline:
                return place[1]
            bound = key  # not a folder key: step over it

    def newest_log(
        self, timeline: int, *, below: int | None = None, hint: int | None = None
    ) -> int | None:
        """The newest folder log on `timeline` (strictly below `below` when given).

        Galloping from `hint` (or the oldest folder), then binary search: each
        probe is one `list_after(limit=1)`, which answers with a real folder.
        """
        limit = _MAX_LOG + 1 if below is None else below
        lo: int | None = None
        if hint is not None and hint < limit:
            lo = self._first_log_from(timeline, hint)
            if lo is not None and lo >= limit:
                lo = None
        if lo is None:
            lo = self._first_log_from(timeline, 0)
        if lo is None or lo >= limit:
            return None
        hi = limit
        step = 1
        while lo + step < hi:
            found = self._first_log_from(timeline, lo + step)
            if found is None or found >= hi:
                hi = lo + step
                break
            lo = found
            step *= 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            found = self._first_log_from(timeline, mid)
            if found is None or found >= hi:
                hi = mid
            else:
                lo = found
        return lo

    def newest_on_timeline(
        self, timeline: int, *, hint: int | None = None, upto: str | None = None
    ) -> tuple[ArchivedObject | None, ArchivedObject | None]:
        """(newest complete segment, newest .partial) of a timeline, at most `upto` by name."""
        below: int | None = None
        if upto is not None:
            below = naming.parse(upto).log + 1
        partial: ArchivedObject | None = None
        while True:
            usable = hint if hint is not None and (below is None or hint < below) else None
            log_no = self.newest_log(timeline, below=below, hint=usable)
            if log_no is None:
                return None, partial
            objects = [
                obj
                for obj in self.folder(timeline, log_no)
                if upto is None or obj.wal.segment <= upto
            ]
            segments = [obj for obj in objects if obj.wal.kind == naming.SEGMENT]
            if partial is None:
                partials = [obj for obj in objects if obj.wal.kind == naming.PARTIAL]
                partial = max(partials, key=lambda obj: obj.name) if partials else None
            if segments:
                return max(segments, key=lambda obj: obj.name), partial
            below = log_no

    def status(self, hint: ArchiveStatus | None = None) -> ArchiveStatus:
        """The archive position: newest archived segment (of any timeline) and its time."""
        timelines = self.segment_timelines()
        hint_log: dict[int, int] = {}
        if hint is not None:
            for name in [*hint.newest_by_timeline.values(), hint.last_segment]:
                if name:
                    wal = naming.parse(name)
                    hint_log[wal.timeline] = wal.log
        best: ArchivedObject | None = None
        best_partial: ArchivedObject | None = None
        newest: dict[int, str] = {}
        for timeline in timelines:
            segment, partial = self.newest_on_timeline(timeline, hint=hint_log.get(timeline))
            if segment is not None:
                newest[timeline] = segment.name
            if segment is not None and (best is None or segment.archived_at >= best.archived_at):
                best = segment
            if partial is not None and (
                best_partial is None or partial.archived_at >= best_partial.archived_at
            ):
                best_partial = partial
        all_timelines = sorted(set(timelines) | set(self.histories()))
        return ArchiveStatus(
            last_segment=best.name if best else None,
            last_archived_at=best.archived_at if best else None,
            timeline=best.wal.timeline if best else None,
            timelines=all_timelines,
            last_partial=best_partial.name if best_partial else None,
            last_partial_at=best_partial.archived_at if best_partial else None,
            newest_by_timeline=newest,
        )


def archive_status(repo: Any, hint: ArchiveStatus | None = None) -> ArchiveStatus:
    """The archive position of a repository (a `Repository`, a `Storage` or a URL).

    `last_segment` is the newest complete segment (by name on its timeline; of
    the timelines, the one archived last) and `last_archived_at` its storage
    time: RPO = now - last_archived_at. `timelines` lists every timeline with
    segments or a history file.
    """
    return WalArchive(_storage_of(repo)).status(hint)


def _storage_of(repo: Any) -> Storage:
    if isinstance(repo, Storage):
        return repo
    if isinstance(repo, str):
        from tonebridge_dr.runner.storage import open_storage

        return open_storage(repo, create=False)
    storage = getattr(repo, "storage", None)
    if isinstance(storage, Storage):
        return storage
    raise TypeError(f"not a repository: {repo!r}")
