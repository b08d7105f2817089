"""Where the sandbox keeps things: binaries, repository files, and its state dir.

State dir (default ~/.cache/tonebridge-dr/sandbox/):

    supervisor.pid     pid and start time of the supervisor (JSON), while it runs
    processes.json     pidfile of every process group started (see procs.ProcessTable)
    ready.json         written once everything is up: kubeconfig, ports, timings
    error.txt          why the last start failed, if it did
    kubeconfig         admin kubeconfig (certificates embedded)
    pki/               CA, serving and client certificates, service-account keys
    etcd/              etcd data (wiped on every start)
    logs/              one log file per component, plus supervisor.log
    pods/<ns>/<pod>-<uid>/   per-pod work dir: container logs, termination files, volumes
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CONTROLPLANE_ENV = "TONEBRIDGE_DR_CONTROLPLANE_DIR"
K8S_VERSION = "v1.34.4"
ETCD_VERSION = "v3.6.16"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")


def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def default_state_dir() -> Path:
    return _cache_home() / "tonebridge-dr" / "sandbox"


def controlplane_dir() -> Path:
    """Folder with etcd, kube-apiserver, kube-controller-manager and kubectl:
    $TONEBRIDGE_DR_CONTROLPLANE_DIR, else $KUBEBUILDER_ASSETS, else the cache folder
    that hack/controlplane/build.sh fills."""
    for variable in (CONTROLPLANE_ENV, "KUBEBUILDER_ASSETS"):
        value = os.environ.get(variable)
        if value:
            return Path(value)
    return _cache_home() / "tonebridge-dr" / "controlplane" / f"{K8S_VERSION}-etcd-{ETCD_VERSION}"


def binary(name: str, directory: Path | None = None) -> Path:
    """Path of one control-plane binary; FileNotFoundError with a hint if missing."""
    folder = directory or controlplane_dir()
    path = folder / name
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(
            f"{name} not found in {folder}; build the control plane with `make controlplane` "
            f"(hack/controlplane/build.sh) or set {CONTROLPLANE_ENV}"
        )
    return path


def repository_root() -> Path | None:
    """The source checkout this package runs from (editable install), if any."""
    root = Path(__file__).resolve().parents[3]
    return root if (root / "pyproject.toml").is_file() else None


def default_crd_dir() -> Path | None:
    root = repository_root()
    return root / "crds" if root else None


@dataclass(frozen=True)
class StateDir:
    root: Path

    @property
    def supervisor_pid(self) -> Path:
        return self.root / "supervisor.pid"

    @property
    def processes(self) -> Path:
        return self.root / "processes.json"

    @property
    def ready(self) -> Path:
        return self.root / "ready.json"

    @property
    def error(self) -> Path:
        return self.root / "error.txt"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def lock(self) -> Path:
        return self.root / "lock"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def etcd_data(self) -> Path:
        return self.root / "etcd"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pods(self) -> Path:
        return self.root / "pods"

    @property
    def supervisor_log(self) -> Path:
        return self.logs / "supervisor.log"
