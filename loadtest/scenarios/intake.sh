#!/usr/bin/env bash
# Reproduces the intake figures of BENCHMARKS.md: orders accepted per second and accept latency
# on each engine at 1, 16 and 64 closed-loop clients, accept -> confirmed latency at a fixed
# rate, and in the same run the Redis ceiling measured with redis-benchmark (XADD with and
# without pipelining). Beside the memory engine, in the same run: the minimal hyper server
# answering 202 to the same POST (`herald-loadtest intake-reference`, no auth, no storage) at
# each of REFERENCE_CLIENTS, so the memory figures read as a share of a bare HTTP server's
# (issue 11: ">= 50,000 accepted orders/s at 64 clients, shown beside a same-run minimal hyper
# server"). Everything runs on loopback; it starts its own redis-server, herald and reference
# server and stops them at the end.
#
# FSYNC lists the Redis `appendfsync` policies to measure (everysec, always): the Redis runs
# and the ceiling are repeated on a fresh redis-server per policy, each result JSON records
# its policy (`redis_appendfsync`), and with both the report shows what `always` costs.
#
#   loadtest/scenarios/intake.sh            # full run (about 3 minutes)
#   DURATION=5s CLIENTS="16" loadtest/scenarios/intake.sh
#   FSYNC="everysec always" loadtest/scenarios/intake.sh   # the cost of zero loss
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
# Client counts the minimal hyper server is measured at (empty: not at all); with the memory
# engine only.
REFERENCE_CLIENTS=${REFERENCE_CLIENTS:-64}
FSYNC=${FSYNC:-everysec}
CONFIRM_RATE=${CONFIRM_RATE:-2000}
# Requests per redis-benchmark run (the pipelined run makes five times as many).
BENCH_REQUESTS=${BENCH_REQUESTS:-200000}
OUT=${OUT:-target/bench/intake}
KEY=bench-admin-key-000000000001
for policy in $FSYNC; do
  case "$policy" in
    everysec | always) ;;
    *) echo "FSYNC: '$policy' is not an appendfsync policy measured here (everysec, always)" >&2; exit 2 ;;
  esac
done

source loadtest/scenarios/lib.sh
clean_out
build_binaries
write_manifest intake.sh "DURATION WARMUP CLIENTS ENGINES REFERENCE_CLIENTS FSYNC CONFIRM_RATE BENCH_REQUESTS" \
  "Redis: AOF on, appendfsync ${FSYNC// / and then }, a fresh redis-server per policy. A fresh herald serve per run; beside the memory engine, a minimal hyper server answering 202 (herald-loadtest intake-reference) at ${REFERENCE_CLIENTS:-no} clients."

start_herald() { # engine
  HPORT=$(free_port)
  local args=(serve --listen "127.0.0.1:$HPORT")
  [ "$1" = redis ] && args+=(--redis-url "redis://127.0.0.1:$RPORT")
  HERALD_ADMIN_KEY=$KEY RUST_LOG=warn "$HERALD" "${args[@]}" >"$OUT/herald-$1.log" 2>&1 &
  HPID=$!
  pids+=($HPID)
  until curl -sf "http://127.0.0.1:$HPORT/readyz" >/dev/null; do sleep 0.05; done
}

# One engine's runs: closed loop at each CLIENTS, then accept -> confirmed at CONFIRM_RATE.
# NAME prefixes the files and labels; POLICY (Redis only) is recorded in each JSON.
intake_runs() { # engine name policy
  local engine=$1 name=$2 policy=${3:-} c
  for c in $CLIENTS; do
    start_herald "$engine"
    "$LOADTEST" intake --url "http://127.0.0.1:$HPORT" --api-key "$KEY" --clients "$c" \
      --duration "$DURATION" --warmup "$WARMUP" --label "$engine clients=$c${policy:+ appendfsync=$policy}" \
      --json "$OUT/$name-c$c.json" --svg "$OUT/$name-c$c.svg"
    stop "$HPID"
    [ -n "$policy" ] && json_set "$OUT/$name-c$c.json" redis_appendfsync "$policy"
    [ "$engine" = redis ] && redis-cli -p "$RPORT" flushall >/dev/null
  done
  start_herald "$engine"
  "$LOADTEST" intake --url "http://127.0.0.1:$HPORT" --api-key "$KEY" --admin-key "$KEY" \
    --rate "$CONFIRM_RATE" --max-in-flight 256 --duration "$DURATION" --warmup "$WARMUP" \
    --confirm-latency --label "$engine rate=$CONFIRM_RATE confirm${policy:+ appendfsync=$policy}" \
    --json "$OUT/$name-confirm.json" --svg "$OUT/$name-confirm.svg"
  stop "$HPID"
  [ -n "$policy" ] && json_set "$OUT/$name-confirm.json" redis_appendfsync "$policy"
  return 0
}

# The memory engine's reference: the minimal hyper server answering 202 to the same POST, a
# fresh one per run, the same closed-loop client (label "reference ...": the report's name).
reference_runs() {
  local c
  for c in $REFERENCE_CLIENTS; do
    "$LOADTEST" intake-reference --listen 127.0.0.1:0 >"$OUT/reference.out" 2>"$OUT/reference.log" &
    local rpid=$!
    pids+=($rpid)
    wait_listening "$OUT/reference.out" "$rpid"
    "$LOADTEST" intake --url "http://$ADDR" --api-key "$KEY" --clients "$c" \
      --duration "$DURATION" --warmup "$WARMUP" --label "reference clients=$c" \
      --json "$OUT/reference-c$c.json" --svg "$OUT/reference-c$c.svg"
    stop "$rpid"
  done
}

# The ceiling: Redis alone, one XADD of an event-sized entry per request; one JSON per run
# (scenario "redis-benchmark", with the policy) for the report.
EVENT='{"type":"order.accepted","orderId":"0190c0de-0000-7000-8000-000000000000","customerId":"c-1","status":"accepted","version":1,"occurredAt":"2026-11-26T10:00:00.000Z"}'
xadd() { # policy clients pipeline requests
  local line
  line=$(redis-benchmark -p "$RPORT" -c "$2" -P "$3" -n "$4" -q XADD bench '*' event "$EVENT" \
    | tr '\r' '\n' | grep 'requests per second' | tail -1)
  echo "redis-benchmark XADD appendfsync=$1 clients=$2 pipeline=$3: $line" | tee -a "$OUT/redis-benchmark.txt"
  python3 - "$OUT/xadd-$1-c$2-p$3.json" "$1" "$2" "$3" "$line" <<'PY'
import json, re, sys
path, policy, clients, pipeline, line = sys.argv[1:]
rps = re.search(r"([\d.]+) requests per second", line)
p50 = re.search(r"p50=([\d.]+) msec", line)
json.dump({"scenario": "redis-benchmark", "command": "XADD", "clients": int(clients),
           "pipeline": int(pipeline), "redis_appendfsync": policy,
           "requests_per_s": float(rps.group(1)) if rps else None,
           "p50_ms": float(p50.group(1)) if p50 else None}, open(path, "w"), indent=2)
PY
}

rm -f "$OUT/redis-benchmark.txt"
for engine in $ENGINES; do
  if [ "$engine" != redis ]; then
    intake_runs "$engine" "$engine"
    [ "$engine" = memory ] && reference_runs
    continue
  fi
  for policy in $FSYNC; do
    start_redis "$policy"
    intake_runs redis "redis-$policy" "$policy"
    for c in 1 16 64; do xadd "$policy" "$c" 1 "$BENCH_REQUESTS"; done
    xadd "$policy" 16 16 $((BENCH_REQUESTS * 5))
    stop "$RPID"
  done
done

summarise intake
