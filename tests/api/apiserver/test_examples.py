"""The manifests in examples/ are complete, self-contained and accepted by a real API server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures import EXAMPLES
from tonebridge_dr.api import GROUP, KINDS

FILES = sorted(EXAMPLES.rglob("*.yaml"))


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _secret_names(node: Any) -> Iterator[str]:
    """Names of every Secret referenced by a `...SecretRef` field."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key.endswith("SecretRef") and isinstance(value, dict):
                yield value["name"]
            else:
                yield from _secret_names(value)
    elif isinstance(node, list):
        for item in node:
            yield from _secret_names(item)


def _rel(path: Path) -> str:
    return str(path.relative_to(EXAMPLES))


def test_the_topics_of_the_spec_are_covered() -> None:
    folders = {p.name for p in EXAMPLES.iterdir() if p.is_dir()}
    assert {
        "00-local-demo",
        "01-postgres-backup",
        "02-redis-backup",
        "03-restore",
        "04-failover",
        "05-restore-test",
    } <= folders
    kinds = {d["kind"] for path in FILES for d in _documents(path)}
    assert {info.kind for info in KINDS} <= kinds


def test_local_demo_uses_a_file_repository() -> None:
    (policy,) = _documents(EXAMPLES / "00-local-demo" / "backuppolicy.yaml")
    assert policy["spec"]["repository"]["url"].startswith("file:///")


def test_failover_example_has_the_six_stages_of_spec_10_1() -> None:
    (plan,) = _documents(EXAMPLES / "04-failover" / "failoverplan-region.yaml")
    stages = [(s["name"], s["priority"], s["rto"]) for s in plan["spec"]["stages"]]
    assert stages == [
        ("auth", 1, "30m"),
        ("database", 2, "1h"),
        ("api-gateway", 3, "1h30m"),
        ("llm-service", 4, "2h"),
        ("cache", 5, "3h"),
        ("monitoring", 6, "4h"),
    ]


@pytest.mark.parametrize("path", FILES, ids=_rel)
def test_example_is_namespace_free_and_its_secrets_are_included(path: Path) -> None:
    """Examples apply to any namespace; every referenced Secret ships in the same folder."""
    defined = {
        d["metadata"]["name"]
        for secrets in path.parent.glob("*.yaml")
        for d in _documents(secrets)
        if d["kind"] == "Secret"
    }
    for document in _documents(path):
        assert "namespace" not in document["metadata"]
        if document["apiVersion"].startswith(GROUP + "/"):
            missing = set(_secret_names(document["spec"])) - defined
            assert not missing, f"{_rel(path)} references Secrets not in its folder: {missing}"


@pytest.mark.parametrize("path", FILES, ids=_rel)
def test_example_applies_with_server_side_dry_run(path: Path, sandbox: Any, namespace: str) -> None:
    result = sandbox.kubectl(
        "apply", "--dry-run=server", "--validate=strict", "-n", namespace, "-f", str(path)
    )
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(_documents(path))
    assert all(line.endswith("(server dry run)") for line in lines), result.stdout


def test_examples_are_listed_by_category_and_short_names(sandbox: Any, namespace: str) -> None:
    for folder in ("01-postgres-backup", "03-restore", "04-failover", "05-restore-test"):
        sandbox.kubectl("apply", "--validate=strict", "-n", namespace, "-f", str(EXAMPLES / folder))
    listed = sandbox.kubectl("get", "tonebridge", "-n", namespace, "-o", "name").stdout.split()
    assert sorted(listed) == sorted(
        [
            "backuppolicy.dr.tonebridge.io/tonebridge-db",
            "restorerequest.dr.tonebridge.io/rebuild-tonebridge-db",
            "restorerequest.dr.tonebridge.io/restore-tonebridge-config",
            "restorerequest.dr.tonebridge.io/repair-transformations-jan",
            "restorerequest.dr.tonebridge.io/restore-transformations",
            "restorerequest.dr.tonebridge.io/restore-tonebridge-db-latest",
            "restorerequest.dr.tonebridge.io/restore-tonebridge-redis",
            "restorerequest.dr.tonebridge.io/restore-tonebridge-uploads",
            "restorerequest.dr.tonebridge.io/tonebridge-db-pitr",
            "restorerequest.dr.tonebridge.io/tonebridge-db-before-drop",
            "failoverplan.dr.tonebridge.io/tonebridge-db",
            "failoverplan.dr.tonebridge.io/tonebridge-region",
            "restoretest.dr.tonebridge.io/tonebridge-db-quarterly",
        ]
    )
    for short, header in (
        ("bp", "NAME TARGET SCHEDULE LAST BACKUP OBJECTS RPO RESTORABLE READY AGE"),
        ("rr", "NAME PHASE SOURCE TARGET TIME DURATION AGE"),
        ("fp", "NAME MODE HEALTH PHASE STAGE ELAPSED AGE"),
        ("rt", "NAME SOURCE LAST RESULT RESTORE TIME RTO MET LAST RUN AGE"),
    ):
        table = sandbox.kubectl("get", short, "-n", namespace).stdout.splitlines()
        assert " ".join(table[0].split()) == header
    plans = sandbox.kubectl("get", "fp", "-n", namespace).stdout
    assert "automatic" in plans and "manual" in plans
    pitr = sandbox.kubectl("get", "rr", "tonebridge-db-pitr", "-n", namespace).stdout
    assert "2024-01-15T10:30:00+09:00" in pitr
