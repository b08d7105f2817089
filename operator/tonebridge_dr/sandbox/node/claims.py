"""PersistentVolumeClaims on the sandbox node: a folder per claim, bound at once.

The sandbox runs no persistentvolume-binder, pvc-protection or pv-protection
controller, so without this a claim would stay Pending forever and a deleted
claim would hang on its `kubernetes.io/pvc-protection` finalizer (added by the
API server's StorageObjectInUseProtection admission). `ClaimBinder` plays all
three, the way a local-path provisioner does on a one-node cluster:

- A Pending claim without `spec.volumeName` gets a PersistentVolume `pvc-<uid>`
  (hostPath `<state>/volumes/pvc-<uid>`, mode 0777 like local-path-provisioner,
  capacity and access modes of the claim, reclaim policy Delete, `claimRef` to
  the claim); the claim gets `spec.volumeName` (settable once) and the
  bind-completed annotations, then both get phase Bound through their status
  subresources. A claim that names an existing PV (static binding) is bound to
  it. Any StorageClass name is accepted (there is one node and one "disk").
- A claim being deleted loses its pvc-protection finalizer once no unfinished
  pod in its namespace mounts it; when it is gone, its PersistentVolume is
  deleted (Delete) with its folder, or marked Released (Retain).

Everything is idempotent and driven by list + watch with a periodic relist, so
a missed event only delays the work. `claim_folder` is what the node agent's
volume code calls when a pod mounts a claim.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
from pathlib import Path
from typing import Any

from tonebridge_dr.sandbox.kube import ApiError, Kube
from tonebridge_dr.sandbox.node.env import ConfigError

log = logging.getLogger(__name__)

Json = dict[str, Any]

PROVISIONER = "sandbox.dr.tonebridge.io/local-path"
ANNOTATION_PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
ANNOTATION_BIND_COMPLETED = "pv.kubernetes.io/bind-completed"
ANNOTATION_BOUND_BY_CONTROLLER = "pv.kubernetes.io/bound-by-controller"
PVC_PROTECTION = "kubernetes.io/pvc-protection"
PV_PROTECTION = "kubernetes.io/pv-protection"
DEFAULT_CAPACITY = "1Gi"
#: Relist period while work waits on something the claim watch does not see (a pod
#: still using a claim that is being deleted).
BUSY_RELIST_SECONDS = 2
IDLE_RELIST_SECONDS = 60


def _claim_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{name}"


def _get(kube: Kube, path: str) -> Json | None:
    try:
        return kube.get(path)
    except ApiError as error:
        if error.status == 404:
            return None
        raise


def claim_folder(kube: Kube, namespace: str, name: str) -> Path:
    """Host folder of the volume bound to claim `namespace/name` (created if missing).

    ConfigError (the pod waits and retries) while the claim is missing, being deleted,
    not Bound yet, or its volume is not a hostPath.
    """
    claim = _get(kube, _claim_path(namespace, name))
    if claim is None:
        raise ConfigError(f'persistentvolumeclaim "{name}" not found')
    if claim["metadata"].get("deletionTimestamp"):
        raise ConfigError(f'persistentvolumeclaim "{name}" is being deleted')
    volume_name = claim.get("spec", {}).get("volumeName")
    if claim.get("status", {}).get("phase") != "Bound" or not volume_name:
        raise ConfigError(f'persistentvolumeclaim "{name}" is not bound yet')
    volume = _get(kube, f"/api/v1/persistentvolumes/{volume_name}")
    if volume is None:
        raise ConfigError(f'persistentvolume "{volume_name}" of claim "{name}" not found')
    host_path = (volume.get("spec", {}).get("hostPath") or {}).get("path")
    if not host_path:
        raise ConfigError(
            f'persistentvolume "{volume_name}" is not a hostPath volume, which the sandbox '
            "node agent cannot mount"
        )
    folder = Path(host_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class ClaimBinder:
    """Provisions, binds and releases PersistentVolumeClaims (see the module docstring)."""

    def __init__(self, kube: Kube, volumes_dir: Path) -> None:
        self.kube = kube
        self.volumes_dir = volumes_dir
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._busy = False

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self.volumes_dir.mkdir(parents=True, exist_ok=True)
        self.volumes_dir.chmod(0o711)
        self._thread = threading.Thread(target=self._loop, name="claim-binder", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the loop to end (it does once its watch ends: close the Kube client)."""
        self._stopping.set()

    def join(self, timeout: float = 5) -> None:
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                version = self.sync()
                timeout = BUSY_RELIST_SECONDS if self._busy else IDLE_RELIST_SECONDS
                for event in self.kube.watch(
                    "/api/v1/persistentvolumeclaims", version, timeout
                ):
                    if self._stopping.is_set():
                        return
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        break  # relist
                    if kind == "DELETED":
                        self.release(obj)
                    elif kind in ("ADDED", "MODIFIED"):
                        self.handle(obj)
            except Exception as error:
                if self._stopping.is_set():
                    return
                log.warning("claim binder: %s", error)
                self._stopping.wait(1)

    def sync(self) -> str:
        """Handle every claim and every orphaned volume once; return the list's version."""
        listing = self.kube.get("/api/v1/persistentvolumeclaims")
        self._busy = False
        claims = listing.get("items") or []
        for claim in claims:
            self.handle(claim)
        live = {c["metadata"]["uid"] for c in claims}
        for volume in self.kube.get("/api/v1/persistentvolumes").get("items") or []:
            ref = volume.get("spec", {}).get("claimRef") or {}
            if ref.get("uid") and ref["uid"] not in live:
                self._reclaim(volume)
        return str(listing["metadata"]["resourceVersion"])

    # -- claims ----------------------------------------------------------------------

    def handle(self, claim: Json) -> None:
        try:
            if claim["metadata"].get("deletionTimestamp"):
                self._unprotect(claim)
            elif claim.get("status", {}).get("phase") != "Bound":
                self.bind(claim)
        except ApiError as error:
            if error.status not in (404, 409):
                raise
            self._busy = True  # changed under us: the next relist looks again

    def bind(self, claim: Json) -> None:
        """Give a Pending claim a volume and mark both Bound (idempotent)."""
        metadata, spec = claim["metadata"], claim.get("spec", {})
        namespace, name, uid = metadata["namespace"], metadata["name"], metadata["uid"]
        volume_name = spec.get("volumeName") or f"pvc-{uid}"
        volume = _get(self.kube, f"/api/v1/persistentvolumes/{volume_name}")
        if volume is None:
            if spec.get("volumeName"):
                return  # static binding to a volume that does not exist (yet): stay Pending
            volume = self._provision(claim, volume_name)
        ref = volume.get("spec", {}).get("claimRef") or {}
        if ref.get("uid") not in (None, uid) or (
            ref.get("name") not in (None, name) or ref.get("namespace") not in (None, namespace)
        ):
            return  # the volume belongs to another claim
        if not ref.get("uid"):
            self.kube.patch(
                f"/api/v1/persistentvolumes/{volume_name}",
                {"spec": {"claimRef": self._claim_ref(claim)}},
            )
        if not spec.get("volumeName"):
            self.kube.patch(
                _claim_path(namespace, name),
                {
                    "metadata": {
                        "annotations": {
                            ANNOTATION_BIND_COMPLETED: "yes",
                            ANNOTATION_BOUND_BY_CONTROLLER: "yes",
                        },
                        "resourceVersion": metadata["resourceVersion"],
                    },
                    "spec": {"volumeName": volume_name},
                },
            )
        self.kube.patch(
            f"/api/v1/persistentvolumes/{volume_name}/status", {"status": {"phase": "Bound"}}
        )
        volume_spec = volume.get("spec", {})
        self.kube.patch(
            f"{_claim_path(namespace, name)}/status",
            {
                "status": {
                    "phase": "Bound",
                    "accessModes": volume_spec.get("accessModes") or ["ReadWriteOnce"],
                    "capacity": volume_spec.get("capacity") or {"storage": DEFAULT_CAPACITY},
                }
            },
        )
        log.info("bound claim %s/%s to %s", namespace, name, volume_name)

    def _claim_ref(self, claim: Json) -> Json:
        metadata = claim["metadata"]
        return {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "namespace": metadata["namespace"],
            "name": metadata["name"],
            "uid": metadata["uid"],
        }

    def _provision(self, claim: Json, volume_name: str) -> Json:
        spec = claim.get("spec", {})
        folder = self.volumes_dir / volume_name
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o777)  # like local-path-provisioner: any pod user may write
        storage = (spec.get("resources") or {}).get("requests", {}).get("storage")
        body: Json = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {
                "name": volume_name,
                "annotations": {ANNOTATION_PROVISIONED_BY: PROVISIONER},
            },
            "spec": {
                "capacity": {"storage": storage or DEFAULT_CAPACITY},
                "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": spec.get("storageClassName") or "",
                "volumeMode": spec.get("volumeMode") or "Filesystem",
                "hostPath": {"path": str(folder), "type": "DirectoryOrCreate"},
                "claimRef": self._claim_ref(claim),
            },
        }
        try:
            return self.kube.create("/api/v1/persistentvolumes", body)
        except ApiError as error:
            if error.status != 409:
                raise
            return self.kube.get(f"/api/v1/persistentvolumes/{volume_name}")

    def _unprotect(self, claim: Json) -> None:
        """Drop pvc-protection from a claim being deleted once no running pod mounts it."""
        metadata = claim["metadata"]
        finalizers = metadata.get("finalizers") or []
        if PVC_PROTECTION not in finalizers:
            return
        pods = self.kube.get(f"/api/v1/namespaces/{metadata['namespace']}/pods")
        for pod in pods.get("items") or []:
            if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                continue
            volumes = pod.get("spec", {}).get("volumes") or []
            if any(
                (v.get("persistentVolumeClaim") or {}).get("claimName") == metadata["name"]
                for v in volumes
            ):
                self._busy = True  # look again at the next relist
                return
        self.kube.patch(
            _claim_path(metadata["namespace"], metadata["name"]),
            {
                "metadata": {
                    "finalizers": [f for f in finalizers if f != PVC_PROTECTION],
                    "resourceVersion": metadata["resourceVersion"],
                }
            },
        )

    # -- volumes ---------------------------------------------------------------------

    def release(self, claim: Json) -> None:
        """The claim is gone: reclaim the volume bound to it."""
        volume_name = claim.get("spec", {}).get("volumeName")
        if not volume_name:
            return
        volume = _get(self.kube, f"/api/v1/persistentvolumes/{volume_name}")
        ref = (volume or {}).get("spec", {}).get("claimRef") or {}
        if volume is not None and ref.get("uid") == claim["metadata"]["uid"]:
            self._reclaim(volume)

    def _reclaim(self, volume: Json) -> None:
        metadata, spec = volume["metadata"], volume.get("spec", {})
        name = metadata["name"]
        path = f"/api/v1/persistentvolumes/{name}"
        try:
            if spec.get("persistentVolumeReclaimPolicy") != "Delete":
                if volume.get("status", {}).get("phase") != "Released":
                    self.kube.patch(f"{path}/status", {"status": {"phase": "Released"}})
                return
            if PV_PROTECTION in (metadata.get("finalizers") or []):
                self.kube.patch(
                    path,
                    {
                        "metadata": {
                            "finalizers": [
                                f for f in metadata["finalizers"] if f != PV_PROTECTION
                            ]
                        }
                    },
                )
            with contextlib.suppress(ApiError):
                self.kube.delete(path)
        except ApiError as error:
            if error.status != 404:
                raise
        folder = Path((spec.get("hostPath") or {}).get("path") or "")
        # Only ever remove folders this binder made.
        if folder.parent == self.volumes_dir and folder.name == name and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
            log.info("deleted volume %s and its folder", name)
