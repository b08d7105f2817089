"""`tonebridge-dr sandbox up|status|down`, and that no process outlives the sandbox,
however it ends. Each test runs its own sandbox in a private state dir."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tonebridge_dr.sandbox import layout, procs, runtime
from tonebridge_dr.sandbox.procs import ProcessRecord, ProcessTable
from tonebridge_dr.sandbox.runtime import Sandbox

T = TypeVar("T")
CLI = str(Path(sys.prefix) / "bin" / "tonebridge-dr")


def wait_until(check: Callable[[], T | None], timeout: float = 60, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def sandbox_cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, "sandbox", *args, f"--state-dir={state}"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def start_pod(sandbox: Sandbox, name: str, script: str) -> int:
    """Create a pod running `sh -c script` in `default`; return its main pid once running."""
    kube = sandbox.kube()
    kube.create(
        "/api/v1/namespaces/default/pods",
        {
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "main", "image": "x", "command": ["sh", "-c", script]}],
            },
        },
    )

    def pid() -> int | None:
        pod = kube.get(f"/api/v1/namespaces/default/pods/{name}")
        for status in pod.get("status", {}).get("containerStatuses") or []:
            if "running" in status["state"]:
                return int(status["containerID"].removeprefix("sandbox://"))
        return None

    return wait_until(pid, what=f"pod {name} running")


def survivors(records: list[ProcessRecord]) -> list[int]:
    """Live processes of any recorded group (found by /proc scan)."""
    return [pid for r in records for pid in procs.group_members(r.pgid, r.started)]


def started_records(state: layout.StateDir) -> list[ProcessRecord]:
    records = ProcessTable.read(state.processes)
    names = {r.name for r in records}
    assert {"etcd", "kube-apiserver", "kube-controller-manager"} <= names
    return records


@pytest.fixture
def state(tmp_path: Path) -> Iterator[layout.StateDir]:
    state = layout.StateDir(tmp_path / "state")
    yield state
    runtime.stop(state)  # whatever a failed test left behind


def test_cli_up_status_down_round_trip_leaves_no_process(state: layout.StateDir) -> None:
    up = sandbox_cli(state.root, "up", "--no-crds")
    assert up.returncode == 0, up.stderr
    export = f"export KUBECONFIG={state.kubeconfig}"
    assert up.stdout.strip() == export

    status = sandbox_cli(state.root, "status")
    assert (status.returncode, status.stdout.strip()) == (0, export)
    again = sandbox_cli(state.root, "up")  # already running: same sandbox, same line
    assert (again.returncode, again.stdout.strip()) == (0, export)

    sandbox = runtime.status(state)
    assert sandbox is not None
    assert "sandbox-node" in sandbox.kubectl("get", "nodes").stdout
    # A pod whose shell has a child: both must go.
    start_pod(sandbox, "sleeper", "sleep 600 & wait")
    records = started_records(state)
    assert any(r.name == "pod default/sleeper/main" for r in records)
    supervisor = procs.start_time(sandbox.supervisor_pid)
    assert len(survivors(records)) >= 5

    down = sandbox_cli(state.root, "down")
    assert down.returncode == 0, down.stderr
    assert survivors(records) == []
    assert not procs.is_alive(sandbox.supervisor_pid, supervisor)

    status = sandbox_cli(state.root, "status")
    assert status.returncode == 1
    assert "not running" in status.stderr
    assert sandbox_cli(state.root, "down").returncode == 0  # nothing to stop is fine


def test_sandbox_stops_when_the_test_process_dies(state: layout.StateDir) -> None:
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from tonebridge_dr.sandbox import layout, runtime
        runtime.start(layout.StateDir(Path({str(state.root)!r})), crd_paths=[], detach=False)
        print("ready", flush=True)
        time.sleep(600)
        """
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        assert owner.stdout.readline().strip() == "ready"
        sandbox = runtime.status(state)
        assert sandbox is not None
        start_pod(sandbox, "sleeper", "sleep 600 & wait")
        records = started_records(state)
        supervisor = procs.start_time(sandbox.supervisor_pid)
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    # The supervisor gets SIGTERM from the kernel (parent-death signal) and cleans up.
    wait_until(lambda: not procs.is_alive(sandbox.supervisor_pid, supervisor), what="supervisor")
    wait_until(lambda: not survivors(records), what="all sandbox processes gone")


def test_down_cleans_up_after_a_killed_supervisor(state: layout.StateDir) -> None:
    sandbox = runtime.start(state, crd_paths=[], detach=True)
    # `sleep` is a grandchild: no parent-death signal reaches it, only the pidfile does.
    start_pod(sandbox, "sleeper", "sleep 600 & wait")
    records = started_records(state)
    os.kill(sandbox.supervisor_pid, signal.SIGKILL)
    leader_pids = [(r.pid, r.started) for r in records]
    # Direct children die with the supervisor (parent-death signal) ...
    wait_until(
        lambda: not any(procs.is_alive(pid, started) for pid, started in leader_pids),
        what="children of the killed supervisor",
    )
    # ... and `down` finds the orphaned grandchild through the pidfile.
    assert survivors(records), "expected the orphaned sleep to survive until `down`"
    assert runtime.stop(state) is True
    assert survivors(records) == []
    assert runtime.status(state) is None
