"""Reading a policy's repository catalog from the operator, with the policy's own
read-only credentials (the truth about backups, whatever Jobs reported).

`CatalogReader.read(policy, kube)` never raises: every failure (missing Secret,
unreachable endpoint, missing bucket) becomes `CatalogSummary.error`, one sentence
without any secret in it.

Credentials: `spec.repository.restoreCredentialsSecretRef`, else
`credentialsSecretRef` (keys AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, optional
AWS_SESSION_TOKEN); endpoint and region from the spec. Without a Secret the
operator's own identity (its environment / IRSA) is used. A `file://` repository
is read on the operator's own filesystem; a folder that does not exist yet (no
backup ran) is an empty catalog.

Recovery points (status/recoverypoint.py decides; this module only reads): every
manifest becomes a `BackupRecord` (a PostgreSQL logical backup without the whole-database
object is a table subset), and for a policy with WAL archiving the WAL chain of the
newest physical base backup is read by listing that backup's timeline from its first
needed segment on, lazily: the listing stops at the first gap, so its cost is the WAL
archived since that backup, never the whole archive.

`CatalogReader.restore_readiness(...)` answers a RestoreRequest's question before its Job
is created: can the backup the restore will use (chosen exactly as the runner will choose
it) be read now, or is it in an archive storage class? When objects are not readable it
requests their rehydration (idempotent) and says how many. It never raises either: what
it cannot tell is `error`, and the restore Job then runs and reports for itself.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import logging
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from tonebridge_dr.api.common import BackupMethod
from tonebridge_dr.api.common import Repository as ApiRepository
from tonebridge_dr.api.kinds import BackupPolicy
from tonebridge_dr.api.restorerequest import RestoreRequestSpec
from tonebridge_dr.builders import names
from tonebridge_dr.builders.restore import ResolvedSource
from tonebridge_dr.controller.core.kube import ApiError, Kube
from tonebridge_dr.controller.core.secrets import REPOSITORY_KEYS
from tonebridge_dr.runner import errors as runner_errors
from tonebridge_dr.runner.repository.catalog import Repository
from tonebridge_dr.runner.repository.manifest import Manifest
from tonebridge_dr.runner.storage import S3Config, Storage, open_storage
from tonebridge_dr.status import recoverypoint
from tonebridge_dr.status.freshness import CatalogSummary

log = logging.getLogger(__name__)

ACCESS_KEY, SECRET_KEY = REPOSITORY_KEYS
SESSION_TOKEN = "AWS_SESSION_TOKEN"
CACHE_SIZE = 64
#: The object of a logical backup of the whole database (runner.engines.postgres.dump
#: DATABASE_OBJECT; a table-subset dump has one object per table instead).


class CredentialsMissing(Exception):
    """The repository credentials Secret (or one of its keys) does not exist."""


@dataclasses.dataclass(frozen=True)
class RestoreReadiness:
    """Whether the objects a restore needs can be read now (archive tiers)."""

    backup_id: str | None = None
    checked: int = 0
    unreadable: int = 0
    requested: int = 0  # rehydrations this check asked for
    in_progress: int = 0
    classes: tuple[str, ...] = ()
    error: str | None = None  # could not tell (the restore Job reports for itself)


@dataclasses.dataclass(frozen=True)
class CatalogRead:
    """A catalog summary plus the newest backup's details (for metrics)."""

    summary: CatalogSummary
    newest_duration_seconds: float | None = None
    newest_size_bytes: int | None = None


def credentials_secret(policy: BackupPolicy, *, writer: bool = False) -> str | None:
    """Name of the Secret the operator reads the repository with (`writer`: the backup
    credentials, which retention needs to delete)."""
    repository = policy.spec.repository
    ref = repository.credentials_secret_ref
    if not writer:
        ref = repository.restore_credentials_secret_ref or ref
    return ref.name if ref is not None else None


def s3_config(policy: BackupPolicy, kube: Kube, *, writer: bool = False) -> S3Config:
    """Explicit S3 settings of the policy; raises CredentialsMissing (naming the Secret)."""
    return repository_s3_config(
        policy.spec.repository, policy.metadata.namespace or "default",
        credentials_secret(policy, writer=writer), kube,
    )


def repository_s3_config(
    repository: ApiRepository, namespace: str, name: str | None, kube: Kube
) -> S3Config:
    """S3 settings of `repository` read with the credentials Secret `name` (None: the
    operator's own identity); raises CredentialsMissing (naming the Secret)."""
    access_key = secret_key = token = None
    if name is not None:
        data = kube.secret_data(namespace, name)
        if data is None:
            raise CredentialsMissing(f'repository credentials Secret "{name}" not found')
        access_key, secret_key = data.get(ACCESS_KEY), data.get(SECRET_KEY)
        token = data.get(SESSION_TOKEN)
        if not access_key or not secret_key:
            raise CredentialsMissing(
                f'repository credentials Secret "{name}" needs keys {ACCESS_KEY} and {SECRET_KEY}'
            )
    return S3Config(
        access_key_id=access_key,
        secret_access_key=secret_key,
        session_token=token or None,
        endpoint_url=repository.endpoint,
        region=repository.region,
    )


class CatalogReader:
    """Reads catalogs; keeps a few opened storages (S3 clients are costly to build)."""

    def __init__(self, cache_size: int = CACHE_SIZE) -> None:
        self._cache: collections.OrderedDict[tuple[str, S3Config | None], Storage] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()
        self._cache_size = cache_size

    def _storage(self, url: str, config: S3Config | None) -> Storage:
        key = (url, config)
        with self._lock:
            storage = self._cache.get(key)
            if storage is not None:
                self._cache.move_to_end(key)
                return storage
        storage = open_storage(url, create=False, s3=config)
        with self._lock:
            self._cache[key] = storage
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return storage

    def read(self, policy: BackupPolicy, kube: Kube) -> CatalogRead:
        url = names.policy_repository_url(policy.spec.repository.url, policy.metadata.name or "")
        try:
            parsed = urllib.parse.urlsplit(url)
            config: S3Config | None = None
            if parsed.scheme == "file":
                if not Path(urllib.parse.unquote(parsed.path)).is_dir():
                    return CatalogRead(CatalogSummary())
            else:
                config = s3_config(policy, kube)
            storage = self._storage(url, config)
            manifests = Repository(storage).list_backups()
            wal_time, wal_segment = self._wal(policy, storage)
            records = tuple(backup_record(m) for m in manifests)
            chain = self._wal_chain(policy, storage, records)
        except CredentialsMissing as exc:
            return CatalogRead(CatalogSummary(error=str(exc)))
        except ApiError as exc:
            return CatalogRead(CatalogSummary(error=f"cannot read the credentials Secret: {exc}"))
        except runner_errors.DRError as exc:
            return CatalogRead(CatalogSummary(error=f"repository unreachable: {exc}"))
        except Exception as exc:  # a bug or an unexpected library error: still a condition
            log.exception("reading the catalog of %s failed", url)
            return CatalogRead(
                CatalogSummary(error=f"repository unreachable: {type(exc).__name__}")
            )
        if not manifests:
            return CatalogRead(
                CatalogSummary(newest_wal_time=wal_time, newest_wal_segment=wal_segment)
            )
        newest = max(manifests, key=lambda m: m.finished_at)
        summary = CatalogSummary(
            newest_backup_id=newest.id,
            newest_backup_time=newest.finished_at.astimezone(dt.UTC),
            backup_count=len(manifests),
            total_size_bytes=sum(m.size_bytes for m in manifests),
            newest_wal_time=wal_time,
            newest_wal_segment=wal_segment,
            newest_backup_method=newest.method,
            newest_backup_engine=newest.engine,
            newest_backup_size_bytes=newest.size_bytes,
            newest_backup_objects=_object_count(newest),
            backups=records,
            wal_chain=chain,
        )
        return CatalogRead(summary, newest.duration_seconds, newest.size_bytes)

    def object_lock_enabled(self, policy: BackupPolicy, kube: Kube) -> bool | None:
        """Whether the bucket of the policy's s3:// repository has S3 Object Lock enabled
        (GetObjectLockConfiguration, with the catalog's read credentials); None when that
        cannot be told now (no s3:// URL, missing Secret, endpoint unreachable, access
        denied: the freshness monitor and the Secret checks report those). Never raises."""
        url = names.policy_repository_url(policy.spec.repository.url, policy.metadata.name or "")
        if not url.startswith("s3://"):
            return None
        try:
            from tonebridge_dr.runner.storage.s3 import S3Storage

            storage = self._storage(url, s3_config(policy, kube))
            if not isinstance(storage, S3Storage):
                return None
            return storage.object_lock_enabled()
        except (CredentialsMissing, ApiError, runner_errors.DRError) as exc:
            log.warning("cannot check S3 Object Lock of %s: %s", url, exc)
            return None
        except Exception as exc:  # a bug or an unexpected library error: not a verdict
            log.exception("checking S3 Object Lock of %s failed: %s", url, type(exc).__name__)
            return None

    @staticmethod
    def _wal(policy: BackupPolicy, storage: Storage) -> tuple[dt.datetime | None, str | None]:
        postgres = policy.spec.target.postgres
        if postgres is None or postgres.wal_archive is None:
            return None, None
        from tonebridge_dr.runner.engines.postgres.wal.catalog import archive_status

        status = archive_status(storage)
        when = status.last_archived_at.astimezone(dt.UTC) if status.last_archived_at else None
        return when, status.last_segment

    @staticmethod
    def _wal_chain(
        policy: BackupPolicy, storage: Storage, records: tuple[recoverypoint.BackupRecord, ...]
    ) -> recoverypoint.WalChainEnd | None:
        postgres = policy.spec.target.postgres
        if postgres is None or postgres.wal_archive is None:
            return None  # WAL in the folder is not this policy's promise
        base = recoverypoint.wal_base(records)
        if base is None or base.wal is None:
            return None
        return recoverypoint.wal_chain_end(base, wal_objects(storage, base.wal))


    def newest_wal(self, kube: Kube, namespace: str,
                   source: ResolvedSource) -> dt.datetime | None:
        """When the newest WAL in the restore source's repository was archived; None when
        there is none or it cannot be read (the restore Job then decides for itself)."""
        from tonebridge_dr.runner.engines.postgres.wal.catalog import archive_status

        try:
            config = None
            if urllib.parse.urlsplit(source.repository_url).scheme != "file":
                secret = source.credentials.name if source.credentials else None
                config = repository_s3_config(source.repository, namespace, secret, kube)
            status = archive_status(self._storage(source.repository_url, config))
        except Exception as exc:  # any trouble: no wait, the Job reports for itself
            log.info("newest WAL of %s unknown: %s", source.repository_url,
                     type(exc).__name__)
            return None
        when = status.last_archived_at
        return when.astimezone(dt.UTC) if when is not None else None

    def restore_readiness(
        self,
        kube: Kube,
        namespace: str,
        source: ResolvedSource,
        spec: RestoreRequestSpec,
        *,
        days: int,
        tier: str,
    ) -> RestoreReadiness:
        """Choose the backup as the runner will, check every object it (and, for a
        physical restore, the archived WAL after it) needs; request rehydration of the
        unreadable ones. Never raises."""
        from tonebridge_dr.runner.repository import tiering

        try:
            config = None
            if urllib.parse.urlsplit(source.repository_url).scheme != "file":
                secret = source.credentials.name if source.credentials else None
                config = repository_s3_config(source.repository, namespace, secret, kube)
            repo = Repository(self._storage(source.repository_url, config))
            manifest = _chosen_backup(repo, spec)
            extra = []
            if manifest.engine == "postgres" and manifest.method == "physical":
                from tonebridge_dr.runner.engines.postgres.wal import tiering as wal_tiering

                extra = wal_tiering.restore_needs(repo, manifest)
            found = tiering.readability(repo, manifest, extra)
            if found.readable:
                return RestoreReadiness(manifest.id, found.checked)
            report = tiering.rehydrate(repo, manifest, extra, days=days, tier=tier)
        except CredentialsMissing as exc:
            return RestoreReadiness(error=str(exc))
        except ApiError as exc:
            return RestoreReadiness(error=f"cannot read the credentials Secret: {exc}")
        except runner_errors.DRError as exc:
            return RestoreReadiness(error=f"cannot check the backup: {exc}")
        except Exception as exc:  # a bug or an unexpected library error: let the Job tell
            log.exception("checking the backup of %s failed", source.repository_url)
            return RestoreReadiness(error=f"cannot check the backup: {type(exc).__name__}")
        return RestoreReadiness(
            backup_id=manifest.id,
            checked=found.checked,
            unreadable=report.pending,
            requested=len(report.requested),
            in_progress=len(report.in_progress),
            classes=tuple(found.classes),
        )


def _object_count(manifest: Manifest) -> int | None:
    """Objects in a kubernetes backup (its manifest's `extra.kubernetes.object_count`)."""
    kubernetes = manifest.extra.get("kubernetes")
    count = kubernetes.get("object_count") if isinstance(kubernetes, dict) else None
    return count if isinstance(count, int) and not isinstance(count, bool) else None


def backup_record(manifest: Manifest) -> recoverypoint.BackupRecord:
    """What recovery points need of a manifest.

    A PostgreSQL logical backup is a table subset when its dump says so (`scope:
    tables`) or when it lacks the whole-database object a full restore needs; its
    tables are the schema-qualified names it lists. A physical base backup with a WAL
    range gets its `WalStart`: the start segment, or the segment after its stop segment
    when pg_basebackup put the backup's own WAL into it (like the PITR planner).
    """
    tables = manifest.table_subset if manifest.is_table_subset else None
    start: recoverypoint.WalStart | None = None
    if manifest.engine == "postgres" and manifest.method == "physical" and manifest.wal:
        start = _wal_start(manifest)
    return recoverypoint.BackupRecord(
        id=manifest.id,
        engine=manifest.engine,
        method=manifest.method,
        finished_at=manifest.finished_at.astimezone(dt.UTC),
        tables=tables,
        schedule=manifest.schedule,
        wal=start,
    )


def _wal_start(manifest: Manifest) -> recoverypoint.WalStart | None:
    from tonebridge_dr.runner.engines.postgres.wal import naming

    assert manifest.wal is not None
    try:
        size = naming.check_segment_size(
            int(manifest.extra.get("wal_segment_size") or naming.DEFAULT_SEGMENT_SIZE)
        )
        start = naming.segno_of_lsn(naming.parse_lsn(manifest.wal.start_lsn), size)
        stop = naming.segno_of_lsn(max(naming.parse_lsn(manifest.wal.stop_lsn) - 1, 0), size)
    except (ValueError, runner_errors.DRError):
        log.warning("backup %s has an unreadable WAL range: no WAL follows it", manifest.id)
        return None
    included = manifest.extra.get("wal_method") in ("fetch", "stream")
    return recoverypoint.WalStart(
        timeline=manifest.wal.timeline,
        first_segno=stop + 1 if included else start,
        segment_size=size,
        stop_segno=stop,
    )


def wal_objects(
    storage: Storage, start: recoverypoint.WalStart
) -> Iterator[recoverypoint.WalObject]:
    """Archived segments and `.partial` files of `start`'s timeline from its first needed
    segment on, in key order; lazy (each page is listed only when the consumer asks)."""
    from tonebridge_dr.runner.engines.postgres.wal import naming

    first = naming.segment_name(start.timeline, start.first_segno, start.segment_size)
    prefix = f"{naming.WAL_PREFIX}{start.timeline:08X}"
    # Every key of `first` (and later) sorts after `wal/<folder>/<first>`.
    start_after = f"{naming.WAL_PREFIX}{first[:16]}/{first}"
    for info in storage.list_after(prefix, start_after=start_after):
        ref = naming.parse_key(info.key)
        if ref is None or ref.wal.kind not in (naming.SEGMENT, naming.PARTIAL):
            continue
        yield recoverypoint.WalObject(
            timeline=ref.wal.timeline,
            segno=ref.wal.segno(start.segment_size),
            name=ref.name,
            archived_at=info.last_modified.astimezone(dt.UTC),
            partial=ref.wal.kind == naming.PARTIAL,
        )


def _chosen_backup(repo: Repository, spec: RestoreRequestSpec) -> Manifest:
    """The backup the restore Job will use, chosen by the runner's own functions."""
    method = spec.effective_method
    if spec.backup_id is not None:
        return repo.get(spec.backup_id)
    if method == BackupMethod.LOGICAL:
        from tonebridge_dr.runner.engines.postgres import restore as pg_restore

        tables = [spec.repair.table] if spec.repair is not None else list(spec.tables or [])
        return pg_restore.newest_fitting(repo, tables)
    if method == BackupMethod.PHYSICAL:
        from tonebridge_dr.runner.engines.postgres.wal.pitr import plan as pitr

        xid = spec.before_transaction
        target = pitr.parse_target(
            spec.target_time.isoformat() if spec.target_time is not None else None,
            spec.target_lsn,
            spec.target_time is None and spec.target_lsn is None and xid is None,
            str(xid) if xid is not None else None,
            spec.before_time.isoformat() if spec.before_time is not None else None,
        )
        options = pitr.RestoreOptions(data_dir=Path("/nonexistent"), target=target)
        return pitr.plan_restore(repo, options).backup
    newest = repo.latest(engine="redis" if method == BackupMethod.SNAPSHOT else None)
    if newest is None:
        raise runner_errors.BackupNotFound(f"no complete backup in {repo.url}")
    return newest

