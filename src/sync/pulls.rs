//! Pulls coalesced per bucket.
//!
//! Under a sustained load a peer announces heads faster than a pull
//! completes. Pulling each announced head in turn leaves a node further
//! behind with every announcement; instead, a bucket has at most one pull
//! running, and while it runs only the newest head each peer announced is
//! kept. Each peer's newest head contains its earlier ones, so the next
//! pull jumps straight to it, and heads already in the local history are
//! skipped without a fetch.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use super::{client, Inner, SyncError};
use crate::bucket::BucketId;
use crate::crypto::NodeId;
use crate::store::Hash;

/// Heads waiting to be pulled, per bucket.
#[derive(Default)]
pub(super) struct PullQueue {
    buckets: Mutex<HashMap<BucketId, Waiting>>,
}

#[derive(Default)]
struct Waiting {
    /// A drain task is running for the bucket.
    draining: bool,
    /// The newest head heard from each peer (`None`: asked for locally).
    heads: BTreeMap<Option<NodeId>, Hash>,
}

impl PullQueue {
    /// Note that `from` has `head`; returns true when the caller must
    /// start the bucket's drain task.
    fn offer(&self, bucket: BucketId, head: Hash, from: Option<NodeId>) -> bool {
        let mut all = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let w = all.entry(bucket).or_default();
        w.heads.insert(from, head);
        !std::mem::replace(&mut w.draining, true)
    }

    /// The next head to pull, or `None` (and the drain ends) when none waits.
    fn next(&self, bucket: &BucketId) -> Option<(Option<NodeId>, Hash)> {
        let mut all = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let w = all.get_mut(bucket)?;
        match w.heads.pop_first() {
            Some(next) => Some(next),
            None => {
                all.remove(bucket);
                None
            }
        }
    }
}

/// Pull `head` of `bucket` (heard from `from`) soon: coalesced with other
/// heads of the bucket waiting, in a task of its own.
pub(super) fn want(inner: &Arc<Inner>, bucket: BucketId, head: Hash, from: Option<NodeId>) {
    if !inner.pull_queue.offer(bucket, head, from) {
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
