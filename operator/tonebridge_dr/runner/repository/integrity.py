"""Checking stored objects against their manifest entries while they stream.

`VerifiedStream` sits between storage and the decoder. It counts and hashes the
stored bytes and holds back the final stored chunk until the whole object has
been read and matched its recorded size and SHA-256, so a decoder (and whatever
consumes the decoded bytes, e.g. `pg_restore --single-transaction`) never sees
the end of a corrupt or truncated object. `deliver` adds the same one-chunk
delay on the decoded side, so the consumer's last decoded byte is released only
after the stored object checked out.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.repository.manifest import ObjectEntry

log = logging.getLogger(__name__)

ProblemKind = Literal["missing", "truncated", "size", "checksum"]


def missing_error(key: str) -> errors.IntegrityError:
    return errors.IntegrityError(f"object {key} is missing")


def size_error(key: str, actual: int, expected: int) -> errors.IntegrityError:
    if actual < expected:
        return errors.IntegrityError(f"object {key} is truncated: {actual} of {expected} bytes")
    return errors.IntegrityError(
        f"object {key} is corrupt: {actual} bytes stored, the manifest says {expected}"
    )


def checksum_error(key: str, expected: str, actual: str) -> errors.IntegrityError:
    return errors.IntegrityError(
        f"object {key} is corrupt: sha256 mismatch (expected {expected}, got {actual})"
    )


class VerifiedStream:
    """Stored chunks of one object, released one chunk late and checked at the end.

    Iterate it once. `error` holds the IntegrityError it raised, if any; `complete`
    is True once the whole object was read and matched. `drain()` reads and checks
    whatever the iteration did not (used when a decoder stopped or failed early).
    """

    def __init__(self, chunks: Iterable[bytes], entry: ObjectEntry) -> None:
        self._chunks = iter(chunks)
        self.entry = entry
        self.bytes_read = 0
        self.complete = False
        self.error: errors.IntegrityError | None = None
        self._hash = hashlib.sha256()

    def _fail(self, error: errors.IntegrityError) -> errors.IntegrityError:
        self.error = error
        return error

    def _take(self, chunk: bytes) -> None:
        self.bytes_read += len(chunk)
        if self.bytes_read > self.entry.size:
            raise self._fail(size_error(self.entry.key, self.bytes_read, self.entry.size))
        self._hash.update(chunk)

    def _finish(self) -> None:
        if self.bytes_read != self.entry.size:
            raise self._fail(size_error(self.entry.key, self.bytes_read, self.entry.size))
        digest = self._hash.hexdigest()
        if digest != self.entry.sha256:
            raise self._fail(checksum_error(self.entry.key, self.entry.sha256, digest))
        self.complete = True

    def __iter__(self) -> Iterator[bytes]:
        held: bytes | None = None
        for chunk in self._chunks:
            if not chunk:
                continue
            self._take(chunk)  # raises before `held` is released when the object is too long
            if held is not None:
                yield held
            held = chunk
        self._finish()
        if held is not None:
            yield held

    def drain(self) -> None:
        """Read the rest of the object and check it; raises IntegrityError when it is bad."""
        if self.complete:
            return
        if self.error is not None:
            raise self.error
        for chunk in self._chunks:
            self._take(chunk)
        self._finish()


#: Above this stored size, a key error is not double-checked by re-reading the object.
RECHECK_LIMIT = 64 * 1024 * 1024


def _large(entry: ObjectEntry) -> bool:
    return entry.size > RECHECK_LIMIT


def deliver(
    decoded: Iterable[bytes], stored: VerifiedStream, reread: Callable[[], Iterable[bytes]]
) -> Iterator[bytes]:
    """Decoded chunks, the last one withheld until the stored object is fully verified.

    When the decoder fails first (corrupt data often breaks decompression before
    the end), the stored bytes are the better explanation: the object is read
    again through `reread` (a fresh stream; the failed decoder may still hold the
    first one) and its IntegrityError, naming the key, wins. An EncryptionError
    raised before any output (no or wrong key) on a large object, and a
    StorageError, are reported as is, without reading the object again.
    """
    held: bytes | None = None
    try:
        for chunk in decoded:
            if not chunk:
                continue
            if held is not None:
                yield held
            held = chunk
        stored.drain()  # the decoder may stop before the end of the stored bytes
    except Exception as exc:
        if stored.error is not None:
            if stored.error is exc:
                raise
            raise stored.error from exc
        if isinstance(exc, errors.StorageError):
            raise  # the backend failed, not the data: reading again would not explain more
        if isinstance(exc, errors.EncryptionError) and held is None and _large(stored.entry):
            raise  # a key problem before any output: do not read a huge object again to say so
        try:
            _, problem = check_entry(reread(), stored.entry)
        except errors.ObjectNotFound:
            raise missing_error(stored.entry.key) from exc
        if problem is not None:
            raise errors.IntegrityError(problem.message) from exc
        if isinstance(exc, errors.IntegrityError):
            raise errors.IntegrityError(
                f"object {stored.entry.key} cannot be decoded: {exc}"
            ) from exc
        raise
    if held is not None:
        yield held


@dataclasses.dataclass(frozen=True)
class VerifyProblem:
    """One bad object found by `Repository.verify`."""

    key: str
    name: str
    kind: ProblemKind
    message: str


@dataclasses.dataclass
class VerifyReport:
    """What `Repository.verify` found: every problem, not just the first."""

    backup_id: str
    objects_checked: int = 0
    bytes_read: int = 0
    problems: list[VerifyProblem] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_for_problems(self) -> None:
        """Raise IntegrityError naming the first bad object key (and how many are bad)."""
        if not self.problems:
            return
        first = self.problems[0]
        more = len(self.problems) - 1
        suffix = f" (and {more} more bad object{'s' if more > 1 else ''})" if more else ""
        raise errors.IntegrityError(f"backup {self.backup_id}: {first.message}{suffix}")

    def result(self) -> dict[str, Any]:
        """Stable `--json` form."""
        return {
            "id": self.backup_id,
            "ok": self.ok,
            "objects_checked": self.objects_checked,
            "bytes_read": self.bytes_read,
            "problems": [dataclasses.asdict(problem) for problem in self.problems],
        }


def problem_from(
    entry: ObjectEntry, kind: ProblemKind, error: errors.IntegrityError
) -> VerifyProblem:
    return VerifyProblem(key=entry.key, name=entry.name, kind=kind, message=str(error))


def classify(error: errors.IntegrityError, entry: ObjectEntry, bytes_read: int) -> ProblemKind:
    """The kind of an IntegrityError raised while streaming `entry`."""
    if bytes_read < entry.size:
        return "truncated"
    if bytes_read > entry.size:
        return "size"
    return "checksum"


def check_entry(chunks: Iterable[bytes], entry: ObjectEntry) -> tuple[int, VerifyProblem | None]:
    """Stream one object and compare it with its entry; returns (bytes read, problem or None)."""
    stream = VerifiedStream(chunks, entry)
    try:
        for _ in stream:
            pass
    except errors.IntegrityError as exc:
        log.warning("%s", exc)
        return stream.bytes_read, problem_from(entry, classify(exc, entry, stream.bytes_read), exc)
    return stream.bytes_read, None
