"""The machinery of the fault-injection suite: run the installed runner CLI the way a Job
does, hurt it (SIGKILL at a random moment, a full disk, an S3 endpoint that hangs or
dies), and check what it left behind against the invariants every test here shares:

1. every backup `backups list` shows verifies (`Repository.verify`);
2. a restore never exits 0 with less data than the source had, and a killed or failed
   logical restore leaves its target as it was (checked in test_kill_restores.py);
3. nothing the runner started outlives it: its child processes (found in /proc while it
   is stopped, just before the SIGKILL) and their connections to PostgreSQL and Redis are
   gone within SETTLE_BOUND;
4. the next prune, run with its grace passed, leaves no temp file (`.*.part`), no
   unfinished multipart upload and no backup folder without manifest;
5. a run that was not killed exits with a documented code, never 1 ("internal error"),
   and with 0 only when its backup is listed and verifies.

Every check goes through `Ledger.check`, so the session can report how many faults were
injected and how many invariant checks they were met with.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from tests.fixtures import procs
from tests.fixtures.pg_wal import WAL_COMMAND, segment_bytes
from tests.fixtures.postgres import PgServer, clean_env
from tests.fixtures.redis import RedisServer
from tonebridge_dr.api import runner_contract
from tonebridge_dr.runner.engines.postgres.wal import catalog, naming
from tonebridge_dr.runner.repository import Manifest, Repository
from tonebridge_dr.runner.repository.retention import RetentionPolicy
from tonebridge_dr.runner.storage import open_storage
from tonebridge_dr.runner.storage.local import LocalStorage

#: The installed CLI, as in a Job's container (and PostgreSQL's archive_command).
CLI = WAL_COMMAND
SEED_ENV = "TONEBRIDGE_DR_FAULT_SEED"
SCALE_ENV = "TONEBRIDGE_DR_FAULT_SCALE"
DEFAULT_SEED = "tonebridge-dr-faults-1"
#: How long a killed runner's processes, and its tools' server connections, may linger.
SETTLE_BOUND = 20.0
#: A run that is not killed must end within this (a hung run is a failure, not a wait).
RUN_BOUND = 120.0
#: `prune` is asked as if this much time had passed: every grace is over.
LATER = dt.timedelta(hours=1)
#: Kill delays are drawn from [0, KILL_SPREAD x the measured run time]: a few runs finish.
KILL_SPREAD = 1.1
#: Seconds between two looks at a byte counter while a run goes.
POLL = 0.002


# -- counting -------------------------------------------------------------------------------


@dataclasses.dataclass
class Ledger:
    """Faults injected (by kind) and invariant checks made, for the session summary."""

    faults: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    checks: int = 0
    seconds: float = 0.0
    #: What the faults left for the checks to find (so a check that passed was not idle).
    found: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)

    def fault(self, kind: str) -> None:
        self.faults[kind] += 1

    def note(self, what: str, n: int = 1) -> None:
        self.found[what] += n

    def check(self, ok: bool, message: str | Callable[[], str]) -> None:
        """One invariant check: counted, and an AssertionError with `message` when violated."""
        self.checks += 1
        if not ok:
            raise AssertionError(message() if callable(message) else message)

    @property
    def injected(self) -> int:
        return sum(self.faults.values())

    def summary(self) -> str:
        return (
            f"faults: {self.injected} injected, {self.checks} invariant checks, "
            f"{self.seconds:.0f} s"
        )


#: One ledger per session (the terminal summary of tests/faults/conftest.py prints it).
LEDGER = Ledger()


def seed() -> str:
    return os.environ.get(SEED_ENV, DEFAULT_SEED)


def seeded(nodeid: str) -> random.Random:
    """The random source of one test: the seed and the test's id, so that running a test
    again with the seed the summary names repeats its faults (timing aside)."""
    return random.Random(f"{seed()}:{nodeid}")


def count(base: int) -> int:
    """How many faults a scenario injects: `base` x $TONEBRIDGE_DR_FAULT_SCALE (default 1)."""
    scale = float(os.environ.get(SCALE_ENV, "1") or "1")
    return max(1, round(base * scale))


# -- running the CLI -----------------------------------------------------------------------


def runner_env(**extra: str) -> dict[str, str]:
    """The environment of a runner: ours (the AWS_* of moto included) without libpq or
    TONEBRIDGE_DR_* variables, plus `extra`."""
    env = {k: v for k, v in clean_env().items() if not k.startswith("TONEBRIDGE_DR_")}
    env.update(extra)
    return env


@dataclasses.dataclass
class Run:
    """One finished (or killed) runner process."""

    argv: list[str]
    code: int | None  # None: killed with SIGKILL
    elapsed: float
    out: str
    err: str
    #: What the runner had started when it was killed: pid -> start time (/proc stat field 22).
    tree: dict[int, int]

    @property
    def killed(self) -> bool:
        return self.code is None

    def result(self) -> dict[str, Any]:
        data = json.loads(self.out)
        assert isinstance(data, dict), self.out
        return data

    def describe(self) -> str:
        status = "killed" if self.killed else f"exit {self.code}"
        tail = " | ".join(self.err.strip().splitlines()[-3:])
        command = " ".join(self.argv[:2])
        return f"`tonebridge-dr {command}`: {status} after {self.elapsed:.2f} s: {tail}"


class Runner:
    """Starts the CLI in the background; `finish` waits for it or kills it."""

    def __init__(self, argv: list[str], env: Mapping[str, str], workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.argv = argv
        self._out = workdir / "stdout"
        self._err = workdir / "stderr"
        with self._out.open("wb") as out, self._err.open("wb") as err:
            self.began = time.monotonic()
            self.proc = subprocess.Popen(
                [CLI, *argv], env=dict(env), stdin=subprocess.DEVNULL, stdout=out, stderr=err
            )

    def kill(self) -> dict[int, int]:
        """SIGSTOP (so it starts nothing more), note its process tree, SIGKILL, reap."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGSTOP)
        tree = descendants(self.proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        return tree

    def finish(
        self, *, kill_at: float | None = None, kill_when: Callable[[], bool] | None = None,
        bound: float = RUN_BOUND,
    ) -> Run:
        """Wait until the run ends. With `kill_at`, SIGKILL it that many seconds after its
        start; with `kill_when`, as soon as that returns True (polled every POLL seconds);
        unless it ended before. A run outliving `bound` is killed and reported."""
        tree: dict[int, int] = {}
        if kill_when is None:
            wait = bound if kill_at is None else kill_at
            try:
                self.proc.wait(timeout=max(0.0, self.began + wait - time.monotonic()))
            except subprocess.TimeoutExpired:
                tree = self.kill()
                if kill_at is None:
                    self._overran(bound)
        else:
            while self.proc.poll() is None:
                if kill_when():
                    tree = self.kill()
                    break
                if time.monotonic() - self.began > bound:
                    self.kill()
                    self._overran(bound)
                time.sleep(POLL)
        elapsed = time.monotonic() - self.began
        code = self.proc.returncode
        return Run(
            argv=self.argv,
            code=None if code == -signal.SIGKILL else code,
            elapsed=elapsed,
            out=self._out.read_text(errors="replace"),
            err=self._err.read_text(errors="replace"),
            tree=tree if code == -signal.SIGKILL else {},
        )

    def _overran(self, bound: float) -> None:
        raise AssertionError(
            f"`tonebridge-dr {' '.join(self.argv[:2])}` still ran after {bound:.0f} s; "
            f"stderr: {self._err.read_text(errors='replace')[-2000:]}"
        )


def run(
    argv: list[str], env: Mapping[str, str], workdir: Path, *, kill_at: float | None = None,
    kill_when: Callable[[], bool] | None = None,
) -> Run:
    return Runner(argv, env, workdir).finish(kill_at=kill_at, kill_when=kill_when)


class Progress:
    """A byte counter the server keeps for the runner's tools, to kill a run after a
    given number of bytes went through: `pg_stat_progress_copy` (pg_dump's COPY TO in the
    source, pg_restore's or psql's COPY FROM in a restore target) or
    `pg_stat_progress_basebackup` (pg_basebackup). The views show the command running
    now; the counter is the sum of the largest value seen per command, so it grows over
    a whole run. Polled from our own session, which `close` ends."""

    QUERIES = {
        "copy": "SELECT pid::text || '/' || relid::text, bytes_processed "
                "FROM pg_stat_progress_copy WHERE datname = %s",
        "basebackup": "SELECT pid::text, backup_streamed FROM pg_stat_progress_basebackup "
                      "WHERE %s::text IS NOT NULL",
    }

    def __init__(self, server: PgServer, kind: str, database: str) -> None:
        self.query = self.QUERIES[kind]
        self.database = database
        self.conn = server.connect("postgres", autocommit=True)
        self.seen: dict[str, int] = {}

    def __call__(self) -> int:
        for key, done in self.conn.execute(self.query.encode(), (self.database,)).fetchall():
            self.seen[key] = max(self.seen.get(key, 0), int(done or 0))
        return sum(self.seen.values())

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclasses.dataclass(frozen=True)
class Measure:
    """The typical run: its wall time and (with a Progress) the bytes its tools moved."""

    seconds: float
    progress: int


@dataclasses.dataclass(frozen=True)
class Fault:
    """When to kill one run: `at` seconds after its start, or after `after_bytes` bytes."""

    at: float | None = None
    after_bytes: int | None = None

    def __str__(self) -> str:
        if self.after_bytes is not None:
            return f"kill after {self.after_bytes} bytes"
        return f"kill at {self.at or 0.0:.3f} s"


#: A command line, or a function giving the next one (e.g. a fresh restore target each time).
Argv = list[str] | Callable[[], list[str]]


def _argv(argv: Argv) -> list[str]:
    return argv() if callable(argv) else argv


def measure(
    argv: Argv, env: Mapping[str, str], workdir: Path, ledger: Ledger,
    check: Callable[[Run], None], progress: Callable[[], Progress] | None = None,
    runs: int = 2,
) -> Measure:
    """Run `argv` `runs` times unhurt (each must exit 0 and pass `check`): the shortest
    wall time (the first run pays for cold caches) and the most bytes `progress` saw."""
    times = []
    moved = 0
    for n in range(runs):
        with contextlib.ExitStack() as stack:
            watch: Callable[[], bool] | None = None
            if progress is not None:
                probe = stack.enter_context(progress())
                watch = _watching(probe)
            done = run(_argv(argv), env, workdir / f"clean-{n}", kill_when=watch)
            if progress is not None:
                moved = max(moved, probe())
        ledger.check(done.code == 0, f"an unhurt run failed: {done.describe()}")
        check(done)
        times.append(done.elapsed)
    return Measure(min(times), moved)


def _watching(probe: Progress) -> Callable[[], bool]:
    """A kill condition that never holds, polling `probe` all along (to count the bytes)."""

    def never() -> bool:
        return probe() < 0

    return never


def faults(rnd: random.Random, typical: Measure, timed: int, counted: int) -> list[Fault]:
    """`timed` kill moments over [0, KILL_SPREAD x the run time] and `counted` byte counts
    over [0, the bytes of a whole run], each drawn at random from one of as many equal
    slices (no phase of a run goes without kills, whatever the seed), in random order."""
    chosen = [Fault(at=value) for value in spread(rnd, typical.seconds * KILL_SPREAD, timed)]
    if typical.progress:
        chosen += [Fault(after_bytes=round(value))
                   for value in spread(rnd, float(typical.progress), counted)]
    rnd.shuffle(chosen)
    return chosen


def spread(rnd: random.Random, span: float, n: int) -> list[float]:
    """`n` values in [0, span], one drawn at random from each of `n` equal slices."""
    step = span / max(1, n)
    return [rnd.uniform(slot * step, (slot + 1) * step) for slot in range(n)]


def inject(
    fault: Fault, argv: Argv, env: Mapping[str, str], workdir: Path,
    progress: Callable[[], Progress] | None = None,
) -> Run:
    """One run with `fault`: killed by timer, or once `progress` counted its bytes."""
    if fault.after_bytes is None:
        return run(_argv(argv), env, workdir, kill_at=fault.at)
    assert progress is not None
    with progress() as probe:
        threshold = fault.after_bytes
        return run(_argv(argv), env, workdir, kill_when=lambda: probe() >= threshold)


# -- processes ---------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time) of a process, None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], int(fields[19])


def descendants(pid: int) -> dict[int, int]:
    """Every live process below `pid` (children, theirs, ...): pid -> start time."""
    found: dict[int, int] = {}
    todo = [pid]
    while todo:
        for child in procs.children(todo.pop(), live=True):
            stat = _stat(child)
            if stat is not None and child not in found:
                found[child] = stat[1]
                todo.append(child)
    return found


def _alive(pid: int, started: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z" and stat[1] == started


def _describe(pid: int) -> str:
    with contextlib.suppress(OSError):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        return f"{pid} ({b' '.join(argv).decode(errors='replace')[:200]})"
    return str(pid)


def settle(probe: Callable[[], list[str]], bound: float = SETTLE_BOUND) -> list[str]:
    """Poll `probe` (what is still there) until it is empty or `bound` passed; the rest."""
    deadline = time.monotonic() + bound
    while True:
        left = probe()
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def check_tree_gone(ledger: Ledger, done: Run, where: str) -> None:
    """Invariant 3, locally: the processes the killed runner had started end by themselves."""
    if not done.killed:
        return
    ledger.note("tool processes of killed runners (all ended)", len(done.tree))

    def left() -> list[str]:
        return [_describe(pid) for pid, started in done.tree.items() if _alive(pid, started)]

    survivors = settle(left)
    ledger.check(
        not survivors,
        lambda: f"{where}: processes of the killed runner survive {SETTLE_BOUND:.0f} s: "
        f"{survivors}",
    )


def check_pg_idle(
    ledger: Ledger, server: PgServer, where: str, *, database: str | None = None
) -> None:
    """Invariant 3, server side: no client backend or WAL sender is left (pg_dump,
    pg_basebackup, pg_restore, psql, the runner's own connections)."""

    def left() -> list[str]:
        rows = server.query(
            "postgres",
            "SELECT pid, backend_type, application_name, datname, state FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid() AND backend_type IN ('client backend', 'walsender') "
            "AND (%s::text IS NULL OR datname = %s)",
            (database, database),
        )
        return [" ".join(str(v) for v in row) for row in rows]

    survivors = settle(left)
    ledger.check(
        not survivors, lambda: f"{where}: PostgreSQL sessions survive the run: {survivors}"
    )


def check_redis_idle(ledger: Ledger, server: RedisServer, where: str) -> None:
    """Invariant 3 for Redis: no connection of the runner, no replica, no fork streaming an
    RDB to a replica that is gone."""

    def left() -> list[str]:
        client = server.client()
        try:
            own = client.client_id()
            clients = [c for c in client.client_list() if int(c["id"]) != own]
            info = client.info()
        finally:
            client.close()
        out = [f"client {c.get('addr')} cmd={c.get('cmd')} flags={c.get('flags')}" for c in clients]
        if info.get("connected_slaves", 0):
            out.append(f"{info['connected_slaves']} replicas")
        if info.get("rdb_bgsave_in_progress", 0):
            out.append("an RDB child")
        return out

    survivors = settle(left)
    ledger.check(not survivors, lambda: f"{where}: Redis still serves the runner: {survivors}")


# -- the repository ------------------------------------------------------------------------


def check_exit(
    ledger: Ledger, done: Run, where: str, expected: Iterable[int] | None = None
) -> None:
    """Invariant 5: a run that was not killed exits with a documented code, never 1."""
    if done.killed:
        return
    assert done.code is not None
    ledger.check(
        done.code == runner_contract.EXIT_OK
        or (done.code != 1 and runner_contract.exit_code(done.code) is not None),
        lambda: f"{where}: undocumented exit code: {done.describe()}",
    )
    if expected is not None:
        allowed = set(expected)
        ledger.check(done.code in allowed,
                     lambda: f"{where}: expected exit {sorted(allowed)}: {done.describe()}")


def verify_listed(ledger: Ledger, url: str, where: str) -> list[Manifest]:
    """Invariant 1: every backup the catalog lists verifies; returns them."""
    repo = Repository.open(url)
    backups = repo.list_backups()
    for manifest in backups:
        report = repo.verify(manifest.id)
        ledger.check(report.ok, f"{where}: listed backup {manifest.id} fails verify: "
                     f"{[p.message for p in report.problems]}")
    return backups


def check_committed(ledger: Ledger, url: str, done: Run, where: str) -> None:
    """Invariant 5: exit 0 of a backup means its backup is listed and verifies."""
    if done.code != 0:
        return
    backup_id = done.result()["id"]
    repo = Repository.open(url)
    listed = [m.id for m in repo.list_backups()]
    ledger.check(backup_id in listed,
                 lambda: f"{where}: exit 0 but backup {backup_id} is not listed ({listed})")
    report = repo.verify(backup_id)
    ledger.check(report.ok, lambda: f"{where}: exit 0 but backup {backup_id} fails verify: "
                 f"{[p.message for p in report.problems]}")


def _part_files(repo: Repository) -> list[str]:
    storage = repo.storage
    if not isinstance(storage, LocalStorage):
        return []
    return sorted(str(p.relative_to(storage.root)) for p in storage.root.rglob(".*.part"))


def _incomplete_folders(repo: Repository) -> list[str]:
    folders: dict[str, set[str]] = {}
    for info in repo.storage.list("base/"):
        backup_id, _, rest = info.key[len("base/"):].partition("/")
        folders.setdefault(backup_id, set()).add(rest)
    return sorted(b for b, names in folders.items() if "manifest.json" not in names)


def prune_and_check(ledger: Ledger, url: str, where: str, *, keep: int = 1) -> None:
    """Invariant 4: a prune with its grace passed leaves no temp file, no unfinished
    upload, no folder without manifest, and finds no unreadable manifest."""
    repo = Repository.open(url)
    report = repo.prune(RetentionPolicy(keep_last=keep), now=dt.datetime.now(dt.UTC) + LATER)
    ledger.note("temp files and unfinished uploads pruned", len(report.leftovers))
    ledger.note("backup folders without manifest pruned", len(report.orphans))
    ledger.check(not report.unreadable,
                 lambda: f"{where}: prune found unreadable manifests: {report.unreadable}")
    leftovers = [left.key for left in repo.storage.list_leftovers()]
    ledger.check(not leftovers, lambda: f"{where}: leftovers survive prune: {leftovers}")
    parts = _part_files(repo)
    ledger.check(not parts, lambda: f"{where}: temp files survive prune: {parts}")
    incomplete = _incomplete_folders(repo)
    ledger.check(not incomplete,
                 lambda: f"{where}: folders without manifest survive prune: {incomplete}")


def check_repository(ledger: Ledger, url: str, done: Run, where: str, *, keep: int = 1) -> None:
    """Invariants 1, 4 and the repository half of 5 after one run, killed or not."""
    check_committed(ledger, url, done, where)
    verify_listed(ledger, url, where)
    prune_and_check(ledger, url, where, keep=keep)


def check_backup_fault(
    ledger: Ledger, url: str, done: Run, where: str, *,
    expected: Iterable[int] | None = None, keep: int = 1,
) -> None:
    """Invariants 1, 3 (the runner's processes), 4 and 5 after one backup run."""
    check_exit(ledger, done, where, expected)
    check_tree_gone(ledger, done, where)
    check_repository(ledger, url, done, where, keep=keep)


# -- WAL -------------------------------------------------------------------------------------

#: Segments of 16 MiB of random bytes: an S3 multipart upload each (parts of 8 MiB).
SEGMENT = 16 * 1024 * 1024


class Segments:
    """Segment files in a pg_wal folder: a valid long page header, then random bytes (one
    random body for all, so each costs no more than a write)."""

    def __init__(self, pg_wal: Path, rnd: random.Random) -> None:
        self.pg_wal = pg_wal
        (pg_wal / "archive_status").mkdir(parents=True)
        self.body = rnd.randbytes(SEGMENT)
        self.segno = 0

    def next(self) -> Path:
        self.segno += 1
        name = naming.segment_name(1, self.segno, SEGMENT)
        header = segment_bytes(name, SEGMENT, fill=0)[:64]
        path = self.pg_wal / name
        path.write_bytes(header + self.body[len(header):])
        return path


def check_archived(ledger: Ledger, url: str, path: Path, where: str, *, pushed: bool) -> None:
    """Invariant 1 for WAL: every stored copy of the segment at `path` holds its exact
    content (read back through its checksum); `pushed` (exit 0): exactly one copy."""
    archive = catalog.WalArchive(open_storage(url))
    stored = archive.objects_for(naming.parse(path.name))
    content = path.read_bytes()
    for obj in stored:
        ledger.check(archive.read_bytes(obj) == content,
                     f"{where}: {obj.key} does not hold {path.name}")
    if pushed:
        ledger.check(len(stored) == 1, f"{where}: {len(stored)} copies of {path.name}")


def check_wal_push(
    ledger: Ledger, url: str, path: Path, done: Run, env: Mapping[str, str], workdir: Path,
    where: str,
) -> None:
    """After one wal-push of `path`, hurt or not: what is stored is whole, the retry
    PostgreSQL makes next exits 0 with exactly one copy stored, and a prune with its
    grace passed leaves nothing of the hurt run."""
    check_archived(ledger, url, path, where, pushed=done.code == 0)
    retry = run(["wal-push", "--repo", url, str(path)], env, workdir)
    check_exit(ledger, retry, f"{where}, retried", expected=[0])
    check_archived(ledger, url, path, f"{where}, retried", pushed=True)
    prune_and_check(ledger, url, where)
