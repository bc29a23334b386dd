#!/usr/bin/env bash
# Reproduces the end-to-end figures of BENCHMARKS.md: orders in over HTTP (POST /v1/orders, open
# loop) while WebSocket subscribers and a webhook sink wait for each order's notifications, on
# Herald (Redis engine). For each rate in RATES it measures, per path (WebSocket, webhook), the
# time from each order's scheduled send to its `order.confirmed` notification (the worker's
# decision) and from its 202 to its `order.accepted` notification, and counts what went missing
# (not in within DRAIN of the last send), what came twice and any bad signature. It starts its
# own redis-server (AOF, fsync every second) and herald on free loopback ports and stops them at
# the end.
#
# Defaults, and why:
#   RATE="500 2000"      a steady load and a busy one, both well inside what intake takes on
#                        the development machines, so the figures are the push paths', not an
#                        overloaded intake's
#   SUBSCRIBERS=1000     one subscriber per customer, each owed only its own orders: the targeted
#                        pattern of a real app, with enough connections that finding the right
#                        one matters (orders are spread over the 1000 customers)
#   ENDPOINTS=1          one partner receiving every order's events: webhook deliveries = events
#                        (more endpoints multiply deliveries; the webhooks scenario measures that)
#   DURATION=10s         long enough for thousands of orders per rate, short enough to rerun
#   DRAIN=10s            a notification later than that counts as missing
#   PROTOCOL=graphql-transport-ws (or appsync)
#
#   loadtest/scenarios/e2e.sh                                   # full run (about a minute)
#   RATE=200 SUBSCRIBERS=200 DURATION=5s loadtest/scenarios/e2e.sh
#   NO_BUILD=1 HERALD=target/release/herald LOADTEST=target/release/herald-loadtest ...
#
# Results: one JSON file and one SVG latency plot per rate, manifest.json and summary.md (the
# section as `herald-loadtest report` renders it) under target/bench/e2e/.
set -euo pipefail
cd "$(dirname "$0")/../.."

RATE=${RATE:-"500 2000"}
SUBSCRIBERS=${SUBSCRIBERS:-1000}
ENDPOINTS=${ENDPOINTS:-1}
DURATION=${DURATION:-10s}
DRAIN=${DRAIN:-10s}
PROTOCOL=${PROTOCOL:-graphql-transport-ws}
# Herald's roles (`--roles`); empty: all of them, as `herald serve` runs by default.
ROLES=${ROLES:-}
OUT=${OUT:-target/bench/e2e}
KEY=bench-admin-key-000000000001

source loadtest/scenarios/lib.sh
clean_out
build_binaries
write_manifest e2e.sh "RATE SUBSCRIBERS ENDPOINTS DURATION DRAIN PROTOCOL ROLES" \
  "Redis: AOF on, appendfsync everysec. One herald serve (roles: ${ROLES:-all}) for every rate."

start_herald() {
  # The sinks are on loopback, which Herald's SSRF guard refuses unless allowed.
  HERALD_ADMIN_KEY=$KEY HERALD_LISTEN=127.0.0.1:0 RUST_LOG=warn \
    HERALD_WEBHOOKS__ALLOW_NETWORKS='["127.0.0.0/8"]' \
    "$HERALD" serve --redis-url "redis://127.0.0.1:$RPORT" ${ROLES:+--roles "$ROLES"} \
    >"$OUT/herald.out" 2>"$OUT/herald.log" &
  HPID=$!
  pids+=($HPID)
  wait_listening "$OUT/herald.out" "$HPID"
  HADDR=$ADDR
  until curl -sf "http://$HADDR/readyz" >/dev/null; do sleep 0.05; done
}

start_redis aof
start_herald

for r in $RATE; do
  "$LOADTEST" e2e --url "http://$HADDR" --admin-key "$KEY" --rate "$r" \
    --duration "$DURATION" --drain "$DRAIN" --subscribers "$SUBSCRIBERS" \
    --endpoints "$ENDPOINTS" --protocol "$PROTOCOL" --label "redis r=$r" \
    --json "$OUT/redis-r$r.json" --svg "$OUT/redis-r$r.svg" || echo "run redis-r$r failed" >&2
  sleep 1
done

summarise e2e
