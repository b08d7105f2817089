"""The kinds the engine exports and the order a restore applies them in.

A kind is named in a policy by its resource name (`configmaps`, `deployments`, ...) or,
for a custom resource, as `group/Kind` or `group/plural` (`stable.example.com/CronTab`);
custom resources are looked up in the API server's discovery. Only namespaced kinds
are exported: a configuration backup is about namespaces.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Final


@dataclasses.dataclass(frozen=True)
class Kind:
    """One exportable resource as the API server serves it."""

    group: str  # "" for the core group
    version: str
    kind: str
    plural: str
    order: int  # restore order: lower first

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def name(self) -> str:
        """How a policy names it: the plural, or `group/Kind` for custom resources."""
        return self.plural if self.builtin else f"{self.group}/{self.kind}"

    @property
    def builtin(self) -> bool:
        return self.plural in BUILTIN

    def path(self, namespace: str, name: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        path = f"{base}/namespaces/{namespace}/{self.plural}"
        return f"{path}/{name}" if name else path


#: Restore order (spec of issue #15): namespaces first (created by the restore), then
#: identities and RBAC, configuration, storage, network endpoints, custom resources,
#: workloads, and what points at workloads last.
ORDER_IDENTITY: Final = 10
ORDER_RBAC: Final = 20
ORDER_CONFIG: Final = 30
ORDER_STORAGE: Final = 40
ORDER_SERVICE: Final = 50
ORDER_CUSTOM: Final = 60
ORDER_WORKLOAD: Final = 70
ORDER_AFTER_WORKLOAD: Final = 80

_BUILTIN_KINDS: Final[tuple[Kind, ...]] = (
    Kind("", "v1", "ServiceAccount", "serviceaccounts", ORDER_IDENTITY),
    Kind("rbac.authorization.k8s.io", "v1", "Role", "roles", ORDER_RBAC),
    Kind("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", ORDER_RBAC + 1),
    Kind("", "v1", "ConfigMap", "configmaps", ORDER_CONFIG),
    Kind("", "v1", "Secret", "secrets", ORDER_CONFIG + 1),
    Kind("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", ORDER_STORAGE),
    Kind("", "v1", "Service", "services", ORDER_SERVICE),
    Kind("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", ORDER_SERVICE + 1),
    Kind("apps", "v1", "Deployment", "deployments", ORDER_WORKLOAD),
    Kind("apps", "v1", "StatefulSet", "statefulsets", ORDER_WORKLOAD + 1),
    Kind("apps", "v1", "DaemonSet", "daemonsets", ORDER_WORKLOAD + 2),
    Kind("batch", "v1", "CronJob", "cronjobs", ORDER_WORKLOAD + 3),
    Kind("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers",
         ORDER_AFTER_WORKLOAD),
    Kind("networking.k8s.io", "v1", "Ingress", "ingresses", ORDER_AFTER_WORKLOAD + 1),
)
BUILTIN: Final[dict[str, Kind]] = {kind.plural: kind for kind in _BUILTIN_KINDS}
SECRETS: Final = "secrets"

#: What `--kind` means when none is given (the API's default `kinds`).
DEFAULT_KINDS: Final[tuple[str, ...]] = (
    "configmaps", "secrets", "deployments", "statefulsets", "daemonsets", "services",
    "ingresses", "cronjobs", "serviceaccounts", "roles", "rolebindings",
    "persistentvolumeclaims", "horizontalpodautoscalers", "networkpolicies",
)


def is_custom(name: str) -> bool:
    return "/" in name


def by_kind(kinds: Iterable[Kind]) -> dict[tuple[str, str], Kind]:
    """(group, Kind) -> Kind, e.g. ("apps", "Deployment")."""
    return {(kind.group, kind.kind): kind for kind in kinds}


def group_of(api_version: str) -> str:
    return api_version.split("/", 1)[0] if "/" in api_version else ""


def restore_order(kinds: Sequence[Kind]) -> list[Kind]:
    return sorted(kinds, key=lambda kind: (kind.order, kind.group, kind.kind))
