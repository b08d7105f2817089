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
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import logging
import threading
import urllib.parse
from pathlib import Path

from tonebridge_dr.api.kinds import BackupPolicy
from tonebridge_dr.builders import names
from tonebridge_dr.controller.core.kube import ApiError, Kube
from tonebridge_dr.controller.core.secrets import REPOSITORY_KEYS
from tonebridge_dr.runner import errors as runner_errors
from tonebridge_dr.runner.repository.catalog import Repository
from tonebridge_dr.runner.storage import S3Config, Storage, open_storage
from tonebridge_dr.status.freshness import CatalogSummary

log = logging.getLogger(__name__)

ACCESS_KEY, SECRET_KEY = REPOSITORY_KEYS
SESSION_TOKEN = "AWS_SESSION_TOKEN"
CACHE_SIZE = 64


class CredentialsMissing(Exception):
    """The repository credentials Secret (or one of its keys) does not exist."""


@dataclasses.dataclass(frozen=True)
class CatalogRead:
    """A catalog summary plus the newest backup's details (for metrics)."""

    summary: CatalogSummary
    newest_duration_seconds: float | None = None
    newest_size_bytes: int | None = None


def credentials_secret(policy: BackupPolicy) -> str | None:
    """Name of the Secret the operator reads the repository with."""
    repository = policy.spec.repository
    ref = repository.restore_credentials_secret_ref or repository.credentials_secret_ref
    return ref.name if ref is not None else None


def s3_config(policy: BackupPolicy, kube: Kube) -> S3Config:
    """Explicit S3 settings of the policy; raises CredentialsMissing (naming the Secret)."""
    repository = policy.spec.repository
    namespace = policy.metadata.namespace or "default"
    name = credentials_secret(policy)
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
