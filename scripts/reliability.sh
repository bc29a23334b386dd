#!/usr/bin/env bash
# Runs the reliability suites (integration test targets that print one `SUITE-FIGURES {json}`
# line per test) with a profile, prints those lines and collects them, one JSON object per
# line, into target/reliability/figures.jsonl (replaced on each run).
#
#   scripts/reliability.sh [short|long]      # short (default): the bounded profile CI runs
#   SUITES="faults" scripts/reliability.sh   # only some of the suites
#
# After a run of every suite with none failed, it renders RELIABILITY.md from the figures
# (scripts/reliability_report.py; the prose is in docs/reliability/). A run of some suites only
# (SUITES=...) or with a failure leaves RELIABILITY.md as it was.
#
# Each suite's tests run one at a time (--test-threads=1), so their figures do not share the
# machine. Exit status: non-zero if any suite failed; every suite runs regardless.
set -uo pipefail
cd "$(dirname "$0")/.."

profile="${1:-short}"
case "$profile" in
  short|long) ;;
  *) echo "usage: $0 [short|long]" >&2; exit 2 ;;
esac

# One entry per test target in tests/ (tests/<name>.rs or tests/<name>/main.rs).
suites=(${SUITES:-faults durability bad_input security hardening})

out_dir="target/reliability"
mkdir -p "$out_dir"
figures="$out_dir/figures.jsonl"
: >"$figures"
machine="$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr), $(redis-server --version | grep -o 'v=[0-9.]*' | sed 's/v=/Redis /')"
printf '{"profile":"%s","commit":"%s","date":"%s","machine":"%s"}\n' "$profile" \
  "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src tests || echo ' (with uncommitted changes)')" \
  "$(date -u +%Y-%m-%d)" "$machine" >"$out_dir/run.json"

failed=()
for suite in "${suites[@]}"; do
  if [ ! -f "tests/$suite.rs" ] && [ ! -f "tests/$suite/main.rs" ]; then
    echo "reliability: no test target tests/$suite.rs" >&2
    failed+=("$suite")
    continue
  fi
  echo "== $suite ($profile)"
  log="$out_dir/$suite.log"
  RELIABILITY_PROFILE="$profile" cargo test --test "$suite" -- --nocapture --test-threads=1 \
    >"$log" 2>&1
  status=$?
  # The figures line may share its line with libtest's "test name ... " prefix.
  grep -o 'SUITE-FIGURES {.*}' "$log" | sed 's/^SUITE-FIGURES //' | tee -a "$figures" \
    | sed 's/^/SUITE-FIGURES /'
  grep -E '^test result:' "$log"
  if [ "$status" -ne 0 ]; then
    echo "reliability: $suite FAILED (exit $status); full output in $log" >&2
    failed+=("$suite")
  fi
done

echo "figures: $figures ($(wc -l <"$figures") lines)"
if [ ${#failed[@]} -gt 0 ]; then
  echo "reliability: failed: ${failed[*]} (RELIABILITY.md not rendered)" >&2
  exit 1
fi
if [ -n "${SUITES:-}" ]; then
  echo "reliability: some suites only (SUITES); RELIABILITY.md not rendered"
else
  python3 scripts/reliability_report.py
fi
