"""`helm install` of the chart into the sandbox runs the real operator, with the chart's
RBAC and nothing else, and a BackupPolicy backs up through it.

The node agent runs the chart's Deployment pod as `tonebridge-dr operator` from the venv
(the sandbox's stand-in for the image), with the pod's ServiceAccount token, ca.crt and
namespace projected at /var/run/secrets/kubernetes.io/serviceaccount and
KUBERNETES_SERVICE_HOST/PORT naming the sandbox API server, exactly what the kubelet
gives a pod: the operator logs in in-cluster, so every request it makes is judged by the
chart's Role. The ServiceAccounts of the Jobs get no API access at all.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import ROOT
from tests.fixtures.operator import (
    apply_docs,
    backups_list,
    condition_is,
    events_for,
    free_port,
    get_json,
    get_policy,
    jobs_of,
    policy_doc,
    run_now,
    s3_secrets,
    sample_db,
    secret_doc,
    wait_for,
)
from tests.fixtures.postgres import PgServer
from tonebridge_dr.sandbox import layout, pki
from tonebridge_dr.sandbox.runtime import Sandbox

pytestmark = pytest.mark.timeout(300)

CHART = ROOT / "charts" / "tonebridge-dr"
BACKUP_SA = "tonebridge-dr-backup"
RESTORE_SA = "tonebridge-dr-restore"


def helm(sandbox: Sandbox, *args: str) -> str:
    done = subprocess.run(
        [str(layout.binary("helm")), f"--kubeconfig={sandbox.kubeconfig}", *args],
        capture_output=True, text=True, check=False, timeout=240,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout


def can_i(sandbox: Sandbox, user: str, *args: str) -> bool:
    """`kubectl auth can-i ... --as USER` (a SubjectAccessReview) -> yes / no."""
    done = sandbox.kubectl("auth", "can-i", *args, f"--as={user}", check=False)
    answer = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr
    assert answer in ("yes", "no"), done.stderr
    return answer == "yes"


def service_account(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


def install_peering_crd(sandbox: Sandbox) -> None:
    sandbox.kubectl("apply", "--server-side", "-f", str(CHART / "crds" / "kopf-peering.yaml"))
    sandbox.kubectl("wait", "--for=condition=Established", "crd/kopfpeerings.kopf.dev",
                    "--timeout=60s")


def whoami(sandbox: Sandbox, token: str) -> str:
    """The user the API server sees for `token` (a SelfSubjectReview, no kubeconfig)."""
    done = subprocess.run(
        [str(sandbox.kubectl_path), "auth", "whoami", "-o", "json", f"--server={sandbox.server}",
         f"--certificate-authority={pki.Pki(sandbox.state_dir / 'pki').ca_cert}",
         f"--token={token}"],
        capture_output=True, text=True, check=False, timeout=60,
        env={"PATH": os.environ.get("PATH", ""), "KUBECONFIG": os.devnull},
    )
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["status"]["userInfo"]["username"])


def process_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


@pytest.fixture
def chart_release(sandbox: Sandbox, namespace: str) -> Iterator[dict[str, Any]]:
    """The chart installed in `namespace`, watching only it, on free host ports (pods share
    the host's network in the sandbox); policies deleted while the operator still runs,
    then uninstalled."""
    install_peering_crd(sandbox)
    release = f"tbdr-{uuid.uuid4().hex[:5]}"
    metrics_port = free_port()
    out = helm(
        sandbox, "install", release, str(CHART), "--namespace", namespace, "--skip-crds",
        "--set", f"watchNamespaces={{{namespace}}}",
        "--set", f"metrics.port={metrics_port}",
        "--set", f"liveness.port={free_port()}",
        "--set",
        "serviceAccountAnnotations.backup.eks\\.amazonaws\\.com/role-arn=arn:aws:iam::1:role/b",
        "--wait", "--timeout=120s",
    )
    try:
        yield {"name": release, "notes": out, "metrics_port": metrics_port}
    finally:
        sandbox.kubectl("delete", "-n", namespace, "backuppolicies", "--all", "--wait=true",
                        "--timeout=60s", check=False)
        helm(sandbox, "uninstall", release, "--namespace", namespace, "--wait",
             "--timeout=60s")


def operator_pod(sandbox: Sandbox, namespace: str, release: str) -> dict[str, Any]:
    pods = get_json(sandbox, namespace, "pods", "-l",
                    f"app.kubernetes.io/instance={release}")["items"]
    running = [p for p in pods if p["status"].get("phase") == "Running"
               and not p["metadata"].get("deletionTimestamp")]
    assert len(running) == 1, [p["metadata"]["name"] for p in pods]
    return dict(running[0])


def test_helm_install_runs_the_operator_with_the_charts_rbac_and_it_backs_up(
    sandbox: Sandbox,
    namespace: str,
    chart_release: dict[str, Any],
    pg: PgServer,
    s3_repo_url: str,
    moto_server: str,
) -> None:
    release = chart_release["name"]
    operator_sa = f"{release}-operator"
    assert f"It watches only: {namespace}" in chart_release["notes"]

    # The pod runs the real operator, in-cluster, as the chart's ServiceAccount.
    pod = operator_pod(sandbox, namespace, release)
    pod_name = pod["metadata"]["name"]
    pid = int(pod["status"]["containerStatuses"][0]["containerID"].split("://")[1])
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[-3].endswith(b"/tonebridge-dr") and cmdline[-2] == b"operator", cmdline
    environ = process_environ(pid)
    assert "KUBECONFIG" not in environ
    assert environ["KUBERNETES_SERVICE_HOST"] == "127.0.0.1"
    assert environ["KUBERNETES_SERVICE_PORT"] == sandbox.server.rsplit(":", 1)[1]
    assert environ["TONEBRIDGE_DR_METRICS_ADDRESS"] == "0.0.0.0"
    volumes = sandbox.pod_dir(namespace, pod_name) / "volumes"
    (token_dir,) = [d for d in volumes.iterdir() if d.name.startswith("kube-api-access-")]
    assert (token_dir / "namespace").read_text() == namespace
    assert "BEGIN CERTIFICATE" in (token_dir / "ca.crt").read_text()
    token = (token_dir / "token").read_text()
    assert whoami(sandbox, token) == service_account(namespace, operator_sa)

    # A backup through it: reconcile, CronJob, run-now Job, status, Events, metrics.
    _, dsn = sample_db(pg)
    apply_docs(
        sandbox, namespace,
        secret_doc("db-dsn", {"dsn": dsn}),
        *s3_secrets(f"writer-{uuid.uuid4().hex}", f"reader-{uuid.uuid4().hex}"),
        policy_doc("pg", repo_url=s3_repo_url, endpoint=moto_server, rpo="1h"),
    )

    def log() -> str:
        return "operator log:\n" + sandbox.pod_log(namespace, pod_name)[-4000:]

    wait_for(lambda: condition_is(sandbox, namespace, "pg", "Ready", "True"), 90, message=log)
    cronjobs = get_json(sandbox, namespace, "cronjobs")["items"]
    assert [c["metadata"]["name"] for c in cronjobs] == ["pg-nightly"]
    template = cronjobs[0]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert template["serviceAccountName"] == BACKUP_SA
    run_now(sandbox, namespace, "pg", "chart")
    policy = wait_for(
        lambda: (p := get_policy(sandbox, namespace, "pg")).get("status", {}).get(
            "runNow", {}).get("phase") in ("Succeeded", "Failed") and p,
        180, message=log,
    )
    assert policy["status"]["runNow"]["phase"] == "Succeeded", policy["status"]
    assert condition_is(sandbox, namespace, "pg", "LastBackupSucceeded", "True")
    (job,) = jobs_of(sandbox, namespace, "pg")
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == BACKUP_SA
    listed = backups_list(f"{s3_repo_url}/pg")
    assert [b["id"] for b in listed] == [policy["status"]["runNow"]["backupId"]]
    assert events_for(sandbox, namespace, "pg"), "the operator wrote no Event on the policy"
    # The monitor read the catalog with the reader Secret (the operator may get Secrets).
    wait_for(lambda: condition_is(sandbox, namespace, "pg", "RPOMet", "True"), 90, message=log)
    url = f"http://127.0.0.1:{chart_release['metrics_port']}/metrics"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as response:
        metrics = response.read().decode()
    assert f'tonebridge_dr_backups{{namespace="{namespace}",policy="pg"}} 1.0' in metrics
    # Nothing the operator did was refused: the chart's Role is sufficient.
    text = sandbox.pod_log(namespace, pod_name)
    assert "Forbidden" not in text and " 403" not in text, log()

    # What the chart's RBAC grants, and what it does not.
    operator = service_account(namespace, operator_sa)
    backup = service_account(namespace, BACKUP_SA)
    restore = service_account(namespace, RESTORE_SA)
    ns = ("-n", namespace)
    for verb_resource in (
        ("get", "secrets"), ("create", "jobs.batch"), ("create", "cronjobs.batch"),
        ("delete", "jobs.batch"), ("patch", "backuppolicies.dr.tonebridge.io"),
        ("patch", "backuppolicies.dr.tonebridge.io", "--subresource=status"),
        ("patch", "restoretests.dr.tonebridge.io", "--subresource=status"),
        ("create", "events"), ("create", "persistentvolumeclaims"),
        ("patch", "kopfpeerings.kopf.dev"),
    ):
        assert can_i(sandbox, operator, *verb_resource, *ns), verb_resource
    # Least privilege: no Secret listing or writing, nothing outside the watched namespace.
    assert not can_i(sandbox, operator, "list", "secrets", *ns)
    assert not can_i(sandbox, operator, "update", "secrets", *ns)
    assert not can_i(sandbox, operator, "get", "secrets", "-n", "default")
    assert not can_i(sandbox, operator, "create", "jobs.batch", "-n", "default")
    assert not can_i(sandbox, operator, "list", "namespaces")
    # The Jobs' identities: no Secrets at all; the restore identity cannot read or write the
    # backup repository's write credentials.
    for verb in ("get", "list", "watch"):
        assert not can_i(sandbox, backup, verb, "secrets", *ns)
        assert not can_i(sandbox, restore, verb, "secrets", *ns)
    for verb in ("get", "update", "patch", "delete"):
        assert not can_i(sandbox, restore, verb, "secret/repo-writer", *ns)
    assert not can_i(sandbox, restore, "create", "secrets", *ns)
    accounts = {a["metadata"]["name"]: a
                for a in get_json(sandbox, namespace, "serviceaccounts")["items"]}
    for name in (BACKUP_SA, RESTORE_SA):
        assert accounts[name]["automountServiceAccountToken"] is False
    annotations = accounts[BACKUP_SA]["metadata"]["annotations"]
    assert annotations["eks.amazonaws.com/role-arn"] == "arn:aws:iam::1:role/b"
    assert "eks.amazonaws.com/role-arn" not in (
        accounts[RESTORE_SA]["metadata"].get("annotations") or {})
    kinds = {(o["kind"], o["metadata"].get("namespace")) for o in get_json(
        sandbox, namespace, "roles,rolebindings")["items"]}
    assert kinds == {("Role", namespace), ("RoleBinding", namespace)}
    assert sandbox.kubectl("get", "clusterrole", f"{release}-operator",
                           check=False).returncode != 0


def test_cluster_wide_install_binds_a_cluster_role(sandbox: Sandbox, namespace: str) -> None:
    """The default values: a ClusterRole for every namespace (no operator pod here: it would
    reconcile the other tests' policies)."""
    install_peering_crd(sandbox)
    release = f"tbdr-{uuid.uuid4().hex[:5]}"
    out = helm(sandbox, "install", release, str(CHART), "--namespace", namespace,
               "--skip-crds", "--set", "operator.replicas=0")
    try:
        assert "It watches every namespace" in out
        operator = service_account(namespace, f"{release}-operator")
        assert can_i(sandbox, operator, "get", "secrets", "-n", "default")
        assert can_i(sandbox, operator, "create", "cronjobs.batch", "-n", "kube-system")
        assert can_i(sandbox, operator, "list", "customresourcedefinitions.apiextensions.k8s.io")
        assert can_i(sandbox, operator, "patch", "clusterkopfpeerings.kopf.dev")
        assert not can_i(sandbox, operator, "list", "secrets", "-n", "default")
        assert not can_i(sandbox, operator, "delete", "secrets", "-n", "default")
        backup = service_account(namespace, BACKUP_SA)
        assert not can_i(sandbox, backup, "get", "secrets", "-n", namespace)
    finally:
        helm(sandbox, "uninstall", release, "--namespace", namespace, "--wait",
             "--timeout=60s")
