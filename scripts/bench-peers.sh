#!/usr/bin/env bash
# sse-fanout against the peers users would pick instead (BENCHMARKS.md, "Against nchan and
# Pushpin"): nchan (the nginx module) and Pushpin (the GRIP proxy, with a minimal origin), one
# instance each, with the configurations in bench/peers/, measured by the same load tool in one
# run: idle streams (memory as PSS summed over the server's process tree, since nginx and
# Pushpin run several processes), the connect rate, a broadcast to 10 000 streams, and targeted
# HTTP publishing over keep-alive connections (requests/s, delivery latency, loss). Each
# scenario starts its server afresh. Keeps the JSON lines in target/bench/peers.jsonl and prints
# a table. About 5 minutes after the build; scripts/setup.sh installs nchan and Pushpin.
#
#   bash scripts/bench-peers.sh               # builds what is missing first
#   BENCH_QUICK=1 bash scripts/bench-peers.sh # small runs, to check the script (~1 minute)
set -euo pipefail
cd "$(dirname "$0")/.."

out=target/bench
bin=target/release
run_dir=$out/peers
results=$out/peers.jsonl
mkdir -p "$run_dir"
: > "$results"
for need in nginx pushpin condure; do
  command -v "$need" >/dev/null || { echo "bench-peers: $need is missing: bash scripts/setup.sh" >&2; exit 1; }
done
[ -f /usr/lib/nginx/modules/ngx_nchan_module.so ] \
  || { echo "bench-peers: nchan is missing: bash scripts/setup.sh" >&2; exit 1; }
cargo build --release -p sse-fanout --all-features --bin sse-fanout --quiet
cargo build --release -p sse-fanout-bench --bin loadgen --bin grip-origin --quiet

if [ -n "${BENCH_QUICK:-}" ]; then
  idle=2000 broadcast=1000 events=5 targeted=200 seconds=1 rates="10000 20000"
else
  idle=19000 broadcast=10000 events=30 targeted=1000 seconds=5 rates="10000 20000 40000 80000"
fi

. scripts/bench-lib.sh
origin=
stop_all() {
  stop
  if [ -n "$origin" ]; then kill "$origin" 2>/dev/null || true; wait "$origin" 2>/dev/null || true; origin=; fi
}
trap stop_all EXIT

# Starts server $1; sets `url`, `pid` (the process whose tree is measured) and `publishing`
# (the load tool's publish form).
serve() {
  case $1 in
    sse-fanout)
      start hub 8090 "$bin/sse-fanout" --listen 127.0.0.1:8090 --emitter-timeout 0
      url=http://127.0.0.1:8090 publishing=() ;;
    nchan)
      rm -rf "$run_dir/nchan" && mkdir -p "$run_dir/nchan/tmp"
      start nchan 8095 nginx -p "$PWD/$run_dir/nchan" -c "$PWD/bench/peers/nchan.conf"
      url=http://127.0.0.1:8095 publishing=(--form nchan) ;;
    pushpin)
      rm -rf "$run_dir/pushpin" && mkdir -p "$run_dir/pushpin"
      sed "s|@RUN@|$PWD/$run_dir/pushpin|g" bench/peers/pushpin.conf > "$run_dir/pushpin/pushpin.conf"
      cp bench/peers/pushpin.routes "$run_dir/pushpin/"
      start grip-origin 8097 "$bin/grip-origin" --listen 127.0.0.1:8097
      origin=$pid pid=
      start pushpin 8096 pushpin --config "$PWD/$run_dir/pushpin/pushpin.conf"
      for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/5561) 2>/dev/null && break; sleep 0.1; done
      url=http://127.0.0.1:8096 publishing=(--form pushpin --publish-url http://127.0.0.1:5561) ;;
  esac
}

for server in sse-fanout nchan pushpin; do
  serve "$server"
  run idle --url "$url" --streams "$idle" --sessions 1000 --server-pid "$pid" --label "$server"
  stop_all
  serve "$server"
  run broadcast --url "$url" --streams "$broadcast" --sessions 1000 --events "$events" \
    --server-pid "$pid" --label "$server" "${publishing[@]}"
  stop_all
  # Targeted at a fixed rate, doubling until a rate is not sustained: fewer requests than
  # asked, or events lost.
  for rate in $rates; do
    serve "$server"
    line=$(run publish --url "$url" --streams "$targeted" --seconds "$seconds" --connections 16 \
      --rate "$rate" --label "$server" "${publishing[@]}")
    stop_all
    sustained=$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(int(r["lost"] == 0 and r["refused"] == 0 and r["requests_per_sec"] >= 0.95 * r["rate"]))' "$line")
    [ "$sustained" = 1 ] || break
  done
  serve "$server"
  run publish --url "$url" --streams "$targeted" --seconds "$seconds" --connections 16 \
    --label "$server" "${publishing[@]}"
  stop_all
done

echo >&2
python3 - "$results" <<'PY'
import json, sys
runs = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
def get(scenario, server, *path, rate=0):
    for run in runs:
        if run.get("scenario") == scenario and run.get("server") == server \
                and run.get("rate", 0) == rate:
            value = run
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            return value
rows = [
    ("idle, KiB per stream (PSS, process tree)", "idle", ("pss_kib_per_stream",)),
    ("connects/s", "idle", ("connects_per_sec",)),
    ("broadcast to all, p99 ms", "broadcast", ("time_until_all_ms", "p99")),
    ("broadcast, lost", "broadcast", ("lost",)),
    ("broadcast, server CPU µs per delivery", "broadcast", ("server_cpu_us_per_delivery",)),
    ("targeted 10 000/s over HTTP, delivery p50 ms", "publish", ("delivery_ms", "p50"), 10000),
    ("targeted 10 000/s over HTTP, delivery p99 ms", "publish", ("delivery_ms", "p99"), 10000),
    ("targeted 10 000/s over HTTP, lost", "publish", ("lost",), 10000),
    ("HTTP publish, requests/s", "publish", ("requests_per_sec",)),
    ("HTTP publish, request p99 ms", "publish", ("request_ms", "p99")),
    ("HTTP publish, delivery p99 ms", "publish", ("delivery_ms", "p99")),
    ("HTTP publish, lost", "publish", ("lost",)),
]
servers = ["sse-fanout", "nchan", "pushpin"]
print("| figure | " + " | ".join(servers) + " |")
print("|---" * (len(servers) + 1) + "|")
for name, scenario, path, *rate in rows:
    cells = [get(scenario, s, *path, rate=rate[0] if rate else 0) for s in servers]
    print(f"| {name} | " + " | ".join("–" if c is None else f"{c:g}" for c in cells) + " |")
def sustained(server):
    best = None
    for run in runs:
        if run.get("scenario") == "publish" and run.get("server") == server and run.get("rate") \
                and run["lost"] == 0 and run["refused"] == 0 \
                and run["requests_per_sec"] >= 0.95 * run["rate"]:
            best = max(best or 0, run["rate"])
    return best
print("| targeted over HTTP, highest rate sustained (of the doubling steps) | "
      + " | ".join("–" if sustained(s) is None else f"{sustained(s):g}" for s in servers) + " |")
PY
