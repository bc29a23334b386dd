#!/usr/bin/env bash
# Reproduces the WebSocket fan-out figures of BENCHMARKS.md. Herald gets its events through the
# Redis stream (XADD by the load generator); in the same run, the same load client measures the
# reference broadcast server (`herald-loadtest reference`: pre-serialised frames, no GraphQL, no
# Redis), so each Herald figure reads as a ratio of it. It starts its own redis-server, herald
# and reference server on free loopback ports and stops them at the end.
#
#   (a) broadcast: every connection subscribed to all orders, CONNS x RATES (`max` = closed loop)
#   (b) targeted: TARGETED_CONNS connections each on its own order, TARGETED_RATE events/s
#   (c) stalled: STALL_CONNS broadcast connections at STALL_RATE, 0 % and STALL_PERCENT % stalled
#   (d) idle memory: IDLE_CONNS subscribed idle connections, server RSS per connection
#
#   loadtest/scenarios/fanout.sh                                   # full run (about 10 minutes)
#   CONNS=1000 RATES="100 max" DURATION=5s IDLE_CONNS=2000 loadtest/scenarios/fanout.sh
#   TARGETS=reference loadtest/scenarios/fanout.sh                 # reference only (no herald)
#   PROCESSES=2 loadtest/scenarios/fanout.sh                       # clients from 2 processes
#   NO_BUILD=1 HERALD=target/debug/herald ...                      # use existing binaries
#
# Results: one JSON file and one SVG latency plot per run, manifest.json and summary.md (the
# section as `herald-loadtest report` renders it) under target/bench/fanout/.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS:-"1000 10000"}
RATES=${RATES:-"100 1000 max"}
TARGETED_CONNS=${TARGETED_CONNS:-10000}
TARGETED_RATE=${TARGETED_RATE:-10000}
STALL_CONNS=${STALL_CONNS:-1000}
STALL_RATE=${STALL_RATE:-300}
STALL_PERCENT=${STALL_PERCENT:-5}
STALL_DURATION=${STALL_DURATION:-20s}
IDLE_CONNS=${IDLE_CONNS:-10000}
PROTOCOL=${PROTOCOL:-graphql-transport-ws}
# Load generator processes holding the subscriber connections (each with its own fd limit).
PROCESSES=${PROCESSES:-1}
TARGETS=${TARGETS:-"herald reference"}
OUT=${OUT:-target/bench/fanout}
KEY=bench-admin-key-000000000001
STREAM=${STREAM:-'herald:{p0}:events'}

source loadtest/scenarios/lib.sh
clean_out
build_binaries
write_manifest fanout.sh "DURATION WARMUP CONNS RATES TARGETED_CONNS TARGETED_RATE STALL_CONNS STALL_RATE STALL_PERCENT STALL_DURATION IDLE_CONNS PROTOCOL PROCESSES" \
  "Redis without persistence (the stream is only the transport here); Herald with push.max_connections 50,000."

start_herald() {
  HERALD_ADMIN_KEY=$KEY HERALD_LISTEN=127.0.0.1:0 HERALD_PUSH__MAX_CONNECTIONS=50000 RUST_LOG=warn \
    "$HERALD" serve --redis-url "redis://127.0.0.1:$RPORT" >"$OUT/herald.out" 2>"$OUT/herald.log" &
  HPID=$!
  pids+=($HPID)
  wait_listening "$OUT/herald.out" "$HPID"
  HADDR=$ADDR
  until curl -sf "http://$HADDR/readyz" >/dev/null; do sleep 0.05; done
}

start_reference() {
  "$LOADTEST" reference --listen 127.0.0.1:0 >"$OUT/reference.out" 2>"$OUT/reference.log" &
  RFPID=$!
  pids+=($RFPID)
  wait_listening "$OUT/reference.out" "$RFPID"
  RFADDR=$ADDR
}


fanout() { # target name args...
  local target=$1 name=$2; shift 2
  local url
  if [ "$target" = herald ]; then url="ws://$HADDR/graphql"; else url="ws://$RFADDR/graphql"; fi
  "$LOADTEST" fanout --target "$target" --url "$url" --api-key "$KEY" --protocol "$PROTOCOL" \
    --redis-url "redis://127.0.0.1:$RPORT" --stream "$STREAM" \
    --duration "$DURATION" --warmup "$WARMUP" --label "$target $name" --processes "$PROCESSES" \
    --json "$OUT/$target-$name.json" --svg "$OUT/$target-$name.svg" "$@" \
    || echo "run $target $name failed" >&2
  # Let the server close the previous run's connections before the next one opens its own.
  sleep 2
}

has() { [[ " $TARGETS " == *" $1 "* ]]; }

start_redis none
has herald && start_herald
has reference && start_reference

# (a) broadcast, (b) targeted, (c) stalled: each configuration on Herald, then on the reference.
for c in $CONNS; do
  for r in $RATES; do
    for t in $TARGETS; do fanout "$t" "broadcast-c$c-r$r" --mode broadcast --connections "$c" --rate "$r"; done
  done
done
for t in $TARGETS; do
  fanout "$t" "targeted-c$TARGETED_CONNS-r$TARGETED_RATE" --mode targeted \
    --connections "$TARGETED_CONNS" --rate "$TARGETED_RATE"
done
for t in $TARGETS; do
  for s in 0 "$STALL_PERCENT"; do
    DURATION=$STALL_DURATION fanout "$t" "stalled$s-c$STALL_CONNS-r$STALL_RATE" --mode broadcast \
      --connections "$STALL_CONNS" --rate "$STALL_RATE" --stalled-percent "$s"
  done
done

# (d) idle memory, each server fresh (nothing allocated by earlier runs).
if has herald; then
  stop "$HPID"; start_herald
  "$LOADTEST" idle --url "ws://$HADDR/graphql" --api-key "$KEY" --protocol "$PROTOCOL" \
    --connections "$IDLE_CONNS" --pid "$HPID" --processes "$PROCESSES" --label herald \
    --json "$OUT/herald-idle.json" \
    || echo "idle herald failed" >&2
fi
if has reference; then
  stop "$RFPID"; start_reference
  "$LOADTEST" idle --url "ws://$RFADDR/graphql" --protocol "$PROTOCOL" \
    --connections "$IDLE_CONNS" --pid "$RFPID" --processes "$PROCESSES" --label reference \
    --json "$OUT/reference-idle.json" \
    || echo "idle reference failed" >&2
fi

summarise fanout
