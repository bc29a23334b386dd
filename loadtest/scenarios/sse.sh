#!/usr/bin/env bash
# Reproduces the Server-Sent Events figures of BENCHMARKS.md (issue 14): in one fan-out run,
# SSE_CONNS WebSocket subscribers (graphql-transport-ws) and SSE_CONNS SSE streams
# (GET /v1/events/stream) on one Herald, both broadcast (every event to every subscriber), fed
# by the same events XADDed into Herald's Redis stream, each transport measured publish ->
# receive on its own. It starts its own redis-server and herald on free loopback ports and stops
# them at the end.
#
#   loadtest/scenarios/sse.sh                                  # full run (about a minute)
#   SSE_CONNS=200 SSE_RATES=100 DURATION=3s loadtest/scenarios/sse.sh
#   NO_BUILD=1 HERALD=target/debug/herald LOADTEST=target/debug/herald-loadtest ...
#
# Results: one JSON file and one SVG latency plot (both transports) per run, manifest.json and
# summary.md (the section as `herald-loadtest report` renders it) under target/bench/sse/.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
# Subscribers per transport (so twice this many on the server).
SSE_CONNS=${SSE_CONNS:-1000}
# Events per second, open loop (SSE runs need a rate, not `max`).
SSE_RATES=${SSE_RATES:-"100 1000"}
OUT=${OUT:-target/bench/sse}
KEY=bench-admin-key-000000000001
STREAM=${STREAM:-'herald:{p0}:events'}

source loadtest/scenarios/lib.sh
clean_out
build_binaries
write_manifest sse.sh "DURATION WARMUP SSE_CONNS SSE_RATES" \
  "Redis without persistence (the stream is only the transport here); Herald with push.max_connections 50,000; WebSocket and SSE subscribers from the same load-generator process."

start_redis none
HERALD_ADMIN_KEY=$KEY HERALD_LISTEN=127.0.0.1:0 HERALD_PUSH__MAX_CONNECTIONS=50000 RUST_LOG=warn \
  "$HERALD" serve --redis-url "redis://127.0.0.1:$RPORT" >"$OUT/herald.out" 2>"$OUT/herald.log" &
HPID=$!
pids+=($HPID)
wait_listening "$OUT/herald.out" "$HPID"
HADDR=$ADDR
until curl -sf "http://$HADDR/readyz" >/dev/null; do sleep 0.05; done

for r in $SSE_RATES; do
  name="broadcast-c$SSE_CONNS-r$r"
  "$LOADTEST" fanout --target herald --url "ws://$HADDR/graphql" --api-key "$KEY" \
    --redis-url "redis://127.0.0.1:$RPORT" --stream "$STREAM" --mode broadcast \
    --connections "$SSE_CONNS" --sse-connections "$SSE_CONNS" --sse-url "http://$HADDR" \
    --rate "$r" --duration "$DURATION" --warmup "$WARMUP" --label "herald sse $name" \
    --json "$OUT/herald-sse-$name.json" --svg "$OUT/herald-sse-$name.svg" \
    || echo "run $name failed" >&2
  # Let the server close the previous run's connections before the next one opens its own.
  sleep 2
done

summarise sse
