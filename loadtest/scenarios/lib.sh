# Shared by the scenario scripts (sourced, not run): building the binaries, free ports,
# starting and stopping the servers a scenario measures, cleaning up on exit, and the results
# folder's manifest and summary. Callers set OUT (results folder, target/bench/<section>).

# Every connection is a descriptor, in the servers as in the load generator.
ulimit -n "$(ulimit -Hn)"

# The redis engine requires push.stream_token_secret (nodes accept each other's SSE stream
# tokens); every Herald a scenario starts shares this one.
export HERALD_PUSH__STREAM_TOKEN_SECRET="${HERALD_PUSH__STREAM_TOKEN_SECRET:-loadtest-stream-token-secret-0123456789}"

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

# Starts a dedicated redis-server on a free port; sets RPORT and RPID. The persistence:
#   aof (or everysec)  the durable production setting: AOF, fsync every second (the default)
#   always             AOF, fsync before every reply
#   none               no persistence
start_redis() { # aof|everysec|always|none
  RPORT=$(free_port)
  local dir persistence log
  case "${1:-aof}" in
    aof | everysec) persistence=(--appendonly yes --appendfsync everysec) ;;
    always) persistence=(--appendonly yes --appendfsync always) ;;
    none) persistence=(--appendonly no) ;;
    *) echo "start_redis: unknown persistence '$1' (aof, everysec, always or none)" >&2; exit 2 ;;
  esac
  dir=$(mktemp -d)
  log="$(cd "$OUT" && pwd)/redis.log"
  redis-server --port "$RPORT" --bind 127.0.0.1 --save '' "${persistence[@]}" \
    --dir "$dir" --logfile "$log" &
  RPID=$!
  pids+=($RPID)
  until redis-cli -p "$RPORT" ping >/dev/null 2>&1; do
    kill -0 "$RPID" 2>/dev/null || { echo "redis-server exited; see $log" >&2; exit 1; }
    sleep 0.05
  done
}

# Adds KEY: VALUE (a string) to the result JSON FILE, for the facts only the script knows
# (e.g. how the Redis under Herald was configured).
json_set() { # file key value
  python3 - "$@" <<'PY'
import json, sys
path, key, value = sys.argv[1:]
with open(path) as f:
    v = json.load(f)
v[key] = value
with open(path, "w") as f:
    json.dump(v, f, indent=2)
PY
}

# Builds the release binaries unless NO_BUILD is set; HERALD and LOADTEST may point elsewhere.
build_binaries() {
  if [ -z "${NO_BUILD:-}" ]; then
    cargo build --release --workspace --quiet
  fi
  HERALD=${HERALD:-target/release/herald}
  LOADTEST=${LOADTEST:-target/release/herald-loadtest}
}

# Empties OUT of an earlier run's results and plots (a run that fails leaves no stale figure).
clean_out() {
  mkdir -p "$OUT"
  OUT=$(cd "$OUT" && pwd)
  rm -f "$OUT"/*.json "$OUT"/*.svg "$OUT"/summary.md
}

# Writes OUT/manifest.json: the command that reproduces this run (the script with every
# parameter below set as used), the Redis version and the Herald commit, and free text about
# the setup. `herald-loadtest report` shows them above the section's tables.
write_manifest() { # script "VAR VAR ..." setup-text
  local script=$1 vars=$2 setup=${3:-} cmd="" v
  for v in $vars; do cmd+="$v=$(printf '%q' "${!v}") "; done
  cmd+="loadtest/scenarios/$script"
  local herald
  herald="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
  python3 - "$OUT/manifest.json" "$cmd" "$(redis-server --version | sed 's/.* v=\([^ ]*\).*/\1/')" "$herald" "$setup" <<'PY'
import json, sys
path, command, redis, herald, setup = sys.argv[1:]
json.dump({"command": command, "redis": redis, "herald": herald, "setup": setup or None},
          open(path, "w"), indent=2)
PY
}

# Renders OUT/summary.md (this section only, plots linked in place) with `herald-loadtest
# report`, and prints it.
summarise() { # section
  "$LOADTEST" report --results "$(dirname "$OUT")" --only "$1" --out "$OUT/summary.md" --plots "$OUT"
  cat "$OUT/summary.md"
  echo "results in $OUT/"
}
