#!/usr/bin/env bash
# Regenerates BENCHMARKS.md: runs every scenario script (intake, fanout, sse, webhooks, e2e,
# commandstats, scale and workflow when present), each writing its JSON results and SVG plots
# under RESULTS/<section>/, then renders BENCHMARKS.md from them with `herald-loadtest report`
# (plots copied into docs/benchmarks/). SECTIONS picks which scripts run (the report still renders
# every section from what RESULTS holds).
#
#   loadtest/scenarios/all.sh                  # the full figures (about 20 minutes)
#   PROFILE=quick loadtest/scenarios/all.sh    # small counts, about 3 minutes: to try the kit
#   NO_BUILD=1 HERALD=... LOADTEST=... loadtest/scenarios/all.sh   # use existing binaries
#   REPORT_OUT=/tmp/B.md loadtest/scenarios/all.sh                # write the report elsewhere
#   SECTIONS="intake webhooks" loadtest/scenarios/all.sh         # only these scripts
#
# Every variable a scenario script reads (DURATION, CONNS, ...) can still be set; the profile
# only fills in the ones left unset. Some names are read by several scripts (DURATION, WARMUP;
# RATES by fanout.sh and webhooks.sh; BODY_BYTES by webhooks.sh and commandstats.sh): set them
# per script by running it on its own. Each script also runs on its own.
set -euo pipefail
cd "$(dirname "$0")/../.."

PROFILE=${PROFILE:-full}
RESULTS=${RESULTS:-target/bench}
SECTIONS=${SECTIONS:-"intake fanout sse webhooks e2e commandstats scale workflow"}
REPORT_OUT=${REPORT_OUT:-BENCHMARKS.md}

case "$PROFILE" in
  full)
    # Intake once per Redis fsync policy: the figures, and what zero loss costs.
    export FSYNC=${FSYNC:-"everysec always"}
    ;;
  quick)
    # Intake on everysec only (FSYNC's default).
    # A few seconds per run, hundreds of connections instead of thousands.
    export DURATION=${DURATION:-3s} WARMUP=${WARMUP:-1s}
    export CLIENTS=${CLIENTS:-"16 64"} BENCH_REQUESTS=${BENCH_REQUESTS:-20000}
    export CONNS=${CONNS:-200} RATES=${RATES:-"100 max"} SSE_CONNS=${SSE_CONNS:-200} SSE_RATES=${SSE_RATES:-100}
    export TARGETED_CONNS=${TARGETED_CONNS:-500} TARGETED_RATE=${TARGETED_RATE:-1000}
    export STALL_CONNS=${STALL_CONNS:-200} STALL_DURATION=${STALL_DURATION:-3s}
    export IDLE_CONNS=${IDLE_CONNS:-1000}
    export MAX_IN_FLIGHTS=${MAX_IN_FLIGHTS:-256} RETRIES=${RETRIES:-1000}
    export RETRY_STEP=${RETRY_STEP:-2s} LATENESS_IN_FLIGHTS=${LATENESS_IN_FLIGHTS:-0}
    export FAULT_DRAIN=${FAULT_DRAIN:-5s}
    export ORDERS=${ORDERS:-2000} EVENTS=${EVENTS:-1000} IDLE=${IDLE:-3}
    export SCALE_CONNS=${SCALE_CONNS:-200} SCALE_RATE=${SCALE_RATE:-100}
    export TIMERS=${TIMERS:-2000}
    ;;
  *) echo "PROFILE must be full or quick" >&2; exit 2 ;;
esac

if [ -z "${NO_BUILD:-}" ]; then
  cargo build --release --workspace --quiet
fi
export NO_BUILD=1
export HERALD=${HERALD:-target/release/herald}
export LOADTEST=${LOADTEST:-target/release/herald-loadtest}

for section in $SECTIONS; do
  script=loadtest/scenarios/$section.sh
  [ -x "$script" ] || { echo "all.sh: no $script, skipped" >&2; continue; }
  echo "=== $section ($PROFILE) ==="
  OUT=$RESULTS/$section "$script" || echo "all.sh: $script failed; its section shows what it wrote" >&2
done

"$LOADTEST" report --results "$RESULTS" --out "$REPORT_OUT"
