#!/usr/bin/env bash
# Reproduces the intake figures of BENCHMARKS.md: orders accepted per second and accept latency
# on each engine at 1, 16 and 64 closed-loop clients, accept -> confirmed latency at a fixed
# rate, and in the same run the Redis ceiling measured with redis-benchmark (XADD with and
# without pipelining). Everything runs on loopback; it starts its own redis-server and herald
# and stops them at the end.
#
#   loadtest/scenarios/intake.sh            # full run (about 3 minutes)
#   DURATION=5s CLIENTS="16" loadtest/scenarios/intake.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CLIENTS=${CLIENTS:-"1 16 64"}
ENGINES=${ENGINES:-"memory redis"}
CONFIRM_RATE=${CONFIRM_RATE:-2000}
OUT=${OUT:-target/bench/intake}
KEY=bench-admin-key-000000000001
mkdir -p "$OUT"

cargo build --release --workspace --quiet
HERALD=target/release/herald
LOADTEST=target/release/herald-loadtest

source loadtest/scenarios/lib.sh

start_herald() { # engine
  HPORT=$(free_port)
  local args=(serve --listen "127.0.0.1:$HPORT")
  [ "$1" = redis ] && args+=(--redis-url "redis://127.0.0.1:$RPORT")
  HERALD_ADMIN_KEY=$KEY RUST_LOG=warn "$HERALD" "${args[@]}" >"$OUT/herald-$1.log" 2>&1 &
  HPID=$!
  pids+=($HPID)
  until curl -sf "http://127.0.0.1:$HPORT/readyz" >/dev/null; do sleep 0.05; done
}

{
  echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -sr)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "redis: $(redis-server --version | cut -d' ' -f3)"
  echo "herald: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
} | tee "$OUT/machine.txt"

for engine in $ENGINES; do
  [ "$engine" = redis ] && start_redis aof
  for c in $CLIENTS; do
    start_herald "$engine"
    "$LOADTEST" intake --url "http://127.0.0.1:$HPORT" --api-key "$KEY" --clients "$c" \
      --duration "$DURATION" --warmup "$WARMUP" --label "$engine clients=$c" \
      --json "$OUT/$engine-c$c.json"
    kill "$HPID"; wait "$HPID" 2>/dev/null || true
    [ "$engine" = redis ] && redis-cli -p "$RPORT" flushall >/dev/null
  done
  start_herald "$engine"
  "$LOADTEST" intake --url "http://127.0.0.1:$HPORT" --api-key "$KEY" --admin-key "$KEY" \
    --rate "$CONFIRM_RATE" --max-in-flight 256 --duration "$DURATION" --warmup "$WARMUP" \
    --confirm-latency --label "$engine rate=$CONFIRM_RATE confirm" --json "$OUT/$engine-confirm.json"
  kill "$HPID"; wait "$HPID" 2>/dev/null || true
done

if [[ " $ENGINES " == *" redis "* ]]; then
  # The ceiling: Redis alone, one XADD of an event-sized entry per request.
  EVENT='{"type":"order.accepted","orderId":"0190c0de-0000-7000-8000-000000000000","customerId":"c-1","status":"accepted","version":1,"occurredAt":"2026-11-26T10:00:00.000Z"}'
  for c in 1 16 64; do
    echo "redis-benchmark XADD clients=$c no pipelining:" | tee -a "$OUT/redis-benchmark.txt"
    redis-benchmark -p "$RPORT" -c "$c" -n 200000 -q XADD bench '*' event "$EVENT" | tr '\r' '\n' | tail -1 | sed 's/.*}: //' | tee -a "$OUT/redis-benchmark.txt"
  done
  echo "redis-benchmark XADD clients=16 pipeline=16:" | tee -a "$OUT/redis-benchmark.txt"
  redis-benchmark -p "$RPORT" -c 16 -P 16 -n 1000000 -q XADD bench '*' event "$EVENT" | tr '\r' '\n' | tail -1 | sed 's/.*}: //' | tee -a "$OUT/redis-benchmark.txt"
fi

python3 - "$OUT" <<'PY'
import json, sys, glob, os
out = sys.argv[1]
rows = []
for f in sorted(glob.glob(os.path.join(out, "*.json"))):
    r = json.load(open(f))
    lat = r.get("accept_latency_ms") or {}
    conf = r.get("confirm_latency_ms") or {}
    rows.append((r.get("label"), r.get("throughput_per_s"), lat.get("p50"), lat.get("p99"),
                 conf.get("p50"), conf.get("p99"), r.get("errors")))
print("| run | accepted/s | accept p50 ms | accept p99 ms | confirm p50 ms | confirm p99 ms | errors |")
print("|---|---|---|---|---|---|---|")
fmt = lambda v: "-" if v is None else (f"{v:,.0f}" if isinstance(v, (int, float)) and v >= 100 else f"{v:.2f}" if isinstance(v, float) else str(v))
for row in rows:
    print("| " + " | ".join(fmt(v) for v in row) + " |")
PY
