#!/usr/bin/env bash
# Routed delivery (BENCHMARKS.md, "Routed delivery"): on each broker, hubs with 3 000 sessions
# (one stream each, spread evenly), 30 000 targeted events at 3 000/s published by a hub inside
# the load tool; what every instance received and the CPU seconds it spent (/proc), with 3 hubs
# in broadcast and in session routing and with 1 hub; then stream opens of new sessions at
# 1 000/s, time to the 200, in both routings. The brokers' history is off here (what is measured
# is delivery; it leaves nothing durable behind). About 6 minutes after the build.
#
#   bash scripts/bench-routing.sh               # every broker the machine has
#   BENCH_QUICK=1 bash scripts/bench-routing.sh # small runs, to check the script (~1 minute)
set -euo pipefail
cd "$(dirname "$0")/.."

out=target/bench
bin=target/release
mkdir -p "$out"
results=$out/routing.jsonl
: > "$results"
cargo build --release --workspace --all-features --bins --quiet
eval "$(bash scripts/brokers.sh 2>/dev/null)"

if [ -n "${BENCH_QUICK:-}" ]; then
  sessions=300 rate=1000 seconds=2 open_rate=200 open_seconds=1
else
  sessions=3000 rate=3000 seconds=10 open_rate=1000 open_seconds=5
fi

. scripts/bench-lib.sh
trap stop_hubs EXIT
start_hubs() { # count backend url channel routing
  local count=$1 backend=$2 url=$3 channel=$4 routing=$5
  for k in $(seq 0 $((count - 1))); do
    start_hub $((8100 + k)) "$out/routing-hub$k.log" --backend "$backend" --backend-url "$url" \
      --channel "$channel" --routing "$routing" --broker-history off
  done
}

for backend in redis nats rabbit; do
  case $backend in
    redis) url=${SSE_TEST_REDIS_URL:-} ;;
    nats) url=${SSE_TEST_NATS_URL:-} ;;
    rabbit) url=${SSE_TEST_RABBIT_URL:-} ;;
  esac
  if [ -z "$url" ]; then
    echo "bench: BROKER MISSING: no $backend; its rows are left out" >&2
    continue
  fi
  # The broker's process, when it listens on this machine (its CPU time is read, nothing else).
  port=${url##*:}; port=${port%%/*}
  broker_pid=$(ss -ltnpH "sport = :$port" 2>/dev/null | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -1)
  for run in "3 broadcast" "3 session" "1 broadcast" "1 session"; do
    set -- $run
    channel=bench.routing.$(date +%s%N)
    start_hubs "$1" "$backend" "$url" "$channel" "$2"
    echo "bench: routing $backend, $1 hub(s), $2" >&2
    "$bin/loadgen" routing --backend "$backend" --backend-url "$url" --channel "$channel" \
      --history off --urls "$(join "${urls[@]}")" --pids "$(join "${pids[@]}")" \
      --sessions "$sessions" --rate "$rate" --seconds "$seconds" --routing "$2" \
      ${broker_pid:+--broker-pid "$broker_pid"} \
      | tee -a "$results"
    stop_hubs
  done
  # What subscribing 10 000 routes costs the backend (RabbitMQ: with 1 024 partitions too).
  subscribe() {
    "$bin/loadgen" route-subscribe --backend "$backend" --backend-url "$url" \
      --channel "bench.subscribe.$(date +%s%N)" --history off --sessions 10000 "$@" \
      | tee -a "$results"
  }
  subscribe
  [ "$backend" != rabbit ] || subscribe --route-partitions 1024
  for routing in broadcast session; do
    channel=bench.opens.$(date +%s%N)
    start_hubs 1 "$backend" "$url" "$channel" "$routing"
    echo "bench: opens $backend, $routing" >&2
    "$bin/loadgen" opens --url "${urls[0]}" --rate "$open_rate" --seconds "$open_seconds" \
      --label "$backend $routing" | tee -a "$results"
    stop_hubs
  done
done
