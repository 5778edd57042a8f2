//! The CSI Node service: stage = FUSE-mount the volume's live bucket at the
//! staging path (creating or cloning the bucket on first use), publish =
//! bind it into the pod. The MountManager does the mounting; this file
//! validates requests, talks to Postgres and maps errors to gRPC codes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::params::check_capabilities;
use super::proto::node_server::Node;
use super::proto::node_service_capability::{self, rpc};
use super::proto::volume_capability::access_mode::Mode;
use super::proto::volume_capability::AccessType;
use super::proto::*;
use super::status::{require, require_some, traced};
use crate::bucket::{BucketError, BucketId, BucketOptions};
use crate::crypto::{Kek, WrappedKey};
use crate::db::{Db, VolumeRecord};
use crate::fuse::mount_manager::{MountError, MountManager, MountOptions, Target};
use crate::fuse::session;
use crate::store::Hash;

/// Inodes reported as the total in volume stats.
const MAX_INODES: i64 = 1 << 32;

pub struct NodeService {
    node_id: String,
    max_volumes: i64,
    manager: MountManager,
    db: Db,
    kek: Arc<Kek>,
}

impl NodeService {
    pub fn new(
        node_id: String,
        max_volumes: i64,
        manager: MountManager,
        db: Db,
        kek: Arc<Kek>,
    ) -> Self {
        Self {
            node_id,
            max_volumes,
            manager,
            db,
            kek,
        }
    }
}

fn mount_status(e: MountError) -> Status {
    match e {
        MountError::BucketNotFound(_) | MountError::MountNotFound(_) => {
            Status::not_found(e.to_string())
        }
        MountError::MountPointMissing(_) | MountError::MountPointNotADirectory(_) => {
            Status::failed_precondition(e.to_string())
        }
        MountError::AlreadyRunning(_) => Status::already_exists(e.to_string()),
        MountError::LoadFailed { .. }
        | MountError::SpawnFailed { .. }
        | MountError::UnmountFailed { .. }
        | MountError::Database(_) => Status::internal(e.to_string()),
    }
}

fn bucket_status(what: &str, e: BucketError) -> Status {
    if e.is_integrity() {
        Status::data_loss(format!("{what}: {e}"))
    } else {
        Status::internal(format!("{what}: {e}"))
    }
}

/// Run blocking mount work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("mount worker failed: {e}")))?
}

/// What a volume capability asks of a mount.
struct MountAsk {
    read_only: bool,
    group: Option<u32>,
    flags: Vec<String>,
}

fn mount_ask(cap: &VolumeCapability) -> Result<MountAsk, Status> {
    check_capabilities(std::slice::from_ref(cap))?;
    let Some(AccessType::Mount(m)) = &cap.access_type else {
        return Err(Status::invalid_argument(
            "volume_capability: only the mount access type is supported",
        ));
    };
    let mode = cap.access_mode.as_ref().map(|m| m.mode).unwrap_or_default();
    let read_only =
        mode == Mode::SingleNodeReaderOnly as i32 || mode == Mode::MultiNodeReaderOnly as i32;
    let group = if m.volume_mount_group.is_empty() {
        None
    } else {
        Some(m.volume_mount_group.parse::<u32>().map_err(|_| {
            Status::invalid_argument(format!(
                "volume_capability.mount.volume_mount_group {:?} is not a numeric group id",
                m.volume_mount_group
            ))
        })?)
    };
    for f in &m.mount_flags {
        if !matches!(
            f.as_str(),
            "ro" | "rw" | "noexec" | "nosuid" | "nodev" | "noatime" | "relatime" | "defaults"
        ) {
            return Err(Status::invalid_argument(format!(
                "volume_capability.mount.mount_flags: {f:?} is not supported (ro, rw, noexec, nosuid, nodev, noatime, relatime)"
            )));
        }
    }
    Ok(MountAsk {
        read_only: read_only || m.mount_flags.iter().any(|f| f == "ro"),
        group,
        flags: m.mount_flags.clone(),
    })
}

fn volume_id(id: &str) -> Result<BucketId, Status> {
    BucketId::from_hex(id)
        .map_err(|_| Status::not_found(format!("volume {id} does not exist (not a jax volume id)")))
}

impl NodeService {
    /// Make sure the volume's bucket is in this node's state dir: a new
    /// bucket under the controller's secret, or an O(1) clone of its source.
    async fn ensure_bucket(&self, vol: &VolumeRecord) -> Result<(), Status> {
        let id = volume_id(&vol.id)?;
        let state = self.manager.state().clone();
        if state.has_bucket(&id) {
            return Ok(());
        }
        let kek = self.kek.clone();
        let vol = vol.clone();
        blocking(move || {
            let secret = kek
                .unwrap(&WrappedKey(vol.wrapped_key.clone()))
                .map_err(|_| {
                    Status::internal("the volume's key does not open with this node's KEK")
                })?;
            match (
                &vol.source_head,
                &vol.source_volume_id,
                &vol.source_wrapped_key,
            ) {
                (Some(head), Some(src), Some(src_key)) => {
                    let head: Hash = head
                        .parse()
                        .map_err(|_| Status::internal("malformed source head"))?;
                    let src_id = volume_id(src)?;
                    let src_secret = kek.unwrap(&WrappedKey(src_key.clone())).map_err(|_| {
                        Status::internal("the source key does not open with this node's KEK")
                    })?;
                    let source = state.bucket_with_secret(&src_id, src_secret);
                    state
                        .clone_bucket_with_secret(id, secret, &source, &head, &kek)
                        .map_err(|e| match e {
                            BucketError::Store(_) | BucketError::VersionNotFound(_) => {
                                Status::unavailable(format!(
                                    "the source version {head} is not on this node yet: {e}"
                                ))
                            }
                            e => bucket_status("cloning the source", e),
                        })?;
                }
                _ => {
                    let opts = BucketOptions {
                        quota: Some(vol.capacity_bytes as u64),
                        chunk_size: vol.chunk_size as u32,
                        root_mode: 0o777,
                        ..Default::default()
                    };
                    state
                        .create_bucket_with_secret(id, secret, &kek, &opts)
                        .map_err(|e| bucket_status("creating the bucket", e))?;
                }
            }
            Ok(())
        })
        .await
    }

    /// Record the live mount's head in Postgres (for snapshots and clones).
    async fn report_head(&self, volume: &str) {
        let Some(live) = self.manager.get_live_mount(volume) else {
            return;
        };
        let saved = live.lock().base();
        if let Err(e) = self
            .db
            .report_head(
                volume,
                &self.node_id,
                &saved.hash.to_string(),
                saved.height as i64,
            )
            .await
        {
            tracing::warn!(volume, error = %e, "could not report the head; will report at the next commit");
        }
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        request: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        let req = request.into_inner();
        traced("NodeStageVolume", &req.volume_id.clone(), async {
            let id = require(&req.volume_id, "volume_id")?.to_string();
            let staging = PathBuf::from(require(&req.staging_target_path, "staging_target_path")?);
            let cap = require_some(&req.volume_capability, "volume_capability")?;
            let ask = mount_ask(cap)?;
            if let Ok(rec) = self.manager.get(&id) {
                if self.manager.get_live_mount(&id).is_some() {
                    if rec.mount_point != staging {
                        return Err(Status::failed_precondition(format!(
                            "volume {id} is already staged at {} on this node",
                            rec.mount_point.display()
                        )));
                    }
                    if rec.options.read_only != ask.read_only || rec.options.group != ask.group {
                        return Err(Status::already_exists(format!(
                            "volume {id} is staged at {} with another capability (read-only {}, group {:?})",
                            staging.display(),
                            rec.options.read_only,
                            rec.options.group
                        )));
                    }
                    return Ok(NodeStageVolumeResponse {});
                }
            }
            let vol = self
                .db
                .volume_by_id(&id)
                .await?
                .ok_or_else(|| Status::not_found(format!("volume {id} does not exist")))?;
            self.ensure_bucket(&vol).await?;
            let manager = self.manager.clone();
            let options = MountOptions {
                read_only: ask.read_only,
                group: ask.group,
                ..Default::default()
            };
            let quota = vol.capacity_bytes as u64;
            let vid = id.clone();
            blocking(move || {
                std::fs::create_dir_all(&staging).map_err(|e| {
                    Status::internal(format!("creating {}: {e}", staging.display()))
                })?;
                manager
                    .create_mount(&vid, &staging, options)
                    .map_err(mount_status)?;
                manager.start(&vid).map_err(mount_status)?;
                // The volume's capacity is its quota on every node.
                if let Some(live) = manager.get_live_mount(&vid) {
                    let mut m = live.lock();
                    if !m.is_read_only() && m.usage().quota != Some(quota) {
                        m.set_quota(Some(quota))
                            .map_err(|e| bucket_status("setting the quota", e))?;
                        drop(m);
                        live.commit_now()
                            .map_err(|e| bucket_status("committing the quota", e))?;
                    }
                }
                Ok(())
            })
            .await?;
            self.report_head(&id).await;
            Ok(NodeStageVolumeResponse {})
        })
        .await
    }

    async fn node_unstage_volume(
        &self,
        request: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        let req = request.into_inner();
        traced("NodeUnstageVolume", &req.volume_id.clone(), async {
            let id = require(&req.volume_id, "volume_id")?.to_string();
            let staging = PathBuf::from(require(&req.staging_target_path, "staging_target_path")?);
            let manager = self.manager.clone();
            blocking(move || {
                match manager.get(&id) {
                    Ok(rec) if rec.mount_point == staging => {
                        manager.delete(&id).map_err(mount_status)?;
                    }
                    _ => {
                        // Not ours (any more): clean a leftover or dead mount.
                        if session::is_stale(&staging) || session::is_mount_point(&staging) {
                            session::lazy_unmount(&staging).map_err(|e| {
                                Status::internal(format!("unmounting {}: {e}", staging.display()))
                            })?;
                        }
                    }
                }
                Ok(())
            })
            .await?;
            Ok(NodeUnstageVolumeResponse {})
        })
        .await
    }

    async fn node_publish_volume(
        &self,
        request: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let req = request.into_inner();
        traced("NodePublishVolume", &req.volume_id.clone(), async {
            let id = require(&req.volume_id, "volume_id")?.to_string();
            let target = PathBuf::from(require(&req.target_path, "target_path")?);
            let staging = PathBuf::from(require(&req.staging_target_path, "staging_target_path")?);
            let cap = require_some(&req.volume_capability, "volume_capability")?;
            let ask = mount_ask(cap)?;
            let read_only = req.readonly || ask.read_only;
            let rec = self.manager.get(&id).map_err(|_| {
                Status::failed_precondition(format!("volume {id} is not staged on this node"))
            })?;
            if rec.mount_point != staging || self.manager.get_live_mount(&id).is_none() {
                return Err(Status::failed_precondition(format!(
                    "volume {id} is not staged at {}",
                    staging.display()
                )));
            }
            if let Some((other, t)) = self.manager.volume_of_target(&target) {
                if other != id {
                    return Err(Status::already_exists(format!(
                        "{} is already the target of volume {other}",
                        target.display()
                    )));
                }
                if t.read_only != read_only {
                    return Err(Status::already_exists(format!(
                        "volume {id} is already published at {} with read-only {}",
                        target.display(),
                        t.read_only
                    )));
                }
                return Ok(NodePublishVolumeResponse {});
            }
            let manager = self.manager.clone();
            let flags = ask.flags;
            blocking(move || {
                manager
                    .add_target(
                        &id,
                        Target {
                            path: target.clone(),
                            read_only,
                        },
                    )
                    .map_err(mount_status)?;
                apply_flags(&target, &flags, read_only).map_err(|e| {
                    Status::internal(format!("mount flags on {}: {e}", target.display()))
                })
            })
            .await?;
            Ok(NodePublishVolumeResponse {})
        })
        .await
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        traced("NodeUnpublishVolume", &req.volume_id.clone(), async {
            require(&req.volume_id, "volume_id")?;
            let target = PathBuf::from(require(&req.target_path, "target_path")?);
            let manager = self.manager.clone();
            blocking(move || manager.remove_target(&target).map_err(mount_status)).await?;
            Ok(NodeUnpublishVolumeResponse {})
        })
        .await
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        let req = request.into_inner();
        traced("NodeGetVolumeStats", &req.volume_id.clone(), async {
            let id = require(&req.volume_id, "volume_id")?.to_string();
            let path = PathBuf::from(require(&req.volume_path, "volume_path")?);
            let rec = self.manager.get(&id).map_err(|_| {
                Status::not_found(format!("volume {id} is not staged on this node"))
            })?;
            if rec.mount_point != path && !rec.targets.iter().any(|t| t.path == path) {
                return Err(Status::not_found(format!(
                    "{} is not a path of volume {id}",
                    path.display()
                )));
            }
            let live = self.manager.get_live_mount(&id);
            let dead = {
                let p = path.clone();
                blocking(move || Ok(!answers(&p))).await?
            };
            let condition = match (&live, dead) {
                (None, _) => VolumeCondition {
                    abnormal: true,
                    message: "the volume's FUSE mount is not running".into(),
                },
                (_, true) => VolumeCondition {
                    abnormal: true,
                    message: format!(
                        "{} does not answer (transport endpoint not connected)",
                        path.display()
                    ),
                },
                _ => VolumeCondition {
                    abnormal: false,
                    message: "mounted and answering".into(),
                },
            };
            let usage = live.map(|l| l.lock().usage());
            let (used, entries, quota) = usage
                .map(|u| (u.used_bytes as i64, u.entries as i64, u.quota))
                .unwrap_or((0, 0, None));
            let total = quota.map(|q| q as i64).unwrap_or(0);
            Ok(NodeGetVolumeStatsResponse {
                usage: vec![
                    VolumeUsage {
                        available: (total - used).max(0),
                        total,
                        used,
                        unit: volume_usage::Unit::Bytes as i32,
                    },
                    VolumeUsage {
                        available: MAX_INODES - entries,
                        total: MAX_INODES,
                        used: entries,
                        unit: volume_usage::Unit::Inodes as i32,
                    },
                ],
                volume_condition: Some(condition),
            })
        })
        .await
    }

    async fn node_expand_volume(
        &self,
        request: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        let req = request.into_inner();
        traced("NodeExpandVolume", &req.volume_id.clone(), async {
            let id = require(&req.volume_id, "volume_id")?.to_string();
            require(&req.volume_path, "volume_path")?;
            let range = require_some(&req.capacity_range, "capacity_range")?;
            let bytes = range.required_bytes.max(range.limit_bytes);
            if bytes <= 0 {
                return Err(Status::invalid_argument(
                    "capacity_range: required_bytes or limit_bytes must be positive",
                ));
            }
            let live = self.manager.get_live_mount(&id).ok_or_else(|| {
                Status::not_found(format!("volume {id} is not staged on this node"))
            })?;
            blocking(move || {
                live.lock()
                    .set_quota(Some(bytes as u64))
                    .map_err(|e| bucket_status("setting the quota", e))?;
                live.commit_now()
                    .map_err(|e| bucket_status("committing the quota", e))?;
                Ok(())
            })
            .await?;
            Ok(NodeExpandVolumeResponse {
                capacity_bytes: bytes,
            })
        })
        .await
    }

    async fn node_get_capabilities(
        &self,
        _: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        use rpc::Type as T;
        let capabilities = [
            T::StageUnstageVolume,
            T::GetVolumeStats,
            T::ExpandVolume,
            T::VolumeCondition,
            T::VolumeMountGroup,
        ]
        .into_iter()
        .map(|t| NodeServiceCapability {
            r#type: Some(node_service_capability::Type::Rpc(
                node_service_capability::Rpc { r#type: t as i32 },
            )),
        })
        .collect();
        Ok(Response::new(NodeGetCapabilitiesResponse { capabilities }))
    }

    async fn node_get_info(
        &self,
        _: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.node_id.clone(),
            max_volumes_per_node: self.max_volumes,
            accessible_topology: None,
        }))
    }
}

/// True when `stat(path)` answers (a dead FUSE mount gives ENOTCONN).
fn answers(path: &Path) -> bool {
    std::fs::metadata(path).is_ok()
}

/// Apply mount flags to a pod's bind mount with a remount.
fn apply_flags(target: &Path, flags: &[String], read_only: bool) -> std::io::Result<()> {
    use nix::mount::{mount, MsFlags};
    let mut ms = MsFlags::empty();
    for f in flags {
        ms |= match f.as_str() {
            "noexec" => MsFlags::MS_NOEXEC,
            "nosuid" => MsFlags::MS_NOSUID,
            "nodev" => MsFlags::MS_NODEV,
            "noatime" => MsFlags::MS_NOATIME,
            "relatime" => MsFlags::MS_RELATIME,
            _ => MsFlags::empty(),
        };
    }
    if ms.is_empty() {
        return Ok(());
    }
    if read_only {
        ms |= MsFlags::MS_RDONLY;
    }
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | ms,
        None::<&str>,
    )
    .map_err(std::io::Error::from)
}
