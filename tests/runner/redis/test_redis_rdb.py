"""Unit tests of the Redis engine's pure parts: CRC-64/Jones, RDB stream checks, URLs."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.redis import crc64, endpoints, rdb


def make_rdb(body: bytes = b"", *, version: int = 10, checksum: bool = True) -> bytes:
    """A loadable RDB: aux field, db 0 with one string key per call site, EOF, CRC."""
    data = (
        b"REDIS%04d" % version
        + b"\xfa\x09redis-ver\x067.0.15"
        + b"\xfe\x00\xfb\x01\x00"
        + b"\x00\x01k\x01v"
        + body
        + b"\xff"
    )
    crc = crc64.update(0, data) if checksum else 0
    return data + crc.to_bytes(8, "little")


def feed_in_pieces(data: bytes, cuts: list[int]) -> rdb.RdbCheck:
    check = rdb.RdbCheck("test RDB")
    start = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        check.feed(data[start:cut])
        start = cut
    return check


def test_crc64_matches_the_catalogue_check_value() -> None:
    assert crc64.update(0, b"123456789") == crc64.CHECK_VALUE
    assert crc64.update_pure(0, b"123456789") == crc64.CHECK_VALUE
    assert crc64.FAST


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=2000), st.integers(min_value=0, max_value=2000))
def test_crc64_fast_equals_reference_and_is_incremental(data: bytes, cut: int) -> None:
    whole = crc64.update(0, data)
    assert whole == crc64.update_pure(0, data)
    cut = min(cut, len(data))
    assert crc64.update(crc64.update(0, data[:cut]), memoryview(data)[cut:]) == whole


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_rdb_check_accepts_a_valid_rdb_in_any_chunking(cuts: list[int]) -> None:
    data = make_rdb(os.urandom(300))
    info = feed_in_pieces(data, cuts).finish()
    assert info.version == 10
    assert info.size == len(data)
    assert info.checksum == rdb.CHECKSUM_OK
    assert info.crc64 == data[-8:][::-1].hex()


@settings(max_examples=100, deadline=None)
@given(
    st.integers(min_value=9, max_value=338),
    st.integers(min_value=1, max_value=255),
    st.lists(st.integers(min_value=0, max_value=400), max_size=8),
)
def test_rdb_check_rejects_any_flipped_byte(position: int, flip: int, cuts: list[int]) -> None:
    data = bytearray(make_rdb(bytes(300)))
    data[position] ^= flip
    check = feed_in_pieces(bytes(data), cuts)
    with pytest.raises(errors.IntegrityError):
        check.finish()


@pytest.mark.parametrize("keep", [0, 5, 9, 20, 40])
def test_rdb_check_rejects_truncation(keep: int) -> None:
    data = make_rdb(bytes(100))
    check = rdb.RdbCheck("test RDB")
    with pytest.raises(errors.IntegrityError, match=r"truncated|corrupt"):
        check.feed(data[: len(data) - keep] if keep else data[:-1])
        check.finish()


def test_rdb_check_reports_a_disabled_checksum() -> None:
    info = feed_in_pieces(make_rdb(checksum=False), [3, 11]).finish()
    assert info.checksum == rdb.CHECKSUM_DISABLED
    assert info.crc64 == "0" * 16


def test_rdb_check_rejects_a_non_rdb_stream_at_once() -> None:
    check = rdb.RdbCheck("the thing")
    with pytest.raises(errors.IntegrityError, match="the thing is not an RDB file"):
        check.feed(b"*1\r\n$4\r\nPING\r\n")


def test_checked_raises_at_the_end_of_the_stream() -> None:
    data = bytearray(make_rdb())
    data[-1] ^= 1
    check = rdb.RdbCheck("x")
    stream = rdb.checked([bytes(data[:10]), bytes(data[10:])], check)
    assert next(stream) == bytes(data[:10])
    assert next(stream) == bytes(data[10:])
    with pytest.raises(errors.IntegrityError, match="CRC-64"):
        next(stream)


def test_endpoint_password_comes_from_url_or_env() -> None:
    env = {"REDIS_PASSWORD": "from-env", "REDIS_USERNAME": "envuser"}
    ep = endpoints.parse("redis://h:7000/3", env)
    assert (ep.host, ep.port, ep.db) == ("h", 7000, 3)
    assert (ep.username, ep.password) == ("envuser", "from-env")
    ep = endpoints.parse("redis://bob:p%40ss@h", env)
    assert (ep.port, ep.db, ep.username, ep.password) == (6379, None, "bob", "p@ss")
    ep = endpoints.parse("redis://alice@h", env)
    assert (ep.username, ep.password) == ("alice", "from-env")
    assert "from-env" not in repr(ep) and "from-env" not in str(ep)


@pytest.mark.parametrize(
    "url",
    ["http://u:hunter2@h", "redis://u:hunter2@h/x", "rediss://u:hunter2@h", "redis://u:hunter2@"],
)
def test_bad_urls_are_usage_errors_without_the_password(url: str) -> None:
    with pytest.raises(errors.UsageError) as info:
        endpoints.parse(url, {})
    assert "hunter2" not in str(info.value)


def test_redact_hides_only_the_password() -> None:
    assert endpoints.redact("redis://u:hunter2@h:1/2") == "redis://u:***@h:1/2"
    assert endpoints.redact("redis://h:1") == "redis://h:1"
