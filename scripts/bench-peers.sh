#!/usr/bin/env bash
# sse-fanout against the peers users would pick instead (BENCHMARKS.md, "Against nchan and
# Pushpin"): nchan (the nginx module) and Pushpin (the GRIP proxy, with a minimal origin), with
# the configurations in bench/peers/, measured by the same load tool in one run.
#
# One instance of each: idle streams (memory as PSS summed over the server's process tree, since
# nginx and Pushpin run several processes), the connect rate, a broadcast to 10 000 streams, and
# targeted HTTP publishing over keep-alive connections (requests/s, delivery latency, loss).
#
# Two instances of each, the streams shared evenly, publishing to the first: two hubs on one
# Redis (session routing, history on), two nginx with nchan on one Redis (nchan's distributed
# mode), two Pushpin instances (they share nothing: every publish goes to both, as a GRIP
# publisher does). A broadcast to 10 000 streams and targeted HTTP publishing, where half the
# events cross from one instance to the other.
#
# Each scenario starts its servers (and Redis) afresh; the whole is run BENCH_RUNS times (3) and
# the table gives the median of each figure. The publishing runs read the CPU time and the
# context switches of each instance (its process tree) and of Redis. Keeps the JSON lines in target/bench/peers.jsonl.
# About 8 minutes per run after the build; scripts/setup.sh installs nchan and Pushpin.
#
#   bash scripts/bench-peers.sh               # builds what is missing first
#   BENCH_PART=two bash scripts/bench-peers.sh  # only the two-instance part (`one`: the other)
#   BENCH_QUICK=1 bash scripts/bench-peers.sh # small runs, once, to check the script (~2 minutes)
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
  idle=2000 broadcast=1000 events=5 targeted=200 seconds=1 rates="10000 20000" runs=1
else
  idle=19000 broadcast=10000 events=30 targeted=1000 seconds=5 rates="10000 20000 40000 80000"
  runs=${BENCH_RUNS:-3}
fi
redis_port=6391

. scripts/bench-lib.sh
# Every process a scenario started besides the measured one (`pid`): origins, second instances,
# Redis. `cpu_pids`: the processes whose CPU time the publishing runs read (instances, Redis).
others=()
cpu_pids=()
keep() { others+=("$pid"); pid=; }
stop_all() {
  stop
  for other in "${others[@]}"; do kill "$other" 2>/dev/null || true; wait "$other" 2>/dev/null || true; done
  others=() cpu_pids=()
}
trap stop_all EXIT

# A fresh Redis of the benchmark's own (nothing on disk), for the two-instance scenarios.
start_redis() {
  start redis "$redis_port" redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no
  keep
}

# nchan instance $1 on port $2; with $3, on the benchmark's Redis.
start_nchan() {
  local dir="$run_dir/nchan-$1" upstream= pass=
  if [ -n "${3:-}" ]; then
    upstream="upstream bench_redis { nchan_redis_server redis://127.0.0.1:$redis_port; }"
    pass="nchan_redis_pass bench_redis;"
  fi
  rm -rf "$dir" && mkdir -p "$dir/tmp"
  sed -e "/^#/!s|@PORT@|$2|" -e "/^#/!s|@REDIS_UPSTREAM@|$upstream|" -e "/^#/!s|@REDIS_PASS@|$pass|" \
    bench/peers/nchan.conf > "$dir/nginx.conf"
  start "nchan-$1" "$2" nginx -p "$PWD/$dir" -c "$PWD/$dir/nginx.conf"
}

# Pushpin instance $1 with port offset $2 (streams on 8096 + $2, publishing on 5561 + $2).
start_pushpin() {
  local dir="$run_dir/pushpin-$1"
  rm -rf "$dir" && mkdir -p "$dir"
  sed -e "s|@RUN@|$PWD/$dir|g" -e "/^#/!s|@OFFSET@|$2|" -e "/^#/!s|@HTTP_PORT@|$((8096 + $2))|" \
    bench/peers/pushpin.conf > "$dir/pushpin.conf"
  cp bench/peers/pushpin.routes "$dir/"
  start "pushpin-$1" $((8096 + $2)) pushpin --config "$PWD/$dir/pushpin.conf"
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$((5561 + $2))") 2>/dev/null && break; sleep 0.1; done
}

# Starts server $1; sets `url`, `pid` (the process whose tree is measured) and `publishing`
# (the load tool's publish form).
serve() {
  case $1 in
    sse-fanout)
      start hub 8090 "$bin/sse-fanout" --listen 127.0.0.1:8090 --emitter-timeout 0
      cpu_pids=("$pid") url=http://127.0.0.1:8090 publishing=() ;;
    nchan)
      start_nchan a 8095
      cpu_pids=("$pid") url=http://127.0.0.1:8095 publishing=(--form nchan) ;;
    pushpin)
      start grip-origin 8097 "$bin/grip-origin" --listen 127.0.0.1:8097
      keep
      start_pushpin a 0
      cpu_pids=("$pid") url=http://127.0.0.1:8096
      publishing=(--form pushpin --publish-url http://127.0.0.1:5561) ;;
  esac
}

# Starts two instances of server $1 (and their Redis); sets `url` (both), `publishing` and
# `cpu_pids` (the first instance, the second, Redis).
serve_two() {
  local redis_pid=
  case $1 in
    sse-fanout)
      start_redis; redis_pid=${others[-1]}
      for port in 8090 8091; do
        start "hub-$port" "$port" "$bin/sse-fanout" --listen "127.0.0.1:$port" --emitter-timeout 0 \
          --backend redis --backend-url "redis://127.0.0.1:$redis_port" --routing session
        cpu_pids+=("$pid"); keep
      done
      url=http://127.0.0.1:8090,http://127.0.0.1:8091 publishing=() ;;
    nchan)
      start_redis; redis_pid=${others[-1]}
      start_nchan a 8095 redis; cpu_pids+=("$pid"); keep
      start_nchan b 8098 redis; cpu_pids+=("$pid"); keep
      url=http://127.0.0.1:8095,http://127.0.0.1:8098 publishing=(--form nchan) ;;
    pushpin)
      start grip-origin 8097 "$bin/grip-origin" --listen 127.0.0.1:8097
      keep
      start_pushpin a 0; cpu_pids+=("$pid"); keep
      start_pushpin b 10; cpu_pids+=("$pid"); keep
      url=http://127.0.0.1:8096,http://127.0.0.1:8106
      publishing=(--form pushpin --publish-url http://127.0.0.1:5561,http://127.0.0.1:5571) ;;
  esac
  [ -z "$redis_pid" ] || cpu_pids+=("$redis_pid")
}

# Targeted publishing at fixed rates, doubling until a rate is not sustained (fewer requests
# than asked, or events lost), then as fast as answered; servers started by $1 for server $2,
# labelled $3.
publishing_runs() {
  local starter=$1 server=$2 label=$3
  for rate in $rates; do
    $starter "$server"
    line=$(run publish --url "$url" --streams "$targeted" --seconds "$seconds" --connections 16 \
      --rate "$rate" --label "$label" --server-pid "$(IFS=,; echo "${cpu_pids[*]}")" "${publishing[@]}")
    stop_all
    sustained=$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(int(r["lost"] == 0 and r["refused"] == 0 and r["requests_per_sec"] >= 0.95 * r["rate"]))' "$line")
    [ "$sustained" = 1 ] || break
  done
  $starter "$server"
  run publish --url "$url" --streams "$targeted" --seconds "$seconds" --connections 16 \
    --label "$label" --server-pid "$(IFS=,; echo "${cpu_pids[*]}")" "${publishing[@]}"
  stop_all
}

for round in $(seq "$runs"); do
  echo "bench-peers: run $round of $runs" >&2
  for server in sse-fanout nchan pushpin; do
    [ "${BENCH_PART:-one}" = one ] || break
    serve "$server"
    run idle --url "$url" --streams "$idle" --sessions 1000 --server-pid "$pid" --label "$server"
    stop_all
    serve "$server"
    run broadcast --url "$url" --streams "$broadcast" --sessions 1000 --events "$events" \
      --server-pid "$pid" --label "$server" "${publishing[@]}"
    stop_all
    publishing_runs serve "$server" "$server"
  done
  for server in sse-fanout nchan pushpin; do
    [ "${BENCH_PART:-two}" = two ] || break
    serve_two "$server"
    run broadcast --url "$url" --streams "$broadcast" --sessions 1000 --events "$events" \
      --label "$server x2" "${publishing[@]}"
    stop_all
    publishing_runs serve_two "$server" "$server x2"
  done
done

echo >&2
python3 - "$results" <<'PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
def values(scenario, server, *path, rate=0):
    found = []
    for run in runs:
        if run.get("scenario") == scenario and run.get("server") == server \
                and run.get("rate", 0) == rate:
            value = run
            for key in path:
                if isinstance(key, int):
                    value = value[key] if isinstance(value, list) and key < len(value) else None
                else:
                    value = value.get(key) if isinstance(value, dict) else None
            if value is not None:
                found.append(value)
    return found
def median(found):
    return statistics.median(found) if found else None
def sustained(server):
    # The highest rate each run sustained (its steps begin at the lowest rate), then their
    # median; 0 when not even the lowest was.
    steps = [r for r in runs if r.get("scenario") == "publish" and r.get("server") == server
             and r.get("rate")]
    if not steps:
        return None
    lowest = min(r["rate"] for r in steps)
    best = []
    for r in steps:
        if r["rate"] == lowest:
            best.append(0)
        if r["lost"] == 0 and r["refused"] == 0 and r["requests_per_sec"] >= 0.95 * r["rate"]:
            best[-1] = max(best[-1], r["rate"])
    return median(best)
def rate_cell(rate):
    return "–" if rate is None else "none" if rate == 0 else f"{rate:g}"
def table(title, servers, rows):
    print(f"{title} (median of {max(1, len(values('broadcast', servers[0])))} runs)")
    print("| figure | " + " | ".join(servers) + " |")
    print("|---" * (len(servers) + 1) + "|")
    for name, scenario, path, *rate in rows:
        cells = [median(values(scenario, s, *path, rate=rate[0] if rate else 0)) for s in servers]
        print(f"| {name} | " + " | ".join("–" if c is None else f"{c:g}" for c in cells) + " |")
    print("| targeted over HTTP, highest rate sustained (of the doubling steps) | "
          + " | ".join(rate_cell(sustained(s)) for s in servers) + " |")
    print()
publishing = [
    ("targeted 10 000/s over HTTP, delivery p50 ms", "publish", ("delivery_ms", "p50"), 10000),
    ("targeted 10 000/s over HTTP, delivery p99 ms", "publish", ("delivery_ms", "p99"), 10000),
    ("targeted 10 000/s over HTTP, lost", "publish", ("lost",), 10000),
    ("HTTP publish, requests/s", "publish", ("requests_per_sec",)),
    ("HTTP publish, request p99 ms", "publish", ("request_ms", "p99")),
    ("HTTP publish, delivery p99 ms", "publish", ("delivery_ms", "p99")),
    ("HTTP publish, lost", "publish", ("lost",)),
]
table("One instance", ["sse-fanout", "nchan", "pushpin"], [
    ("idle, KiB per stream (PSS, process tree)", "idle", ("pss_kib_per_stream",)),
    ("connects/s", "idle", ("connects_per_sec",)),
    ("broadcast to all, p99 ms", "broadcast", ("time_until_all_ms", "p99")),
    ("broadcast, lost", "broadcast", ("lost",)),
    ("broadcast, server CPU µs per delivery", "broadcast", ("server_cpu_us_per_delivery",)),
] + publishing + [
    ("targeted 10 000/s, server CPU µs per event", "publish", ("server_cpu_us_per_event", 0), 10000),
    ("targeted 10 000/s, server context switches per event", "publish", ("server_switches_per_event", 0), 10000),
])
table("Two instances", ["sse-fanout x2", "nchan x2", "pushpin x2"], [
    ("broadcast to all, p99 ms", "broadcast", ("time_until_all_ms", "p99")),
    ("broadcast, lost", "broadcast", ("lost",)),
] + publishing + [
    ("targeted 10 000/s, CPU µs per event: first instance", "publish", ("server_cpu_us_per_event", 0), 10000),
    ("targeted 10 000/s, CPU µs per event: second instance", "publish", ("server_cpu_us_per_event", 1), 10000),
    ("targeted 10 000/s, CPU µs per event: Redis", "publish", ("server_cpu_us_per_event", 2), 10000),
    ("targeted 10 000/s, context switches per event: first instance", "publish", ("server_switches_per_event", 0), 10000),
    ("as fast as answered, CPU µs per event: first instance", "publish", ("server_cpu_us_per_event", 0)),
    ("as fast as answered, context switches per event: first instance", "publish", ("server_switches_per_event", 0)),
])
PY
