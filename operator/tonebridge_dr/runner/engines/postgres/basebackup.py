"""Physical base backups: `pg_basebackup -D - -Ft -X fetch` streamed as `base.tar`.

With the tar going to stdout pg_basebackup can only include WAL with `-X fetch`
(the WAL written during the backup is appended to the tar at the end) and only
for a cluster with the single default tablespace. `-X fetch` makes `base.tar`
self-contained: extracted, it starts as a consistent cluster without any WAL
archive (that is enough for a plain restore; point-in-time recovery replays the
archive from `manifest.wal.start_lsn` on). The server must keep the WAL of the
backup until the end (`wal_keep_size` or a busy server may recycle it; the tool
then fails and so does the backup, loudly).

`manifest.wal` records start LSN and timeline (from the `backup_label` read out
of the tar stream as it passes, cross-checked with pg_basebackup's verbose
output), the stop LSN (pg_basebackup's "write-ahead log end point") and the
first and last WAL segment names the backup needs. Everything talks to the
server over the replication protocol, so a role with just REPLICATION works.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import psycopg

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.postgres import connection, dump, process, tools
from tonebridge_dr.runner.repository.catalog import Repository
from tonebridge_dr.runner.repository.manifest import Manifest, WalRange

log = logging.getLogger(__name__)

BASE_OBJECT = "base.tar"
#: How far into the tar stream `backup_label` is looked for (it is the first member).
LABEL_SEARCH_LIMIT = 4 * 1024 * 1024
_BLOCK = 512
_LSN = r"([0-9A-Fa-f]+/[0-9A-Fa-f]+)"
_START_RE = re.compile(rf"write-ahead log start point: {_LSN} on timeline (\d+)")
_END_RE = re.compile(rf"write-ahead log end point: {_LSN}")
_SIZE_RE = re.compile(r"^(\d+)\s*(B|kB|MB|GB|TB)?$")
_UNITS = {None: 1, "B": 1, "kB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


@dataclasses.dataclass(frozen=True)
class PhysicalBackupOptions:
    checkpoint: str = "fast"  # "fast" or "spread"
    compression: str = "zstd"
    level: int | None = None
    encrypt_to: Path | None = None
    storage_class: str | None = None
    schedule: str | None = None


def parse_lsn(text: str) -> int:
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def wal_file_name(timeline: int, lsn: int, segment_size: int) -> str:
    """Name of the WAL segment holding byte `lsn` (XLogFileName)."""
    segno = lsn // segment_size
    per_id = 0x100000000 // segment_size
    return f"{timeline:08X}{segno // per_id:08X}{segno % per_id:08X}"


def parse_backup_label(text: str) -> dict[str, str]:
    """`KEY: value` lines of a backup_label, e.g. {"START WAL LOCATION": "0/2000028 (file ...)"}."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


class LabelSniffer:
    """Passes tar bytes through unchanged and picks `backup_label` out of the first members."""

    def __init__(self, chunks: Iterable[bytes], limit: int = LABEL_SEARCH_LIMIT) -> None:
        self._chunks = chunks
        self._limit = limit
        self._head = bytearray()
        self._searching = True
        self.label: str | None = None

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            if self._searching:
                self._head += chunk
                self._search()
            yield chunk
        if self._searching:
            self._search(final=True)

    def _search(self, final: bool = False) -> None:
        offset = 0
        head = self._head
        while offset + _BLOCK <= len(head):
            header = bytes(head[offset : offset + _BLOCK])
            if header == b"\0" * _BLOCK:
                break  # end of archive
            name = header[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
            prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
            if prefix:
                name = f"{prefix}/{name}"
            try:
                size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
            except ValueError:
                break  # not a tar header we understand; give up quietly
            data_end = offset + _BLOCK + size
            if name.lstrip("./") == "backup_label":
                if data_end > len(head):
                    return  # wait for more bytes
                self.label = bytes(head[offset + _BLOCK : data_end]).decode("utf-8", "replace")
                break
            offset = data_end + (-size % _BLOCK)
        else:
            if len(head) < self._limit and not final:
                return
        self._searching = False
        self._head = bytearray()


def _segment_size(text: str) -> int:
    match = _SIZE_RE.match(text.strip())
    if match is None:
        raise errors.SourceError(f"cannot understand wal_segment_size {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _value(row: Any) -> str:
    value = row[0]
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode()
    return str(value)


def server_facts(info: connection.ConnInfo) -> tuple[str, int, int, str]:
    """(version, major, wal segment size, system identifier) over a replication connection."""
    replication = info.with_params(replication="true")
    with connection.connect(replication, autocommit=True, purpose="source server") as conn:
        version = connection.server_version(conn)
        major = conn.info.server_version // 10000
        try:
            seg_row = conn.execute("SHOW wal_segment_size").fetchone()
            ident_row = conn.execute("IDENTIFY_SYSTEM").fetchone()
        except psycopg.Error as exc:
            raise errors.SourceError(
                f"source server {info.masked()} refused a replication command: "
                f"{connection.describe_error(info, exc)}"
            ) from None
    if seg_row is None or ident_row is None:
        raise errors.SourceError(f"source server {info.masked()} did not identify itself")
    return version, major, _segment_size(_value(seg_row)), _value(ident_row)


def basebackup_argv(
    pg_basebackup: str, info: connection.ConnInfo, checkpoint: str, label: str
) -> list[str]:
    """pg_basebackup writing one tar (WAL fetched into it) to stdout."""
    return [
        pg_basebackup,
        "--dbname",
        info.without_secrets(),
        "--no-password",
        "--pgdata=-",
        "--format=tar",
        "--wal-method=fetch",
        "--verbose",
        f"--checkpoint={checkpoint}",
        f"--label={label}",
    ]


def backup_physical(repo: Repository, dsn: str, options: PhysicalBackupOptions) -> Manifest:
    """Take a base backup of the cluster at `dsn` into a new backup in `repo`."""
    if options.checkpoint not in ("fast", "spread"):
        raise errors.UsageError(f"checkpoint must be fast or spread, not {options.checkpoint!r}")
    info = connection.ConnInfo.parse(dsn)
    version, major, segment_size, system_id = server_facts(info)
    pg_basebackup = tools.tool("pg_basebackup", major)
    tool_versions = {"pg_basebackup": tools.version(pg_basebackup)}

    with repo.begin(
        engine="postgres",
        method="physical",
        compression=options.compression,
        encrypt_to=options.encrypt_to,
        level=dump.default_level(options.compression, options.level),
        storage_class=options.storage_class,
        schedule=options.schedule,
    ) as writer:
        label = f"tonebridge-dr {writer.id}"
        argv = basebackup_argv(pg_basebackup, info, options.checkpoint, label)
        log.info("physical backup %s of %s to %s", writer.id, info.masked(), repo.url)
        with process.ToolProcess(
            argv, env=info.child_env(), stdout=process.PIPE, scrub=info.scrub
        ) as tool:
            tool.collect_stderr()
            sniffer = LabelSniffer(tool.iter_stdout())

            def stream() -> Iterator[bytes]:
                yield from sniffer
                tool.check()

            writer.put_object(BASE_OBJECT, stream())
        wal, extra = wal_range(sniffer.label, tool.stderr_lines, segment_size)
        extra.update(
            {
                "system_identifier": system_id,
                "wal_segment_size": segment_size,
                "format": "tar",
                "wal_method": "fetch",
                "checkpoint": options.checkpoint,
                "label": label,
            }
        )
        return writer.commit(
            databases=[], server_version=version, tools=tool_versions, wal=wal, extra=extra
        )


def wal_range(
    label_text: str | None, stderr_lines: list[str], segment_size: int
) -> tuple[WalRange, dict[str, Any]]:
    """Start from backup_label (fallback: verbose output), stop from the verbose output."""
    start_lsn: int | None = None
    timeline: int | None = None
    extra: dict[str, Any] = {}
    if label_text:
        fields = parse_backup_label(label_text)
        location = fields.get("START WAL LOCATION", "").split(" ", 1)[0]
        if location:
            start_lsn = parse_lsn(location)
        if fields.get("START TIMELINE", "").isdigit():
            timeline = int(fields["START TIMELINE"])
        if fields.get("CHECKPOINT LOCATION"):
            extra["checkpoint_lsn"] = fields["CHECKPOINT LOCATION"]
        extra["backup_label"] = label_text
    stop_lsn: int | None = None
    for line in stderr_lines:
        if (match := _START_RE.search(line)) is not None:
            verbose_start, verbose_tli = parse_lsn(match.group(1)), int(match.group(2))
            if start_lsn is not None and start_lsn != verbose_start:
                raise errors.ToolError(
                    f"pg_basebackup reported start {match.group(1)} but backup_label says "
                    f"{format_lsn(start_lsn)}"
                )
            start_lsn = verbose_start
            timeline = timeline or verbose_tli
        if (match := _END_RE.search(line)) is not None:
            stop_lsn = parse_lsn(match.group(1))
    if start_lsn is None or timeline is None or stop_lsn is None:
        raise errors.ToolError(
            "pg_basebackup finished without reporting its WAL start/end positions"
        )
    wal = WalRange(
        start_lsn=format_lsn(start_lsn),
        stop_lsn=format_lsn(stop_lsn),
        timeline=timeline,
        start_wal_file=wal_file_name(timeline, start_lsn, segment_size),
        # The last segment holding WAL the backup needs: the one with byte stop_lsn - 1.
        stop_wal_file=wal_file_name(timeline, max(stop_lsn - 1, start_lsn), segment_size),
    )
    return wal, extra
