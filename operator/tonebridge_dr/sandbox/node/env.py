"""A container's environment, resolved the way the kubelet does it.

Order: `envFrom` sources first (in order), then `env` (later entries win);
`$(VAR)` in values, command and args expands to variables defined before it,
`$$` escapes. A missing Secret / ConfigMap / key that is not `optional` is a
`ConfigError` (the kubelet's CreateContainerConfigError: the pod waits and the
kubelet retries, since the object may still be created).
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, Protocol

from kubernetes.utils import quantity

_parse_quantity: Callable[[str], Decimal] = quantity.parse_quantity

Json = dict[str, Any]

_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_FIELD_WITH_KEY = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


class ConfigError(Exception):
    """The container cannot be configured yet (reason CreateContainerConfigError)."""

    reason = "CreateContainerConfigError"


class ObjectSource(Protocol):
    """Where Secrets and ConfigMaps come from (the API server, or a dict in tests)."""

    def secret(self, namespace: str, name: str) -> Json | None: ...

    def config_map(self, namespace: str, name: str) -> Json | None: ...


def secret_data(secret: Json) -> dict[str, str]:
    """Decoded values of a Secret (`data` base64, `stringData` never stored)."""
    return {
        key: base64.b64decode(value).decode("utf-8", "surrogateescape")
        for key, value in (secret.get("data") or {}).items()
    }


def config_map_data(config_map: Json) -> dict[str, str]:
    values = dict(config_map.get("data") or {})
    for key, value in (config_map.get("binaryData") or {}).items():
        values[key] = base64.b64decode(value).decode("utf-8", "surrogateescape")
    return values


def expand(text: str, mapping: Mapping[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: defined names are replaced, unknown ones kept
    verbatim, `$$` becomes `$`."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char == "$" and i + 1 < n:
            following = text[i + 1]
            if following == "$":
                out.append("$")
                i += 2
                continue
            if following == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2 : end]
                    out.append(mapping[name] if name in mapping else text[i : end + 1])
                    i = end + 1
                    continue
        out.append(char)
        i += 1
    return "".join(out)


def field_value(pod: Json, path: str) -> str:
    """Value of a downward-API `fieldRef.fieldPath`."""
    metadata = pod.get("metadata", {})
    spec = pod.get("spec", {})
    status = pod.get("status", {})
    simple = {
        "metadata.name": metadata.get("name", ""),
        "metadata.namespace": metadata.get("namespace", ""),
        "metadata.uid": metadata.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.hostIP": status.get("hostIP", "127.0.0.1"),
        "status.hostIPs": status.get("hostIP", "127.0.0.1"),
        "status.podIP": status.get("podIP", "127.0.0.1"),
        "status.podIPs": status.get("podIP", "127.0.0.1"),
    }
    if path in simple:
        return str(simple[path])
    if path in ("metadata.labels", "metadata.annotations"):
        items = metadata.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    match = _FIELD_WITH_KEY.match(path)
    if match:
        return str((metadata.get(match.group(1)) or {}).get(match.group(2), ""))
    raise ConfigError(f"unsupported fieldRef.fieldPath {path!r}")


def resource_value(
    pod: Json, container: Json, ref: Json, node_allocatable: Mapping[str, str]
) -> str:
    """Value of a `resourceFieldRef` (limits default to the node's allocatable)."""
    name = ref.get("containerName") or container.get("name")
    target = next(
        (c for c in pod["spec"].get("containers", []) if c.get("name") == name), container
    )
    kind, _, resource = ref.get("resource", "").partition(".")
    resources = target.get("resources") or {}
    value = (resources.get(kind) or {}).get(resource)
    if value is None and kind == "requests":
        value = (resources.get("limits") or {}).get(resource)
    if value is None:
        value = node_allocatable.get(resource, "0")
    divisor = _parse_quantity(ref.get("divisor") or "1")
    amount = _parse_quantity(value) / (divisor or Decimal(1))
    return str(math.ceil(amount))


def _lookup(source: ObjectSource, kind: str, namespace: str, ref: Json) -> dict[str, str] | None:
    name = ref.get("name", "")
    if kind == "secret":
        obj = source.secret(namespace, name)
        data = secret_data(obj) if obj is not None else None
    else:
        obj = source.config_map(namespace, name)
        data = config_map_data(obj) if obj is not None else None
    if data is None and not ref.get("optional"):
        label = "secret" if kind == "secret" else "configmap"
        raise ConfigError(f'{label} "{name}" not found')
    return data


def container_env(
    pod: Json,
    container: Json,
    source: ObjectSource,
    base: Mapping[str, str],
    node_allocatable: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The full environment of one container: `base` overlaid with its envFrom/env."""
    namespace = pod["metadata"]["namespace"]
    env: dict[str, str] = {}
    for item in container.get("envFrom") or []:
        prefix = item.get("prefix", "")
        if "secretRef" in item:
            data = _lookup(source, "secret", namespace, item["secretRef"])
        elif "configMapRef" in item:
            data = _lookup(source, "configmap", namespace, item["configMapRef"])
        else:
            raise ConfigError(f"unsupported envFrom source {sorted(item)}")
        for key, value in (data or {}).items():
            if _ENV_NAME.match(prefix + key):  # the kubelet skips invalid names too
                env[prefix + key] = value
    for var in container.get("env") or []:
        name = var["name"]
        value_from = var.get("valueFrom")
        if value_from is None:
            env[name] = expand(var.get("value", ""), env)
        elif "secretKeyRef" in value_from or "configMapKeyRef" in value_from:
            kind = "secret" if "secretKeyRef" in value_from else "configmap"
            ref = value_from["secretKeyRef" if kind == "secret" else "configMapKeyRef"]
            data = _lookup(source, kind, namespace, ref)
            if data is None:
                continue  # optional object missing
            key = ref.get("key", "")
            if key not in data:
                if ref.get("optional"):
                    continue
                label = "secret" if kind == "secret" else "configmap"
                raise ConfigError(f"couldn't find key {key} in {label} {namespace}/{ref['name']}")
            env[name] = data[key]
        elif "fieldRef" in value_from:
            env[name] = field_value(pod, value_from["fieldRef"].get("fieldPath", ""))
        elif "resourceFieldRef" in value_from:
            env[name] = resource_value(
                pod, container, value_from["resourceFieldRef"], node_allocatable or {}
            )
        else:
            raise ConfigError(f"unsupported valueFrom for {name}: {sorted(value_from)}")
    return {**base, **env}


def container_argv(container: Json, env: Mapping[str, str]) -> list[str]:
    """`command` + `args` with `$(VAR)` expanded against the container's environment."""
    return [expand(str(part), env) for part in container.get("command") or []] + [
        expand(str(part), env) for part in container.get("args") or []
    ]
