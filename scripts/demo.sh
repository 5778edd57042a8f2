#!/usr/bin/env bash
# The main job: build jax-csi, start a local cluster (embedded Postgres, a
# controller and two node plugins that sync peer to peer), and use a volume
# the way Kubernetes would: create it, stage and publish it on both nodes,
# write on one and see it on the other (both ways), move a pod's volume to
# a node that never held it, snapshot it, restore the snapshot as a new
# volume, clone it, look at it with the operator CLI (records, history,
# restore of an old version) and show that nothing but ciphertext reached
# the nodes' disks. Then a `replicas: 2` volume: kept blind on a second
# node, its writer's node lost (process killed, state dir deleted), the
# volume published on the third node with every byte and two replicas
# again. Ends with a summary of timings; nothing stays mounted.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
# JAX_DEMO_PROFILE=dev reuses the test build (CI runs the demo that way).
if [ "${JAX_DEMO_PROFILE:-release}" = dev ]; then
  cargo build --locked --bin jax-csi
  bin="${CARGO_TARGET_DIR:-$PWD/target}/debug/jax-csi"
else
  cargo build --release --locked --bin jax-csi
  bin="${CARGO_TARGET_DIR:-$PWD/target}/release/jax-csi"
fi
state="${1:-$(mktemp -d /tmp/jax-demo.XXXXXX)}"
mkdir -p "$state"
state="$(cd "$state" && pwd)"
now_ms() { echo $(($(date +%s%N) / 1000000)); }
secs() { local d=$(($(now_ms) - $1)); printf '%d.%02d' $((d / 1000)) $((d % 1000 / 10)); }
t0=$(now_ms)
declare -a summary=()
note() { summary+=("$(printf '%-52s %8s s' "$1" "$(secs "$2")")"); }

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# Wait (up to 20 s) until `$@` succeeds; prints how long it took.
until_true() {
  local start
  start=$(now_ms)
  for _ in $(seq 2000); do
    if "$@" 2>/dev/null; then
      echo "   (after $(secs "$start") s)"
      return 0
    fi
    sleep 0.01
  done
  echo "timed out waiting for: $*" >&2
  return 1
}

say "the bucket engine on its own"
"$bin" demo --state-dir "$state/engine" | tail -n 12

say "jax-csi local up --state-dir $state/cluster --nodes 3"
ready="$state/ready.json"
: >"$ready"
"$bin" local up --state-dir "$state/cluster" --nodes 3 >"$ready" 2>"$state/cluster.log" &
cluster=$!
cleanup() {
  kill -TERM "$cluster" 2>/dev/null || true
  wait "$cluster" 2>/dev/null || true
}
trap cleanup EXIT
t=$(now_ms)
for _ in $(seq 600); do
  [ -s "$ready" ] && break
  kill -0 "$cluster" 2>/dev/null || { cat "$state/cluster.log" >&2; exit 1; }
  sleep 0.1
done
[ -s "$ready" ] || { echo "local up did not print its ready line" >&2; exit 1; }
cat "$ready"
note "cluster up (Postgres, controller, 3 nodes)" "$t"
ctl="$state/cluster/controller.sock"
node0="$state/cluster/node-0.sock"
node1="$state/cluster/node-1.sock"
# Each node's operator (Admin) service has its own socket, apart from csi.sock.
admin0="$state/cluster/node-0-admin.sock"
admin1="$state/cluster/node-1-admin.sock"
csi() { "$bin" csi --endpoint "$1" "${@:2}"; }
field() { sed -n "s/.*\"$1\":\"\\([^\"]*\\)\".*/\\1/p"; }
kubelet="$(sed -n 's/.*"kubelet_dir":"\([^"]*\)".*/\1/p' "$ready")"
db_url="$(sed -n 's/.*"database_url":"\([^"]*\)".*/\1/p' "$ready")"
ops() { "$bin" "$@"; }

say "CreateVolume (512 MiB, RWX) through the controller"
vol=$(csi "$ctl" create-volume demo-data --size $((512 << 20)) | tee /dev/stderr | field volume_id)

say "NodeStageVolume + NodePublishVolume on node-0"
stage0="$kubelet/node-0/plugins/csi.jax.dev/$vol/globalmount"
pod0="$kubelet/node-0/pods/writer/volumes/data"
csi "$node0" stage "$vol" "$stage0"
csi "$node0" publish "$vol" "$stage0" "$pod0"

say "the pod on node-0 writes with ordinary tools"
echo "hello from the pod on node-0" >"$pod0/hello.txt"
mkdir -p "$pod0/reports/2026"
seq 1 100000 >"$pod0/reports/2026/numbers.txt"
cp "$bin" "$pod0/a-binary"
sync "$pod0/hello.txt" "$pod0/reports/2026/numbers.txt" "$pod0/a-binary"
# shellcheck disable=SC2012 # the pod lists its files with ordinary tools
ls -lR "$pod0" | head -n 12
csi "$node0" stats "$vol" "$pod0"

say "the same volume published on node-1 (RWX: one volume, two nodes)"
stage1="$kubelet/node-1/plugins/csi.jax.dev/$vol/globalmount"
pod1="$kubelet/node-1/pods/reader/volumes/data"
t=$(now_ms)
# node-1 finds node-0 through Postgres once node-0 reported its head.
until_true csi "$node1" stage "$vol" "$stage1" >/dev/null
csi "$node1" publish "$vol" "$stage1" "$pod1"
note "first stage on node-1 (fetched from node-0)" "$t"
echo "node-1 reads: $(cat "$pod1/hello.txt")"
echo "sha256 of the binary on node-1: $(sha256sum <"$pod1/a-binary" | cut -c1-16)…"
echo "sha256 of the original:         $(sha256sum <"$bin" | cut -c1-16)…"
cmp "$bin" "$pod1/a-binary"

say "a write on node-1 appears on node-0, and back"
t=$(now_ms)
echo "written on node-1" >"$pod1/from-node-1.txt"
sync "$pod1/from-node-1.txt"
until_true grep -qx "written on node-1" "$pod0/from-node-1.txt"
note "write + fsync on node-1 seen on node-0" "$t"
t=$(now_ms)
echo "changed on node-0" >"$pod0/hello.txt"
sync "$pod0/hello.txt"
until_true grep -qx "changed on node-0" "$pod1/hello.txt"
note "write + fsync on node-0 seen on node-1" "$t"
rm "$pod0/a-binary"
sync "$pod0"
until_true test ! -e "$pod1/a-binary"
echo "node-1 after node-0 deleted a-binary: $(cd "$pod1" && printf '%s ' *)"

say "snapshot, keep writing, restore the snapshot as a new volume"
sleep 1 # both nodes report their heads to Postgres asynchronously
snap=$(csi "$ctl" create-snapshot demo-snap --volume "$vol" | tee /dev/stderr | field snapshot_id)
echo "written after the snapshot" >"$pod0/hello.txt"
sync "$pod0/hello.txt"
clone=$(csi "$ctl" create-volume demo-restore --size $((512 << 20)) --from-snapshot "$snap" | tee /dev/stderr | field volume_id)
cstage="$kubelet/node-1/plugins/csi.jax.dev/$clone/globalmount"
cpod="$kubelet/node-1/pods/restore/volumes/data"
t=$(now_ms)
csi "$node1" stage "$clone" "$cstage"
csi "$node1" publish "$clone" "$cstage" "$cpod"
note "restore of the snapshot staged on node-1 (O(1))" "$t"
echo "source volume says:   $(cat "$pod0/hello.txt")"
echo "restored volume says: $(cat "$cpod/hello.txt")"
grep -qx "changed on node-0" "$cpod/hello.txt"

say "a clone of the live volume (O(1): it shares every block until written)"
t=$(now_ms)
clone2=$(csi "$ctl" create-volume demo-clone --size $((512 << 20)) --from-volume "$vol" | tee /dev/stderr | field volume_id)
c2stage="$kubelet/node-0/plugins/csi.jax.dev/$clone2/globalmount"
c2pod="$kubelet/node-0/pods/clone/volumes/data"
csi "$node0" stage "$clone2" "$c2stage"
csi "$node0" publish "$clone2" "$c2stage" "$c2pod"
note "clone of the live volume staged on node-0" "$t"
echo "the clone has $(wc -l <"$c2pod/reports/2026/numbers.txt") lines of numbers.txt"
echo "written in the clone only" >"$c2pod/clone-only.txt"
sync "$c2pod/clone-only.txt"
test ! -e "$pod0/clone-only.txt"
csi "$node0" unpublish "$clone2" "$c2pod"
csi "$node0" unstage "$clone2" "$c2stage"

say "the operator's view: jax-csi volume list / node list / mount list"
sleep 1 # heads and mounts reach Postgres asynchronously
ops volume list --database-url "$db_url"
ops node list --database-url "$db_url"
ops mount list --database-url "$db_url"

say "history and restore of an old version, through node-1 (the pods see it)"
ops volume history "$vol" --node-endpoint "unix://$admin1" | head -n 6
first=$(ops volume history "$vol" --node-endpoint "unix://$admin1" -o json |
  sed -n 's/.*"hash": "\([0-9a-f]*\)".*/\1/p' | while read -r h; do
    if [ "$(ops volume cat "$vol" /hello.txt --version "$h" --node-endpoint "unix://$admin1" 2>/dev/null)" = "hello from the pod on node-0" ]; then
      echo "$h"
    fi
  done | tail -n 1)
echo "the version where hello.txt first said hello: ${first:0:16}…"
t=$(now_ms)
ops volume restore "$vol" --version "$first" --node-endpoint "unix://$admin1"
until_true grep -qx "hello from the pod on node-0" "$pod0/hello.txt"
note "restore on node-1 seen by the pod on node-0" "$t"
echo "node-0 reads again: $(cat "$pod0/hello.txt")"
ops volume ls "$vol" / --node-endpoint "unix://$admin0"

say "the pod on node-0 moves to node-1: unpublish + unstage on node-0"
csi "$node0" unpublish "$vol" "$pod0"
csi "$node0" unstage "$vol" "$stage0"
echo "node-1 still has every byte: $(wc -l <"$pod1/reports/2026/numbers.txt") lines in numbers.txt"

say "replicas: 2 keeps a second copy on another node, with no mount and no key that opens it"
dur=$(csi "$ctl" create-volume demo-durable --size $((64 << 20)) --param replicas=2 | field volume_id)
dstage="$kubelet/node-0/plugins/csi.jax.dev/$dur/globalmount"
dpod="$kubelet/node-0/pods/durable/volumes/data"
csi "$node0" stage "$dur" "$dstage"
csi "$node0" publish "$dur" "$dstage" "$dpod"
echo "kept on two nodes" >"$dpod/kept.txt"
seq 1 200000 >"$dpod/numbers.txt"
sync "$dpod/kept.txt" "$dpod/numbers.txt"
t=$(now_ms)
durable_json() { ops volume show "$dur" --database-url "$db_url" -o json; }
# in_sync: the replicas in sync, as `node:role` lines.
in_sync() { durable_json | python3 -c '
import json, sys
for r in json.load(sys.stdin)["replicas"]:
    if r["in_sync"]:
        print(r["node"] + ":" + r["role"])'; }
two_in_sync() { [ "$(in_sync | wc -l)" -ge 2 ] && durable_json | grep -q '"replicas_in_sync": 2'; }
until_true two_in_sync
note "blind replica in sync with node-0" "$t"
blind=$(in_sync | sed -n 's/:replica$//p' | head -n 1)
[ -n "$blind" ] || { echo "no blind replica in sync: $(in_sync)" >&2; exit 1; }
durable_json | grep '"condition"'
echo "$blind holds of it, with no mount: $(cd "$state/cluster/nodes/$blind/replicas/$dur" && printf '%s ' *)(ciphertext in its store)"
test ! -e "$state/cluster/nodes/$blind/buckets/$dur"
echo "$blind holds no key that opens it"

say "node-0 is lost: its process killed, its state dir deleted (jax-csi local lose-node)"
ops local lose-node --state-dir "$state/cluster" --node node-0
test ! -e "$state/cluster/nodes/node-0/buckets/$dur"
third=node-2
[ "$blind" = node-2 ] && third=node-1
third_sock="$state/cluster/$third.sock"
say "the volume published on $third, which never held it: every byte from the blind copy on $blind"
tstage="$kubelet/$third/plugins/csi.jax.dev/$dur/globalmount"
tpod="$kubelet/$third/pods/durable/volumes/data"
t=$(now_ms)
csi "$third_sock" stage "$dur" "$tstage"
csi "$third_sock" publish "$dur" "$tstage" "$tpod"
note "stage on $third after node-0 was lost" "$t"
echo "$third reads: $(cat "$tpod/kept.txt"), and $(wc -l <"$tpod/numbers.txt") lines of numbers.txt"
grep -qx "kept on two nodes" "$tpod/kept.txt"
seq 1 200000 | cmp - "$tpod/numbers.txt"
echo "written on $third after the loss" >"$tpod/after.txt"
sync "$tpod/after.txt"
t=$(now_ms)
whole_again() { two_in_sync && in_sync | grep -qx "$third:stages" && in_sync | grep -qx "$blind:replica"; }
until_true whole_again
note "two replicas in sync again ($third, $blind)" "$t"
in_sync | sed 's/^/   in sync: /'
csi "$third_sock" unpublish "$dur" "$tpod"
csi "$third_sock" unstage "$dur" "$tstage"

say "what the nodes stored: ciphertext only"
for n in node-0 node-1 node-2; do
  store="$state/cluster/nodes/$n/store"
  echo "$n: $(find "$store" -type f | wc -l) blobs, $(du -sh "$store" | cut -f1)"
  if grep -rqa "hello from the pod" "$store"; then
    echo "plaintext found in $n's blob store!" >&2
    exit 1
  fi
done
echo "no plaintext of hello.txt anywhere in the nodes' stores"

say "unpublish and unstage (kubelet's teardown)"
csi "$node1" unpublish "$clone" "$cpod"
csi "$node1" unstage "$clone" "$cstage"
csi "$node1" unpublish "$vol" "$pod1"
csi "$node1" unstage "$vol" "$stage1"
csi "$ctl" list-volumes
cleanup
trap - EXIT
if grep -q " $state/" /proc/self/mounts; then
  echo "mounts left behind:" >&2
  grep " $state/" /proc/self/mounts >&2
  exit 1
fi
note "whole demo" "$t0"
say "summary"
printf '%s\n' "${summary[@]}"
echo "nothing left mounted; state kept in $state"
