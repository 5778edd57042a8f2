//! Following `jax-csi node remove`: the removed nodes' sync identities are
//! added to this node's revoked list (kept in the state dir), the sync
//! engine closes their connections and refuses them, and every volume held
//! here that still shares its secret with one of them gets a version
//! without that share.

use std::sync::Arc;
use std::time::Duration;

use crate::bucket::StateDir;
use crate::crypto::NodeId;
use crate::db::Db;
use crate::sync::SyncEngine;

use super::replicas::Replicas;

/// Poll Postgres for removed nodes every `every`, and act on new ones.
pub async fn follow_removals(
    db: Db,
    engine: SyncEngine,
    state: Arc<StateDir>,
    replicas: Replicas,
    every: Duration,
) {
    // What the state dir already lists holds before Postgres answers.
    let mut pending = !state.revoked().all().is_empty();
    loop {
        match db.removed_endpoints().await {
            Ok(endpoints) => {
                let me = engine.node_id();
                let ids: Vec<NodeId> = endpoints
                    .iter()
                    .filter_map(|e| NodeId::from_hex(e).ok())
                    .filter(|id| *id != me)
                    .collect();
                match state.revoked().add(ids) {
                    Ok(new) if !new.is_empty() => {
                        for node in &new {
                            tracing::warn!(%node, "a node was removed from the cluster: refusing it and dropping its key shares");
                        }
                        pending = true;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "could not record removed nodes"),
                }
            }
            Err(e) => tracing::debug!(error = %e, "removed nodes not read (Postgres down?)"),
        }
        if pending {
            engine.drop_revoked().await;
            let (state, replicas) = (state.clone(), replicas.clone());
            pending = tokio::task::spawn_blocking(move || drop_shares(&state, &replicas))
                .await
                .unwrap_or(true);
        }
        tokio::time::sleep(every).await;
    }
}

/// A version without removed members for every volume whose head still
/// shares with one; whether any volume is left to do (tried again later).
fn drop_shares(state: &StateDir, replicas: &Replicas) -> bool {
    let revoked = state.revoked().all();
    let mut left = false;
    for id in state.list_buckets().unwrap_or_default() {
        let Ok(members) = state.members_at_head(&id) else {
            continue;
        };
        if !members.iter().any(|m| revoked.contains(m)) {
            continue;
        }
        match replicas.drop_revoked(&id) {
            Ok(version) => {
                tracing::info!(volume = %id, %version, "a version without the removed nodes' key shares")
            }
            Err(e) => {
                left = true;
                tracing::warn!(volume = %id, error = %e, "could not drop removed nodes' key shares yet; trying again")
            }
        }
    }
    left
}
