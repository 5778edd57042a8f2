//! Blind replicas (#28): a bucket this node keeps for durability without
//! any key that opens it.
//!
//! A blind replica holds the bucket's proof key (which lets it fetch and
//! serve the bucket's ciphertext, and nothing more: it opens no tree and
//! makes no member share the secret, see `ProofKey::enroll_of`), wrapped
//! by the cluster KEK and bound to the bucket, and one complete version:
//! `replicas/<id>/HEAD` names that version and the member-signed
//! statement of its blob set (`blob_set`) whose every blob is in the
//! store. It writes no versions and merges nothing; it follows the heads
//! members make, and serves them to a node that stages the volume after
//! its other replicas are gone.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use super::blob_set::{read_held, HeldSet};
use super::error::{BucketError, Result};
use super::manifest::{BucketId, Manifest};
use super::{ProofKey, StateDir};
use crate::crypto::{Kek, WrapContext, WrappedKey};
use crate::store::{BlobStore, Hash};

/// A bucket held blind on this node.
#[derive(Clone)]
pub struct BlindReplica {
    id: BucketId,
    dir: PathBuf,
    store: Arc<BlobStore>,
    proof: Arc<ProofKey>,
}

impl std::fmt::Debug for BlindReplica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlindReplica({})", self.id)
    }
}

/// What a replica holds at its head, by head (computed once per head).
type Held = (Hash, Arc<HashSet<Hash>>);
static LIVE: LazyLock<Mutex<std::collections::HashMap<PathBuf, Held>>> =
    LazyLock::new(Default::default);

/// Drop the cached live set of the replica at `dir` (what it holds changed).
fn forget_live(dir: &Path) {
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).remove(dir);
}

/// A small file's bytes, `None` when it does not exist.
fn read_file(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(BucketError::io(path)(e)),
    }
}

/// (version, statement) pairs as `HEAD` (one) and `PINNED` store them:
/// 64 bytes each (a partial pair at the end is ignored).
fn pairs(bytes: &[u8]) -> Vec<(Hash, Hash)> {
    bytes
        .chunks_exact(64)
        .map(|c| {
            (
                Hash(c[..32].try_into().expect("32 bytes")),
                Hash(c[32..].try_into().expect("32 bytes")),
            )
        })
        .collect()
}

fn encode_pairs(pairs: &[(Hash, Hash)]) -> Vec<u8> {
    pairs
        .iter()
        .flat_map(|(v, st)| v.0.iter().chain(&st.0).copied())
        .collect()
}

impl StateDir {
    fn blind_dir(&self, id: &BucketId) -> PathBuf {
        self.root().join("replicas").join(id.to_hex())
    }

    /// Whether bucket `id` is held blind here.
    pub fn has_blind(&self, id: &BucketId) -> bool {
        self.blind_dir(id).join("proof.wrapped").exists()
    }

    /// The buckets held blind here.
    pub fn list_blind(&self) -> Result<Vec<BucketId>> {
        let dir = self.root().join("replicas");
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(BucketError::io(&dir)(e)),
        };
        for e in entries {
            let e = e.map_err(BucketError::io(&dir))?;
            if let Some(id) = e
                .file_name()
                .to_str()
                .and_then(|s| BucketId::from_hex(s).ok())
            {
                if e.path().join("proof.wrapped").exists() {
                    out.push(id);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Start holding bucket `id` blind, with its proof key as the
    /// controller recorded it (`wrapped` by the cluster KEK for the volume).
    pub fn create_blind(
        &self,
        id: &BucketId,
        wrapped: &WrappedKey,
        kek: &Kek,
    ) -> Result<BlindReplica> {
        let ctx = WrapContext::replica_proof(&id.to_hex());
        let key = kek
            .unwrap_for(wrapped, &ctx, false)
            .map_err(|_| BucketError::WrongKey(id.to_hex()))?;
        let dir = self.blind_dir(id);
        std::fs::create_dir_all(&dir).map_err(BucketError::io(&dir))?;
        // Re-wrapped by this KEK's current key: a rotation in Postgres
        // does not reach the state dir.
        let local = kek.wrap_for(&key, &ctx)?;
        super::write_atomic(&dir.join("proof.wrapped"), &local.0)?;
        self.open_blind(id, kek)
    }

    /// Open a bucket held blind here.
    pub fn open_blind(&self, id: &BucketId, kek: &Kek) -> Result<BlindReplica> {
        let dir = self.blind_dir(id);
        let p = dir.join("proof.wrapped");
        let wrapped =
            WrappedKey(read_file(&p)?.ok_or_else(|| BucketError::BucketNotFound(id.to_hex()))?);
        let key = kek
            .unwrap_for(&wrapped, &WrapContext::replica_proof(&id.to_hex()), false)
            .map_err(|_| BucketError::WrongKey(id.to_hex()))?;
        Ok(BlindReplica {
            id: *id,
            dir,
            store: self.store().clone(),
            proof: Arc::new(ProofKey::from_bytes(*key.expose())),
        })
    }

    /// Stop holding bucket `id` blind; its blobs go at the next GC.
    pub fn remove_blind(&self, id: &BucketId) -> Result<()> {
        let dir = self.blind_dir(id);
        forget_live(&dir);
        if !self.has_bucket(id) {
            crate::bucket::journal::copies::remove(self.root(), id);
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BucketError::io(&dir)(e)),
        }
    }
}

impl BlindReplica {
    pub fn id(&self) -> BucketId {
        self.id
    }

    pub fn proof_key(&self) -> &ProofKey {
        &self.proof
    }

    /// The complete version held, and its statement's address.
    pub fn head(&self) -> Result<Option<(Hash, Hash)>> {
        match read_file(&self.dir.join("HEAD"))? {
            None => Ok(None),
            Some(b) if b.len() == 64 => Ok(pairs(&b).pop()),
            Some(_) => Err(BucketError::Format {
                what: "blind replica HEAD",
                reason: "not 64 bytes".into(),
            }),
        }
    }

    /// Check that this node holds every blob `statement` lists for
    /// `version` (and the statement vouches for it), then make it the
    /// version held. The blobs must be in the store already; what is
    /// missing is named in the error.
    pub fn take(&self, version: &Hash, statement: &Hash) -> Result<()> {
        self.check_complete(version, statement)?;
        super::write_atomic(
            &self.dir.join("HEAD"),
            &encode_pairs(&[(*version, *statement)]),
        )?;
        self.fetched();
        Ok(())
    }

    /// `statement` vouches for `version` and every blob it lists is here
    /// (made durable).
    fn check_complete(&self, version: &Hash, statement: &Hash) -> Result<()> {
        let m = Manifest::load(&self.store, version)?;
        let held = read_held(&self.store, statement)?;
        held.statement.vouches_for(&self.id, version, &m)?;
        let missing = held.members.iter().filter(|h| !self.store.holds(h)).count();
        if missing > 0 {
            return Err(BucketError::Format {
                what: "blind replica",
                reason: format!("{missing} blobs of version {version} are not here yet"),
            });
        }
        self.store.sync()?;
        Ok(())
    }

    /// Versions kept beside the head (snapshots and clone sources of the
    /// volume), each with its statement: `PINNED`, 64 bytes a version.
    pub fn pinned(&self) -> Result<Vec<(Hash, Hash)>> {
        Ok(read_file(&self.dir.join("PINNED"))?
            .map(|b| pairs(&b))
            .unwrap_or_default())
    }

    fn write_pinned(&self, pinned: &[(Hash, Hash)]) -> Result<()> {
        super::write_atomic(&self.dir.join("PINNED"), &encode_pairs(pinned))?;
        forget_live(&self.dir);
        Ok(())
    }

    /// Keep `version` beside the head (a snapshot's), with the same checks
    /// as [`BlindReplica::take`].
    pub fn take_pinned(&self, version: &Hash, statement: &Hash) -> Result<()> {
        self.check_complete(version, statement)?;
        let mut pinned = self.pinned()?;
        pinned.retain(|(v, _)| v != version);
        pinned.push((*version, *statement));
        self.write_pinned(&pinned)?;
        self.fetched();
        Ok(())
    }

    /// Keep only the pinned versions in `keep` (a snapshot deleted lets its
    /// version go at the next GC).
    pub fn keep_pinned_only(&self, keep: &HashSet<Hash>) -> Result<()> {
        let pinned = self.pinned()?;
        let kept: Vec<(Hash, Hash)> = pinned
            .iter()
            .filter(|(v, _)| keep.contains(v))
            .copied()
            .collect();
        if kept.len() != pinned.len() {
            self.write_pinned(&kept)?;
        }
        Ok(())
    }

    /// A version being fetched: its set's blobs are kept (by GC) while
    /// the fetch runs, and a fetch that stopped finds them when it starts
    /// again. `take` ends it.
    pub fn begin(&self, statement: &Hash) -> Result<()> {
        // Not made durable: after a crash the blobs it covers are younger
        // than GC's grace, and the next fetch writes it again.
        let p = self.dir.join("PENDING");
        crate::durable::replace_quickly(&p, &statement.0).map_err(BucketError::io(&p))?;
        forget_live(&self.dir);
        Ok(())
    }

    /// The fetch that [`BlindReplica::begin`] started is over.
    fn fetched(&self) {
        let _ = std::fs::remove_file(self.dir.join("PENDING"));
        forget_live(&self.dir);
    }

    fn pending(&self) -> Option<Hash> {
        let b = std::fs::read(self.dir.join("PENDING")).ok()?;
        Some(Hash(b.try_into().ok()?))
    }

    /// The set `statement` lists, as held here (see `blob_set::read_held`).
    pub fn read_set(&self, statement: &Hash) -> Result<HeldSet> {
        read_held(&self.store, statement)
    }

    /// Every blob this replica keeps and serves: the held version's blob
    /// set, its statement, root and leaves, and the manifests of that
    /// version and of its ancestors that are in the store; the same of
    /// each pinned version; and the set of a fetch in progress.
    pub fn live(&self) -> Result<Arc<HashSet<Hash>>> {
        let head = self.head()?;
        let pending = self.pending();
        if pending.is_none() {
            let cached = LIVE
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&self.dir)
                .cloned();
            if let (Some((v, set)), Some((version, _))) = (cached, head) {
                if v == version {
                    return Ok(set);
                }
            }
        }
        let mut live = HashSet::new();
        // Blobs of a fetch in progress stay (a stopped rebuild resumes
        // with them).
        let fetching = pending.into_iter().map(|st| (None, st));
        let pinned = self.pinned()?.into_iter().map(|(v, st)| (Some(v), st));
        for (version, statement) in fetching.chain(pinned) {
            if let Ok(set) = read_held(&self.store, &statement) {
                live.extend(set.members);
                live.extend(set.own_blobs);
                live.extend(version);
            }
        }
        let Some((version, statement)) = head else {
            return Ok(Arc::new(live));
        };
        let held = read_held(&self.store, &statement)?;
        live.extend(held.members);
        live.extend(held.own_blobs);
        // The manifests of the version's history held here.
        let mut seen = HashSet::new();
        let mut queue = vec![version];
        while let Some(h) = queue.pop() {
            if !seen.insert(h) {
                continue;
            }
            if let Ok(m) = Manifest::load(&self.store, &h) {
                if m.body.bucket_id == self.id {
                    live.insert(h);
                    queue.extend(m.parents());
                }
            }
        }
        let live = Arc::new(live);
        if self.pending().is_none() {
            LIVE.lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(self.dir.clone(), (version, live.clone()));
        }
        Ok(live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::blob_set::{encode_set, Statement, StatementBody};
    use crate::bucket::{BucketOptions, ROOT_INO};
    use crate::crypto::Identity;

    /// A member's bucket with a file, and a second state dir holding it
    /// blind with the same proof key: what a replica node has.
    fn member_and_replica() -> (
        tempfile::TempDir,
        crate::bucket::Bucket,
        Hash,
        StateDir,
        BlindReplica,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let kek = Kek::generate().unwrap();
        let member = StateDir::open(&dir.path().join("member")).unwrap();
        let id = BucketId::generate().unwrap();
        let b = member
            .create_bucket(id, &kek, &BucketOptions::default())
            .unwrap();
        let mut m = b.mount().unwrap();
        let f = m.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap().ino;
        m.write(f, 0, &vec![7u8; 300 << 10]).unwrap();
        let head = m.save().unwrap().hash;
        let replica = StateDir::open(&dir.path().join("replica")).unwrap();
        let wrapped = kek
            .wrap_for(
                &b.proof_key().to_secret(),
                &WrapContext::replica_proof(&id.to_hex()),
            )
            .unwrap();
        let blind = replica.create_blind(&id, &wrapped, &kek).unwrap();
        (dir, b, head, replica, blind)
    }

    fn copy(from: &BlobStore, to: &BlobStore, h: &Hash) {
        to.put(&from.get(h).unwrap()).unwrap();
    }

    /// #28: a replica calls itself in sync at a version only with every
    /// blob a member's statement lists, and not on a statement signed by a
    /// node that is not a member, nor on a short list.
    #[test]
    fn a_replica_takes_a_version_only_when_it_holds_every_blob() {
        let (_dir, b, head, replica, blind) = member_and_replica();
        let from = b.store_for_tests();
        let to = replica.store().clone();
        let statement = b.statement_for(&head).unwrap();
        copy(&from, &to, &head);
        let set = read_held(&from, &statement).unwrap();
        for h in &set.own_blobs {
            copy(&from, &to, h);
        }
        let members: Vec<Hash> = set.members.iter().copied().collect();
        assert!(
            members.len() >= 2,
            "a root and a chunk at least: {}",
            members.len()
        );
        for h in &members[1..] {
            copy(&from, &to, h);
        }
        let err = blind.take(&head, &statement).unwrap_err();
        assert!(err.to_string().contains("1 blobs"), "{err}");
        assert_eq!(blind.head().unwrap(), None);
        copy(&from, &to, &members[0]);
        blind.take(&head, &statement).unwrap();
        assert_eq!(blind.head().unwrap(), Some((head, statement)));
        assert!(blind.live().unwrap().is_superset(&set.members));

        // A stranger's statement of a shorter set is refused, though it
        // is well formed and signed.
        let stranger = Identity::generate().unwrap();
        let short: std::collections::HashSet<Hash> = members[1..].iter().copied().collect();
        let enc = encode_set(&short);
        for leaf in &enc.leaves {
            to.put(leaf).unwrap();
        }
        let root = to.put(&enc.root).unwrap();
        let forged = Statement::sign(
            StatementBody {
                bucket_id: blind.id(),
                version: head,
                root,
                blobs: short.len() as u64,
                signer: stranger.node_id(),
            },
            &stranger,
        )
        .unwrap();
        let forged = to.put(&forged.to_bytes().unwrap()).unwrap();
        let err = blind.take(&head, &forged).unwrap_err();
        assert!(err.to_string().contains("not a member"), "{err}");
        assert_eq!(blind.head().unwrap(), Some((head, statement)), "unchanged");
    }

    /// The proof key a replica holds opens nothing of the bucket.
    #[test]
    fn a_replicas_key_does_not_open_the_bucket() {
        let (_dir, b, head, replica, blind) = member_and_replica();
        copy(&b.store_for_tests(), replica.store(), &head);
        let with_proof = replica.bucket_with_secret(&blind.id(), blind.proof_key().to_secret());
        let m = with_proof.manifest(&head).unwrap();
        assert!(matches!(
            with_proof.root_dir(&m),
            Err(BucketError::WrongKey(_))
        ));
        assert!(b.root_dir(&b.manifest(&head).unwrap()).is_ok());
    }
}
