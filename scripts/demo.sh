#!/usr/bin/env bash
# The main job: build jax-csi, start a local cluster (embedded Postgres, a
# controller and a node plugin), and use a volume the way Kubernetes would:
# create, stage and publish it into a "pod" directory, write to it with
# ordinary tools, snapshot it, restore the snapshot as a new volume, and show
# that nothing but ciphertext reached the node's disk.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
# JAX_DEMO_PROFILE=dev reuses the test build (CI runs the demo that way).
if [ "${JAX_DEMO_PROFILE:-release}" = dev ]; then
  cargo build --locked --bin jax-csi
  bin="$PWD/target/debug/jax-csi"
else
  cargo build --release --locked --bin jax-csi
  bin="$PWD/target/release/jax-csi"
fi
state="${1:-$(mktemp -d /tmp/jax-demo.XXXXXX)}"
mkdir -p "$state"
# mktemp makes the directory 0700; the embedded Postgres runs as the
# `postgres` user and must be able to enter it.
chmod 755 "$state"
state="$(cd "$state" && pwd)"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "the bucket engine on its own"
"$bin" demo --state-dir "$state/engine" | tail -n 12

say "jax-csi local up --state-dir $state/cluster --nodes 1"
ready="$state/ready.json"
"$bin" local up --state-dir "$state/cluster" --nodes 1 >"$ready" 2>"$state/cluster.log" &
cluster=$!
cleanup() {
  kill -TERM "$cluster" 2>/dev/null || true
  wait "$cluster" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 600); do
  [ -s "$ready" ] && break
  kill -0 "$cluster" 2>/dev/null || { cat "$state/cluster.log" >&2; exit 1; }
  sleep 0.1
done
[ -s "$ready" ] || { echo "local up did not print its ready line" >&2; exit 1; }
cat "$ready"
ctl="$state/cluster/controller.sock"
node="$state/cluster/node-0.sock"
csi() { "$bin" csi --endpoint "$1" "${@:2}"; }
field() { sed -n "s/.*\"$1\":\"\\([^\"]*\\)\".*/\\1/p"; }

say "CreateVolume (64 MiB, RWX) through the controller"
vol=$(csi "$ctl" create-volume demo-data --size $((64 << 20)) | tee /dev/stderr | field volume_id)

say "NodeStageVolume + NodePublishVolume on node-0"
stage="$state/kubelet/plugins/csi.jax.dev/$vol/globalmount"
pod="$state/kubelet/pods/demo-pod/volumes/data"
csi "$node" stage "$vol" "$stage"
csi "$node" publish "$vol" "$stage" "$pod"

say "the pod writes with ordinary tools"
echo "hello from the pod" >"$pod/hello.txt"
mkdir -p "$pod/reports/2026"
seq 1 100000 >"$pod/reports/2026/numbers.txt"
cp "$bin" "$pod/a-binary"
sync "$pod/hello.txt"
ls -lR "$pod" | head -n 20
echo "sha256 of the binary in the volume: $(sha256sum <"$pod/a-binary" | cut -c1-16)…"
echo "sha256 of the original:             $(sha256sum <"$bin" | cut -c1-16)…"
csi "$node" stats "$vol" "$pod"

say "snapshot, keep writing, restore the snapshot as a new volume"
sync "$pod/reports/2026/numbers.txt" # fsync: commit a version now
sleep 1 # the node reports the committed head to Postgres asynchronously
snap=$(csi "$ctl" create-snapshot demo-snap --volume "$vol" | tee /dev/stderr | field snapshot_id)
echo "written after the snapshot" >"$pod/hello.txt"
clone=$(csi "$ctl" create-volume demo-restore --size $((64 << 20)) --from-snapshot "$snap" | tee /dev/stderr | field volume_id)
cstage="$state/kubelet/plugins/csi.jax.dev/$clone/globalmount"
cpod="$state/kubelet/pods/restore-pod/volumes/data"
csi "$node" stage "$clone" "$cstage"
csi "$node" publish "$clone" "$cstage" "$cpod"
echo "source volume says:   $(cat "$pod/hello.txt")"
echo "restored volume says: $(cat "$cpod/hello.txt")"

say "what the node stored: ciphertext only"
store="$state/cluster/nodes/node-0/store"
echo "$(find "$store" -type f | wc -l) blobs, $(du -sh "$store" | cut -f1)"
if grep -rqa "hello from the pod" "$store"; then
  echo "plaintext found in the blob store!" >&2
  exit 1
fi
echo "no plaintext of hello.txt anywhere in $store"

say "unpublish and unstage (kubelet's teardown)"
csi "$node" unpublish "$clone" "$cpod"
csi "$node" unstage "$clone" "$cstage"
csi "$node" unpublish "$vol" "$pod"
csi "$node" unstage "$vol" "$stage"
csi "$ctl" list-volumes
say "done: state kept in $state"
