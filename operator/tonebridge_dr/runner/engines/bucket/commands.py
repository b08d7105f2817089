"""Command-line glue for `tonebridge-dr backup bucket` and `restore bucket`.

```
tonebridge-dr backup bucket [--source s3://bucket/prefix] --repo URL [--parallel N] [--json]
tonebridge-dr restore bucket --repo URL --backup ID|latest --to s3://bucket/prefix \
    [--prefix P] [--mode missing|replace] [--decrypt-key FILE] [--json]
```

The source defaults to $TONEBRIDGE_DR_BUCKET_SOURCE; the source's (or target's)
credentials come only from the environment (endpoint.py), never from arguments.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tonebridge_dr.runner import errors, storage
from tonebridge_dr.runner.contract import runner_contract
from tonebridge_dr.runner.engines.bucket import endpoint, restore, snapshot
from tonebridge_dr.runner.repository.catalog import Repository
from tonebridge_dr.runner.storage.s3 import S3Storage

_REPO_HELP = (
    "repository URL: s3://bucket/prefix or file:///path "
    f"(default ${runner_contract.ENV_REPO})"
)


def _add(parser: argparse.ArgumentParser, *flags: str, **kwargs: Any) -> None:
    """add_argument unless the CLI already defined the option."""
    if any(flag in parser._option_string_actions for flag in flags):
        return
    parser.add_argument(*flags, **kwargs)


def _parallel(value: str) -> int:
    number = int(value)
    if not 1 <= number <= 64:
        raise argparse.ArgumentTypeError("must be between 1 and 64")
    return number


def _reachable(bucket: S3Storage, what: str) -> None:
    """SourceError when the bucket is missing or unreadable, before any work."""
    try:
        next(iter(bucket.list_after("", limit=1)), None)
    except errors.RepositoryConfigError as exc:
        raise errors.SourceError(f"{what} {bucket.url}: {exc}") from None


def add_backup_arguments(parser: argparse.ArgumentParser) -> None:
    _add(parser, "--source",
         help="s3://bucket/prefix to snapshot (default "
         f"${runner_contract.ENV_BUCKET_SOURCE}; credentials from "
         f"${runner_contract.ENV_BUCKET_ACCESS_KEY_ID} / ..._SECRET_ACCESS_KEY, else the AWS "
         "environment)")
    _add(parser, "--repo", help=_REPO_HELP)
    _add(parser, "--compression", default="zstd",
         help="codec of the key map and content index (content objects are always zstd)")
    _add(parser, "--level", type=int, default=None, help="zstd level of content objects")
    _add(parser, "--encrypt-to", type=Path, help="OpenPGP public key file to encrypt "
         "content objects to")
    _add(parser, "--storage-class", default=None, help="storage class of stored objects")
    _add(parser, "--schedule", default=None,
         help="name of the BackupPolicy schedule this snapshot belongs to (for retention)")
    _add(parser, "--parallel", type=_parallel, default=snapshot.DEFAULT_PARALLEL,
         help="objects transferred at once (default %(default)s)")
    _add(parser, "--json", action="store_true", help="print the result as JSON")


def run_backup(args: argparse.Namespace) -> dict[str, Any]:
    source = endpoint.open_bucket(endpoint.source_url(args.source), "--source")
    repo = Repository.open(storage.repo_from_env(args.repo))
    _reachable(source, "source bucket")
    return snapshot.snapshot(
        source, repo, compression=args.compression, encrypt_to=args.encrypt_to,
        level=args.level, storage_class=args.storage_class, schedule=args.schedule,
        parallel=args.parallel,
    )


def add_restore_arguments(parser: argparse.ArgumentParser) -> None:
    _add(parser, "--repo", help=_REPO_HELP)
    _add(parser, "--backup", default="latest", help="snapshot id or 'latest' (default)")
    _add(parser, "--to", required=True, metavar="s3://bucket/prefix",
         help="where the objects go: key K of the snapshot becomes prefix/K (credentials "
         f"from ${runner_contract.ENV_BUCKET_ACCESS_KEY_ID} / ..._SECRET_ACCESS_KEY, else the "
         "AWS environment)")
    _add(parser, "--prefix", default="", help="only keys of the snapshot starting with this")
    _add(parser, "--mode", choices=restore.MODES, default="missing",
         help="missing: skip keys the target has (default); replace: overwrite them")
    _add(parser, "--decrypt-key", type=Path, help="OpenPGP secret key file")
    _add(parser, "--parallel", type=_parallel, default=snapshot.DEFAULT_PARALLEL,
         help="objects transferred at once (default %(default)s)")
    _add(parser, "--json", action="store_true", help="print the result as JSON")


def run_restore(args: argparse.Namespace) -> dict[str, Any]:
    target = endpoint.open_bucket(args.to, "--to")
    repo = Repository.open(storage.repo_from_env(args.repo), create=False)
    _reachable(target, "target bucket")
    return restore.restore(
        repo, args.backup, target, prefix=args.prefix, mode=args.mode,
        decrypt_key=args.decrypt_key, parallel=args.parallel,
    )
