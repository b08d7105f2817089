"""Pure parts of the bucket engine: the content index sorter (spilling to disk), the key
map's order check, content addresses."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.bucket import content, keymap


def _stored(n: int) -> content.Stored:
    sha = hashlib.sha256(str(n).encode()).hexdigest()
    return content.Stored(sha, n, n + 1, "0" * 64, "zstd")


def test_the_index_sorter_spills_runs_and_yields_each_address_once_in_order() -> None:
    sorter = content.IndexSorter(run_lines=7)
    items = [_stored(n % 40) for n in range(100)]  # 40 distinct, repeated, unsorted
    for item in items:
        sorter.add(item)
    assert len(sorter._runs) == 14  # spilled to temporary files
    lines = list(sorter.lines())
    assert lines == sorted({item.index_line() for item in items})
    assert [content.Stored.parse(line) for line in lines] == sorted(
        set(items), key=lambda s: s.sha256)


def test_key_maps_must_be_sorted_and_round_trip() -> None:
    when = dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
    entries = [keymap.Entry(key, 3, "etag", when, {"ContentType": "text/plain",
                                                   "Metadata": {"k": "v"}}, _stored(3))
               for key in ("a", "a/b", "\u00e9")]
    data = b"".join(entry.line() for entry in entries)
    assert list(keymap.parse([data[:10], data[10:]])) == entries
    with pytest.raises(errors.IntegrityError, match="not sorted"):
        list(keymap.parse([entries[1].line() + entries[0].line()]))


def test_content_addresses_and_keys() -> None:
    sha = "ab" + "0" * 62
    assert content.key_of(sha) == f"objects/ab/{sha}"
    assert content.address_of(content.key_of(sha)) == sha
    assert content.address_of(f"objects/cd/{sha}") is None
    assert content.address_of("objects/ab/short") is None
