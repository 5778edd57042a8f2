//! Asking peers: connections, requests, and the fetching built on them
//! (blobs verified before they are stored, manifest chains, trees, whole
//! new buckets, pulls of announced heads, and the anti-entropy pass).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use iroh::endpoint::{Connection, RecvStream};

use super::proto::{
    BlobFrame, Proof, Request, Response, ALPN, MAX_BLOB, MAX_BUNDLE_TREE_BLOBS,
    MAX_BUNDLE_TREE_BYTES, MAX_HISTORY, MAX_HISTORY_BYTES, MAX_MESSAGE,
};
use super::wire::{read_bytes, read_msg, write_msg};
use super::{Inner, Peer, SyncError};
use crate::bucket::{Bucket, BucketId, DirRef, ProofKey};
use crate::crypto::{NodeId, SecretKey};
use crate::store::{slices, Hash};

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a blob request may take before the peer counts as unreachable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a peer may take to begin answering a request for blobs (its
/// blob index may wait for a garbage collection pass on a busy node).
const FIRST_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a small request (heads, announce, enroll) may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);
/// Hashes per GetBlobs request, and requests in flight at once.
const BATCH: usize = 64;
const IN_FLIGHT: usize = 4;

pub(super) fn peer_err(peer: &NodeId, why: impl std::fmt::Display) -> SyncError {
    SyncError::Peer {
        peer: short_name(peer),
        why: why.to_string(),
    }
}

/// How errors name a peer: the start of its id.
fn short_name(peer: &NodeId) -> String {
    peer.to_hex()[..16].to_string()
}

/// A connection to `peer`, reused while it lives.
pub(super) async fn connection(inner: &Inner, peer: &NodeId) -> Result<Connection, SyncError> {
    if let Some(c) = inner.conns.lock().await.get(peer) {
        if c.close_reason().is_none() {
            return Ok(c.clone());
        }
    }
    let addr = inner
        .addr_of(peer)
        .ok_or_else(|| peer_err(peer, "no address known"))?;
    let conn = match tokio::time::timeout(CONNECT_TIMEOUT, inner.endpoint.connect(addr, ALPN)).await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            inner.mark_down(peer);
            return Err(peer_err(peer, e));
        }
        Err(_) => {
            inner.mark_down(peer);
            return Err(peer_err(peer, "connection timed out"));
        }
    };
    inner.mark_up(peer);
    inner.conns.lock().await.insert(*peer, conn.clone());
    Ok(conn)
}

/// Send `req` on a new stream; the answer's stream.
pub(super) async fn request(
    inner: &Inner,
    peer: &NodeId,
    req: &Request,
) -> Result<RecvStream, SyncError> {
    let conn = connection(inner, peer).await?;
    let (mut send, recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => {
            inner.conns.lock().await.remove(peer);
            return Err(peer_err(peer, e));
        }
    };
    write_msg(&mut send, req)
        .await
        .map_err(|e| peer_err(peer, e))?;
    send.finish().map_err(|e| peer_err(peer, e))?;
    Ok(recv)
}

/// A request with one message as its answer.
pub(super) async fn ask(
    inner: &Inner,
    peer: &NodeId,
    req: &Request,
) -> Result<Response, SyncError> {
    let answer = tokio::time::timeout(ASK_TIMEOUT, async {
        let mut recv = request(inner, peer, req).await?;
        read_msg::<Response>(&mut recv)
            .await
            .map_err(|e| peer_err(peer, e))?
            .ok_or_else(|| peer_err(peer, "no answer"))
    })
    .await;
    match answer {
        Ok(answer) => answer,
        Err(_) => {
            inner.lost(peer).await;
            Err(peer_err(peer, "request timed out"))
        }
    }
}

#[cfg(test)]
pub async fn ask_for_tests(
    inner: &Inner,
    peer: &Peer,
    req: &Request,
) -> Result<Response, SyncError> {
    ask(inner, &peer.node, req).await
}

fn refused(peer: &NodeId, r: Response) -> SyncError {
    match r {
        Response::Refused { reason } => SyncError::Refused {
            peer: short_name(peer),
            reason,
        },
        other => peer_err(peer, format!("unexpected answer {other:?}")),
    }
}

pub async fn announce(
    inner: &Inner,
    peer: &Peer,
    bucket: BucketId,
    proof: Proof,
    head: Hash,
) -> Result<(), SyncError> {
    match ask(
        inner,
        &peer.node,
        &Request::Announce {
            bucket,
            proof,
            head,
        },
    )
    .await?
    {
        Response::Noted => Ok(()),
        other => Err(refused(&peer.node, other)),
    }
}

/// Announce `head` of `bucket` to all its peers (queued per peer, see
/// `announcements`: returns at once).
pub async fn announce_all(inner: &Arc<Inner>, bucket: BucketId, head: Hash) {
    super::announcements::to_all(inner, bucket, head);
}

/// Send `req` (a request answered with blob frames) to `peer` and wait
/// for its `Noted`: the frames follow on the returned stream.
pub(super) async fn blob_answer_for(
    inner: &Inner,
    peer: &NodeId,
    req: &Request,
) -> Result<RecvStream, SyncError> {
    let mut recv = request(inner, peer, req).await?;
    match read_msg::<Response>(&mut recv)
        .await
        .map_err(|e| peer_err(peer, e))?
    {
        Some(Response::Noted) => Ok(recv),
        Some(other) => Err(refused(peer, other)),
        None => Err(peer_err(peer, "no answer")),
    }
}

/// [`blob_answer_for`] for a request whose `Noted` comes at once (a
/// GetBlobs: the peer checks the proof and looks up its blob index): a
/// peer that does not say it within [`FIRST_ANSWER_TIMEOUT`] (a cut link
/// under an open connection) counts as lost, so the caller asks the next
/// peer instead of waiting out the connection. Requests whose answer the
/// peer must first compute (a history, a blob set statement) wait longer.
async fn quick_blob_answer_for(
    inner: &Inner,
    peer: &NodeId,
    req: &Request,
) -> Result<RecvStream, SyncError> {
    match tokio::time::timeout(FIRST_ANSWER_TIMEOUT, blob_answer_for(inner, peer, req)).await {
        Ok(answer) => answer,
        Err(_) => {
            inner.lost(peer).await;
            Err(peer_err(peer, "no answer in time"))
        }
    }
}

/// Count one blob of `bytes` fetched from a peer and stored here.
fn count_fetched(inner: &Inner, bytes: usize) {
    crate::metrics::blob_fetched(bytes);
    inner.stats.blobs_fetched.fetch_add(1, Ordering::Relaxed);
    inner
        .stats
        .bytes_fetched
        .fetch_add(bytes as u64, Ordering::Relaxed);
}

/// Ask `peer` for blobs of `bucket`; store each one that verifies. Returns
/// the hashes it did not send (missing there).
async fn get_blobs_from(
    inner: &Inner,
    peer: &NodeId,
    bucket: BucketId,
    proof: Proof,
    hashes: &[Hash],
) -> Result<Vec<Hash>, SyncError> {
    let fut = async {
        // Built only when sent: most batches of a rebuild go in the
        // background.
        let plain = || Request::GetBlobs {
            bucket,
            proof,
            hashes: hashes.to_vec(),
        };
        let mut recv = if inner.rebuilds_in_background(&bucket, peer) {
            // A blind replica's rebuild: the peer yields to its pods.
            let req = Request::GetBlobsBackground {
                bucket,
                proof,
                hashes: hashes.to_vec(),
            };
            match quick_blob_answer_for(inner, peer, &req).await {
                Ok(recv) => recv,
                // Not reached at all: the next peer, not a plain request.
                Err(e) if inner.is_down(peer) => return Err(e),
                // Refused by a node that knows the request (a plain one
                // would be refused alike): the next peer, and this one
                // is asked in the background again next time.
                Err(e @ SyncError::Refused { .. }) => return Err(e),
                Err(e) => {
                    // Reached, and the request dropped: a node from before
                    // background requests.
                    tracing::debug!(%peer, %bucket, error = %e, "a background blob request failed; asking plainly");
                    inner.no_background(peer);
                    quick_blob_answer_for(inner, peer, &plain()).await?
                }
            }
        } else {
            quick_blob_answer_for(inner, peer, &plain()).await?
        };
        let wanted: HashSet<Hash> = hashes.iter().copied().collect();
        let mut missing = Vec::new();
        let mut got = 0;
        while got + missing.len() < hashes.len() {
            match read_msg::<BlobFrame>(&mut recv)
                .await
                .map_err(|e| peer_err(peer, e))?
            {
                None => break,
                Some(BlobFrame::Missing { hash }) => missing.push(hash),
                Some(BlobFrame::Blob { hash, len }) => {
                    if len as usize > MAX_BLOB || !wanted.contains(&hash) {
                        return Err(peer_err(
                            peer,
                            "sent a blob that was not asked for or too large",
                        ));
                    }
                    let bytes = read_bytes(&mut recv, len as usize)
                        .await
                        .map_err(|e| peer_err(peer, e))?;
                    let store = inner.state.store().clone();
                    // Verify before storing: the bytes must hash to the address.
                    let stored = tokio::task::spawn_blocking(move || {
                        let (actual, cvs) = slices::hash_with_outboard(&bytes);
                        if actual != hash {
                            return Err(format!(
                                "blob {hash} arrived with bytes hashing to {actual}"
                            ));
                        }
                        store
                            .put_with_outboard(hash, &bytes, &cvs)
                            .map_err(|e| e.to_string())?;
                        Ok(bytes.len())
                    })
                    .await
                    .map_err(|e| peer_err(peer, e))?;
                    match stored {
                        Ok(n) => {
                            count_fetched(inner, n);
                            got += 1;
                        }
                        Err(why) => {
                            tracing::error!(%peer, %bucket, why, "a peer sent a blob that fails its address; dropping the connection");
                            inner.conns.lock().await.remove(peer);
                            return Err(peer_err(peer, why));
                        }
                    }
                }
            }
        }
        // Anything not answered counts as missing there.
        let answered: HashSet<Hash> = missing.iter().copied().collect();
        for h in hashes {
            if !answered.contains(h) && !inner.state.store().contains(h) {
                missing.push(*h);
            }
        }
        missing.sort();
        missing.dedup();
        Ok(missing)
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Ok(answer) => answer,
        Err(_) => {
            inner.lost(peer).await;
            Err(peer_err(peer, "request timed out"))
        }
    }
}

/// The proof key of `bucket`: from the local bucket, or from `secret`.
pub(super) fn proof_key(
    inner: &Inner,
    bucket: &BucketId,
    secret: Option<&SecretKey>,
) -> Result<ProofKey, SyncError> {
    match secret {
        Some(s) => Ok(ProofKey::of(s)),
        None if !inner.state.has_bucket(bucket) && inner.state.has_blind(bucket) => {
            Ok(inner.open_blind(bucket)?.proof_key().clone())
        }
        None => Ok(inner.open(bucket)?.proof_key()),
    }
}

/// Fetch `hashes` of `bucket` from its peers (those one lacks from the
/// next), several batches at once. Returns what no peer had.
pub async fn fetch_blobs(
    inner: &Inner,
    bucket: BucketId,
    hashes: &[Hash],
) -> Result<Vec<Hash>, SyncError> {
    fetch_blobs_with(inner, bucket, hashes, None).await
}

/// [`fetch_blobs`], proving with `secret` (a bucket this node does not hold).
pub async fn fetch_blobs_with(
    inner: &Inner,
    bucket: BucketId,
    hashes: &[Hash],
    secret: Option<&SecretKey>,
) -> Result<Vec<Hash>, SyncError> {
    Ok(fetch_blobs_detail(inner, bucket, hashes, secret)
        .await?
        .missing)
}

/// Fetched blobs are made durable at least every this many.
const SYNC_EVERY: usize = 1024;

/// Make the blobs fetched so far durable (logged when it fails: the next
/// sync, every commit runs one, tries again).
async fn sync_fetched(inner: &Inner, bucket: BucketId) {
    let store = inner.state.store().clone();
    match tokio::task::spawn_blocking(move || store.sync()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(%bucket, error = %e, "fetched blobs not yet durable"),
        Err(e) => tracing::warn!(%bucket, error = %e, "syncing fetched blobs failed"),
    }
}

/// What a fetch did not get.
struct Unfetched {
    /// Hashes no peer sent.
    missing: Vec<Hash>,
    /// Some peer asked did not answer (it may hold what is missing).
    unreachable: bool,
}

/// [`fetch_blobs_with`], saying whether every peer asked answered.
async fn fetch_blobs_detail(
    inner: &Inner,
    bucket: BucketId,
    hashes: &[Hash],
    secret: Option<&SecretKey>,
) -> Result<Unfetched, SyncError> {
    let todo: Vec<Hash> = {
        let store = inner.state.store();
        let mut seen = HashSet::new();
        hashes
            .iter()
            .filter(|h| seen.insert(**h) && !store.contains(h))
            .copied()
            .collect()
    };
    if todo.is_empty() {
        return Ok(Unfetched {
            missing: Vec::new(),
            unreachable: false,
        });
    }
    let key = proof_key(inner, &bucket, secret)?;
    let peers = inner.peers_of(&bucket);
    if peers.is_empty() {
        return Err(SyncError::NoPeer(bucket));
    }
    let batches: Vec<Vec<Hash>> = todo.chunks(BATCH).map(|c| c.to_vec()).collect();
    // One batch goes to the first peer (the one that announced the head,
    // when a pull preferred it); more are spread over every peer that
    // answers lately (a rebuild reads from all). Peers that did not
    // answer lately come last either way.
    let up = peers
        .iter()
        .filter(|p| !inner.is_down(&p.node))
        .count()
        .max(1);
    let spread = batches.len() > 1;
    let progress =
        crate::progress::Progress::new("fetching blobs", bucket.to_string(), todo.len() as u64);
    let progress = &progress;
    let key = &key;
    let peers = &peers;
    let unsynced = &std::sync::atomic::AtomicUsize::new(0);
    let results = futures::stream::iter(batches.into_iter().enumerate().map(|(i, batch)| async move {
        let asked = batch.len() as u64;
        let mut left = batch;
        let mut unreachable = false;
        // Each batch falls back to the other peers in turn.
        let first = if spread { i % up } else { 0 };
        for k in 0..peers.len() {
            let p = &peers[(first + k) % peers.len()];
            let proof = key.proof(&bucket, &inner.me.0, &p.node.0);
            match get_blobs_from(inner, &p.node, bucket, proof, &left).await {
                Ok(missing) => left = missing,
                Err(e) => {
                    unreachable = true;
                    tracing::debug!(peer = %p.node, %bucket, error = %e, "blob fetch from a peer failed")
                }
            }
            if left.is_empty() {
                break;
            }
        }
        progress.advance(asked - left.len() as u64);
        // Fetched blobs cost the network: make them durable every
        // SYNC_EVERY blobs, so a node killed while it completes a volume
        // keeps what it got, without a directory fsync per batch (what a
        // rebuild of many small blobs would mostly spend its time on).
        let fetched = (asked - left.len() as u64) as usize;
        if unsynced.fetch_add(fetched, Ordering::Relaxed) + fetched >= SYNC_EVERY {
            unsynced.store(0, Ordering::Relaxed);
            sync_fetched(inner, bucket).await;
        }
        let unreachable = unreachable && !left.is_empty();
        (left, unreachable)
    }))
    .buffer_unordered(IN_FLIGHT)
    .collect::<Vec<(Vec<Hash>, bool)>>()
    .await;
    if unsynced.load(Ordering::Relaxed) > 0 {
        sync_fetched(inner, bucket).await;
    }
    progress.finish();
    let unreachable = results.iter().any(|(_, u)| *u);
    Ok(Unfetched {
        missing: results.into_iter().flat_map(|(m, _)| m).collect(),
        unreachable,
    })
}

use futures::StreamExt;

/// Fetch `head`'s manifest chain down to versions this node has (at most
/// `max_chain` deep: a first fetch takes the head alone), every directory
/// of its tree not known to be complete here, and, with `with_chunks`, the
/// chunks those directories name. Returns the parents where the chain was
/// cut, and the versions whose manifests it went through.
async fn fetch_version(
    inner: &Inner,
    b: &Bucket,
    head: Hash,
    max_chain: usize,
    with_chunks: bool,
    secret: Option<&SecretKey>,
) -> Result<Chain, SyncError> {
    let chain = fetch_chain(
        inner,
        b,
        head,
        HeadFrom::Record,
        max_chain,
        &mut HashMap::new(),
        secret,
    )
    .await?;
    fetch_tree(inner, b, head, with_chunks, secret, None, None).await?;
    Ok(chain)
}

/// What a fetch of a manifest chain brought.
struct Chain {
    /// Parents no peer holds any more: history ends there.
    cut: Vec<Hash>,
    /// The versions whose manifests were gone through (fetched or held).
    versions: Vec<Hash>,
}

/// A blob a history or bundle answer brought, verified against its
/// address, not yet stored.
pub(super) struct Prefetched {
    pub bytes: Vec<u8>,
    pub outboard: Vec<[u8; 32]>,
}

/// Ask one peer (the announcer, else the first the control plane lists)
/// for `head`'s manifest chain down to the heads this node held lately:
/// one round trip instead of one per level. Nothing is stored here; the
/// walk in [`fetch_chain`] takes what it reaches from this answer and asks
/// level by level for the rest (all of it when the peer cannot answer).
/// A bundle brings the changed part of `head`'s tree as well (see
/// [`Request::Bundle`]), which [`fetch_tree`] takes from the answer.
pub(super) async fn ask_history(
    inner: &Inner,
    b: &Bucket,
    head: Hash,
    from: Option<NodeId>,
    asking: Ask,
) -> HashMap<Hash, Prefetched> {
    let bucket = b.id();
    let Some(peer) = from.or_else(|| inner.peers_of(&bucket).first().map(|p| p.node)) else {
        return HashMap::new();
    };
    let mut have = inner.recent.of(&bucket);
    if let Ok(mine) = b.head() {
        have.insert(0, mine);
    }
    have.truncate(super::proto::MAX_HAVE);
    let proof = b.proof_key().proof(&bucket, &inner.me.0, &peer.0);
    history_answer(inner, &peer, bucket, proof, head, have, asking).await
}

/// What a history answer is asked for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Ask {
    History,
    /// The history and the changed part of the head's tree; a peer that
    /// drops the request is asked for the history.
    Bundle,
}

/// What a blob-frame answer may hold.
pub(super) struct FrameLimits {
    /// Blobs, bytes of one blob, bytes in all.
    pub blobs: usize,
    pub blob_bytes: usize,
    pub total_bytes: usize,
    /// What the error says when a peer sends more.
    pub too_much: &'static str,
}

/// Read the blob frames of an answer to the end, each checked against its
/// address (with its outboard computed), within `limits`.
pub(super) async fn read_checked_blobs(
    recv: &mut RecvStream,
    peer: &NodeId,
    limits: &FrameLimits,
) -> Result<Vec<(Hash, Prefetched)>, SyncError> {
    let mut got = Vec::new();
    let mut total = 0;
    while let Some(frame) = read_msg::<BlobFrame>(recv)
        .await
        .map_err(|e| peer_err(peer, e))?
    {
        let BlobFrame::Blob { hash, len } = frame else {
            continue;
        };
        let len = len as usize;
        total += len;
        if len > limits.blob_bytes || got.len() >= limits.blobs || total > limits.total_bytes {
            return Err(peer_err(peer, limits.too_much));
        }
        let bytes = read_bytes(recv, len).await.map_err(|e| peer_err(peer, e))?;
        let (actual, outboard) = slices::hash_with_outboard(&bytes);
        if actual != hash {
            return Err(peer_err(
                peer,
                format!("sent {hash} with bytes hashing to {actual}"),
            ));
        }
        got.push((hash, Prefetched { bytes, outboard }));
    }
    Ok(got)
}

/// One peer's answer to a history request (see [`ask_history`]), each
/// blob checked against its address; empty when it did not answer.
async fn history_answer(
    inner: &Inner,
    peer: &NodeId,
    bucket: BucketId,
    proof: Proof,
    head: Hash,
    have: Vec<Hash>,
    asking: Ask,
) -> HashMap<Hash, Prefetched> {
    let peer = *peer;
    let ask = |asking: Ask| {
        let have = have.clone();
        async move {
            let (req, limits) = match asking {
                Ask::History => (
                    Request::History {
                        bucket,
                        proof,
                        head,
                        have,
                    },
                    FrameLimits {
                        blobs: MAX_HISTORY,
                        blob_bytes: MAX_MESSAGE,
                        total_bytes: MAX_HISTORY_BYTES,
                        too_much: "sent more history than a request allows",
                    },
                ),
                Ask::Bundle => (
                    Request::Bundle {
                        bucket,
                        proof,
                        head,
                        have,
                    },
                    FrameLimits {
                        blobs: MAX_HISTORY + MAX_BUNDLE_TREE_BLOBS,
                        blob_bytes: MAX_BLOB,
                        total_bytes: MAX_HISTORY_BYTES + MAX_BUNDLE_TREE_BYTES,
                        too_much: "sent a bigger bundle than a request allows",
                    },
                ),
            };
            let mut recv = blob_answer_for(inner, &peer, &req).await?;
            let got = read_checked_blobs(&mut recv, &peer, &limits).await?;
            Ok::<_, SyncError>(got.into_iter().collect::<HashMap<_, _>>())
        }
    };
    let mut asking = asking;
    loop {
        match tokio::time::timeout(REQUEST_TIMEOUT, ask(asking)).await {
            Ok(Ok(got)) => return got,
            Ok(Err(e)) if asking == Ask::Bundle => {
                tracing::debug!(%peer, %bucket, error = %e, "bundle request failed; asking for the history alone");
                asking = Ask::History;
            }
            Ok(Err(e)) => {
                tracing::debug!(%peer, %bucket, error = %e, "history request failed; walking the chain level by level");
                return HashMap::new();
            }
            Err(_) => {
                tracing::debug!(%peer, %bucket, "history request timed out; walking the chain level by level");
                return HashMap::new();
            }
        }
    }
}

/// The manifests of `version`'s history a peer sends in one answer (down
/// to `have`), for a blind replica: each stored once it verifies as a
/// manifest of the bucket. Best effort: the version itself is what the
/// replica needs; its history lets a node that stages from it merge.
pub(super) async fn history_from(
    inner: &Inner,
    replica: &crate::bucket::blind::BlindReplica,
    version: Hash,
    have: &[Hash],
) {
    let bucket = replica.id();
    let Some(peer) = inner.peers_of(&bucket).first().map(|p| p.node) else {
        return;
    };
    let proof = replica.proof_key().proof(&bucket, &inner.me.0, &peer.0);
    let got = history_answer(
        inner,
        &peer,
        bucket,
        proof,
        version,
        have.to_vec(),
        Ask::History,
    )
    .await;
    let store = inner.state.store().clone();
    let stored = tokio::task::spawn_blocking(move || {
        for (h, p) in got {
            let ours = crate::bucket::Manifest::from_bytes(h, &p.bytes)
                .is_ok_and(|m| m.body.bucket_id == bucket);
            if ours && !store.contains(&h) {
                store.put_with_outboard(h, &p.bytes, &p.outboard)?;
            }
        }
        store.sync()
    })
    .await;
    if !matches!(stored, Ok(Ok(()))) {
        tracing::debug!(%bucket, "a blind replica's history not stored this time");
    }
}

/// Store the blobs of `want` an answer brought (checked against their
/// addresses when they arrived); returns the others. They wait in the
/// store, readable at once, for its next sync: whatever names them in HEAD
/// (the merge a pull ends in, a fast-forward) syncs the store first. A sync
/// here, once per level of the chain and of the tree, was most of a pull's
/// time under load (each a round of fdatasyncs and directory fsyncs).
async fn store_prefetched(
    inner: &Inner,
    prefetched: &mut HashMap<Hash, Prefetched>,
    want: &[Hash],
) -> Result<Vec<Hash>, SyncError> {
    let mut rest = Vec::new();
    let mut taken = Vec::new();
    for h in want {
        match prefetched.remove(h) {
            Some(p) => taken.push((*h, p)),
            None => rest.push(*h),
        }
    }
    if taken.is_empty() {
        return Ok(rest);
    }
    let store = inner.state.store().clone();
    let stored = tokio::task::spawn_blocking(move || {
        let mut stored = Vec::new();
        for (h, p) in &taken {
            if !store.contains(h) {
                store
                    .put_with_outboard(*h, &p.bytes, &p.outboard)
                    .map_err(|e| e.to_string())?;
                stored.push(p.bytes.len());
            }
        }
        Ok::<_, String>(stored)
    })
    .await
    .map_err(|e| SyncError::Worker(e.to_string()))?
    .map_err(|e| SyncError::Worker(format!("storing fetched manifests: {e}")))?;
    for n in stored {
        count_fetched(inner, n);
    }
    Ok(rest)
}

/// Fetch `head`'s manifest chain down to versions this node holds (or
/// pruned on purpose), at most `max_chain` deep; returns where it was cut.
/// Manifests in `prefetched` (a history answer) are taken from there.
async fn fetch_chain(
    inner: &Inner,
    b: &Bucket,
    head: Hash,
    head_from: HeadFrom,
    max_chain: usize,
    prefetched: &mut HashMap<Hash, Prefetched>,
    secret: Option<&SecretKey>,
) -> Result<Chain, SyncError> {
    let bucket = b.id();
    let store = inner.state.store().clone();
    let err = |source| SyncError::Bucket { bucket, source };
    let head_was_held = store.contains(&head);
    // The manifest chain, down to versions this node holds (or pruned on
    // purpose): never cut short, so a merge always finds the versions both
    // sides share. Where every peer answers that it no longer holds a
    // version (pruned by retention there), history ends here too; where a
    // peer did not answer, the pull fails and anti-entropy tries again:
    // cutting history at a peer that is only unreachable for a moment
    // would leave a hole every later merge falls into.
    let pruned = b.pruned_versions().map_err(err)?;
    // A held manifest is the end of the walk only when this node's own
    // history reaches it (its ancestry is then held or pruned here). One
    // held from a pull that failed part way may lack its parents: the walk
    // goes on through it, fetching only what is not held.
    // (A bucket being fetched for the first time has no history yet.)
    let history = b.has_head().then(|| b.blob_index().ok()).flatten();
    let in_history = |p: &Hash| history.as_ref().is_none_or(|h| h.contains(p));
    let mut seen = HashSet::from([head]);
    let mut want = vec![head];
    let mut cut = Vec::new();
    let mut versions = Vec::new();
    let mut depth = 0;
    while !want.is_empty() {
        let ask = store_prefetched(inner, prefetched, &want).await?;
        let got = fetch_blobs_detail(inner, bucket, &ask, secret).await?;
        if (depth == 0 && !got.missing.is_empty()) || got.unreachable {
            return Err(SyncError::NoPeer(bucket));
        }
        if depth == 0 && head_from == HeadFrom::Peer {
            let ours = head_was_held && history.as_ref().is_some_and(|h| h.contains(&head));
            if !ours {
                check_head(b, &store, head, head_was_held)?;
            }
        }
        let mut next = Vec::new();
        for h in want.iter().filter(|h| !got.missing.contains(h)) {
            // Signature, bucket and author are checked here; the links when
            // the head is applied.
            let m = b.manifest(h).map_err(err)?;
            versions.push(*h);
            // Pruned here, or held and in this node's history: done.
            let done = |p: &Hash| pruned.contains(p) || (store.contains(p) && in_history(p));
            next.extend(m.parents().filter(|p| !done(p) && seen.insert(*p)));
        }
        if !got.missing.is_empty() {
            tracing::info!(%bucket, versions = got.missing.len(), "history ends at versions no peer holds any more");
            cut.extend(got.missing);
        }
        depth += 1;
        if depth >= max_chain {
            cut.extend(next);
            break;
        }
        want = next;
    }
    Ok(Chain { cut, versions })
}

/// Where the head a chain walk starts from comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HeadFrom {
    /// A peer offered or announced it: it must prove a member wrote it.
    Peer,
    /// Postgres recorded it (a snapshot's or a clone source's version):
    /// taken as it is, history from before bound manifests included.
    Record,
}

/// Before anything below a head from a peer (not in this node's history)
/// is fetched, it must prove a holder of the secret wrote it (see
/// `Bucket::check_written_by_member`); the addresses of its parents then
/// vouch for the rest of the chain and the tree. A head that fails is
/// removed again unless this node held it before, so a peer's forgeries
/// cost this node one blob at a time, not a chain.
fn check_head(
    b: &Bucket,
    store: &crate::store::BlobStore,
    head: Hash,
    was_held: bool,
) -> Result<(), SyncError> {
    let bucket = b.id();
    if let Err(source) = b.check_written_by_member(&head) {
        if !was_held {
            if let Err(e) = store.remove(&head) {
                tracing::warn!(%bucket, %head, error = %e, "could not remove a head that did not verify");
            }
        }
        tracing::warn!(%bucket, %head, error = %source, "a peer's head does not verify; nothing below it is fetched");
        return Err(SyncError::Bucket { bucket, source });
    }
    Ok(())
}

/// Fetch every directory node of version `version`'s tree not held here
/// and, with `with_chunks`, the chunks they name. With `since` (a version
/// whose tree is all here: the local head), only what differs from it is
/// walked, and chunks only when every chunk of the local head's tree is
/// known to be here (`Inner::complete_trees`); otherwise the whole tree,
/// which then marks the bucket complete if nothing is left missing.
async fn fetch_tree(
    inner: &Inner,
    b: &Bucket,
    version: Hash,
    with_chunks: bool,
    secret: Option<&SecretKey>,
    since: Option<Hash>,
    mut bundle: Option<&mut HashMap<Hash, Prefetched>>,
) -> Result<(), SyncError> {
    let bucket = b.id();
    let store = inner.state.store().clone();
    let err = |source| SyncError::Bucket { bucket, source };
    let since = since.filter(|_| !with_chunks || inner.tree_complete(&bucket));
    let before = since.and_then(|v| b.root_of(&v).ok());
    // One level of directories at a time.
    let root = b.root_of(&version).map_err(err)?;
    let mut level: Vec<(DirRef, Option<DirRef>)> = vec![(root, before)];
    let mut chunks = Vec::new();
    while !level.is_empty() {
        let mut need: Vec<Hash> = level
            .iter()
            .map(|(d, _)| d.hash())
            .filter(|h| !store.contains(h))
            .collect();
        if let Some(bundle) = bundle.as_deref_mut() {
            need = store_prefetched(inner, bundle, &need).await?;
        }
        if !need.is_empty()
            && !fetch_blobs_with(inner, bucket, &need, secret)
                .await?
                .is_empty()
        {
            return Err(SyncError::NoPeer(bucket));
        }
        let mut next = Vec::new();
        for (d, was) in &level {
            let c = b.dir_changes(d, was.as_ref()).map_err(err)?;
            next.extend(c.dirs);
            chunks.extend(c.chunks.into_iter().filter(|h| !store.contains(h)));
        }
        level = next;
    }
    if !with_chunks {
        return Ok(());
    }
    if let Some(bundle) = bundle {
        chunks = store_prefetched(inner, bundle, &chunks).await?;
    }
    let left = match chunks.is_empty() {
        true => Vec::new(),
        false => fetch_blobs_with(inner, bucket, &chunks, secret).await?,
    };
    // A walk of what changed keeps a complete tree complete; a whole walk
    // with nothing missing makes it so.
    inner.note_tree_complete(bucket, left.is_empty());
    if !left.is_empty() {
        tracing::warn!(%bucket, missing = left.len(), "some chunks are on no reachable peer yet; reads will fetch them");
    }
    Ok(())
}

/// Pull `head` of a bucket this node holds (its chunks too), then apply it.
pub async fn pull(
    inner: &Arc<Inner>,
    bucket: BucketId,
    head: Hash,
    from: Option<NodeId>,
) -> Result<(), SyncError> {
    pull_with(inner, bucket, head, from, true).await
}

/// [`pull`], with the chunks the new tree names only when `with_chunks`
/// (a first stage merging in another peer's head leaves them to reads and
/// the background `complete`, so the pod starts at once).
pub(super) async fn pull_with(
    inner: &Arc<Inner>,
    bucket: BucketId,
    head: Hash,
    from: Option<NodeId>,
    with_chunks: bool,
) -> Result<(), SyncError> {
    let lock = inner.pull_lock(&bucket);
    let _one = lock.lock().await;
    let b = inner.open(&bucket)?;
    let local_head = b.head().ok();
    if local_head == Some(head) {
        return Ok(());
    }
    if let Some(p) = from {
        // The announcer holds the head (and may be missing from the list
        // the control plane gave): asked first.
        let known = inner.peers_of(&bucket).into_iter().find(|x| x.node == p);
        let announcer = known.unwrap_or(Peer {
            node: p,
            addrs: Vec::new(),
        });
        prefer_peer(inner, bucket, &announcer);
    }
    let started = std::time::Instant::now();
    let fetched_before = inner.stats.bytes_fetched.load(Ordering::Relaxed);
    // Without chunks, a bundle would bring up to 8 MiB of them for nothing.
    let asking = match with_chunks {
        true => Ask::Bundle,
        false => Ask::History,
    };
    let mut bundle = ask_history(inner, &b, head, from, asking).await;
    let history_ms = started.elapsed().as_millis() as u64;
    let chain = fetch_chain(
        inner,
        &b,
        head,
        HeadFrom::Peer,
        usize::MAX,
        &mut bundle,
        None,
    )
    .await?;
    let chain_ms = started.elapsed().as_millis() as u64;
    fetch_tree(
        inner,
        &b,
        head,
        with_chunks,
        None,
        local_head,
        Some(&mut bundle),
    )
    .await?;
    let tree_ms = started.elapsed().as_millis() as u64;
    // Every link of what came is checked before anything is written for
    // it: a cut noted in PRUNED makes later walks stop there, so a chain
    // that does not verify must not leave one behind.
    let cut: HashSet<Hash> = chain.cut.iter().copied().collect();
    let versions = chain.versions.len();
    for v in &chain.versions {
        b.check_fetched_link(v, &cut)
            .map_err(|source| SyncError::Bucket { bucket, source })?;
    }
    let cut = chain.cut;
    // Noted before the merge base is looked for: a walk that meets a cut
    // not yet listed calls the chain broken.
    if !cut.is_empty() {
        b.note_cut(&cut)
            .map_err(|source| SyncError::Bucket { bucket, source })?;
    }
    // The merge compares both sides with the version they share: its tree
    // must be here too (this node may know that version only by its
    // manifest, from a chain it fast-forwarded through).
    if let Ok(Some(base)) = b.merge_base(&head) {
        if let Err(e) = fetch_tree(inner, &b, base, false, None, local_head, None).await {
            tracing::warn!(%bucket, %base, error = %e, "the merge base's tree is on no reachable peer; merging without it");
        }
    }
    tracing::info!(
        %bucket,
        %head,
        ms = started.elapsed().as_millis() as u64,
        history_ms,
        chain_ms,
        tree_ms,
        versions,
        bytes = inner.stats.bytes_fetched.load(Ordering::Relaxed) - fetched_before,
        "pulled a head"
    );
    let Some(replicas) = inner.replicas.get().cloned() else {
        // Nothing here applies it (the merge would sync the store): make
        // what came durable now.
        sync_fetched(inner, bucket).await;
        return Ok(());
    };
    let applied = tokio::task::spawn_blocking(move || replicas.apply_head(&bucket, &head))
        .await
        .map_err(|e| SyncError::Worker(e.to_string()))?;
    crate::metrics::sync_pull(bucket.to_string(), applied.is_ok(), started.elapsed());
    match applied {
        Ok(merged) => {
            inner.stats.heads_applied.fetch_add(1, Ordering::Relaxed);
            inner.recent.note(bucket, head);
            if let Some(new) = merged {
                // A merge of ours: every replica must hear of it.
                announce_all(inner, bucket, new).await;
            }
            Ok(())
        }
        Err(source) => Err(SyncError::Apply { bucket, source }),
    }
}

/// How long a first stage waits for the other peers once one offered a
/// head: long enough for a live peer on a busy node, short enough that a
/// dead one does not hold a stage for the whole ask timeout.
const OFFER_GRACE: Duration = Duration::from_secs(2);

/// A head a peer offered when asked to enroll this node.
struct Offer {
    peer: Peer,
    head: Hash,
}

/// Fetch a bucket new to this node (see `SyncEngine::fetch_bucket`).
///
/// Every peer is asked to enroll this node, not only the first to answer:
/// that one may be behind (or replaying an old head) and taking its head
/// alone would roll the volume back. Each offered head must prove it was
/// written by a holder of the secret; the highest becomes this node's
/// head and every other offered head it does not contain is merged in
/// before this returns, so the result descends from all of them.
pub async fn fetch_new_bucket(
    inner: &Arc<Inner>,
    bucket: BucketId,
    secret: SecretKey,
) -> Result<Hash, SyncError> {
    let handle = inner.state.bucket_with_secret(&bucket, secret.clone());
    let mut offers = Vec::new();
    // This node's own blind replica (#28): every blob of its version is
    // here, and it is checked like any peer's offer.
    let own = inner.open_blind(&bucket).ok();
    if let Some((version, _)) = own.and_then(|r| r.head().ok().flatten()) {
        offers.push(Offer {
            peer: Peer {
                node: inner.me,
                addrs: Vec::new(),
            },
            head: version,
        });
    }
    offers.extend(collect_offers(inner, bucket, &secret).await);
    let mut checked = Vec::new();
    for offer in offers {
        if checked
            .iter()
            .any(|(_, o): &(u64, Offer)| o.head == offer.head)
        {
            continue;
        }
        prefer_peer(inner, bucket, &offer.peer);
        let verified = async {
            let from = HeadFrom::Peer;
            fetch_chain(
                inner,
                &handle,
                offer.head,
                from,
                1,
                &mut HashMap::new(),
                Some(&secret),
            )
            .await?;
            handle
                .manifest(&offer.head)
                .map_err(|source| SyncError::Bucket { bucket, source })
        };
        match verified.await {
            Ok(m) => checked.push((m.body.height, offer)),
            Err(e) => {
                tracing::warn!(peer = %offer.peer.node, %bucket, head = %offer.head, error = %e, "a peer offered a head that does not verify; not taken")
            }
        }
    }
    // Highest first: the one most likely to contain the others.
    checked.sort_by_key(|(height, _)| std::cmp::Reverse(*height));
    let mut imported = None;
    let mut rest = Vec::new();
    for (_, offer) in checked {
        if imported.is_some() {
            rest.push(offer);
            continue;
        }
        prefer_peer(inner, bucket, &offer.peer);
        match fetch_tree(inner, &handle, offer.head, false, Some(&secret), None, None).await {
            Ok(()) => {
                inner
                    .state
                    .import_bucket(bucket, secret.clone(), &inner.kek, &offer.head)
                    .map_err(|source| SyncError::Bucket { bucket, source })?;
                tracing::info!(%bucket, head = %offer.head, peer = %offer.peer.node, "fetched a bucket new to this node");
                imported = Some(offer.head);
            }
            Err(e) => {
                tracing::warn!(peer = %offer.peer.node, %bucket, error = %e, "fetching the bucket's tree failed")
            }
        }
    }
    let Some(first) = imported else {
        return Err(SyncError::NoPeer(bucket));
    };
    for offer in rest {
        if is_known_ancestor(inner, &bucket, &offer.head) {
            continue;
        }
        // Not fatal: anti-entropy asks that peer again in a few seconds.
        if let Err(e) = pull_with(inner, bucket, offer.head, Some(offer.peer.node), false).await {
            tracing::warn!(peer = %offer.peer.node, %bucket, head = %offer.head, error = %e, "could not merge in a head another peer offered; it comes with the next comparison of heads");
        }
    }
    let b = inner.open(&bucket)?;
    let head = b.head().unwrap_or(first);
    if !b.is_member_at(&head, &inner.me).unwrap_or(false) {
        // Imported from a blind replica (no member answered): this node
        // holds the secret, so it shares the bucket with itself, or the
        // versions it writes would not verify anywhere.
        if let Some(replicas) = inner.replicas.get().cloned() {
            let me = inner.me;
            let granted = tokio::task::spawn_blocking(move || replicas.grant(&bucket, &me))
                .await
                .map_err(|e| SyncError::Worker(e.to_string()))?
                .map_err(|source| SyncError::Apply { bucket, source })?;
            tracing::info!(%bucket, head = %granted, "imported from a replica without a member online; this node made itself a member");
            return Ok(granted);
        }
    }
    Ok(head)
}

/// `peer`'s head of `bucket` (None: it holds none, refused, or did not
/// answer in time).
pub(super) async fn head_of(
    inner: &Inner,
    peer: &NodeId,
    bucket: BucketId,
    proof: Proof,
) -> Option<Hash> {
    let req = Request::Heads {
        buckets: vec![(bucket, proof)],
    };
    match ask(inner, peer, &req).await {
        Ok(Response::Heads(h)) => h
            .into_iter()
            .find(|(b, _)| *b == bucket)
            .and_then(|(_, head)| head),
        _ => None,
    }
}

/// Ask every peer of `bucket` at once to enroll this node; the heads
/// offered by those that answered within [`OFFER_GRACE`] of the first.
async fn collect_offers(inner: &Arc<Inner>, bucket: BucketId, secret: &SecretKey) -> Vec<Offer> {
    use futures::StreamExt;
    let enroll = ProofKey::enroll_of(secret);
    let read = ProofKey::of(secret);
    let mut asks: futures::stream::FuturesUnordered<_> = inner
        .peers_of(&bucket)
        .into_iter()
        .map(|p| {
            let proof = enroll.proof(&bucket, &inner.me.0, &p.node.0);
            let read_proof = read.proof(&bucket, &inner.me.0, &p.node.0);
            async move {
                let answer = match ask(inner, &p.node, &Request::Enroll { bucket, proof }).await {
                    // A blind replica (or a node that will not share) may
                    // still hold the newest head: asked for it.
                    Ok(Response::Refused { reason }) => {
                        Ok(match head_of(inner, &p.node, bucket, read_proof).await {
                            Some(head) => Response::Heads(vec![(bucket, Some(head))]),
                            None => Response::Refused { reason },
                        })
                    }
                    other => other,
                };
                (p, answer)
            }
        })
        .collect();
    let mut offers = Vec::new();
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let next = match deadline {
            Some(d) => match tokio::time::timeout_at(d, asks.next()).await {
                Ok(next) => next,
                Err(_) => break,
            },
            None => asks.next().await,
        };
        let Some((peer, answer)) = next else { break };
        match answer {
            Ok(Response::Enrolled { head }) => {
                deadline.get_or_insert_with(|| tokio::time::Instant::now() + OFFER_GRACE);
                offers.push(Offer { peer, head });
            }
            Ok(Response::Heads(h)) => {
                if let Some((_, Some(head))) = h.first() {
                    deadline.get_or_insert_with(|| tokio::time::Instant::now() + OFFER_GRACE);
                    offers.push(Offer { peer, head: *head });
                }
            }
            Ok(other) => {
                tracing::warn!(peer = %peer.node, %bucket, answer = ?other, "peer did not enroll this node")
            }
            Err(e) => tracing::debug!(peer = %peer.node, %bucket, error = %e, "peer unreachable"),
        }
    }
    offers
}

/// Ask `peer` first for `bucket`'s blobs: the head it offered is on it.
fn prefer_peer(inner: &Inner, bucket: BucketId, peer: &Peer) {
    if peer.node == inner.me {
        return;
    }
    // Under the lock: a refresh or a revocation meanwhile is not undone.
    let mut all = inner.peers.lock().unwrap();
    let peers = all.entry(bucket).or_default();
    peers.retain(|o| o.node != peer.node);
    peers.insert(0, peer.clone());
}

/// Fetch a version of a bucket this node does not hold (a clone's source).
pub async fn fetch_foreign(
    inner: &Arc<Inner>,
    bucket: BucketId,
    secret: SecretKey,
    head: Hash,
) -> Result<(), SyncError> {
    // The head's address comes from Postgres: its manifest says which of
    // the bucket's secrets opens it, before its tree is walked.
    if !inner.state.store().contains(&head) {
        fetch_blobs_with(inner, bucket, &[head], Some(&secret)).await?;
    }
    let opens = inner
        .state
        .bucket_with_secret(&bucket, secret.clone())
        .can_open_version(&head)
        .map_err(|source| SyncError::Bucket { bucket, source })?;
    if !opens {
        fetch_keyring(inner, bucket, secret.clone()).await?;
    }
    let handle = inner.state.bucket_with_secret(&bucket, secret.clone());
    fetch_version(inner, &handle, head, 1, false, Some(&secret))
        .await
        .map(|_| ())
}

/// Ask `bucket`'s peers, one after another, to seal this node the bucket's
/// key ring (see [`Request::Keyring`]), and keep what it adds. Starting
/// from the base secret, what lets a clone open a version written after a
/// rotation; a removed node is refused by every peer.
pub async fn fetch_keyring(
    inner: &Arc<Inner>,
    bucket: BucketId,
    secret: SecretKey,
) -> Result<usize, SyncError> {
    let enroll = ProofKey::enroll_of(&secret);
    let handle = inner.state.bucket_with_secret(&bucket, secret.clone());
    let mut last = SyncError::NoPeer(bucket);
    for p in inner.peers_of(&bucket) {
        let proof = enroll.proof(&bucket, &inner.me.0, &p.node.0);
        let share = match ask(inner, &p.node, &Request::Keyring { bucket, proof }).await {
            Ok(Response::Keyring { share }) => share,
            Ok(other) => {
                last = refused(&p.node, other);
                continue;
            }
            Err(e) => {
                last = e;
                continue;
            }
        };
        let learned = share
            .open(inner.state.identity())
            .map_err(|e| peer_err(&p.node, format!("a key ring that does not open: {e}")))
            .and_then(|ring| {
                handle
                    .learn_ring(&ring)
                    .map_err(|source| SyncError::Bucket { bucket, source })
            });
        match learned {
            Ok(n) => return Ok(n),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Fetch every chunk of the head's tree this node lacks.
pub async fn complete(inner: &Inner, bucket: BucketId) -> Result<usize, SyncError> {
    let b = inner.open(&bucket)?;
    let err = |source| SyncError::Bucket { bucket, source };
    let head = b.head().map_err(err)?;
    let store = inner.state.store().clone();
    let mut level = vec![b.root_of(&head).map_err(err)?];
    let mut chunks = Vec::new();
    while !level.is_empty() {
        let need: Vec<Hash> = level
            .iter()
            .map(DirRef::hash)
            .filter(|h| !store.contains(h))
            .collect();
        fetch_blobs(inner, bucket, &need).await?;
        let mut next = Vec::new();
        for d in &level {
            let c = b.dir_contents(d).map_err(err)?;
            next.extend(c.dirs);
            chunks.extend(c.chunks.into_iter().filter(|h| !store.contains(h)));
        }
        level = next;
    }
    let total = chunks.len();
    let left = fetch_blobs(inner, bucket, &chunks).await?;
    inner.note_tree_complete(bucket, left.is_empty());
    if !left.is_empty() {
        return Err(SyncError::NoPeer(bucket));
    }
    Ok(total)
}

/// Ask every peer for its heads of the buckets shared with it; pull those
/// that differ from ours (what an announcement missed).
pub async fn compare_heads(inner: &Arc<Inner>) {
    let Ok(buckets) = inner.state.list_buckets() else {
        return;
    };
    let mut per_peer: HashMap<NodeId, Vec<(BucketId, Proof)>> = HashMap::new();
    let mut local: HashMap<BucketId, Hash> = HashMap::new();
    for id in buckets {
        let peers = inner.peers_of(&id);
        if peers.is_empty() {
            continue;
        }
        let Ok(b) = inner.open(&id) else { continue };
        if let Ok(h) = b.head() {
            local.insert(id, h);
        }
        let key = b.proof_key();
        for p in peers {
            per_peer
                .entry(p.node)
                .or_default()
                .push((id, key.proof(&id, &inner.me.0, &p.node.0)));
        }
    }
    let asks = per_peer.into_iter().map(|(peer, buckets)| {
        let local = &local;
        async move {
            let asked: HashSet<BucketId> = buckets.iter().map(|(b, _)| *b).collect();
            let answer = ask(inner, &peer, &Request::Heads { buckets }).await;
            let Ok(Response::Heads(heads)) = answer else {
                return;
            };
            for (bucket, head) in heads {
                // Only the buckets asked of this peer: an answer cannot make
                // this node pull a bucket from a peer it does not share it
                // with (nor one this node does not hold).
                if !asked.contains(&bucket) {
                    continue;
                }
                let Some(ours) = local.get(&bucket) else {
                    continue;
                };
                let Some(head) = head else { continue };
                if *ours == head || is_known_ancestor(inner, &bucket, &head) {
                    continue;
                }
                super::pulls::want(inner, bucket, head, Some(peer));
            }
        }
    });
    futures::future::join_all(asks).await;
}

/// Whether `head` is in this node's history of `bucket` already.
pub(super) fn is_known_ancestor(inner: &Inner, bucket: &BucketId, head: &Hash) -> bool {
    if !inner.state.store().contains(head) {
        return false;
    }
    let Ok(b) = inner.open(bucket) else {
        return false;
    };
    b.has_in_history(head).unwrap_or(false)
}

/// See `SyncEngine::wait_held`: every holder's head asked for every 2 ms
/// until `k` of them hold `version`.
pub async fn wait_held(
    inner: &Arc<Inner>,
    bucket: BucketId,
    version: Hash,
    k: usize,
    timeout: Duration,
) -> Result<usize, SyncError> {
    let started = tokio::time::Instant::now();
    let deadline = started + timeout;
    let key = proof_key(inner, &bucket, None)?;
    let mine = inner.open(&bucket).ok();
    loop {
        let asks = inner.peers_of(&bucket).into_iter().map(|p| {
            let proof = key.proof(&bucket, &inner.me.0, &p.node.0);
            async move {
                tokio::time::timeout_at(deadline, head_of(inner, &p.node, bucket, proof))
                    .await
                    .ok()
                    .flatten()
            }
        });
        let heads = futures::future::join_all(asks).await;
        let held = heads
            .iter()
            .flatten()
            .filter(|head| {
                **head == version
                    || mine
                        .as_ref()
                        .is_some_and(|b| b.contains_version(head, &version).unwrap_or(false))
            })
            .count();
        if held >= k {
            return Ok(held);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(SyncError::ReplicasBehind {
                bucket,
                version,
                held,
                wanted: k,
                secs: timeout.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
