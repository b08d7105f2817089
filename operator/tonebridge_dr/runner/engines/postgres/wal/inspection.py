"""`wal-inspect`: find the damage (DROP, TRUNCATE, mass DELETE/UPDATE) in archived WAL.

Which WAL: the segments of one timeline's history path (default: the newest timeline
in the archive; at each position the newest timeline that has that segment, and a
trailing `.partial` of a stopped wal-stream), from the last segment archived before
`--from` (WAL of a transaction that was already running) through the first segment
archived at or after `--to` (WAL written at `--to` can only be in a segment archived
later). Events are reported when their COMMIT time lies in [from, to].

How it is read: in batches of `batch` segments, each downloaded through `fetch.download`
(verified against its SHA-256, decrypted, decompressed) into a private temporary folder,
read by `pg_waldump` (its output parsed line by line by `waldump.Inspector`) and
deleted before the next batch: the disk used is at most `batch + 1` segments. Two
batches share one segment, so a record that crosses from one batch into the next is
read whole (records read twice are skipped by LSN). pg_waldump stops with an error at
the end of the WAL it was given; an error before the batch's last segment means the
WAL cannot be read there, and the command fails (exit 12) instead of missing events.

Names: the WAL names relations by relfilenode (`base/<db oid>/<filenode>`) and by OID.
With a DSN (a live server, or one restored to before the damage: a dropped table is
only in the latter) databases and relations are given their names; without one, the
report says how to map them (`SELECT pg_filenode_relation(0, <filenode>)` in that
database).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.postgres.wal import catalog, fetch, naming, waldump
from tonebridge_dr.runner.repository.catalog import Repository

log = logging.getLogger(__name__)

DEFAULT_BATCH = 8
_ERROR_AT_RE = re.compile(r"error in WAL record at ([0-9A-F]+/[0-9A-F]+)")
_END_OF_WAL = ("error in WAL record at", "could not find file", "could not read file")
MAPPING_HINT = (
    "the WAL names relations by relfilenode and OID: give --dsn (a live server, or one "
    "restored to before the event) to see names, or run in that database: SELECT "
    "pg_filenode_relation(0, <filenode>); SELECT <oid>::regclass; databases: SELECT oid, "
    "datname FROM pg_database"
)


@dataclasses.dataclass(frozen=True)
class InspectOptions:
    start: dt.datetime
    end: dt.datetime
    min_rows: int = waldump.DEFAULT_MIN_ROWS
    database: str | None = None  # a name (needs dsn) or an OID
    dsn: str | None = None
    timeline: int | None = None
    batch: int = DEFAULT_BATCH
    decrypt_key: Path | None = None
    passphrase: str | None = None
    work_dir: Path | None = None


def _segment_size(repo: Repository) -> int:
    """The WAL segment size the repository's base backups recorded (default 16 MiB)."""
    for manifest in reversed(repo.list_backups(engine="postgres", method="physical")):
        size = manifest.extra.get("wal_segment_size")
        if size:
            return naming.check_segment_size(int(size))
    return naming.DEFAULT_SEGMENT_SIZE


def path_segments(
    archive: catalog.WalArchive, size: int, timeline: int | None, passphrase: Any = None,
    decrypt_key: Path | None = None,
) -> list[catalog.ArchivedObject]:
    """The archived segments of a timeline's history path, in WAL order (module docstring)."""
    found = [
        obj for obj in archive.all_objects() if obj.wal.kind in (naming.SEGMENT, naming.PARTIAL)
    ]
    if not found:
        return []
    newest = timeline or max(obj.wal.timeline for obj in found)
    spans = [naming.TimelineSpan(newest, 0, None)]
    text = archive.history_text(newest, decrypt_key=decrypt_key, passphrase=passphrase)
    if text is not None:
        spans = naming.parse_history(newest, text)
    chosen: dict[int, catalog.ArchivedObject] = {}
    for obj in found:
        segno = obj.wal.segno(size)
        begin, end = segno * size, (segno + 1) * size
        on_path = any(
            span.timeline == obj.wal.timeline
            and begin < (span.end if span.end is not None else end + 1)
            and end > span.begin
            for span in spans
        )
        if not on_path:
            continue
        current = chosen.get(segno)
        if current is None or _better(obj, current):
            chosen[segno] = obj
    ordered = [chosen[segno] for segno in sorted(chosen)]
    # A .partial counts only at the end (a stopped wal-stream); elsewhere it is superseded.
    return [obj for i, obj in enumerate(ordered)
            if obj.wal.kind == naming.SEGMENT or i == len(ordered) - 1]


def _better(obj: catalog.ArchivedObject, current: catalog.ArchivedObject) -> bool:
    """Newer timeline first; on one timeline a complete segment beats its .partial."""
    if obj.wal.timeline != current.wal.timeline:
        return obj.wal.timeline > current.wal.timeline
    return obj.wal.kind == naming.SEGMENT and current.wal.kind == naming.PARTIAL


def in_window(
    segments: list[catalog.ArchivedObject], start: dt.datetime, end: dt.datetime
) -> list[catalog.ArchivedObject]:
    """From the last segment archived before `start` through the first archived at/after
    `end` (storage times have whole seconds: compared by the second)."""
    first = 0
    for i, obj in enumerate(segments):
        if obj.archived_at < start.replace(microsecond=0):
            first = i
    last = len(segments) - 1
    for i, obj in enumerate(segments):
        if i >= first and obj.archived_at >= end.replace(microsecond=0):
            last = i
            break
    return segments[first : last + 1]


def _batches(
    segments: list[catalog.ArchivedObject], size: int
) -> Iterator[list[catalog.ArchivedObject]]:
    """Runs of one timeline, cut into batches that share their boundary segment."""
    runs: list[list[catalog.ArchivedObject]] = []
    for obj in segments:
        if runs and runs[-1][-1].wal.timeline == obj.wal.timeline:
            runs[-1].append(obj)
        else:
            runs.append([obj])
    for run in runs:
        i = 0
        while True:
            yield run[i : i + size]
            if i + size >= len(run):
                break
            i += size - 1


def inspect(repo: Repository, options: InspectOptions) -> dict[str, Any]:
    """Read the WAL of the window, return the `--json` result (events oldest first)."""
    if options.end <= options.start:
        raise errors.UsageError("--to must be after --from")
    if options.batch < 2:
        raise errors.UsageError("--batch must be at least 2 (batches share one segment)")
    database_oid: int | None = None
    if options.database is not None:
        if options.database.isdigit():
            database_oid = int(options.database)
        elif options.dsn is None:
            raise errors.UsageError(
                "--database by name needs --dsn to find its OID; or give the OID "
                "(SELECT oid FROM pg_database WHERE datname = '...')"
            )
    from tonebridge_dr.runner.engines.postgres import tools

    waldump_bin = tools.tool("pg_waldump")
    archive = catalog.WalArchive(repo.storage)
    size = _segment_size(repo)
    segments = in_window(
        path_segments(archive, size, options.timeline, options.passphrase, options.decrypt_key),
        options.start, options.end,
    )
    inspector = waldump.Inspector(min_rows=options.min_rows)
    settings = fetch.FetchSettings(
        repo.url, decrypt_key=options.decrypt_key, allow_partial=True, window=0, parallel=1
    )
    with tempfile.TemporaryDirectory(
        prefix="tonebridge-dr-wal-inspect-", dir=options.work_dir
    ) as tmp:
        folder = Path(tmp)
        os.chmod(folder, 0o700)
        for batch in _batches(segments, options.batch):
            _read_batch(archive, batch, folder, settings, waldump_bin, inspector)
    events = [
        event for event in inspector.events
        if event.commit_time is None or options.start <= event.commit_time <= options.end
    ]
    names: dict[int, str] = {}
    if options.dsn is not None:
        names = map_names(events, options.dsn)
        if options.database is not None and database_oid is None:
            matches = [oid for oid, name in names.items() if name == options.database]
            database_oid = matches[0] if matches else _database_oid(options.dsn, options.database)
    if database_oid is not None:
        events = [event for event in events if database_oid in event.databases]
    result: dict[str, Any] = {
        "from": _format_time(options.start),
        "to": _format_time(options.end),
        "min_rows": options.min_rows,
        "segments": len(segments),
        "first_segment": segments[0].name if segments else None,
        "last_segment": segments[-1].name if segments else None,
        "records": inspector.records,
        "events": [event.result() for event in events],
    }
    if options.dsn is None and any(event.relations or event.databases for event in events):
        result["hint"] = MAPPING_HINT
    return result


def _format_time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _read_batch(
    archive: catalog.WalArchive,
    batch: list[catalog.ArchivedObject],
    folder: Path,
    settings: fetch.FetchSettings,
    waldump_bin: str,
    inspector: waldump.Inspector,
) -> None:
    files: list[Path] = []
    try:
        for obj in batch:
            dest = folder / obj.wal.segment  # pg_waldump wants the segment's own name
            fetch.download(archive, obj.wal.segment, dest, settings)
            files.append(dest)
        size = files[0].stat().st_size if batch[0].wal.kind == naming.SEGMENT else None
        _waldump(waldump_bin, folder, batch, inspector, size)
    finally:
        for path in files:
            path.unlink(missing_ok=True)


def _waldump(
    waldump_bin: str,
    folder: Path,
    batch: list[catalog.ArchivedObject],
    inspector: waldump.Inspector,
    size: int | None,
) -> None:
    first, last = batch[0].wal.segment, batch[-1].wal.segment
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TZ": "UTC", "LC_ALL": "C"}
    with tempfile.TemporaryFile(dir=folder) as stderr:
        proc = subprocess.Popen(
            [waldump_bin, "-p", str(folder), first, last],
            stdout=subprocess.PIPE, stderr=stderr, env=env, text=True, errors="replace",
            start_new_session=True,
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                inspector.feed(line)
            rc = proc.wait()
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
                proc.wait()
        stderr.seek(0)
        message = stderr.read().decode("utf-8", "replace").strip()
    if rc == 0:
        return
    line = message.splitlines()[-1] if message else f"exit status {rc}"
    if not any(marker in line for marker in _END_OF_WAL):
        raise errors.ToolError(f"pg_waldump failed on {first}..{last}: {line}")
    match = _ERROR_AT_RE.search(line)
    if match is not None and size is not None and len(batch) > 1:
        stopped = naming.parse_lsn(match.group(1))
        last_begins = naming.parse(last).segno(size) * size
        if stopped < last_begins:
            raise errors.ToolError(
                f"pg_waldump cannot read the archived WAL at {match.group(1)} (in "
                f"{naming.segment_name(batch[0].wal.timeline, stopped // size, size)}), "
                f"before the end of {first}..{last}: {line}"
            )
    log.debug("pg_waldump ended %s..%s: %s", first, last, line)


def _database_oid(dsn: str, name: str) -> int:
    from tonebridge_dr.runner.engines.postgres import connection

    info = connection.ConnInfo.parse(dsn)
    with connection.connect(info, autocommit=True, purpose="name lookup") as conn:
        row = conn.execute("SELECT oid FROM pg_database WHERE datname = %s", (name,)).fetchone()
    if row is None:
        raise errors.UsageError(f"no database {name!r} on the --dsn server; give its OID")
    return int(row[0])


def map_names(events: list[waldump.Event], dsn: str) -> dict[int, str]:
    """Fill in database and relation names from the server at `dsn`; returns oid -> name.

    Read-only queries; a relation the server does not have (dropped there too) keeps
    its numbers only.
    """
    from tonebridge_dr.runner.engines.postgres import connection

    info = connection.ConnInfo.parse(dsn)
    with connection.connect(info, autocommit=True, purpose="name lookup") as conn:
        rows = conn.execute("SELECT oid, datname, dattablespace FROM pg_database").fetchall()
    databases = {int(oid): (str(name), int(spc)) for oid, name, spc in rows}
    names = {oid: name for oid, (name, _) in databases.items()}
    wanted = {rel.database_oid for event in events for rel in event.relations}
    for db_oid in sorted(wanted & set(databases)):
        name, default_spc = databases[db_oid]
        try:
            with connection.connect(
                info.with_dbname(name), autocommit=True, purpose="name lookup"
            ) as conn:
                for event in events:
                    for rel in event.relations:
                        if rel.database_oid != db_oid:
                            continue
                        if rel.filenode is not None:
                            spc = 0 if rel.tablespace == default_spc else rel.tablespace
                            row = conn.execute(
                                "SELECT pg_filenode_relation(%s, %s)::regclass::text",
                                (spc, rel.filenode),
                            ).fetchone()
                            rel.name = row[0] if row and row[0] else rel.name
                        if rel.name is None and rel.oid is not None:
                            row = conn.execute(
                                "SELECT oid::regclass::text FROM pg_class WHERE oid = %s",
                                (rel.oid,),
                            ).fetchone()
                            rel.name = row[0] if row else None
        except errors.DRError as exc:
            log.warning("cannot read relation names of database %s: %s", name, exc)
    for event in events:
        event.database_names = {oid: names[oid] for oid in event.databases if oid in names}
    return names
