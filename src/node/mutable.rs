//! Mutable parameters (ControllerModifyVolume) that the nodes staging a
//! volume apply: `syncReplicas` changes what an fsync of the running mount
//! waits for, within a pass of this loop. (`replicas` is the controller
//! leader's to place; `historyRetention` is read at each pruning.)

use std::time::Duration;

use crate::bucket::BucketId;
use crate::db::Db;
use crate::fuse::MountManager;

/// Apply changes every `every` until the task is dropped.
pub async fn follow(db: Db, manager: MountManager, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = pass(&db, &manager).await {
            // Postgres away: the mounts keep what they have.
            tracing::debug!(error = %e, "mutable parameters not checked");
        }
    }
}

/// One pass; how many mounts changed.
pub async fn pass(db: &Db, manager: &MountManager) -> Result<usize, crate::db::DbError> {
    let ids: Vec<String> = manager
        .list()
        .iter()
        .map(|r| r.volume_id.to_hex())
        .collect();
    if ids.is_empty() {
        return Ok(0);
    }
    let mut changed = 0;
    for (id, parameters, mutable) in db.parameters_of(&ids).await? {
        let Ok(volume) = BucketId::from_hex(&id) else {
            continue;
        };
        let k = crate::db::replicas::sync_replicas_of(&parameters, &mutable);
        match manager.set_sync_replicas(&volume, k) {
            Ok(true) => {
                changed += 1;
                tracing::info!(%volume, sync_replicas = k, "the volume's fsyncs now wait for this many other replicas (syncReplicas changed)");
            }
            Ok(false) => {}
            // Unmounted meanwhile: nothing to change.
            Err(crate::fuse::MountError::MountNotFound(_)) => {}
            Err(e) => {
                tracing::warn!(%volume, sync_replicas = k, error = %e, "could not apply a changed syncReplicas")
            }
        }
    }
    Ok(changed)
}
