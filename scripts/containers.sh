#!/usr/bin/env bash
# Makes the container pass of the broker tests possible on a machine that reaches no image
# registry: installs Debian's Docker engine if it is missing, starts it (host networking only: no
# bridge, no iptables rules), and builds the test images from Debian's packages, once:
#
#   sse-fanout-test/debian:bookworm   a minimal Debian root file system (mmdebstrap), imported
#   sse-fanout-test/redis, /nats, /rabbitmq   tests/containers/*.Dockerfile on top of it
#
# Images already built are kept (the first run takes a few minutes, later ones seconds).
#   bash scripts/containers.sh && SSE_TEST_BROKERS=containers cargo test --all-features --test redis
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
log=${SSE_CONTAINERS_LOG:-/tmp/sse-containers}
mkdir -p "$log"

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
if [ ${#need[@]} -gt 0 ]; then
  echo "scripts/containers.sh: installing ${need[*]}" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  echo "scripts/containers.sh: starting dockerd (log: $log/dockerd.log)" >&2
  setsid dockerd --iptables=false --ip-masq=false --bridge=none --pidfile "$log/dockerd.pid" \
    >"$log/dockerd.log" 2>&1 </dev/null &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { echo "scripts/containers.sh: dockerd did not start" >&2; exit 1; }
fi

if ! docker image inspect sse-fanout-test/debian:bookworm >/dev/null 2>&1; then
  echo "scripts/containers.sh: building the Debian base image (mmdebstrap, a few minutes)" >&2
  mmdebstrap --variant=minbase --quiet bookworm - >"$log/rootfs.tar"
  docker import "$log/rootfs.tar" sse-fanout-test/debian:bookworm >/dev/null
  rm -f "$log/rootfs.tar"
fi
for broker in redis nats rabbitmq; do
  if ! docker image inspect "sse-fanout-test/$broker:latest" >/dev/null 2>&1; then
    echo "scripts/containers.sh: building sse-fanout-test/$broker" >&2
    docker build --network host -q -t "sse-fanout-test/$broker:latest" \
      -f "$here/tests/containers/$broker.Dockerfile" "$here/tests/containers" >/dev/null
  fi
done
echo "scripts/containers.sh: images ready: $(docker images --format '{{.Repository}}' | grep -c '^sse-fanout-test/')" >&2
