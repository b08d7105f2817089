"""The tar indexer of incremental backups (pure: tar streams built in memory)."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator

import pytest

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.postgres import incremental

CHUNK = 4096


def make_tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        dirs = sorted({name.rsplit("/", 1)[0] for name in files if "/" in name})
        for folder in dirs:
            info = tarfile.TarInfo(folder)
            info.type = tarfile.DIRTYPE
            info.mode = 0o700
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o600
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def pieces(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def blob(seed: int, size: int) -> bytes:
    out = b""
    while len(out) < size:
        out += hashlib.sha256(f"{seed}-{len(out)}".encode()).digest()
    return out[:size]


FILES = {
    "backup_label": b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n",
    "base/1/1259": blob(1, 3 * CHUNK + 100),
    "base/1/empty": b"",
    "global/pg_control": blob(2, 8192),
}


@pytest.mark.parametrize("feed", [1, 511, 512, 4096, 100_000])
def test_a_full_backup_passes_every_byte_and_indexes_offsets_into_it(feed: int) -> None:
    tar = make_tar(FILES)
    indexer = incremental.TarIndexer(pieces(tar, feed), "full", None, chunk_size=CHUNK)
    assert b"".join(indexer) == tar
    files = {entry.path: entry for entry in indexer.files}
    assert files["base/1"].type == "dir" and files["base/1"].mode == 0o700
    assert indexer.label == FILES["backup_label"].decode()
    for name, data in FILES.items():
        entry = files[name]
        assert entry.size == len(data) and entry.mtime == 1_700_000_000
        lengths = list(incremental.chunk_lengths(len(data), CHUNK))
        assert len(entry.chunks) == len(lengths)
        rebuilt = b""
        for (sha, source, offset), length in zip(entry.chunks, lengths, strict=True):
            assert source == "full"
            piece = tar[offset : offset + length]
            assert hashlib.sha256(piece).hexdigest() == sha
            rebuilt += piece
        assert rebuilt == data


def test_an_incremental_emits_only_new_chunks_and_references_the_rest() -> None:
    full = incremental.TarIndexer(pieces(make_tar(FILES), 700), "full", None, chunk_size=CHUNK)
    b"".join(full)
    known = incremental.Index("full", CHUNK, full.files).known_chunks()
    changed = dict(FILES)
    data = bytearray(FILES["base/1/1259"])
    data[CHUNK + 5] ^= 0xFF  # the second chunk changes
    changed["base/1/1259"] = bytes(data)
    changed["base/1/new"] = blob(3, 10)
    inc = incremental.TarIndexer(pieces(make_tar(changed), 333), "inc", known, chunk_size=CHUNK)
    emitted = b"".join(inc)
    assert emitted == bytes(data[CHUNK : 2 * CHUNK]) + changed["base/1/new"]
    files = {entry.path: entry for entry in inc.files}
    assert [ref[1] for ref in files["base/1/1259"].chunks] == ["full", "inc", "full", "full"]
    assert files["base/1/new"].chunks[0][1:] == ["inc", CHUNK]
    assert inc.stored_chunks == 2 and inc.reused_chunks == 6
    index = incremental.Index("inc", CHUNK, inc.files)
    assert incremental.Index.from_json(index.to_json()) == index
    assert index.referenced_backups() == {"full", "inc"}


def test_a_truncated_stream_is_an_error() -> None:
    tar = make_tar(FILES)
    with pytest.raises(errors.ToolError, match="middle of a member"):
        b"".join(incremental.TarIndexer(pieces(tar[:1500], 512), "x", None, chunk_size=CHUNK))


def test_an_unreadable_index_is_an_integrity_error() -> None:
    with pytest.raises(errors.IntegrityError):
        incremental.Index.from_json(b'{"format": 99}')
