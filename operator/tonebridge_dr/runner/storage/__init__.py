"""Repository storage backends, chosen by URL scheme."""

from __future__ import annotations

import dataclasses
import os
import urllib.parse
from pathlib import Path

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.contract import runner_contract
from tonebridge_dr.runner.storage.base import ObjectInfo, ObjectLock, Storage

__all__ = ["ObjectInfo", "S3Config", "Storage", "open_storage", "repo_from_env"]

REPO_ENV = runner_contract.ENV_REPO


@dataclasses.dataclass(frozen=True)
class S3Config:
    """Explicit S3 client settings, for callers that serve many repositories from one
    process (the operator reads each policy's catalog with that policy's credentials).

    Every field left None falls back to the standard AWS environment, exactly as
    when no config is given. The repr hides the secret parts.
    """

    access_key_id: str | None = dataclasses.field(default=None, repr=False)
    secret_access_key: str | None = dataclasses.field(default=None, repr=False)
    session_token: str | None = dataclasses.field(default=None, repr=False)
    endpoint_url: str | None = None
    region: str | None = None
    object_lock: ObjectLock | None = None
    """The Object Lock of written objects (None: from the environment, as for Jobs)."""
    from_env: bool = True
    """False: region, endpoint, server-side encryption and Object Lock come only from this
    config, never from the environment (which describes the Job's primary repository);
    credentials left None still follow the standard AWS chain (the pod's identity)."""


def repo_from_env(value: str | None) -> str:
    """The `--repo` value, else $TONEBRIDGE_DR_REPO; a UsageError when neither is set."""
    url = value or os.environ.get(REPO_ENV, "")
    if not url:
        raise errors.UsageError(f"no repository given: pass --repo URL or set {REPO_ENV}")
    return url


def _check_path(path: str, url: str) -> None:
    """Refuse what would put a repository somewhere other than where the URL seems to say."""
    if any(ord(c) < 0x20 or c == "\x7f" for c in path):
        raise errors.RepositoryConfigError(
            f"repository path has a control character (e.g. %00): {url!r}"
        )
    if ".." in path.split("/"):
        raise errors.RepositoryConfigError(f"repository path must not contain '..': {url!r}")
    if path.startswith("/") and not path.strip("/"):
        raise errors.RepositoryConfigError(
            f"a repository at the filesystem root would write into /base and /wal: {url!r}; "
            "name a folder, e.g. file:///var/backups/tonebridge"
        )


def open_storage(url: str, *, create: bool = True, s3: S3Config | None = None) -> Storage:
    """Open the repository at `url` (`file:///path` or `s3://bucket/prefix`).

    `create` only matters for file:// (make the folder); an S3 bucket is never created.
    `s3` overrides the AWS environment for s3:// URLs (ignored for file://).
    """
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise errors.RepositoryConfigError(
                f"file repository URL must be file:///absolute/path, got {url!r}"
            )
        path = urllib.parse.unquote(parsed.path)
        if not path.startswith("/"):
            raise errors.RepositoryConfigError(f"file repository path must be absolute: {url!r}")
        _check_path(path, url)
        from tonebridge_dr.runner.storage.local import LocalStorage

        return LocalStorage(url, Path(path), create=create)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise errors.RepositoryConfigError(f"S3 repository URL needs a bucket: {url!r}")
        from tonebridge_dr.runner.storage.s3 import S3Storage

        prefix = urllib.parse.unquote(parsed.path).strip("/")
        if prefix:
            _check_path(prefix, url)
        return S3Storage(url, bucket=parsed.netloc, prefix=prefix, config=s3)
    raise errors.RepositoryConfigError(
        f"unknown repository scheme {parsed.scheme or '(none)'!r} in {url!r}: "
        "use s3://bucket/prefix or file:///path"
    )
