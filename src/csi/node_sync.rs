//! Background tasks of the node plugin that keep Postgres informed: mount
//! records, bucket heads and the node's own registration. Each retries while
//! Postgres is down; the node keeps serving from its local records meanwhile.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};

use crate::db::Db;
use crate::fuse::mount_manager::{MountRecord, SyncEvent};

const RETRY: Duration = Duration::from_secs(2);

/// Mirror mount record changes into the `mounts` table (latest wins).
pub async fn mirror_mounts(db: Db, node_id: String, mut rx: mpsc::UnboundedReceiver<MountRecord>) {
    let mut pending: BTreeMap<String, MountRecord> = BTreeMap::new();
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(r) => {
                    pending.insert(r.volume_id.clone(), r);
                }
                None => return,
            }
        }
        while let Ok(r) = rx.try_recv() {
            pending.insert(r.volume_id.clone(), r);
        }
        let mut failed = false;
        for (volume, r) in std::mem::take(&mut pending) {
            let message = match &r.status {
                crate::fuse::MountStatus::Error(m) => Some(m.as_str()),
                _ => None,
            };
            let path = r.mount_point.to_string_lossy();
            let published = !r.targets.is_empty();
            if let Err(e) = db
                .upsert_mount(
                    &volume,
                    &node_id,
                    &path,
                    r.status.as_db(),
                    message,
                    published,
                )
                .await
            {
                tracing::debug!(volume, error = %e, "mount record not mirrored yet");
                pending.insert(volume, r);
                failed = true;
            }
        }
        if failed {
            tokio::time::sleep(RETRY).await;
        }
    }
}

/// Report every committed head to `bucket_heads` (snapshots read it).
pub async fn report_heads(db: Db, node_id: String, mut events: broadcast::Receiver<SyncEvent>) {
    loop {
        match events.recv().await {
            Ok(SyncEvent::Committed {
                volume_id,
                head,
                height,
                used_bytes,
            })
            | Ok(SyncEvent::MountInvalidated {
                volume_id,
                head,
                height,
                used_bytes,
            }) => {
                for _ in 0..5 {
                    match db
                        .report_head(
                            &volume_id,
                            &node_id,
                            &head.to_string(),
                            height as i64,
                            Some(used_bytes as i64),
                        )
                        .await
                    {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::debug!(volume = %volume_id, error = %e, "head not reported yet");
                            tokio::time::sleep(RETRY).await;
                        }
                    }
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(
                    missed = n,
                    "head reporter lagged; later commits will report"
                );
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// How often a node tells Postgres it is alive and how much room it has.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// Size and free bytes of the file system holding `dir`.
pub fn disk_space(dir: &std::path::Path) -> (i64, i64) {
    match nix::sys::statvfs::statvfs(dir) {
        Ok(s) => {
            let frag = s.fragment_size() as i64;
            (s.blocks() as i64 * frag, s.blocks_available() as i64 * frag)
        }
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "statvfs of the state dir failed");
            (0, 0)
        }
    }
}

/// Register the node (and its schema) once Postgres answers, then keep its
/// record fresh: the heartbeat carries the state dir's real free space,
/// which GetCapacity reports.
pub async fn register_node(
    db: Db,
    node_id: String,
    max_volumes: i64,
    state_dir: std::path::PathBuf,
    sync: Option<crate::db::NodeSync>,
) {
    let mut migrated = false;
    loop {
        let (size, free) = disk_space(&state_dir);
        let r = async {
            if !migrated {
                db.migrate().await?;
                migrated = true;
            }
            db.upsert_node(&node_id, max_volumes, size, free, sync.as_ref())
                .await
        }
        .await;
        match r {
            Ok(()) => tokio::time::sleep(HEARTBEAT).await,
            Err(e) => {
                tracing::debug!(error = %e, "node not registered yet");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}
