"""WAL file names, segment arithmetic, history files and archive keys (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.postgres.wal import naming

MB16 = 16 * 1024 * 1024


@pytest.mark.parametrize(
    ("name", "kind", "timeline", "segment", "folder"),
    [
        ("000000010000000000000001", naming.SEGMENT, 1, "000000010000000000000001",
         "0000000100000000"),
        ("0000000A0000001F000000FE", naming.SEGMENT, 10, "0000000A0000001F000000FE",
         "0000000A0000001F"),
        ("000000010000000000000003.partial", naming.PARTIAL, 1, "000000010000000000000003",
         "0000000100000000"),
        ("000000010000000000000002.00000028.backup", naming.BACKUP, 1,
         "000000010000000000000002", "0000000100000000"),
        ("00000002.history", naming.HISTORY, 2, "", "history"),
    ],
)
def test_parse_valid_names(name: str, kind: str, timeline: int, segment: str, folder: str) -> None:
    wal = naming.parse(name)
    assert (wal.kind, wal.timeline, wal.segment, wal.folder) == (kind, timeline, segment, folder)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "RECOVERYXLOG",
        "00000001000000000000001",  # 23 digits
        "0000000100000000000000011",
        "000000010000000000000001.gz",
        "00000001000000000000000a",  # lower case
        "000000000000000000000001",  # timeline 0
        "00000000.history",  # timeline 0
        "0000000100000000000000001.partial",
        "../000000010000000000000001",
        "000000010000000000000001.0000002.backup",
        "000000010000000000001000",  # segment number past any segment size
    ],
)
def test_parse_rejects_invalid_names(name: str) -> None:
    with pytest.raises(errors.UsageError, match="invalid WAL file name"):
        naming.parse(name)
    assert not naming.is_valid(name)


def test_archive_order_puts_history_first_then_names() -> None:
    names = [
        "000000020000000000000005",
        "000000010000000000000004.partial",
        "00000002.history",
        "000000010000000000000003",
        "000000010000000000000003.00000028.backup",
    ]
    ordered = sorted((naming.parse(n) for n in names), key=naming.WalName.archive_order)
    assert [w.name for w in ordered] == [
        "00000002.history",
        "000000010000000000000003",
        "000000010000000000000003.00000028.backup",
        "000000010000000000000004.partial",
        "000000020000000000000005",
    ]


def test_segment_arithmetic() -> None:
    assert naming.segment_name(1, 0x1FF, MB16) == "0000000100000001000000FF"
    assert naming.next_segment("0000000100000000000000FF", MB16) == "000000010000000100000000"
    assert naming.next_segment("000000030000000A00000001", MB16, 3) == "000000030000000A00000004"
    wal = naming.parse("0000000200000003000000FE")
    assert wal.segno(MB16) == 3 * 256 + 0xFE
    assert naming.segno_of_lsn(naming.parse_lsn("3/FE000028"), MB16) == 3 * 256 + 0xFE
    assert naming.format_lsn(naming.parse_lsn("16/b374d848")) == "16/B374D848"
    with pytest.raises(errors.UsageError):
        naming.parse_lsn("nonsense")


@pytest.mark.parametrize("size", [1 << 20, 1 << 24, 1 << 30])
def test_segment_sizes_accepted(size: int) -> None:
    assert naming.check_segment_size(size) == size


@pytest.mark.parametrize("size", [0, 1 << 19, (1 << 24) + 1, 1 << 31])
def test_segment_sizes_refused(size: int) -> None:
    with pytest.raises(errors.IntegrityError):
        naming.check_segment_size(size)


@given(
    timeline=st.integers(1, 0xFFFFFFFF),
    position=st.integers(0, (1 << 64) - 1),
    size_exp=st.integers(20, 30),
)
def test_segment_name_round_trip(timeline: int, position: int, size_exp: int) -> None:
    size = 1 << size_exp
    segno = position // size  # every segment of the 64-bit WAL space
    name = naming.segment_name(timeline, segno, size)
    wal = naming.parse(name)
    assert wal.timeline == timeline
    assert wal.segno(size) == segno
    if segno + 1 < (1 << 64) // size:
        assert naming.next_segment(name, size) == naming.segment_name(timeline, segno + 1, size)


def test_parse_history() -> None:
    text = "1\t0/3000158\tno recovery target specified\n\n2\t0/5A00000\tbefore 2026-11-29\n"
    spans = naming.parse_history(3, text)
    assert spans == [
        naming.TimelineSpan(1, 0, 0x3000158),
        naming.TimelineSpan(2, 0x3000158, 0x5A00000),
        naming.TimelineSpan(3, 0x5A00000, None),
    ]


@pytest.mark.parametrize("text", ["garbage", "1 0/3000000\n1 0/4000000\n", "3 0/3000000\n"])
def test_parse_history_refuses_corrupt_files(text: str) -> None:
    with pytest.raises(errors.IntegrityError, match="history file of timeline 3"):
        naming.parse_history(3, text)


def test_object_keys_round_trip() -> None:
    sha = "ab" * 32
    for name in (
        "000000010000000000000001",
        "000000010000000000000001.partial",
        "000000010000000000000001.00000028.backup",
        "00000002.history",
    ):
        wal = naming.parse(name)
        for ext, compression, encrypted in (
            ("", "none", False),
            (".zst", "zstd", False),
            (".gz.gpg", "gzip", True),
        ):
            key = naming.object_key(wal, sha, ext)
            ref = naming.parse_key(key)
            assert ref is not None
            assert (ref.name, ref.sha256, ref.extension) == (name, sha, ext)
            assert (ref.compression, ref.encrypted) == (compression, encrypted)
            assert key.startswith(naming.name_prefix(wal))
    assert naming.object_key(naming.parse("00000002.history"), sha, ".zst") == (
        f"wal/history/00000002.history.{sha}.zst"
    )


@pytest.mark.parametrize(
    "key",
    [
        "wal/0000000100000000/000000010000000000000001.zst",  # no digest
        "wal/0000000100000001/000000010000000000000001." + "a" * 64,  # wrong folder
        "base/x/manifest.json",
        "wal/history/00000002.history." + "A" * 64,  # upper-case digest
    ],
)
def test_parse_key_ignores_foreign_keys(key: str) -> None:
    assert naming.parse_key(key) is None
