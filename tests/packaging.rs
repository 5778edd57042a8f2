//! The Helm chart's renders (written by `scripts/check-packaging.sh` into
//! `target/packaging/`), read object by object into their k8s-openapi
//! types: a field the type does not know (a typo, a wrong indent) fails,
//! because every object must serialize back to exactly what was rendered.
//! Then the properties users of CSI drivers rely on are checked.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Container, PodSpec, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::api::storage::v1::{CSIDriver, StorageClass, VolumeAttributesClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The snapshot CRDs' classes (not in k8s-openapi): every field named.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SnapshotClass {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    driver: String,
    deletion_policy: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    parameters: BTreeMap<String, String>,
}

/// VolumeAttributesClass before Kubernetes 1.34 (storage.k8s.io/v1beta1).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AttributesClassBeta {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    driver_name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    parameters: BTreeMap<String, String>,
}

/// One rendered object, typed.
#[derive(Debug)]
enum Object {
    CsiDriver(CSIDriver),
    DaemonSet(DaemonSet),
    Deployment(Deployment),
    ClusterRole(ClusterRole),
    Role(Role),
    NetworkPolicy(NetworkPolicy),
    /// Read and checked for unknown fields; nothing more is asked of it.
    Other,
}

/// Read `doc` as `T`; every rendered field must survive the round trip.
fn typed<T: serde::de::DeserializeOwned + Serialize>(doc: &Value, what: &str) -> T {
    let t: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{what} does not parse as its type: {e}\n{doc:#}"));
    let back = serde_json::to_value(&t).unwrap();
    let lost = missing(doc, &back, "");
    assert!(
        lost.is_empty(),
        "{what}: fields its type does not know: {lost:?}"
    );
    t
}

/// Paths present (and not null) in `want` but not in `got`.
fn missing(want: &Value, got: &Value, at: &str) -> Vec<String> {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => w
            .iter()
            .filter(|(_, v)| !v.is_null())
            .flat_map(|(k, v)| match g.get(k) {
                Some(gv) => missing(v, gv, &format!("{at}.{k}")),
                None => vec![format!("{at}.{k}")],
            })
            .collect(),
        (Value::Array(w), Value::Array(g)) => w
            .iter()
            .zip(g.iter())
            .enumerate()
            .flat_map(|(i, (wv, gv))| missing(wv, gv, &format!("{at}[{i}]")))
            .collect(),
        _ => Vec::new(),
    }
}

fn parse(doc: &Value) -> Object {
    let kind = doc["kind"].as_str().unwrap_or_default();
    let api = doc["apiVersion"].as_str().unwrap_or_default();
    let what = format!("{kind} {}", doc["metadata"]["name"]);
    match (api, kind) {
        ("storage.k8s.io/v1", "CSIDriver") => Object::CsiDriver(typed(doc, &what)),
        ("apps/v1", "DaemonSet") => Object::DaemonSet(typed(doc, &what)),
        ("apps/v1", "Deployment") => Object::Deployment(typed(doc, &what)),
        ("apps/v1", "StatefulSet") => {
            let _: StatefulSet = typed(doc, &what);
            Object::Other
        }
        ("v1", "Service") => {
            let _: Service = typed(doc, &what);
            Object::Other
        }
        ("v1", "ServiceAccount") => {
            let _: ServiceAccount = typed(doc, &what);
            Object::Other
        }
        ("v1", "Secret") => {
            let _: Secret = typed(doc, &what);
            Object::Other
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => Object::ClusterRole(typed(doc, &what)),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            let _: ClusterRoleBinding = typed(doc, &what);
            Object::Other
        }
        ("rbac.authorization.k8s.io/v1", "Role") => Object::Role(typed(doc, &what)),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
            let _: RoleBinding = typed(doc, &what);
            Object::Other
        }
        ("networking.k8s.io/v1", "NetworkPolicy") => Object::NetworkPolicy(typed(doc, &what)),
        ("policy/v1", "PodDisruptionBudget") => {
            let _: PodDisruptionBudget = typed(doc, &what);
            Object::Other
        }
        ("storage.k8s.io/v1", "StorageClass") => {
            let _: StorageClass = typed(doc, &what);
            Object::Other
        }
        ("storage.k8s.io/v1", "VolumeAttributesClass") => {
            let _: VolumeAttributesClass = typed(doc, &what);
            Object::Other
        }
        ("storage.k8s.io/v1beta1", "VolumeAttributesClass") => {
            let _: AttributesClassBeta = typed(doc, &what);
            Object::Other
        }
        ("snapshot.storage.k8s.io/v1", "VolumeSnapshotClass")
        | ("groupsnapshot.storage.k8s.io/v1beta1", "VolumeGroupSnapshotClass")
        | ("groupsnapshot.storage.k8s.io/v1beta2", "VolumeGroupSnapshotClass") => {
            let _: SnapshotClass = typed(doc, &what);
            Object::Other
        }
        other => panic!("unexpected object {other:?} in the render"),
    }
}

fn render(name: &str) -> Vec<Object> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/packaging")
        .join(format!("{name}.yaml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run scripts/check-packaging.sh first (scripts/test.sh does)",
            path.display()
        )
    });
    let mut objects = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let value = Value::deserialize(doc).expect("YAML");
        if value.is_null() {
            continue;
        }
        objects.push(parse(&value));
    }
    assert!(!objects.is_empty(), "{name}: empty render");
    objects
}

fn containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
}

fn daemonset<'a>(objects: &'a [Object], suffix: &str) -> &'a DaemonSet {
    objects
        .iter()
        .find_map(|o| match o {
            Object::DaemonSet(d)
                if d.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.ends_with(suffix)) =>
            {
                Some(d)
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no DaemonSet *{suffix}"))
}

fn rules(objects: &[Object]) -> Vec<(String, PolicyRule)> {
    objects
        .iter()
        .flat_map(|o| match o {
            Object::ClusterRole(r) => r
                .rules
                .iter()
                .flatten()
                .map(|x| (r.metadata.name.clone().unwrap_or_default(), x.clone()))
                .collect::<Vec<_>>(),
            Object::Role(r) => r
                .rules
                .iter()
                .flatten()
                .map(|x| (r.metadata.name.clone().unwrap_or_default(), x.clone()))
                .collect(),
            _ => Vec::new(),
        })
        .collect()
}

#[test]
fn every_render_reads_into_its_types() {
    for name in [
        "default",
        "all-options",
        "bundled-postgres",
        "existing-secrets",
        "kube-1.34",
        "deploy",
    ] {
        render(name);
    }
}

#[test]
fn the_csi_driver_object_says_what_the_driver_does() {
    let objects = render("default");
    let driver = objects
        .iter()
        .find_map(|o| match o {
            Object::CsiDriver(d) => Some(d),
            _ => None,
        })
        .expect("a CSIDriver");
    assert_eq!(driver.metadata.name.as_deref(), Some("csi.jax.dev"));
    let spec = &driver.spec;
    assert_eq!(spec.attach_required, Some(false));
    assert_eq!(
        spec.pod_info_on_mount,
        Some(true),
        "the node reads the pod from the volume context"
    );
    assert_eq!(spec.fs_group_policy.as_deref(), Some("File"));
    assert_eq!(
        spec.volume_lifecycle_modes.as_deref(),
        Some(&["Persistent".to_string()][..])
    );
}

/// #26 finding 5: the sync port takes traffic from the node plugins only
/// (the default render); with the host network no policy is rendered (it
/// would not apply).
#[test]
fn only_node_plugins_reach_the_sync_port() {
    let objects = render("default");
    let ds = daemonset(&objects, "-node");
    let node_labels = ds.spec.selector.match_labels.clone().unwrap();
    let policies: Vec<&NetworkPolicy> = objects
        .iter()
        .filter_map(|o| match o {
            Object::NetworkPolicy(p) => Some(p),
            _ => None,
        })
        .collect();
    assert_eq!(policies.len(), 1, "one NetworkPolicy");
    let spec = policies[0].spec.as_ref().unwrap();
    let selected = spec
        .pod_selector
        .as_ref()
        .and_then(|s| s.match_labels.as_ref());
    assert_eq!(selected, Some(&node_labels));
    assert_eq!(
        spec.policy_types.as_deref(),
        Some(&["Ingress".to_string()][..])
    );
    let sync_port = ds.spec.template.spec.as_ref().unwrap().containers[0]
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("sync"))
        .expect("the sync port")
        .container_port;
    let rules = spec.ingress.as_ref().unwrap();
    for rule in rules {
        let udp_sync = rule.ports.iter().flatten().any(|p| {
            p.protocol.as_deref() == Some("UDP")
                && p.port
                    == Some(
                        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(sync_port),
                    )
        });
        if udp_sync {
            let from = rule
                .from
                .as_ref()
                .expect("the sync port is not open to all");
            assert!(from.iter().all(|peer| peer
                .pod_selector
                .as_ref()
                .and_then(|s| s.match_labels.as_ref())
                == Some(&node_labels)
                && peer.ip_block.is_none()
                && peer.namespace_selector.is_none()));
        } else {
            assert!(
                rule.ports
                    .iter()
                    .flatten()
                    .all(|p| p.protocol.as_deref() == Some("TCP")),
                "only TCP ports (metrics, health) are open to all: {rule:?}"
            );
        }
    }
    let host = render("all-options");
    assert!(
        !host.iter().any(|o| matches!(o, Object::NetworkPolicy(_))),
        "a NetworkPolicy was rendered for host-network node plugins"
    );
}

#[test]
fn the_node_daemonset_can_mount_fuse_into_pods() {
    let objects = render("default");
    let ds = daemonset(&objects, "-node");
    let pod = ds.spec.template.spec.as_ref().unwrap();
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let plugin = pod
        .containers
        .iter()
        .find(|c| c.name == "jax-csi")
        .expect("the plugin container");
    let sc = plugin.security_context.as_ref().unwrap();
    assert_eq!(sc.privileged, Some(true));
    let mounts = plugin.volume_mounts.as_ref().unwrap();
    assert!(mounts.iter().any(|m| m.mount_path == "/dev/fuse"));
    let kubelet = mounts
        .iter()
        .find(|m| m.mount_path == "/var/lib/kubelet")
        .expect("the kubelet dir");
    assert_eq!(kubelet.mount_propagation.as_deref(), Some("Bidirectional"));
    let args = plugin.args.as_ref().unwrap();
    assert!(
        args.iter().any(|a| a == "--kubelet-dir=/var/lib/kubelet"),
        "{args:?}"
    );
    // Every flag the chart passes is one the binary has (the test binary's
    // sibling is the real one).
    check_flags("node", args);
    let update = ds.spec.update_strategy.as_ref().unwrap();
    assert_eq!(update.type_.as_deref(), Some("RollingUpdate"));
    assert!(containers(pod).any(|c| c.name == "node-driver-registrar"));
    assert!(containers(pod).any(|c| c.name == "liveness-probe"));
}

/// Finding 7 of issue 26: the node's sidecars must not reach the Admin
/// service (it opens any volume with the cluster KEK), nor may another pod
/// on the node (the fd-keeper mounts the state dir). It is served on its own
/// socket in a pod-private directory (an emptyDir) only the plugin container
/// mounts; the liveness probe is not root and reaches csi.sock through its
/// group.
#[test]
fn the_node_sidecars_cannot_reach_the_admin_socket() {
    for name in ["default", "all-options"] {
        let objects = render(name);
        let pod = daemonset(&objects, "-node")
            .spec
            .template
            .spec
            .as_ref()
            .unwrap();
        let plugin = containers(pod).find(|c| c.name == "jax-csi").unwrap();
        let args = plugin.args.as_ref().unwrap();
        let flag = |f: &str| {
            args.iter()
                .find_map(|a| a.strip_prefix(&format!("--{f}=")))
                .unwrap_or_else(|| panic!("{name}: the plugin has no --{f}: {args:?}"))
                .to_string()
        };
        let admin = PathBuf::from(flag("admin-endpoint").trim_start_matches("unix://"));
        let csi = PathBuf::from(flag("endpoint").trim_start_matches("unix://"));
        let state = PathBuf::from(flag("state-dir"));
        assert!(
            !admin.starts_with(&state),
            "{name}: {admin:?} in the state dir, which the fd-keeper mounts too"
        );
        let private = plugin
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| admin.starts_with(&m.mount_path))
            .unwrap_or_else(|| panic!("{name}: no volume holds {admin:?}"));
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == private.name)
            .unwrap();
        assert!(
            volume.empty_dir.is_some(),
            "{name}: {admin:?} is on {}, not a pod-private emptyDir",
            private.name
        );
        assert_ne!(
            admin.parent(),
            csi.parent(),
            "{name}: the admin socket beside csi.sock"
        );
        let env = plugin.env.as_ref().unwrap();
        let cli = env.iter().find(|e| e.name == "JAX_NODE_ENDPOINT").unwrap();
        assert_eq!(
            cli.value.as_deref(),
            Some(&*format!("unix://{}", admin.display()))
        );
        // The host directories holding the admin socket, as pod volumes.
        let volumes = pod.volumes.as_ref().unwrap();
        let holds_admin = |volume: &str| {
            let host = volumes
                .iter()
                .find(|v| v.name == volume)
                .and_then(|v| v.host_path.as_ref())
                .map(|h| PathBuf::from(&h.path));
            host.is_some_and(|h| admin.starts_with(&h) || h.starts_with(&state))
        };
        for c in containers(pod).filter(|c| c.name != "jax-csi") {
            for m in c.volume_mounts.iter().flatten() {
                assert!(
                    !holds_admin(&m.name) && !admin.starts_with(&m.mount_path),
                    "{name}: sidecar {} mounts {} ({}), which holds the admin socket",
                    c.name,
                    m.name,
                    m.mount_path
                );
            }
        }
        let probe = containers(pod)
            .find(|c| c.name == "liveness-probe")
            .unwrap();
        let sc = probe.security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true), "{name}");
        assert_ne!(sc.run_as_user, Some(0), "{name}");
        let group = flag("endpoint-group");
        assert_eq!(
            sc.run_as_group.map(|g| g.to_string()),
            Some(group),
            "{name}"
        );
        for c in containers(pod).filter(|c| c.name != "jax-csi") {
            let sc = c.security_context.as_ref().unwrap();
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
            let caps = sc.capabilities.as_ref().and_then(|c| c.drop.clone());
            assert_eq!(caps, Some(vec!["ALL".to_string()]), "{}", c.name);
        }
    }
}

#[test]
fn the_controller_runs_the_sidecars_with_leader_election() {
    let objects = render("all-options");
    let deploy = objects
        .iter()
        .find_map(|o| match o {
            Object::Deployment(d) => Some(d),
            _ => None,
        })
        .expect("the controller Deployment");
    let pod = deploy.spec.template.spec.as_ref().unwrap();
    let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    for want in [
        "jax-csi",
        "csi-provisioner",
        "csi-resizer",
        "csi-snapshotter",
        "liveness-probe",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    for c in &pod.containers {
        if c.name.starts_with("csi-") {
            let args = c.args.clone().unwrap_or_default();
            assert!(
                args.iter().any(|a| a == "--leader-election"),
                "{} without --leader-election",
                c.name
            );
        }
    }
    let plugin = pod.containers.iter().find(|c| c.name == "jax-csi").unwrap();
    check_flags("controller", plugin.args.as_ref().unwrap());
}

#[test]
fn rbac_is_least_privilege() {
    for name in ["default", "all-options"] {
        let objects = render(name);
        for (role, rule) in rules(&objects) {
            let verbs = &rule.verbs;
            let resources = rule.resources.clone().unwrap_or_default();
            assert!(!verbs.iter().any(|v| v == "*"), "{role}: wildcard verb");
            assert!(
                !resources.iter().any(|r| r == "*"),
                "{role}: wildcard resource"
            );
            if resources.iter().any(|r| r == "secrets") {
                assert!(
                    verbs
                        .iter()
                        .all(|v| v == "get" || v == "list" || v == "watch"),
                    "{role} may change Secrets: {verbs:?}"
                );
            }
            if role.ends_with("-node") {
                assert!(
                    !verbs.iter().any(|v| v == "delete" || v == "update"),
                    "{role}: the node plugin only reads and posts Events: {rule:?}"
                );
            }
        }
    }
}

/// The rendered manifests under deploy/ are the default render.
#[test]
fn deploy_manifests_match_the_chart() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let committed = std::fs::read_to_string(root.join("deploy/jax-csi.yaml")).unwrap();
    let fresh = std::fs::read_to_string(root.join("target/packaging/deploy.yaml"))
        .expect("run scripts/check-packaging.sh first");
    assert!(
        committed == fresh,
        "deploy/jax-csi.yaml is stale: run scripts/check-packaging.sh --update"
    );
}

/// Each `--flag` in `args` is accepted by `jax-csi <role> --help`.
fn check_flags(role: &str, args: &[String]) {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_jax-csi"))
        .args([role, "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for a in args.iter().filter(|a| a.starts_with("--")) {
        let flag = a.split('=').next().unwrap();
        assert!(
            help.contains(&format!("{flag} "))
                || help.contains(&format!("{flag}\n"))
                || help.contains(&format!("{flag}=")),
            "the chart passes {flag} to `jax-csi {role}`, which has no such flag"
        );
    }
}

/// The round trip is what catches a misspelt field.
#[test]
#[should_panic(expected = "fields its type does not know")]
fn a_misspelt_field_is_an_error() {
    let doc = serde_json::json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "CSIDriver",
        "metadata": {"name": "csi.jax.dev"},
        "spec": {"attachRequird": false}
    });
    let _: CSIDriver = typed(&doc, "CSIDriver csi.jax.dev");
}
