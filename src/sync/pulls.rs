//! Pulls coalesced per bucket.
//!
//! Under a sustained load a peer announces heads faster than a pull
//! completes. Pulling each announced head in turn leaves a node further
//! behind with every announcement; instead, a bucket has at most one pull
//! running, and while it runs only the newest head each peer announced is
//! kept ([`Coalesced`]). Each peer's newest head contains its earlier ones,
//! so the next pull jumps straight to it, and heads already in the local
//! history are skipped without a fetch.

use std::sync::Arc;

use super::{client, Inner, SyncError};
use crate::bucket::BucketId;
use crate::coalesce::Coalesced;
use crate::crypto::NodeId;
use crate::store::Hash;

/// Heads waiting to be pulled: per bucket, the newest from each peer
/// (`None`: asked for locally).
pub(super) type PullQueue = Coalesced<BucketId, Option<NodeId>, Hash>;

/// Pull `head` of `bucket` (heard from `from`) soon: coalesced with other
/// heads of the bucket waiting, in a task of its own.
pub(super) fn want(inner: &Arc<Inner>, bucket: BucketId, head: Hash, from: Option<NodeId>) {
    if !inner.pull_queue.offer(bucket, from, head) {
        return;
    }
    let inner = inner.clone();
    tokio::spawn(async move {
        while let Some((from, head)) = inner.pull_queue.next(&bucket) {
            if client::is_known_ancestor(&inner, &bucket, &head) {
                continue;
            }
            match client::pull(&inner, bucket, head, from).await {
                Ok(()) => {}
                Err(e @ SyncError::Apply { .. }) => {
                    tracing::warn!(%bucket, %head, error = %e, "applying a pulled head failed; anti-entropy will retry");
                }
                Err(e) => {
                    // A peer that went away: anti-entropy asks again, and the
                    // log gets no line per announcement it missed.
                    tracing::debug!(%bucket, %head, error = %e, "pulling a head failed; anti-entropy will retry");
                }
            }
        }
    });
}
