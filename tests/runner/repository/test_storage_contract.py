"""One contract suite for every storage backend: local (file://) and S3 on moto.

The contract is the docstring of `tonebridge_dr.runner.storage.base`. S3-only
behaviour (multipart uploads and their abort, SSE, storage classes, endpoint
failures, error mapping) follows at the end.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from typing import Any

import botocore.exceptions
import pytest

from tests.fixtures import s3 as s3_fixtures
from tonebridge_dr.runner import errors
from tonebridge_dr.runner.storage import Storage, open_storage
from tonebridge_dr.runner.storage.s3 import S3Storage

PART = S3Storage.MIN_PART_SIZE


def _data(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


def _chunked(data: bytes, sizes: tuple[int, ...] = (1, 1000, 65536, 777777)) -> Iterator[bytes]:
    pos, i = 0, 0
    while pos < len(data):
        step = sizes[i % len(sizes)]
        yield data[pos : pos + step]
        pos += step
        i += 1


@pytest.fixture(params=["file", "s3"])
def repo_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_repo_url"))


@pytest.fixture
def storage(repo_url: str) -> Storage:
    store = open_storage(repo_url)
    if isinstance(store, S3Storage):
        store.part_size = PART  # the smallest S3 allows: multipart with little data
    return store


def _s3_client(store: S3Storage) -> Any:
    assert store.endpoint is not None
    return s3_fixtures.client(store.endpoint)


# -- the contract, for every backend --------------------------------------------------


@pytest.mark.parametrize(
    "size",
    [0, 1, 4096, PART, PART + 1, 2 * PART + 12345],
    ids=["empty", "one-byte", "small", "exactly-one-part", "one-part-plus-one", "three-parts"],
)
def test_put_get_round_trip(storage: Storage, size: int) -> None:
    data = _data(size)
    assert storage.put_stream("base/b1/data.zst", _chunked(data)) == size
    assert storage.get_bytes("base/b1/data.zst") == data
    info = storage.head("base/b1/data.zst")
    assert info is not None and info.size == size


def test_get_stream_yields_bounded_chunks(storage: Storage) -> None:
    data = _data(300_000)
    storage.put_bytes("k", data)
    storage.read_chunk_size = 65536
    chunks = list(storage.get_stream("k"))
    assert b"".join(chunks) == data
    assert len(chunks) > 1 and all(len(c) <= 65536 for c in chunks)


def test_put_replaces_existing_object(storage: Storage) -> None:
    storage.put_bytes("manifest.json", b"old")
    storage.put_bytes("manifest.json", b"new content")
    assert storage.get_bytes("manifest.json") == b"new content"


def test_put_is_atomic_for_readers(storage: Storage) -> None:
    """While a put is in flight (even past its first part), readers see nothing new."""
    storage.put_bytes("replaced", b"previous")
    seen: list[tuple[object, list[str], bytes]] = []

    def chunks(key: str) -> Iterator[bytes]:
        yield _data(PART + 100, seed=1)  # forces a part to be uploaded on S3
        yield b"x" * 10
        seen.append(
            (storage.head(key), [i.key for i in storage.list("")], storage.get_bytes("replaced"))
        )
        yield b"tail"

    storage.put_stream("fresh", chunks("fresh"))
    storage.put_stream("replaced", chunks("replaced"))
    head_fresh, keys_fresh, _ = seen[0]
    assert head_fresh is None and "fresh" not in keys_fresh
    _, _, during_replace = seen[1]
    assert during_replace == b"previous"
    assert storage.get_bytes("replaced").endswith(b"x" * 10 + b"tail")


@pytest.mark.parametrize("failure", [RuntimeError, KeyboardInterrupt, GeneratorExit])
def test_failing_input_leaves_nothing(storage: Storage, failure: type[BaseException]) -> None:
    closed: list[bool] = []

    def chunks() -> Iterator[bytes]:
        try:
            yield _data(PART + 1)
            yield _data(PART + 1, seed=2)  # a second part is uploaded on S3 before...
            raise failure("input broke")  # ...the input fails
        finally:
            closed.append(True)

    with pytest.raises(failure):
        storage.put_stream("base/broken", chunks())
    assert closed == [True]
    assert storage.head("base/broken") is None
    assert [info.key for info in storage.list("")] == []
    if isinstance(storage, S3Storage):
        uploads = _s3_client(storage).list_multipart_uploads(Bucket=storage.bucket)
        assert uploads.get("Uploads", []) == []


def test_list_is_sorted_and_filtered_by_prefix(storage: Storage) -> None:
    keys = ["b/2", "a/10", "a/1", "ab", "a/2", "c", "wal/00000001/000000010000000000000001.zst"]
    for index, key in enumerate(keys):
        storage.put_bytes(key, b"x" * index)
    listed = list(storage.list(""))
    assert [i.key for i in listed] == sorted(keys)
    assert [i.key for i in storage.list("a/")] == ["a/1", "a/10", "a/2"]
    assert [i.key for i in storage.list("a")] == ["a/1", "a/10", "a/2", "ab"]
    assert [i.key for i in storage.list("wal/")] == [keys[-1]]
    assert list(storage.list("missing/")) == []
    sizes = {i.key: i.size for i in listed}
    assert sizes == {key: index for index, key in enumerate(keys)}


def test_head(storage: Storage) -> None:
    before = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    storage.put_bytes("dir/obj", b"12345")
    info = storage.head("dir/obj")
    assert info is not None
    assert (info.key, info.size) == ("dir/obj", 5)
    assert info.last_modified.tzinfo is not None
    assert info.last_modified.utcoffset() == dt.timedelta(0)
    assert info.last_modified > before
    (listed,) = storage.list("dir/")  # a listing's time (ISO 8601 on S3) agrees with head's
    assert listed.last_modified.utcoffset() == dt.timedelta(0)
    assert abs(listed.last_modified - info.last_modified) < dt.timedelta(seconds=1)
    assert storage.head("dir/other") is None
    assert storage.exists("dir/obj") and not storage.exists("dir")


def test_delete_is_idempotent(storage: Storage) -> None:
    storage.put_bytes("x/y", b"1")
    storage.delete("x/y")
    storage.delete("x/y")
    storage.delete("never/was")
    assert storage.head("x/y") is None
    assert list(storage.list("")) == []


def test_missing_key_raises_before_first_chunk(storage: Storage) -> None:
    with pytest.raises(errors.ObjectNotFound, match="nope"):
        storage.get_stream("nope")  # raised by the call itself, not on iteration
    with pytest.raises(errors.ObjectNotFound):
        storage.get_bytes("a/b/c")


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "..", "../up"])
def test_invalid_keys_are_rejected(storage: Storage, key: str) -> None:
    with pytest.raises(errors.UsageError):
        storage.put_bytes(key, b"x")
    with pytest.raises(errors.UsageError):
        storage.get_stream(key)
    with pytest.raises(errors.UsageError):
        storage.head(key)
    with pytest.raises(errors.UsageError):
        storage.delete(key)


def test_storage_class_is_accepted(storage: Storage) -> None:
    storage.put_bytes("cold", b"data", storage_class="STANDARD_IA")
    info = storage.head("cold")
    assert info is not None and info.size == 4
    if isinstance(storage, S3Storage):
        assert info.storage_class == "STANDARD_IA"
        assert [i.storage_class for i in storage.list("cold")] == ["STANDARD_IA"]


def test_check_passes_on_a_usable_repository(storage: Storage) -> None:
    storage.check()


# -- opening repositories ------------------------------------------------------------


@pytest.mark.parametrize("url", ["ftp://host/x", "bucket/prefix", "gs://bucket/x"])
def test_unknown_scheme(url: str) -> None:
    with pytest.raises(errors.RepositoryConfigError, match="unknown repository scheme"):
        open_storage(url)


def test_s3_url_without_bucket() -> None:
    with pytest.raises(errors.RepositoryConfigError, match="needs a bucket"):
        open_storage("s3:///prefix")


def test_file_repository_must_exist_without_create(tmp_path: Any) -> None:
    with pytest.raises(errors.RepositoryConfigError, match="does not exist"):
        open_storage((tmp_path / "absent").as_uri(), create=False)


def test_missing_bucket(s3_repo_url: str) -> None:
    store = open_storage("s3://tbdr-no-such-bucket/prefix")
    with pytest.raises(errors.RepositoryConfigError, match="bucket tbdr-no-such-bucket does not"):
        store.check()
    with pytest.raises(errors.RepositoryConfigError, match="does not exist"):
        store.put_bytes("k", b"x")
    with pytest.raises(errors.RepositoryConfigError, match="does not exist"):
        list(store.list(""))
    with pytest.raises(errors.RepositoryConfigError, match="does not exist"):
        store.get_stream("k")


# -- S3 only -------------------------------------------------------------------------


@pytest.fixture
def s3_storage(s3_repo_url: str) -> S3Storage:
    store = open_storage(s3_repo_url)
    assert isinstance(store, S3Storage)
    store.part_size = PART
    return store


def _etag(store: S3Storage, key: str) -> str:
    answer = _s3_client(store).head_object(Bucket=store.bucket, Key=f"{store.prefix}/{key}")
    return str(answer["ETag"]).strip('"')


def test_s3_single_put_up_to_one_part_then_multipart(s3_storage: S3Storage) -> None:
    s3_storage.put_stream("one", _chunked(_data(PART)))
    s3_storage.put_stream("three", _chunked(_data(2 * PART + 1)))
    assert "-" not in _etag(s3_storage, "one")  # a plain PutObject
    assert _etag(s3_storage, "three").endswith("-3")  # parts: PART, PART, 1


def test_s3_part_size_never_below_minimum(s3_storage: S3Storage) -> None:
    s3_storage.part_size = 1024
    data = _data(PART + 10)
    s3_storage.put_stream("k", _chunked(data))
    assert s3_storage.get_bytes("k") == data
    assert _etag(s3_storage, "k").endswith("-2")


def test_s3_part_size_grows_in_tiers(s3_storage: S3Storage) -> None:
    s3_storage.part_size = 8 * 1024 * 1024
    assert s3_storage._part_limit(1) == 8 * 1024 * 1024
    assert s3_storage._part_limit(1000) == 8 * 1024 * 1024
    assert s3_storage._part_limit(1001) == 16 * 1024 * 1024
    assert s3_storage._part_limit(10_000) == 4 * 1024**3  # 8 MiB << 9
    s3_storage.part_size = 16 * 1024 * 1024
    assert s3_storage._part_limit(10_000) == S3Storage.MAX_PART_SIZE  # capped at 5 GiB


def test_s3_keys_are_relative_to_the_prefix(s3_storage: S3Storage) -> None:
    client = _s3_client(s3_storage)
    client.put_object(Bucket=s3_storage.bucket, Key="outside", Body=b"1")
    client.put_object(Bucket=s3_storage.bucket, Key=f"{s3_storage.prefix}2/neighbour", Body=b"1")
    s3_storage.put_bytes("inside/k", b"2")
    assert [i.key for i in s3_storage.list("")] == ["inside/k"]
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_storage.bucket)["Contents"]]
    assert f"{s3_storage.prefix}/inside/k" in keys


def test_s3_list_follows_pagination(s3_storage: S3Storage) -> None:
    """The spec's monitor used MaxKeys=1 and saw one (the oldest) object: we page through."""
    keys = [f"wal/{n:024X}" for n in range(7)]
    for key in reversed(keys):
        s3_storage.put_bytes(key, b"w")
    s3_storage.list_page_size = 2
    assert [i.key for i in s3_storage.list("wal/")] == keys


def test_s3_bucket_root_repository(s3_repo_url: str) -> None:
    bucket = s3_repo_url.removeprefix("s3://").split("/", 1)[0]
    store = open_storage(f"s3://{bucket}")
    assert isinstance(store, S3Storage) and store.prefix == ""
    store.put_bytes("top", b"t")
    assert [i.key for i in store.list("")] == ["top"]
    assert store.get_bytes("top") == b"t"


def test_s3_server_side_encryption(s3_repo_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TONEBRIDGE_DR_S3_SSE", "AES256")
    store = open_storage(s3_repo_url)
    assert isinstance(store, S3Storage)
    store.part_size = PART
    store.put_bytes("small", b"secret-ish")
    store.put_stream("large", _chunked(_data(PART + 1)))
    client = _s3_client(store)
    for key in ("small", "large"):
        answer = client.head_object(Bucket=store.bucket, Key=f"{store.prefix}/{key}")
        assert answer["ServerSideEncryption"] == "AES256"


def test_s3_kms_arguments(s3_repo_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TONEBRIDGE_DR_S3_SSE", "aws:kms")
    monkeypatch.setenv("TONEBRIDGE_DR_S3_SSE_KMS_KEY_ID", "alias/backups")
    store = open_storage(s3_repo_url)
    assert isinstance(store, S3Storage)
    assert store._extra == {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "alias/backups"}


@pytest.mark.parametrize(
    ("sse", "kms_key"), [("aes256", ""), ("kms", ""), ("AES256", "alias/x"), ("", "alias/x")]
)
def test_s3_invalid_sse_settings(
    s3_repo_url: str, monkeypatch: pytest.MonkeyPatch, sse: str, kms_key: str
) -> None:
    monkeypatch.setenv("TONEBRIDGE_DR_S3_SSE", sse)
    monkeypatch.setenv("TONEBRIDGE_DR_S3_SSE_KMS_KEY_ID", kms_key)
    with pytest.raises(errors.RepositoryConfigError, match="TONEBRIDGE_DR_S3_SSE"):
        open_storage(s3_repo_url)


def test_s3_unknown_storage_class(s3_storage: S3Storage) -> None:
    with pytest.raises(errors.UsageError, match="storage class 'COLD'"):
        s3_storage.put_bytes("k", b"x", storage_class="COLD")


def test_s3_region_and_endpoint_from_env(
    s3_repo_url: str, monkeypatch: pytest.MonkeyPatch, moto_server: str
) -> None:
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    store = open_storage(s3_repo_url)
    assert isinstance(store, S3Storage)
    assert store.client.meta.region_name == "eu-central-1"
    assert store.client.meta.endpoint_url == moto_server
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    store = open_storage(s3_repo_url)
    assert isinstance(store, S3Storage)
    assert store.client.meta.endpoint_url == moto_server
    store.check()


@pytest.mark.parametrize(
    ("code", "expected", "fragment"),
    [
        ("AccessDenied", errors.StorageError, "access denied to upload base/x"),
        ("NoSuchBucket", errors.RepositoryConfigError, "does not exist"),
        ("NoSuchKey", errors.ObjectNotFound, "object base/x not found"),
        ("SlowDown", errors.StorageError, "S3 refused to upload base/x"),
    ],
)
def test_s3_error_mapping(
    s3_storage: S3Storage, code: str, expected: type[errors.DRError], fragment: str
) -> None:
    exc = botocore.exceptions.ClientError({"Error": {"Code": code, "Message": "m"}}, "PutObject")
    mapped = s3_storage._error(exc, "upload", "base/x")
    assert type(mapped) is expected
    assert fragment in str(mapped)
    assert "testing" not in str(mapped)  # never the credentials


@pytest.mark.timeout(120)  # the guard for "fails within seconds, never hangs"
def test_s3_server_killed_mid_upload(start_moto: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    server = start_moto()
    s3_fixtures.s3_env(monkeypatch, server.url)
    bucket = s3_fixtures.new_bucket(server.url)
    store = open_storage(f"s3://{bucket}/repo")
    assert isinstance(store, S3Storage)
    store.part_size = PART
    progress: list[str] = []

    def chunks() -> Iterator[bytes]:
        yield _data(PART + 1)  # part 1 goes out when the next chunk is asked for
        progress.append("first part sent")
        uploads = s3_fixtures.client(server.url).list_multipart_uploads(Bucket=bucket)
        progress.append(f"uploads in flight: {len(uploads.get('Uploads', []))}")
        server.stop()
        yield _data(PART + 1, seed=3)
        yield b"end"

    with pytest.raises(errors.StorageError, match="cannot reach S3 endpoint") as caught:
        store.put_stream("base/b1/data.zst", chunks())
    assert progress == ["first part sent", "uploads in flight: 1"]
    assert server.url in str(caught.value) and "base/b1/data.zst" in str(caught.value)
    # The dead endpoint fails every call quickly and clearly, including the preflight.
    with pytest.raises(errors.StorageError, match="cannot reach S3 endpoint"):
        store.check()
    with pytest.raises(errors.StorageError, match="cannot reach S3 endpoint"):
        store.head("base/b1/data.zst")
    with pytest.raises(errors.StorageError, match="cannot reach S3 endpoint"):
        list(store.list(""))


def test_s3_timestamps_are_read_fast_and_the_same_as_botocore() -> None:
    from botocore.utils import parse_timestamp

    from tonebridge_dr.runner.storage import s3

    for text in ("2026-11-29T06:40:27.000Z", "2026-11-29T06:40:27.123Z", "2026-11-29T06:40:27Z",
                 "Sun, 29 Nov 2026 06:40:27 GMT"):
        assert s3._parse_timestamp(text) == parse_timestamp(text), text
        assert s3._parse_timestamp(text).utcoffset() == dt.timedelta(0)
