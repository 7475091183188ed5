#!/usr/bin/env bash
# Builds the hub's container image from Debian's packages (deploy/Dockerfile): compiles the hub
# with every backend, then builds the image on Debian's slim base, or on the project's own
# Debian base where no image registry is reachable (scripts/containers.sh makes it).
#
#   bash scripts/image.sh                       # image sse-fanout:latest
#   SSE_IMAGE_BINARY=path/to/sse-fanout SSE_IMAGE_TAG=sse-fanout:test bash scripts/image.sh
#
# Then: docker run --network host -e SSE_FANOUT_BACKEND=redis sse-fanout
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
tag=${SSE_IMAGE_TAG:-sse-fanout:latest}
binary=${SSE_IMAGE_BINARY:-}
if [ -z "$binary" ]; then
  cargo build --release --quiet --manifest-path "$here/Cargo.toml" --features redis,nats,rabbit,kafka
  binary="$here/target/release/sse-fanout"
fi
base=${SSE_IMAGE_BASE:-}
if [ -z "$base" ]; then
  if docker image inspect debian:bookworm-slim >/dev/null 2>&1 || docker pull -q debian:bookworm-slim >/dev/null 2>&1; then
    base=debian:bookworm-slim
  else
    echo "scripts/image.sh: no registry reachable: building on sse-fanout-test/debian:bookworm" >&2
    bash "$here/scripts/containers.sh"
    base=sse-fanout-test/debian:bookworm
  fi
fi
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
# Without its debug sections (line tables for backtraces; symbols stay): ~6x smaller.
strip --strip-debug -o "$context/sse-fanout" "$binary"
docker build --network host -q --build-arg "BASE=$base" -t "$tag" -f "$here/deploy/Dockerfile" "$context" >/dev/null
echo "scripts/image.sh: built $tag on $base ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.1f MB", $1/1e6}'))" >&2
