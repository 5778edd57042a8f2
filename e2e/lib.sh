# shellcheck shell=bash
# Shared by the e2e scripts: settings, --dry-run, logging, and helpers that
# print instead of run in dry-run mode. Source it; do not run it.
#
# Dry-run (`--dry-run` or DRY_RUN=1) prints every command a script would run
# (to the script's standard output, as `+ cmd args…`) and runs none, so CI can
# check the scripts on a machine without Docker or a cluster.

set -euo pipefail

E2E_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# ROOT is used by the scripts that source this file.
# shellcheck disable=SC2034
ROOT="$(cd "$E2E_DIR/.." && pwd)"

# Settings; every one can be overridden from the environment.
CLUSTER_NAME="${CLUSTER_NAME:-jax-csi-e2e}"
KUBE_CONTEXT="${KUBE_CONTEXT:-kind-$CLUSTER_NAME}"
IMAGE_REPO="${IMAGE_REPO:-jax-csi}"
IMAGE_TAG="${IMAGE_TAG:-e2e}"
NAMESPACE="${NAMESPACE:-jax-csi}"
RELEASE="${RELEASE:-jax-csi}"
SNAPSHOTTER_VERSION="${SNAPSHOTTER_VERSION:-v8.2.1}"
# Deadline of each wait, in seconds (HELM_TIMEOUT: of the helm install,
# which includes pulling every image).
TIMEOUT="${TIMEOUT:-180}"
HELM_TIMEOUT="${HELM_TIMEOUT:-600}"
DRY_RUN="${DRY_RUN:-0}"

# Dry-run output goes to the script's own stdout, even from inside $(...).
exec 3>&1

# Parse the options every script shares; the rest is left in ARGS.
ARGS=()
parse_args() {
  while [ "$#" -gt 0 ]; do
    case "$1" in
      --dry-run) DRY_RUN=1 ;;
      -h | --help) usage; exit 0 ;;
      --) shift; ARGS+=("$@"); break ;;
      -*) echo "unknown option: $1 (try --help)" >&2; exit 2 ;;
      *) ARGS+=("$1") ;;
    esac
    shift
  done
}

dry() { [ "$DRY_RUN" = 1 ]; }

log() {
  if [ -t 3 ]; then printf '\n\033[1m== %s\033[0m\n' "$*" >&3; else printf '\n== %s\n' "$*" >&3; fi
}
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Print a command the way `set -x` would, shell-quoted.
show() {
  local out="+"
  local a
  for a in "$@"; do out+=" $(printf '%q' "$a")"; done
  printf '%s\n' "$out" >&3
}

# Run a command (or, in dry-run, print it).
run() {
  if dry; then show "$@"; return 0; fi
  "$@"
}

# Run a command and print its output; in dry-run print the command and
# output the placeholder given as the first argument instead.
capture() {
  local placeholder="$1"; shift
  if dry; then show "$@"; printf '%s\n' "$placeholder"; return 0; fi
  "$@"
}

kc() { run kubectl --context "$KUBE_CONTEXT" "$@"; }
kc_capture() { local p="$1"; shift; capture "$p" kubectl --context "$KUBE_CONTEXT" "$@"; }

# kubectl apply of the manifest on stdin (printed in dry-run).
apply_manifest() {
  local manifest
  manifest="$(cat)"
  if dry; then
    show kubectl --context "$KUBE_CONTEXT" apply -f -
    printf '%s\n' "$manifest" | sed 's/^/    /' >&3
    return 0
  fi
  printf '%s\n' "$manifest" | kubectl --context "$KUBE_CONTEXT" apply -f -
}

# Fail early when a tool is missing (not checked in dry-run).
need() {
  dry && return 0
  local t
  for t in "$@"; do
    command -v "$t" >/dev/null 2>&1 || die "'$t' is needed on PATH (see e2e/README.md)"
  done
}

# Run a command until it succeeds, at most TIMEOUT seconds: for conditions
# `kubectl wait` cannot express. The pause between tries is the poll
# interval, never the synchronisation itself: the deadline decides.
poll() {
  local what="$1"; shift
  if dry; then show "$@"; echo "    (repeated until it succeeds: $what; deadline ${TIMEOUT}s)" >&3; return 0; fi
  local deadline=$((SECONDS + TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "timed out after ${TIMEOUT}s waiting for: $what"
    sleep 1
  done
}
