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
    fn from(t: Timestamp) -> Self {
        if t.secs >= 0 {
            UNIX_EPOCH + std::time::Duration::new(t.secs as u64, t.nanos)
        } else {
            UNIX_EPOCH - std::time::Duration::from_secs((-t.secs) as u64)
                + std::time::Duration::from_nanos(t.nanos as u64)
        }
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
}

impl Meta {
    pub fn new(mode: u32, uid: u32, gid: u32, writer: [u8; 8]) -> Self {
        let now = Timestamp::now();
        Self {
            mode: mode & 0o7777,
            uid,
            gid,
            atime: now,
            mtime: now,
            ctime: now,
            xattrs: BTreeMap::new(),
            writer,
        }
    }
}

/// A pointer to a sealed blob and the key that opens it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub hash: Hash,
    pub key: KeyBytes,
}

/// A file's content: size, key and chunk addresses (`None` is a hole of zeros).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileNode {
    pub size: u64,
    pub key: KeyBytes,
    pub chunks: Vec<Option<Hash>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    File(FileNode),
    Dir(Link),
    Symlink(Vec<u8>),
}

impl EntryKind {
    pub fn is_dir(&self) -> bool {
        matches!(self, EntryKind::Dir(_))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub name: Vec<u8>,
    pub meta: Meta,
    pub kind: EntryKind,
}

/// One directory's contents. Only the root node carries its own metadata
/// (every other directory's metadata lives in its parent's entry).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DirNode {
    pub root_meta: Option<Meta>,
    pub entries: Vec<Entry>,
}

impl DirNode {
    pub fn get(&self, name: &[u8]) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.name.as_slice().cmp(name))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// Seal and store this node under `key`; returns its address.
    pub fn store(&self, store: &BlobStore, key: &KeyBytes) -> Result<Hash> {
        let plain = codec::encode(codec::Tag::Dir, self)?;
        let sealed = key.key().seal(&plain)?;
        Ok(store.put(&sealed)?)
    }

    /// Load, verify and decrypt the node at `link`.
    pub fn load(store: &BlobStore, link: &Link) -> Result<Self> {
        let sealed = store.get(&link.hash)?;
        let plain = link.key.key().open(&sealed).map_err(|_| {
            tracing::error!(blob = %link.hash, "directory node failed authenticated decryption");
            BucketError::Integrity(format!("directory node {} does not decrypt", link.hash))
        })?;
        let node: DirNode = codec::decode(codec::Tag::Dir, &plain, "directory node")?;
        node.check()?;
        Ok(node)
    }

    /// Entries must be valid names in strictly ascending order.
    fn check(&self) -> Result<()> {
        for w in self.entries.windows(2) {
            if w[0].name >= w[1].name {
                return Err(BucketError::Format {
                    what: "directory node",
                    reason: "entries not sorted or duplicated".into(),
                });
            }
        }
        for e in &self.entries {
            validate_name(&e.name).map_err(|err| BucketError::Format {
                what: "directory node",
                reason: format!("bad entry name: {err}"),
            })?;
        }
        Ok(())
    }
}
