"""Benchmark: the BackupPolicy controller at scale on the sandbox control plane.

Creates `--policies` BackupPolicies (default 500, each one schedule -> one CronJob)
in one namespace, as fast as one client can (a burst, like `kubectl apply -f` of a
folder) or paced with `--rate N` per second, while a watch on CronJobs timestamps
the moment each CronJob appears. Reports the latency from "create sent" to "CronJob
seen" (p50 / p95 / max), the time until every policy is Ready, and the operator's
RSS (VmRSS of its process; VmHWM = peak) once everything settled, then does the
same for a second batch (default 1000 in total) and waits one full freshness
interval so every policy's timer has run at least once.

The operator runs exactly as in production (`tonebridge-dr operator`, default
settings: 60 s freshness interval, 16 worker threads), standalone, watching the
benchmark namespace. Policies point at a file:// repository that does not exist
yet (the monitor reads an empty catalog), so the numbers are the controller's own.

Run from the repository root (about 4-6 minutes on 2 cores):

    .venv/bin/python bench/operator_bench.py --markdown

Pass `--state-dir DIR` to reuse a running sandbox (`tonebridge-dr sandbox up`).
Prints one JSON document; `--markdown` adds a table for bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import urllib3  # noqa: E402

from tonebridge_dr.sandbox import layout, runtime  # noqa: E402
from tonebridge_dr.sandbox.kube import ApiError, Kube  # noqa: E402

NAMESPACE = "operator-bench"
POLICY_PATH = f"/apis/dr.tonebridge.io/v1alpha1/namespaces/{NAMESPACE}/backuppolicies"
CRONJOB_PATH = f"/apis/batch/v1/namespaces/{NAMESPACE}/cronjobs"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _policy(index: int, repo_root: Path) -> dict[str, Any]:
    return {
        "apiVersion": "dr.tonebridge.io/v1alpha1",
        "kind": "BackupPolicy",
        "metadata": {"name": f"bench-{index:05d}"},
        "spec": {
            "target": {"postgres": {"database": "tonebridge_db",
                                    "dsnSecretRef": {"name": "db-dsn", "key": "dsn"}}},
            "schedules": [{"name": "nightly", "cron": f"{index % 60} 2 * * *"}],
            "repository": {"url": (repo_root / f"p{index:05d}").as_uri()},
            "objectives": {"rpo": "1h"},
        },
    }


class CronJobWatch(threading.Thread):
    """Records when each CronJob is first seen (monotonic clock)."""

    def __init__(self, kube: Kube) -> None:
        super().__init__(daemon=True)
        self.kube = kube
        self.seen: dict[str, float] = {}
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        version = self.kube.get(CRONJOB_PATH)["metadata"]["resourceVersion"]
        self.ready.set()
        while not self.stopped.is_set():
            try:
                for event in self.kube.watch(CRONJOB_PATH, version, timeout_seconds=30):
                    obj = event.get("object") or {}
                    meta = obj.get("metadata") or {}
                    if meta.get("resourceVersion"):
                        version = meta["resourceVersion"]
                    if event.get("type") == "ADDED":
                        now = time.monotonic()
                        with self.lock:
                            self.seen.setdefault(meta["name"], now)
                    if self.stopped.is_set():
                        return
            except (ApiError, OSError, urllib3.exceptions.HTTPError):
                if self.stopped.is_set():
                    return
                time.sleep(0.1)

    def count(self) -> int:
        with self.lock:
            return len(self.seen)


def _rss(pid: int) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = round(int(rest.split()[0]) / 1024, 1)
    return values


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def _ready_count(kube: Kube) -> int:
    count, token = 0, None
    while True:
        query = {"limit": 500, **({"continue": token} if token else {})}
        answer = kube.get(POLICY_PATH, **query)
        for item in answer.get("items") or []:
            for cond in (item.get("status") or {}).get("conditions") or []:
                if cond.get("type") == "Ready" and cond.get("status") == "True":
                    count += 1
        token = (answer.get("metadata") or {}).get("continue")
        if not token:
            return count


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def _batch(
    kube: Kube, watch: CronJobWatch, start: int, count: int, rate: float | None,
    repo_root: Path, timeout: float,
) -> dict[str, Any]:
    sent: dict[str, float] = {}
    began = time.monotonic()
    for index in range(start, start + count):
        if rate:
            target = began + (index - start) / rate
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        doc = _policy(index, repo_root)
        sent[f"{doc['metadata']['name']}-nightly"] = time.monotonic()
        kube.create(POLICY_PATH, doc)
    create_seconds = time.monotonic() - began
    deadline = time.monotonic() + timeout
    while watch.count() < start + count:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {watch.count()} CronJobs after {timeout:.0f}s")
        time.sleep(0.05)
    all_cronjobs = time.monotonic() - began
    while _ready_count(kube) < start + count:
        if time.monotonic() > deadline:
            raise SystemExit("not every policy became Ready in time")
        time.sleep(0.5)
    all_ready = time.monotonic() - began
    with watch.lock:
        latencies = [watch.seen[name] - sent[name] for name in sent]
    return {
        "policies": count,
        "create_seconds": round(create_seconds, 2),
        "latency_p50_s": round(statistics.median(latencies), 3),
        "latency_p95_s": round(_percentile(latencies, 0.95), 3),
        "latency_max_s": round(max(latencies), 3),
        "all_cronjobs_s": round(all_cronjobs, 2),
        "all_ready_s": round(all_ready, 2),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", type=int, default=500, help="first batch")
    parser.add_argument("--total", type=int, default=1000, help="policies after batch two")
    parser.add_argument("--rate", type=float, default=None, help="creates per second")
    parser.add_argument("--state-dir", type=Path, help="a running sandbox to reuse")
    parser.add_argument("--freshness-interval", type=float, default=60.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)

    load_at_start = [round(x, 2) for x in os.getloadavg()]
    work = Path(tempfile.mkdtemp(prefix="tonebridge-operator-bench-", dir="/var/tmp"))
    work.chmod(0o711)
    own_sandbox = args.state_dir is None
    state = layout.StateDir(args.state_dir or work / "sandbox")
    operator: subprocess.Popen[bytes] | None = None
    try:
        sandbox = runtime.start(state, detach=False) if own_sandbox else runtime.status(state)
        if sandbox is None:
            raise SystemExit(f"no sandbox runs in {state.root}")
        kube = sandbox.kube()
        kube.create("/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
        kube.create(f"/api/v1/namespaces/{NAMESPACE}/secrets", {
            "metadata": {"name": "db-dsn"},
            "stringData": {"dsn": "host=127.0.0.1 port=1 dbname=tonebridge_db"},
        })
        watch = CronJobWatch(kube)
        watch.start()
        watch.ready.wait(30)

        liveness = _free_port()
        log_path = work / "operator.log"
        env = {**os.environ, "KUBECONFIG": str(sandbox.kubeconfig)}
        with log_path.open("wb") as log:
            operator = subprocess.Popen(
                [sys.executable, "-m", "tonebridge_dr.cli", "operator", "--standalone",
                 "--namespace", NAMESPACE, "--metrics-port", "0",
                 "--liveness", f"http://127.0.0.1:{liveness}/healthz",
                 "--freshness-interval", str(args.freshness_interval)],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        for _ in range(600):
            try:
                opener.open(f"http://127.0.0.1:{liveness}/healthz", timeout=1)
                break
            except OSError:
                if operator.poll() is not None:
                    raise SystemExit(log_path.read_text()[-3000:]) from None
                time.sleep(0.1)
        idle_rss = _rss(operator.pid)

        repo_root = work / "repos"
        cpu = _cpu_seconds(operator.pid)
        first = _batch(kube, watch, 0, args.policies, args.rate, repo_root, args.timeout)
        first["operator_cpu_s"] = round(_cpu_seconds(operator.pid) - cpu, 2)
        time.sleep(5)
        first["rss_mib"] = _rss(operator.pid)
        second_count = args.total - args.policies
        cpu = _cpu_seconds(operator.pid)
        second = _batch(kube, watch, args.policies, second_count, args.rate, repo_root,
                        args.timeout)
        second["operator_cpu_s"] = round(_cpu_seconds(operator.pid) - cpu, 2)
        cpu = _cpu_seconds(operator.pid)
        time.sleep(args.freshness_interval + 5)  # every timer has ticked at least once
        second["rss_mib"] = _rss(operator.pid)
        second["idle_cpu_percent"] = round(
            100 * (_cpu_seconds(operator.pid) - cpu) / (args.freshness_interval + 5), 1
        )
        result = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "load_average_at_start": load_at_start},
            "rate": args.rate or "burst",
            "freshness_interval_s": args.freshness_interval,
            "idle_rss_mib": idle_rss,
            "batch_1": first,
            "batch_2": second,
            "operator_errors": sum(
                1 for line in log_path.read_text().splitlines() if "Traceback" in line
            ),
        }
        print(json.dumps(result, indent=2))
        if args.markdown:
            print()
            print("| policies | creates | create s | p50 s | p95 s | max s | all CronJobs s "
                  "| all Ready s | operator CPU s | RSS MiB (peak) |")
            print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
            total = 0
            for batch in (first, second):
                total += batch["policies"]
                rss = batch["rss_mib"]
                print(f"| {total} (+{batch['policies']}) | {result['rate']} "
                      f"| {batch['create_seconds']} | {batch['latency_p50_s']} "
                      f"| {batch['latency_p95_s']} | {batch['latency_max_s']} "
                      f"| {batch['all_cronjobs_s']} | {batch['all_ready_s']} "
                      f"| {batch['operator_cpu_s']} | {rss.get('VmRSS')} ({rss.get('VmHWM')}) |")
        watch.stopped.set()
        kube.close()
        return 0
    finally:
        if operator is not None and operator.poll() is None:
            os.killpg(operator.pid, signal.SIGTERM)
            try:
                operator.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(operator.pid, signal.SIGKILL)
        if own_sandbox:
            runtime.stop(state)
        else:
            try:
                sandbox_kube = runtime.status(state)
                if sandbox_kube is not None:
                    sandbox_kube.kube().delete(f"/api/v1/namespaces/{NAMESPACE}")
            except ApiError:
                pass
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
