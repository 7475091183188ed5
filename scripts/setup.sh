#!/usr/bin/env bash
# Installs what building and testing need beyond the Rust toolchain. Idempotent; quiet when all
# is there already.
set -euo pipefail
rustup component add rustfmt clippy >/dev/null 2>&1 || true

# librdkafka (the Kafka backend) is built from its bundled sources: it needs a C toolchain, make,
# pkg-config, and the OpenSSL and zlib headers.
needed=()
# The browser test drives Debian's Chromium with playwright-core (no browser download); the
# history tests use Node's `eventsource` package as a client.
for pkg in build-essential pkg-config libssl-dev zlib1g-dev chromium; do
  dpkg -s "$pkg" >/dev/null 2>&1 || needed+=("$pkg")
done
command -v npm >/dev/null || needed+=(nodejs npm)
if [ ${#needed[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  echo "scripts/setup.sh: installing ${needed[*]}" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${needed[@]}" >/dev/null
fi

here=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -d "$here/tests/browser/node_modules/playwright-core" ] || [ ! -d "$here/tests/browser/node_modules/eventsource" ]; then
  npm ci --prefix "$here/tests/browser" --no-audit --no-fund >/dev/null
fi
