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

/// What one directory node lists beyond an older version of it (see
/// [`Bucket::dir_changes`]).
#[derive(Clone, Debug, Default)]
pub struct DirChanges {
    pub dirs: Vec<(DirRef, Option<DirRef>)>,
    pub chunks: Vec<Hash>,
}

/// What one directory node lists: its subdirectories and its files' chunks.
#[derive(Clone, Debug, Default)]
pub struct DirContents {
    pub dirs: Vec<DirRef>,
    pub chunks: Vec<Hash>,
}

/// A key derived from the bucket secret: proves possession of the secret
/// to a peer that holds it too, and reveals nothing of it.
#[derive(Clone)]
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

    /// The key whose proofs ask a holder to share the bucket secret
    /// (`Enroll`): derived apart from [`ProofKey::of`], so a blind replica,
    /// which is given the proof key to fetch and serve ciphertext, cannot
    /// make a member share the secret with it.
    pub fn enroll_of(secret: &SecretKey) -> Self {
        Self(blake3::derive_key(
            "jax-csi enroll proof v1",
            secret.expose(),
        ))
    }

    /// A proof key kept wrapped (a blind replica's, see `bucket::blind`).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The key as a secret, to be wrapped by a KEK for a blind replica.
    pub fn to_secret(&self) -> SecretKey {
        SecretKey::from_bytes(self.0)
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
    /// The root directory of `version`, whose manifest is held here.
    pub fn root_of(&self, version: &Hash) -> Result<DirRef> {
        self.root_dir(&self.manifest(version)?)
    }

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
        let node = DirNode::load_cached(&self.core.store, &dir.0)?;
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

    /// What `dir` lists that `before` (the same directory in a version
    /// held here, if any) does not: its subdirectories that differ, each
    /// with its counterpart in `before`, and the chunks of its files that
    /// `before`'s file of the same name does not name; nothing when
    /// `before` is the same node. A pull walks only what changed since the
    /// local head this way, not the whole tree (every file's chunks looked
    /// up in the store, each pull).
    pub fn dir_changes(&self, dir: &DirRef, before: Option<&DirRef>) -> Result<DirChanges> {
        if before.map(DirRef::hash) == Some(dir.hash()) {
            return Ok(DirChanges::default());
        }
        let node = DirNode::load_cached(&self.core.store, &dir.0)?;
        // A counterpart that does not load (not held) compares as empty.
        let old = before.and_then(|b| DirNode::load_cached(&self.core.store, &b.0).ok());
        let mut out = DirChanges::default();
        if let Some(l) = node.links {
            let was = old.as_ref().and_then(|o| o.links.clone()).map(DirRef);
            if was.as_ref().map(DirRef::hash) != Some(l.hash) {
                out.dirs.push((DirRef(l), was));
            }
        }
        for e in node.entries {
            let was = old.as_ref().and_then(|o| o.get(&e.name)).map(|w| &w.kind);
            match (e.kind, was) {
                (EntryKind::Dir(l), Some(EntryKind::Dir(w))) if w.hash == l.hash => {}
                (EntryKind::Dir(l), Some(EntryKind::Dir(w))) => {
                    out.dirs.push((DirRef(l), Some(DirRef(w.clone()))))
                }
                (EntryKind::Dir(l), _) => out.dirs.push((DirRef(l), None)),
                (EntryKind::File(f), Some(EntryKind::File(w))) => {
                    let had: HashSet<Hash> = w.chunks.blobs().collect();
                    out.chunks
                        .extend(f.chunks.blobs().filter(|h| !had.contains(h)));
                }
                (EntryKind::File(f), _) => out.chunks.extend(f.chunks.blobs()),
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
        if parents.is_empty() {
            self.core.check_genesis(version)?;
        }
        super::manifest::check_link_held(*version, &m, &parents, ended)
    }

    /// Versions where history ends on purpose here (pruned, or never fetched).
    pub fn pruned_versions(&self) -> Result<std::sync::Arc<HashSet<Hash>>> {
        self.core.pruned()
    }

    /// The key whose proofs tell a peer this node holds the bucket secret.
    pub fn proof_key(&self) -> ProofKey {
        ProofKey::of(&self.core.secret)
    }

    /// The key whose proofs ask a member to share the secret (`Enroll`).
    pub fn enroll_key(&self) -> ProofKey {
        ProofKey::enroll_of(&self.core.secret)
    }

    /// The version the head and `incoming` (fetched) both descend from, the
    /// base a merge of `incoming` compares against.
    pub fn merge_base(&self, incoming: &Hash) -> Result<Option<Hash>> {
        Ok(self.core.ancestry(self.head()?, *incoming)?.base)
    }

    /// Check that `version`, offered by a peer as a head, was written by a
    /// holder of this bucket's secret: its root key is bound to its body
    /// (format 2) and opens with the secret. A signature alone proves
    /// nothing (any identity signs), and a format 1 root key copied from
    /// old history into a self-made body would open. Everything below a
    /// head that passes is vouched for by the content addresses of its
    /// parents, so this one check covers the chain a pull brings.
    pub fn check_written_by_member(&self, version: &Hash) -> Result<()> {
        let m = self.core.load_manifest(version)?;
        check_bound(&self.core, version, &m)
    }

    /// The root key of `m`, opened (tests that forge manifests from it).
    #[cfg(test)]
    pub fn root_key_for_tests(&self, m: &Manifest) -> [u8; 32] {
        self.core.open_root_key(m).unwrap().0
    }

    /// Whether `head` (held here) is `version` or descends from it.
    pub fn contains_version(&self, head: &Hash, version: &Hash) -> Result<bool> {
        Ok(head == version || self.core.is_ancestor(version, *head)?)
    }

    /// Whether `version` is the head or one of its ancestors here.
    pub fn has_in_history(&self, version: &Hash) -> Result<bool> {
        self.core.is_ancestor(version, self.head()?)
    }

    /// Whether `node` holds a share of the version `head` (may write after it).
    pub fn is_member_at(&self, head: &Hash, node: &crate::crypto::NodeId) -> Result<bool> {
        Ok(self.core.load_manifest(head)?.body.shares_with(node))
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
        // The version must come from a holder of this secret before it
        // becomes the head.
        check_bound(&core, head, &m)?;
        core.write_head(head)?;
        let b = Bucket {
            core: std::sync::Arc::new(core),
        };
        let parents: Vec<Hash> = m.parents().filter(|p| !self.store.contains(p)).collect();
        b.note_cut(&parents)?;
        Ok(b)
    }
}

/// See [`Bucket::check_written_by_member`].
fn check_bound(core: &super::BucketCore, version: &Hash, m: &Manifest) -> Result<()> {
    let refused = |reason: &str| BucketError::BadSignature {
        manifest: *version,
        reason: reason.to_string(),
    };
    if !m.is_bound() {
        return Err(refused(
            "an unbound manifest (format 1, written before this release) is not taken from a peer as a head; \
             a node of this release that holds the volume writes a bound version on its next stage",
        ));
    }
    match core.open_root_key(m) {
        Ok(_) => Ok(()),
        Err(BucketError::WrongKey(_)) => Err(refused(
            "its root key does not open with the bucket secret for this body: not written by a member",
        )),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use crate::bucket::{test_bucket, ROOT_INO};
    use crate::store::Hash;
    use std::collections::HashSet;

    /// Against the version before, a directory lists only the subdirectory
    /// that changed (with its counterpart) and the chunks a changed or new
    /// file names; a directory the same in both lists nothing.
    #[test]
    fn a_directory_lists_what_changed_since_a_version() {
        let dir = tempfile::tempdir().unwrap();
        let b = test_bucket(dir.path(), 4096);
        let mut m = b.mount().unwrap();
        let write = |m: &mut crate::bucket::Mount, parent, name: &[u8], bytes: &[u8]| {
            let f = m.create(parent, name, 0o644, 0, 0).unwrap().ino;
            m.write(f, 0, bytes).unwrap();
            f
        };
        let kept = m.mkdir(ROOT_INO, b"kept", 0o755, 0, 0).unwrap().ino;
        write(&mut m, kept, b"k", &[1; 5000]);
        let sub = m.mkdir(ROOT_INO, b"sub", 0o755, 0, 0).unwrap().ino;
        write(&mut m, sub, b"x", &[2; 5000]);
        let a = write(&mut m, ROOT_INO, b"a", &[3; 9000]);
        write(&mut m, ROOT_INO, b"same", &[4; 100]);
        let v1 = m.save().unwrap().hash;
        m.write(a, 4096, &[5; 10]).unwrap();
        write(&mut m, sub, b"y", &[6; 100]);
        write(&mut m, ROOT_INO, b"new", &[7; 100]);
        let v2 = m.save().unwrap().hash;

        let root = |v: &Hash| b.root_of(v).unwrap();
        let all = b.dir_changes(&root(&v2), None).unwrap();
        let diff = b.dir_changes(&root(&v2), Some(&root(&v1))).unwrap();
        assert_eq!(all.dirs.len(), 2, "kept and sub");
        assert_eq!(diff.dirs.len(), 1, "only sub changed: {:?}", diff.dirs);
        assert!(
            diff.dirs[0].1.is_some(),
            "sub is compared with its old self"
        );
        let before: HashSet<Hash> = b
            .dir_changes(&root(&v1), None)
            .unwrap()
            .chunks
            .into_iter()
            .collect();
        assert!(!diff.chunks.is_empty());
        assert!(
            diff.chunks.iter().all(|c| !before.contains(c)),
            "a chunk held in the version before is listed again"
        );
        assert!(diff.chunks.len() < all.chunks.len());
        let sub_changes = b
            .dir_changes(&diff.dirs[0].0, diff.dirs[0].1.as_ref())
            .unwrap();
        assert_eq!(sub_changes.chunks.len(), 1, "y's one chunk, not x's");
        let same = b.dir_changes(&root(&v2), Some(&root(&v2))).unwrap();
        assert!(same.dirs.is_empty() && same.chunks.is_empty());
    }
}
