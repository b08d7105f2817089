#!/usr/bin/env bash
# `make demo`: tonebridge-dr end to end on this machine, no cloud account, a few minutes.
#
#   1. start the sandbox (etcd + kube-apiserver + kube-controller-manager + node agent)
#   2. start a throwaway PostgreSQL with a sample tonebridge_db database
#   3. run the operator
#   4. apply examples/00-local-demo/ (the DSN Secret generated now, the file:// repository
#      moved into a temp dir)
#   5. ask for a backup now (run-now annotation), wait for it
#   6. show `kubectl get backuppolicies` and `tonebridge-dr backups list`
#
# Everything is torn down on exit (also on Ctrl-C or failure). Set KEEP=1 to keep the
# temp dir (logs, repository) for a look afterwards.
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${ROOT}/.venv/bin"
TBDR="${BIN}/tonebridge-dr"
PY="${BIN}/python"
NAMESPACE="tonebridge-demo"
POLICY="demo-db"
TIMEOUT="${DEMO_TIMEOUT:-180}"

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"  # die, free_port, stop_pid

[[ -x "${TBDR}" ]] || die "no ${TBDR}: run 'make venv' first"

# Pods get an emptyDir at /tmp (read-only root filesystem), so nothing they must see
# may live under /tmp: the work dir goes to /var/tmp.
WORK="$(mktemp -d -p /var/tmp tonebridge-dr-demo.XXXXXX)"
chmod 711 "${WORK}"
SANDBOX_DIR="${WORK}/sandbox"
PG_ROOT="${WORK}/postgres"
REPO_DIR="${WORK}/repo"
OPERATOR_LOG="${WORK}/operator.log"
OPERATOR_PID=""
PG_STARTED=""
SANDBOX_STARTED=""

# --- PostgreSQL helpers --------------------------------------------------------------------
PG_BIN="${TONEBRIDGE_DR_PG_BIN:-}"
if [[ -z "${PG_BIN}" ]]; then
  PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)"
fi
[[ -n "${PG_BIN}" && -x "${PG_BIN}/initdb" ]] || die "PostgreSQL server binaries not found (set TONEBRIDGE_DR_PG_BIN)"

as_pg() {  # PostgreSQL refuses to run as root: use the postgres OS user then
  if [[ "$(id -u)" == "0" ]]; then
    setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
  else
    "$@"
  fi
}

cleanup() {
  local status=$?
  set +e
  trap - EXIT INT TERM
  say "tearing down"
  stop_pid "${OPERATOR_PID}"
  if [[ -n "${SANDBOX_STARTED}" ]]; then
    "${TBDR}" sandbox down --state-dir "${SANDBOX_DIR}" >/dev/null 2>&1
  fi
  if [[ -n "${PG_STARTED}" ]]; then
    as_pg "${PG_BIN}/pg_ctl" -D "${PG_ROOT}/data" -m fast -w stop >/dev/null 2>&1
  fi
  if [[ "${status}" != 0 && -f "${OPERATOR_LOG}" ]]; then
    echo "--- last lines of the operator log:" >&2
    tail -n 30 "${OPERATOR_LOG}" >&2
  fi
  if [[ -n "${KEEP:-}" ]]; then
    echo "kept ${WORK}"
  else
    rm -rf "${WORK}"
  fi
  exit "${status}"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 1. sandbox ----------------------------------------------------------------------------
say "starting the sandbox (local control plane + node agent)"
SANDBOX_STARTED=1
eval "$("${TBDR}" sandbox up --state-dir "${SANDBOX_DIR}")"
export KUBECONFIG
KUBECTL="${TONEBRIDGE_DR_CONTROLPLANE_DIR:-}/kubectl"
if [[ ! -x "${KUBECTL}" ]]; then
  KUBECTL="$("${PY}" -c 'from tonebridge_dr.sandbox import layout; print(layout.controlplane_dir())')/kubectl"
fi
[[ -x "${KUBECTL}" ]] || KUBECTL="$(command -v kubectl || true)"
[[ -n "${KUBECTL}" ]] || die "kubectl not found"
k() { "${KUBECTL}" "$@"; }
k version 2>/dev/null | sed -n 's/^Server Version: /kube-apiserver /p'

# --- 2. PostgreSQL -------------------------------------------------------------------------
say "starting a throwaway PostgreSQL with sample data"
PG_PASSWORD="demo-$("${PY}" -c 'import secrets; print(secrets.token_hex(12))')"
PG_PORT="$(free_port)"
mkdir -p "${PG_ROOT}/sock"
printf '%s\n' "${PG_PASSWORD}" > "${PG_ROOT}/pwfile"
if [[ "$(id -u)" == "0" ]]; then chown -R postgres:postgres "${PG_ROOT}"; fi
as_pg "${PG_BIN}/initdb" -D "${PG_ROOT}/data" -U postgres --auth=scram-sha-256 \
  --pwfile="${PG_ROOT}/pwfile" -E UTF8 --locale=C.UTF-8 --no-sync >/dev/null
rm -f "${PG_ROOT}/pwfile"
cat >> "${PG_ROOT}/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = ${PG_PORT}
unix_socket_directories = '${PG_ROOT}/sock'
fsync = off
EOF
as_pg "${PG_BIN}/pg_ctl" -D "${PG_ROOT}/data" -l "${PG_ROOT}/server.log" -w -t 60 start >/dev/null
PG_STARTED=1
export PGPASSWORD="${PG_PASSWORD}"
PSQL=("${PG_BIN}/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "${PG_PORT}" -U postgres)
"${PSQL[@]}" -d postgres -c "CREATE DATABASE tonebridge_db"
"${PSQL[@]}" -d tonebridge_db <<'SQL'
CREATE TABLE users (id serial PRIMARY KEY, email text UNIQUE NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE transformations (id bigserial PRIMARY KEY, user_id int REFERENCES users (id), source text, target text, payload jsonb, created_at timestamptz NOT NULL);
CREATE TABLE analytics (day date, region text, hits int NOT NULL, PRIMARY KEY (day, region));
INSERT INTO users (email) SELECT 'user' || i || '@example.com' FROM generate_series(1, 200) AS i;
INSERT INTO transformations (user_id, source, target, payload, created_at)
  SELECT 1 + i % 200, 'text-' || i, 'tone-' || (i % 7), jsonb_build_object('words', i % 50, 'lang', 'ja'),
         now() - (i || ' minutes')::interval
  FROM generate_series(1, 5000) AS i;
INSERT INTO analytics SELECT current_date - (i / 3), (ARRAY['ap', 'eu', 'us'])[1 + i % 3], i * 10 FROM generate_series(0, 89) AS i;
SQL
echo "tonebridge_db on 127.0.0.1:${PG_PORT}: $("${PSQL[@]}" -At -d tonebridge_db -c \
  "SELECT (SELECT count(*) FROM users) || ' users, ' || count(*) || ' transformations' FROM transformations")"
unset PGPASSWORD

# --- 3. operator ---------------------------------------------------------------------------
say "running the operator"
LIVENESS_PORT="$(free_port)"
mkdir -p "${REPO_DIR}"
k create namespace "${NAMESPACE}" >/dev/null
k -n "${NAMESPACE}" create serviceaccount tonebridge-dr-backup >/dev/null
"${TBDR}" operator --standalone --namespace "${NAMESPACE}" --metrics-port 0 \
  --freshness-interval 5 --liveness "http://127.0.0.1:${LIVENESS_PORT}/healthz" \
  >"${OPERATOR_LOG}" 2>&1 &
OPERATOR_PID=$!
for _ in $(seq 1 300); do
  "${PY}" - "${LIVENESS_PORT}" <<'EOF' && break
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    opener.open(f"http://127.0.0.1:{sys.argv[1]}/healthz", timeout=1)
except OSError:
    sys.exit(1)
EOF
  kill -0 "${OPERATOR_PID}" 2>/dev/null || die "the operator exited"
  sleep 0.2
done
echo "operator pid ${OPERATOR_PID}, log ${OPERATOR_LOG}"

# --- 4. the example ------------------------------------------------------------------------
say "applying examples/00-local-demo/ (repository: file://${REPO_DIR})"
DSN="postgresql://postgres:${PG_PASSWORD}@127.0.0.1:${PG_PORT}/tonebridge_db"
k -n "${NAMESPACE}" create secret generic demo-postgres-backup --from-literal=dsn="${DSN}" \
  --dry-run=client -o yaml | k -n "${NAMESPACE}" apply -f - >/dev/null
sed "s|file:///var/tmp/tonebridge-dr/demo-repo|file://${REPO_DIR}|" \
  "${ROOT}/examples/00-local-demo/backuppolicy.yaml" | k -n "${NAMESPACE}" apply -f -
k -n "${NAMESPACE}" wait --for=condition=Ready "backuppolicy/${POLICY}" --timeout="${TIMEOUT}s"
k -n "${NAMESPACE}" get cronjobs

# --- 5. run now ----------------------------------------------------------------------------
say "backing up now: kubectl annotate bp/${POLICY} dr.tonebridge.io/run-now=\$(date +%s)"
k -n "${NAMESPACE}" annotate "backuppolicy/${POLICY}" "dr.tonebridge.io/run-now=$(date +%s)" --overwrite
k -n "${NAMESPACE}" wait --for=condition=LastBackupSucceeded "backuppolicy/${POLICY}" \
  --timeout="${TIMEOUT}s" || {
  k -n "${NAMESPACE}" get backuppolicy "${POLICY}" -o yaml >&2
  die "the backup did not succeed"
}
k -n "${NAMESPACE}" wait --for=condition=RPOMet "backuppolicy/${POLICY}" --timeout="${TIMEOUT}s"

# --- 6. results ----------------------------------------------------------------------------
say "kubectl get backuppolicies"
k -n "${NAMESPACE}" get backuppolicies -o wide
say "kubectl get jobs,events"
k -n "${NAMESPACE}" get jobs
k -n "${NAMESPACE}" get events --field-selector "involvedObject.kind=BackupPolicy" \
  -o custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message
say "tonebridge-dr backups list --repo file://${REPO_DIR}/${POLICY}   (each policy has its folder)"
"${TBDR}" backups list --repo "file://${REPO_DIR}/${POLICY}"
say "demo finished"
