"""The backup repository: catalog, writing, verified reading, verify, delete, prune.

Layout, relative to the repository URL (`s3://bucket/prefix`, `file:///path`):

    base/<id>/<name><ext>       objects of one backup (ext from the codecs: .zst, .zst.gpg ...)
    base/<id>/manifest.json     written last: a backup exists iff this parses
    base/<id>/.claim-<token>    short-lived marker reserving <id> while a writer runs
    wal/...                     the WAL archive (not handled here)

The manifest is the completion marker (Barman's backup.info): every reader goes
through it, so an interrupted write is invisible, and deleting the manifest
first makes a delete look atomic to readers.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydantic

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.codecs import encryption as encryption_codec
from tonebridge_dr.runner.codecs import pipeline
from tonebridge_dr.runner.contract import runner_contract
from tonebridge_dr.runner.repository import ids, integrity, retention
from tonebridge_dr.runner.repository import manifest as manifests
from tonebridge_dr.runner.repository.writer import BackupWriter
from tonebridge_dr.runner.storage import open_storage
from tonebridge_dr.runner.storage.base import ObjectInfo, Storage

log = logging.getLogger(__name__)

BASE_PREFIX = "base/"
CLAIM_PREFIX = ".claim-"
#: How many `-N` alternatives `begin` tries before giving up on a second.
MAX_ID_SUFFIX = 1000
#: A folder without manifest whose newest object (a running writer renews its claim every
#: CLAIM_HEARTBEAT seconds) is older than this is a crashed write; so is a leftover.
DEFAULT_ORPHAN_GRACE = dt.timedelta(minutes=15)
CLAIM_HEARTBEAT = 60.0
HEARTBEAT_ENV = runner_contract.ENV_CLAIM_HEARTBEAT
ENGINES = runner_contract.ENGINE_NAMES


@dataclasses.dataclass
class PruneReport:
    """What `Repository.prune` kept and deleted (or would, with `dry_run`)."""

    kept: list[str]
    deleted: list[str]
    orphans: list[str]
    unreadable: list[str]
    leftovers: list[str]  # keys of temp files / multipart uploads of crashed writes
    reasons: dict[str, list[str]]
    dry_run: bool
    policy: str
    protected: list[str] = dataclasses.field(default_factory=list)  # kept: a restore uses them
    #: Backups (and incomplete folders) the policy lets go but S3 Object Lock still
    #: retains: left whole, in neither `deleted` nor `orphans`; a later prune removes them.
    locked: list[str] = dataclasses.field(default_factory=list)

    def result(self) -> dict[str, Any]:
        """Stable `--json` form."""
        return dataclasses.asdict(self)


@dataclasses.dataclass
class _Scan:
    """One LIST over base/: the objects of every backup folder, grouped by id."""

    folders: dict[str, list[ObjectInfo]]

    def has_manifest(self, backup_id: str) -> bool:
        key = manifests.manifest_key(backup_id)
        return any(info.key == key for info in self.folders[backup_id])


class Repository:
    """A backup repository over one `Storage`. Safe to use from several processes."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    @classmethod
    def open(cls, url: str, *, create: bool = True) -> Repository:
        """Open `s3://bucket/prefix` or `file:///path` (`create` makes a missing folder)."""
        return cls(open_storage(url, create=create))

    @property
    def url(self) -> str:
        return self.storage.url

    def __repr__(self) -> str:
        return f"Repository({self.url!r})"

    # Catalog ------------------------------------------------------------------
    def _scan(self) -> _Scan:
        folders: dict[str, list[ObjectInfo]] = {}
        for info in self.storage.list(BASE_PREFIX):
            backup_id, sep, rest = info.key[len(BASE_PREFIX) :].partition("/")
            if sep and rest and ids.is_backup_id(backup_id):
                folders.setdefault(backup_id, []).append(info)
        return _Scan(folders)

    def _load(self, backup_id: str) -> manifests.Manifest:
        """GET and parse one manifest; ObjectNotFound when absent, IntegrityError when bad."""
        return self._load_raw(backup_id)[0]

    def _load_raw(self, backup_id: str) -> tuple[manifests.Manifest, bytes]:
        key = manifests.manifest_key(backup_id)
        data = self.storage.get_bytes(key)
        try:
            manifest = manifests.Manifest.from_json(data)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            raise errors.IntegrityError(
                f"manifest {key} is unreadable: {first['msg']} at {first['loc']}"
            ) from exc
        if manifest.id != backup_id:
            raise errors.IntegrityError(f"manifest {key} names another backup id ({manifest.id})")
        return manifest, data

    def _manifests(self, scan: _Scan) -> tuple[list[manifests.Manifest], list[str]]:
        found: list[manifests.Manifest] = []
        unreadable: list[str] = []
        for backup_id in sorted(scan.folders, key=ids.sort_key):
            if not scan.has_manifest(backup_id):
                continue
            try:
                found.append(self._load(backup_id))
            except errors.ObjectNotFound:
                continue  # deleted between LIST and GET
            except errors.IntegrityError as exc:
                log.warning("skipping backup %s: %s", backup_id, exc)
                unreadable.append(backup_id)
        return found, unreadable

    def list_backups(
        self, *, engine: str | None = None, method: str | None = None
    ) -> list[manifests.Manifest]:
        """Every complete backup (its manifest exists and parses), oldest first.

        One LIST over base/ plus one GET per manifest. Folders without a manifest
        (writes in progress or crashed) and unreadable manifests are left out.
        """
        found, _ = self._manifests(self._scan())
        return [m for m in found if _matches(m, engine, method)]

    def latest(
        self, *, engine: str | None = None, method: str | None = None
    ) -> manifests.Manifest | None:
        """The newest complete backup (optionally of one engine/method), or None."""
        found = self.list_backups(engine=engine, method=method)
        return found[-1] if found else None

    def _not_found(self, what: str) -> errors.BackupNotFound:
        return errors.BackupNotFound(
            f"{what} not found in {self.url}; `tonebridge-dr backups list` shows what exists"
        )

    def get(self, backup_id: str) -> manifests.Manifest:
        """The manifest of `backup_id`, or of the newest complete backup for "latest"."""
        if backup_id == "latest":
            newest = self.latest()
            if newest is None:
                raise self._not_found("no complete backup:")
            return newest
        ids.check_backup_id(backup_id)
        try:
            return self._load(backup_id)
        except errors.ObjectNotFound:
            raise self._not_found(f"backup {backup_id}") from None

    def get_with_bytes(self, backup_id: str) -> tuple[manifests.Manifest, bytes]:
        """The manifest of `backup_id` (an id, not "latest") and the exact bytes of its
        manifest.json, e.g. to record their SHA-256 as evidence of what was restored."""
        ids.check_backup_id(backup_id)
        try:
            return self._load_raw(backup_id)
        except errors.ObjectNotFound:
            raise self._not_found(f"backup {backup_id}") from None

    # Writing ------------------------------------------------------------------
    def begin(
        self,
        *,
        engine: str,
        method: str,
        compression: str = "zstd",
        encrypt_to: Path | None = None,
        level: int | None = None,
        storage_class: str | None = None,
        schedule: str | None = None,
        now: dt.datetime | None = None,
        heartbeat: float | None = None,
    ) -> BackupWriter:
        """Claim a fresh id and return a writer (use it as a context manager).

        The id is `new_backup_id(now)`, or its first free `-N` alternative. Claiming
        writes `base/<id>/.claim-<token>` and then lists the folder: a writer that
        sees anything besides its own claim moves on to the next suffix, so two
        writers starting in the same second never share an id (S3 lists are
        strongly consistent). Bad arguments fail here, before anything is stored.
        The writer renews its claim every `heartbeat` seconds (default
        $TONEBRIDGE_DR_CLAIM_HEARTBEAT or CLAIM_HEARTBEAT; 0 turns it off).
        """
        if engine not in ENGINES:
            raise errors.UsageError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
        if not method:
            raise errors.UsageError("a backup method is required")
        started_at = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
        encryption: manifests.Encryption | None = None
        if encrypt_to is not None:
            fingerprint = encryption_codec.recipient_fingerprint(encrypt_to)
            encryption = manifests.Encryption(method="openpgp", recipient_fingerprint=fingerprint)
        pipeline.object_extension(compression, encryption is not None)  # UsageError if unknown
        backup_id, claim_key = self._claim(ids.new_backup_id(started_at))
        return BackupWriter(
            self.storage,
            backup_id=backup_id,
            claim_key=claim_key,
            engine=engine,
            method=method,
            compression=compression,
            encrypt_to=encrypt_to,
            encryption=encryption,
            level=level,
            storage_class=storage_class,
            schedule=schedule,
            started_at=started_at,
            heartbeat=_heartbeat() if heartbeat is None else heartbeat,
        )

    def _claim(self, base_id: str) -> tuple[str, str]:
        for n in range(MAX_ID_SUFFIX):
            candidate = ids.with_suffix(base_id, n)
            prefix = manifests.backup_prefix(candidate)
            if next(iter(self.storage.list(prefix)), None) is not None:
                continue
            claim_key = f"{prefix}{CLAIM_PREFIX}{secrets.token_hex(8)}"
            self.storage.put_marker(claim_key, b"")  # never locked: deleted at commit
            if any(info.key != claim_key for info in self.storage.list(prefix)):
                self.storage.delete(claim_key)  # someone else got there too; both move on
                continue
            return candidate, claim_key
        raise errors.ConflictError(
            f"could not find a free backup id for {base_id} after {MAX_ID_SUFFIX} tries"
        )

    # Reading ------------------------------------------------------------------
    def read_object(
        self,
        manifest: manifests.Manifest,
        name: str,
        *,
        decrypt_key: Path | None = None,
        passphrase: str | None = None,
    ) -> Iterator[bytes]:
        """The decoded bytes of object `name`, verified while they stream.

        Missing objects and wrong sizes fail here, before any byte is delivered.
        Otherwise the stored bytes are hashed as they stream; the final stored
        chunk is held back from the decoder and the final decoded chunk from the
        caller until the whole object matched its size and SHA-256, so a corrupt
        object raises IntegrityError (naming its key) and its decoded stream never
        reaches its end. A missing or wrong key raises EncryptionError.
        """
        entry = manifest.object(name)
        if entry is None:
            names = ", ".join(e.name for e in manifest.objects) or "none"
            raise errors.ObjectNotFound(
                f"backup {manifest.id} has no object {name!r} (it has: {names})"
            )
        info = self.storage.head(entry.key)
        if info is None:
            raise integrity.missing_error(entry.key)
        if info.size != entry.size:
            raise integrity.size_error(entry.key, info.size, entry.size)
        try:
            chunks = self.storage.get_stream(entry.key)
        except errors.ObjectNotFound:
            raise integrity.missing_error(entry.key) from None
        stored = integrity.VerifiedStream(chunks, entry)
        decoded = pipeline.decode(
            iter(stored),
            compression=manifest.compression,
            encrypted=manifest.object_encrypted(entry),
            decrypt_key=decrypt_key,
            passphrase=passphrase,
            recipient=manifest.encryption.recipient_fingerprint if manifest.encryption else None,
        )
        return integrity.deliver(decoded, stored, lambda: self.storage.get_stream(entry.key))

    def verify(self, backup_id: str) -> integrity.VerifyReport:
        """Re-read every stored object of a backup and check existence, size and SHA-256.

        Needs no key (checksums are over stored bytes). Reports every problem;
        call `raise_for_problems()` on the report to fail on the first.
        """
        manifest = self.get(backup_id)
        listing = self.storage.list(manifests.backup_prefix(manifest.id))
        present = {info.key: info for info in listing}
        report = integrity.VerifyReport(backup_id=manifest.id)
        for entry in manifest.objects:
            report.objects_checked += 1
            info = present.get(entry.key)
            if info is None:
                error = integrity.missing_error(entry.key)
                report.problems.append(integrity.problem_from(entry, "missing", error))
                continue
            if info.size != entry.size:
                kind: integrity.ProblemKind = "truncated" if info.size < entry.size else "size"
                error = integrity.size_error(entry.key, info.size, entry.size)
                report.problems.append(integrity.problem_from(entry, kind, error))
                continue
            try:
                read, problem = integrity.check_entry(self.storage.get_stream(entry.key), entry)
            except errors.ObjectNotFound:
                error = integrity.missing_error(entry.key)
                report.problems.append(integrity.problem_from(entry, "missing", error))
                continue
            report.bytes_read += read
            if problem is not None:
                report.problems.append(problem)
        return report

    # Deleting -----------------------------------------------------------------
    def _prune_leftovers(
        self, cut: dt.datetime, alive: set[str], *, dry_run: bool
    ) -> list[str]:
        """Remove (unless `dry_run`) what crashed writes left that is older than `cut`.

        An S3 upload only tells when it began, and one object of a backup may upload
        for hours: a leftover in the folder of a backup whose claim is alive stays.
        """
        removed = []
        for leftover in self.storage.list_leftovers():
            folder = leftover.key[len(BASE_PREFIX):].partition("/")[0]
            if leftover.started > cut or (
                leftover.key.startswith(BASE_PREFIX) and folder in alive
            ):
                continue  # a write in progress
            if not dry_run:
                self.storage.discard_leftover(leftover)
                log.info("removed leftover of an interrupted write to %s", leftover.key)
            removed.append(leftover.key)
        return removed

    def _delete_folder(self, backup_id: str, keys: list[str]) -> None:
        """Manifest first (the backup stops existing), then everything else in the folder."""
        manifest_key = manifests.manifest_key(backup_id)
        self.storage.delete(manifest_key)
        for key in keys:
            if key != manifest_key:
                self.storage.delete(key)

    def _locked_until(
        self, backup_id: str, keys: list[str], now: dt.datetime
    ) -> dt.datetime | None:
        """The latest Object Lock date among `keys` (the objects of one backup) that has
        not passed yet, or None when none of them is locked. "Not passed" counts from the
        later of `now` and the clock: S3 enforces locks by its own time, whatever `now` a
        caller passes."""
        dates = self.storage.retained_until(keys)
        cutoff = max(now.astimezone(dt.UTC), dt.datetime.now(dt.UTC))
        live = [until for until in dates.values() if until > cutoff]
        if not live:
            return None
        until = max(live)
        log.info("backup %s is under S3 Object Lock until %s: not deleted", backup_id,
                 until.isoformat())
        return until

    def delete_backup(self, backup_id: str) -> None:
        """Delete a backup: its manifest first, then its objects.

        Refused (ConflictError, nothing deleted) while another backup reads its objects
        (an incremental's chain): delete the incrementals first, newest first, or let
        retention remove the whole chain.

        Safe to retry: a delete interrupted after the manifest went leaves a folder
        without manifest, which a second call (or `prune`) finishes.
        """
        ids.check_backup_id(backup_id)
        infos = list(self.storage.list(manifests.backup_prefix(backup_id)))
        if not infos:
            raise self._not_found(f"backup {backup_id}")
        readers = sorted(m.id for m in self.list_backups()
                         if m.id != backup_id and backup_id in m.depends_on)
        if readers:
            raise errors.ConflictError(
                f"backup {backup_id} is part of the chain of incremental backup(s) "
                f"{', '.join(readers)}, which read its objects: delete those first (newest "
                "first), or let retention remove the whole chain")
        self._delete_folder(backup_id, [info.key for info in infos])
        log.info("deleted backup %s (%d objects)", backup_id, len(infos))

    def prune(
        self,
        plan: retention.RetentionPlan | retention.RetentionPolicy,
        *,
        now: dt.datetime,
        dry_run: bool = False,
        orphan_grace: dt.timedelta = DEFAULT_ORPHAN_GRACE,
        engine: str | None = None,
        method: str | None = None,
        protect: frozenset[str] = frozenset(),
    ) -> PruneReport:
        """Apply `plan` (see retention.py) and remove what it does not keep.

        A bare RetentionPolicy is the plan "this rule for every series", restricted to
        `engine`/`method` when given (other backups are untouched and not reported).
        Ids in `protect` (backups a running restore uses) are kept and reported as
        `protected`. Each deleted backup loses its manifest first, so a crash mid-prune
        never leaves a manifest pointing at missing objects. Folders without a manifest
        (crashed or aborted writes) whose newest object is older than `orphan_grace` are
        removed too and reported as `orphans`. Unreadable manifests are reported and left
        alone. A running writer renews its claim every CLAIM_HEARTBEAT seconds, so the
        grace only has to exceed the longest stall of a writer, not its run; each orphan
        folder is listed again right before it is deleted and spared when anything in it
        became younger than the grace. Leftovers of crashed writes (local temp files,
        incomplete multipart uploads) older than the grace are removed and reported as
        `leftovers`. A backup or folder any object of which S3 Object Lock still retains
        is checked before anything of it is deleted, left whole and reported as `locked`
        instead (also with `dry_run`). Idempotent; two prunes at once are harmless (a
        delete of something already gone is not an error).
        """
        if isinstance(plan, retention.RetentionPolicy):
            plan = retention.RetentionPlan(
                default=retention.Rule(plan), engine=engine, method=method
            )
        scan = self._scan()
        found, unreadable = self._manifests(scan)
        candidates = [m for m in found if _matches(m, plan.engine, plan.method)]
        reasons = retention.explain_plan([candidate_of(m) for m in candidates], plan, now)
        protected = sorted(
            (m.id for m in candidates if m.id in protect and m.id not in reasons),
            key=ids.sort_key,
        )
        for backup_id in protected:
            reasons[backup_id] = ["in-use"]
        _keep_dependencies(candidates, reasons)
        kept = [m.id for m in candidates if m.id in reasons]
        deleted = [m.id for m in candidates if m.id not in reasons]
        complete = {m.id for m in found} | set(unreadable)
        orphans = [
            backup_id
            for backup_id in sorted(scan.folders, key=ids.sort_key)
            if backup_id not in complete
            and not scan.has_manifest(backup_id)
            and max(info.last_modified for info in scan.folders[backup_id]) <= now - orphan_grace
        ]
        locked = [
            backup_id for backup_id in deleted + orphans
            if self._locked_until(
                backup_id, [info.key for info in scan.folders[backup_id]], now
            ) is not None
        ]
        deleted = [backup_id for backup_id in deleted if backup_id not in locked]
        orphans = [backup_id for backup_id in orphans if backup_id not in locked]
        if not dry_run:
            for backup_id in deleted:
                self._delete_folder(backup_id, [info.key for info in scan.folders[backup_id]])
                log.info("pruned backup %s", backup_id)
            spared = set()
            for backup_id in orphans:
                infos = list(self.storage.list(manifests.backup_prefix(backup_id)))
                if any(info.last_modified > now - orphan_grace for info in infos) or any(
                    info.key == manifests.manifest_key(backup_id) for info in infos
                ):
                    spared.add(backup_id)  # its writer woke up (or committed) meanwhile
                    continue
                self._delete_folder(backup_id, [info.key for info in infos])
                log.info("removed incomplete backup folder %s", backup_id)
            orphans = [backup_id for backup_id in orphans if backup_id not in spared]
        alive = {
            backup_id for backup_id, infos in scan.folders.items()
            if any(info.last_modified > now - orphan_grace for info in infos)
        }
        leftovers = self._prune_leftovers(now - orphan_grace, alive, dry_run=dry_run)
        return PruneReport(
            kept=kept,
            deleted=deleted,
            orphans=orphans,
            unreadable=unreadable,
            leftovers=leftovers,
            reasons=reasons,
            dry_run=dry_run,
            policy=plan.describe(),
            protected=protected,
            locked=locked,
        )


def _keep_dependencies(
    candidates: list[manifests.Manifest], reasons: dict[str, list[str]]
) -> None:
    """Keep every backup a kept backup builds on (an incremental's chain), with reason
    `chain-of:<id>`: retention keeps whole chains, never a link in the middle."""
    by_id = {m.id: m for m in candidates}
    pending = [backup_id for backup_id in reasons if backup_id in by_id]
    while pending:
        kept = by_id[pending.pop()]
        for other in kept.depends_on:
            if other in by_id and other not in reasons:
                reasons[other] = [f"chain-of:{kept.id}"]
                pending.append(other)


def candidate_of(manifest: manifests.Manifest) -> retention.Candidate:
    """What retention needs to know of a backup."""
    return retention.Candidate(
        id=manifest.id,
        started_at=manifest.started_at,
        engine=manifest.engine,
        method=manifest.method,
        schedule=manifest.schedule,
        tables=manifest.table_subset,
    )


def _heartbeat() -> float:
    raw = os.environ.get(HEARTBEAT_ENV, "").strip()
    if not raw:
        return CLAIM_HEARTBEAT
    try:
        value = float(raw)
    except ValueError:
        raise errors.UsageError(
            f"{HEARTBEAT_ENV} must be a number of seconds, got {raw!r}"
        ) from None
    if value < 0:
        raise errors.UsageError(f"{HEARTBEAT_ENV} must be at least 0, got {raw!r}")
    return value


def _matches(manifest: manifests.Manifest, engine: str | None, method: str | None) -> bool:
    return (engine is None or manifest.engine == engine) and (
        method is None or manifest.method == method
    )
