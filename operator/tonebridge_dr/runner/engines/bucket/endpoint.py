"""The bucket a snapshot reads or a restore writes: `s3://bucket/prefix` plus credentials.

Credentials never come from the command line: TONEBRIDGE_DR_BUCKET_AWS_ACCESS_KEY_ID /
..._SECRET_ACCESS_KEY / ..._SESSION_TOKEN (from a Secret), region and endpoint from
TONEBRIDGE_DR_BUCKET_REGION / TONEBRIDGE_DR_BUCKET_ENDPOINT; whatever is unset comes from
the standard AWS environment, as for the repository.
"""

from __future__ import annotations

import os
import urllib.parse

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.contract import runner_contract
from tonebridge_dr.runner.storage import S3Config
from tonebridge_dr.runner.storage.s3 import S3Storage

SOURCE_ENV = runner_contract.ENV_BUCKET_SOURCE


def _env(name: str) -> str | None:
    return os.environ.get(name, "").strip() or None


def config_from_env() -> S3Config:
    """The bucket's credentials, region and endpoint from TONEBRIDGE_DR_BUCKET_* (each
    unset one falls back to the standard AWS environment)."""
    key_id = _env(runner_contract.ENV_BUCKET_ACCESS_KEY_ID)
    secret = _env(runner_contract.ENV_BUCKET_SECRET_ACCESS_KEY)
    if (key_id is None) != (secret is None):
        raise errors.UsageError(
            f"set both {runner_contract.ENV_BUCKET_ACCESS_KEY_ID} and "
            f"{runner_contract.ENV_BUCKET_SECRET_ACCESS_KEY}, or neither"
        )
    return S3Config(
        access_key_id=key_id,
        secret_access_key=secret,
        session_token=_env(runner_contract.ENV_BUCKET_SESSION_TOKEN),
        endpoint_url=_env(runner_contract.ENV_BUCKET_ENDPOINT),
        region=_env(runner_contract.ENV_BUCKET_REGION),
    )


def parse_url(url: str, option: str) -> tuple[str, str]:
    """(bucket, prefix) of `s3://bucket[/prefix]`; UsageError for anything else."""
    parsed = urllib.parse.urlsplit(url)
    prefix = urllib.parse.unquote(parsed.path).strip("/")
    if parsed.scheme != "s3" or not parsed.netloc or parsed.query or parsed.fragment:
        raise errors.UsageError(f"{option} must be s3://bucket[/prefix], got {url!r}")
    if ".." in prefix.split("/") or any(ord(c) < 0x20 for c in prefix):
        raise errors.UsageError(f"{option} has an invalid prefix: {url!r}")
    return parsed.netloc, prefix


def canonical(url: str) -> str:
    """`s3://bucket/prefix` without trailing slash: how a snapshot records its source."""
    bucket, prefix = parse_url(url, "the bucket URL")
    return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"


def open_bucket(url: str, option: str, config: S3Config | None = None) -> S3Storage:
    """The bucket at `url` (keys relative to its prefix), with `config` or the env's."""
    bucket, prefix = parse_url(url, option)
    return S3Storage(canonical(url), bucket=bucket, prefix=prefix,
                     config=config or config_from_env())


def source_url(value: str | None) -> str:
    """`--source`, else $TONEBRIDGE_DR_BUCKET_SOURCE."""
    url = value or _env(SOURCE_ENV)
    if not url:
        raise errors.UsageError(f"no source bucket: pass --source s3://bucket/prefix or set "
                                f"{SOURCE_ENV}")
    return url
