"""Benchmark: `tonebridge-dr backup postgres` against pg_dump itself and the spec's pipeline.

Starts a private PostgreSQL 15 cluster and a moto S3 server on 127.0.0.1,
generates realistic rows server-side (prose-like text from a word list, jsonb,
uuids, timestamps, arrays; `generate_series` + `random()` with a fixed seed, not
pgbench) up to each `--sizes-mb` database size, and at each size runs, round
robin, `--runs` times each:

  floor      pg_dump -Fc -Z0 > /dev/null                       (the fastest possible dump)
  zstd-pipe  pg_dump -Fc -Z0 | zstd -1 -T2 > file              (the same codec, nothing else)
  ours-file  tonebridge-dr backup postgres --repo file://...   (zstd, streamed, globals too)
  ours-s3    tonebridge-dr backup postgres --repo s3://...     (same, multipart to moto)
  spec       pg_dump -Fc -f X.dump; tar -czf X.tar.gz X.dump; upload to moto with boto3
             (spec 3.2 + 3.1: the dump, the redundant second gzip, `aws s3 cp`)

Every run is its own process tree. Wall time is measured around it; client CPU
is the tree's user + system time (wait4 rusage; the PostgreSQL backend's COPY
work is the same for all and not included); peak RSS is the largest sum of
VmRSS over the whole tree (runner + pg_dump, or pg_dump + tar + uploader),
sampled every 20 ms (ru_maxrss is not used: on Linux a child's value starts at
its parent's RSS at fork). Medians are reported.

Run from the repository root (about 10 minutes on 2 cores for 250 + 500 MB):

    .venv/bin/python -m bench postgres --sizes-mb 250 500 --runs 3 --markdown
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SAMPLE_INTERVAL = 0.02
VARIANTS = ("floor", "zstd-pipe", "ours-file", "ours-s3", "spec")

# ~300 words: English prose vocabulary plus some Japanese (multi-byte UTF-8, like the product).
_VOCABULARY = (
    "the of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there been one all we their has would when if "
    "so no will more can about said what out up other into than its time only could new them "
    "some these may two first then do any like my now over such our man me even most made "
    "after also did many before must through back years where much your way well down should "
    "because each just those people how too little state good very make world still own see "
    "men work long get here between both life being under never day same another know while "
    "last might us great old year off come since against go came right used take three "
    "translation tone bridge voice model latency request response pipeline speaker accent "
    "formal casual polite business meeting customer support message summary draft review "
    "quality score feedback session account billing invoice region cluster replica backup "
    "restore archive retention policy schedule window incident recovery target objective "
    "service gateway token limit usage analytics event metric dashboard report export import "
    "です ます 翻訳 音声 会議 丁寧 敬語 要約 確認 お願い いたします 品質 改善 顧客 対応 資料 "
    "予定 変更 報告 分析"
)
WORDS = _VOCABULARY.split(" ")


# --- data ---------------------------------------------------------------------------------
def generate(server: Any, dbname: str, target_mb: int, batch: int = 40_000) -> dict[str, Any]:
    """Grow table `documents` until the database is at least `target_mb` MiB."""
    words = "ARRAY[" + ",".join("'" + w.replace("'", "''") + "'" for w in WORDS) + "]"
    server.execute(
        dbname,
        "CREATE TABLE IF NOT EXISTS documents (id bigint PRIMARY KEY, uid uuid NOT NULL, "
        "created_at timestamptz NOT NULL, title text NOT NULL, body text NOT NULL, "
        "meta jsonb NOT NULL, tags text[] NOT NULL)",
    )
    started = time.monotonic()
    while True:
        size = server.query(dbname, "SELECT pg_database_size(current_database())")[0][0]
        if size >= target_mb * 1024 * 1024:
            break
        last = server.query(dbname, "SELECT coalesce(max(id), 0) FROM documents")[0][0]
        server.execute(
            dbname,
            f"SELECT setseed({(last % 1000) / 1000.0})",
            f"""
            INSERT INTO documents
            SELECT i,
                   md5(i::text || ':uid')::uuid,
                   timestamptz '2023-01-01 00:00+00' + i * interval '37 seconds',
                   initcap(array_to_string(ARRAY(
                       SELECT w.words[1 + floor(random() * array_length(w.words, 1))::int]
                       FROM generate_series(1, 4 + i % 5)), ' ')),
                   array_to_string(ARRAY(
                       SELECT w.words[1 + floor(random() * array_length(w.words, 1))::int]
                       FROM generate_series(1, 60 + i % 140)), ' ') || '.',
                   jsonb_build_object(
                       'author', 'user' || (i % 997),
                       'lang', (ARRAY['ja', 'en', 'de'])[1 + i % 3],
                       'score', round((random() * 100)::numeric, 2),
                       'views', floor(random() * 100000)::int,
                       'flags', jsonb_build_array(i % 2 = 0, i % 3 = 0),
                       'session', md5(i::text)),
                   ARRAY['tag' || (i % 50), 'tag' || (i % 7), 'topic' || (i % 13)]
            FROM (SELECT {words} AS words) AS w,
                 generate_series({last + 1}, {last + batch}) AS i
            """,
        )
    server.execute(dbname, "VACUUM ANALYZE documents", "CHECKPOINT")
    rows = server.query(dbname, "SELECT count(*) FROM documents")[0][0]
    size = server.query(dbname, "SELECT pg_database_size(current_database())")[0][0]
    return {"rows": rows, "db_bytes": size, "generate_seconds": round(time.monotonic() - started)}


# --- measuring ----------------------------------------------------------------------------
def _tree_rss(root: int) -> int:
    """Sum of VmRSS (bytes) of `root` and all its descendants."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                stat = handle.read()
            parents[int(entry.name)] = int(stat.rsplit(b")", 1)[1].split()[1])
    tree = {root}
    changed = True
    while changed:
        changed = False
        for pid, ppid in parents.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                changed = True
    total = 0
    for pid in tree:
        with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
    return total


def measure(argv: Sequence[str], env: dict[str, str]) -> dict[str, Any]:
    """Run one process tree; wall seconds, client CPU seconds, peak tree RSS, its stdout."""
    peak = 0
    stop = threading.Event()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen(list(argv), env=env, stdout=out, stderr=err)

        def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, _tree_rss(proc.pid))
                stop.wait(SAMPLE_INTERVAL)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        # wait4: the rusage covers the child and every descendant it waited for
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        stop.set()
        sampler.join()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:3]} failed ({proc.returncode}): {stderr.decode()[-2000:]}")
    return {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "peak_rss": peak,
        "stdout": stdout,
    }


def floor_argv(pg_bin: Path, dsn: str) -> list[str]:
    """pg_dump -Fc -Z0 into /dev/null (--no-sync: /dev/null cannot be fsynced)."""
    return [str(pg_bin / "pg_dump"), "-Fc", "-Z0", "--no-sync", "-f", os.devnull, "-d", dsn]


def zstd_pipe_argv(pg_bin: Path, dsn: str, out: Path) -> list[str]:
    """`pg_dump -Fc -Z0 | zstd -1 -T2 > file`: the same compression as ours, no checksum,
    no fsync, no globals, no Python: what a compressing dump costs at the least here."""
    pg_dump = shlex.join([str(pg_bin / "pg_dump"), "-Fc", "-Z0", "-d", dsn])
    zstd = shlex.join(["zstd", "-1", "-T2", "-q", "-f", "-o", str(out)])
    return ["bash", "-c", f"set -o pipefail; {pg_dump} | {zstd}"]


def spec_pipeline(args: argparse.Namespace) -> int:
    """The spec's steps in one process tree: pg_dump -Fc to a file, tar -czf, S3 upload."""
    import boto3

    work = Path(args.workdir)
    dump = work / "logical.dump"
    archive = work / "logical.tar.gz"
    pg_dump = str(Path(args.pg_bin) / "pg_dump")
    subprocess.run([pg_dump, "-Fc", "-d", args.dsn, "-f", str(dump)], check=True)
    subprocess.run(["tar", "-czf", str(archive), "-C", str(work), dump.name], check=True)
    client = boto3.client("s3", endpoint_url=args.endpoint)
    client.upload_file(str(archive), args.bucket, f"postgresql/{archive.name}")
    print(json.dumps({"dump_bytes": dump.stat().st_size, "stored_bytes": archive.stat().st_size}))
    dump.unlink()
    archive.unlink()
    return 0


# --- the run ------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    from tests.fixtures import postgres as pgfix
    from tests.fixtures import s3 as s3fix

    tmp = Path(tempfile.mkdtemp(prefix="tbdr-bench-"))
    factory = pgfix.PgFactory()
    moto = s3fix.start_moto_server(tmp)
    try:
        server = factory.start(
            "bench",
            shared_buffers="256MB",
            max_wal_size="4GB",
            checkpoint_timeout="30min",
            autovacuum="off",
        )
        db = "tonebridge_db"
        server.execute("postgres", f"CREATE DATABASE {db}")
        dsn = server.dsn(db)
        s3 = s3fix.client(moto.url)
        env = pgfix.clean_env(
            PGPASSWORD=server.password,
            AWS_ENDPOINT_URL_S3=moto.url,
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_EC2_METADATA_DISABLED="true",
            NO_PROXY="127.0.0.1,localhost",
            TONEBRIDGE_DR_LOG_LEVEL="WARNING",
        )
        py = sys.executable
        results: dict[str, Any] = {
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "postgres": server.query("postgres", "SHOW server_version")[0][0],
            },
            "runs": args.runs,
            "sizes": [],
        }
        for size_mb in args.sizes_mb:
            data = generate(server, db, size_mb)
            print(
                f"database at {data['db_bytes'] / 2**20:.0f} MiB ({data['rows']} rows)",
                file=sys.stderr,
            )
            # warm the OS cache the same way for everyone
            measure(floor_argv(pgfix.PG_BIN, dsn), env)
            samples: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
            for n in range(args.runs):
                for variant in VARIANTS:
                    bucket = f"bench-{size_mb}-{variant}-{n}"
                    s3.create_bucket(Bucket=bucket)
                    repo_dir = tmp / f"repo-{size_mb}-{n}"
                    work = tmp / f"spec-{size_mb}-{n}"
                    work.mkdir()
                    if variant == "floor":
                        argv = floor_argv(pgfix.PG_BIN, dsn)
                    elif variant == "zstd-pipe":
                        argv = zstd_pipe_argv(pgfix.PG_BIN, dsn, work / "dump.zst")
                    elif variant == "spec":
                        argv = [
                            py,
                            "-m",
                            "bench.pg_dump_bench",
                            "spec-pipeline",
                            "--dsn",
                            dsn,
                            "--workdir",
                            str(work),
                            "--bucket",
                            bucket,
                            "--endpoint",
                            moto.url,
                            "--pg-bin",
                            str(pgfix.PG_BIN),
                        ]
                    else:
                        repo = repo_dir.as_uri() if variant == "ours-file" else f"s3://{bucket}/r"
                        argv = [
                            py,
                            "-m",
                            "tonebridge_dr.cli",
                            "-q",
                            "backup",
                            "postgres",
                            "--dsn",
                            dsn,
                            "--repo",
                            repo,
                            "--json",
                        ]
                    got = measure(argv, env)
                    sample = {"wall": got["wall"], "cpu": got["cpu"], "peak_rss": got["peak_rss"]}
                    if variant in ("ours-file", "ours-s3"):
                        manifest = json.loads(got["stdout"])
                        sample["stored_bytes"] = manifest["size_bytes"]
                        sample["raw_bytes"] = manifest["raw_size_bytes"]
                    elif variant == "spec":
                        sample.update(json.loads(got["stdout"]))
                    elif variant == "zstd-pipe":
                        sample["stored_bytes"] = (work / "dump.zst").stat().st_size
                    samples[variant].append(sample)
                    print(
                        f"  {size_mb} MB {variant:9s} run {n + 1}: {got['wall']:.2f} s, "
                        f"peak {got['peak_rss'] / 2**20:.0f} MiB",
                        file=sys.stderr,
                    )
                    # free memory and disk between runs
                    for obj in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
                        s3.delete_object(Bucket=bucket, Key=obj["Key"])
                    for upload in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
                        s3.abort_multipart_upload(
                            Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                    s3.delete_bucket(Bucket=bucket)
                    subprocess.run(["rm", "-rf", str(repo_dir), str(work)], check=True)
            results["sizes"].append({"target_mb": size_mb, **data, **summarise(samples)})
        results["command"] = " ".join(
            [
                ".venv/bin/python -m bench postgres",
                "--sizes-mb",
                *map(str, args.sizes_mb),
                "--runs",
                str(args.runs),
            ]
        )
        return results
    finally:
        moto.stop()
        factory.close()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


def summarise(samples: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for variant, runs in samples.items():
        entry: dict[str, Any] = {
            "wall_median": round(statistics.median(r["wall"] for r in runs), 3),
            "wall_all": [round(r["wall"], 3) for r in runs],
            "client_cpu_median": round(statistics.median(r["cpu"] for r in runs), 3),
            "peak_rss_mib": round(max(r["peak_rss"] for r in runs) / 2**20, 1),
        }
        for key in ("stored_bytes", "raw_bytes", "dump_bytes"):
            if key in runs[0]:
                entry[key] = int(statistics.median(r[key] for r in runs))
        out[variant] = entry
    floor = out["floor"]["wall_median"]
    spec = out["spec"]
    pipe = out["zstd-pipe"]
    pipe["ratio_to_floor"] = round(pipe["wall_median"] / floor, 3)
    pipe["size_vs_spec"] = round(pipe["stored_bytes"] / spec["stored_bytes"], 3)
    for variant in ("ours-file", "ours-s3"):
        ours = out[variant]
        ours["ratio_to_floor"] = round(ours["wall_median"] / floor, 3)
        ours["speedup_vs_spec"] = round(spec["wall_median"] / ours["wall_median"], 2)
        ours["size_vs_spec"] = round(ours["stored_bytes"] / spec["stored_bytes"], 3)
    spec["ratio_to_floor"] = round(spec["wall_median"] / floor, 3)
    return out


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "| DB MiB | variant | median wall s | x floor | spec / ours | client CPU s | stored MiB | "
        "size vs spec | peak RSS MiB (tree) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in results["sizes"]:
        mib = f"{size['db_bytes'] / 2**20:.0f}"
        for variant in VARIANTS:
            e = size[variant]
            stored = e.get("stored_bytes")
            lines.append(
                f"| {mib} | {variant} | {e['wall_median']:.2f} | "
                f"{e.get('ratio_to_floor', 1.0):.2f} | {e.get('speedup_vs_spec', '-')} | "
                f"{e['client_cpu_median']:.2f} | "
                f"{'-' if stored is None else f'{stored / 2**20:.1f}'} | "
                f"{e.get('size_vs_spec', '-')} | {e['peak_rss_mib']} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench postgres",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="mode")
    spec = sub.add_parser("spec-pipeline", help=argparse.SUPPRESS)
    spec.add_argument("--dsn", required=True)
    spec.add_argument("--workdir", required=True)
    spec.add_argument("--bucket", required=True)
    spec.add_argument("--endpoint", required=True)
    spec.add_argument("--pg-bin", required=True)
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[250, 500])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--markdown", action="store_true", help="also print a markdown table")
    args = parser.parse_args(argv)
    if args.mode == "spec-pipeline":
        return spec_pipeline(args)
    results = run(args)
    print(json.dumps(results, indent=2))
    if args.markdown:
        print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
