"""The streaming pipeline: compress -> encrypt on the way in, decrypt -> decompress out.

Each stage is a generator over byte chunks, so a dump flows through to the storage
upload without ever being held whole in memory or written to a temp file.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from tonebridge_dr.runner.codecs import compression as _codecs
from tonebridge_dr.runner.codecs import encryption

#: Extension of an OpenPGP-encrypted object, after the compression extension.
ENCRYPTED_EXTENSION = ".gpg"


def encode(
    chunks: Iterable[bytes],
    *,
    compression: str = _codecs.DEFAULT,
    encrypt_to: Path | None = None,
    level: int | None = None,
) -> Iterator[bytes]:
    """Compress `chunks` with the named codec, then encrypt to `encrypt_to` when given.

    The codec name, level and key file are checked now, before any data is read.
    """
    codec = _codecs.get(compression)
    if level is not None:
        codec._level(level)  # validate eagerly: UsageError now, not mid-backup
    stream = codec.compress(chunks, level)
    if encrypt_to is not None:
        stream = encryption.encrypt(stream, encrypt_to)
    return stream


def decode(
    chunks: Iterable[bytes],
    *,
    compression: str,
    encrypted: bool,
    decrypt_key: Path | None = None,
    passphrase: str | None = None,
    recipient: str | None = None,
) -> Iterator[bytes]:
    """Undo `encode`: decrypt (when `encrypted`) with `decrypt_key`, then decompress.

    Raises EncryptionError for a missing/wrong key and IntegrityError for corrupt or
    truncated data (possibly after some chunks were yielded: consumers must treat the
    output as unverified until the generator ends cleanly). `recipient` (the
    fingerprint a manifest recorded) only improves the missing-key message.
    """
    codec = _codecs.get(compression)
    stream: Iterable[bytes] = chunks
    if encrypted:
        stream = encryption.decrypt(stream, decrypt_key, passphrase, recipient=recipient)
    return codec.decompress(stream)


def object_extension(compression: str, encrypted: bool) -> str:
    """Object-key suffix for the combination, e.g. ".zst", ".zst.gpg", "" or ".gpg"."""
    return _codecs.get(compression).extension + (ENCRYPTED_EXTENSION if encrypted else "")
