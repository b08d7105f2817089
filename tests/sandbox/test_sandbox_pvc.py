"""PersistentVolumeClaims in the sandbox: provisioned, bound, mounted, kept, released."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tonebridge_dr.sandbox.kube import ApiError, Kube
from tonebridge_dr.sandbox.node import launch, volumes
from tonebridge_dr.sandbox.node.env import ConfigError
from tonebridge_dr.sandbox.node.volumes import Mount
from tonebridge_dr.sandbox.runtime import Sandbox

Json = dict[str, Any]
T = TypeVar("T")


def wait_until(check: Callable[[], T | None], timeout: float = 60, what: str = "condition") -> T:
    """Poll until `check` returns something truthy (a readiness wait, not a timing check)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


# --- unit: the volume code ---------------------------------------------------------------


class ClaimObjects:
    """Object source whose claims live in fixed folders (or are not bound yet)."""

    def __init__(self, folders: dict[str, Path]) -> None:
        self.folders = folders

    def secret(self, namespace: str, name: str) -> Json | None:
        return None

    def config_map(self, namespace: str, name: str) -> Json | None:
        return None

    def service_account_token(self, pod: Json, audience: str | None, expiration: int) -> str:
        return "token"

    def claim_folder(self, namespace: str, claim_name: str) -> Path:
        if claim_name not in self.folders:
            raise ConfigError(f'persistentvolumeclaim "{claim_name}" is not bound yet')
        return self.folders[claim_name]


def _pod(*claims: str) -> Json:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "1234"},
        "spec": {
            "volumes": [
                {"name": f"v{i}", "persistentVolumeClaim": {"claimName": claim}}
                for i, claim in enumerate(claims)
            ]
            + [{"name": "scratch", "emptyDir": {}}],
            "containers": [],
        },
    }


def test_claim_volumes_use_the_claims_folder_not_the_pods(tmp_path: Path) -> None:
    data = tmp_path / "volumes" / "pvc-1"
    data.mkdir(parents=True)
    pod = _pod("data")
    assert volumes.unsupported(pod) is None
    folders = volumes.materialize(pod, tmp_path / "pod", ClaimObjects({"data": data}))
    assert folders == {"v0": data, "scratch": tmp_path / "pod" / "scratch"}
    mounts = volumes.container_mounts(
        {"volumeMounts": [{"name": "v0", "mountPath": "/var/lib/postgresql/data"}]}, folders
    )
    assert mounts == [volumes.Mount(data, "/var/lib/postgresql/data")]
    assert volumes.claim_names(pod) == ["data"]


def test_an_unbound_claim_is_a_config_error_so_the_pod_waits(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match='persistentvolumeclaim "data" is not bound yet'):
        volumes.materialize(_pod("data"), tmp_path, ClaimObjects({}))


def test_a_mount_that_hides_the_other_sources_does_not_break_them(tmp_path: Path) -> None:
    """An emptyDir at /tmp over a sandbox state dir under /tmp: every source is staged
    before any target is mounted, so the pod's other volumes still appear."""
    shadow = tmp_path / "shadow"
    state = shadow / "state"
    (state / "scratch").mkdir(parents=True)
    (state / "key").mkdir()
    (state / "key" / "private.asc").write_text("key material")
    termination = state / "termination"
    termination.write_text("")
    spec = launch.ContainerLaunch(
        argv=["sh", "-c", f"cat {tmp_path}/key/private.asc > {tmp_path}/term; ls -A {shadow}"],
        env={"PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        log_path=tmp_path / "main.log",
        mounts=[
            Mount(state / "scratch", str(shadow)),  # hides `state` itself
            Mount(state / "key", f"{tmp_path}/key", read_only=True),
            Mount(termination, f"{tmp_path}/term"),
        ],
    )
    process = launch.start(spec)
    assert process.wait(timeout=30) == 0, (tmp_path / "main.log").read_text()
    assert termination.read_text() == "key material"
    assert (tmp_path / "main.log").read_text() == ""  # the emptyDir is empty inside


# --- sandbox: the claim binder and pods ---------------------------------------------------

CLAIMS = "/api/v1/namespaces/{ns}/persistentvolumeclaims"


def _claim(name: str, size: str = "1Gi", **spec: Any) -> Json:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": size}},
            **spec,
        },
    }


def _get(kube: Kube, path: str) -> Json | None:
    try:
        return kube.get(path)
    except ApiError as error:
        if error.status == 404:
            return None
        raise


def _bound(kube: Kube, namespace: str, name: str) -> Json | None:
    claim = _get(kube, f"{CLAIMS.format(ns=namespace)}/{name}")
    if claim and claim.get("status", {}).get("phase") == "Bound":
        return claim
    return None


def _job(name: str, claim: str, script: str) -> Json:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}],
                    "containers": [
                        {
                            "name": "main",
                            "image": "tonebridge-dr:dev",
                            "command": ["sh", "-c", script],
                            "volumeMounts": [{"name": "data", "mountPath": "/srv/tbdr-claim"}],
                        }
                    ],
                }
            },
        },
    }


def _job_done(kube: Kube, namespace: str, name: str) -> str | None:
    job = kube.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}")
    for condition in job.get("status", {}).get("conditions") or []:
        if condition["type"] in ("Complete", "Failed") and condition["status"] == "True":
            return str(condition["type"])
    return None


def _pod_log(sandbox: Sandbox, kube: Kube, namespace: str, job: str) -> str:
    pods = kube.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector=f"job-name={job}")
    return sandbox.pod_log(namespace, pods["items"][0]["metadata"]["name"])


def test_a_claim_is_provisioned_bound_and_keeps_data_across_pods(
    sandbox: Sandbox, namespace: str
) -> None:
    kube = sandbox.kube()
    kube.create(CLAIMS.format(ns=namespace), _claim("data", "5Gi", storageClassName="gp3"))
    claim = wait_until(lambda: _bound(kube, namespace, "data"), what="bound claim")
    assert claim["status"]["capacity"] == {"storage": "5Gi"}
    assert claim["status"]["accessModes"] == ["ReadWriteOnce"]
    volume = kube.get(f"/api/v1/persistentvolumes/{claim['spec']['volumeName']}")
    assert volume["status"]["phase"] == "Bound"
    assert volume["spec"]["claimRef"]["uid"] == claim["metadata"]["uid"]
    folder = Path(volume["spec"]["hostPath"]["path"])
    assert folder.parent == sandbox.state_dir / "volumes"

    jobs = f"/apis/batch/v1/namespaces/{namespace}/jobs"
    kube.create(jobs, _job("write", "data", "echo kept > /srv/tbdr-claim/file"))
    assert wait_until(lambda: _job_done(kube, namespace, "write"), what="writer") == "Complete"
    assert (folder / "file").read_text() == "kept\n"
    assert not Path("/srv/tbdr-claim/file").exists()  # mounted privately, not on the host

    kube.create(jobs, _job("read", "data", "cat /srv/tbdr-claim/file"))
    assert wait_until(lambda: _job_done(kube, namespace, "read"), what="reader") == "Complete"
    assert "kept" in _pod_log(sandbox, kube, namespace, "read")


def test_a_pod_waits_for_its_claim_and_runs_once_it_exists(
    sandbox: Sandbox, namespace: str
) -> None:
    kube = sandbox.kube()
    kube.create(
        f"/apis/batch/v1/namespaces/{namespace}/jobs",
        _job("early", "late-claim", "touch /srv/tbdr-claim/ran"),
    )

    def waiting_message() -> str | None:
        pods = kube.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector="job-name=early")
        for pod in pods["items"]:
            for status in pod.get("status", {}).get("containerStatuses") or []:
                message = status.get("state", {}).get("waiting", {}).get("message", "")
                if "late-claim" in message:
                    return str(message)
        return None

    message = wait_until(waiting_message, what="pod waiting for its claim")
    assert 'persistentvolumeclaim "late-claim" not found' in message
    kube.create(CLAIMS.format(ns=namespace), _claim("late-claim"))
    assert wait_until(lambda: _job_done(kube, namespace, "early"), what="job") == "Complete"
    claim = kube.get(f"{CLAIMS.format(ns=namespace)}/late-claim")
    folder = sandbox.state_dir / "volumes" / claim["spec"]["volumeName"]
    assert (folder / "ran").exists()


def test_deleting_a_claim_waits_for_its_pods_then_removes_volume_and_folder(
    sandbox: Sandbox, namespace: str
) -> None:
    kube = sandbox.kube()
    claims = CLAIMS.format(ns=namespace)
    kube.create(claims, _claim("scratch"))
    claim = wait_until(lambda: _bound(kube, namespace, "scratch"), what="bound claim")
    volume_name = claim["spec"]["volumeName"]
    folder = sandbox.state_dir / "volumes" / volume_name
    pods = f"/api/v1/namespaces/{namespace}/pods"
    body = _job("x", "scratch", "touch /srv/tbdr-claim/busy; sleep 600")["spec"]["template"]
    body["metadata"] = {"name": "user"}
    body["spec"]["terminationGracePeriodSeconds"] = 1
    kube.create(pods, body)
    wait_until(lambda: (folder / "busy").exists(), what="pod using the claim")

    kube.delete(f"{claims}/scratch")
    # The binder handles claim events in order: once a claim created after the delete is
    # Bound, the deletion has been looked at, while the pod was still using the claim.
    kube.create(claims, _claim("probe"))
    wait_until(lambda: _bound(kube, namespace, "probe"), what="bound probe claim")
    claim = kube.get(f"{claims}/scratch")
    assert claim["metadata"].get("deletionTimestamp")
    assert "kubernetes.io/pvc-protection" in claim["metadata"]["finalizers"]
    assert folder.is_dir()

    kube.delete(f"{pods}/user")
    wait_until(lambda: _get(kube, f"{claims}/scratch") is None, what="claim removal")
    wait_until(
        lambda: _get(kube, f"/api/v1/persistentvolumes/{volume_name}") is None,
        what="volume removal",
    )
    wait_until(lambda: not folder.exists(), what="folder removal")
