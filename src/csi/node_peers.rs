//! Wiring the sync engine into the node: the MountManager as what applies
//! pulled heads and grants membership, the peer lists kept current from
//! Postgres (freshest head first; the last lists stay in force while
//! Postgres is down), and every local commit announced to the peers.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::bucket::BucketId;
use crate::crypto::NodeId;
use crate::db::{Db, NodeSyncRow};
use crate::fuse::mount_manager::{MountManager, SyncEvent};
use crate::store::Hash;
use crate::sync::{Peer, Replicas, SyncEngine};

/// The node's mounts as the sync engine's replicas.
pub struct MountReplicas(pub MountManager);

impl Replicas for MountReplicas {
    fn apply_head(&self, bucket: &BucketId, head: &Hash) -> Result<Option<Hash>, String> {
        self.0
            .apply_remote_head(&bucket.to_hex(), head)
            .map_err(|e| e.to_string())
    }

    fn grant(&self, bucket: &BucketId, node: &NodeId) -> Result<Hash, String> {
        self.0
            .grant_member(&bucket.to_hex(), node)
            .map_err(|e| e.to_string())
    }
}

/// A row of [`Db::sync_peers`] as a peer (rows with an unusable id dropped).
pub fn peer_of(row: &NodeSyncRow) -> Option<Peer> {
    let node = NodeId::from_hex(&row.endpoint_id).ok()?;
    let addrs: Vec<String> = serde_json::from_str(&row.addresses).unwrap_or_default();
    Some(Peer {
        node,
        addrs: addrs
            .iter()
            .filter_map(|a| a.parse::<SocketAddr>().ok())
            .collect(),
    })
}

/// The peers Postgres lists for `volume`, freshest first.
pub async fn peers_of(db: &Db, volume: &str, me: &str) -> Result<Vec<Peer>, crate::db::DbError> {
    Ok(db
        .sync_peers(volume, me)
        .await?
        .iter()
        .filter_map(peer_of)
        .collect())
}

/// Keep the engine's registered nodes and per-bucket peers current.
pub async fn refresh_peers(
    db: Db,
    me: String,
    engine: SyncEngine,
    manager: MountManager,
    every: Duration,
) {
    loop {
        if let Err(e) = refresh_once(&db, &me, &engine, &manager).await {
            tracing::debug!(error = %e, "peer lists not refreshed (Postgres down?); the last ones stay in force");
        }
        tokio::time::sleep(every).await;
    }
}

async fn refresh_once(
    db: &Db,
    me: &str,
    engine: &SyncEngine,
    manager: &MountManager,
) -> Result<(), crate::db::DbError> {
    let nodes: Vec<Peer> = db
        .registered_nodes()
        .await?
        .iter()
        .filter_map(peer_of)
        .collect();
    for p in &nodes {
        engine.set_addresses(p.node, p.addrs.clone());
    }
    engine.set_registered(nodes.iter().map(|p| p.node).collect::<HashSet<NodeId>>());
    let state = manager.state();
    let mut buckets: Vec<BucketId> = state.list_buckets().unwrap_or_default();
    // A clone's source, for the chunks the clone reads from its tree.
    let sources: Vec<BucketId> = buckets
        .iter()
        .filter_map(|b| {
            state
                .source_of(b, manager.kek())
                .ok()
                .flatten()
                .map(|(s, _)| s)
        })
        .collect();
    buckets.extend(sources);
    buckets.sort();
    buckets.dedup();
    for b in buckets {
        engine.set_peers(b, peers_of(db, &b.to_hex(), me).await?);
    }
    Ok(())
}

/// Announce every local commit (and the head a pulled merge produced is
/// announced by the engine itself).
pub async fn announce_commits(engine: SyncEngine, mut events: broadcast::Receiver<SyncEvent>) {
    loop {
        match events.recv().await {
            Ok(SyncEvent::Committed {
                volume_id, head, ..
            }) => {
                if let Ok(b) = BucketId::from_hex(&volume_id) {
                    let e = engine.clone();
                    tokio::spawn(async move { e.announce(b, head).await });
                }
            }
            Ok(SyncEvent::MountInvalidated { .. }) => {}
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(
                    missed = n,
                    "commit announcer lagged; anti-entropy will catch up"
                );
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
