//! Signed manifests: one per bucket version.
//!
//! A manifest names the bucket, the root directory node (its key sealed with
//! the bucket secret), the `previous` version (and `merged`, the second parent
//! of a merge), its `height`, the key shares, and is signed by the node that
//! wrote it. Manifests are stored as plain (unencrypted) blobs: they hold no
//! plaintext and no unwrapped key, and any replica can check their provenance.
//!
//! Blob layout: `JAXM` magic, then the canonical encoding of [`ManifestBody`]
//! (see [`super::codec`]), then a 64-byte Ed25519 signature over a domain
//! separator and those body bytes.
//!
//! The signature says which node wrote a manifest, not that it may: any
//! identity can sign. What proves a manifest was written by a holder of the
//! bucket secret is its root key, sealed with that secret and bound (as
//! associated data) to the rest of the body in format 2: copied into another
//! body it no longer opens. Format 1 manifests (before the binding) are
//! read as history but never taken from a peer as a head; the content
//! address of each parent then vouches for everything below a bound head.

use serde::{Deserialize, Serialize};

use super::codec;
use super::error::{BucketError, Result};
use super::tree::Timestamp;
use crate::crypto::{Identity, KeyShare, NodeId, SecretKey, SIGNATURE_LEN};
use crate::store::{BlobStore, Hash};

pub const MAGIC: &[u8; 4] = b"JAXM";

/// Chunk sizes a bucket may have: powers of two from 4 KiB to 16 MiB.
pub fn valid_chunk_size(cs: u32) -> bool {
    cs.is_power_of_two() && (4096..=16 << 20).contains(&cs)
}
const SIGNING_CONTEXT: &[u8] = b"jax-csi manifest v1\0";

/// A bucket's 128-bit id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BucketId(pub [u8; 16]);

impl BucketId {
    pub fn generate() -> Result<Self> {
        let mut b = [0u8; 16];
        crate::crypto::random_bytes(&mut b)?;
        Ok(Self(b))
    }
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    pub fn from_hex(s: &str) -> Result<Self> {
        let bad =
            || BucketError::InvalidArgument(format!("bucket id {s:?} is not 32 hex characters"));
        let v = hex::decode(s).map_err(|_| bad())?;
        Ok(Self(v.try_into().map_err(|_| bad())?))
    }
}

impl std::fmt::Display for BucketId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Debug for BucketId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BucketId({})", self.to_hex())
    }
}

impl std::str::FromStr for BucketId {
    type Err = BucketError;
    fn from_str(s: &str) -> Result<Self> {
        Self::from_hex(s)
    }
}

/// The signed content of a manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestBody {
    pub bucket_id: BucketId,
    pub height: u64,
    pub previous: Option<Hash>,
    /// The other head this version merged in, if it is a merge.
    pub merged: Option<Hash>,
    /// Address of the sealed root directory node.
    pub root: Hash,
    /// The root directory's key, sealed with the bucket secret.
    pub root_key: Vec<u8>,
    pub chunk_size: u32,
    pub quota: Option<u64>,
    /// Logical bytes held by files (what the quota counts).
    pub used_bytes: u64,
    /// Number of entries (files, directories, symlinks) in the tree.
    pub entries: u64,
    /// The bucket secret sealed to each identity allowed to read and write.
    pub shares: Vec<KeyShare>,
    pub author: NodeId,
    pub created_at: Timestamp,
}

impl ManifestBody {
    /// Whether this version shares the bucket with `node` (a member: it may
    /// read the bucket and write the next version).
    pub fn shares_with(&self, node: &NodeId) -> bool {
        self.share_for(node).is_some()
    }

    /// The share sealed to `node`, when it is a member.
    pub fn share_for(&self, node: &NodeId) -> Option<&KeyShare> {
        self.shares.iter().find(|s| s.recipient == *node)
    }

    /// Seal `root_key` into this body, bound to everything else in it: call
    /// it last, once every other field has its final value.
    pub fn seal_root_key(&mut self, secret: &SecretKey, root_key: &[u8; 32]) -> Result<()> {
        let binding = root_key_binding(self)?;
        self.root_key = secret.seal_with_aad(root_key, &binding)?;
        Ok(())
    }
}

impl ManifestBody {
    /// This body as a forger makes it (tests of forged history): `author`
    /// claims it, follows `previous` at `height`, and adds itself to the
    /// shares with a copy of one that opens nothing for it.
    #[cfg(test)]
    pub fn claimed_by(&self, author: NodeId, previous: Option<Hash>, height: u64) -> Self {
        let mut body = self.clone();
        body.previous = previous;
        body.merged = None;
        body.height = height;
        body.author = author;
        let mut share = body.shares[0].clone();
        share.recipient = author;
        body.shares.push(share);
        body
    }
}

/// What a format 2 root key is bound to: a hash of the body with the
/// sealed root key left out (it cannot cover itself).
pub fn root_key_binding(body: &ManifestBody) -> Result<[u8; 32]> {
    let unsealed = ManifestBody {
        root_key: Vec::new(),
        ..body.clone()
    };
    let bytes = codec::encode(codec::MANIFEST_VERSION, codec::Tag::Manifest, &unsealed)?;
    Ok(blake3::derive_key(
        "jax-csi manifest root key binding v2",
        &bytes,
    ))
}

/// A manifest whose signature has been checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub body: ManifestBody,
    pub signature: [u8; SIGNATURE_LEN],
    /// Its format version: [`codec::MANIFEST_VERSION`] for what is signed
    /// now, [`codec::MANIFEST_UNBOUND`] for history from before the binding.
    pub format: u8,
}

pub fn signing_input(body_bytes: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(SIGNING_CONTEXT.len() + body_bytes.len());
    msg.extend_from_slice(SIGNING_CONTEXT);
    msg.extend_from_slice(body_bytes);
    msg
}

impl Manifest {
    /// Sign `body` with `identity`, which must hold one of its shares.
    pub fn sign(body: ManifestBody, identity: &Identity) -> Result<Self> {
        Self::sign_as(codec::MANIFEST_VERSION, body, identity)
    }

    /// Sign `body` as format 1, as releases before the binding did (tests
    /// of upgrades and of forgeries made from old history).
    #[cfg(test)]
    pub fn sign_unbound(body: ManifestBody, identity: &Identity) -> Result<Self> {
        Self::sign_as(codec::MANIFEST_UNBOUND, body, identity)
    }

    fn sign_as(format: u8, body: ManifestBody, identity: &Identity) -> Result<Self> {
        let bytes = codec::encode(format, codec::Tag::Manifest, &body)?;
        let signature = identity.sign(&signing_input(&bytes));
        Ok(Self {
            body,
            signature,
            format,
        })
    }

    /// Whether the root key is bound to this body (format 2 on): only then
    /// does opening it prove the manifest came from a holder of the secret.
    pub fn is_bound(&self) -> bool {
        self.format >= codec::MANIFEST_VERSION
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let body = codec::encode(self.format, codec::Tag::Manifest, &self.body)?;
        let mut out = Vec::with_capacity(4 + body.len() + SIGNATURE_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&body);
        out.extend_from_slice(&self.signature);
        Ok(out)
    }

    /// Decode and verify: the format, the signature, and that the author is
    /// one of the identities the manifest shares the bucket with.
    pub fn from_bytes(hash: Hash, bytes: &[u8]) -> Result<Self> {
        let bad = |reason: &str| BucketError::Format {
            what: "manifest",
            reason: reason.to_string(),
        };
        if bytes.len() < MAGIC.len() + 2 + SIGNATURE_LEN || &bytes[..4] != MAGIC {
            return Err(bad("missing magic or truncated"));
        }
        let (body_bytes, sig) = bytes[4..].split_at(bytes.len() - 4 - SIGNATURE_LEN);
        let signature: [u8; SIGNATURE_LEN] = sig.try_into().expect("split at signature length");
        let (format, encoded) = codec::version_of(
            &[codec::MANIFEST_UNBOUND, codec::MANIFEST_VERSION],
            codec::Tag::Manifest,
            body_bytes,
            "manifest",
        )?;
        let body: ManifestBody = codec::decode_body(encoded, "manifest")?;
        if !valid_chunk_size(body.chunk_size) {
            return Err(bad(&format!(
                "chunk size {} is not a power of two from 4 KiB to 16 MiB",
                body.chunk_size
            )));
        }
        // A signature is checked once per content: history walks and
        // merges load the same manifests again and again, and a check
        // costs far more than hashing the bytes to find it was done.
        let content = Hash::of(bytes);
        let checked = VERIFIED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&content);
        if !checked {
            body.author
                .verify(&signing_input(body_bytes), &signature)
                .map_err(|_| BucketError::BadSignature {
                    manifest: hash,
                    reason: format!("signature does not verify for author {}", body.author),
                })?;
            VERIFIED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(content, ());
        }
        if !body.shares_with(&body.author) {
            return Err(BucketError::BadSignature {
                manifest: hash,
                reason: format!("author {} holds no key share of the bucket", body.author),
            });
        }
        Ok(Self {
            body,
            signature,
            format,
        })
    }

    /// Store this manifest; returns its address.
    pub fn store(&self, store: &BlobStore) -> Result<Hash> {
        Ok(store.put(&self.to_bytes()?)?)
    }

    /// Load and verify the manifest at `hash`.
    pub fn load(store: &BlobStore, hash: &Hash) -> Result<Self> {
        let bytes = store.get(hash).map_err(|e| match e {
            crate::store::StoreError::NotFound(h) => BucketError::VersionNotFound(h),
            other => other.into(),
        })?;
        Self::from_bytes(*hash, &bytes)
    }

    /// The parents of this version (previous first).
    pub fn parents(&self) -> impl Iterator<Item = Hash> + '_ {
        self.body
            .previous
            .iter()
            .chain(self.body.merged.iter())
            .copied()
    }
}

/// Manifests (by the hash of their bytes) whose signature verified.
static VERIFIED: std::sync::LazyLock<std::sync::Mutex<crate::cache::BoundedMap<Hash, ()>>> =
    std::sync::LazyLock::new(|| std::sync::Mutex::new(crate::cache::BoundedMap::new(1 << 16)));

/// Check that `child` (at `child_hash`) correctly links to its parent manifests.
pub fn check_link(child_hash: Hash, child: &Manifest, parents: &[Manifest]) -> Result<()> {
    check_link_held(child_hash, child, parents, false)
}

/// [`check_link`] where some of `child`'s parents were pruned here
/// (`some_pruned`): only what the parents still held can tell is checked.
/// The child must be higher than each of them, and its author a member of
/// one of them unless the pruned parent is the one that made it a member.
pub fn check_link_held(
    child_hash: Hash,
    child: &Manifest,
    parents: &[Manifest],
    some_pruned: bool,
) -> Result<()> {
    let broken = |reason: String| BucketError::ChainBroken {
        at: child_hash,
        reason,
    };
    if parents.is_empty() {
        if child.body.height != 0 {
            return Err(broken(format!(
                "height {} but no previous version",
                child.body.height
            )));
        }
        return Ok(());
    }
    for p in parents {
        if p.body.bucket_id != child.body.bucket_id {
            return Err(broken(format!(
                "parent belongs to bucket {}, not {}",
                p.body.bucket_id, child.body.bucket_id
            )));
        }
    }
    // Only an identity the previous version shares the bucket with may
    // write the next one: a node cannot add itself and sign its way in.
    if !some_pruned
        && !parents
            .iter()
            .any(|p| p.body.shares_with(&child.body.author))
    {
        return Err(broken(format!(
            "author {} holds no share of the version it follows",
            child.body.author
        )));
    }
    let parent_height = parents.iter().map(|p| p.body.height).max().unwrap_or(0);
    // A parent at the largest height (any signer may write one) has no
    // valid child: an error, not an overflow.
    let follows = match parent_height.checked_add(1) {
        Some(next) if some_pruned => child.body.height >= next,
        Some(next) => child.body.height == next,
        None => false,
    };
    if !follows {
        return Err(broken(format!(
            "height {} does not follow parent height {parent_height}",
            child.body.height,
        )));
    }
    Ok(())
}
