"""Pod volumes as host folders that `launch` bind-mounts at each `mountPath`.

Supported: `projected` (serviceAccountToken, secret, configMap, downwardAPI: the
`kube-api-access-*` volume the API server adds to every pod, so in-cluster
config works), `secret`, `configMap`, `downwardAPI`, `emptyDir` and
`persistentVolumeClaim`. Everything else is reported as unsupported and the pod
fails with that reason. To add a type, add a function to `_MATERIALIZERS`.

Volumes are written once, before the first container starts (no live updates).
Most live in the pod's own folder; a `persistentVolumeClaim` is the folder of
the claim's PersistentVolume (its `hostPath`, see `claims.py`), shared by every
pod that mounts the claim and kept after they end, like a real volume. A claim
that is missing or not Bound yet is a ConfigError: the pod waits, as it would
for the scheduler and the kubelet's volume manager.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from tonebridge_dr.sandbox.node.env import (
    ConfigError,
    ObjectSource,
    config_map_data,
    field_value,
    secret_data,
)

Json = dict[str, Any]

_DEFAULT_MODE = 0o644


class TokenSource(ObjectSource, Protocol):
    """ObjectSource that can also issue bound service-account tokens and find the folder
    of a claimed volume."""

    def service_account_token(
        self, pod: Json, audience: str | None, expiration_seconds: int
    ) -> str: ...

    def claim_folder(self, namespace: str, claim_name: str) -> Path:
        """Host folder of the Bound claim's volume; ConfigError while it cannot be used."""
        ...


@dataclass(frozen=True)
class Mount:
    """One bind mount inside a container's mount namespace."""

    source: Path
    target: str
    read_only: bool = False


def volume_type(volume: Json) -> str:
    return next((key for key in volume if key != "name"), "")


def _write_file(root: Path, relative: str, data: str | bytes, mode: int) -> None:
    path = (root / relative).resolve()
    if root.resolve() not in path.parents:
        raise ConfigError(f"volume item path {relative!r} escapes the volume")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data)
    path.chmod(mode)


def _project_keys(
    root: Path,
    data: dict[str, str] | None,
    spec: Json,
    kind: str,
    name: str,
    default_mode: int,
) -> None:
    if data is None:
        if spec.get("optional"):
            return
        raise ConfigError(f'{kind} "{name}" not found')
    items = spec.get("items")
    if not items:
        for key, value in data.items():
            _write_file(root, key, value, default_mode)
        return
    for item in items:
        key = item["key"]
        if key not in data:
            if spec.get("optional"):
                continue
            raise ConfigError(f'key "{key}" not found in {kind} "{name}"')
        _write_file(root, item.get("path", key), data[key], item.get("mode", default_mode))


def _secret(root: Path, spec: Json, pod: Json, source: TokenSource, mode: int) -> None:
    name = spec.get("secretName") or spec.get("name", "")
    obj = source.secret(pod["metadata"]["namespace"], name)
    _project_keys(root, secret_data(obj) if obj else None, spec, "secret", name, mode)


def _config_map(root: Path, spec: Json, pod: Json, source: TokenSource, mode: int) -> None:
    name = spec.get("name", "")
    obj = source.config_map(pod["metadata"]["namespace"], name)
    _project_keys(root, config_map_data(obj) if obj else None, spec, "configmap", name, mode)


def _downward_api(root: Path, spec: Json, pod: Json, source: TokenSource, mode: int) -> None:
    for item in spec.get("items") or []:
        if "fieldRef" not in item:
            raise ConfigError("downwardAPI volume: only fieldRef items are supported")
        value = field_value(pod, item["fieldRef"].get("fieldPath", ""))
        _write_file(root, item["path"], value, item.get("mode", mode))


def _projected(root: Path, spec: Json, pod: Json, source: TokenSource, mode: int) -> None:
    for item in spec.get("sources") or []:
        if "serviceAccountToken" in item:
            token_spec = item["serviceAccountToken"]
            token = source.service_account_token(
                pod, token_spec.get("audience"), int(token_spec.get("expirationSeconds", 3607))
            )
            _write_file(root, token_spec["path"], token, mode)
        elif "secret" in item:
            _secret(root, item["secret"], pod, source, mode)
        elif "configMap" in item:
            _config_map(root, item["configMap"], pod, source, mode)
        elif "downwardAPI" in item:
            _downward_api(root, item["downwardAPI"], pod, source, mode)
        else:
            raise ConfigError(f"projected volume source {sorted(item)} is not supported")


def _empty_dir(root: Path, spec: Json, pod: Json, source: TokenSource, mode: int) -> None:
    root.chmod(0o777)


def _persistent_volume_claim(
    root: Path, spec: Json, pod: Json, source: TokenSource, mode: int
) -> Path:
    name = spec.get("claimName") or ""
    if not name:
        raise ConfigError("persistentVolumeClaim volume without claimName")
    return source.claim_folder(pod["metadata"]["namespace"], name)


# type -> function(host folder, volume spec, pod, object source, defaultMode); a function
# may return another folder to use instead of the pod's own (a volume that outlives the pod).
_MATERIALIZERS: dict[str, Callable[[Path, Json, Json, TokenSource, int], Path | None]] = {
    "projected": _projected,
    "secret": _secret,
    "configMap": _config_map,
    "downwardAPI": _downward_api,
    "emptyDir": _empty_dir,
    "persistentVolumeClaim": _persistent_volume_claim,
}


def unsupported(pod: Json) -> str | None:
    """Why the node agent cannot provide the pod's volumes, or None."""
    for volume in pod["spec"].get("volumes") or []:
        kind = volume_type(volume)
        if kind not in _MATERIALIZERS:
            supported = ", ".join(sorted(_MATERIALIZERS))
            return (
                f'volume "{volume.get("name")}" is of type {kind or "<none>"}, which the sandbox '
                f"node agent does not support (supported: {supported})"
            )
    return None


def materialize(pod: Json, directory: Path, source: TokenSource) -> dict[str, Path]:
    """Write every volume of the pod below `directory`; return name -> host folder.

    Raises ConfigError while a referenced object is missing (the caller retries).
    Idempotent: a retry rewrites the files.
    """
    folders: dict[str, Path] = {}
    for volume in pod["spec"].get("volumes") or []:
        kind = volume_type(volume)
        root = directory / volume["name"]
        root.mkdir(parents=True, exist_ok=True)
        spec = volume[kind] or {}
        elsewhere = _MATERIALIZERS[kind](
            root, spec, pod, source, spec.get("defaultMode", _DEFAULT_MODE)
        )
        folders[volume["name"]] = elsewhere or root
    return folders


def claim_names(pod: Json) -> list[str]:
    """Names of the PersistentVolumeClaims the pod mounts."""
    return [
        str(volume["persistentVolumeClaim"].get("claimName"))
        for volume in pod.get("spec", {}).get("volumes") or []
        if isinstance(volume.get("persistentVolumeClaim"), dict)
    ]


def container_mounts(container: Json, folders: dict[str, Path]) -> list[Mount]:
    """Bind mounts for the container's volumeMounts (subPath honoured), shallow first."""
    mounts = []
    for mount in container.get("volumeMounts") or []:
        name = mount["name"]
        if name not in folders:
            raise ConfigError(f'volumeMount "{name}" names no volume of the pod')
        source = folders[name]
        sub_path = mount.get("subPath")
        if sub_path:
            source = source / sub_path
            if not source.exists():
                source.mkdir(parents=True)
        target = str(PurePosixPath(mount["mountPath"]))
        if not os.path.isabs(target):
            raise ConfigError(f"mountPath {target!r} is not absolute")
        mounts.append(Mount(source, target, bool(mount.get("readOnly"))))
    return sorted(mounts, key=lambda m: m.target.count("/"))
