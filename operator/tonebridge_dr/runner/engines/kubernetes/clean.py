"""Turning a live object into what a restore can apply anywhere (pure functions).

Removed: `status`; the metadata the API server sets (uid, resourceVersion, generation,
creationTimestamp, managedFields, selfLink, deletionTimestamp, deletionGracePeriodSeconds,
generateName, finalizers); `kubectl.kubernetes.io/last-applied-configuration` and other
annotations controllers write; ownerReferences to objects outside the backup (those to
objects inside it lose their uid: a restore fills in the new one); and fields that tie an
object to one cluster: a Service's clusterIP(s) (a headless Service keeps `None`), a
PersistentVolumeClaim's volumeName and binding annotations (it gets a new volume: the spec
only, never its data), a ServiceAccount's token Secret references.

`skip_reason` says which objects are not configuration at all and are left out: Secrets
of type service-account-token (the control plane mints them), the `kube-root-ca.crt`
ConfigMap (published into every namespace by the controller manager).
"""

from __future__ import annotations

import copy
from collections.abc import Collection
from typing import Any, Final

Json = dict[str, Any]

_SERVER_METADATA: Final = (
    "uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "selfLink",
    "deletionTimestamp", "deletionGracePeriodSeconds", "generateName", "finalizers",
)
_SERVER_ANNOTATIONS: Final = frozenset({
    "kubectl.kubernetes.io/last-applied-configuration",
    "deployment.kubernetes.io/revision",
    "pv.kubernetes.io/bind-completed",
    "pv.kubernetes.io/bound-by-controller",
    "volume.beta.kubernetes.io/storage-provisioner",
    "volume.kubernetes.io/storage-provisioner",
    "volume.kubernetes.io/selected-node",
    "kubernetes.io/service-account.uid",
})
_GENERATED_CONFIGMAPS: Final = frozenset({"kube-root-ca.crt"})

#: (kind, name) of an object, the key ownerReferences are resolved by.
Ref = tuple[str, str]


def skip_reason(obj: Json) -> str | None:
    """Why `obj` is not backed up, or None."""
    kind = obj.get("kind")
    name = (obj.get("metadata") or {}).get("name")
    if kind == "Secret" and obj.get("type") == "kubernetes.io/service-account-token":
        return "service-account token (minted by the control plane)"
    if kind == "ConfigMap" and name in _GENERATED_CONFIGMAPS:
        return "published into every namespace by the controller manager"
    return None


def clean(obj: Json, members: Collection[Ref] = ()) -> Json:
    """A copy of `obj` without server-set and cluster-specific fields; ownerReferences
    kept (without uid) only for owners in `members`."""
    out = copy.deepcopy(obj)
    out.pop("status", None)
    meta = out.setdefault("metadata", {})
    for key in _SERVER_METADATA:
        meta.pop(key, None)
    annotations = {
        key: value for key, value in (meta.get("annotations") or {}).items()
        if key not in _SERVER_ANNOTATIONS
    }
    if annotations:
        meta["annotations"] = annotations
    else:
        meta.pop("annotations", None)
    if not meta.get("labels"):
        meta.pop("labels", None)
    owners = [
        {key: value for key, value in ref.items() if key != "uid"}
        for ref in meta.get("ownerReferences") or []
        if (ref.get("kind"), ref.get("name")) in members
    ]
    if owners:
        meta["ownerReferences"] = owners
    else:
        meta.pop("ownerReferences", None)
    _clean_kind(out)
    return out


def _clean_kind(obj: Json) -> None:
    kind = obj.get("kind")
    spec = obj.get("spec")
    if kind == "Service" and isinstance(spec, dict):
        if spec.get("clusterIP") != "None":  # headless stays headless
            spec.pop("clusterIP", None)
            spec.pop("clusterIPs", None)
        elif "clusterIPs" in spec:
            spec["clusterIPs"] = ["None"]
        spec.pop("healthCheckNodePort", None)
    elif kind == "PersistentVolumeClaim" and isinstance(spec, dict):
        spec.pop("volumeName", None)
    elif kind == "ServiceAccount":
        name = (obj.get("metadata") or {}).get("name", "")
        kept = [s for s in obj.get("secrets") or []
                if not str(s.get("name", "")).startswith(f"{name}-token-")]
        if kept:
            obj["secrets"] = kept
        else:
            obj.pop("secrets", None)
    template = spec.get("template") if isinstance(spec, dict) else None
    if isinstance(template, dict):  # workloads: an empty creationTimestamp in the template
        (template.get("metadata") or {}).pop("creationTimestamp", None)
    job_template = spec.get("jobTemplate") if isinstance(spec, dict) else None
    if isinstance(job_template, dict):
        (job_template.get("metadata") or {}).pop("creationTimestamp", None)
        inner = (job_template.get("spec") or {}).get("template")
        if isinstance(inner, dict):
            (inner.get("metadata") or {}).pop("creationTimestamp", None)


def ref_of(obj: Json) -> Ref:
    return (str(obj.get("kind", "")), str((obj.get("metadata") or {}).get("name", "")))
