#!/usr/bin/env bash
# The cluster-wide history figures of BENCHMARKS.md: on each broker, 10 000 streams reconnecting at
# once to a freshly started instance with a Last-Event-ID 100 events behind (which that instance
# knows only from the broker's history), and what keeping the history adds to publishing. Keeps
# every run's JSON line in target/bench/history.jsonl. About 3 minutes after the build.
#
#   bash scripts/bench-history.sh
#   BENCH_QUICK=1 bash scripts/bench-history.sh   # 1000 streams, shorter runs
set -euo pipefail
cd "$(dirname "$0")/.."

out=target/bench
bin=target/release
mkdir -p "$out"
results=$out/history.jsonl
: > "$results"

cargo build --release --workspace --all-features --bins --quiet
eval "$(bash scripts/brokers.sh 2>/dev/null)"

if [ -n "${BENCH_QUICK:-}" ]; then
  streams=1000 preload=900 seconds=1
else
  streams=10000 preload=9899 seconds=5
fi

run() {
  echo "bench: loadgen $*" >&2
  "$bin/loadgen" "$@" | tee -a "$results"
}

stamp=$(date +%s)
for backend in redis nats rabbit kafka; do
  case $backend in
    redis) url=${SSE_TEST_REDIS_URL:-} ;;
    nats) url=${SSE_TEST_NATS_URL:-} ;;
    rabbit) url=${SSE_TEST_RABBIT_URL:-} ;;
    kafka) url=${SSE_TEST_KAFKA_BROKERS:-} ;;
  esac
  if [ -z "$url" ]; then
    echo "bench: BROKER MISSING: no $backend; its rows are left out" >&2
    continue
  fi
  # A full history (preload + 101 events; the default keeps 10 000) read by the fresh instance.
  # Nisshi, the Kafka-API broker here, fetches a long topic slowly (see BENCHMARKS.md): Kafka's
  # run reads a history of 1 001 events.
  fill=$preload
  [ "$backend" = kafka ] && fill=900
  run resume --backend "$backend" --backend-url "$url" --channel "bench.resume.$stamp" \
    --url http://127.0.0.1:8096 --streams "$streams" --behind 100 --preload "$fill" \
    --hub-bin "$bin/sse-fanout"
  # The same storm in session routing: the 100 events are one session's, and its 10 000
  # streams resume on a fresh instance from one read of the broker's history (Kafka: refused).
  if [ "$backend" != kafka ]; then
    run resume --backend "$backend" --backend-url "$url" --channel "bench.resume-routed.$stamp" \
      --url http://127.0.0.1:8096 --streams "$streams" --behind 100 --preload "$fill" \
      --hub-bin "$bin/sse-fanout" --routing session
  fi
  for history in on off; do
    run publish-cost --backend "$backend" --backend-url "$url" \
      --channel "bench.cost.$history.$stamp" --rate 1000 --seconds "$seconds" --history "$history"
  done
done
