//! Announcements of new heads, coalesced per bucket and peer.
//!
//! An announcement to a peer that does not answer (a cut link, a node
//! being restarted) waits for its timeout. Sent to all peers together and
//! awaited together, one such peer held back every other peer's
//! announcement, and the pull that made a merge, for seconds. Here each
//! peer of a bucket has its own sender: while one announcement to it is in
//! flight, only the newest head waits (it contains the ones before), and
//! a slow peer delays nobody else.

use std::sync::Arc;

use super::{client, Inner, Peer};
use crate::bucket::BucketId;
use crate::coalesce::Coalesced;
use crate::crypto::NodeId;
use crate::store::Hash;

/// Heads waiting to be announced: per (bucket, peer), the newest.
pub(super) type AnnounceQueue = Coalesced<(BucketId, NodeId), (), Hash>;

/// Announce `head` of `bucket` to each of its peers, each in a task of its
/// own; returns at once.
pub(super) fn to_all(inner: &Arc<Inner>, bucket: BucketId, head: Hash) {
    inner.recent.note(bucket, head);
    for peer in inner.peers_of(&bucket) {
        if inner.announce_queue.offer((bucket, peer.node), (), head) {
            let inner = inner.clone();
            tokio::spawn(async move { drain(&inner, bucket, peer).await });
        }
    }
}

/// Send `peer` the newest head waiting for it until none waits.
async fn drain(inner: &Arc<Inner>, bucket: BucketId, peer: Peer) {
    while let Some(((), head)) = inner.announce_queue.next(&(bucket, peer.node)) {
        let Ok(b) = inner.open(&bucket) else { continue };
        let proof = b.proof_key().proof(&bucket, &inner.me.0, &peer.node.0);
        match client::announce(inner, &peer, bucket, proof, head).await {
            Ok(()) => {
                inner
                    .stats
                    .announcements_sent
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => {
                tracing::debug!(peer = %peer.node, %bucket, error = %e, "announcement not delivered")
            }
        }
    }
}
