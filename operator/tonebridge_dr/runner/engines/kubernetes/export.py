"""`backup kubernetes`: the chosen kinds of the chosen namespaces, cleaned, into the
repository; then, optionally, a Git copy of what is not a Secret.

Order of work: resolve the kinds (custom ones through discovery) and check Secrets may
be stored (only encrypted); list every kind in every namespace page by page (a missing
permission fails the run before anything is stored: exit 10, Forbidden); clean each
object; write one YAML stream per namespace through the codec pipeline; commit the
manifest, which lists every object (kind, namespace, name, SHA-256 of its document) in
`extra.kubernetes.objects`. Secrets get no checksum there: a hash of a small plaintext
value would let anyone holding the manifest guess it.

The Git copy comes after the commit: a push that fails leaves the backup complete in
the repository and fails the run with exit 12 saying so.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tonebridge_dr
from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.kubernetes import clean, documents, gitcopy, kinds
from tonebridge_dr.runner.engines.kubernetes.client import ApiError, Client
from tonebridge_dr.runner.repository.catalog import Repository

log = logging.getLogger(__name__)

ENGINE = "kubernetes"
METHOD = "export"
Json = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    namespaces: tuple[str, ...]
    kinds: tuple[str, ...] = kinds.DEFAULT_KINDS
    label_selector: str | None = None
    git: gitcopy.GitTarget | None = None
    page_size: int = 500


@dataclasses.dataclass
class Exported:
    """The cleaned objects of one namespace, in restore order."""

    namespace: str
    objects: list[Json]
    skipped: int = 0


def resolve_kinds(client: Client, names: Sequence[str]) -> list[kinds.Kind]:
    """The Kinds `names` means; custom resources found in discovery (UsageError when the
    API server serves no such namespaced kind)."""
    resolved: list[kinds.Kind] = []
    for name in dict.fromkeys(names):
        if not kinds.is_custom(name):
            if name not in kinds.BUILTIN:
                raise errors.UsageError(
                    f"unknown kind {name!r}: one of {', '.join(kinds.BUILTIN)} or group/Kind"
                )
            resolved.append(kinds.BUILTIN[name])
            continue
        resolved.append(discover(client, name))
    return resolved


def discover(client: Client, name: str) -> kinds.Kind:
    """The custom kind `group/Kind` (or `group/plural`) in the API server's discovery."""
    group, wanted = name.split("/", 1)
    try:
        info = client.request("GET", f"/apis/{group}")
    except ApiError as exc:
        if exc.not_found:
            raise errors.UsageError(
                f"kind {name}: the API server serves no group {group}"
            ) from None
        raise errors.SourceError(f"discovery of {group}: {exc}") from None
    version = str((info.get("preferredVersion") or {}).get("version") or "")
    resources = client.request("GET", f"/apis/{group}/{version}").get("resources") or []
    for resource in resources:
        plural = str(resource.get("name", ""))
        if "/" in plural or wanted not in (resource.get("kind"), plural):
            continue
        if not resource.get("namespaced"):
            raise errors.UsageError(f"kind {name} is cluster-scoped: only namespaced kinds")
        return kinds.Kind(group, version, str(resource["kind"]), plural, kinds.ORDER_CUSTOM)
    raise errors.UsageError(f"kind {name}: group {group}/{version} serves no such kind")


def collect(client: Client, namespace: str, wanted: Sequence[kinds.Kind],
            label_selector: str | None, page_size: int = 500) -> Exported:
    """List and clean every object of `wanted` in `namespace`."""
    raw: list[Json] = []
    skipped = 0
    for kind in kinds.restore_order(wanted):
        for item in client.list_pages(kind.path(namespace), label_selector=label_selector,
                                      limit=page_size):
            item["apiVersion"] = kind.api_version
            item["kind"] = kind.kind
            if clean.skip_reason(item) is not None:
                skipped += 1
                continue
            raw.append(item)
    members = {clean.ref_of(obj) for obj in raw}
    objects = [clean.clean(obj, members) for obj in raw]
    return Exported(namespace, objects, skipped)


def backup(
    client: Client,
    repo: Repository,
    options: ExportOptions,
    *,
    compression: str = "zstd",
    encrypt_to: Path | None = None,
    level: int | None = None,
    storage_class: str | None = None,
    schedule: str | None = None,
) -> dict[str, Any]:
    """Export into `repo`; the JSON result (the manifest summary plus counts)."""
    if kinds.SECRETS in options.kinds and encrypt_to is None:
        raise errors.UsageError(
            "Secrets are only stored encrypted: pass --encrypt-to PUBKEY_FILE (a policy's "
            "spec.encryption), or leave secrets out of --kind"
        )
    wanted = resolve_kinds(client, options.kinds)
    exported = [
        collect(client, namespace, wanted, options.label_selector, options.page_size)
        for namespace in options.namespaces
    ]  # every list first: a Forbidden kind fails before anything is stored
    entries: list[Json] = []
    counts: dict[str, int] = {}
    with repo.begin(engine=ENGINE, method=METHOD, compression=compression,
                    encrypt_to=encrypt_to, level=level, storage_class=storage_class,
                    schedule=schedule) as writer:
        for group in exported:
            name = documents.object_name(group.namespace)
            texts = [documents.dump(obj) for obj in group.objects]
            writer.put_object(name, documents.stream(texts))
            for obj, text in zip(group.objects, texts, strict=True):
                meta = obj["metadata"]
                entries.append({
                    "api_version": obj["apiVersion"], "kind": obj["kind"],
                    "namespace": meta.get("namespace", group.namespace), "name": meta["name"],
                    "object": name,
                    "sha256": None if obj["kind"] == "Secret" else documents.sha256(text),
                })
                counts[obj["kind"]] = counts.get(obj["kind"], 0) + 1
        summary = {
            "namespaces": list(options.namespaces),
            "kinds": [kind.name for kind in wanted],
            "label_selector": options.label_selector,
            "object_count": len(entries),
            "counts": dict(sorted(counts.items())),
            "skipped": sum(group.skipped for group in exported),
            "objects": entries,
        }
        manifest = writer.commit(
            databases=list(options.namespaces), server_version=_server_version(client),
            tools={"tonebridge-dr": tonebridge_dr.__version__},
            extra={"kubernetes": summary},
        )
    log.info("backup %s: %d objects of %d namespaces", manifest.id, len(entries),
             len(options.namespaces))
    result = manifest.result()
    result["kubernetes"] = {key: value for key, value in summary.items() if key != "objects"}
    if options.git is not None:
        shared = [obj for group in exported for obj in group.objects if obj["kind"] != "Secret"]
        try:
            result["git"] = gitcopy.push(options.git, shared, options.namespaces, manifest.id)
        except errors.DRError as exc:
            raise errors.ToolError(
                f"backup {manifest.id} is stored in the repository, but its Git copy failed: "
                f"{exc}"
            ) from None
    return result


def _server_version(client: Client) -> str | None:
    try:
        return str(client.request("GET", "/version").get("gitVersion") or "") or None
    except (ApiError, errors.DRError):
        return None
