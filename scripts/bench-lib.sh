# Shared by the benchmark scripts (sourced): start a server and wait for its port, stop it, run
# the load tool with its JSON line kept, and start and stop the hubs of a multi-hub run. The
# caller sets `out` (logs), `bin` (the release binaries) and `results` (the JSON lines file).

pid=
start() { # name port command...
  local name=$1 port=$2
  shift 2
  "$@" > "$out/$name.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "bench: $name did not start:" >&2
  cat "$out/$name.log" >&2
  exit 1
}
stop() {
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=
}
trap stop EXIT
run() {
  echo "bench: loadgen $*" >&2
  "$bin/loadgen" "$@" | tee -a "$results"
}

# The hubs of a multi-hub run: their pids and URLs, in the order started.
pids=()
urls=()
start_hub() { # port log hub-args...
  local port=$1 log=$2
  shift 2
  "$bin/sse-fanout" --listen "127.0.0.1:$port" --emitter-timeout 0 "$@" > "$log" 2>&1 &
  pids+=("$!")
  urls+=("http://127.0.0.1:$port")
  for _ in $(seq 200); do
    if curl -fs "http://127.0.0.1:$port/healthz" > /dev/null 2>&1; then break; fi
    sleep 0.05
  done
}
stop_hubs() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=() urls=()
}
join() { local IFS=,; echo "$*"; }
