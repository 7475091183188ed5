#!/usr/bin/env bash
# Stream opens by how the session is found (BENCHMARKS.md, "Sessions from the application"):
# one hub, new streams opened at a fixed rate, each named by a JWT (`--jwt-secret`), by an
# application's cookie the auth callout asks about (one cookie for all: answered from the cache
# after the first; a cookie each: a callout each), or by `?sessionId=` (development mode, the
# floor). Reports the open latency (connect to `200`) p50/p99, the hub's CPU per open, and the
# callouts the application answered. The application is `loadgen auth-app`, answering at once,
# so the figures are the hub's own cost. Keeps the JSON lines in target/bench/auth.jsonl and
# prints a table. About 2 minutes after the build.
#
#   bash scripts/bench-auth.sh               # builds what is missing first
#   BENCH_QUICK=1 bash scripts/bench-auth.sh # small runs, to check the script (~20 s)
set -euo pipefail
cd "$(dirname "$0")/.."

out=target/bench
bin=target/release
mkdir -p "$out"
results=$out/auth.jsonl
: > "$results"
cargo build --release --workspace --all-features --bins --quiet

if [ -n "${BENCH_QUICK:-}" ]; then
  rate=200 seconds=1 repeat=1
else
  rate=1000 seconds=5 repeat=3
fi
secret=bench-auth-secret-bench-auth-secret

. scripts/bench-lib.sh
"$bin/loadgen" auth-app --listen 127.0.0.1:8097 > "$out/auth-app.log" 2>&1 &
app=$!
trap 'stop; kill "$app" 2>/dev/null || true' EXIT

opens() { # label credential hub-flags...
  local label=$1 credential=$2
  shift 2
  for _ in $(seq "$repeat"); do
    start hub 8090 "$bin/sse-fanout" --listen 127.0.0.1:8090 "$@"
    run opens --url http://127.0.0.1:8090 --rate "$rate" --seconds "$seconds" \
      --credential "$credential" --jwt-secret "$secret" \
      --app-calls http://127.0.0.1:8097/calls --server-pid "$pid" --label "$label"
    stop
  done
}
callout=(--auth-url http://127.0.0.1:8097/auth)
opens "dev" dev
opens "jwt" jwt --jwt-secret "$secret"
opens "callout, cache hit" cookie-shared "${callout[@]}"
opens "callout, cache miss" cookie-each "${callout[@]}"

echo >&2
python3 - "$results" <<'PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
print("| session from | opens | failed | open p50 ms | open p99 ms | hub CPU µs per open | callouts |")
print("|---|---|---|---|---|---|---|")
for label in dict.fromkeys(r["server"] for r in runs):
    mine = [r for r in runs if r["server"] == label]
    med = lambda f: statistics.median(f(r) for r in mine)
    print(f"| {label} | {sum(r['opened'] for r in mine)} | {sum(r['failed'] for r in mine)} "
          f"| {med(lambda r: r['open_ms']['p50']):.2f} | {med(lambda r: r['open_ms']['p99']):.2f} "
          f"| {med(lambda r: r['server_cpu_us_per_open']):.0f} "
          f"| {sum(r['callouts'] or 0 for r in mine)} |")
PY
