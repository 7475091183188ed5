#!/usr/bin/env bash
# TLS against plaintext (BENCHMARKS.md, "TLS"): the same hub and load tool, with a certificate
# from a CA this script makes (openssl, ECDSA P-256). Idle memory per stream, broadcast to
# 10 000 streams and targeted events at 100 000/s, each over plaintext HTTP/1.1, TLS HTTP/1.1,
# and TLS HTTP/2 (one stream per connection, as one browser tab; and ten, as a browser's tabs of
# one origin), with the server's CPU time on the measured events. Keeps the JSON lines in
# target/bench/tls.jsonl and prints a table. About 4 minutes after the build.
#
#   bash scripts/bench-tls.sh               # builds what is missing first
#   BENCH_QUICK=1 bash scripts/bench-tls.sh # small runs, to check the script (~1 minute)
set -euo pipefail
cd "$(dirname "$0")/.."

out=target/bench
bin=target/release
certs=$out/tls
mkdir -p "$certs"
results=$out/tls.jsonl
: > "$results"
cargo build --release --workspace --all-features --bins --quiet

if [ -n "${BENCH_QUICK:-}" ]; then
  idle=2000 broadcast=1000 events=5 targeted=200 rate=10000 seconds=1 repeat=1
else
  idle=19000 broadcast=10000 events=30 targeted=1000 rate=100000 seconds=5 repeat=3
fi

# A CA, and a certificate for localhost that it signs (the load tool trusts the CA).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=bench-ca -keyout "$certs/ca.key" -out "$certs/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
  -keyout "$certs/key.pem" -out "$certs/req.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > "$certs/ext.cnf"
openssl x509 -req -in "$certs/req.csr" -CA "$certs/ca.pem" -CAkey "$certs/ca.key" \
  -CAcreateserial -days 2 -extfile "$certs/ext.cnf" -out "$certs/cert.pem" 2>/dev/null
export LOADGEN_CA=$certs/ca.pem
tls=(--tls-cert "$certs/cert.pem" --tls-key "$certs/key.pem")

. scripts/bench-lib.sh
# The transport of the next runs: plain, h1 (TLS HTTP/1.1), h2 (TLS HTTP/2, one stream a
# connection), h2x10 (ten streams a connection).
mode() {
  unset LOADGEN_HTTP2 LOADGEN_HTTP2_STREAMS
  case $1 in
    plain) scheme=http host=127.0.0.1 extra=() ;;
    h1) scheme=https host=localhost extra=("${tls[@]}") ;;
    h2) scheme=https host=localhost extra=("${tls[@]}"); export LOADGEN_HTTP2=1 ;;
    h2x10) scheme=https host=localhost extra=("${tls[@]}"); export LOADGEN_HTTP2=1 LOADGEN_HTTP2_STREAMS=10 ;;
  esac
}

for transport in plain h1 h2 h2x10; do
  mode "$transport"
  start hub 8090 "$bin/sse-fanout" --listen 127.0.0.1:8090 --emitter-timeout 0 "${extra[@]}"
  run idle --url "$scheme://$host:8090" --streams "$idle" --sessions 1000 --server-pid "$pid" \
    --label "$transport"
  stop
  for _ in $(seq "$repeat"); do
    start hub 8090 "$bin/sse-fanout" --listen 127.0.0.1:8090 --emitter-timeout 0 "${extra[@]}"
    run broadcast --url "$scheme://$host:8090" --streams "$broadcast" --sessions 1000 \
      --events "$events" --server-pid "$pid" --label "$transport"
    stop
    start fanout-server 8092 "$bin/fanout-server" --listen 127.0.0.1:8092 \
      --control 127.0.0.1:8093 "${extra[@]}"
    run targeted --url "$scheme://$host:8092" --pump-url http://127.0.0.1:8093 \
      --streams "$targeted" --rate "$rate" --seconds "$seconds" --server-pid "$pid" \
      --label "$transport"
    stop
  done
done

echo >&2
python3 - "$results" <<'EOF'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
def median(scenario, server, *path):
    values = []
    for run in runs:
        if run.get("scenario") == scenario and run.get("server") == server:
            value = run
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            if value is not None:
                values.append(value)
    return statistics.median(values) if values else None
rows = [
    ("idle, KiB per stream", "idle", ("kib_per_stream",)),
    ("connects/s", "idle", ("connects_per_sec",)),
    ("broadcast to all, p99 ms", "broadcast", ("time_until_all_ms", "p99")),
    ("broadcast, server CPU µs per delivery", "broadcast", ("server_cpu_us_per_delivery",)),
    ("targeted, p99 ms", "targeted", ("latency_ms", "p99")),
    ("targeted, lost", "targeted", ("lost",)),
    ("targeted, server CPU µs per event", "targeted", ("server_cpu_us_per_event",)),
]
transports = ["plain", "h1", "h2", "h2x10"]
print("| figure | " + " | ".join(transports) + " |")
print("|---" * (len(transports) + 1) + "|")
for name, scenario, path in rows:
    cells = [median(scenario, t, *path) for t in transports]
    print(f"| {name} | " + " | ".join("–" if c is None else f"{c:g}" for c in cells) + " |")
EOF
