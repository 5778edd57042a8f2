#!/usr/bin/env bash
# The jax-csi end-to-end scenarios, on the cluster e2e/kind-up.sh made:
#
#   basic     a PVC and a pod that writes and reads it back
#   rwx       one RWX volume in pods on two nodes: a write on each is seen on the other
#   snapshot  a VolumeSnapshot, later writes, and a new claim restored from it
#   expand    a claim grown while its pod runs; the pod sees the new size
#   restart   the node plugin pod on the app pod's node deleted; the pod's mount still works
#
#   e2e/run.sh [--dry-run] [SCENARIO...]      (default: all, in that order)
#
# Every wait has a deadline (TIMEOUT seconds, default 180). The test
# workloads live in TEST_NAMESPACE (jax-e2e), deleted at the end unless
# KEEP=1. Environment: CLUSTER_NAME, KUBE_CONTEXT, NAMESPACE and RELEASE of
# the driver, STORAGE_CLASS (jax-csi), SNAPSHOT_CLASS (jax-csi),
# BUSYBOX_IMAGE (busybox:1.37), DRY_RUN=1.
# shellcheck source=e2e/lib.sh
source "$(dirname "$0")/lib.sh"

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }
parse_args "$@"
need kubectl

TEST_NAMESPACE="${TEST_NAMESPACE:-jax-e2e}"
STORAGE_CLASS="${STORAGE_CLASS:-jax-csi}"
SNAPSHOT_CLASS="${SNAPSHOT_CLASS:-jax-csi}"
BUSYBOX_IMAGE="${BUSYBOX_IMAGE:-busybox:1.37}"
KEEP="${KEEP:-0}"
ALL_SCENARIOS=(basic rwx snapshot expand restart)

t() { kc -n "$TEST_NAMESPACE" "$@"; }
t_capture() { local p="$1"; shift; kc_capture "$p" -n "$TEST_NAMESPACE" "$@"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

# A claim: pvc NAME ACCESS_MODE SIZE [SNAPSHOT]
pvc() {
  local source=""
  if [ -n "${4:-}" ]; then
    source="
  dataSource:
    apiGroup: snapshot.storage.k8s.io
    kind: VolumeSnapshot
    name: $4"
  fi
  apply_manifest <<YAML
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: $1
  namespace: $TEST_NAMESPACE
spec:
  accessModes: ["$2"]
  storageClassName: $STORAGE_CLASS
  resources:
    requests:
      storage: $3$source
YAML
  t wait --for=jsonpath='{.status.phase}'=Bound "pvc/$1" --timeout="${TIMEOUT}s"
}

# A pod that mounts a claim at /data and idles: pod NAME CLAIM [NODE].
# It runs as a non-root user with an fsGroup (the driver's fsGroupPolicy: File).
pod() {
  local node=""
  if [ -n "${3:-}" ]; then node="
  nodeName: $3"; fi
  apply_manifest <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: $1
  namespace: $TEST_NAMESPACE
spec:$node
  terminationGracePeriodSeconds: 1
  securityContext:
    runAsUser: 1000
    runAsGroup: 1000
    fsGroup: 1000
  containers:
    - name: app
      image: $BUSYBOX_IMAGE
      command: ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait; done"]
      volumeMounts:
        - name: data
          mountPath: /data
  volumes:
    - name: data
      persistentVolumeClaim:
        claimName: $2
YAML
  t wait --for=condition=Ready "pod/$1" --timeout="${TIMEOUT}s"
}

# Run a shell command in a pod: in_pod POD 'CMD'
in_pod() { t exec "$1" -- sh -c "$2"; }

# Write a line to a file and fsync it (so it is committed as a version):
# write_synced POD FILE TEXT
write_synced() { in_pod "$1" "echo '$3' | dd of='$2' conv=fsync 2>/dev/null"; }

# The output of a command in a pod must be EXPECTED: expect_in_pod POD 'CMD' EXPECTED
expect_in_pod() {
  local got
  got="$(t_capture "$3" exec "$1" -- sh -c "$2")"
  [ "$got" = "$3" ] || fail "in $1, '$2' printed '$got', expected '$3'"
}

# Wait (in the pod, with the deadline) until a shell condition holds: wait_in_pod POD 'COND'
wait_in_pod() {
  t exec "$1" -- timeout "$TIMEOUT" sh -c "until $2; do sleep 1; done" \
    || fail "in $1, '$2' did not become true within ${TIMEOUT}s"
}

scenario_basic() {
  pvc basic ReadWriteOnce 64Mi
  pod basic basic
  write_synced basic /data/hello.txt hello-jax
  expect_in_pod basic 'cat /data/hello.txt' hello-jax
  expect_in_pod basic 'mkdir -p /data/dir && seq 1 1000 > /data/dir/seq && wc -l < /data/dir/seq' 1000
  # Files a non-root pod creates belong to its fsGroup.
  expect_in_pod basic 'stat -c %g /data/hello.txt' 1000
}

scenario_rwx() {
  local nodes a b
  nodes="$(kc_capture "worker-a worker-b" get nodes -l '!node-role.kubernetes.io/control-plane' \
    -o jsonpath='{.items[*].metadata.name}')"
  read -r a b _ <<<"$nodes" || true
  if [ -z "${a:-}" ] || [ -z "${b:-}" ]; then fail "rwx needs two worker nodes, found: '$nodes'"; fi
  pvc shared ReadWriteMany 64Mi
  pod rwx-a shared "$a"
  pod rwx-b shared "$b"
  write_synced rwx-a /data/from-a.txt written-on-a
  wait_in_pod rwx-b 'grep -qx written-on-a /data/from-a.txt 2>/dev/null'
  write_synced rwx-b /data/from-b.txt written-on-b
  wait_in_pod rwx-a 'grep -qx written-on-b /data/from-b.txt 2>/dev/null'
}

scenario_snapshot() {
  pvc snap-src ReadWriteOnce 64Mi
  pod snap-src snap-src
  write_synced snap-src /data/state.txt before-snapshot
  apply_manifest <<YAML
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata:
  name: snap-1
  namespace: $TEST_NAMESPACE
spec:
  volumeSnapshotClassName: $SNAPSHOT_CLASS
  source:
    persistentVolumeClaimName: snap-src
YAML
  t wait --for=jsonpath='{.status.readyToUse}'=true volumesnapshot/snap-1 --timeout="${TIMEOUT}s"
  write_synced snap-src /data/state.txt after-snapshot
  pvc snap-restored ReadWriteOnce 64Mi snap-1
  pod snap-restored snap-restored
  expect_in_pod snap-restored 'cat /data/state.txt' before-snapshot
  expect_in_pod snap-src 'cat /data/state.txt' after-snapshot
}

scenario_expand() {
  pvc grow ReadWriteOnce 64Mi
  pod grow grow
  t patch pvc grow --type=merge -p '{"spec":{"resources":{"requests":{"storage":"128Mi"}}}}'
  t wait --for=jsonpath='{.status.capacity.storage}'=128Mi pvc/grow --timeout="${TIMEOUT}s"
  # The quota is the size: df in the running pod shows 128 MiB (131072 KiB).
  # (Single quotes on purpose: the pod's shell expands it.)
  # shellcheck disable=SC2016
  wait_in_pod grow '[ "$(df -k /data | awk "NR==2 {print \$2}")" -ge 131072 ]'
  # And the new space can be used: 96 MiB do not fit in the old 64.
  in_pod grow 'dd if=/dev/zero of=/data/big bs=1048576 count=96 conv=fsync 2>/dev/null'
}

scenario_restart() {
  local node plugin selector
  selector="app.kubernetes.io/instance=$RELEASE,app.kubernetes.io/component=node"
  pvc restart ReadWriteOnce 64Mi
  pod restart restart
  write_synced restart /data/before.txt before-restart
  node="$(t_capture worker-a get pod restart -o jsonpath='{.spec.nodeName}')"
  plugin="$(kc_capture "pod/$RELEASE-node-abcde" -n "$NAMESPACE" get pod -l "$selector" \
    --field-selector "spec.nodeName=$node" -o name)"
  [ -n "$plugin" ] || fail "no node plugin pod on $node"
  kc -n "$NAMESPACE" delete "$plugin" --wait=true --timeout="${TIMEOUT}s"
  # The DaemonSet starts a new plugin pod on the node.
  poll "a new node plugin pod on $node" new_plugin_pod "$node" "$plugin" "$selector"
  kc -n "$NAMESPACE" wait --for=condition=Ready pod -l "$selector" \
    --field-selector "spec.nodeName=$node" --timeout="${TIMEOUT}s"
  # The app pod was not restarted, and its mount answers: old data reads,
  # new data writes.
  wait_in_pod restart 'grep -qx before-restart /data/before.txt 2>/dev/null'
  write_synced restart /data/after.txt after-restart
  expect_in_pod restart 'cat /data/after.txt' after-restart
  expect_in_pod restart 'ls /data | sort | tr "\n" " "' 'after.txt before.txt '
}

# Succeeds when a node plugin pod other than OLD runs on NODE.
new_plugin_pod() {
  local names
  names="$(kubectl --context "$KUBE_CONTEXT" -n "$NAMESPACE" get pod -l "$3" \
    --field-selector "spec.nodeName=$1" -o name)"
  [ -n "$names" ] && [ "$names" != "$2" ]
}

diagnostics() {
  dry && return 0
  echo "--- diagnostics ---" >&2
  kubectl --context "$KUBE_CONTEXT" -n "$TEST_NAMESPACE" get pods,pvc,volumesnapshots -o wide >&2 || true
  kubectl --context "$KUBE_CONTEXT" -n "$TEST_NAMESPACE" describe pods >&2 || true
  kubectl --context "$KUBE_CONTEXT" -n "$NAMESPACE" logs -l "app.kubernetes.io/instance=$RELEASE" \
    --all-containers --prefix --tail=50 >&2 || true
}

cleanup() {
  if [ "$KEEP" = 1 ]; then
    echo "KEEP=1: leaving namespace $TEST_NAMESPACE" >&2
    return 0
  fi
  log "delete namespace $TEST_NAMESPACE"
  kc delete namespace "$TEST_NAMESPACE" --ignore-not-found --wait=true --timeout="${TIMEOUT}s" || true
}

scenarios=(${ARGS[@]+"${ARGS[@]}"})
if [ "${#scenarios[@]}" -eq 0 ]; then scenarios=("${ALL_SCENARIOS[@]}"); fi
for s in "${scenarios[@]}"; do
  declare -F "scenario_$s" >/dev/null || die "unknown scenario '$s' (known: ${ALL_SCENARIOS[*]})"
done

log "test namespace $TEST_NAMESPACE"
apply_manifest <<YAML
apiVersion: v1
kind: Namespace
metadata:
  name: $TEST_NAMESPACE
YAML
trap cleanup EXIT

passed=0
failed=0
failures=()
for s in "${scenarios[@]}"; do
  log "scenario: $s"
  # A subshell with errexit: the first failing command ends the scenario,
  # and the next one still runs.
  set +e
  (set -e; "scenario_$s")
  rc=$?
  set -e
  if [ "$rc" -eq 0 ] && dry; then
    echo "PRINTED: $s (dry-run: nothing ran)" >&3
    passed=$((passed + 1))
  elif [ "$rc" -eq 0 ]; then
    echo "PASS: $s" >&3
    passed=$((passed + 1))
  else
    echo "FAIL: $s" >&3
    failed=$((failed + 1))
    failures+=("$s")
    diagnostics
  fi
done

echo >&3
if dry; then
  echo "e2e dry-run: $passed scenarios printed, $failed broken" >&3
else
  echo "e2e: $passed passed, $failed failed" >&3
fi
if [ "$failed" -gt 0 ]; then
  echo "failed scenarios: ${failures[*]}" >&2
  exit 1
fi
