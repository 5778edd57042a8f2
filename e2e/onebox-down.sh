#!/usr/bin/env bash
# Stop the onebox cluster of e2e/onebox-up.sh and remove its state dir:
# kubelet first (so nothing restarts), then every pod's container (killed
# through containerd), containerd and its shims, the control plane,
# snapshot-controller, Postgres and etcd, each by its pid file; then the
# mounts left under the state dir, the cgroups kubelet made, and the kernel
# settings kubelet changed are put back. Safe to run twice, or after a
# failed onebox-up.
#
#   e2e/onebox-down.sh [--keep-state]     (--keep-state: keep logs and data)
# shellcheck source=e2e/onebox-lib.sh
source "$(dirname "$0")/onebox-lib.sh"

KEEP_STATE=0
case "${1:-}" in
  -h | --help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  --keep-state) KEEP_STATE=1 ;;
  "") ;;
  *) onebox_die "unknown argument: $1 (try --help)" ;;
esac
[ "$(id -u)" -eq 0 ] || onebox_die "run as root"
if [ ! -d "$S" ]; then
  echo "onebox: nothing to stop ($S does not exist)"
  exit 0
fi

onebox_log "stop kubelet"
onebox_stop kubelet 15

# Every container of the cluster: killed through containerd, then deleted.
if onebox_pid containerd >/dev/null; then
  onebox_log "stop the pods' containers"
  c() { ctr --address "$ONEBOX_CONTAINERD_SOCK" -n k8s.io "$@"; }
  tasks="$(c tasks ls -q 2>/dev/null || true)"
  for t in $tasks; do c tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true; done
  all_stopped() { ! c tasks ls 2>/dev/null | awk 'NR > 1 && $3 != "STOPPED"' | grep -q .; }
  onebox_until 30 all_stopped || echo "onebox: some tasks did not stop within 30s" >&2
  for t in $tasks; do c tasks delete "$t" >/dev/null 2>&1 || true; done
  for t in $(c containers ls -q 2>/dev/null || true); do
    # The CNI result cache of a pod sandbox whose network was never torn
    # down through the CRI (killed here): <network>-<id>-<interface>.
    rm -f /var/lib/cni/results/onebox-"$t"-* /var/lib/cni/results/cni-loopback-"$t"-*
    c containers delete "$t" >/dev/null 2>&1 || true
  done
fi
onebox_stop containerd 15
# Shims outlive containerd: each wrote its pid in its task's bundle.
for f in "$ONEBOX_CONTAINERD"/state/io.containerd.runtime.v2.task/*/*/init.pid \
  "$ONEBOX_CONTAINERD"/state/io.containerd.runtime.v2.task/*/*/shim.pid; do
  [ -f "$f" ] || continue
  pid="$(cat "$f")"
  if [ -n "$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
done

onebox_log "stop the control plane, snapshot-controller, Postgres and etcd"
for n in snapshot-controller kube-scheduler kube-controller-manager kube-apiserver; do
  onebox_stop "$n" 15
done
onebox_stop postgres 20
onebox_stop etcd 15

onebox_log "unmount what is left under $S"
for m in $(onebox_mounts_under "$S"); do
  umount -l "$m" 2>/dev/null || umount -l -f "$m" 2>/dev/null || echo "onebox: could not unmount $m" >&2
done
left="$(onebox_mounts_under "$S")"

# kubelet's links to the containers' logs (it always makes them in
# /var/log/containers), and the shim socket dir containerd made.
if [ -d /var/log/containers ]; then
  for l in /var/log/containers/*.log; do
    [ -L "$l" ] || continue
    case "$(readlink "$l")" in "$S"/*) rm -f "$l" ;; esac
  done
  rmdir /var/log/containers 2>/dev/null || true
fi
rmdir /run/containerd/s /run/containerd 2>/dev/null || true
# What kubelet and containerd made outside the state dir (onebox-up listed
# what did not exist before it started them).
if [ -f "$S/made-outside" ]; then
  while read -r d; do
    case "$d" in
      /var/lib/kubelet | /var/lib/cni | /run/containerd) rm -rf --one-file-system "$d" ;;
    esac
  done <"$S/made-outside"
fi

# The pods' cgroups (cgroupfs driver), deepest first; only empty ones go.
for h in /sys/fs/cgroup/*/; do
  [ -d "${h}kubepods" ] || continue
  find "${h}kubepods" -depth -type d -exec rmdir {} \; 2>/dev/null || true
done

# The kernel settings kubelet changed at start.
if [ -f "$S/sysctl.saved" ]; then
  mapfile -t saved <"$S/sysctl.saved"
  keys=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes)
  for i in "${!keys[@]}"; do
    if [ -n "${saved[$i]:-}" ]; then sysctl -q -w "${keys[$i]}=${saved[$i]}" || true; fi
  done
  rm -f "$S/sysctl.saved"
fi

if [ -n "$left" ]; then
  onebox_die "mounts are still left under $S (not removing it): $left"
fi
if [ "$KEEP_STATE" = 1 ]; then
  echo "onebox: kept $S"
else
  rm -rf --one-file-system "$S"
  echo "onebox: removed $S"
fi
onebox_log "down"
