"""Kubernetes configuration backups end to end (issue 15): the operator as a real process,
the sandbox control plane (Job, Deployment, ReplicaSet controllers; the node agent runs the
runner with the pod's ServiceAccount token), the chart's RBAC, moto S3, real gpg.

- a namespace with ConfigMaps, Secrets, a Deployment, a Service, an Ingress, a CronJob,
  RBAC and a custom resource, backed up by a BackupPolicy run-now (`kubectl get bp` shows
  the object count), deleted, and brought back by RestoreRequests into the same and into
  another namespace: every object equal with server-set fields ignored, the Deployment's
  pods running again;
- a backup Job under the chart's RBAC without secrets in its kinds gets Forbidden for
  Secrets; a policy that would export Secrets without encryption is Ready=False with a
  reason naming the fix.
"""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fixtures import ROOT
from tests.fixtures.gpg import GpgKeys
from tests.fixtures.operator import (
    apply_docs,
    condition,
    condition_is,
    get_columns,
    get_json,
    get_policy,
    run_now,
    s3_secrets,
    secret_doc,
    wait_for,
)
from tests.runner.kubernetes import workload
from tonebridge_dr.sandbox import layout
from tonebridge_dr.sandbox.runtime import Sandbox

pytestmark = pytest.mark.timeout(420)
CHART = ROOT / "charts" / "tonebridge-dr"
BUILTIN_KINDS = [k for k in workload.KINDS if "/" not in k]
#: Jobs run as the chart's ServiceAccounts (the fixture's default is `default`).
CHART_ACCOUNTS = ("--backup-service-account", "tonebridge-dr-backup",
                  "--restore-service-account", "tonebridge-dr-restore")


@contextlib.contextmanager
def chart_rbac(sandbox: Sandbox, namespace: str, targets: list[str], kinds: list[str],
               *extra: str) -> Iterator[str]:
    """The chart's Job ServiceAccounts and config-backup RBAC, applied as `helm install`
    would (a release of its own: its ClusterRoles are removed afterwards)."""
    release = f"cfg-{uuid.uuid4().hex[:6]}"
    args = [str(layout.binary("helm")), "template", release, str(CHART), "--namespace",
            namespace, "--set", f"jobNamespaces={{{namespace}}}",
            "--set", f"configBackup.namespaces={{{','.join(targets)}}}",
            "--set", f"configBackup.kinds={{{','.join(kinds)}}}", *extra,
            "--show-only", "templates/jobs-serviceaccounts.yaml",
            "--show-only", "templates/config-backup-rbac.yaml"]
    rendered = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    sandbox.kubectl("apply", "-f", "-", input=rendered)
    try:
        yield rendered
    finally:
        sandbox.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-",
                        input=rendered, check=False)


def config_policy(name: str, *, repo_url: str, endpoint: str, namespaces: list[str],
                  kinds: list[str] | None, encrypted: bool) -> dict[str, Any]:
    target: dict[str, Any] = {"namespaces": namespaces}
    if kinds is not None:
        target["kinds"] = kinds
    spec: dict[str, Any] = {
        "target": {"kubernetes": target},
        "schedules": [{"name": "daily", "cron": "0 1 * * *"}],
        "repository": {"url": repo_url, "endpoint": endpoint,
                       "credentialsSecretRef": {"name": "repo-writer"},
                       "restoreCredentialsSecretRef": {"name": "repo-reader"}},
    }
    if encrypted:
        spec["encryption"] = {
            "publicKeySecretRef": {"name": "gpg", "key": "public.asc"},
            "privateKeySecretRef": {"name": "gpg-private", "key": "private.asc"},
        }
    return {"apiVersion": "dr.tonebridge.io/v1alpha1", "kind": "BackupPolicy",
            "metadata": {"name": name}, "spec": spec}


def restore_doc(name: str, policy: str, target: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "dr.tonebridge.io/v1alpha1", "kind": "RestoreRequest",
            "metadata": {"name": name},
            "spec": {"source": {"policyRef": {"name": policy}}, "latest": True,
                     "method": "export", "target": {"kubernetes": target}}}


def run_now_finished(sandbox: Sandbox, namespace: str, policy: str, token: str,
                     op: Any) -> dict[str, Any]:
    run_now(sandbox, namespace, policy, token)

    def done() -> dict[str, Any] | None:
        body = get_policy(sandbox, namespace, policy)
        state = (body.get("status") or {}).get("runNow") or {}
        ok = state.get("token") == token and state.get("phase") in ("Succeeded", "Failed")
        return body if ok else None

    return wait_for(done, 180, message=lambda: op.log_tail())


def restored(sandbox: Sandbox, namespace: str, name: str, op: Any) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body: dict[str, Any] = get_json(sandbox, namespace, "restorerequest", name)
        phase = (body.get("status") or {}).get("phase")
        return body if phase in ("Succeeded", "Failed") else None

    body = wait_for(done, 180, message=lambda: f"RestoreRequest {name}; {op.log_tail()}")
    assert body["status"]["phase"] == "Succeeded", (body["status"], op.log_tail())
    return body


def secrets_docs(gpg_keys: GpgKeys) -> list[dict[str, Any]]:
    return [
        *s3_secrets(f"w-{uuid.uuid4().hex}", f"r-{uuid.uuid4().hex}"),
        secret_doc("gpg", {"public.asc": gpg_keys.public_key.read_text()}),
        secret_doc("gpg-private", {"private.asc": gpg_keys.private_key.read_text()}),
    ]


def test_a_namespace_backed_up_by_a_policy_comes_back_through_restore_requests(
    sandbox: Sandbox, namespace: str, s3_repo_url: str, moto_server: str, gpg_keys: GpgKeys,
    operator_factory: Any,
) -> None:
    kube = sandbox.kube()
    app, copy = f"{namespace[:50]}-app", f"{namespace[:50]}-copy"
    for name in (app, copy):
        kube.create("/api/v1/namespaces", {"metadata": {"name": name}})
    kinds = [*BUILTIN_KINDS]
    crs = ["--set", f"configBackup.customResources[0].group={workload.CRD_GROUP}",
           "--set", "configBackup.customResources[0].resource=widgets"]
    try:
        with chart_rbac(sandbox, namespace, [app, copy], kinds, *crs) as rendered:
            workload.create(sandbox, app)
            workload.wait_ready_replicas(kube, app, "shop", 2)
            before = workload.snapshot(kube, app)
            secret_before = workload.secret_data(kube, app)
            apply_docs(sandbox, namespace, *secrets_docs(gpg_keys), config_policy(
                "config", repo_url=s3_repo_url, endpoint=moto_server, namespaces=[app],
                kinds=list(workload.KINDS), encrypted=True))
            op = operator_factory(namespace, *CHART_ACCOUNTS)
            wait_for(lambda: condition_is(sandbox, namespace, "config", "Ready", "True"), 60,
                     message=lambda: op.log_tail())
            policy = run_now_finished(sandbox, namespace, "config", "first", op)
            assert policy["status"]["runNow"]["phase"] == "Succeeded", policy["status"]
            # the test's objects, the `default` ServiceAccount and the chart's two
            # RoleBindings in the namespace (they are configuration of it too)
            count = len(workload.objects(app)) + 3
            wait_for(lambda: get_columns(sandbox, namespace, "bp", "config")["OBJECTS"]
                     == str(count), 60, message=lambda: str(get_policy(
                         sandbox, namespace, "config").get("status")))

            # Disaster: the namespace is gone. It is recreated with the chart's RBAC in it
            # (`helm upgrade` after `kubectl create ns`), then restored from the bucket.
            workload.delete_namespace(kube, app)
            kube.create("/api/v1/namespaces", {"metadata": {"name": app}})
            sandbox.kubectl("apply", "-f", "-", input=rendered)

            apply_docs(sandbox, namespace, restore_doc("back", "config", {}))
            body = restored(sandbox, namespace, "back", op)
            summary = body["status"]["restored"]
            assert summary["objectsCreated"] + summary.get("objectsSkipped", 0) == count
            assert "objectsFailed" not in summary or summary["objectsFailed"] == 0
            assert workload.snapshot(kube, app) == before
            assert workload.secret_data(kube, app) == secret_before
            workload.wait_ready_replicas(kube, app, "shop", 2)

            apply_docs(sandbox, namespace, restore_doc("copy", "config", {
                "namespaceMap": [{"source": app, "target": copy}]}))
            restored(sandbox, namespace, "copy", op)
            assert workload.snapshot(kube, copy, source=app) == before
            workload.wait_ready_replicas(kube, copy, "shop", 2)
    finally:
        for name in (app, copy):
            with contextlib.suppress(Exception):
                kube.delete(f"/api/v1/namespaces/{name}")


def test_rbac_and_encryption_keep_secrets_out_unless_asked(
    sandbox: Sandbox, namespace: str, s3_repo_url: str, moto_server: str, gpg_keys: GpgKeys,
    operator_factory: Any,
) -> None:
    kube = sandbox.kube()
    kube.create(f"/api/v1/namespaces/{namespace}/secrets",
                {"metadata": {"name": "app-db"}, "stringData": {"password": "hidden-value"}})
    kube.create(f"/api/v1/namespaces/{namespace}/configmaps",
                {"metadata": {"name": "app"}, "data": {"k": "v"}})
    with chart_rbac(sandbox, namespace, [namespace], ["configmaps"]):  # no secrets
        apply_docs(
            sandbox, namespace, *secrets_docs(gpg_keys),
            config_policy("with-secrets", repo_url=f"{s3_repo_url}/a", endpoint=moto_server,
                          namespaces=[namespace], kinds=["configmaps", "secrets"],
                          encrypted=True),
            config_policy("plain", repo_url=f"{s3_repo_url}/b", endpoint=moto_server,
                          namespaces=[namespace], kinds=None, encrypted=False),
            config_policy("configs", repo_url=f"{s3_repo_url}/c", endpoint=moto_server,
                          namespaces=[namespace], kinds=["configmaps"], encrypted=False),
        )
        op = operator_factory(namespace, *CHART_ACCOUNTS)

        # Default kinds include secrets: without encryption the operator refuses, naming
        # the fix, and creates no CronJob.
        policy = wait_for(lambda: condition_is(sandbox, namespace, "plain", "Ready", "False",
                                               "SecretsNeedEncryption"), 60,
                          message=lambda: op.log_tail())
        message = condition(policy, "Ready")["message"]  # type: ignore[index]
        assert "spec.encryption" in message and "kinds" in message
        cronjobs = get_json(sandbox, namespace, "cronjobs")["items"]
        assert [c["metadata"]["name"] for c in cronjobs if "plain" in c["metadata"]["name"]] == []

        # The chart grants configmaps only: listing Secrets is Forbidden by the API server.
        wait_for(lambda: condition_is(sandbox, namespace, "with-secrets", "Ready", "True"), 60,
                 message=lambda: op.log_tail())
        failed = run_now_finished(sandbox, namespace, "with-secrets", "t1", op)
        state = failed["status"]["runNow"]
        assert state["phase"] == "Failed", state
        assert "forbidden" in state["message"].lower() and "secrets" in state["message"]
        assert "hidden-value" not in str(failed)

        ok = run_now_finished(sandbox, namespace, "configs", "t1", op)
        assert ok["status"]["runNow"]["phase"] == "Succeeded", ok["status"]
