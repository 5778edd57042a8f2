//! The peer lists last read from Postgres, kept in `<state>/peers.json`:
//! a node process started while Postgres is down (a crash during an outage
//! of the control plane) still knows which nodes are registered, where they
//! listen and who holds each of its buckets, so it answers and reaches its
//! peers at once instead of refusing them until Postgres is back. Removed
//! nodes are refused whatever the file says (`StateDir::revoked`).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bucket::BucketId;
use crate::crypto::NodeId;
use crate::sync::{Peer, SyncEngine};

/// What the engine is told: the registered nodes (with their addresses)
/// and each bucket's peers, freshest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerLists {
    /// Node id (hex) to its sync addresses.
    pub registered: BTreeMap<String, Vec<String>>,
    /// Bucket id (hex) to its peers' node ids (hex), in order.
    pub buckets: BTreeMap<String, Vec<String>>,
}

impl PeerLists {
    pub fn new(registered: &[Peer], buckets: &[(BucketId, Vec<Peer>)]) -> Self {
        let addrs = |p: &Peer| p.addrs.iter().map(|a| a.to_string()).collect();
        Self {
            registered: registered
                .iter()
                .map(|p| (p.node.to_hex(), addrs(p)))
                .collect(),
            buckets: buckets
                .iter()
                .map(|(b, peers)| {
                    let ids = peers.iter().map(|p| p.node.to_hex()).collect();
                    (b.to_hex(), ids)
                })
                .collect(),
        }
    }

    /// Tell `engine`: addresses, who is registered, each bucket's peers.
    pub fn apply(&self, engine: &SyncEngine) {
        let mut registered = HashSet::new();
        let mut known = BTreeMap::new();
        for (node, addrs) in &self.registered {
            let Ok(id) = NodeId::from_hex(node) else {
                continue;
            };
            let addrs: Vec<std::net::SocketAddr> =
                addrs.iter().filter_map(|a| a.parse().ok()).collect();
            engine.set_addresses(id, addrs.clone());
            registered.insert(id);
            known.insert(node.clone(), Peer { node: id, addrs });
        }
        engine.set_registered(registered);
        for (bucket, nodes) in &self.buckets {
            let Ok(b) = BucketId::from_hex(bucket) else {
                continue;
            };
            let peers = nodes.iter().filter_map(|n| known.get(n).cloned()).collect();
            engine.set_peers(b, peers);
        }
    }
}

/// Where the lists are kept.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("peers.json")
}

/// The lists kept in `state_dir`, if any (a damaged file counts as none:
/// the next refresh from Postgres writes it again).
pub fn load(state_dir: &Path) -> Option<PeerLists> {
    let bytes = std::fs::read(path(state_dir)).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(lists) => Some(lists),
        Err(e) => {
            tracing::warn!(error = %e, "the kept peer lists do not parse; waiting for Postgres");
            None
        }
    }
}

/// Keep `lists` in `state_dir`.
pub fn save(state_dir: &Path, lists: &PeerLists) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(lists).expect("peer lists serialize");
    crate::durable::write_atomic(&path(state_dir), &bytes, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_round_trip_through_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).is_none(), "none kept yet");
        let node = NodeId([7; 32]);
        let peer = Peer {
            node,
            addrs: vec!["10.0.0.2:9810".parse().unwrap()],
        };
        let bucket = BucketId([3; 16]);
        let lists = PeerLists::new(std::slice::from_ref(&peer), &[(bucket, vec![peer.clone()])]);
        save(dir.path(), &lists).unwrap();
        assert_eq!(load(dir.path()), Some(lists));
        std::fs::write(path(dir.path()), b"{not json").unwrap();
        assert!(load(dir.path()).is_none(), "a damaged file counts as none");
    }
}
