#!/usr/bin/env bash
# Where sse-fanout and nchan spend their work on targeted events published over HTTP, the rows of
# BENCHMARKS.md's peer comparison where nchan is ahead. Each server runs under valgrind's
# callgrind (it counts instructions, which repeat run to run whatever else the machine does)
# while `loadgen publish --rate` sends targeted events to 1 000 sessions, one stream each. Each
# server is measured twice, with a short and a long publishing run, and the difference divided by
# the events between them is the cost of one event (its request, publish and delivery), without
# the start, the streams' opening and the warm-up that both runs share. Prints instructions per
# event in all, the functions that do the most of it themselves (exclusive), and the stages of
# each server (inclusive), and keeps the callgrind files in target/bench/profile/. User-space
# instructions only: the kernel's part (socket reads and writes) is not counted. About 5 minutes.
#
#   bash scripts/profile-peers.sh
#   PROFILE_REPORT=1 bash scripts/profile-peers.sh   # the report again, from the files kept
set -euo pipefail
cd "$(dirname "$0")/.."

out=target/bench/profile
bin=target/release
results=$out/runs.jsonl
run_dir=$out/nchan
rate=${PROFILE_RATE:-500}
short=2 long=12
mkdir -p "$out" "$run_dir/tmp"
[ -n "${PROFILE_REPORT:-}" ] || : > "$results"
command -v valgrind >/dev/null || { echo "profile-peers: valgrind is missing" >&2; exit 1; }
cargo build --release -p sse-fanout --all-features --bin sse-fanout --quiet
cargo build --release -p sse-fanout-bench --bin loadgen --quiet

# nchan in one process (no master, one worker), so that callgrind sees all of it; otherwise as
# bench/peers/nchan.conf.
sed -e "/^#/!s|@PORT@|8095|" -e "/^#/!s|@REDIS_UPSTREAM@||" -e "/^#/!s|@REDIS_PASS@||" \
  -e "s|^master_process on;|master_process off;|" -e "s|^worker_processes 2;|worker_processes 1;|" \
  bench/peers/nchan.conf > "$run_dir/nginx.conf"

# `stop` and its trap; a server under callgrind is started here, since it takes longer to listen
# than bench-lib's `start` waits.
. scripts/bench-lib.sh

# Runs server $1 under callgrind (output $out/callgrind.$1.$2), publishes for $2 seconds.
measure() {
  local server=$1 seconds=$2 port form=()
  local valgrind=(valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.$server.$seconds")
  case $server in
    sse-fanout)
      port=8090
      "${valgrind[@]}" "$bin/sse-fanout" --listen 127.0.0.1:8090 --emitter-timeout 0 \
        > "$out/$server.log" 2>&1 & ;;
    nchan)
      port=8095 form=(--form nchan)
      "${valgrind[@]}" nginx -p "$PWD/$run_dir" -c "$PWD/$run_dir/nginx.conf" \
        > "$out/$server.log" 2>&1 & ;;
  esac
  pid=$!
  for _ in $(seq 600); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
  echo "profile-peers: $server, $seconds s at $rate/s" >&2
  "$bin/loadgen" publish --url "http://127.0.0.1:$port" --streams 1000 --seconds "$seconds" \
    --connections 16 --rate "$rate" --label "$server" "${form[@]}" \
    | python3 -c 'import json,sys; r=json.load(sys.stdin); r["seconds"]=float(sys.argv[1]); print(json.dumps(r))' "$seconds" \
    | tee -a "$results"
  stop
}

if [ -z "${PROFILE_REPORT:-}" ]; then
  for server in sse-fanout nchan; do
    measure "$server" "$short"
    measure "$server" "$long"
  done
fi

python3 - "$out" "$short" "$long" <<'PY'
import json, re, subprocess, sys
out, short, long_ = sys.argv[1], sys.argv[2], sys.argv[3]
runs = [json.loads(l) for l in open(f"{out}/runs.jsonl") if l.strip()]

def functions(path, inclusive):
    """Instructions per function of a callgrind file, inclusive or exclusive."""
    text = subprocess.run(["callgrind_annotate", f"--inclusive={'yes' if inclusive else 'no'}",
                           "--threshold=100", path],
                          capture_output=True, text=True, check=True).stdout
    costs = {}
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\([^)]*\)\s+(.*)$", line)
        if m and ":" in m.group(2) and not m.group(2).startswith("=>"):
            name = re.sub(r"/root/\.cargo/registry/src/[^/]+/|/rustc/[0-9a-f]+/|\s*\[.*\]$", "",
                          m.group(2))
            costs[name] = costs.get(name, 0) + int(m.group(1).replace(",", ""))
    return costs

def total(path):
    for line in open(path, errors="replace"):
        if line.startswith("summary:") or line.startswith("totals:"):
            return int(line.split()[1])

# Each server's stages: a pattern for the function that does it (inclusive).
stages = {
    "sse-fanout": [
        ("HTTP/1 connection, all of a request", r"hyper::proto::h1::dispatch::Dispatcher<D,Bs,I,T>::poll_catch$"),
        ("  request head parse", r"role.rs:<hyper::proto::h1::role::Server as .*>::parse$"),
        ("  the publish endpoint", r"publish.rs:sse_hyper::endpoint::publish::<impl .*>::posted::\{\{closure\}\}$"),
        ("    the body's JSON", r"publish.rs:sse_hyper::endpoint::publish::parse_publish_body$"),
        ("    the envelope's JSON (encode)", r"envelope.rs:sse_core::envelope::Envelope::encode_event$"),
        ("    the 202 answer", r"error.rs:sse_hyper::error::json_response$"),
        ("receipt from the backend, to the streams", r"hub.rs:sse_core::hub::Shared::receive$"),
        ("  the envelope's JSON (decode)", r"envelope.rs:sse_core::envelope::Envelope::decode_ref$"),
        ("  the replay log", r"replay.rs:sse_core::replay::ReplayLog::push$"),
        ("  to the session's streams", r"memory.rs:<sse_core::memory::InMemoryEmitterRepository as .*>::deliver$"),
        ("the stream's write", r"direct.rs:<tokio_util::task::task_tracker::TrackedFuture<F> as .*>::poll$"),
    ],
    "nchan": [
        ("an HTTP request, all of it", r"ngx_http_process_request$"),
        ("  the publisher: body read and publish", r"nchan_pubsub_handler$"),
        ("    publish to the channel", r"nchan_store_publish_message_generic$"),
        ("      in shared memory", r"nchan_memstore_publish_generic$"),
        ("the request line and headers", r"ngx_http_process_request_line$"),
    ],
}

for server in ["sse-fanout", "nchan"]:
    a = next(r for r in runs if r["server"] == server and r["seconds"] == float(short))
    b = next(r for r in runs if r["server"] == server and r["seconds"] == float(long_))
    events = b["delivered"] - a["delivered"]
    fa, fb = f"{out}/callgrind.{server}.{short}", f"{out}/callgrind.{server}.{long_}"
    per_event = (total(fb) - total(fa)) / events
    print(f"{server}: {per_event:,.0f} instructions per event ({events} events between the runs; "
          f"delivery p99 {b['delivery_ms']['p99']} ms under callgrind)")
    ia, ib = functions(fa, True), functions(fb, True)
    print("  stages (inclusive):")
    for label, pattern in stages[server]:
        found = [(ib[f] - ia.get(f, 0)) / events for f in ib if re.search(pattern, f)]
        cell = f"{max(found):>9,.0f}" if found else "        –"
        print(f"  {cell}  {label}")
    ea, eb = functions(fa, False), functions(fb, False)
    print("  the functions doing most (exclusive):")
    rows = sorted(((eb[f] - ea.get(f, 0)) / events, f) for f in eb)
    for cost, name in reversed(rows[-20:]):
        print(f"  {cost:>9,.0f}  {name[:140]}")
    print()
PY
