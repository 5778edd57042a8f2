#!/usr/bin/env bash
# Run the Kubernetes storage e2e suite against jax-csi as an external driver
# (e2e/testdriver.yaml), on the cluster e2e/kind-up.sh made.
#
#   e2e/run-conformance.sh [--dry-run] [-- EXTRA E2E.TEST FLAGS...]
#
# It downloads kubernetes-test (e2e.test) for the cluster's Kubernetes
# version into CACHE_DIR (target/e2e), then runs
#   e2e.test -ginkgo.focus='External.Storage.*csi.jax.dev' ...
# Environment: KUBE_VERSION (default: the API server's version), FOCUS,
# SKIP (default '\[Disruptive\]|\[Serial\]'), CACHE_DIR, REPORT_DIR
# (target/e2e/report), KUBECONFIG, CLUSTER_NAME, KUBE_CONTEXT, DRY_RUN=1.
# shellcheck source=e2e/lib.sh
source "$(dirname "$0")/lib.sh"

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
parse_args "$@"
need kubectl curl tar

FOCUS="${FOCUS:-External.Storage.*csi.jax.dev}"
SKIP="${SKIP:-\[Disruptive\]|\[Serial\]}"
CACHE_DIR="${CACHE_DIR:-$ROOT/target/e2e}"
REPORT_DIR="${REPORT_DIR:-$CACHE_DIR/report}"
KUBECONFIG_FILE="${KUBECONFIG:-$HOME/.kube/config}"

case "$(uname -m)" in
  x86_64 | amd64) arch=amd64 ;;
  aarch64 | arm64) arch=arm64 ;;
  *) die "no kubernetes-test build for $(uname -m)" ;;
esac

if [ -z "${KUBE_VERSION:-}" ]; then
  version_json="$(kc_capture '{"gitVersion": "v1.33.1"}' get --raw /version)"
  KUBE_VERSION="$(printf '%s\n' "$version_json" | sed -n 's/.*"gitVersion": *"\(v[0-9][0-9.]*\)[^"]*".*/\1/p' | head -n 1)"
  [ -n "$KUBE_VERSION" ] || die "could not read the cluster's version; set KUBE_VERSION (e.g. v1.33.1)"
fi

dir="$CACHE_DIR/kubernetes-test-$KUBE_VERSION-$arch"
e2e_test="$dir/kubernetes/test/bin/e2e.test"
log "kubernetes-test $KUBE_VERSION ($arch)"
if dry || [ ! -x "$e2e_test" ]; then
  run mkdir -p "$dir"
  run curl -fsSL --retry 3 -o "$dir/kubernetes-test.tar.gz" \
    "https://dl.k8s.io/release/$KUBE_VERSION/kubernetes-test-linux-$arch.tar.gz"
  run tar -xzf "$dir/kubernetes-test.tar.gz" -C "$dir"
  run rm -f "$dir/kubernetes-test.tar.gz"
fi

log "storage e2e suite: focus '$FOCUS', skip '$SKIP'"
run mkdir -p "$REPORT_DIR"
run "$e2e_test" \
  -ginkgo.focus="$FOCUS" \
  -ginkgo.skip="$SKIP" \
  -ginkgo.timeout=3h \
  -ginkgo.v \
  -storage.testdriver="$E2E_DIR/testdriver.yaml" \
  -repo-root="$ROOT" \
  -kubeconfig="$KUBECONFIG_FILE" \
  -context="$KUBE_CONTEXT" \
  -report-dir="$REPORT_DIR" \
  ${ARGS[@]+"${ARGS[@]}"}
log "reports in $REPORT_DIR"
