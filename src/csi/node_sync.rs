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
            if let Err(e) = db
                .upsert_mount(&volume, &node_id, &path, r.status.as_db(), message)
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
            }) => {
                for _ in 0..5 {
                    match db
                        .report_head(&volume_id, &node_id, &head.to_string(), height as i64)
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
            Ok(_) => {}
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

/// Register the node (and its schema) once Postgres answers.
pub async fn register_node(db: Db, node_id: String, max_volumes: i64) {
    loop {
        let r = async {
            db.migrate().await?;
            db.upsert_node(&node_id, max_volumes).await
        }
        .await;
        match r {
            Ok(()) => return,
            Err(e) => {
                tracing::debug!(error = %e, "node not registered yet");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}
