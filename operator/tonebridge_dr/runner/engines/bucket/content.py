"""Content objects: `objects/<sha[:2]>/<sha>` in the policy's repository folder.

The address is the SHA-256 of the object's bytes as they are in the source bucket (raw),
so the same bytes are stored once whatever key, snapshot or source holds them. The
stored bytes are zstd-compressed (incompressible data costs a few bytes a block) and,
when the policy encrypts, OpenPGP-encrypted: the codec is `zstd` or `zstd+openpgp`,
recorded with every reference. A content object is written once and never rewritten
while anything references it; its stored size and SHA-256 are recorded in the key map
and in the snapshot's content index, so `backups verify` checks it without a key, and a
restore checks both the stored bytes and, after decoding, the address.

The content index of a snapshot (`content.idx`) has one line per distinct content,
sorted by address: `<sha256> <stored size> <stored sha256> <codec>`. It is what
retention's mark-and-sweep and `backups verify` read (compressed, never encrypted: the
addresses and sizes are visible in any listing of `objects/` anyway).
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.codecs import compression, encryption, pipeline
from tonebridge_dr.runner.storage.base import Storage

PREFIX = "objects/"
COMPRESSION = "zstd"
ENCRYPTED_SUFFIX = "+openpgp"
#: zstd level of content objects when the policy gives none (uploads are mostly
#: compressed already: level 1 costs little and still shrinks text).
DEFAULT_LEVEL = 1
_SHA_RE = re.compile(r"[0-9a-f]{64}")


def key_of(sha256: str) -> str:
    """`objects/<sha[:2]>/<sha>`."""
    return f"{PREFIX}{sha256[:2]}/{sha256}"


def address_of(key: str) -> str | None:
    """The address of a content object key, None for any other key."""
    rest = key[len(PREFIX):] if key.startswith(PREFIX) else ""
    folder, _, name = rest.partition("/")
    if _SHA_RE.fullmatch(name) and folder == name[:2]:
        return name
    return None


@dataclasses.dataclass(frozen=True)
class Stored:
    """One content object as stored: its address, sizes, stored SHA-256 and codec."""

    sha256: str
    size: int  # raw bytes
    stored_size: int
    stored_sha256: str
    codec: str

    @property
    def key(self) -> str:
        return key_of(self.sha256)

    @property
    def encrypted(self) -> bool:
        return self.codec.endswith(ENCRYPTED_SUFFIX)

    def index_line(self) -> str:
        return f"{self.sha256} {self.stored_size} {self.stored_sha256} {self.codec} {self.size}\n"

    @classmethod
    def parse(cls, line: str) -> Stored:
        parts = line.split()
        if len(parts) != 5 or not _SHA_RE.fullmatch(parts[0]) or not _SHA_RE.fullmatch(parts[2]):
            raise errors.IntegrityError(f"content index line is malformed: {line[:120]!r}")
        return cls(sha256=parts[0], stored_size=int(parts[1]), stored_sha256=parts[2],
                   codec=parts[3], size=int(parts[4]))


def codec_name(encrypted: bool) -> str:
    return COMPRESSION + (ENCRYPTED_SUFFIX if encrypted else "")


def _check_codec(codec: str) -> tuple[str, bool]:
    name, _, rest = codec.partition("+")
    if rest not in ("", ENCRYPTED_SUFFIX[1:]):
        raise errors.IntegrityError(f"unknown content codec {codec!r}")
    compression.get(name)
    return name, bool(rest)


class HashMismatch(errors.IntegrityError):
    """The bytes read do not hash to what they should."""


def hashed(chunks: Iterable[bytes], expected: str | None, size: int | None,
           what: str) -> Iterator[bytes]:
    """`chunks`, checked at the end: raises (so a consuming upload aborts) when their
    SHA-256 is not `expected` or their length not `size` (None: not checked)."""
    digest = hashlib.sha256()
    count = 0
    for chunk in chunks:
        digest.update(chunk)
        count += len(chunk)
        yield chunk
    if size is not None and count != size:
        raise HashMismatch(f"{what}: {count} bytes read, {size} expected")
    if expected is not None and digest.hexdigest() != expected:
        raise HashMismatch(f"{what}: sha256 {digest.hexdigest()}, expected {expected}")


def store(
    storage: Storage,
    sha256: str,
    size: int,
    chunks: Iterable[bytes],
    *,
    encrypt_to: Path | None,
    level: int | None,
    storage_class: str | None,
) -> Stored:
    """Encode `chunks` (raw bytes whose SHA-256 must be `sha256`) and store them at the
    address. Atomic: when the bytes do not match the address the upload is aborted."""
    stored_digest = hashlib.sha256()
    stored_size = 0

    def encoded() -> Iterator[bytes]:
        nonlocal stored_size
        raw = hashed(chunks, sha256, size, f"source bytes for {key_of(sha256)}")
        for chunk in pipeline.encode(raw, compression=COMPRESSION, encrypt_to=encrypt_to,
                                     level=DEFAULT_LEVEL if level is None else level):
            stored_digest.update(chunk)
            stored_size += len(chunk)
            yield chunk

    storage.put_stream(key_of(sha256), encoded(), storage_class=storage_class)
    return Stored(sha256, size, stored_size, stored_digest.hexdigest(),
                  codec_name(encrypt_to is not None))


def adopt(storage: Storage, sha256: str, size: int, *, encrypted: bool) -> Stored | None:
    """Take an already stored content object nothing in this run knows (a crashed run's,
    or one a deleted snapshot left): read it, record its stored SHA-256 and, when it is
    not encrypted, check it decodes to its address. None when it is unusable (then it is
    written again)."""
    digest = hashlib.sha256()
    stored_size = 0
    head = b""

    def stored() -> Iterator[bytes]:
        nonlocal stored_size, head
        for chunk in storage.get_stream(key_of(sha256)):
            if len(head) < 64:
                head += chunk[:64]
            digest.update(chunk)
            stored_size += len(chunk)
            yield chunk

    try:
        if encrypted:
            for _ in stored():
                pass
            if not encryption.is_encrypted(head):
                return None
        else:
            decoded = pipeline.decode(stored(), compression=COMPRESSION, encrypted=False)
            for _ in hashed(decoded, sha256, size, key_of(sha256)):
                pass
    except errors.ObjectNotFound:
        return None
    except errors.IntegrityError:
        return None  # corrupt or another codec: storing the right bytes repairs it
    return Stored(sha256, size, stored_size, digest.hexdigest(), codec_name(encrypted))


def read(
    storage: Storage,
    stored: Stored,
    *,
    decrypt_key: Path | None,
    passphrase: str | None = None,
) -> Iterator[bytes]:
    """The raw bytes of a content object, checked: stored size and SHA-256 while they
    stream, the decoded bytes against the address at the end. The last chunk is held back
    until everything matched, so a consumer's upload never completes with bad bytes."""
    name, encrypted = _check_codec(stored.codec)
    info = storage.head(stored.key)
    if info is None:
        raise errors.IntegrityError(f"content object {stored.key} is missing")
    if info.size != stored.stored_size:
        raise errors.IntegrityError(
            f"content object {stored.key} is corrupt: {info.size} bytes stored, "
            f"{stored.stored_size} recorded")
    raw_stored = hashed(storage.get_stream(stored.key), stored.stored_sha256,
                        stored.stored_size, f"content object {stored.key} is corrupt")
    decoded = pipeline.decode(raw_stored, compression=name, encrypted=encrypted,
                              decrypt_key=decrypt_key, passphrase=passphrase)
    held: bytes | None = None
    for chunk in hashed(decoded, stored.sha256, stored.size,
                        f"content object {stored.key} decodes to other bytes"):
        if not chunk:
            continue
        if held is not None:
            yield held
        held = chunk
    if held is not None:
        yield held


def verify(storage: Storage, stored: Stored) -> str | None:
    """Check the stored bytes of one content object (no key needed); the problem or None."""
    info = storage.head(stored.key)
    if info is None:
        return f"content object {stored.key} is missing"
    if info.size != stored.stored_size:
        return (f"content object {stored.key} is corrupt: {info.size} bytes stored, "
                f"{stored.stored_size} recorded")
    try:
        for _ in hashed(storage.get_stream(stored.key), stored.stored_sha256,
                        stored.stored_size, f"content object {stored.key} is corrupt"):
            pass
    except HashMismatch as exc:
        return str(exc)
    except errors.ObjectNotFound:
        return f"content object {stored.key} is missing"
    return None


# -- the content index: sorted, distinct, streamed ------------------------------------------------


class IndexSorter:
    """Collects index lines and yields them sorted by address, each address once.

    Memory is bounded by `run_lines`: full runs are sorted and spilled to temporary files
    (in $TMPDIR: the pod's /tmp) and merged at the end.
    """

    def __init__(self, run_lines: int = 200_000) -> None:
        self.run_lines = run_lines
        self._lines: list[str] = []
        self._runs: list[IO[str]] = []

    def add(self, stored: Stored) -> None:
        self._lines.append(stored.index_line())
        if len(self._lines) >= self.run_lines:
            self._spill()

    def _spill(self) -> None:
        handle = tempfile.TemporaryFile("w+", encoding="ascii")  # noqa: SIM115 (closed in lines)
        handle.writelines(sorted(set(self._lines)))
        handle.seek(0)
        self._runs.append(handle)
        self._lines = []

    def lines(self) -> Iterator[str]:
        """Every distinct line, sorted (call once)."""
        runs: list[Iterable[str]] = [*self._runs, sorted(set(self._lines))]
        self._lines = []
        last = None
        try:
            for line in heapq.merge(*runs):
                address = line[:64]
                if address != last:
                    yield line
                last = address
        finally:
            for handle in self._runs:
                handle.close()
            self._runs = []


def parse_index(lines: Iterable[bytes]) -> Iterator[Stored]:
    """Stored entries of a content index stream (decoded bytes), in its order."""
    for line in split_lines(lines):
        if line:
            yield Stored.parse(line.decode("ascii"))


def split_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Lines (without the newline) of a byte stream, whatever its chunking."""
    rest = b""
    for chunk in chunks:
        rest += chunk
        *lines, rest = rest.split(b"\n")
        yield from lines
    if rest:
        yield rest

