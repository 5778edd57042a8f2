#!/usr/bin/env bash
# Create a 3-node kind cluster, build the jax-csi image and load it into the
# nodes, install the snapshot CRDs and snapshot-controller, and install the
# chart with the bundled Postgres. Idempotent: an existing cluster is reused
# and the chart is upgraded.
#
#   e2e/kind-up.sh [--dry-run]
#
# Environment: CLUSTER_NAME (jax-csi-e2e), KIND_NODE_IMAGE (kind's default
# when empty, e.g. kindest/node:v1.33.1), IMAGE_REPO/IMAGE_TAG (jax-csi:e2e),
# NAMESPACE (jax-csi), RELEASE (jax-csi), SNAPSHOTTER_VERSION (v8.2.1),
# TIMEOUT (seconds per wait, 180), HELM_TIMEOUT (600), DRY_RUN=1.
# shellcheck source=e2e/lib.sh
source "$(dirname "$0")/lib.sh"

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }
parse_args "$@"
need docker kind kubectl helm

KIND_NODE_IMAGE="${KIND_NODE_IMAGE:-}"
SNAPSHOTTER_URL="https://raw.githubusercontent.com/kubernetes-csi/external-snapshotter/$SNAPSHOTTER_VERSION"

if ! dry && [ ! -e /dev/fuse ]; then
  die "/dev/fuse is missing on this machine: load the module (sudo modprobe fuse); kind nodes share the host's devices"
fi

log "kind cluster $CLUSTER_NAME"
existing="$(capture "" kind get clusters)"
if printf '%s\n' "$existing" | grep -qx "$CLUSTER_NAME"; then
  echo "cluster $CLUSTER_NAME exists; reusing it" >&3
else
  create=(kind create cluster --name "$CLUSTER_NAME" --config "$E2E_DIR/kind-config.yaml" --wait "${TIMEOUT}s")
  if [ -n "$KIND_NODE_IMAGE" ]; then create+=(--image "$KIND_NODE_IMAGE"); fi
  run "${create[@]}"
fi
kc wait --for=condition=Ready nodes --all --timeout="${TIMEOUT}s"

log "build and load the image $IMAGE_REPO:$IMAGE_TAG"
run docker build -t "$IMAGE_REPO:$IMAGE_TAG" "$ROOT"
# The same image under a second tag: e2e/run.sh's `upgrade` scenario moves
# the node plugin DaemonSet to it.
run docker tag "$IMAGE_REPO:$IMAGE_TAG" "$IMAGE_REPO:$IMAGE_TAG-next"
run kind load docker-image "$IMAGE_REPO:$IMAGE_TAG" "$IMAGE_REPO:$IMAGE_TAG-next" --name "$CLUSTER_NAME"

log "snapshot CRDs and snapshot-controller $SNAPSHOTTER_VERSION"
for crd in \
  snapshot.storage.k8s.io_volumesnapshotclasses \
  snapshot.storage.k8s.io_volumesnapshotcontents \
  snapshot.storage.k8s.io_volumesnapshots \
  groupsnapshot.storage.k8s.io_volumegroupsnapshotclasses \
  groupsnapshot.storage.k8s.io_volumegroupsnapshotcontents \
  groupsnapshot.storage.k8s.io_volumegroupsnapshots; do
  kc apply -f "$SNAPSHOTTER_URL/client/config/crd/$crd.yaml"
done
kc wait --for=condition=Established --timeout="${TIMEOUT}s" \
  crd/volumesnapshotclasses.snapshot.storage.k8s.io \
  crd/volumesnapshotcontents.snapshot.storage.k8s.io \
  crd/volumesnapshots.snapshot.storage.k8s.io
kc -n kube-system apply -f "$SNAPSHOTTER_URL/deploy/kubernetes/snapshot-controller/rbac-snapshot-controller.yaml"
kc -n kube-system apply -f "$SNAPSHOTTER_URL/deploy/kubernetes/snapshot-controller/setup-snapshot-controller.yaml"
# Volume group snapshots are a beta feature of the snapshot-controller.
kc -n kube-system patch deployment/snapshot-controller --type=json \
  -p '[{"op":"add","path":"/spec/template/spec/containers/0/args/-","value":"--feature-gates=CSIVolumeGroupSnapshot=true"}]'
kc -n kube-system rollout status deployment/snapshot-controller --timeout="${TIMEOUT}s"

log "namespace $NAMESPACE (privileged pods allowed)"
apply_manifest <<YAML
apiVersion: v1
kind: Namespace
metadata:
  name: $NAMESPACE
  labels:
    pod-security.kubernetes.io/enforce: privileged
YAML

log "helm install $RELEASE (bundled Postgres: NOT FOR PRODUCTION)"
run helm upgrade --install "$RELEASE" "$ROOT/charts/jax-csi" \
  --kube-context "$KUBE_CONTEXT" --namespace "$NAMESPACE" \
  --set image.repository="$IMAGE_REPO" \
  --set image.tag="$IMAGE_TAG" \
  --set database.bundled.enabled=true \
  --set groupSnapshots.enabled=true \
  --set volumeAttributesClass.enabled=true \
  --wait --timeout "${HELM_TIMEOUT}s"
kc -n "$NAMESPACE" rollout status "statefulset/$RELEASE-postgres" --timeout="${TIMEOUT}s"
kc -n "$NAMESPACE" rollout status "deployment/$RELEASE-controller" --timeout="${TIMEOUT}s"
kc -n "$NAMESPACE" rollout status "daemonset/$RELEASE-node" --timeout="${TIMEOUT}s"
# The fd-keeper DaemonSet is OnDelete, which `rollout status` does not follow.
kc -n "$NAMESPACE" wait --for=condition=Ready pod \
  -l "app.kubernetes.io/instance=$RELEASE,app.kubernetes.io/component=fd-keeper" --timeout="${TIMEOUT}s"

log "ready: run e2e/run.sh (and e2e/run-conformance.sh); e2e/kind-down.sh deletes the cluster"
