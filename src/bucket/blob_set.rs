//! What a version is made of, said without its tree being opened: the
//! commitment a blind replica (#28) fetches and checks by.
//!
//! A member of the bucket (a node that can open the tree) lists every
//! blob a version's tree reaches (directory nodes and chunks) in a
//! **blob set**, stored as plain blobs of ciphertext addresses: 256
//! leaves (the addresses sorted, split by their first byte) and a root
//! naming the leaves. It then signs a **statement**: bucket, version,
//! the set's root and size. A replica without the bucket's key checks
//! that the statement's signer holds a share in the version's signed
//! manifest, that the root and each leaf hash to what names them, and
//! that every address in the leaves is in its store (each blob checked
//! against its address when it arrived). Only then does it call itself
//! in sync at that version: a peer that sends a short list, a wrong
//! blob or a statement of its own making is caught by one of these.
//!
//! Leaves of unchanged address ranges are the same blobs from one
//! version to the next, so a replica that follows a bucket fetches the
//! leaves that changed and the blobs they add.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::codec;
use super::error::{BucketError, Result};
use super::manifest::{BucketId, Manifest};
use crate::crypto::{Identity, NodeId, SIGNATURE_LEN};
use crate::store::{BlobStore, Hash};

pub const STATEMENT_MAGIC: &[u8; 4] = b"JAXS";
const ROOT_MAGIC: &[u8; 4] = b"JAXR";
const LEAF_MAGIC: &[u8; 4] = b"JAXL";
const SIGNING_CONTEXT: &[u8] = b"jax-csi blob set v1\0";
const STATEMENT_VERSION: u8 = 1;
/// Leaves of a set: one per first byte of an address.
const FANOUT: usize = 256;

/// The signed content of a statement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementBody {
    pub bucket_id: BucketId,
    /// The version (manifest address) the set belongs to.
    pub version: Hash,
    /// Address of the set's root blob.
    pub root: Hash,
    /// How many addresses the set holds.
    pub blobs: u64,
    /// The member that listed the set and signed this.
    pub signer: NodeId,
}

/// A statement whose signature has been checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    pub body: StatementBody,
    signature: [u8; SIGNATURE_LEN],
}

impl Statement {
    pub fn sign(body: StatementBody, identity: &Identity) -> Result<Self> {
        let encoded = codec::encode(STATEMENT_VERSION, codec::Tag::BlobSet, &body)?;
        let signature = identity.sign(&signing_input(&encoded));
        Ok(Self { body, signature })
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let encoded = codec::encode(STATEMENT_VERSION, codec::Tag::BlobSet, &self.body)?;
        let mut out = Vec::with_capacity(4 + encoded.len() + SIGNATURE_LEN);
        out.extend_from_slice(STATEMENT_MAGIC);
        out.extend_from_slice(&encoded);
        out.extend_from_slice(&self.signature);
        Ok(out)
    }

    /// Decode and check the signature (not yet who signed: see [`Statement::vouches_for`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let bad = |reason: &str| BucketError::Format {
            what: "blob set statement",
            reason: reason.to_string(),
        };
        if bytes.len() < 4 + 2 + SIGNATURE_LEN || &bytes[..4] != STATEMENT_MAGIC {
            return Err(bad("missing magic or truncated"));
        }
        let (encoded, sig) = bytes[4..].split_at(bytes.len() - 4 - SIGNATURE_LEN);
        let signature: [u8; SIGNATURE_LEN] = sig.try_into().expect("split at signature length");
        let (_, body) = codec::version_of(
            &[STATEMENT_VERSION],
            codec::Tag::BlobSet,
            encoded,
            "blob set statement",
        )?;
        let body: StatementBody = codec::decode_body(body, "blob set statement")?;
        body.signer
            .verify(&signing_input(encoded), &signature)
            .map_err(|_| bad("signature does not verify"))?;
        Ok(Self { body, signature })
    }

    /// Whether this statement may be taken for `version` of `bucket`, whose
    /// verified manifest is `m`: about that version, signed by a node the
    /// version shares the bucket with.
    pub fn vouches_for(&self, bucket: &BucketId, version: &Hash, m: &Manifest) -> Result<()> {
        let refused = |reason: String| BucketError::Format {
            what: "blob set statement",
            reason,
        };
        if self.body.bucket_id != *bucket || self.body.version != *version {
            return Err(refused(format!(
                "it is about {} at {}, not {bucket} at {version}",
                self.body.bucket_id, self.body.version
            )));
        }
        if m.body.bucket_id != *bucket {
            return Err(refused("the version belongs to another bucket".into()));
        }
        if !m.body.shares_with(&self.body.signer) {
            return Err(refused(format!(
                "signed by {}, which is not a member at that version",
                self.body.signer
            )));
        }
        Ok(())
    }
}

fn signing_input(encoded: &[u8]) -> Vec<u8> {
    let mut msg = SIGNING_CONTEXT.to_vec();
    msg.extend_from_slice(encoded);
    msg
}

/// A blob set as the blobs that hold it.
pub struct EncodedSet {
    pub root: Vec<u8>,
    /// Leaf blobs, the empty ones left out.
    pub leaves: Vec<Vec<u8>>,
}

/// Lay `set` out as a root and its leaves.
pub fn encode_set(set: &HashSet<Hash>) -> EncodedSet {
    let mut by_first: Vec<Vec<Hash>> = vec![Vec::new(); FANOUT];
    for h in set {
        by_first[h.0[0] as usize].push(*h);
    }
    let mut root = ROOT_MAGIC.to_vec();
    root.extend_from_slice(&(set.len() as u64).to_le_bytes());
    let mut leaves = Vec::new();
    for mut list in by_first {
        if list.is_empty() {
            root.extend_from_slice(&[0; 32]);
            continue;
        }
        list.sort();
        let mut leaf = LEAF_MAGIC.to_vec();
        for h in &list {
            leaf.extend_from_slice(&h.0);
        }
        root.extend_from_slice(&Hash::of(&leaf).0);
        leaves.push(leaf);
    }
    EncodedSet { root, leaves }
}

fn malformed(reason: &str) -> BucketError {
    BucketError::Format {
        what: "blob set",
        reason: reason.to_string(),
    }
}

/// The leaves a root names (by first byte), and the count it claims.
pub fn decode_root(bytes: &[u8]) -> Result<(u64, Vec<(u8, Hash)>)> {
    if bytes.len() != 4 + 8 + 32 * FANOUT || &bytes[..4] != ROOT_MAGIC {
        return Err(malformed("not a blob set root"));
    }
    let count = u64::from_le_bytes(bytes[4..12].try_into().expect("8 bytes"));
    let leaves = bytes[12..]
        .chunks_exact(32)
        .enumerate()
        .filter(|(_, h)| h.iter().any(|b| *b != 0))
        .map(|(i, h)| (i as u8, Hash(h.try_into().expect("32 bytes"))))
        .collect();
    Ok((count, leaves))
}

/// The addresses in the leaf of first byte `first`: each must start with
/// it, in strictly rising order (one way to write a set, so a leaf that
/// verifies is the one the signer meant).
pub fn decode_leaf(first: u8, bytes: &[u8]) -> Result<Vec<Hash>> {
    if bytes.len() < 4 || &bytes[..4] != LEAF_MAGIC || !(bytes.len() - 4).is_multiple_of(32) {
        return Err(malformed("not a blob set leaf"));
    }
    let list: Vec<Hash> = bytes[4..]
        .chunks_exact(32)
        .map(|h| Hash(h.try_into().expect("32 bytes")))
        .collect();
    if list.iter().any(|h| h.0[0] != first) || list.windows(2).any(|w| w[0] >= w[1]) {
        return Err(malformed("a leaf out of order or out of its range"));
    }
    Ok(list)
}

/// A statement and its set read back from `store`: what a replica holds.
pub struct HeldSet {
    pub statement: Statement,
    /// The statement, root and leaf blobs themselves.
    pub own_blobs: Vec<Hash>,
    /// The addresses the set lists.
    pub members: HashSet<Hash>,
}

/// Read the statement at `statement` and its set from `store`, checking
/// each blob against the address that names it (the store does) and the
/// count the root claims.
pub fn read_held(store: &BlobStore, statement: &Hash) -> Result<HeldSet> {
    let s = Statement::from_bytes(&store.get(statement)?)?;
    let root = store.get(&s.body.root)?;
    let (count, leaves) = decode_root(&root)?;
    let mut own_blobs = vec![*statement, s.body.root];
    let mut members = HashSet::new();
    for (first, leaf) in leaves {
        members.extend(decode_leaf(first, &store.get(&leaf)?)?);
        own_blobs.push(leaf);
    }
    if members.len() as u64 != count || count != s.body.blobs {
        return Err(malformed("the set does not hold as many blobs as it says"));
    }
    Ok(HeldSet {
        statement: s,
        own_blobs,
        members,
    })
}

impl super::Bucket {
    /// Every blob `version`'s tree reaches: its directory nodes (the
    /// root's link table among them) and their chunks and patches. The
    /// directory nodes must be in the local store; chunks need not be.
    pub fn blobs_of(&self, version: &Hash) -> Result<HashSet<Hash>> {
        let mut out = HashSet::new();
        let mut level = vec![self.root_of(version)?];
        while let Some(dir) = level.pop() {
            if !out.insert(dir.hash()) {
                continue;
            }
            let c = self.dir_contents(&dir)?;
            out.extend(c.chunks);
            level.extend(c.dirs);
        }
        Ok(out)
    }

    /// The address of a statement, signed by this node, of `version`'s
    /// blob set; the set and the statement are stored. The last one made
    /// is remembered (`STATEMENT`), so a replica that asks again for the
    /// same version costs a read.
    pub fn statement_for(&self, version: &Hash) -> Result<Hash> {
        let cache = self.core.dir.join("STATEMENT");
        if let Ok(bytes) = std::fs::read(&cache) {
            if bytes.len() == 64 && bytes[..32] == version.0 {
                let made = Hash(bytes[32..].try_into().expect("32 bytes"));
                if self.core.store.contains(&made) {
                    return Ok(made);
                }
            }
        }
        let set = self.blobs_of(version)?;
        let encoded = encode_set(&set);
        for leaf in &encoded.leaves {
            self.core.store.put(leaf)?;
        }
        let root = self.core.store.put(&encoded.root)?;
        let statement = Statement::sign(
            StatementBody {
                bucket_id: self.id(),
                version: *version,
                root,
                blobs: set.len() as u64,
                signer: self.core.identity.node_id(),
            },
            &self.core.identity,
        )?;
        let made = self.core.store.put(&statement.to_bytes()?)?;
        let mut line = version.0.to_vec();
        line.extend_from_slice(&made.0);
        // A cache: lost in a crash, it is made again when asked.
        crate::durable::replace_quickly(&cache, &line).map_err(BucketError::io(&cache))?;
        Ok(made)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: u8) -> HashSet<Hash> {
        (0..n).map(|i| Hash::of(&[i])).collect()
    }

    #[test]
    fn a_set_round_trips_through_root_and_leaves() {
        let s = set(200);
        let enc = encode_set(&s);
        let (count, leaves) = decode_root(&enc.root).unwrap();
        assert_eq!(count, 200);
        let mut back = HashSet::new();
        for ((first, hash), leaf) in leaves.iter().zip(&enc.leaves) {
            assert_eq!(Hash::of(leaf), *hash);
            back.extend(decode_leaf(*first, leaf).unwrap());
        }
        assert_eq!(back, s);
    }

    #[test]
    fn a_leaf_out_of_order_or_range_is_refused() {
        let enc = encode_set(&set(50));
        let (_, leaves) = decode_root(&enc.root).unwrap();
        let (first, _) = leaves[0];
        assert!(decode_leaf(first.wrapping_add(1), &enc.leaves[0]).is_err());
        let mut swapped = LEAF_MAGIC.to_vec();
        let a = [first; 32];
        let mut b = [first; 32];
        b[31] = 0;
        swapped.extend_from_slice(&a);
        swapped.extend_from_slice(&b);
        assert!(decode_leaf(first, &swapped).is_err());
    }

    #[test]
    fn a_statement_checks_its_signature() {
        let id = Identity::generate().unwrap();
        let body = StatementBody {
            bucket_id: BucketId([1; 16]),
            version: Hash([2; 32]),
            root: Hash([3; 32]),
            blobs: 7,
            signer: id.node_id(),
        };
        let s = Statement::sign(body.clone(), &id).unwrap();
        let bytes = s.to_bytes().unwrap();
        assert_eq!(Statement::from_bytes(&bytes).unwrap().body, body);
        let mut forged = bytes.clone();
        let at = forged.len() - SIGNATURE_LEN - 3;
        forged[at] ^= 1;
        assert!(Statement::from_bytes(&forged).is_err());
    }
}
