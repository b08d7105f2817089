"""Benchmark: `tonebridge-dr backup redis` against `redis-cli --rdb`, side by side.

Starts a private redis-server on a free 127.0.0.1 port, fills it with about
`--size-mb` of values (pipelined SETs of `--value-size`-byte values: hex text,
which LZF in the RDB barely shrinks and zstd halves), then alternates runs of

  redis-cli -h 127.0.0.1 -p P --rdb FILE                      (the reference)
  python -m tonebridge_dr.cli backup redis --url ... --repo file://DIR [--compression C]

each in its own process, timing wall clock and reading the child's peak RSS
(ru_maxrss from wait4). Both fetch the same diskless RDB from the same server
(`REPLCONF rdb-only` + `SYNC`), so the ratio is our overhead: RESP framing in
Python, CRC-64 check, zstd, SHA-256 and the repository write.

Run from the repository root (about 2-4 minutes for 1 GB on 2 cores):

    .venv/bin/python bench/redis_bench.py --size-mb 1100 --runs 3

Prints one JSON document; `--markdown` adds a table for bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = folder / "redis.conf"
    conf.write_text(
        "\n".join(
            [
                "bind 127.0.0.1",
                f"port {port}",
                f'dir "{folder}"',
                'save ""',
                "appendonly no",
                "repl-diskless-sync yes",
                "repl-diskless-sync-delay 0",
                f'logfile "{folder}/redis.log"',
            ]
        )
        + "\n"
    )
    proc = subprocess.Popen(["redis-server", str(conf)], stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(500):
        try:
            client.ping()
            return proc, port
        except redis.ConnectionError:
            time.sleep(0.02)
    raise RuntimeError("redis-server did not start")


def populate(port: int, size_mb: int, value_size: int) -> dict[str, Any]:
    client = redis.Redis(port=port)
    base = os.urandom(8 * 1024 * 1024).hex().encode()  # 16 MB of hex text
    count = size_mb * 1024 * 1024 // value_size
    began = time.monotonic()
    batch = 5000
    for start in range(0, count, batch):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(start + batch, count)):
            offset = (i * 7919) % (len(base) - value_size)
            pipe.set(b"bench:%010d" % i, base[offset : offset + value_size])
        pipe.execute()
    info = client.info("memory")
    return {
        "keys": count,
        "value_size": value_size,
        "used_memory_bytes": int(info["used_memory"]),
        "populate_seconds": round(time.monotonic() - began, 1),
    }


def _hwm_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def timed(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run `argv`; wall seconds and peak RSS in KiB.

    Peak RSS is the child's VmHWM (high-water RSS of its own address space since
    exec), sampled every 10 ms until it exits. ru_maxrss from wait4 is not used:
    on Linux it starts from the parent's RSS at fork, i.e. this script's.
    """
    began = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        hwm = _hwm_kib(proc.pid)
        if hwm is not None:
            peak = max(peak, hwm)
        time.sleep(0.01)
    wall = time.monotonic() - began
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {err.decode()[-2000:]}")
    return {"wall_seconds": wall, "max_rss_kib": peak, "stdout": out.decode()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="redis-bench-", dir=args.work_dir))
    server_dir = work / "server"
    server_dir.mkdir()
    proc, port = start_server(server_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS", "TONEBRIDGE_DR"))}
    env["PYTHONPATH"] = str(ROOT / "operator")
    try:
        dataset = populate(port, args.size_mb, args.value_size)
        rdb_file = work / "cli.rdb"
        results: dict[str, list[dict[str, Any]]] = {"redis-cli --rdb": []}
        for codec in args.compression:
            results[f"tonebridge-dr ({codec})"] = []
        for n in range(args.runs):
            rdb_file.unlink(missing_ok=True)
            ref = timed(
                ["redis-cli", "-h", "127.0.0.1", "-p", str(port), "--rdb", str(rdb_file)], env
            )
            ref["rdb_bytes"] = rdb_file.stat().st_size
            results["redis-cli --rdb"].append(ref)
            for codec in args.compression:
                repo = work / f"repo-{codec}-{n}"
                argv = [sys.executable, "-m", "tonebridge_dr.cli", "backup", "redis"]
                argv += ["--url", f"redis://127.0.0.1:{port}", "--repo", repo.as_uri()]
                ours = timed([*argv, "--compression", codec, "--json"], env)
                result = json.loads(ours.pop("stdout"))
                ours["rdb_bytes"] = result["raw_size_bytes"]
                ours["stored_bytes"] = result["size_bytes"]
                ours["checksum"] = result["redis"]["checksum"]
                results[f"tonebridge-dr ({codec})"].append(ours)
                shutil.rmtree(repo)
            for entry in results.values():
                entry[-1].pop("stdout", None)
        summary: dict[str, Any] = {}
        reference = statistics.median(r["wall_seconds"] for r in results["redis-cli --rdb"])
        for name, runs in results.items():
            wall = statistics.median(r["wall_seconds"] for r in runs)
            summary[name] = {
                "median_wall_seconds": round(wall, 2),
                "ratio_to_redis_cli": round(wall / reference, 3),
                "peak_rss_mib": round(max(r["max_rss_kib"] for r in runs) / 1024, 1),
                "rdb_mib": round(runs[-1]["rdb_bytes"] / 2**20, 1),
                "stored_mib": round(runs[-1].get("stored_bytes", runs[-1]["rdb_bytes"]) / 2**20, 1),
                "throughput_mib_s": round(runs[-1]["rdb_bytes"] / 2**20 / wall, 1),
            }
        return {
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "redis": redis.Redis(port=port).info("server")["redis_version"],
            },
            "dataset": dataset,
            "runs": args.runs,
            "summary": summary,
            "raw": results,
        }
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| tool | median wall s | ratio to redis-cli | peak RSS MiB | RDB MiB | stored MiB"
        " | MiB/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in report["summary"].items():
        lines.append(
            f"| {name} | {s['median_wall_seconds']} | {s['ratio_to_redis_cli']} | "
            f"{s['peak_rss_mib']} | {s['rdb_mib']} | {s['stored_mib']} | {s['throughput_mib_s']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1100, help="dataset size (values)")
    parser.add_argument("--value-size", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--compression", action="append", help="codec(s) for our runs (default: zstd, none)"
    )
    parser.add_argument("--work-dir", default=None, help="where files go (default $TMPDIR)")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    args.compression = args.compression or ["zstd", "none"]
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    report = run(args)
    print(json.dumps(report, indent=2))
    if args.markdown:
        print(markdown(report))


if __name__ == "__main__":
    main()
