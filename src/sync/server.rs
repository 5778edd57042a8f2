//! Answering peers: check who is asking before reading anything it asks
//! for — a registered node always; the bucket's secret proven for heads,
//! blobs and enrollment (holding the secret is what reading needs); a
//! member (a share at this node's head) for announcements, which lead to
//! versions it wrote being merged here. Refusals are answered and logged.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use iroh::endpoint::{Connection, RecvStream, SendStream};
use iroh::protocol::{AcceptError, ProtocolHandler};

use super::proto::{
    BlobFrame, Proof, Request, Response, MAX_BLOBS_PER_REQUEST, MAX_BUCKETS_PER_REQUEST,
};
use super::wire::{read_msg, write_msg};
use super::Inner;
use crate::bucket::{Bucket, BucketId};
use crate::crypto::NodeId;

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

impl ProtocolHandler for Handler {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let peer = NodeId(*conn.remote_id().as_bytes());
        if !self.inner.is_registered(&peer).await {
            self.inner.stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, "sync connection from a node that is not registered; refused");
            conn.close(1u32.into(), b"not a registered node");
            return Ok(());
        }
        while let Ok((send, recv)) = conn.accept_bi().await {
            let inner = self.inner.clone();
            tokio::spawn(async move {
                if let Err(e) = serve(inner, peer, send, recv).await {
                    tracing::debug!(%peer, error = %e, "sync request failed");
                }
            });
        }
        Ok(())
    }
}

/// The bucket, if `proof` shows `peer` holds its secret.
fn proven(
    inner: &Inner,
    peer: &NodeId,
    bucket: &BucketId,
    proof: &Proof,
) -> Result<Bucket, String> {
    let b = inner
        .open(bucket)
        .map_err(|_| format!("bucket {bucket} is not on this node"))?;
    let want = b.proof_key().proof(bucket, &peer.0, &inner.me.0);
    if !constant_time_eq(&want, proof) {
        inner.stats.refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%peer, %bucket, "sync request with a wrong proof; refused");
        return Err("the proof does not match the bucket's secret".into());
    }
    Ok(b)
}

/// [`proven`], and `peer` holds a share at this node's head.
fn member(
    inner: &Inner,
    peer: &NodeId,
    bucket: &BucketId,
    proof: &Proof,
) -> Result<Bucket, String> {
    let b = proven(inner, peer, bucket, proof)?;
    let head = b.head().map_err(|e| e.to_string())?;
    if !b.is_member_at(&head, peer).map_err(|e| e.to_string())? {
        inner.stats.refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%peer, %bucket, "sync request from a node that is not a member of the bucket; refused");
        return Err("not a member of the bucket here (enroll first)".into());
    }
    Ok(b)
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
    let Some(req) = read_msg::<Request>(&mut recv)
        .await
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
                        .and_then(|b| b.head().ok());
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
            let answer = match member(&inner, &peer, &bucket, &proof) {
                Ok(_) => {
                    inner
                        .stats
                        .announcements_received
                        .fetch_add(1, Ordering::Relaxed);
                    inner.add_peer(&bucket, &peer);
                    super::pulls::want(&inner, bucket, head, Some(peer));
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
        } => match proven(&inner, &peer, &bucket, &proof) {
            Err(why) => write_msg(&mut send, &refuse(why))
                .await
                .map_err(|e| e.to_string())?,
            Ok(_) => {
                write_msg(&mut send, &Response::Noted)
                    .await
                    .map_err(|e| e.to_string())?;
                // Blobs are read (and checked against their addresses) a
                // little ahead of the sending, on a blocking thread.
                let (tx, mut rx) = tokio::sync::mpsc::channel(2);
                let store = inner.state.store().clone();
                let wanted: Vec<_> = hashes.into_iter().take(MAX_BLOBS_PER_REQUEST).collect();
                tokio::task::spawn_blocking(move || {
                    for h in wanted {
                        if tx.blocking_send((h, store.get(&h))).is_err() {
                            return;
                        }
                    }
                });
                while let Some((h, blob)) = rx.recv().await {
                    let h = &h;
                    match blob {
                        Ok(bytes) => {
                            let f = BlobFrame::Blob {
                                hash: *h,
                                len: bytes.len() as u32,
                            };
                            write_msg(&mut send, &f).await.map_err(|e| e.to_string())?;
                            send.write_all(&bytes).await.map_err(|e| e.to_string())?;
                            crate::metrics::blob_served(bytes.len());
                            inner.stats.blobs_served.fetch_add(1, Ordering::Relaxed);
                            inner
                                .stats
                                .bytes_served
                                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                        }
                        Err(_) => {
                            write_msg(&mut send, &BlobFrame::Missing { hash: *h })
                                .await
                                .map_err(|e| e.to_string())?;
                        }
                    }
                }
            }
        },
        Request::Enroll { bucket, proof } => {
            let answer = match proven(&inner, &peer, &bucket, &proof) {
                Err(why) => refuse(why),
                Ok(_) => match inner.replicas.get().cloned() {
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
    }
    send.finish().map_err(|e| e.to_string())?;
    // Let the peer read everything before the stream goes.
    let _ = send.stopped().await;
    Ok(())
}
