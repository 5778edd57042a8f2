//! The sync protocol's messages: one request per bi-directional QUIC stream,
//! a postcard enum with a length prefix and a hard size cap. The requester
//! finishes its send side after the request; the responder answers with one
//! message, except for blobs, which stream back as a sequence of frames.
//! An incompatible change bumps the ALPN's version suffix.

use serde::{Deserialize, Serialize};

use crate::bucket::BucketId;
use crate::store::Hash;

/// The protocol's ALPN: `/jax-csi/sync/<version>`.
pub const ALPN: &[u8] = b"/jax-csi/sync/1";
/// The largest request or response message (not counting blob frames).
pub const MAX_MESSAGE: usize = 1 << 20;
/// The largest blob a peer may send (a 16 MiB chunk, sealed, with room).
pub const MAX_BLOB: usize = (16 << 20) + (1 << 20);
/// Blobs a blob set answer holds at most: a statement, a root, 256 leaves.
pub const MAX_SET_BLOBS: usize = 2 + 256;
/// Blobs one request may ask for.
pub const MAX_BLOBS_PER_REQUEST: usize = 4096;
/// Buckets one heads request may ask about.
pub const MAX_BUCKETS_PER_REQUEST: usize = 4096;
/// Manifests one history answer holds at most, and their bytes.
pub const MAX_HISTORY: usize = 1024;
pub const MAX_HISTORY_BYTES: usize = 8 << 20;
/// Tree blobs a bundle answer holds beyond its history, and their bytes.
pub const MAX_BUNDLE_TREE_BLOBS: usize = 1024;
pub const MAX_BUNDLE_TREE_BYTES: usize = 8 << 20;
/// Versions a history request may name as held.
pub const MAX_HAVE: usize = 256;

/// Proof that the requester holds the bucket secret: a keyed hash over the
/// bucket, the requester and the responder (see `bucket::ProofKey`).
pub type Proof = [u8; 32];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// What are your heads of these buckets? (anti-entropy)
    Heads { buckets: Vec<(BucketId, Proof)> },
    /// My head of `bucket` is now `head` (after a commit or a merge).
    Announce {
        bucket: BucketId,
        proof: Proof,
        head: Hash,
    },
    /// Send these blobs of `bucket` (manifests, directory nodes, chunks).
    GetBlobs {
        bucket: BucketId,
        proof: Proof,
        hashes: Vec<Hash>,
    },
    /// Make me a member of `bucket` (a share of its secret in a new head),
    /// so the versions I write are accepted.
    Enroll { bucket: BucketId, proof: Proof },
    /// Send the manifests of `head` and its ancestors, newest first, not
    /// going past the versions in `have` (at most [`MAX_HISTORY`]): a
    /// node behind by many versions gets the chain in one round trip, not
    /// one per level. Answered as [`Request::GetBlobs`] is (Noted, then
    /// blob frames) until the stream ends. Added after version 1 of the
    /// protocol: a node from before it drops the stream, and the asker
    /// walks the chain with GetBlobs instead.
    History {
        bucket: BucketId,
        proof: Proof,
        head: Hash,
        have: Vec<Hash>,
    },
    /// [`Request::History`], followed by what the asker needs of `head`'s
    /// tree: the directory nodes and chunks that differ from the newest
    /// version in `have` this node holds (at most [`MAX_BUNDLE_TREE_BLOBS`]
    /// and [`MAX_BUNDLE_TREE_BYTES`]; the asker fetches any rest). A pull
    /// behind by a few versions then takes one round trip, not one per
    /// level of the chain and of the tree. Answered as
    /// [`Request::GetBlobs`] is. Added with the pull bundles: a node from
    /// before them drops the stream, and the asker sends a
    /// [`Request::History`].
    Bundle {
        bucket: BucketId,
        proof: Proof,
        head: Hash,
        have: Vec<Hash>,
    },
    /// Send the blob set statement of `version` (see `bucket::blob_set`),
    /// then its root and its leaves: what a blind replica checks a version
    /// by. Answered as [`Request::GetBlobs`] is, the statement first. Added
    /// with blind replicas: a node from before them drops the stream.
    BlobSet {
        bucket: BucketId,
        proof: Proof,
        version: Hash,
    },
    /// Seal me the bucket's secrets (its key ring: the base and every
    /// rotation's epoch), under the same proof as [`Request::Enroll`] but
    /// without making me a member: what a node cloning a version written
    /// after a rotation needs to open it. Added with rotations: a node
    /// from before them drops the stream.
    Keyring { bucket: BucketId, proof: Proof },
    /// Keep these bytes of my active journal file (`syncReplicas`: my
    /// fsync returns once enough replicas hold its frames), written at
    /// `offset` of your copy and made durable before you answer
    /// [`Response::JournalHeld`]. Refused while `file`'s base version is
    /// not held here (it is fetched meanwhile): the copy is replayed on
    /// it. At most [`MAX_COPY_BYTES`]. Added with journal copies: a node
    /// from before them drops the stream.
    JournalCopy {
        bucket: BucketId,
        proof: Proof,
        file: crate::bucket::journal::FileId,
        offset: u64,
        #[serde(with = "crate::bucket::journal::serde_bytes")]
        bytes: Vec<u8>,
    },
    /// Send every journal copy you hold of `bucket` (what a node staging
    /// it replays: the writer may be gone). Answered by `Noted`, then a
    /// [`CopyFrame`] and its bytes per copy, until the stream ends.
    JournalCopies { bucket: BucketId, proof: Proof },
    /// [`Request::GetBlobs`] for a blind replica's rebuild: answered the
    /// same way, but the responder rests after each blob while its own
    /// pods keep it busy (`sync::pace::PodLoad`). Added with that: a node
    /// from before drops the stream, and the asker sends a GetBlobs.
    GetBlobsBackground {
        bucket: BucketId,
        proof: Proof,
        hashes: Vec<Hash>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// For each bucket asked about: the head here, if this node has it.
    Heads(Vec<(BucketId, Option<Hash>)>),
    /// The announcement was taken in.
    Noted,
    /// The requester is a member at this head.
    Enrolled { head: Hash },
    /// Refused: not a registered node, a wrong proof, a bucket not here.
    Refused { reason: String },
    /// The bucket's key ring, sealed to the requester's identity.
    Keyring { share: crate::crypto::KeyShare },
    /// The copy of `file` here holds its first `have` bytes, durably.
    JournalHeld {
        file: crate::bucket::journal::FileId,
        have: u64,
    },
}

/// What precedes each copy in a [`Request::JournalCopies`] answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyFrame {
    pub writer: crate::crypto::NodeId,
    pub file: crate::bucket::journal::FileId,
    pub len: u32,
}

/// Bytes one [`Request::JournalCopy`] carries at most (within [`MAX_MESSAGE`]).
pub const MAX_COPY_BYTES: usize = 768 << 10;
/// The largest journal copy a peer may send.
pub const MAX_COPY: usize = 512 << 20;

/// What precedes each blob in a [`Request::GetBlobs`] answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobFrame {
    /// The blob follows: `len` bytes.
    Blob { hash: Hash, len: u32 },
    /// Not on this node.
    Missing { hash: Hash },
}

/// Encode with a 4-byte length prefix.
pub fn frame<T: Serialize>(msg: &T) -> Vec<u8> {
    let body = postcard::to_stdvec(msg).expect("protocol messages serialize");
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("message of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("stream: {0}")]
    Stream(String),
}

/// The body length a message's 4-byte prefix announces, refused past
/// [`MAX_MESSAGE`] before anything is allocated for it.
pub fn body_len(prefix: [u8; 4]) -> Result<usize, WireError> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len > MAX_MESSAGE {
        return Err(WireError::TooLarge(len));
    }
    Ok(len)
}

/// Decode a message body (after its length prefix).
pub fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, WireError> {
    postcard::from_bytes(body).map_err(|e| WireError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_junk_is_refused() {
        let r = Request::Announce {
            bucket: BucketId([3; 16]),
            proof: [1; 32],
            head: Hash([2; 32]),
        };
        let f = frame(&r);
        assert_eq!(
            u32::from_le_bytes(f[..4].try_into().unwrap()) as usize,
            f.len() - 4
        );
        assert_eq!(decode::<Request>(&f[4..]).unwrap(), r);
        assert!(decode::<Request>(&[0xff, 0xff, 0xff]).is_err());
        assert!(decode::<Request>(&[]).is_err());
    }
}
