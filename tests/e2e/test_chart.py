"""The Helm chart: lints, renders, and every object it renders is accepted by the real
API server (server-side dry run); its CRDs are the generated ones."""

from __future__ import annotations

import subprocess

import pytest

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


def test_chart_lints() -> None:
    assert "0 chart(s) failed" in _helm("lint", str(CHART))


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
    ids=["cluster-wide", "namespaced", "config-backup"],
)
def test_rendered_chart_is_accepted_by_the_api_server(
    sandbox: object, namespace: str, values: list[str]
) -> None:
    kubectl = sandbox.kubectl  # type: ignore[attr-defined]
    kubectl("apply", "--server-side", "-f", str(CHART / "crds" / "kopf-peering.yaml"))
    kubectl("wait", "--for=condition=Established", "crd/kopfpeerings.kopf.dev", "--timeout=60s")
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
