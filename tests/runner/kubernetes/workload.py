"""A namespace full of configuration for the kubernetes engine's tests (shared by the
runner tests and the end-to-end test): ConfigMaps, Secrets, a Deployment, a Service, an
Ingress, a CronJob, RBAC and a custom resource, plus helpers to compare what a restore
brought back with what was there (server-set fields ignored)."""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import yaml

from tonebridge_dr.runner.engines.kubernetes import clean
from tonebridge_dr.sandbox.kube import ApiError, Kube
from tonebridge_dr.sandbox.runtime import Sandbox

Json = dict[str, Any]
SECRET_VALUE = "s3cr3t-Pa55w0rd-that-must-never-leak"
CRD_GROUP = "widgets.tonebridge-test.io"
CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"widgets.{CRD_GROUP}"},
    "spec": {
        "group": CRD_GROUP,
        "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
        "scope": "Namespaced",
        "versions": [{
            "name": "v1", "served": True, "storage": True,
            "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}},
        }],
    },
}
KINDS = ("configmaps", "secrets", "deployments", "services", "ingresses", "cronjobs",
         "serviceaccounts", "roles", "rolebindings", f"{CRD_GROUP}/Widget")


def objects(namespace: str) -> list[Json]:
    labels = {"app": "shop"}
    return [
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": "shop-config", "namespace": namespace, "labels": labels},
         "data": {"LOG_LEVEL": "info", "nginx.conf": "server { listen 80; }\n"}},
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": "feature-flags", "namespace": namespace},
         "data": {"checkout": "on"}},
        {"apiVersion": "v1", "kind": "Secret",
         "metadata": {"name": "shop-db", "namespace": namespace},
         "type": "Opaque", "stringData": {"password": SECRET_VALUE}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "shop", "namespace": namespace}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "shop-reader", "namespace": namespace},
         "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "shop-reader", "namespace": namespace},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                     "name": "shop-reader"},
         "subjects": [{"kind": "ServiceAccount", "name": "shop", "namespace": namespace}]},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "shop", "namespace": namespace, "labels": labels},
         "spec": {"replicas": 2, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels}, "spec": {
                      "serviceAccountName": "shop",
                      "containers": [{"name": "web", "image": "nginx:1.27",
                                      "envFrom": [{"configMapRef": {"name": "shop-config"}}]}]}}}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "shop", "namespace": namespace, "labels": labels},
         "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 80}]}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
         "metadata": {"name": "shop", "namespace": namespace},
         "spec": {"rules": [{"host": "shop.example.test", "http": {"paths": [
             {"path": "/", "pathType": "Prefix",
              "backend": {"service": {"name": "shop", "port": {"number": 80}}}}]}}]}},
        {"apiVersion": "batch/v1", "kind": "CronJob",
         "metadata": {"name": "nightly-report", "namespace": namespace},
         "spec": {"schedule": "0 3 * * *", "suspend": True, "jobTemplate": {"spec": {
             "template": {"spec": {"restartPolicy": "Never", "containers": [
                 {"name": "report", "image": "busybox:1.36", "command": ["true"]}]}}}}}},
        {"apiVersion": f"{CRD_GROUP}/v1", "kind": "Widget",
         "metadata": {"name": "gizmo", "namespace": namespace},
         "spec": {"size": 3, "color": "blue"}},
    ]


def install_crd(sandbox: Sandbox) -> None:
    sandbox.kubectl("apply", "-f", "-", input=json.dumps(CRD))
    sandbox.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    f"crd/widgets.{CRD_GROUP}")


def create(sandbox: Sandbox, namespace: str) -> None:
    install_crd(sandbox)
    stream = "\n---\n".join(yaml.safe_dump(obj) for obj in objects(namespace))
    sandbox.kubectl("apply", "--server-side", "--field-manager=test", "-f", "-", input=stream)


def _plural(kind: str) -> str:
    return {"Ingress": "ingresses", "Widget": "widgets"}.get(kind, kind.lower() + "s")


def path(obj: Json, namespace: str) -> str:
    api = obj["apiVersion"]
    base = f"/apis/{api}" if "/" in api else f"/api/{api}"
    return f"{base}/namespaces/{namespace}/{_plural(obj['kind'])}/{obj['metadata']['name']}"


def comparable(obj: Json) -> Json:
    """`obj` without server-set fields and its namespace (what a restore must preserve)."""
    out = clean.clean(obj)
    out["metadata"].pop("namespace", None)
    for subject in out.get("subjects") or []:
        subject.pop("namespace", None)
    return out


def snapshot(kube: Kube, namespace: str, source: str | None = None) -> dict[str, Json]:
    """Every test object as it is live in `namespace`, comparable, by kind/name."""
    found = {}
    for obj in objects(source or namespace):
        live = kube.get(path(obj, namespace))
        found[f"{obj['kind']}/{obj['metadata']['name']}"] = comparable(live)
    return found


def delete_namespace(kube: Kube, namespace: str, timeout: float = 120) -> None:
    kube.delete(f"/api/v1/namespaces/{namespace}")
    deadline = time.monotonic() + timeout
    while True:
        try:
            kube.get(f"/api/v1/namespaces/{namespace}")
        except ApiError as exc:
            if exc.status == 404:
                return
            raise
        if time.monotonic() > deadline:
            raise AssertionError(f"namespace {namespace} still exists after {timeout} s")
        time.sleep(0.25)


def wait_ready_replicas(kube: Kube, namespace: str, name: str, want: int,
                        timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status = kube.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}").get(
            "status") or {}
        if status.get("readyReplicas") == want:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"deployment {namespace}/{name}: {status}")
        time.sleep(0.25)


def secret_data(kube: Kube, namespace: str) -> Json:
    return copy.deepcopy(kube.get(f"/api/v1/namespaces/{namespace}/secrets/shop-db")["data"])
