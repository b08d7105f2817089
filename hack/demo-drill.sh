#!/usr/bin/env bash
# `make demo-drill`: the runbook drill for human error, on this machine, in about a minute.
#
#   1. start the sandbox and the operator
#   2. start a throwaway PostgreSQL that archives its WAL (archive_command = wal-push) into
#      a file:// repository, apply a BackupPolicy for it, take a physical base backup
#   3. commit rows into database `shop`, then DROP DATABASE shop (the human error)
#   4. find the event: tonebridge-dr wal-inspect (it names the restore point)
#   5. restore to just before it into a NEW volume: a RestoreRequest with that targetLSN
#   6. verify: start PostgreSQL on the restored volume and count the rows
#
# Everything is torn down on exit. KEEP=1 keeps the temp dir (logs, repository, volume).
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${ROOT}/.venv/bin"
TBDR="${BIN}/tonebridge-dr"
PY="${BIN}/python"
NAMESPACE="tonebridge-drill"
POLICY="drill-db"
TIMEOUT="${DEMO_TIMEOUT:-180}"
BEGAN="$(date +%s)"

say() { printf '\n\033[1m==> %s\033[0m  (%ss)\n' "$*" "$(( $(date +%s) - BEGAN ))"; }
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"  # die, free_port, stop_pid

[[ -x "${TBDR}" ]] || die "no ${TBDR}: run 'make venv' first"
[[ "$(id -u)" == "0" ]] || die "the drill needs root (the node agent uses mount namespaces)"

WORK="$(mktemp -d -p /var/tmp tonebridge-dr-drill.XXXXXX)"
chmod 711 "${WORK}"
SANDBOX_DIR="${WORK}/sandbox"
PG_ROOT="${WORK}/postgres"
CHECK_ROOT="${WORK}/check"
REPO_DIR="${WORK}/repo"
OPERATOR_LOG="${WORK}/operator.log"
OPERATOR_PID=""
PG_STARTED=""
CHECK_STARTED=""
SANDBOX_STARTED=""

PG_BIN="${TONEBRIDGE_DR_PG_BIN:-}"
if [[ -z "${PG_BIN}" ]]; then
  PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)"
fi
[[ -n "${PG_BIN}" && -x "${PG_BIN}/initdb" ]] || die "PostgreSQL server binaries not found (set TONEBRIDGE_DR_PG_BIN)"

as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; }
cleanup() {
  local status=$?
  set +e
  trap - EXIT INT TERM
  say "tearing down"
  stop_pid "${OPERATOR_PID}"
  [[ -n "${SANDBOX_STARTED}" ]] && "${TBDR}" sandbox down --state-dir "${SANDBOX_DIR}" >/dev/null 2>&1
  [[ -n "${PG_STARTED}" ]] && as_pg "${PG_BIN}/pg_ctl" -D "${PG_ROOT}/data" -m fast -w stop >/dev/null 2>&1
  [[ -n "${CHECK_STARTED}" ]] && as_pg "${PG_BIN}/pg_ctl" -D "${CHECK_STARTED}" -m fast -w stop >/dev/null 2>&1
  if [[ "${status}" != 0 && -f "${OPERATOR_LOG}" ]]; then
    echo "--- last lines of the operator log:" >&2
    tail -n 30 "${OPERATOR_LOG}" >&2
  fi
  if [[ -n "${KEEP:-}" ]]; then echo "kept ${WORK}"; else rm -rf "${WORK}"; fi
  exit "${status}"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 1. sandbox and operator ---------------------------------------------------------------
say "starting the sandbox and the operator"
SANDBOX_STARTED=1
eval "$("${TBDR}" sandbox up --state-dir "${SANDBOX_DIR}")"
export KUBECONFIG
KUBECTL="${TONEBRIDGE_DR_CONTROLPLANE_DIR:-}/kubectl"
if [[ ! -x "${KUBECTL}" ]]; then
  KUBECTL="$("${PY}" -c 'from tonebridge_dr.sandbox import layout; print(layout.controlplane_dir())')/kubectl"
fi
k() { "${KUBECTL}" "$@"; }
k create namespace "${NAMESPACE}" >/dev/null
for sa in tonebridge-dr-backup tonebridge-dr-restore; do
  k -n "${NAMESPACE}" create serviceaccount "${sa}" >/dev/null
done
LIVENESS_PORT="$(free_port)"
"${TBDR}" operator --standalone --namespace "${NAMESPACE}" --metrics-port 0 \
  --liveness "http://127.0.0.1:${LIVENESS_PORT}/healthz" >"${OPERATOR_LOG}" 2>&1 &
OPERATOR_PID=$!

# --- 2. an archiving PostgreSQL, its policy, a base backup -------------------------------------
say "starting PostgreSQL with WAL archiving into file://${REPO_DIR}/${POLICY}"
PG_PASSWORD="drill-$("${PY}" -c 'import secrets; print(secrets.token_hex(12))')"
PG_PORT="$(free_port)"
mkdir -p "${PG_ROOT}/sock" "${REPO_DIR}/${POLICY}" "${CHECK_ROOT}"
printf '%s\n' "${PG_PASSWORD}" > "${PG_ROOT}/pwfile"
chown -R postgres:postgres "${PG_ROOT}" "${REPO_DIR}" "${CHECK_ROOT}"
as_pg "${PG_BIN}/initdb" -D "${PG_ROOT}/data" -U postgres --auth=scram-sha-256 \
  --pwfile="${PG_ROOT}/pwfile" -E UTF8 --locale=C.UTF-8 --no-sync >/dev/null
rm -f "${PG_ROOT}/pwfile"
cat >> "${PG_ROOT}/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = ${PG_PORT}
unix_socket_directories = '${PG_ROOT}/sock'
fsync = off
archive_mode = on
archive_command = '${TBDR} wal-push %p'
archive_timeout = 60
EOF
TONEBRIDGE_DR_REPO="file://${REPO_DIR}/${POLICY}" \
  as_pg "${PG_BIN}/pg_ctl" -D "${PG_ROOT}/data" -l "${PG_ROOT}/server.log" -w -t 60 start >/dev/null
PG_STARTED=1
export PGPASSWORD="${PG_PASSWORD}"
PSQL=("${PG_BIN}/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "${PG_PORT}" -U postgres)
DSN="postgresql://postgres:${PG_PASSWORD}@127.0.0.1:${PG_PORT}/postgres"
k -n "${NAMESPACE}" create secret generic drill-postgres --from-literal=dsn="${DSN}" >/dev/null
k -n "${NAMESPACE}" apply -f - <<EOF
apiVersion: dr.tonebridge.io/v1alpha1
kind: BackupPolicy
metadata:
  name: ${POLICY}
spec:
  target:
    postgres:
      database: postgres
      dsnSecretRef: {name: drill-postgres, key: dsn}
      walArchive: {mode: archive_command, archiveTimeout: 1m}
  schedules:
    - {name: nightly, cron: "0 3 * * *", method: physical}
  repository:
    url: file://${REPO_DIR}
EOF
"${PSQL[@]}" -d postgres -c "CREATE DATABASE shop"
"${PSQL[@]}" -d shop -c "CREATE TABLE orders (id int PRIMARY KEY, total numeric)" \
  -c "INSERT INTO orders SELECT g, g * 1.5 FROM generate_series(1, 1000) g"
"${TBDR}" backup postgres --method physical --dsn "${DSN}" \
  --repo "file://${REPO_DIR}/${POLICY}" --json >/dev/null
"${TBDR}" backups list --repo "file://${REPO_DIR}/${POLICY}"

# --- 3. the human error ----------------------------------------------------------------------
say "orders keep coming, then someone runs DROP DATABASE shop"
FROM="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
"${PSQL[@]}" -d shop -c "INSERT INTO orders SELECT g, g * 1.5 FROM generate_series(1001, 1500) g"
EXPECTED="$("${PSQL[@]}" -At -d shop -c "SELECT count(*) || ' orders, total ' || sum(total) FROM orders")"
echo "before the drop: ${EXPECTED}"
"${PSQL[@]}" -d postgres -c "DROP DATABASE shop"
"${PSQL[@]}" -d postgres -c "CREATE TABLE after_the_drop (x int)"  # life goes on
"${PSQL[@]}" -At -d postgres -c "SELECT pg_walfile_name(pg_switch_wal())" >/dev/null
for _ in $(seq 1 300); do  # the archiver ships the switched segment
  [[ "$("${PSQL[@]}" -At -d postgres -c "SELECT last_archived_wal >= pg_walfile_name(pg_current_wal_lsn() - 1) FROM pg_stat_archiver")" == t ]] && break
  sleep 0.1
done

# --- 4. find the event -----------------------------------------------------------------------
say "tonebridge-dr wal-inspect --from ${FROM}   (what happened, and where to stop)"
"${TBDR}" wal-inspect --repo "file://${REPO_DIR}/${POLICY}" --from "${FROM}" --dsn "${DSN}"
TARGET_LSN="$("${TBDR}" wal-inspect --repo "file://${REPO_DIR}/${POLICY}" --from "${FROM}" --json \
  | "${PY}" -c 'import json, sys
events = [e for e in json.load(sys.stdin)["events"] if e["kind"] == "DROP DATABASE"]
print(events[-1]["restore"]["targetLSN"])')"
echo "restore point: targetLSN ${TARGET_LSN}"

# --- 5. restore to just before it, into a new volume ----------------------------------------
say "RestoreRequest shop-before-drop: targetLSN ${TARGET_LSN}, a NEW volume"
k -n "${NAMESPACE}" apply -f - <<EOF
apiVersion: dr.tonebridge.io/v1alpha1
kind: RestoreRequest
metadata:
  name: shop-before-drop
spec:
  source:
    policyRef: {name: ${POLICY}}
  targetLSN: "${TARGET_LSN}"
  method: physical
  target:
    volume:
      claimTemplate: {size: 1Gi}
EOF
k -n "${NAMESPACE}" wait --for=condition=Complete rr/shop-before-drop --timeout="${TIMEOUT}s" || {
  k -n "${NAMESPACE}" get rr shop-before-drop -o yaml >&2
  die "the restore did not complete"
}
k -n "${NAMESPACE}" get rr -o wide

# --- 6. verify ---------------------------------------------------------------------------------
say "verify: PostgreSQL on the restored volume"
VOLUME="$(k -n "${NAMESPACE}" get pvc shop-before-drop -o jsonpath='{.spec.volumeName}')"
DATA="${SANDBOX_DIR}/volumes/${VOLUME}/pgdata"
CHECK_PORT="$(free_port)"
chown -R postgres:postgres "${DATA}"
as_pg "${PG_BIN}/pg_ctl" -D "${DATA}" -l "${CHECK_ROOT}/server.log" -w -t 60 \
  -o "-p ${CHECK_PORT} -c listen_addresses=127.0.0.1 -c unix_socket_directories=${CHECK_ROOT}" start >/dev/null
CHECK_STARTED="${DATA}"
GOT="$("${PG_BIN}/psql" -X -At -h 127.0.0.1 -p "${CHECK_PORT}" -U postgres -d shop \
  -c "SELECT count(*) || ' orders, total ' || sum(total) FROM orders")"
echo "restored:        ${GOT}"
[[ "${GOT}" == "${EXPECTED}" ]] || die "the restored database differs from the one before the drop"
say "drill passed: the dropped database is back with every order, in $(( $(date +%s) - BEGAN ))s"
