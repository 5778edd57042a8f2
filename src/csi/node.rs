//! The CSI Node service: stage = FUSE-mount the volume's live bucket at the
//! staging path (creating or cloning the bucket on first use), publish =
//! bind it into the pod. The node agent (`crate::node`) does the work; this
//! file validates requests and turns them into calls on it. Every path is checked (`paths.rs`) and every
//! volume takes one operation at a time (`locks.rs`) before anything is
//! created or mounted.

use std::path::{Path, PathBuf};

use tonic::{Request, Response, Status};

use super::params::{self, check_capabilities, check_range, tenant_from};
use super::paths::{check_apart, check_directory_or_absent, check_path};
use super::proto::node_server::Node;
use super::proto::node_service_capability::{self, rpc};
use super::proto::volume_capability::access_mode::Mode;
use super::proto::volume_capability::AccessType;
use super::proto::*;
use super::status::{bucket_status, require_id, require_some, shown, traced};
use crate::bucket::BucketId;
use crate::db::{DbError, HeadKey};
use crate::fuse::{safe_path, session, MountError, MountOptions, Target};
use crate::node::NodeAgent;

/// Inodes reported as the total in volume stats.
const MAX_INODES: i64 = 1 << 32;

pub struct NodeService {
    agent: NodeAgent,
    /// Every staging and target path must be under it, when set.
    kubelet_dir: Option<PathBuf>,
}

impl NodeService {
    pub fn new(agent: NodeAgent, kubelet_dir: Option<PathBuf>) -> Self {
        Self { agent, kubelet_dir }
    }

    /// A path kubelet sent: clean, under the kubelet dir, through no
    /// symlink, and clear of this node's own state dir.
    fn path(&self, field: &str, value: &str) -> Result<PathBuf, Status> {
        let path = check_path(field, value, self.kubelet_dir.as_deref())?;
        check_apart(
            field,
            &path,
            self.agent.state().root(),
            "the node's state directory",
        )?;
        Ok(path)
    }

    /// `volume_path` of NodeGetVolumeStats and NodeExpandVolume: a staging
    /// path or target of volume `id` on this node. These RPCs only look the
    /// path up (nothing is mounted at it), so an unknown volume, and any path
    /// that is not one of its paths (relative, outside the kubelet dir, …),
    /// is the spec's NOT_FOUND ("does not exist on the specified
    /// volume_path", what csi-sanity asks for a relative path); only a
    /// missing path is INVALID_ARGUMENT.
    fn lookup_path(
        &self,
        volume_id: &str,
        volume_path: &str,
    ) -> Result<(BucketId, PathBuf), Status> {
        if volume_path.is_empty() {
            return Err(Status::invalid_argument("volume_path is required"));
        }
        let rec = BucketId::from_hex(volume_id)
            .ok()
            .and_then(|id| self.agent.mounts().get(&id).ok())
            .ok_or_else(|| {
                Status::not_found(format!(
                    "volume {} is not staged on this node",
                    shown(volume_id)
                ))
            })?;
        let id = rec.volume_id;
        let path = self.path("volume_path", volume_path).map_err(|e| {
            Status::not_found(format!("{}: not a path of volume {id}", e.message()))
        })?;
        if rec.mount_point != path && !rec.targets.iter().any(|t| t.path == path) {
            return Err(Status::not_found(format!(
                "{} is not a path of volume {id}",
                path.display()
            )));
        }
        Ok((id, path))
    }

    /// The recorded path (a staging path or a target) of any volume that
    /// `path` equals, lies in or contains, other than `skip`; a mount at
    /// `path` would stack on it or cover it.
    fn overlap(
        &self,
        path: &Path,
        skip: Option<(&BucketId, &Path)>,
    ) -> Option<(BucketId, PathBuf)> {
        self.agent.mounts().list().into_iter().find_map(|rec| {
            std::iter::once(rec.mount_point.clone())
                .chain(rec.targets.iter().map(|t| t.path.clone()))
                .filter(|p| skip != Some((&rec.volume_id, p.as_path())))
                .find(|p| path.starts_with(p) || p.starts_with(path))
                .map(|p| (rec.volume_id, p))
        })
    }

    /// FAILED_PRECONDITION when `path` (field `field`) overlaps another
    /// recorded path, or something that is not volume `id` is mounted there.
    fn check_free(
        &self,
        field: &str,
        id: &BucketId,
        path: &Path,
        skip: Option<(&BucketId, &Path)>,
    ) -> Result<(), Status> {
        if let Some((other, p)) = self.overlap(path, skip) {
            return Err(Status::failed_precondition(format!(
                "{field} {} overlaps {} of volume {other} on this node",
                path.display(),
                p.display()
            )));
        }
        match session::mount_source(path) {
            Some(src) if src != session::source_of(id) => {
                Err(Status::failed_precondition(format!(
                    "{field} {}: something else is mounted there ({})",
                    path.display(),
                    shown(&src)
                )))
            }
            _ => Ok(()),
        }
    }

    /// Whether `path` is a staging path or target any volume recorded here;
    /// such a path is never undone as a leftover of another request.
    fn recorded(&self, path: &Path) -> bool {
        self.agent
            .mounts()
            .list()
            .iter()
            .any(|r| r.mount_point == path || r.targets.iter().any(|t| t.path == path))
    }
}

/// The pod kubelet publishes for (`podInfoOnMount: true` puts it in the
/// volume context); `None` when it is not there.
fn pod_of(context: &std::collections::HashMap<String, String>) -> Option<crate::fuse::PodRef> {
    let get = |k: &str| context.get(&format!("csi.storage.k8s.io/{k}")).cloned();
    Some(crate::fuse::PodRef {
        namespace: get("pod.namespace")?,
        name: get("pod.name")?,
        uid: get("pod.uid").unwrap_or_default(),
    })
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
                "volume_capability.mount.volume_mount_group {} is not a numeric group id",
                shown(&m.volume_mount_group)
            ))
        })?)
    };
    for f in &m.mount_flags {
        if !matches!(
            f.as_str(),
            "ro" | "rw" | "noexec" | "nosuid" | "nodev" | "noatime" | "relatime" | "defaults"
        ) {
            return Err(Status::invalid_argument(format!(
                "volume_capability.mount.mount_flags: {} is not supported (ro, rw, noexec, nosuid, nodev, noatime, relatime)",
                shown(f)
            )));
        }
    }
    Ok(MountAsk {
        read_only: read_only || m.mount_flags.iter().any(|f| f == "ro"),
        group,
        flags: m.mount_flags.clone(),
    })
}

/// The volume a request names (its id already checked with `require_id`):
/// NOT_FOUND when it is not a jax volume id.
fn volume_id(id: &str) -> Result<BucketId, Status> {
    BucketId::from_hex(id).map_err(|_| {
        Status::not_found(format!(
            "volume {} does not exist (not a jax volume id)",
            shown(id)
        ))
    })
}

/// Detach what is mounted at `path` only if it is volume `id`'s (a leftover
/// of ours after a crash); anything else mounted there is left alone.
fn unmount_if_ours(id: &BucketId, path: &Path) -> Result<(), Status> {
    if session::mount_source(path).as_deref() == Some(session::source_of(id).as_str()) {
        session::lazy_unmount(path)
            .map_err(|e| Status::internal(format!("unmounting {}: {e}", path.display())))?;
    }
    Ok(())
}

impl NodeService {
    /// A repeat of a stage that is already done: fine when it asks for the
    /// same path and capability.
    fn check_already_staged(
        &self,
        id: &BucketId,
        staging: &Path,
        ask: &MountAsk,
    ) -> Result<bool, Status> {
        let Ok(rec) = self.agent.mounts().get(id) else {
            return Ok(false);
        };
        if self.agent.mounts().get_live_mount(id).is_none() {
            return Ok(false);
        }
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
        Ok(true)
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
            require_id(&req.volume_id, "volume_id")?;
            let staging = self.path("staging_target_path", &req.staging_target_path)?;
            let cap = require_some(&req.volume_capability, "volume_capability")?;
            let ask = mount_ask(cap)?;
            let id = volume_id(&req.volume_id)?;
            let tenant = tenant_from(&req.secrets)?;
            check_directory_or_absent("staging_target_path", &staging)?;
            let _guard = self.agent.locks().lock(&id)?;
            let own = self.agent.mounts().get(&id).ok().map(|r| r.mount_point);
            self.check_free(
                "staging_target_path",
                &id,
                &staging,
                own.as_deref().map(|p| (&id, p)),
            )?;
            let vol = match self.agent.db().volume_by_id(&id.to_hex()).await {
                Ok(Some(v)) => v,
                Ok(None) => return Err(Status::not_found(format!("volume {id} does not exist"))),
                Err(DbError::Unavailable(why)) => {
                    // Postgres down: a volume already staged here may still be
                    // confirmed from the node's own records (tenant key included).
                    if self.check_already_staged(&id, &staging, &ask)? {
                        self.agent.verify_local_tenant(&id, tenant.as_ref())?;
                        return Ok(NodeStageVolumeResponse {});
                    }
                    return Err(Status::unavailable(format!(
                        "control-plane database unavailable: {why}"
                    )));
                }
                Err(e) => return Err(e.into()),
            };
            // The volume's key must open with what this request carries: a
            // tenant's volume needs the tenant's key, every time.
            let secret = HeadKey::of_volume(&vol, None).open(
                self.agent.kek(),
                tenant.as_ref(),
                &format!("volume {id}"),
            )?;
            if self.check_already_staged(&id, &staging, &ask)? {
                return Ok(NodeStageVolumeResponse {});
            }
            self.agent
                .prepare_bucket(&vol, &secret, tenant.as_ref())
                .await?;
            let options = MountOptions {
                read_only: ask.read_only,
                group: ask.group,
                sync_replicas: crate::db::replicas::sync_replicas_of(
                    &vol.parameters,
                    &vol.mutable_parameters,
                ),
                ..Default::default()
            };
            self.agent
                .mount_volume(&vol, secret, tenant, staging, options)
                .await?;
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
            require_id(&req.volume_id, "volume_id")?;
            let staging = self.path("staging_target_path", &req.staging_target_path)?;
            // No volume of ours has an id that is not one: nothing to undo.
            let Ok(id) = BucketId::from_hex(&req.volume_id) else {
                return Ok(NodeUnstageVolumeResponse {});
            };
            let _guard = self.agent.locks().lock(&id)?;
            let recorded = self.recorded(&staging);
            let manager = self.agent.mounts().clone();
            blocking(move || {
                match manager.get(&id) {
                    Ok(rec) if rec.mount_point == staging => {
                        // A final commit that fails keeps the volume staged.
                        manager.delete(&id)?;
                    }
                    _ if recorded => {}
                    _ => unmount_if_ours(&id, &staging)?,
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
            require_id(&req.volume_id, "volume_id")?;
            let target = self.path("target_path", &req.target_path)?;
            // A missing or bad capability is INVALID_ARGUMENT whatever else
            // is missing (csi-sanity sends neither it nor a staging path).
            let cap = require_some(&req.volume_capability, "volume_capability")?;
            let ask = mount_ask(cap)?;
            if req.staging_target_path.is_empty() {
                // The spec's code: we have STAGE_UNSTAGE_VOLUME.
                return Err(Status::failed_precondition(
                    "staging_target_path is required (this node stages volumes)",
                ));
            }
            let staging = self.path("staging_target_path", &req.staging_target_path)?;
            let read_only = req.readonly || ask.read_only;
            let id = volume_id(&req.volume_id)?;
            let _guard = self.agent.locks().lock(&id)?;
            let mounts = self.agent.mounts();
            let rec = mounts.get(&id).map_err(|_| {
                Status::failed_precondition(format!("volume {id} is not staged on this node"))
            })?;
            if rec.mount_point != staging || mounts.get_live_mount(&id).is_none() {
                return Err(Status::failed_precondition(format!(
                    "volume {id} is not staged at {}",
                    staging.display()
                )));
            }
            if target == staging || target.starts_with(&staging) {
                return Err(Status::invalid_argument(format!(
                    "target_path {} lies in the staging path",
                    target.display()
                )));
            }
            if staging.starts_with(&target) {
                return Err(Status::invalid_argument(format!(
                    "target_path {} contains the staging path",
                    target.display()
                )));
            }
            if let Some((other, t)) = mounts.volume_of_target(&target) {
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
            check_directory_or_absent("target_path", &target)?;
            self.check_free("target_path", &id, &target, None)?;
            let pod = pod_of(&req.volume_context);
            let manager = mounts.clone();
            let flags = ask.flags;
            let kubelet_dir = self.kubelet_dir.clone();
            blocking(move || {
                manager.add_target(
                    &id,
                    Target {
                        path: target.clone(),
                        read_only,
                        pod,
                    },
                )?;
                apply_flags(kubelet_dir.as_deref(), &target, &flags, read_only)
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
            require_id(&req.volume_id, "volume_id")?;
            let target = self.path("target_path", &req.target_path)?;
            // No volume of ours has an id that is not one: nothing to undo.
            let Ok(id) = BucketId::from_hex(&req.volume_id) else {
                return Ok(NodeUnpublishVolumeResponse {});
            };
            let _guard = self.agent.locks().lock(&id)?;
            let recorded = self.recorded(&target);
            let manager = self.agent.mounts().clone();
            blocking(move || {
                if !manager.remove_target(&id, &target)? && !recorded {
                    // Not a target we recorded: only a leftover bind of this
                    // very volume is undone; nothing else is touched.
                    unmount_if_ours(&id, &target)?;
                }
                Ok(())
            })
            .await?;
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
            require_id(&req.volume_id, "volume_id")?;
            let (id, path) = self.lookup_path(&req.volume_id, &req.volume_path)?;
            let live = self.agent.mounts().get_live_mount(&id);
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
            require_id(&req.volume_id, "volume_id")?;
            if req.volume_path.is_empty() {
                return Err(Status::invalid_argument("volume_path is required"));
            }
            if let Some(cap) = &req.volume_capability {
                params::check_capability(cap)?;
            }
            if let Some(r) = &req.capacity_range {
                check_range(r)?;
                if r.required_bytes.max(r.limit_bytes) > params::MAX_CAPACITY {
                    return Err(Status::out_of_range(format!(
                        "capacity_range: {} bytes is above the largest volume ({} bytes)",
                        r.required_bytes.max(r.limit_bytes),
                        params::MAX_CAPACITY
                    )));
                }
            }
            let (id, _) = self.lookup_path(&req.volume_id, &req.volume_path)?;
            let live = self.agent.mounts().get_live_mount(&id).ok_or_else(|| {
                Status::failed_precondition(format!("volume {id} is staged but not mounted"))
            })?;
            // capacity_range is optional: the volume's recorded size is the
            // one the controller expanded it to.
            let bytes = match &req.capacity_range {
                Some(r) if r.required_bytes > 0 || r.limit_bytes > 0 => {
                    r.required_bytes.max(r.limit_bytes)
                }
                _ => {
                    self.agent
                        .db()
                        .volume_by_id(&id.to_hex())
                        .await?
                        .ok_or_else(|| Status::not_found(format!("volume {id} does not exist")))?
                        .capacity_bytes
                }
            };
            let capacity = blocking(move || {
                let mut m = live.lock();
                // Never shrink: a smaller size than the quota changes nothing.
                let current = m.usage().quota.unwrap_or(0);
                let new = current.max(bytes as u64);
                if new != current && !m.is_read_only() {
                    m.set_quota(Some(new))
                        .map_err(|e| bucket_status("setting the quota", e))?;
                    drop(m);
                    live.commit_now()
                        .map_err(|e| bucket_status("committing the quota", e))?;
                }
                Ok(new as i64)
            })
            .await?;
            Ok(NodeExpandVolumeResponse {
                capacity_bytes: capacity,
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
            node_id: self.agent.node_id().to_string(),
            max_volumes_per_node: self.agent.max_volumes(),
            accessible_topology: None,
        }))
    }
}

/// True when `stat(path)` answers (a dead FUSE mount gives ENOTCONN).
fn answers(path: &Path) -> bool {
    std::fs::metadata(path).is_ok()
}

/// Apply mount flags to a pod's bind mount with a remount; below the
/// kubelet dir through the target opened without following a link.
fn apply_flags(
    kubelet_dir: Option<&Path>,
    target: &Path,
    flags: &[String],
    read_only: bool,
) -> Result<(), Status> {
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
    // Opened after the bind, so the walk reaches the bind mount's root.
    let dir = match kubelet_dir {
        Some(root) => Some(safe_path::open_below(root, target, false).map_err(MountError::from)?),
        None => None,
    };
    let at = dir
        .as_ref()
        .map_or_else(|| target.to_path_buf(), safe_path::OpenDir::proc_path);
    mount(
        None::<&str>,
        &at,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | ms,
        None::<&str>,
    )
    .map_err(|e| Status::internal(format!("mount flags on {}: {e}", target.display())))
}
