//! The encrypted bucket engine: versions, trees, live mounts and merges.
//!
//! A bucket is a chain of signed manifests over encrypted trees in a
//! content-addressed [`BlobStore`](crate::store::BlobStore). This module and
//! those below it know nothing of FUSE, gRPC, Postgres or the network.
//!
//! On-disk layout of a node's state dir:
//! ```text
//! identity.key                 the node's Ed25519 secret (0600)
//! store/blobs/..               every bucket's blobs (ciphertext and manifests)
//! buckets/<id>/HEAD            the manifest hash of the bucket's head
//! buckets/<id>/key.wrapped     the bucket secret wrapped by the KEK
//! epochs/<id>/                 the secrets rotations added (`epochs.rs`)
//! genesis/<id>                 the version the bucket's history begins with
//! ```

mod ancestry;
pub mod blind;
mod blob_index;
pub mod blob_set;
pub mod browse;
mod buffers;
mod chunk_map;
mod chunks;
mod codec;
mod dir_cache;
mod epochs;
mod error;
mod genesis;
mod hash_lists;
pub mod journal;
mod links;
mod manifest;
mod merge;
mod mount;
mod names;
mod ops;
pub mod path;
mod replica;
mod retention;
mod revoked;
mod tree;

/// Decoders private to this module, for the fuzz harness (`fuzz/src/lib.rs`,
/// also run by `tests/fuzz_decoders.rs`), which feeds them arbitrary bytes.
/// Not an API: re-exports only.
#[doc(hidden)]
pub mod decoders {
    pub use super::chunk_map::ChunkMap;
    pub use super::chunks::{allocated, ChunkIo, FileData};
    pub use super::codec::{encode, Tag, DIR_VERSION};
    pub use super::links::split_nlink;
    pub use super::manifest::{check_link, signing_input, MAGIC};
    pub use super::tree::legacy::MetaV2;
    pub use super::tree::{DirNode, Entry, EntryKind, FileNode, KeyBytes, Link, Meta};
    pub use super::{read_hashes, write_hashes, BucketCore};
}

pub use blob_index::BlobIndex;
pub use chunks::{ReadBuf, ReadPlan, RemoteBlobs, DEFAULT_CHUNK_SIZE};
pub use error::{BucketError, Result};
pub use manifest::{BucketId, Manifest, ManifestBody};
pub use merge::{Conflict, ConflictFile, LastWriterWins, MergeReport, Resolution, Resolver};
#[cfg(test)]
pub(crate) use mount::test_bucket;
pub use mount::{
    Appended, Attr, CachedView, DirEntry, FileKind, Ino, Invalidations, JournalBatch, Mount,
    NotNamed, PreparedVersion, RenameFlags, Saved, SetAttr, Usage, XattrFlags, ROOT_INO,
};
pub use names::{validate_name, NAME_MAX};
pub use ops::{Op, OpRecord, OpsLog};
pub use replica::{DirContents, DirRef, ProofKey};
pub use retention::Retention;
pub use revoked::Revoked;
pub use tree::{SpecialKind, Timestamp};

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::crypto::{Identity, Kek, KeyShare, SecretKey, WrapContext, WrappedKey};
use crate::store::{BlobStore, Hash};
use tree::{DirNode, EntryKind, KeyBytes, Link, Meta};

/// Options for a new bucket.
#[derive(Clone, Debug)]
pub struct BucketOptions {
    /// Byte quota; `None` = unlimited.
    pub quota: Option<u64>,
    /// Chunk size in bytes (4 KiB to 16 MiB).
    pub chunk_size: u32,
    /// Owner and mode of the root directory.
    pub root_uid: u32,
    pub root_gid: u32,
    pub root_mode: u32,
}

impl Default for BucketOptions {
    fn default() -> Self {
        Self {
            quota: None,
            chunk_size: DEFAULT_CHUNK_SIZE,
            root_uid: 0,
            root_gid: 0,
            root_mode: 0o755,
        }
    }
}

/// One entry of a bucket's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionInfo {
    pub hash: Hash,
    pub height: u64,
    pub previous: Option<Hash>,
    pub merged: Option<Hash>,
    pub author: crate::crypto::NodeId,
    pub created_at: Timestamp,
    pub used_bytes: u64,
    pub entries: u64,
}

/// What a bucket's open handles share: its id, where it lives and its secret.
pub struct BucketCore {
    pub id: BucketId,
    pub dir: PathBuf,
    pub store: Arc<BlobStore>,
    pub identity: Arc<Identity>,
    /// The base secret (Postgres's): it makes the sync proofs.
    pub secret: SecretKey,
    /// The base secret and the epochs rotations added (`epochs.rs`).
    ring: std::sync::RwLock<crate::crypto::Keyring>,
    /// Nodes removed from the cluster: never given a share again.
    pub revoked: Arc<Revoked>,
}

impl BucketCore {
    /// The core of bucket `id` in `dir`, holding `ring`.
    pub fn new(
        id: BucketId,
        dir: PathBuf,
        store: Arc<BlobStore>,
        identity: Arc<Identity>,
        ring: crate::crypto::Keyring,
        revoked: Arc<Revoked>,
    ) -> Self {
        Self {
            id,
            dir,
            store,
            identity,
            secret: ring.base.clone(),
            ring: std::sync::RwLock::new(ring),
            revoked,
        }
    }

    fn head_path(&self) -> PathBuf {
        self.dir.join("HEAD")
    }

    /// The head: the version HEAD names, or, when HEAD is unreadable or
    /// names a version that is missing or does not verify, the newest
    /// version of this bucket in the store that does (HEAD is then repaired,
    /// and the fallback logged).
    pub fn head(&self) -> Result<Hash> {
        let named = self
            .read_head()
            .and_then(|h| self.load_manifest(&h).map(|_| h));
        // A HEAD that is lost, garbled or names a version that is not
        // there is recovered; a version that is there but does not verify
        // is an integrity error (never silently an older version).
        let err = match named {
            Ok(h) => return Ok(h),
            Err(
                e @ (BucketError::VersionNotFound(_)
                | BucketError::Format {
                    what: "HEAD file", ..
                }),
            ) => e,
            Err(BucketError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                BucketError::Io {
                    path: self.head_path(),
                    source,
                }
            }
            Err(e) => return Err(e),
        };
        tracing::error!(bucket = %self.id, error = %err, "HEAD is unusable; looking for the newest verifiable version");
        let Some(h) = self.newest_verifiable()? else {
            return Err(err);
        };
        tracing::warn!(bucket = %self.id, version = %h, "fell back to the newest verifiable version; HEAD repaired");
        self.write_head(&h)?;
        Ok(h)
    }

    /// The highest version of this bucket in the store whose manifest and
    /// root directory verify (a scan of the store: recovery only).
    fn newest_verifiable(&self) -> Result<Option<Hash>> {
        let mut found = Vec::new();
        for h in self.store.list()? {
            if !self.store.starts_with(&h, manifest::MAGIC) {
                continue;
            }
            if let Ok(m) = self.load_manifest(&h) {
                found.push((m.body.height, h, m));
            }
        }
        found.sort_by_key(|(height, hash, _)| std::cmp::Reverse((*height, *hash)));
        for (_, h, m) in found {
            let root = self.open_root_key(&m).and_then(|key| {
                DirNode::load(
                    &self.store,
                    &Link {
                        hash: m.body.root,
                        key,
                    },
                )
            });
            if root.is_ok() {
                return Ok(Some(h));
            }
        }
        Ok(None)
    }

    pub fn read_head(&self) -> Result<Hash> {
        read_head_file(&self.head_path())
    }

    /// Atomically point HEAD at `hash` (temp file, fsync, rename, fsync
    /// dir). Every blob stored before is made durable first, so HEAD never
    /// names a version whose blobs a crash could take away.
    pub fn write_head(&self, hash: &Hash) -> Result<()> {
        self.store.sync()?;
        self.name_head(hash)
    }

    /// Point HEAD at `hash`, whose blobs the caller has made durable (a
    /// store sync after they were all stored).
    pub(crate) fn name_head(&self, hash: &Hash) -> Result<()> {
        write_atomic(&self.head_path(), hash.to_hex().as_bytes())
    }

    /// Load a manifest and check it belongs to this bucket.
    pub fn load_manifest(&self, hash: &Hash) -> Result<Manifest> {
        let m = Manifest::load(&self.store, hash)?;
        if m.body.bucket_id != self.id {
            return Err(BucketError::ChainBroken {
                at: *hash,
                reason: format!("manifest belongs to bucket {}", m.body.bucket_id),
            });
        }
        Ok(m)
    }

    fn pruned_path(&self) -> PathBuf {
        self.dir.join("PRUNED")
    }

    fn roots_path(&self) -> PathBuf {
        self.dir.join("ROOTS")
    }

    /// Versions removed on purpose by retention, where history may end.
    fn pruned(&self) -> Result<Arc<HashSet<Hash>>> {
        hash_lists::read_shared(&self.pruned_path())
    }

    /// Versions kept apart from the head's history (pinned by snapshots
    /// and clones after what linked them to the head was pruned).
    fn roots(&self) -> Result<HashSet<Hash>> {
        read_hashes(&self.roots_path())
    }

    /// The root key of version `m`, opened with whichever of the bucket's
    /// secrets sealed it. A version sealed under an epoch this node has not
    /// seen yet carries it in this node's share, when it is a member.
    pub fn open_root_key(&self, m: &Manifest) -> Result<KeyBytes> {
        let bytes = match self.try_open_root_key(m)? {
            Some(bytes) => bytes,
            None => match self.learn_from_share(m)? {
                true => self.try_open_root_key(m)?,
                false => None,
            }
            .ok_or_else(|| BucketError::WrongKey(self.id.to_hex()))?,
        };
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| BucketError::Format {
                what: "manifest",
                reason: "root key is not 32 bytes".into(),
            })?;
        Ok(KeyBytes(arr))
    }

    /// The root key's bytes when a secret this node knows opens them.
    fn try_open_root_key(&self, m: &Manifest) -> Result<Option<Vec<u8>>> {
        let binding = m
            .is_bound()
            .then(|| manifest::root_key_binding(&m.body))
            .transpose()?;
        let ring = self.ring();
        let opened = ring.newest_first().find_map(|secret| match &binding {
            Some(b) => secret.open_with_aad(&m.body.root_key, b).ok(),
            None => secret.open(&m.body.root_key).ok(),
        });
        Ok(opened)
    }
}

/// `<state>/<kind>/<id>` for the bucket in `<state>/buckets/<id>`: what is
/// kept of a bucket before (or without) its directory, which a HEAD makes.
fn beside_buckets(bucket_dir: &Path, kind: &str) -> PathBuf {
    let id = bucket_dir.file_name().unwrap_or_default();
    bucket_dir
        .parent()
        .and_then(|buckets| buckets.parent())
        .unwrap_or(bucket_dir)
        .join(kind)
        .join(id)
}

/// The version a HEAD file names (as written, not checked).
fn read_head_file(path: &Path) -> Result<Hash> {
    let text = std::fs::read_to_string(path).map_err(BucketError::io(path))?;
    Hash::from_hex(text.trim()).map_err(|reason| BucketError::Format {
        what: "HEAD file",
        reason,
    })
}

/// A file of hex hashes, one a line (missing = none).
pub fn read_hashes(path: &Path) -> Result<HashSet<Hash>> {
    hash_lists::read(path)
}

pub fn write_hashes(path: &Path, hashes: &HashSet<Hash>) -> Result<()> {
    hash_lists::write(path, hashes)
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::durable::write_atomic(path, bytes, 0o600).map_err(BucketError::io(path))
}

/// A node's state directory: its identity, its blob store and its buckets.
#[derive(Clone)]
pub struct StateDir {
    root: PathBuf,
    store: Arc<BlobStore>,
    identity: Arc<Identity>,
    revoked: Arc<Revoked>,
}

impl std::fmt::Debug for StateDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateDir")
            .field("root", &self.root)
            .finish()
    }
}

impl StateDir {
    /// Open (creating if needed) the state dir at `root`.
    pub fn open(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root.join("buckets")).map_err(BucketError::io(root))?;
        let identity = Identity::load_or_create(&root.join("identity.key"))?;
        let store = BlobStore::open(&root.join("store"))?;
        Ok(Self {
            root: root.to_path_buf(),
            store: Arc::new(store),
            identity: Arc::new(identity),
            revoked: Arc::new(Revoked::load(root)?),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The identities bucket `id`'s head shares its secret with (read from
    /// the signed manifest; no key needed).
    pub fn members_at_head(&self, id: &BucketId) -> Result<Vec<crate::crypto::NodeId>> {
        let head = read_head_file(&self.bucket_dir(id).join("HEAD"))?;
        let m = Manifest::load(&self.store, &head)?;
        Ok(m.body.shares.iter().map(|s| s.recipient).collect())
    }

    /// Nodes removed from the cluster (see `jax-csi node remove`).
    pub fn revoked(&self) -> &Arc<Revoked> {
        &self.revoked
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn store(&self) -> &Arc<BlobStore> {
        &self.store
    }

    /// True when this state dir holds bucket `id` (its HEAD, or at least
    /// its wrapped key: a lost HEAD is recovered from the store on open).
    pub fn has_bucket(&self, id: &BucketId) -> bool {
        let dir = self.bucket_dir(id);
        dir.join("HEAD").exists() || dir.join("key.wrapped").exists()
    }

    fn bucket_dir(&self, id: &BucketId) -> PathBuf {
        self.root.join("buckets").join(id.to_hex())
    }

    /// Remember that bucket `id` is a tenant's: `check` is its secret
    /// wrapped by the tenant's key, which NodeStage must be able to open
    /// before it mounts the bucket (whether or not Postgres answers).
    pub fn set_tenant_check(&self, id: &BucketId, check: &WrappedKey) -> Result<()> {
        write_atomic(&self.bucket_dir(id).join("tenant.wrapped"), &check.0)
    }

    /// Remember that bucket `id` is a clone of `source`, whose secret is
    /// `secret`: chunks of the source's tree it reads but does not hold
    /// are fetched from the source's peers with that secret.
    pub fn set_source(
        &self,
        id: &BucketId,
        source: &BucketId,
        secret: &SecretKey,
        kek: &Kek,
    ) -> Result<()> {
        let dir = self.bucket_dir(id);
        let wrapped = kek.wrap_for(secret, &WrapContext::node_local(&source.to_hex()))?;
        write_atomic(&dir.join("source.wrapped"), &wrapped.0)?;
        write_atomic(&dir.join("SOURCE"), source.to_hex().as_bytes())
    }

    /// The bucket `id` was cloned from, if it is a clone (its `SOURCE`).
    fn source_id(&self, id: &BucketId) -> Result<Option<BucketId>> {
        let dir = self.bucket_dir(id);
        match std::fs::read_to_string(dir.join("SOURCE")) {
            Ok(s) => Ok(Some(BucketId::from_hex(s.trim())?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BucketError::io(&dir)(e)),
        }
    }

    /// The bucket `id` was cloned from, and its secret, if it is a clone.
    pub fn source_of(&self, id: &BucketId, kek: &Kek) -> Result<Option<(BucketId, SecretKey)>> {
        let Some(src) = self.source_id(id)? else {
            return Ok(None);
        };
        let p = self.bucket_dir(id).join("source.wrapped");
        let wrapped = WrappedKey(std::fs::read(&p).map_err(BucketError::io(&p))?);
        let secret = kek
            .unwrap_for(&wrapped, &WrapContext::node_local(&src.to_hex()), false)
            .map_err(|_| BucketError::WrongKey(src.to_hex()))?;
        Ok(Some((src, secret)))
    }

    /// The tenant check of bucket `id`, if it is a tenant's.
    pub fn tenant_check(&self, id: &BucketId) -> Result<Option<WrappedKey>> {
        let p = self.bucket_dir(id).join("tenant.wrapped");
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(WrappedKey(b))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BucketError::io(&p)(e)),
        }
    }

    /// The buckets held in this state dir.
    pub fn list_buckets(&self) -> Result<Vec<BucketId>> {
        let dir = self.root.join("buckets");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(BucketError::io(&dir))? {
            let e = e.map_err(BucketError::io(&dir))?;
            if let Some(id) = e
                .file_name()
                .to_str()
                .and_then(|s| BucketId::from_hex(s).ok())
            {
                if e.path().join("HEAD").exists() {
                    out.push(id);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Written once every bucket's `key.wrapped` here is bound to its
    /// bucket (see [`StateDir::bind_local_keys`]).
    fn local_keys_bound_path(&self) -> PathBuf {
        self.root.join("LOCAL_KEYS_BOUND")
    }

    /// Re-wrap every node-local key (`key.wrapped`, a clone's
    /// `source.wrapped`) that the current key of `kek` does not open bound
    /// to its bucket: one an earlier build wrapped unbound, or one wrapped
    /// by a KEK this one replaces (`Kek::still_opening`). Run at every
    /// start of the node agent. Once every key here is bound, unbound
    /// wraps are refused in this state dir for good (a marker file). A key
    /// that opens with none of them is left alone (and the marker waits).
    /// Returns how many keys were re-wrapped.
    pub fn bind_local_keys(&self, kek: &Kek) -> Result<usize> {
        let legacy = !self.local_keys_bound_path().exists();
        let mut rewrapped = 0;
        let mut all_bound = true;
        let mut files = Vec::new();
        for id in self.list_buckets()? {
            let dir = self.bucket_dir(&id);
            files.push((
                id,
                dir.join("key.wrapped"),
                WrapContext::node_local(&id.to_hex()),
            ));
            if let Some(src) = self.source_id(&id)? {
                files.push((
                    id,
                    dir.join("source.wrapped"),
                    WrapContext::node_local(&src.to_hex()),
                ));
            }
        }
        // Blind replicas' proof keys were bound from the start: only a
        // KEK rotation re-wraps them.
        for id in self.list_blind()? {
            let p = self
                .root
                .join("replicas")
                .join(id.to_hex())
                .join("proof.wrapped");
            files.push((id, p, WrapContext::replica_proof(&id.to_hex())));
        }
        {
            for (id, p, ctx) in files {
                let wrapped = WrappedKey(std::fs::read(&p).map_err(BucketError::io(&p))?);
                if kek.wrapped_current(&wrapped, &ctx) {
                    continue;
                }
                let blind = p.ends_with("proof.wrapped");
                match kek.unwrap_for(&wrapped, &ctx, legacy && !blind) {
                    Ok(secret) => {
                        let bound = kek.wrap_for(&secret, &ctx)?;
                        crate::durable::write_atomic(&p, &bound.0, 0o600)
                            .map_err(BucketError::io(&p))?;
                        rewrapped += 1;
                    }
                    Err(_) => {
                        tracing::warn!(bucket = %id, file = %p.display(), "a local key does not open with this KEK (nor a previous one given); left as it is");
                        all_bound = false;
                    }
                }
            }
        }
        if all_bound && legacy {
            let marker = self.local_keys_bound_path();
            crate::durable::write_atomic(
                &marker,
                b"every key.wrapped here is bound to its bucket\n",
                0o600,
            )
            .map_err(BucketError::io(&marker))?;
        }
        Ok(rewrapped)
    }

    /// Create a bucket with an empty root: a fresh secret, wrapped by `kek`
    /// and shared with this node's identity, and a signed genesis version.
    pub fn create_bucket(&self, id: BucketId, kek: &Kek, opts: &BucketOptions) -> Result<Bucket> {
        self.create_bucket_with_secret(id, SecretKey::generate()?, kek, opts)
    }

    /// Create a bucket with an empty root under a given secret: what a node
    /// does for a volume whose secret the controller generated, so every
    /// replica of the volume shares it.
    pub fn create_bucket_with_secret(
        &self,
        id: BucketId,
        secret: SecretKey,
        kek: &Kek,
        opts: &BucketOptions,
    ) -> Result<Bucket> {
        if !manifest::valid_chunk_size(opts.chunk_size) {
            return Err(BucketError::InvalidArgument(format!(
                "chunk size {} is not a power of two from 4 KiB to 16 MiB",
                opts.chunk_size
            )));
        }
        let core = self.new_core(id, secret, kek)?;
        let root_key = KeyBytes::generate()?;
        let meta = Meta::new(
            opts.root_mode,
            opts.root_uid,
            opts.root_gid,
            self.identity.node_id().short(),
        );
        let root = DirNode {
            root_meta: Some(meta),
            links: None,
            entries: Vec::new(),
        }
        .store(&self.store, &root_key)?;
        core.write_genesis(root, &root_key, opts.chunk_size, opts.quota, 0, 0)?;
        Ok(Bucket {
            core: Arc::new(core),
        })
    }

    /// Create bucket `id` as an O(1) clone of `source` at `version`: it starts
    /// at the same tree (no data is copied) with its own secret and shares.
    pub fn clone_bucket(
        &self,
        id: BucketId,
        source: &Bucket,
        version: &Hash,
        kek: &Kek,
    ) -> Result<Bucket> {
        self.clone_bucket_with_secret(id, SecretKey::generate()?, source, version, kek)
    }

    /// [`StateDir::clone_bucket`] under a given secret (the controller's).
    pub fn clone_bucket_with_secret(
        &self,
        id: BucketId,
        secret: SecretKey,
        source: &Bucket,
        version: &Hash,
        kek: &Kek,
    ) -> Result<Bucket> {
        let m = source.core.load_manifest(version)?;
        let root_key = source.core.open_root_key(&m)?;
        let core = self.new_core(id, secret, kek)?;
        core.write_genesis(
            m.body.root,
            &root_key,
            m.body.chunk_size,
            m.body.quota,
            m.body.used_bytes,
            m.body.entries,
        )?;
        Ok(Bucket {
            core: Arc::new(core),
        })
    }

    fn new_core(&self, id: BucketId, secret: SecretKey, kek: &Kek) -> Result<BucketCore> {
        let dir = self.bucket_dir(&id);
        if dir.join("HEAD").exists() {
            return Err(BucketError::BucketExists(id.to_hex()));
        }
        crate::durable::create_dir_all(&dir).map_err(BucketError::io(&dir))?;
        let wrapped = kek.wrap_for(&secret, &WrapContext::node_local(&id.to_hex()))?;
        write_atomic(&dir.join("key.wrapped"), &wrapped.0)?;
        // Epochs learned before the bucket was here (a clone's source).
        Ok(self.core_of(id, secret))
    }

    /// The core of bucket `id` holding `ring`.
    fn core_with(&self, id: BucketId, ring: crate::crypto::Keyring) -> BucketCore {
        BucketCore::new(
            id,
            self.bucket_dir(&id),
            self.store.clone(),
            self.identity.clone(),
            ring,
            self.revoked.clone(),
        )
    }

    /// The core of bucket `id` with base secret `secret` and the epochs
    /// this node keeps for it.
    fn core_of(&self, id: BucketId, secret: SecretKey) -> BucketCore {
        let ring = epochs::load(&self.bucket_dir(&id), &id, secret);
        self.core_with(id, ring)
    }

    /// Open a bucket, unwrapping its secret with `kek`.
    pub fn open_bucket(&self, id: &BucketId, kek: &Kek) -> Result<Bucket> {
        let dir = self.bucket_dir(id);
        if !self.has_bucket(id) {
            return Err(BucketError::BucketNotFound(id.to_hex()));
        }
        let p = dir.join("key.wrapped");
        let wrapped = WrappedKey(std::fs::read(&p).map_err(BucketError::io(&p))?);
        // Unbound wraps of earlier builds open only until this state dir's
        // keys were bound (`bind_local_keys`): after that, one copied from
        // another bucket's directory (or an old backup) does not.
        let legacy = !self.local_keys_bound_path().exists();
        let secret = kek
            .unwrap_for(&wrapped, &WrapContext::node_local(&id.to_hex()), legacy)
            .map_err(|_| BucketError::WrongKey(id.to_hex()))?;
        Ok(Bucket {
            core: Arc::new(self.core_of(*id, secret)),
        })
    }

    /// A handle on bucket `id` with a secret the caller holds (the
    /// controller's, unwrapped by the KEK), whether or not this node has the
    /// bucket's HEAD: enough to open any of its versions in the store, which
    /// is what cloning from a snapshot of it needs.
    pub fn bucket_with_secret(&self, id: &BucketId, secret: SecretKey) -> Bucket {
        Bucket {
            core: Arc::new(self.core_of(*id, secret)),
        }
    }

    /// Open a bucket through this node's key share in its head manifest.
    pub fn open_bucket_shared(&self, id: &BucketId) -> Result<Bucket> {
        let probe = self.core_with(
            *id,
            crate::crypto::Keyring::of(SecretKey::from_bytes([0; 32])),
        );
        let head = probe
            .read_head()
            .map_err(|_| BucketError::BucketNotFound(id.to_hex()))?;
        let m = probe.load_manifest(&head)?;
        let share = m
            .body
            .share_for(&self.identity.node_id())
            .ok_or_else(|| BucketError::WrongKey(id.to_hex()))?;
        let ring = share
            .open(&self.identity)
            .map_err(|_| BucketError::WrongKey(id.to_hex()))?;
        let core = self.core_of(*id, ring.base.clone());
        core.learn_ring(&ring)?;
        Ok(Bucket {
            core: Arc::new(core),
        })
    }

    /// Remove blobs that no retained version of `buckets` references.
    /// Every bucket in this state dir must be passed, or its blobs are lost.
    pub fn gc(&self, buckets: &[&Bucket]) -> Result<crate::store::GcReport> {
        self.gc_older_than(buckets, std::time::Duration::ZERO)
    }

    /// [`StateDir::gc`] that spares blobs written in the last `grace`: chunks
    /// a live mount sealed ahead of its next commit, blobs a sync is
    /// fetching before their manifest arrives.
    pub fn gc_older_than(
        &self,
        buckets: &[&Bucket],
        grace: std::time::Duration,
    ) -> Result<crate::store::GcReport> {
        self.gc_keeping(buckets, &HashSet::new(), grace)
    }

    /// [`StateDir::gc_older_than`] that also keeps `keep` (what blind
    /// replicas hold: no bucket here references it).
    pub fn gc_keeping(
        &self,
        buckets: &[&Bucket],
        keep: &HashSet<Hash>,
        grace: std::time::Duration,
    ) -> Result<crate::store::GcReport> {
        let started = std::time::Instant::now();
        let mut live = keep.clone();
        let mut index_ms = 0;
        for b in buckets {
            // Each bucket's own: what its blob index becomes.
            let mut mine = HashSet::new();
            b.collect_live(&mut mine)?;
            let indexing = std::time::Instant::now();
            b.replace_blob_index(mine.clone())?;
            index_ms += indexing.elapsed().as_millis() as u64;
            live.extend(mine);
        }
        let live_ms = started.elapsed().as_millis() as u64;
        let report = self.store.gc(&live, grace)?;
        tracing::debug!(
            live_ms,
            index_ms,
            sweep_ms = started.elapsed().as_millis() as u64 - live_ms,
            live = live.len(),
            "blob garbage collection"
        );
        Ok(report)
    }

    /// Remove bucket `id` from this node: its HEAD, key and lists. Its
    /// blobs go at the next [`StateDir::gc`].
    pub fn remove_bucket(&self, id: &BucketId) -> Result<()> {
        let dir = self.bucket_dir(id);
        blob_index::forget(&dir);
        if !self.has_blind(id) {
            journal::copies::remove(&self.root, id);
        }
        self.forget_genesis(id)?;
        epochs::forget(&dir)?;
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(BucketError::io(&dir)(e)),
        }
        crate::durable::sync_dir(&self.root.join("buckets")).map_err(BucketError::io(&dir))
    }
}

impl BucketCore {
    fn write_genesis(
        &self,
        root: Hash,
        root_key: &KeyBytes,
        chunk_size: u32,
        quota: Option<u64>,
        used: u64,
        entries: u64,
    ) -> Result<Hash> {
        let mut body = ManifestBody {
            bucket_id: self.id,
            height: 0,
            previous: None,
            merged: None,
            root,
            root_key: Vec::new(),
            chunk_size,
            quota,
            used_bytes: used,
            entries,
            shares: vec![KeyShare::create(&self.ring(), &self.identity.node_id())?],
            author: self.identity.node_id(),
            created_at: Timestamp::now(),
        };
        body.seal_root_key(&self.current_secret(), &root_key.0)?;
        let m = Manifest::sign(body, &self.identity)?;
        let hash = m.store(&self.store)?;
        self.record_genesis(&hash)?;
        self.write_head(&hash)?;
        Ok(hash)
    }
}

/// An open bucket: its head, its history, and mounts of its versions.
#[derive(Clone)]
pub struct Bucket {
    core: Arc<BucketCore>,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bucket({})", self.core.id)
    }
}

impl Bucket {
    /// The unwrapped bucket secret, for audits that check it never leaks
    /// (tests grep logs, databases and disks for it). Nothing else needs it.
    #[doc(hidden)]
    pub fn secret_for_audit(&self) -> [u8; 32] {
        *self.core.secret.expose()
    }

    /// Whether this node can open version `m` (a secret it knows, or a share
    /// of it, seals its root key).
    pub fn can_open(&self, m: &Manifest) -> bool {
        self.core.open_root_key(m).is_ok()
    }

    /// How many rotations of the secret this node knows of.
    pub fn epochs(&self) -> usize {
        self.core.epoch_count()
    }

    /// Whether this node can open `version` (in its store).
    pub fn can_open_version(&self, version: &Hash) -> Result<bool> {
        Ok(self.can_open(&self.core.load_manifest(version)?))
    }

    /// Every secret of the bucket sealed to `node` (a peer that proved the
    /// bucket's secret as an enrolling member does).
    pub fn keyring_share(&self, node: &crate::crypto::NodeId) -> Result<KeyShare> {
        Ok(KeyShare::create(&self.core.ring(), node)?)
    }

    /// Take in the epochs of `ring` (this bucket's, from a peer), kept on
    /// this node's disk; how many were new.
    pub fn learn_ring(&self, ring: &crate::crypto::Keyring) -> Result<usize> {
        self.core.learn_ring(ring)
    }

    pub fn id(&self) -> BucketId {
        self.core.id
    }

    /// The store this bucket's blobs are in (tests that copy them).
    #[cfg(test)]
    pub fn store_for_tests(&self) -> Arc<BlobStore> {
        self.core.store.clone()
    }

    pub fn head(&self) -> Result<Hash> {
        self.core.head()
    }

    /// Whether a HEAD was ever written here: false for a bucket being
    /// fetched for the first time (its history is not here yet, and
    /// that is no damage to recover from).
    pub fn has_head(&self) -> bool {
        self.core.head_path().exists()
    }

    /// A read-write mount of the head.
    pub fn mount(&self) -> Result<Mount> {
        let mut m = Mount::open(self.core.clone(), self.head()?, false)?;
        m.rebind_unbound_head();
        Ok(m)
    }

    /// A read-only mount of any version.
    pub fn open_version(&self, version: &Hash) -> Result<Mount> {
        Mount::open(self.core.clone(), *version, true)
    }

    /// Load and verify one version's manifest.
    pub fn manifest(&self, version: &Hash) -> Result<Manifest> {
        self.core.load_manifest(version)
    }

    /// Every version reachable from the head, newest first, each one's
    /// signature and links to its parents verified.
    pub fn history(&self) -> Result<Vec<VersionInfo>> {
        let mut out = Vec::new();
        for (hash, m) in self.walk(self.head()?)? {
            out.push(VersionInfo {
                hash,
                height: m.body.height,
                previous: m.body.previous,
                merged: m.body.merged,
                author: m.body.author,
                created_at: m.body.created_at,
                used_bytes: m.body.used_bytes,
                entries: m.body.entries,
            });
        }
        out.sort_by(|a, b| b.height.cmp(&a.height).then(b.hash.cmp(&a.hash)));
        Ok(out)
    }

    /// Walk all ancestors of `start` (inclusive), verifying each chain link.
    pub(crate) fn walk(&self, start: Hash) -> Result<Vec<(Hash, Manifest)>> {
        self.core.walk(start)
    }

    /// Make `version`'s tree the content of a new head version.
    pub fn restore(&self, version: &Hash) -> Result<Saved> {
        let mut mount = self.mount()?;
        mount.restore_version(version)?;
        mount.commit(None)
    }

    /// Add every blob the bucket's versions reference to `live`.
    fn collect_live(&self, live: &mut HashSet<Hash>) -> Result<()> {
        self.visit_blobs(live, false).map(|_| ())
    }

    /// Apply `retention` to the history: versions it does not keep, and
    /// that `pinned` does not name, are removed (their manifests now, the
    /// blobs only they used at the next GC). Pinned versions outside the
    /// head's history stay live as roots. Returns how many were removed.
    pub fn prune(&self, retention: &Retention, pinned: &HashSet<Hash>) -> Result<usize> {
        let now = Timestamp::now();
        let mut versions = self.walk(self.head()?)?;
        versions.sort_by_key(|(h, m)| std::cmp::Reverse((m.body.height, *h)));
        let keep: HashSet<Hash> = versions
            .iter()
            .enumerate()
            .filter(|(rank, (h, m))| {
                pinned.contains(h) || retention.keeps(*rank, m.body.created_at, now)
            })
            .map(|(_, (h, _))| *h)
            .collect();
        let drop: Vec<Hash> = versions
            .iter()
            .map(|(h, _)| *h)
            .filter(|h| !keep.contains(h))
            .collect();
        // Pinned versions are roots of their own: once what links them to
        // the head is pruned, the head's history no longer reaches them.
        let roots: HashSet<Hash> = pinned
            .iter()
            .filter(|h| self.core.store.contains(h))
            .copied()
            .collect();
        if drop.is_empty() {
            write_hashes(&self.core.roots_path(), &roots)?;
            return Ok(0);
        }
        // Record the cut before removing anything, so a crash in between
        // leaves a history that still verifies.
        let _one = PRUNED_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut pruned = read_hashes(&self.core.pruned_path())?;
        pruned.extend(drop.iter().copied());
        let still_named: HashSet<Hash> = versions
            .iter()
            .filter(|(h, _)| keep.contains(h))
            .flat_map(|(_, m)| m.parents().collect::<Vec<_>>())
            .chain(roots.iter().flat_map(|r| {
                self.core
                    .load_manifest(r)
                    .map(|m| m.parents().collect::<Vec<_>>())
                    .unwrap_or_default()
            }))
            .collect();
        // Versions a peer's newer history still names (a merge of one,
        // fetched but not applied yet) must read as pruned, not missing:
        // the list keeps every pruned version until it grows past
        // PRUNED_REMEMBERED, and then the ones the history still names and
        // this pass's.
        if pruned.len() > PRUNED_REMEMBERED {
            pruned.retain(|h| still_named.contains(h) || drop.contains(h));
        }
        write_hashes(&self.core.pruned_path(), &pruned)?;
        write_hashes(&self.core.roots_path(), &roots)?;
        for h in &drop {
            self.core.store.remove(h)?;
        }
        tracing::info!(bucket = %self.id(), removed = drop.len(), kept = keep.len(), "pruned history");
        Ok(drop.len())
    }

    /// Check every blob of every version: manifests and their chain, directory
    /// nodes, and each chunk's hash and authentication tag.
    pub fn verify(&self) -> Result<VerifyReport> {
        self.visit_blobs(&mut HashSet::new(), true)
    }

    fn visit_blobs(&self, seen: &mut HashSet<Hash>, open_chunks: bool) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let mut versions = self.walk(self.head()?)?;
        for root in self.core.roots()? {
            if !seen.contains(&root) && self.core.store.contains(&root) {
                versions.extend(self.walk(root)?);
            }
        }
        for (hash, m) in versions {
            if seen.contains(&hash) {
                continue;
            }
            seen.insert(hash);
            report.versions += 1;
            let root_key = self.core.open_root_key(&m)?;
            let mut stack = vec![Link {
                hash: m.body.root,
                key: root_key,
            }];
            while let Some(link) = stack.pop() {
                if !seen.insert(link.hash) {
                    continue;
                }
                report.directories += 1;
                let node = match DirNode::load(&self.core.store, &link) {
                    Ok(node) => node,
                    // A version known here only by its manifest (a chain
                    // this node fast-forwarded through): nothing of its tree
                    // is here to keep. Verification wants every blob.
                    Err(BucketError::Store(crate::store::StoreError::NotFound(_)))
                        if !open_chunks =>
                    {
                        continue
                    }
                    Err(e) => return Err(e),
                };
                // The root's link table holds files like a directory does.
                stack.extend(node.links);
                for e in node.entries {
                    match e.kind {
                        EntryKind::File(f) => {
                            let key = f.key.key();
                            for (_, c) in f.chunks.iter() {
                                let c = &c;
                                if !seen.insert(*c) {
                                    continue;
                                }
                                report.chunks += 1;
                                if open_chunks {
                                    let mut sealed = self.core.store.get(c)?;
                                    chunks::open_chunk(&self.core.store, &key, c, &mut sealed)?;
                                }
                            }
                            // Patches are checked by opening them over a
                            // scratch chunk (their fit is checked too).
                            for (_, p) in f.chunks.patch_blobs() {
                                if !seen.insert(p) {
                                    continue;
                                }
                                report.patches += 1;
                                if open_chunks {
                                    let sealed = self.core.store.get(&p)?;
                                    let cs = u64::from(m.body.chunk_size);
                                    chunks::apply_patch(&key, &p, &sealed, &mut Vec::new(), cs)?;
                                }
                            }
                        }
                        EntryKind::Dir(l) => stack.push(l),
                        EntryKind::Symlink(_) | EntryKind::Special { .. } | EntryKind::Shared => {}
                    }
                }
            }
        }
        Ok(report)
    }
}

/// Held while a `PRUNED` list is read, changed and written (retention and
/// a pull's history cut run on different tasks; a lost write would turn a
/// pruned version into a missing one).
static PRUNED_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Pruned versions remembered by name (a line of hex each) before only
/// the boundary of the kept history is: enough for a peer's history that
/// names versions pruned here to still read as pruned (see [`Bucket::prune`]).
const PRUNED_REMEMBERED: usize = 10_000;

/// What [`Bucket::verify`] checked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub versions: usize,
    pub directories: usize,
    pub chunks: usize,
    /// Chunk patches (see `chunks::patch`).
    pub patches: usize,
}

#[cfg(test)]
mod local_key_tests {
    use super::*;

    /// #26 finding 10: a node-local key wrapped by an earlier build (not
    /// bound to its bucket) is re-wrapped bound at the node's start, and
    /// from then on an unbound wrap is refused in that state dir.
    #[test]
    fn unbound_local_keys_are_bound_once_then_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let kek = Kek::generate().unwrap();
        let id = BucketId::generate().unwrap();
        let bucket = state
            .create_bucket(id, &kek, &BucketOptions::default())
            .unwrap();
        let secret = SecretKey::from_bytes(bucket.secret_for_audit());
        let key_file = state.bucket_dir(&id).join("key.wrapped");
        let unbound = kek.wrap_unbound(&secret);
        std::fs::write(&key_file, &unbound.0).unwrap();
        state
            .open_bucket(&id, &kek)
            .expect("an earlier build's wrap opens");
        assert_eq!(state.bind_local_keys(&kek).unwrap(), 1);
        assert_eq!(state.bind_local_keys(&kek).unwrap(), 0, "once");
        // A rotation: the next KEK, still opening this one, re-wraps it.
        let next_only = Kek::generate().unwrap();
        let next = next_only.clone().still_opening(kek.clone());
        assert_eq!(state.bind_local_keys(&next).unwrap(), 1);
        state
            .open_bucket(&id, &next_only)
            .expect("the next KEK alone opens it");
        assert!(matches!(
            state.open_bucket(&id, &kek),
            Err(BucketError::WrongKey(_))
        ));
        let kek = next_only;
        let rewrapped = WrappedKey(std::fs::read(&key_file).unwrap());
        kek.unwrap_for(&rewrapped, &WrapContext::node_local(&id.to_hex()), false)
            .expect("bound to its bucket now");
        state.open_bucket(&id, &kek).unwrap();
        std::fs::write(&key_file, &unbound.0).unwrap();
        assert!(matches!(
            state.open_bucket(&id, &kek),
            Err(BucketError::WrongKey(_))
        ));
    }

    /// A key this KEK cannot open is left alone, and unbound wraps stay
    /// accepted until a start with the right KEK has bound every key.
    #[test]
    fn a_key_of_another_kek_keeps_the_state_dir_unbound() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let (kek, other) = (Kek::generate().unwrap(), Kek::generate().unwrap());
        let id = BucketId::generate().unwrap();
        state
            .create_bucket(id, &kek, &BucketOptions::default())
            .unwrap();
        assert_eq!(state.bind_local_keys(&other).unwrap(), 0);
        assert!(!state.local_keys_bound_path().exists());
        assert_eq!(state.bind_local_keys(&kek).unwrap(), 0);
        assert!(state.local_keys_bound_path().exists());
    }
}
