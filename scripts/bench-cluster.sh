#!/usr/bin/env bash
# Routed delivery on a Redis Cluster (BENCHMARKS.md, "Routed delivery on a Redis Cluster"): the
# load of "Routed delivery" (3 hubs in session routing, 3 000 sessions with one stream each,
# targeted events published by a hub inside the load tool) on a Redis Cluster of the script's own
# (three masters with a replica each, scripts/redis-cluster.sh) against one Redis server of its
# own, with the broker's history off and on, at 3 000 and 10 000 events a second. Per run: what
# was delivered and lost, latency, each hub's CPU and each Redis process's CPU (masters and
# replicas apart). Then the publish latency of one publisher with and without waiting for a
# replica (`loadgen publish-cost`). About 5 minutes after the build.
#
#   bash scripts/bench-cluster.sh
#   BENCH_QUICK=1 bash scripts/bench-cluster.sh   # small runs, to check the script (~1 minute)
set -euo pipefail
cd "$(dirname "$0")/.."

out=target/bench
bin=target/release
mkdir -p "$out"
results=$out/cluster.jsonl
: > "$results"
cargo build --release --workspace --all-features --bins --quiet

if [ -n "${BENCH_QUICK:-}" ]; then
  sessions=300 rates="1000" seconds=2
else
  sessions=3000 rates="3000 10000" seconds=10
fi
single_port=6393
cluster_base=7101

. scripts/bench-lib.sh
single_pid=
cleanup() {
  stop_hubs
  [ -z "$single_pid" ] || kill "$single_pid" 2>/dev/null || true
  bash scripts/redis-cluster.sh stop "$cluster_base"
}
trap cleanup EXIT
start_hubs() { # url channel history
  for k in 0 1 2; do
    start_hub $((8100 + k)) "$out/cluster-hub$k.log" --backend redis --backend-url "$1" \
      --channel "$2" --routing session --broker-history "$3"
  done
}

redis-server --bind 127.0.0.1 --port "$single_port" --save "" --appendonly no \
  > "$out/cluster-single-redis.log" 2>&1 &
single_pid=$!
for _ in $(seq 100); do redis-cli -p "$single_port" ping > /dev/null 2>&1 && break; sleep 0.05; done
cluster_url=$(bash scripts/redis-cluster.sh start "$cluster_base")
cluster_pids=() cluster_roles=()
for i in 0 1 2 3 4 5; do
  port=$((cluster_base + i))
  cluster_pids+=("$(cat "target/redis-cluster-$cluster_base/$port.pid")")
  cluster_roles+=("$port:$(redis-cli -p "$port" role | head -1)")
done
echo "{\"cluster_nodes\":\"$(join "${cluster_roles[@]}")\"}" >> "$results"

for target in single cluster; do
  case $target in
    single) url=redis://127.0.0.1:$single_port broker_pids=$single_pid ;;
    cluster) url=$cluster_url broker_pids=$(join "${cluster_pids[@]}") ;;
  esac
  for history in off on; do
    for rate in $rates; do
      channel=bench.cluster.$(date +%s%N)
      start_hubs "$url" "$channel" "$history"
      echo "bench: routed delivery, redis $target, history $history, $rate/s" >&2
      # Which master holds the channel's slot (the hash tag is the channel).
      slot=$(redis-cli -p "$cluster_base" cluster keyslot "$channel")
      "$bin/loadgen" routing --backend redis --backend-url "$url" --channel "$channel" \
        --history "$history" --urls "$(join "${urls[@]}")" --pids "$(join "${pids[@]}")" \
        --sessions "$sessions" --rate "$rate" --seconds "$seconds" --routing session \
        --broker-pid "$broker_pids" --label "redis $target" \
        | sed "s/^{/{\"target\":\"$target\",\"slot\":$slot,/" | tee -a "$results"
      stop_hubs
    done
  done
done

# One publisher, one publish at a time, with history: one server, the cluster, the cluster with
# a replica's acknowledgement awaited.
for run in "single" "cluster" "cluster wait-replicas=1"; do
  set -- $run
  case $1 in
    single) url=redis://127.0.0.1:$single_port ;;
    cluster) url=$cluster_url ;;
  esac
  echo "bench: publish cost, redis $run" >&2
  "$bin/loadgen" publish-cost --backend redis --backend-url "$url" \
    --channel "bench.cost.$(date +%s%N)" ${2:+--backend-option "$2"} \
    | sed "s/^{/{\"target\":\"$run\",/" | tee -a "$results"
done
