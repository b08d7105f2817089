"""Codecs: the compression registry, OpenPGP via the real gpg, and the pipeline."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import os
import random
import tempfile
import tracemalloc
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures.gpg import GpgKeys
from tonebridge_dr.runner import errors
from tonebridge_dr.runner.codecs import compression, encryption, pipeline

CODECS = sorted(compression.REGISTRY)
COMPRESSING = [name for name in CODECS if name != "none"]

hypothesis_settings = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _data(size: int, seed: int = 11) -> bytes:
    rng = random.Random(seed)
    # Half random, half repetitive: both the entropy coder and long matches get used.
    return rng.randbytes(size // 2) + bytes(rng.choice(b"abc\0") for _ in range(size - size // 2))


def _split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def _compress(name: str, data: bytes, level: int | None = None) -> bytes:
    return b"".join(compression.get(name).compress([data], level))


def _decompress(name: str, data: bytes) -> bytes:
    return b"".join(compression.get(name).decompress([data]))


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(cmdline)
    return found


# -- registry -----------------------------------------------------------------------


def test_registry_names_extensions_and_magic() -> None:
    assert set(compression.REGISTRY) == {"zstd", "gzip", "none"}
    assert compression.get("zstd").extension == ".zst"
    assert compression.get("gzip").extension == ".gz"
    assert compression.get("none").extension == ""
    assert compression.DEFAULT == "zstd"


def test_unknown_codec_lists_valid_names() -> None:
    with pytest.raises(errors.UsageError, match="unknown compression 'lz4': use one of gzip"):
        compression.get("lz4")


@pytest.mark.parametrize("name", CODECS)
def test_detect_by_magic(name: str) -> None:
    assert compression.detect(_compress(name, b"hello world" * 10)).name == name


@pytest.mark.parametrize("head", [b"", b"\x28\xb5", b"plain text", b"\x1f"])
def test_detect_falls_back_to_none(head: bytes) -> None:
    assert compression.detect(head).name == "none"


@pytest.mark.parametrize(("name", "level"), [("zstd", 23), ("zstd", -100), ("gzip", 10)])
def test_invalid_level(name: str, level: int) -> None:
    with pytest.raises(errors.UsageError, match="level must be between"):
        _compress(name, b"x", level)


# -- round trips --------------------------------------------------------------------


@pytest.mark.parametrize("name", CODECS)
@hypothesis_settings
@given(
    chunks=st.lists(st.binary(max_size=3000), max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=12),
)
def test_round_trip_any_chunking(name: str, chunks: list[bytes], cuts: list[int]) -> None:
    codec = compression.get(name)
    data = b"".join(chunks)
    packed = b"".join(codec.compress(chunks))
    assert b"".join(codec.decompress(_split(packed, cuts))) == data


@pytest.mark.parametrize(
    ("name", "level"), [("zstd", 1), ("zstd", 19), ("zstd", -5), ("gzip", 1), ("gzip", 9)]
)
def test_round_trip_levels(name: str, level: int) -> None:
    data = _data(300_000)
    assert _decompress(name, _compress(name, data, level)) == data


@pytest.mark.parametrize("name", CODECS)
def test_empty_stream(name: str) -> None:
    codec = compression.get(name)
    assert b"".join(codec.decompress(codec.compress([]))) == b""


def test_output_interoperates_with_standard_tools() -> None:
    data = _data(200_000)
    assert zstandard.ZstdDecompressor().decompressobj().decompress(_compress("zstd", data)) == data
    assert gzip.decompress(_compress("gzip", data)) == data
    # Concatenated gzip members / zstd frames are one stream, as with the CLI tools.
    assert _decompress("gzip", gzip.compress(b"ab") + gzip.compress(b"cd")) == b"abcd"
    two_frames = zstandard.ZstdCompressor().compress(b"ab") + _compress("zstd", b"cd")
    assert _decompress("zstd", two_frames) == b"abcd"


def test_decompression_output_is_bounded_per_chunk() -> None:
    """A tiny input that expands hugely still comes out in bounded chunks."""
    for name in COMPRESSING:
        packed = _compress(name, bytes(64 * 1024 * 1024))
        assert len(packed) < 1024 * 1024
        sizes = [len(c) for c in compression.get(name).decompress([packed])]
        assert sum(sizes) == 64 * 1024 * 1024
        assert max(sizes) <= compression.OUTPUT_CHUNK_SIZE


# -- damage is detected -------------------------------------------------------------


@pytest.mark.parametrize("name", COMPRESSING)
def test_every_truncation_is_detected(name: str) -> None:
    packed = _compress(name, _data(50_000))
    step = max(1, len(packed) // 300)
    for cut in [*range(0, len(packed), step), len(packed) - 1, len(packed) - 4]:
        with pytest.raises(errors.IntegrityError, match=r"truncated|empty"):
            _decompress(name, packed[:cut])


@pytest.mark.parametrize("name", COMPRESSING)
@hypothesis_settings
@given(position=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
def test_corruption_never_yields_wrong_data(name: str, position: int, flip: int) -> None:
    data = _data(20_000)
    packed = bytearray(_compress(name, data))
    packed[position % len(packed)] ^= flip
    try:
        out = _decompress(name, bytes(packed))
    except errors.IntegrityError:
        return
    assert out == data  # only header bits that do not matter (e.g. gzip mtime) may change


@pytest.mark.parametrize("name", COMPRESSING)
def test_trailing_garbage_is_detected(name: str) -> None:
    packed = _compress(name, b"payload" * 100)
    with pytest.raises(errors.IntegrityError):
        _decompress(name, packed + b"\x00garbage")


@pytest.mark.parametrize("name", COMPRESSING)
def test_not_compressed_at_all(name: str) -> None:
    with pytest.raises(errors.IntegrityError, match=r"corrupt|truncated"):
        _decompress(name, b"this was never compressed, it is a plain text file\n" * 5)


# -- OpenPGP ------------------------------------------------------------------------


def test_recipient_fingerprint(gpg_keys: GpgKeys, other_gpg_keys: GpgKeys) -> None:
    assert encryption.recipient_fingerprint(gpg_keys.public_key) == gpg_keys.fingerprint
    assert gpg_keys.fingerprint != other_gpg_keys.fingerprint
    assert len(gpg_keys.fingerprint) == 40


def test_two_keys_in_one_file_are_refused(
    gpg_keys: GpgKeys, other_gpg_keys: GpgKeys, tmp_path: Path
) -> None:
    both = tmp_path / "both.asc"
    both.write_bytes(gpg_keys.public_key.read_bytes() + other_gpg_keys.public_key.read_bytes())
    with pytest.raises(errors.EncryptionError, match="holds 2 keys"):
        encryption.recipient_fingerprint(both)


def test_bad_public_key_files(tmp_path: Path) -> None:
    with pytest.raises(errors.EncryptionError, match="does not exist"):
        encryption.encrypt([b"x"], tmp_path / "missing.asc")  # eager: before any data
    junk = tmp_path / "junk.asc"
    junk.write_text("not a key\n")
    with pytest.raises(errors.EncryptionError, match="holds no OpenPGP key"):
        encryption.encrypt([b"x"], junk)


@pytest.mark.parametrize("size", [0, 1, 100_000, 3 * 1024 * 1024 + 5])
def test_gpg_round_trip(gpg_keys: GpgKeys, size: int) -> None:
    data = _data(size)
    chunks = _split(data, range(0, size, 70_001))
    sealed = b"".join(encryption.encrypt(chunks, gpg_keys.public_key))
    assert encryption.is_encrypted(sealed)
    opened = encryption.decrypt(_split(sealed, [5, 99, 4096]), gpg_keys.private_key)
    assert b"".join(opened) == data


def test_ciphertext_hides_the_plaintext(gpg_keys: GpgKeys) -> None:
    marker = b"CREATE TABLE customers (credit_card text);"
    sealed = b"".join(encryption.encrypt([marker * 1000], gpg_keys.public_key))
    assert marker not in sealed and b"customers" not in sealed
    # --compress-algo none: the ciphertext is about as long as the plaintext
    assert len(marker) * 1000 <= len(sealed) < len(marker) * 1000 + 2048


def test_is_encrypted(gpg_keys: GpgKeys) -> None:
    sealed = b"".join(encryption.encrypt([b"x"], gpg_keys.public_key))
    assert encryption.is_encrypted(sealed[:16])
    assert encryption.is_encrypted(b"-----BEGIN PGP MESSAGE-----\n\nhQEM")
    for head in (b"", b"\x85", _compress("zstd", b"x"), _compress("gzip", b"x"), b"PGDMP"):
        assert not encryption.is_encrypted(head)
    public_key_packet = b"\x99\x01\x0d\x04"  # a key, not a message
    assert not encryption.is_encrypted(public_key_packet)


def test_decrypt_without_key_names_the_recipient(gpg_keys: GpgKeys) -> None:
    sealed = b"".join(encryption.encrypt([b"data"], gpg_keys.public_key))
    key_ids = encryption.recipient_key_ids(sealed)
    assert len(key_ids) == 1 and len(key_ids[0]) == 16
    with pytest.raises(errors.EncryptionError, match=f"no decryption key given.*{key_ids[0]}"):
        b"".join(encryption.decrypt([sealed], None))
    with pytest.raises(
        errors.EncryptionError,
        match=f"^no decryption key given: this backup is encrypted to {gpg_keys.fingerprint}$",
    ):
        b"".join(encryption.decrypt([sealed], None, recipient=gpg_keys.fingerprint))


def test_decrypt_with_the_wrong_key(gpg_keys: GpgKeys, other_gpg_keys: GpgKeys) -> None:
    sealed = b"".join(encryption.encrypt([b"data"], gpg_keys.public_key))
    with pytest.raises(errors.EncryptionError, match="does not match: this backup is encrypted"):
        b"".join(encryption.decrypt([sealed], other_gpg_keys.private_key))


def test_decrypt_with_a_public_key_only(gpg_keys: GpgKeys) -> None:
    sealed = b"".join(encryption.encrypt([b"data"], gpg_keys.public_key))
    with pytest.raises(errors.EncryptionError, match="holds no private key"):
        b"".join(encryption.decrypt([sealed], gpg_keys.public_key))


def test_decrypt_with_a_missing_key_file(gpg_keys: GpgKeys, tmp_path: Path) -> None:
    with pytest.raises(errors.EncryptionError, match=r"key file .* does not exist"):
        encryption.decrypt([b"x"], tmp_path / "nope.asc")  # eager


def test_passphrase_protected_key(passphrase_gpg_keys: GpgKeys) -> None:
    keys = passphrase_gpg_keys
    assert keys.passphrase
    sealed = b"".join(encryption.encrypt([b"guarded data"], keys.public_key))
    opened = encryption.decrypt([sealed], keys.private_key, keys.passphrase)
    assert b"".join(opened) == b"guarded data"
    with pytest.raises(errors.EncryptionError, match="protected by a passphrase and none") as e1:
        b"".join(encryption.decrypt([sealed], keys.private_key))
    with pytest.raises(errors.EncryptionError, match="wrong passphrase") as e2:
        b"".join(encryption.decrypt([sealed], keys.private_key, "not it"))
    for caught in (e1, e2):
        assert keys.passphrase not in str(caught.value)
        assert "not it" not in str(caught.value)


def test_damaged_ciphertext_fails(gpg_keys: GpgKeys) -> None:
    sealed = b"".join(encryption.encrypt([_data(100_000)], gpg_keys.public_key))
    with pytest.raises(errors.EncryptionError, match="gpg could not decrypt"):
        b"".join(encryption.decrypt([sealed[:-50]], gpg_keys.private_key))
    with pytest.raises(errors.EncryptionError, match="gpg could not decrypt"):
        b"".join(encryption.decrypt([b"\x85\x01\x0c\x03" + b"\0" * 300], gpg_keys.private_key))


@pytest.mark.parametrize("failure", [errors.SourceError, ValueError, BrokenPipeError])
def test_failing_input_propagates_and_leaves_nothing(
    gpg_keys: GpgKeys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: type[Exception]
) -> None:
    """The input's own error comes out (even one that looks like a pipe error), never a
    well-formed message of the data read so far."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))

    def chunks() -> Iterator[bytes]:
        yield b"a" * 100_000
        raise failure("pg_dump died")

    out: list[bytes] = []
    with pytest.raises(failure, match="pg_dump died"):
        out.extend(encryption.encrypt(chunks(), gpg_keys.public_key))
    assert list(scratch.iterdir()) == []
    with pytest.raises(errors.EncryptionError):  # whatever got out is no complete message
        b"".join(encryption.decrypt([b"".join(out)], gpg_keys.private_key))


def _endless(closed: list[bool]) -> Iterator[bytes]:
    block = os.urandom(256 * 1024)
    try:
        while True:
            yield block
    finally:
        closed.append(True)


def test_early_close_of_encrypt_cleans_up(
    gpg_keys: GpgKeys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    closed: list[bool] = []
    stream = encryption.encrypt(_endless(closed), gpg_keys.public_key)
    assert next(stream)
    (home,) = list(scratch.iterdir())
    assert _processes_mentioning(str(home))  # gpg is running on it now
    stream.close()
    assert list(scratch.iterdir()) == []
    assert _processes_mentioning(str(home)) == []
    assert closed == [True]


def test_early_close_of_decrypt_cleans_up(
    gpg_keys: GpgKeys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sealed = b"".join(encryption.encrypt([_data(4 * 1024 * 1024)], gpg_keys.public_key))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    stream = encryption.decrypt(_split(sealed, range(0, len(sealed), 65536)), gpg_keys.private_key)
    assert next(stream)
    (home,) = list(scratch.iterdir())
    assert _processes_mentioning(str(home))  # gpg (and its agent) are running
    stream.close()
    assert list(scratch.iterdir()) == []
    assert _processes_mentioning(str(home)) == []  # the agent too


def test_stderr_is_sanitized() -> None:
    noisy = b'gpg: first\n  "Some User <u@x>"\ngpg: decryption failed: \x1b[31mbad\xff' + b"x" * 500
    line = encryption._sanitize(noisy)
    assert line.startswith("decryption failed: ?[31mbad")
    assert len(line) <= 200 and "\x1b" not in line
    assert encryption._sanitize(b"") == "no error message"


# -- pipeline -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "encrypted", "extension"),
    [
        ("zstd", False, ".zst"),
        ("zstd", True, ".zst.gpg"),
        ("gzip", False, ".gz"),
        ("gzip", True, ".gz.gpg"),
        ("none", False, ""),
        ("none", True, ".gpg"),
    ],
)
def test_object_extension(name: str, encrypted: bool, extension: str) -> None:
    assert pipeline.object_extension(name, encrypted) == extension


def test_pipeline_rejects_bad_arguments_eagerly(tmp_path: Path) -> None:
    with pytest.raises(errors.UsageError):
        pipeline.object_extension("brotli", False)
    with pytest.raises(errors.UsageError):
        pipeline.encode([b"x"], compression="brotli")
    with pytest.raises(errors.UsageError, match="level"):
        pipeline.encode([b"x"], level=99)
    with pytest.raises(errors.EncryptionError):
        pipeline.encode([b"x"], encrypt_to=tmp_path / "absent.asc")
    with pytest.raises(errors.UsageError):
        pipeline.decode([b"x"], compression="brotli", encrypted=False)


@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "gpg"])
def test_pipeline_round_trip(gpg_keys: GpgKeys, name: str, encrypted: bool) -> None:
    data = _data(1_000_000)
    key = gpg_keys.public_key if encrypted else None
    stored = b"".join(
        pipeline.encode(_split(data, [1, 4096, 500_000]), compression=name, encrypt_to=key)
    )
    assert encryption.is_encrypted(stored) is encrypted
    if not encrypted:
        assert compression.detect(stored).name == name
    restored = pipeline.decode(
        _split(stored, [3, 65536]),
        compression=name,
        encrypted=encrypted,
        decrypt_key=gpg_keys.private_key if encrypted else None,
    )
    assert b"".join(restored) == data


def test_pipeline_encrypted_truncation_is_detected(gpg_keys: GpgKeys) -> None:
    stored = b"".join(pipeline.encode([_data(500_000)], encrypt_to=gpg_keys.public_key))
    with pytest.raises((errors.EncryptionError, errors.IntegrityError)):
        b"".join(
            pipeline.decode(
                [stored[: len(stored) // 2]],
                compression="zstd",
                encrypted=True,
                decrypt_key=gpg_keys.private_key,
            )
        )


def test_pipeline_missing_key_message(gpg_keys: GpgKeys) -> None:
    stored = b"".join(pipeline.encode([b"x"], encrypt_to=gpg_keys.public_key))
    with pytest.raises(errors.EncryptionError, match=gpg_keys.fingerprint):
        b"".join(
            pipeline.decode(
                [stored], compression="zstd", encrypted=True, recipient=gpg_keys.fingerprint
            )
        )


# -- memory -------------------------------------------------------------------------

STREAM_SIZE = 200 * 1024 * 1024
CHUNK = 1024 * 1024


def _source(digest: hashlib._Hash) -> Iterator[bytes]:
    """200 MiB made on the fly: a fresh counter in every chunk keeps chunks distinct."""
    base = random.Random(5).randbytes(CHUNK)
    for n in range(STREAM_SIZE // CHUNK):
        chunk = n.to_bytes(8, "big") + base[8:]
        digest.update(chunk)
        yield chunk


@pytest.mark.parametrize("encrypted", [False, True], ids=["zstd", "zstd+gpg"])
def test_pipeline_streams_in_bounded_memory(gpg_keys: GpgKeys, encrypted: bool) -> None:
    source_digest = hashlib.sha256()
    sink_digest = hashlib.sha256()
    total = 0
    tracemalloc.start()
    try:
        stored = pipeline.encode(
            _source(source_digest), encrypt_to=gpg_keys.public_key if encrypted else None
        )
        restored = pipeline.decode(
            stored,
            compression="zstd",
            encrypted=encrypted,
            decrypt_key=gpg_keys.private_key if encrypted else None,
        )
        for chunk in restored:
            sink_digest.update(chunk)
            total += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == STREAM_SIZE
    assert sink_digest.digest() == source_digest.digest()
    assert peak < 32 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB held for a 200 MiB stream"
