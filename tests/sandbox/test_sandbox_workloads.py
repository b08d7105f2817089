"""Workloads in the sandbox: the deployment, replicaset and endpointslice controllers run,
pods of a Deployment whose image the node cannot run are Ready placeholders with their own
pod IPs, a Service's EndpointSlice lists them; pods of no workload are treated as before."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from typing import Any, TypeVar

from tonebridge_dr.sandbox.kube import Kube
from tonebridge_dr.sandbox.runtime import Sandbox

Json = dict[str, Any]
T = TypeVar("T")


def wait_until(check: Callable[[], T | None], what: str, timeout: float = 60) -> T:
    """Poll `check` until it returns something truthy (a readiness bound)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def ready(pod: Json) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def test_deployment_of_a_foreign_image_runs_placeholder_pods_listed_in_endpoint_slices(
    sandbox: Sandbox, namespace: str
) -> None:
    kube: Kube = sandbox.kube()
    labels = {"app": "web"}
    kube.create(f"/apis/apps/v1/namespaces/{namespace}/deployments", {
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [{"name": "web", "image": "nginx:1.27",
                                                       "ports": [{"name": "http",
                                                                  "containerPort": 80}]}]}}},
    })
    kube.create(f"/api/v1/namespaces/{namespace}/services", {
        "metadata": {"name": "web"},
        "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": "http"}]},
    })

    def ready_pods() -> list[Json] | None:
        pods = kube.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector="app=web")["items"]
        return pods if len(pods) == 2 and all(ready(p) for p in pods) else None

    pods = wait_until(ready_pods, "two Ready pods of the Deployment")
    ips = {p["status"]["podIP"] for p in pods}
    assert len(ips) == 2
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network("10.244.0.0/16") for ip in ips)
    for pod in pods:
        assert "running" in pod["status"]["containerStatuses"][0]["state"]
    events = kube.get(f"/api/v1/namespaces/{namespace}/events")["items"]
    assert any(e["reason"] == "SandboxPlaceholder" for e in events)

    def listed() -> set[str] | None:
        slices = kube.get(f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
                          labelSelector="kubernetes.io/service-name=web")["items"]
        found = {a for s in slices for e in s.get("endpoints") or []
                 if e.get("conditions", {}).get("ready") for a in e["addresses"]}
        return found if found == ips else None

    wait_until(listed, "the EndpointSlice to list both pods")
    deployment = kube.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/web")
    assert deployment["status"]["availableReplicas"] == 2


def test_bare_pod_of_a_foreign_image_without_command_is_still_refused(
    sandbox: Sandbox, namespace: str
) -> None:
    kube: Kube = sandbox.kube()
    kube.create(f"/api/v1/namespaces/{namespace}/pods", {
        "metadata": {"name": "bare"},
        "spec": {"restartPolicy": "Never",
                 "containers": [{"name": "web", "image": "nginx:1.27"}]},
    })

    def failed() -> Json | None:
        pod = kube.get(f"/api/v1/namespaces/{namespace}/pods/bare")
        return pod if pod.get("status", {}).get("phase") == "Failed" else None

    pod = wait_until(failed, "the bare pod to fail")
    assert pod["status"]["reason"] == "SandboxUnsupported"
    assert pod["status"]["podIP"] == "127.0.0.1"
