"""Writing one backup: objects first, the manifest last.

`Repository.begin` claims an id and returns a `BackupWriter`:

    with repo.begin(engine="postgres", method="logical") as writer:
        writer.put_object("database.dump", dump_chunks)
        manifest = writer.commit(databases=["app"], server_version="16.4", tools={...})

Contracts:
- `put_object` streams raw chunks through the codecs (compress, then encrypt)
  into `storage.put_stream`; memory is bounded by the codec and part buffers.
  The SHA-256 and size recorded are those of the stored bytes.
- `commit` writes `base/<id>/manifest.json` after every object; until then the
  backup does not exist for any reader.
- While the writer is open it renews its claim (`base/<id>/.claim-<token>`) every
  `heartbeat` seconds from a background thread, so `prune` can tell a running
  backup from a crashed one: a folder without manifest is removed only once its
  newest object (the claim included) is older than prune's grace.
- `commit` checks, before and after writing the manifest, that its claim and every
  object it lists are still stored with their sizes. When something is gone (a
  prune whose grace was shorter than a stall of this process), no manifest
  survives and `commit` raises StorageError (exit 4): a manifest never points at
  deleted objects.
- Leaving the `with` block with an exception, or without `commit`, deletes (best
  effort) the manifest key and every object written so far. Whatever a crash
  leaves behind has no manifest, is never listed, and `prune` removes it once it
  is older than its grace period.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import tonebridge_dr
from tonebridge_dr.runner import errors
from tonebridge_dr.runner.codecs import pipeline
from tonebridge_dr.runner.repository import manifest as manifests
from tonebridge_dr.runner.storage.base import Storage

log = logging.getLogger(__name__)

# Logical object names become the last part of a key: no "/", no control characters,
# no leading "." (reserved for the writer's claim marker).
_NAME_RE = re.compile(r"[^./\x00-\x1f\x7f][^/\x00-\x1f\x7f]{0,199}")


def check_object_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name) or name.startswith(manifests.MANIFEST_NAME):
        raise errors.UsageError(
            f"invalid object name {name!r}: 1-200 characters, no '/', no control characters, "
            f"not starting with '.' or {manifests.MANIFEST_NAME!r}"
        )
    return name


class BackupWriter:
    """Writes the objects of one backup, then its manifest. Not thread-safe."""

    def __init__(
        self,
        storage: Storage,
        *,
        backup_id: str,
        claim_key: str | None,
        engine: str,
        method: str,
        compression: str,
        encrypt_to: Path | None,
        encryption: manifests.Encryption | None,
        level: int | None,
        storage_class: str | None,
        schedule: str | None = None,
        started_at: dt.datetime,
        heartbeat: float | None = None,
    ) -> None:
        self.storage = storage
        self.id = backup_id
        self.started_at = started_at
        self.engine = engine
        self.method = method
        self.compression = compression
        self.encryption = encryption
        self.storage_class = storage_class
        self.schedule = schedule
        self.objects: list[manifests.ObjectEntry] = []
        self.manifest: manifests.Manifest | None = None
        self._claim_key = claim_key
        self._encrypt_to = encrypt_to
        self._level = level
        self._extension = pipeline.object_extension(compression, encryption is not None)
        self._written: list[str] = []  # keys possibly stored, for cleanup
        self._closed = False
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        if claim_key is not None and heartbeat is not None and heartbeat > 0:
            self._heartbeat = threading.Thread(
                target=self._renew_claim, args=(claim_key, heartbeat),
                name=f"claim-{backup_id}", daemon=True,
            )
            self._heartbeat.start()

    def _renew_claim(self, claim_key: str, interval: float) -> None:
        """Rewrite the claim every `interval` seconds until stopped (its time is the pulse)."""
        while not self._stop.wait(interval):
            try:
                self.storage.put_marker(claim_key, dt.datetime.now(dt.UTC).isoformat().encode())
            except Exception as exc:  # the next beat may work; commit checks the claim
                log.warning("could not renew claim of backup %s: %s", self.id, exc)

    def _stop_heartbeat(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
            self._heartbeat = None

    @property
    def prefix(self) -> str:
        return manifests.backup_prefix(self.id)

    def _check_open(self) -> None:
        if self.manifest is not None:
            raise RuntimeError(f"backup {self.id} is already committed")
        if self._closed:
            raise RuntimeError(f"backup {self.id} was aborted")

    def put_object(
        self, name: str, raw_chunks: Iterable[bytes], *, encrypt: bool = True
    ) -> manifests.ObjectEntry:
        """Encode and store one object as `base/<id>/<name><ext>`; returns its manifest entry.

        Atomic per object (the storage contract); on error nothing is left under the key.
        `encrypt=False` stores it only compressed, even when the backup is encrypted (for
        what readers without the private key need, e.g. a bucket snapshot's content index).
        """
        self._check_open()
        check_object_name(name)
        if any(entry.name == name for entry in self.objects):
            raise errors.UsageError(f"backup {self.id} already has an object named {name!r}")
        encrypt_to = self._encrypt_to if encrypt else None
        extension = pipeline.object_extension(self.compression, encrypt_to is not None)
        key = f"{self.prefix}{name}{extension}"
        raw_size = 0
        stored_size = 0
        digest = hashlib.sha256()

        def raw() -> Iterator[bytes]:
            nonlocal raw_size
            for chunk in raw_chunks:
                raw_size += len(chunk)
                yield chunk

        def stored() -> Iterator[bytes]:
            nonlocal stored_size
            encoded = pipeline.encode(
                raw(), compression=self.compression, encrypt_to=encrypt_to, level=self._level
            )
            for chunk in encoded:
                stored_size += len(chunk)
                digest.update(chunk)
                yield chunk

        self._written.append(key)
        written = self.storage.put_stream(key, stored(), storage_class=self.storage_class)
        if written != stored_size:
            raise errors.StorageError(
                f"storage reported {written} bytes for {key}, but {stored_size} were sent"
            )
        entry = manifests.ObjectEntry(
            name=name, key=key, size=stored_size, sha256=digest.hexdigest(), raw_size=raw_size,
            encrypted=None if encrypt or self.encryption is None else False,
        )
        self.objects.append(entry)
        log.info("stored %s (%d bytes, %d before codecs)", key, stored_size, raw_size)
        return entry

    def commit(
        self,
        *,
        databases: list[str],
        server_version: str | None,
        tools: dict[str, str],
        wal: manifests.WalRange | None = None,
        extra: dict[str, Any] | None = None,
        finished_at: dt.datetime | None = None,
    ) -> manifests.Manifest:
        """Write the manifest (the completion marker) and return it.

        `finished_at` defaults to now (never before `started_at`). The manifest is
        stored in the default storage class so the catalog stays readable when
        objects go to an archive class.
        """
        self._check_open()
        finished = finished_at or dt.datetime.now(dt.UTC)
        manifest = manifests.Manifest(
            id=self.id,
            engine=self.engine,  # checked in Repository.begin
            method=self.method,
            databases=list(databases),
            started_at=self.started_at,
            finished_at=max(finished, self.started_at),
            server_version=server_version,
            tool_version=tonebridge_dr.__version__,
            tools=dict(tools),
            compression=self.compression,
            encryption=self.encryption,
            storage_class=self.storage_class,
            schedule=self.schedule,
            objects=list(self.objects),
            wal=wal,
            extra=dict(extra or {}),
        )
        data = manifest.to_json()
        self._check_stored("before writing its manifest")
        self._written.append(manifest.key)
        self.storage.put_bytes(manifest.key, data)
        try:
            self._check_stored("after writing its manifest")
        except errors.StorageError:
            self.storage.delete(manifest.key)  # never leave a manifest of deleted objects
            raise
        self._stop_heartbeat()
        self.manifest = manifest
        self._release_claim()
        log.info(
            "backup %s committed: %d objects, %d bytes",
            self.id,
            len(self.objects),
            manifest.size_bytes,
        )
        return manifest

    def _check_stored(self, when: str) -> None:
        """StorageError when the claim or an object of this backup is gone or changed."""
        missing = []
        if self._claim_key is not None and self.storage.head(self._claim_key) is None:
            missing.append(self._claim_key)
        for entry in self.objects:
            info = self.storage.head(entry.key)
            if info is None or info.size != entry.size:
                missing.append(entry.key)
        if missing:
            raise errors.StorageError(
                f"backup {self.id} lost {', '.join(missing)} {when} (deleted while the backup "
                "ran: a prune whose grace was shorter than a stall of this process?); "
                "no manifest was kept, run the backup again"
            )

    def _release_claim(self) -> None:
        if self._claim_key is None:
            return
        try:
            self.storage.delete(self._claim_key)
        except Exception as exc:  # a stale claim is harmless; prune/delete remove it
            log.warning("could not remove claim %s: %s", self._claim_key, exc)
        self._claim_key = None

    def abort(self) -> None:
        """Best-effort removal of everything this writer stored; the manifest key goes first."""
        if self.manifest is not None or self._closed:
            return
        self._closed = True
        self._stop_heartbeat()
        keys = [manifests.manifest_key(self.id)]
        keys += [key for key in self._written if key not in keys]
        if self._claim_key is not None:
            keys.append(self._claim_key)
            self._claim_key = None
        failed = []
        for key in keys:
            try:
                self.storage.delete(key)
            except Exception as exc:
                failed.append(key)
                log.warning("could not remove %s of aborted backup %s: %s", key, self.id, exc)
        if failed:
            log.warning(
                "backup %s aborted; %d of its %d keys could not be removed (it has no "
                "manifest: prune removes them after its grace)", self.id, len(failed), len(keys),
            )
        else:
            log.warning("backup %s aborted; its objects were removed", self.id)

    def __enter__(self) -> BackupWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.manifest is None:
            self.abort()
