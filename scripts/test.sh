#!/usr/bin/env bash
# The whole test suite: installs what it needs, builds once, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
export RUST_BACKTRACE=1
# The Kubernetes packaging (helm lint and template, the schema, lints and
# dry runs of the e2e scripts, hadolint); its renders feed tests/packaging.rs.
./scripts/check-packaging.sh >"${TMPDIR:-/tmp}/jax-packaging.log" 2>&1 || {
  tail -n 40 "${TMPDIR:-/tmp}/jax-packaging.log"
  echo "packaging checks failed; full log: ${TMPDIR:-/tmp}/jax-packaging.log"
  exit 1
}
# Property tests: a fixed case count keeps CI time predictable; raise locally with PROPTEST_CASES.
cargo test --locked --all-targets
# The benchmarks at a small size, so the bench code itself is exercised.
cargo run --locked --quiet --bin jax-csi -- bench bucket --dir "${TMPDIR:-/tmp}" --size-mib 16 --files 500 --random-reads 100 >/dev/null
cargo run --locked --quiet --bin jax-csi -- bench fuse --dir "${TMPDIR:-/tmp}" --size-mib 8 --files 200 --random-reads 50 --mixed-ops 2000 --fsx-ops 1000 --idle-volumes 20 --pgbench-seconds 2 --pgbench-scale 1 >/dev/null
cargo run --locked --quiet --bin jax-csi -- bench controller --dir "${TMPDIR:-/tmp}" --volumes 50 --list-volumes 200 >/dev/null
cargo run --locked --quiet --bin jax-csi -- bench sync --dir "${TMPDIR:-/tmp}" --size-mib 8 --files 50 --latency-samples 3 >/dev/null
cargo run --locked --quiet --bin jax-csi -- bench rebuild --dir "${TMPDIR:-/tmp}" --size-mib 8 --files 50 >/dev/null
# The README's main job, on the same build: local cluster, volumes, a pod's writes.
demo_state="$(mktemp -d "${TMPDIR:-/tmp}/jax-demo-ci.XXXXXX")"
JAX_DEMO_PROFILE=dev ./scripts/demo.sh "$demo_state" >"$demo_state.log" 2>&1 || {
  tail -n 60 "$demo_state.log"
  echo "the demo (README's main job) failed; full log: $demo_state.log"
  exit 1
}
rm -rf "$demo_state" "$demo_state.log"
# Kubernetes for real, on the same build: csi-sanity against `local up`, then
# a one-machine cluster (e2e/onebox-up.sh), the chart installed with helm,
# the e2e scenarios (e2e/run.sh) and the teardown (e2e/onebox-down.sh).
JAX_E2E_PROFILE=dev ./scripts/e2e-onebox.sh
echo "all tests passed"
