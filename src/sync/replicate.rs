//! Following a bucket blind (#28): a replica with no key brings itself to
//! a version members made, checking everything it is sent.
//!
//! 1. The version's manifest (and as much of its history as one peer
//!    sends in one answer): each checked against its address, its
//!    signature and its bucket.
//! 2. The statement of the version's blob set, its root and its leaves,
//!    from the first peer that has one: the statement must be signed by a
//!    node the version shares the bucket with, and each blob must hash to
//!    what names it.
//! 3. Every blob the set lists that is not here yet, from **every** peer at
//!    once (batches spread over them, each falling back to the others),
//!    each checked against its address and made durable batch by batch: a
//!    rebuild that stops (a crash, a cut link) starts again where it was,
//!    because what is held is never asked for again.
//! 4. Only when every blob is here does the version become the one the
//!    replica holds (`BlindReplica::take` checks it all again).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use super::client::{blob_answer_for, fetch_blobs, history_from, read_checked_blobs, FrameLimits};
use super::pace::Pace;
use super::proto::{Request, MAX_BLOB, MAX_SET_BLOBS};
use super::{Inner, SyncError};
use crate::bucket::blind::BlindReplica;
use crate::bucket::blob_set::{decode_root, Statement};
use crate::bucket::{BucketError, BucketId, Manifest};
use crate::crypto::NodeId;
use crate::store::Hash;

/// What bringing a replica to a version did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replicated {
    pub version: Hash,
    pub height: u64,
    /// Blobs the version's set lists.
    pub blobs: u64,
    /// Blobs fetched now (the rest were here).
    pub fetched: u64,
    pub bytes_fetched: u64,
    pub ms: u64,
}

/// Which place a replicated version takes in the replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// The version the replica follows (the newest).
    Head,
    /// Kept beside the head: a snapshot's or a clone source's version.
    Pinned,
}

/// See the module docs.
/// Blobs a rebuild capped in bytes a second fetches between two looks at
/// its rate (small: the cap holds over short spans too) ...
const CAPPED_GROUP: usize = 16;
/// ... and one that only yields to load (four batches: every source at
/// once, as an unpaced fetch).
const YIELDING_GROUP: usize = 256;

/// Fetch `missing` a group of blobs at a time (each group is made durable
/// by the fetch, so a rebuild killed part way resumes after the last
/// group), resting after each as `pace` says (see `sync::pace`). Returns
/// the hashes no peer sent.
async fn fetch_paced(
    inner: &Arc<Inner>,
    bucket: BucketId,
    missing: &[Hash],
    mut pace: Pace,
) -> Result<Vec<Hash>, SyncError> {
    let store = inner.state.store().clone();
    let mut left = Vec::new();
    let group = if inner.rebuild_rate.is_some() {
        CAPPED_GROUP
    } else {
        YIELDING_GROUP
    };
    for blobs in missing.chunks(group) {
        let started = Instant::now();
        let not_sent = fetch_blobs(inner, bucket, blobs).await?;
        let took = started.elapsed();
        let bytes = blobs
            .iter()
            .filter(|h| !not_sent.contains(h))
            .filter_map(|h| std::fs::metadata(store.path_of(h)).ok())
            .map(|m| m.len())
            .sum::<u64>();
        left.extend(not_sent);
        let rest = pace.after_group(bytes, took);
        tracing::debug!(%bucket, bytes, took_ms = took.as_millis() as u64, rest_ms = rest.as_millis() as u64, resting = pace.resting(), "a rebuild's group of blobs");
        if !rest.is_zero() {
            tokio::time::sleep(rest).await;
        }
    }
    Ok(left)
}

pub(super) async fn replicate(
    inner: &Arc<Inner>,
    bucket: BucketId,
    version: Hash,
    keep: Keep,
) -> Result<Replicated, SyncError> {
    let lock = inner.pull_lock(&bucket);
    let _one = lock.lock().await;
    let started = Instant::now();
    let bytes_before = inner
        .stats
        .bytes_fetched
        .load(std::sync::atomic::Ordering::Relaxed);
    let replica = inner.open_blind(&bucket)?;
    let err = |source| SyncError::Bucket { bucket, source };
    let held = replica.head().map_err(err)?;
    // 1. The manifest, then what one history answer brings of its chain.
    if !fetch_blobs(inner, bucket, &[version]).await?.is_empty() {
        return Err(SyncError::NoPeer(bucket));
    }
    let m = Manifest::load(inner.state.store(), &version).map_err(err)?;
    if m.body.bucket_id != bucket {
        return Err(err(BucketError::Format {
            what: "replicated version",
            reason: format!("version {version} belongs to bucket {}", m.body.bucket_id),
        }));
    }
    let pinned = replica.pinned().map_err(err)?;
    let done_already = match keep {
        Keep::Head => held.is_some_and(|(v, _)| v == version),
        Keep::Pinned => pinned.iter().any(|(v, _)| *v == version),
    };
    if done_already {
        return Ok(Replicated {
            version,
            height: m.body.height,
            blobs: 0,
            fetched: 0,
            bytes_fetched: 0,
            ms: 0,
        });
    }
    let have: Vec<Hash> = held.map(|(v, _)| v).into_iter().collect();
    // 2. The statement of its blob set, from the first peer with one
    // (asked while the history comes).
    let (_, statement) = tokio::join!(
        history_from(inner, &replica, version, &have),
        statement_of(inner, &replica, version, &m)
    );
    let statement = statement?;
    let set = replica.read_set(&statement).map_err(err)?;
    replica.begin(&statement).map_err(err)?;
    // 3. What is not here yet, from every peer at once.
    let missing: Vec<Hash> = {
        let store = inner.state.store();
        set.members
            .iter()
            .filter(|h| !store.holds(h))
            .copied()
            .collect()
    };
    let fetched = missing.len() as u64;
    if !missing.is_empty() {
        let pace = Pace::new(inner.rebuild_rate, inner.rebuild_yields);
        let left = if pace.is_paced() {
            fetch_paced(inner, bucket, &missing, pace).await?
        } else {
            fetch_blobs(inner, bucket, &missing).await?
        };
        if !left.is_empty() {
            tracing::warn!(%bucket, %version, missing = left.len(), "no peer sent every blob of the version; the replica keeps what it has and tries again");
            return Err(SyncError::NoPeer(bucket));
        }
    }
    // 4. Every blob here: the version is held.
    let r = replica.clone();
    tokio::task::spawn_blocking(move || match keep {
        Keep::Head => r.take(&version, &statement),
        Keep::Pinned => r.take_pinned(&version, &statement),
    })
    .await
    .map_err(|e| SyncError::Worker(e.to_string()))?
    .map_err(err)?;
    let done = Replicated {
        version,
        height: m.body.height,
        blobs: set.members.len() as u64,
        fetched,
        bytes_fetched: inner
            .stats
            .bytes_fetched
            .load(std::sync::atomic::Ordering::Relaxed)
            .saturating_sub(bytes_before),
        ms: started.elapsed().as_millis() as u64,
    };
    tracing::info!(%bucket, %version, ?keep, height = done.height, blobs = done.blobs, fetched = done.fetched, bytes = done.bytes_fetched, ms = done.ms, "blind replica holds a new version");
    Ok(done)
}

/// Ask the peers, one after another, for the statement of `version`'s
/// blob set; store the first that checks out (and its root and leaves).
async fn statement_of(
    inner: &Arc<Inner>,
    replica: &BlindReplica,
    version: Hash,
    m: &Manifest,
) -> Result<Hash, SyncError> {
    let bucket = replica.id();
    let peers = inner.peers_of(&bucket);
    if peers.is_empty() {
        return Err(SyncError::NoPeer(bucket));
    }
    for p in &peers {
        match statement_from(inner, replica, &p.node, version, m).await {
            Ok(s) => return Ok(s),
            Err(e) => {
                tracing::debug!(peer = %p.node, %bucket, %version, error = %e, "no usable blob set statement from this peer")
            }
        }
    }
    Err(SyncError::NoPeer(bucket))
}

/// One peer's answer to a blob set request, checked blob by blob and
/// stored only once all of it checks out.
async fn statement_from(
    inner: &Arc<Inner>,
    replica: &BlindReplica,
    peer: &NodeId,
    version: Hash,
    m: &Manifest,
) -> Result<Hash, SyncError> {
    let bucket = replica.id();
    let bad = |why: String| SyncError::Peer {
        peer: peer.to_string(),
        why,
    };
    let proof = replica.proof_key().proof(&bucket, &inner.me.0, &peer.0);
    let req = Request::BlobSet {
        bucket,
        proof,
        version,
    };
    let mut recv = blob_answer_for(inner, peer, &req).await?;
    let limits = FrameLimits {
        blobs: MAX_SET_BLOBS,
        blob_bytes: MAX_BLOB,
        total_bytes: usize::MAX,
        too_much: "sent more than a blob set",
    };
    let blobs = read_checked_blobs(&mut recv, peer, &limits).await?;
    // The statement first, signed by a member at the version; then the
    // root it names; then exactly the leaves the root names.
    let Some(((statement, s_blob), rest)) = blobs.split_first() else {
        return Err(bad("sent no statement".into()));
    };
    let s = Statement::from_bytes(&s_blob.bytes).map_err(|e| bad(e.to_string()))?;
    s.vouches_for(&bucket, &version, m)
        .map_err(|e| bad(e.to_string()))?;
    let Some(((root, root_blob), leaves)) = rest.split_first() else {
        return Err(bad("sent no blob set root".into()));
    };
    if *root != s.body.root {
        return Err(bad("sent a root the statement does not name".into()));
    }
    let (_, named) = decode_root(&root_blob.bytes).map_err(|e| bad(e.to_string()))?;
    let named: HashSet<Hash> = named.into_iter().map(|(_, h)| h).collect();
    let sent: HashSet<Hash> = leaves.iter().map(|(h, _)| *h).collect();
    if named != sent {
        return Err(bad("sent leaves other than those the root names".into()));
    }
    let statement = *statement;
    let store = inner.state.store().clone();
    // Made durable with the version's blobs, before the version is taken.
    tokio::task::spawn_blocking(move || {
        for (hash, blob) in &blobs {
            store.put_with_outboard(*hash, &blob.bytes, &blob.outboard)?;
        }
        Ok::<_, crate::store::StoreError>(())
    })
    .await
    .map_err(|e| SyncError::Worker(e.to_string()))?
    .map_err(|e| SyncError::Worker(format!("storing a blob set: {e}")))?;
    Ok(statement)
}
