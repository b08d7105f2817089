"""The kubernetes engine against the real control plane (kube-apiserver and controllers
of the sandbox), moto S3 and real gpg: `backup kubernetes` and `restore kubernetes` as
the CLI runs them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.gpg import GpgKeys
from tests.fixtures.s3 import client as s3_client
from tests.runner.kubernetes import workload
from tonebridge_dr.cli import main
from tonebridge_dr.runner.engines.kubernetes import export
from tonebridge_dr.runner.engines.kubernetes.client import Client
from tonebridge_dr.sandbox.kube import ApiError, Kube
from tonebridge_dr.sandbox.runtime import Sandbox

Json = dict[str, Any]


def run(capsys: pytest.CaptureFixture[str], *argv: str, expect: int = 0) -> Json:
    capsys.readouterr()
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    assert code == expect, out
    return json.loads(out) if out.strip() else {}


def backup_args(sandbox: Sandbox, repo: str, namespace: str, *extra: str) -> list[str]:
    args = ["backup", "kubernetes", "--repo", repo, "--kubeconfig", str(sandbox.kubeconfig),
            "--namespace", namespace]
    return [*args, *extra]


def restore_args(sandbox: Sandbox, repo: str, *extra: str) -> list[str]:
    return ["restore", "kubernetes", "--repo", repo, "--kubeconfig", str(sandbox.kubeconfig),
            *extra]


def kind_args(kinds: tuple[str, ...] = workload.KINDS) -> list[str]:
    return [arg for kind in kinds for arg in ("--kind", kind)]


def test_a_deleted_namespace_comes_back_whole_in_place_and_under_another_name(
    sandbox: Sandbox, namespace: str, s3_repo_url: str, gpg_keys: GpgKeys, moto_server: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kube = sandbox.kube()
    workload.create(sandbox, namespace)
    workload.wait_ready_replicas(kube, namespace, "shop", 2)
    before = workload.snapshot(kube, namespace)
    secret_before = workload.secret_data(kube, namespace)

    result = run(capsys, *backup_args(sandbox, s3_repo_url, namespace, *kind_args(),
                                      "--encrypt-to", str(gpg_keys.public_key)))
    # the test's objects and the namespace's `default` ServiceAccount (it may carry
    # imagePullSecrets; a restore leaves the one the control plane made when it exists)
    count = len(workload.objects(namespace)) + 1
    assert result["kubernetes"]["object_count"] == count
    assert result["kubernetes"]["counts"]["Widget"] == 1
    assert result["encrypted"] is True

    # Nothing of the Secret is readable in the repository: not in the stored objects
    # (encrypted), not in the manifest (no checksum of plaintext either).
    bucket, prefix = s3_repo_url.removeprefix("s3://").split("/", 1)
    s3 = s3_client(moto_server)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]]
    stored = b"".join(s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys)
    assert any(k.endswith("manifest.json") for k in keys)
    encoded = secret_before["password"].encode()
    for needle in (workload.SECRET_VALUE.encode(), encoded, b"shop-config\n  namespace"):
        assert needle not in stored
    manifest = json.loads(next(s3.get_object(Bucket=bucket, Key=k)["Body"].read()
                               for k in keys if k.endswith("manifest.json")))
    listed = {(o["kind"], o["name"]): o for o in manifest["extra"]["kubernetes"]["objects"]}
    assert listed[("Secret", "shop-db")]["sha256"] is None
    assert len(listed[("ConfigMap", "shop-config")]["sha256"]) == 64

    workload.delete_namespace(kube, namespace)
    restored = run(capsys, *restore_args(sandbox, s3_repo_url, "--decrypt-key",
                                         str(gpg_keys.private_key)))
    assert restored["created"] + restored["skipped"] == count and restored["failed"] == 0
    assert restored["created"] >= count - 1
    assert workload.snapshot(kube, namespace) == before
    assert workload.secret_data(kube, namespace) == secret_before
    workload.wait_ready_replicas(kube, namespace, "shop", 2)  # real controllers ran it

    other = f"{namespace[:50]}-copy"
    try:
        copied = run(capsys, *restore_args(sandbox, s3_repo_url, "--decrypt-key",
                                           str(gpg_keys.private_key), "--namespace-map",
                                           f"{namespace}={other}"))
        assert copied["created"] + copied["skipped"] == count and copied["failed"] == 0
        assert workload.snapshot(kube, other, source=namespace) == before
        binding = kube.get(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{other}"
                           "/rolebindings/shop-reader")
        assert binding["subjects"][0]["namespace"] == other
        workload.wait_ready_replicas(kube, other, "shop", 2)
    finally:
        kube.delete(f"/api/v1/namespaces/{other}")


def test_secrets_are_refused_without_encryption_before_anything_is_stored(
    sandbox: Sandbox, namespace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    repo = (tmp_path / "repo").as_uri()
    capsys.readouterr()
    assert main(backup_args(sandbox, repo, namespace, "--kind", "secrets")) == 2
    assert "Secrets are only stored encrypted" in capsys.readouterr().err
    assert not (tmp_path / "repo" / "base").exists() or not any(
        (tmp_path / "repo" / "base").iterdir())


def test_lists_are_paged(sandbox: Sandbox, namespace: str) -> None:
    kube = sandbox.kube()
    for n in range(7):
        kube.create(f"/api/v1/namespaces/{namespace}/configmaps",
                    {"metadata": {"name": f"cm-{n}"}, "data": {"n": str(n)}})
    with Client.connect(str(sandbox.kubeconfig)) as client:
        wanted = export.resolve_kinds(client, ["configmaps"])
        exported = export.collect(client, namespace, wanted, None, page_size=2)
    assert sorted(o["metadata"]["name"] for o in exported.objects) == [
        f"cm-{n}" for n in range(7)]
    assert exported.skipped == 1  # kube-root-ca.crt


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True).stdout


def test_git_copy_has_no_secret_and_commits_only_real_changes(
    sandbox: Sandbox, namespace: str, tmp_path: Path, gpg_keys: GpgKeys,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kube = sandbox.kube()
    workload.create(sandbox, namespace)
    bare = tmp_path / "config.git"
    subprocess.run(["git", "init", "--quiet", "--bare", str(bare)], check=True)
    repo = (tmp_path / "repo").as_uri()
    args = backup_args(sandbox, repo, namespace, *kind_args(), "--encrypt-to",
                       str(gpg_keys.public_key), "--git-url", bare.as_uri(),
                       "--git-branch", "config", "--git-path", "clusters/test")

    first = run(capsys, *args)
    assert first["git"]["commit"] is not None
    files = _git(bare, "ls-tree", "-r", "--name-only", "config").split()
    assert f"clusters/test/{namespace}/configmap/shop-config.yaml" in files
    assert f"clusters/test/{namespace}/widget.{workload.CRD_GROUP}/gizmo.yaml" in files
    assert not [f for f in files if "/secret/" in f or "shop-db" in f]
    every_object = subprocess.run(
        ["git", "-C", str(bare), "cat-file", "--batch-all-objects", "--batch"],
        capture_output=True, check=True).stdout
    assert workload.SECRET_VALUE.encode() not in every_object
    assert workload.secret_data(kube, namespace)["password"].encode() not in every_object
    assert b"kind: Secret" not in every_object

    second = run(capsys, *args)  # nothing changed: no commit
    assert second["git"]["commit"] is None
    assert _git(bare, "rev-list", "--count", "config").strip() == "1"

    kube.patch(f"/api/v1/namespaces/{namespace}/configmaps/feature-flags",
               {"data": {"checkout": "off"}})
    third = run(capsys, *args)
    assert third["git"]["commit"] is not None and third["git"]["changed_files"] == 1
    assert _git(bare, "rev-list", "--count", "config").strip() == "2"
    diff = _git(bare, "diff", "config~1", "config", "--unified=0")
    changed = [line for line in diff.splitlines()
               if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))]
    assert changed == ["-  checkout: 'on'", "+  checkout: 'off'"]


def untouched(kube: Kube, live: dict[str, Json]) -> None:
    """Nobody but the controllers wrote them: the same spec generation, the same fields."""
    for p, obj in live.items():
        now = kube.get(p)
        assert now["metadata"].get("generation") == obj["metadata"].get("generation")
        assert workload.comparable(now) == workload.comparable(obj)
        if obj["kind"] != "Deployment":  # the deployment controller writes its status
            assert now["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]


def test_replace_wins_over_live_changes_and_missing_leaves_them(
    sandbox: Sandbox, namespace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    kube = sandbox.kube()
    svc = f"/api/v1/namespaces/{namespace}/services/shop"
    cm = f"/api/v1/namespaces/{namespace}/configmaps/shop-config"
    kube.create(f"/api/v1/namespaces/{namespace}/configmaps",
                {"metadata": {"name": "shop-config"}, "data": {"LOG_LEVEL": "info"}})
    kube.create(f"/api/v1/namespaces/{namespace}/services", {
        "metadata": {"name": "shop"},
        "spec": {"selector": {"app": "shop"}, "ports": [{"port": 80}]}})
    kube.create(f"/apis/apps/v1/namespaces/{namespace}/deployments", {
        "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}}})
    repo = (tmp_path / "repo").as_uri()
    run(capsys, *backup_args(sandbox, repo, namespace, "--kind", "configmaps", "--kind",
                             "services", "--kind", "deployments"))
    old_ip = kube.get(svc)["spec"]["clusterIP"]

    # Someone recreates the Service (another clusterIP, another port), edits the
    # ConfigMap, and recreates the Deployment with another selector (immutable).
    kube.delete(svc)
    kube.create(f"/api/v1/namespaces/{namespace}/services", {
        "metadata": {"name": "shop"},
        "spec": {"selector": {"app": "other"}, "ports": [{"port": 8080}]}})
    new_ip = kube.get(svc)["spec"]["clusterIP"]
    assert new_ip != old_ip
    kube.patch(cm, {"data": {"LOG_LEVEL": "debug", "ADDED_LATER": "x"}})
    deployment = f"/apis/apps/v1/namespaces/{namespace}/deployments/web"
    kube.delete(deployment, {"propagationPolicy": "Background"})
    while True:
        try:
            kube.get(deployment)
        except ApiError:
            break
    kube.create(f"/apis/apps/v1/namespaces/{namespace}/deployments", {
        "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web", "v": "2"}}, "template": {
            "metadata": {"labels": {"app": "web", "v": "2"}},
            "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}}})
    live = {p: kube.get(p) for p in (svc, cm, deployment)}

    missing = run(capsys, *restore_args(sandbox, repo))
    assert (missing["skipped"], missing["created"], missing["updated"]) == (3, 0, 0)
    untouched(kube, live)

    dry = run(capsys, *restore_args(sandbox, repo, "--mode", "replace", "--dry-run"))
    assert dry["updated"] == 2 and dry["recreated"] == 1 and dry["failed"] == 0
    assert any(line.startswith(f"~ Service {namespace}/shop: spec.") for line in dry["changes"])
    untouched(kube, live)

    replaced = run(capsys, *restore_args(sandbox, repo, "--mode", "replace"))
    assert (replaced["updated"], replaced["recreated"], replaced["failed"]) == (2, 1, 0)
    service = kube.get(svc)["spec"]
    assert service["selector"] == {"app": "shop"} and service["ports"][0]["port"] == 80
    assert service["clusterIP"] == new_ip  # not the backup's: that one is cluster-specific
    assert kube.get(cm)["data"] == {"LOG_LEVEL": "info"}
    assert kube.get(deployment)["spec"]["selector"] == {"matchLabels": {"app": "web"}}
