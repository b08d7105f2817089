"""The node agent: registers a Ready Node and runs every pod that lands on it.

It plays the kubelet the way kwok fakes nodes (a Node object with capacity,
allocatable and a Ready condition), except that containers really run: each
pod without a nodeName is bound to this node through `pods/<name>/binding` and
handed to a `PodWorker` thread. One list+watch over pods in all namespaces
drives everything; deletions reach the worker of the pod.

Containers see a minimal base environment (PATH with the venv's bin first, so
`tonebridge-dr` runs the local code; HOME, LANG, HOSTNAME, and the
KUBERNETES_SERVICE_HOST/PORT the kubelet always injects), plus their own env.
The venv and the checkout it points at are the containers' "image": visible at
their paths even where a volume is mounted over them (see `image`).

PersistentVolumeClaims are provisioned and bound by a `claims.ClaimBinder`
running next to the pod watch (volume folders under `<state>/volumes/`).
"""

from __future__ import annotations

import logging
import platform
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

from tonebridge_dr.sandbox import layout, procs
from tonebridge_dr.sandbox.kube import ApiError, Kube
from tonebridge_dr.sandbox.node import claims, image, logserver
from tonebridge_dr.sandbox.node.pod import Json, PodWorker, now
from tonebridge_dr.sandbox.pki import Pki

log = logging.getLogger(__name__)

#: kwok-style resources of the one fake node: generous, so nothing is unschedulable.
CAPACITY = {"cpu": "32", "memory": "128Gi", "pods": "250", "ephemeral-storage": "500Gi"}
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def venv_bin() -> Path:
    """The bin folder of the Python environment the sandbox runs in."""
    if sys.prefix != sys.base_prefix:
        return Path(sys.prefix) / "bin"
    return Path(sys.executable).parent


class _Objects:
    """Secrets, ConfigMaps and service-account tokens, read from the API server."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube

    def claim_folder(self, namespace: str, claim_name: str) -> Path:
        return claims.claim_folder(self.kube, namespace, claim_name)

    def _get(self, path: str) -> Json | None:
        try:
            return self.kube.get(path)
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    def secret(self, namespace: str, name: str) -> Json | None:
        return self._get(f"/api/v1/namespaces/{namespace}/secrets/{name}")

    def config_map(self, namespace: str, name: str) -> Json | None:
        return self._get(f"/api/v1/namespaces/{namespace}/configmaps/{name}")

    def service_account_token(
        self, pod: Json, audience: str | None, expiration_seconds: int
    ) -> str:
        metadata = pod["metadata"]
        account = pod["spec"].get("serviceAccountName") or "default"
        spec: Json = {
            "expirationSeconds": max(expiration_seconds, 600),
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": metadata["name"],
                "uid": metadata["uid"],
            },
        }
        if audience:
            spec["audiences"] = [audience]
        response = self.kube.create(
            f"/api/v1/namespaces/{metadata['namespace']}/serviceaccounts/{account}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
        )
        return str(response["status"]["token"])


class NodeAgent:
    """Registers the node, watches pods, and owns one PodWorker per running pod."""

    def __init__(
        self,
        kube: Kube,
        *,
        node_name: str,
        pods_dir: Path,
        processes: procs.ProcessTable,
        keys: Pki,
        apiserver_port: int,
        allocatable: Mapping[str, str] | None = None,
        volumes_dir: Path | None = None,
    ) -> None:
        self.kube = kube
        self.node_name = node_name
        self.pods_dir = pods_dir
        self.claims = claims.ClaimBinder(kube, volumes_dir or pods_dir.parent / "volumes")
        self.processes = processes
        self.keys = keys
        self.apiserver_port = apiserver_port
        self.allocatable = dict(allocatable or CAPACITY)
        self._objects = _Objects(kube)
        self._lock = threading.Lock()
        self._workers: dict[str, PodWorker] = {}
        self._finished: set[str] = set()
        self._force_deleted: set[str] = set()
        self._by_name: dict[tuple[str, str], PodWorker] = {}
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self._server: logserver.KubeletServer | None = None
        self.path = f"{venv_bin()}:{SYSTEM_PATH}"
        self.image_paths = image.paths()
        log.info("image folders: %s", ", ".join(map(str, self.image_paths)))

    # -- NodeContext ---------------------------------------------------------------

    def objects(self) -> _Objects:
        return self._objects

    def base_env(self, pod: Json) -> dict[str, str]:
        home = self.pods_dir / pod["metadata"]["namespace"]
        home = home / f"{pod['metadata']['name']}-{pod['metadata']['uid'][:8]}" / "home"
        port = str(self.apiserver_port)
        return {
            "PATH": self.path,
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "HOSTNAME": pod["metadata"]["name"],
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": port,
            "KUBERNETES_SERVICE_PORT_HTTPS": port,
        }

    def force_delete(self, pod: Json) -> None:
        metadata = pod["metadata"]
        with self._lock:
            if metadata["uid"] in self._force_deleted:
                return
            self._force_deleted.add(metadata["uid"])
        try:
            self.kube.delete(
                f"/api/v1/namespaces/{metadata['namespace']}/pods/{metadata['name']}",
                {
                    "apiVersion": "v1",
                    "kind": "DeleteOptions",
                    "gracePeriodSeconds": 0,
                    "preconditions": {"uid": metadata["uid"]},
                },
            )
        except ApiError as error:
            if error.status not in (404, 409):
                log.warning(
                    "deleting pod %s/%s: %s", metadata["namespace"], metadata["name"], error
                )

    def event(self, pod: Json, reason: str, message: str, warning: bool = False) -> None:
        metadata = pod["metadata"]
        stamp = now()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{metadata['name']}.{uuid.uuid4().hex[:16]}",
                "namespace": metadata["namespace"],
            },
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": metadata["name"],
                "namespace": metadata["namespace"],
                "uid": metadata["uid"],
            },
            "reason": reason,
            "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "source": {"component": "kubelet", "host": self.node_name},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            self.kube.create(f"/api/v1/namespaces/{metadata['namespace']}/events", body)
        except Exception as error:  # events are best effort
            log.debug("event %s for %s: %s", reason, metadata["name"], error)

    def worker_done(self, worker: PodWorker) -> None:
        with self._lock:
            self._workers.pop(worker.uid, None)
            self._finished.add(worker.uid)

    # -- node ----------------------------------------------------------------------

    def _register_node(self, kubelet_port: int) -> None:
        body: Json = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": {
                    "kubernetes.io/hostname": self.node_name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "tonebridge-dr-sandbox",
                },
            },
            "spec": {},
        }
        try:
            self.kube.create("/api/v1/nodes", body)
        except ApiError as error:
            if error.status != 409:
                raise
        # The TaintNodesByCondition admission adds not-ready taints at creation; nothing
        # (no node lifecycle controller) would lift them.
        self.kube.patch(f"/api/v1/nodes/{self.node_name}", {"spec": {"taints": None}})
        stamp = now()

        def condition(kind: str, status: str, reason: str, message: str) -> Json:
            return {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": stamp,
                "lastTransitionTime": stamp,
            }

        status = {
            "capacity": self.allocatable,
            "allocatable": self.allocatable,
            "phase": "Running",
            "conditions": [
                condition("Ready", "True", "KubeletReady", "sandbox node agent is ready"),
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "ok"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "ok"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "ok"),
                condition("NetworkUnavailable", "False", "RouteCreated", "ok"),
            ],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
            "nodeInfo": {
                "machineID": uuid.uuid4().hex,
                "systemUUID": str(uuid.uuid4()),
                "bootID": str(uuid.uuid4()),
                "kernelVersion": platform.release(),
                "osImage": "tonebridge-dr sandbox",
                "containerRuntimeVersion": "sandbox://0.1",
                "kubeletVersion": layout.K8S_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }
        self.kube.patch(f"/api/v1/nodes/{self.node_name}/status", {"status": status})

    # -- pods ----------------------------------------------------------------------

    def start(self) -> None:
        self.pods_dir.mkdir(parents=True, exist_ok=True)
        self._server = logserver.KubeletServer(self.keys, self.find_container_log)
        port = self._server.start()
        self._register_node(port)
        self.claims.start()
        listing = self.kube.get("/api/v1/pods")
        self._sync(listing)
        self._watcher = threading.Thread(
            target=self._watch_loop,
            args=(listing["metadata"]["resourceVersion"],),
            name="pod-watch",
            daemon=True,
        )
        self._watcher.start()

    def stop(self, grace: float = 2.0) -> None:
        """Stop watching and kill every pod process (SIGTERM, SIGKILL after `grace`)."""
        self._stopping.set()
        self.claims.request_stop()
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            worker.request_stop("shutdown", grace)
        for worker in workers:
            worker.join(timeout=grace + 10)
        if self._server is not None:
            self._server.stop()
        self.kube.close()
        self.claims.join()

    def find_container_log(self, namespace: str, pod: str, container: str) -> tuple[Path, bool]:
        """(log file, still running) of a container, for the kubelet log endpoint."""
        with self._lock:
            worker = self._by_name.get((namespace, pod))
        if worker is None:
            raise KeyError(f"pod {namespace}/{pod} not found on this node")
        if container not in worker.runs:
            raise KeyError(f"container {container} is not valid for pod {pod}")
        return worker.log_path(container), worker.is_running(container)

    def _sync(self, listing: Json) -> None:
        seen = set()
        for pod in listing.get("items", []):
            seen.add(pod["metadata"]["uid"])
            self._handle("ADDED", pod)
        with self._lock:
            vanished = [w for uid, w in self._workers.items() if uid not in seen]
        for worker in vanished:
            worker.observe_gone()

    def _watch_loop(self, resource_version: str) -> None:
        while not self._stopping.is_set():
            try:
                for event in self.kube.watch("/api/v1/pods", resource_version, 60):
                    kind, obj = event.get("type"), event.get("object", {})
                    if kind == "ERROR":
                        raise ApiError(int(obj.get("code", 500)), obj, "WATCH", "/api/v1/pods")
                    resource_version = obj["metadata"]["resourceVersion"]
                    if kind != "BOOKMARK":
                        self._handle(str(kind), obj)
                    if self._stopping.is_set():
                        return
            except ApiError as error:
                if self._stopping.is_set():
                    return
                if error.status != 410:
                    log.warning("pod watch failed: %s", error)
                    time.sleep(1)
                try:  # relist: the resource version expired, or after an error
                    listing = self.kube.get("/api/v1/pods")
                    resource_version = listing["metadata"]["resourceVersion"]
                    self._sync(listing)
                except Exception as relist_error:
                    log.warning("pod relist failed: %s", relist_error)
                    time.sleep(1)
            except Exception as error:
                if self._stopping.is_set():
                    return
                log.warning("pod watch interrupted: %s", error)
                time.sleep(1)

    def _handle(self, kind: str, pod: Json) -> None:
        metadata, spec = pod["metadata"], pod.get("spec", {})
        uid = metadata["uid"]
        node = spec.get("nodeName") or ""
        if node and node != self.node_name:
            return
        with self._lock:
            worker = self._workers.get(uid)
            finished = uid in self._finished
        if kind == "DELETED":
            if worker is not None:
                worker.observe_gone()
            return
        if worker is not None:
            worker.observe(pod)
            return
        deleting = bool(metadata.get("deletionTimestamp"))
        phase = pod.get("status", {}).get("phase")
        if finished or deleting or phase in ("Succeeded", "Failed") or self._stopping.is_set():
            if deleting and node == self.node_name:
                self.force_delete(pod)  # the kubelet removes its pods once they are stopped
            return
        worker = PodWorker(self, pod, self.pods_dir)
        with self._lock:
            self._workers[uid] = worker
            self._by_name[(metadata["namespace"], metadata["name"])] = worker
        worker.start()
