"""`restore bucket`: put the objects of a snapshot back into a bucket, as of that snapshot.

Every key of the snapshot (or those under `--prefix`) is written to `--to` + key with its
bytes, content type, user metadata and the other recorded attributes. Each object is
checked while it streams (stored size and SHA-256, then the decoded bytes against their
address) and its upload completes only after it matched: a tampered or missing content
object never reaches the target. Such objects are reported together at the end (exit 7);
everything else is restored. Mode `missing` skips keys the target already has (live data
wins); `replace` overwrites them. Keys the snapshot lacks are never deleted. Safe to run
again.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from pathlib import Path
from typing import Any

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.bucket import content, keymap, snapshot
from tonebridge_dr.runner.repository import manifest as manifests
from tonebridge_dr.runner.repository.catalog import Repository
from tonebridge_dr.runner.storage.s3 import S3Storage

log = logging.getLogger(__name__)

MODES = ("missing", "replace")


def find_snapshot(repo: Repository, backup_id: str) -> manifests.Manifest:
    """The snapshot `backup_id`, or the newest bucket snapshot for "latest"."""
    if backup_id == "latest":
        manifest = repo.latest(engine=snapshot.ENGINE)
        if manifest is None:
            raise errors.BackupNotFound(
                f"no complete bucket snapshot in {repo.url}; `tonebridge-dr backups list` "
                "shows what exists")
        return manifest
    manifest = repo.get(backup_id)
    if manifest.engine != snapshot.ENGINE:
        raise errors.BackupNotFound(
            f"backup {backup_id} is a {manifest.engine} backup, not a bucket snapshot")
    return manifest


def restore(
    repo: Repository,
    backup_id: str,
    target: S3Storage,
    *,
    prefix: str = "",
    mode: str = "missing",
    decrypt_key: Path | None = None,
    parallel: int = snapshot.DEFAULT_PARALLEL,
) -> dict[str, Any]:
    """Restore snapshot `backup_id` ("latest" too) into `target`; the result."""
    if mode not in MODES:
        raise errors.UsageError(f"--mode must be one of {', '.join(MODES)}")
    if parallel < 1:
        raise errors.UsageError("--parallel must be at least 1")
    manifest = find_snapshot(repo, backup_id)
    if (manifest.extra.get("bucket") or {}).get("content_encrypted") and decrypt_key is None:
        raise errors.EncryptionError(
            f"snapshot {manifest.id} is encrypted: pass --decrypt-key PRIVKEY_FILE")
    began = time.monotonic()
    counts = {"restored": 0, "bytes": 0, "skipped": 0}
    lock = threading.Lock()
    bad: list[str] = []

    def put(entry: keymap.Entry) -> None:
        if mode == "missing" and target.head(entry.key) is not None:
            with lock:
                counts["skipped"] += 1
            return
        try:
            target.put_stream(
                entry.key,
                content.read(repo.storage, entry.stored, decrypt_key=decrypt_key),
                attributes=entry.attributes,
            )
        except errors.IntegrityError as exc:
            log.error("%s: not restored: %s", entry.key, exc)
            with lock:
                bad.append(f"{entry.key}: {exc}")
            return
        with lock:
            counts["restored"] += 1
            counts["bytes"] += entry.size

    entries = keymap.parse(repo.read_object(manifest, keymap.NAME, decrypt_key=decrypt_key))
    window: collections.deque[concurrent.futures.Future[None]] = collections.deque()
    with concurrent.futures.ThreadPoolExecutor(parallel, thread_name_prefix="restore") as pool:
        try:
            for entry in entries:
                if not entry.key.startswith(prefix):
                    continue
                window.append(pool.submit(put, entry))
                while window and (len(window) > 4 * parallel or window[0].done()):
                    window.popleft().result()
            while window:
                window.popleft().result()
        except BaseException:
            for future in window:
                future.cancel()
            raise
    seconds = time.monotonic() - began
    log.info("restored snapshot %s into %s: %d objects (%d bytes), %d skipped, %.1f s",
             manifest.id, target.url, counts["restored"], counts["bytes"], counts["skipped"],
             seconds)
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise errors.IntegrityError(
            f"snapshot {manifest.id}: {len(bad)} object(s) not restored, their stored content "
            f"is damaged: {bad[0]}{more}")
    return {
        "backup_id": manifest.id,
        "engine": manifest.engine,
        "method": manifest.method,
        "target": target.url,
        "prefix": prefix or None,
        "mode": mode,
        "objects_restored": counts["restored"],
        "bytes_restored": counts["bytes"],
        "objects_skipped": counts["skipped"],
        "duration_seconds": round(seconds, 3),
    }
