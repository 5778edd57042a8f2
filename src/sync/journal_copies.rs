//! `syncReplicas` on the journal: an fsync returns once K other replicas
//! hold a copy of the journal frames it appended (one round trip of a few
//! KiB), not once they pulled a whole version. And the other way: a node
//! that stages a volume gathers the copies its replicas hold and replays
//! them, so what a lost writer's fsyncs acknowledged is not lost with it.
//!
//! Each peer's copy is brought up to the writer's active file: bytes from
//! where the peer's last answer left off (from the start of a new file
//! after a version retired the old one). A peer refuses a file whose base
//! version it does not hold yet and fetches it; the writer asks again
//! until its deadline. See `bucket::journal::copies` for what the peer keeps.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use super::client::{ask, peer_err, proof_key, request};
use super::proto::{CopyFrame, Request, Response, MAX_COPY, MAX_COPY_BYTES};
use super::wire::{read_bytes, read_msg};
use super::{Inner, SyncError};
use crate::bucket::journal::copies::{self, Copy};
use crate::bucket::journal::{Copyable, FileId, Journal, Position};
use crate::bucket::BucketId;
use crate::crypto::NodeId;

/// How long a peer that refused (its base not there yet) or failed is
/// left before it is asked again.
const RETRY_AFTER: Duration = Duration::from_millis(5);
/// Failed requests in a row after which a peer is taken for one that
/// does not take journal copies (see [`Shipment::held_in_a_version`]).
const OLD_PEER_AFTER: u32 = 3;
/// How long one round of sending lasts before the peer list is read again.
const ROUND: Duration = Duration::from_secs(1);
/// How long to wait for the control plane to list a peer of the bucket.
const NO_PEER_WAIT: Duration = Duration::from_millis(20);

/// How far one peer's copy of one journal is known to go.
type PeerCopy = Arc<tokio::sync::Mutex<Option<(FileId, u64)>>>;

/// How far each peer's copy of each bucket's journal is known to go.
/// One lock per peer and bucket: fsyncs that overlap send each byte once.
#[derive(Default)]
pub(super) struct Shipped(std::sync::Mutex<HashMap<(BucketId, NodeId), PeerCopy>>);

impl Shipped {
    fn of(&self, bucket: BucketId, peer: NodeId) -> PeerCopy {
        self.0
            .lock()
            .unwrap()
            .entry((bucket, peer))
            .or_default()
            .clone()
    }
}

/// Whether a peer's copy covers what was asked.
enum Covered {
    /// It holds the file to the fsync's frames.
    File,
    /// The file went with an older version than the last one: the peer
    /// must hold HEAD's history instead.
    Gone,
}

/// Wait until `k` of `bucket`'s peers hold a copy of `journal` up to
/// `upto` (where an fsync's append ended): how many did.
pub async fn wait_journal_held(
    inner: &Arc<Inner>,
    bucket: BucketId,
    journal: Arc<Journal>,
    upto: Position,
    k: usize,
    timeout: Duration,
) -> Result<usize, SyncError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let key = proof_key(inner, &bucket, None)?;
    let mut held = std::collections::HashSet::new();
    let mut gone = false;
    // In rounds: the peers the control plane lists may change meanwhile
    // (a replica just assigned is not listed yet).
    while held.len() < k && !gone && tokio::time::Instant::now() < deadline {
        let round_ends = deadline.min(tokio::time::Instant::now() + ROUND);
        let peers: Vec<_> = inner
            .peers_of(&bucket)
            .into_iter()
            .filter(|p| !held.contains(&p.node))
            .collect();
        if peers.is_empty() {
            tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + NO_PEER_WAIT))
                .await;
            continue;
        }
        let mut shipping: futures::stream::FuturesUnordered<_> = peers
            .into_iter()
            .map(|p| {
                let to = Shipment {
                    inner,
                    bucket,
                    peer: p.node,
                    proof: key.proof(&bucket, &inner.me.0, &p.node.0),
                    journal: journal.clone(),
                    upto,
                };
                async move {
                    let shipped = tokio::time::timeout_at(round_ends, to.ship()).await;
                    (to.peer, shipped.ok())
                }
            })
            .collect();
        while let Some((peer, done)) = shipping.next().await {
            match done {
                Some(Covered::File) => {
                    held.insert(peer);
                }
                Some(Covered::Gone) => gone = true,
                None => {}
            }
            if held.len() >= k {
                return Ok(held.len());
            }
        }
    }
    if gone {
        // Two versions went by meanwhile: the replicas must hold HEAD.
        let head = inner
            .open(&bucket)?
            .head()
            .map_err(|source| SyncError::Bucket { bucket, source })?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        return super::client::wait_held(inner, bucket, head, k, left).await;
    }
    Err(SyncError::JournalNotHeld {
        bucket,
        held: held.len(),
        wanted: k,
        secs: timeout.as_secs(),
    })
}

/// What one peer's copy of a journal must come to.
struct Shipment<'a> {
    inner: &'a Arc<Inner>,
    bucket: BucketId,
    peer: NodeId,
    proof: [u8; 32],
    journal: Arc<Journal>,
    upto: Position,
}

impl Shipment<'_> {
    /// Bring the peer's copy of `upto`'s file to `upto`'s end (or
    /// further), asking again (until the caller's deadline) while it
    /// refuses or fails.
    async fn ship(&self) -> Covered {
        let (inner, bucket, peer, upto) = (self.inner, self.bucket, self.peer, self.upto);
        let state = inner.journal_shipped.of(bucket, peer);
        let mut have = state.lock().await;
        let mut failed = 0;
        loop {
            if failed >= OLD_PEER_AFTER {
                drop(have);
                return self.held_in_a_version().await;
            }
            if have.is_some_and(|(file, at)| file == upto.file && at >= upto.end) {
                return Covered::File;
            }
            let copy = match self.journal.copy_for(&upto.file, *have, MAX_COPY_BYTES) {
                Copyable::Bytes(copy) => copy,
                Copyable::Gone => return Covered::Gone,
                Copyable::NotKept => {
                    drop(have);
                    return self.held_in_a_version().await;
                }
            };
            let req = Request::JournalCopy {
                bucket,
                proof: self.proof,
                file: copy.file,
                offset: copy.offset,
                bytes: copy.bytes,
            };
            match ask(inner, &peer, &req).await {
                Ok(Response::JournalHeld { file, have: at }) if file == copy.file => {
                    *have = Some((file, at));
                    failed = 0;
                }
                Ok(other) => {
                    tracing::debug!(%bucket, %peer, answer = ?other, "a replica did not take a journal copy yet");
                    tokio::time::sleep(RETRY_AFTER).await;
                }
                Err(e) => {
                    tracing::debug!(%bucket, %peer, error = %e, "sending a journal copy");
                    failed += 1;
                    tokio::time::sleep(RETRY_AFTER).await;
                }
            }
        }
    }

    /// For a peer that does not take journal copies (a build from before
    /// them drops the request; or it fails), or a file whose bytes were
    /// not kept: wait until a version holds the frames (the file was
    /// retired) and the peer's head holds that version.
    async fn held_in_a_version(&self) -> Covered {
        let (inner, bucket) = (self.inner, self.bucket);
        loop {
            if self
                .journal
                .position()
                .is_none_or(|at| at.file != self.upto.file)
            {
                let head = inner.open(&bucket).ok().and_then(|b| {
                    let head = b.head().ok()?;
                    Some((b, head))
                });
                let theirs = super::client::head_of(inner, &self.peer, bucket, self.proof).await;
                if let (Some((b, mine)), Some(theirs)) = (head, theirs) {
                    if theirs == mine || b.contains_version(&theirs, &mine).unwrap_or(false) {
                        return Covered::File;
                    }
                }
            }
            tokio::time::sleep(RETRY_AFTER).await;
        }
    }
}

/// The journal copies of `bucket` held here and by every peer that
/// answers, one per writer's file (the longest).
pub async fn gather(inner: &Arc<Inner>, bucket: BucketId) -> Vec<Copy> {
    let root = inner.state.root().to_path_buf();
    let mut all = tokio::task::spawn_blocking(move || copies::read_all(&root, &bucket))
        .await
        .unwrap_or_default();
    if let Ok(key) = proof_key(inner, &bucket, None) {
        let asks = inner.peers_of(&bucket).into_iter().map(|p| {
            let proof = key.proof(&bucket, &inner.me.0, &p.node.0);
            async move {
                match copies_of(inner, &p.node, bucket, proof).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(%bucket, peer = %p.node, error = %e, "no journal copies from a peer");
                        Vec::new()
                    }
                }
            }
        });
        all.extend(futures::future::join_all(asks).await.into_iter().flatten());
    }
    let mut longest: HashMap<(NodeId, FileId), Copy> = HashMap::new();
    for c in all {
        let key = (c.writer, c.file);
        if longest
            .get(&key)
            .is_none_or(|held| held.bytes.len() < c.bytes.len())
        {
            longest.insert(key, c);
        }
    }
    longest.into_values().collect()
}

/// `peer`'s journal copies of `bucket`.
async fn copies_of(
    inner: &Arc<Inner>,
    peer: &NodeId,
    bucket: BucketId,
    proof: [u8; 32],
) -> Result<Vec<Copy>, SyncError> {
    let read = async {
        let mut recv = request(inner, peer, &Request::JournalCopies { bucket, proof }).await?;
        match read_msg::<Response>(&mut recv).await {
            Ok(Some(Response::Noted)) => {}
            Ok(other) => return Err(peer_err(peer, format!("unexpected answer {other:?}"))),
            Err(e) => return Err(peer_err(peer, e)),
        }
        let mut copies = Vec::new();
        while let Some(frame) = read_msg::<CopyFrame>(&mut recv)
            .await
            .map_err(|e| peer_err(peer, e))?
        {
            if frame.len as usize > MAX_COPY {
                return Err(peer_err(peer, "a journal copy over the size limit"));
            }
            let bytes = read_bytes(&mut recv, frame.len as usize)
                .await
                .map_err(|e| peer_err(peer, e))?;
            copies.push(Copy {
                writer: frame.writer,
                file: frame.file,
                bytes,
            });
        }
        Ok(copies)
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .map_err(|_| peer_err(peer, "journal copies took too long"))?
}

/// Replay every journal copy of `bucket` that this node and its peers
/// hold (not this node's own, unless `own_too`: a node that kept its
/// state dir replays its own journal): what a lost writer's fsyncs made
/// durable on its replicas comes into HEAD. A copy whose base is not
/// here is fetched first; one that still cannot be replayed is logged.
/// How many copies added changes.
pub async fn replay_gathered(inner: &Arc<Inner>, bucket: BucketId, own_too: bool) -> usize {
    let copies: Vec<Copy> = gather(inner, bucket)
        .await
        .into_iter()
        .filter(|c| own_too || c.writer != inner.me)
        .collect();
    let mut replayed = 0;
    for copy in copies {
        let base = copy.file.base;
        if !super::client::is_known_ancestor(inner, &bucket, &base) {
            if let Err(e) = super::client::pull_with(inner, bucket, base, None, false).await {
                tracing::warn!(%bucket, %base, writer = %copy.writer, error = %e, "a replica's copy of a journal applies to a version no peer gave; its changes are not replayed");
                continue;
            }
        }
        let Ok(b) = inner.open(&bucket) else {
            return replayed;
        };
        let writer = copy.writer;
        let done = tokio::task::spawn_blocking(move || b.replay_journal_copy(&copy.bytes)).await;
        match done {
            Ok(Ok(Some(version))) => {
                replayed += 1;
                tracing::info!(%bucket, %writer, %version, "replayed a replica's copy of a node's journal");
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::warn!(%bucket, %writer, error = %e, "a replica's copy of a journal could not be replayed")
            }
            Err(e) => tracing::warn!(%bucket, error = %e, "replaying a journal copy"),
        }
    }
    replayed
}
