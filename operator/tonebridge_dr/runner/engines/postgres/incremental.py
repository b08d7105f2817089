"""Incremental physical backups: pg_basebackup's tar, indexed chunk by chunk.

The runner reaches the server only over libpq (the replication protocol), never
its data directory, so pg_basebackup's tar stream is all there is. PostgreSQL 15
has no block-level incremental backup, so the stream is parsed member by member
as it passes and every file is cut into `CHUNK_SIZE` pieces whose SHA-256 decides
what is stored: a chunk whose digest the chain already holds is referenced, not
stored again. The whole cluster still crosses the network (pg_basebackup has no
"since" option before PostgreSQL 17), but only changed data is compressed,
encrypted and uploaded. Size and mtime are recorded, not trusted: a tar header's
mtime has one-second resolution, so a file rewritten within the second the
previous backup read it would look unchanged; the checksum is the only safe
judge, and it is free once the bytes are read anyway.

A chain:
- its full backup is an ordinary physical backup (`base.tar`, restorable by
  every tool that restores one) plus `files.json`;
- each incremental stores `chunks.bin` (the new chunks, concatenated) plus
  `files.json`.

`files.json` lists every member of the backup's tar (the data directory as
pg_basebackup saw it): path, type, mode, mtime, size and, for files, one
`[sha256, backup id, offset]` per chunk: the chunk's bytes are at `offset` of the
decoded data object (`base.tar` or `chunks.bin`) of that backup. Restoring any
backup of a chain needs only its own `files.json` and the data objects of the
backups it references (`manifest.extra["incremental"]["depends_on"]`), which
retention keeps (catalog.prune). A full backup is taken instead of an
incremental when the schedule has no indexed backup yet, the chain's full is
older than `full_every`, the server is another cluster, or a backup the chain
needs is gone.

Encrypted backups cannot chain: the backup side holds only the public key and
could not read the previous index, and an unencrypted index would publish the
digests of the data.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from typing import Any, cast

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.postgres import basebackup, connection, dump, process, tools
from tonebridge_dr.runner.repository.catalog import Repository
from tonebridge_dr.runner.repository.manifest import Manifest

log = logging.getLogger(__name__)

INDEX_OBJECT = "files.json"
CHUNKS_OBJECT = "chunks.bin"
BASE_OBJECT = basebackup.BASE_OBJECT
CHUNK_SIZE = 4 * 1024 * 1024
INDEX_FORMAT = 1
DEFAULT_FULL_EVERY = dt.timedelta(days=7)
EXTRA_KEY = "incremental"
_BLOCK = 512
_LABEL_LIMIT = 64 * 1024
_TYPES = {b"0": "file", b"\0": "file", b"5": "dir", b"2": "link"}

#: A chunk reference: [sha256 hex, backup id, offset in that backup's data object].
ChunkRef = list[Any]


@dataclasses.dataclass
class FileEntry:
    path: str
    type: str  # "file", "dir" or "link"
    mode: int
    mtime: int
    size: int = 0
    chunks: list[ChunkRef] = dataclasses.field(default_factory=list)
    target: str | None = None  # for links

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"path": self.path, "type": self.type, "mode": self.mode,
                                "mtime": self.mtime}
        if self.type == "file":
            data["size"] = self.size
            data["chunks"] = self.chunks
        if self.target is not None:
            data["target"] = self.target
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileEntry:
        return cls(
            path=str(data["path"]),
            type=str(data["type"]),
            mode=int(data["mode"]),
            mtime=int(data["mtime"]),
            size=int(data.get("size", 0)),
            chunks=[[str(c[0]), str(c[1]), int(c[2])] for c in data.get("chunks", [])],
            target=data.get("target"),
        )


@dataclasses.dataclass
class Index:
    """The parsed `files.json` of one backup."""

    backup_id: str
    chunk_size: int
    files: list[FileEntry]

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "format": INDEX_FORMAT,
                "backup_id": self.backup_id,
                "chunk_size": self.chunk_size,
                "files": [entry.to_json() for entry in self.files],
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Index:
        try:
            raw = json.loads(data)
            if raw.get("format") != INDEX_FORMAT:
                raise ValueError(f"unknown format {raw.get('format')!r}")
            return cls(
                backup_id=str(raw["backup_id"]),
                chunk_size=int(raw["chunk_size"]),
                files=[FileEntry.from_json(item) for item in raw["files"]],
            )
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise errors.IntegrityError(f"{INDEX_OBJECT} cannot be read: {exc}") from None

    def known_chunks(self) -> dict[str, tuple[str, int]]:
        """sha256 -> (backup id, offset) of every chunk this backup references."""
        known: dict[str, tuple[str, int]] = {}
        for entry in self.files:
            for sha, backup_id, offset in entry.chunks:
                known.setdefault(sha, (backup_id, offset))
        return known

    def referenced_backups(self) -> set[str]:
        return {ref[1] for entry in self.files for ref in entry.chunks}


def chunk_lengths(size: int, chunk_size: int) -> Iterator[int]:
    """Lengths of the chunks of a file of `size` bytes."""
    offset = 0
    while offset < size:
        yield min(chunk_size, size - offset)
        offset += chunk_size


def is_chain_member(manifest: Manifest) -> bool:
    return isinstance(manifest.extra.get(EXTRA_KEY), dict) and (
        manifest.object(INDEX_OBJECT) is not None
    )


def data_object(manifest: Manifest) -> str:
    """The object holding the chunk bytes of a chain member."""
    return BASE_OBJECT if manifest.object(BASE_OBJECT) is not None else CHUNKS_OBJECT


def read_index(repo: Repository, manifest: Manifest, **keys: Any) -> Index:
    data = b"".join(repo.read_object(manifest, INDEX_OBJECT, **keys))
    index = Index.from_json(data)
    if index.backup_id != manifest.id:
        raise errors.IntegrityError(
            f"{INDEX_OBJECT} of backup {manifest.id} belongs to backup {index.backup_id}"
        )
    return index


def _octal(field: bytes) -> int:
    if field and field[0] & 0x80:  # base-256 (GNU) for sizes beyond 8 GiB
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


class TarIndexer:
    """Parses pg_basebackup's tar as it streams and indexes every member chunk by chunk.

    `known is None` (a full backup): every input byte is passed through unchanged
    and chunks reference offsets in that stream (`base.tar`). Otherwise only chunks
    whose SHA-256 is not in `known` are emitted (`chunks.bin`) and the others
    reference where the chain already holds them. `files`, `label` (the text of
    backup_label), `stored_chunks` and `reused_chunks` are complete once the
    iteration ended. The input chunks must be immutable `bytes` (os.read's): changed
    chunks are emitted as memoryviews of them, without a copy.
    """

    def __init__(
        self,
        chunks: Iterable[bytes],
        backup_id: str,
        known: dict[str, tuple[str, int]] | None,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        self._chunks = chunks
        self._id = backup_id
        self._known = known
        self._passthrough = known is None
        self.chunk_size = chunk_size
        self.files: list[FileEntry] = []
        self.label: str | None = None
        self.stored_chunks = 0
        self.reused_chunks = 0
        self.stored_raw_bytes = 0
        self._pos = 0  # absolute input offset of the next byte
        self._out = 0  # bytes emitted (delta mode)
        self._header = bytearray()
        self._state = "header"
        self._remaining = 0
        self._pad = 0
        self._file: FileEntry | None = None
        self._hash = hashlib.sha256()
        self._chunk_len = 0
        self._chunk_start = 0
        self._pieces: list[memoryview] = []  # the current chunk's bytes (delta mode)
        self._label: bytearray | None = None

    def __iter__(self) -> Iterator[bytes | memoryview]:
        for data in self._chunks:
            emitted = self._feed(data)
            if self._passthrough:
                yield data
            else:
                yield from emitted
        if self._state not in ("end", "header") or self._header:
            raise errors.ToolError("pg_basebackup's tar stream ended in the middle of a member")

    def _feed(self, data: bytes) -> list[memoryview]:
        # Slices of `data` (immutable bytes) are kept, not copied: a changed chunk is
        # emitted as the views of the input it came in.
        out: list[memoryview] = []
        view = memoryview(data)
        i, n = 0, len(view)
        while i < n:
            state = self._state
            if state == "data":
                take = min(self._remaining, n - i, self.chunk_size - self._chunk_len)
                piece = view[i : i + take]
                if self._chunk_len == 0:
                    self._chunk_start = self._pos + i
                self._hash.update(piece)
                if not self._passthrough:
                    self._pieces.append(piece)
                if self._label is not None:
                    self._label += piece[: max(0, _LABEL_LIMIT - len(self._label))]
                self._chunk_len += take
                self._remaining -= take
                i += take
                if self._chunk_len == self.chunk_size or self._remaining == 0:
                    self._end_chunk(out)
                if self._remaining == 0:
                    self._end_member()
            elif state == "header":
                take = min(_BLOCK - len(self._header), n - i)
                self._header += view[i : i + take]
                i += take
                if len(self._header) == _BLOCK:
                    self._begin_member(bytes(self._header))
                    self._header.clear()
            elif state == "pad":
                take = min(self._pad, n - i)
                self._pad -= take
                i += take
                if self._pad == 0:
                    self._state = "header"
            else:  # "end": the zero blocks after the last member
                break
        self._pos += n
        return out

    def _begin_member(self, header: bytes) -> None:
        if header == b"\0" * _BLOCK:
            self._state = "end"
            return
        if header[257:262] != b"ustar":
            raise errors.ToolError("pg_basebackup wrote a tar header that is not ustar")
        name = header[0:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        path = f"{prefix}/{name}" if prefix else name
        path = path.removeprefix("./").rstrip("/")
        kind = _TYPES.get(header[156:157])
        if kind is None:
            raise errors.ToolError(
                f"pg_basebackup's tar holds {path!r} of type {header[156:157]!r}, "
                "which an incremental backup cannot index"
            )
        size = _octal(header[124:136]) if kind == "file" else 0
        entry = FileEntry(
            path=path, type=kind, mode=_octal(header[100:108]) & 0o7777,
            mtime=_octal(header[136:148]), size=size,
        )
        if kind == "link":
            entry.target = header[157:257].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        self.files.append(entry)
        self._file = entry
        self._label = bytearray() if path == "backup_label" else None
        self._remaining = size
        self._pad = -size % _BLOCK
        self._chunk_len = 0
        if size == 0:
            self._end_member()
        else:
            self._state = "data"

    def _end_chunk(self, out: list[memoryview]) -> None:
        assert self._file is not None
        sha = self._hash.hexdigest()
        self._hash = hashlib.sha256()
        if self._known is None:
            self._file.chunks.append([sha, self._id, self._chunk_start])
            self.stored_chunks += 1
            self.stored_raw_bytes += self._chunk_len
        elif (where := self._known.get(sha)) is not None:
            self._file.chunks.append([sha, where[0], where[1]])
            self.reused_chunks += 1
        else:
            self._file.chunks.append([sha, self._id, self._out])
            self._known[sha] = (self._id, self._out)
            out.extend(self._pieces)
            self._out += self._chunk_len
            self.stored_chunks += 1
            self.stored_raw_bytes += self._chunk_len
        self._pieces = []
        self._chunk_len = 0

    def _end_member(self) -> None:
        if self._label is not None:
            self.label = self._label.decode("utf-8", "replace")
            self._label = None
        self._file = None
        self._state = "pad" if self._pad else "header"


@dataclasses.dataclass(frozen=True)
class Parent:
    """The backup an incremental builds on, and what its restore needs."""

    manifest: Manifest
    index: Index
    full: Manifest
    depends_on: tuple[str, ...]  # every backup its index references (itself included)


def choose_parent(
    repo: Repository,
    *,
    schedule: str | None,
    system_id: str,
    now: dt.datetime,
    full_every: dt.timedelta,
) -> Parent | None:
    """The newest indexed physical backup of `schedule` to build on, or None (take a full).

    Logs one sentence saying why when the answer is a full backup.
    """
    backups = repo.list_backups(engine="postgres", method="physical")
    chained = [m for m in backups if m.schedule == schedule and is_chain_member(m)]
    if not chained:
        log.info("no indexed physical backup of schedule %s yet: taking a full backup", schedule)
        return None
    newest = chained[-1]
    info = newest.extra[EXTRA_KEY]
    if newest.extra.get("system_identifier") != system_id:
        log.info("backup %s is of another cluster: taking a full backup", newest.id)
        return None
    if newest.encryption is not None:
        log.info("backup %s is encrypted: taking a full backup", newest.id)
        return None
    by_id = {m.id: m for m in backups}
    full = by_id.get(str(info.get("full")))
    if full is None:
        log.info("the full backup of %s's chain is gone: taking a full backup", newest.id)
        return None
    if full.started_at + full_every <= now:
        log.info(
            "the chain's full backup %s is older than %s: taking a full backup",
            full.id, full_every,
        )
        return None
    index = read_index(repo, newest)
    needed = index.referenced_backups() | {newest.id}
    missing = sorted(needed - by_id.keys())
    if missing:
        log.info("backups %s of the chain are gone: taking a full backup", ", ".join(missing))
        return None
    return Parent(newest, index, full, tuple(sorted(needed)))


def _check_dependencies(repo: Repository, backup_id: str, depends_on: Iterable[str]) -> None:
    """StorageError unless every backup this one references still has its data object."""
    for other in depends_on:
        if other == backup_id:
            continue
        try:
            manifest = repo.get(other)
        except errors.BackupNotFound:
            manifest = None
        entry = manifest.object(data_object(manifest)) if manifest is not None else None
        if entry is None or repo.storage.head(entry.key) is None:
            raise errors.StorageError(
                f"backup {other}, which incremental backup {backup_id} builds on, was deleted "
                "while it ran; run the backup again (it will be a full one)"
            )


def backup_incremental(
    repo: Repository,
    dsn: str,
    options: basebackup.PhysicalBackupOptions,
    *,
    full_every: dt.timedelta = DEFAULT_FULL_EVERY,
    now: dt.datetime | None = None,
) -> Manifest:
    """Take the next backup of the schedule's chain: an incremental, or a full one."""
    if options.checkpoint not in ("fast", "spread"):
        raise errors.UsageError(f"checkpoint must be fast or spread, not {options.checkpoint!r}")
    if options.encrypt_to is not None:
        raise errors.UsageError(
            "--incremental cannot be combined with --encrypt-to (the backup side could not "
            "read the previous backup's file index)"
        )
    if full_every <= dt.timedelta(0):
        raise errors.UsageError("--full-every must be positive")
    info = connection.ConnInfo.parse(dsn)
    version, major, segment_size, system_id = basebackup.server_facts(info)
    pg_basebackup = tools.tool("pg_basebackup", major)
    tool_versions = {"pg_basebackup": tools.version(pg_basebackup)}
    parent = choose_parent(
        repo, schedule=options.schedule, system_id=system_id,
        now=now or dt.datetime.now(dt.UTC), full_every=full_every,
    )
    with repo.begin(
        engine="postgres",
        method="physical",
        compression=options.compression,
        encrypt_to=None,
        level=dump.default_level(options.compression, options.level),
        storage_class=options.storage_class,
        schedule=options.schedule,
    ) as writer:
        label = f"tonebridge-dr {writer.id}"
        argv = basebackup.basebackup_argv(pg_basebackup, info, options.checkpoint, label)
        kind = "full" if parent is None else f"incremental on {parent.manifest.id}"
        log.info("physical backup %s (%s) of %s to %s", writer.id, kind, info.masked(), repo.url)
        known = None if parent is None else parent.index.known_chunks()
        with process.ToolProcess(
            argv, env=info.child_env(), stdout=process.PIPE, scrub=info.scrub
        ) as tool:
            tool.collect_stderr()
            indexer = TarIndexer(tool.iter_stdout(), writer.id, known)

            def stream() -> Iterator[bytes]:
                # memoryviews of the input in delta mode: codecs and storage take any buffer
                yield from cast(Iterator[bytes], iter(indexer))
                tool.check()

            writer.put_object(BASE_OBJECT if parent is None else CHUNKS_OBJECT, stream())
        index = Index(writer.id, indexer.chunk_size, indexer.files)
        writer.put_object(INDEX_OBJECT, [index.to_json()])
        depends_on = sorted(index.referenced_backups() - {writer.id})
        wal, extra = basebackup.wal_range(indexer.label, tool.stderr_lines, segment_size)
        extra.update(
            {
                "system_identifier": system_id,
                "wal_segment_size": segment_size,
                "format": "tar" if parent is None else "chunks",
                "wal_method": "fetch",
                "checkpoint": options.checkpoint,
                "label": label,
                EXTRA_KEY: {
                    "type": "full" if parent is None else "incremental",
                    "parent": None if parent is None else parent.manifest.id,
                    "full": writer.id if parent is None else parent.full.id,
                    "depends_on": depends_on,
                    "chunk_size": indexer.chunk_size,
                    "files": len(indexer.files),
                    "stored_chunks": indexer.stored_chunks,
                    "reused_chunks": indexer.reused_chunks,
                    "stored_raw_bytes": indexer.stored_raw_bytes,
                },
            }
        )
        _check_dependencies(repo, writer.id, depends_on)
        manifest = writer.commit(
            databases=[], server_version=version, tools=tool_versions, wal=wal, extra=extra
        )
    try:
        _check_dependencies(repo, manifest.id, depends_on)
    except errors.StorageError:
        repo.delete_backup(manifest.id)  # never leave a backup whose chain lost a link
        raise
    log.info(
        "backup %s: %d chunks stored (%d bytes before codecs), %d reused from the chain",
        manifest.id, indexer.stored_chunks, indexer.stored_raw_bytes, indexer.reused_chunks,
    )
    return manifest
