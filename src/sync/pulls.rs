//! Pulls coalesced per bucket.
//!
//! Under a sustained load a peer announces heads faster than a pull
//! completes. Pulling each announced head in turn leaves a node further
//! behind with every announcement; instead, a bucket has at most one pull
//! running, and while it runs only the newest head each peer announced is
//! kept ([`Coalesced`]). Each peer's newest head contains its earlier ones,
//! so the next pull jumps straight to it, and heads already in the local
//! history are skipped without a fetch.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

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

/// Heads held here lately, per bucket: this node's commits and merges and
/// the heads it pulled. A history request names them, so the answering
/// peer stops its walk where this node's history already is.
#[derive(Default)]
pub(super) struct RecentHeads {
    heads: Mutex<HashMap<BucketId, VecDeque<Hash>>>,
}

/// Heads remembered per bucket.
const RECENT: usize = 64;

impl RecentHeads {
    /// `head` of `bucket` is held here now.
    pub(super) fn note(&self, bucket: BucketId, head: Hash) {
        let mut all = self.heads.lock().unwrap_or_else(|e| e.into_inner());
        let heads = all.entry(bucket).or_default();
        if heads.contains(&head) {
            return;
        }
        if heads.len() == RECENT {
            heads.pop_front();
        }
        heads.push_back(head);
    }

    /// The remembered heads of `bucket`, newest first.
    pub(super) fn of(&self, bucket: &BucketId) -> Vec<Hash> {
        let all = self.heads.lock().unwrap_or_else(|e| e.into_inner());
        all.get(bucket)
            .map(|h| h.iter().rev().copied().collect())
            .unwrap_or_default()
    }
}
