"""The one module that talks to the Kubernetes API server (besides kopf's own watching).

Plain dicts in, plain dicts out: requests go through the official client's
transport (`kubernetes.client.ApiClient`: kubeconfig / in-cluster auth, TLS,
connection pool) but skip its model classes, because builders and status
functions work on dicts and the models cost memory and CPU per object.

Every method is synchronous and thread-safe (kopf runs synchronous handlers in
a thread pool). Failures raise `ApiError` with the server's one-line message;
`ApiError.transient` says whether a retry may help. Secret values never appear
in anything this module logs or raises: `secret_data` returns them to the caller
only.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import logging
import os
import secrets as pysecrets
import socket
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import kubernetes.client
import kubernetes.config
import urllib3.exceptions

log = logging.getLogger(__name__)

Json = dict[str, Any]

FIELD_MANAGER = "tonebridge-dr"
REQUEST_TIMEOUT = 30.0
EVENT_COMPONENT = "tonebridge-dr"
#: Read-modify-write rounds of `write_status` before giving up on a busy object.
STATUS_ATTEMPTS = 8
_TRANSIENT = frozenset({0, 409, 429, 500, 502, 503, 504})


class ApiError(Exception):
    """The API server refused a request (or could not be reached: status 0)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def already_exists(self) -> bool:
        return self.status == 409 and self.reason == "AlreadyExists"

    @property
    def conflict(self) -> bool:
        """A resourceVersion precondition failed (someone else wrote first)."""
        return self.status == 409 and self.reason != "AlreadyExists"

    @property
    def transient(self) -> bool:
        return self.status in _TRANSIENT

    def __str__(self) -> str:
        return f"{self.message} ({self.status} {self.reason})" if self.status else self.message


@dataclasses.dataclass(frozen=True)
class Kind:
    """Where a kind lives in the API."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool = True

    def collection(self, namespace: str | None) -> str:
        group_version = self.api_version
        root = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        if self.namespaced and namespace:
            return f"{root}/namespaces/{namespace}/{self.plural}"
        return f"{root}/{self.plural}"

    def path(self, namespace: str | None, name: str) -> str:
        return f"{self.collection(namespace)}/{urllib.parse.quote(name, safe='')}"


SECRET = Kind("v1", "Secret", "secrets")
POD = Kind("v1", "Pod", "pods")
EVENT = Kind("v1", "Event", "events")
JOB = Kind("batch/v1", "Job", "jobs")
CRONJOB = Kind("batch/v1", "CronJob", "cronjobs")
DEPLOYMENT = Kind("apps/v1", "Deployment", "deployments")
# What RestoreRequests create or check: the volume, the optional instance, the restore
# ServiceAccount.
PERSISTENT_VOLUME_CLAIM = Kind("v1", "PersistentVolumeClaim", "persistentvolumeclaims")
STATEFULSET = Kind("apps/v1", "StatefulSet", "statefulsets")
SERVICE = Kind("v1", "Service", "services")
SERVICE_ACCOUNT = Kind("v1", "ServiceAccount", "serviceaccounts")
# What FailoverPlan steps switch, restart and watch.
DAEMONSET = Kind("apps/v1", "DaemonSet", "daemonsets")
REPLICASET = Kind("apps/v1", "ReplicaSet", "replicasets")
ENDPOINT_SLICE = Kind("discovery.k8s.io/v1", "EndpointSlice", "endpointslices")

_KINDS: dict[tuple[str, str], Kind] = {
    (k.api_version, k.kind): k
    for k in (
        SECRET, POD, EVENT, JOB, CRONJOB, DEPLOYMENT,
        PERSISTENT_VOLUME_CLAIM, STATEFULSET, SERVICE, SERVICE_ACCOUNT,
        DAEMONSET, REPLICASET, ENDPOINT_SLICE,
    )
}


def register_kind(kind: Kind) -> Kind:
    """Make `kind` known to `kind_of` (used for the custom resources)."""
    _KINDS[(kind.api_version, kind.kind)] = kind
    return kind


def kind_of(obj: Mapping[str, Any]) -> Kind:
    key = (str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
    try:
        return _KINDS[key]
    except KeyError:
        raise ValueError(f"unknown kind {key[0]}/{key[1]}") from None


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Kube:
    """A small JSON client over one `kubernetes.client.ApiClient`."""

    def __init__(self, api: kubernetes.client.ApiClient, *, field_manager: str = FIELD_MANAGER):
        self.api = api
        self.field_manager = field_manager
        self.instance = os.environ.get("POD_NAME") or socket.gethostname()

    @classmethod
    def connect(cls, kubeconfig: str | None = None, pool_size: int = 16) -> Kube:
        """In-cluster credentials when running in a pod, else the kubeconfig
        (`kubeconfig`, $KUBECONFIG or ~/.kube/config)."""
        configuration = kubernetes.client.Configuration()
        try:
            if kubeconfig is not None:
                raise kubernetes.config.ConfigException("explicit kubeconfig")
            kubernetes.config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, client_configuration=configuration
            )
        configuration.connection_pool_maxsize = pool_size
        return cls(kubernetes.client.ApiClient(configuration))

    def close(self) -> None:
        self.api.close()  # type: ignore[no-untyped-call]

    # --- transport -------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
        timeout: float = REQUEST_TIMEOUT,
    ) -> Json:
        """One API request; returns the decoded JSON answer (an empty dict for none)."""
        params = [(k, v) for k, v in (query or {}).items() if v is not None]
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        serialized = self.api.param_serialize(
            method,
            path,
            query_params=params,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self.api.call_api(*serialized, _request_timeout=timeout)
            data = response.read()  # type: ignore[no-untyped-call]
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ApiError(
                0, "Unavailable", f"API server unreachable: {type(exc).__name__}"
            ) from None
        try:
            decoded = json.loads(data) if data else {}
        except ValueError:
            decoded = {}
        if not 200 <= response.status <= 299:
            message = decoded.get("message") if isinstance(decoded, dict) else None
            reason = decoded.get("reason") if isinstance(decoded, dict) else None
            raise ApiError(
                response.status,
                str(reason or response.reason or "Error"),
                str(message or f"{method} {path} failed"),
            )
        return decoded if isinstance(decoded, dict) else {}

    # --- reads -----------------------------------------------------------------------
    def get(self, kind: Kind, namespace: str | None, name: str) -> Json:
        return self.request("GET", kind.path(namespace, name))

    def get_or_none(self, kind: Kind, namespace: str | None, name: str) -> Json | None:
        try:
            return self.get(kind, namespace, name)
        except ApiError as exc:
            if exc.not_found:
                return None
            raise

    def list(
        self,
        kind: Kind,
        namespace: str | None,
        *,
        label_selector: str | None = None,
        limit: int = 500,
    ) -> list[Json]:
        """Every object of `kind` (paged), optionally filtered by a label selector."""
        return list(self.iter_list(kind, namespace, label_selector=label_selector, limit=limit))

    def iter_list(
        self,
        kind: Kind,
        namespace: str | None,
        *,
        label_selector: str | None = None,
        limit: int = 500,
    ) -> Iterator[Json]:
        token: str | None = None
        while True:
            answer = self.request(
                "GET",
                kind.collection(namespace),
                query={"labelSelector": label_selector, "limit": limit, "continue": token},
            )
            for item in answer.get("items") or []:
                item.setdefault("apiVersion", kind.api_version)
                item.setdefault("kind", kind.kind)
                yield item
            token = (answer.get("metadata") or {}).get("continue") or None
            if not token:
                return

    def secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """Decoded values of a Secret, or None when it does not exist. Never log them."""
        secret = self.get_or_none(SECRET, namespace, name)
        if secret is None:
            return None
        return {
            key: base64.b64decode(value).decode("utf-8", "replace")
            for key, value in (secret.get("data") or {}).items()
        }

    # --- writes ----------------------------------------------------------------------
    def apply(
        self,
        obj: Mapping[str, Any],
        *,
        field_manager: str | None = None,
        dry_run: bool = False,
    ) -> Json:
        """Server-side apply of `obj` as this operator's field manager, or `field_manager`
        (force: the operator owns these fields). Idempotent; an unchanged object is not
        written. `dry_run`: the server validates and answers with the object as it would
        be (dryRun=All), and stores nothing."""
        kind = kind_of(obj)
        metadata = obj["metadata"]
        return self.request(
            "PATCH",
            kind.path(metadata.get("namespace"), metadata["name"]),
            body=dict(obj),
            query={
                "fieldManager": field_manager or self.field_manager,
                "force": "true",
                "dryRun": "All" if dry_run else None,
            },
            content_type="application/apply-patch+yaml",
        )

    def create(self, obj: Mapping[str, Any]) -> Json:
        """POST; raises ApiError with `.already_exists` when the name is taken."""
        kind = kind_of(obj)
        return self.request(
            "POST",
            kind.collection(obj["metadata"].get("namespace")),
            body=dict(obj),
            query={"fieldManager": self.field_manager},
        )

    def merge_patch(
        self, kind: Kind, namespace: str | None, name: str, patch: Mapping[str, Any]
    ) -> Json:
        return self.request(
            "PATCH",
            kind.path(namespace, name),
            body=dict(patch),
            query={"fieldManager": self.field_manager},
            content_type="application/merge-patch+json",
        )

    def replace_status(self, kind: Kind, obj: Mapping[str, Any]) -> Json:
        """PUT the object's status subresource. The object's resourceVersion is the
        precondition: ApiError with `.conflict` when someone wrote in between."""
        metadata = obj["metadata"]
        return self.request(
            "PUT",
            kind.path(metadata.get("namespace"), metadata["name"]) + "/status",
            body=dict(obj),
            query={"fieldManager": self.field_manager},
        )

    def write_status(
        self,
        kind: Kind,
        namespace: str,
        name: str,
        compute: Callable[[Json], Json | None],
        *,
        body: Json | None = None,
        attempts: int = STATUS_ATTEMPTS,
    ) -> Json | None:
        """Read-modify-write of the status with the resourceVersion as precondition.

        `compute(current_body)` returns the status to store, or None to leave it. It may
        run several times: on a conflict the object is read again and `compute` sees the
        newer body. Returns the body that is current after the call, or None when the
        object is gone. `body` (a plain copy) saves the first read.
        """
        current = body
        for _attempt in range(attempts):
            if current is None:
                current = self.get_or_none(kind, namespace, name)
                if current is None:
                    return None
            status = compute(current)
            if status is None:
                return current
            candidate = dict(current)
            candidate["status"] = status
            try:
                return self.replace_status(kind, candidate)
            except ApiError as exc:
                if exc.not_found:
                    return None
                if not exc.conflict:
                    raise
                current = None  # someone else wrote: read again and redo the change
        raise ApiError(409, "Conflict", f"status of {namespace}/{name} kept changing")

    def delete(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        *,
        uid: str | None = None,
        propagation: str = "Background",
    ) -> bool:
        """Delete (dependents in the background); False when it was already gone.
        With `uid`, only that incarnation of the name is deleted."""
        body: Json = {"apiVersion": "v1", "kind": "DeleteOptions",
                      "propagationPolicy": propagation}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            self.request("DELETE", kind.path(namespace, name), body=body)
        except ApiError as exc:
            if exc.not_found or (exc.status == 409 and uid):
                return False
            raise
        return True

    def post_event(
        self,
        involved: Mapping[str, Any],
        *,
        type: str,
        reason: str,
        message: str,
    ) -> None:
        """Record a core/v1 Event on `involved` (a whole object or a reference with
        apiVersion, kind, metadata). Best effort: a failure is logged, not raised."""
        metadata = involved.get("metadata") or {}
        namespace = metadata.get("namespace") or "default"
        name = metadata.get("name", "")
        now = _now()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{name}.{pysecrets.token_hex(8)}",
                "namespace": namespace,
            },
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"),
                "kind": involved.get("kind"),
                "name": name,
                "namespace": namespace,
                "uid": metadata.get("uid"),
                "resourceVersion": metadata.get("resourceVersion"),
            },
            "type": type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": EVENT_COMPONENT},
            "reportingComponent": EVENT_COMPONENT,
            "reportingInstance": self.instance[:128],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.request("POST", EVENT.collection(namespace), body=event)
        except ApiError as exc:
            log.warning("could not record event %s on %s/%s: %s", reason, namespace, name, exc)
