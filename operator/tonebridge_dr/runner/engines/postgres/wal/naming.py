"""WAL file names, LSN arithmetic, timeline histories, and archive object keys (pure).

PostgreSQL hands archive_command / restore_command four kinds of file:

| kind      | example                                      |
|-----------|----------------------------------------------|
| segment   | `000000010000000A000000FE` (timeline, log, seg) |
| partial   | `000000010000000A000000FE.partial`           |
| backup    | `000000010000000A000000FE.00000028.backup`   |
| history   | `00000002.history`                           |

Hex digits are upper case; timeline 0 does not exist. Anything else is refused
before any work starts (UsageError).

Repository layout (keys relative to the repository root):

    wal/<timeline><log>/<file name>.<sha256 of the raw file><ext>
    wal/history/<tli>.history.<sha256><ext>

`<timeline><log>` is the first 16 hex digits of the segment name, so one folder
holds at most 256 segments of 16 MiB (4 GiB of WAL) and keys sort by WAL
position within a timeline. `<ext>` is the codec extension (`.zst`, `.zst.gpg`,
...). The SHA-256 of the *raw* (uncompressed, unencrypted) file content is part
of the key: encryption makes stored bytes differ between two uploads of the
same file, so comparing raw digests is how a second push of the same name tells
"identical, fine" from "different, conflict" without downloading anything, and
how a fetch verifies what it decoded. Every backend can list keys; none needs
object metadata. A WAL file name has at most one object (archive.py keeps it so).
"""

from __future__ import annotations

import dataclasses
import re

from tonebridge_dr.runner import errors

WAL_PREFIX = "wal/"
HISTORY_FOLDER = "history"

SEGMENT = "segment"
PARTIAL = "partial"
BACKUP = "backup"
HISTORY = "history"

DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024
MIN_SEGMENT_SIZE = 1024 * 1024
MAX_SEGMENT_SIZE = 1024 * 1024 * 1024
#: Segments per log for the smallest segment size: the low 8 hex digits stay below this.
_MAX_LOW = 0x100000000 // MIN_SEGMENT_SIZE

_NAME_RE = re.compile(
    r"(?P<seg>(?P<tli>[0-9A-F]{8})(?P<log>[0-9A-F]{8})(?P<low>[0-9A-F]{8}))"
    r"(?:(?P<partial>\.partial)|\.(?P<offset>[0-9A-F]{8})\.backup)?"
    r"|(?P<htli>[0-9A-F]{8})\.history",
    re.ASCII,
)
_KEY_RE = re.compile(
    r"wal/(?P<folder>[0-9A-F]{16}|history)/"
    r"(?P<name>[0-9A-F]{8}(?:[0-9A-F]{16}(?:\.partial|\.[0-9A-F]{8}\.backup)?|\.history))"
    r"\.(?P<sha>[0-9a-f]{64})(?P<ext>(?:\.[a-z0-9]+)*)",
    re.ASCII,
)
_LSN_RE = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})", re.ASCII)


@dataclasses.dataclass(frozen=True)
class WalName:
    """A validated WAL file name. For history files `log` and `low` are 0."""

    name: str
    kind: str
    timeline: int
    log: int = 0
    low: int = 0

    @property
    def segment(self) -> str:
        """The 24-hex segment name this file belongs to ("" for history files)."""
        return "" if self.kind == HISTORY else self.name[:24]

    @property
    def folder(self) -> str:
        """Repository folder: `<timeline><log>` (16 hex) or `history`."""
        return HISTORY_FOLDER if self.kind == HISTORY else self.name[:16]

    @property
    def is_segment(self) -> bool:
        return self.kind == SEGMENT

    def segno(self, segment_size: int) -> int:
        """Position of the segment in the WAL stream (XLogSegNo), whatever the timeline."""
        return self.log * segments_per_log(segment_size) + self.low

    def archive_order(self) -> tuple[int, str]:
        """PostgreSQL's archiving order: history files first, then by name."""
        return (0 if self.kind == HISTORY else 1, self.name)

    def __str__(self) -> str:
        return self.name


def parse(name: str) -> WalName:
    """Validate a WAL file name; UsageError saying what is expected otherwise."""
    match = _NAME_RE.fullmatch(name)
    if match is None:
        raise errors.UsageError(
            f"invalid WAL file name {name!r}: expected a segment like 000000010000000000000001, "
            "a timeline history file like 00000002.history, or a segment name followed by "
            ".partial or .XXXXXXXX.backup"
        )
    if match.group("htli") is not None:
        # Timeline 1 never has a history file, but PostgreSQL asks for 00000001.history
        # when it writes the history of a timeline branching off timeline 1.
        timeline = int(match.group("htli"), 16)
        if timeline == 0:
            raise errors.UsageError(f"invalid WAL file name {name!r}: timeline 0 does not exist")
        return WalName(name, HISTORY, timeline)
    timeline = int(match.group("tli"), 16)
    log = int(match.group("log"), 16)
    low = int(match.group("low"), 16)
    if timeline == 0:
        raise errors.UsageError(f"invalid WAL file name {name!r}: timeline 0 does not exist")
    if low >= _MAX_LOW:
        raise errors.UsageError(f"invalid WAL file name {name!r}: segment number out of range")
    if match.group("partial"):
        kind = PARTIAL
    elif match.group("offset") is not None:
        kind = BACKUP
    else:
        kind = SEGMENT
    return WalName(name, kind, timeline, log, low)


def is_valid(name: str) -> bool:
    try:
        parse(name)
    except errors.UsageError:
        return False
    return True


# -- segment arithmetic --------------------------------------------------------------


def check_segment_size(size: int) -> int:
    """`size` when it is a valid wal_segment_size (a power of two, 1 MiB .. 1 GiB)."""
    if not MIN_SEGMENT_SIZE <= size <= MAX_SEGMENT_SIZE or size & (size - 1):
        raise errors.IntegrityError(
            f"{size} bytes is not a WAL segment size (a power of two from 1 MiB to 1 GiB)"
        )
    return size


def segments_per_log(segment_size: int) -> int:
    return 0x100000000 // segment_size


def segment_name(timeline: int, segno: int, segment_size: int) -> str:
    """XLogFileName: the name of segment `segno` on `timeline`."""
    per_log = segments_per_log(segment_size)
    return f"{timeline:08X}{segno // per_log:08X}{segno % per_log:08X}"


def segno_of_lsn(lsn: int, segment_size: int) -> int:
    return lsn // segment_size


def next_segment(name: str, segment_size: int, steps: int = 1) -> str:
    """The segment `steps` after segment `name`, on the same timeline."""
    wal = parse(name)
    return segment_name(wal.timeline, wal.segno(segment_size) + steps, segment_size)


def parse_lsn(text: str) -> int:
    """`16/B374D848` -> integer; UsageError for anything else."""
    match = _LSN_RE.fullmatch(text.strip())
    if match is None:
        raise errors.UsageError(f"invalid LSN {text!r}: expected e.g. 0/3000060")
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


# -- timeline history files ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TimelineSpan:
    """One timeline on a history path: WAL positions [begin, end) belong to it."""

    timeline: int
    begin: int  # 0 for the first timeline of the path
    end: int | None  # None for the newest timeline of the path (open ended)


def parse_history(timeline: int, text: str) -> list[TimelineSpan]:
    """The path of timelines leading to `timeline`, oldest first, from its history file.

    Each line of `<tli>.history` is `<parent tli> <switch LSN> <reason>`; comments
    and blank lines are skipped. IntegrityError when the file does not parse.
    """
    spans: list[TimelineSpan] = []
    begin = 0
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(None, 2)
        try:
            parent = int(fields[0])
            switch = parse_lsn(fields[1])
        except (ValueError, IndexError, errors.UsageError):
            raise errors.IntegrityError(
                f"history file of timeline {timeline} is corrupt: bad line {line[:80]!r}"
            ) from None
        if (spans and parent <= spans[-1].timeline) or parent >= timeline or switch < begin:
            raise errors.IntegrityError(
                f"history file of timeline {timeline} is corrupt: timelines out of order"
            )
        spans.append(TimelineSpan(parent, begin, switch))
        begin = switch
    spans.append(TimelineSpan(timeline, begin, None))
    return spans


# -- repository keys ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ArchivedKey:
    """A parsed archive object key."""

    key: str
    wal: WalName
    sha256: str
    extension: str  # "", ".zst", ".zst.gpg", ...

    @property
    def name(self) -> str:
        return self.wal.name

    @property
    def encrypted(self) -> bool:
        return self.extension.endswith(".gpg")

    @property
    def compression(self) -> str:
        """Registry name of the codec the extension stands for."""
        from tonebridge_dr.runner.codecs import compression

        ext = self.extension.removesuffix(".gpg")
        for codec in compression.REGISTRY.values():
            if codec.extension == ext:
                return codec.name
        raise errors.IntegrityError(f"archived WAL {self.key} has an unknown extension {ext!r}")


def object_key(wal: WalName, sha256: str, extension: str) -> str:
    return f"{WAL_PREFIX}{wal.folder}/{wal.name}.{sha256}{extension}"


def name_prefix(wal: WalName) -> str:
    """Key prefix of every object of `wal` (and, for a segment, of its .partial/.backup)."""
    return f"{WAL_PREFIX}{wal.folder}/{wal.name}."


def folder_prefix(folder: str) -> str:
    return f"{WAL_PREFIX}{folder}/"


def parse_key(key: str) -> ArchivedKey | None:
    """The archive object a key names, or None for keys that are not archived WAL."""
    match = _KEY_RE.fullmatch(key)
    if match is None:
        return None
    try:
        wal = parse(match.group("name"))
    except errors.UsageError:
        return None
    if wal.folder != match.group("folder"):
        return None
    return ArchivedKey(key, wal, match.group("sha"), match.group("ext"))
