//! `jax-csi csi …`: a small CSI client (like `csc`) for the demo, for
//! operators and for trying the driver without Kubernetes. Each command
//! makes one RPC the way kubelet or a sidecar would and prints the answer
//! as one JSON line.

use std::collections::HashMap;

use anyhow::Context;
use clap::{Args, Subcommand};
use jax_csi::csi::proto::controller_client::ControllerClient;
use jax_csi::csi::proto::node_client::NodeClient;
use jax_csi::csi::proto::volume_capability::access_mode::Mode;
use jax_csi::csi::proto::volume_capability::{AccessMode, AccessType, MountVolume};
use jax_csi::csi::proto::volume_content_source::{
    SnapshotSource, Type as SourceType, VolumeSource,
};
use jax_csi::csi::proto::*;
use jax_csi::csi::server::{connect_unix, parse_endpoint};
use serde_json::json;

#[derive(Args, Debug)]
pub struct CsiArgs {
    /// The plugin's socket: `unix:///path/csi.sock` or a bare path.
    #[arg(long, env = "CSI_ENDPOINT")]
    endpoint: String,
    #[command(subcommand)]
    command: CsiCommand,
}

#[derive(Subcommand, Debug)]
enum CsiCommand {
    /// CreateVolume (RWX, mount access type).
    CreateVolume {
        name: String,
        /// Capacity in bytes.
        #[arg(long, default_value_t = 1 << 30)]
        size: i64,
        /// StorageClass parameters, `key=value` (repeatable).
        #[arg(long = "param")]
        params: Vec<String>,
        #[arg(long, conflicts_with = "from_volume")]
        from_snapshot: Option<String>,
        #[arg(long)]
        from_volume: Option<String>,
    },
    DeleteVolume {
        volume_id: String,
    },
    ListVolumes,
    CreateSnapshot {
        name: String,
        #[arg(long)]
        volume: String,
    },
    /// NodeStageVolume: FUSE-mount the volume at the staging path.
    Stage {
        volume_id: String,
        staging_path: String,
        #[arg(long)]
        read_only: bool,
        /// `volume_mount_group` (the pod's fsGroup).
        #[arg(long)]
        group: Option<u32>,
    },
    /// NodePublishVolume: bind the staged volume to a target path.
    Publish {
        volume_id: String,
        staging_path: String,
        target_path: String,
        #[arg(long)]
        read_only: bool,
    },
    Unpublish {
        volume_id: String,
        target_path: String,
    },
    Unstage {
        volume_id: String,
        staging_path: String,
    },
    /// NodeGetVolumeStats.
    Stats {
        volume_id: String,
        path: String,
    },
}

fn capability(read_only: bool, group: Option<u32>) -> VolumeCapability {
    let mode = if read_only {
        Mode::MultiNodeReaderOnly
    } else {
        Mode::MultiNodeMultiWriter
    };
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            volume_mount_group: group.map(|g| g.to_string()).unwrap_or_default(),
            ..Default::default()
        })),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

fn parse_params(params: &[String]) -> anyhow::Result<HashMap<String, String>> {
    params
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("--param {p:?} is not key=value"))
        })
        .collect()
}

pub fn run(args: CsiArgs) -> anyhow::Result<()> {
    let socket = parse_endpoint(&args.endpoint)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let ch = connect_unix(&socket)
            .await
            .with_context(|| format!("connecting to {}", socket.display()))?;
        let mut ctl = ControllerClient::new(ch.clone());
        let mut node = NodeClient::new(ch);
        let out = match args.command {
            CsiCommand::CreateVolume {
                name,
                size,
                params,
                from_snapshot,
                from_volume,
            } => {
                let source = match (from_snapshot, from_volume) {
                    (Some(snapshot_id), _) => {
                        Some(SourceType::Snapshot(SnapshotSource { snapshot_id }))
                    }
                    (_, Some(volume_id)) => Some(SourceType::Volume(VolumeSource { volume_id })),
                    _ => None,
                };
                let v = ctl
                    .create_volume(CreateVolumeRequest {
                        name,
                        capacity_range: Some(CapacityRange {
                            required_bytes: size,
                            limit_bytes: 0,
                        }),
                        volume_capabilities: vec![capability(false, None)],
                        parameters: parse_params(&params)?,
                        volume_content_source: source
                            .map(|t| VolumeContentSource { r#type: Some(t) }),
                        ..Default::default()
                    })
                    .await?
                    .into_inner()
                    .volume
                    .context("no volume in the answer")?;
                json!({"volume_id": v.volume_id, "capacity_bytes": v.capacity_bytes})
            }
            CsiCommand::DeleteVolume { volume_id } => {
                ctl.delete_volume(DeleteVolumeRequest {
                    volume_id: volume_id.clone(),
                    secrets: Default::default(),
                })
                .await?;
                json!({"deleted": volume_id})
            }
            CsiCommand::ListVolumes => {
                let mut ids = Vec::new();
                let mut token = String::new();
                loop {
                    let page = ctl
                        .list_volumes(ListVolumesRequest {
                            max_entries: 500,
                            starting_token: token,
                        })
                        .await?
                        .into_inner();
                    ids.extend(
                        page.entries
                            .into_iter()
                            .filter_map(|e| e.volume.map(|v| v.volume_id)),
                    );
                    token = page.next_token;
                    if token.is_empty() {
                        break;
                    }
                }
                json!({"volumes": ids})
            }
            CsiCommand::CreateSnapshot { name, volume } => {
                let s = ctl
                    .create_snapshot(CreateSnapshotRequest {
                        source_volume_id: volume,
                        name,
                        ..Default::default()
                    })
                    .await?
                    .into_inner()
                    .snapshot
                    .context("no snapshot in the answer")?;
                json!({"snapshot_id": s.snapshot_id, "ready_to_use": s.ready_to_use})
            }
            CsiCommand::Stage {
                volume_id,
                staging_path,
                read_only,
                group,
            } => {
                node.node_stage_volume(NodeStageVolumeRequest {
                    volume_id: volume_id.clone(),
                    staging_target_path: staging_path.clone(),
                    volume_capability: Some(capability(read_only, group)),
                    ..Default::default()
                })
                .await?;
                json!({"staged": volume_id, "at": staging_path})
            }
            CsiCommand::Publish {
                volume_id,
                staging_path,
                target_path,
                read_only,
            } => {
                node.node_publish_volume(NodePublishVolumeRequest {
                    volume_id: volume_id.clone(),
                    staging_target_path: staging_path,
                    target_path: target_path.clone(),
                    volume_capability: Some(capability(false, None)),
                    readonly: read_only,
                    ..Default::default()
                })
                .await?;
                json!({"published": volume_id, "at": target_path})
            }
            CsiCommand::Unpublish {
                volume_id,
                target_path,
            } => {
                node.node_unpublish_volume(NodeUnpublishVolumeRequest {
                    volume_id: volume_id.clone(),
                    target_path,
                })
                .await?;
                json!({"unpublished": volume_id})
            }
            CsiCommand::Unstage {
                volume_id,
                staging_path,
            } => {
                node.node_unstage_volume(NodeUnstageVolumeRequest {
                    volume_id: volume_id.clone(),
                    staging_target_path: staging_path,
                })
                .await?;
                json!({"unstaged": volume_id})
            }
            CsiCommand::Stats { volume_id, path } => {
                let s = node
                    .node_get_volume_stats(NodeGetVolumeStatsRequest {
                        volume_id,
                        volume_path: path,
                        staging_target_path: String::new(),
                    })
                    .await?
                    .into_inner();
                let bytes = s.usage.first();
                json!({
                    "bytes_used": bytes.map(|u| u.used),
                    "bytes_total": bytes.map(|u| u.total),
                    "inodes_used": s.usage.get(1).map(|u| u.used),
                    "abnormal": s.volume_condition.as_ref().map(|c| c.abnormal),
                    "message": s.volume_condition.map(|c| c.message),
                })
            }
        };
        println!("{out}");
        anyhow::Ok(())
    })
}
