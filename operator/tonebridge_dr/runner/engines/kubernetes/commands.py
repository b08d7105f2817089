"""Command-line glue for `tonebridge-dr backup kubernetes` and `restore kubernetes`.

The engine protocol (`registry.Engine`): the runner CLI builds a sub-parser, calls
`add_*_arguments(parser)` and later `run_*(args)`, printing the returned dict (the
stable `--json` result, also the Job's termination message).

Credentials for the API server: the pod's ServiceAccount token inside a Job, else
`--kubeconfig` / $KUBECONFIG / ~/.kube/config. Git credentials only from the
environment (gitcopy.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tonebridge_dr.runner import errors, storage
from tonebridge_dr.runner.contract import runner_contract
from tonebridge_dr.runner.engines.kubernetes import export, gitcopy, kinds, restore
from tonebridge_dr.runner.engines.kubernetes.client import Client
from tonebridge_dr.runner.repository.catalog import Repository

_REPO_HELP = (
    "repository URL: s3://bucket/prefix or file:///path "
    f"(default ${runner_contract.ENV_REPO})"
)


def _add(parser: argparse.ArgumentParser, *flags: str, **kwargs: Any) -> None:
    """add_argument unless the CLI already defined the option."""
    if any(flag in parser._option_string_actions for flag in flags):
        return
    parser.add_argument(*flags, **kwargs)


def _add_common(parser: argparse.ArgumentParser) -> None:
    _add(parser, "--repo", help=_REPO_HELP)
    _add(parser, "--kubeconfig", default=None,
         help="kubeconfig file (default: the pod's ServiceAccount, then $KUBECONFIG)")
    _add(parser, "--json", action="store_true", help="print the result as JSON")


def add_backup_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    _add(parser, "--namespace", action="append", required=True, dest="namespaces",
         metavar="NAMESPACE", help="namespace to export (repeat for more)")
    _add(parser, "--kind", action="append", dest="kinds", metavar="KIND",
         help="resource to export, e.g. configmaps, or group/Kind for a custom resource "
         f"(repeat; default: {', '.join(kinds.DEFAULT_KINDS)})")
    _add(parser, "--selector", default=None, metavar="LABELS",
         help="only objects with these labels (a label selector, e.g. app=web,tier=api)")
    _add(parser, "--git-url", default=None, help="also commit non-Secret objects to this Git "
         "repository (https://, ssh://, git@host:path or file://)")
    _add(parser, "--git-branch", default="main", help="branch of the Git copy (default main)")
    _add(parser, "--git-path", default="", help="folder in the Git repository (default: root)")
    _add(parser, "--compression", default="zstd", help="codec for stored objects (default zstd)")
    _add(parser, "--level", type=int, default=None, help="compression level")
    _add(parser, "--encrypt-to", type=Path, help="OpenPGP public key file to encrypt to "
         "(required when secrets are exported)")
    _add(parser, "--storage-class", default=None, help="storage class of the stored objects")
    _add(parser, "--schedule", default=None,
         help="name of the BackupPolicy schedule this backup belongs to (for retention)")


def run_backup(args: argparse.Namespace) -> dict[str, Any]:
    git = (gitcopy.GitTarget(args.git_url, args.git_branch, args.git_path)
           if args.git_url else None)
    options = export.ExportOptions(
        namespaces=tuple(dict.fromkeys(args.namespaces)),
        kinds=tuple(args.kinds) if args.kinds else kinds.DEFAULT_KINDS,
        label_selector=args.selector, git=git,
    )
    repo = Repository.open(storage.repo_from_env(args.repo))
    with Client.connect(args.kubeconfig) as client:
        return export.backup(
            client, repo, options, compression=args.compression, encrypt_to=args.encrypt_to,
            level=args.level, storage_class=args.storage_class, schedule=args.schedule,
        )


def add_restore_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    _add(parser, "--backup", default="latest", help="backup id or 'latest' (default)")
    _add(parser, "--namespace-map", action="append", default=[], metavar="SOURCE=TARGET",
         help="restore the objects of namespace SOURCE into TARGET (repeat)")
    _add(parser, "--all-namespaces-to", default=None, metavar="NAMESPACE",
         help="restore the objects of every namespace of the backup into NAMESPACE")
    _add(parser, "--namespace", action="append", default=[], dest="namespaces",
         metavar="NAMESPACE", help="only objects of this (source) namespace (repeat)")
    _add(parser, "--kind", action="append", default=[], dest="kinds", metavar="KIND",
         help="only this kind: configmaps, ConfigMap or group/Kind (repeat)")
    _add(parser, "--name", action="append", default=[], dest="names", metavar="NAME",
         help="only objects of this name (repeat)")
    _add(parser, "--mode", choices=restore.MODES, default="missing",
         help="missing: create what does not exist, leave live objects alone (default); "
         "replace: server-side apply over live objects, recreate on immutable fields")
    _add(parser, "--dry-run", action="store_true",
         help="server-side dry run: validate everything, change nothing, list the changes")
    _add(parser, "--decrypt-key", type=Path, help="OpenPGP secret key file")


def run_restore(args: argparse.Namespace) -> dict[str, Any]:
    if args.all_namespaces_to and args.namespace_map:
        raise errors.UsageError("give --all-namespaces-to or --namespace-map, not both")
    options = restore.RestoreOptions(
        namespace_map=restore.parse_namespace_map(args.namespace_map),
        into=args.all_namespaces_to,
        kinds=tuple(args.kinds), names=tuple(args.names), namespaces=tuple(args.namespaces),
        mode=args.mode, dry_run=args.dry_run,
    )
    repo = Repository.open(storage.repo_from_env(args.repo), create=False)
    with Client.connect(args.kubeconfig) as client:
        return restore.restore(client, repo, args.backup, options, decrypt_key=args.decrypt_key)
