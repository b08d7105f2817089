"""The fast path of a logical backup: what makes it fast must not change what it stores.

- a tool's stdout streamed through one reused buffer, batched when the tool is slow,
  and prefetched by a thread until the consumer is ready: every byte, in order;
- tool versions probed concurrently; local writes handed to writeback as they go;
- an S3 multipart upload holding each part once;
- `backup postgres` loading neither the repository nor restore/WAL code before pg_dump
  runs, and a failure between pg_dump's start and the first stored byte leaving nothing.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import random
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import ROOT
from tests.fixtures.postgres import PgServer, clean_env
from tests.fixtures.procs import children
from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.postgres import dump, process, tools
from tonebridge_dr.runner.repository.catalog import Repository
from tonebridge_dr.runner.storage import local as local_storage
from tonebridge_dr.runner.storage import open_storage
from tonebridge_dr.runner.storage.s3 import S3Storage

# A writer of `total` bytes (a repeating, position-dependent pattern) in `step`-byte writes,
# pausing `pause` seconds every `every` writes: slow phases exercise the read batching.
_WRITER = """
import os, sys, time
total, step, pause, every = (float(a) for a in sys.argv[1:])
pattern = bytes(range(251)) * (int(step) // 251 + 2)
done = n = 0
while done < total:
    size = int(min(step, total - done))
    offset = done % 251
    os.write(1, pattern[offset : offset + size])
    done += size
    n += 1
    if pause and n % int(every) == 0:
        time.sleep(pause)
"""


def _expected(total: int) -> bytes:
    return (bytes(range(251)) * (total // 251 + 1))[:total]


def _writer(total: int, step: int, pause: float = 0.0, every: int = 1) -> process.ToolProcess:
    argv = [sys.executable, "-c", _WRITER, str(total), str(step), str(pause), str(every)]
    return process.ToolProcess(argv, stdout=process.PIPE, name="writer")


def _collect(chunks: Iterator[memoryview]) -> bytes:
    # Views are valid until the next chunk is asked for: copy each one right away.
    return b"".join(bytes(chunk) for chunk in chunks)


def _wait_for(predicate: Any, what: str) -> None:
    for _ in range(600):  # a bounded wait-until, not a timing assertion
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


# --- streaming a tool's stdout ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("total", "step", "pause", "every"),
    [
        (3 * 1024 * 1024 + 17, 4096, 0.0, 1),  # pg_dump-like 4 KiB writes, fast
        (600_000, 4096, 0.002, 8),  # slow: small reads, then batched ones
        (5 * 1024 * 1024, 1024 * 1024 + 3, 0.0, 1),  # writes larger than a chunk
        (0, 1, 0.0, 1),  # nothing at all
    ],
)
def test_stream_stdout_yields_every_byte_in_order(
    total: int, step: int, pause: float, every: int
) -> None:
    with _writer(total, step, pause, every) as tool:
        data = _collect(tool.stream_stdout())
        tool.check()
    assert data == _expected(total)


def test_stream_stdout_reuses_one_buffer() -> None:
    with _writer(4 * 1024 * 1024, 64 * 1024) as tool:
        owners = {id(chunk.obj) for chunk in tool.stream_stdout()}
        tool.check()
    assert len(owners) == 1


def test_prefetched_output_comes_first_then_the_rest() -> None:
    total = 6 * 1024 * 1024 + 5
    with _writer(total, 4096) as tool:
        tool.prefetch_stdout(limit=2 * 1024 * 1024)
        _wait_for(lambda: sum(map(len, tool._prefetched)) >= 2 * 1024 * 1024, "the prefetch")
        time.sleep(0.05)  # the limit holds: the tool now waits on a full pipe
        assert sum(map(len, tool._prefetched)) == 2 * 1024 * 1024
        data = _collect(tool.stream_stdout())
        tool.check()
    assert data == _expected(total)


def test_prefetch_that_reaches_the_end_of_output() -> None:
    with _writer(300_000, 4096) as tool:
        tool.prefetch_stdout()
        _wait_for(lambda: tool.proc.poll() is not None, "the writer to finish")
        data = _collect(tool.stream_stdout())
        tool.check()
    assert data == _expected(300_000)


def test_leaving_early_stops_the_prefetch_and_the_tool() -> None:
    tool = _writer(10**12, 65536)  # would write forever
    with pytest.raises(RuntimeError), tool:
        tool.prefetch_stdout(limit=1024 * 1024)
        raise RuntimeError("the consumer failed")
    assert tool.proc.returncode is not None
    assert not any(t.name == "writer-prefetch" for t in threading.enumerate())


# --- tool versions -----------------------------------------------------------------------------
def test_version_probe_matches_version() -> None:
    pg_dump = tools.tool("pg_dump")
    tools._versions.pop(pg_dump, None)
    with tools.VersionProbe(pg_dump) as probe:
        text = probe.result()
    assert text.startswith("pg_dump (PostgreSQL) ")
    assert tools.version(pg_dump) == text
    with tools.VersionProbe(pg_dump) as cached:  # known now: no process at all
        assert cached._tool is None and cached.result() == text


def test_version_probe_of_a_failing_tool(tmp_path: Path) -> None:
    broken = tmp_path / "pg_broken"
    broken.write_text("#!/bin/sh\necho 'pg_broken: error: no' >&2\nexit 3\n")
    broken.chmod(0o755)
    with tools.VersionProbe(str(broken)) as probe, pytest.raises(errors.ToolError) as caught:
        probe.result()
    assert "pg_broken failed (exit status 3): pg_broken: error: no" in str(caught.value)


# --- local writes ------------------------------------------------------------------------------
def test_local_writes_go_to_writeback_in_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, int]] = []
    real = local_storage._start_writeback

    def spy(fd: int, offset: int, length: int) -> None:
        calls.append((offset, length))
        real(fd, offset, length)

    monkeypatch.setattr(local_storage, "_start_writeback", spy)
    store = open_storage((tmp_path / "repo").as_uri())
    assert isinstance(store, local_storage.LocalStorage)
    store.writeback_step = 100_000
    data = random.Random(3).randbytes(1_000_003)
    chunks = (data[i : i + 77_777] for i in range(0, len(data), 77_777))
    assert store.put_stream("base/x/object", chunks) == len(data)
    assert store.get_bytes("base/x/object") == data
    # contiguous ranges from 0, each at least one step, never past what was written
    assert calls and calls[0][0] == 0
    for (offset, length), (next_offset, _) in itertools.pairwise(calls):
        assert next_offset == offset + length
    assert all(length >= 100_000 for _, length in calls)
    assert calls[-1][0] + calls[-1][1] <= len(data)


def test_start_writeback_ignores_what_cannot_be_written_back(tmp_path: Path) -> None:
    local_storage._start_writeback(-1, 0, 4096)  # a bad descriptor: only a hint, no error
    with (tmp_path / "f").open("wb") as handle:
        handle.write(b"x" * 8192)
        handle.flush()
        local_storage._start_writeback(handle.fileno(), 0, 8192)


def test_local_list_walks_only_the_prefix_in_key_order(tmp_path: Path) -> None:
    store = open_storage((tmp_path / "repo").as_uri())
    for key in ("base/a-c", "base/a/b", "base/a/a", "base/b", "wal/0001", "top"):
        store.put_bytes(key, b"k")
    (tmp_path / "repo" / "base" / "a" / ".x.part").write_bytes(b"in flight")
    assert [i.key for i in store.list("base/")] == ["base/a-c", "base/a/a", "base/a/b", "base/b"]
    assert [i.key for i in store.list("base/a/")] == ["base/a/a", "base/a/b"]
    assert [i.key for i in store.list("base/a")] == ["base/a-c", "base/a/a", "base/a/b"]
    assert [i.key for i in store.list("")][-1] == "wal/0001"
    assert list(store.list("nothing/")) == []


# --- S3 parts ----------------------------------------------------------------------------------
def test_s3_multipart_holds_each_part_once(s3_repo_url: str) -> None:
    store = open_storage(s3_repo_url)
    assert isinstance(store, S3Storage)
    part = S3Storage.MIN_PART_SIZE
    store.part_size = part
    data = random.Random(5).randbytes(3 * part + 12345)
    store.put_bytes("warm-up", b"w")  # the client's own first-use allocations

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(data), 700_001):
            yield data[i : i + 700_001]

    tracemalloc.start()
    try:
        assert store.put_stream("big", chunks()) == len(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # one part buffer plus the chunk being split (and botocore's small change): not two parts
    assert peak < part + 3 * 700_001, f"peak {peak} bytes for {part}-byte parts"
    assert store.get_bytes("big") == data


# --- backup postgres ---------------------------------------------------------------------------
def test_backup_parser_loads_no_repository_restore_or_wal_code() -> None:
    code = (
        "import sys\n"
        "from tonebridge_dr.runner import cli\n"
        "argv = ['backup', 'postgres', '--dsn', 'host=x', '--repo', 'file:///x']\n"
        "cli.build_parser(argv).parse_args(argv)\n"
        "heavy = ('pydantic', 'boto3', 'tonebridge_dr.runner.repository',\n"
        "         'tonebridge_dr.runner.engines.postgres.restore',\n"
        "         'tonebridge_dr.runner.engines.postgres.basebackup',\n"
        "         'tonebridge_dr.runner.engines.postgres.wal.commands', 'importlib.metadata')\n"
        "print(sorted(name for name in heavy if name in sys.modules))\n"
    )
    env = clean_env(PYTHONPATH=str(ROOT / "operator"))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    # psycopg loads importlib.metadata itself; our parser must not add the rest
    assert out.stdout.strip() in ("[]", "['importlib.metadata']"), out.stdout


def _pg_dump_children() -> list[int]:
    return children(os.getpid(), name="pg_dump", live=True)


@pytest.fixture
def source(pg: PgServer, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("PGPASSWORD", pg.password)
    dsn = pg.create_database("perf")
    pg.execute(
        dsn.rsplit("dbname=", 1)[1],
        "CREATE TABLE t (id int PRIMARY KEY, body text)",
        "INSERT INTO t SELECT i, repeat(md5(i::text), 20) FROM generate_series(1, 20000) i",
    )
    return dsn


def test_the_repository_opens_while_pg_dump_already_runs(source: str, tmp_path: Path) -> None:
    url = (tmp_path / "repo").as_uri()
    seen: list[int] = []

    opened: list[dt.datetime] = []

    def open_repository() -> Repository:
        seen.extend(_pg_dump_children())
        opened.append(dt.datetime.now(dt.UTC))
        return Repository.open(url)

    before = dt.datetime.now(dt.UTC)
    manifest = dump.backup_logical(open_repository, source, dump.LogicalBackupOptions())
    assert seen, "pg_dump should be running when the repository is opened"
    # The backup starts with its snapshot, not when the repository happens to open.
    assert before <= manifest.started_at < opened[0]
    assert {o.name for o in manifest.objects} == {"database.dump", "globals.sql"}
    assert manifest.tools["pg_dump"].startswith("pg_dump (PostgreSQL) ")
    assert manifest.extra["consistent_snapshot"] is True
    assert Repository.open(url).verify(manifest.id).ok
    raw = b"".join(Repository.open(url).read_object(manifest, "database.dump"))
    entry = manifest.object("database.dump")
    assert raw.startswith(b"PGDMP") and entry is not None and entry.raw_size == len(raw)
    assert _pg_dump_children() == []


def test_a_failure_before_the_first_byte_is_stored_stops_pg_dump(
    source: str, tmp_path: Path
) -> None:
    root = tmp_path / "repo"

    def broken_repository() -> Repository:
        assert _pg_dump_children()
        raise errors.RepositoryConfigError("the repository went away")

    with pytest.raises(errors.RepositoryConfigError):
        dump.backup_logical(broken_repository, source, dump.LogicalBackupOptions())
    assert _pg_dump_children() == []
    assert not root.exists() or not [p for p in root.rglob("*") if p.is_file()]
