"""Where a WAL drain spends its CPU: tonebridge-dr's background pusher under py-spy, and the
whole machine's CPU seconds of each method's drain (bench/README.md, issue #18).

    .venv/bin/python -m bench wal-profile [--segments 300] [--py-spy PATH] [--out DIR]
    .venv/bin/python -m bench wal-profile --backup-mb 2048   # a full physical backup instead

One private PostgreSQL 15 cluster with a backlog of `--segments` `.ready` segments (the
same generator as bench/peers.py). For each method (ours through the compiled front
door, pgBackRest async) the backlog is drained once, into a fresh file:// archive, while
/proc/stat counts the CPU seconds the whole machine spent (user + system, every process:
PostgreSQL's archiver, the calls, the pusher / pgBackRest's workers). Our background
pusher is sampled by py-spy (100 Hz, native frames off) from the moment it starts;
its samples are summed by the function they were in ("self" time) and by the top-level
step of one upload (read, SHA-256, zstd, write) they were under.

py-spy is not a dependency of the project: install it anywhere
(`pip install --target /tmp/pyspy py-spy`) and pass `--py-spy /tmp/pyspy/bin/py-spy`.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.peers import Bench
from bench.wal_bench import generate_backlog, ready_files, set_archive_command
from tonebridge_dr.runner.engines.postgres.wal import spool


def cpu_seconds() -> float:
    """User + system CPU seconds of the whole machine so far (/proc/stat, all cores)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system = (int(v) for v in fields[:3])
    irq, softirq = int(fields[5]), int(fields[6])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


class Sampler:
    """Waits for a process that writes its pid into a lock file (the background pusher:
    `<repo>\\n<pid>`; the prefetcher: `<pid>`), then records it with py-spy."""

    def __init__(self, py_spy: str, find_lock: Any, out: Path) -> None:
        self.py_spy, self.find_lock, self.out = py_spy, find_lock, out
        self.process: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            lock = self.find_lock()
            lines = (spool.read_text(str(lock)) or "").splitlines() if lock else []
            if lines and lines[-1].isdigit():
                self.process = subprocess.Popen(
                    [self.py_spy, "record", "--pid", lines[-1], "--rate", "100", "--format",
                     "raw", "--output", str(self.out), "--nonblocking", "--threads"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                return
            time.sleep(0.002)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)
        if self.process is not None:
            self.process.send_signal(2)  # SIGINT: py-spy writes its output
            self.process.wait(30)


STEPS = (  # the first function of a stack (from its leaf) that names one of these decides
    ("find", "find the object (listing)"), ("list", "find the object (listing)"),
    ("scandir", "find the object (listing)"), ("sha256", "SHA-256"), ("compress", "zstd"),
    ("zstd", "zstd"), ("readinto", "read"), ("read", "read"),
    ("put_stream", "write + fsync"), ("fsync", "write + fsync"), ("write", "write + fsync"),
)


def summarize(raw: Path) -> dict[str, Any]:
    """Collapsed py-spy stacks -> samples by leaf function and by upload step."""
    leaf: collections.Counter[str] = collections.Counter()
    steps: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = stack.split(";")
        leaf[frames[-1].split(" (")[0]] += samples
        step = "other"
        for frame in reversed(frames):
            name = frame.split(" (")[0]
            found = next((label for key, label in STEPS if key in name), None)
            if found is not None:
                step = found
                break
        steps[step] += samples
    return {"samples": total,
            "by_step_percent": {k: round(100 * v / total, 1) for k, v in steps.most_common()},
            "top_functions": [(k, round(100 * v / total, 1)) for k, v in leaf.most_common(12)]}


def drain(bench: Bench, command: str, segments: list[str]) -> dict[str, float]:
    bench.requeue(set(segments))
    began_cpu, began = cpu_seconds(), time.monotonic()
    set_archive_command(bench.server, command)
    while ready_files(bench.server):
        time.sleep(0.02)
    seconds = time.monotonic() - began
    cpu = cpu_seconds() - began_cpu
    set_archive_command(bench.server, "/bin/false")
    return {"segments": len(segments), "seconds": round(seconds, 2),
            "segments_per_s": round(len(segments) / seconds, 2),
            "machine_cpu_s": round(cpu, 2),
            "cpu_ms_per_segment": round(1000 * cpu / len(segments), 1)}


def backup_profile(bench: Bench, py_spy: str, size_mb: int, out: Path) -> dict[str, Any]:
    """One full physical backup of a `size_mb` MiB database (the first of an incremental
    chain, as bench/peers.py takes it) under py-spy with its subprocesses (pg_basebackup's
    time shows as the pipe reads that wait for it); CPU seconds of the whole machine."""
    from bench.peers import DB, WAL_COMMAND
    from bench.pg_dump_bench import generate

    bench.server.execute("postgres", f"CREATE DATABASE {DB}")
    generate(bench.server, DB, size_mb)
    bench.archive_with(bench.archive_command("ours"))
    bench.server.execute("postgres", "CHECKPOINT")
    raw = out / "backup.txt"
    began_cpu, began = cpu_seconds(), time.monotonic()
    subprocess.run(
        [py_spy, "record", "--rate", "100", "--format", "raw", "--output", str(raw),
         "--subprocesses", "--nonblocking", "--", WAL_COMMAND, "backup", "postgres",
         "--dsn", bench.server.dsn(), "--repo", bench.ours_repo.as_uri(), "--method",
         "physical", "--incremental", "--compression", "zstd", "--level", "1",
         "--schedule", "profile", "--json"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=bench.env)
    return {"size_mb": size_mb, "seconds": round(time.monotonic() - began, 2),
            "machine_cpu_s": round(cpu_seconds() - began_cpu, 2),
            "lines": top_lines(raw)}


def top_lines(raw: Path, count: int = 12) -> list[tuple[str, float]]:
    """Samples by the innermost frame (function and line), in percent."""
    lines: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if samples.isdigit():
            lines[stack.split(";")[-1]] += int(samples)
            total += int(samples)
    return [(k, round(100 * v / total, 1)) for k, v in lines.most_common(count)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--segments", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--fetch-segments", type=int, default=64)
    parser.add_argument("--backup-mb", type=int, default=0,
                        help="instead: profile one full physical backup of this many MiB")
    parser.add_argument("--py-spy", default="/tmp/pyspy/bin/py-spy")
    parser.add_argument("--out", type=Path, default=Path("/tmp/wal-profile"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    bench = Bench(argparse.Namespace(size_mb=0, wal_methods=["ours-walfast", "pgbackrest-async"]))
    report: dict[str, Any] = {"drains": collections.defaultdict(list)}
    try:
        if args.backup_mb:
            report = {"backup": backup_profile(bench, args.py_spy, args.backup_mb, args.out)}
            print(json.dumps(report, indent=2))
            return 0
        set_archive_command(bench.server, "/bin/false")
        generate_backlog(bench.server, args.segments)
        segments = sorted(name[: -len(".ready")] for name in ready_files(bench.server))
        wal_dir = bench.server.datadir / "pg_wal"
        drained: dict[str, tuple[str, str]] = {}
        for number in range(args.rounds):
            commands = bench.wal_commands(f"profile{number}")
            drained = drained or commands  # the fetch below reads round 0's archives
            for method, (archive_command, _) in commands.items():
                sampler = None
                if method.startswith("ours"):
                    lock = Path(spool.pusher_lock_path(str(wal_dir)))
                    sampler = Sampler(args.py_spy, lambda lock=lock: lock,
                                      args.out / f"pusher-{number}.txt")
                    sampler.start()
                result = drain(bench, archive_command, segments)
                if sampler is not None:
                    sampler.stop()
                report["drains"][method].append(result)
                print(f"round {number} {method}: {result}", file=sys.stderr)
        raw = args.out / "pusher-0.txt"
        if raw.exists():
            report["pusher_profile"] = summarize(raw)
        # Fetch: 64 segments in order through the compiled front door, the prefetcher
        # sampled (bench/peers.py's loop: a recovering data directory, one call at a time).
        commands = drained
        fetched = [name for name in segments if len(name) == 24][: args.fetch_segments]
        base = bench.factory.base

        def prefetch_lock() -> Path | None:
            found = sorted(base.glob("fetch-ours-*/pg_wal/tonebridge-dr/prefetch/.lock"))
            return found[-1] if found else None

        for method in ("ours-walfast", "pgbackrest-async"):
            sampler = None
            if method == "ours-walfast":
                sampler = Sampler(args.py_spy, prefetch_lock, args.out / "prefetcher.txt")
                sampler.start()
            began = cpu_seconds()
            result = bench.fetch(method.split("-")[0], commands[method][1], fetched)
            result["machine_cpu_s"] = round(cpu_seconds() - began, 2)
            if sampler is not None:
                sampler.stop()
            report["fetch"] = {**report.get("fetch", {}), method: result}
            print(f"fetch {method}: {result}", file=sys.stderr)
        raw = args.out / "prefetcher.txt"
        if raw.exists():
            report["prefetcher_profile"] = summarize(raw)
    finally:
        bench.factory.close()
        bench.moto.stop()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
