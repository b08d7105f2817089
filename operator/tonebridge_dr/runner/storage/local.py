"""`file:///path` repositories: a folder on a local or mounted filesystem."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, cast

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.storage import base


@contextlib.contextmanager
def _os_errors(action: str, key: str, url: str) -> Iterator[None]:
    """OS errors of the repository's own files (EACCES, ENOSPC, EIO, ...) as StorageError
    (exit 4) with one sentence; errors of the data being written pass through."""
    try:
        yield
    except OSError as exc:
        raise errors.StorageError(
            f"cannot {action} {key} in {url}: {exc.strerror or exc}"
        ) from exc


def _check_key(key: str) -> None:
    if not key or key.startswith("/") or ".." in key.split("/"):
        raise errors.UsageError(f"invalid object key {key!r}")


#: A write's temp file: `tempfile.mkstemp(prefix=".<name>.", suffix=".part")`.
_PART_RE = re.compile(r"\.(.+)\.[a-z0-9_]{8}\.part")

_SYNC_FILE_RANGE_WRITE = 2
#: Attempts to create a temp file whose folder a concurrent delete keeps removing.
_TEMP_ATTEMPTS = 5
_sync_file_range: Callable[[int, int, int, int], int] | None = None


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Have the kernel start writing `length` bytes at `offset` to disk, without waiting.

    Linux `sync_file_range(SYNC_FILE_RANGE_WRITE)` (what PostgreSQL's checkpointer uses),
    else `posix_fadvise(DONTNEED)`, which starts the same writeback. A hint only: the
    final fsync is what makes the data durable, and it no longer has a whole object's
    dirty pages to wait for. Errors are ignored (the fsync reports real ones).
    """
    global _sync_file_range
    if _sync_file_range is None:
        _sync_file_range = _load_sync_file_range()
    with contextlib.suppress(OSError):
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def _load_sync_file_range() -> Callable[[int, int, int, int], int]:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.sync_file_range
        function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        function.restype = ctypes.c_int
        return cast(Callable[[int, int, int, int], int], function)
    except (ImportError, OSError, AttributeError):  # not glibc/Linux
        pass
    advise = getattr(os, "posix_fadvise", None)
    if advise is not None:

        def fadvise(fd: int, offset: int, length: int, flags: int) -> int:
            advise(fd, offset, length, os.POSIX_FADV_DONTNEED)
            return 0

        return fadvise
    return lambda fd, offset, length, flags: 0


class LocalStorage(base.Storage):
    """Objects are files under `root`; writes go to a temp file renamed into place (atomic).

    A large write asks the kernel to start writing back every `writeback_step` bytes, so
    the closing fsync waits for the last step only, not for the whole object.
    """

    writeback_step: int = 8 * 1024 * 1024

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
        with _os_errors("open", "the repository folder", url):
            exists = root.is_dir()
        if not exists:
            raise errors.RepositoryConfigError(f"repository folder {root} does not exist")

    def _path(self, key: str) -> Path:
        _check_key(key)
        return self.root / key

    def put_stream(
        self, key: str, chunks: Iterable[bytes], *, storage_class: str | None = None
    ) -> int:
        path = self._path(key)
        with _os_errors("store", key, self.url):
            fd, tmp = self._temp_file(path)
        size = 0
        try:
            out = os.fdopen(fd, "wb")
            try:
                flushed = 0  # bytes handed to writeback already
                for chunk in chunks:  # the data's own errors pass through unchanged
                    with _os_errors("store", key, self.url):
                        out.write(chunk)
                        size += len(chunk)
                        if size - flushed >= self.writeback_step:
                            out.flush()
                            _start_writeback(out.fileno(), flushed, size - flushed)
                            flushed = size
                with _os_errors("store", key, self.url):
                    out.flush()
                    os.fsync(out.fileno())
            finally:
                with contextlib.suppress(OSError):  # a failed flush already raised above
                    out.close()
            with _os_errors("store", key, self.url):
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

    @staticmethod
    def _temp_file(path: Path) -> tuple[int, str]:
        """A temp file next to `path`, creating its folder. Another process's delete may
        remove the folder while it is still empty (`_drop_empty_folders`: a prune, or a
        writer withdrawing its claim from a shared folder) between the mkdir and the
        create: then the folder is created again. Once the temp file is in it, the folder
        is not empty and stays."""
        for _ in range(_TEMP_ATTEMPTS - 1):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part",
                                        dir=path.parent)
            except FileNotFoundError:
                continue  # the folder went between the two calls
        path.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)

    def get_stream(self, key: str) -> Iterator[bytes]:
        path = self._path(key)
        try:
            handle = path.open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise errors.ObjectNotFound(f"object {key} not found in {self.url}") from None
        except OSError as exc:
            raise errors.StorageError(
                f"cannot read {key} in {self.url}: {exc.strerror or exc}"
            ) from exc
        return self._read(key, handle)

    def _read(self, key: str, handle: BinaryIO) -> Iterator[bytes]:
        with handle:
            while True:
                with _os_errors("read", key, self.url):
                    chunk = handle.read(self.read_chunk_size)
                if not chunk:
                    return
                yield chunk

    def list(self, prefix: str = "") -> Iterator[base.ObjectInfo]:
        """Walks only the folders that can hold keys under `prefix`, lazily and in key
        order: a backup's claim lists its own folder, not the whole repository."""
        return self.list_after(prefix)

    def list_after(
        self, prefix: str = "", start_after: str = "", limit: int | None = None
    ) -> Iterator[base.ObjectInfo]:
        """Walks only the folders that can hold keys under `prefix` after `start_after`.

        Entries of a folder are visited in key order (a subfolder sorts as `name/`),
        so the walk yields keys in global key order and stops after `limit` hits.
        """
        if limit is not None and limit <= 0:
            return
        if prefix:
            _check_key(prefix.rstrip("/") or "x")
        count = 0
        top = prefix.rpartition("/")[0]
        for key in self._walk_sorted(top, prefix, start_after):
            info = self.head(key)
            if info is None:
                continue  # deleted while walking
            yield info
            count += 1
            if limit is not None and count >= limit:
                return

    def _walk_sorted(self, rel_dir: str, prefix: str, start_after: str) -> Iterator[str]:
        folder = self.root / rel_dir if rel_dir else self.root
        try:
            with os.scandir(folder) as it:
                entries = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in it]
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise errors.StorageError(
                f"cannot list {rel_dir or '/'} in {self.url}: {exc.strerror or exc}"
            ) from exc
        items: list[tuple[str, str, bool]] = []
        for name, is_dir in entries:
            key = f"{rel_dir}/{name}" if rel_dir else name
            if is_dir:
                items.append((key + "/", key, True))
            elif not (name.startswith(".") and name.endswith(".part")):
                items.append((key, key, False))
        items.sort()
        for sort_key, key, is_dir in items:
            if is_dir:
                if not (sort_key.startswith(prefix) or prefix.startswith(sort_key)):
                    continue
                # Every key in the folder starts with `sort_key`: when that already
                # sorts before `start_after` (and is not a prefix of it), skip it whole.
                if sort_key < start_after and not start_after.startswith(sort_key):
                    continue
                yield from self._walk_sorted(key, prefix, start_after)
            elif key.startswith(prefix) and key > start_after:
                yield key

    def list_leftovers(self, prefix: str = "") -> Iterator[base.Leftover]:
        """Temp files (`.<name>.<random>.part`) of writes that never finished."""
        top = self.root / prefix.rpartition("/")[0] if prefix else self.root
        for folder, _dirs, files in os.walk(top):
            for name in files:
                match = _PART_RE.fullmatch(name)
                if match is None:
                    continue
                path = Path(folder) / name
                rel_dir = path.parent.relative_to(self.root).as_posix()
                key = match.group(1) if rel_dir == "." else f"{rel_dir}/{match.group(1)}"
                if not key.startswith(prefix):
                    continue
                try:
                    modified = path.stat().st_mtime
                except FileNotFoundError:
                    continue  # finished or removed meanwhile
                started = dt.datetime.fromtimestamp(modified, tz=dt.UTC)
                yield base.Leftover(key=key, started=started, handle=str(path))

    def discard_leftover(self, leftover: base.Leftover) -> None:
        path = Path(leftover.handle)
        if self.root not in path.parents or _PART_RE.fullmatch(path.name) is None:
            raise errors.UsageError(f"not a leftover of {self.url}: {leftover.handle}")
        path.unlink(missing_ok=True)
        self._drop_empty_folders(path.parent)

    def head(self, key: str) -> base.ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise errors.StorageError(
                f"cannot look at {key} in {self.url}: {exc.strerror or exc}"
            ) from exc
        if not stat.S_ISREG(st.st_mode):
            return None  # a folder is a key prefix, not an object
        modified = dt.datetime.fromtimestamp(st.st_mtime, tz=dt.UTC)
        return base.ObjectInfo(key=key, size=st.st_size, last_modified=modified)

    def delete(self, key: str) -> None:
        path = self._path(key)
        with _os_errors("delete", key, self.url):
            path.unlink(missing_ok=True)
        self._drop_empty_folders(path.parent)

    def _drop_empty_folders(self, parent: Path) -> None:
        """Remove `parent` and its parents while empty (listings stay small); never the root."""
        while parent != self.root and parent.is_dir():
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent
