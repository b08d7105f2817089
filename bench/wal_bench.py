"""Benchmark: WAL archiving (wal-push) and PITR replay (wal-fetch prefetch), side by side.

One private PostgreSQL 15 cluster (16 MiB segments) and one moto S3 server on
127.0.0.1. Three archive_commands are compared, each run by PostgreSQL itself
as OS user postgres:

  cp        test ! -f DIR/%f && cp %p DIR/%f     (the spec's command: the floor, local disk)
  ours      <venv>/bin/tonebridge-dr wal-push --repo s3://... %p   (the installed CLI;
            zstd, SHA-256, duplicate check, background pusher of .ready files)
  ours-light  python .../wal/spool.py wal-push --repo s3://... %p
            (the same, through the light entry point: a spool hit does not even import
            the tonebridge_dr package; what `tonebridge-dr wal-push` costs once the
            package __init__ no longer imports importlib.metadata)
  per-call  python -c "import boto3; upload_file(%p)"   (a fresh interpreter and
            client per segment, no compression: the barman-cloud-wal-archive pattern)

(a) Backlog drain: archiving is paused (archive_command = /bin/false) while
    bulk inserts write `--segments` segments; then the command is switched
    (ALTER SYSTEM + reload) and the time until no `.ready` file is left is
    measured. For the next method the same segments are marked `.ready` again
    (checkpoints cannot remove them: wal_keep_size is large) and each method
    writes to a fresh bucket prefix, so nothing is deduplicated away.
(b) Steady load: pgbench at a fixed rate (`--load-tps` transactions of
    `--load-rows` inserted rows) for `--load-seconds`; every second the number
    of `.ready` files (the archive backlog) is sampled.
(c) Replay: `restore postgres --target-lsn` (a base backup taken before the
    backlog, plus `--replay-segments` segments of WAL from the "ours" archive),
    started and awaited, with the prefetcher (default) and without it
    (TONEBRIDGE_DR_WAL_PREFETCH=0: one full wal-fetch per segment).
    restore_command goes through a tiny shell wrapper that logs the start and end
    of every call, so the time PostgreSQL waits for each segment is measured; the
    replay time is PostgreSQL's own "redo done ... elapsed" from the server log.

Run from the repository root as root (PostgreSQL runs as postgres); about 8-10
minutes on 2 cores with the defaults:

    .venv/bin/python bench/wal_bench.py --markdown

Prints one JSON document; `--markdown` adds tables for bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from psycopg import sql  # noqa: E402
from tests.fixtures import s3 as s3_fixtures  # noqa: E402
from tests.fixtures.pg_wal import WAL_COMMAND, start_with_env  # noqa: E402

from tonebridge_dr.runner.engines.postgres.wal import spool  # noqa: E402

LIGHT_COMMAND = f"{sys.executable} {spool.__file__}"
from tests.fixtures.postgres import (  # noqa: E402
    ADMIN_PASSWORD,
    PG_BIN,
    PgFactory,
    PgServer,
    _free_port,
    chown_postgres,
    clean_env,
)

SEGMENT = 16 * 1024 * 1024
BASELINE_CODE = (
    "import sys, boto3; "
    "boto3.client('s3').upload_file(sys.argv[1], sys.argv[2], sys.argv[3] + '/' + sys.argv[4])"
)


def ready_files(server: PgServer) -> list[str]:
    folder = server.datadir / "pg_wal" / "archive_status"
    return [name for name in os.listdir(folder) if name.endswith(".ready")]


def set_archive_command(server: PgServer, command: str) -> None:
    with server.connect("postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER SYSTEM SET archive_command = {}").format(sql.Literal(command)))
        conn.execute("SELECT pg_reload_conf()")


def current_segno(server: PgServer) -> int:
    lsn = server.query("postgres", "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")[0][0]
    return int(lsn) // SEGMENT


def generate_backlog(server: PgServer, segments: int) -> int:
    server.execute("postgres", "CREATE TABLE IF NOT EXISTS big (id int, pad text)")
    start = current_segno(server)
    while current_segno(server) < start + segments:
        server.execute(
            "postgres",
            "INSERT INTO big SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 100000) g",
        )
    with server.connect("postgres", autocommit=True) as conn:
        conn.execute("SELECT pg_switch_wal()")
    return len(ready_files(server))


def requeue(server: PgServer) -> int:
    """Mark every archived segment `.ready` again (archiving is paused)."""
    # First stop the previous method's background pusher (it lingers after the drain):
    # it must not see the requeued files.
    wal_dir = str(server.datadir / "pg_wal")
    if spool.lock_held(spool.pusher_lock_path(wal_dir)):
        spool.request_pusher_stop(wal_dir)
        deadline = time.monotonic() + 60
        while spool.lock_held(spool.pusher_lock_path(wal_dir)):
            if time.monotonic() > deadline:
                raise RuntimeError("the background pusher did not stop")
            time.sleep(0.05)
    shutil.rmtree(spool.spool_root(wal_dir), ignore_errors=True)
    folder = server.datadir / "pg_wal" / "archive_status"
    count = 0
    for name in os.listdir(folder):
        if name.endswith(".done"):
            os.rename(folder / name, folder / (name[: -len(".done")] + ".ready"))
            count += 1
    return count


def drain(server: PgServer, command: str, timeout: float) -> dict[str, Any]:
    backlog = len(ready_files(server))
    cpu_before = _cpu_ticks()
    began = time.monotonic()
    set_archive_command(server, command)
    pusher_peak: dict[int, int] = {}  # pid -> VmHWM KiB of every background pusher seen
    while ready_files(server):
        if time.monotonic() - began > timeout:
            raise RuntimeError(f"backlog not drained in {timeout} s: {len(ready_files(server))}")
        _sample_pusher(server, pusher_peak)
        time.sleep(0.05)
    seconds = time.monotonic() - began
    busy, total = (after - before for after, before in zip(_cpu_ticks(), cpu_before, strict=True))
    _sample_pusher(server, pusher_peak)
    set_archive_command(server, "/bin/false")
    return {
        "segments": backlog,
        "seconds": round(seconds, 2),
        "segments_per_s": round(backlog / seconds, 2),
        "cpu_busy_percent": round(100 * busy / total, 1) if total else None,
        "pusher_peak_rss_mib": round(max(pusher_peak.values()) / 1024, 1) if pusher_peak else None,
    }


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs together, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _sample_pusher(server: PgServer, peaks: dict[int, int]) -> None:
    """Record the peak RSS (VmHWM) of the running background pusher, if any."""
    text = spool.read_text(spool.pusher_lock_path(str(server.datadir / "pg_wal"))) or ""
    lines = text.split("\n")
    if len(lines) < 2 or not lines[1].isdigit():
        return
    pid = int(lines[1])
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            peaks[pid] = max(peaks.get(pid, 0), int(line.split()[1]))


def steady_load(
    server: PgServer, command: str, *, tps: int, rows: int, seconds: int, script: Path
) -> dict[str, Any]:
    set_archive_command(server, command)
    start_segno = current_segno(server)
    env = clean_env(PGPASSWORD=ADMIN_PASSWORD)
    pgbench = subprocess.Popen(
        [str(PG_BIN / "pgbench"), "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres",
         "-n", "-c", "2", "-j", "2", "-R", str(tps), "-T", str(seconds), "-D", f"rows={rows}",
         "-f", str(script), "postgres"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    samples: list[int] = []
    while pgbench.poll() is None:
        samples.append(len(ready_files(server)))
        time.sleep(1.0)
    out, err = pgbench.communicate()
    if pgbench.returncode != 0:
        raise RuntimeError(f"pgbench failed: {err[-500:]}")
    generated = current_segno(server) - start_segno
    after_load = len(ready_files(server))
    began = time.monotonic()
    while ready_files(server) and time.monotonic() - began < 300:
        time.sleep(0.1)
    catch_up = time.monotonic() - began
    set_archive_command(server, "/bin/false")
    tps_line = next((line for line in out.splitlines() if line.startswith("tps")), "")
    half = len(samples) // 2
    return {
        "segments_generated": generated,
        "wal_mb_per_s": round(generated * 16 / seconds, 2),
        "ready_samples": samples,
        "ready_max": max(samples) if samples else 0,
        "ready_mean_first_half": round(statistics.mean(samples[:half]), 1) if half else 0,
        "ready_mean_second_half": round(statistics.mean(samples[half:]), 1) if half else 0,
        "ready_at_end": after_load,
        "catch_up_seconds": round(catch_up, 2),
        "pgbench": tps_line.strip(),
    }


WRAPPER = """#!/bin/sh
echo "$(date +%s.%N) start $*" >> {log}
{command} "$@"
rc=$?
echo "$(date +%s.%N) end $rc" >> {log}
exit $rc
"""


def fetch_times(log: Path) -> list[float]:
    """Seconds of every restore_command call that delivered a segment."""
    times: list[float] = []
    began: tuple[float, str] | None = None
    for line in log.read_text().splitlines():
        stamp, what, *args = line.split()
        if what == "start":
            began = (float(stamp), args[-2] if len(args) >= 2 else "")
        elif began is not None:
            if args == ["0"] and len(began[1]) == 24:
                times.append(float(stamp) - began[0])
            began = None
    return times


def restore_replay(
    factory: PgFactory, work: Path, repo_url: str, name: str, lsn: str, prefetch: bool,
    command: str,
) -> dict[str, Any]:
    from tonebridge_dr.runner.engines.postgres.wal import naming, pitr
    from tonebridge_dr.runner.repository import Repository

    os.environ["TONEBRIDGE_DR_WAL_PREFETCH"] = "16" if prefetch else "0"
    log = work / f"{name}.calls"
    log.write_text("")
    os.chmod(log, 0o666)
    wrapper = work / f"{name}.sh"
    wrapper.write_text(WRAPPER.format(log=log, command=command))
    os.chmod(wrapper, 0o755)
    root = factory.new_root(name)
    port = _free_port()
    result = pitr.restore_physical(
        Repository.open(repo_url, create=False),
        pitr.RestoreOptions(
            data_dir=root / "data",
            target=pitr.Target("lsn", lsn=naming.parse_lsn(lsn)),
            start=True,
            stop_after=True,
            settings={"port": str(port), "unix_socket_directories": str(root),
                      "log_min_messages": "log"},
            wal_command=str(wrapper),
            timeout=1800,
        ),
    )
    server_log = (root / "data" / "log" / "tonebridge-dr-restore.log").read_text()
    redo = next(
        (float(line.rsplit("elapsed: ", 1)[1].split()[0])
         for line in server_log.splitlines() if "redo done at" in line),
        None,
    )
    times = fetch_times(log)
    shutil.rmtree(root, ignore_errors=True)
    return {
        "wal_segments": result["wal_segments"],
        "fetch_calls": len(times),
        "fetch_ms_mean": round(statistics.mean(times) * 1000, 1) if times else None,
        "fetch_ms_median": round(statistics.median(times) * 1000, 1) if times else None,
        "fetch_seconds_total": round(sum(times), 2),
        "redo_seconds": redo,
        "recovery_seconds": result["recovery_seconds"],
    }


def markdown(report: dict[str, Any]) -> str:
    lines = ["(a) backlog drain", "",
             "| method | segments | seconds | segments/s | vs per-call | CPU busy % | "
             "pusher peak RSS MiB |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    base = report["drain"].get("per-call", {}).get("segments_per_s", 0) or 1
    for method, row in report["drain"].items():
        rss = row.get("pusher_peak_rss_mib")
        lines.append(
            f"| {method} | {row['segments']} | {row['seconds']} | {row['segments_per_s']} | "
            f"{round(row['segments_per_s'] / base, 1)}x | {row.get('cpu_busy_percent', '-')} | "
            f"{rss if rss is not None else '-'} |"
        )
    lines += ["", "(b) steady load", "",
              "| method | WAL MB/s | segments | .ready max | mean 1st half | mean 2nd half | "
              "at end | catch-up s |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for method, row in report["load"].items():
        lines.append(
            f"| {method} | {row['wal_mb_per_s']} | {row['segments_generated']} | "
            f"{row['ready_max']} | {row['ready_mean_first_half']} | "
            f"{row['ready_mean_second_half']} | {row['ready_at_end']} | {row['catch_up_seconds']} |"
        )
    lines += ["", "(c) PITR replay", "",
              "| restore_command | segments | fetch ms/segment (median) | fetch s total | "
              "redo s | recovery s | fetch speed-up |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    base_fetch = report["replay"].get("without-prefetch", {}).get("fetch_ms_median", 0) or 1
    for method, row in report["replay"].items():
        lines.append(
            f"| {method} | {row['wal_segments']} | {row['fetch_ms_median']} | "
            f"{row['fetch_seconds_total']} | {row['redo_seconds']} | {row['recovery_seconds']} | "
            f"{round(base_fetch / row['fetch_ms_median'], 1)}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--segments", type=int, default=300)
    parser.add_argument("--load-seconds", type=int, default=30)
    parser.add_argument("--load-tps", type=int, default=30)
    parser.add_argument("--load-rows", type=int, default=5000)
    parser.add_argument("--replay-segments", type=int, default=64)
    parser.add_argument("--methods", nargs="+", default=["cp", "ours", "ours-light", "per-call"])
    parser.add_argument("--phases", nargs="+", default=["drain", "load", "replay"],
                        choices=["drain", "load", "replay"])
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="tonebridge-walbench-"))
    os.chmod(work, 0o755)
    moto = s3_fixtures.start_moto_server(work)
    factory = PgFactory()
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_at_start": os.getloadavg()},
        "settings": vars(args),
    }
    try:
        bucket = s3_fixtures.new_bucket(moto.url)
        aws = {
            "AWS_ENDPOINT_URL_S3": moto.url, "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true", "NO_PROXY": "127.0.0.1,localhost",
        }
        os.environ.update(aws)
        os.environ["PGPASSWORD"] = ADMIN_PASSWORD
        server = PgServer("walbench", factory.new_root("walbench"))
        factory.servers.append(server)
        server.init(
            archive_mode="on", archive_command="'/bin/false'", max_wal_size="'40GB'",
            min_wal_size="'1GB'", wal_keep_size="'40GB'", checkpoint_timeout="'1h'",
            shared_buffers="'128MB'", max_connections="40",
        )
        start_with_env(server, clean_env(**aws))
        cp_dir = factory.new_root("cp-archive")

        def command(method: str, tag: str) -> str:
            if method == "cp":
                target = cp_dir / tag
                target.mkdir(exist_ok=True)
                chown_postgres(target)
                return f"test ! -f {target}/%f && cp %p {target}/%f"
            if method == "ours":
                return f"{WAL_COMMAND} wal-push --repo s3://{bucket}/ours-{tag} %p"
            if method == "ours-light":
                return f"{LIGHT_COMMAND} wal-push --repo s3://{bucket}/light-{tag} %p"
            code = BASELINE_CODE.replace("'", "'\\''")
            return f"{sys.executable} -c '{code}' %p {bucket} per-call-{tag} %f"

        # A base backup into the "ours" archive of phase (a), for phase (c).
        from tonebridge_dr.runner.engines.postgres import basebackup
        from tonebridge_dr.runner.repository import Repository

        ours_url = f"s3://{bucket}/ours-drain"
        backup = basebackup.backup_physical(
            Repository.open(ours_url), server.dsn(), basebackup.PhysicalBackupOptions()
        )
        assert backup.wal is not None
        order = [m for m in ("ours", "ours-light", "cp", "per-call") if m in args.methods]
        report["drain"] = {}
        if "drain" in args.phases or "replay" in args.phases:
            began = time.monotonic()
            backlog = generate_backlog(server, args.segments)
            report["backlog"] = {
                "ready": backlog, "generate_seconds": round(time.monotonic() - began)
            }
            print(f"backlog: {backlog} segments", file=sys.stderr)
            drained = order if "drain" in args.phases else ["ours"]
            for index, method in enumerate(drained):
                if index:
                    requeue(server)
                result = drain(server, command(method, "drain"), timeout=1200)
                report["drain"][method] = result
                print(f"drain {method}: {result}", file=sys.stderr)

        server.execute("postgres", "CREATE TABLE IF NOT EXISTS big (id int, pad text)")
        script = work / "load.sql"
        script.write_text(
            "INSERT INTO big SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, :rows) g;\n"
        )
        report["load"] = {}
        for method in order if "load" in args.phases else []:
            result = steady_load(
                server, command(method, "load"), tps=args.load_tps, rows=args.load_rows,
                seconds=args.load_seconds, script=script,
            )
            report["load"][method] = result
            print(f"load {method}: {result}", file=sys.stderr)

        start_lsn = int(backup.wal.start_lsn.split("/")[0], 16) << 32 | int(
            backup.wal.start_lsn.split("/")[1], 16
        )
        target = start_lsn + args.replay_segments * SEGMENT
        target_lsn = f"{target >> 32:X}/{target & 0xFFFFFFFF:X}"
        report["replay"] = {}
        for label, prefetch, entry in [] if "replay" not in args.phases else (
            ("prefetch", True, WAL_COMMAND),
            ("prefetch-light", True, LIGHT_COMMAND),
            ("without-prefetch", False, WAL_COMMAND),
        ):
            result = restore_replay(
                factory, work, ours_url, f"replay-{label}", target_lsn, prefetch, entry
            )
            report["replay"][label] = result
            print(f"replay {label}: {result}", file=sys.stderr)
        report["machine"]["load_avg_at_end"] = os.getloadavg()
    finally:
        factory.close()
        moto.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=2))
    if args.markdown:
        print()
        print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
