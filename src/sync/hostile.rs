//! What a hostile peer can send, for the test suite's hostile-node harness
//! (`tests/multinode.rs`): a real engine with a compromised node's identity
//! and state speaks the real protocol, with none of the checks an honest
//! client makes on what it asks for. Not used by the driver itself.

use std::time::Duration;

use iroh::endpoint::SendStream;

use super::client::{ask, blob_answer_for, connection, peer_err};
use super::proto::{BlobFrame, Request, Response};
use super::wire::{read_bytes, read_msg};
use super::{Peer, SyncEngine, SyncError};
use crate::bucket::BucketId;
use crate::store::Hash;

/// Streams a hostile peer opened and never finished; they stay open while
/// this is held.
pub struct Stalled {
    pub opened: usize,
    _streams: Vec<SendStream>,
}

impl SyncEngine {
    /// Make `peer` reachable from this engine (its address known), as if
    /// it held `bucket`.
    #[doc(hidden)]
    pub fn hostile_know(&self, bucket: BucketId, peer: Peer) {
        self.set_peers(bucket, vec![peer]);
    }

    /// Send `req` as it is; the one message answered.
    #[doc(hidden)]
    pub async fn hostile_ask(&self, peer: &Peer, req: &Request) -> Result<Response, SyncError> {
        ask(&self.inner, &peer.node, req).await
    }

    /// Send a blob-answered request (`GetBlobs`, `History`, `BlobSet`) as
    /// it is; the blobs sent (address and bytes, not stored) and the
    /// hashes answered missing.
    #[doc(hidden)]
    pub async fn hostile_blobs(
        &self,
        peer: &Peer,
        req: &Request,
    ) -> Result<(Vec<(Hash, Vec<u8>)>, Vec<Hash>), SyncError> {
        let mut recv = blob_answer_for(&self.inner, &peer.node, req).await?;
        let (mut sent, mut missing) = (Vec::new(), Vec::new());
        let err = |e| peer_err(&peer.node, e);
        while let Some(frame) = read_msg::<BlobFrame>(&mut recv).await.map_err(err)? {
            match frame {
                BlobFrame::Missing { hash } => missing.push(hash),
                BlobFrame::Blob { hash, len } => sent.push((
                    hash,
                    read_bytes(&mut recv, len as usize).await.map_err(err)?,
                )),
            }
        }
        Ok((sent, missing))
    }

    /// Open up to `streams` streams to `peer`, each announcing a message of
    /// `announced` bytes and sending only its first bytes, and keep them
    /// open: a peer that starts requests and never finishes them. Streams
    /// the peer does not accept within `wait` are not counted.
    #[doc(hidden)]
    pub async fn hostile_stall(
        &self,
        peer: &Peer,
        streams: usize,
        announced: u32,
        wait: Duration,
    ) -> Stalled {
        let mut kept = Vec::new();
        for _ in 0..streams {
            let open = async {
                let conn = connection(&self.inner, &peer.node).await.ok()?;
                let (mut send, _recv) = conn.open_bi().await.ok()?;
                send.write_all(&announced.to_le_bytes()).await.ok()?;
                send.write_all(&[0u8; 16]).await.ok()?;
                Some(send)
            };
            match tokio::time::timeout(wait, open).await {
                Ok(Some(send)) => kept.push(send),
                _ => break,
            }
        }
        Stalled {
            opened: kept.len(),
            _streams: kept,
        }
    }

    /// Send the raw bytes of a request and return whether the peer
    /// answered anything but a refusal or a reset (a reply to junk).
    #[doc(hidden)]
    pub async fn hostile_junk(&self, peer: &Peer, bytes: &[u8]) -> bool {
        let conn = match connection(&self.inner, &peer.node).await {
            Ok(c) => c,
            Err(_) => return false,
        };
        let Ok((mut send, mut recv)) = conn.open_bi().await else {
            return false;
        };
        if send.write_all(bytes).await.is_err() || send.finish().is_err() {
            return false;
        }
        let answer =
            tokio::time::timeout(Duration::from_secs(15), read_msg::<Response>(&mut recv)).await;
        matches!(answer, Ok(Ok(Some(r))) if !matches!(r, Response::Refused { .. }))
    }
}
