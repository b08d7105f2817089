"""Benchmark: `backup kubernetes` and `restore kubernetes` of a namespace of 1,000
ConfigMaps on the sandbox control plane (real kube-apiserver + etcd).

Creates `--configmaps` ConfigMaps (default 1000, each 4 keys, ~1 KiB of data, as an app's
settings look) in one namespace, then runs, each `--runs` times in its own process
(`python -m tonebridge_dr.cli ...`, wall time of the process, start-up included):

- kubectl get (floor): `kubectl get configmaps -o yaml`, one list, no cleaning;
- backup: `backup kubernetes --kind configmaps` into a file:// repository (zstd,
  SHA-256, fsync); backup (gpg): the same, encrypted to an OpenPGP key;
- kubectl apply (floor): `kubectl apply --server-side -f` of the backup's YAML into an
  empty namespace;
- restore (new namespace): `restore kubernetes --namespace-map` into an empty namespace
  (one LIST, then 1,000 applies, 8 at a time);
- restore (missing, all exist): the same again, every object exists and is skipped;
- restore (replace, unchanged): `--mode replace` over identical live objects (a PUT each);
- restore (dry run): `--mode replace --dry-run` over them.

Run from the repository root (about 2-4 minutes on 2 cores):

    .venv/bin/python bench/kubernetes_bench.py --markdown

`--state-dir DIR` reuses a running sandbox (`tonebridge-dr sandbox up`). Prints one JSON
document; `--markdown` adds a table for bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tonebridge_dr.sandbox import layout, runtime  # noqa: E402
from tonebridge_dr.sandbox.kube import Kube  # noqa: E402


def _fill(kube: Kube, namespace: str, count: int) -> None:
    kube.create("/api/v1/namespaces", {"metadata": {"name": namespace}})
    for n in range(count):
        kube.create(f"/api/v1/namespaces/{namespace}/configmaps", {
            "metadata": {"name": f"app-config-{n:04d}", "labels": {"app": f"svc-{n % 25}"}},
            "data": {
                "LOG_LEVEL": "info",
                "FEATURE_FLAGS": ",".join(f"flag-{(n + i) % 97}" for i in range(12)),
                "DATABASE_URL": f"postgres://db-{n % 7}.internal:5432/app_{n}",
                "settings.yaml": "\n".join(f"key{i}: value-{n}-{i}" for i in range(40)),
            },
        })


def _timed(argv: list[str], env: dict[str, str]) -> tuple[float, dict[str, Any] | None]:
    began = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    elapsed = time.monotonic() - began
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:6])}... failed ({done.returncode}): "
                         f"{done.stderr[-2000:]}")
    try:
        return elapsed, json.loads(done.stdout)
    except ValueError:
        return elapsed, None


def _gpg_key(work: Path) -> Path:
    home = work / "gnupg"
    home.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    subprocess.run(["gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", "",
                    "--quick-gen-key", "bench <bench@tonebridge-dr.invalid>", "future-default",
                    "default", "never"], env=env, check=True, capture_output=True)
    public = work / "public.asc"
    public.write_bytes(subprocess.run(["gpg", "--armor", "--export"], env=env, check=True,
                                      capture_output=True).stdout)
    return public


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configmaps", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--state-dir", type=Path, help="a running sandbox to reuse")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)

    load_at_start = [round(x, 2) for x in os.getloadavg()]
    work = Path(tempfile.mkdtemp(prefix="tonebridge-kubernetes-bench-", dir="/var/tmp"))
    work.chmod(0o711)
    own_sandbox = args.state_dir is None
    state = layout.StateDir(args.state_dir or work / "sandbox")
    tag = uuid.uuid4().hex[:6]
    source = f"bench-config-{tag}"
    created: list[str] = [source]
    kube: Kube | None = None
    try:
        sandbox = runtime.start(state, detach=False) if own_sandbox else runtime.status(state)
        if sandbox is None:
            raise SystemExit(f"no sandbox runs in {state.root}")
        kube = sandbox.kube()
        began = time.monotonic()
        _fill(kube, source, args.configmaps)
        fill_seconds = time.monotonic() - began
        env = {**os.environ, "KUBECONFIG": str(sandbox.kubeconfig)}
        cli = [sys.executable, "-m", "tonebridge_dr.cli", "-q"]
        kubectl = [str(sandbox.kubectl_path), f"--kubeconfig={sandbox.kubeconfig}"]
        public = _gpg_key(work)
        times: dict[str, list[float]] = {}
        facts: dict[str, Any] = {}

        def record(step: str, argv: list[str]) -> dict[str, Any] | None:
            elapsed, result = _timed(argv, env)
            times.setdefault(step, []).append(elapsed)
            return result

        for run in range(args.runs):
            record("kubectl get (floor)", [*kubectl, "get", "configmaps", "-n", source,
                                          "-o", "yaml"])
            repo = (work / f"repo-{run}").as_uri()
            result = record("backup", [*cli, "backup", "kubernetes", "--namespace", source,
                                       "--kind", "configmaps", "--repo", repo, "--json"])
            assert result is not None
            facts.update(objects=result["kubernetes"]["object_count"],
                         stored_bytes=result["size_bytes"], raw_bytes=result["raw_size_bytes"])
            record("backup (gpg)", [*cli, "backup", "kubernetes", "--namespace", source,
                                    "--kind", "configmaps", "--repo", f"{repo}-gpg",
                                    "--encrypt-to", str(public), "--json"])
            export = work / f"export-{run}.yaml"
            stored = next((work / f"repo-{run}" / "base").glob("*/objects.*.yaml.zst"))
            export.write_bytes(subprocess.run(["zstd", "-dc", str(stored)], check=True,
                                              capture_output=True).stdout)
            floor_ns = f"bench-floor-{tag}-{run}"
            created.append(floor_ns)
            kube.create("/api/v1/namespaces", {"metadata": {"name": floor_ns}})
            text = export.read_text().replace(f"namespace: {source}", f"namespace: {floor_ns}")
            export.write_text(text)
            record("kubectl apply --server-side (floor)",
                   [*kubectl, "apply", "--server-side", "-f", str(export), "-o", "name"])
            target = f"bench-restore-{tag}-{run}"
            created.append(target)
            mapping = ["--namespace-map", f"{source}={target}"]
            restore = [*cli, "restore", "kubernetes", "--repo", repo, *mapping, "--json"]
            result = record("restore (new namespace)", restore)
            assert result is not None and result["created"] == facts["objects"], result
            result = record("restore (missing, all exist)", restore)
            assert result is not None and result["skipped"] == facts["objects"], result
            result = record("restore (replace, unchanged)", [*restore, "--mode", "replace"])
            assert result is not None and result["unchanged"] == facts["objects"], result
            record("restore (dry run)", [*restore, "--mode", "replace", "--dry-run"])
        report = {
            "configmaps": args.configmaps, "runs": args.runs,
            "fill_seconds": round(fill_seconds, 2), **facts,
            "median_seconds": {k: round(statistics.median(v), 2) for k, v in times.items()},
            "all_seconds": {k: [round(x, 2) for x in v] for k, v in times.items()},
            "python": platform.python_version(), "cpus": os.cpu_count(),
            "load_at_start": load_at_start,
        }
        print(json.dumps(report, indent=2))
        if args.markdown:
            print("\n| step | median wall s | objects/s |\n|---|---:|---:|")
            for step, value in report["median_seconds"].items():
                rate = facts["objects"] / value if value else 0
                print(f"| {step} | {value} | {rate:.0f} |")
        return 0
    finally:
        if kube is not None:
            for namespace in created:
                with contextlib.suppress(Exception):  # best effort clean-up
                    kube.delete(f"/api/v1/namespaces/{namespace}")
        if own_sandbox:
            runtime.stop(state)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
