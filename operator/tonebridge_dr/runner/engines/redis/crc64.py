"""CRC-64/Jones as Redis computes it (RDB trailers, DUMP payloads).

Parameters (RevEng "CRC-64/REDIS"): poly 0xad93d23594c935a9, reflected in and
out, init 0, xorout 0; the check value of b"123456789" is 0xe9c6d914c4b8d9ca.

`update(crc, data)` is incremental: `update(update(0, a), b) == update(0, a + b)`.
The fast path is `anycrc` (a C implementation, ~10 GB/s, so the check costs
nothing next to the network); a table-driven pure-Python fallback keeps the
engine working where that wheel is missing, at ~10 MB/s.
"""

from __future__ import annotations

from collections.abc import Callable

POLY_REFLECTED = 0x95AC9329AC4BC9B5  # bit-reversed 0xad93d23594c935a9
CHECK_VALUE = 0xE9C6D914C4B8D9CA

Buffer = bytes | bytearray | memoryview


def _make_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ POLY_REFLECTED if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _make_table()


def update_pure(crc: int, data: Buffer) -> int:
    """The reference implementation (slow; used for tests and as a fallback)."""
    table = _TABLE
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


def _fast_update() -> Callable[[int, Buffer], int] | None:
    try:
        import anycrc
    except ImportError:  # pragma: no cover - anycrc is a declared dependency
        return None
    model = anycrc.Model("CRC64-REDIS")

    def update(crc: int, data: Buffer) -> int:
        return int(model.calc(data, crc))

    return update


_fast = _fast_update()

#: True when the C implementation is in use.
FAST = _fast is not None


def update(crc: int, data: Buffer) -> int:
    """Continue the checksum `crc` over `data` (start with 0)."""
    if _fast is not None:
        return _fast(crc, data)
    return update_pure(crc, data)  # pragma: no cover
