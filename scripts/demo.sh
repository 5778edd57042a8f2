#!/usr/bin/env bash
# The main job: build jax-csi and run its demo in a fresh state dir.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cargo build --release --locked --bin jax-csi
state="${1:-$(mktemp -d /tmp/jax-demo.XXXXXX)}"
exec ./target/release/jax-csi demo --state-dir "$state"
