"""A backup of an incremental chain assembled into an empty data directory.

The backup's `files.json` says what the data directory holds; its chunks live in
the data objects (`base.tar` of the chain's full, `chunks.bin` of incrementals)
of the backups it references. Each of those objects is streamed once, oldest
backup first, and every chunk the index wants from it is checked against its
recorded SHA-256 before it is written where it belongs (`os.pwrite`). Every
object is also read to its end, so its own size and SHA-256 are verified. Any
mismatch, missing backup or missing chunk raises IntegrityError (exit 7) naming
the backup and the file, before a server could start on the result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.postgres import incremental
from tonebridge_dr.runner.repository.catalog import Repository
from tonebridge_dr.runner.repository.manifest import Manifest

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class _Piece:
    offset: int  # in the source object
    length: int
    sha256: str
    path: str
    file_offset: int


def _safe_path(root: Path, name: str) -> Path:
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if not parts or name.startswith("/") or ".." in parts:
        raise errors.IntegrityError(f"{incremental.INDEX_OBJECT} holds an unsafe path {name!r}")
    return root.joinpath(*parts)


def chain_of(repo: Repository, manifest: Manifest) -> list[Manifest]:
    """The backups a restore of `manifest` reads, oldest first (it included)."""
    info = manifest.extra.get(incremental.EXTRA_KEY) or {}
    wanted = [str(other) for other in info.get("depends_on", [])]
    chain = []
    for other in wanted:
        try:
            chain.append(repo.get(other))
        except errors.BackupNotFound:
            raise errors.IntegrityError(
                f"backup {manifest.id} builds on backup {other}, which is gone"
            ) from None
    chain.sort(key=lambda m: m.started_at)
    return [*chain, manifest]


def assemble(
    repo: Repository, manifest: Manifest, data_dir: Path, **keys: Any
) -> int:
    """Write the data directory of chain member `manifest` into empty `data_dir`.

    Returns the bytes written. On error the caller removes what was written.
    """
    index = incremental.read_index(repo, manifest, **keys)
    chain = {m.id: m for m in chain_of(repo, manifest)}
    pieces: dict[str, list[_Piece]] = {backup_id: [] for backup_id in chain}
    fds: dict[str, int] = {}
    files = []
    try:
        for entry in sorted(index.files, key=lambda e: e.path.count("/")):
            target = _safe_path(data_dir, entry.path)
            if entry.type == "dir":
                target.mkdir(mode=0o700, parents=True, exist_ok=True)
                continue
            if entry.type != "file":
                raise errors.IntegrityError(
                    f"backup {manifest.id} holds {entry.path!r}, which is not a file or "
                    "folder (tablespaces and links are not supported)"
                )
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fds[entry.path] = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            files.append((target, entry))
            lengths = list(incremental.chunk_lengths(entry.size, index.chunk_size))
            if len(lengths) != len(entry.chunks):
                raise errors.IntegrityError(
                    f"{incremental.INDEX_OBJECT} of backup {manifest.id} lists "
                    f"{len(entry.chunks)} chunks for {entry.path} of {entry.size} bytes"
                )
            for number, ((sha, source, offset), length) in enumerate(
                zip(entry.chunks, lengths, strict=True)
            ):
                if source not in pieces:
                    raise errors.IntegrityError(
                        f"{entry.path} of backup {manifest.id} refers to backup {source}, "
                        "which its chain does not list"
                    )
                pieces[source].append(
                    _Piece(offset, length, sha, entry.path, number * index.chunk_size)
                )
        written = 0
        for backup_id, wanted in pieces.items():
            if wanted:
                written += _apply(repo, chain[backup_id], wanted, fds, keys)
        for _target, entry in files:
            os.ftruncate(fds[entry.path], entry.size)  # its chunks cover it; no-op but explicit
        for fd in fds.values():
            os.close(fd)
        fds.clear()
        for target, entry in files:
            os.chmod(target, entry.mode & 0o777 or 0o600)
            os.utime(target, (entry.mtime, entry.mtime))
    finally:
        for fd in fds.values():
            os.close(fd)
    log.info(
        "assembled backup %s from %d backups of its chain: %d files, %d bytes",
        manifest.id, len(chain), len(files), written,
    )
    return written


def _apply(
    repo: Repository,
    backup: Manifest,
    wanted: list[_Piece],
    fds: dict[str, int],
    keys: dict[str, Any],
) -> int:
    """Stream `backup`'s data object once, writing the wanted pieces as they pass."""
    name = incremental.data_object(backup)
    wanted.sort(key=lambda p: p.offset)
    stream: Iterator[bytes] = iter(repo.read_object(backup, name, **keys))
    pos = 0  # offset of buf[0] in the object
    buf = bytearray()
    written = 0
    i = 0
    while i < len(wanted):
        piece = wanted[i]
        if piece.offset < pos:
            raise errors.IntegrityError(f"overlapping chunks in {name} of backup {backup.id}")
        while pos + len(buf) < piece.offset + piece.length:
            try:
                chunk = next(stream)
            except StopIteration:
                raise errors.IntegrityError(
                    f"{name} of backup {backup.id} ends before the chunk of {piece.path} "
                    f"at offset {piece.offset}"
                ) from None
            if not buf and pos + len(chunk) <= piece.offset:
                pos += len(chunk)  # nothing wanted in it
                continue
            buf += chunk
        start = piece.offset - pos
        data = memoryview(buf)[start : start + piece.length]
        if hashlib.sha256(data).hexdigest() != piece.sha256:
            raise errors.IntegrityError(
                f"the chunk of {piece.path} at {piece.file_offset} in {name} of backup "
                f"{backup.id} does not match its SHA-256: the backup is corrupt"
            )
        # Every piece with the same offset (the same chunk, deduplicated) gets it now.
        while i < len(wanted) and wanted[i].offset == piece.offset:
            same = wanted[i]
            os.pwrite(fds[same.path], data, same.file_offset)
            written += len(data)
            i += 1
        data.release()
        drop = piece.offset + piece.length - pos
        del buf[:drop]
        pos += drop
    for _ in stream:  # read to the end: the object's size and SHA-256 are checked there
        pass
    return written
