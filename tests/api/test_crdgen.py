"""crds/ is generated from the models, committed, structural, and documented."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
import yaml
from pydantic import Field

from tests.fixtures import ROOT
from tonebridge_dr.api import KINDS, crdgen
from tonebridge_dr.api.base import Matches, SpecModel
from tonebridge_dr.api.kinds import KindInfo

CRDS = ROOT / "crds"


def _crds() -> list[tuple[KindInfo, dict[str, Any]]]:
    return [(info, yaml.safe_load((CRDS / f"{info.crd_name}.yaml").read_text())) for info in KINDS]


def _root(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def _schemas(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node, with a dotted path (`spec.schedules[].cron`)."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _schemas(child, f"{path}.{name}" if path else name)
    if "items" in node:
        yield from _schemas(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _schemas(node["additionalProperties"], f"{path}{{}}")


ALL = [(info.kind, path, node) for info, crd in _crds() for path, node in _schemas(_root(crd))]


def test_committed_crds_match_the_models() -> None:
    """Run `make crds` (python -m tonebridge_dr.api.crdgen --out crds) when this fails."""
    expected = crdgen.render_all()
    committed = {p.name: p.read_text() for p in CRDS.glob("*.yaml")}
    assert sorted(committed) == sorted(expected)
    for name, text in expected.items():
        assert committed[name] == text, f"crds/{name} is out of date: run `make crds`"


def test_check_mode_reports_drift_and_write_mode_fixes_it(tmp_path: Path) -> None:
    assert crdgen.main(["--out", str(tmp_path), "--check"]) == 1
    assert not list(tmp_path.iterdir())
    assert crdgen.main(["--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(crdgen.render_all())
    assert crdgen.main(["--out", str(tmp_path), "--check"]) == 0
    stale = tmp_path / "restorerequests.dr.tonebridge.io.yaml"
    stale.write_text(stale.read_text().replace("immutable", "mutable"))
    assert crdgen.main(["--out", str(tmp_path), "--check"]) == 1


def test_module_entry_point_checks_the_repository() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tonebridge_dr.api.crdgen", "--out", "crds", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("info", "crd"), _crds(), ids=lambda v: getattr(v, "kind", ""))
def test_names_and_subresources(info: KindInfo, crd: dict[str, Any]) -> None:
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{info.plural}.dr.tonebridge.io"
    assert spec["group"] == "dr.tonebridge.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["shortNames"] == [info.short_name]
    assert spec["names"]["categories"] == ["tonebridge"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    assert _root(crd)["required"] == ["spec"]


def test_short_names_and_printer_columns() -> None:
    columns = {
        info.short_name: [
            c["name"]
            for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]
            if not c.get("priority")
        ]
        for info, crd in _crds()
    }
    assert columns == {
        "bp": ["TARGET", "SCHEDULE", "LAST BACKUP", "OBJECTS", "RPO", "RESTORABLE", "READY", "AGE"],
        "rr": ["PHASE", "SOURCE", "TARGET TIME", "DURATION", "AGE"],
        "fp": ["MODE", "HEALTH", "PHASE", "STAGE", "ELAPSED", "AGE"],
        "rt": ["SOURCE", "LAST RESULT", "RESTORE TIME", "RTO MET", "LAST RUN", "AGE"],
    }


def _structural_problems(kind: str, path: str, node: dict[str, Any]) -> list[str]:
    where = f"{kind}.{path}"
    problems = [
        f"{where}: {key}"
        for key in ("$ref", "$defs", "anyOf", "allOf", "oneOf", "not", "const", "title")
        if key in node
    ]
    if node.get("type") == "null" or node.get("additionalProperties") is False:
        problems.append(f"{where}: null type or additionalProperties: false")
    if "properties" in node and (node.get("type") != "object" or "additionalProperties" in node):
        problems.append(f"{where}: properties need type object and no additionalProperties")
    untyped = node.get("x-kubernetes-int-or-string") or node.get(
        "x-kubernetes-preserve-unknown-fields"
    )
    if "type" not in node and not untyped:
        problems.append(f"{where}: no type")
    if node.get("nullable", True) is not True:
        problems.append(f"{where}: nullable must be true or absent")
    return problems


@pytest.mark.parametrize("kind", [info.kind for info in KINDS])
def test_schema_is_structural(kind: str) -> None:
    """No $ref, no anyOf-null (Optional is `nullable: true`), every node typed."""
    nodes = [(p, n) for k, p, n in ALL if k == kind]
    assert len(nodes) > 50
    assert [problem for p, n in nodes for problem in _structural_problems(kind, p, n)] == []


def test_only_status_kopf_and_step_facts_preserve_unknown_fields() -> None:
    """...and the free-form facts a FailoverPlan step keeps (memo) and reports (diff)."""
    preserving = [(k, p) for k, p, n in ALL if n.get("x-kubernetes-preserve-unknown-fields")]
    steps = [("FailoverPlan", f"status.stages[].steps[].{f}") for f in ("diff", "memo")]
    assert sorted(preserving) == sorted(
        [(info.kind, "status.kopf") for info in KINDS] + steps
    )


def test_optional_fields_are_nullable_and_required_fields_are_listed() -> None:
    (_, crd), *_ = _crds()
    spec = _root(crd)["properties"]["spec"]
    assert spec["required"] == ["repository", "schedules", "target"]
    assert spec["properties"]["encryption"]["nullable"] is True
    assert "nullable" not in spec["properties"]["target"]
    assert spec["properties"]["suspend"] == {
        "description": spec["properties"]["suspend"]["description"],
        "type": "boolean",
        "default": False,
    }


def _spec_problems(kind: str, path: str, node: dict[str, Any]) -> list[str]:
    where = f"{kind}.{path}"
    problems = []
    # list items and map values are described by their field
    if not path.endswith(("[]", "{}")) and not node.get("description"):
        problems.append(f"{where}: no description (write a docstring)")
    kind_of = node.get("type")
    if kind_of == "string" and "maxLength" not in node and "enum" not in node:
        problems.append(f"{where}: string without maxLength or enum")
    if kind_of == "array" and "maxItems" not in node:
        problems.append(f"{where}: array without maxItems")
    if "additionalProperties" in node and "maxProperties" not in node:
        problems.append(f"{where}: map without maxProperties")
    if "x-kubernetes-int-or-string" in node and "maxLength" not in node:
        problems.append(f"{where}: int-or-string without maxLength")
    return problems


@pytest.mark.parametrize("kind", [info.kind for info in KINDS])
def test_spec_is_documented_and_bounded(kind: str) -> None:
    """Descriptions come from docstrings; bounds keep CEL cost estimates within limits."""
    nodes = [(p, n) for k, p, n in ALL if k == kind and p.startswith("spec")]
    assert [problem for p, n in nodes for problem in _spec_problems(kind, p, n)] == []


def test_every_rule_has_a_message() -> None:
    rules = [r for _, _, n in ALL for r in n.get("x-kubernetes-validations", [])]
    assert len(rules) > 50
    for rule in rules:
        assert set(rule) == {"rule", "message"}
        assert rule["rule"].strip() and len(rule["message"]) > 10


def test_restore_request_spec_is_immutable_and_nothing_else_is() -> None:
    transition = {
        (k, p)
        for k, p, n in ALL
        for r in n.get("x-kubernetes-validations", [])
        if "oldSelf" in r["rule"]
    }
    assert transition == {("RestoreRequest", "spec")}


def test_list_maps_are_keyed_by_required_fields() -> None:
    maps = [(k, p, n) for k, p, n in ALL if n.get("x-kubernetes-list-type") == "map"]
    assert {(k, p) for k, p, _ in maps} >= {
        ("BackupPolicy", "spec.schedules"),
        ("FailoverPlan", "spec.stages"),
        ("RestoreTest", "spec.checks"),
        ("BackupPolicy", "status.conditions"),
    }
    for _, _, node in maps:
        assert set(node["x-kubernetes-list-map-keys"]) <= set(node["items"]["required"])


class _Unbounded(SpecModel):
    """A model that forgot its bounds."""

    name: Annotated[str, Matches("^a+$", "only a")]
    """A name."""
    tags: list[Annotated[str, Field(max_length=3)]]
    """Tags."""


class _Union(SpecModel):
    """A model with a non-Optional union."""

    value: int | str
    """A value."""


def test_generator_refuses_unbounded_or_non_structural_models() -> None:
    schema = crdgen.structural_schema(_Unbounded)
    with pytest.raises(crdgen.SchemaError) as raised:
        crdgen.check_structural(schema, bounded=True, where="x")
    assert "x.properties.name: string without maxLength or enum" in str(raised.value)
    assert "x.properties.tags: array without maxItems" in str(raised.value)
    crdgen.check_structural(schema, bounded=False, where="x")
    with pytest.raises(crdgen.SchemaError, match="unions other than Optional"):
        crdgen.structural_schema(_Union)
