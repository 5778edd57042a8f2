//! The node agent's tasks that keep Postgres informed: mount records,
//! bucket heads and the node's own registration. Each retries while
//! Postgres is down; the node keeps serving from its local records meanwhile.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};

use crate::bucket::BucketId;
use crate::db::Db;
use crate::fuse::{MountRecord, SyncEvent};

const RETRY: Duration = Duration::from_secs(2);

/// Mirror mount record changes into the `mounts` table (latest wins).
pub async fn mirror_mounts(db: Db, node_id: String, mut rx: mpsc::UnboundedReceiver<MountRecord>) {
    let mut pending: BTreeMap<BucketId, MountRecord> = BTreeMap::new();
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(r) => {
                    pending.insert(r.volume_id, r);
                }
                None => return,
            }
        }
        while let Ok(r) = rx.try_recv() {
            pending.insert(r.volume_id, r);
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
                    &volume.to_hex(),
                    &node_id,
                    &path,
                    r.status.as_db(),
                    message,
                    published,
                )
                .await
            {
                tracing::debug!(%volume, error = %e, "mount record not mirrored yet");
                pending.insert(volume, r);
                failed = true;
            }
        }
        if failed {
            tokio::time::sleep(RETRY).await;
        }
    }
}

/// A head to report: (head, height, used bytes).
type PendingHead = (crate::store::Hash, u64, u64);

/// Report every committed head to `bucket_heads` (snapshots read it). The
/// latest head of each volume waits until Postgres takes it, however long
/// it is down (an outage must not leave a stale head behind).
pub async fn report_heads(db: Db, node_id: String, mut events: broadcast::Receiver<SyncEvent>) {
    let mut pending: BTreeMap<BucketId, PendingHead> = BTreeMap::new();
    let mut closed = false;
    loop {
        if pending.is_empty() {
            if closed {
                return;
            }
            closed = !take_event(events.recv().await, &mut pending);
        }
        // Whatever else is waiting (latest wins).
        loop {
            use broadcast::error::{RecvError, TryRecvError};
            let e = match events.try_recv() {
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Closed) => Err(RecvError::Closed),
                Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
                Ok(e) => Ok(e),
            };
            if !take_event(e, &mut pending) {
                closed = true;
                break;
            }
        }
        let mut failed = false;
        for (volume, (head, height, used)) in std::mem::take(&mut pending) {
            let reported = db
                .report_head(
                    &volume.to_hex(),
                    &node_id,
                    &head.to_string(),
                    height as i64,
                    Some(used as i64),
                )
                .await;
            if let Err(e) = reported {
                tracing::debug!(%volume, error = %e, "head not reported yet");
                pending.entry(volume).or_insert((head, height, used));
                failed = true;
            }
        }
        if failed && closed {
            tokio::time::sleep(RETRY).await;
        } else if failed {
            // Newer heads replace the waiting ones meanwhile.
            let retry = tokio::time::sleep(RETRY);
            tokio::pin!(retry);
            loop {
                tokio::select! {
                    _ = &mut retry => break,
                    e = events.recv() => {
                        if !take_event(e, &mut pending) {
                            closed = true;
                            break;
                        }
                    }
                }
            }
        }
    }
}

/// Note a head event in `pending` (latest wins); false once the channel closed.
fn take_event(
    e: Result<SyncEvent, broadcast::error::RecvError>,
    pending: &mut BTreeMap<BucketId, PendingHead>,
) -> bool {
    match e {
        Ok(SyncEvent::Committed {
            volume,
            head,
            height,
            used_bytes,
        })
        | Ok(SyncEvent::MountInvalidated {
            volume,
            head,
            height,
            used_bytes,
        }) => {
            pending.insert(volume, (head, height, used_bytes));
            true
        }
        Err(broadcast::error::RecvError::Lagged(n)) => {
            tracing::warn!(
                missed = n,
                "head reporter lagged; later commits will report"
            );
            true
        }
        Err(broadcast::error::RecvError::Closed) => false,
    }
}

/// How often a node says it is alive (and its free space). The controller's
/// replica timeout must be several of these (it refuses less than 3).
pub const HEARTBEAT: Duration = Duration::from_secs(5);

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
            Err(e @ crate::db::DbError::Removed(_)) => {
                // Said once a minute: every other node refuses this one.
                tracing::error!(error = %e, "this node is not registered");
                tokio::time::sleep(HEARTBEAT.max(Duration::from_secs(60))).await;
            }
            Err(e) => {
                tracing::debug!(error = %e, "node not registered yet");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}
