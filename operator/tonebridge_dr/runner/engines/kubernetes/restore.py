"""`restore kubernetes`: the objects of an export, applied server-side in dependency order.

What a restore does, object by object (in `kinds` restore order: ServiceAccounts, RBAC,
ConfigMaps, Secrets, claims, Services, custom resources, workloads, then HPAs and
Ingresses), after creating the target namespaces that do not exist:

* `missing` (default): an object that exists is left exactly as it is (`skipped`);
  one that does not is created by server-side apply (`created`).
* `replace`: the live object becomes the backup's: an update (PUT, field manager
  `tonebridge-dr`, guarded by the live resourceVersion) that keeps only what the
  cluster assigned (a Service's clusterIP(s) and healthCheckNodePort, a claim's
  volumeName, finalizers) and drops fields others added since (`updated`, or
  `unchanged` when nothing moved). Server-side apply alone would merge: a port or a
  data key someone added would survive, or make the object invalid (two unnamed
  Service ports). When the API server refuses because a field is immutable (a
  Deployment's selector, a Job's template, a claim's storage class), the live object is
  deleted (that incarnation only) and created again by apply (`recreated`). Only
  `replace` ever deletes.

Namespace mapping (`a=b`) moves objects of `a` into `b`, and rewrites RoleBinding
subjects that name ServiceAccounts of `a`. ownerReferences kept by the export get the
uid of the owner this restore applied (or are dropped when the owner was not restored).

`dry_run`: the same requests with `dryRun=All` (the API server validates, admission
runs, nothing is stored); for objects that would change, `changes` lists the top-level
fields that differ. Objects in a namespace that does not exist yet are counted as
`created` without asking the server (the namespace cannot be dry-run into existence).

The result (the Job's termination message) holds counts and the first failures only;
objects that failed make the run exit 19 (ObjectsNotRestored) after every object was
tried. Secret values never appear in results or logs: failures name kind and name only,
plus the API server's message.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.kubernetes import documents, export, kinds
from tonebridge_dr.runner.engines.kubernetes.client import ApiError, Client
from tonebridge_dr.runner.repository import manifest as manifests
from tonebridge_dr.runner.repository.catalog import Repository

log = logging.getLogger(__name__)

Json = dict[str, Any]
MODES = ("missing", "replace")
MAX_FAILURES = 10
#: Objects of one restore-order step applied at once: the API server handles concurrent
#: writes, and a namespace of 1,000 ConfigMaps is round-trip bound otherwise.
WORKERS = 8
MAX_CHANGES = 20
DELETE_WAIT = 120.0
_IGNORED_FOR_DIFF = frozenset({"status"})
_IGNORED_METADATA = frozenset({"managedFields", "resourceVersion", "generation", "uid",
                               "creationTimestamp", "selfLink"})


@dataclasses.dataclass(frozen=True)
class RestoreOptions:
    namespace_map: Mapping[str, str] = dataclasses.field(default_factory=dict)
    into: str | None = None  # every namespace into this one
    kinds: tuple[str, ...] = ()  # plural names or Kinds (any case); empty: all
    names: tuple[str, ...] = ()  # object names; empty: all
    namespaces: tuple[str, ...] = ()  # source namespaces; empty: all
    mode: str = "missing"
    dry_run: bool = False


@dataclasses.dataclass
class Tally:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    recreated: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list[Json] = dataclasses.field(default_factory=list)
    changes: list[str] = dataclasses.field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {"created": self.created, "updated": self.updated, "unchanged": self.unchanged,
                "recreated": self.recreated, "skipped": self.skipped, "failed": self.failed}


def parse_namespace_map(items: Iterable[str]) -> dict[str, str]:
    """`a=b` pairs -> {a: b}; UsageError for anything else."""
    mapping: dict[str, str] = {}
    for item in items:
        source, sep, target = item.partition("=")
        if not sep or not source or not target:
            raise errors.UsageError(f"--namespace-map {item!r}: write SOURCE=TARGET")
        mapping[source] = target
    return mapping


def load(repo: Repository, backup_id: str, decrypt_key: Path | None) -> tuple[
        manifests.Manifest, list[Json]]:
    """The manifest and every object of a kubernetes backup (verified while read)."""
    if backup_id == "latest":
        manifest = repo.latest(engine=export.ENGINE)
        if manifest is None:
            raise errors.BackupNotFound(f"no complete kubernetes backup in {repo.url}")
    else:
        manifest = repo.get(backup_id)
    if manifest.engine != export.ENGINE:
        raise errors.BackupNotFound(
            f"backup {manifest.id} is a {manifest.engine} backup, not a kubernetes export"
        )
    objects: list[Json] = []
    for entry in manifest.objects:
        data = b"".join(repo.read_object(manifest, entry.name, decrypt_key=decrypt_key))
        objects.extend(documents.load_all(data))
    return manifest, objects


def _wanted(obj: Json, options: RestoreOptions) -> bool:
    meta = obj.get("metadata") or {}
    if options.namespaces and meta.get("namespace") not in options.namespaces:
        return False
    if options.names and meta.get("name") not in options.names:
        return False
    if options.kinds:
        kind = str(obj.get("kind", "")).lower()
        plural = next((k.plural for k in kinds.BUILTIN.values() if k.kind.lower() == kind), "")
        group = kinds.group_of(str(obj.get("apiVersion", "")))
        names = {kind, plural, f"{group}/{kind}"}
        if not names & {k.lower() for k in options.kinds}:
            return False
    return True


def _retarget(obj: Json, mapping: Mapping[str, str]) -> Json:
    meta = obj["metadata"]
    source = meta.get("namespace", "")
    meta["namespace"] = mapping.get(source, source)
    if obj.get("kind") == "RoleBinding":
        for subject in obj.get("subjects") or []:
            if subject.get("kind") == "ServiceAccount" and subject.get("namespace") in mapping:
                subject["namespace"] = mapping[subject["namespace"]]
    return obj


class _Restorer:
    def __init__(self, client: Client, options: RestoreOptions) -> None:
        self.client = client
        self.options = options
        self.tally = Tally()
        self.uids: dict[tuple[str, str, str], str] = {}  # (namespace, kind, name) -> uid
        self.kinds: dict[tuple[str, str], kinds.Kind] = kinds.by_kind(kinds.BUILTIN.values())
        self.missing_namespaces: set[str] = set()
        self.lock = threading.Lock()
        self.live: dict[tuple[str, str], dict[str, Json] | None] = {}  # (namespace, path)

    def count(self, field: str, change: str | None = None) -> None:
        with self.lock:
            setattr(self.tally, field, getattr(self.tally, field) + 1)
            if change is not None and len(self.tally.changes) < MAX_CHANGES:
                self.tally.changes.append(change)

    def prefetch(self, objs: list[Json]) -> None:
        """One paged LIST per kind and namespace instead of a GET per object (a LIST the
        identity may not make falls back to GETs)."""
        for obj in objs:
            namespace = obj["metadata"]["namespace"]
            if namespace in self.missing_namespaces:
                continue
            try:
                collection = self.kind_of(obj).path(namespace)
            except (ApiError, errors.DRError):
                continue  # reported per object
            if (namespace, collection) in self.live:
                continue
            kind = self.kind_of(obj)
            try:
                items = {str(item["metadata"]["name"]): {**item, "apiVersion": kind.api_version,
                                                         "kind": kind.kind}
                         for item in self.client.list_pages(collection)}
            except (ApiError, errors.AuthenticationError):
                items = None
            self.live[(namespace, collection)] = items

    def current(self, kind: kinds.Kind, namespace: str, name: str) -> Json | None:
        items = self.live.get((namespace, kind.path(namespace)))
        if items is None:
            return self.client.get(kind.path(namespace, name))
        return items.get(name)

    def kind_of(self, obj: Json) -> kinds.Kind:
        key = (kinds.group_of(str(obj["apiVersion"])), str(obj["kind"]))
        if key not in self.kinds:
            self.kinds[key] = export.discover(self.client, f"{key[0]}/{key[1]}")
        return self.kinds[key]

    def ensure_namespaces(self, namespaces: Iterable[str]) -> None:
        for namespace in sorted(set(namespaces)):
            try:
                if self.client.get(f"/api/v1/namespaces/{namespace}") is not None:
                    continue
            except errors.AuthenticationError:
                # A restore identity bound per namespace cannot read Namespace objects
                # (cluster-scoped): go on; objects of a missing namespace fail one by one.
                log.info("may not read namespace %s; assuming it exists", namespace)
                continue
            if self.options.dry_run:
                self.missing_namespaces.add(namespace)
                continue
            log.info("creating namespace %s", namespace)
            try:
                self.client.request("POST", "/api/v1/namespaces", body={
                    "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
            except ApiError as exc:
                if not exc.conflict:
                    raise errors.SourceError(
                        f"cannot create namespace {namespace}: {exc}"
                    ) from None

    def _owners(self, obj: Json) -> None:
        meta = obj["metadata"]
        owners = []
        for ref in meta.get("ownerReferences") or []:
            uid = self.uids.get((meta["namespace"], str(ref.get("kind")), str(ref.get("name"))))
            if uid:
                owners.append({**ref, "uid": uid})
        if owners:
            meta["ownerReferences"] = owners
        else:
            meta.pop("ownerReferences", None)

    def restore(self, obj: Json) -> None:
        meta = obj["metadata"]
        label = f"{obj['kind']} {meta['namespace']}/{meta['name']}"
        try:
            kind = self.kind_of(obj)
            self._owners(obj)
            path = kind.path(meta["namespace"], meta["name"])
            if meta["namespace"] in self.missing_namespaces:
                self.count("created", f"+ {label}")
                return
            live = self.current(kind, meta["namespace"], meta["name"])
            if live is not None and self.options.mode == "missing":
                self.count("skipped")
                self._remember(live)
                return
            self._apply(obj, path, live, label)
        except (ApiError, errors.AuthenticationError, errors.UsageError) as exc:
            message = " ".join(str(exc).split())[:300]
            log.warning("%s: %s", label, message)
            with self.lock:
                self.tally.failed += 1
                if len(self.tally.failures) < MAX_FAILURES:
                    self.tally.failures.append({
                        "kind": obj["kind"], "namespace": meta["namespace"],
                        "name": meta["name"], "error": message})

    def _apply(self, obj: Json, path: str, live: Json | None, label: str) -> None:
        dry = self.options.dry_run
        try:
            if live is None:
                applied = self.client.apply(path, obj, force=False, dry_run=dry)
            else:
                applied = self.client.replace(path, _over(live, obj), dry_run=dry)
        except ApiError as exc:
            if live is None or not _immutable(exc):
                raise
            log.info("%s: immutable field changed, deleting and creating it again", label)
            if not dry:
                self.client.delete(path, uid=(live.get("metadata") or {}).get("uid"))
                self._wait_gone(path)
                applied = self.client.apply(path, obj, force=True)
            self.count("recreated", f"-+ {label} (immutable: {exc.message[:120]})")
            if not dry:
                self._remember(applied)
            return
        self._remember(applied)
        if live is None:
            self.count("created", f"+ {label}")
            log.info("%s: created", label)
            return
        fields = _changed_fields(live, applied)
        if not fields and not dry:
            before = (live.get("metadata") or {}).get("resourceVersion")
            after = (applied.get("metadata") or {}).get("resourceVersion")
            fields = [] if before == after else ["metadata"]
        if fields:
            self.count("updated", f"~ {label}: {', '.join(fields)}")
        else:
            self.count("unchanged")

    def _wait_gone(self, path: str) -> None:
        deadline = time.monotonic() + DELETE_WAIT
        while self.client.get(path) is not None:
            if time.monotonic() > deadline:
                raise ApiError(409, "Conflict", f"{path} still exists {DELETE_WAIT:.0f} s after "
                               "its deletion (a finalizer?)")
            time.sleep(0.2)

    def _remember(self, obj: Json) -> None:
        meta = obj.get("metadata") or {}
        if meta.get("uid"):
            self.uids[(meta.get("namespace", ""), str(obj.get("kind")), meta["name"])] = meta["uid"]


_ASSIGNED_SPEC: dict[str, tuple[str, ...]] = {
    "Service": ("clusterIP", "clusterIPs", "healthCheckNodePort"),
    "PersistentVolumeClaim": ("volumeName",),
}
"""Fields the cluster assigned that a backup leaves out and a replace keeps."""


def _over(live: Mapping[str, Any], obj: Json) -> Json:
    """`obj` to PUT over `live`: the live resourceVersion, finalizers and assigned fields."""
    out = copy.deepcopy(obj)
    live_meta = live.get("metadata") or {}
    meta = out["metadata"]
    meta["resourceVersion"] = live_meta.get("resourceVersion")
    if live_meta.get("finalizers"):
        meta["finalizers"] = live_meta["finalizers"]
    live_spec = live.get("spec") or {}
    spec = out.get("spec")
    if isinstance(spec, dict):
        for field in _ASSIGNED_SPEC.get(str(obj.get("kind")), ()):
            if field in live_spec and field not in spec:
                spec[field] = live_spec[field]
    if obj.get("kind") == "ServiceAccount" and "secrets" not in out and live.get("secrets"):
        out["secrets"] = live["secrets"]
    return out


def _immutable(exc: ApiError) -> bool:
    return exc.invalid and ("immutable" in exc.message or "may not change" in exc.message)


def _strip(obj: Mapping[str, Any]) -> Json:
    out = {k: v for k, v in obj.items() if k not in _IGNORED_FOR_DIFF}
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in _IGNORED_METADATA}
    out["metadata"] = meta
    return out


def _changed_fields(live: Mapping[str, Any], applied: Mapping[str, Any]) -> list[str]:
    """Top-level fields (metadata.* and spec.* one level down) that differ."""
    before, after = _strip(live), _strip(applied)
    changed: list[str] = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict) and key in ("metadata", "spec"):
            changed += [f"{key}.{sub}" for sub in sorted(set(a) | set(b))
                        if a.get(sub) != b.get(sub)]
        else:
            changed.append(key)
    return changed


def restore(client: Client, repo: Repository, backup_id: str, options: RestoreOptions, *,
            decrypt_key: Path | None = None) -> dict[str, Any]:
    """Restore; the JSON result. Raises ObjectsNotRestored (with the result) when the API
    server refused some objects."""
    if options.mode not in MODES:
        raise errors.UsageError(f"--mode {options.mode}: one of {', '.join(MODES)}")
    started = time.monotonic()
    manifest, stored = load(repo, backup_id, decrypt_key)
    mapping = dict(options.namespace_map)
    if options.into:
        mapping = {str(o["metadata"].get("namespace", "")): options.into for o in stored}
    chosen = [_retarget(obj, mapping) for obj in stored if _wanted(obj, options)]
    restorer = _Restorer(client, options)
    restorer.ensure_namespaces(obj["metadata"]["namespace"] for obj in chosen)
    ordered = sorted(
        chosen,
        key=lambda o: (_order(restorer, o), o["metadata"]["namespace"], o["kind"],
                       o["metadata"]["name"]),
    )
    with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="apply") as pool:
        for _, step in itertools.groupby(ordered, key=lambda o: _order(restorer, o)):
            batch = list(step)
            restorer.prefetch(batch)
            list(pool.map(restorer.restore, batch))  # one order step after the other
    tally = restorer.tally
    result: dict[str, Any] = {
        "backup_id": manifest.id, "engine": export.ENGINE, "method": export.METHOD,
        "mode": options.mode, "dry_run": options.dry_run,
        "namespace_map": mapping, "objects": len(ordered),
        **tally.counts(), "duration_seconds": round(time.monotonic() - started, 3),
        "failures": tally.failures,
    }
    if options.dry_run:
        result["changes"] = tally.changes
    log.info("restore of %s: %s", manifest.id,
             ", ".join(f"{k} {v}" for k, v in tally.counts().items()))
    if tally.failed:
        raise errors.ObjectsNotRestored(
            f"{tally.failed} of {len(ordered)} objects were not restored (first: "
            f"{tally.failures[0]['kind']} {tally.failures[0]['namespace']}/"
            f"{tally.failures[0]['name']}: {tally.failures[0]['error'][:200]})",
            result=result,
        )
    return result


def _order(restorer: _Restorer, obj: Json) -> int:
    key = (kinds.group_of(str(obj["apiVersion"])), str(obj["kind"]))
    known = restorer.kinds.get(key)
    return known.order if known is not None else kinds.ORDER_CUSTOM

