"""Client-side OpenPGP encryption through the real `gpg` binary, streaming.

Backups are encrypted to a public key, so the backup side can never decrypt what it
wrote; only a restore given the private key can. Every call works in a throwaway
GNUPGHOME (a fresh temp folder holding only the given key), so the user's keyrings,
gpg.conf and agents are never touched, and the folder plus any gpg-agent started
for it are removed afterwards, also when the caller stops reading early.

Data never touches the disk: gpg reads stdin (fed from a thread) and its stdout is
yielded in chunks. Passphrases go through an inherited pipe (`--passphrase-fd`),
never the command line or the environment. Error messages carry at most gpg's last
stderr line, sanitized.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, cast

from tonebridge_dr.runner import errors

#: What encrypt/decrypt return: a generator, so a reader that stops early can `close()`
#: it and have gpg killed and its home removed at once.
Stream = Generator[bytes, None, None]

#: Environment variable naming the gpg binary (default: `gpg` on PATH).
GPG_ENV = "TONEBRIDGE_DR_GPG"

CHUNK_SIZE = 1024 * 1024
_IMPORT_TIMEOUT = 60.0
_JOIN_TIMEOUT = 10.0
_HEAD_SIZE = 64 * 1024  # enough for the session-key packets of any sane recipient list

_ARMOR_HEADER = b"-----BEGIN PGP MESSAGE-----"
_WILDCARD_KEY_ID = "0000000000000000"


def _gpg() -> str:
    return os.environ.get(GPG_ENV) or "gpg"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPG_", "GNUPG"))}
    env["LC_ALL"] = "C"  # stable English messages to recognise
    return env


def _sanitize(stderr: bytes) -> str:
    """gpg's last meaningful stderr line, printable ASCII only, without the `gpg: ` prefix."""
    lines = [
        line.strip()
        for line in stderr.decode("utf-8", "replace").splitlines()
        if line.strip() and not line.strip().startswith('"')
    ]
    if not lines:
        return "no error message"
    last = lines[-1].removeprefix("gpg: ")
    last = "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in last)
    return last[:200]


class _Home:
    """A throwaway GNUPGHOME; `close()` stops its agent and removes it."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="tbdr-gpg-"))
        self.path.chmod(0o700)
        self.agent = False

    def args(self, *, agent: bool = False, quiet: bool = True) -> list[str]:
        base = [_gpg(), "--homedir", str(self.path), "--batch", "--no-tty"]
        base += ["--no-options", "--no-permission-warning", "--no-auto-key-locate"]
        if quiet:
            base.append("--quiet")
        if agent:
            self.agent = True
            return [*base, "--pinentry-mode", "loopback"]
        return [*base, "--no-autostart"]

    def run(self, args: Sequence[str], *, what: str) -> subprocess.CompletedProcess[bytes]:
        try:
            return subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                env=_env(),
                timeout=_IMPORT_TIMEOUT,
                check=False,
            )
        except FileNotFoundError:
            raise errors.EncryptionError(
                f"cannot {what}: the gpg binary {args[0]!r} is not installed"
            ) from None
        except subprocess.TimeoutExpired:
            raise errors.EncryptionError(f"cannot {what}: gpg did not answer in time") from None

    def close(self) -> None:
        if self.agent:
            for action in ("--kill", "--remove-socketdir"):
                cmd = ["gpgconf", "--homedir", str(self.path), action]
                if action == "--kill":
                    cmd.append("gpg-agent")
                with contextlib.suppress(OSError, subprocess.SubprocessError):
                    subprocess.run(
                        cmd,
                        stdin=subprocess.DEVNULL,
                        capture_output=True,
                        env=_env(),
                        timeout=_IMPORT_TIMEOUT,
                        check=False,
                    )
        shutil.rmtree(self.path, ignore_errors=True)


class _KeyInfo:
    def __init__(self, fingerprint: str, capabilities: str, secret: bool) -> None:
        self.fingerprint = fingerprint
        self.capabilities = capabilities
        self.secret = secret
        self.key_ids: list[str] = []


def _parse_colons(output: bytes) -> list[_KeyInfo]:
    """Keys (primary + subkey ids) from `gpg --with-colons` output."""
    keys: list[_KeyInfo] = []
    expect_primary_fpr = False
    for line in output.decode("utf-8", "replace").splitlines():
        fields = line.split(":")
        record = fields[0]
        if record in ("pub", "sec") and len(fields) > 11:
            keys.append(_KeyInfo("", fields[11], record == "sec"))
            keys[-1].key_ids.append(fields[4].upper())
            expect_primary_fpr = True
        elif record in ("sub", "ssb") and keys and len(fields) > 4:
            keys[-1].key_ids.append(fields[4].upper())
            expect_primary_fpr = False
        elif record == "fpr" and keys and expect_primary_fpr and len(fields) > 9:
            keys[-1].fingerprint = fields[9].upper()
            expect_primary_fpr = False
    return keys


def _show_keys(home: _Home, key_file: Path, *, what: str) -> list[_KeyInfo]:
    if not key_file.is_file():
        raise errors.EncryptionError(f"cannot {what}: key file {key_file} does not exist")
    result = home.run(
        [*home.args(), "--with-colons", "--import-options", "show-only", "--import", str(key_file)],
        what=what,
    )
    keys = _parse_colons(result.stdout)
    if not keys:
        raise errors.EncryptionError(
            f"cannot {what}: {key_file} holds no OpenPGP key ({_sanitize(result.stderr)})"
        )
    return keys


def _single_encryption_key(home: _Home, public_key_file: Path) -> str:
    keys = _show_keys(home, public_key_file, what="read the encryption key")
    if len(keys) != 1:
        raise errors.EncryptionError(
            f"{public_key_file} holds {len(keys)} keys: give exactly one public key to encrypt to"
        )
    key = keys[0]
    if "E" not in key.capabilities:
        raise errors.EncryptionError(
            f"key {key.fingerprint} in {public_key_file} has no usable encryption subkey"
        )
    return key.fingerprint


def recipient_fingerprint(public_key_file: Path) -> str:
    """The fingerprint of the one public key in `public_key_file` (what backups record)."""
    home = _Home()
    try:
        return _single_encryption_key(home, public_key_file)
    finally:
        home.close()


def encrypt(chunks: Iterable[bytes], public_key_file: Path) -> Stream:
    """Yield the OpenPGP message of `chunks` encrypted (AES256) to the key in the file.

    The key file is checked now, so a bad key fails before any data is read.
    """
    fingerprint = recipient_fingerprint(public_key_file)
    return _encrypt(chunks, public_key_file, fingerprint)


def _encrypt(chunks: Iterable[bytes], public_key_file: Path, fingerprint: str) -> Stream:
    home = _Home()
    try:
        result = home.run([*home.args(), "--import", str(public_key_file)], what="encrypt")
        if result.returncode != 0:
            raise errors.EncryptionError(
                f"cannot import the encryption key: {_sanitize(result.stderr)}"
            )
        args = [
            *home.args(),
            "--trust-model",
            "always",
            "--compress-algo",
            "none",  # the data is compressed before it gets here
            "--cipher-algo",
            "AES256",
            "--recipient",
            fingerprint,
            "--encrypt",
            "--output",
            "-",
        ]
        yield from _stream(args, chunks, what="encrypt", on_failure=_encrypt_failure)
    finally:
        home.close()


def _encrypt_failure(returncode: int, stderr: bytes) -> errors.DRError:
    return errors.EncryptionError(f"gpg could not encrypt the data: {_sanitize(stderr)}")


def decrypt(
    chunks: Iterable[bytes],
    private_key_file: Path | None,
    passphrase: str | None = None,
    *,
    recipient: str | None = None,
) -> Stream:
    """Yield the plaintext of the OpenPGP message in `chunks`.

    `recipient` (e.g. the fingerprint recorded in a manifest) only improves the error
    message when no or the wrong key is given; otherwise the message names the key IDs
    found in the ciphertext. An unreadable key file fails now, before any data is read.
    """
    if private_key_file is not None and not private_key_file.is_file():
        raise errors.EncryptionError(f"cannot decrypt: key file {private_key_file} does not exist")
    return _decrypt(chunks, private_key_file, passphrase, recipient)


def _decrypt(
    chunks: Iterable[bytes],
    private_key_file: Path | None,
    passphrase: str | None,
    recipient: str | None,
) -> Stream:
    head, rest = _peek(chunks, _HEAD_SIZE)
    key_ids = recipient_key_ids(head)
    target = recipient or ("key " + ", ".join(key_ids) if key_ids else "an unknown key")
    if private_key_file is None:
        raise errors.EncryptionError(
            f"no decryption key given: this backup is encrypted to {target}"
        )
    home = _Home()
    try:
        result = home.run(
            [*home.args(agent=True), "--import", str(private_key_file)], what="decrypt"
        )
        if result.returncode != 0:
            raise errors.EncryptionError(
                f"cannot import the decryption key {private_key_file}: {_sanitize(result.stderr)}"
            )
        listed = home.run(
            [*home.args(agent=True), "--with-colons", "--list-secret-keys"], what="decrypt"
        )
        secret_ids = {kid for key in _parse_colons(listed.stdout) for kid in key.key_ids}
        if not secret_ids:
            raise errors.EncryptionError(
                f"cannot decrypt: {private_key_file} holds no private key "
                f"(this backup is encrypted to {target})"
            )
        wanted = [kid for kid in key_ids if kid != _WILDCARD_KEY_ID]
        if wanted and not secret_ids.intersection(wanted):
            raise errors.EncryptionError(
                f"the decryption key in {private_key_file} does not match: "
                f"this backup is encrypted to {target}"
            )
        read_fd, write_fd = os.pipe()
        try:
            # The pipe buffer (64 KiB) holds any passphrase: write it all now.
            os.write(write_fd, (passphrase or "").encode() + b"\n")
        finally:
            os.close(write_fd)
        args = [
            # Not quiet: "Bad passphrase" is only reported in the verbose lines.
            *home.args(agent=True, quiet=False),
            "--passphrase-fd",
            str(read_fd),
            "--decrypt",
            "--output",
            "-",
        ]

        def failure(returncode: int, stderr: bytes) -> errors.DRError:
            text = stderr.decode("utf-8", "replace")
            if "Bad passphrase" in text or "No passphrase given" in text:
                if passphrase is None:
                    return errors.EncryptionError(
                        f"the decryption key in {private_key_file} is protected by a "
                        "passphrase and none was given"
                    )
                return errors.EncryptionError(
                    f"wrong passphrase for the decryption key in {private_key_file}"
                )
            if "No secret key" in text:
                return errors.EncryptionError(
                    f"the decryption key in {private_key_file} does not match: "
                    f"this backup is encrypted to {target}"
                )
            return errors.EncryptionError(f"gpg could not decrypt the data: {_sanitize(stderr)}")

        try:
            yield from _stream(args, rest, what="decrypt", on_failure=failure, pass_fds=(read_fd,))
        finally:
            with contextlib.suppress(OSError):
                os.close(read_fd)
    finally:
        home.close()


def _peek(chunks: Iterable[bytes], size: int) -> tuple[bytes, Iterator[bytes]]:
    """Read at least `size` bytes (or all) from `chunks`; return them and the whole stream."""
    it = iter(chunks)
    taken: list[bytes] = []
    have = 0
    for chunk in it:
        taken.append(chunk)
        have += len(chunk)
        if have >= size:
            break
    head = b"".join(taken)

    def whole() -> Iterator[bytes]:
        try:
            if head:
                yield head
            yield from it
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    return head, whole()


class _StderrTail(threading.Thread):
    """Keeps the last few KiB of a pipe so gpg never blocks on a full stderr."""

    def __init__(self, pipe: IO[bytes]) -> None:
        super().__init__(name="gpg-stderr", daemon=True)
        self._pipe = pipe
        self.data = b""

    def run(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            while chunk := cast(io.BufferedReader, self._pipe).read1(8192):
                self.data = (self.data + chunk)[-8192:]


class _Feeder(threading.Thread):
    """Writes the input chunks to gpg's stdin; a failing input kills gpg first."""

    def __init__(self, proc: subprocess.Popen[bytes], chunks: Iterable[bytes]) -> None:
        super().__init__(name="gpg-stdin", daemon=True)
        self._proc = proc
        self._chunks = chunks
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        stdin = self._proc.stdin
        assert stdin is not None
        it = iter(self._chunks)
        try:
            for chunk in it:
                if self.stop.is_set():
                    break
                try:
                    stdin.write(chunk)
                except (OSError, ValueError):
                    break  # gpg exited (or was killed): its exit status tells the story
        except BaseException as exc:  # the input failed: no well-formed message may result
            self.error = exc
            with contextlib.suppress(OSError):
                self._proc.kill()
        finally:
            with contextlib.suppress(OSError, ValueError):
                stdin.close()
            close = getattr(it, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()


def _stream(
    args: list[str],
    chunks: Iterable[bytes],
    *,
    what: str,
    on_failure: Callable[[int, bytes], errors.DRError],
    pass_fds: tuple[int, ...] = (),
) -> Stream:
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_env(),
            pass_fds=pass_fds,
        )
    except FileNotFoundError:
        raise errors.EncryptionError(
            f"cannot {what}: the gpg binary {args[0]!r} is not installed"
        ) from None
    assert proc.stdout is not None and proc.stderr is not None
    stderr = _StderrTail(proc.stderr)
    feeder = _Feeder(proc, chunks)
    stderr.start()
    feeder.start()
    finished = False
    try:
        while chunk := cast(io.BufferedReader, proc.stdout).read1(CHUNK_SIZE):
            yield chunk
        proc.wait()
        feeder.join()
        stderr.join()
        finished = True
        if feeder.error is not None:
            raise feeder.error
        if proc.returncode != 0:
            raise on_failure(proc.returncode, stderr.data)
    finally:
        if not finished:
            # Closed early or failing: stop gpg first, so the feeder unblocks.
            feeder.stop.set()
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.kill()
            proc.wait()
            feeder.join(_JOIN_TIMEOUT)
            stderr.join(_JOIN_TIMEOUT)
        for pipe in (proc.stdout, proc.stderr, proc.stdin):
            if pipe is not None:
                with contextlib.suppress(OSError, ValueError):
                    pipe.close()


def _packet_header(data: bytes, pos: int) -> tuple[int, int, int] | None:
    """(tag, header length, body length) of the OpenPGP packet at `pos`, or None."""
    if pos >= len(data):
        return None
    ctb = data[pos]
    if not ctb & 0x80:
        return None
    if ctb & 0x40:  # new format
        tag = ctb & 0x3F
        if pos + 1 >= len(data):
            return None
        first = data[pos + 1]
        if first < 192:
            return tag, 2, first
        if first < 224:
            if pos + 2 >= len(data):
                return None
            return tag, 3, ((first - 192) << 8) + data[pos + 2] + 192
        if first == 255:
            if pos + 6 > len(data):
                return None
            return tag, 6, int.from_bytes(data[pos + 2 : pos + 6], "big")
        return None  # partial body lengths never frame session-key packets
    tag = (ctb >> 2) & 0x0F
    length_type = ctb & 0x03
    if length_type == 3:
        return None
    size = (1, 2, 4)[length_type]
    if pos + 1 + size > len(data):
        return None
    return tag, 1 + size, int.from_bytes(data[pos + 1 : pos + 1 + size], "big")


def recipient_key_ids(head: bytes) -> list[str]:
    """Key IDs (16 hex digits) of the public-key session-key packets starting `head`."""
    ids: list[str] = []
    pos = 0
    while (header := _packet_header(head, pos)) is not None:
        tag, header_len, body_len = header
        body = head[pos + header_len : pos + header_len + body_len]
        if tag == 1 and len(body) >= 9 and body[0] == 3:
            ids.append(body[1:9].hex().upper())
        elif tag != 3:
            break
        pos += header_len + body_len
    return ids


def is_encrypted(head: bytes) -> bool:
    """True when `head` starts an OpenPGP encrypted message (binary or ASCII-armored)."""
    if head.lstrip().startswith(_ARMOR_HEADER):
        return True
    header = _packet_header(head, 0)
    if header is None:
        return False
    tag, header_len, _ = header
    if header_len >= len(head):
        return False
    version = head[header_len]
    if tag == 1:  # public-key encrypted session key
        return version in (3, 6)
    if tag == 3:  # symmetric-key encrypted session key
        return version in (4, 5, 6)
    return False
