#!/usr/bin/env bash
# Reproduces the table of BENCHMARKS.md: sse-fanout, the hand-written axum baseline and the floor
# server, driven by the same load tool in the same run, then sse-fanout across two instances on
# each broker against the broker's own round trip. Prints the table; keeps every run's JSON line
# in target/bench/results.jsonl and the servers' logs beside it. About 6 minutes after the build.
#
#   bash scripts/bench.sh                 # builds what is missing first
#   BENCH_QUICK=1 bash scripts/bench.sh   # smaller runs, to check the script itself (~1 minute)
set -euo pipefail
cd "$(dirname "$0")/.."

out=target/bench
bin=target/release
mkdir -p "$out"
results=$out/results.jsonl
: > "$results"

cargo build --release --workspace --all-features --bins --quiet
eval "$(bash scripts/brokers.sh 2>/dev/null)"

if [ -n "${BENCH_QUICK:-}" ]; then
  idle=2000 broadcast=1000 events=5 targeted=200 seconds=1 rates="10000" cross=20 repeat=1
else
  idle=19000 broadcast=10000 events=30 targeted=1000 seconds=5 rates="10000 100000" cross=100
  # The noisiest figures (a broadcast's slowest delivery, the targeted tail) are run this many
  # times; the table shows the median run.
  repeat=3
fi

. scripts/bench-lib.sh

hub=("$bin/sse-fanout" --listen 127.0.0.1:8090 --emitter-timeout 0)
baseline=("$bin/baseline" --listen 127.0.0.1:8091)
floor=("$bin/floor-server" --listen 127.0.0.1:8094)

# 1. Idle capacity, and 2. broadcast: each server in turn.
for server in sse-fanout baseline floor; do
  case $server in
    sse-fanout) cmd=("${hub[@]}") port=8090 ;;
    baseline) cmd=("${baseline[@]}") port=8091 ;;
    floor) cmd=("${floor[@]}") port=8094 ;;
  esac
  start "$server" "$port" "${cmd[@]}"
  run idle --url "http://127.0.0.1:$port" --streams "$idle" --sessions 1000 \
    --server-pid "$pid" --label "$server"
  stop
  for _ in $(seq "$repeat"); do
    start "$server" "$port" "${cmd[@]}"
    run broadcast --url "http://127.0.0.1:$port" --streams "$broadcast" --sessions 1000 \
      --events "$events" --label "$server"
    stop
  done
done

# 3. Targeted, published inside the server process, and the HTTP publish path on its own.
for rate in $rates; do
  for _ in $(seq "$repeat"); do
    start sse-fanout-inproc 8092 "$bin/fanout-server" --listen 127.0.0.1:8092 --control 127.0.0.1:8093
    run targeted --url http://127.0.0.1:8092 --pump-url http://127.0.0.1:8093 \
      --streams "$targeted" --rate "$rate" --seconds "$seconds" --label sse-fanout
    stop
    start baseline 8091 "${baseline[@]}"
    run targeted --url http://127.0.0.1:8091 --streams "$targeted" --rate "$rate" \
      --seconds "$seconds" --label baseline
    stop
  done
done
start sse-fanout 8090 "${hub[@]}"
run publish --url http://127.0.0.1:8090 --streams "$targeted" --seconds "$seconds" --label sse-fanout
stop
start baseline 8091 "${baseline[@]}"
run publish --url http://127.0.0.1:8091 --streams "$targeted" --seconds "$seconds" --label baseline
stop

# 4. Across instances: A is a hub inside the load tool, B the hub binary; then the broker's own
#    round trip with its plain client, at the same rate. Channels (topics) new to each run: Tansu,
#    the Kafka-API broker here, keeps topics in memory and fetches from a long one more slowly.
channel=bench.sse.$(date +%s)
for backend in redis nats rabbit kafka; do
  case $backend in
    redis) url=${SSE_TEST_REDIS_URL:-} ;;
    nats) url=${SSE_TEST_NATS_URL:-} ;;
    rabbit) url=${SSE_TEST_RABBIT_URL:-} ;;
    kafka) url=${SSE_TEST_KAFKA_BROKERS:-} ;;
  esac
  if [ -z "$url" ]; then
    echo "bench: BROKER MISSING: no $backend; its row is left out" >&2
    continue
  fi
  extra=()
  [ "$backend" = kafka ] && extra=(--create-topic)
  start "sse-fanout-$backend" 8095 "$bin/sse-fanout" --listen 127.0.0.1:8095 --emitter-timeout 0 \
    --backend "$backend" --backend-url "$url" --channel "$channel" "${extra[@]}"
  run cross --backend "$backend" --backend-url "$url" --channel "$channel" \
    --url http://127.0.0.1:8095 --streams "$cross" --rate 1000 --seconds "$seconds" --label sse-fanout
  stop
  run broker-rtt --backend "$backend" --backend-url "$url" --channel "$channel" --rate 1000 \
    --seconds "$seconds"
done

echo >&2
"$bin/loadgen" report "$results"
