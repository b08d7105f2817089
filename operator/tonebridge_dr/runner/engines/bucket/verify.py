"""The content check of `backups verify` for bucket snapshots.

`Repository.verify` checks a snapshot's own objects (the key map and the content index);
this checks every content object the index lists: present, its stored size and stored
SHA-256 as recorded. No key is needed (the checksums are over stored bytes); a restore
also checks the decoded bytes against their address.
"""

from __future__ import annotations

import collections
import concurrent.futures
from collections.abc import Iterator

from tonebridge_dr.runner.engines.bucket import content, keymap, snapshot
from tonebridge_dr.runner.repository import integrity
from tonebridge_dr.runner.repository import manifest as manifests
from tonebridge_dr.runner.repository.catalog import Repository

PARALLEL = 8


def is_snapshot(manifest: manifests.Manifest) -> bool:
    return manifest.engine == snapshot.ENGINE and manifest.object(keymap.INDEX_NAME) is not None


def verify_contents(repo: Repository, manifest: manifests.Manifest,
                    report: integrity.VerifyReport) -> None:
    """Add every content problem of snapshot `manifest` to `report` (and the counts)."""
    stored_entries = content.parse_index(repo.read_object(manifest, keymap.INDEX_NAME))

    def check(stored: content.Stored) -> tuple[content.Stored, str | None]:
        return stored, content.verify(repo.storage, stored)

    def results() -> Iterator[tuple[content.Stored, str | None]]:
        window: collections.deque[
            concurrent.futures.Future[tuple[content.Stored, str | None]]] = collections.deque()
        with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
            for stored in stored_entries:
                window.append(pool.submit(check, stored))
                while len(window) > 4 * PARALLEL:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()

    for stored, problem in results():
        report.objects_checked += 1
        report.bytes_read += stored.stored_size
        if problem is not None:
            kind: integrity.ProblemKind = "missing" if "missing" in problem else "checksum"
            report.problems.append(integrity.VerifyProblem(
                key=stored.key, name=f"content {stored.sha256[:12]}", kind=kind, message=problem))
