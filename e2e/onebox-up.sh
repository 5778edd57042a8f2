#!/usr/bin/env bash
# A real Kubernetes on this machine, with jax-csi installed by its chart:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler and one
# kubelet on containerd (certificates generated now), the snapshot CRDs and
# snapshot-controller, images built here (no pulls: a pause image and test
# pods from busybox-static, the driver from the jax-csi binary and the
# libraries it links, one image per CSI sidecar), a Postgres beside the
# cluster, and `helm install` of charts/jax-csi (fd-keeper on, group
# snapshots and VolumeAttributesClass enabled).
#
#   e2e/onebox-up.sh            then: E2E_ENV=$ONEBOX_STATE/e2e.env e2e/run.sh
#   e2e/onebox-down.sh          stops everything and removes the state dir
#
# Needs root, /dev/fuse, the Kubernetes binaries (K8S_BIN_TARBALL, default
# ../shared/k8s/k8s-bin.tar.xz beside the repository), a built jax-csi
# (JAX_CSI_BIN, default target/release/jax-csi) and Debian's containerd,
# runc, busybox-static and postgresql (installed with apt when missing).
# Everything lives in ONEBOX_STATE (/tmp/jax-onebox); every process is
# stopped by its pid file. Settings: see e2e/onebox-lib.sh.
# shellcheck source=e2e/onebox-lib.sh
source "$(dirname "$0")/onebox-lib.sh"

case "${1:-}" in
  -h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) onebox_die "unknown argument: $1 (try --help)" ;;
esac

IMAGE_DOMAIN="jax.local"
DRIVER_REPO="$IMAGE_DOMAIN/jax-csi"
DRIVER_TAG="onebox-1"
# The tag the DaemonSet update scenario moves the node plugin to (same binary).
DRIVER_NEXT_TAG="onebox-2"
PAUSE_IMAGE="$IMAGE_DOMAIN/pause:1"
BUSYBOX_REF="$IMAGE_DOMAIN/busybox:1.35"
SERVICE_CIDR="10.0.0.0/24"
NAMESPACE="${NAMESPACE:-jax-csi}"
RELEASE="${RELEASE:-jax-csi}"
# Sidecar binaries of the tarball, each made an image jax.local/NAME:VERSION.
declare -A SIDECAR_VERSION=(
  [csi-provisioner]=v5.2.0 [csi-resizer]=v1.13.2 [csi-snapshotter]=v8.2.0
  [csi-node-driver-registrar]=v2.13.0 [livenessprobe]=v2.15.0
)

# ---------------------------------------------------------------------------
# Preflight: fail fast, before anything starts.
# ---------------------------------------------------------------------------
onebox_log "preflight"
[ "$(id -u)" -eq 0 ] || onebox_die "run as root (kubelet, containerd and FUSE mounts need it)"
[ -e /dev/fuse ] || onebox_die "/dev/fuse is missing: load the fuse module (modprobe fuse)"
[ -f "$K8S_BIN_TARBALL" ] || onebox_die "the Kubernetes binaries are missing: $K8S_BIN_TARBALL (set K8S_BIN_TARBALL to the path of k8s-bin.tar.xz, see ../shared/k8s/README.md)"
[ -x "$JAX_CSI_BIN" ] || onebox_die "no jax-csi binary at $JAX_CSI_BIN: build it (cargo build --release --locked --bin jax-csi) or set JAX_CSI_BIN"
[ -d /sys/fs/cgroup/memory ] || onebox_die "this script expects cgroup v1 with a memory hierarchy (kubelet runs with cgroupDriver: cgroupfs)"
onebox_need_pkg containerd containerd
onebox_need_pkg runc runc
onebox_need_pkg busybox busybox-static
onebox_need_pkg openssl openssl
onebox_need_pkg nsenter util-linux
onebox_need_pkg setpriv util-linux
onebox_need_pkg ip iproute2
onebox_need_pkg ss iproute2
onebox_need_pkg xz xz-utils
onebox_need_pkg sysctl procps
PG_BIN="$(find /usr/lib/postgresql -maxdepth 3 -name initdb -path '*/bin/*' 2>/dev/null | sort -V | tail -n 1 | xargs -r dirname)"
if [ -z "$PG_BIN" ]; then
  onebox_need_pkg pg_ctlcluster postgresql
  PG_BIN="$(find /usr/lib/postgresql -maxdepth 3 -name initdb -path '*/bin/*' | sort -V | tail -n 1 | xargs -r dirname)"
fi
[ -n "$PG_BIN" ] || onebox_die "no PostgreSQL server binaries under /usr/lib/postgresql (apt-get install postgresql)"
id postgres >/dev/null 2>&1 || onebox_die "the postgres user is missing (it comes with Debian's postgresql package)"
onebox_tools
busybox_bin="$(command -v busybox)"
file_type="$(head -c 4 "$busybox_bin" | od -An -c | tr -d ' ')"
[ "$file_type" = '177ELF' ] || onebox_die "$busybox_bin is not a binary"
if ldd "$busybox_bin" >/dev/null 2>&1; then
  echo "installing busybox-static (apt): $busybox_bin is dynamically linked" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q busybox-static >/dev/null 2>&1 \
    || onebox_die "$busybox_bin is dynamically linked and busybox-static would not install (apt-get install busybox-static)"
  busybox_bin="$(command -v busybox)"
  ldd "$busybox_bin" >/dev/null 2>&1 && onebox_die "$busybox_bin is still dynamically linked"
fi

if [ -d "$S" ]; then
  for f in "$ONEBOX_PIDS"/*.pid; do
    [ -e "$f" ] || continue
    n="$(basename "$f" .pid)"
    if onebox_pid "$n" >/dev/null; then
      onebox_die "a onebox cluster already runs in $S ($n is alive): run e2e/onebox-down.sh first"
    fi
  done
  [ -z "$(onebox_mounts_under "$S")" ] || onebox_die "mounts are left under $S: run e2e/onebox-down.sh first"
  rm -rf --one-file-system "$S"
fi

NODE_IP="$(onebox_node_ip)"
port_busy() { ss -Hltnu "sport = :$1" 2>/dev/null | grep -q .; }
for p in "$ONEBOX_ETCD_PORT" "$ONEBOX_ETCD_PEER_PORT" "$ONEBOX_APISERVER_PORT" "$ONEBOX_KUBELET_PORT" \
  "$ONEBOX_KUBELET_HEALTHZ_PORT" "$ONEBOX_POSTGRES_PORT" 9808 9809 9810 9819 9898 9899; do
  if port_busy "$p"; then onebox_die "port $p is in use on this machine (see the ONEBOX_*_PORT settings in e2e/onebox-lib.sh)"; fi
done
mkdir -p "$S" "$ONEBOX_PIDS" "$ONEBOX_LOGS" "$ONEBOX_PKI" "$S/images" "$S/cni/bin" "$S/cni/net.d"
chmod 0755 "$S"
echo "state: $S, node address: $NODE_IP, jax-csi: $JAX_CSI_BIN"

# If anything below fails, say where the logs are (onebox-down cleans up).
on_exit() {
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "onebox-up failed (exit $rc); logs in $ONEBOX_LOGS; clean up with e2e/onebox-down.sh" >&2
  fi
}
trap on_exit EXIT

# ---------------------------------------------------------------------------
# Binaries (cached outside the state dir, keyed by the tarball's size and mtime).
# ---------------------------------------------------------------------------
onebox_log "Kubernetes binaries from $K8S_BIN_TARBALL"
k8s="$(onebox_k8s_unpacked)"
for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet snapshot-controller "${!SIDECAR_VERSION[@]}"; do
  [ -x "$k8s/bin/$b" ] || onebox_die "$K8S_BIN_TARBALL has no bin/$b"
done
ln -sfn "$k8s/bin" "$ONEBOX_BIN"
CRDS="$k8s/crds"

# ---------------------------------------------------------------------------
# Certificates: a CA, the API server's serving certificate, one client
# certificate per component, the service-account key pair.
# ---------------------------------------------------------------------------
onebox_log "certificates"
pki="$ONEBOX_PKI"
openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
  -keyout "$pki/ca.key" -out "$pki/ca.crt" -days 30 -subj "/CN=jax-onebox-ca" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
# cert NAME SUBJECT USAGE [SAN]
cert() {
  local name="$1" subject="$2" usage="$3" san="${4:-}"
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout "$pki/$name.key" -out "$pki/$name.csr" -subj "$subject" 2>/dev/null
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$usage"
    if [ -n "$san" ]; then echo "subjectAltName=$san"; fi
  } >"$pki/$name.ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 30 -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
  rm -f "$pki/$name.csr" "$pki/$name.ext"
}
cert apiserver "/CN=kube-apiserver" serverAuth \
  "IP:$NODE_IP,IP:10.0.0.1,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost"
cert admin "/O=system:masters/CN=jax-onebox-admin" clientAuth
cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
cert controller-manager "/CN=system:kube-controller-manager" clientAuth
cert scheduler "/CN=system:kube-scheduler" clientAuth
cert kubelet "/O=system:nodes/CN=system:node:$ONEBOX_NODE_NAME" clientAuth
cert kubelet-serving "/CN=$ONEBOX_NODE_NAME" serverAuth "IP:$NODE_IP,DNS:$ONEBOX_NODE_NAME"
cert snapshot-controller "/O=system:masters/CN=snapshot-controller" clientAuth
openssl ecparam -name prime256v1 -genkey -noout -out "$pki/sa.key" 2>/dev/null
openssl ec -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
chmod 0600 "$pki"/*.key

APISERVER_URL="https://$NODE_IP:$ONEBOX_APISERVER_PORT"
# kubeconfig FILE USER CONTEXT
kubeconfig() {
  cat >"$1" <<YAML
apiVersion: v1
kind: Config
clusters:
  - name: jax-onebox
    cluster:
      server: $APISERVER_URL
      certificate-authority: $pki/ca.crt
users:
  - name: $2
    user:
      client-certificate: $pki/$2.crt
      client-key: $pki/$2.key
contexts:
  - name: $3
    context:
      cluster: jax-onebox
      user: $2
current-context: $3
YAML
}
kubeconfig "$ONEBOX_KUBECONFIG" admin "$ONEBOX_CONTEXT"
for c in controller-manager scheduler kubelet snapshot-controller; do
  kubeconfig "$pki/$c.kubeconfig" "$c" default
done

# ---------------------------------------------------------------------------
# etcd, containerd, Postgres
# ---------------------------------------------------------------------------
onebox_log "etcd, containerd, Postgres"
onebox_start etcd "$ONEBOX_BIN/etcd" --data-dir "$S/etcd" \
  --client-url "http://127.0.0.1:$ONEBOX_ETCD_PORT" --peer-url "http://127.0.0.1:$ONEBOX_ETCD_PEER_PORT"

# containerd: its own root, state, socket and runc root under the state dir.
install -m 0755 "$ONEBOX_DIR/onebox-cni.sh" "$S/cni/bin/onebox"
install -m 0755 "$ONEBOX_DIR/onebox-cni.sh" "$S/cni/bin/loopback"
cat >"$S/cni/net.d/10-onebox.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "onebox", "plugins": [{"type": "onebox"}]}
JSON
mkdir -p "$ONEBOX_CONTAINERD"
cat >"$ONEBOX_CONTAINERD/config.toml" <<TOML
version = 2
root = "$ONEBOX_CONTAINERD/root"
state = "$ONEBOX_CONTAINERD/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$ONEBOX_CONTAINERD_SOCK"

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$ONEBOX_CONTAINERD/opt"
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "$PAUSE_IMAGE"
    # Root here may not lower an OOM score (no CAP_SYS_RESOURCE).
    restrict_oom_score_adj = true
    # Pods' network namespaces under the state dir, not /var/run/netns.
    netns_mounts_under_state_dir = true
    stream_server_address = "127.0.0.1"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "$S/cni/bin"
      conf_dir = "$S/cni/net.d"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
          Root = "$ONEBOX_CONTAINERD/runc"
TOML
# Directories outside the state dir that containerd and kubelet make whatever
# they are told (the shims' sockets, the CNI result cache, kubelet's
# device-plugin socket): onebox-down removes the ones that did not exist.
for d in /var/lib/kubelet /var/lib/cni /run/containerd; do
  [ -e "$d" ] || echo "$d" >>"$S/made-outside"
done
onebox_start containerd containerd --config "$ONEBOX_CONTAINERD/config.toml"

# Postgres beside the cluster, on 127.0.0.1 (the driver's pods use the host network).
PG_DIR="$S/postgres"
PG_PASSWORD="$(openssl rand -hex 16)"
mkdir -p "$PG_DIR"
chown postgres:postgres "$PG_DIR"
printf '%s\n' "$PG_PASSWORD" >"$PG_DIR/pwfile"
chown postgres:postgres "$PG_DIR/pwfile"
chmod 0600 "$PG_DIR/pwfile"
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
as_postgres "$PG_BIN/initdb" -D "$PG_DIR/data" -U jax --auth=scram-sha-256 --pwfile="$PG_DIR/pwfile" \
  -E UTF8 --no-instructions >"$ONEBOX_LOGS/initdb.log" 2>&1 \
  || { cat "$ONEBOX_LOGS/initdb.log" >&2; onebox_die "initdb failed"; }
rm -f "$PG_DIR/pwfile"
onebox_start postgres setpriv --reuid=postgres --regid=postgres --init-groups \
  "$PG_BIN/postgres" -D "$PG_DIR/data" -p "$ONEBOX_POSTGRES_PORT" -k "$PG_DIR" \
  -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200
DATABASE_URL="postgres://jax:$PG_PASSWORD@127.0.0.1:$ONEBOX_POSTGRES_PORT/jax?sslmode=disable"

# ---------------------------------------------------------------------------
# Images (built while the control plane starts): OCI image tarballs written
# here, imported into containerd's k8s.io namespace.
# ---------------------------------------------------------------------------
ARCH="$(dpkg --print-architecture 2>/dev/null || echo amd64)"
# oci_image REF ROOTFS ENTRYPOINT_JSON USER: an OCI archive at images/NAME.tar.
oci_image() {
  local ref="$1" rootfs="$2" entry="$3" user="$4"
  local name work layer config manifest
  name="$(printf '%s' "$ref" | tr '/:' '__')"
  work="$S/images/$name"
  mkdir -p "$work/blobs/sha256"
  tar --sort=name --numeric-owner --owner=0 --group=0 --mtime=@0 -C "$rootfs" -cf "$work/layer.tar" .
  layer="$(sha256sum "$work/layer.tar" | cut -d' ' -f1)"
  local layer_size
  layer_size="$(stat -c %s "$work/layer.tar")"
  mv "$work/layer.tar" "$work/blobs/sha256/$layer"
  printf '{"architecture":"%s","os":"linux","config":{"Entrypoint":%s,"User":"%s","Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created_by":"e2e/onebox-up.sh"}]}' \
    "$ARCH" "$entry" "$user" "$layer" >"$work/config.json"
  config="$(sha256sum "$work/config.json" | cut -d' ' -f1)"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
    "$config" "$(stat -c %s "$work/config.json")" "$layer" "$layer_size" >"$work/manifest.json"
  manifest="$(sha256sum "$work/manifest.json" | cut -d' ' -f1)"
  mv "$work/config.json" "$work/blobs/sha256/$config"
  local manifest_size
  manifest_size="$(stat -c %s "$work/manifest.json")"
  mv "$work/manifest.json" "$work/blobs/sha256/$manifest"
  printf '{"imageLayoutVersion":"1.0.0"}' >"$work/oci-layout"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$manifest" "$manifest_size" "$ref" "${ref##*:}" >"$work/index.json"
  tar -C "$work" -cf "$S/images/$name.tar" oci-layout index.json blobs
  rm -rf "$work"
}

# A root file system with the given files copied at their own paths, plus
# /tmp, /etc/passwd and /etc/group.
rootfs_with() {
  local dir="$1"; shift
  mkdir -p "$dir/tmp" "$dir/etc"
  chmod 1777 "$dir/tmp"
  printf 'root:x:0:0:root:/root:/bin/sh\njax-csi:x:65532:65532::/nonexistent:/usr/sbin/nologin\n' >"$dir/etc/passwd"
  printf 'root:x:0:\njax-csi:x:65532:\n' >"$dir/etc/group"
  local f
  for f in "$@"; do
    mkdir -p "$dir$(dirname "$f")"
    cp -L "$f" "$dir$f"
  done
}

build_images() {
  local r="$S/images/rootfs"
  # pause: busybox sleeping (the sandbox is stopped with SIGKILL). It is
  # called /busybox: busybox picks its applet by the name it runs under.
  rootfs_with "$r/pause" "$busybox_bin"
  mv "$r/pause$busybox_bin" "$r/pause/busybox"
  oci_image "$PAUSE_IMAGE" "$r/pause" '["/busybox","sleep","2147483647"]' "65535:65535"
  # busybox for the test pods: the binary and a link per applet.
  rootfs_with "$r/busybox"
  mkdir -p "$r/busybox/bin"
  cp "$busybox_bin" "$r/busybox/bin/busybox"
  local a
  for a in $("$busybox_bin" --list); do
    [ "$a" = busybox ] || ln -s busybox "$r/busybox/bin/$a"
  done
  oci_image "$BUSYBOX_REF" "$r/busybox" '["/bin/sh"]' ""
  # The driver: the binary at /usr/local/bin/jax-csi and the libraries it
  # links (the Dockerfile's runtime stage holds nothing else it uses).
  local libs
  libs="$(ldd "$JAX_CSI_BIN" | awk '/=>/ {print $3} /^\t\/lib/ {print $1}' | grep '^/' || true)"
  # shellcheck disable=SC2086 # one library path per word
  rootfs_with "$r/jax-csi" $libs
  mkdir -p "$r/jax-csi/usr/local/bin"
  cp "$JAX_CSI_BIN" "$r/jax-csi/usr/local/bin/jax-csi"
  oci_image "$DRIVER_REPO:$DRIVER_TAG" "$r/jax-csi" '["/usr/local/bin/jax-csi"]' "65532:65532"
  # The same image under the next tag (the DaemonSet update scenario).
  oci_image "$DRIVER_REPO:$DRIVER_NEXT_TAG" "$r/jax-csi" '["/usr/local/bin/jax-csi"]' "65532:65532"
  # One image per CSI sidecar: its static binary, as the entrypoint.
  local s
  for s in "${!SIDECAR_VERSION[@]}"; do
    rootfs_with "$r/$s"
    cp "$ONEBOX_BIN/$s" "$r/$s/$s"
    oci_image "$IMAGE_DOMAIN/$s:${SIDECAR_VERSION[$s]}" "$r/$s" "[\"/$s\"]" ""
  done
  rm -rf "$r"
}
onebox_log "images (in the background)"
build_images >"$ONEBOX_LOGS/images.log" 2>&1 &
images_pid=$!

# ---------------------------------------------------------------------------
# Control plane
# ---------------------------------------------------------------------------
onebox_wait "etcd" "$ONEBOX_TIMEOUT" bash -c "exec 3<>/dev/tcp/127.0.0.1/$ONEBOX_ETCD_PORT" \
  || onebox_die "etcd did not listen within ${ONEBOX_TIMEOUT}s; see $ONEBOX_LOGS/etcd.log"
onebox_log "kube-apiserver on $APISERVER_URL"
onebox_start kube-apiserver "$ONEBOX_BIN/kube-apiserver" \
  --etcd-servers="http://127.0.0.1:$ONEBOX_ETCD_PORT" \
  --bind-address="$NODE_IP" --advertise-address="$NODE_IP" --secure-port="$ONEBOX_APISERVER_PORT" \
  --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
  --client-ca-file="$pki/ca.crt" \
  --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" \
  --kubelet-client-key="$pki/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority="$pki/ca.crt" \
  --kubelet-preferred-address-types=InternalIP \
  --service-account-issuer=https://kubernetes.default.svc \
  --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --authorization-mode=Node,RBAC --allow-privileged=true \
  --feature-gates=VolumeAttributesClass=true --runtime-config=storage.k8s.io/v1beta1=true \
  --profiling=false --v=1
readyz() { kubectl --kubeconfig "$ONEBOX_KUBECONFIG" get --raw /readyz; }
pg_ready() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$ONEBOX_POSTGRES_PORT"; }
onebox_wait "Postgres" "$ONEBOX_TIMEOUT" pg_ready \
  || { tail -n 20 "$ONEBOX_LOGS/postgres.log" >&2; onebox_die "Postgres did not start within ${ONEBOX_TIMEOUT}s"; }
PGPASSWORD="$PG_PASSWORD" "$PG_BIN/createdb" -h 127.0.0.1 -p "$ONEBOX_POSTGRES_PORT" -U jax jax \
  || onebox_die "creating the database jax failed"
onebox_wait "kube-apiserver /readyz" "$ONEBOX_TIMEOUT" readyz \
  || { tail -n 30 "$ONEBOX_LOGS/kube-apiserver.log" >&2; onebox_die "kube-apiserver not ready within ${ONEBOX_TIMEOUT}s"; }

onebox_log "kube-controller-manager, kube-scheduler, snapshot-controller"
onebox_start kube-controller-manager "$ONEBOX_BIN/kube-controller-manager" \
  --kubeconfig="$pki/controller-manager.kubeconfig" \
  --authentication-kubeconfig="$pki/controller-manager.kubeconfig" \
  --authorization-kubeconfig="$pki/controller-manager.kubeconfig" \
  --bind-address=127.0.0.1 --secure-port=0 \
  --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
  --use-service-account-credentials=true --service-cluster-ip-range="$SERVICE_CIDR" \
  --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
  --feature-gates=VolumeAttributesClass=true --leader-elect=false --v=1
onebox_start kube-scheduler "$ONEBOX_BIN/kube-scheduler" \
  --kubeconfig="$pki/scheduler.kubeconfig" \
  --authentication-kubeconfig="$pki/scheduler.kubeconfig" \
  --authorization-kubeconfig="$pki/scheduler.kubeconfig" \
  --bind-address=127.0.0.1 --secure-port=0 --leader-elect=false --v=1

# The snapshot CRDs (v1 and the v1beta1 group snapshots) and the controller.
okc apply --server-side -f "$CRDS" >"$ONEBOX_LOGS/crds.log" 2>&1 \
  || { cat "$ONEBOX_LOGS/crds.log" >&2; onebox_die "applying the snapshot CRDs failed"; }
onebox_start snapshot-controller "$ONEBOX_BIN/snapshot-controller" \
  --kubeconfig="$pki/snapshot-controller.kubeconfig" --leader-election=false \
  --feature-gates=CSIVolumeGroupSnapshot=true --v=2

# ---------------------------------------------------------------------------
# kubelet
# ---------------------------------------------------------------------------
onebox_wait "containerd" "$ONEBOX_TIMEOUT" ctr --address "$ONEBOX_CONTAINERD_SOCK" version \
  || { tail -n 30 "$ONEBOX_LOGS/containerd.log" >&2; onebox_die "containerd did not answer within ${ONEBOX_TIMEOUT}s"; }
onebox_log "kubelet (root dir $ONEBOX_KUBELET_DIR)"
# Bidirectional mount propagation (the node plugin's mounts reach the pods)
# needs the kubelet dir on a shared mount.
mkdir -p "$ONEBOX_KUBELET_DIR"
mount --bind "$ONEBOX_KUBELET_DIR" "$ONEBOX_KUBELET_DIR"
mount --make-rshared "$ONEBOX_KUBELET_DIR"
# kubelet sets these kernel defaults at start; onebox-down puts them back.
sysctl -n vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops \
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes >"$S/sysctl.saved"
cat >"$S/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $ONEBOX_KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $ONEBOX_KUBELET_HEALTHZ_PORT
tlsCertFile: $pki/kubelet-serving.crt
tlsPrivateKeyFile: $pki/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $pki/ca.crt}
authorization:
  mode: AlwaysAllow
containerRuntimeEndpoint: unix://$ONEBOX_CONTAINERD_SOCK
cgroupDriver: cgroupfs
failSwapOn: false
# No process here may lower its OOM score.
oomScoreAdj: 0
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
serializeImagePulls: false
# Images are imported, never pulled: never collect them, never evict for disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "50Mi"
  nodefs.available: "1%"
  imagefs.available: "1%"
# Containers' logs under the state dir (kubelet still links them from
# /var/log/containers; onebox-down removes those links).
podLogsDir: $S/pod-logs
syncFrequency: 10s
fileCheckFrequency: 10s
YAML
onebox_start kubelet "$ONEBOX_BIN/kubelet" --config="$S/kubelet.yaml" \
  --kubeconfig="$pki/kubelet.kubeconfig" --root-dir="$ONEBOX_KUBELET_DIR" \
  --cert-dir="$pki/kubelet" --node-ip="$NODE_IP" --hostname-override="$ONEBOX_NODE_NAME" --v=1

# Images: wait for the build, import them.
wait "$images_pid" || { cat "$ONEBOX_LOGS/images.log" >&2; onebox_die "building the images failed"; }
onebox_log "import images"
for t in "$S"/images/*.tar; do
  ctr --address "$ONEBOX_CONTAINERD_SOCK" -n k8s.io images import "$t" >>"$ONEBOX_LOGS/images.log" 2>&1 \
    || { tail -n 20 "$ONEBOX_LOGS/images.log" >&2; onebox_die "importing $t failed"; }
done
rm -f "$S"/images/*.tar
ctr --address "$ONEBOX_CONTAINERD_SOCK" -n k8s.io images ls -q | grep "^$IMAGE_DOMAIN/"

onebox_wait "node $ONEBOX_NODE_NAME Ready" "$ONEBOX_TIMEOUT" \
  okc wait --for=condition=Ready "node/$ONEBOX_NODE_NAME" --timeout=2s \
  || { tail -n 30 "$ONEBOX_LOGS/kubelet.log" >&2; onebox_die "node $ONEBOX_NODE_NAME not Ready within ${ONEBOX_TIMEOUT}s"; }
onebox_wait "default ServiceAccount" "$ONEBOX_TIMEOUT" okc -n default get serviceaccount default \
  || onebox_die "kube-controller-manager made no default ServiceAccount within ${ONEBOX_TIMEOUT}s"
okc wait --for=condition=Established --timeout="${ONEBOX_TIMEOUT}s" \
  crd/volumesnapshotclasses.snapshot.storage.k8s.io crd/volumesnapshots.snapshot.storage.k8s.io \
  crd/volumesnapshotcontents.snapshot.storage.k8s.io crd/volumegroupsnapshotclasses.groupsnapshot.storage.k8s.io \
  crd/volumegroupsnapshots.groupsnapshot.storage.k8s.io crd/volumegroupsnapshotcontents.groupsnapshot.storage.k8s.io >/dev/null

# ---------------------------------------------------------------------------
# The chart, as users install it.
# ---------------------------------------------------------------------------
onebox_log "helm install $RELEASE (namespace $NAMESPACE)"
okc create namespace "$NAMESPACE" >/dev/null
okc label namespace "$NAMESPACE" pod-security.kubernetes.io/enforce=privileged >/dev/null
helm_args=(
  --kubeconfig "$ONEBOX_KUBECONFIG" --kube-context "$ONEBOX_CONTEXT" --namespace "$NAMESPACE"
  -f "$ONEBOX_DIR/onebox-values.yaml"
  --set-string database.url="$DATABASE_URL"
  --set kubeletDir="$ONEBOX_KUBELET_DIR"
  --set node.stateDir="$S/node"
  --set apiServer.host="$NODE_IP" --set apiServer.port="$ONEBOX_APISERVER_PORT"
  --set image.repository="$DRIVER_REPO" --set image.tag="$DRIVER_TAG"
)
for s in provisioner:csi-provisioner resizer:csi-resizer snapshotter:csi-snapshotter \
  nodeDriverRegistrar:csi-node-driver-registrar livenessProbe:livenessprobe; do
  helm_args+=(--set "sidecars.${s%%:*}.image.repository=$IMAGE_DOMAIN/${s#*:}"
    --set "sidecars.${s%%:*}.image.tag=${SIDECAR_VERSION[${s#*:}]}")
done
helm install "$RELEASE" "$ONEBOX_ROOT/charts/jax-csi" "${helm_args[@]}" \
  --wait --timeout "${ONEBOX_TIMEOUT}s" >"$ONEBOX_LOGS/helm.log" 2>&1 || {
  cat "$ONEBOX_LOGS/helm.log" >&2
  okc -n "$NAMESPACE" get pods -o wide >&2 || true
  okc -n "$NAMESPACE" describe pods >&2 || true
  okc -n "$NAMESPACE" logs -l "app.kubernetes.io/instance=$RELEASE" --all-containers --prefix --tail=30 >&2 || true
  onebox_die "helm install failed"
}
# The fd-keeper DaemonSet is OnDelete, which --wait does not follow.
okc -n "$NAMESPACE" wait --for=condition=Ready pod --timeout="${ONEBOX_TIMEOUT}s" \
  -l "app.kubernetes.io/instance=$RELEASE" >/dev/null

cat >"$ONEBOX_ENV" <<ENV
# Settings for e2e/run.sh on the onebox cluster (E2E_ENV=$ONEBOX_ENV e2e/run.sh).
export KUBECONFIG="$ONEBOX_KUBECONFIG"
export KUBE_CONTEXT="$ONEBOX_CONTEXT"
export NAMESPACE="$NAMESPACE"
export RELEASE="$RELEASE"
export BUSYBOX_IMAGE="$BUSYBOX_REF"
export IMAGE_REPO="$DRIVER_REPO"
export IMAGE_TAG="$DRIVER_TAG"
export NEXT_IMAGE_TAG="$DRIVER_NEXT_TAG"
export ONEBOX_STATE="$S"
export PATH="$(dirname "$(command -v helm)"):$(dirname "$(command -v kubectl)"):\$PATH"
ENV
okc -n "$NAMESPACE" get pods -o wide
onebox_log "ready in ${SECONDS}s: E2E_ENV=$ONEBOX_ENV e2e/run.sh; e2e/onebox-down.sh stops it"
