"""What an export keeps of a live object (pure: no server)."""

from __future__ import annotations

from typing import Any

from tonebridge_dr.runner.engines.kubernetes import clean, documents, gitcopy, restore


def _live(kind: str, name: str, **body: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": kind,
        "metadata": {
            "name": name, "namespace": "app", "uid": "u", "resourceVersion": "7",
            "generation": 3, "creationTimestamp": "2026-01-01T00:00:00Z",
            "managedFields": [{"manager": "kubectl"}], "finalizers": ["x"],
            "labels": {"app": "web"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}",
                            "team": "payments"},
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": "o-1"},
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "gone", "uid": "o-2"}],
        },
        "status": {"phase": "Bound"},
        **body,
    }


def test_server_set_and_cluster_specific_fields_are_stripped() -> None:
    service = clean.clean(_live("Service", "web", spec={
        "clusterIP": "10.0.0.7", "clusterIPs": ["10.0.0.7"], "ports": [{"port": 80}]}),
        members={("ConfigMap", "owner")})
    assert service["metadata"] == {
        "name": "web", "namespace": "app", "labels": {"app": "web"},
        "annotations": {"team": "payments"},
        "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner"}],
    }
    assert "status" not in service and service["spec"] == {"ports": [{"port": 80}]}
    headless = clean.clean(_live("Service", "db", spec={"clusterIP": "None",
                                                        "clusterIPs": ["None"]}))
    assert headless["spec"] == {"clusterIP": "None", "clusterIPs": ["None"]}
    claim = clean.clean(_live("PersistentVolumeClaim", "data", spec={
        "volumeName": "pv-1", "resources": {"requests": {"storage": "1Gi"}}}))
    assert claim["spec"] == {"resources": {"requests": {"storage": "1Gi"}}}
    account = clean.clean(_live("ServiceAccount", "app", secrets=[
        {"name": "app-token-abcde"}, {"name": "registry"}]))
    assert account["secrets"] == [{"name": "registry"}]


def test_generated_objects_are_left_out() -> None:
    token = _live("Secret", "t", type="kubernetes.io/service-account-token")
    assert clean.skip_reason(token) is not None
    assert clean.skip_reason(_live("ConfigMap", "kube-root-ca.crt")) is not None
    assert clean.skip_reason(_live("Secret", "db", type="Opaque")) is None


def test_documents_are_stable_and_git_files_named_by_kind() -> None:
    obj = clean.clean(_live("ConfigMap", "cfg", data={"b": "2", "a": "1"}))
    text = documents.dump(obj)
    assert text == documents.dump(dict(reversed(list(obj.items()))))  # key order is sorted
    assert documents.load_all(b"".join(documents.stream([text, text]))) == [obj, obj]
    assert str(gitcopy.file_path(obj)) == "app/configmap/cfg.yaml"
    widget = {"apiVersion": "example.com/v1", "kind": "Widget",
              "metadata": {"name": "w", "namespace": "app"}}
    assert str(gitcopy.file_path(widget)) == "app/widget.example.com/w.yaml"
    assert gitcopy._public_url("https://bot:tok3n@git.example.com/x.git") == (
        "https://bot@git.example.com/x.git")


def test_namespace_maps_are_parsed() -> None:
    assert restore.parse_namespace_map(["a=b", "c=d"]) == {"a": "b", "c": "d"}
