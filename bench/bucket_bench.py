"""Bucket snapshots vs an `aws s3 sync`-equivalent copy with boto3 (python -m bench bucket).

One moto S3 server on 127.0.0.1 holds a source bucket with `--objects` small objects
(1-4 KiB, distinct bytes) and `--large` objects of `--large-mb` MiB. In this one process:

- sync: what `aws s3 sync s3://src s3://dst` does, with boto3: list both sides, copy
  (server-side CopyObject, as the CLI does between S3 buckets) every key that is missing
  or differs in size or is newer, 10 requests at a time (the CLI's default
  max_concurrent_requests). Run 1 into an empty bucket, run 2 with nothing changed.
- ours: `snapshot.snapshot` (the engine `backup bucket` runs) with `--parallel 10` into an
  s3:// repository: snapshot 1, then snapshot 2 with nothing changed.

Wall time per run and the ratio ours/sync. Short on purpose (2 shared cores).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import boto3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_moto(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    binary = Path(sys.executable).parent / "moto_server"
    with log.open("wb") as out:
        process = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1)
            return process, url
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("moto_server did not start")


def fill(client: Any, bucket: str, objects: int, large: int, large_mb: int) -> int:
    def put(n: int) -> int:
        if n < large:
            seed = hashlib.sha256(f"large-{n}".encode()).digest()
            body = seed * (large_mb * 1024 * 1024 // 32)
            key = f"large/{n:03d}.bin"
        else:
            seed = hashlib.sha256(str(n).encode()).digest()
            body = seed * (32 + n % 96)
            key = f"u/{n % 100:02d}/{n:06d}.jpg"
        client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="image/jpeg",
                          Metadata={"owner": f"user-{n % 977}"})
        return len(body)

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        return sum(pool.map(put, range(objects + large)))


def listing(client: Any, bucket: str) -> dict[str, Any]:
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", ()):
            found[item["Key"]] = item
    return found


def sync(client: Any, source: str, target: str) -> int:
    """`aws s3 sync s3://source s3://target` semantics: copy missing, resized or newer keys."""
    have = listing(client, target)
    todo = [key for key, item in listing(client, source).items()
            if key not in have or have[key]["Size"] != item["Size"]
            or have[key]["LastModified"] < item["LastModified"]]

    def copy(key: str) -> None:
        client.copy_object(Bucket=target, Key=key, CopySource={"Bucket": source, "Key": key})

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        list(pool.map(copy, todo))
    return len(todo)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tonebridge_dr.runner.engines.bucket import endpoint, snapshot
    from tonebridge_dr.runner.repository.catalog import Repository

    work = Path(tempfile.mkdtemp(prefix="bucket-bench-"))
    process, url = start_moto(work / "moto.log")
    try:
        os.environ.update({
            "AWS_ENDPOINT_URL_S3": url, "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
            "NO_PROXY": "127.0.0.1", "TONEBRIDGE_DR_CLAIM_HEARTBEAT": "0",
        })
        client = boto3.client("s3")
        names = {name: f"bench-{name}-{uuid.uuid4().hex[:8]}" for name in ("src", "dst", "repo")}
        for bucket in names.values():
            client.create_bucket(Bucket=bucket)
        began = time.monotonic()
        total = fill(client, names["src"], args.objects, args.large, args.large_mb)
        filled = time.monotonic() - began
        results: dict[str, float] = {}
        copied: dict[str, int] = {}
        repo = Repository.open(f"s3://{names['repo']}/uploads")
        source = endpoint.open_bucket(f"s3://{names['src']}", "--source")
        summaries = []
        for round_ in (1, 2):
            began = time.monotonic()
            copied[f"sync {round_}"] = sync(client, names["src"], names["dst"])
            results[f"sync {round_}"] = time.monotonic() - began
            began = time.monotonic()
            summary = snapshot.snapshot(source, repo, parallel=10)["bucket"]
            results[f"ours {round_}"] = time.monotonic() - began
            summaries.append(summary)
        return {"objects": args.objects + args.large, "bytes": total, "fill_seconds": filled,
                "seconds": results, "sync_copied": copied, "ours": summaries}
    finally:
        process.kill()
        process.wait()


def markdown(report: dict[str, Any]) -> str:
    seconds = report["seconds"]
    lines = ["| run | sync-equivalent s | ours s | ratio ours/sync | what ours transferred |",
             "|---|---:|---:|---:|---|"]
    for round_, label in ((1, "1: first copy / snapshot 1"), (2, "2: nothing changed")):
        ours, sync_ = seconds[f"ours {round_}"], seconds[f"sync {round_}"]
        summary = report["ours"][round_ - 1]
        lines.append(
            f"| {label} | {sync_:.2f} | {ours:.2f} | {ours / sync_:.2f} | "
            f"{summary['read_objects']} read, {summary['new_objects']} uploaded "
            f"({summary['new_bytes'] / 1048576:.1f} MiB), {summary['unchanged_objects']} "
            "unchanged |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objects", type=int, default=10_000, help="small objects")
    parser.add_argument("--large", type=int, default=4, help="large objects")
    parser.add_argument("--large-mb", type=int, default=16, help="MiB per large object")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    report = run(args)
    print(markdown(report) if args.markdown else json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
