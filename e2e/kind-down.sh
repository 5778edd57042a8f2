#!/usr/bin/env bash
# Delete the e2e kind cluster (and with it everything kind-up.sh installed).
#
#   e2e/kind-down.sh [--dry-run]
#
# Environment: CLUSTER_NAME (jax-csi-e2e), DRY_RUN=1.
# shellcheck source=e2e/lib.sh
source "$(dirname "$0")/lib.sh"

usage() { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; }
parse_args "$@"
need kind

log "delete kind cluster $CLUSTER_NAME"
run kind delete cluster --name "$CLUSTER_NAME"
