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
#   NO_BUILD=1 HERALD=target/debug/herald ...                      # use existing binaries
#
# Results: one JSON file per run and summary.md under target/bench/fanout/.
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
TARGETS=${TARGETS:-"herald reference"}
OUT=${OUT:-target/bench/fanout}
KEY=bench-admin-key-000000000001
STREAM=${STREAM:-'herald:{p0}:events'}
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
    --duration "$DURATION" --warmup "$WARMUP" --label "$target $name" \
    --json "$OUT/$target-$name.json" "$@" || echo "run $target $name failed" >&2
  # Let the server close the previous run's connections before the next one opens its own.
  sleep 2
}

{
  echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -sr)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "redis: $(redis-server --version | cut -d' ' -f3)"
  echo "herald: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "nofile: $(ulimit -n)"
} | tee "$OUT/machine.txt"

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
    --connections "$IDLE_CONNS" --pid "$HPID" --label herald --json "$OUT/herald-idle.json" \
    || echo "idle herald failed" >&2
fi
if has reference; then
  stop "$RFPID"; start_reference
  "$LOADTEST" idle --url "ws://$RFADDR/graphql" --protocol "$PROTOCOL" \
    --connections "$IDLE_CONNS" --pid "$RFPID" --label reference --json "$OUT/reference-idle.json" \
    || echo "idle reference failed" >&2
fi

python3 - "$OUT" <<'PY' | tee "$OUT/summary.md"
import glob, json, os, sys
out = sys.argv[1]
runs = {}
for f in glob.glob(os.path.join(out, "*.json")):
    target, name = os.path.basename(f)[:-5].split("-", 1)
    runs[(target, name)] = json.load(open(f))

def num(v, digits=0):
    return "-" if v is None else f"{v:,.{digits}f}"

def lat(r, key):
    l = (r or {}).get("latency_ms") or {}
    return l.get(key)

names = sorted({n for (_, n) in runs if n != "idle"},
               key=lambda n: (n.split("-")[0], int(n.split("-c")[1].split("-")[0]),
                              float("inf") if n.endswith("rmax") else float(n.split("-r")[-1])))
print("## Fan-out: Herald against the reference broadcast server, same run\n")
print(open(os.path.join(out, "machine.txt")).read().replace("\n", "  \n"))
print("| run | Herald deliveries/s | reference deliveries/s | ratio | Herald p50 / p99 / p99.9 ms "
      "| reference p50 / p99 / p99.9 ms | Herald missing | reference missing |")
print("|---|---|---|---|---|---|---|---|")
for n in names:
    h, r = runs.get(("herald", n)), runs.get(("reference", n))
    hd = h and h["deliveries_per_s"]
    rd = r and r["deliveries_per_s"]
    ratio = f"{hd / rd:.0%}" if hd and rd else "-"
    fmt3 = lambda x: "-" if not x else " / ".join(num(lat(x, k), 2) for k in ("p50", "p99", "p999"))
    print(f"| {n} | {num(hd)} | {num(rd)} | {ratio} | {fmt3(h)} | {fmt3(r)} "
          f"| {h['missing'] if h else '-'} | {r['missing'] if r else '-'} |")

print("\n### Stalled clients\n")
print("| target | p99 without stalls | p99 with stalls | rise | stalled connections after the run |")
print("|---|---|---|---|---|")
for t in ("herald", "reference"):
    base = [v for (tt, n), v in runs.items() if tt == t and n.startswith("stalled0-")]
    stall = [v for (tt, n), v in runs.items() if tt == t and n.startswith("stalled") and not n.startswith("stalled0-")]
    if base and stall:
        b, s = lat(base[0], "p99"), lat(stall[0], "p99")
        rise = f"{(s / b - 1):+.0%}" if b and s else "-"
        print(f"| {t} | {num(b, 2)} ms | {num(s, 2)} ms | {rise} | {stall[0].get('stalled_after_run')} |")

print("\n### Idle connections\n")
print("| target | connections | server RSS before -> after | KiB per connection |")
print("|---|---|---|---|")
for t in ("herald", "reference"):
    v = runs.get((t, "idle"))
    if v:
        print(f"| {t} | {v['connected']:,} | {v['server_rss_before_kib']:,} -> {v['server_rss_after_kib']:,} KiB "
              f"| {v['server_kib_per_connection']:.2f} |")

print("\n### Targets\n")
maxr = [(n, runs.get(("herald", n)), runs.get(("reference", n))) for n in names if n.endswith("-rmax")]
for n, h, r in maxr:
    if h and r and r["deliveries_per_s"]:
        q = h["deliveries_per_s"] / r["deliveries_per_s"]
        print(f"- max-rate broadcast {n}: Herald at {q:.0%} of the reference (target >= 50 %): {'met' if q >= 0.5 else 'NOT met'}")
for (t, n), v in sorted(runs.items()):
    if t == "herald" and n.startswith("targeted"):
        p99 = lat(v, "p99")
        print(f"- targeted {n}: p99 {num(p99, 2)} ms (target <= 5 ms): {'met' if p99 is not None and p99 <= 5 else 'NOT met'}")
v = runs.get(("herald", "idle"))
if v:
    k = v["server_kib_per_connection"]
    print(f"- idle: {k:.2f} KiB per connection at {v['connected']:,} (target <= 8 KiB): {'met' if k <= 8 else 'NOT met'}")
PY
echo "results in $OUT/"
