#!/usr/bin/env bash
# Redis commands and Redis CPU microseconds per order and per webhook delivery, from Redis'
# own `INFO commandstats` (issue 11: "before and after"; the same script measures both). It
# starts its own redis-server (AOF, fsync every second) and herald (redis engine, all roles)
# on free loopback ports and stops them at the end; every wait is bounded.
#
# Two passes, each on a fresh redis-server and herald, with the same work:
#   timing   no MONITOR: commandstats calls and usec, and Redis' process CPU (INFO cpu)
#   monitor  under MONITOR: which calls a client sent and which a Lua script made (and which
#            script), since commandstats counts both under one name; its usec are not used
# and in each pass:
#   (a) idle: IDLE seconds with no load (Herald's background polling, per second)
#   (b) intake: CONFIG RESETSTAT, ORDERS orders at ORDER_RATE/s (herald-loadtest intake, open
#       loop), wait until every order is confirmed or rejected and Herald's counters settle,
#       INFO commandstats
#   (c) webhooks: one endpoint at the load tool's verifying sink, CONFIG RESETSTAT, EVENTS
#       events XADDed straight into the event stream at EVENT_RATE/s (no orders: the figure
#       is per delivery alone), wait until all are delivered and settled, INFO commandstats
# loadtest/scenarios/commandstats.py turns the INFO and MONITOR text into the figures; see
# loadtest/notes/commandstats.md for the method and what is counted.
#
#   loadtest/scenarios/commandstats.sh                     # about 3 minutes
#   ORDERS=2000 EVENTS=1000 loadtest/scenarios/commandstats.sh
#   NO_BUILD=1 HERALD=target/debug/herald ...              # use existing binaries
#
# Results under target/bench/commandstats/: intake.json and webhooks.json (figures, raw
# commandstats of both passes, MONITOR counts, machine, Herald commit), manifest.json,
# summary.md, and the raw INFO text and tool results under raw/.
set -euo pipefail
cd "$(dirname "$0")/../.."

ORDERS=${ORDERS:-20000}
ORDER_RATE=${ORDER_RATE:-1000}
EVENTS=${EVENTS:-10000}
EVENT_RATE=${EVENT_RATE:-1000}
BODY_BYTES=${BODY_BYTES:-1024}
IDLE=${IDLE:-10}
# Longest wait for the work to finish after the load tool is done (each phase).
SETTLE_TIMEOUT=${SETTLE_TIMEOUT:-120}
OUT=${OUT:-target/bench/commandstats}
STREAM=${STREAM:-'herald:{p0}:events'}
SCRIPTS=${SCRIPTS:-src/engine/redis/scripts}
KEY=bench-admin-key-000000000001
PY=loadtest/scenarios/commandstats.py
MARKER=commandstats-end-$$

source loadtest/scenarios/lib.sh
clean_out
RAW=$OUT/raw
rm -rf "$RAW"
mkdir -p "$RAW"
build_binaries
write_manifest commandstats.sh "ORDERS ORDER_RATE EVENTS EVENT_RATE BODY_BYTES IDLE" \
  "Redis: AOF on, appendfsync everysec, a fresh redis-server and herald serve (redis engine, all roles, allow_networks [127.0.0.0/8]) per pass."
python3 "$PY" test >/dev/null

start_herald() {
  HERALD_ADMIN_KEY=$KEY HERALD_LISTEN=127.0.0.1:0 RUST_LOG=warn \
    HERALD_WEBHOOKS__ALLOW_NETWORKS='["127.0.0.0/8"]' \
    "$HERALD" serve --redis-url "redis://127.0.0.1:$RPORT" \
    >"$RAW/herald-$1.out" 2>"$RAW/herald-$1.log" &
  HPID=$!
  pids+=($HPID)
  wait_listening "$RAW/herald-$1.out" "$HPID"
  HADDR=$ADDR
  for _ in $(seq 1 400); do
    curl -sf "http://$HADDR/readyz" >/dev/null && return 0
    sleep 0.05
  done
  echo "herald not ready; see $RAW/herald-$1.log" >&2
  exit 1
}

rcli() { redis-cli -h 127.0.0.1 -p "$RPORT" "$@"; }

# Herald's work counters (not its HTTP counters: the polling below would move those). They
# are read from /metrics, which does not touch Redis.
counters() {
  curl -s -H "x-api-key: $KEY" "http://$HADDR/metrics" |
    grep -E '^herald_(orders|transitions|commands|events|event|webhook)_[a-z_]*total ' || true
}
metric() { counters | awk -v m="$1" '$1 == m { print $2 }'; }

# Waits until metric $1 has reached $2 and no work counter moved for a second, at most
# SETTLE_TIMEOUT seconds; says so if it gave up.
settle() { # metric target
  local prev="" now deadline=$((SECONDS + SETTLE_TIMEOUT)) v
  while [ $SECONDS -lt $deadline ]; do
    now=$(counters)
    v=$(awk -v m="$1" '$1 == m { print $2 }' <<<"$now")
    if [ "${v:-0}" -ge "$2" ] 2>/dev/null && [ "$now" = "$prev" ]; then return 0; fi
    prev=$now
    sleep 1
  done
  echo "settle: $1 did not reach $2 (or the counters kept moving) within ${SETTLE_TIMEOUT}s" >&2
  return 0
}

# CONFIG RESETSTAT (after INFO cpu, so the CPU can be diffed) and, in the monitor pass,
# MONITOR into the counter; PHASE_T0 for the elapsed time.
begin() { # pass phase
  rcli info cpu | python3 "$PY" info "$RAW/$1-$2-cpu-before.json"
  rcli config resetstat >/dev/null
  PHASE_T0=$(date +%s.%N)
  if [ "$1" = monitor ]; then
    local fifo="$RAW/monitor.fifo"
    rm -f "$fifo"
    mkfifo "$fifo"
    python3 "$PY" monitor "$RAW/$1-$2-monitor.json" "$SCRIPTS" "$MARKER" <"$fifo" &
    COUNTER=$!
    pids+=($COUNTER)
    rcli monitor >"$fifo" &
    MONITOR=$!
    pids+=($MONITOR)
  fi
  sleep 1
}

# In the monitor pass, ECHO MARKER tells the counter it has read everything (it may lag
# behind MONITOR's output; stopping redis-cli first would lose what Redis still buffers).
end_phase() { # pass phase
  if [ "$1" = monitor ]; then
    rcli echo "$MARKER" >/dev/null
    local deadline=$((SECONDS + SETTLE_TIMEOUT))
    while kill -0 "$COUNTER" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    stop "$MONITOR"
    wait "$COUNTER" || { echo "the MONITOR counter failed or did not catch up" >&2; exit 1; }
    rm -f "$RAW/monitor.fifo"
  fi
  rcli info commandstats cpu | tee "$RAW/$1-$2-info.txt" | python3 "$PY" info "$RAW/$1-$2-info.json"
  PHASE_S=$(python3 -c "import sys; print(round($(date +%s.%N) - $PHASE_T0, 3))")
  # After the snapshot: the queue stats run a script.
  curl -s -H "x-api-key: $KEY" "http://$HADDR/v1/admin/queues" >"$RAW/$1-$2-queues.json" || true
}

one_pass() { # pass
  local pass=$1 base
  start_redis everysec
  start_herald "$pass"

  # (a) idle background.
  rcli config resetstat >/dev/null
  sleep "$IDLE"
  rcli info commandstats | python3 "$PY" info "$RAW/$pass-idle-info.json"

  # (b) intake.
  base=$(metric herald_commands_applied_total)
  begin "$pass" intake
  "$LOADTEST" intake --url "http://$HADDR" --api-key "$KEY" --rate "$ORDER_RATE" \
    --max-in-flight 256 --duration "$((ORDERS * 1000 / ORDER_RATE))ms" --warmup 0s \
    --label "commandstats $pass intake" --json "$RAW/$pass-intake-tool.json" >/dev/null
  local accepted
  accepted=$(python3 -c "import json; print(json.load(open('$RAW/$pass-intake-tool.json'))['accepted'])")
  # Every accepted order confirmed or rejected: one applied (or refused) command each.
  settle herald_commands_applied_total "$((${base:-0} + accepted))"
  counters >"$RAW/$pass-intake-counters.txt"
  end_phase "$pass" intake
  echo "$accepted" >"$RAW/$pass-intake-units"
  echo "$PHASE_S" >"$RAW/$pass-intake-seconds"

  # (c) webhooks: the load tool registers its sink, publishes, drains, deletes the endpoint.
  base=$(metric herald_webhook_deliveries_succeeded_total)
  begin "$pass" webhooks
  "$LOADTEST" webhooks --target herald --mode throughput --url "http://$HADDR" --admin-key "$KEY" \
    --redis-url "redis://127.0.0.1:$RPORT" --stream "$STREAM" --body-bytes "$BODY_BYTES" \
    --rate "$EVENT_RATE" --duration "$((EVENTS * 1000 / EVENT_RATE))ms" --warmup 0s --drain 60s \
    --label "commandstats $pass webhooks" --json "$RAW/$pass-webhooks-tool.json" >/dev/null
  local published
  published=$(python3 -c "import json; print(json.load(open('$RAW/$pass-webhooks-tool.json'))['sent']['total'])")
  settle herald_webhook_deliveries_succeeded_total "$((${base:-0} + published))"
  counters >"$RAW/$pass-webhooks-counters.txt"
  end_phase "$pass" webhooks
  local succeeded
  succeeded=$(awk '$1 == "herald_webhook_deliveries_succeeded_total" { print $2 }' "$RAW/$pass-webhooks-counters.txt")
  echo "$((${succeeded:-0} - ${base:-0}))" >"$RAW/$pass-webhooks-units"
  echo "$published" >"$RAW/$pass-webhooks-published"
  echo "$PHASE_S" >"$RAW/$pass-webhooks-seconds"

  stop "$HPID"
  stop "$RPID"
}

one_pass timing
one_pass monitor

# The figures: one JSON per phase with the run's facts.
for phase in intake webhooks; do
  python3 - "$RAW" "$phase" "$OUT/manifest.json" "$ORDER_RATE" "$EVENT_RATE" "$BODY_BYTES" \
    >"$RAW/$phase-extra.json" <<'PY'
import json, sys
raw, phase, manifest, order_rate, event_rate, body = sys.argv[1:]
rd = lambda p: open(f"{raw}/{p}").read().strip()
tool = json.load(open(f"{raw}/timing-{phase}-tool.json"))
mtool = json.load(open(f"{raw}/monitor-{phase}-tool.json"))
extra = {
    "manifest": json.load(open(manifest)),
    "machine": tool.get("machine"),
    "started_at": tool.get("started_at"),
    "rate_per_s": float(order_rate if phase == "intake" else event_rate),
    "seconds": {"timing_pass": float(rd(f"timing-{phase}-seconds")),
                "monitor_pass": float(rd(f"monitor-{phase}-seconds"))},
    "queues_after": {p: json.load(open(f"{raw}/{p}-{phase}-queues.json")) for p in ("timing", "monitor")},
}
if phase == "intake":
    extra["tool"] = {p: {"accepted": t["accepted"], "errors": t["errors"]} for p, t in
                     (("timing", tool), ("monitor", mtool))}
else:
    extra["body_bytes"] = int(body)
    extra["published"] = {p: int(rd(f"{p}-webhooks-published")) for p in ("timing", "monitor")}
    extra["tool"] = {p: {"received_distinct": t["received_distinct"], "missing": t["missing"],
                         "invalid_signatures": t["invalid_signatures"], "repeats": t["repeats"]}
                     for p, t in (("timing", tool), ("monitor", mtool))}
print(json.dumps(extra))
PY
  unit=order publisher=()
  if [ "$phase" = webhooks ]; then
    unit=delivery
    # The load tool's XADDs of the events are its own, not Herald's.
    publisher=("$(cat "$RAW/timing-webhooks-published")" "$(cat "$RAW/monitor-webhooks-published")")
  fi
  python3 "$PY" compute "$OUT/$phase.json" "$(date -u +%Y-%m-%dT%H:%MZ)" "$unit" \
    "$(cat "$RAW/timing-$phase-units")" "$(cat "$RAW/monitor-$phase-units")" \
    "$RAW/timing-$phase-info.json" "$RAW/timing-$phase-cpu-before.json" \
    "$RAW/monitor-$phase-info.json" "$RAW/monitor-$phase-monitor.json" \
    "$RAW/timing-idle-info.json" "$IDLE" "$RAW/$phase-extra.json" "${publisher[@]}"
done

{
  echo "# Redis commands and CPU per order and per delivery"
  echo
  echo "\`$(python3 -c "import json; print(json.load(open('$OUT/manifest.json'))['command'])")\`, Herald $(python3 -c "import json; print(json.load(open('$OUT/manifest.json'))['herald'])")"
  echo
  echo "## Intake (per order)"
  echo
  python3 "$PY" render "$OUT/intake.json"
  echo
  echo "## Webhooks (per delivery)"
  echo
  python3 "$PY" render "$OUT/webhooks.json"
} >"$OUT/summary.md"
cat "$OUT/summary.md"
echo "results in $OUT/"
