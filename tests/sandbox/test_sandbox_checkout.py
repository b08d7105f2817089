"""A checkout anywhere works: the sandbox started from a copy of this checkout under /tmp
runs a Job shaped like the runner pods (an emptyDir at /tmp, read-only root), although
that emptyDir hides the checkout, and so its venv, inside the pod's mount namespace.

The copy is the working tree as `git ls-files` lists it (what a clone would hold, with
uncommitted edits), and its venv is the cheapest one that is still a real venv: made by
`python -m venv --without-pip`, the copy installed editable through a .pth file as pip
does, the dependencies taken from this venv's site-packages through a second .pth file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import tonebridge_dr
from tests.sandbox.test_sandbox import create_job, job_body, job_pods, wait_job
from tonebridge_dr.sandbox import layout, runtime
from tonebridge_dr.sandbox.kube import Kube
from tonebridge_dr.sandbox.runtime import Sandbox

Json = dict[str, Any]

ENTRY_POINT = """\
#!{python}
import sys
from tonebridge_dr.cli import main
if __name__ == '__main__':
    sys.exit(main())
"""


@dataclass(frozen=True)
class Checkout:
    root: Path
    venv: Path
    sandbox: Sandbox


def _copy_working_tree(source: Path, destination: Path) -> None:
    listed = subprocess.run(
        ["git", "-C", str(source), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        path = source / name
        if not path.exists() and not path.is_symlink():
            continue  # deleted in the working tree, not committed yet
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target, follow_symlinks=False)


def _make_venv(root: Path) -> Path:
    venv = root / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(sysconfig.get_path("purelib", "venv", vars={"base": str(venv)}))
    # Sorted by name, so the copy's package comes before anything of this venv.
    (site / "_tonebridge_dr_checkout.pth").write_text(f"{root / 'operator'}\n")
    (site / "_tonebridge_dr_dependencies.pth").write_text(f"{sysconfig.get_path('purelib')}\n")
    script = venv / "bin" / "tonebridge-dr"
    script.write_text(ENTRY_POINT.format(python=venv / "bin" / "python"))
    script.chmod(0o755)
    return venv


@pytest.fixture(scope="module")
def checkout_under_tmp() -> Iterator[Checkout]:
    source = layout.repository_root()
    assert source is not None, "the tests run from a source checkout"
    root = Path(tempfile.mkdtemp(prefix="tonebridge-dr-checkout-", dir="/tmp"))
    root.chmod(0o755)  # the pod runs as nobody
    state = layout.StateDir(Path(tempfile.mkdtemp(prefix="tonebridge-dr-sandbox-", dir="/tmp")))
    state.root.chmod(0o711)
    try:
        _copy_working_tree(source, root)
        venv = _make_venv(root)
        started = runtime.start(state, detach=False, python=venv / "bin" / "python")
        yield Checkout(root, venv, started)
    finally:
        runtime.stop(state)
        shutil.rmtree(state.root, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def kube(checkout_under_tmp: Checkout) -> Iterator[Kube]:
    kube = checkout_under_tmp.sandbox.kube()
    yield kube


def test_a_checkout_under_tmp_runs_jobs_whose_volumes_hide_it(
    checkout_under_tmp: Checkout, kube: Kube
) -> None:
    """Two volumes hide the image: the runner pods' emptyDir at /tmp, and a read-only
    Secret volume mounted at the checkout itself (its files stay visible next to the
    image's folders)."""
    checkout, venv = checkout_under_tmp.root, checkout_under_tmp.venv
    namespace = "default"
    kube.create(
        f"/api/v1/namespaces/{namespace}/secrets",
        {"metadata": {"name": "over-the-checkout"}, "stringData": {"token": "still here"}},
    )
    script = textwrap.dedent(
        f"""
        import json, os, sys, tonebridge_dr
        seen = {{
            "module": tonebridge_dr.__file__,
            "prefix": sys.prefix,
            "token": open({str(checkout / "token")!r}).read(),
            "tmp_writable": os.access("/tmp", os.W_OK),
            "venv_writable": os.access(sys.prefix, os.W_OK),
        }}
        json.dump(seen, open("/dev/termination-log", "w"))
        """
    )
    security = {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False}
    mounts = [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "secret", "mountPath": str(checkout), "readOnly": True},
    ]
    spec: Json = {
        "securityContext": {"runAsNonRoot": True, "runAsUser": 65534, "runAsGroup": 65534},
        "volumes": [
            {"name": "tmp", "emptyDir": {}},
            {"name": "secret", "secret": {"secretName": "over-the-checkout"}},
        ],
        "containers": [
            {
                "name": "version",
                "image": "tonebridge-dr:dev",
                "command": [str(venv / "bin" / "tonebridge-dr"), "--version"],
                "env": [{"name": "HOME", "value": "/tmp"}],
                "securityContext": security,
                "volumeMounts": mounts,
            },
            {
                "name": "imports",
                "image": "tonebridge-dr:dev",
                "command": [str(venv / "bin" / "python"), "-c", script],
                "env": [{"name": "HOME", "value": "/tmp"}],
                "securityContext": security,
                "volumeMounts": mounts,
            },
        ],
    }
    create_job(kube, namespace, job_body("from-tmp", spec))
    condition = wait_job(kube, namespace, "from-tmp")
    [pod] = job_pods(kube, namespace, "from-tmp")
    name = pod["metadata"]["name"]
    sandbox = checkout_under_tmp.sandbox
    logs = {c: sandbox.pod_log(namespace, name, c) for c in ("version", "imports")}
    assert condition["type"] == "Complete", (pod["status"], logs)
    assert logs["version"].strip() == f"tonebridge-dr {tonebridge_dr.__version__}"
    statuses = {s["name"]: s["state"]["terminated"] for s in pod["status"]["containerStatuses"]}
    assert statuses["version"]["exitCode"] == 0
    seen = json.loads(statuses["imports"]["message"])
    assert seen == {
        "module": str(checkout / "operator" / "tonebridge_dr" / "__init__.py"),
        "prefix": str(venv),
        "token": "still here",
        "tmp_writable": True,
        "venv_writable": False,  # the image is read-only
    }
    assert not os.access(str(checkout / "token"), os.F_OK)  # the volume only in the pod
