#!/usr/bin/env bash
# Presence (BENCHMARKS.md, "Presence"): three hubs (`presence-node`, a hub as a library user runs
# it) on one Redis of the script's own, 100 000 sessions over them (one stream each, opened in
# their processes, as a stream the HTTP layer hands the hub); once every hub sees them all, for
# 20 s each hub closes its oldest stream and opens one of a new session 333 times a second (1 000
# closes and 1 000 opens a second in all). Three runs: presence off, the view only (`--presence`)
# and with presence events (`--presence-events`). Measured: the bytes into and out of Redis a
# second, each hub's CPU during the churn, resident memory per tracked session, `GET
# /sse/presence` latency over HTTP, and the time from one hub's kill -9 to its sessions leaving
# the view (and to their offline events) on another hub. About 5 minutes after the build.
#
#   bash scripts/bench-presence.sh
#   BENCH_QUICK=1 bash scripts/bench-presence.sh   # 1 000 sessions a hub, 5 s of churn
set -euo pipefail
cd "$(dirname "$0")/.."

out=target/bench
bin=target/release
mkdir -p "$out"
results=$out/presence.jsonl
: > "$results"
cargo build --release -p sse-fanout-bench --bin presence-node --quiet

if [ -n "${BENCH_QUICK:-}" ]; then
  sessions=1000 churn=100 secs=5
else
  sessions=33334 churn=333 secs=20
fi
# The presence defaults the nodes run with: beats every 2 s, a linger of 5 s.
offline_within_ms=$((4 * 2000 + 5000))

redis_port=6392
redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
  > "$out/presence-redis.log" 2>&1 &
redis_pid=$!
nodes=()
cleanup() {
  for p in "${nodes[@]}"; do kill "$p" 2>/dev/null || true; done
  kill "$redis_pid" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done

now_ms() { date +%s%3N; }
sleep_until() {
  local left=$(($1 - $(now_ms)))
  [ "$left" -le 0 ] || sleep "$(printf '%d.%03d' $((left / 1000)) $((left % 1000)))"
}
redis_bytes() { # input and output bytes Redis counted so far
  redis-cli -p "$redis_port" info stats | tr -d '\r' |
    awk -F: '/^total_net_input_bytes/ {i=$2} /^total_net_output_bytes/ {o=$2} END {print i, o}'
}

churn_file=$out/presence-churn-at
for mode in off view events; do
  echo "{\"mode\":\"$mode\",\"sessions_per_hub\":$sessions,\"churn_per_hub\":$churn}" >> "$results"
  redis-cli -p "$redis_port" flushall >/dev/null
  rm -f "$churn_file"
  flags=()
  case $mode in
    view) flags=(--presence) ;;
    events) flags=(--presence --events) ;;
  esac
  nodes=()
  for k in 1 2 3; do
    "$bin/presence-node" node --redis "redis://127.0.0.1:$redis_port" \
      --listen "127.0.0.1:$((8200 + k))" --prefix "n$k" --sessions "$sessions" \
      --total $((3 * sessions)) "${flags[@]}" --churn-at-file "$churn_file" \
      --churn "$churn" --churn-secs "$secs" \
      > "$out/presence-$mode-n$k.jsonl" 2> "$out/presence-$mode-n$k.log" &
    nodes+=($!)
  done
  echo "bench: presence $mode: 3 hubs of $sessions sessions" >&2
  settled_by=$(($(now_ms) + 180000))
  for k in 1 2 3; do
    until grep -q '"settled"' "$out/presence-$mode-n$k.jsonl"; do
      [ "$(now_ms)" -lt "$settled_by" ] || { echo "bench: node $k did not settle" >&2; exit 1; }
      sleep 0.2
    done
  done
  churn_at=$(($(now_ms) + 1000))
  echo "$churn_at" > "$churn_file"
  sleep_until "$churn_at"
  read -r in0 out0 < <(redis_bytes)
  sleep_until $((churn_at + secs * 1000))
  read -r in1 out1 < <(redis_bytes)
  for k in 1 2 3; do
    until grep -q '"churn"' "$out/presence-$mode-n$k.jsonl"; do sleep 0.2; done
  done
  echo "{\"mode\":\"$mode\",\"redis_in_bytes\":$((in1 - in0)),\"redis_out_bytes\":$((out1 - out0)),\"secs\":$secs}" >> "$results"
  if [ "$mode" != off ]; then
    sleep 7 # the churn's last lingers end
    ids=$(seq 0 9 | sed 's/^/n2-/' | paste -sd, -)
    "$bin/presence-node" query --url http://127.0.0.1:8201 --query "sessionId=$ids" |
      sed "s/^{/{\"mode\":\"$mode\",/" | tee -a "$results"
    "$bin/presence-node" query --url http://127.0.0.1:8201 --query "eventName=e&limit=100" \
      --queries 5000 | sed "s/^{/{\"mode\":\"$mode\",/" | tee -a "$results"
    kill -9 "${nodes[2]}"
    echo "{\"mode\":\"$mode\",\"killed_at\":$(now_ms)}" >> "$results"
    sleep $((offline_within_ms / 1000 + 10))
  fi
  for p in "${nodes[@]}"; do kill "$p" 2>/dev/null || true; done
  wait "${nodes[@]}" 2>/dev/null || true
  nodes=()
done

python3 scripts/bench-presence-summary.py "$out" "$offline_within_ms" | tee -a "$results"
