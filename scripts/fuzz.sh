#!/usr/bin/env bash
# Runs every fuzz target for a bounded time and prints one line per target:
#   bash scripts/fuzz.sh [seconds per target, default 60] [target ...]
# Needs cargo-fuzz (installed here if missing). The toolchain is stable: RUSTC_BOOTSTRAP=1 lets it
# take the sanitizer flags cargo-fuzz passes. Crashes land in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(envelope_decode publish_body event_names encoder_roundtrip request_head jwt_verify)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
status=0
for t in "${targets[@]}"; do
  log=$(mktemp)
  if cargo fuzz run "$t" -- -max_total_time="$secs" >"$log" 2>&1; then
    result=ok
  else
    result="FINDING (see fuzz/artifacts/$t and $log)"
    status=1
  fi
  runs=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | tail -1 || true)
  echo "$t: ${runs:-no summary} -> $result"
done
exit $status
