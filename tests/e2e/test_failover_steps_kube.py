"""The switchService and rolloutRestart step executors against the sandbox's real API
server, workload controllers, EndpointSlice controller and node agent (workload pods of
images the sandbox cannot run are placeholders that become Ready)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.failover_steps import context, run_step, step, wait_until
from tonebridge_dr.controller.core import kube as kubemod
from tonebridge_dr.controller.core.kube import Json, Kube
from tonebridge_dr.controller.failoverplan.steps import StepState
from tonebridge_dr.controller.failoverplan.steps.rollout import (
    RESTARTED_AT,
    RolloutRestartExecutor,
    restarted_at,
)
from tonebridge_dr.controller.failoverplan.steps.service import (
    FIELD_MANAGER,
    SwitchServiceExecutor,
)
from tonebridge_dr.sandbox.runtime import Sandbox

PRIMARY = {"app": "db", "role": "primary", "zone": "a"}
STANDBY = {"app": "db", "role": "standby"}


@pytest.fixture
def kube(sandbox: Sandbox) -> Iterator[Kube]:
    client = Kube(sandbox.api_client())
    try:
        yield client
    finally:
        client.close()


def deployment(name: str, labels: dict[str, str], replicas: int = 1) -> Json:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "db",
                        "image": "postgres:16",
                        "ports": [{"name": "postgres", "containerPort": 5432}],
                    }],
                },
            },
        },
    }


def create(kube: Kube, namespace: str, body: Json) -> Json:
    body = {**body, "metadata": {**body["metadata"], "namespace": namespace}}
    return kube.create(body)


def available(kube: Kube, namespace: str, name: str) -> Json | None:
    found = kube.get(kubemod.DEPLOYMENT, namespace, name)
    status, replicas = found.get("status") or {}, found["spec"]["replicas"]
    ok = (
        status.get("observedGeneration", 0) >= found["metadata"]["generation"]
        and status.get("availableReplicas") == replicas
        and status.get("updatedReplicas") == replicas
        and status.get("replicas") == replicas
    )
    return found if ok else None


def pod_uids(kube: Kube, namespace: str, labels: dict[str, str]) -> set[str]:
    selector = ",".join(f"{k}={v}" for k, v in labels.items())
    return {p["metadata"]["uid"] for p in kube.list(kubemod.POD, namespace, label_selector=selector)
            if not p["metadata"].get("deletionTimestamp")}


def endpoint_uids(kube: Kube, namespace: str, service: str) -> list[tuple[str, bool]]:
    slices = kube.list(kubemod.ENDPOINT_SLICE, namespace,
                       label_selector=f"kubernetes.io/service-name={service}")
    return sorted(
        (e["targetRef"]["uid"], e.get("conditions", {}).get("ready") is not False)
        for s in slices for e in s.get("endpoints") or []
    )


@pytest.fixture
def two_databases(kube: Kube, namespace: str) -> dict[str, Any]:
    """Deployments `primary` and `standby` (one pod each), Service `db` selecting the
    primary, whose EndpointSlice lists the primary's pod."""
    create(kube, namespace, deployment("primary", PRIMARY))
    create(kube, namespace, deployment("standby", STANDBY))
    create(kube, namespace, {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "db"},
        "spec": {"selector": PRIMARY,
                 "ports": [{"name": "postgres", "port": 5432, "targetPort": "postgres"}]},
    })
    for name in ("primary", "standby"):
        wait_until(lambda n=name: available(kube, namespace, n), f"deployment {name}")
    primary = pod_uids(kube, namespace, PRIMARY)
    wait_until(lambda: endpoint_uids(kube, namespace, "db") == [(u, True) for u in primary],
               "EndpointSlice of the primary")
    return {"primary": primary, "standby": pod_uids(kube, namespace, STANDBY)}


def switch_step(selector: dict[str, str] = STANDBY) -> Any:
    return step({"name": "switch", "switchService": {"service": "db", "selector": selector}})


# --- switchService --------------------------------------------------------------------


def test_switch_service_replaces_the_selector_and_waits_for_endpoints_of_the_new_pods(
    kube: Kube, namespace: str, two_databases: dict[str, Any]
) -> None:
    executor = SwitchServiceExecutor()
    final, seen = run_step(executor, switch_step(), lambda: context(kube, namespace))

    assert final.state == StepState.SUCCEEDED, final.message
    assert seen[0].state == StepState.RUNNING  # applied, then waited for the EndpointSlices
    assert seen[0].memo["applied"] is True and seen[0].memo["from"] == PRIMARY
    service = kube.get(kubemod.SERVICE, namespace, "db")
    assert service["spec"]["selector"] == STANDBY  # replaced, not merged: no `zone` key left
    managers = {m["manager"] for m in service["metadata"]["managedFields"]}
    assert FIELD_MANAGER in managers
    standby = two_databases["standby"]
    assert endpoint_uids(kube, namespace, "db") == [(u, True) for u in standby]
    assert "1 of 1 matching pods are ready endpoints" in final.message


def test_switch_service_second_call_and_lost_memo_change_nothing(
    kube: Kube, namespace: str, two_databases: dict[str, Any]
) -> None:
    executor = SwitchServiceExecutor()
    final, _ = run_step(executor, switch_step(), lambda: context(kube, namespace))
    assert final.state == StepState.SUCCEEDED, final.message
    version = kube.get(kubemod.SERVICE, namespace, "db")["metadata"]["resourceVersion"]

    again = executor.advance(switch_step(), context(kube, namespace), final.memo)
    lost = executor.advance(switch_step(), context(kube, namespace), {})

    assert again.state == lost.state == StepState.SUCCEEDED
    assert kube.get(kubemod.SERVICE, namespace, "db")["metadata"]["resourceVersion"] == version


def test_switch_service_does_not_fight_someone_who_changed_the_selector_back(
    kube: Kube, namespace: str, two_databases: dict[str, Any]
) -> None:
    executor = SwitchServiceExecutor()
    first = executor.advance(switch_step(), context(kube, namespace), {})
    assert first.state == StepState.RUNNING and first.memo["applied"]
    kube.merge_patch(kubemod.SERVICE, namespace, "db",
                     {"spec": {"selector": {"role": "primary", "zone": "a"}}})

    progress = executor.advance(switch_step(), context(kube, namespace), first.memo)

    assert progress.state == StepState.FAILED
    assert "changed to 'app=db,role=primary,zone=a'" in progress.message
    assert kube.get(kubemod.SERVICE, namespace, "db")["spec"]["selector"] == PRIMARY


def test_switch_service_drill_reports_the_diff_and_leaves_the_service_alone(
    kube: Kube, namespace: str, two_databases: dict[str, Any]
) -> None:
    before = kube.get(kubemod.SERVICE, namespace, "db")

    progress = SwitchServiceExecutor().advance(
        switch_step(), context(kube, namespace, drill=True), {}
    )

    assert progress.state == StepState.SUCCEEDED, progress.message
    assert progress.diff == {"selector": {"from": PRIMARY, "to": STANDBY}}
    assert "1 ready pods of 1 match" in progress.message
    after = kube.get(kubemod.SERVICE, namespace, "db")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after["spec"]["selector"] == PRIMARY
    assert endpoint_uids(kube, namespace, "db") == [(u, True) for u in two_databases["primary"]]


def test_switch_service_to_pods_that_never_come_fails_at_the_deadline(
    kube: Kube, namespace: str, two_databases: dict[str, Any]
) -> None:
    executor = SwitchServiceExecutor()
    wanted = switch_step({"app": "db", "role": "nobody"})
    first = executor.advance(wanted, context(kube, namespace), {})
    assert first.state == StepState.RUNNING

    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    progress = executor.advance(wanted, context(kube, namespace, deadline=past), first.memo)

    assert progress.state == StepState.FAILED
    assert "step timeout expired while waiting for the EndpointSlices" in progress.message
    assert "0 of 0 matching pods" in progress.message


def test_switch_service_of_a_missing_service_fails_naming_it(
    kube: Kube, namespace: str
) -> None:
    progress = SwitchServiceExecutor().advance(switch_step(), context(kube, namespace), {})
    assert progress.state == StepState.FAILED
    assert progress.message == f"Service {namespace}/db not found"


# --- rolloutRestart ------------------------------------------------------------------


def replica_sets(kube: Kube, namespace: str) -> dict[str, int]:
    return {rs["metadata"]["name"]: int(rs["spec"].get("replicas") or 0)
            for rs in kube.list(kubemod.REPLICASET, namespace)}


def test_rollout_restart_of_a_deployment_rolls_out_a_new_replica_set_once(
    kube: Kube, namespace: str
) -> None:
    create(kube, namespace, deployment("api", {"app": "api"}, replicas=2))
    wait_until(lambda: available(kube, namespace, "api"), "deployment api")
    old_sets, old_pods = replica_sets(kube, namespace), pod_uids(kube, namespace, {"app": "api"})
    the_step = step({"rolloutRestart": {"kind": "Deployment", "name": "api"}})
    started = dt.datetime.now(dt.UTC)
    executor = RolloutRestartExecutor()

    final, seen = run_step(executor, the_step, lambda: context(kube, namespace,
                                                               started_at=started))

    assert final.state == StepState.SUCCEEDED, final.message
    assert seen[0].state == StepState.RUNNING
    value = final.memo["restartedAt"]
    found = kube.get(kubemod.DEPLOYMENT, namespace, "api")
    assert restarted_at(found) == value
    sets = replica_sets(kube, namespace)
    new = set(sets) - set(old_sets)
    assert len(new) == 1 and sets[new.pop()] == 2
    assert all(sets[name] == 0 for name in old_sets)
    assert pod_uids(kube, namespace, {"app": "api"}).isdisjoint(old_pods)
    generation = found["metadata"]["generation"]

    # Called again with its memo, or by a new process whose memo write was lost: no restart.
    again = executor.advance(the_step, context(kube, namespace, started_at=started), final.memo)
    lost = executor.advance(the_step, context(kube, namespace, started_at=started), {})

    assert again.state == lost.state == StepState.SUCCEEDED
    assert lost.memo["restartedAt"] == value
    found = kube.get(kubemod.DEPLOYMENT, namespace, "api")
    assert found["metadata"]["generation"] == generation
    assert restarted_at(found) == value


def statefulset(name: str, replicas: int = 2) -> Json:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"terminationGracePeriodSeconds": 1,
                         "containers": [{"name": "cache", "image": "redis:7"}]},
            },
        },
    }


def test_rollout_restart_of_a_statefulset_replaces_its_pods_and_completes(
    kube: Kube, namespace: str
) -> None:
    create(kube, namespace, statefulset("cache"))

    def ready() -> Json | None:
        found = kube.get(kubemod.STATEFULSET, namespace, "cache")
        status = found.get("status") or {}
        return found if status.get("readyReplicas") == 2 and status.get(
            "currentRevision") == status.get("updateRevision") else None

    before = wait_until(ready, "statefulset cache")
    old_pods = pod_uids(kube, namespace, {"app": "cache"})
    the_step = step({"rolloutRestart": {"kind": "StatefulSet", "name": "cache"}})

    final, _ = run_step(RolloutRestartExecutor(), the_step, lambda: context(kube, namespace))

    assert final.state == StepState.SUCCEEDED, final.message
    after = kube.get(kubemod.STATEFULSET, namespace, "cache")
    assert after["status"]["updateRevision"] == after["status"]["currentRevision"]
    assert after["status"]["currentRevision"] != before["status"]["currentRevision"]
    assert after["status"]["readyReplicas"] == 2
    assert pod_uids(kube, namespace, {"app": "cache"}).isdisjoint(old_pods)


def test_rollout_restart_of_a_daemonset_completes(kube: Kube, namespace: str) -> None:
    labels = {"app": "agent"}
    create(kube, namespace, {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"terminationGracePeriodSeconds": 1,
                                       "containers": [{"name": "a", "image": "busybox"}]}}},
    })
    wait_until(lambda: (kube.get(kubemod.DAEMONSET, namespace, "agent").get("status") or {})
               .get("numberAvailable") == 1, "daemonset agent")
    old_pods = pod_uids(kube, namespace, labels)
    the_step = step({"rolloutRestart": {"kind": "DaemonSet", "name": "agent"}})

    final, _ = run_step(RolloutRestartExecutor(), the_step, lambda: context(kube, namespace))

    assert final.state == StepState.SUCCEEDED, final.message
    assert len(pod_uids(kube, namespace, labels)) == 1
    assert pod_uids(kube, namespace, labels).isdisjoint(old_pods)


def test_rollout_restart_drill_leaves_the_template_unchanged(
    kube: Kube, namespace: str
) -> None:
    create(kube, namespace, deployment("api", {"app": "api"}))
    before = wait_until(lambda: available(kube, namespace, "api"), "deployment api")
    the_step = step({"rolloutRestart": {"kind": "Deployment", "name": "api"}})

    progress = RolloutRestartExecutor().advance(the_step, context(kube, namespace, drill=True),
                                                {})

    assert progress.state == StepState.SUCCEEDED, progress.message
    assert progress.diff is not None
    change = progress.diff["restartedAt"]
    assert change["from"] is None and change["to"]
    after = kube.get(kubemod.DEPLOYMENT, namespace, "api")
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert RESTARTED_AT not in (after["spec"]["template"]["metadata"].get("annotations") or {})


def test_rollout_restart_of_a_paused_deployment_fails_before_changing_it(
    kube: Kube, namespace: str
) -> None:
    body = deployment("api", {"app": "api"})
    body["spec"]["paused"] = True
    created = create(kube, namespace, body)
    the_step = step({"rolloutRestart": {"name": "api"}})

    progress = RolloutRestartExecutor().advance(the_step, context(kube, namespace), {})

    assert progress.state == StepState.FAILED
    assert progress.message == f"Deployment {namespace}/api is paused: a restart would not roll out"
    after = kube.get(kubemod.DEPLOYMENT, namespace, "api")
    assert after["metadata"]["generation"] == created["metadata"]["generation"]
