#!/usr/bin/env bash
# fsync latency by replica setting (#28), in one run on one machine:
# `jax-csi local up --nodes 2` with its state dir on a disk (default under
# /var/tmp), three volumes published on node-0, and a plain directory of the
# same disk as the baseline. Each run appends a 100-byte line and fsyncs it,
# one after another; the table gives p50 and p99.
#
#   scripts/bench-replicas.sh [STATE_DIR] [FSYNCS]
#
# Volumes: `replicas: 1` (only copy here), `replicas: 2` (a blind copy on
# node-1 follows in the background) and `replicas: 2, syncReplicas: 1` (each
# fsync waits until node-1 holds a copy of its journal frame).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin jax-csi
bin="${CARGO_TARGET_DIR:-$PWD/target}/release/jax-csi"
state="${1:-$(mktemp -d /var/tmp/jax-bench-replicas.XXXXXX)}"
runs="${2:-300}"
mkdir -p "$state"
state="$(cd "$state" && pwd)"

ready="$state/ready.json"
: >"$ready"
"$bin" local up --state-dir "$state/cluster" --nodes 2 >"$ready" 2>"$state/cluster.log" &
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
ctl="$state/cluster/controller.sock"
node0="$state/cluster/node-0.sock"
kubelet="$(sed -n 's/.*"kubelet_dir":"\([^"]*\)".*/\1/p' "$ready")"
csi() { "$bin" csi --endpoint "$1" "${@:2}"; }
field() { sed -n "s/.*\"$1\":\"\\([^\"]*\\)\".*/\\1/p"; }

# Append a line and fsync it $runs times in $1; print "p50 p99" in ms.
fsyncs() {
  python3 - "$1" "$runs" <<'EOF'
import os, sys, time
path, runs = os.path.join(sys.argv[1], "fsync.log"), int(sys.argv[2])
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
line = b"x" * 99 + b"\n"
lat = []
for _ in range(runs):
    t = time.perf_counter()
    os.write(fd, line)
    os.fsync(fd)
    lat.append((time.perf_counter() - t) * 1000)
os.close(fd)
lat.sort()
print(f"{lat[len(lat) // 2]:.2f} {lat[min(len(lat) - 1, int(len(lat) * 0.99))]:.2f}")
EOF
}

publish() { # name params... -> pod path
  local name=$1
  shift
  local args=() p
  for p in "$@"; do args+=(--param "$p"); done
  local vol
  vol=$(csi "$ctl" create-volume "$name" --size $((1 << 30)) "${args[@]}" | field volume_id)
  local stage="$kubelet/node-0/plugins/csi.jax.dev/$vol/globalmount"
  local pod="$kubelet/node-0/pods/$name/volumes/data"
  csi "$node0" stage "$vol" "$stage" >/dev/null
  csi "$node0" publish "$vol" "$stage" "$pod" >/dev/null
  echo "$vol $pod"
}

raw="$state/raw-dir"
mkdir -p "$raw"
read -r _ local_pod < <(publish bench-local replicas=1)
read -r _ async_pod < <(publish bench-async replicas=2)
read -r sync_vol sync_pod < <(publish bench-sync replicas=2 syncReplicas=1)
# node-1 holds the blind copy before the first fsync waits for it.
for _ in $(seq 300); do
  [ -e "$state/cluster/nodes/node-1/replicas/$sync_vol/proof.wrapped" ] && break
  sleep 0.1
done

printf '| %-44s | %9s | %9s | %-12s |\n' "fsync of a 100-byte append ($runs runs)" "p50 ms" "p99 ms" "p50 vs raw"
printf '|%s|%s|%s|%s|\n' "----------------------------------------------" "-----------" "-----------" "--------------"
read -r raw50 raw99 < <(fsyncs "$raw")
row() {
  local p50 p99
  read -r p50 p99 < <(fsyncs "$2")
  printf '| %-44s | %9s | %9s | %-12s |\n' "$1" "$p50" "$p99" "$(python3 -c "print(f'{$p50/$raw50:.1f}x')")"
}
printf '| %-44s | %9s | %9s | %-12s |\n' "plain directory, same disk" "$raw50" "$raw99" "1.0x"
row "jax-csi, replicas 1" "$local_pod"
row "jax-csi, replicas 2, syncReplicas 0" "$async_pod"
row "jax-csi, replicas 2, syncReplicas 1" "$sync_pod"
