"""etcd + kube-apiserver + kube-controller-manager on free 127.0.0.1 ports.

Start-up order: etcd (ready on /health), kube-apiserver (ready on /readyz),
kube-controller-manager (ready on /healthz and once the serviceaccount controller
has created `default/default`). A component that exits while we wait for it is
retried on new ports, since a free port can be taken between our probe and its bind.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import urllib3
import yaml

from tonebridge_dr.sandbox import layout, pki, procs
from tonebridge_dr.sandbox.kube import ApiError, Kube

log = logging.getLogger(__name__)

#: Controllers the sandbox runs. podgc, nodelifecycle and taint-eviction are left out on
#: purpose: they would collect or evict the fake node's pods. root-ca-cert-publisher
#: fills `kube-root-ca.crt`, which every pod's service-account volume projects. The
#: workload controllers and endpointslice let Deployments, StatefulSets and DaemonSets
#: roll out (their pods run as placeholders when the node cannot run their image, see
#: node/pod.py) and Services list their ready pods in EndpointSlices.
CONTROLLERS = (
    "job",
    "cronjob",
    "garbagecollector",
    "ttl-after-finished",
    "namespace",
    "serviceaccount",
    "serviceaccount-token",
    "root-ca-cert-publisher",
    "deployment",
    "replicaset",
    "statefulset",
    "daemonset",
    "endpointslice",
)
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
CONTEXT_NAME = "tonebridge-dr-sandbox"


class StartupError(RuntimeError):
    """A component did not become ready; the message names it and its log file."""


class _PortTaken(StartupError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_kubeconfig(path: Path, server: str, keys: pki.Pki) -> None:
    """Admin kubeconfig with the certificates embedded, written atomically."""

    def b64(file: Path) -> str:
        return base64.b64encode(file.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CONTEXT_NAME,
                "cluster": {"server": server, "certificate-authority-data": b64(keys.ca_cert)},
            }
        ],
        "users": [
            {
                "name": f"{CONTEXT_NAME}-admin",
                "user": {
                    "client-certificate-data": b64(keys.admin_cert),
                    "client-key-data": b64(keys.admin_key),
                },
            }
        ],
        "contexts": [
            {
                "name": CONTEXT_NAME,
                "context": {
                    "cluster": CONTEXT_NAME,
                    "user": f"{CONTEXT_NAME}-admin",
                    "namespace": "default",
                },
            }
        ],
        "current-context": CONTEXT_NAME,
        "preferences": {},
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    tmp.chmod(0o600)
    tmp.replace(path)


@dataclass
class Component:
    name: str
    process: subprocess.Popen[bytes]
    record: procs.ProcessRecord
    log_path: Path


@dataclass
class ControlPlane:
    """The three control-plane processes of one sandbox.

    `start` and `stop` must be called from the same long-lived thread (the
    parent-death signal of each child is tied to the thread that spawned it).
    """

    state: layout.StateDir
    processes: procs.ProcessTable
    node_name: str
    binaries: Path = field(default_factory=layout.controlplane_dir)
    components: dict[str, Component] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    apiserver_port: int = 0
    keys: pki.Pki | None = None

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    def kube(self, pool_size: int = 32) -> Kube:
        assert self.keys is not None
        return Kube(
            self.server,
            ca_cert=self.keys.ca_cert,
            client_cert=self.keys.admin_cert,
            client_key=self.keys.admin_key,
            pool_size=pool_size,
        )

    # -- start -----------------------------------------------------------------

    def start(self, timeout: float = 180.0) -> None:
        for name in ("etcd", "kube-apiserver", "kube-controller-manager"):
            layout.binary(name, self.binaries)  # fail fast with the build hint
        started = time.monotonic()
        deadline = started + timeout
        self.state.logs.mkdir(parents=True, exist_ok=True)
        self.keys = pki.generate(self.state.pki, self.node_name)
        self.timings["pki"] = time.monotonic() - started

        etcd_url = self._start_with_retries("etcd", self._start_etcd, deadline)
        self._start_with_retries(
            "kube-apiserver", lambda d: self._start_apiserver(etcd_url, d), deadline
        )
        write_kubeconfig(self.state.kubeconfig, self.server, self.keys)
        self._start_with_retries(
            "kube-controller-manager", self._start_controller_manager, deadline
        )

    def _start_with_retries(self, name: str, start: Callable[[float], str], deadline: float) -> str:
        began = time.monotonic()
        for attempt in range(3):
            try:
                result = start(deadline)
            except _PortTaken as error:
                log.warning("%s (attempt %d), retrying on new ports", error, attempt + 1)
                self._stop_component(name)
                continue
            self.timings[name] = time.monotonic() - began
            log.info("%s ready after %.1fs", name, self.timings[name])
            return result
        raise StartupError(f"{name} did not start after 3 attempts; see {self._log(name)}")

    def _log(self, name: str) -> Path:
        return self.state.logs / f"{name}.log"

    def _spawn(self, name: str, argv: list[str]) -> Component:
        log_path = self._log(name)
        with log_path.open("ab") as log_file:
            log_file.write(f"\n=== {time.strftime('%FT%T')} {' '.join(argv)}\n".encode())
            log_file.flush()
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(self.state.root),
                "LANG": "C.UTF-8",
            }
            process = procs.spawn(argv, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        record = self.processes.add(name, process.pid)
        component = Component(name, process, record, log_path)
        self.components[name] = component
        return component

    def _wait(self, component: Component, deadline: float, probe: Callable[[], bool]) -> None:
        while True:
            if component.process.poll() is not None:
                tail = "\n".join(procs.iter_lines_tail(component.log_path, 3000))
                message = f"{component.name} exited with {component.process.returncode}"
                if "address already in use" in tail:
                    raise _PortTaken(message + " (port taken)")
                raise StartupError(f"{message}; log {component.log_path}:\n{tail}")
            with contextlib.suppress(Exception):
                if probe():
                    return
            if time.monotonic() > deadline:
                raise StartupError(f"{component.name} not ready in time; see {component.log_path}")
            time.sleep(0.1)

    def _start_etcd(self, deadline: float) -> str:
        client, peer = free_port(), free_port()
        data = self.state.etcd_data
        if data.exists():
            subprocess.run(["rm", "-rf", str(data)], check=True)
        data.mkdir(parents=True)
        data.chmod(0o700)
        client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        component = self._spawn(
            "etcd",
            [
                str(self.binaries / "etcd"),
                "--name=sandbox",
                f"--data-dir={data}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=sandbox={peer_url}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )
        http = urllib3.PoolManager(retries=False)

        def healthy() -> bool:
            response = http.request("GET", f"{client_url}/health", timeout=2.0)
            return response.status == 200 and b'"true"' in response.data

        self._wait(component, deadline, healthy)
        return client_url

    def _start_apiserver(self, etcd_url: str, deadline: float) -> str:
        assert self.keys is not None
        keys = self.keys
        self.apiserver_port = free_port()
        component = self._spawn(
            "kube-apiserver",
            [
                str(self.binaries / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.apiserver_port}",
                f"--cert-dir={self.state.pki}",
                f"--tls-cert-file={keys.apiserver_cert}",
                f"--tls-private-key-file={keys.apiserver_key}",
                f"--client-ca-file={keys.ca_cert}",
                "--authorization-mode=RBAC",
                f"--service-cluster-ip-range={pki.SERVICE_CLUSTER_IP_RANGE}",
                "--allow-privileged=true",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={keys.service_account_pub}",
                f"--service-account-signing-key-file={keys.service_account_key}",
                # The `kubernetes` Service cannot point at a loopback address.
                "--endpoint-reconciler-type=none",
                # `kubectl logs` goes through the API server to the node agent.
                f"--kubelet-client-certificate={keys.admin_cert}",
                f"--kubelet-client-key={keys.admin_key}",
                f"--kubelet-certificate-authority={keys.ca_cert}",
                "--kubelet-preferred-address-types=InternalIP",
                "--profiling=false",
                "--v=1",
            ],
        )
        kube = self.kube(pool_size=2)

        def ready() -> bool:
            kube.get("/readyz")
            return True

        self._wait(component, deadline, ready)
        return self.server

    def _start_controller_manager(self, deadline: float) -> str:
        assert self.keys is not None
        port = free_port()
        kubeconfig = str(self.state.kubeconfig)
        component = self._spawn(
            "kube-controller-manager",
            [
                str(self.binaries / "kube-controller-manager"),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--leader-elect=false",
                f"--controllers={','.join(CONTROLLERS)}",
                f"--service-account-private-key-file={self.keys.service_account_key}",
                f"--root-ca-file={self.keys.ca_cert}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={self.state.root / 'kcm-certs'}",
                "--profiling=false",
                "--v=1",
            ],
        )
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        http = urllib3.PoolManager(ssl_context=context, retries=False)
        kube = self.kube(pool_size=2)

        def ready() -> bool:
            response = http.request("GET", f"https://127.0.0.1:{port}/healthz", timeout=2.0)
            if response.status != 200:
                return False
            try:
                kube.get("/api/v1/namespaces/default/serviceaccounts/default")
            except ApiError:
                return False
            return True

        self._wait(component, deadline, ready)
        return f"https://127.0.0.1:{port}"

    # -- run / stop --------------------------------------------------------------

    def exited(self) -> Component | None:
        """A component that is no longer running, if any."""
        for component in self.components.values():
            if component.process.poll() is not None:
                return component
        return None

    def _stop_component(self, name: str, grace: float = 5.0) -> None:
        component = self.components.pop(name, None)
        if component is None:
            return
        began = time.monotonic()
        procs.kill_group(component.record.pgid, component.record.started, grace)
        log.info("%s stopped in %.1fs", name, time.monotonic() - began)
        with contextlib.suppress(subprocess.TimeoutExpired):
            component.process.wait(timeout=5)
        self.processes.remove(component.record.pid)

    def stop(self) -> None:
        """Stop every component, last started first. Idempotent."""
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            self._stop_component(name)
