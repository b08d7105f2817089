"""A small, thread-safe JSON client for the sandbox's own API server.

The sandbox talks to exactly one API server with certificates it generated, and
works with plain dicts (camelCase, as in the manifests), so a few verbs over
urllib3 are clearer than the generated client's models.
"""

from __future__ import annotations

import contextlib
import json
import ssl
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import urllib3

Json = dict[str, Any]

_PATCH_TYPES = {
    "merge": "application/merge-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "json": "application/json-patch+json",
    "apply": "application/apply-patch+yaml",
}


class ApiError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, body: Json | str, method: str, path: str) -> None:
        self.status = status
        self.body = body
        message = body.get("message", "") if isinstance(body, dict) else body
        self.reason = body.get("reason", "") if isinstance(body, dict) else ""
        super().__init__(f"{method} {path}: HTTP {status}: {message}")


class Kube:
    """JSON verbs against one API server, authenticated with a client certificate."""

    def __init__(
        self,
        server: str,
        *,
        ca_cert: Path,
        client_cert: Path,
        client_key: Path,
        pool_size: int = 32,
    ) -> None:
        self.server = server.rstrip("/")
        context = ssl.create_default_context(cafile=str(ca_cert))
        context.load_cert_chain(str(client_cert), str(client_key))
        self._http = urllib3.PoolManager(
            num_pools=2, maxsize=pool_size, ssl_context=context, retries=False
        )
        self._watches: set[urllib3.BaseHTTPResponse] = set()
        self._closed = False

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int | bool] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> Json:
        url = self.server + path
        if query:
            url += "?" + urlencode({k: _query_value(v) for k, v in query.items()})
        headers = {"Accept": "application/json"}
        data: bytes | None = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = self._http.request(
            method, url, body=data, headers=headers, timeout=timeout, redirect=False
        )
        payload: Any
        try:
            payload = json.loads(response.data) if response.data else {}
        except ValueError:
            payload = response.data.decode("utf-8", "replace")
        if response.status >= 400:
            raise ApiError(response.status, payload, method, path)
        return payload if isinstance(payload, dict) else {"raw": payload}

    def get(self, path: str, **query: str | int | bool) -> Json:
        return self.request("GET", path, query=query)

    def create(self, path: str, body: Json, **query: str | int | bool) -> Json:
        return self.request("POST", path, body=body, query=query)

    def replace(self, path: str, body: Json) -> Json:
        return self.request("PUT", path, body=body)

    def patch(
        self, path: str, body: Any, patch_type: str = "merge", **query: str | int | bool
    ) -> Json:
        data = body if patch_type != "apply" else json.dumps(body).encode()
        return self.request(
            "PATCH", path, body=data, query=query, content_type=_PATCH_TYPES[patch_type]
        )

    def delete(self, path: str, body: Json | None = None, **query: str | int | bool) -> Json:
        return self.request("DELETE", path, body=body, query=query)

    def watch(
        self, path: str, resource_version: str, timeout_seconds: int = 60, **query: str
    ) -> Iterator[Json]:
        """Watch events ({"type", "object"}) from `resource_version` until the server
        ends the watch (after about `timeout_seconds`). Bookmarks are requested."""
        params: dict[str, str | int | bool] = dict(query)
        params.update(
            watch=1,
            resourceVersion=resource_version,
            timeoutSeconds=timeout_seconds,
            allowWatchBookmarks=True,
        )
        url = self.server + path + "?" + urlencode({k: _query_value(v) for k, v in params.items()})
        response = self._http.request(
            "GET",
            url,
            headers={"Accept": "application/json"},
            preload_content=False,
            timeout=urllib3.Timeout(connect=10, read=timeout_seconds + 30),
        )
        self._watches.add(response)
        try:
            if self._closed:
                return
            if response.status >= 400:
                raw = response.read()
                try:
                    body: Json | str = json.loads(raw)
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                raise ApiError(response.status, body, "WATCH", path)
            buffer = b""
            for chunk in response.stream(65536, decode_content=True):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            self._watches.discard(response)
            response.release_conn()

    def close(self) -> None:
        """End open watches (their iterators stop) and close pooled connections."""
        self._closed = True
        for response in list(self._watches):
            with contextlib.suppress(Exception):
                response.shutdown()
        self._http.clear()


def _query_value(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def is_not_found(error: BaseException) -> bool:
    return isinstance(error, ApiError) and error.status == 404


def is_conflict(error: BaseException) -> bool:
    return isinstance(error, ApiError) and error.status == 409
