//! `Mount`: a live, virtual file system over one bucket version.
//!
//! The mount keeps an inode table in memory. Directories are loaded from their
//! sealed nodes the first time they are looked into; files carry their chunk
//! list and load chunk bytes only when read. Changes mark the changed entry's
//! directory and its ancestors dirty; [`Mount::save`] flushes dirty chunks,
//! re-seals only dirty directories bottom-up and writes a new signed manifest.
//!
//! The API is inode-based (what FUSE needs); `bucket::path` adds path helpers.
//! Inode numbers are the entries' ids stored in the tree: the same for a file
//! across versions, replicas, merges and restarts (root = 1).
//! Reads do not update atime (as with `noatime`), so reading never dirties
//! the tree.
//!
//! One `impl Mount` a job, a file each: this one holds the struct, opening
//! it, what it tells of itself, its ops log and its members; `inodes` the
//! inode table and the loading of directories; `query` the reads;
//! `namespace` creating, linking, removing and renaming names; `write`
//! writes, attributes, xattrs and the quota; `persist` what a change marks
//! dirty and the sealing of the tree; `save` versions, HEAD, restore and
//! reset; `views` following a head and what the kernel must forget; `pins`
//! the inodes kept alive while in use (orphans).

mod inodes;
mod namespace;
mod persist;
mod pins;
mod query;
mod recording;
mod save;
#[cfg(test)]
mod tests;
mod views;
mod write;

pub use namespace::RenameFlags;
pub use query::{Attr, DirEntry, FileKind};
pub use recording::{Appended, JournalBatch};
pub use save::{NotNamed, PreparedVersion, Saved};
#[cfg(test)]
pub(crate) use tests::test_bucket;
pub use views::{CachedView, Invalidations};
pub use write::{SetAttr, XattrFlags};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use crate::bucket::chunks::ChunkIo;
use crate::bucket::error::{BucketError, Result};
use crate::bucket::journal::Change;
use crate::bucket::manifest::Manifest;
use crate::bucket::ops::{Op, OpsLog};
use crate::bucket::tree::{Entry, Link};
use crate::bucket::BucketCore;
use crate::crypto::{KeyShare, NodeId};
use crate::store::Hash;
use inodes::Inode;

pub type Ino = u64;

/// The root directory's inode number (as FUSE expects).
pub const ROOT_INO: Ino = 1;

/// Usage figures for `statfs` and volume stats.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Usage {
    pub used_bytes: u64,
    pub quota: Option<u64>,
    pub entries: u64,
}

/// A live virtual file system over one bucket version.
pub struct Mount {
    core: Arc<BucketCore>,
    io: ChunkIo,
    base: Manifest,
    base_hash: Hash,
    read_only: bool,
    inodes: HashMap<Ino, Inode>,
    /// Bytes allocated by the tree's files (chunks that are not holes):
    /// what the quota counts, as a block file system's `df` does.
    used_bytes: u64,
    entries: u64,
    quota: Option<u64>,
    ops: OpsLog,
    /// Identities the bucket secret is shared with (carried into each new version).
    shares: Vec<KeyShare>,
    /// How many epochs the ring had when `shares` were sealed by this
    /// mount; `None` when they came from a version (whose writer's ring is
    /// not known), so they are sealed again once the ring has epochs.
    shares_epochs: Option<usize>,
    /// Anything changed since `base`.
    changed: bool,
    /// Inodes the user of the mount holds on to (see `pins`): a pinned
    /// file that is unlinked stays readable and writable.
    pinned: HashSet<Ino>,
    /// Files removed from the tree while pinned: alive until unpinned, never
    /// saved (POSIX: an unlinked file lives until its last close).
    orphans: HashSet<Ino>,
    /// Bytes held by orphans: not in any version, but on the quota.
    orphan_bytes: u64,
    /// The link table (files with several names) by inode id, as last
    /// loaded or saved; entries of loaded shared inodes are refreshed from
    /// them when the table is written.
    link_table: BTreeMap<Ino, Entry>,
    /// Where the table was loaded from or last written.
    links_stored: Option<Link>,
    /// The table must be rewritten on save.
    links_dirty: bool,
    /// The changes kept for the journal (a live writable mount).
    recording: Option<recording::Recording>,
    /// What the change being replayed drew when it was first made.
    replaying: Option<crate::bucket::journal::Draws>,
    /// What the current change drew so far.
    drawn: crate::bucket::journal::Draws,
}

impl std::fmt::Debug for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mount")
            .field("bucket", &self.core.id)
            .field("base", &self.base_hash)
            .field("height", &self.base.body.height)
            .field("read_only", &self.read_only)
            .finish()
    }
}

impl Mount {
    /// Open the version at `hash`; `read_only` refuses every change.
    pub(crate) fn open(core: Arc<BucketCore>, hash: Hash, read_only: bool) -> Result<Self> {
        let manifest = core.load_manifest(&hash)?;
        let root_key = core.open_root_key(&manifest)?;
        let root_link = Link {
            hash: manifest.body.root,
            key: root_key,
        };
        let io = ChunkIo::new(core.store.clone(), manifest.body.chunk_size);
        let mut mount = Self {
            core,
            io,
            used_bytes: manifest.body.used_bytes,
            entries: manifest.body.entries,
            quota: manifest.body.quota,
            shares: manifest.body.shares.clone(),
            shares_epochs: None,
            base: manifest,
            base_hash: hash,
            read_only,
            inodes: HashMap::new(),
            ops: OpsLog::default(),
            changed: false,
            pinned: HashSet::new(),
            orphans: HashSet::new(),
            orphan_bytes: 0,
            link_table: BTreeMap::new(),
            links_stored: None,
            links_dirty: false,
            recording: None,
            replaying: None,
            drawn: Default::default(),
        };
        mount.install_root(root_link, false)?;
        Ok(mount)
    }

    pub fn bucket_id(&self) -> crate::bucket::BucketId {
        self.core.id
    }

    /// The version this mount was opened at or last saved as.
    pub fn base(&self) -> Saved {
        Saved {
            hash: self.base_hash,
            height: self.base.body.height,
            used_bytes: self.base.body.used_bytes,
        }
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// True when there are changes not yet saved as a version.
    pub fn has_unsaved_changes(&self) -> bool {
        self.changed
    }

    pub fn ops_log(&self) -> &OpsLog {
        &self.ops
    }

    /// Forget the ops log: the current head is now known to the peers.
    pub fn mark_synced(&mut self) {
        self.ops.clear();
    }

    pub fn usage(&self) -> Usage {
        Usage {
            used_bytes: self.used_bytes + self.orphan_bytes,
            quota: self.quota,
            entries: self.entries,
        }
    }

    /// Where this bucket's blobs are stored (for the free space of its disk).
    pub fn store_dir(&self) -> std::path::PathBuf {
        self.core.store.root().to_path_buf()
    }

    pub fn chunk_size(&self) -> u64 {
        self.io.chunk_size
    }

    /// Share the bucket secret with `node` so it can read the bucket and sign
    /// versions other replicas accept. Takes effect with the next save.
    pub fn grant(&mut self, node: &NodeId) -> Result<()> {
        if self.core.revoked.contains(node) {
            return Err(BucketError::NotPermitted(
                "the node was removed from the cluster",
            ));
        }
        self.start_change()?;
        if !self.shares.iter().any(|s| s.recipient == *node) {
            self.shares.push(KeyShare::create(&self.core.ring(), node)?);
            self.changed = true;
            self.record(|| Change::Grant { node: *node });
        }
        Ok(())
    }

    /// Drop the shares of nodes removed from the cluster (the next save
    /// writes a version without them); whether there were any.
    pub fn drop_revoked_members(&mut self) -> Result<bool> {
        self.check_writable()?;
        let dropped = self.drop_shares_of_revoked();
        if dropped {
            self.changed = true;
        }
        Ok(dropped)
    }

    /// Remove the shares of revoked nodes (never this node's own); whether
    /// there were any.
    pub(crate) fn drop_shares_of_revoked(&mut self) -> bool {
        let before = self.shares.len();
        let me = self.core.identity.node_id();
        self.shares
            .retain(|s| s.recipient == me || !self.core.revoked.contains(&s.recipient));
        self.shares.len() != before
    }

    /// Take in the shares of another version (a merged head): every member
    /// of either side stays a member. A share made under the other side's
    /// ring is sealed again under this one's before the next version.
    pub(crate) fn adopt_shares(&mut self, shares: &[KeyShare]) {
        for s in shares {
            if !self.shares.iter().any(|m| m.recipient == s.recipient) {
                self.shares.push(s.clone());
                self.changed = true;
                self.shares_epochs = None;
            }
        }
    }

    /// Seal every share again under `ring` when it is not the ring they
    /// were made under (a rotation, or epochs learned from a peer), so
    /// every member can open what this node writes next.
    pub(super) fn refresh_shares(&mut self, ring: &crate::crypto::Keyring) -> Result<()> {
        let made_under = self.shares_epochs.or(ring.epochs().is_empty().then_some(0));
        if made_under == Some(ring.epochs().len()) {
            return Ok(());
        }
        self.shares = self
            .shares
            .iter()
            .map(|s| KeyShare::create(ring, &s.recipient))
            .collect::<std::result::Result<_, _>>()?;
        self.shares_epochs = Some(ring.epochs().len());
        Ok(())
    }

    /// Rotate the bucket secret: the next version, and every one after it,
    /// is sealed under a new epoch secret that only the current members'
    /// shares carry, and the root directory gets a new key. Nodes removed
    /// before (which keep the older secrets) cannot open its root; keys of
    /// files and directories below it that they already held are kept (see
    /// ARCHITECTURE.md). Takes effect with the next save; returns the
    /// epoch's number.
    pub fn rotate_secret(&mut self) -> Result<u32> {
        self.check_writable()?;
        let number = self.core.rotate_secret()?;
        if let Some(node) = self.inodes.get_mut(&ROOT_INO) {
            if let inodes::Body::Dir(d) = &mut node.body {
                d.key = crate::bucket::tree::KeyBytes::generate()?;
            }
        }
        self.mark_dirty(ROOT_INO);
        self.shares_epochs = None;
        self.changed = true;
        // Not a change a journal frame can replay: the next fsync writes a version.
        self.journal_breaks();
        Ok(number)
    }

    /// The identities that hold a share of the bucket secret.
    pub fn members(&self) -> Vec<NodeId> {
        self.shares.iter().map(|s| s.recipient).collect()
    }

    pub(crate) fn core(&self) -> &Arc<BucketCore> {
        &self.core
    }

    pub(crate) fn log(&mut self, op: Op) {
        self.ops.push(op);
        self.changed = true;
    }

    /// Log a change to `ino`'s content or metadata, unless `ino` is an
    /// orphan (no longer in the tree: nothing to save or merge).
    fn log_for(&mut self, ino: Ino, op: impl FnOnce(String) -> Op) {
        if !self.orphans.contains(&ino) {
            let path = self.path_of(ino);
            self.log(op(path));
        }
    }

    fn writer(&self) -> [u8; 8] {
        self.core.identity.node_id().short()
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            Err(BucketError::ReadOnly)
        } else {
            Ok(())
        }
    }
}
