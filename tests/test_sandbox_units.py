"""The sandbox's pure parts (env resolution, volumes, PKI, pidfile, process groups) without
a control plane; the one test that needs a real mount namespace is marked `sandbox`."""

from __future__ import annotations

import base64
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tonebridge_dr.sandbox import crds, layout, pki, procs
from tonebridge_dr.sandbox.node import env, launch, volumes
from tonebridge_dr.sandbox.node.volumes import Mount

Json = dict[str, Any]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class FakeObjects:
    """Secrets / ConfigMaps / tokens from dicts instead of the API server."""

    def __init__(self, secrets: dict[str, dict[str, str]], config_maps: dict[str, dict[str, str]]):
        self.secrets = secrets
        self.config_maps = config_maps

    def secret(self, namespace: str, name: str) -> Json | None:
        data = self.secrets.get(name)
        return None if data is None else {"data": {k: b64(v) for k, v in data.items()}}

    def config_map(self, namespace: str, name: str) -> Json | None:
        data = self.config_maps.get(name)
        return None if data is None else {"data": data}

    def service_account_token(self, pod: Json, audience: str | None, expiration: int) -> str:
        return f"token-for-{pod['metadata']['name']}-{audience}"


OBJECTS = FakeObjects(
    {"creds": {"password": "pw", "user": "u", "bad-name=": "x"}},
    {"settings": {"bucket": "b", "region": "eu"}},
)


def pod(**spec: Any) -> Json:
    return {
        "metadata": {
            "name": "p",
            "namespace": "ns",
            "uid": "1234",
            "labels": {"app": "dr", "tier": "backup"},
        },
        "spec": {"nodeName": "sandbox-node", "serviceAccountName": "default", **spec},
        "status": {},
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)", "1"),
        ("x$(A)y$(B)z", "x1y2z"),
        ("$(UNKNOWN)", "$(UNKNOWN)"),
        ("$$(A)", "$(A)"),
        ("$$", "$"),
        ("cost: $5", "cost: $5"),
        ("$(A", "$(A"),
        ("end$", "end$"),
    ],
)
def test_expand_follows_kubernetes_rules(text: str, expected: str) -> None:
    assert env.expand(text, {"A": "1", "B": "2"}) == expected


def test_container_env_order_refs_and_fields() -> None:
    container = {
        "name": "main",
        "envFrom": [
            {"secretRef": {"name": "creds"}, "prefix": "DB_"},
            {"configMapRef": {"name": "settings"}},
            {"configMapRef": {"name": "absent", "optional": True}},
        ],
        "env": [
            {"name": "region", "value": "override"},
            {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
            {"name": "URL", "value": "s3://$(bucket)/$(POD)"},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "URL2", "value": "s3://$(bucket)/$(POD)"},
            {"name": "TIER", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['tier']"}}},
            {
                "name": "OPT",
                "valueFrom": {"secretKeyRef": {"name": "creds", "key": "nope", "optional": True}},
            },
            {
                "name": "MEM",
                "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
            },
        ],
        "resources": {"limits": {"memory": "256Mi"}},
    }
    result = env.container_env(pod(containers=[container]), container, OBJECTS, {"PATH": "/bin"})
    assert result == {
        "PATH": "/bin",
        "DB_password": "pw",
        "DB_user": "u",
        "bucket": "b",
        "region": "override",
        "PW": "pw",
        "URL": "s3://b/$(POD)",  # POD is defined after URL
        "POD": "p",
        "URL2": "s3://b/p",
        "TIER": "backup",
        "MEM": "256",
    }


@pytest.mark.parametrize(
    ("var", "message"),
    [
        ({"secretKeyRef": {"name": "missing", "key": "k"}}, 'secret "missing" not found'),
        ({"configMapKeyRef": {"name": "missing", "key": "k"}}, 'configmap "missing" not found'),
        ({"secretKeyRef": {"name": "creds", "key": "k"}}, "couldn't find key k in secret ns/creds"),
        ({"fieldRef": {"fieldPath": "spec.nonsense"}}, "unsupported fieldRef.fieldPath"),
    ],
)
def test_unresolvable_env_is_a_config_error(var: Json, message: str) -> None:
    container = {"name": "main", "env": [{"name": "X", "valueFrom": var}]}
    with pytest.raises(env.ConfigError, match=message.replace("(", r"\(")):
        env.container_env(pod(containers=[container]), container, OBJECTS, {})


def test_container_argv_expands_command_and_args() -> None:
    container = {"command": ["tonebridge-dr", "backup"], "args": ["--repo", "$(REPO)", "$$(X)"]}
    argv = env.container_argv(container, {"REPO": "s3://b"})
    assert argv == ["tonebridge-dr", "backup", "--repo", "s3://b", "$(X)"]


def test_volumes_are_materialized_as_files(tmp_path: Path) -> None:
    spec = pod(
        volumes=[
            {
                "name": "kube-api-access",
                "projected": {
                    "defaultMode": 0o644,
                    "sources": [
                        {"serviceAccountToken": {"path": "token", "audience": "aud"}},
                        {
                            "configMap": {
                                "name": "settings",
                                "items": [{"key": "bucket", "path": "b"}],
                            }
                        },
                        {
                            "downwardAPI": {
                                "items": [
                                    {
                                        "path": "namespace",
                                        "fieldRef": {"fieldPath": "metadata.namespace"},
                                    }
                                ]
                            }
                        },
                    ],
                },
            },
            {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o400}},
            {"name": "opt", "configMap": {"name": "absent", "optional": True}},
            {"name": "scratch", "emptyDir": {}},
        ]
    )
    assert volumes.unsupported(spec) is None
    folders = volumes.materialize(spec, tmp_path, OBJECTS)
    api = folders["kube-api-access"]
    assert (api / "token").read_text() == "token-for-p-aud"
    assert (api / "b").read_text() == "b"
    assert (api / "namespace").read_text() == "ns"
    assert (folders["creds"] / "password").read_text() == "pw"
    assert (folders["creds"] / "password").stat().st_mode & 0o777 == 0o400
    assert list(folders["opt"].iterdir()) == []
    assert folders["scratch"].is_dir()


def test_missing_volume_source_and_escaping_paths_are_config_errors(tmp_path: Path) -> None:
    missing = pod(volumes=[{"name": "v", "secret": {"secretName": "missing"}}])
    with pytest.raises(env.ConfigError, match='secret "missing" not found'):
        volumes.materialize(missing, tmp_path, OBJECTS)
    escaping = pod(
        volumes=[
            {
                "name": "v",
                "configMap": {"name": "settings", "items": [{"key": "bucket", "path": "../x"}]},
            }
        ]
    )
    with pytest.raises(env.ConfigError, match="escapes"):
        volumes.materialize(escaping, tmp_path, OBJECTS)


def test_unsupported_volume_types_are_named() -> None:
    message = volumes.unsupported(pod(volumes=[{"name": "data", "hostPath": {"path": "/x"}}]))
    assert message is not None
    assert 'volume "data" is of type hostPath' in message


def test_container_mounts_honour_sub_path_and_order(tmp_path: Path) -> None:
    folders = {"a": tmp_path / "a", "b": tmp_path / "b"}
    for folder in folders.values():
        folder.mkdir()
    container = {
        "volumeMounts": [
            {"name": "a", "mountPath": "/data/deep/er", "readOnly": True},
            {"name": "b", "mountPath": "/data", "subPath": "sub"},
        ]
    }
    mounts = volumes.container_mounts(container, folders)
    assert mounts == [
        Mount(tmp_path / "b" / "sub", "/data"),
        Mount(tmp_path / "a", "/data/deep/er", read_only=True),
    ]
    with pytest.raises(env.ConfigError, match="names no volume"):
        volumes.container_mounts({"volumeMounts": [{"name": "c", "mountPath": "/c"}]}, folders)


def test_resolve_command_uses_the_container_path(tmp_path: Path) -> None:
    tool = tmp_path / "mytool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    assert launch.resolve_command("mytool", {"PATH": f"{tmp_path}:/usr/bin"}) == str(tool)
    with pytest.raises(launch.StartError, match="executable file not found in \\$PATH"):
        launch.resolve_command("mytool", {"PATH": "/usr/bin"})


@pytest.mark.sandbox  # needs what the node agent needs: root and unshare
def test_container_sees_its_bind_mounts_and_the_host_does_not(tmp_path: Path) -> None:
    source = tmp_path / "termination"
    source.write_text("")
    target = tmp_path / "host" / "termination-log"
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "key").write_text("secret value")
    spec = launch.ContainerLaunch(
        argv=["sh", "-c", f"cat {tmp_path}/mnt/key > {target}; echo out; echo err >&2"],
        env={"PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        log_path=tmp_path / "main.log",
        mounts=[Mount(source, str(target)), Mount(volume, f"{tmp_path}/mnt", read_only=True)],
    )
    process = launch.start(spec)
    assert process.wait(timeout=30) == 0
    assert source.read_text() == "secret value"
    assert target.read_text() == ""  # only a placeholder on the host
    assert list((tmp_path / "mnt").iterdir()) == []
    assert (tmp_path / "main.log").read_text() == "out\nerr\n"


def test_namespace_script_creates_hidden_targets_and_remounts_read_only_last(
    tmp_path: Path,
) -> None:
    folder, file = tmp_path / "folder", tmp_path / "file"
    folder.mkdir()
    file.write_text("")
    mounts = [Mount(folder, "/ro", read_only=True), Mount(folder, "/ro/d"), Mount(file, "/ro/f")]
    script = launch.namespace_argv(mounts, ["true"])[7].splitlines()
    assert "[ -e /ro/d ] || mkdir -p /ro/d" in script
    assert "[ -e /ro/f ] || { mkdir -p /ro && : > /ro/f; }" in script
    # /ro/d and /ro/f are created inside /ro: it becomes read-only after the last bind.
    last_bind = max(i for i, line in enumerate(script) if "--bind" in line)
    assert script[last_bind].endswith(" /ro/f")
    [remount] = [i for i, line in enumerate(script) if "remount" in line]
    assert script[remount].endswith(" -o remount,bind,ro /ro")
    assert remount > last_bind


def test_kill_group_ends_a_process_tree_and_the_pidfile_tracks_it(tmp_path: Path) -> None:
    table = procs.ProcessTable(tmp_path / "processes.json")
    # The shell ignores SIGTERM: SIGKILL after the grace period ends it.
    process = procs.spawn(
        ["sh", "-c", "trap '' TERM; sleep 600 & while true; do sleep 0.1; done"], env={}
    )
    record = table.add("tree", process.pid)
    assert procs.ProcessTable.read(table.path) == [record]

    def members() -> list[int]:
        return procs.group_members(record.pgid, record.started)

    deadline = time.monotonic() + 30
    while len(members()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(members()) >= 2
    procs.kill_group(record.pgid, record.started, grace=0.5)
    assert process.wait(timeout=10) == -9
    assert members() == []
    assert procs.exit_code(process.returncode) == 137
    table.remove(process.pid)
    assert procs.ProcessTable.read(table.path) == []
    assert procs.kill_recorded(tmp_path / "absent.json") == []


def test_pki_issues_what_the_components_need(tmp_path: Path) -> None:
    keys = pki.generate(tmp_path, "sandbox-node")
    ca = x509.load_pem_x509_certificate(keys.ca_cert.read_bytes())
    admin = x509.load_pem_x509_certificate(keys.admin_cert.read_bytes())
    server = x509.load_pem_x509_certificate(keys.apiserver_cert.read_bytes())
    organization = admin.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    assert [a.value for a in organization] == ["system:masters"]
    for cert in (admin, server):
        public_key = ca.public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        cert.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    assert "kubernetes.default.svc" in sans.get_values_for_type(x509.DNSName)
    assert keys.admin_key.stat().st_mode & 0o777 == 0o600


def test_controlplane_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(layout.CONTROLPLANE_ENV, str(tmp_path / "a"))
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(tmp_path / "b"))
    assert layout.controlplane_dir() == tmp_path / "a"
    monkeypatch.delenv(layout.CONTROLPLANE_ENV)
    assert layout.controlplane_dir() == tmp_path / "b"
    monkeypatch.delenv("KUBEBUILDER_ASSETS")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    expected = f"tonebridge-dr/controlplane/{layout.K8S_VERSION}-etcd-{layout.ETCD_VERSION}"
    assert layout.controlplane_dir() == tmp_path / "cache" / expected
    with pytest.raises(FileNotFoundError, match="make controlplane"):
        layout.binary("etcd")


def test_crd_loading_keeps_only_crds(tmp_path: Path) -> None:
    crd = {"kind": "CustomResourceDefinition", "metadata": {"name": "a.example.com"}}
    (tmp_path / "one.yaml").write_text(yaml.safe_dump_all([crd, {"kind": "ConfigMap"}, None]))
    (tmp_path / "notes.txt").write_text("not yaml: [")
    assert crds.load([tmp_path]) == [crd]
    assert crds.load([]) == []


def test_kubectl_error_shows_stderr() -> None:
    from tonebridge_dr.sandbox.runtime import KubectlError

    error = KubectlError(1, ["kubectl", "get"], "", "error: the server doesn't have a resource")
    assert "the server doesn't have a resource" in str(error)
    assert isinstance(error, subprocess.CalledProcessError)
