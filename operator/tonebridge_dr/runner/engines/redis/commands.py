"""Command-line glue for `tonebridge-dr backup redis`, `restore redis` and `restore-test redis`.

The engine protocol (`registry.Engine`): the runner CLI builds a sub-parser,
calls `add_*_arguments(parser)` and later `run_*(args)`, printing the returned
dict (the stable `--json` result). Options the CLI already defines (e.g. a shared
`--repo` or `--json`) are not added twice.

Credentials never need the command line: `--url` defaults to
$TONEBRIDGE_DR_REDIS_URL, `--target-url` to $TONEBRIDGE_DR_REDIS_TARGET_URL,
and a password missing from the URL comes from $REDIS_PASSWORD (user from
$REDIS_USERNAME).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tonebridge_dr.runner import errors, storage
from tonebridge_dr.runner.contract import runner_contract
from tonebridge_dr.runner.engines.redis import backup, endpoints, replication, restore, scratch
from tonebridge_dr.runner.engines.restoretest import options as test_options
from tonebridge_dr.runner.repository.catalog import Repository


def _add(parser: argparse.ArgumentParser, *flags: str, **kwargs: Any) -> None:
    """add_argument unless the CLI already defined the option."""
    if any(flag in parser._option_string_actions for flag in flags):
        return
    parser.add_argument(*flags, **kwargs)


_REPO_HELP = (
    "repository URL: s3://bucket/prefix or file:///path "
    f"(default ${runner_contract.ENV_REPO})"
)


def _positive(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return number


def add_backup_arguments(parser: argparse.ArgumentParser) -> None:
    _add(
        parser,
        "--url",
        help="redis://[user[:password]@]host[:port] of the server to back up "
        f"(default ${endpoints.SOURCE_URL_ENV}; password from ${endpoints.PASSWORD_ENV})",
    )
    _add(parser, "--repo", help=_REPO_HELP)
    _add(parser, "--compression", default="zstd", help="codec for stored objects (default zstd)")
    _add(
        parser,
        "--level",
        type=int,
        default=None,
        help=f"compression level (default for zstd: {backup.ZSTD_LEVEL})",
    )
    _add(parser, "--encrypt-to", type=Path, help="OpenPGP public key file to encrypt to")
    _add(parser, "--storage-class", default=None, help="storage class of the stored objects")
    _add(
        parser,
        "--schedule",
        default=None,
        help="name of the BackupPolicy schedule this backup belongs to (for retention)",
    )
    _add(
        parser,
        "--timeout",
        type=_positive,
        default=replication.DEFAULT_TIMEOUT,
        help="seconds without data from Redis before giving up (default %(default)s)",
    )
    _add(parser, "--json", action="store_true", help="print the result as JSON")


def run_backup(args: argparse.Namespace) -> dict[str, Any]:
    endpoint = endpoints.from_args(args.url, endpoints.SOURCE_URL_ENV, "--url")
    repo = Repository.open(storage.repo_from_env(args.repo))
    return backup.backup(
        endpoint,
        repo,
        compression=args.compression,
        encrypt_to=args.encrypt_to,
        level=getattr(args, "level", None),
        storage_class=getattr(args, "storage_class", None),
        schedule=getattr(args, "schedule", None),
        timeout=getattr(args, "timeout", replication.DEFAULT_TIMEOUT),
    )


def add_restore_arguments(parser: argparse.ArgumentParser) -> None:
    _add(parser, "--repo", help=_REPO_HELP)
    _add(parser, "--backup", default="latest", help="backup id or 'latest' (default)")
    _add(
        parser,
        "--target-url",
        help="redis://... of the live server to restore keys into "
        f"(default ${endpoints.TARGET_URL_ENV}; password from ${endpoints.PASSWORD_ENV})",
    )
    _add(
        parser,
        "--data-dir",
        type=Path,
        help="write dump.rdb into this folder for a stopped Redis instead",
    )
    _add(
        parser,
        "--mode",
        choices=restore.MODES,
        default="missing",
        help="missing: only keys the target lacks (default); replace: overwrite",
    )
    _add(parser, "--pattern", default=None, help="only keys matching this glob (SCAN MATCH)")
    _add(parser, "--db", type=int, default=None, help="only this logical database")
    _add(parser, "--decrypt-key", type=Path, help="OpenPGP secret key file")
    _add(parser, "--overwrite", action="store_true", help="--data-dir: replace a dump.rdb")
    _add(
        parser,
        "--redis-server",
        default=scratch.DEFAULT_BINARY,
        help="redis-server binary for the scratch server (default from PATH)",
    )
    _add(parser, "--scratch-dir", type=Path, default=None, help="where the scratch server lives")
    _add(
        parser,
        "--batch-size",
        type=int,
        default=restore.DEFAULT_BATCH,
        help="keys per pipelined DUMP/RESTORE round (default %(default)s)",
    )
    _add(
        parser,
        "--no-check-rdb",
        action="store_true",
        help="--data-dir: skip redis-check-rdb (CRC-64 and SHA-256 are still verified)",
    )
    _add(parser, "--json", action="store_true", help="print the result as JSON")


def run_restore(args: argparse.Namespace) -> dict[str, Any]:
    data_dir: Path | None = getattr(args, "data_dir", None)
    target_url: str | None = getattr(args, "target_url", None)
    if data_dir is not None and target_url:
        raise errors.UsageError("give either --target-url or --data-dir, not both")
    if data_dir is not None:
        for option in ("pattern", "db"):
            if getattr(args, option, None) is not None:
                raise errors.UsageError(f"--{option} needs --target-url, not --data-dir")
        if getattr(args, "mode", "missing") != "missing":
            raise errors.UsageError("--mode needs --target-url; use --overwrite with --data-dir")
        return restore.restore_to_data_dir(
            Repository.open(storage.repo_from_env(args.repo), create=False),
            args.backup,
            data_dir,
            overwrite=args.overwrite,
            decrypt_key=args.decrypt_key,
            check_tool=None if args.no_check_rdb else "redis-check-rdb",
        )
    if getattr(args, "overwrite", False):
        raise errors.UsageError("--overwrite is for --data-dir; use --mode replace with a server")
    target = endpoints.from_args(target_url, endpoints.TARGET_URL_ENV, "--target-url or --data-dir")
    return restore.restore_to_server(
        Repository.open(storage.repo_from_env(args.repo), create=False),
        args.backup,
        target,
        mode=args.mode,
        pattern=args.pattern,
        db=args.db,
        decrypt_key=args.decrypt_key,
        scratch_dir=args.scratch_dir,
        redis_server=args.redis_server,
        batch_size=args.batch_size,
    )


# --- restore-test -------------------------------------------------------------------------------
def add_restore_test_arguments(parser: argparse.ArgumentParser) -> None:
    _add(parser, "--repo", help=_REPO_HELP)
    _add(parser, "--backup", default=None,
         help="backup id (default: the newest complete Redis backup)")
    _add(parser, "--scratch-instance", type=Path, metavar="DIR", required=True,
         help="an empty (or missing) folder: the RDB is loaded into a private redis-server "
         "there (Unix socket only, no persistence), stopped and emptied afterwards")
    _add(parser, "--checks", type=Path, metavar="FILE",
         help="JSON list of checks, as the RestoreTest spec's checks (e.g. "
         '[{"name": "users", "query": "COUNT user:*", "expect": {"min": 1}}]; '
         f"default ${runner_contract.ENV_CHECKS})")
    _add(parser, "--checks-json", metavar="TEXT", help="the checks as JSON text")
    _add(parser, "--rto", metavar="DURATION",
         help="recovery time objective: from the first repository read to the checks passing "
         "(e.g. 15m, 1h30m, 90s, 500ms or seconds); a longer restore exits 16")
    _add(parser, "--name", default=test_options.DEFAULT_TEST_NAME,
         help="the test's name, in its report's key restore-tests/<UTC time>-<name>.json "
         f"(default {test_options.DEFAULT_TEST_NAME})")
    _add(parser, "--decrypt-key", type=Path, metavar="PRIVKEY_FILE",
         help="OpenPGP secret key file for an encrypted backup")
    _add(parser, "--redis-server", default=scratch.DEFAULT_BINARY,
         help="the redis-server binary of the scratch server (default from PATH)")
    _add(parser, "--timeout", type=_positive, default=scratch.DEFAULT_LOAD_TIMEOUT,
         metavar="SECONDS", help="seconds the scratch server may take to load the RDB")
    _add(parser, "--json", action="store_true", help="print the result as JSON")


def run_restore_test(args: argparse.Namespace) -> dict[str, Any]:
    from tonebridge_dr.runner.engines.redis import restoretest
    from tonebridge_dr.runner.engines.restoretest import checks
    from tonebridge_dr.runner.repository import ids, reports

    name = reports.check_name(args.name)
    if args.backup not in (None, "latest"):
        ids.check_backup_id(args.backup)
    options = restoretest.TestOptions(
        name=name,
        backup_id=args.backup,
        checks=tuple(checks.load_checks(args.checks, args.checks_json, restoretest.WORDING)),
        rto=test_options.parse_seconds(args.rto, "--rto") if args.rto is not None else None,
        decrypt_key=args.decrypt_key,
    )
    restoretest.parse_checks(options.checks)  # the language, before anything is read
    target = restoretest.ScratchRedis(
        args.scratch_instance, binary=args.redis_server, load_timeout=args.timeout
    )
    repo = Repository.open(storage.repo_from_env(args.repo), create=False)
    return restoretest.run_restore_test(repo, target, options)
