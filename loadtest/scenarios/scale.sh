#!/usr/bin/env bash
# Issue 11's scale figures: Herald on a 3-master Redis Cluster on this machine with 1, 2 and 3
# Herald nodes (each `herald serve` with all roles), per node count:
#   (a) orders/s: closed-loop intake, SCALE_CLIENTS clients in all, orders round-robin over the nodes
#       (`herald-loadtest intake --url a,b,c`);
#   (b) fan-out deliveries/s: SCALE_CONNS broadcast subscribers round-robin over the nodes
#       (`herald-loadtest fanout --url a,b,c`), events XADDed at SCALE_RATE/s (`max`: closed loop)
#       into Herald's event stream on the master that holds it.
# It starts the cluster itself: three `redis-server --cluster-enabled yes` on free loopback
# ports below the ephemeral range (so no client socket or other test server takes them
# first), AOF with fsync every second, then `redis-cli --cluster create ... --cluster-replicas
# 0`; the cluster's data is flushed between node counts and everything it started is stopped
# and its folder removed however the script ends. See loadtest/notes/scale.md for what bounds
# the figures: one machine runs the cluster, every Herald node and the load generator, so more
# nodes share the same cores.
#
#   loadtest/scenarios/scale.sh                              # full run (about 3 minutes)
#   NODES="1 3" DURATION=5s SCALE_CONNS=200 loadtest/scenarios/scale.sh
#   PARTITIONS=16 loadtest/scenarios/scale.sh                # [engine] partitions (orders spread
#                                                            # over the masters; the fan-out
#                                                            # publisher still XADDs to {p0}'s
#                                                            # stream, which every tail reads)
#   NO_BUILD=1 HERALD=target/debug/herald ...                # use existing binaries
#
# Results: intake-n<N>.json and fanout-n<N>.json with an SVG plot each, masters-n<N>.txt (how
# the intake's Redis CPU and commands spread over the masters), manifest.json, the
# Herald and Redis logs, and summary.md (the section as `herald-loadtest report` renders it)
# under target/bench/scale/.
set -euo pipefail
cd "$(dirname "$0")/../.."

NODES=${NODES:-"1 2 3"}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
# Intake: closed-loop clients in all (spread over the nodes).
SCALE_CLIENTS=${SCALE_CLIENTS:-16}
# Fan-out: broadcast subscribers in all (spread over the nodes) and events per second.
SCALE_CONNS=${SCALE_CONNS:-1000}
SCALE_RATE=${SCALE_RATE:-1000}
# `[engine] partitions` for Herald (HERALD_ENGINE__PARTITIONS); empty: Herald's default.
PARTITIONS=${PARTITIONS:-}
OUT=${OUT:-target/bench/scale}
KEY=bench-admin-key-000000000001
STREAM=${STREAM:-'herald:{p0}:events'}
MASTERS=3

source loadtest/scenarios/lib.sh
clean_out
rm -f "$OUT"/*.out "$OUT"/*.log
build_binaries
write_manifest scale.sh "NODES DURATION WARMUP SCALE_CLIENTS SCALE_CONNS SCALE_RATE PARTITIONS" \
  "Redis Cluster: $MASTERS masters, no replicas, AOF on, appendfsync everysec, all on this machine's loopback; its data flushed between node counts. Herald: every node all roles${PARTITIONS:+, partitions $PARTITIONS}, push.max_connections 50,000; a fresh set of nodes per node count."

CDIR=$(mktemp -d)
trap 'cleanup; rm -rf "$CDIR"' EXIT
trap 'exit 130' INT TERM

# A free loopback port below the ephemeral range (where every outgoing connection's source
# port lives, so a port picked there can be taken before the server binds it), not in $@.
low_port() {
  python3 - "$@" <<'PY'
import random, socket, sys
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
taken = {int(p) for p in sys.argv[1:]}
for _ in range(2000):
    p = random.randrange(10000, low)
    if p in taken:
        continue
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        s.close()
    print(p)
    break
else:
    sys.exit("no free port below the ephemeral range")
PY
}

# Starts the masters and creates the cluster; sets PORTS and CLUSTER_URL.
start_cluster() {
  PORTS=()
  local taken=() i port bus dir
  for i in $(seq 1 $MASTERS); do
    port=$(low_port "${taken[@]}")
    taken+=("$port")
    bus=$(low_port "${taken[@]}")
    taken+=("$bus")
    dir=$CDIR/$port
    mkdir -p "$dir"
    redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
      --cluster-config-file "nodes-$port.conf" --cluster-port "$bus" --dir "$dir" --save '' \
      --appendonly yes --appendfsync everysec --logfile "$OUT/redis-$port.log" &
    pids+=($!)
    PORTS+=("$port")
  done
  for port in "${PORTS[@]}"; do
    for _ in $(seq 1 200); do
      redis-cli -p "$port" ping >/dev/null 2>&1 && break
      sleep 0.05
    done
    redis-cli -p "$port" ping >/dev/null 2>&1 || { echo "redis-server on $port did not start; see $OUT/redis-$port.log" >&2; exit 1; }
  done
  local nodes=()
  for port in "${PORTS[@]}"; do nodes+=("127.0.0.1:$port"); done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes \
    >"$OUT/cluster-create.log" 2>&1 || { echo "redis-cli --cluster create failed; see $OUT/cluster-create.log" >&2; exit 1; }
  local ok
  for _ in $(seq 1 200); do
    ok=0
    for port in "${PORTS[@]}"; do
      redis-cli -p "$port" cluster info 2>/dev/null | grep -q 'cluster_state:ok' && ok=$((ok + 1))
    done
    [ "$ok" -eq "$MASTERS" ] && break
    sleep 0.1
  done
  [ "$ok" -eq "$MASTERS" ] || { echo "the cluster did not reach cluster_state:ok" >&2; exit 1; }
  CLUSTER_URL="redis+cluster://$(IFS=,; echo "${nodes[*]}")"
}

# The port of the master holding KEY's slot (the fan-out publisher XADDs there directly).
master_of() { # key
  local slot
  slot=$(redis-cli -p "${PORTS[0]}" cluster keyslot "$1")
  redis-cli -p "${PORTS[0]}" cluster nodes | awk -v slot="$slot" '
    $3 ~ /master/ {
      for (i = 9; i <= NF; i++) {
        n = split($i, r, "-"); lo = r[1]; hi = (n > 1) ? r[2] : r[1]
        if ($i !~ /^\[/ && slot + 0 >= lo + 0 && slot + 0 <= hi + 0) { split($2, a, "[:@]"); print a[2]; exit }
      }
    }'
}

# Starts N Herald nodes on the cluster; sets HPIDS and ADDRS.
start_nodes() { # n
  HPIDS=()
  ADDRS=()
  local i pid
  for i in $(seq 1 "$1"); do
    env HERALD_ADMIN_KEY=$KEY HERALD_LISTEN=127.0.0.1:0 RUST_LOG=warn HERALD_PUSH__MAX_CONNECTIONS=50000 \
      ${PARTITIONS:+HERALD_ENGINE__PARTITIONS=$PARTITIONS} \
      "$HERALD" serve --redis-url "$CLUSTER_URL" >"$OUT/herald-n$1-$i.out" 2>"$OUT/herald-n$1-$i.log" &
    pid=$!
    HPIDS+=($pid)
    pids+=($pid)
    wait_listening "$OUT/herald-n$1-$i.out" "$pid"
    ADDRS+=("$ADDR")
  done
  local a
  for a in "${ADDRS[@]}"; do
    for _ in $(seq 1 400); do
      curl -sf "http://$a/readyz" >/dev/null && continue 2
      sleep 0.05
    done
    echo "herald at $a not ready; see $OUT/herald-n$1-*.log" >&2
    exit 1
  done
}

stop_nodes() {
  local p
  for p in "${HPIDS[@]}"; do stop "$p"; done
}

# Per master: "<port> <cpu seconds (user+sys)> <commands processed>".
master_stats() {
  local port
  for port in "${PORTS[@]}"; do
    redis-cli -p "$port" info all 2>/dev/null | tr -d '\r' | awk -v port="$port" -F: '
      $1 == "used_cpu_sys" || $1 == "used_cpu_user" { cpu += $2 }
      $1 == "total_commands_processed" { cmds = $2 }
      END { printf "%s %.3f %d\n", port, cpu, cmds }'
  done
}

# How the intake run's Redis work spread over the masters: CPU seconds and commands per master
# between two `master_stats` snapshots, written to masters-n<N>.txt.
master_share() { # before after n
  paste -d' ' <(echo "$1") <(echo "$2") | awk -v n="$3" '
    { cpu[NR] = $5 - $2; cmds[NR] = $6 - $3; port[NR] = $1; tc += cpu[NR]; tn += cmds[NR] }
    END {
      printf "intake with %d node(s): Redis work per master (CPU s, commands, share of commands)\n", n
      for (i = 1; i <= NR; i++)
        printf "  master :%s  cpu %.2f s  commands %d  %.0f %%\n", port[i], cpu[i], cmds[i], tn ? 100 * cmds[i] / tn : 0
    }' | tee "$OUT/masters-n$3.txt"
}

flush_cluster() {
  local port
  for port in "${PORTS[@]}"; do redis-cli -p "$port" flushall >/dev/null; done
}

start_cluster
echo "cluster: $CLUSTER_URL"
for n in $NODES; do
  echo "=== $n Herald node(s) ==="
  flush_cluster
  start_nodes "$n"
  urls=$(printf 'http://%s,' "${ADDRS[@]}")
  before=$(master_stats)
  "$LOADTEST" intake --url "${urls%,}" --api-key "$KEY" --clients "$SCALE_CLIENTS" \
    --duration "$DURATION" --warmup "$WARMUP" --label "cluster nodes=$n" \
    --json "$OUT/intake-n$n.json" --svg "$OUT/intake-n$n.svg" \
    || echo "intake with $n node(s) failed" >&2
  master_share "$before" "$(master_stats)" "$n"
  # The stream's master, after intake (which created it): the publisher XADDs straight there.
  SPORT=$(master_of "$STREAM")
  ws=$(printf 'ws://%s/graphql,' "${ADDRS[@]}")
  "$LOADTEST" fanout --target herald --url "${ws%,}" --api-key "$KEY" \
    --redis-url "redis://127.0.0.1:$SPORT" --stream "$STREAM" --mode broadcast \
    --connections "$SCALE_CONNS" --rate "$SCALE_RATE" --duration "$DURATION" --warmup "$WARMUP" \
    --label "cluster nodes=$n" --json "$OUT/fanout-n$n.json" --svg "$OUT/fanout-n$n.svg" \
    || echo "fanout with $n node(s) failed" >&2
  stop_nodes
done

summarise scale
