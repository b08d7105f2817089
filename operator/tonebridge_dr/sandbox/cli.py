"""`tonebridge-dr sandbox up|down|status`: a real local control plane plus node agent.

    eval "$(tonebridge-dr sandbox up)"     # start (or find) it; prints export KUBECONFIG=...
    tonebridge-dr sandbox status           # same line and exit 0 while it runs, else exit 1
    tonebridge-dr sandbox down             # stop everything it started (exit 0 if nothing ran)

Exit codes: 0 ok, 1 not running (status) or failed to start (up), 2 usage.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from tonebridge_dr.sandbox import layout, runtime


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tonebridge-dr sandbox",
        description="Local Kubernetes control plane (etcd, kube-apiserver, "
        "kube-controller-manager) with a node agent that runs pods as local processes.",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=layout.default_state_dir(),
        help="where the sandbox keeps its state, logs and kubeconfig (default: %(default)s)",
    )
    # --state-dir is accepted before and after the subcommand.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", type=Path, default=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser(
        "up", parents=[common], help="start the sandbox in the background and wait for it"
    )
    up.add_argument(
        "--crds",
        type=Path,
        action="append",
        help="CRD file or folder to install (repeatable; default: the repository's crds/)",
    )
    up.add_argument("--no-crds", action="store_true", help="install no CRDs")
    up.add_argument(
        "--controlplane-dir",
        type=Path,
        help=f"folder with the control-plane binaries (default: ${layout.CONTROLPLANE_ENV}, "
        "$KUBEBUILDER_ASSETS, or the build cache)",
    )
    up.add_argument("--timeout", type=float, default=240.0, help="seconds to wait for readiness")
    commands.add_parser(
        "status", parents=[common], help="print the export line if the sandbox runs"
    )
    commands.add_parser(
        "down", parents=[common], help="stop the sandbox and every process it started"
    )
    return parser


def _export(sandbox: runtime.Sandbox) -> str:
    return f"export KUBECONFIG={shlex.quote(str(sandbox.kubeconfig))}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exit_:  # argparse exits on --help and on usage errors
        return int(exit_.code or 0)
    state = layout.StateDir(args.state_dir.expanduser().resolve())

    if args.command == "up":
        crds: list[Path] | None = [] if args.no_crds else args.crds
        try:
            sandbox = runtime.start(
                state,
                crd_paths=crds,
                controlplane_dir=args.controlplane_dir,
                detach=True,
                timeout=args.timeout,
            )
        except (runtime.SandboxError, OSError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        if sandbox.timings:
            print(
                f"sandbox ready (start-up {sandbox.timings.get('total', 0):.1f}s), "
                f"logs in {state.logs}",
                file=sys.stderr,
            )
        print(_export(sandbox))
        return 0

    if args.command == "status":
        running = runtime.status(state)
        if running is None:
            print(f"sandbox is not running (state dir {state.root})", file=sys.stderr)
            return 1
        print(_export(running))
        return 0

    stopped = runtime.stop(state)
    print("sandbox stopped" if stopped else "sandbox was not running", file=sys.stderr)
    return 0
