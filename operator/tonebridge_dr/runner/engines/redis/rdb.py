"""Streaming verification of an RDB file: magic, version, EOF opcode and CRC-64 trailer.

An RDB is `REDIS` + four ASCII digits (the format version), the body, the EOF
opcode 0xFF, then eight bytes: the little-endian CRC-64/Jones of everything
before them. A server running with `rdbchecksum no` writes zero there, which
we report as "disabled" rather than as corruption.

`RdbCheck` sees the bytes once, as they stream past, and never holds more than
the last eight of them, so it adds no memory and no copy of the data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.redis import crc64

MAGIC = b"REDIS"
HEADER_SIZE = 9  # MAGIC + 4 version digits
TRAILER_SIZE = 8
EOF_OPCODE = 0xFF

CHECKSUM_OK = "ok"
CHECKSUM_DISABLED = "disabled"


@dataclasses.dataclass(frozen=True)
class RdbInfo:
    """What a complete, verified RDB stream told us."""

    version: int
    size: int
    checksum: str  # CHECKSUM_OK or CHECKSUM_DISABLED
    crc64: str  # 16 hex digits as stored in the trailer

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


class RdbCheck:
    """Feed every chunk of an RDB in order, then call `finish()`.

    `feed` raises IntegrityError as soon as the header is wrong; `finish`
    raises IntegrityError when the stream is too short, lacks the EOF opcode
    or its checksum does not match. `what` names the stream in messages.
    """

    def __init__(self, what: str = "RDB") -> None:
        self.what = what
        self.size = 0
        self.version: int | None = None
        self._header = bytearray()
        self._crc = 0
        self._tail = b""  # the last (up to) 8 bytes seen: not yet in the CRC
        self._last_crc_byte = -1  # the last byte that went into the CRC
        self.info: RdbInfo | None = None  # set by a successful finish()

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        view = memoryview(chunk).cast("B")
        n = len(view)
        if n == 0:
            return
        self.size += n
        if self.version is None:
            self._header += view[: HEADER_SIZE - len(self._header)]
            if len(self._header) == HEADER_SIZE:
                self.version = self._parse_header(bytes(self._header))
        if n >= TRAILER_SIZE:
            if self._tail:
                self._crc = crc64.update(self._crc, self._tail)
            body = view[:-TRAILER_SIZE]
            if len(body):
                self._crc = crc64.update(self._crc, body)
                self._last_crc_byte = body[-1]
            elif self._tail:
                self._last_crc_byte = self._tail[-1]
            self._tail = bytes(view[-TRAILER_SIZE:])
        else:
            joined = self._tail + bytes(view)
            if len(joined) > TRAILER_SIZE:
                head = joined[:-TRAILER_SIZE]
                self._crc = crc64.update(self._crc, head)
                self._last_crc_byte = head[-1]
                joined = joined[-TRAILER_SIZE:]
            self._tail = joined

    def _parse_header(self, header: bytes) -> int:
        digits = header[len(MAGIC) :]
        if not header.startswith(MAGIC) or not digits.isdigit():
            raise errors.IntegrityError(
                f"{self.what} is not an RDB file: it starts with {header[:HEADER_SIZE]!r}"
            )
        return int(digits)

    def finish(self) -> RdbInfo:
        if self.version is None or self.size < HEADER_SIZE + 1 + TRAILER_SIZE:
            raise errors.IntegrityError(
                f"{self.what} is truncated: {self.size} bytes is too short for an RDB file"
            )
        if self._last_crc_byte != EOF_OPCODE:
            raise errors.IntegrityError(
                f"{self.what} is truncated or corrupt: no EOF marker before the checksum"
            )
        stored = int.from_bytes(self._tail, "little")
        if stored == 0:
            status = CHECKSUM_DISABLED
        elif stored != self._crc:
            raise errors.IntegrityError(
                f"{self.what} is corrupt: CRC-64 {self._crc:016x} does not match "
                f"the stored {stored:016x}"
            )
        else:
            status = CHECKSUM_OK
        self.info = RdbInfo(
            version=self.version, size=self.size, checksum=status, crc64=f"{stored:016x}"
        )
        return self.info


def checked(chunks: Iterable[bytes], check: RdbCheck) -> Iterator[bytes]:
    """Pass `chunks` through, feeding `check`; `check.finish()` runs after the last chunk.

    A consumer therefore sees the IntegrityError when it asks for the end of the
    stream, before it can treat the data as complete.
    """
    for chunk in chunks:
        check.feed(chunk)
        yield chunk
    check.finish()
