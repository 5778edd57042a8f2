//! The Kubernetes integration against a scripted API server: the node
//! records its labels, posts Events on the claim and the pod (a full volume,
//! an orphaned mount removed) and removes targets whose pod is gone; the
//! controller leader deletes volumes no PersistentVolume names, after a
//! grace period, and never while the API fails, and tells a claim when its
//! volume is under-replicated and when it is whole again, and removes a node
//! whose Kubernetes Node was deleted.

mod cluster;
mod k8s_api;

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use cluster::Cluster;
use jax_csi::csi::proto::controller_client::ControllerClient;
use jax_csi::csi::proto::node_client::NodeClient;
use jax_csi::csi::proto::volume_capability::access_mode::Mode;
use jax_csi::csi::proto::volume_capability::{AccessMode, AccessType, MountVolume};
use jax_csi::csi::proto::*;
use k8s_api::ScriptedApi;
use tonic::transport::Channel;

fn rwx() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode {
            mode: Mode::MultiNodeMultiWriter as i32,
        }),
    }
}

async fn eventually<F: std::future::Future<Output = bool>>(
    secs: u64,
    what: &str,
    mut f: impl FnMut() -> F,
) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// CreateVolume as the external-provisioner sends it with `--extra-create-metadata`.
async fn provision(ctl: &mut ControllerClient<Channel>, claim: &str, bytes: i64) -> String {
    let params: HashMap<String, String> = [
        ("csi.storage.k8s.io/pvc/name", claim),
        ("csi.storage.k8s.io/pvc/namespace", "apps"),
        ("csi.storage.k8s.io/pv/name", "pv-x"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    ctl.create_volume(CreateVolumeRequest {
        name: format!("pvc-{claim}"),
        volume_capabilities: vec![rwx()],
        capacity_range: Some(CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        parameters: params,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .volume
    .unwrap()
    .volume_id
}

async fn volume_ids(ctl: &mut ControllerClient<Channel>) -> Vec<String> {
    ctl.list_volumes(ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries
        .into_iter()
        .map(|e| e.volume.unwrap().volume_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_labels_events_and_orphaned_targets() {
    let api = ScriptedApi::start().await;
    api.state.lock().unwrap().nodes.insert(
        "node-a".into(),
        [(
            "topology.kubernetes.io/zone".to_string(),
            "zone-1".to_string(),
        )]
        .into(),
    );
    api.state
        .lock()
        .unwrap()
        .pods
        .insert(("apps".into(), "writer".into()), "uid-1".into());
    let mut c = Cluster::start();
    let mut ctl = ControllerClient::new(c.controller(0).await);
    let url = api.url.clone();
    let mut node = NodeClient::new(
        c.node_with("node-a", "127.0.0.1:0", |cmd| {
            cmd.args([
                "--kubernetes",
                &url,
                "--orphan-grace-secs",
                "1",
                "--orphan-scan-secs",
                "1",
            ]);
        })
        .await,
    );

    // The Node's labels reach Postgres (node list shows the zone).
    eventually(30, "node labels recorded", || async {
        c.psql("SELECT labels FROM nodes WHERE id = 'node-a'")
            .contains("zone-1")
    })
    .await;

    let id = provision(&mut ctl, "data", 1 << 20).await;
    let staging = c.dir.path().join("plugins/jax/globalmount");
    let target = c.dir.path().join("pods/uid-1/volumes/data");
    node.node_stage_volume(NodeStageVolumeRequest {
        volume_id: id.clone(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(rwx()),
        ..Default::default()
    })
    .await
    .unwrap();
    let context: HashMap<String, String> = [
        ("csi.storage.k8s.io/pod.name", "writer"),
        ("csi.storage.k8s.io/pod.namespace", "apps"),
        ("csi.storage.k8s.io/pod.uid", "uid-1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    node.node_publish_volume(NodePublishVolumeRequest {
        volume_id: id.clone(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(rwx()),
        volume_context: context,
        ..Default::default()
    })
    .await
    .unwrap();

    // Fill the 1 MiB volume: the write fails, and the claim and pod hear why.
    let mut f = std::fs::File::create(target.join("big")).unwrap();
    let full = f.write_all(&vec![7u8; 2 << 20]);
    assert_eq!(full.unwrap_err().raw_os_error(), Some(libc::ENOSPC));
    eventually(30, "VolumeFull events on the claim and the pod", || async {
        let events = api.events_with_reason("VolumeFull");
        let on = |kind: &str, name: &str| {
            events.iter().any(|e| {
                e["involvedObject"]["kind"] == kind
                    && e["involvedObject"]["name"] == name
                    && e["involvedObject"]["namespace"] == "apps"
                    && e["type"] == "Warning"
            })
        };
        on("PersistentVolumeClaim", "data") && on("Pod", "writer")
    })
    .await;
    let pod_event = api
        .events_with_reason("VolumeFull")
        .into_iter()
        .find(|e| e["involvedObject"]["kind"] == "Pod")
        .unwrap();
    assert_eq!(pod_event["involvedObject"]["uid"], "uid-1");
    assert_eq!(pod_event["source"]["host"], "node-a");
    drop(f);

    // The pod is deleted but kubelet never unpublished: after the grace
    // the node removes the target itself, unstages, and says so.
    assert!(jax_csi::fuse::session::is_mount_point(&target));
    api.state.lock().unwrap().pods.clear();
    eventually(30, "the orphaned target removed", || async {
        !jax_csi::fuse::session::is_mount_point(&target)
    })
    .await;
    eventually(30, "the volume unstaged", || async {
        !jax_csi::fuse::session::is_mount_point(&staging)
    })
    .await;
    eventually(30, "an OrphanedMountRemoved event on the pod", || async {
        api.events_with_reason("OrphanedMountRemoved")
            .iter()
            .any(|e| e["involvedObject"]["name"] == "writer")
    })
    .await;
    // Kubelet's late NodeUnpublish and NodeUnstage still succeed. Like
    // kubelet, retry on ABORTED: the sweep may still hold the volume's
    // operation lock for a moment after the staging mount is gone.
    eventually(30, "NodeUnpublish not ABORTED", || {
        let mut node = node.clone();
        let request = NodeUnpublishVolumeRequest {
            volume_id: id.clone(),
            target_path: target.display().to_string(),
        };
        async move {
            match node.node_unpublish_volume(request).await {
                Err(s) if s.code() == tonic::Code::Aborted => false,
                r => {
                    r.unwrap();
                    true
                }
            }
        }
    })
    .await;
    node.node_unstage_volume(NodeUnstageVolumeRequest {
        volume_id: id.clone(),
        staging_target_path: staging.display().to_string(),
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_deletes_volumes_without_a_persistent_volume() {
    let api = ScriptedApi::start().await;
    api.state.lock().unwrap().fail_pv_list = true;
    let mut c = Cluster::start();
    let url = api.url.clone();
    let mut ctl = ControllerClient::new(
        c.controller_with(
            0,
            &[
                "--kubernetes",
                &url,
                "--orphan-grace-secs",
                "1",
                "--orphan-scan-secs",
                "1",
            ],
        )
        .await,
    );
    let kept = provision(&mut ctl, "kept", 1 << 20).await;
    let lost = provision(&mut ctl, "lost", 1 << 20).await;
    // While the API fails, sweeps change nothing however long they go on:
    // three more sweeps a second apart take the volumes past the grace.
    let before = api.count("GET /api/v1/persistentvolumes");
    eventually(60, "three failed PV lists", || async {
        api.count("GET /api/v1/persistentvolumes") >= before + 3
    })
    .await;
    let ids = volume_ids(&mut ctl).await;
    assert!(ids.contains(&kept) && ids.contains(&lost), "{ids:?}");

    // The API answers and names only `kept`: `lost` goes after the grace.
    {
        let mut st = api.state.lock().unwrap();
        st.fail_pv_list = false;
        st.pv_handles = vec![kept.clone()];
    }
    eventually(60, "the orphan deleted", || {
        let mut ctl = ctl.clone();
        let lost = lost.clone();
        async move { !volume_ids(&mut ctl).await.contains(&lost) }
    })
    .await;
    assert!(volume_ids(&mut ctl).await.contains(&kept));
    // Deleted as DeleteVolume deletes: queued for collection on the nodes.
    assert!(c
        .psql(&format!(
            "SELECT volume_id FROM gc_queue WHERE volume_id = '{lost}'"
        ))
        .contains(&lost));
}

/// #28: a volume with fewer replicas in sync than it asks for gets a
/// Warning on its claim (after two looks of the leader), and a Normal
/// Event once a second node holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_under_replicated_volume_is_told_on_its_claim() {
    let api = ScriptedApi::start().await;
    let mut c = Cluster::start();
    let url = api.url.clone();
    let mut ctl = ControllerClient::new(c.controller_with(0, &["--kubernetes", &url]).await);
    let mut node = NodeClient::new(c.node("node-a").await);
    let id = provision(&mut ctl, "lonely", 1 << 20).await;
    node.node_stage_volume(NodeStageVolumeRequest {
        volume_id: id.clone(),
        staging_target_path: c.dir.path().join("staging/lonely").display().to_string(),
        volume_capability: Some(rwx()),
        ..Default::default()
    })
    .await
    .unwrap();
    let on_claim = |reason: &str, kind: &str| {
        api.events_with_reason(reason).iter().any(|e| {
            e["involvedObject"]["kind"] == "PersistentVolumeClaim"
                && e["involvedObject"]["name"] == "lonely"
                && e["involvedObject"]["namespace"] == "apps"
                && e["type"] == kind
        })
    };
    eventually(
        60,
        "a VolumeUnderReplicated Warning on the claim",
        || async { on_claim("VolumeUnderReplicated", "Warning") },
    )
    .await;
    let warning = api.events_with_reason("VolumeUnderReplicated").remove(0);
    assert!(
        warning["message"]
            .as_str()
            .unwrap()
            .contains("1 of 2 replicas in sync: node-a (stages, in sync)"),
        "{warning}"
    );
    assert!(!on_claim("VolumeReplicasInSync", "Normal"));

    // A second node: the leader places the replica there, it catches up.
    let _b = c.node("node-b").await;
    eventually(60, "a VolumeReplicasInSync Event on the claim", || async {
        on_claim("VolumeReplicasInSync", "Normal")
    })
    .await;
    assert_eq!(
        api.events_with_reason("VolumeUnderReplicated").len(),
        1,
        "said once"
    );
}

/// #26: a node whose Kubernetes Node is deleted is removed as `jax-csi
/// node remove` removes it, once the grace has passed; a Node list with no
/// Node at all (an API that is not the cluster's) removes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_kubernetes_node_is_deleted_is_removed() {
    let api = ScriptedApi::start().await;
    let mut c = Cluster::start();
    let url = api.url.clone();
    let _ctl = ControllerClient::new(
        c.controller_with(
            0,
            &[
                "--kubernetes",
                &url,
                "--orphan-scan-secs",
                "1",
                "--node-gone-grace-secs",
                "2",
            ],
        )
        .await,
    );
    c.node("node-a").await;
    c.node("node-b").await;
    let registered =
        |c: &Cluster| c.psql("SELECT count(*) FROM nodes WHERE endpoint_id IS NOT NULL");
    eventually(30, "both nodes register their sync endpoints", || {
        let n = registered(&c);
        async move { n == "2" }
    })
    .await;
    let before = api.count("GET /api/v1/nodes?");
    eventually(60, "three empty Node lists", || async {
        api.count("GET /api/v1/nodes?") >= before + 3
    })
    .await;
    assert_eq!(c.psql("SELECT count(*) FROM removed_nodes"), "0");

    // node-b's Node is deleted: node-b goes after the grace, node-a stays.
    api.state
        .lock()
        .unwrap()
        .nodes
        .insert("node-a".into(), Default::default());
    eventually(60, "node-b is removed", || {
        let removed = c.psql("SELECT node_id FROM removed_nodes");
        async move { removed == "node-b" }
    })
    .await;
    assert_eq!(
        c.psql("SELECT id FROM nodes WHERE endpoint_id IS NOT NULL"),
        "node-a"
    );
}
