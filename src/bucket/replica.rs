//! What replication needs of a bucket, with no network in it: the blobs a
//! version is made of (walked one directory at a time, so the caller can
//! fetch what is missing before looking further), a bucket imported from
//! the blobs a peer sent, and the key that proves to a peer that this node
//! holds the bucket's secret.

use std::collections::HashSet;

use super::error::{BucketError, Result};
use super::manifest::Manifest;
use super::tree::{DirNode, EntryKind, Link};
use super::{read_hashes, write_hashes, Bucket, BucketId, StateDir};
use crate::crypto::{Kek, SecretKey};
use crate::store::Hash;

/// A directory of a version: its node's address (and the key to read it).
#[derive(Clone, Debug)]
pub struct DirRef(Link);

impl DirRef {
    pub fn hash(&self) -> Hash {
        self.0.hash
    }
}

/// What one directory node lists: its subdirectories and its files' chunks.
#[derive(Clone, Debug, Default)]
pub struct DirContents {
    pub dirs: Vec<DirRef>,
    pub chunks: Vec<Hash>,
}

/// A key derived from the bucket secret: proves possession of the secret
/// to a peer that holds it too, and reveals nothing of it.
pub struct ProofKey([u8; 32]);

impl Drop for ProofKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl ProofKey {
    /// The proof key of the bucket whose secret is `secret`.
    pub fn of(secret: &SecretKey) -> Self {
        Self(blake3::derive_key("jax-csi sync proof v1", secret.expose()))
    }

    /// The proof that `requester` asks `responder` about this bucket.
    pub fn proof(&self, bucket: &BucketId, requester: &[u8; 32], responder: &[u8; 32]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(&bucket.0);
        h.update(requester);
        h.update(responder);
        *h.finalize().as_bytes()
    }
}

impl Bucket {
    /// The root directory of version `m`.
    pub fn root_dir(&self, m: &Manifest) -> Result<DirRef> {
        Ok(DirRef(Link {
            hash: m.body.root,
            key: self.core.open_root_key(m)?,
        }))
    }

    /// The subdirectories and chunk addresses listed by `dir`, whose node
    /// must be in the local store (verified and decrypted here).
    pub fn dir_contents(&self, dir: &DirRef) -> Result<DirContents> {
        let node = DirNode::load(&self.core.store, &dir.0)?;
        let mut out = DirContents::default();
        // The root's link table is a node like a directory's.
        if let Some(l) = node.links {
            out.dirs.push(DirRef(l));
        }
        for e in node.entries {
            match e.kind {
                EntryKind::Dir(l) => out.dirs.push(DirRef(l)),
                EntryKind::File(f) => out.chunks.extend(f.chunks.blobs()),
                _ => {}
            }
        }
        Ok(out)
    }

    /// History on this node ends at `versions` (not fetched from the peer
    /// this node learnt the bucket from): walks stop there instead of
    /// calling the chain broken.
    pub fn note_cut(&self, versions: &[Hash]) -> Result<()> {
        let _one = super::PRUNED_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let path = self.core.pruned_path();
        let mut cut: HashSet<Hash> = read_hashes(&path)?;
        let before = cut.len();
        cut.extend(versions.iter().copied());
        if cut.len() != before {
            write_hashes(&path, &cut)?;
        }
        Ok(())
    }

    /// Check the links of `version` (fetched) to its parents: those held
    /// here, with `cut` (parents no peer holds, not written anywhere yet)
    /// and the versions pruned here counting as ended history. A parent
    /// neither held nor cut breaks the chain.
    pub fn check_fetched_link(&self, version: &Hash, cut: &HashSet<Hash>) -> Result<()> {
        let m = self.core.load_manifest(version)?;
        let pruned = self.core.pruned()?;
        let mut parents = Vec::new();
        let mut ended = false;
        for p in m.parents() {
            if cut.contains(&p) || pruned.contains(&p) {
                ended = true;
                continue;
            }
            match self.core.load_manifest(&p) {
                Ok(pm) => parents.push(pm),
                Err(BucketError::VersionNotFound(_)) => {
                    return Err(BucketError::ChainBroken {
                        at: *version,
                        reason: format!("parent {p} is missing"),
                    })
                }
                Err(e) => return Err(e),
            }
        }
        // As a walk does: a version whose parents all ended has nothing
        // left here to be checked against.
        if ended && parents.is_empty() {
            return Ok(());
        }
        super::manifest::check_link_held(*version, &m, &parents, ended)
    }

    /// Versions where history ends on purpose here (pruned, or never fetched).
    pub fn pruned_versions(&self) -> Result<HashSet<Hash>> {
        self.core.pruned()
    }

    /// The key whose proofs tell a peer this node holds the bucket secret.
    pub fn proof_key(&self) -> ProofKey {
        ProofKey::of(&self.core.secret)
    }

    /// The version the head and `incoming` (fetched) both descend from, the
    /// base a merge of `incoming` compares against.
    pub fn merge_base(&self, incoming: &Hash) -> Result<Option<Hash>> {
        Ok(self.core.ancestry(self.head()?, *incoming)?.base)
    }

    /// Whether `version` is the head or one of its ancestors here.
    pub fn has_in_history(&self, version: &Hash) -> Result<bool> {
        self.core.is_ancestor(version, self.head()?)
    }

    /// Whether `node` holds a share of the version `head` (may write after it).
    pub fn is_member_at(&self, head: &Hash, node: &crate::crypto::NodeId) -> Result<bool> {
        Ok(self
            .core
            .load_manifest(head)?
            .body
            .shares
            .iter()
            .any(|s| s.recipient == *node))
    }
}

impl StateDir {
    /// Make bucket `id` known here at version `head`, whose manifest (and
    /// what the caller means to read of it) was fetched into the store:
    /// its secret is wrapped by `kek` for this node, HEAD names `head`.
    pub fn import_bucket(
        &self,
        id: BucketId,
        secret: SecretKey,
        kek: &Kek,
        head: &Hash,
    ) -> Result<Bucket> {
        let core = self.new_core(id, secret, kek)?;
        let m = core.load_manifest(head)?;
        // The version must open with this secret before it becomes the head.
        core.open_root_key(&m)?;
        core.write_head(head)?;
        let b = Bucket {
            core: std::sync::Arc::new(core),
        };
        let parents: Vec<Hash> = m.parents().filter(|p| !self.store.contains(p)).collect();
        b.note_cut(&parents)?;
        Ok(b)
    }
}
