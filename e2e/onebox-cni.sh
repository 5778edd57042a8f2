#!/usr/bin/env bash
# The onebox cluster's CNI plugin (installed by onebox-up.sh as the plugin
# types "onebox" and "loopback"). A pod that is not hostNetwork gets a
# network namespace of its own with `lo` up and an `eth0` holding a private
# /32 address, one end of a veth pair whose other end stays in the same
# namespace: the runtime has the pod IP it wants, and no packet can leave the
# pod (no route out, no host-side device).
# The pods that need the network (the driver's controller and node plugin)
# run with hostNetwork.
#
# CNI protocol: CNI_COMMAND, CNI_NETNS, CNI_IFNAME, CNI_CONTAINERID in the
# environment, the network config on stdin, the result on stdout.
set -euo pipefail

conf="$(cat)"
version="$(printf '%s' "$conf" | sed -n 's/.*"cniVersion" *: *"\([^"]*\)".*/\1/p' | head -n 1)"
version="${version:-1.0.0}"
kind="$(basename "$0")"

error() {
  printf '{"cniVersion":"%s","code":999,"msg":"onebox-cni: %s"}\n' "$version" "$1"
  exit 1
}

# A stable private address for this sandbox (it is only ever seen inside it).
address() {
  local h
  h="$(printf '%s' "${CNI_CONTAINERID:-x}" | sha256sum | cut -c1-4)"
  printf '10.%d.%d.%d' 244 $((16#${h:0:2})) $(( (16#${h:2:2} % 253) + 1 ))
}

in_ns() { nsenter --net="$CNI_NETNS" -- "$@"; }

case "${CNI_COMMAND:-}" in
  VERSION)
    printf '{"cniVersion":"%s","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0"]}\n' "$version"
    ;;
  ADD)
    [ -n "${CNI_NETNS:-}" ] || error "CNI_NETNS is not set"
    if [ "$kind" = loopback ]; then
      in_ns ip link set lo up || error "cannot set lo up in $CNI_NETNS"
      printf '{"cniVersion":"%s","interfaces":[{"name":"lo","sandbox":"%s"}],"ips":[{"address":"127.0.0.1/8","interface":0}],"dns":{}}\n' \
        "$version" "$CNI_NETNS"
      exit 0
    fi
    ifname="${CNI_IFNAME:-eth0}"
    ip4="$(address)"
    if ! in_ns ip link show "$ifname" >/dev/null 2>&1; then
      in_ns ip link add "$ifname" type veth peer name "$ifname-peer" || error "cannot create $ifname in $CNI_NETNS"
      in_ns ip link set "$ifname-peer" up || error "cannot set $ifname-peer up"
    fi
    in_ns ip addr replace "$ip4/32" dev "$ifname" || error "cannot address $ifname"
    in_ns ip link set "$ifname" up || error "cannot set $ifname up"
    printf '{"cniVersion":"%s","interfaces":[{"name":"%s","sandbox":"%s"}],"ips":[{"address":"%s/32","interface":0}],"dns":{}}\n' \
      "$version" "$ifname" "$CNI_NETNS" "$ip4"
    ;;
  DEL | CHECK | GC | STATUS)
    # Everything lives in the pod's namespace and goes with it.
    ;;
  *)
    error "unknown CNI_COMMAND '${CNI_COMMAND:-}'"
    ;;
esac
