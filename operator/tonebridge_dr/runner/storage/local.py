"""`file:///path` repositories: a folder on a local or mounted filesystem."""

from __future__ import annotations

import datetime as dt
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.storage import base


def _check_key(key: str) -> None:
    if not key or key.startswith("/") or ".." in key.split("/"):
        raise errors.UsageError(f"invalid object key {key!r}")


class LocalStorage(base.Storage):
    """Objects are files under `root`; writes go to a temp file renamed into place (atomic)."""

    def __init__(self, url: str, root: Path, *, create: bool = True) -> None:
        super().__init__(url)
        self.root = root
        if create:
            try:
                root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise errors.RepositoryConfigError(
                    f"cannot create repository folder {root}: {exc.strerror}"
                ) from exc
        elif not root.is_dir():
            raise errors.RepositoryConfigError(f"repository folder {root} does not exist")

    def _path(self, key: str) -> Path:
        _check_key(key)
        return self.root / key

    def put_stream(
        self, key: str, chunks: Iterable[bytes], *, storage_class: str | None = None
    ) -> int:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return size

    def get_stream(self, key: str) -> Iterator[bytes]:
        path = self._path(key)
        try:
            handle = path.open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise errors.ObjectNotFound(f"object {key} not found in {self.url}") from None
        return self._read(handle)

    def _read(self, handle: BinaryIO) -> Iterator[bytes]:
        with handle:
            while chunk := handle.read(self.read_chunk_size):
                yield chunk

    def list(self, prefix: str = "") -> Iterator[base.ObjectInfo]:
        keys: list[str] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, self.root)
            for name in filenames:
                if name.startswith(".") and name.endswith(".part"):
                    continue  # an in-flight write, not an object
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        for key in sorted(keys):
            info = self.head(key)
            if info is not None:
                yield info

    def head(self, key: str) -> base.ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None  # a folder is a key prefix, not an object
        modified = dt.datetime.fromtimestamp(st.st_mtime, tz=dt.UTC)
        return base.ObjectInfo(key=key, size=st.st_size, last_modified=modified)

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        # Drop now-empty folders so listings stay small; never the root.
        parent = path.parent
        while parent != self.root and parent.is_dir():
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent
