"""The compression registry: one `Codec` per algorithm, found by name or by magic bytes.

Every codec streams: `compress` and `decompress` take an iterable of byte chunks and
yield byte chunks, holding at most a bounded window in memory, whatever the chunking
or the compression ratio of the input. Decompression is strict: corrupt input, a
stream that ends in the middle of a frame/member, or garbage after the last one raises
`IntegrityError`, so a damaged backup is never restored as silently shorter data.
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from collections.abc import Iterable, Iterator
from typing import IO, cast

import zstandard

from tonebridge_dr.runner import errors

#: Upper bound of one decompressed chunk handed downstream.
OUTPUT_CHUNK_SIZE = 1024 * 1024

DEFAULT = "zstd"


@dataclasses.dataclass(frozen=True)
class Codec:
    """A compression algorithm: its registry name, object-key extension and magic bytes.

    `extension` includes the dot (".zst") or is "" for `none`. `magic` is empty when the
    format has none (only `none`).
    """

    name: str
    extension: str
    magic: bytes
    default_level: int | None = None
    min_level: int | None = None
    max_level: int | None = None

    def compress(self, chunks: Iterable[bytes], level: int | None = None) -> Iterator[bytes]:
        """Yield the compressed form of the concatenated `chunks`."""
        raise NotImplementedError

    def decompress(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """Yield the original bytes; IntegrityError on corrupt or truncated input."""
        raise NotImplementedError

    def _level(self, level: int | None) -> int:
        if level is None:
            assert self.default_level is not None
            return self.default_level
        assert self.min_level is not None and self.max_level is not None
        if not self.min_level <= level <= self.max_level:
            raise errors.UsageError(
                f"{self.name} compression level must be between {self.min_level} and "
                f"{self.max_level}, got {level}"
            )
        return level


@dataclasses.dataclass(frozen=True)
class NoCompression(Codec):
    def compress(self, chunks: Iterable[bytes], level: int | None = None) -> Iterator[bytes]:
        for chunk in chunks:
            if chunk:
                yield bytes(chunk)

    def decompress(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        return self.compress(chunks)


def _threads() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 4))


class _IterReader:
    """A read(n) file object over an iterator of chunks, reporting every byte it hands out."""

    def __init__(self, chunks: Iterable[bytes], observe: _ZstdFrameTracker) -> None:
        self._it = iter(chunks)
        self._buf = b""
        self._pos = 0
        self._observe = observe
        self.total = 0

    def read(self, size: int = -1) -> bytes:
        while self._pos >= len(self._buf):
            try:
                self._buf = bytes(next(self._it))
            except StopIteration:
                return b""
            self._pos = 0
        end = len(self._buf) if size < 0 else self._pos + size
        out = self._buf[self._pos : end]
        self._pos += len(out)
        self._observe.feed(out)
        self.total += len(out)
        return out


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class _ZstdFrameTracker:
    """Follows the zstd frame/block structure (RFC 8878) of the compressed bytes.

    python-zstandard's streaming readers stop quietly when input ends mid-frame; this
    walks headers only (a few bytes per 128 KiB block) so the end of input can be
    checked to fall exactly on a frame boundary.
    """

    _MAGIC, _SKIP_SIZE, _FRAME_HEADER, _BLOCK_HEADER = range(4)

    def __init__(self) -> None:
        self._state = self._MAGIC
        self._need = 4  # header bytes still to collect for the current state
        self._acc = b""
        self._skip = 0  # payload bytes to pass over before the next header
        self._after_skip = self._MAGIC
        self._last_block = False
        self._checksum = False
        self.frames = 0

    def feed(self, data: bytes) -> None:
        pos, n = 0, len(data)
        while pos < n:
            if self._skip:
                step = min(self._skip, n - pos)
                self._skip -= step
                pos += step
                continue
            take = min(self._need - len(self._acc), n - pos)
            self._acc += data[pos : pos + take]
            pos += take
            if len(self._acc) == self._need:
                header, self._acc = self._acc, b""
                self._on_header(header)

    def _on_header(self, header: bytes) -> None:
        if self._state == self._MAGIC:
            if header == _ZSTD_MAGIC:
                self._state, self._need = self._FRAME_HEADER, 1
            elif 0x184D2A50 <= int.from_bytes(header, "little") <= 0x184D2A5F:
                self._state, self._need = self._SKIP_SIZE, 4
            else:
                raise errors.IntegrityError(
                    "zstd data is corrupt: unexpected bytes where a frame should start"
                )
        elif self._state == self._SKIP_SIZE:
            self._skip = int.from_bytes(header, "little")
            self._state, self._need = self._MAGIC, 4
        elif self._state == self._FRAME_HEADER:
            descriptor = header[0]
            if descriptor & 0x08:
                raise errors.IntegrityError("zstd data is corrupt: invalid frame header")
            fcs_flag = descriptor >> 6
            single_segment = bool(descriptor & 0x20)
            self._checksum = bool(descriptor & 0x04)
            dict_id_size = (0, 1, 2, 4)[descriptor & 0x03]
            fcs_size = ((1 if single_segment else 0), 2, 4, 8)[fcs_flag]
            self._skip = (0 if single_segment else 1) + dict_id_size + fcs_size
            self._state, self._need = self._BLOCK_HEADER, 3
        else:  # block header
            value = int.from_bytes(header, "little")
            block_type = (value >> 1) & 0x03
            if block_type == 3:
                raise errors.IntegrityError("zstd data is corrupt: reserved block type")
            size = value >> 3
            self._skip = 1 if block_type == 1 else size
            if value & 0x01:  # last block of the frame
                self._skip += 4 if self._checksum else 0
                self._state, self._need = self._MAGIC, 4
                self.frames += 1

    @property
    def at_boundary(self) -> bool:
        return self._state == self._MAGIC and not self._acc and not self._skip


@dataclasses.dataclass(frozen=True)
class ZstdCodec(Codec):
    def compress(self, chunks: Iterable[bytes], level: int | None = None) -> Iterator[bytes]:
        cctx = zstandard.ZstdCompressor(
            level=self._level(level), threads=_threads(), write_checksum=True
        )
        cobj = cctx.compressobj()
        for chunk in chunks:
            if chunk:
                out = cobj.compress(chunk)
                if out:
                    yield out
        tail = cobj.flush()
        if tail:
            yield tail

    def decompress(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        tracker = _ZstdFrameTracker()
        source = _IterReader(chunks, tracker)
        reader = zstandard.ZstdDecompressor().stream_reader(
            cast(IO[bytes], source), read_size=OUTPUT_CHUNK_SIZE // 4, read_across_frames=True
        )
        try:
            while True:
                out = reader.read(OUTPUT_CHUNK_SIZE)
                if not out:
                    break
                yield out
        except zstandard.ZstdError as exc:
            detail = str(exc).removeprefix("zstd decompress error: ")
            raise errors.IntegrityError(f"zstd data is corrupt: {detail}") from None
        # Drain whatever the decoder did not need (it must be nothing but complete frames).
        while source.read(OUTPUT_CHUNK_SIZE):
            pass
        if source.total == 0:
            raise errors.IntegrityError("zstd data is empty: the object is truncated")
        if not tracker.at_boundary:
            raise errors.IntegrityError(
                "zstd data is truncated: the stream ends in the middle of a frame"
            )


@dataclasses.dataclass(frozen=True)
class GzipCodec(Codec):
    def compress(self, chunks: Iterable[bytes], level: int | None = None) -> Iterator[bytes]:
        cobj = zlib.compressobj(self._level(level), zlib.DEFLATED, 31)
        for chunk in chunks:
            if chunk:
                out = cobj.compress(chunk)
                if out:
                    yield out
        yield cobj.flush()

    def decompress(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        dobj = zlib.decompressobj(31)
        started = False  # inside a member: some of its bytes were fed
        members = 0
        try:
            for chunk in chunks:
                data = bytes(chunk)
                if not data:
                    continue
                while True:
                    started = started or bool(data)
                    # max_length bounds the output of one call, whatever the ratio.
                    out = dobj.decompress(data, OUTPUT_CHUNK_SIZE)
                    if out:
                        yield out
                    if dobj.eof:
                        members += 1
                        data = dobj.unused_data
                        dobj = zlib.decompressobj(31)
                        started = False
                        if not data:
                            break
                        continue
                    data = dobj.unconsumed_tail
                    # A full output buffer may leave output pending inside zlib: go again.
                    if not data and len(out) < OUTPUT_CHUNK_SIZE:
                        break
        except zlib.error as exc:
            raise errors.IntegrityError(f"gzip data is corrupt: {exc}") from None
        if started:
            raise errors.IntegrityError(
                "gzip data is truncated: the stream ends in the middle of a member"
            )
        if members == 0:
            raise errors.IntegrityError("gzip data is empty: the object is truncated")


REGISTRY: dict[str, Codec] = {
    codec.name: codec
    for codec in (
        ZstdCodec("zstd", ".zst", _ZSTD_MAGIC, default_level=3, min_level=-7, max_level=22),
        GzipCodec("gzip", ".gz", b"\x1f\x8b", default_level=6, min_level=0, max_level=9),
        NoCompression("none", "", b""),
    )
}


def get(name: str) -> Codec:
    """The codec registered as `name`; UsageError naming the valid ones otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        valid = ", ".join(sorted(REGISTRY))
        raise errors.UsageError(f"unknown compression {name!r}: use one of {valid}") from None


def detect(head: bytes) -> Codec:
    """The codec whose magic bytes start `head`; the `none` codec when nothing matches."""
    for codec in REGISTRY.values():
        if codec.magic and head.startswith(codec.magic):
            return codec
    return REGISTRY["none"]
