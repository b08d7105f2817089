"""The kind tier: the same CRDs and examples on a kind cluster (`make e2e-kind`).

kind runs Kubernetes nodes as Docker containers. Machines without a Docker
engine (this project's CI among them) skip this tier; everything it checks
also runs against the sandbox control plane in the default tier.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.fixtures import ROOT


def _docker_engine_reason() -> str | None:
    if shutil.which("kind") is None:
        return "kind tier needs the `kind` binary and a Docker engine; kind is not installed"
    if shutil.which("docker") is None:
        return "kind tier needs a Docker engine; the docker client is not installed"
    probe = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return "kind tier needs a running Docker engine; `docker info` failed (no Docker here)"
    return None


pytestmark = [
    pytest.mark.kind,
    pytest.mark.skipif(_docker_engine_reason() is not None, reason=str(_docker_engine_reason())),
]


def test_crds_and_examples_apply_on_kind(k8s) -> None:  # type: ignore[no-untyped-def]
    k8s.create()
    for crd in sorted((ROOT / "crds").glob("*.yaml")):
        k8s.apply(crd)
    k8s.kubectl(["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"])
    for example in sorted((ROOT / "examples").rglob("*.yaml")):
        k8s.kubectl(["apply", "--dry-run=server", "-f", str(example)], as_dict=False)
