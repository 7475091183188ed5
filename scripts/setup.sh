#!/usr/bin/env bash
# Installs what building and testing need beyond the Rust toolchain. Idempotent; quiet when all
# is there already.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
rustup component add rustfmt clippy >/dev/null 2>&1 || true

# librdkafka (the Kafka backend) is built from its bundled sources: it needs a C toolchain, make,
# pkg-config, and the OpenSSL and zlib headers.
needed=()
# The browser test drives Debian's Chromium with playwright-core (no browser download); the
# history tests use Node's `eventsource` package as a client.
# The deployment tests (tests/deploy.rs) run Debian's nginx and HAProxy with deploy/'s configs.
# The peer benchmark (scripts/bench-peers.sh) runs nchan (an nginx module) and Pushpin.
for pkg in build-essential pkg-config libssl-dev zlib1g-dev chromium nginx-light haproxy \
  libnginx-mod-nchan pushpin; do
  dpkg -s "$pkg" >/dev/null 2>&1 || needed+=("$pkg")
done
command -v npm >/dev/null || needed+=(nodejs npm)
if [ ${#needed[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  echo "scripts/setup.sh: installing ${needed[*]}" >&2
  # nginx, HAProxy and Pushpin must not start as services on installing: the tests and
  # benchmarks start their own.
  policy=/usr/sbin/policy-rc.d
  own_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && own_policy=1
  fi
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${needed[@]}" >/dev/null
  [ -z "$own_policy" ] || rm -f "$policy"
fi

# Python tools of the tests, in their own environment: schemathesis (the OpenAPI document against
# the running hub) and kubernetes-validate (deploy/kubernetes.yaml against Kubernetes' schema).
venv="$here/tests/python/.venv"
if ! cmp -s "$here/tests/python/requirements.txt" "$venv/requirements.txt" 2>/dev/null; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$here/tests/python/requirements.txt"
  cp "$here/tests/python/requirements.txt" "$venv/requirements.txt"
fi

if [ ! -d "$here/tests/browser/node_modules/playwright-core" ] || [ ! -d "$here/tests/browser/node_modules/eventsource" ]; then
  npm ci --prefix "$here/tests/browser" --no-audit --no-fund >/dev/null
fi
