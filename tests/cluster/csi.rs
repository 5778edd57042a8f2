//! The CSI requests tests make again and again, built one way: a volume
//! created through the controller, staged under `<root>/staging/<id>` and
//! published under `<root>/pods/<pod>/vol`, as kubelet lays them out.

use std::path::{Path, PathBuf};

use jax_csi::csi::proto::controller_client::ControllerClient;
use jax_csi::csi::proto::node_client::NodeClient;
use jax_csi::csi::proto::volume_capability::access_mode::Mode;
use jax_csi::csi::proto::volume_capability::{AccessMode, AccessType, MountVolume};
use jax_csi::csi::proto::*;
use tonic::transport::Channel;

/// A filesystem volume many nodes may write (RWX).
pub fn rwx() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode {
            mode: Mode::MultiNodeMultiWriter as i32,
        }),
    }
}

/// Create a volume of `bytes` named `name`; returns its id.
pub async fn create_volume(ctl: &mut ControllerClient<Channel>, name: &str, bytes: i64) -> String {
    ctl.create_volume(CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![rwx()],
        ..Default::default()
    })
    .await
    .expect("CreateVolume")
    .into_inner()
    .volume
    .expect("a volume")
    .volume_id
}

pub fn staging_path(root: &Path, id: &str) -> PathBuf {
    root.join("staging").join(id)
}

pub fn target_path(root: &Path, pod: &str) -> PathBuf {
    root.join("pods").join(pod).join("vol")
}

pub fn stage_req(root: &Path, id: &str) -> NodeStageVolumeRequest {
    NodeStageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging_path(root, id).display().to_string(),
        volume_capability: Some(rwx()),
        ..Default::default()
    }
}

pub fn publish_req(root: &Path, id: &str, pod: &str) -> NodePublishVolumeRequest {
    NodePublishVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging_path(root, id).display().to_string(),
        target_path: target_path(root, pod).display().to_string(),
        volume_capability: Some(rwx()),
        ..Default::default()
    }
}

/// Stage `id` and publish it for `pod`; returns the pod's path.
pub async fn stage_and_publish(
    node: &mut NodeClient<Channel>,
    root: &Path,
    id: &str,
    pod: &str,
) -> PathBuf {
    node.node_stage_volume(stage_req(root, id))
        .await
        .expect("NodeStageVolume");
    node.node_publish_volume(publish_req(root, id, pod))
        .await
        .expect("NodePublishVolume");
    target_path(root, pod)
}

/// Unpublish `id` from `pod` and unstage it.
pub async fn unpublish_and_unstage(
    node: &mut NodeClient<Channel>,
    root: &Path,
    id: &str,
    pod: &str,
) {
    node.node_unpublish_volume(NodeUnpublishVolumeRequest {
        volume_id: id.into(),
        target_path: target_path(root, pod).display().to_string(),
    })
    .await
    .expect("NodeUnpublishVolume");
    node.node_unstage_volume(NodeUnstageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging_path(root, id).display().to_string(),
    })
    .await
    .expect("NodeUnstageVolume");
}
