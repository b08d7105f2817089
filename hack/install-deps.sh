#!/usr/bin/env bash
# Installs the Debian packages tonebridge-dr's demo and tests need, when missing:
# PostgreSQL 15 (server, client, contrib), Redis, GnuPG, zstd, make, gcc + libc6-dev (the
# compiled front door of wal-push / wal-fetch, walfast.c), python3-venv,
# util-linux (unshare, for the sandbox's node agent), git (the Git copy of kubernetes
# backups), pgBackRest and barman-cli-cloud (the peers bench/peers.py measures against).
# A no-op when all are present.
set -euo pipefail

packages=(postgresql postgresql-contrib redis-server gnupg zstd make gcc libc6-dev python3-venv util-linux procps git pgbackrest barman-cli-cloud)
need=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "error: missing Debian packages: ${need[*]} (install them as root with apt-get)" >&2
    exit 1
  fi
  echo "installing Debian packages: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # Debian starts a system PostgreSQL cluster and a Redis daemon on install; demo and
  # tests start throwaway instances on free ports, so stop the system ones.
  if command -v pg_lsclusters >/dev/null; then
    pg_lsclusters -h 2>/dev/null | awk '$4=="online"{print $1, $2}' | while read -r v c; do
      pg_ctlcluster "$v" "$c" stop || true
    done
  fi
  if command -v redis-cli >/dev/null; then
    redis-cli -p 6379 shutdown nosave >/dev/null 2>&1 || true
  fi
fi
command -v go >/dev/null || { echo "error: Go is required (it builds the control plane)" >&2; exit 1; }
