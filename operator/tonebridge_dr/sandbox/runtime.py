"""Start, find and stop a sandbox (its supervisor process) by state dir.

Used by `tonebridge-dr sandbox up|status|down` (detached supervisor) and by the
pytest fixture (supervisor as a child that dies with the test process).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tonebridge_dr.sandbox import layout, pki, procs
from tonebridge_dr.sandbox.kube import Kube
from tonebridge_dr.sandbox.supervisor import read_json

if TYPE_CHECKING:
    import kubernetes.client


class SandboxError(RuntimeError):
    """The sandbox could not be started or reached; the message says why."""


class KubectlError(subprocess.CalledProcessError):
    def __str__(self) -> str:
        return f"{super().__str__()}\nstdout: {self.output}\nstderr: {self.stderr}"


@dataclass(frozen=True)
class Sandbox:
    """A running sandbox: where its kubeconfig is and how to talk to it."""

    state_dir: Path
    kubeconfig: Path
    server: str
    kubectl_path: Path
    supervisor_pid: int
    timings: dict[str, float] = field(default_factory=dict)

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl against the sandbox; with `check`, a non-zero exit raises
        KubectlError (a CalledProcessError whose message includes stdout and stderr)."""
        argv = [str(self.kubectl_path), f"--kubeconfig={self.kubeconfig}", *args]
        result = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, argv, result.stdout, result.stderr)
        return result

    def api_client(self) -> kubernetes.client.ApiClient:
        """A new kubernetes.client.ApiClient for the sandbox (close it when done)."""
        import kubernetes.client
        import kubernetes.config

        new_client: Callable[..., kubernetes.client.ApiClient] = (
            kubernetes.config.new_client_from_config
        )
        return new_client(config_file=str(self.kubeconfig))

    def kube(self) -> Kube:
        """The sandbox's own small JSON client (plain dicts), as the admin user."""
        keys = pki.Pki(self.state_dir / "pki")
        return Kube(
            self.server,
            ca_cert=keys.ca_cert,
            client_cert=keys.admin_cert,
            client_key=keys.admin_key,
            pool_size=4,
        )

    def pod_dir(self, namespace: str, pod: str) -> Path:
        """The node agent's work dir of a pod (latest incarnation by that name):
        `<container>.log`, `<container>.termination-log`, `volumes/`, `work/`, `home/`."""
        candidates = sorted(
            (self.state_dir / "pods" / namespace).glob(f"{pod}-*"),
            key=lambda p: p.stat().st_mtime,
        )
        candidates = [p for p in candidates if len(p.name) == len(pod) + 9]
        if not candidates:
            raise FileNotFoundError(f"no pod {namespace}/{pod} ran on the sandbox node")
        return candidates[-1]

    def pod_log(self, namespace: str, pod: str, container: str | None = None) -> str:
        """Output (stdout and stderr) of a pod's container; the only container by default."""
        directory = self.pod_dir(namespace, pod)
        if container is None:
            logs = sorted(directory.glob("*.log"))
            if len(logs) != 1:
                raise ValueError(f"pod {namespace}/{pod} has {len(logs)} container logs; name one")
            return logs[0].read_text(errors="replace")
        return (directory / f"{container}.log").read_text(errors="replace")


def status(state: layout.StateDir) -> Sandbox | None:
    """The sandbox running in `state`, if its supervisor is alive and it is ready."""
    ready = read_json(state.ready)
    if not ready:
        return None
    pid, started = ready.get("pid"), ready.get("started")
    if not isinstance(pid, int) or not procs.is_alive(
        pid, started if isinstance(started, int) else None
    ):
        return None
    timings = ready.get("timings")
    return Sandbox(
        state_dir=state.root,
        kubeconfig=Path(str(ready["kubeconfig"])),
        server=str(ready["server"]),
        kubectl_path=Path(str(ready["kubectl"])),
        supervisor_pid=pid,
        timings=dict(timings) if isinstance(timings, dict) else {},
    )


def start(
    state: layout.StateDir,
    *,
    crd_paths: Sequence[Path] | None = None,
    controlplane_dir: Path | None = None,
    detach: bool = True,
    timeout: float = 240.0,
    python: Path | None = None,
) -> Sandbox:
    """Start a supervisor for `state` and wait until the sandbox is ready.

    Returns the running sandbox if one already runs there. `detach=True` starts it
    in its own session, independent of the caller (`sandbox up`); otherwise it stops
    when the calling process dies (tests). `python` is the interpreter (and so the venv,
    the pods' "image") the supervisor runs with, this one by default. Raises SandboxError
    with the reason and the supervisor log's tail if it fails.
    """
    running = status(state)
    if running is not None:
        return running
    state.root.mkdir(parents=True, exist_ok=True)
    state.logs.mkdir(exist_ok=True)
    argv = [
        str(python or sys.executable),
        "-P",  # import from the venv only, never from the caller's working directory
        "-m",
        "tonebridge_dr.sandbox.supervisor",
        f"--state-dir={state.root}",
    ]
    for path in crd_paths or []:
        argv.append(f"--crds={path}")
    if crd_paths is not None and not crd_paths:
        argv.append("--no-crds")
    if controlplane_dir is not None:
        argv.append(f"--controlplane-dir={controlplane_dir}")
    argv.append(f"--timeout={timeout}")
    if not detach:
        argv.append(f"--parent-pid={os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        state.error.unlink()
    with (state.logs / "supervisor.out").open("ab") as out:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    deadline = time.monotonic() + timeout + 30
    while True:
        ready = status(state)
        if ready is not None and ready.supervisor_pid == process.pid:
            return ready
        if process.poll() is not None:
            raise SandboxError(
                _failure(state, f"the sandbox supervisor exited with {process.returncode}")
            )
        if time.monotonic() > deadline:
            stop(state)
            raise SandboxError(_failure(state, f"the sandbox was not ready after {timeout:.0f}s"))
        time.sleep(0.1)


def _failure(state: layout.StateDir, headline: str) -> str:
    lines = [headline]
    with contextlib.suppress(FileNotFoundError):
        lines.append(state.error.read_text().strip())
    tail = list(procs.iter_lines_tail(state.supervisor_log, 4000))[-20:]
    if tail:
        lines.append(f"last lines of {state.supervisor_log}:")
        lines.extend(tail)
    return "\n".join(lines)


def stop(state: layout.StateDir, timeout: float = 60.0) -> bool:
    """Stop the supervisor of `state` and everything it started; True if anything ran.

    The supervisor gets SIGTERM and stops its children itself; if it does not exit
    in `timeout` it gets SIGKILL. Then every group left in the pidfile is killed.
    Safe to call when nothing runs.
    """
    found = False
    info = read_json(state.supervisor_pid)
    if info and isinstance(info.get("pid"), int):
        pid = int(info["pid"])  # type: ignore[call-overload]
        started = info.get("started")
        started = started if isinstance(started, int) else None
        if procs.is_alive(pid, started):
            found = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not procs.wait_gone(pid, started, timeout):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                procs.wait_gone(pid, started, 10)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it if it was our child (tests)
    if procs.kill_recorded(state.processes, grace=2.0):
        found = True
    for stale in (state.ready, state.supervisor_pid, state.processes):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    return found
