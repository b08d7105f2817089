"""`python -m bench [postgres|redis|wal|operator|restoretest|kubernetes|bucket|peers|wal-profile]
[ARGS...]`
(`make bench BENCH_ARGS=...`).

- `postgres` (default): bench/pg_dump_bench.py, our logical backup vs pg_dump and the
  spec's pg_dump + tar + upload pipeline.
- `redis`: bench/redis_bench.py, our Redis backup vs `redis-cli --rdb`.
- `wal`: bench/wal_bench.py, wal-push / wal-fetch vs per-call uploads and `cp`.
- `operator`: bench/operator_bench.py, apply-to-CronJob latency and operator RSS.
- `restoretest`: bench/restoretest_bench.py, the RTO restore-test postgres measures vs
  pg_restore and a base backup copy + start.
- `kubernetes`: bench/kubernetes_bench.py, backup and restore of a namespace of 1,000
  ConfigMaps vs kubectl get / kubectl apply --server-side.
- `bucket`: bench/bucket_bench.py, bucket snapshots vs an `aws s3 sync`-equivalent copy.
- `peers`: bench/peers.py, physical backups, restores, incrementals and WAL archiving vs
  pgBackRest and barman-cloud.
- `wal-profile`: bench/wal_profile.py, the CPU of a WAL drain (ours vs pgBackRest async)
  and a py-spy profile of our background pusher.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    name, rest = (argv[0], argv[1:]) if argv and not argv[0].startswith("-") else ("postgres", argv)
    if name in ("postgres", "pg", "pg_dump"):
        from bench import pg_dump_bench

        return pg_dump_bench.main(rest)
    scripts = {"redis": "redis_bench.py", "wal": "wal_bench.py", "operator": "operator_bench.py",
               "restoretest": "restoretest_bench.py", "kubernetes": "kubernetes_bench.py",
               "bucket": "bucket_bench.py", "peers": "peers.py",
               "wal-profile": "wal_profile.py"}
    if name in scripts:
        script = HERE / scripts[name]
        sys.argv = [str(script), *rest]
        runpy.run_path(str(script), run_name="__main__")
        return 0
    print(f"unknown benchmark {name!r}: use postgres, redis, wal, operator, restoretest, "
          "kubernetes, bucket or peers", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
