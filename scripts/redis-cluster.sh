#!/usr/bin/env bash
# A Redis Cluster of this project's own for benchmarks and trying things out: three masters with a
# replica each (six `redis-server` processes in cluster mode, nothing saved to disk) on loopback
# ports BASE..BASE+5 (default 7101), in a directory under target/. Prints the URL list a hub takes
# (`--backend-url`). The processes are stopped by the pids this script recorded, never by name.
#
#   bash scripts/redis-cluster.sh start [BASE]   # prints redis://127.0.0.1:7101,...
#   bash scripts/redis-cluster.sh stop [BASE]
set -euo pipefail
cd "$(dirname "$0")/.."

action=${1:-start}
base=${2:-7101}
dir=target/redis-cluster-$base
ports=()
for i in 0 1 2 3 4 5; do ports+=($((base + i))); done

stop() {
  for pidfile in "$dir"/*.pid; do
    [ -e "$pidfile" ] || continue
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  done
}

case $action in
  stop)
    stop
    exit 0
    ;;
  start) ;;
  *)
    echo "usage: $0 start|stop [BASE]" >&2
    exit 2
    ;;
esac

stop
rm -rf "$dir"
mkdir -p "$dir"
for port in "${ports[@]}"; do
  mkdir -p "$dir/$port"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
    --cluster-enabled yes --cluster-node-timeout 1000 --cluster-config-file nodes.conf \
    --dir "$dir/$port" --logfile "$PWD/$dir/$port.log" --daemonize yes \
    --pidfile "$PWD/$dir/$port.pid" >/dev/null
done
for port in "${ports[@]}"; do
  for _ in $(seq 100); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && break
    sleep 0.05
  done
done
nodes=()
for port in "${ports[@]}"; do nodes+=("127.0.0.1:$port"); done
redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$dir/create.log"
for port in "${ports[@]}"; do
  for _ in $(seq 200); do
    redis-cli -p "$port" cluster info | grep -q cluster_state:ok && break
    sleep 0.05
  done
done
urls=()
for port in "${ports[@]}"; do urls+=("redis://127.0.0.1:$port"); done
(IFS=,; echo "${urls[*]}")
