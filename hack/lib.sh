# Shell helpers shared by hack/demo.sh and hack/demo-drill.sh (sourced; needs $PY).

die() { printf '\033[31merror:\033[0m %s\n' "$*" >&2; exit 1; }

free_port() {
  "${PY}" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# stop_pid PID: SIGTERM, up to 10 s for it to exit, then SIGKILL (no-op when it is gone).
stop_pid() {
  local pid=$1
  [[ -n "${pid}" ]] && kill -0 "${pid}" 2>/dev/null || return 0
  kill -TERM "${pid}" 2>/dev/null
  for _ in $(seq 1 50); do kill -0 "${pid}" 2>/dev/null || return 0; sleep 0.2; done
  kill -KILL "${pid}" 2>/dev/null
}
