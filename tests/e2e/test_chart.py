"""The Helm chart: lints, renders, and every object it renders is accepted by the real
API server (server-side dry run); its CRDs are the generated ones."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
import yaml

from tests.fixtures import ROOT
from tonebridge_dr.sandbox import layout

CHART = ROOT / "charts" / "tonebridge-dr"


def _helm(*args: str) -> str:
    helm = layout.binary("helm")
    done = subprocess.run([str(helm), *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_chart_crds_are_the_generated_ones() -> None:
    for generated in sorted((ROOT / "crds").glob("*.yaml")):
        copy = CHART / "crds" / generated.name
        assert copy.is_file(), f"{copy} missing: run `make crds`"
        assert copy.read_text() == generated.read_text(), f"{copy} drifted: run `make crds`"


#: Every optional value set: scheduling, identities, monitoring objects.
EVERYTHING = [
    "--set", "watchNamespaces={NS}",
    "--set", "operator.nodeSelector.kubernetes\\.io/os=linux",
    "--set", "operator.tolerations[0].key=dedicated",
    "--set", "operator.tolerations[0].operator=Exists",
    "--set", "operator.tolerations[0].effect=NoSchedule",
    "--set", "operator.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
             ".nodeSelectorTerms[0].matchExpressions[0].key=kubernetes.io/arch",
    "--set", "operator.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
             ".nodeSelectorTerms[0].matchExpressions[0].operator=In",
    "--set", "operator.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
             ".nodeSelectorTerms[0].matchExpressions[0].values={amd64}",
    "--set", "operator.priorityClassName=system-cluster-critical",
    "--set", "operator.podAnnotations.example\\.com/team=dr",
    "--set", "imagePullSecrets[0].name=regcred",
    "--set", "serviceAccountAnnotations.operator.iam\\.gke\\.io/gcp-service-account="
             "op@p.iam.gserviceaccount.com",
    "--set", "serviceAccountAnnotations.backup.eks\\.amazonaws\\.com/role-arn="
             "arn:aws:iam::123456789012:role/backup",
    "--set", "metrics.serviceMonitor.enabled=true",
    "--set", "metrics.serviceMonitor.labels.release=prom",
    "--set", "metrics.prometheusRule.enabled=true",
    "--set", "metrics.prometheusRule.backupFailingWindow=2h",
    "--set", "metrics.grafanaDashboard.enabled=true",
]

#: Stand-ins for prometheus-operator's CRDs (monitoring.coreos.com), which the sandbox does
#: not have: they accept any spec, so the dry run checks everything but those two specs.
MONITORING_CRDS = [
    {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "names": {"kind": kind, "plural": plural, "listKind": f"{kind}List",
                      "singular": plural[:-1]},
            "scope": "Namespaced",
            "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                "openAPIV3Schema": {"type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True}}}],
        },
    }
    for kind, plural in (("ServiceMonitor", "servicemonitors"),
                         ("PrometheusRule", "prometheusrules"))
]


def _render(namespace: str, *values: str) -> list[dict[str, Any]]:
    args = [v.replace("NS", namespace) for v in values]
    text = _helm("template", "tonebridge-dr", str(CHART), "--namespace", namespace, *args)
    return [d for d in yaml.safe_load_all(text) if d]


def _one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


def test_chart_lints() -> None:
    assert "0 chart(s) failed" in _helm("lint", str(CHART))
    assert "0 chart(s) failed" in _helm("lint", str(CHART), *[
        v.replace("NS", "ns1") for v in EVERYTHING])


def test_default_values_render_cluster_wide_rbac_and_a_metrics_service() -> None:
    objects = _render("dr")
    kinds = sorted(o["kind"] for o in objects)
    assert "ClusterRole" in kinds and "ClusterRoleBinding" in kinds and "Role" not in kinds
    assert not {"ServiceMonitor", "PrometheusRule", "ConfigMap"} & set(kinds)
    pod = _one(objects, "Deployment")["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["TONEBRIDGE_DR_METRICS_ADDRESS"] == "0.0.0.0"
    assert env["TONEBRIDGE_DR_WATCH_NAMESPACES"] == ""
    assert not {"nodeSelector", "tolerations", "affinity", "priorityClassName"} & set(pod)
    service = _one(objects, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    labels = _one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


def test_every_value_reaches_the_objects() -> None:
    objects = _render("dr", *[v.replace("NS", "apps") for v in EVERYTHING])
    kinds = [o["kind"] for o in objects]
    assert "ClusterRole" not in kinds and "ClusterRoleBinding" not in kinds
    roles = [(o["kind"], o["metadata"]["namespace"]) for o in objects
             if o["kind"] in ("Role", "RoleBinding")]
    assert sorted(roles) == [("Role", "apps"), ("RoleBinding", "apps")]
    accounts = {(o["metadata"]["name"], o["metadata"]["namespace"]): o
                for o in objects if o["kind"] == "ServiceAccount"}
    assert set(accounts) == {
        ("tonebridge-dr-operator", "dr"),
        ("tonebridge-dr-backup", "dr"), ("tonebridge-dr-restore", "dr"),
        ("tonebridge-dr-backup", "apps"), ("tonebridge-dr-restore", "apps"),
    }
    assert accounts[("tonebridge-dr-backup", "apps")]["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/backup"}
    assert "annotations" not in accounts[("tonebridge-dr-restore", "apps")]["metadata"]
    assert accounts[("tonebridge-dr-operator", "dr")]["metadata"]["annotations"] == {
        "iam.gke.io/gcp-service-account": "op@p.iam.gserviceaccount.com"}
    deployment = _one(objects, "Deployment")["spec"]["template"]
    pod = deployment["spec"]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Exists",
                                   "effect": "NoSchedule"}]
    assert pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert deployment["metadata"]["annotations"] == {"example.com/team": "dr"}
    monitor = _one(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= (
        _one(objects, "Service")["metadata"]["labels"].items())
    rules = _one(objects, "PrometheusRule")["spec"]["groups"][0]["rules"]
    failing = next(r for r in rules if r["alert"] == "TonebridgeDRBackupFailing")
    assert "[2h]" in failing["expr"] and "< 7200" in failing["expr"]
    dashboard = _one(objects, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["tonebridge-dr.json"])["uid"] == "tonebridge-dr"


@pytest.mark.parametrize(
    "values",
    [
        [],
        [
            "--set",
            "watchNamespaces={NS}",
            "--set",
            "jobNamespaces={NS}",
            "--set",
            "operator.replicas=2",
        ],
        EVERYTHING,
        [
            "--set",
            "jobNamespaces={NS}",
            "--set",
            "configBackup.namespaces={NS}",
            "--set",
            "configBackup.kinds={configmaps,secrets,deployments}",
            "--set",
            "configBackup.customResources[0].group=example.com",
            "--set",
            "configBackup.customResources[0].resource=widgets",
            "--set",
            "configBackup.restoreCreatesNamespaces=true",
        ],
    ],
    ids=["cluster-wide", "namespaced", "every-value", "config-backup"],
)
def test_rendered_chart_is_accepted_by_the_api_server(
    sandbox: object, namespace: str, values: list[str]
) -> None:
    kubectl = sandbox.kubectl  # type: ignore[attr-defined]
    kubectl("apply", "--server-side", "-f", str(CHART / "crds" / "kopf-peering.yaml"))
    kubectl("apply", "--server-side", "-f", "-", input="\n---\n".join(
        json.dumps(crd) for crd in MONITORING_CRDS))
    kubectl("wait", "--for=condition=Established", "crd/kopfpeerings.kopf.dev",
            "crd/servicemonitors.monitoring.coreos.com",
            "crd/prometheusrules.monitoring.coreos.com", "--timeout=60s")
    args = [v.replace("NS", namespace) for v in values]
    rendered = _helm("template", "tonebridge-dr", str(CHART), "--namespace", namespace, *args)
    assert "kind: Deployment" in rendered
    out = kubectl(
        "apply",
        "--dry-run=server",
        "--validate=strict",
        "-n",
        namespace,
        "-f",
        "-",
        input=rendered,
    ).stdout
    assert "deployment.apps/tonebridge-dr-operator created (server dry run)" in out
    assert "serviceaccount/tonebridge-dr-backup created (server dry run)" in out
    if values is EVERYTHING:
        for created in ("servicemonitor.monitoring.coreos.com/tonebridge-dr-operator",
                        "prometheusrule.monitoring.coreos.com/tonebridge-dr-operator",
                        "configmap/tonebridge-dr-dashboard",
                        "service/tonebridge-dr-operator-metrics",
                        "role.rbac.authorization.k8s.io/tonebridge-dr-operator"):
            assert f"{created} created (server dry run)" in out, out
