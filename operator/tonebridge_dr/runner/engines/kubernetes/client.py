"""A small JSON client for the Kubernetes API, as the runner needs it.

Inside a Job it uses the pod's ServiceAccount token (in-cluster configuration); on a
workstation a kubeconfig (`--kubeconfig`, $KUBECONFIG or ~/.kube/config). Objects stay
plain dicts: no model conversion (1,000 ConfigMaps decode in milliseconds).

Errors become runner errors: an unreachable API server is SourceError (exit 9),
401 / 403 AuthenticationError (exit 10, the message says Forbidden and what was
refused), anything else `ApiError` for the caller to judge (a restore counts it as
one failed object). Messages carry the API server's words, never a token.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import kubernetes
import urllib3

from tonebridge_dr.runner import errors

log = logging.getLogger(__name__)

Json = dict[str, Any]
FIELD_MANAGER = "tonebridge-dr"
REQUEST_TIMEOUT = 60.0
PAGE_SIZE = 500


class ApiError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, reason: str, message: str, details: Json | None = None):
        super().__init__(f"{reason}: {message}" if reason else message)
        self.status = status
        self.reason = reason
        self.message = message
        self.details = details or {}

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def invalid(self) -> bool:
        return self.status == 422

    @property
    def conflict(self) -> bool:
        return self.status == 409


class Client:
    """JSON requests against one API server."""

    def __init__(self, api: kubernetes.client.ApiClient) -> None:
        self.api = api

    @classmethod
    def connect(cls, kubeconfig: str | None = None) -> Client:
        """The kubeconfig when given; else in-cluster credentials when in a pod, else the
        default kubeconfig ($KUBECONFIG or ~/.kube/config)."""
        configuration = kubernetes.client.Configuration()
        try:
            if kubeconfig is not None:
                raise kubernetes.config.ConfigException("explicit kubeconfig")
            kubernetes.config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
        except kubernetes.config.ConfigException:
            try:
                kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
                    config_file=kubeconfig, client_configuration=configuration
                )
            except (kubernetes.config.ConfigException, OSError) as exc:
                raise errors.UsageError(
                    "no Kubernetes credentials: not in a pod with a ServiceAccount token, and "
                    f"no usable kubeconfig ({exc}); pass --kubeconfig FILE"
                ) from None
        return cls(kubernetes.client.ApiClient(configuration))

    def close(self) -> None:
        self.api.close()  # type: ignore[no-untyped-call]

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> Json:
        """One request; the decoded JSON answer. Raises ApiError for an error status,
        AuthenticationError for 401/403, SourceError when the server cannot be reached."""
        params = [(k, v) for k, v in (query or {}).items() if v is not None]
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        serialized = self.api.param_serialize(
            method, path, query_params=params, header_params=headers, body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self.api.call_api(*serialized, _request_timeout=REQUEST_TIMEOUT)
            data = response.read()  # type: ignore[no-untyped-call]
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise errors.SourceError(
                f"Kubernetes API server unreachable ({type(exc).__name__})"
            ) from None
        try:
            decoded = json.loads(data) if data else {}
        except ValueError:
            decoded = {}
        if not isinstance(decoded, dict):
            decoded = {}
        if 200 <= response.status <= 299:
            return decoded
        reason = str(decoded.get("reason") or response.reason or "Error")
        message = str(decoded.get("message") or f"{method} {path} failed")
        if response.status in (401, 403):
            raise errors.AuthenticationError(f"the Kubernetes API server said {reason}: {message}")
        raise ApiError(response.status, reason, message, decoded.get("details"))

    def get(self, path: str) -> Json | None:
        """The object at `path`, None when it does not exist."""
        try:
            return self.request("GET", path)
        except ApiError as exc:
            if exc.not_found:
                return None
            raise

    def list_pages(
        self, path: str, *, label_selector: str | None = None, limit: int = PAGE_SIZE
    ) -> Iterator[Json]:
        """Every item of the collection at `path`, `limit` per request (continue tokens)."""
        token: str | None = None
        while True:
            answer = self.request(
                "GET", path,
                query={"labelSelector": label_selector, "limit": limit, "continue": token},
            )
            yield from answer.get("items") or []
            token = (answer.get("metadata") or {}).get("continue") or None
            if not token:
                return

    def apply(self, path: str, obj: Json, *, force: bool, dry_run: bool = False) -> Json:
        """Server-side apply of `obj` at its object path, as FIELD_MANAGER."""
        return self.request(
            "PATCH", path, body=obj, content_type="application/apply-patch+yaml",
            query={"fieldManager": FIELD_MANAGER, "force": "true" if force else None,
                   "dryRun": "All" if dry_run else None},
        )

    def replace(self, path: str, obj: Json, *, dry_run: bool = False) -> Json:
        """PUT `obj` over the live object (its metadata.resourceVersion guards the race),
        as FIELD_MANAGER: every field not in `obj` is gone afterwards."""
        return self.request(
            "PUT", path, body=obj,
            query={"fieldManager": FIELD_MANAGER, "dryRun": "All" if dry_run else None},
        )

    def delete(self, path: str, *, uid: str | None = None) -> None:
        """Delete (foreground: dependents go first), only that incarnation when `uid`."""
        body: Json = {"apiVersion": "v1", "kind": "DeleteOptions",
                      "propagationPolicy": "Foreground"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            self.request("DELETE", path, body=body)
        except ApiError as exc:
            if not exc.not_found:
                raise
