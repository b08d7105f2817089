"""The pure judgements of the switchService, rolloutRestart and updateDNS steps: when a
rollout is complete, when EndpointSlices point at the new pods, what a DNS UPSERT changes.
(The executors themselves run against the sandbox and moto in tests/e2e.)"""

from __future__ import annotations

from typing import Any

from tonebridge_dr.api.failoverplan import UpdateDNS
from tonebridge_dr.controller.failoverplan.steps.dns import normalize_name, record_diff
from tonebridge_dr.controller.failoverplan.steps.rollout import (
    daemonset_progress,
    deployment_progress,
    statefulset_progress,
)
from tonebridge_dr.controller.failoverplan.steps.service import endpoints_state

Json = dict[str, Any]


def deployment(status: Json, generation: int = 2, replicas: int = 2) -> Json:
    return {
        "metadata": {"name": "api", "uid": "d1", "generation": generation,
                     "annotations": {"deployment.kubernetes.io/revision": "2"}},
        "spec": {"replicas": replicas},
        "status": {"observedGeneration": 2, **status},
    }


def replica_set(name: str, revision: str, replicas: int, owner: str = "d1") -> Json:
    return {
        "metadata": {"name": name, "ownerReferences": [{"uid": owner}],
                     "annotations": {"deployment.kubernetes.io/revision": revision}},
        "status": {"replicas": replicas},
    }


DONE = {"replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}


def test_deployment_rollout_is_done_only_when_every_rule_holds() -> None:
    assert deployment_progress(deployment(DONE), [replica_set("new", "2", 2)])[0] == "done"
    unobserved = deployment(DONE, generation=3)
    assert deployment_progress(unobserved, [])[0] == "waiting"
    assert deployment_progress(deployment({**DONE, "updatedReplicas": 1}), [])[1] == (
        "1 of 2 replicas updated"
    )
    assert deployment_progress(deployment({**DONE, "replicas": 3}), [])[1] == (
        "1 old replicas pending termination"
    )
    assert deployment_progress(deployment({**DONE, "availableReplicas": 1}), [])[1] == (
        "1 of 2 updated replicas available"
    )
    draining = [replica_set("new", "2", 2), replica_set("old", "1", 1),
                replica_set("other-deployment", "1", 3, owner="d2")]
    assert deployment_progress(deployment(DONE), draining) == (
        "waiting", "old ReplicaSets still have pods: old"
    )


def test_deployment_past_its_progress_deadline_fails() -> None:
    stuck = deployment({**DONE, "updatedReplicas": 1, "conditions": [
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
         "message": 'ReplicaSet "api-2" has timed out progressing.'}]})
    state, note = deployment_progress(stuck, [])
    assert state == "failed" and "progress deadline" in note


def test_statefulset_rollout_needs_the_new_revision_everywhere_or_above_the_partition() -> None:
    base: Json = {"metadata": {"generation": 4}, "spec": {"replicas": 3},
                  "status": {"observedGeneration": 4, "readyReplicas": 3,
                             "availableReplicas": 3, "updatedReplicas": 3,
                             "currentRevision": "r2", "updateRevision": "r2"}}
    assert statefulset_progress(base)[0] == "done"
    rolling = {**base, "status": {**base["status"], "currentRevision": "r1",
                                  "updatedReplicas": 1}}
    assert statefulset_progress(rolling) == ("waiting", "1 of 3 replicas updated")
    partitioned = {**rolling, "spec": {"replicas": 3, "updateStrategy": {
        "type": "RollingUpdate", "rollingUpdate": {"partition": 2}}}}
    assert statefulset_progress(partitioned)[0] == "done"
    not_ready = {**base, "status": {**base["status"], "readyReplicas": 2}}
    assert statefulset_progress(not_ready) == ("waiting", "2 of 3 replicas ready")


def test_daemonset_rollout_needs_every_scheduled_pod_updated_and_available() -> None:
    status = {"observedGeneration": 2, "desiredNumberScheduled": 2,
              "updatedNumberScheduled": 2, "numberAvailable": 1}
    assert daemonset_progress({"metadata": {"generation": 2}, "status": status}) == (
        "waiting", "1 of 2 updated pods available"
    )
    status["numberAvailable"] = 2
    assert daemonset_progress({"metadata": {"generation": 2}, "status": status})[0] == "done"


def endpoint(uid: str, ready: bool | None = True) -> Json:
    conditions = {} if ready is None else {"ready": ready}
    return {"targetRef": {"kind": "Pod", "name": f"pod-{uid}", "uid": uid},
            "conditions": conditions}


def pod(uid: str) -> Json:
    return {"metadata": {"uid": uid}}


def test_endpoints_point_at_the_new_pods_only_when_all_are_theirs_and_ready() -> None:
    assert endpoints_state([{"endpoints": [endpoint("a"), endpoint("b", None)]}],
                           [pod("a"), pod("b")])[0]
    old_left = endpoints_state([{"endpoints": [endpoint("a")]}, {"endpoints": [endpoint("x")]}],
                               [pod("a")])
    assert old_left == (False, "1 of 1 matching pods are ready endpoints (pod-a), "
                               "1 endpoints of other pods still listed")
    assert not endpoints_state([{"endpoints": [endpoint("a", False)]}], [pod("a")])[0]
    assert not endpoints_state([{"endpoints": None}], [pod("a")])[0]
    assert not endpoints_state([], [])[0]


def dns(values: list[str], record_type: str = "CNAME", ttl: int = 60) -> UpdateDNS:
    return UpdateDNS.model_validate({"hostedZoneId": "Z1", "recordName": "DB.example.test",
                                     "recordType": record_type, "values": values, "ttl": ttl})


def test_dns_diff_compares_names_and_addresses_as_route53_stores_them() -> None:
    same_cname = {"Name": "db.example.test.", "Type": "CNAME", "TTL": 60,
                  "ResourceRecords": [{"Value": "Standby.Example.test."}]}
    assert record_diff(dns(["standby.example.test"]), same_cname) == {}
    same_aaaa = {"Type": "AAAA", "TTL": 60, "ResourceRecords": [{"Value": "2001:db8::1"}]}
    assert record_diff(dns(["2001:0db8:0:0::1"], "AAAA"), same_aaaa) == {}
    assert record_diff(dns(["10.0.0.2", "10.0.0.1"], "A"), None) == {
        "record": "db.example.test. A",
        "values": {"from": None, "to": ["10.0.0.1", "10.0.0.2"]},
        "ttl": {"from": None, "to": 60},
    }
    assert record_diff(dns(["x.example.test"], ttl=300), same_cname)["ttl"] == {
        "from": 60, "to": 300}
    assert normalize_name("\\052.Example.TEST") == "*.example.test."
