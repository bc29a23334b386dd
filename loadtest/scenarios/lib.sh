# Shared by the scenario scripts (sourced, not run): free ports, starting and stopping the
# servers a scenario measures, and cleaning up on exit. Callers set OUT (results folder).

# Every connection is a descriptor, in the servers as in the load generator.
ulimit -n "$(ulimit -Hn)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# Waits until a server has printed `listening on <scheme>://ADDR` into its stdout file; sets ADDR.
wait_listening() { # file pid
  for _ in $(seq 1 400); do
    ADDR=$(sed -n 's#.*listening on [a-z]*://\([^ ]*\).*#\1#p' "$1" | head -1)
    [ -n "$ADDR" ] && return 0
    kill -0 "$2" 2>/dev/null || { echo "server exited; see ${1%.out}.log" >&2; exit 1; }
    sleep 0.05
  done
  echo "no 'listening on' line in $1" >&2; exit 1
}

# Starts a dedicated redis-server on a free port; sets RPORT. `aof`: the durable production
# setting (AOF, fsync every second); `none`: no persistence.
start_redis() { # aof|none
  RPORT=$(free_port)
  local dir persistence=(--appendonly no) log
  dir=$(mktemp -d)
  [ "${1:-aof}" = aof ] && persistence=(--appendonly yes --appendfsync everysec)
  log="$(cd "$OUT" && pwd)/redis.log"
  redis-server --port "$RPORT" --bind 127.0.0.1 --save '' "${persistence[@]}" \
    --dir "$dir" --logfile "$log" &
  local pid=$!
  pids+=($pid)
  until redis-cli -p "$RPORT" ping >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || { echo "redis-server exited; see $log" >&2; exit 1; }
    sleep 0.05
  done
}
