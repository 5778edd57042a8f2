//! The persisted tree: directory nodes and the entries they hold.
//!
//! A directory node is encoded canonically (entries sorted by name), sealed
//! with the directory's own key and stored as a blob; its parent's entry holds
//! the blob address and that key (a [`Link`]). A file's entry holds its size,
//! its own key and the addresses of its encrypted chunks, so reading a byte
//! range needs only the chunks it touches.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::chunk_map::ChunkMap;
use super::codec;
use super::error::{BucketError, Result};
use super::names::validate_name;
use crate::crypto::SecretKey;
use crate::store::{BlobStore, Hash};

/// 32 key bytes inside a (later encrypted) tree node; zeroized on drop.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct KeyBytes(pub [u8; 32]);

impl std::fmt::Debug for KeyBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyBytes(<redacted>)")
    }
}

impl KeyBytes {
    pub fn generate() -> Result<Self> {
        Ok(Self(crate::crypto::random_array32()?))
    }
    pub fn key(&self) -> SecretKey {
        SecretKey::from_bytes(self.0)
    }
}

/// Seconds and nanoseconds since the Unix epoch.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

impl Timestamp {
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Self {
                secs: d.as_secs() as i64,
                nanos: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                if d.subsec_nanos() == 0 {
                    Self {
                        secs: -(d.as_secs() as i64),
                        nanos: 0,
                    }
                } else {
                    Self {
                        secs: -(d.as_secs() as i64) - 1,
                        nanos: 1_000_000_000 - d.subsec_nanos(),
                    }
                }
            }
        }
    }
}

impl From<Timestamp> for SystemTime {
    /// Total, since a decoded node may carry any value: nanoseconds past a
    /// second count as 999,999,999, and a time no `SystemTime` holds
    /// becomes the epoch (rather than an overflow panic in getattr).
    fn from(t: Timestamp) -> Self {
        let secs = std::time::Duration::from_secs(t.secs.unsigned_abs());
        let nanos = std::time::Duration::from_nanos(t.nanos.min(999_999_999).into());
        let whole = if t.secs >= 0 {
            UNIX_EPOCH.checked_add(secs)
        } else {
            UNIX_EPOCH.checked_sub(secs)
        };
        whole
            .and_then(|w| w.checked_add(nanos))
            .unwrap_or(UNIX_EPOCH)
    }
}

/// Ownership, permissions, times and extended attributes of an entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Permission bits (`0o7777`); the file type lives in [`EntryKind`].
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Short id of the node that last changed the entry (for last-writer-wins ties).
    pub writer: [u8; 8],
    /// Which changes of which writers this entry has seen: a merge takes the
    /// side whose clock dominates instead of calling two edits of one
    /// writer a conflict (see [`Clock`]).
    pub clock: Clock,
}

/// A version vector: per writer (a node's short id), how many changes of
/// the entry it has made. Each local change bumps the writer's own counter;
/// a merge that keeps one side keeps that side's clock, and one that
/// resolves a true conflict joins both. `a` happened before `b` exactly when
/// `a` is pointwise at most `b`; two clocks neither of which is below the
/// other are concurrent edits. Clocks need no common ancestor, so a merge
/// against a missing or distant base never mistakes a later edit of the
/// same file for a conflicting one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clock(BTreeMap<[u8; 8], u64>);

impl Clock {
    /// The clock of an entry `writer` just created.
    pub fn of(writer: [u8; 8]) -> Self {
        let mut c = Self::default();
        c.bump(writer);
        c
    }

    /// No change counted: an entry written before clocks existed, whose
    /// history only the merge base can tell.
    pub fn is_empty(&self) -> bool {
        self.0.values().all(|n| *n == 0)
    }

    /// Count one more change by `writer`.
    pub fn bump(&mut self, writer: [u8; 8]) {
        let n = self.0.entry(writer).or_insert(0);
        *n = n.saturating_add(1);
    }

    /// True when every change `self` has seen, `other` has seen too.
    pub fn is_before_or_eq(&self, other: &Clock) -> bool {
        self.0
            .iter()
            .all(|(w, n)| *n == 0 || other.0.get(w).is_some_and(|m| m >= n))
    }

    /// True when `other` has seen everything `self` has, and more.
    pub fn is_before(&self, other: &Clock) -> bool {
        self.is_before_or_eq(other) && !other.is_before_or_eq(self)
    }

    /// The pointwise maximum: a clock that has seen both.
    pub fn join(&self, other: &Clock) -> Clock {
        let mut out = self.0.clone();
        for (w, n) in &other.0 {
            let m = out.entry(*w).or_insert(0);
            *m = (*m).max(*n);
        }
        Clock(out)
    }
}

impl Meta {
    pub fn new(mode: u32, uid: u32, gid: u32, writer: [u8; 8]) -> Self {
        Self::new_at(mode, uid, gid, writer, Timestamp::now())
    }

    /// New metadata whose times are all `now`.
    pub fn new_at(mode: u32, uid: u32, gid: u32, writer: [u8; 8], now: Timestamp) -> Self {
        Self {
            mode: mode & 0o7777,
            uid,
            gid,
            atime: now,
            mtime: now,
            ctime: now,
            xattrs: BTreeMap::new(),
            writer,
            clock: Clock::of(writer),
        }
    }

    /// Record a local change by `writer`.
    pub fn touch(&mut self, writer: [u8; 8]) {
        self.writer = writer;
        self.clock.bump(writer);
    }

    /// The metadata without its clock, as digests and format 2 see it.
    pub fn without_clock(&self) -> legacy::MetaV2 {
        legacy::MetaV2::from(self)
    }
}

/// A pointer to a sealed blob and the key that opens it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub hash: Hash,
    pub key: KeyBytes,
}

/// A file's content: size, key and the addresses of its chunks that hold
/// data (the others are holes of zeros).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileNode {
    pub size: u64,
    pub key: KeyBytes,
    pub chunks: ChunkMap,
}

/// The kinds of special file a bucket records (as metadata only: their
/// data, if any, never passes through the bucket).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SpecialKind {
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    File(FileNode),
    Dir(Link),
    Symlink(Vec<u8>),
    /// A FIFO, socket or device node; `rdev` is the device number.
    Special {
        kind: SpecialKind,
        rdev: u64,
    },
    /// One name of a file with several names (hard links): its content and
    /// metadata live in the bucket's link table under the entry's `ino`.
    Shared,
}

impl EntryKind {
    pub fn is_dir(&self) -> bool {
        matches!(self, EntryKind::Dir(_))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub name: Vec<u8>,
    /// The entry's inode id: stable across versions, replicas and restarts
    /// (what FUSE hands the kernel), unique in a tree but for the names of
    /// one [`EntryKind::Shared`] file. The root is 1.
    pub ino: u64,
    pub meta: Meta,
    pub kind: EntryKind,
}

/// The inode id of the root directory.
pub const ROOT_ID: u64 = 1;

/// A fresh random inode id for a new entry: ids are chosen by whichever
/// replica creates the entry, with no coordination, so they are random
/// 63-bit numbers (never 0 or the root's 1).
pub fn fresh_ino() -> Result<u64> {
    loop {
        let mut b = [0u8; 8];
        crate::crypto::random_bytes(&mut b)?;
        let id = u64::from_le_bytes(b) >> 1;
        if id > ROOT_ID {
            return Ok(id);
        }
    }
}

/// A deterministic inode id derived from `parts` (for entries written before
/// ids existed, and for copies a merge makes): every replica derives the same.
pub fn derived_ino(parts: &[&[u8]]) -> u64 {
    let mut h = blake3::Hasher::new_derive_key("jax-csi derived inode id v1");
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let b: [u8; 8] = h.finalize().as_bytes()[..8]
        .try_into()
        .expect("8 of 32 bytes");
    (u64::from_le_bytes(b) >> 1).max(ROOT_ID + 1)
}

/// One directory's contents. Only the root node carries its own metadata
/// (every other directory's metadata lives in its parent's entry) and the
/// bucket's link table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DirNode {
    pub root_meta: Option<Meta>,
    /// The sealed table of files with several names (root only; `None`
    /// when no file has two names). Reserved: hard links are not written yet.
    pub links: Option<Link>,
    pub entries: Vec<Entry>,
}

impl DirNode {
    pub fn get(&self, name: &[u8]) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.name.as_slice().cmp(name))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// Seal and store this node under `key`; returns its address. Sealing
    /// is convergent: the same node under the same key always has the
    /// same address, so replicas that merged to one tree hold one tree
    /// (and a merge can tell it changed nothing).
    pub fn store(&self, store: &BlobStore, key: &KeyBytes) -> Result<Hash> {
        let plain = codec::encode(codec::DIR_VERSION, codec::Tag::Dir, self)?;
        let sealed = key.key().seal_convergent(&plain)?;
        Ok(store.put(&sealed)?)
    }

    /// The node at `link` as [`DirNode::load`] gives it, or from the nodes
    /// loaded this way lately (`dir_cache`): for the sync and merge paths,
    /// which open the same roots again and again. Reads of a mount and
    /// checks of the store load from the disk.
    pub fn load_cached(store: &BlobStore, link: &Link) -> Result<Self> {
        if let Some(node) = super::dir_cache::get(link) {
            return Ok(node.as_ref().clone());
        }
        let node = Self::load(store, link)?;
        super::dir_cache::keep(link, std::sync::Arc::new(node.clone()));
        Ok(node)
    }

    /// Load, verify and decrypt the node at `link` (either format version).
    pub fn load(store: &BlobStore, link: &Link) -> Result<Self> {
        let sealed = store.get(&link.hash)?;
        let plain = link.key.key().open(&sealed).map_err(|_| {
            tracing::error!(blob = %link.hash, "directory node failed authenticated decryption");
            BucketError::Integrity(format!("directory node {} does not decrypt", link.hash))
        })?;
        let what = "directory node";
        let node =
            match codec::version_of(&[1, 2, codec::DIR_VERSION], codec::Tag::Dir, &plain, what)? {
                (1, body) => legacy::upgrade(&link.hash, codec::decode_body(body, what)?),
                (2, body) => legacy::DirNodeV2::into_current(codec::decode_body(body, what)?),
                (_, body) => codec::decode_body(body, what)?,
            };
        node.check()?;
        Ok(node)
    }

    /// Entries must be valid names in strictly ascending order, each with
    /// an inode id of its own (the names of a shared file excepted).
    fn check(&self) -> Result<()> {
        let bad = |reason: String| BucketError::Format {
            what: "directory node",
            reason,
        };
        for w in self.entries.windows(2) {
            if w[0].name >= w[1].name {
                return Err(bad("entries not sorted or duplicated".into()));
            }
        }
        let mut ids = std::collections::HashSet::new();
        for e in &self.entries {
            validate_name(&e.name).map_err(|err| bad(format!("bad entry name: {err}")))?;
            if matches!(&e.kind, EntryKind::File(f) if !f.chunks.is_canonical()) {
                return Err(bad("a file's chunk runs are not canonical".into()));
            }
            if e.ino <= ROOT_ID {
                return Err(bad(format!("entry has the reserved inode id {}", e.ino)));
            }
            if !matches!(e.kind, EntryKind::Shared) && !ids.insert(e.ino) {
                return Err(bad(format!("inode id {} is used twice", e.ino)));
            }
        }
        if self.root_meta.is_none() && self.links.is_some() {
            return Err(bad("a link table outside the root".into()));
        }
        Ok(())
    }
}

/// Directory nodes as earlier formats wrote them. Format 1 had no inode
/// ids: they are derived from the node's address and the entry's name, so
/// the same old tree always gets the same ids. Format 2 had no clocks: its
/// entries read with an empty clock (before every clock that counts a change).
pub mod legacy {
    use super::*;

    /// [`Meta`] as formats 1 and 2 encode it (no clock).
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct MetaV2 {
        mode: u32,
        uid: u32,
        gid: u32,
        atime: Timestamp,
        mtime: Timestamp,
        ctime: Timestamp,
        xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
        writer: [u8; 8],
    }

    impl From<&Meta> for MetaV2 {
        fn from(m: &Meta) -> Self {
            Self {
                mode: m.mode,
                uid: m.uid,
                gid: m.gid,
                atime: m.atime,
                mtime: m.mtime,
                ctime: m.ctime,
                xattrs: m.xattrs.clone(),
                writer: m.writer,
            }
        }
    }

    impl From<MetaV2> for Meta {
        fn from(m: MetaV2) -> Self {
            Self {
                mode: m.mode,
                uid: m.uid,
                gid: m.gid,
                atime: m.atime,
                mtime: m.mtime,
                ctime: m.ctime,
                xattrs: m.xattrs,
                writer: m.writer,
                clock: Clock::default(),
            }
        }
    }

    #[derive(Serialize, Deserialize)]
    pub struct DirNodeV2 {
        root_meta: Option<MetaV2>,
        links: Option<Link>,
        entries: Vec<EntryV2>,
    }

    #[derive(Serialize, Deserialize)]
    struct EntryV2 {
        name: Vec<u8>,
        ino: u64,
        meta: MetaV2,
        kind: EntryKind,
    }

    impl DirNodeV2 {
        pub fn into_current(self) -> DirNode {
            DirNode {
                root_meta: self.root_meta.map(Meta::from),
                links: self.links,
                entries: self
                    .entries
                    .into_iter()
                    .map(|e| Entry {
                        name: e.name,
                        ino: e.ino,
                        meta: e.meta.into(),
                        kind: e.kind,
                    })
                    .collect(),
            }
        }

        #[cfg(test)]
        pub fn encode(node: &DirNode) -> Vec<u8> {
            let v2 = DirNodeV2 {
                root_meta: node.root_meta.as_ref().map(MetaV2::from),
                links: node.links.clone(),
                entries: node
                    .entries
                    .iter()
                    .map(|e| EntryV2 {
                        name: e.name.clone(),
                        ino: e.ino,
                        meta: MetaV2::from(&e.meta),
                        kind: e.kind.clone(),
                    })
                    .collect(),
            };
            codec::encode(2, codec::Tag::Dir, &v2).unwrap()
        }
    }

    #[derive(Serialize, Deserialize)]
    pub struct DirNodeV1 {
        root_meta: Option<MetaV2>,
        entries: Vec<EntryV1>,
    }

    #[derive(Serialize, Deserialize)]
    struct EntryV1 {
        name: Vec<u8>,
        meta: MetaV2,
        kind: KindV1,
    }

    #[derive(Serialize, Deserialize)]
    struct FileNodeV1 {
        size: u64,
        key: KeyBytes,
        chunks: Vec<Option<Hash>>,
    }

    #[derive(Serialize, Deserialize)]
    enum KindV1 {
        File(FileNodeV1),
        Dir(Link),
        Symlink(Vec<u8>),
    }

    pub fn upgrade(address: &Hash, old: DirNodeV1) -> DirNode {
        DirNode {
            root_meta: old.root_meta.map(Meta::from),
            links: None,
            entries: old
                .entries
                .into_iter()
                .map(|e| Entry {
                    ino: derived_ino(&[b"v1", &address.0, &e.name]),
                    name: e.name,
                    meta: e.meta.into(),
                    kind: match e.kind {
                        KindV1::File(f) => EntryKind::File(FileNode {
                            size: f.size,
                            key: f.key,
                            chunks: ChunkMap::from_dense(f.chunks),
                        }),
                        KindV1::Dir(l) => EntryKind::Dir(l),
                        KindV1::Symlink(t) => EntryKind::Symlink(t),
                    },
                })
                .collect(),
        }
    }

    #[cfg(test)]
    pub fn encode_v1(node: &DirNode) -> Vec<u8> {
        let v1 = DirNodeV1 {
            root_meta: node.root_meta.as_ref().map(MetaV2::from),
            entries: node
                .entries
                .iter()
                .map(|e| EntryV1 {
                    name: e.name.clone(),
                    meta: MetaV2::from(&e.meta),
                    kind: match &e.kind {
                        EntryKind::File(f) => KindV1::File(FileNodeV1 {
                            size: f.size,
                            key: f.key.clone(),
                            chunks: {
                                let mut dense = vec![None; f.chunks.end() as usize];
                                for (i, h) in f.chunks.iter() {
                                    dense[i as usize] = Some(h);
                                }
                                dense
                            },
                        }),
                        EntryKind::Dir(l) => KindV1::Dir(l.clone()),
                        EntryKind::Symlink(t) => KindV1::Symlink(t.clone()),
                        _ => unreachable!("v1 had files, directories and symlinks only"),
                    },
                })
                .collect(),
        };
        codec::encode(1, codec::Tag::Dir, &v1).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &[u8], ino: u64) -> Entry {
        Entry {
            name: name.to_vec(),
            ino,
            meta: Meta::new(0o644, 0, 0, [0; 8]),
            kind: EntryKind::Symlink(b"t".to_vec()),
        }
    }

    /// Nodes written before inode ids existed still open, and every load
    /// gives their entries the same ids.
    #[test]
    fn version_one_nodes_open_with_stable_derived_ids() {
        let d = tempfile::tempdir().unwrap();
        let store = BlobStore::open(d.path()).unwrap();
        let key = KeyBytes::generate().unwrap();
        let node = DirNode {
            root_meta: Some(Meta::new(0o755, 0, 0, [0; 8])),
            links: None,
            entries: vec![entry(b"a", 0), entry(b"b", 0)],
        };
        let sealed = key.key().seal(&legacy::encode_v1(&node)).unwrap();
        let hash = store.put(&sealed).unwrap();
        let link = Link { hash, key };
        let one = DirNode::load(&store, &link).unwrap();
        let two = DirNode::load(&store, &link).unwrap();
        assert_eq!(one, two);
        assert_eq!(one.entries.len(), 2);
        assert_ne!(one.entries[0].ino, one.entries[1].ino);
        assert!(one.entries.iter().all(|e| e.ino > ROOT_ID));
    }

    /// Nodes written before clocks existed open with empty clocks (which
    /// leave the decision to the merge base); nodes written now keep theirs.
    #[test]
    fn version_two_nodes_open_without_clocks_and_clocks_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let store = BlobStore::open(d.path()).unwrap();
        let key = KeyBytes::generate().unwrap();
        let mut node = DirNode {
            root_meta: Some(Meta::new(0o755, 0, 0, [1; 8])),
            links: None,
            entries: vec![entry(b"a", 7)],
        };
        node.entries[0].meta.touch([2; 8]);
        let sealed = key.key().seal(&legacy::DirNodeV2::encode(&node)).unwrap();
        let hash = store.put(&sealed).unwrap();
        let old = DirNode::load(
            &store,
            &Link {
                hash,
                key: key.clone(),
            },
        )
        .unwrap();
        assert!(old.entries[0].meta.clock.is_empty());
        assert_eq!(
            old.entries[0].meta.without_clock(),
            node.entries[0].meta.without_clock()
        );
        let hash = node.store(&store, &key).unwrap();
        let now = DirNode::load(&store, &Link { hash, key }).unwrap();
        assert_eq!(now, node);
        let c = &now.entries[0].meta.clock;
        assert!(Clock::of([0; 8]).is_before(c) && !c.is_empty());
    }

    #[test]
    fn clocks_order_edits_and_join_concurrent_ones() {
        let (a, b) = ([1; 8], [2; 8]);
        let mut x = Clock::of(a);
        let y = x.clone();
        x.bump(a);
        assert!(y.is_before(&x) && !x.is_before(&y));
        let mut z = y.clone();
        z.bump(b);
        assert!(!x.is_before(&z) && !z.is_before(&x), "concurrent");
        let j = x.join(&z);
        assert!(x.is_before(&j) && z.is_before(&j));
        assert_eq!(j, z.join(&x));
        assert!(Clock::default().is_empty() && !Clock::default().is_before(&Clock::default()));
    }

    #[test]
    fn duplicate_or_reserved_ids_are_format_errors() {
        let d = tempfile::tempdir().unwrap();
        let store = BlobStore::open(d.path()).unwrap();
        let key = KeyBytes::generate().unwrap();
        for entries in [
            vec![entry(b"a", 7), entry(b"b", 7)],
            vec![entry(b"a", 1)],
            vec![entry(b"a", 0)],
        ] {
            let node = DirNode {
                root_meta: None,
                links: None,
                entries,
            };
            let hash = node.store(&store, &key).unwrap();
            let link = Link {
                hash,
                key: key.clone(),
            };
            let err = DirNode::load(&store, &link).unwrap_err();
            assert!(matches!(err, BucketError::Format { .. }), "{err}");
        }
    }
}
