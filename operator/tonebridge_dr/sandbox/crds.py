"""Install CustomResourceDefinitions from YAML files and wait until they are Established
and their resources can be listed (a CRD whose schema just changed answers 429 "storage is
(re)initializing" for a moment after it is Established)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from tonebridge_dr.sandbox.kube import ApiError, Json, Kube

_CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
FIELD_MANAGER = "tonebridge-dr-sandbox"


def load(paths: Iterable[Path]) -> list[Json]:
    """Every CustomResourceDefinition document in the given files or folders
    (folders: their *.yaml and *.yml files, sorted)."""
    documents: list[Json] = []
    for path in paths:
        files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")]) if path.is_dir() else [path]
        for file in files:
            for document in yaml.safe_load_all(file.read_text()):
                if (
                    isinstance(document, dict)
                    and document.get("kind") == "CustomResourceDefinition"
                ):
                    documents.append(document)
    return documents


def _established(crd: dict[str, Any]) -> bool:
    conditions = (crd.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


def install(kube: Kube, paths: Iterable[Path], timeout: float = 60.0) -> list[str]:
    """Server-side apply every CRD found in `paths`, then wait until all are Established.

    Idempotent (apply with force); returns the CRD names. Raises ApiError when the
    API server rejects a CRD and TimeoutError when one is not Established in time.
    """
    names = []
    lists = []
    for document in load(paths):
        name = document["metadata"]["name"]
        spec = document.get("spec") or {}
        served = [v["name"] for v in spec.get("versions") or [] if v.get("served")]
        if served:
            lists.append(f"/apis/{spec['group']}/{served[-1]}/{spec['names']['plural']}")
        kube.patch(
            f"{_CRD_PATH}/{name}",
            document,
            patch_type="apply",
            fieldManager=FIELD_MANAGER,
            force=True,
        )
        names.append(name)
    deadline = time.monotonic() + timeout
    pending = list(names)
    while pending:
        with contextlib.suppress(ApiError):
            pending = [n for n in pending if not _established(kube.get(f"{_CRD_PATH}/{n}"))]
        if not pending:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"CRDs not Established after {timeout:.0f}s: {', '.join(pending)}")
        time.sleep(0.1)
    for path in lists:
        while True:
            try:
                kube.get(path, limit=1)
                break
            except ApiError as exc:
                if exc.status != 429 or time.monotonic() > deadline:
                    raise
            time.sleep(0.1)
    return names
