"""Benchmark: the RTO `tonebridge-dr restore-test postgres` measures, beside plain PostgreSQL.

For each database (the tests' sample database, then `documents` grown server-side with
`generate_series` to each `--sizes-mb`, as bench/pg_dump_bench.py does), on a private
PostgreSQL 15 cluster that archives its WAL into a file:// repository:

1. take a logical backup and a physical base backup (the runner's own code, untimed);
2. run `tonebridge-dr restore-test postgres --backup ID --scratch-instance DIR --json` for
   each, as its own process, and report its `restore_duration_seconds` (the RTO as defined
   in docs/restore-tests.md: first repository read .. last check) and the process' wall time;
3. baselines, untimed preparation first, then timed:
   - logical: `pg_dump -Fc -Z0` to a file (untimed); timed: `initdb` + start + `createdb` +
     `pg_restore --single-transaction` into a private cluster (what the scratch instance does,
     minus the repository, decompression and verification);
   - physical: `pg_basebackup -X stream` to a folder (untimed); timed: copy the folder +
     `pg_ctl start -w` of the copy (no archive to replay: the copy is consistent alone).

Each restore-test runs one check (`SELECT count(*) FROM documents`, or a sample table).
Run from the repository root (about 15 minutes on 2 cores for 1 GB):

    .venv/bin/python -m bench restoretest --sizes-mb 1024 --markdown
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DB = "tonebridge_db"


def _timed(argv: Sequence[str], env: dict[str, str], **kwargs: Any) -> float:
    started = time.monotonic()
    subprocess.run(list(argv), env=env, check=True, stdout=subprocess.DEVNULL, **kwargs)
    return time.monotonic() - started


def _restore_test(repo_url: str, backup_id: str, folder: Path, check: dict[str, Any],
                  env: dict[str, str]) -> dict[str, Any]:
    argv = [sys.executable, "-m", "tonebridge_dr.cli", "-q", "restore-test", "postgres",
            "--repo", repo_url, "--backup", backup_id, "--scratch-instance", str(folder),
            "--database", DB, "--checks-json", json.dumps([check]), "--json"]
    started = time.monotonic()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"restore-test exited {proc.returncode}: {proc.stderr[-2000:]}")
    out = json.loads(proc.stdout)
    return {"rto_s": out["restore_duration_seconds"], "wall_s": round(wall, 2),
            "check": out["checks"][0]["value"]}


def _baseline_logical(pgfix: Any, server: Any, tmp: Path, env: dict[str, str]) -> float:
    """initdb + start + createdb + pg_restore --single-transaction of a plain -Fc dump."""
    dump = tmp / "plain.dump"
    subprocess.run([str(pgfix.PG_BIN / "pg_dump"), "-Fc", "-Z0", "-f", str(dump),
                    server.dsn(DB)], env=env, check=True)
    pgfix.chown_postgres(dump)
    factory = pgfix.PgFactory()
    started = time.monotonic()
    try:
        # fsync on, as the scratch instance has it (the test clusters turn it off)
        scratch = factory.start("baseline-logical", fsync="on", synchronous_commit="on")
        scratch.execute("postgres", f"CREATE DATABASE {DB}")
        subprocess.run([str(pgfix.PG_BIN / "pg_restore"), "--single-transaction", "--no-owner",
                        "--no-acl", "-d", scratch.dsn(DB), str(dump)],
                       env=pgfix.clean_env(PGPASSWORD=scratch.password), check=True)
        return time.monotonic() - started
    finally:
        factory.close()
        dump.unlink()


def _baseline_physical(pgfix: Any, server: Any, tmp: Path, env: dict[str, str]) -> float:
    """Copy a `pg_basebackup -X stream` folder and start the copy."""
    base = tmp / "basebackup"
    subprocess.run([str(pgfix.PG_BIN / "pg_basebackup"), "-D", str(base), "-X", "stream",
                    "-c", "fast", "-d", server.dsn()], env=env, check=True)
    copy = tmp / "basebackup-copy"
    port = pgfix._free_port()
    as_postgres = pgfix._as_postgres()
    started = time.monotonic()
    try:
        shutil.copytree(base, copy)
        pgfix.chown_postgres(copy)
        (copy / "postgresql.auto.conf").write_text(
            f"port = {port}\narchive_mode = off\nlisten_addresses = ''\n"
            f"unix_socket_directories = '{copy}'\n"
        )
        pgfix.chown_postgres(copy / "postgresql.auto.conf")
        subprocess.run([str(pgfix.PG_BIN / "pg_ctl"), "-D", str(copy), "-w", "-t", "3600",
                        "-l", str(copy / "log.txt"), "start"], check=True,
                       stdout=subprocess.DEVNULL, **as_postgres)
        return time.monotonic() - started
    finally:
        subprocess.run([str(pgfix.PG_BIN / "pg_ctl"), "-D", str(copy), "-m", "immediate",
                        "stop"], check=False, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, **as_postgres)
        shutil.rmtree(copy, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)


def measure_size(size_mb: int | None, tmp: Path, baselines: bool) -> dict[str, Any]:
    """One database (None: the tests' sample database), backed up and restore-tested."""
    from tests.fixtures import pg_wal
    from tests.fixtures import postgres as pgfix

    from bench import pg_dump_bench
    from tonebridge_dr.runner.engines.postgres import basebackup, dump
    from tonebridge_dr.runner.repository import Repository

    factory = pgfix.PgFactory()
    label = "sample" if size_mb is None else f"{size_mb}mb"
    repo_dir = pg_wal.postgres_folder(factory, f"repo-{label}") / "repo"
    repo_dir.mkdir()
    pgfix.chown_postgres(repo_dir)
    url = repo_dir.as_uri()
    os.environ["PGPASSWORD"] = pgfix.ADMIN_PASSWORD
    try:
        server = pg_wal.start_archiving(factory, f"bench-rt-{label}", url,
                                        shared_buffers="'256MB'", max_wal_size="'4GB'",
                                        autovacuum="off")
        server.execute("postgres", f"CREATE DATABASE {DB}")
        if size_mb is None:
            pgfix.populate_sample(server, DB)
            check = {"name": "rows", "query": "SELECT count(*) FROM transformations",
                     "expect": {"min": 1}}
            data: dict[str, Any] = {"rows": 300}
        else:
            data = pg_dump_bench.generate(server, DB, size_mb)
            check = {"name": "rows", "query": "SELECT count(*) FROM documents",
                     "expect": {"min": 1}}
        data["db_mib"] = round(
            server.query(DB, "SELECT pg_database_size(current_database())")[0][0] / 2**20)
        print(f"{label}: database at {data['db_mib']} MiB", file=sys.stderr)
        repo = Repository.open(url)
        started = time.monotonic()
        logical = dump.backup_logical(lambda: repo, server.dsn(DB), dump.LogicalBackupOptions())
        data["logical_backup_s"] = round(time.monotonic() - started, 2)
        started = time.monotonic()
        physical = basebackup.backup_physical(repo, server.dsn(),
                                              basebackup.PhysicalBackupOptions())
        data["physical_backup_s"] = round(time.monotonic() - started, 2)
        pg_wal.wait_archived(server, pg_wal.switch_wal(server), timeout=600)
        env = pgfix.clean_env(PGPASSWORD=pgfix.ADMIN_PASSWORD, TONEBRIDGE_DR_LOG_LEVEL="WARNING")
        for method, backup in (("logical", logical.id), ("physical", physical.id)):
            folder = tmp / f"scratch-{label}-{method}"
            data[method] = _restore_test(url, backup, folder, check, env)
            print(f"{label}: {method} restore test {data[method]}", file=sys.stderr)
        if baselines:
            data["logical"]["baseline_s"] = round(_baseline_logical(pgfix, server, tmp, env), 2)
            data["physical"]["baseline_s"] = round(
                _baseline_physical(pgfix, server, tmp, env), 2)
        data["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                           "postgres": server.query("postgres", "SHOW server_version")[0][0]}
        return data
    finally:
        factory.close()


def markdown(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| database | DB MiB | method | restore_duration_seconds | restore-test wall s "
        "| baseline s | baseline |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    baseline = {"logical": "initdb + start + pg_restore -1 of a -Fc -Z0 dump",
                "physical": "copy of a pg_basebackup folder + pg_ctl start -w"}
    for label, data in results.items():
        for method in ("logical", "physical"):
            row = data[method]
            lines.append(
                f"| {label} | {data['db_mib']} | {method} | {row['rto_s']} | {row['wall_s']} "
                f"| {row.get('baseline_s', '-')} | {baseline[method]} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", type=int, nargs="*", default=[1024])
    parser.add_argument("--no-sample", action="store_true", help="skip the sample database")
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="tbdr-bench-rt-"))
    os.chmod(tmp, 0o755)
    results: dict[str, dict[str, Any]] = {}
    try:
        sizes: list[int | None] = [*([] if args.no_sample else [None]), *args.sizes_mb]
        for size in sizes:
            label = "sample" if size is None else f"generated {size} MB"
            results[label] = measure_size(size, tmp, not args.no_baselines)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(results, indent=2))
    if args.markdown:
        print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
