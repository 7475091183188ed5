#!/usr/bin/env bash
# Brings up the brokers the integration tests use and prints `export SSE_TEST_...=...` lines:
#   eval "$(bash scripts/brokers.sh)"
# Variables already set are kept (point them at your own brokers). On the project's machines the
# brokers are started by ../shared/services/ensure; elsewhere, with Docker, leave the variables
# unset and the tests start containers themselves.
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
ensure=${SSE_BROKERS_ENSURE:-$here/../shared/services/ensure}
if [ ! -f "$ensure" ]; then
  echo "scripts/brokers.sh: no $ensure; using the SSE_TEST_* variables as set" >&2
  exit 0
fi
# Kafka: Nisshi (keeps its topics across restarts, as Kafka does), not the in-memory Tansu.
[ $# -gt 0 ] || set -- redis rabbitmq nats nisshi
out=$(bash "$ensure" "$@")
status=$?
printf '%s\n' "$out" >&2
[ $status -eq 0 ] || echo "scripts/brokers.sh: some broker is down; its tests will say so" >&2
printf '%s\n' "$out" | sed -n 's/^  export /export /p' | while read -r line; do
  var=${line#export }; var=${var%%=*}
  [ -n "${!var:-}" ] || echo "$line"
done

# PostgreSQL (the custom-backend example's tests): already running on these machines.
if [ -z "${SSE_TEST_POSTGRES_URL:-}" ] && (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
  echo "export SSE_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test"
fi
