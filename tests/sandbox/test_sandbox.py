"""The sandbox against its real components: kube-apiserver, the Job / CronJob / GC
controllers of kube-controller-manager, and the node agent running pods as processes."""

from __future__ import annotations

import json
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

import tonebridge_dr
from tonebridge_dr.sandbox import crds, layout, procs
from tonebridge_dr.sandbox.kube import ApiError, Kube
from tonebridge_dr.sandbox.runtime import Sandbox

Json = dict[str, Any]
T = TypeVar("T")

PYTHON = "python"  # resolved by the node agent on its PATH: the venv's python comes first


def wait_until(check: Callable[[], T | None], timeout: float = 60, what: str = "condition") -> T:
    """Poll `check` until it returns something truthy (readiness timeout, not an assertion
    on timing)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def container(command: list[str], **extra: Any) -> Json:
    return {"name": "main", "image": "tonebridge-dr:dev", "command": command, **extra}


def job_body(name: str, spec: Json, backoff_limit: int = 0, **job_spec: Any) -> Json:
    pod_spec = {"restartPolicy": "Never", **spec}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": backoff_limit, "template": {"spec": pod_spec}, **job_spec},
    }


def create_job(kube: Kube, namespace: str, body: Json) -> Json:
    return kube.create(f"/apis/batch/v1/namespaces/{namespace}/jobs", body)


def job_condition(kube: Kube, namespace: str, name: str) -> Json | None:
    """The Complete or Failed condition of a Job, once it has one."""
    job = kube.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}")
    condition: Json
    for condition in job.get("status", {}).get("conditions") or []:
        if condition["type"] in ("Complete", "Failed") and condition["status"] == "True":
            return condition
    return None


def wait_job(kube: Kube, namespace: str, name: str, timeout: float = 90) -> Json:
    return wait_until(lambda: job_condition(kube, namespace, name), timeout, f"job {name}")


def job_pods(kube: Kube, namespace: str, name: str) -> list[Json]:
    pods = kube.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector=f"job-name={name}")
    return sorted(pods["items"], key=lambda p: p["metadata"]["creationTimestamp"])


def terminated(pod: Json) -> Json:
    state: Json = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    return state


def get_pod(kube: Kube, namespace: str, name: str) -> Json | None:
    try:
        return kube.get(f"/api/v1/namespaces/{namespace}/pods/{name}")
    except ApiError as error:
        if error.status == 404:
            return None
        raise


def running_pid(kube: Kube, namespace: str, name: str) -> int | None:
    pod = get_pod(kube, namespace, name)
    for status in (pod or {}).get("status", {}).get("containerStatuses") or []:
        if "running" in status.get("state", {}):
            return int(status["containerID"].removeprefix("sandbox://"))
    return None


@pytest.fixture
def kube(sandbox: Sandbox) -> Kube:
    return sandbox.kube()


def test_node_is_ready_and_controllers_run(sandbox: Sandbox) -> None:
    nodes = json.loads(sandbox.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    assert [n["metadata"]["name"] for n in nodes] == ["sandbox-node"]
    ready = {c["type"]: c["status"] for c in nodes[0]["status"]["conditions"]}["Ready"]
    assert ready == "True"
    assert nodes[0]["status"]["allocatable"]["pods"]
    assert not nodes[0]["spec"].get("taints")
    version = json.loads(sandbox.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == layout.K8S_VERSION


def test_repository_crds_are_established(sandbox: Sandbox) -> None:
    crd_dir = layout.default_crd_dir()
    assert crd_dir is not None
    expected = sorted(d["metadata"]["name"] for d in crds.load([crd_dir]))  # may be none yet
    listed = json.loads(sandbox.kubectl("get", "crd", "-o", "json").stdout)["items"]
    established = sorted(
        c["metadata"]["name"]
        for c in listed
        if any(
            k["type"] == "Established" and k["status"] == "True" for k in c["status"]["conditions"]
        )
    )
    assert set(expected) <= set(established)


def test_install_crds_from_an_explicit_path(sandbox: Sandbox, kube: Kube, tmp_path: Path) -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.sandbox-test.tonebridge.io"},
        "spec": {
            "group": "sandbox-test.tonebridge.io",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {"size": {"type": "integer", "minimum": 1}},
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    path = tmp_path / "widget.yaml"
    path.write_text(yaml.safe_dump_all([crd, {"apiVersion": "v1", "kind": "ConfigMap"}]))
    assert crds.install(kube, [path]) == ["widgets.sandbox-test.tonebridge.io"]
    assert crds.install(kube, [tmp_path]) == ["widgets.sandbox-test.tonebridge.io"]  # idempotent
    bad = sandbox.kubectl(
        "apply",
        "-f",
        "-",
        check=False,
        input=yaml.safe_dump(
            {
                "apiVersion": "sandbox-test.tonebridge.io/v1",
                "kind": "Widget",
                "metadata": {"name": "w", "namespace": "default"},
                "spec": {"size": 0},
            }
        ),
    )
    assert bad.returncode != 0
    assert "spec.size" in bad.stderr


def test_job_runs_the_local_tonebridge_dr_cli(sandbox: Sandbox, kube: Kube, namespace: str) -> None:
    create_job(
        kube,
        namespace,
        job_body("cli", {"containers": [container(["tonebridge-dr", "--version"])]}),
    )
    condition = wait_job(kube, namespace, "cli")
    assert condition["type"] == "Complete"
    [pod] = job_pods(kube, namespace, "cli")
    assert pod["spec"]["nodeName"] == "sandbox-node"
    assert terminated(pod)["exitCode"] == 0
    output = sandbox.pod_log(namespace, pod["metadata"]["name"])
    assert output.strip() == f"tonebridge-dr {tonebridge_dr.__version__}"


def test_pod_without_command_runs_the_operator_image_entrypoint(
    sandbox: Sandbox, kube: Kube, namespace: str
) -> None:
    spec = {"name": "main", "image": "ghcr.io/tonebridge/tonebridge-dr:0.1", "args": ["--version"]}
    create_job(kube, namespace, job_body("entry", {"containers": [spec]}))
    assert wait_job(kube, namespace, "entry")["type"] == "Complete"
    [pod] = job_pods(kube, namespace, "entry")
    assert sandbox.pod_log(namespace, pod["metadata"]["name"]).startswith("tonebridge-dr ")


def test_job_with_python_completes_and_kubectl_logs_work(
    sandbox: Sandbox, kube: Kube, namespace: str
) -> None:
    script = "import sys; print('hello from', sys.prefix); print('to stderr', file=sys.stderr)"
    create_job(
        kube, namespace, job_body("hello", {"containers": [container([PYTHON, "-c", script])]})
    )
    assert wait_job(kube, namespace, "hello")["type"] == "Complete"
    logs = sandbox.kubectl("logs", "-n", namespace, "job/hello").stdout
    assert f"hello from {sys.prefix}" in logs
    assert "to stderr" in logs
    [pod] = job_pods(kube, namespace, "hello")
    assert pod["status"]["phase"] == "Succeeded"
    directory = pod["metadata"]["annotations"]["sandbox.dr.tonebridge.io/log-dir"]
    assert (Path(directory) / "main.log").read_text() == logs


def test_kubectl_logs_follow_streams_until_the_container_ends(
    sandbox: Sandbox, kube: Kube, namespace: str
) -> None:
    kube.create(
        f"/api/v1/namespaces/{namespace}/pods",
        {
            "metadata": {"name": "talker"},
            "spec": {
                "restartPolicy": "Never",
                "containers": [container(["sh", "-c", "echo one; sleep 1; echo two"])],
            },
        },
    )
    wait_until(lambda: running_pid(kube, namespace, "talker"), what="running pod")
    followed = sandbox.kubectl("logs", "-f", "-n", namespace, "talker")
    assert followed.stdout == "one\ntwo\n"
    assert sandbox.kubectl("logs", "--tail=1", "-n", namespace, "talker").stdout == "two\n"


def test_failing_command_fails_the_job_after_its_backoff_limit(kube: Kube, namespace: str) -> None:
    create_job(
        kube,
        namespace,
        job_body("fails", {"containers": [container(["sh", "-c", "exit 3"])]}, backoff_limit=1),
    )
    condition = wait_job(kube, namespace, "fails", timeout=120)
    assert (condition["type"], condition["reason"]) == ("Failed", "BackoffLimitExceeded")
    pods = job_pods(kube, namespace, "fails")
    assert len(pods) == 2  # the first try and one retry
    assert [p["status"]["phase"] for p in pods] == ["Failed", "Failed"]
    assert [terminated(p)["exitCode"] for p in pods] == [3, 3]
    assert terminated(pods[0])["reason"] == "Error"


def test_termination_message_is_read_back(sandbox: Sandbox, kube: Kube, namespace: str) -> None:
    script = textwrap.dedent(
        """
        import json
        with open("/dev/termination-log", "w") as f:
            json.dump({"backup": "20260101T000000Z", "bytes": 42}, f)
        """
    )
    create_job(
        kube, namespace, job_body("msg", {"containers": [container([PYTHON, "-c", script])]})
    )
    assert wait_job(kube, namespace, "msg")["type"] == "Complete"
    [pod] = job_pods(kube, namespace, "msg")
    message = terminated(pod)["message"]
    assert json.loads(message) == {"backup": "20260101T000000Z", "bytes": 42}
    # The container wrote its own file, bind-mounted over /dev/termination-log.
    own_file = sandbox.pod_dir(namespace, pod["metadata"]["name"]) / "main.termination-log"
    assert own_file.read_text() == message


def test_termination_message_falls_back_to_logs_on_error(kube: Kube, namespace: str) -> None:
    spec = container(
        ["sh", "-c", "echo line one; echo 'fatal: it broke' >&2; exit 2"],
        terminationMessagePolicy="FallbackToLogsOnError",
    )
    create_job(kube, namespace, job_body("fallback", {"containers": [spec]}))
    assert wait_job(kube, namespace, "fallback")["type"] == "Failed"
    [pod] = job_pods(kube, namespace, "fallback")
    assert terminated(pod)["exitCode"] == 2
    assert terminated(pod)["message"] == "line one\nfatal: it broke\n"


def test_env_from_secrets_config_maps_and_fields(kube: Kube, namespace: str) -> None:
    kube.create(
        f"/api/v1/namespaces/{namespace}/secrets",
        {"metadata": {"name": "creds"}, "stringData": {"password": "s3cr3t", "user": "backup"}},
    )
    kube.create(
        f"/api/v1/namespaces/{namespace}/configmaps",
        {"metadata": {"name": "settings"}, "data": {"bucket": "dr-backups", "region": "eu"}},
    )
    script = textwrap.dedent(
        """
        import json, os
        json.dump(dict(os.environ), open("/dev/termination-log", "w"))
        """
    )
    env = [
        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
        {"name": "BUCKET", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "bucket"}}},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "URL", "value": "s3://$(BUCKET)/$(POD)/$$(NOT)"},
        {
            "name": "MISSING",
            "valueFrom": {"secretKeyRef": {"name": "nope", "key": "x", "optional": True}},
        },
    ]
    env_from = [
        {"secretRef": {"name": "creds"}, "prefix": "DB_"},
        {"configMapRef": {"name": "settings"}},
        {"configMapRef": {"name": "absent", "optional": True}},
    ]
    spec = container([PYTHON, "-c", script], env=env, envFrom=env_from)
    create_job(kube, namespace, job_body("env", {"containers": [spec]}))
    assert wait_job(kube, namespace, "env")["type"] == "Complete"
    [pod] = job_pods(kube, namespace, "env")
    seen = json.loads(terminated(pod)["message"])
    name = pod["metadata"]["name"]
    assert seen["PASSWORD"] == "s3cr3t"
    assert seen["BUCKET"] == "dr-backups"
    assert (seen["POD"], seen["NS"]) == (name, namespace)
    assert seen["URL"] == f"s3://dr-backups/{name}/$(NOT)"
    assert (seen["DB_password"], seen["DB_user"]) == ("s3cr3t", "backup")
    assert (seen["bucket"], seen["region"]) == ("dr-backups", "eu")
    assert "MISSING" not in seen
    assert seen["PATH"].split(":")[0] == str(Path(sys.prefix) / "bin")
    assert Path(seen["HOME"]).is_dir()
    assert seen["LANG"] == "C.UTF-8"
    assert "PYTEST_CURRENT_TEST" not in seen  # nothing leaks from the host environment


def test_missing_secret_waits_until_it_exists(kube: Kube, namespace: str) -> None:
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "late", "key": "token"}}}]
    spec = container(["sh", "-c", 'printf %s "$TOKEN" > /dev/termination-log'], env=env)
    create_job(kube, namespace, job_body("late", {"containers": [spec]}))

    def waiting_reason() -> str | None:
        pods = job_pods(kube, namespace, "late")
        statuses = pods[0].get("status", {}).get("containerStatuses") if pods else None
        reason: str | None = (statuses or [{}])[0].get("state", {}).get("waiting", {}).get("reason")
        return reason

    wait_until(lambda: waiting_reason() == "CreateContainerConfigError", what="config error")
    kube.create(
        f"/api/v1/namespaces/{namespace}/secrets",
        {"metadata": {"name": "late"}, "stringData": {"token": "arrived"}},
    )
    assert wait_job(kube, namespace, "late")["type"] == "Complete"
    assert terminated(job_pods(kube, namespace, "late")[0])["message"] == "arrived"


def test_service_account_token_gives_in_cluster_access(kube: Kube, namespace: str) -> None:
    script = textwrap.dedent(
        """
        import kubernetes
        kubernetes.config.load_incluster_config()
        version = kubernetes.client.VersionApi().get_code().git_version
        namespace = open("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read()
        open("/dev/termination-log", "w").write(version + " " + namespace)
        """
    )
    create_job(
        kube, namespace, job_body("incluster", {"containers": [container([PYTHON, "-c", script])]})
    )
    assert wait_job(kube, namespace, "incluster")["type"] == "Complete"
    [pod] = job_pods(kube, namespace, "incluster")
    assert terminated(pod)["message"] == f"{layout.K8S_VERSION} {namespace}"


def test_init_containers_run_first_and_share_volumes(kube: Kube, namespace: str) -> None:
    mounts = [{"name": "scratch", "mountPath": "/mnt/tonebridge-dr-scratch-test"}]
    spec = {
        "volumes": [{"name": "scratch", "emptyDir": {}}],
        "initContainers": [
            {
                "name": "prepare",
                "image": "tonebridge-dr:dev",
                "command": [
                    "sh",
                    "-c",
                    "echo prepared > /mnt/tonebridge-dr-scratch-test/f",
                ],
                "volumeMounts": mounts,
            }
        ],
        "containers": [
            container(
                [
                    "sh",
                    "-c",
                    "cat /mnt/tonebridge-dr-scratch-test/f > /dev/termination-log",
                ],
                volumeMounts=mounts,
            )
        ],
    }
    create_job(kube, namespace, job_body("init", spec))
    assert wait_job(kube, namespace, "init")["type"] == "Complete"
    [pod] = job_pods(kube, namespace, "init")
    assert pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    assert terminated(pod)["message"] == "prepared\n"
    # The volume was only visible inside the containers' mount namespaces.
    assert not any(Path("/mnt/tonebridge-dr-scratch-test").iterdir())


def test_run_as_user_drops_root(kube: Kube, namespace: str) -> None:
    script = 'echo "$(id -u):$(id -g)" > /dev/termination-log; touch "$HOME/written"'
    spec = {
        "securityContext": {"runAsUser": 65534, "runAsGroup": 65534},
        "containers": [container(["sh", "-c", script])],
    }
    create_job(kube, namespace, job_body("nobody", spec))
    assert wait_job(kube, namespace, "nobody")["type"] == "Complete"
    assert terminated(job_pods(kube, namespace, "nobody")[0])["message"] == "65534:65534\n"


def test_on_failure_restarts_the_container_in_place(kube: Kube, namespace: str) -> None:
    script = 'if [ -e "$HOME/tried" ]; then exit 0; fi; touch "$HOME/tried"; exit 1'
    body = job_body("retry", {"containers": [container(["sh", "-c", script])]}, backoff_limit=3)
    body["spec"]["template"]["spec"]["restartPolicy"] = "OnFailure"
    create_job(kube, namespace, body)
    assert wait_job(kube, namespace, "retry")["type"] == "Complete"
    [pod] = job_pods(kube, namespace, "retry")
    status = pod["status"]["containerStatuses"][0]
    assert status["restartCount"] == 1
    assert status["lastState"]["terminated"]["exitCode"] == 1
    assert status["state"]["terminated"]["exitCode"] == 0


def test_job_from_cronjob_template_runs_and_owner_deletion_collects_it(
    kube: Kube, namespace: str
) -> None:
    cronjob = kube.create(
        f"/apis/batch/v1/namespaces/{namespace}/cronjobs",
        {
            "metadata": {"name": "nightly"},
            "spec": {
                "schedule": "0 3 * * *",
                "suspend": True,
                "jobTemplate": {
                    "spec": {
                        "backoffLimit": 0,
                        "template": {
                            "spec": {
                                "restartPolicy": "Never",
                                "containers": [container(["sh", "-c", "sleep 600"])],
                            }
                        },
                    }
                },
            },
        },
    )
    # What `kubectl create job --from=cronjob/nightly` does.
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "nightly-manual",
            "annotations": {"cronjob.kubernetes.io/instantiate": "manual"},
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "CronJob",
                    "name": "nightly",
                    "uid": cronjob["metadata"]["uid"],
                    "controller": True,
                }
            ],
        },
        "spec": cronjob["spec"]["jobTemplate"]["spec"],
    }
    create_job(kube, namespace, job)
    pod_name = wait_until(
        lambda: [p["metadata"]["name"] for p in job_pods(kube, namespace, "nightly-manual")],
        what="job pod",
    )[0]
    pid = wait_until(lambda: running_pid(kube, namespace, pod_name), what="running pod")
    started = procs.start_time(pid)
    assert procs.is_alive(pid, started)

    kube.delete(
        f"/apis/batch/v1/namespaces/{namespace}/cronjobs/nightly",
        {"propagationPolicy": "Background"},
    )

    def job_gone() -> bool:
        try:
            kube.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/nightly-manual")
        except ApiError as error:
            return error.status == 404
        return False

    wait_until(job_gone, what="garbage collection of the job")
    wait_until(lambda: get_pod(kube, namespace, pod_name) is None, what="pod deletion")
    assert procs.wait_gone(pid, started, 30)


def test_deleting_a_running_pod_kills_its_process_tree(kube: Kube, namespace: str) -> None:
    # The shell ignores SIGTERM, so only SIGKILL after the 1 s grace period ends it;
    # its `sleep` children share the process group.
    script = "trap '' TERM; while true; do sleep 0.2; done"
    kube.create(
        f"/api/v1/namespaces/{namespace}/pods",
        {
            "metadata": {"name": "stubborn"},
            "spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 1,
                "containers": [container(["sh", "-c", script])],
            },
        },
    )
    pid = wait_until(lambda: running_pid(kube, namespace, "stubborn"), what="running pod")
    started = procs.start_time(pid)
    kube.delete(f"/api/v1/namespaces/{namespace}/pods/stubborn")
    wait_until(lambda: get_pod(kube, namespace, "stubborn") is None, what="pod removal")
    assert not procs.is_alive(pid, started)
    assert not procs.group_members(pid, started or 0)


def test_active_deadline_fails_the_job_and_kills_the_pod(kube: Kube, namespace: str) -> None:
    body = job_body("deadline", {"containers": [container(["sleep", "600"])]})
    body["spec"]["activeDeadlineSeconds"] = 2
    create_job(kube, namespace, body)
    pod_name = wait_until(
        lambda: [p["metadata"]["name"] for p in job_pods(kube, namespace, "deadline")],
        what="job pod",
    )[0]
    pid = wait_until(lambda: running_pid(kube, namespace, pod_name), what="running pod")
    started = procs.start_time(pid)
    condition = wait_job(kube, namespace, "deadline")
    assert (condition["type"], condition["reason"]) == ("Failed", "DeadlineExceeded")
    assert procs.wait_gone(pid, started, 30)


def test_pod_the_node_cannot_run_fails_with_a_reason(kube: Kube, namespace: str) -> None:
    kube.create(
        f"/api/v1/namespaces/{namespace}/pods",
        {
            "metadata": {"name": "nfs"},
            "spec": {
                "restartPolicy": "Never",
                "volumes": [{"name": "data", "nfs": {"server": "nfs.invalid", "path": "/x"}}],
                "containers": [container(["true"])],
            },
        },
    )
    pod = wait_until(
        lambda: (
            (p := get_pod(kube, namespace, "nfs")) and p["status"].get("phase") == "Failed" and p
        ),
        what="failed pod",
    )
    assert pod["status"]["reason"] == "SandboxUnsupported"
    assert "nfs" in pod["status"]["message"]


def test_missing_command_fails_clearly(kube: Kube, namespace: str) -> None:
    create_job(
        kube,
        namespace,
        job_body("nocmd", {"containers": [container(["no-such-command-tonebridge"])]}),
    )
    assert wait_job(kube, namespace, "nocmd")["type"] == "Failed"
    state = terminated(job_pods(kube, namespace, "nocmd")[0])
    assert (state["exitCode"], state["reason"]) == (128, "StartError")
    assert "executable file not found" in state["message"]
