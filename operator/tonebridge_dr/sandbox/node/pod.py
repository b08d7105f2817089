"""One pod's life on the sandbox node, in its own thread (`PodWorker`).

bind -> check what the node can run -> volumes -> init containers one after
another -> main containers (concurrently) -> final phase. Status is written to
`pods/<name>/status` after every change, as the kubelet does, so the Job
controller sees Running, then Succeeded / Failed with exit codes and
termination messages.

Restart policies: `Never` runs each container once. `OnFailure` / `Always`
restart a container in place (restartCount, lastState, CrashLoopBackOff while
waiting) with a short exponential back-off (1 s doubling to 30 s, shorter than
the kubelet's 10 s..5 min so tests stay quick); the Job controller counts those
restarts against backoffLimit, as in a real cluster.

Stopping: deletion (deletionTimestamp, or the object vanished), the pod's
activeDeadlineSeconds, or agent shutdown. Processes get SIGTERM to their process
group, SIGKILL after the grace period; a deleted pod then gets its final status
and is deleted with gracePeriodSeconds=0, so controllers see it gone.

Pods of ReplicaSets, StatefulSets and DaemonSets (WORKLOAD_OWNERS) get their own pod
IP (EndpointSlices refuse 127.0.0.1), and a container of theirs that has no command
and is not the operator's image runs a placeholder (`sleep infinity`; `true` for an
init container), so rollouts complete and Services list them as ready endpoints.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import itertools
import logging
import os
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tonebridge_dr.sandbox import procs
from tonebridge_dr.sandbox.kube import ApiError, Kube
from tonebridge_dr.sandbox.node import env as envmod
from tonebridge_dr.sandbox.node import image, launch, volumes

log = logging.getLogger(__name__)

Json = dict[str, Any]

TERMINATION_MESSAGE_PATH = "/dev/termination-log"
MAX_TERMINATION_MESSAGE = 4096  # bytes, like the kubelet (last 4096 bytes of the file)
FALLBACK_LOG_LINES = 80  # FallbackToLogsOnError: the kubelet's limits
FALLBACK_LOG_BYTES = 2048
CONFIG_RETRY_SECONDS = 1.0
BACKOFF_INITIAL, BACKOFF_MAX = 1.0, 30.0
DEFAULT_GRACE_SECONDS = 30
#: Pods without `command` run this when their image is the operator's own.
DEFAULT_ENTRYPOINT = ("tonebridge-dr",)
OWN_IMAGE_MARKER = "tonebridge-dr"
#: Pods of these controllers whose container has no `command` and another image run a
#: placeholder instead (the sandbox cannot know the image's entrypoint), so Deployments,
#: StatefulSets and DaemonSets roll out and their pods become Ready: main containers
#: sleep until stopped, init containers succeed at once. Job pods and bare pods do not.
WORKLOAD_OWNERS = frozenset({"ReplicaSet", "StatefulSet", "DaemonSet"})
PLACEHOLDER_MAIN = ("sleep", "infinity")
PLACEHOLDER_INIT = ("true",)
#: Pods of those controllers report their own pod IP from this range, because EndpointSlices
#: refuse loopback addresses; it is not routable (their processes share the host's network,
#: as every sandbox pod does). Other pods report 127.0.0.1, as before.
WORKLOAD_POD_NETWORK = ipaddress.IPv4Network("10.244.0.0/16")
_pod_ip_numbers = itertools.count()
_pod_ip_lock = threading.Lock()
LOG_DIR_ANNOTATION = "sandbox.dr.tonebridge.io/log-dir"

SHUTDOWN, DELETED, DEADLINE = "shutdown", "deleted", "deadline"
TERMINAL = ("Succeeded", "Failed")


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def is_workload_pod(pod: Json) -> bool:
    """Whether a ReplicaSet, StatefulSet or DaemonSet controls `pod`."""
    owners = pod["metadata"].get("ownerReferences") or []
    return any(o.get("controller") and o.get("kind") in WORKLOAD_OWNERS for o in owners)


def next_workload_pod_ip() -> str:
    """A pod IP from WORKLOAD_POD_NETWORK no other pod of this node agent got (until the
    range wraps after 65,534 pods)."""
    with _pod_ip_lock:
        number = next(_pod_ip_numbers)
    return str(WORKLOAD_POD_NETWORK[1 + number % (WORKLOAD_POD_NETWORK.num_addresses - 2)])


class NodeContext(Protocol):
    """What a pod worker needs from the node agent."""

    kube: Kube
    node_name: str
    processes: procs.ProcessTable
    image_paths: tuple[Path, ...]  # see image.paths()

    @property
    def allocatable(self) -> Mapping[str, str]: ...

    def base_env(self, pod: Json) -> dict[str, str]: ...

    def objects(self) -> volumes.TokenSource: ...

    def force_delete(self, pod: Json) -> None: ...

    def event(self, pod: Json, reason: str, message: str, warning: bool = False) -> None: ...

    def worker_done(self, worker: PodWorker) -> None: ...


@dataclass
class ContainerRun:
    """The kubelet's view of one container, rendered into a containerStatus."""

    spec: Json
    init: bool
    state: Json = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: Json = field(default_factory=dict)
    restart_count: int = 0
    started: bool = False
    exit_code: int | None = None
    pid: int | None = None
    running: bool = False

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def status(self) -> Json:
        status: Json = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "ready": self.running,
            "started": self.running,
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": self.last_state,
        }
        if self.pid is not None:
            status["containerID"] = f"sandbox://{self.pid}"
        return status


class PodWorker(threading.Thread):
    def __init__(self, node: NodeContext, pod: Json, pods_dir: Path) -> None:
        metadata = pod["metadata"]
        self.namespace: str = metadata["namespace"]
        self.pod_name: str = metadata["name"]
        self.uid: str = metadata["uid"]
        super().__init__(name=f"pod {self.namespace}/{self.pod_name}", daemon=True)
        self.node = node
        self.pod = pod
        self.directory: Path = pods_dir / self.namespace / f"{self.pod_name}-{self.uid[:8]}"
        self._lock = threading.RLock()
        self._publish_lock = threading.Lock()
        self._stop_event = threading.Event()
        self.stop_reason: str | None = None
        self.stop_grace: float = DEFAULT_GRACE_SECONDS
        self.gone = False
        self.phase = "Pending"
        self.reason: str | None = None
        self.message: str | None = None
        self.start_time: str | None = None
        self.conditions: dict[str, Json] = {}
        spec = pod["spec"]
        self.runs: dict[str, ContainerRun] = {}
        for c in spec.get("initContainers") or []:
            self.runs[c["name"]] = ContainerRun(c, init=True)
        for c in spec.get("containers") or []:
            self.runs[c["name"]] = ContainerRun(c, init=False)
        self.restart_policy: str = spec.get("restartPolicy") or "Always"
        self.pod_ip = next_workload_pod_ip() if is_workload_pod(pod) else "127.0.0.1"
        self._deadline: float | None = None
        self.rejected = False  # refused before any container ran: no container statuses

    # -- called from the watch thread -------------------------------------------------

    def observe(self, pod: Json) -> None:
        with self._lock:
            self.pod = pod
        if pod["metadata"].get("deletionTimestamp"):
            grace = pod["metadata"].get("deletionGracePeriodSeconds")
            self.request_stop(DELETED, float(grace) if grace is not None else None)

    def observe_gone(self) -> None:
        self.gone = True
        self.request_stop(DELETED, 0.0)

    def request_stop(self, reason: str, grace: float | None = None) -> None:
        with self._lock:
            if self.stop_reason is None or reason == DELETED:
                self.stop_reason = reason
            if grace is None:
                grace = self.pod["spec"].get("terminationGracePeriodSeconds")
            self.stop_grace = min(
                self.stop_grace, float(grace if grace is not None else DEFAULT_GRACE_SECONDS)
            )
        self._stop_event.set()

    def log_path(self, container: str) -> Path:
        return self.directory / f"{container}.log"

    def is_running(self, container: str) -> bool:
        run = self.runs.get(container)
        return run is not None and run.running

    # -- status --------------------------------------------------------------------------

    def _condition(self, kind: str, status: bool, reason: str | None = None) -> None:
        value = "True" if status else "False"
        current = self.conditions.get(kind)
        if current and current["status"] == value and current.get("reason") == reason:
            return
        condition: Json = {"type": kind, "status": value, "lastTransitionTime": now()}
        if reason:
            condition["reason"] = reason
        self.conditions[kind] = condition

    def _status(self) -> Json:
        runs = list(self.runs.values())
        status: Json = {
            "phase": self.phase,
            "reason": self.reason,
            "message": self.message,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": self.pod_ip,
            "podIPs": [{"ip": self.pod_ip}],
            "conditions": list(self.conditions.values()),
            "containerStatuses": [r.status() for r in runs if not r.init and not self.rejected],
        }
        if self.start_time:
            status["startTime"] = self.start_time
        if any(r.init for r in runs) and not self.rejected:
            status["initContainerStatuses"] = [r.status() for r in runs if r.init]
        return status

    def publish(self) -> None:
        """Write the current status (merge patch of the whole status). A pod that is
        gone stops the worker."""
        if self.gone:
            return
        with self._publish_lock:
            with self._lock:
                body = {"status": self._status()}
            try:
                self.node.kube.patch(
                    f"/api/v1/namespaces/{self.namespace}/pods/{self.pod_name}/status", body
                )
            except ApiError as error:
                if error.status == 404:
                    self.observe_gone()
                else:
                    log.warning("%s: status update failed: %s", self.name, error)
            except Exception as error:  # connection trouble: the next publish repeats it
                log.warning("%s: status update failed: %s", self.name, error)

    # -- lifecycle -------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._run()
        except Exception as error:
            log.exception("%s: node agent error", self.name)
            self._fail("SandboxError", f"sandbox node agent error: {error}")
        finally:
            try:
                self._after_stop()
            finally:
                self.node.worker_done(self)

    def _bind(self) -> bool:
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": self.pod_name, "namespace": self.namespace},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node.node_name},
        }
        try:
            self.node.kube.create(
                f"/api/v1/namespaces/{self.namespace}/pods/{self.pod_name}/binding", body
            )
        except ApiError as error:
            log.info("%s: not bound: %s", self.name, error)
            return False
        return True

    def _fail(self, reason: str, message: str) -> None:
        with self._lock:
            self.phase, self.reason, self.message = "Failed", reason, message
            self._condition("Ready", False, "PodFailed")
            self._condition("ContainersReady", False, "PodFailed")
        self.node.event(self.pod, reason, message, warning=True)
        self.publish()

    def _placeholder(self, run: ContainerRun) -> bool:
        """Whether `run` gets a placeholder process (see WORKLOAD_OWNERS)."""
        if run.spec.get("command") or OWN_IMAGE_MARKER in run.spec.get("image", ""):
            return False
        return is_workload_pod(self.pod)

    def _unsupported(self) -> str | None:
        problem = volumes.unsupported(self.pod)
        if problem:
            return problem
        for run in self.runs.values():
            if run.init and run.spec.get("restartPolicy") == "Always":
                return f'init container "{run.name}" is a sidecar (restartPolicy Always), ' + (
                    "which the sandbox node agent does not support"
                )
            if (
                not run.spec.get("command")
                and OWN_IMAGE_MARKER not in run.spec.get("image", "")
                and not self._placeholder(run)
            ):
                return (
                    f'container "{run.name}" has no command and its image '
                    f'"{run.spec.get("image", "")}" is not the operator\'s; the sandbox ignores '
                    "images and cannot know its entrypoint"
                )
        return None

    def _run(self) -> None:
        if not self.pod["spec"].get("nodeName") and not self._bind():
            return
        self.start_time = now()
        ads = self.pod["spec"].get("activeDeadlineSeconds")
        if ads is not None:
            self._deadline = time.monotonic() + float(ads)
        self._condition("PodScheduled", True)
        problem = self._unsupported()
        if problem:
            self.rejected = True
            self._fail("SandboxUnsupported", problem)
            return
        for sub in ("work", "home", "volumes"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        self._annotate()
        placeholders = [run.name for run in self.runs.values() if self._placeholder(run)]
        if placeholders:
            self.node.event(
                self.pod,
                "SandboxPlaceholder",
                f"containers {', '.join(placeholders)} run a placeholder process: the sandbox "
                "cannot run their images",
            )
        with self._lock:
            self._condition("Initialized", not any(r.init for r in self.runs.values()))
            self._condition("Ready", False, "ContainersNotReady")
            self._condition("ContainersReady", False, "ContainersNotReady")
            for run in self.runs.values():
                if not run.init and any(r.init for r in self.runs.values()):
                    run.state = {"waiting": {"reason": "PodInitializing"}}
        self.publish()

        folders = self._prepare_volumes()
        if folders is None:
            return
        with self._lock:
            self._condition("PodReadyToStartContainers", True)

        for run in [r for r in self.runs.values() if r.init]:
            code = self._run_container(run, folders)
            if self._stop_event.is_set():
                return
            if code != 0:
                with self._lock:
                    self.phase = "Failed"
                    self._condition("Initialized", False, "ContainersNotInitialized")
                self.publish()
                return
        with self._lock:
            self._condition("Initialized", True)

        mains = [r for r in self.runs.values() if not r.init]
        threads = [
            threading.Thread(
                target=self._run_container, args=(run, folders), name=f"{self.name}/{run.name}"
            )
            for run in mains[1:]
        ]
        for thread in threads:
            thread.start()
        if mains:
            self._run_container(mains[0], folders)
        for thread in threads:
            thread.join()
        if self._stop_event.is_set():
            return
        with self._lock:
            failed = any(r.exit_code != 0 for r in mains)
            self.phase = "Failed" if failed else "Succeeded"
            self._condition("Ready", False, "PodCompleted")
            self._condition("ContainersReady", False, "PodCompleted")
        self.publish()

    def _after_stop(self) -> None:
        reason = self.stop_reason
        if reason == DEADLINE and self.phase not in TERMINAL:
            with self._lock:
                self.phase = "Failed"
                self.reason = "DeadlineExceeded"
                self.message = "Pod was active on the node longer than the specified deadline"
            self.node.event(self.pod, "DeadlineExceeded", self.message, warning=True)
            self.publish()
        elif reason == DELETED:
            if self.phase not in TERMINAL and not self.gone:
                with self._lock:
                    mains = [r for r in self.runs.values() if not r.init]
                    done = mains and all(r.exit_code == 0 for r in mains)
                    self.phase = "Succeeded" if done else "Failed"
                    self._condition("Ready", False, "PodCompleted")
                    self._condition("ContainersReady", False, "PodCompleted")
                self.publish()
            if not self.gone:
                self.node.force_delete(self.pod)

    def _annotate(self) -> None:
        with contextlib.suppress(Exception):
            self.node.kube.patch(
                f"/api/v1/namespaces/{self.namespace}/pods/{self.pod_name}",
                {"metadata": {"annotations": {LOG_DIR_ANNOTATION: str(self.directory)}}},
            )

    def _wait_or_stop(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True if the pod must stop (deleted, deadline, shutdown)."""
        end = time.monotonic() + seconds
        while True:
            if self._deadline is not None and time.monotonic() >= self._deadline:
                self.request_stop(DEADLINE)
            remaining = end - time.monotonic()
            if self._deadline is not None:
                remaining = min(remaining, self._deadline - time.monotonic() + 0.01)
            if self._stop_event.wait(max(0.0, remaining)) or time.monotonic() >= end:
                return self._stop_event.is_set()

    def _prepare_volumes(self) -> dict[str, Path] | None:
        reported = None
        while not self._stop_event.is_set():
            try:
                return volumes.materialize(
                    self.pod, self.directory / "volumes", self.node.objects()
                )
            except (envmod.ConfigError, ApiError, OSError) as error:
                message = f"MountVolume.SetUp failed: {error}"
                if message != reported:
                    reported = message
                    self.node.event(self.pod, "FailedMount", message, warning=True)
                    with self._lock:
                        for run in self.runs.values():
                            run.state = {
                                "waiting": {"reason": "ContainerCreating", "message": message}
                            }
                    self.publish()
            if self._wait_or_stop(CONFIG_RETRY_SECONDS):
                break
        return None

    def _launch_spec(self, run: ContainerRun, folders: dict[str, Path]) -> launch.ContainerLaunch:
        """Resolve env, argv and mounts of one container (raises envmod.ConfigError)."""
        spec = run.spec
        with self._lock:
            pod = self.pod
        env = envmod.container_env(
            pod, spec, self.node.objects(), self.node.base_env(pod), self.node.allocatable
        )
        argv = envmod.container_argv(spec, env)
        if self._placeholder(run):
            argv = list(PLACEHOLDER_INIT if run.init else PLACEHOLDER_MAIN)
        elif not spec.get("command"):
            argv = [*DEFAULT_ENTRYPOINT, *argv]
        mounts = volumes.container_mounts(spec, folders)
        termination = self._termination_file(run)
        target = spec.get("terminationMessagePath") or TERMINATION_MESSAGE_PATH
        mounts.append(volumes.Mount(termination, target))
        mounts = image.overlay(mounts, self.node.image_paths)
        working_dir = spec.get("workingDir")
        cwd = Path(working_dir) if working_dir else self.directory / "work"
        user, group = self._identity(spec)
        return launch.ContainerLaunch(
            argv, env, cwd, self.log_path(run.name), mounts, user=user, group=group
        )

    def _identity(self, spec: Json) -> tuple[int | None, int | None]:
        """runAsUser / runAsGroup (container over pod); the pod's own folders and the
        termination file are handed to that user. runAsNonRoot alone is ignored: the
        sandbox cannot know an image's USER."""
        pod_context = self.pod["spec"].get("securityContext") or {}
        context = spec.get("securityContext") or {}
        user = context.get("runAsUser", pod_context.get("runAsUser"))
        group = context.get("runAsGroup", pod_context.get("runAsGroup"))
        if user is not None or group is not None:
            uid = -1 if user is None else int(user)
            gid = -1 if group is None else int(group)
            for path in (self.directory / "work", self.directory / "home"):
                os.chown(path, uid, gid)
        return user, group

    def _termination_file(self, run: ContainerRun) -> Path:
        return self.directory / f"{run.name}.termination-log"

    def _termination_message(self, run: ContainerRun, code: int) -> str:
        path = self._termination_file(run)
        data = b""
        with contextlib.suppress(FileNotFoundError):
            data = path.read_bytes()[-MAX_TERMINATION_MESSAGE:]
        message = data.decode("utf-8", "replace")
        policy = run.spec.get("terminationMessagePolicy") or "File"
        if not message and code != 0 and policy == "FallbackToLogsOnError":
            # Like the kubelet: the last 80 lines of the log, at most 2048 bytes of them.
            with contextlib.suppress(FileNotFoundError), self.log_path(run.name).open("rb") as f:
                f.seek(max(0, f.seek(0, 2) - 64 * 1024))
                lines = f.read().splitlines(keepends=True)[-FALLBACK_LOG_LINES:]
                message = b"".join(lines)[:FALLBACK_LOG_BYTES].decode("utf-8", "replace")
        return message

    def _should_restart(self, run: ContainerRun, code: int) -> bool:
        if self._stop_event.is_set() or self.restart_policy == "Never":
            return False
        if run.init or self.restart_policy == "OnFailure":
            return code != 0
        return True  # Always

    def _run_container(self, run: ContainerRun, folders: dict[str, Path]) -> int | None:
        """Run one container to its end, restarting it as the restart policy says.
        Returns the last exit code, or None if it never ran."""
        backoff = BACKOFF_INITIAL
        code: int | None = None
        reported: str | None = None
        while not self._stop_event.is_set():
            try:
                spec = self._launch_spec(run, folders)
            except (envmod.ConfigError, ApiError) as error:
                message = str(error)
                if message != reported:
                    reported = message
                    self.node.event(self.pod, "Failed", f"Error: {message}", warning=True)
                    with self._lock:
                        run.state = {
                            "waiting": {"reason": envmod.ConfigError.reason, "message": message}
                        }
                    self.publish()
                if self._wait_or_stop(CONFIG_RETRY_SECONDS):
                    break
                continue
            code = self._run_once(run, spec)
            if not self._should_restart(run, code):
                break
            with self._lock:
                run.restart_count += 1
                run.last_state = run.state
                run.state = {
                    "waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": (
                            f"back-off {backoff:.0f}s restarting failed container={run.name} "
                            f"pod={self.pod_name}_{self.namespace}({self.uid})"
                        ),
                    }
                }
            self.publish()
            if self._wait_or_stop(backoff):
                break
            backoff = min(backoff * 2, BACKOFF_MAX)
        return code

    def _run_once(self, run: ContainerRun, spec: launch.ContainerLaunch) -> int:
        termination = self._termination_file(run)
        termination.write_bytes(b"")
        termination.chmod(0o666)  # writable whatever runAsUser says
        started_at = now()
        try:
            process = launch.start(spec)
        except launch.StartError as error:
            with spec.log_path.open("a") as log_file:
                log_file.write(f"sandbox: {error}\n")
            self.node.event(self.pod, "Failed", f"Error: {error}", warning=True)
            with self._lock:
                run.exit_code = 128
                run.state = {
                    "terminated": {
                        "exitCode": 128,
                        "reason": "StartError",
                        "message": str(error),
                        "startedAt": started_at,
                        "finishedAt": now(),
                    }
                }
            self.publish()
            return 128
        record = self.node.processes.add(
            f"pod {self.namespace}/{self.pod_name}/{run.name}", process.pid
        )
        with self._lock:
            run.pid, run.running, run.started = process.pid, True, True
            run.state = {"running": {"startedAt": started_at}}
            mains = [r for r in self.runs.values() if not r.init]
            if not run.init:
                self.phase = "Running"
                ready = all(r.running for r in mains)
                self._condition("ContainersReady", ready, None if ready else "ContainersNotReady")
                self._condition("Ready", ready, None if ready else "ContainersNotReady")
        self.publish()
        try:
            returncode = self._wait_process(process, record)
        finally:
            self.node.processes.remove(process.pid)
        code = procs.exit_code(returncode)
        message = self._termination_message(run, code)
        with self._lock:
            run.running = False
            run.exit_code = code
            terminated: Json = {
                "exitCode": code,
                "reason": "Completed" if code == 0 else "Error",
                "startedAt": started_at,
                "finishedAt": now(),
                "containerID": f"sandbox://{process.pid}",
            }
            if returncode < 0:
                terminated["signal"] = -returncode
            if message:
                terminated["message"] = message
            run.state = {"terminated": terminated}
            if not run.init:
                self._condition("ContainersReady", False, "ContainersNotReady")
                self._condition("Ready", False, "ContainersNotReady")
        self.publish()
        return code

    def _wait_process(self, process: subprocess.Popen[bytes], record: procs.ProcessRecord) -> int:
        while True:
            returncode = process.poll()
            if returncode is not None:
                return returncode
            if self._wait_or_stop(0.1):
                log.info(
                    "%s: stopping (%s), grace %.0fs", self.name, self.stop_reason, self.stop_grace
                )
                procs.kill_group(record.pgid, record.started, self.stop_grace)
                return process.wait()
