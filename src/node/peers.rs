//! The node agent's peers: the sync engine's lists kept current from
//! Postgres (freshest head first; the last lists stay in force while
//! Postgres is down), and every local commit announced to the peers.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::bucket::{BucketId, StateDir};
use crate::crypto::{Kek, NodeId};
use crate::db::{Db, NodeSyncRow};
use crate::fuse::SyncEvent;
use crate::sync::{Peer, SyncEngine};

/// The `ip:port` addresses to register for a sync endpoint bound to `bound`.
pub fn sync_addresses(
    bound: &[std::net::SocketAddr],
    advertise: Option<std::net::IpAddr>,
) -> Vec<String> {
    let mut out: Vec<String> = bound
        .iter()
        .filter(|a| a.is_ipv4())
        .map(|a| {
            let ip = match advertise {
                Some(ip) => ip,
                None if a.ip().is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
                None => a.ip(),
            };
            std::net::SocketAddr::new(ip, a.port()).to_string()
        })
        .collect();
    out.sort();
    out.dedup();
    out
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
pub async fn peers_of(
    db: &Db,
    volume: &BucketId,
    me: &str,
) -> Result<Vec<Peer>, crate::db::DbError> {
    Ok(db
        .sync_peers(&volume.to_hex(), me)
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
    state: std::sync::Arc<StateDir>,
    kek: std::sync::Arc<Kek>,
    every: Duration,
) {
    // What Postgres said last, until it answers (it may be down now).
    let mut kept = super::peer_cache::load(state.root());
    if let Some(lists) = &kept {
        lists.apply(&engine);
        tracing::info!(
            registered = lists.registered.len(),
            buckets = lists.buckets.len(),
            "peer lists from the state dir in force until Postgres answers"
        );
    }
    loop {
        match refresh_once(&db, &me, &engine, &state, &kek).await {
            Ok(lists) if kept.as_ref() != Some(&lists) => {
                match super::peer_cache::save(state.root(), &lists) {
                    Ok(()) => kept = Some(lists),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not keep the peer lists in the state dir")
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "peer lists not refreshed (Postgres down?); the last ones stay in force");
            }
        }
        tokio::time::sleep(every).await;
    }
}

async fn refresh_once(
    db: &Db,
    me: &str,
    engine: &SyncEngine,
    state: &StateDir,
    kek: &Kek,
) -> Result<super::peer_cache::PeerLists, crate::db::DbError> {
    let nodes: Vec<Peer> = db
        .registered_nodes()
        .await?
        .iter()
        .filter_map(peer_of)
        .collect();
    let mut buckets: Vec<BucketId> = state.list_buckets().unwrap_or_default();
    // A clone's source, for the chunks the clone reads from its tree.
    let sources: Vec<BucketId> = buckets
        .iter()
        .filter_map(|b| state.source_of(b, kek).ok().flatten().map(|(s, _)| s))
        .collect();
    buckets.extend(sources);
    // (Buckets held blind get their peers from `replication`, each pass.)
    buckets.sort();
    buckets.dedup();
    let mut held = Vec::new();
    for b in buckets {
        held.push((b, peers_of(db, &b, me).await?));
    }
    // Told to the engine only once all of it was read.
    let lists = super::peer_cache::PeerLists::new(&nodes, &held);
    lists.apply(engine);
    Ok(lists)
}

/// Announce every local commit (and the head a pulled merge produced is
/// announced by the engine itself).
pub async fn announce_commits(engine: SyncEngine, mut events: broadcast::Receiver<SyncEvent>) {
    loop {
        match events.recv().await {
            // Queued per peer and coalesced there: returns at once.
            Ok(SyncEvent::Committed { volume, head, .. }) => engine.announce(volume, head).await,
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
