"""The base backup's data: `base.tar` streamed into an empty data directory."""
from __future__ import annotations

import io
import os
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.postgres.wal.pitr.server import alive, postmaster_pid


class _ChunkReader(io.RawIOBase):
    """A read-only file object over an iterator of byte chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._buf:
            try:
                self._buf = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(buffer), len(self._buf))
        buffer[:size] = self._buf[:size]
        self._buf = self._buf[size:]
        return size

    def drain(self) -> None:
        self._buf = b""
        for _ in self._chunks:
            pass


def _member_path(root: Path, name: str) -> Path:
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if not parts or name.startswith("/") or ".." in parts:
        raise errors.IntegrityError(f"base.tar holds an unsafe path {name!r}")
    return root.joinpath(*parts)


def extract_base(stream: Iterator[bytes], data_dir: Path) -> int:
    """Unpack the base backup tar stream into `data_dir`; returns the bytes written.

    The stream is read to its end, so its checksum is verified before this returns.
    """
    reader = _ChunkReader(stream)
    written = 0
    with tarfile.open(fileobj=io.BufferedReader(reader, 1024 * 1024), mode="r|") as tar:
        for member in tar:
            target = _member_path(data_dir, member.name)
            if member.isdir():
                target.mkdir(mode=0o700, parents=True, exist_ok=True)
            elif member.isfile():
                target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as out:
                    while chunk := source.read(1024 * 1024):
                        out.write(chunk)
                        written += len(chunk)
            else:
                raise errors.IntegrityError(
                    f"base.tar holds {member.name!r}, which is not a file or folder "
                    "(tablespaces and links are not supported)"
                )
    reader.drain()
    return written


def prepare_dir(data_dir: Path, overwrite: bool) -> bool:
    """Make sure `data_dir` exists and is empty; True when we created it."""
    if data_dir.exists() and not data_dir.is_dir():
        raise errors.TargetNotEmpty(f"{data_dir} exists and is not a folder")
    if data_dir.is_dir() and any(data_dir.iterdir()):
        if not overwrite:
            raise errors.TargetNotEmpty(
                f"data directory {data_dir} is not empty; pass --overwrite to replace it"
            )
        pid = postmaster_pid(data_dir)
        if pid is not None and alive(pid):
            raise errors.TargetNotEmpty(
                f"a PostgreSQL server (pid {pid}) is running in {data_dir}; stop it first"
            )
        for entry in data_dir.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        return False
    created = not data_dir.exists()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    return created
