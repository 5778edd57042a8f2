#!/usr/bin/env bash
# The jax-csi end-to-end scenarios, on the cluster e2e/kind-up.sh or
# e2e/onebox-up.sh made:
#
#   basic          a claim bound, written and read by a non-root pod with an fsGroup
#   rwx            one RWX claim in two pods (on two nodes when there are two)
#   snapshot       a VolumeSnapshot, later writes, and a claim restored from it
#   clone          a claim cloned from another (dataSource: PersistentVolumeClaim)
#   expand         a claim grown while its pod runs; df in the pod sees it
#   vac            a claim moved to another VolumeAttributesClass
#   syncreplicas   the chart's StorageClass with syncReplicas 1 on one node:
#                  no replica can confirm, so a pod's fsync fails with EIO
#   groupsnapshot  a VolumeGroupSnapshot of two claims, each member restored
#   recreate       a pod deleted and created again keeps its data
#   upgrade        the node plugin DaemonSet updated to a new image tag while a
#                  pod writes and reads: no error in the pod (prints the pause)
#   restart        the node plugin pod on the app pod's node deleted: the
#                  pod's mount answers again within seconds
#   delete         a claim deleted: its volume leaves Postgres and the node
#
#   e2e/run.sh [--dry-run] [SCENARIO...]      (default: all, in that order)
#
# Every wait has a deadline (TIMEOUT seconds, default 180). The test
# workloads live in TEST_NAMESPACE (jax-e2e), deleted at the end unless
# KEEP=1. Environment: E2E_ENV (a file of settings to source first, e.g.
# the e2e.env onebox-up.sh writes), CLUSTER_NAME, KUBE_CONTEXT, NAMESPACE and
# RELEASE of the driver, STORAGE_CLASS (jax-csi), SNAPSHOT_CLASS (jax-csi),
# GROUP_SNAPSHOT_CLASS (jax-csi), ATTRIBUTES_CLASS (jax-csi-short-history),
# BUSYBOX_IMAGE (busybox:1.37), NEXT_IMAGE_TAG (the tag `upgrade` moves the
# driver to; default IMAGE_TAG-next), DRY_RUN=1.
if [ -n "${E2E_ENV:-}" ]; then
  # shellcheck disable=SC1090 # a settings file chosen at run time
  source "$E2E_ENV"
fi
# shellcheck source=e2e/lib.sh
source "$(dirname "$0")/lib.sh"

usage() { sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'; }
parse_args "$@"
need kubectl

TEST_NAMESPACE="${TEST_NAMESPACE:-jax-e2e}"
STORAGE_CLASS="${STORAGE_CLASS:-jax-csi}"
SNAPSHOT_CLASS="${SNAPSHOT_CLASS:-jax-csi}"
GROUP_SNAPSHOT_CLASS="${GROUP_SNAPSHOT_CLASS:-jax-csi}"
ATTRIBUTES_CLASS="${ATTRIBUTES_CLASS:-jax-csi-short-history}"
BUSYBOX_IMAGE="${BUSYBOX_IMAGE:-busybox:1.37}"
NEXT_IMAGE_TAG="${NEXT_IMAGE_TAG:-$IMAGE_TAG-next}"
KEEP="${KEEP:-0}"
ALL_SCENARIOS=(basic rwx snapshot clone expand vac syncreplicas groupsnapshot recreate upgrade restart delete)
NODE_SELECTOR="app.kubernetes.io/instance=$RELEASE,app.kubernetes.io/component=node"

t() { kc -n "$TEST_NAMESPACE" "$@"; }
t_capture() { local p="$1"; shift; kc_capture "$p" -n "$TEST_NAMESPACE" "$@"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
# A measurement, printed with the scenario's result.
note() { echo "  - $*" >&3; }
# Seconds since START (SECONDS-based), with one decimal from date +%s%N.
now_ms() { echo $(($(date +%s%N) / 1000000)); }
since() { local d=$(($(now_ms) - $1)); printf '%d.%d' $((d / 1000)) $((d % 1000 / 100)); }

# A claim: pvc NAME ACCESS_MODE SIZE [SOURCE [SOURCE_KIND]]; SOURCE_KIND is
# VolumeSnapshot (the default) or PersistentVolumeClaim.
pvc() {
  local source=""
  if [ -n "${4:-}" ]; then
    local kind="${5:-VolumeSnapshot}" group=""
    if [ "$kind" = VolumeSnapshot ]; then group="
    apiGroup: snapshot.storage.k8s.io"; fi
    source="
  dataSource:$group
    kind: $kind
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

# A pod that mounts a claim at /data: pod NAME CLAIM [NODE] [SCRIPT]. It
# idles (or runs SCRIPT with sh) as a non-root user with an fsGroup (the
# driver's fsGroupPolicy: File).
pod() {
  local node="" script="${4:-trap 'exit 0' TERM; while :; do sleep 3600 & wait; done}"
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
    fsGroup: 2000
  containers:
    - name: app
      image: $BUSYBOX_IMAGE
      command:
        - sh
        - -c
        - |
$(printf '%s\n' "$script" | sed 's/^/          /')
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

# The node a pod runs on, and the driver pods there.
node_of() { t_capture "${2:-worker-a}" get pod "$1" -o jsonpath='{.spec.nodeName}'; }
plugin_on() {
  kc_capture "pod/$RELEASE-node-abcde" -n "$NAMESPACE" get pod -l "$NODE_SELECTOR" \
    --field-selector "spec.nodeName=$1,status.phase=Running" -o name
}
# The volume id (CSI volume handle) of a bound claim.
volume_of() {
  local pv
  pv="$(t_capture "pvc-0000" get pvc "$1" -o jsonpath='{.spec.volumeName}')"
  kc_capture "0123456789abcdef0123456789abcdef" get pv "$pv" -o jsonpath='{.spec.csi.volumeHandle}'
}

scenario_basic() {
  pvc basic ReadWriteOnce 64Mi
  pod basic basic
  write_synced basic /data/hello.txt hello-jax
  expect_in_pod basic 'cat /data/hello.txt' hello-jax
  expect_in_pod basic 'mkdir -p /data/dir && seq 1 1000 > /data/dir/seq && wc -l < /data/dir/seq' 1000
  # The pod runs as a non-root user (uid and gid 1000) with fsGroup 2000: the
  # volume's root belongs to the fsGroup (kubelet passes it to the driver as
  # volume_mount_group), and the pod's user, a member of it, writes there.
  expect_in_pod basic 'id -u' 1000
  expect_in_pod basic 'stat -c %g /data' 2000
  expect_in_pod basic 'id -G | tr " " "\n" | grep -x 2000' 2000
  # A file it creates takes the directory's group (set-group-ID root), as on
  # a volume whose ownership kubelet itself changes for the fsGroup.
  expect_in_pod basic 'stat -c %g /data/hello.txt' 2000
}

scenario_rwx() {
  local nodes a b
  nodes="$(kc_capture "worker-a worker-b" get nodes -l '!node-role.kubernetes.io/control-plane' \
    -o jsonpath='{.items[*].metadata.name}')"
  read -r a b _ <<<"$nodes" || true
  [ -n "${a:-}" ] || fail "rwx found no worker node"
  # One node (onebox): both pods share its mount; two: each node has its own.
  b="${b:-$a}"
  note "pods on $a and $b"
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

scenario_clone() {
  pvc clone-src ReadWriteOnce 64Mi
  pod clone-src clone-src
  write_synced clone-src /data/state.txt before-clone
  pvc clone ReadWriteOnce 64Mi clone-src PersistentVolumeClaim
  pod clone clone
  expect_in_pod clone 'cat /data/state.txt' before-clone
  # The two are independent from here on.
  write_synced clone /data/state.txt written-in-clone
  expect_in_pod clone-src 'cat /data/state.txt' before-clone
}

scenario_expand() {
  pvc grow ReadWriteOnce 64Mi
  pod grow grow
  t patch pvc grow --type=merge -p '{"spec":{"resources":{"requests":{"storage":"128Mi"}}}}'
  t wait --for=jsonpath='{.status.capacity.storage}'=128Mi pvc/grow --timeout="${TIMEOUT}s"
  # The quota is the size: df in the running pod shows 128 MiB (131072 KiB).
  # (Single quotes on purpose: the pod's shell expands it.)
  # shellcheck disable=SC2016
  wait_in_pod grow '[ "$(df -kP /data | awk "NR==2 {print \$2}")" -ge 131072 ]'
  # And the new space can be used: 96 MiB do not fit in the old 64.
  in_pod grow 'dd if=/dev/zero of=/data/big bs=1048576 count=96 conv=fsync 2>/dev/null'
}

scenario_vac() {
  local id
  pvc vac ReadWriteOnce 64Mi
  pod vac vac
  t patch pvc vac --type=merge -p "{\"spec\":{\"volumeAttributesClassName\":\"$ATTRIBUTES_CLASS\"}}"
  t wait --for=jsonpath='{.status.currentVolumeAttributesClassName}'="$ATTRIBUTES_CLASS" pvc/vac \
    --timeout="${TIMEOUT}s"
  # The resizer only sets the current class after the driver's
  # ControllerModifyVolume succeeded; the driver logged what it recorded.
  id="$(volume_of vac)"
  local logged
  logged="$(kc_capture "volume=$id volume modified historyRetention" -n "$NAMESPACE" logs \
    "deploy/$RELEASE-controller" -c jax-csi --tail=-1)"
  printf '%s\n' "$logged" | grep "volume=$id" | grep "volume modified" | grep -q historyRetention \
    || fail "the controller logged no modification of volume $id with historyRetention"
  # The volume still works.
  write_synced vac /data/after.txt after-modify
  expect_in_pod vac 'cat /data/after.txt' after-modify
}

# syncReplicas as the chart sets it (#28): its StorageClass template
# rendered with replicas 2 and syncReplicas 1. A onebox cluster has one
# node, so no other replica can confirm a write: a pod's fsync must fail
# with EIO once the driver's wait is over (never a silent success), and
# the node plugin says why. (With a second node the fsync would return once
# that node holds a copy of its journal frame: tests/multinode.rs.)
scenario_syncreplicas() {
  need helm
  local class="$STORAGE_CLASS-sync-e2e" start
  # (The chart renders nothing without a database; the StorageClass does
  # not name it.)
  capture "kind: StorageClass" helm template "$RELEASE" "$ROOT/charts/jax-csi" \
    --namespace "$NAMESPACE" --show-only templates/storageclass.yaml \
    --set-string database.url=postgres://not-rendered \
    --set storageClass.name="$class" --set storageClass.parameters.replicas=2 \
    --set storageClass.parameters.syncReplicas=1 | apply_manifest
  STORAGE_CLASS="$class" pvc syncr ReadWriteOnce 64Mi
  pod syncr syncr
  start="$(now_ms)"
  if ! dry; then
    if in_pod syncr 'echo x | dd of=/data/f conv=fsync 2>/tmp/err'; then
      fail "an fsync succeeded though no other replica could confirm it"
    fi
    in_pod syncr "grep -qiE 'i/o error|input/output error' /tmp/err" \
      || fail "the fsync did not fail with EIO: $(in_pod syncr 'cat /tmp/err')"
  fi
  note "the fsync failed with EIO after $(since "$start") s"
  local logged
  logged="$(kc_capture "fsync failed: the replicas it waits for did not confirm" -n "$NAMESPACE" \
    logs "daemonset/$RELEASE-node" -c jax-csi --tail=-1)"
  printf '%s\n' "$logged" | grep -q "fsync failed: the replicas it waits for did not confirm" \
    || fail "the node plugin logged no reason for the failed fsync"
  t delete pod syncr --wait=false
  kc delete storageclass "$class" --wait=false
}

# The VolumeSnapshots of a group snapshot, and whether it has N of them.
group_members() {
  t_capture "snapshot-a snapshot-b" get volumesnapshot \
    -o jsonpath="{range .items[?(@.status.volumeGroupSnapshotName==\"$1\")]}{.metadata.name}{\" \"}{end}"
}
group_has_members() { [ "$(group_members "$1" | wc -w)" -ge "$2" ]; }

scenario_groupsnapshot() {
  local members got m i=0
  pvc grp-a ReadWriteOnce 64Mi
  pvc grp-b ReadWriteOnce 64Mi
  t label pvc grp-a grp-b e2e-group=grp-1
  pod grp-a grp-a
  pod grp-b grp-b
  write_synced grp-a /data/member.txt from-a
  write_synced grp-b /data/member.txt from-b
  apply_manifest <<YAML
apiVersion: groupsnapshot.storage.k8s.io/v1beta1
kind: VolumeGroupSnapshot
metadata:
  name: grp-1
  namespace: $TEST_NAMESPACE
spec:
  volumeGroupSnapshotClassName: $GROUP_SNAPSHOT_CLASS
  source:
    selector:
      matchLabels:
        e2e-group: grp-1
YAML
  t wait --for=jsonpath='{.status.readyToUse}'=true volumegroupsnapshot/grp-1 --timeout="${TIMEOUT}s"
  # The snapshot-controller names the member VolumeSnapshots' group in their
  # status one at a time, possibly after the group is ready.
  poll "two member snapshots of grp-1" group_has_members grp-1 2
  members="$(group_members grp-1)"
  [ "$(wc -w <<<"$members")" -eq 2 ] || fail "the group snapshot has members '$members', expected two"
  # Writes after the group snapshot reach neither restored claim.
  write_synced grp-a /data/member.txt after-group-snapshot
  got=""
  for m in $members; do
    i=$((i + 1))
    t wait --for=jsonpath='{.status.readyToUse}'=true "volumesnapshot/$m" --timeout="${TIMEOUT}s"
    pvc "grp-restored-$i" ReadWriteOnce 64Mi "$m"
    pod "grp-restored-$i" "grp-restored-$i"
    got+="$(t_capture "from-a" exec "grp-restored-$i" -- cat /data/member.txt) "
  done
  dry && return 0
  [ "$(tr ' ' '\n' <<<"$got" | sort | tr '\n' ' ')" = " from-a from-b " ] \
    || fail "the restored members hold '$got', expected from-a and from-b"
}

scenario_recreate() {
  local node
  pvc keep ReadWriteOnce 64Mi
  pod keep keep
  write_synced keep /data/keep.txt kept-across-pods
  node="$(node_of keep)"
  t delete pod keep --wait=true --timeout="${TIMEOUT}s"
  pod keep keep "$node"
  expect_in_pod keep 'cat /data/keep.txt' kept-across-pods
  write_synced keep /data/second.txt second-pod
  expect_in_pod keep 'ls /data | sort | tr "\n" " "' 'keep.txt second.txt '
}

# The writer/reader the upgrade runs beside: every 50 ms one fsync'd write
# and a read back of it, each line of /tmp/ops "UPTIME ok|err".
# (Single quotes on purpose: the pod's shell expands it.)
# shellcheck disable=SC2016
LOOP='i=0
while [ ! -e /tmp/stop ]; do
  i=$((i + 1))
  t=$(cut -d" " -f1 /proc/uptime)
  if echo "$i" | dd of=/data/loop.txt conv=fsync 2>/dev/null && [ "$(cat /data/loop.txt)" = "$i" ]; then
    echo "$t ok"
  else
    echo "$t err $i"
  fi >> /tmp/ops
  usleep 50000
done
touch /tmp/stopped
trap "exit 0" TERM
while :; do sleep 3600 & wait; done'

# ops_count POD: lines the loop has written.
ops_more_than() { [ "$(t_capture 100 exec "$1" -- sh -c 'wc -l < /tmp/ops')" -gt "$2" ]; }

scenario_upgrade() {
  need helm
  local node before n0 n1 summary
  pvc upgrade ReadWriteOnce 64Mi
  pod upgrade upgrade "" "$LOOP"
  node="$(node_of upgrade)"
  before="$(plugin_on "$node")"
  [ -n "$before" ] || fail "no node plugin pod on $node"
  poll "the loop in pod upgrade runs" ops_more_than upgrade 20
  n0="$(t_capture 20 exec upgrade -- sh -c 'wc -l < /tmp/ops')"
  local start
  start="$(now_ms)"
  # The update as users make it: helm upgrade with the new tag.
  run helm upgrade "$RELEASE" "$ROOT/charts/jax-csi" --kube-context "$KUBE_CONTEXT" \
    --namespace "$NAMESPACE" --reuse-values --set image.tag="$NEXT_IMAGE_TAG" \
    --wait --timeout "${TIMEOUT}s"
  kc -n "$NAMESPACE" rollout status "daemonset/$RELEASE-node" --timeout="${TIMEOUT}s"
  note "helm upgrade and the node plugin rollout took $(since "$start") s"
  local after
  after="$(plugin_on "$node")"
  dry || [ "$after" != "$before" ] || fail "the node plugin pod on $node was not replaced ($before)"
  local image
  image="$(kc_capture "$IMAGE_REPO:$NEXT_IMAGE_TAG" -n "$NAMESPACE" get "${after:-pod/x}" \
    -o jsonpath='{.spec.containers[?(@.name=="jax-csi")].image}')"
  [ "${image##*:}" = "$NEXT_IMAGE_TAG" ] || fail "the new node plugin runs $image"
  n1="$(t_capture 40 exec upgrade -- sh -c 'wc -l < /tmp/ops')"
  poll "the loop goes on after the update" ops_more_than upgrade $((n1 + 20))
  in_pod upgrade 'touch /tmp/stop'
  wait_in_pod upgrade '[ -e /tmp/stopped ]'
  # shellcheck disable=SC2016 # awk's own variables
  summary="$(t_capture "ops=100 errors=0 pause=0.10" exec upgrade -- awk -v from="$n0" '
    NR > from { if (prev != "" && $1 - prev > gap) gap = $1 - prev; prev = $1 }
    $2 == "err" { e++ }
    END { printf "ops=%d errors=%d pause=%.2f\n", NR, e + 0, gap + 0 }' /tmp/ops)"
  note "writes and reads in the pod during the update: $summary (pause: the longest gap between two operations)"
  case "$summary" in
    *" errors=0 "*) ;;
    *) t exec upgrade -- grep err /tmp/ops | head -n 20 >&2 || true
       fail "the pod saw errors during the node plugin update: $summary" ;;
  esac
}

scenario_restart() {
  local node plugin start
  pvc restart ReadWriteOnce 64Mi
  pod restart restart
  write_synced restart /data/before.txt before-restart
  node="$(node_of restart)"
  plugin="$(plugin_on "$node")"
  [ -n "$plugin" ] || fail "no node plugin pod on $node"
  start="$(now_ms)"
  kc -n "$NAMESPACE" delete "$plugin" --wait=false
  # Until the old plugin has exited its mounts still answer: wait for it to
  # be gone, then for the pod's mount to answer again (the fd-keeper held
  # the FUSE connection, the new plugin resumes it).
  kc -n "$NAMESPACE" wait --for=delete "$plugin" --timeout="${TIMEOUT}s"
  local gone
  gone="$(since "$start")"
  wait_in_pod restart 'grep -qx before-restart /data/before.txt 2>/dev/null'
  note "the old plugin was gone $gone s after the delete; the mount answered at $(since "$start") s"
  # The DaemonSet starts a new plugin pod on the node.
  poll "a new node plugin pod on $node" new_plugin_pod "$node" "$plugin"
  local fresh
  fresh="$(other_plugin_pod "$node" "$plugin")"
  kc -n "$NAMESPACE" wait --for=condition=Ready "${fresh:-pod/x}" --timeout="${TIMEOUT}s"
  note "the new node plugin pod was ready $(since "$start") s after the delete"
  # The app pod was not restarted, and its mount works: old data reads,
  # new data writes.
  wait_in_pod restart 'grep -qx before-restart /data/before.txt 2>/dev/null'
  start="$(now_ms)"
  write_synced restart /data/after.txt after-restart
  note "the first write (fsync) after the new plugin was ready took $(since "$start") s"
  expect_in_pod restart 'cat /data/after.txt' after-restart
  expect_in_pod restart 'ls /data | sort | tr "\n" " "' 'after.txt before.txt '
  local restarts
  restarts="$(t_capture 0 get pod restart -o jsonpath='{.status.containerStatuses[0].restartCount}')"
  [ "$restarts" = 0 ] || fail "the app pod restarted $restarts times"
}

# The node plugin pod on NODE other than OLD.
other_plugin_pod() {
  kc_capture "pod/$RELEASE-node-fghij" -n "$NAMESPACE" get pod -l "$NODE_SELECTOR" \
    --field-selector "spec.nodeName=$1" -o name | grep -vx "$2" | head -n 1
}

# Succeeds when a node plugin pod other than OLD runs on NODE.
new_plugin_pod() {
  local names
  names="$(kubectl --context "$KUBE_CONTEXT" -n "$NAMESPACE" get pod -l "$NODE_SELECTOR" \
    --field-selector "spec.nodeName=$1" -o name)"
  [ -n "$names" ] && [ "$names" != "$2" ]
}

# Succeeds when the volume is in no record: volume list and mount list.
volume_unrecorded() {
  local out
  out="$(kubectl --context "$KUBE_CONTEXT" -n "$NAMESPACE" exec "deploy/$RELEASE-controller" -c jax-csi -- \
    jax-csi volume list -o json)" || return 1
  out+="$(kubectl --context "$KUBE_CONTEXT" -n "$NAMESPACE" exec "deploy/$RELEASE-controller" -c jax-csi -- \
    jax-csi mount list -o json)" || return 1
  ! grep -q "$1" <<<"$out"
}

# Succeeds when the node plugin on NODE no longer holds the volume.
volume_off_node() {
  local plugin
  plugin="$(kubectl --context "$KUBE_CONTEXT" -n "$NAMESPACE" get pod -l "$NODE_SELECTOR" \
    --field-selector "spec.nodeName=$2,status.phase=Running" -o name)"
  [ -n "$plugin" ] || return 1
  # The state dir itself (the operator service answers only for volumes
  # staged now, so it says nothing of a bucket left behind).
  local held args state_dir
  args="$(kubectl --context "$KUBE_CONTEXT" -n "$NAMESPACE" get "$plugin" \
    -o jsonpath='{.spec.containers[?(@.name=="jax-csi")].args}')" || return 1
  state_dir="$(printf '%s' "$args" | grep -o -- '--state-dir=[^",]*' | head -n 1 | cut -d= -f2)"
  [ -n "$state_dir" ] || return 1
  held="$(kubectl --context "$KUBE_CONTEXT" -n "$NAMESPACE" exec "$plugin" -c jax-csi -- \
    jax-csi bucket --state-dir "$state_dir" --kek-file /etc/jax-csi/kek/kek list)" || return 1
  ! printf '%s\n' "$held" | grep -qx "$1"
}

scenario_delete() {
  local id pv node plugin
  pvc gone ReadWriteOnce 64Mi
  pod gone gone
  write_synced gone /data/gone.txt soon-gone
  id="$(volume_of gone)"
  pv="$(t_capture pvc-0000 get pvc gone -o jsonpath='{.spec.volumeName}')"
  node="$(node_of gone)"
  # While the claim exists, the node holds the volume.
  plugin="$(plugin_on "$node")"
  kc -n "$NAMESPACE" exec "${plugin:-pod/x}" -c jax-csi -- \
    jax-csi volume ls "$id" >/dev/null \
    || fail "node $node does not list volume $id while it is mounted"
  t delete pod gone --wait=true --timeout="${TIMEOUT}s"
  t delete pvc gone --wait=true --timeout="${TIMEOUT}s"
  kc wait --for=delete "pv/$pv" --timeout="${TIMEOUT}s"
  poll "volume $id gone from Postgres (volume list, mount list)" volume_unrecorded "$id"
  poll "volume $id gone from node $node" volume_off_node "$id" "$node"
}

diagnostics() {
  dry && return 0
  echo "--- diagnostics ---" >&2
  kubectl --context "$KUBE_CONTEXT" -n "$TEST_NAMESPACE" get pods,pvc,volumesnapshots -o wide >&2 || true
  kubectl --context "$KUBE_CONTEXT" -n "$TEST_NAMESPACE" describe pods >&2 || true
  kubectl --context "$KUBE_CONTEXT" -n "$TEST_NAMESPACE" get events --sort-by=.lastTimestamp >&2 || true
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
# Interrupted: still delete the namespace. The normal end deletes it before
# the summary, so the summary stays the last line.
trap cleanup EXIT

passed=0
failed=0
failures=()
for s in "${scenarios[@]}"; do
  log "scenario: $s"
  started=$SECONDS
  # A subshell with errexit: the first failing command ends the scenario,
  # and the next one still runs.
  set +e
  (set -e; "scenario_$s")
  rc=$?
  set -e
  took=$((SECONDS - started))
  if [ "$rc" -eq 0 ] && dry; then
    echo "PRINTED: $s (dry-run: nothing ran)" >&3
    passed=$((passed + 1))
  elif [ "$rc" -eq 0 ]; then
    echo "PASS: $s (${took}s)" >&3
    passed=$((passed + 1))
  else
    echo "FAIL: $s (${took}s)" >&3
    failed=$((failed + 1))
    failures+=("$s")
    diagnostics
  fi
done

trap - EXIT
cleanup
echo >&3
if [ "$failed" -gt 0 ]; then
  echo "failed scenarios: ${failures[*]}" >&2
fi
if dry; then
  echo "e2e dry-run: $passed scenarios printed, $failed broken" >&3
else
  echo "e2e: $passed passed, $failed failed" >&3
fi
[ "$failed" -eq 0 ]
