"""The sandbox's pure parts (env resolution, volumes, PKI, pidfile, process groups) without
a control plane; the one test that needs a real mount namespace is marked `sandbox`."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import tonebridge_dr
from tonebridge_dr.sandbox import crds, layout, pki, procs
from tonebridge_dr.sandbox.node import env, image, launch, volumes
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


# --- the image: venv and checkout seen through the pods' volumes ---------------------------

CHECKOUT = Path("/tmp/co")
VENV, PACKAGE = CHECKOUT / ".venv", CHECKOUT / "operator"
SITE = VENV / "lib/python3.11/site-packages"
IMAGE = [VENV, SITE, PACKAGE]


def ro(path: Path) -> Mount:
    return Mount(path, str(path), read_only=True)


def test_pth_paths_reads_a_pth_file_as_site_does(tmp_path: Path) -> None:
    site_dir = tmp_path / "site-packages"
    (tmp_path / "src").mkdir()
    site_dir.mkdir()
    (site_dir / "relative").mkdir()
    text = "\n".join(
        [
            "# a comment",
            "",
            "import _virtualenv",
            f"{tmp_path / 'src'}  ",
            "relative",
            "../src",
            str(tmp_path / "missing"),
        ]
    )
    assert image.pth_paths(site_dir, text) == [
        tmp_path / "src",
        site_dir / "relative",
        tmp_path / "src",
    ]


def test_image_paths_are_this_venv_and_the_checkout_it_points_at() -> None:
    paths = image.paths()
    assert Path(sys.prefix) in paths
    assert Path(sys.base_prefix) in paths
    assert Path(tonebridge_dr.__file__).resolve().parent.parent in paths
    assert len(paths) == len(set(paths))


def test_image_paths_add_the_resolved_path_of_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    resolved = tmp_path.resolve()
    assert image._with_resolved([tmp_path / "link", tmp_path / "real" / "."]) == [
        tmp_path / "link",
        resolved / "real",
        *([tmp_path / "real"] if resolved != tmp_path else []),
    ]


def test_overlay_leaves_mounts_that_hide_no_image_alone() -> None:
    mounts = [
        Mount(Path("/s/term"), "/dev/termination-log"),
        Mount(Path("/s/t"), "/tmpfoo"),  # a sibling whose name starts like /tmp
        Mount(Path("/s/d"), "/tmp/co/.venv-other"),
        Mount(Path("/s/key"), "/etc/tonebridge-dr/key", read_only=True),
    ]
    assert image.overlay(mounts, IMAGE) == [mounts[1], mounts[0], mounts[2], mounts[3]]
    assert image.overlay([], IMAGE) == []


def test_overlay_binds_the_image_back_over_an_emptydir_at_tmp() -> None:
    tmp = Mount(Path("/s/tmp"), "/tmp")
    term = Mount(Path("/s/term"), "/dev/termination-log")
    # site-packages is visible again through the venv's own bind: no bind of its own.
    assert image.overlay([tmp, term], IMAGE) == [tmp, term, ro(VENV), ro(PACKAGE)]


def test_overlay_handles_mounts_at_and_inside_the_image() -> None:
    at_checkout = Mount(Path("/s/secret"), str(CHECKOUT), read_only=True)
    at_venv = Mount(Path("/s/v"), str(VENV))
    in_venv = Mount(Path("/s/lib"), str(VENV / "lib"))
    in_site = Mount(Path("/s/data"), str(SITE / "data"))
    # At the checkout: both folders come back, after the volume.
    assert image.overlay([at_checkout], IMAGE) == [at_checkout, ro(VENV), ro(PACKAGE)]
    # At the venv itself: the image wins over a volume at the same path.
    assert image.overlay([at_venv], IMAGE) == [at_venv, ro(VENV)]
    # Inside the venv: hides site-packages only, which comes back after it.
    assert image.overlay([in_venv], IMAGE) == [in_venv, ro(SITE)]
    # Deeper than any image folder: it stays visible on top of the image.
    assert image.overlay([in_site], IMAGE) == [in_site]
    tmp = Mount(Path("/s/tmp"), "/tmp")
    assert image.overlay([in_site, in_venv, tmp], IMAGE) == [
        tmp,
        ro(VENV),
        ro(PACKAGE),
        in_venv,
        ro(SITE),
        in_site,
    ]


def test_overlay_of_an_image_folder_given_twice_binds_it_once() -> None:
    tmp = Mount(Path("/s/tmp"), "/tmp")
    assert image.overlay([tmp], [VENV, Path(f"{VENV}/"), VENV]) == [tmp, ro(VENV)]


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


def test_an_image_hidden_by_volumes_is_bound_back_read_only(tmp_path: Path) -> None:
    """An emptyDir over the folder holding the image and a read-only volume at the
    image's parent: the image's files and the volume's are both visible, the image is
    read-only, and the emptyDir keeps only the empty mount points."""
    shadow = tmp_path / "shadow"  # like /tmp
    checkout = shadow / "checkout"
    tool = checkout / ".venv" / "bin" / "tool"
    tool.parent.mkdir(parents=True)
    tool.write_text("#!/bin/sh\necho image tool\n")
    tool.chmod(0o755)
    empty, secret = tmp_path / "empty", tmp_path / "secret"
    empty.mkdir()
    secret.mkdir()
    (secret / "token").write_text("volume file")
    out = tmp_path / "out"
    out.write_text("")
    mounts = image.overlay(
        [
            Mount(empty, str(shadow)),
            Mount(secret, str(checkout), read_only=True),
            Mount(out, str(tmp_path / "out-target")),
        ],
        [checkout / ".venv"],
    )
    script = (
        f"{{ {tool}; cat {checkout}/token; echo; "
        f"touch {tool.parent}/x 2>/dev/null || echo read-only; }} > {tmp_path}/out-target"
    )
    spec = launch.ContainerLaunch(
        argv=["sh", "-c", script],
        env={"PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        log_path=tmp_path / "main.log",
        mounts=mounts,
    )
    process = launch.start(spec)
    assert process.wait(timeout=30) == 0, (tmp_path / "main.log").read_text()
    assert out.read_text() == "image tool\nvolume file\nread-only\n"
    assert sorted(p.name for p in empty.rglob("*")) == ["checkout"]
    assert sorted(p.name for p in secret.iterdir()) == [".venv", "token"]


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
