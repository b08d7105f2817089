"""The sandbox supervisor: one process that owns the control plane and the node agent.

`tonebridge-dr sandbox up` starts it detached; the pytest fixture starts it as a
child with `--parent-pid`, so it shuts down when the test process dies. It

1. takes the state dir's lock and kills leftovers of a previous run (pidfile),
2. starts etcd, kube-apiserver, kube-controller-manager, installs the CRDs,
   registers the node and starts watching pods,
3. writes `ready.json` (or `error.txt` and exits 1),
4. runs until SIGTERM / SIGINT / SIGHUP, the death of `--parent-pid`, or the exit
   of a control-plane component, then stops everything it started.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from tonebridge_dr.sandbox import crds, layout, procs
from tonebridge_dr.sandbox.controlplane import ControlPlane, StartupError
from tonebridge_dr.sandbox.node.agent import NodeAgent

log = logging.getLogger("tonebridge_dr.sandbox")

NODE_NAME = "sandbox-node"
_PR_SET_PDEATHSIG = 1


class _Stopped(Exception):
    """A stop signal arrived while the sandbox was still starting."""


def read_json(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: dict[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


class Supervisor:
    def __init__(
        self,
        state: layout.StateDir,
        crd_paths: Sequence[Path],
        binaries: Path,
        startup_timeout: float = 180.0,
    ) -> None:
        self.state = state
        self.crd_paths = list(crd_paths)
        self.binaries = binaries
        self.startup_timeout = startup_timeout
        self.stop_requested = threading.Event()
        self.starting = True
        self.processes = procs.ProcessTable(state.processes)
        self.controlplane = ControlPlane(state, self.processes, NODE_NAME, binaries)
        self.agent: NodeAgent | None = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("received signal %d, stopping", signum)
        self.stop_requested.set()
        if self.starting:
            raise _Stopped()

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        began = time.monotonic()
        try:
            self.controlplane.start(self.startup_timeout)
            kube = self.controlplane.kube()
            started = time.monotonic()
            paths = [p for p in self.crd_paths if p.exists()]
            names = crds.install(kube, paths)
            self.controlplane.timings["crds"] = time.monotonic() - started
            log.info("installed %d CRDs from %s", len(names), ", ".join(map(str, paths)) or "-")
            started = time.monotonic()
            self.agent = NodeAgent(
                kube,
                node_name=NODE_NAME,
                pods_dir=self.state.pods,
                processes=self.processes,
                keys=self.controlplane.keys,  # type: ignore[arg-type]
                apiserver_port=self.controlplane.apiserver_port,
            )
            self.agent.start()
            self.controlplane.timings["node-agent"] = time.monotonic() - started
            self.controlplane.timings["total"] = time.monotonic() - began
            self.starting = False
            _write_json(
                self.state.ready,
                {
                    "kubeconfig": str(self.state.kubeconfig),
                    "server": self.controlplane.server,
                    "node": NODE_NAME,
                    "pid": os.getpid(),
                    "started": procs.start_time(os.getpid()),
                    "kubectl": str(self.binaries / "kubectl"),
                    "crds": names,
                    "timings": {k: round(v, 2) for k, v in self.controlplane.timings.items()},
                },
            )
            log.info(
                "sandbox ready in %.1fs: export KUBECONFIG=%s",
                self.controlplane.timings["total"],
                self.state.kubeconfig,
            )
            return self._watch()
        except _Stopped:
            return 0
        except Exception as error:  # StartupError, missing binaries, CRD errors, ...
            if isinstance(error, StartupError | FileNotFoundError):
                log.error("sandbox failed to start: %s", error)
            else:
                log.exception("sandbox failed to start")
            self.state.error.write_text(f"{error}\n")
            return 1
        finally:
            self.starting = False
            self.shutdown()

    def _watch(self) -> int:
        while not self.stop_requested.wait(0.5):
            component = self.controlplane.exited()
            if component is not None:
                message = (
                    f"{component.name} exited with {component.process.returncode}; "
                    f"see {component.log_path}"
                )
                log.error("%s", message)
                self.state.error.write_text(message + "\n")
                return 1
        return 0

    def shutdown(self) -> None:
        """Stop the node agent (and every pod process), then the control plane."""
        with contextlib.suppress(FileNotFoundError):
            self.state.ready.unlink()
        # Signals during shutdown would only interrupt the cleanup.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        if self.agent is not None:
            self.agent.stop()
        self.controlplane.stop()
        procs.kill_recorded(self.state.processes, grace=2.0)
        with contextlib.suppress(FileNotFoundError):
            self.state.processes.unlink()
        log.info("sandbox stopped")


def _follow_parent(parent_pid: int) -> None:
    """Get SIGTERM when `parent_pid` (our parent) dies, so the sandbox shuts down cleanly."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tonebridge_dr.sandbox.supervisor")
    parser.add_argument("--state-dir", type=Path, default=layout.default_state_dir())
    parser.add_argument("--crds", type=Path, action="append", default=None)
    parser.add_argument("--no-crds", action="store_true")
    parser.add_argument("--controlplane-dir", type=Path, default=None)
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=180.0)
    args = parser.parse_args(argv)

    state = layout.StateDir(args.state_dir.resolve())
    state.root.mkdir(parents=True, exist_ok=True)
    state.logs.mkdir(exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[logging.FileHandler(state.supervisor_log), logging.StreamHandler(sys.stderr)],
    )
    lock = state.lock.open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"error: a sandbox supervisor already runs in {state.root}", file=sys.stderr)
        return 1
    if args.parent_pid is not None:
        _follow_parent(args.parent_pid)

    leftovers = procs.kill_recorded(state.processes, grace=2.0)
    for record in leftovers:
        log.warning("killed leftover %s (pid %d) of a previous run", record.name, record.pid)
    for stale in (state.ready, state.error):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    _write_json(
        state.supervisor_pid, {"pid": os.getpid(), "started": procs.start_time(os.getpid())}
    )
    default_crds = layout.default_crd_dir()
    crd_paths = args.crds if args.crds is not None else ([default_crds] if default_crds else [])
    if args.no_crds:
        crd_paths = []
    supervisor = Supervisor(
        state, crd_paths, args.controlplane_dir or layout.controlplane_dir(), args.timeout
    )
    try:
        return supervisor.run()
    finally:
        with contextlib.suppress(FileNotFoundError):
            state.supervisor_pid.unlink()


if __name__ == "__main__":
    sys.exit(main())
