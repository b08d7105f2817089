"""`wal-push`: archive_command. One WAL file in, exit 0 only once it is durable.

Guarantees (what exit status 0 of `wal-push PATH` means):

1. The file's exact content is stored in the repository under
   `wal/<tli+log>/<name>.<sha256><ext>` (naming.py): the upload finished and the
   backend acknowledged it (S3 answered the PUT / multipart completion; file://
   fsynced the file and its folder). The SHA-256 is computed over the raw file
   before upload and again while streaming it up; if they differ nothing is
   kept and the push fails.
2. Or an object with the same name and the same SHA-256 already existed (a
   retry after a crash, or the file was pushed ahead earlier): identical
   content is not uploaded twice. Different content under a name that is
   already archived fails with ConflictError (exit 13) and nothing is
   overwritten. Two writers racing with different content: each checks again
   after its upload, and one that sees a different object removes its own
   (not yet acknowledged) copy and fails, so an acknowledged object is never
   removed or replaced. Exception: a newer `.partial` of the same segment
   replaces an older one when the older is a prefix of it (the WAL received by
   a stopped pg_receivewal only grows); when the old one cannot be read
   (encrypted archive) the newer one replaces it.
3. Or (the fast path, spool.py) a push marker written after an earlier
   acknowledged upload of this very file (same repository URL, size, mtime and
   inode) exists; it is consumed.

Anything else exits non-zero, so PostgreSQL keeps the file and retries:
invalid names (UsageError, 2), a file that does not look like the WAL its name
claims (IntegrityError, 7: wrong size, no long page header, page address or
segment size not matching the name), repository or network failures
(StorageError, 4), conflicts (13).

Push-ahead (the background pusher): a call that has to upload stores its own
file, and when PostgreSQL has other `.ready` files without a push marker it
starts one detached background pusher (`wal-pusher`, one per pg_wal: it holds
`pusher.lock` in the spool). The pusher uploads every `.ready` file without a
marker, oldest first (history files first, like the archiver), in batches of
`push_ahead` files (default 8) with `parallel` threads (default 4), writes a
marker for each acknowledged upload, and goes on while PostgreSQL consumes the
markers, so uploads never wait for PostgreSQL's next call. It exits after
`TONEBRIDGE_DR_WAL_PUSHER_LINGER` seconds (default 10) without new `.ready`
files, when pg_wal disappears, when a call for another repository asks it to
(`pusher.stop`: archive_command changed), or after the first failed upload (the
calls waiting for it then take the slow path, which reports the error to
PostgreSQL, and a later successful call starts a new pusher). Nothing is
acknowledged that is not durable: a marker exists only after its upload was
acknowledged, and PostgreSQL only learns about a file through its own call's
exit status.

What is not guaranteed: a marker is trusted without asking the repository, so
if someone deletes archived WAL behind our back in the seconds between a
push-ahead and PostgreSQL's call for that file, the call still succeeds.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import logging
import os
import struct
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import cast

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.codecs import compression as codecs
from tonebridge_dr.runner.codecs import pipeline
from tonebridge_dr.runner.contract import runner_contract
from tonebridge_dr.runner.engines.postgres.wal import catalog, envvars, naming, spool
from tonebridge_dr.runner.storage import open_storage

log = logging.getLogger(__name__)

COMPRESSION_ENV = runner_contract.ENV_COMPRESSION
LEVEL_ENV = runner_contract.ENV_COMPRESSION_LEVEL
ENCRYPT_ENV = runner_contract.ENV_ENCRYPT_TO
PARALLEL_ENV = "TONEBRIDGE_DR_WAL_PARALLEL"
PUSH_AHEAD_ENV = "TONEBRIDGE_DR_WAL_PUSH_AHEAD"
LINGER_ENV = "TONEBRIDGE_DR_WAL_PUSHER_LINGER"

#: Uploads at once. Each holds one compressed file in memory (~5 MiB for a 16 MiB
#: segment of ordinary WAL, at most the segment size): 4 keep the pusher near 110 MiB.
DEFAULT_PARALLEL = 4
#: Files per batch of the background pusher (1 turns it off).
DEFAULT_PUSH_AHEAD = 8
DEFAULT_LINGER = 10.0
#: Seconds between two looks at archive_status/ while the background pusher is idle.
IDLE_POLL = 0.02
#: Archiving must keep up with the server: zstd level 1 compresses WAL nearly as well as
#: level 3 at several times the speed (TONEBRIDGE_DR_COMPRESSION_LEVEL overrides it).
DEFAULT_ZSTD_LEVEL = 1
CHUNK = 1024 * 1024
#: History and backup-label files are tiny text files; refuse anything absurd.
MAX_SMALL_FILE = 16 * 1024 * 1024

_XLP_LONG_HEADER = 0x0002
_LONG_HEADER = struct.Struct("=HHIQI4xQII")  # XLogLongPageHeaderData on 64-bit builds


@dataclasses.dataclass(frozen=True)
class PushSettings:
    """How wal-push stores files; from the environment of the archive_command."""

    repo_url: str
    compression: str = codecs.DEFAULT
    level: int | None = None
    encrypt_to: Path | None = None
    parallel: int = DEFAULT_PARALLEL
    push_ahead: int = DEFAULT_PUSH_AHEAD

    @classmethod
    def from_env(cls, repo_url: str, env: Mapping[str, str] | None = None) -> PushSettings:
        env = os.environ if env is None else env
        encrypt = env.get(ENCRYPT_ENV, "").strip()
        compression = env.get(COMPRESSION_ENV, "").strip() or codecs.DEFAULT
        level = envvars.number(env, LEVEL_ENV, None, parse=int, what="an integer")
        if level is None and compression == "zstd":
            level = DEFAULT_ZSTD_LEVEL
        settings = cls(
            repo_url=repo_url,
            compression=compression,
            level=level,
            encrypt_to=Path(encrypt) if encrypt else None,
            parallel=envvars.number(
                env, PARALLEL_ENV, DEFAULT_PARALLEL, parse=int, what="an integer", minimum=1
            ),
            push_ahead=envvars.number(
                env, PUSH_AHEAD_ENV, DEFAULT_PUSH_AHEAD, parse=int, what="an integer", minimum=1
            ),
        )
        settings.check()
        return settings

    def check(self) -> None:
        """Bad settings fail before anything is read or stored."""
        codec = codecs.get(self.compression)
        if self.level is not None:
            codec._level(self.level)
        if self.encrypt_to is not None and not self.encrypt_to.is_file():
            raise errors.EncryptionError(f"encryption key file {self.encrypt_to} does not exist")

    @property
    def extension(self) -> str:
        return pipeline.object_extension(self.compression, self.encrypt_to is not None)


@dataclasses.dataclass(frozen=True)
class PushOutcome:
    """What one push did."""

    name: str
    key: str
    sha256: str
    uploaded: bool  # False: the archive already held identical (or newer partial) content
    raw_size: int
    stored_size: int

    def result(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def check_wal_file(path: Path, wal: naming.WalName, size: int) -> None:
    """Refuse files that cannot be the WAL their name says (before reading them whole)."""
    if wal.kind in (naming.HISTORY, naming.BACKUP):
        if size == 0 or size > MAX_SMALL_FILE:
            raise errors.IntegrityError(f"{path} is not a {wal.kind} file: {size} bytes")
        return
    try:
        naming.check_segment_size(size)
    except errors.IntegrityError as exc:
        raise errors.IntegrityError(f"{path} is not a WAL segment: {exc}") from None
    with path.open("rb") as handle:
        head = handle.read(_LONG_HEADER.size)
    if len(head) < _LONG_HEADER.size:
        raise errors.IntegrityError(f"{path} is not a WAL segment: it is truncated")
    if wal.kind == naming.PARTIAL and not head.strip(b"\0"):
        return  # a partial segment nothing was written to yet
    _magic, info, page_tli, pageaddr, _rem, _sysid, seg_size, _blcksz = _LONG_HEADER.unpack(head)
    expected_addr = wal.segno(size) * size
    problems = []
    if not info & _XLP_LONG_HEADER:
        problems.append("its first page has no long header")
    if seg_size != size:
        problems.append(f"its header says segments of {seg_size} bytes, the file has {size}")
    if pageaddr != expected_addr:
        problems.append(
            f"it holds WAL from {naming.format_lsn(pageaddr)}, "
            f"not {naming.format_lsn(expected_addr)}"
        )
    if page_tli == 0 or page_tli > wal.timeline:
        problems.append(f"its first page is on timeline {page_tli}")
    if problems:
        raise errors.IntegrityError(
            f"{path} does not hold WAL segment {wal.segment}: {'; '.join(problems)}"
        )


def _file_chunks(path: Path) -> Iterator[memoryview]:
    """The file in CHUNK pieces, each a view of one reused buffer, valid until the next
    one is asked for (every consumer here hashes or compresses it at once): no
    allocation and no page faults per chunk, ~8 ms less per 16 MiB segment."""
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as handle:
        while size := handle.readinto(buffer):
            yield view[:size]


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    for chunk in _file_chunks(path):
        digest.update(chunk)
    return digest.hexdigest()


def _strip_zero_tail(data: bytes) -> bytes:
    return data.rstrip(b"\0")


#: Files up to this size are read once (hashed and compressed in the same pass, the
#: compressed form kept in memory until the duplicate check); larger ones
#: (wal_segment_size up to 1 GiB) stream in two passes (hash, then compress and upload).
IN_MEMORY_LIMIT = 64 * 1024 * 1024


@dataclasses.dataclass
class _Pending:
    """One file of a batch: what it is, what it became, what it replaces."""

    path: Path
    wal: naming.WalName
    outcome: PushOutcome | None = None
    error: BaseException | None = None
    superseded: list[catalog.ArchivedObject] = dataclasses.field(default_factory=list)


class Pusher:
    """Stores WAL files in one repository. Thread-safe (one storage client, no state).

    `push_all` handles a batch with one listing per repository folder before the
    uploads (the duplicate check) and one after them (the race check), instead of
    two per file.
    """

    def __init__(self, archive: catalog.WalArchive, settings: PushSettings) -> None:
        self.archive = archive
        self.storage = archive.storage
        self.settings = settings
        self.extension = settings.extension

    def push_file(self, path: Path) -> PushOutcome:
        """Store one WAL file (see the module docstring for the contract)."""
        result = self.push_all([path])[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def push_all(
        self, paths: list[Path], *, parallel: int = 1
    ) -> list[PushOutcome | BaseException]:
        """Store every file; one outcome or error per path, in order."""
        pending: list[_Pending] = []
        for path in paths:
            try:
                pending.append(_Pending(path, naming.parse(path.name)))
            except errors.DRError as exc:
                pending.append(_Pending(path, naming.WalName(path.name, "?", 0), error=exc))
        valid = [item for item in pending if item.error is None]
        known = self._listing({item.wal.folder for item in valid})
        if parallel > 1 and len(valid) > 1:
            workers = min(parallel, len(valid))
            with concurrent.futures.ThreadPoolExecutor(workers, "wal-push") as pool:
                list(pool.map(lambda item: self._push_one(item, known), valid))
        else:
            for item in valid:
                self._push_one(item, known)
        uploaded = [item for item in valid if item.outcome is not None and item.outcome.uploaded]
        if uploaded:
            self._check_rivals(uploaded)
        results: list[PushOutcome | BaseException] = []
        for item in pending:
            if item.error is not None:
                results.append(item.error)
            else:
                assert item.outcome is not None
                results.append(item.outcome)
        return results

    def _listing(self, folders: set[str]) -> dict[str, list[catalog.ArchivedObject]]:
        by_name: dict[str, list[catalog.ArchivedObject]] = {}
        for folder in sorted(folders):
            for obj in self.archive.folder_objects(folder):
                by_name.setdefault(obj.name, []).append(obj)
        return by_name

    def _push_one(self, item: _Pending, known: dict[str, list[catalog.ArchivedObject]]) -> None:
        try:
            item.outcome = self._store(item, known.get(item.wal.name, []))
        except BaseException as exc:  # reported per file; the batch goes on
            item.error = exc

    def _store(self, item: _Pending, same: list[catalog.ArchivedObject]) -> PushOutcome:
        path, wal = item.path, item.wal
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise errors.SourceError(f"WAL file {path} does not exist") from None
        except OSError as exc:
            raise errors.SourceError(f"cannot read WAL file {path}: {exc.strerror}") from None
        check_wal_file(path, wal, size)
        packed: collections.deque[bytes] | None = None
        if size <= IN_MEMORY_LIMIT:
            sha, packed = self._read_encoded(path, size)
        else:
            sha = _sha256_file(path)
        for obj in same:
            if obj.sha256 == sha:
                log.info("%s is already archived as %s", wal.name, obj.key)
                return PushOutcome(wal.name, obj.key, sha, False, size, obj.info.size)
        if same:
            if wal.kind != naming.PARTIAL:
                existing = same[0]
                raise errors.ConflictError(
                    f"WAL file {wal.name} is already archived with different content "
                    f"(stored sha256 {existing.sha256[:16]}..., this file {sha[:16]}...) in "
                    f"{self.archive.url}; refusing to overwrite it"
                )
            newer = self._newer_partial(path, same)
            if newer is not None:
                log.info("%s: the archive already holds a longer copy %s", wal.name, newer.key)
                return PushOutcome(wal.name, newer.key, newer.sha256, False, size, newer.info.size)
            item.superseded = same
        key = naming.object_key(wal, sha, self.extension)
        if packed is not None:
            stored = self._upload_encoded(key, packed)
        else:
            stored = self._upload_stream(path, key, sha)
        log.info("archived %s as %s (%d bytes, %d stored)", wal.name, key, size, stored)
        return PushOutcome(wal.name, key, sha, True, size, stored)

    def _check_rivals(self, uploaded: list[_Pending]) -> None:
        """After the uploads: withdraw any copy that raced with different content."""
        after = self._listing({item.wal.folder for item in uploaded})
        for item in uploaded:
            assert item.outcome is not None
            replaced = {obj.key for obj in item.superseded}
            rivals = [
                obj
                for obj in after.get(item.wal.name, [])
                if obj.sha256 != item.outcome.sha256 and obj.key not in replaced
            ]
            if rivals:
                self.storage.delete(item.outcome.key)
                item.outcome = None
                item.error = errors.ConflictError(
                    f"WAL file {item.wal.name} was archived concurrently with different "
                    f"content ({rivals[0].key}); this copy was withdrawn"
                )
                continue
            for obj in item.superseded:
                self.storage.delete(obj.key)
                log.info("replaced the shorter partial %s", obj.key)

    def _encode(self, raw: Iterable[bytes | memoryview]) -> Iterator[bytes]:
        """Compressed `raw` (no encryption). zstd runs single-threaded: parallelism
        comes from pushing several files at once."""
        if self.settings.compression != "zstd":
            codec = codecs.get(self.settings.compression)
            yield from codec.compress(cast(Iterable[bytes], raw), self.settings.level)
            return
        import zstandard

        level = self.settings.level if self.settings.level is not None else DEFAULT_ZSTD_LEVEL
        cobj = zstandard.ZstdCompressor(level=level, write_checksum=True).compressobj()
        for chunk in raw:
            if out := cobj.compress(chunk):
                yield out
        yield cobj.flush()

    def _read_encoded(self, path: Path, size: int) -> tuple[str, collections.deque[bytes]]:
        """One read of a file of `size` bytes: its SHA-256 and its compressed chunks.

        Memory: one raw chunk plus the compressed file. IntegrityError when the file
        is not `size` bytes long any more (it changed while it was read).
        """
        digest = hashlib.sha256()
        read = 0

        def raw() -> Iterator[memoryview]:
            nonlocal read
            for chunk in _file_chunks(path):
                read += len(chunk)
                digest.update(chunk)
                yield chunk

        packed = collections.deque(self._encode(raw()))
        if read != size:
            raise errors.IntegrityError(f"WAL file {path} changed while it was archived")
        return digest.hexdigest(), packed

    def _upload_encoded(self, key: str, packed: collections.deque[bytes]) -> int:
        """Store the compressed chunks (encrypting them when asked), freeing each as sent."""

        def drain() -> Iterator[bytes]:
            while packed:
                yield packed.popleft()

        stream: Iterator[bytes] = drain()
        if self.settings.encrypt_to is not None:
            from tonebridge_dr.runner.codecs import encryption

            stream = encryption.encrypt(stream, self.settings.encrypt_to)
        return self.storage.put_stream(key, stream)

    def _upload_stream(self, path: Path, key: str, sha: str) -> int:
        def raw() -> Iterator[memoryview]:
            digest = hashlib.sha256()
            for chunk in _file_chunks(path):
                digest.update(chunk)
                yield chunk
            if digest.hexdigest() != sha:
                raise errors.IntegrityError(f"WAL file {path} changed while it was archived")

        encoded = self._encode(raw())
        if self.settings.encrypt_to is not None:
            from tonebridge_dr.runner.codecs import encryption

            encoded = encryption.encrypt(encoded, self.settings.encrypt_to)
        stored = 0

        def counted() -> Iterator[bytes]:
            nonlocal stored
            for chunk in encoded:
                stored += len(chunk)
                yield chunk

        written = self.storage.put_stream(key, counted())
        if written != stored:
            raise errors.StorageError(f"storage stored {written} of {stored} bytes of {key}")
        return stored

    def _newer_partial(
        self, path: Path, existing: list[catalog.ArchivedObject]
    ) -> catalog.ArchivedObject | None:
        """The stored partial when it already contains this one; None when this one is newer.

        ConflictError when they diverge (neither is a prefix of the other).
        """
        ours = _strip_zero_tail(path.read_bytes())
        for obj in existing:
            try:
                theirs = _strip_zero_tail(self.archive.read_bytes(obj))
            except errors.EncryptionError:
                log.warning("cannot compare with encrypted %s; the newer partial wins", obj.key)
                continue
            if theirs.startswith(ours):
                return obj
            if not ours.startswith(theirs):
                raise errors.ConflictError(
                    f"partial WAL file {path.name} diverges from the archived {obj.key}; "
                    "refusing to replace it"
                )
        return None


# -- the archive_command ------------------------------------------------------------------


def ready_files(wal_dir: Path, *, exclude: str, limit: int, repo_url: str) -> list[Path]:
    """Up to `limit` files PostgreSQL marked `.ready`, in its archiving order.

    Files whose push marker is still valid (pushed ahead by an earlier call) are
    left out.
    """
    if limit <= 0:
        return []
    try:
        entries = os.listdir(wal_dir / "archive_status")
    except OSError:
        return []
    names: list[naming.WalName] = []
    for entry in entries:
        if not entry.endswith(".ready"):
            continue
        name = entry[: -len(".ready")]
        if name == exclude or not naming.is_valid(name):
            continue
        names.append(naming.parse(name))
    names.sort(key=naming.WalName.archive_order)
    chosen: list[Path] = []
    for wal in names:
        path = wal_dir / wal.name
        if spool.has_push_marker(str(path), repo_url):
            continue
        chosen.append(path)
        if len(chosen) >= limit:
            break
    return chosen


def push(path_arg: str, settings: PushSettings) -> PushOutcome:
    """The archive_command's slow path: store `path_arg`, then start the background pusher.

    Returns the outcome for `path_arg` once it is durable; raises its error
    otherwise (and then starts no pusher). The caller has already tried the
    spool fast path. `push_ahead` 1 turns the background pusher off.
    """
    path = Path(os.path.abspath(path_arg))
    naming.parse(path.name)
    settings.check()
    pusher = Pusher(catalog.WalArchive(open_storage(settings.repo_url)), settings)
    outcome = pusher.push_file(path)
    if settings.push_ahead > 1:
        _start_background(path.parent, path.name, settings)
    return outcome


def _start_background(wal_dir: Path, done: str, settings: PushSettings) -> bool:
    """Start the background pusher when other files wait and none runs; True if started."""
    if not ready_files(wal_dir, exclude=done, limit=1, repo_url=settings.repo_url):
        return False
    try:
        lock_fd = spool.take_pusher_lock(str(wal_dir))
        if lock_fd is None:  # one is running
            if spool.pusher_repo(str(wal_dir)) != settings.repo_url:
                # archive_command now names another repository: the old pusher must not
                # go on archiving into the old one; the next call starts a new pusher.
                spool.request_pusher_stop(str(wal_dir))
                log.info("asked the background pusher of another repository to stop")
            return False
        spool.describe_pusher(lock_fd, settings.repo_url)
        pid = spool.start_pusher(
            str(wal_dir),
            lock_fd,
            ["wal-pusher", "--wal-dir", str(wal_dir), "--repo", settings.repo_url],
        )
    except OSError as exc:  # only an optimisation: every call can still push its own file
        log.warning("cannot start the background pusher: %s", exc)
        return False
    log.info("started the background pusher (pid %d) for the other ready files", pid)
    return True


def linger_from_env(env: Mapping[str, str] | None = None) -> float:
    """`TONEBRIDGE_DR_WAL_PUSHER_LINGER`: idle seconds before the background pusher exits."""
    return envvars.number(
        os.environ if env is None else env, LINGER_ENV, DEFAULT_LINGER,
        parse=float, what="a number of seconds", minimum=0.0,
    )


def run_background(wal_dir: Path, settings: PushSettings, *, linger: float) -> int:
    """The background pusher's loop (the caller holds the pusher lock); 0 idle, 1 failed."""
    pusher = Pusher(catalog.WalArchive(open_storage(settings.repo_url)), settings)
    spool.clear_pusher_stop(str(wal_dir))  # a request made before we ran was not for us
    idle_since = time.monotonic()
    pushed = 0
    while wal_dir.is_dir():
        if spool.pusher_stop_requested(str(wal_dir)):
            spool.clear_pusher_stop(str(wal_dir))
            log.warning("background pusher stops: archive_command uses another repository")
            break
        batch = ready_files(
            wal_dir, exclude="", limit=settings.push_ahead, repo_url=settings.repo_url
        )
        if not batch:
            if time.monotonic() - idle_since >= linger:
                break
            time.sleep(IDLE_POLL)
            continue
        stats = {}
        for path in batch:
            try:
                stats[path] = spool.file_stat(str(path))  # before reading: see spool.py
            except OSError:
                continue  # archived and removed meanwhile
        files = list(stats)
        try:
            results = pusher.push_all(files, parallel=settings.parallel)
        except errors.DRError as exc:  # the listing before the uploads failed
            log.warning("background pusher stops after %d files: %s", pushed, exc)
            return 1
        failed = 0
        for path, result in zip(files, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("could not push %s ahead: %s", path.name, result)
                failed += 1
                continue
            spool.write_push_marker(
                str(path), settings.repo_url, result.key, result.sha256, stats[path]
            )
            pushed += 1
        spool.forget_push_markers(str(wal_dir))
        if failed:
            log.warning("background pusher stops after %d files: %d failed", pushed, failed)
            return 1
        idle_since = time.monotonic()
    return 0
