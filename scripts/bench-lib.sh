# Shared by the benchmark scripts (sourced): start a server and wait for its port, stop it, and
# run the load tool with its JSON line kept. The caller sets `out` (logs), `bin` (the release
# binaries) and `results` (the JSON lines file).

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
