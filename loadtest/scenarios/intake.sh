#!/usr/bin/env bash
# Reproduces the intake figures of BENCHMARKS.md: orders accepted per second and accept latency
# on each engine at 1, 16 and 64 closed-loop clients, accept -> confirmed latency at a fixed
# rate, and in the same run the Redis ceiling measured with redis-benchmark (XADD with and
# without pipelining). Everything runs on loopback; it starts its own redis-server and herald
# and stops them at the end.
#
#   loadtest/scenarios/intake.sh            # full run (about 3 minutes)
#   DURATION=5s CLIENTS="16" loadtest/scenarios/intake.sh
#   NO_BUILD=1 HERALD=target/debug/herald ...               # use existing binaries
#
# Results: one JSON file and one SVG latency plot per run, manifest.json and summary.md (the
# section as `herald-loadtest report` renders it) under target/bench/intake/.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CLIENTS=${CLIENTS:-"1 16 64"}
ENGINES=${ENGINES:-"memory redis"}
CONFIRM_RATE=${CONFIRM_RATE:-2000}
# Requests per redis-benchmark run (the pipelined run makes five times as many).
BENCH_REQUESTS=${BENCH_REQUESTS:-200000}
OUT=${OUT:-target/bench/intake}
KEY=bench-admin-key-000000000001

source loadtest/scenarios/lib.sh
clean_out
build_binaries
write_manifest intake.sh "DURATION WARMUP CLIENTS ENGINES CONFIRM_RATE BENCH_REQUESTS" \
  "Redis: AOF on, appendfsync everysec. A fresh herald serve per run."

start_herald() { # engine
  HPORT=$(free_port)
  local args=(serve --listen "127.0.0.1:$HPORT")
  [ "$1" = redis ] && args+=(--redis-url "redis://127.0.0.1:$RPORT")
  HERALD_ADMIN_KEY=$KEY RUST_LOG=warn "$HERALD" "${args[@]}" >"$OUT/herald-$1.log" 2>&1 &
  HPID=$!
  pids+=($HPID)
  until curl -sf "http://127.0.0.1:$HPORT/readyz" >/dev/null; do sleep 0.05; done
}

for engine in $ENGINES; do
  [ "$engine" = redis ] && start_redis aof
  for c in $CLIENTS; do
    start_herald "$engine"
    "$LOADTEST" intake --url "http://127.0.0.1:$HPORT" --api-key "$KEY" --clients "$c" \
      --duration "$DURATION" --warmup "$WARMUP" --label "$engine clients=$c" \
      --json "$OUT/$engine-c$c.json" --svg "$OUT/$engine-c$c.svg"
    stop "$HPID"
    [ "$engine" = redis ] && redis-cli -p "$RPORT" flushall >/dev/null
  done
  start_herald "$engine"
  "$LOADTEST" intake --url "http://127.0.0.1:$HPORT" --api-key "$KEY" --admin-key "$KEY" \
    --rate "$CONFIRM_RATE" --max-in-flight 256 --duration "$DURATION" --warmup "$WARMUP" \
    --confirm-latency --label "$engine rate=$CONFIRM_RATE confirm" \
    --json "$OUT/$engine-confirm.json" --svg "$OUT/$engine-confirm.svg"
  stop "$HPID"
done

# The ceiling: Redis alone, one XADD of an event-sized entry per request; one JSON per run
# (scenario "redis-benchmark") for the report.
xadd() { # clients pipeline requests
  local line
  line=$(redis-benchmark -p "$RPORT" -c "$1" -P "$2" -n "$3" -q XADD bench '*' event "$EVENT" \
    | tr '\r' '\n' | grep 'requests per second' | tail -1)
  echo "redis-benchmark XADD clients=$1 pipeline=$2: $line" | tee -a "$OUT/redis-benchmark.txt"
  python3 - "$OUT/xadd-c$1-p$2.json" "$1" "$2" "$line" <<'PY'
import json, re, sys
path, clients, pipeline, line = sys.argv[1:]
rps = re.search(r"([\d.]+) requests per second", line)
p50 = re.search(r"p50=([\d.]+) msec", line)
json.dump({"scenario": "redis-benchmark", "command": "XADD", "clients": int(clients),
           "pipeline": int(pipeline), "requests_per_s": float(rps.group(1)) if rps else None,
           "p50_ms": float(p50.group(1)) if p50 else None}, open(path, "w"), indent=2)
PY
}
if [[ " $ENGINES " == *" redis "* ]]; then
  EVENT='{"type":"order.accepted","orderId":"0190c0de-0000-7000-8000-000000000000","customerId":"c-1","status":"accepted","version":1,"occurredAt":"2026-11-26T10:00:00.000Z"}'
  rm -f "$OUT/redis-benchmark.txt"
  for c in 1 16 64; do xadd "$c" 1 "$BENCH_REQUESTS"; done
  xadd 16 16 $((BENCH_REQUESTS * 5))
fi

summarise intake
