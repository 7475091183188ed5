#!/usr/bin/env bash
# The randomized fault test (tests/faults.rs) for longer, with fresh seeds: hubs killed and
# drained, clients moving with Last-Event-ID, the broker killed and restarted.
#   bash scripts/faults.sh [SECONDS_PER_RUN] [RUNS] [TEST_FILTER]
#   bash scripts/faults.sh 120 5 redis_session
# Each run prints its seed; SSE_FAULT_SEED=<seed> replays its draws.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-120}
runs=${2:-3}
filter=${3:-}
eval "$(bash scripts/brokers.sh)"
cargo build --workspace --all-features --test faults --bin sse-fanout
failed=0
for run in $(seq "$runs"); do
  seed=$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')
  echo "== run $run of $runs: seed $seed, ${seconds}s of faults per test"
  if ! SSE_FAULT_SEED=$seed SSE_FAULT_SECONDS=$seconds cargo test --workspace --all-features --test faults \
      ${filter:+"$filter"} -- --nocapture --include-ignored 2>&1 | grep -E '^(faults:|  s[0-9]|test |test result)'; then
    failed=1
  fi
done
exit "$failed"
