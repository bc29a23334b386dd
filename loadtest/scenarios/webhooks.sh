#!/usr/bin/env bash
# Reproduces the webhook figures of BENCHMARKS.md: signed deliveries per second from Herald (Redis
# engine) to the load tool's keep-alive sink, which verifies every signature, and retry lateness
# with RETRIES retries scheduled. In the same run the load tool posts the same signed ~1 KB bodies
# to the same sink itself over keep-alive connections at the maximum rate (the ceiling of the
# sink and loopback HTTP on this machine), so Herald's figure reads as a ratio of it. It starts
# its own redis-server (AOF, fsync every second) and herald on free loopback ports and stops them
# at the end.
#
#   (a) reference: the load tool -> sink, REF_CONNECTIONS connections, max rate
#   (b) throughput: Herald -> sink at each of RATES (`max` = closed loop), for each endpoint
#       maxInFlight in MAX_IN_FLIGHTS (0 = Herald's default `[webhooks] max_in_flight`)
#   (c) faults: FAULT_RATE events/s, FAULT_FAIL % of first attempts answered 500 and FAULT_STALL %
#       held 2 s by the sink
#   (d) lateness: RETRIES events at LATENESS_RATE/s, every first attempt answered 500, for each
#       endpoint maxInFlight in LATENESS_IN_FLIGHTS (0 = Herald's default); Herald runs
#       with retry_schedule ["0s", RETRY_STEP] and jitter 0, so each retry is due RETRY_STEP after
#       its failed attempt; lateness = arrival at the sink - due
#
#   loadtest/scenarios/webhooks.sh                          # full run (about 3 minutes)
#   DURATION=5s RETRIES=2000 loadtest/scenarios/webhooks.sh
#   NO_BUILD=1 HERALD=target/debug/herald ...               # use existing binaries
#
# Results: one JSON file and one SVG latency plot per run, manifest.json, Herald's webhook
# metrics after the runs and summary.md (the section as `herald-loadtest report` renders it)
# under target/bench/webhooks/.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
RATES=${RATES:-"max 1000"}
MAX_IN_FLIGHTS=${MAX_IN_FLIGHTS:-"256 0"}
BODY_BYTES=${BODY_BYTES:-1024}
REF_CONNECTIONS=${REF_CONNECTIONS:-64}
RETRIES=${RETRIES:-10000}
# The retry step is longer than publishing RETRIES events takes (RETRIES / LATENESS_RATE), so
# every retry is on the schedule at once before the first one falls due.
RETRY_STEP=${RETRY_STEP:-10s}
LATENESS_RATE=${LATENESS_RATE:-1500}
LATENESS_IN_FLIGHTS=${LATENESS_IN_FLIGHTS:-"256 0"}
LATENESS_IN_FLIGHTS_FIRST=${LATENESS_IN_FLIGHTS%% *}
FAULT_RATE=${FAULT_RATE:-1000}
FAULT_FAIL=${FAULT_FAIL:-10}
FAULT_STALL=${FAULT_STALL:-5}
FAULT_DRAIN=${FAULT_DRAIN:-20s}
# Herald's roles (`--roles`); empty: all of them, as `herald serve` runs by default.
ROLES=${ROLES:-}
OUT=${OUT:-target/bench/webhooks}
KEY=bench-admin-key-000000000001
STREAM=${STREAM:-'herald:{p0}:events'}

source loadtest/scenarios/lib.sh
clean_out
build_binaries
write_manifest webhooks.sh "DURATION WARMUP RATES MAX_IN_FLIGHTS BODY_BYTES REF_CONNECTIONS RETRIES RETRY_STEP LATENESS_RATE LATENESS_IN_FLIGHTS FAULT_RATE FAULT_FAIL FAULT_STALL FAULT_DRAIN ROLES" \
  "Redis: AOF on, appendfsync everysec. Herald: retry_schedule [0s, $RETRY_STEP], jitter 0, allow_networks [127.0.0.0/8], roles ${ROLES:-all}."

start_herald() {
  HERALD_ADMIN_KEY=$KEY HERALD_LISTEN=127.0.0.1:0 RUST_LOG=warn \
    HERALD_WEBHOOKS__ALLOW_NETWORKS='["127.0.0.0/8"]' \
    HERALD_WEBHOOKS__RETRY_SCHEDULE="[\"0s\",\"$RETRY_STEP\"]" \
    HERALD_WEBHOOKS__JITTER=0 \
    "$HERALD" serve --redis-url "redis://127.0.0.1:$RPORT" ${ROLES:+--roles "$ROLES"} \
    >"$OUT/herald.out" 2>"$OUT/herald.log" &
  HPID=$!
  pids+=($HPID)
  wait_listening "$OUT/herald.out" "$HPID"
  HADDR=$ADDR
  until curl -sf "http://$HADDR/readyz" >/dev/null; do sleep 0.05; done
}

webhooks() { # name args...
  local name=$1; shift
  "$LOADTEST" webhooks --url "http://$HADDR" --admin-key "$KEY" \
    --redis-url "redis://127.0.0.1:$RPORT" --stream "$STREAM" --body-bytes "$BODY_BYTES" \
    --retry-step "$RETRY_STEP" --label "$name" --json "$OUT/$name.json" --svg "$OUT/$name.svg" "$@" \
    || echo "run $name failed" >&2
  sleep 1
}

start_redis aof
start_herald

# (a) the ceiling: the load tool's own client -> the same sink, same bodies, same verification.
webhooks reference --target reference --connections "$REF_CONNECTIONS" \
  --duration "$DURATION" --warmup "$WARMUP"

# (b) Herald throughput.
for f in $MAX_IN_FLIGHTS; do
  for r in $RATES; do
    webhooks "herald-r$r-inflight$f" --target herald --mode throughput --rate "$r" \
      --max-in-flight "$f" --duration "$DURATION" --warmup "$WARMUP"
  done
done

# (c) a faulty partner: FAULT_FAIL % of first attempts answered 500, FAULT_STALL % held for 2 s.
webhooks "herald-r$FAULT_RATE-faults" --target herald --mode throughput --rate "$FAULT_RATE" \
  --fail-percent "$FAULT_FAIL" --stall-percent "$FAULT_STALL" --stall-for 2s \
  --max-in-flight "$LATENESS_IN_FLIGHTS_FIRST" --duration "$DURATION" --warmup "$WARMUP" \
  --drain "$FAULT_DRAIN"

# (d) retry lateness, for each endpoint maxInFlight in LATENESS_IN_FLIGHTS.
for f in $LATENESS_IN_FLIGHTS; do
  webhooks "herald-lateness-inflight$f" --target herald --mode lateness --retries "$RETRIES" \
    --rate "$LATENESS_RATE" --max-in-flight "$f"
done

curl -s -H "x-api-key: $KEY" "http://$HADDR/metrics" | grep -E '^herald_webhook' >"$OUT/herald-metrics.txt" || true

summarise webhooks
