//! The node's operator service (`jaxcsi.admin.v1.Admin`) on the node's CSI
//! socket: a volume's files and history as this node holds them, and
//! restores through the live mount (so the kernel, the committer and the
//! peers see a restore like any other change). Only volumes this node
//! stages now are served: whoever reaches this socket can publish those,
//! and nothing here widens that. A volume held here but no longer staged
//! (or a tenant's volume, whose key only a NodeStage brings) is refused,
//! though the cluster KEK alone would open it.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::admin_proto::admin_server::Admin;
use super::admin_proto::*;
use super::status::{require, require_id, shown, traced, MAX_ID};
use crate::bucket::browse::{kind_name, list_dir, VersionSpec};
use crate::bucket::{path, BucketError, BucketId, Mount, VersionInfo};
use crate::node::NodeAgent;

/// Pieces of a streamed file (one chunk each at most).
const READ_PIECE: u64 = 1 << 20;

pub struct AdminService {
    agent: NodeAgent,
}

impl AdminService {
    pub fn new(agent: NodeAgent) -> Self {
        Self { agent }
    }
}

/// The volume a request names (its id already checked with `require_id`).
fn volume_of(id: &str) -> Result<BucketId, Status> {
    BucketId::from_hex(id)
        .map_err(|_| Status::not_found(format!("volume {} has no replica on this node", shown(id))))
}

fn version_message(v: &VersionInfo) -> Version {
    Version {
        hash: v.hash.to_string(),
        height: v.height,
        previous: v.previous.map(|h| h.to_string()).unwrap_or_default(),
        merged: v.merged.map(|h| h.to_string()).unwrap_or_default(),
        author: v.author.to_hex(),
        created_unix_seconds: v.created_at.secs,
        used_bytes: v.used_bytes,
        entries: v.entries,
    }
}

fn spec_of(select: &Option<VersionSelector>) -> Result<VersionSpec, Status> {
    let (version, at) = select
        .as_ref()
        .map_or(("", None), |s| (s.version.as_str(), s.at_unix_seconds));
    if version.len() > MAX_ID {
        return Err(Status::invalid_argument(format!(
            "select.version: longer than {MAX_ID} bytes (a height or a 64-hex manifest hash)"
        )));
    }
    Ok(VersionSpec::parse(version, at)?)
}

/// How a request reads: the live mount (the head with unsaved changes) or
/// a private view of one version.
enum View {
    Live(crate::fuse::LiveMount),
    Version(Box<Mount>),
}

impl View {
    fn with<T>(
        &mut self,
        f: impl FnOnce(&mut Mount) -> crate::bucket::Result<T>,
    ) -> Result<T, Status> {
        match self {
            View::Live(live) => f(&mut live.lock()),
            View::Version(m) => f(m),
        }
        .map_err(Status::from)
    }
}

impl AdminService {
    /// The volume a request names, if this node stages it now.
    fn staged(&self, id: &str) -> Result<BucketId, Status> {
        let volume = volume_of(id)?;
        let mounts = self.agent.mounts();
        if mounts.get_live_mount(&volume).is_some() {
            return Ok(volume);
        }
        if self.agent.state().has_bucket(&volume) {
            return Err(Status::failed_precondition(format!(
                "volume {} is not staged on this node: the operator service reads and restores only volumes this node serves now (stage it, or ask the node that does)",
                shown(id)
            )));
        }
        Err(Status::not_found(format!(
            "volume {} has no replica on this node",
            shown(id)
        )))
    }

    /// Resolve the selector against this node's history of the volume.
    fn view(&self, volume: &str, spec: VersionSpec) -> Result<(View, String), Status> {
        let volume = self.staged(volume)?;
        let mounts = self.agent.mounts();
        let bucket = mounts.open_bucket(&volume)?;
        if spec == VersionSpec::Head {
            if let Some(live) = mounts.get_live_mount(&volume) {
                let base = live.lock().base().hash.to_string();
                return Ok((View::Live(live), base));
            }
            let head = bucket.head()?;
            let m = mounts.open_version(&volume, &head)?;
            return Ok((View::Version(Box::new(m)), head.to_string()));
        }
        let history = bucket.history()?;
        let picked = spec.pick(&history)?.expect("not the head");
        let m = mounts.open_version(&volume, &picked.hash)?;
        Ok((View::Version(Box::new(m)), picked.hash.to_string()))
    }

    fn history_of(&self, volume: &str) -> Result<Vec<VersionInfo>, Status> {
        let volume = self.staged(volume)?;
        Ok(self.agent.mounts().open_bucket(&volume)?.history()?)
    }
}

/// Run blocking bucket work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("worker failed: {e}")))?
}

type FileStream = Pin<Box<dyn Stream<Item = Result<FileData, Status>> + Send>>;

#[tonic::async_trait]
impl Admin for Arc<AdminService> {
    async fn list_dir(
        &self,
        request: Request<ListDirRequest>,
    ) -> Result<Response<ListDirResponse>, Status> {
        let req = request.into_inner();
        let this = self.clone();
        traced("AdminListDir", &req.volume_id.clone(), async move {
            require_id(&req.volume_id, "volume_id")?;
            let spec = spec_of(&req.select)?;
            blocking(move || {
                let (mut view, version) = this.view(&req.volume_id, spec)?;
                let listed = view.with(|m| list_dir(m, &req.path))?;
                Ok(ListDirResponse {
                    entries: listed
                        .into_iter()
                        .map(|e| DirEntry {
                            name: e.name,
                            kind: kind_name(e.kind).into(),
                            mode: e.mode,
                            size: e.size,
                            mtime_unix_seconds: e.mtime_secs,
                        })
                        .collect(),
                    version,
                })
            })
            .await
        })
        .await
    }

    type ReadFileStream = FileStream;

    async fn read_file(
        &self,
        request: Request<ReadFileRequest>,
    ) -> Result<Response<Self::ReadFileStream>, Status> {
        let req = request.into_inner();
        let this = self.clone();
        let volume = req.volume_id.clone();
        traced("AdminReadFile", &volume, async move {
            require_id(&req.volume_id, "volume_id")?;
            require(&req.path, "path")?;
            let spec = spec_of(&req.select)?;
            let (view, ino, size) = blocking(move || {
                let (mut view, _) = this.view(&req.volume_id, spec)?;
                let (ino, size) = view.with(|m| {
                    let ino = path::resolve(m, &req.path)?;
                    let a = m.getattr(ino)?;
                    if a.kind != crate::bucket::FileKind::File {
                        return Err(BucketError::InvalidArgument(format!(
                            "{} is not a regular file",
                            req.path
                        )));
                    }
                    Ok((ino, a.size))
                })?;
                Ok((view, ino, size))
            })
            .await?;
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            // One piece at a time under the lock, so pods are not held up.
            tokio::task::spawn_blocking(move || {
                let mut view = view;
                let mut off = 0;
                while off < size {
                    let piece = view.with(|m| m.read(ino, off, READ_PIECE.min(size - off) as u32));
                    let done = match &piece {
                        Ok(p) => p.is_empty(),
                        Err(_) => true,
                    };
                    off += piece.as_ref().map_or(0, |p| p.len() as u64);
                    if tx
                        .blocking_send(piece.map(|data| FileData { data }))
                        .is_err()
                        || done
                    {
                        break;
                    }
                }
            });
            let stream: FileStream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
            Ok(stream)
        })
        .await
    }

    async fn history(
        &self,
        request: Request<HistoryRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
        let req = request.into_inner();
        let this = self.clone();
        traced("AdminHistory", &req.volume_id.clone(), async move {
            require_id(&req.volume_id, "volume_id")?;
            blocking(move || {
                let versions = this.history_of(&req.volume_id)?;
                Ok(HistoryResponse {
                    versions: versions.iter().map(version_message).collect(),
                })
            })
            .await
        })
        .await
    }

    async fn restore(
        &self,
        request: Request<RestoreRequest>,
    ) -> Result<Response<RestoreResponse>, Status> {
        let req = request.into_inner();
        let this = self.clone();
        traced("AdminRestore", &req.volume_id.clone(), async move {
            require_id(&req.volume_id, "volume_id")?;
            let spec = spec_of(&req.select)?;
            if spec == VersionSpec::Head {
                return Err(Status::invalid_argument(
                    "restore needs a version (hash or height) or a time",
                ));
            }
            blocking(move || {
                let history = this.history_of(&req.volume_id)?;
                let picked = spec.pick(&history)?.expect("not the head").clone();
                let saved = this
                    .agent
                    .replicas()
                    .restore(&volume_of(&req.volume_id)?, &picked.hash)?;
                tracing::info!(volume = %req.volume_id, from = %picked.hash, head = %saved.hash, "restored a version");
                let head = this
                    .history_of(&req.volume_id)?
                    .into_iter()
                    .find(|v| v.hash == saved.hash)
                    .ok_or_else(|| Status::internal("the restored head is not in the history"))?;
                Ok(RestoreResponse {
                    restored: Some(version_message(&picked)),
                    head: Some(version_message(&head)),
                })
            })
            .await
        })
        .await
    }

    async fn rotate_secret(
        &self,
        request: Request<RotateSecretRequest>,
    ) -> Result<Response<RotateSecretResponse>, Status> {
        let req = request.into_inner();
        let this = self.clone();
        traced("AdminRotateSecret", &req.volume_id.clone(), async move {
            require_id(&req.volume_id, "volume_id")?;
            blocking(move || {
                // Only a staged volume, as for every other operator request.
                let volume = this.staged(&req.volume_id)?;
                let saved = this.agent.replicas().rotate_secret(&volume)?;
                tracing::info!(volume = %req.volume_id, head = %saved.hash, "rotated the volume's secret");
                let head = this
                    .history_of(&req.volume_id)?
                    .into_iter()
                    .find(|v| v.hash == saved.hash)
                    .ok_or_else(|| Status::internal("the new head is not in the history"))?;
                Ok(RotateSecretResponse {
                    head: Some(version_message(&head)),
                })
            })
            .await
        })
        .await
    }
}
