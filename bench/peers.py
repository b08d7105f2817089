"""Benchmark: tonebridge-dr against the real peers, pgBackRest and barman-cloud, side by side.

One private PostgreSQL 15 cluster filled with the prose-like data set of
bench/pg_dump_bench.py; one file:// repository each for tonebridge-dr and
pgBackRest, one moto S3 bucket (barman-cloud only speaks object storage) on
127.0.0.1. Every tool runs as OS user postgres (`runuser`), measured with wait4
(client CPU = the tool's process tree it waited for; the server's walsender is
not included) and /proc sampling (peak RSS of the tool's process tree).
Compression: zstd level 1 for tonebridge-dr and pgBackRest; barman-cloud 3.4
has gzip, bzip2 and snappy only (python-snappy is not in Debian 12), so gzip.
Parallelism 2 where the tool has it (pgBackRest `process-max=2`, barman `-J 2`,
pgBackRest async archiving/fetching `process-max=2`); tonebridge-dr's physical
backup is one pg_basebackup stream (no parallelism option).

Phases, tools interleaved round robin (the order rotates every round):

  full      full physical backup: `backup postgres --method physical --incremental`
            (the first of a chain: base.tar + its file index) vs
            `pgbackrest backup --type=full` vs `barman-cloud-backup`;
  restore   that backup into a new data directory, started, to consistency and
            promotion (`--target-lsn <end of backup>` / `--type=immediate` /
            `recovery_target = immediate`);
  incr      5 % of the rows updated (scattered: every 20th row; then clustered: a
            contiguous 5 % id range), then `backup ... --incremental` vs
            `pgbackrest backup --type=incr`;
  wal       a backlog of --segments segments drained (`wal-push` vs pgBackRest
            `archive-push` sync and async vs `barman-cloud-wal-archive`), steady
            pgbench load (the `.ready` backlog sampled every second), and fetch:
            --fetch-segments segments fetched in order the way recovery asks for
            them, one restore_command call at a time (`wal-fetch` with its
            prefetcher vs `archive-get` with archive-async and its queue vs
            `barman-cloud-wal-restore`, which has no prefetch).

Run from the repository root as root; about 15 minutes with the defaults:

    .venv/bin/python -m bench peers --size-mb 1024 --rounds 3 --markdown

`--quick` (20 MiB, one round, a few segments) is the smoke test that every peer
command still works (tests/runner/bench/test_peers_quick.py). Prints one JSON
document; `--markdown` adds the tables for bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
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

from tests.fixtures import s3 as s3_fixtures  # noqa: E402
from tests.fixtures.pg_wal import WAL_COMMAND, start_with_env  # noqa: E402
from tests.fixtures.postgres import (  # noqa: E402
    ADMIN_PASSWORD,
    PG_BIN,
    PgFactory,
    PgServer,
    _free_port,
    chown_postgres,
    clean_env,
)

from bench.pg_dump_bench import generate, measure  # noqa: E402
from bench.wal_bench import (  # noqa: E402
    generate_backlog,
    ready_files,
    requeue,
    set_archive_command,
    steady_load,
)
from tonebridge_dr.runner.engines.postgres.wal import spool  # noqa: E402

STANZA = "bench"
DB = "bench"
PEERS = ("ours", "pgbackrest", "barman")
WAL_METHODS = ("ours", "ours-light", "ours-walfast", "pgbackrest-sync", "pgbackrest-async",
               "barman")
MiB = 1024 * 1024
LIGHT_COMMAND = f"{sys.executable} {spool.__file__}"
#: The compiled front door (wal/walfast.c, built by make venv) before the command it hands
#: misses to: what docs/wal-archiving.md recommends and what `restore postgres` writes.
WALFAST = str(Path(sys.executable).parent / spool.WALFAST_NAME)


def as_postgres(argv: Sequence[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv]


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def version(argv: Sequence[str]) -> str:
    out = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).strip().splitlines()[0]


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="tonebridge-peers-"))
        os.chmod(self.work, 0o755)
        self.factory = PgFactory()
        self.moto = s3_fixtures.start_moto_server(self.work)
        self.bucket = s3_fixtures.new_bucket(self.moto.url)
        self.aws = {
            "AWS_ENDPOINT_URL_S3": self.moto.url, "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true", "NO_PROXY": "127.0.0.1,localhost",
        }
        os.environ.update(self.aws)
        os.environ["PGPASSWORD"] = ADMIN_PASSWORD
        self.env = clean_env(PGPASSWORD=ADMIN_PASSWORD, **self.aws)
        self.server = PgServer("peers", self.factory.new_root("peers"))
        self.factory.servers.append(self.server)
        self.server.init(
            archive_mode="on", archive_command="'/bin/false'", max_wal_size="'40GB'",
            min_wal_size="'1GB'", wal_keep_size="'40GB'", checkpoint_timeout="'1h'",
            shared_buffers="'128MB'", max_connections="40", autovacuum="off",
        )
        start_with_env(self.server, self.env)
        self.ours_repo = self.folder("ours-repo")
        self.pgbr_repo = self.folder("pgbackrest-repo")
        self.conf = self.work / "pgbackrest.conf"
        self.conf.write_text(
            "[global]\n"
            f"repo1-path={self.pgbr_repo}\n"
            "repo1-retention-full=1000\n"
            "compress-type=zst\ncompress-level=1\nprocess-max=2\nstart-fast=y\n"
            "log-level-console=warn\nlog-level-file=off\n"
            f"lock-path={self.folder('pgbackrest-lock')}\n"
            f"spool-path={self.folder('pgbackrest-spool')}\n"
            f"[{STANZA}]\n"
            f"pg1-path={self.server.datadir}\npg1-port={self.server.port}\n"
            f"pg1-socket-path={self.server.sockdir}\npg1-user=postgres\n"
        )
        os.chmod(self.conf, 0o644)
        self.counter = 0

    # --- helpers ------------------------------------------------------------------------
    def folder(self, name: str) -> Path:
        return self.factory.new_root(name)

    def pgbackrest(self, *args: str, repo: Path | None = None) -> list[str]:
        extra = [f"--repo1-path={repo}"] if repo is not None else []
        return ["pgbackrest", f"--config={self.conf}", f"--stanza={STANZA}", *extra, *args]

    def barman_url(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"

    def barman(self, tool: str) -> list[str]:
        return [tool, "--cloud-provider", "aws-s3", "--endpoint-url", self.moto.url]

    def run(self, argv: Sequence[str]) -> dict[str, Any]:
        return measure(as_postgres(argv), self.env)

    def archive_with(self, command: str) -> None:
        """Switch archive_command and wait until nothing is left to archive."""
        set_archive_command(self.server, command)
        with self.server.connect("postgres", autocommit=True) as conn:
            conn.execute("SELECT pg_switch_wal()")
        deadline = time.monotonic() + 600
        while ready_files(self.server):
            if time.monotonic() > deadline:
                raise RuntimeError(f"archive_command {command!r} did not catch up")
            time.sleep(0.1)

    def archive_command(self, tool: str) -> str:
        if tool == "ours":
            return f"{WAL_COMMAND} wal-push --repo {self.ours_repo.as_uri()} %p"
        if tool == "pgbackrest":
            return shlex.join(self.pgbackrest("archive-push")) + " %p"
        return shlex.join([*self.barman("barman-cloud-wal-archive"), "-z",
                           self.barman_url("barman"), STANZA]) + " %p"

    def s3_bytes(self, prefix: str) -> int:
        client = s3_fixtures.client(self.moto.url)
        total = 0
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        ):
            total += sum(obj["Size"] for obj in page.get("Contents", []))
        return total

    # --- backups ------------------------------------------------------------------------
    def backup(self, tool: str, kind: str, chain: str) -> dict[str, Any]:
        """One backup; kind "full" or "incr"; returns wall/cpu/rss/stored and its id."""
        self.archive_with(self.archive_command(tool))
        if tool == "ours":
            result = self.run([
                WAL_COMMAND, "backup", "postgres", "--dsn", self.server.dsn(),
                "--repo", self.ours_repo.as_uri(), "--method", "physical", "--incremental",
                "--compression", "zstd", "--level", "1", "--schedule", chain, "--json"])
            from tonebridge_dr.runner.repository import Repository

            backup_id = json.loads(result.pop("stdout"))["id"]
            result["stored"] = tree_bytes(self.ours_repo / "base" / backup_id)
            manifest = Repository.open(self.ours_repo.as_uri(), create=False).get(backup_id)
            got = manifest.extra["incremental"]["type"]
            if got != ("full" if kind == "full" else "incremental"):
                raise RuntimeError(f"ours took a {got} backup where {kind} was asked")
        elif tool == "pgbackrest":
            result = self.run(self.pgbackrest(f"--type={kind}", "backup"))
            result.pop("stdout")
            info = json.loads(subprocess.run(
                as_postgres(self.pgbackrest("--output=json", "info")),
                capture_output=True, check=True, env=self.env).stdout)
            last = info[0]["backup"][-1]
            backup_id = last["label"]
            result["stored"] = last["info"]["repository"]["delta"]
        else:
            result = self.run([*self.barman("barman-cloud-backup"), "-z", "-J", "2",
                               "--immediate-checkpoint", "-h", str(self.server.sockdir),
                               "-p", str(self.server.port), "-U", "postgres",
                               self.barman_url("barman"), STANZA])
            result.pop("stdout")
            listing = json.loads(subprocess.run(
                as_postgres([*self.barman("barman-cloud-backup-list"), "--format", "json",
                             self.barman_url("barman"), STANZA]),
                capture_output=True, check=True, env=self.env).stdout)
            backup_id = listing["backups_list"][-1]["backup_id"]
            result["stored"] = self.s3_bytes(f"barman/{STANZA}/base/{backup_id}/")
        result["id"] = backup_id
        return result

    # --- restores -----------------------------------------------------------------------
    def restore(self, tool: str, backup: dict[str, Any]) -> dict[str, Any]:
        """Restore `backup` into a new data directory, start it, wait until it is promoted."""
        root = self.folder(f"restore-{tool}")
        data = root / "data"
        port = _free_port()
        try:
            began = time.monotonic()
            if tool == "ours":
                from tonebridge_dr.runner.repository import Repository

                manifest = Repository.open(self.ours_repo.as_uri(), create=False).get(backup["id"])
                assert manifest.wal is not None
                result = self.run([
                    WAL_COMMAND, "restore", "postgres", "--repo", self.ours_repo.as_uri(),
                    "--data-dir", str(data), "--backup", backup["id"],
                    "--target-lsn", manifest.wal.stop_lsn, "--start", "--set", f"port={port}",
                    "--set", f"unix_socket_directories={root}", "--timeout", "3600", "--json"])
                result.pop("stdout")  # it returns once the server is promoted
            else:
                data.mkdir(mode=0o700)
                chown_postgres(data)
                if tool == "pgbackrest":
                    get = shlex.join(self.pgbackrest(f"--pg1-path={data}", "archive-get"))
                    get += ' %f "%p"'
                    result = self.run(self.pgbackrest(
                        f"--pg1-path={data}", f"--set={backup['id']}", "--type=immediate",
                        "--target-action=promote", f"--recovery-option=restore_command={get}",
                        "restore"))
                else:
                    result = self.run([*self.barman("barman-cloud-restore"),
                                       self.barman_url("barman"), STANZA, backup["id"], str(data)])
                    get = shlex.join([*self.barman("barman-cloud-wal-restore"),
                                      self.barman_url("barman"), STANZA]) + " %f %p"
                    (data / "recovery.signal").write_text("")
                    with (data / "postgresql.auto.conf").open("a") as conf:
                        conf.write(f"restore_command = '{get}'\nrecovery_target = 'immediate'\n"
                                   "recovery_target_action = 'promote'\n")
                    chown_postgres(root)
                    subprocess.run(["chown", "-R", "postgres:postgres", str(data)], check=True)
                result.pop("stdout")
                os.chmod(data, 0o700)
                started = subprocess.run(
                    as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-l",
                                 str(root / "server.log"), "-o",
                                 f"-p {port} -k {root} -c archive_mode=off", "-w", "-t", "3600",
                                 "start"]),
                    check=False, capture_output=True, env=self.env)
                if started.returncode != 0:
                    log = (root / "server.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"{tool}: the restored server did not start:\n{log}")
                self.wait_promoted(port)
            result["wall"] = time.monotonic() - began  # restore + start + recovery
        finally:
            if (data / "postmaster.pid").exists():
                subprocess.run(as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m",
                                            "fast", "-w", "stop"]),
                               check=False, capture_output=True)
            shutil.rmtree(root, ignore_errors=True)
        return result

    def wait_promoted(self, port: int) -> None:
        import psycopg

        deadline = time.monotonic() + 3600
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(host="127.0.0.1", port=port, user="postgres",
                                     dbname="postgres", password=ADMIN_PASSWORD,
                                     connect_timeout=5) as conn:
                    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                    if row is not None and row[0] is False:
                        return
            except psycopg.OperationalError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"the restored server on port {port} was not promoted in time")

    # --- WAL ----------------------------------------------------------------------------
    def wal_commands(self, tag: str) -> dict[str, tuple[str, str]]:
        """method -> (archive_command, restore_command) into fresh archives named `tag`."""
        ours = self.folder(f"ours-wal-{tag}")
        light = self.folder(f"ours-light-wal-{tag}")
        walfast = self.folder(f"ours-walfast-wal-{tag}")
        out: dict[str, tuple[str, str]] = {
            "ours": (f"{WAL_COMMAND} wal-push --repo {ours.as_uri()} %p",
                     f"{WAL_COMMAND} wal-fetch --repo {ours.as_uri()} %f %p"),
            # What `restore postgres` writes as restore_command (pitr.settings): the light
            # entry point, which answers a prefetched segment without importing the package.
            "ours-light": (f"{LIGHT_COMMAND} wal-push --repo {light.as_uri()} %p",
                           f"{LIGHT_COMMAND} wal-fetch --repo {light.as_uri()} %f %p"),
            "ours-walfast": (
                f"{WALFAST} {WAL_COMMAND} wal-push --repo {walfast.as_uri()} %p",
                f"{WALFAST} {LIGHT_COMMAND} wal-fetch --repo {walfast.as_uri()} %f %p"),
        }
        for mode in ("sync", "async"):
            repo = self.folder(f"pgbackrest-wal-{tag}-{mode}")
            spool = self.folder(f"pgbackrest-spool-{tag}-{mode}")
            subprocess.run(as_postgres(self.pgbackrest("stanza-create", repo=repo)),
                           check=True, capture_output=True, env=self.env)
            asynchronous = ["--archive-async=y", f"--spool-path={spool}", "--process-max=2"
                            ] if mode == "async" else []
            push = self.pgbackrest(*asynchronous, "archive-push", repo=repo)
            get_spool = self.folder(f"pgbackrest-getspool-{tag}-{mode}")
            fetch = self.pgbackrest("--archive-async=y", f"--spool-path={get_spool}",
                                    "--process-max=2", "--archive-get-queue-max=1GiB",
                                    "archive-get", repo=repo)
            out[f"pgbackrest-{mode}"] = (shlex.join(push) + " %p", shlex.join(fetch) + " %f %p")
        url = self.barman_url(f"wal-{tag}")
        out["barman"] = (
            shlex.join([*self.barman("barman-cloud-wal-archive"), "-z", url, STANZA]) + " %p",
            shlex.join([*self.barman("barman-cloud-wal-restore"), url, STANZA]) + " %f %p",
        )
        return {method: out[method] for method in out if method in self.args.wal_methods}

    def failed_archives(self) -> int:
        return int(self.server.query("postgres", "SELECT failed_count FROM pg_stat_archiver")[0][0])

    def requeue(self, backlog: set[str]) -> None:
        """Mark exactly the backlog's segments `.ready` again (archiving is paused)."""
        requeue(self.server)  # every .done -> .ready, our background pusher stopped
        folder = self.server.datadir / "pg_wal" / "archive_status"
        for name in os.listdir(folder):
            if name.endswith(".ready") and name[: -len(".ready")] not in backlog:
                os.rename(folder / name, folder / (name[: -len(".ready")] + ".done"))

    def drain(self, command: str) -> dict[str, Any]:
        backlog = len(ready_files(self.server))
        failed = self.failed_archives()
        began = time.monotonic()
        set_archive_command(self.server, command)
        while ready_files(self.server):
            if time.monotonic() - began > 3600:
                raise RuntimeError("backlog not drained in an hour")
            if self.failed_archives() > failed + 2:
                set_archive_command(self.server, "/bin/false")
                log = self.server.logfile.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"archive_command {command!r} fails:\n{log}")
            time.sleep(0.05)
        seconds = time.monotonic() - began
        set_archive_command(self.server, "/bin/false")
        return {"segments": backlog, "seconds": round(seconds, 2),
                "segments_per_s": round(backlog / seconds, 2)}

    def fetch(self, tool: str, command: str, segments: list[str]) -> dict[str, Any]:
        """Fetch `segments` in order, one restore_command call each, as recovery does."""
        root = self.folder(f"fetch-{tool}")
        wal = root / "pg_wal"
        wal.mkdir()
        chown_postgres(wal)
        script = root / "fetch.sh"
        # A recovering data directory, as the prefetcher of wal-fetch requires (it stops
        # when recovery is over or no live postmaster owns the directory): the script's
        # shell stands in for the postmaster.
        (root / "recovery.signal").write_text("")
        # PostgreSQL runs restore_command in the data directory with %p relative to it;
        # wal-fetch's prefetcher takes its working directory for the data directory.
        if tool == "pgbackrest":  # it checks its working directory is pg1-path, and pg_control
            command = command.replace(" archive-get", f" --pg1-path={root} archive-get")
            (root / "global").mkdir()
            shutil.copy2(self.server.datadir / "global" / "pg_control", root / "global")
            shutil.copy2(self.server.datadir / "PG_VERSION", root)
            subprocess.run(["chown", "-R", "postgres:postgres", str(root)], check=True)
        lines = ["set -e", f"cd {root}", "echo $$ > postmaster.pid"]
        times = root / "call-times"
        for name in segments:
            call = command.replace("%f", name).replace("%p", "pg_wal/RECOVERYXLOG")
            # each call's start and end ($EPOCHREALTIME: bash 5, microseconds)
            lines += [f"t=$EPOCHREALTIME; {call}; echo $t $EPOCHREALTIME >> {times}",
                      "rm pg_wal/RECOVERYXLOG"]
        script.write_text("\n".join(lines) + "\n")
        os.chmod(script, 0o755)
        env = dict(self.env, TONEBRIDGE_DR_WAL_PREFETCH="16")
        result = measure(as_postgres(["bash", str(script)]), env)
        result.pop("stdout")
        calls = sorted(float(end) - float(start) for start, end in (
            line.split() for line in times.read_text().splitlines()))
        if tool == "ours":
            from tonebridge_dr.runner.engines.postgres.wal import fetch

            fetch.stop_prefetcher(wal)
        shutil.rmtree(root, ignore_errors=True)
        return {"segments": len(segments), "seconds": round(result["wall"], 2),
                "segments_per_s": round(len(segments) / result["wall"], 2),
                # per restore_command call, ms: where a slow fetch loses its time
                "call_ms": {"median": round(statistics.median(calls) * 1000, 1),
                            "p90": round(calls[int(len(calls) * 0.9)] * 1000, 1),
                            "max": round(calls[-1] * 1000, 1),
                            "over_50ms": sum(c > 0.05 for c in calls)}}


def _round(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "wall": round(result["wall"], 2),
        "cpu": round(result["cpu"], 2),
        "peak_rss_mib": round(result.get("peak_rss", 0) / MiB, 1),
        **({"stored_mib": round(result["stored"] / MiB, 1)} if "stored" in result else {}),
    }


def median(samples: list[dict[str, Any]], key: str) -> float:
    return round(statistics.median(sample[key] for sample in samples), 2)


def run(args: argparse.Namespace) -> dict[str, Any]:
    bench = Bench(args)
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_at_start": os.getloadavg()},
        "settings": {k: v for k, v in vars(args).items() if k != "markdown"},
        "versions": {
            "postgres": version([str(PG_BIN / "postgres"), "--version"]),
            "pgbackrest": version(["pgbackrest", "version"]),
            "barman-cloud": version(["barman-cloud-backup", "--version"]),
            "tonebridge-dr": version([WAL_COMMAND, "--version"]),
            "zstd (python)": __import__("zstandard").__version__,
        },
    }
    try:
        bench.server.execute("postgres", f"CREATE DATABASE {DB}")
        report["data"] = generate(bench.server, DB, args.size_mb)
        print(f"data: {report['data']}", file=sys.stderr)
        subprocess.run(as_postgres(bench.pgbackrest("stanza-create")), check=True,
                       capture_output=True, env=bench.env)
        tools = tuple(tool for tool in PEERS if tool in args.tools)
        full: dict[str, list[dict[str, Any]]] = {tool: [] for tool in tools}
        restore: dict[str, list[dict[str, Any]]] = {tool: [] for tool in tools}
        incr: dict[str, list[dict[str, Any]]] = {}
        rows = bench.server.query(DB, "SELECT max(id) FROM documents")[0][0]
        for number in range(args.rounds):
            order = tools[number % len(tools):] + tools[: number % len(tools)]
            chain = f"round{number}"
            latest: dict[str, dict[str, Any]] = {}
            for tool in order:
                result = bench.backup(tool, "full", chain)
                latest[tool] = result
                full[tool].append(_round(result))
                print(f"round {number} full {tool}: {full[tool][-1]}", file=sys.stderr)
            if "restore" in args.phases:
                for tool in order:
                    restore[tool].append(_round(bench.restore(tool, latest[tool])))
                    print(f"round {number} restore {tool}: {restore[tool][-1]}",
                          file=sys.stderr)
            for change, where in (
                ("scattered", f"id % 20 = {number % 20}"),
                ("clustered", f"id > {rows * (number % 19) // 20} "
                              f"AND id <= {rows * (number % 19 + 1) // 20}"),
            ):
                bench.server.execute(
                    DB, "UPDATE documents SET meta = jsonb_set(meta, '{views}', "
                    f"to_jsonb((meta->>'views')::int + 1)) WHERE {where}", "CHECKPOINT")
                for tool in order[:]:
                    if tool == "barman":
                        continue  # barman-cloud has no incremental backup
                    result = bench.backup(tool, "incr", chain)
                    incr.setdefault(f"{tool} ({change})", []).append(_round(result))
                    print(f"round {number} incr {change} {tool}: {_round(result)}",
                          file=sys.stderr)
        report["full"] = full
        report["restore"] = restore
        report["incr"] = incr
        if "wal" in args.phases:
            report["wal"] = wal_phases(bench, args)
    finally:
        bench.factory.close()
        bench.moto.stop()
        shutil.rmtree(bench.work, ignore_errors=True)
    return report


def wal_phases(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"drain": {}, "load": {}, "fetch": {}}
    commands = bench.wal_commands("drain")
    began = time.monotonic()
    set_archive_command(bench.server, "/bin/false")
    backlog = generate_backlog(bench.server, args.segments)
    out["backlog"] = {"ready": backlog, "generate_seconds": round(time.monotonic() - began)}
    segments = sorted(name[: -len(".ready")] for name in ready_files(bench.server))
    for method in commands:
        bench.requeue(set(segments))
        out["drain"][method] = bench.drain(commands[method][0])
        print(f"drain {method}: {out['drain'][method]}", file=sys.stderr)
    fetched = [name for name in segments if len(name) == 24][: args.fetch_segments]
    for method, (_, restore_command) in commands.items():
        if method == "pgbackrest-sync":
            continue  # the same archive format as async; fetch is measured async (prefetch)
        tool = method.split("-")[0]
        out["fetch"][method] = bench.fetch(tool, restore_command, fetched)
        print(f"fetch {method}: {out['fetch'][method]}", file=sys.stderr)
    if "load" not in args.phases:
        return out
    bench.server.execute("postgres", "CREATE TABLE IF NOT EXISTS big (id int, pad text)")
    script = bench.work / "load.sql"
    script.write_text(
        "INSERT INTO big SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, :rows) g;\n"
    )
    os.chmod(script, 0o644)
    load_commands = bench.wal_commands("load")
    for method, (archive_command, _) in load_commands.items():
        result = steady_load(bench.server, archive_command, tps=args.load_tps,
                             rows=args.load_rows, seconds=args.load_seconds, script=script)
        result.pop("ready_samples", None)
        out["load"][method] = result
        print(f"load {method}: {result}", file=sys.stderr)
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = ["Full physical backup (medians over rounds)", "",
             "| tool | wall s | client CPU s | peak RSS MiB | stored MiB | wall vs pgBackRest "
             "| stored vs pgBackRest |", "|---|---:|---:|---:|---:|---:|---:|"]
    full = report["full"]
    ref_wall = median(full["pgbackrest"], "wall") if "pgbackrest" in full else 1.0
    ref_stored = median(full["pgbackrest"], "stored_mib") if "pgbackrest" in full else 1.0
    for tool, samples in full.items():
        wall, stored = median(samples, "wall"), median(samples, "stored_mib")
        lines.append(f"| {tool} | {wall} | {median(samples, 'cpu')} | "
                     f"{median(samples, 'peak_rss_mib')} | {stored} | "
                     f"{round(wall / ref_wall, 2)} | {round(stored / ref_stored, 2)} |")
    if any(report["restore"].values()):
        lines += ["", "Restore to a new data directory + start + consistency (medians)", "",
                  "| tool | wall s | client CPU s (restore command) |", "|---|---:|---:|"]
        for tool, samples in report["restore"].items():
            lines.append(f"| {tool} | {median(samples, 'wall')} | {median(samples, 'cpu')} |")
    lines += ["", "Second backup after changing 5 % of the rows (medians)", "",
              "| tool (change) | wall s | client CPU s | peak RSS MiB | stored MiB |",
              "|---|---:|---:|---:|---:|"]
    for tool, samples in report["incr"].items():
        lines.append(f"| {tool} | {median(samples, 'wall')} | {median(samples, 'cpu')} | "
                     f"{median(samples, 'peak_rss_mib')} | {median(samples, 'stored_mib')} |")
    wal = report.get("wal")
    if wal:
        lines += ["", f"WAL: drain of a {wal['backlog']['ready']}-segment backlog, steady load, "
                  "fetch in order", "",
                  "| method | drain segments/s | load: max .ready | load: catch-up s | "
                  "fetch segments/s |", "|---|---:|---:|---:|---:|"]
        for method, drained in wal["drain"].items():
            load = wal["load"].get(method, {})
            fetched = wal["fetch"].get(method, {})
            lines.append(f"| {method} | {drained['segments_per_s']} | "
                         f"{load.get('ready_max', '-')} | {load.get('catch_up_seconds', '-')} | "
                         f"{fetched.get('segments_per_s', '-')} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--segments", type=int, default=300)
    parser.add_argument("--fetch-segments", type=int, default=64)
    parser.add_argument("--load-seconds", type=int, default=30)
    parser.add_argument("--load-tps", type=int, default=30)
    parser.add_argument("--load-rows", type=int, default=5000)
    parser.add_argument("--phases", nargs="+", default=["restore", "wal", "load"],
                        choices=["restore", "wal", "load"],
                        help="besides full and incremental backups (always run)")
    parser.add_argument("--tools", nargs="+", default=list(PEERS), choices=PEERS,
                        help="backup tools of the full/restore/incr phases (default all)")
    parser.add_argument("--wal-methods", nargs="+", default=list(WAL_METHODS),
                        choices=WAL_METHODS, help="archive/fetch methods of the wal phase")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 20 MiB, one round, 4 segments, 3 s of load")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.size_mb, args.rounds, args.segments = 20, 1, 4
        args.fetch_segments, args.load_seconds, args.load_tps = 4, 3, 5
    report = run(args)
    text = json.dumps(report, indent=2, default=str)
    if args.json_out is not None:
        args.json_out.write_text(text)
    print(text)
    if args.markdown:
        print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
