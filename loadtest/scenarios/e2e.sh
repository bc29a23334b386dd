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
# Results: one JSON file per rate and summary.md under target/bench/e2e/.
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
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
rm -f "$OUT"/*.json

if [ -z "${NO_BUILD:-}" ]; then
  cargo build --release --workspace --quiet
fi
HERALD=${HERALD:-target/release/herald}
LOADTEST=${LOADTEST:-target/release/herald-loadtest}

source loadtest/scenarios/lib.sh

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

{
  echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -sr)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "redis: $(redis-server --version | cut -d' ' -f3) (appendonly yes, appendfsync everysec)"
  echo "herald: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "e2e: $SUBSCRIBERS subscribers ($PROTOCOL), $ENDPOINTS webhook endpoint(s), $DURATION per rate, drain $DRAIN, roles ${ROLES:-all}"
} | tee "$OUT/machine.txt"

start_redis aof
start_herald

for r in $RATE; do
  "$LOADTEST" e2e --url "http://$HADDR" --admin-key "$KEY" --rate "$r" \
    --duration "$DURATION" --drain "$DRAIN" --subscribers "$SUBSCRIBERS" \
    --endpoints "$ENDPOINTS" --protocol "$PROTOCOL" --label "e2e-r$r" \
    --json "$OUT/e2e-r$r.json" || echo "run e2e-r$r failed" >&2
  sleep 1
done

python3 - "$OUT" <<'PY' | tee "$OUT/summary.md"
import glob, json, os, sys
out = sys.argv[1]
runs = sorted((json.load(open(f)) for f in glob.glob(os.path.join(out, "e2e-*.json"))),
              key=lambda r: r["rate"])

def num(v, digits=2):
    return "-" if v is None else f"{v:,.{digits}f}"

def lat(s):
    return " / ".join(num((s or {}).get(k)) for k in ("p50", "p99", "p999"))

print("## End to end: orders in over HTTP, notifications out (Herald, Redis engine)\n")
print(open(os.path.join(out, "machine.txt")).read().replace("\n", "  \n"))
print("| orders/s | sent / accepted | order errors | send->202 p50 / p99 / p99.9 ms | path "
      "| send->confirmed p50 / p99 / p99.9 ms | 202->accepted p50 / p99 / p99.9 ms "
      "| expected | received | missing | duplicates |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for r in runs:
    o = r["orders"]
    errors = sum(o["errors"].values())
    for name in ("websocket", "webhook"):
        p = r[name]
        if name == "webhook" and r["endpoints"] == 0:
            continue
        print(f"| {num(r['rate'], 0)} | {o['sent']:,} / {o['accepted']:,} | {errors} | {lat(r['accept'])} "
              f"| {name} | {lat(p['confirmed'])} | {lat(p['accepted'])} | {p['expected']:,} "
              f"| {p['received']:,} | {p['missing']} | {p['duplicates']} |")
bad = sum(r["webhook"]["bad_signatures"] for r in runs)
missing = sum(r["websocket"]["missing"] + r["webhook"]["missing"] for r in runs)
print(f"\n- notifications missing over all runs: {missing} (must be 0)")
print(f"- bad signatures over all runs: {bad} (must be 0)")
PY
echo "results in $OUT/"
