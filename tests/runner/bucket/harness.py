"""Shared helpers of the bucket engine tests: source buckets on moto, a counting storage."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from tests.fixtures import s3 as s3_fixtures
from tonebridge_dr.runner.engines.bucket import content, endpoint
from tonebridge_dr.runner.repository.catalog import Repository
from tonebridge_dr.runner.storage import open_storage
from tonebridge_dr.runner.storage.base import ObjectInfo, Storage
from tonebridge_dr.runner.storage.s3 import S3Storage


class Counting(Storage):
    """A Storage that counts the content objects written through it (our own wrapper: the
    real backend underneath does the work). `before_sweep_list` runs once before the first
    listing of objects/ (a hook to start something concurrently)."""

    def __init__(self, inner: Storage) -> None:
        super().__init__(inner.url)
        self.inner = inner
        self.content_puts: list[str] = []
        self.lock = threading.Lock()
        self.before_content_list: Callable[[], None] | None = None

    def put_stream(self, key: str, chunks: Iterable[bytes], *,
                   storage_class: str | None = None) -> int:
        written = self.inner.put_stream(key, chunks, storage_class=storage_class)
        if key.startswith(content.PREFIX):
            with self.lock:
                self.content_puts.append(key)
        return written

    def get_stream(self, key: str) -> Iterator[bytes]:
        return self.inner.get_stream(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def list_after(self, prefix: str = "", start_after: str = "",
                   limit: int | None = None) -> Iterator[ObjectInfo]:
        if prefix == content.PREFIX and self.before_content_list is not None:
            hook, self.before_content_list = self.before_content_list, None
            hook()
        return self.inner.list_after(prefix, start_after, limit)

    def head(self, key: str) -> ObjectInfo | None:
        return self.inner.head(key)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def delete_many(self, keys: Iterable[str]) -> int:
        return self.inner.delete_many(keys)

    def put_marker(self, key: str, data: bytes) -> None:
        self.inner.put_marker(key, data)

    def retained_until(self, keys: Iterable[str]) -> dict[str, Any]:
        return self.inner.retained_until(keys)


def counting_repo(url: str) -> tuple[Repository, Counting]:
    storage = Counting(open_storage(url))
    return Repository(storage), storage


def source(url: str) -> S3Storage:
    return endpoint.open_bucket(url, "--source")


def body(n: int, size: int) -> bytes:
    """Deterministic, distinct-per-n bytes of `size`."""
    seed = hashlib.sha256(str(n).encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def fill(client: Any, bucket: str, objects: dict[str, tuple[bytes, str, dict[str, str]]]) -> None:
    for key, (data, content_type, metadata) in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type,
                          Metadata=metadata)


def state(client: Any, bucket: str, prefix: str = "") -> dict[str, tuple[bytes, str, dict]]:
    """Every object under `prefix`: key (without prefix) -> (bytes, content type, metadata)."""
    found = {}
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", ()):
            answer = client.get_object(Bucket=bucket, Key=item["Key"])
            found[item["Key"][len(prefix):]] = (
                answer["Body"].read(), answer["ContentType"], answer["Metadata"])
    return found


def stored_contents(client: Any, bucket: str, repo_prefix: str) -> dict[str, Any]:
    """objects/ of a repository: key -> LastModified."""
    found = {}
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=f"{repo_prefix}/objects/"):
        for item in page.get("Contents", ()):
            found[item["Key"][len(repo_prefix) + 1:]] = item["LastModified"]
    return found


def address(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


new_bucket = s3_fixtures.new_bucket
