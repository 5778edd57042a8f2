//! Answering peers: check who is asking before reading anything it asks
//! for — a registered node always; the bucket's secret proven for heads,
//! blobs and enrollment (holding the secret is what reading needs); a
//! member (a share at this node's head) for announcements, which lead to
//! versions it wrote being merged here. Refusals are answered and logged.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use iroh::endpoint::{Connection, RecvStream, SendStream};
use iroh::protocol::{AcceptError, ProtocolHandler};

use super::proto::{
    BlobFrame, CopyFrame, Proof, Request, Response, MAX_BLOBS_PER_REQUEST, MAX_BUCKETS_PER_REQUEST,
    MAX_BUNDLE_TREE_BLOBS, MAX_BUNDLE_TREE_BYTES, MAX_COPY, MAX_COPY_BYTES, MAX_HAVE, MAX_HISTORY,
    MAX_HISTORY_BYTES,
};
use super::wire::{read_msg, write_msg};
use super::Inner;
use crate::bucket::blind::BlindReplica;
use crate::bucket::journal::FileId;
use crate::bucket::{Bucket, BucketId, DirRef};
use crate::crypto::NodeId;
use crate::store::Hash;

pub struct Handler {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("sync::Handler")
    }
}

impl Handler {
    pub fn new(inner: Arc<Inner>) -> Self {
        Self { inner }
    }
}

/// Requests one peer may have in progress at once (over all its
/// connections); its further streams wait unaccepted, held back by QUIC's
/// stream limit, not by this node's memory.
pub(super) const PER_PEER: usize = 8;
/// Requests in progress at once from all peers. A peer holds at most
/// [`PER_PEER`] of them, so a few stalled peers leave room for the rest.
pub(super) const TOTAL: usize = 64;
/// How long a request may wait for one of the [`TOTAL`] before it is
/// answered as refused (busy).
const BUSY_WAIT: Duration = Duration::from_secs(5);
/// How long a request may take in all (longer than a requester waits
/// for a batch of blobs: `client::REQUEST_TIMEOUT`).
const SERVE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the request itself may take to arrive.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a single write may wait for the peer to read: a peer that
/// stops reading frees what its request holds after this.
const WRITE_STALL: Duration = Duration::from_secs(15);

impl ProtocolHandler for Handler {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let peer = NodeId(*conn.remote_id().as_bytes());
        if !self.inner.is_registered(&peer).await {
            self.inner.stats.refused.fetch_add(1, Ordering::Relaxed);
            if self.inner.warn_refusal(&peer) {
                tracing::warn!(%peer, "sync connection from a node that is not registered; refused (further refusals of it for a minute are logged at debug)");
            } else {
                tracing::debug!(%peer, "sync connection from a node that is not registered; refused");
            }
            conn.close(1u32.into(), b"not a registered node");
            return Ok(());
        }
        let mine = self.inner.peer_slots(&peer);
        loop {
            // A slot of this peer's before its next stream is taken in.
            let Ok(slot) = mine.clone().acquire_owned().await else {
                break;
            };
            let Ok((mut send, recv)) = conn.accept_bi().await else {
                break;
            };
            // Checked on every request, not only when the connection
            // opened: a node removed meanwhile gets nothing more.
            if self.inner.state.revoked().contains(&peer) {
                self.inner.stats.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, "sync request from a node removed from the cluster; connection closed");
                conn.close(2u32.into(), b"removed from the cluster");
                break;
            }
            let inner = self.inner.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let total =
                    tokio::time::timeout(BUSY_WAIT, inner.slots.clone().acquire_owned()).await;
                let Ok(Ok(_total)) = total else {
                    tracing::debug!(%peer, "sync request refused: this node is busy");
                    let busy = Response::Refused {
                        reason: "busy".into(),
                    };
                    let _ = tokio::time::timeout(WRITE_STALL, write_msg(&mut send, &busy)).await;
                    let _ = send.finish();
                    return;
                };
                match tokio::time::timeout(SERVE_TIMEOUT, serve(inner, peer, send, recv)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "sync request failed"),
                    Err(_) => tracing::debug!(%peer, "sync request took too long; dropped"),
                }
            });
        }
        Ok(())
    }
}

/// What this node holds of a bucket a peer asks about.
enum Held {
    /// With its key: staged here, or once was.
    Keyed(Bucket),
    /// Without any key that opens it (see `bucket::blind`).
    Blind(BlindReplica),
}

impl Held {
    fn proof(&self, bucket: &BucketId, requester: &NodeId, responder: &NodeId) -> Proof {
        match self {
            Held::Keyed(b) => b.proof_key().proof(bucket, &requester.0, &responder.0),
            Held::Blind(r) => r.proof_key().proof(bucket, &requester.0, &responder.0),
        }
    }

    fn head(&self) -> Option<Hash> {
        match self {
            Held::Keyed(b) => b.head().ok(),
            Held::Blind(r) => r.head().ok().flatten().map(|(v, _)| v),
        }
    }

    /// The blobs of the bucket this node serves (blocking).
    fn served(&self) -> Result<Served, String> {
        match self {
            Held::Keyed(b) => b.blob_index().map(Served::Index),
            Held::Blind(r) => r.live().map(Served::Set),
        }
        .map_err(|e| e.to_string())
    }
}

/// A bucket's blobs as this node serves them.
#[derive(Clone)]
enum Served {
    Index(Arc<crate::bucket::BlobIndex>),
    Set(Arc<std::collections::HashSet<Hash>>),
}

impl Served {
    fn contains(&self, h: &Hash) -> bool {
        match self {
            Served::Index(i) => i.contains(h),
            Served::Set(s) => s.contains(h),
        }
    }
}

/// What this node holds of `bucket`, if `proof` shows `peer` holds the
/// bucket's proof key (its secret, or a blind replica's key).
fn proven(inner: &Inner, peer: &NodeId, bucket: &BucketId, proof: &Proof) -> Result<Held, String> {
    let held = if inner.state.has_bucket(bucket) {
        inner.open(bucket).map(Held::Keyed)
    } else {
        inner.open_blind(bucket).map(Held::Blind)
    }
    .map_err(|_| format!("bucket {bucket} is not on this node"))?;
    if !constant_time_eq(&held.proof(bucket, peer, &inner.me), proof) {
        inner.stats.refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%peer, %bucket, "sync request with a wrong proof; refused");
        return Err("the proof does not match the bucket's secret".into());
    }
    Ok(held)
}

/// Whether `peer` may be made a member of `bucket`: it proved the secret
/// itself (the enroll key, which a blind replica's proof key does not give).
fn enrolling(inner: &Inner, peer: &NodeId, bucket: &BucketId, proof: &Proof) -> Result<(), String> {
    if !inner.state.has_bucket(bucket) {
        return Err(if inner.state.has_blind(bucket) {
            format!("bucket {bucket} is held blind here (no key): its head is served, its secret cannot be shared")
        } else {
            format!("bucket {bucket} is not on this node")
        });
    }
    let b = inner
        .open(bucket)
        .map_err(|_| format!("bucket {bucket} is not on this node"))?;
    let want = b.enroll_key().proof(bucket, &peer.0, &inner.me.0);
    if !constant_time_eq(&want, proof) {
        inner.stats.refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%peer, %bucket, "enroll request with a wrong proof; refused");
        return Err("the proof does not show the bucket's secret".into());
    }
    Ok(())
}

/// Whether `peer` holds a share at this node's head of what it proved
/// (a blind replica with no version yet takes a proven announcer's word
/// for which version to fetch: it checks the version before keeping it).
fn is_member(inner: &Inner, peer: &NodeId, bucket: &BucketId, held: &Held) -> Result<(), String> {
    let member = match held {
        Held::Keyed(b) => {
            let head = b.head().map_err(|e| e.to_string())?;
            b.is_member_at(&head, peer).map_err(|e| e.to_string())?
        }
        Held::Blind(r) => match r.head().map_err(|e| e.to_string())? {
            None => true,
            Some((v, _)) => crate::bucket::Manifest::load(inner.state.store(), &v)
                .map_err(|e| e.to_string())?
                .body
                .shares_with(peer),
        },
    };
    if !member {
        inner.stats.refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%peer, %bucket, "sync request from a node that is not a member of the bucket; refused");
        return Err("not a member of the bucket here (enroll first)".into());
    }
    Ok(())
}

/// The statement of `version`'s blob set, its root and its leaves, read
/// (or, by a member, made) for a blind replica that asks (blocking).
fn blob_set(
    store: &crate::store::BlobStore,
    held: Held,
    version: &Hash,
) -> Result<Vec<(Hash, Vec<u8>)>, String> {
    let statement = match held {
        Held::Keyed(b) => {
            let index = b.blob_index().map_err(|e| e.to_string())?;
            if !index.contains(version) {
                return Err(format!("version {version} is not one of this node's"));
            }
            b.statement_for(version).map_err(|e| e.to_string())?
        }
        Held::Blind(r) => {
            let head = r.head().map_err(|e| e.to_string())?;
            let pinned = r.pinned().map_err(|e| e.to_string())?;
            match head.into_iter().chain(pinned).find(|(v, _)| v == version) {
                Some((_, s)) => s,
                None => return Err(format!("version {version} is not one held here")),
            }
        }
    };
    let set = crate::bucket::blob_set::read_held(store, &statement).map_err(|e| e.to_string())?;
    set.own_blobs
        .iter()
        .map(|h| Ok((*h, store.get(h).map_err(|e| e.to_string())?)))
        .collect()
}

/// Answer a [`Request::GetBlobs`]; `yields`: a blind replica's rebuild
/// ([`Request::GetBlobsBackground`]), served with a rest after each blob
/// while this node's pods keep it busy (`sync::pace::PodLoad`).
async fn serve_blobs(
    inner: &Arc<Inner>,
    peer: &NodeId,
    send: &mut SendStream,
    bucket: BucketId,
    proof: Proof,
    hashes: Vec<Hash>,
    yields: bool,
) -> Result<(), String> {
    let refuse = |reason: String| Response::Refused { reason };
    let mut pods = yields.then(|| {
        super::pace::PodLoad::new(std::time::Instant::now(), crate::metrics::fuse_busy_nanos())
    });
    match proven(inner, peer, &bucket, &proof) {
        Err(why) => write_msg(send, &refuse(why))
            .await
            .map_err(|e| e.to_string())?,
        Ok(held) => {
            // Only blobs of the proven bucket: the store is shared by
            // every bucket here, and a proof for one must not read
            // another's manifests, directories or chunks.
            let index = tokio::task::spawn_blocking(move || held.served())
                .await
                .map_err(|e| e.to_string())??;
            send_msg(send, &Response::Noted).await?;
            // Each blob is read (and checked against its address) on a
            // blocking thread of its own, one ahead of the sending: a
            // peer that stops reading holds no thread, two blobs at
            // most, and those for WRITE_STALL at most.
            let store = inner.state.store().clone();
            let read = |h: Hash| {
                let (store, index) = (store.clone(), index.clone());
                tokio::task::spawn_blocking(move || {
                    if !index.contains(&h) {
                        return (h, Err(()));
                    }
                    match store.get(&h) {
                        Ok(bytes) if belongs(&bucket, &h, &bytes) => (h, Ok(bytes)),
                        _ => (h, Err(())),
                    }
                })
            };
            let mut wanted = hashes.into_iter().take(MAX_BLOBS_PER_REQUEST);
            let mut next = wanted.next().map(read);
            while let Some(reading) = next.take() {
                let started = std::time::Instant::now();
                let (h, blob) = reading.await.map_err(|e| e.to_string())?;
                next = wanted.next().map(read);
                let h = &h;
                match blob {
                    Ok(bytes) => send_blob(inner, send, h, &bytes).await?,
                    Err(_) => {
                        send_msg(send, &BlobFrame::Missing { hash: *h }).await?;
                    }
                }
                if let Some(pods) = &mut pods {
                    pods.sample(std::time::Instant::now(), crate::metrics::fuse_busy_nanos());
                    let rest = pods.rest_after(started.elapsed());
                    if !rest.is_zero() {
                        tokio::time::sleep(rest).await;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Keep `bytes` of `writer`'s journal `file` (see [`Request::JournalCopy`]),
/// once `file`'s base version is held here (fetched first, if not).
async fn keep_journal_copy(
    inner: &Arc<Inner>,
    writer: NodeId,
    bucket: BucketId,
    held: Held,
    file: FileId,
    offset: u64,
    bytes: Vec<u8>,
) -> Result<Response, String> {
    if bytes.len() > MAX_COPY_BYTES || offset.saturating_add(bytes.len() as u64) > MAX_COPY as u64 {
        return Err("journal copy over the size limit".into());
    }
    let keyed = matches!(held, Held::Keyed(_));
    let base = file.base;
    let has_base = tokio::task::spawn_blocking(move || held.served().map(|s| s.contains(&base)))
        .await
        .map_err(|e| e.to_string())??;
    if !has_base {
        // The writer announced it; this makes sure it comes.
        if keyed {
            super::pulls::want(inner, bucket, base, Some(writer));
        } else {
            inner.blind_announced(bucket, base);
        }
        return Err(format!(
            "version {base} (the journal's base) is not held here yet"
        ));
    }
    let root = inner.state.root().to_path_buf();
    let have = tokio::task::spawn_blocking(move || {
        crate::bucket::journal::copies::write(&root, &bucket, &writer, &file, offset, &bytes)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| {
        tracing::warn!(%bucket, %writer, error = %e, "could not keep a journal copy");
        format!("could not keep the journal copy: {e}")
    })?;
    Ok(Response::JournalHeld { file, have })
}

/// A blob the index lists for `bucket` is served unless it is another
/// bucket's manifest (a member may name one as a chunk of its own tree;
/// manifest addresses are no secret).
fn belongs(bucket: &BucketId, hash: &Hash, bytes: &[u8]) -> bool {
    if !bytes.starts_with(crate::bucket::decoders::MAGIC) {
        return true;
    }
    crate::bucket::Manifest::from_bytes(*hash, bytes).is_ok_and(|m| m.body.bucket_id == *bucket)
}

/// The manifests of `head` and its ancestors, breadth first, stopping at
/// versions in `have` and at [`MAX_HISTORY`] manifests or
/// [`MAX_HISTORY_BYTES`]. Only manifests of `bucket` its blob index lists
/// (versions of the proven bucket), as GetBlobs serves.
fn history(
    store: &crate::store::BlobStore,
    index: &Served,
    bucket: &BucketId,
    head: Hash,
    have: &[Hash],
) -> Vec<(Hash, Vec<u8>)> {
    let have: std::collections::HashSet<Hash> = have.iter().take(MAX_HAVE).copied().collect();
    let mut seen = std::collections::HashSet::new();
    let mut queue = std::collections::VecDeque::from([head]);
    let mut out = Vec::new();
    let mut bytes_out = 0;
    while let Some(h) = queue.pop_front() {
        if have.contains(&h) || !seen.insert(h) || !index.contains(&h) {
            continue;
        }
        let Ok(bytes) = store.get(&h) else { continue };
        let Ok(m) = crate::bucket::Manifest::from_bytes(h, &bytes) else {
            continue;
        };
        if m.body.bucket_id != *bucket {
            continue;
        }
        bytes_out += bytes.len();
        if out.len() >= MAX_HISTORY || bytes_out > MAX_HISTORY_BYTES {
            break;
        }
        queue.extend(m.parents());
        out.push((h, bytes));
    }
    out
}

/// Answer a history request: the manifests of `head` down to `have`, and
/// with `with_tree` (a bundle) the blobs of `head`'s tree that differ from
/// the newest version of `have` held here.
#[allow(clippy::too_many_arguments)]
async fn answer_history(
    inner: &Arc<Inner>,
    peer: &NodeId,
    send: &mut SendStream,
    bucket: BucketId,
    proof: Proof,
    head: Hash,
    have: Vec<Hash>,
    with_tree: bool,
) -> Result<(), String> {
    let held = match proven(inner, peer, &bucket, &proof) {
        Err(why) => {
            return write_msg(send, &Response::Refused { reason: why })
                .await
                .map_err(|e| e.to_string())
        }
        Ok(held) => held,
    };
    let store = inner.state.store().clone();
    let blobs = tokio::task::spawn_blocking(move || {
        let index = held.served()?;
        let mut out = history(&store, &index, &bucket, head, &have);
        if let (true, Held::Keyed(b)) = (with_tree, &held) {
            out.extend(tree_since(b, &store, &index, head, &have));
        }
        Ok::<_, String>(out)
    })
    .await
    .map_err(|e| e.to_string())??;
    send_msg(send, &Response::Noted).await?;
    for (h, bytes) in &blobs {
        send_blob(inner, send, h, bytes).await?;
    }
    Ok(())
}

/// The directory nodes and chunks of `head`'s tree that differ from the
/// first version of `have` held here (all of them when none is), within a
/// bundle's limits; nothing when `head` is not this bucket's here.
fn tree_since(
    b: &Bucket,
    store: &crate::store::BlobStore,
    index: &Served,
    head: Hash,
    have: &[Hash],
) -> Vec<(Hash, Vec<u8>)> {
    if !index.contains(&head) {
        return Vec::new();
    }
    let Ok(root) = b.root_of(&head) else {
        return Vec::new();
    };
    let since = have
        .iter()
        .take(MAX_HAVE)
        .find(|v| index.contains(v))
        .and_then(|v| b.root_of(v).ok());
    let mut out = Vec::new();
    let mut bytes_out = 0;
    let mut take = |h: Hash, out: &mut Vec<(Hash, Vec<u8>)>| -> bool {
        if out.len() >= MAX_BUNDLE_TREE_BLOBS || !index.contains(&h) {
            return false;
        }
        let Ok(bytes) = store.get(&h) else {
            return false;
        };
        bytes_out += bytes.len();
        if bytes_out > MAX_BUNDLE_TREE_BYTES {
            return false;
        }
        out.push((h, bytes));
        true
    };
    let mut level = vec![(root, since)];
    let mut chunks = Vec::new();
    while !level.is_empty() {
        let mut next = Vec::new();
        for (d, was) in level {
            // The asker holds a directory its version has too (only the
            // root can be one: the walk goes on only where they differ).
            if was.as_ref().map(DirRef::hash) == Some(d.hash()) {
                continue;
            }
            if !take(d.hash(), &mut out) {
                return out;
            }
            let Ok(c) = b.dir_changes(&d, was.as_ref()) else {
                return out;
            };
            next.extend(c.dirs);
            chunks.extend(c.chunks);
        }
        level = next;
    }
    for c in chunks {
        if !take(c, &mut out) {
            break;
        }
    }
    out
}

/// Send one blob frame and its bytes, counted.
async fn send_blob(
    inner: &Inner,
    send: &mut SendStream,
    hash: &Hash,
    bytes: &[u8],
) -> Result<(), String> {
    let f = BlobFrame::Blob {
        hash: *hash,
        len: bytes.len() as u32,
    };
    send_msg(send, &f).await?;
    write_within(send, bytes).await?;
    crate::metrics::blob_served(bytes.len());
    inner.stats.blobs_served.fetch_add(1, Ordering::Relaxed);
    inner
        .stats
        .bytes_served
        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    Ok(())
}

/// Write `bytes`, giving up when the peer reads nothing for [`WRITE_STALL`].
async fn write_within(send: &mut SendStream, bytes: &[u8]) -> Result<(), String> {
    tokio::time::timeout(WRITE_STALL, send.write_all(bytes))
        .await
        .map_err(|_| "the peer stopped reading".to_string())?
        .map_err(|e| e.to_string())
}

/// Write one message, as [`write_within`].
async fn send_msg<T: serde::Serialize>(send: &mut SendStream, msg: &T) -> Result<(), String> {
    write_within(send, &super::proto::frame(msg)).await
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn serve(
    inner: Arc<Inner>,
    peer: NodeId,
    mut send: SendStream,
    mut recv: RecvStream,
) -> Result<(), String> {
    let Some(req) = tokio::time::timeout(READ_TIMEOUT, read_msg::<Request>(&mut recv))
        .await
        .map_err(|_| "the request did not arrive in time".to_string())?
        .map_err(|e| e.to_string())?
    else {
        return Ok(());
    };
    let refuse = |reason: String| Response::Refused { reason };
    match req {
        Request::Heads { buckets } => {
            let heads = buckets
                .iter()
                .take(MAX_BUCKETS_PER_REQUEST)
                .map(|(b, proof)| {
                    let head = proven(&inner, &peer, b, proof)
                        .ok()
                        .and_then(|held| held.head());
                    (*b, head)
                })
                .collect();
            write_msg(&mut send, &Response::Heads(heads))
                .await
                .map_err(|e| e.to_string())?;
        }
        Request::Announce {
            bucket,
            proof,
            head,
        } => {
            let checked = proven(&inner, &peer, &bucket, &proof)
                .and_then(|held| is_member(&inner, &peer, &bucket, &held).map(|()| held));
            let answer = match checked {
                Ok(held) => {
                    inner
                        .stats
                        .announcements_received
                        .fetch_add(1, Ordering::Relaxed);
                    inner.add_peer(&bucket, &peer);
                    match held {
                        Held::Keyed(_) => super::pulls::want(&inner, bucket, head, Some(peer)),
                        Held::Blind(_) => inner.blind_announced(bucket, head),
                    }
                    Response::Noted
                }
                Err(why) => refuse(why),
            };
            write_msg(&mut send, &answer)
                .await
                .map_err(|e| e.to_string())?;
        }
        Request::GetBlobs {
            bucket,
            proof,
            hashes,
        } => serve_blobs(&inner, &peer, &mut send, bucket, proof, hashes, false).await?,
        Request::GetBlobsBackground {
            bucket,
            proof,
            hashes,
        } => serve_blobs(&inner, &peer, &mut send, bucket, proof, hashes, true).await?,
        Request::History {
            bucket,
            proof,
            head,
            have,
        } => answer_history(&inner, &peer, &mut send, bucket, proof, head, have, false).await?,
        Request::Bundle {
            bucket,
            proof,
            head,
            have,
        } => answer_history(&inner, &peer, &mut send, bucket, proof, head, have, true).await?,
        Request::Enroll { bucket, proof } => {
            let answer = match enrolling(&inner, &peer, &bucket, &proof) {
                Err(why) => refuse(why),
                Ok(()) => match inner.replicas.get().cloned() {
                    None => refuse("this node is starting".into()),
                    Some(replicas) => {
                        let granted =
                            tokio::task::spawn_blocking(move || replicas.grant(&bucket, &peer))
                                .await
                                .map_err(|e| e.to_string())?;
                        match granted {
                            Ok(head) => {
                                tracing::info!(%bucket, %peer, %head, "enrolled a peer as a member");
                                inner.add_peer(&bucket, &peer);
                                let inner = inner.clone();
                                tokio::spawn(async move {
                                    super::client::announce_all(&inner, bucket, head).await
                                });
                                Response::Enrolled { head }
                            }
                            Err(e) => {
                                tracing::warn!(%bucket, %peer, error = %e, "could not enroll a peer");
                                refuse(format!("could not share the bucket: {e}"))
                            }
                        }
                    }
                },
            };
            write_msg(&mut send, &answer)
                .await
                .map_err(|e| e.to_string())?;
        }
        Request::Keyring { bucket, proof } => {
            let answer = match enrolling(&inner, &peer, &bucket, &proof)
                .and_then(|()| inner.open(&bucket).map_err(|e| e.to_string()))
                .and_then(|b| b.keyring_share(&peer).map_err(|e| e.to_string()))
            {
                Ok(share) => {
                    tracing::info!(%bucket, %peer, "sealed the bucket's key ring to a peer");
                    Response::Keyring { share }
                }
                Err(why) => refuse(why),
            };
            write_msg(&mut send, &answer)
                .await
                .map_err(|e| e.to_string())?;
        }
        Request::BlobSet {
            bucket,
            proof,
            version,
        } => match proven(&inner, &peer, &bucket, &proof) {
            Err(why) => write_msg(&mut send, &refuse(why))
                .await
                .map_err(|e| e.to_string())?,
            Ok(held) => {
                let store = inner.state.store().clone();
                let made = tokio::task::spawn_blocking(move || blob_set(&store, held, &version))
                    .await
                    .map_err(|e| e.to_string())?;
                match made {
                    Err(why) => {
                        tracing::debug!(%peer, %bucket, %version, why, "no blob set statement for a replica");
                        write_msg(&mut send, &refuse(why))
                            .await
                            .map_err(|e| e.to_string())?
                    }
                    Ok(blobs) => {
                        send_msg(&mut send, &Response::Noted).await?;
                        for (h, bytes) in &blobs {
                            send_blob(&inner, &mut send, h, bytes).await?;
                        }
                    }
                }
            }
        },
        Request::JournalCopy {
            bucket,
            proof,
            file,
            offset,
            bytes,
        } => {
            let answer = match proven(&inner, &peer, &bucket, &proof)
                .and_then(|held| is_member(&inner, &peer, &bucket, &held).map(|()| held))
            {
                Err(why) => refuse(why),
                Ok(held) => keep_journal_copy(&inner, peer, bucket, held, file, offset, bytes)
                    .await
                    .unwrap_or_else(refuse),
            };
            write_msg(&mut send, &answer)
                .await
                .map_err(|e| e.to_string())?;
        }
        Request::JournalCopies { bucket, proof } => match proven(&inner, &peer, &bucket, &proof) {
            Err(why) => write_msg(&mut send, &refuse(why))
                .await
                .map_err(|e| e.to_string())?,
            Ok(_) => {
                let root = inner.state.root().to_path_buf();
                let copies = tokio::task::spawn_blocking(move || {
                    crate::bucket::journal::copies::read_all(&root, &bucket)
                })
                .await
                .map_err(|e| e.to_string())?;
                send_msg(&mut send, &Response::Noted).await?;
                for copy in copies.iter().filter(|c| c.bytes.len() <= MAX_COPY) {
                    let frame = CopyFrame {
                        writer: copy.writer,
                        file: copy.file,
                        len: copy.bytes.len() as u32,
                    };
                    send_msg(&mut send, &frame).await?;
                    write_within(&mut send, &copy.bytes).await?;
                }
            }
        },
    }
    send.finish().map_err(|e| e.to_string())?;
    // Let the peer read everything before the stream goes.
    let _ = send.stopped().await;
    Ok(())
}
