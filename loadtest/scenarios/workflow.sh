#!/usr/bin/env bash
# Reproduces the workflow figures of BENCHMARKS.md (issue 13), on each of ENGINES (the memory
# engine, and one dedicated redis-server with AOF, appendfsync everysec):
#
#   (a) plain intake: `herald-loadtest intake` at INTAKE_CLIENTS closed-loop clients against
#       Herald without steps (202s per second: the figure the intake section reports)
#   (b) the workflow without steps: `herald-loadtest workflow --mode throughput`, CLIENTS orders
#       in the workflow at once (each client sends its next order when the event feed shows
#       the last one confirmed): orders confirmed per second
#   (c) the same with ONE task step at `accepted`: a POST to the service the load tool runs
#       itself (`--service-listen`, 200 {"approved": true} at once), choice -> confirmed
#   (d) timer lateness: TIMERS orders created beforehand, all with metadata.dueAt the same
#       instant LEAD ahead, for a `wait` step `until = "order.metadata.dueAt"`, next confirmed;
#       lateness = occurredAt (and arrival on the feed) - dueAt, beside Herald's
#       herald_workflow_timer_lateness_seconds read from /metrics
#
# Same Herald build for every run; a fresh herald serve per run (and a flushed Redis), so (b)
# and (c) differ only by the step. The report puts (c) beside (b) and (a) as ratios.
#
#   loadtest/scenarios/workflow.sh                   # full run (about 3 minutes)
#   DURATION=5s TIMERS=2000 loadtest/scenarios/workflow.sh
#   ENGINES=memory NO_BUILD=1 HERALD=target/debug/herald ...   # existing binaries
#
# Results: one JSON file and one SVG latency plot per run, the Herald configs used, Herald's
# workflow metrics after each lateness run, manifest.json and summary.md (the section as
# `herald-loadtest report` renders it) under target/bench/workflow/.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
ENGINES=${ENGINES:-"memory redis"}
# Orders in the workflow at once in (b) and (c).
CLIENTS=${CLIENTS:-256}
# Closed-loop clients of the plain intake run (a); empty: no intake run.
INTAKE_CLIENTS=${INTAKE_CLIENTS:-64}
TIMERS=${TIMERS:-10000}
# How far ahead of the lateness run's start the timers are due: creating TIMERS orders and
# scheduling their timers must fit in it (the tool reports whether it did).
LEAD=${LEAD:-5s}
CREATE_CLIENTS=${CREATE_CLIENTS:-64}
DRAIN=${DRAIN:-30s}
OUT=${OUT:-target/bench/workflow}
KEY=bench-admin-key-000000000001

source loadtest/scenarios/lib.sh
clean_out
rm -f "$OUT"/*.toml "$OUT"/herald-metrics-*.txt
build_binaries
write_manifest workflow.sh "DURATION WARMUP ENGINES CLIENTS INTAKE_CLIENTS TIMERS LEAD CREATE_CLIENTS DRAIN" \
  "Redis: AOF on, appendfsync everysec, one redis-server (flushed between runs). A fresh herald serve per run, default worker settings (batch_size 10, batches_in_flight 5); the task step's service is the load tool's own (200 {\"approved\": true} at once) on loopback."

# The workflow with one task step at `accepted`, calling the load tool's service on $1.
task_config() { # service-port
  cat <<EOF
[workflow]
allow_networks = ["127.0.0.0/8"]

[workflow.steps.accepted]
name = "approval"
type = "task"
default = "rejected"

[workflow.steps.accepted.request]
method = "POST"
url = "http://127.0.0.1:$1/approve/{orderId}"
timeout = "2s"
body = { orderId = "{orderId}", customerId = "{customerId}", attempt = "{attempt}" }

[[workflow.steps.accepted.choices]]
when = "status == 200 and body.approved == true"
next = "confirmed"

[[workflow.steps.accepted.retry]]
errors = ["timeout", "5xx", "connect"]
interval = "100ms"
max_attempts = 2

[[workflow.steps.accepted.catch]]
errors = ["all"]
next = "rejected"
EOF
}

# The workflow whose `accepted` waits for the order's own due time.
wait_config() {
  cat <<'EOF'
[workflow.steps.accepted]
name = "due"
type = "wait"
until = "order.metadata.dueAt"
next = "confirmed"
EOF
}

start_herald() { # engine name [config]
  HPORT=$(free_port)
  local args=(serve --listen "127.0.0.1:$HPORT")
  [ "$1" = redis ] && args+=(--redis-url "redis://127.0.0.1:$RPORT")
  [ -n "${3:-}" ] && args+=(--config "$3")
  HERALD_ADMIN_KEY=$KEY RUST_LOG=warn "$HERALD" "${args[@]}" >"$OUT/herald-$1-$2.log" 2>&1 &
  HPID=$!
  pids+=($HPID)
  until curl -sf "http://127.0.0.1:$HPORT/readyz" >/dev/null; do
    kill -0 "$HPID" 2>/dev/null || { echo "herald exited; see $OUT/herald-$1-$2.log" >&2; exit 1; }
    sleep 0.05
  done
}

# Stops Herald and empties the Redis under it for the next run.
end_run() { # engine
  stop "$HPID"
  [ "$1" = redis ] && redis-cli -p "$RPORT" flushall >/dev/null
  return 0
}

workflow_runs() { # engine
  local engine=$1
  if [ -n "$INTAKE_CLIENTS" ]; then
    start_herald "$engine" intake
    "$LOADTEST" intake --url "http://127.0.0.1:$HPORT" --api-key "$KEY" --clients "$INTAKE_CLIENTS" \
      --duration "$DURATION" --warmup "$WARMUP" --label "$engine plain intake clients=$INTAKE_CLIENTS" \
      --json "$OUT/$engine-intake.json" --svg "$OUT/$engine-intake.svg"
    end_run "$engine"
  fi

  start_herald "$engine" plain
  "$LOADTEST" workflow --mode throughput --url "http://127.0.0.1:$HPORT" --admin-key "$KEY" \
    --clients "$CLIENTS" --duration "$DURATION" --warmup "$WARMUP" \
    --label "$engine plain clients=$CLIENTS" --json "$OUT/$engine-plain.json" --svg "$OUT/$engine-plain.svg"
  end_run "$engine"

  local sport
  sport=$(free_port)
  task_config "$sport" >"$OUT/workflow-task.toml"
  start_herald "$engine" task "$OUT/workflow-task.toml"
  "$LOADTEST" workflow --mode throughput --url "http://127.0.0.1:$HPORT" --admin-key "$KEY" \
    --clients "$CLIENTS" --duration "$DURATION" --warmup "$WARMUP" --service-listen "127.0.0.1:$sport" \
    --label "$engine task clients=$CLIENTS" --json "$OUT/$engine-task.json" --svg "$OUT/$engine-task.svg"
  end_run "$engine"

  wait_config >"$OUT/workflow-wait.toml"
  start_herald "$engine" wait "$OUT/workflow-wait.toml"
  "$LOADTEST" workflow --mode lateness --url "http://127.0.0.1:$HPORT" --admin-key "$KEY" \
    --orders "$TIMERS" --lead "$LEAD" --create-clients "$CREATE_CLIENTS" --drain "$DRAIN" \
    --label "$engine wait timers=$TIMERS" --json "$OUT/$engine-lateness.json" --svg "$OUT/$engine-lateness.svg"
  curl -s -H "x-api-key: $KEY" "http://127.0.0.1:$HPORT/metrics" | grep -E '^herald_workflow' \
    >"$OUT/herald-metrics-$engine-lateness.txt" || true
  end_run "$engine"
}

for engine in $ENGINES; do
  case "$engine" in
    memory) workflow_runs memory ;;
    redis)
      start_redis aof
      workflow_runs redis
      stop "$RPID"
      ;;
    *) echo "ENGINES: '$engine' is not an engine (memory, redis)" >&2; exit 2 ;;
  esac
done

summarise workflow
