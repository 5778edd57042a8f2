//! Versions: saving the tree as a signed manifest and naming it as HEAD
//! (at once, or in two halves around the store's sync), and replacing the
//! tree by another version's (restore, merge, reset).

use std::sync::Arc;

use super::inodes::Body;
use super::recording::JournalCut;
use super::{Mount, ROOT_INO};
use crate::bucket::error::{BucketError, Result};
use crate::bucket::journal::Change;
use crate::bucket::manifest::{Manifest, ManifestBody};
use crate::bucket::ops::Op;
use crate::bucket::tree::{Link, Timestamp};
use crate::bucket::BucketCore;
use crate::store::Hash;

/// A saved version: its manifest address, height and the bytes it uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Saved {
    pub hash: Hash,
    pub height: u64,
    pub used_bytes: u64,
}

/// A version [`Mount::prepare_save`] wrote that HEAD does not name yet.
#[must_use = "a prepared version is named as HEAD or handed back as unpublished"]
pub struct PreparedVersion {
    saved: Saved,
    core: Arc<BucketCore>,
    /// The journaled changes the version holds (a journaled mount).
    cut: Option<JournalCut>,
}

/// HEAD could not be made to name a prepared version.
#[derive(Debug)]
pub struct NotNamed {
    pub error: BucketError,
    /// The journal already names the version as holding its changes (it
    /// is durable): they need not be journaled again.
    pub journal_retired: bool,
}

impl PreparedVersion {
    pub fn version(&self) -> Saved {
        self.saved
    }

    /// Something else became the base meanwhile (never expected: merges
    /// wait for commits): the version stays unnamed, and its cut of the
    /// journal ends so no fsync waits for it.
    pub fn abandon(self) -> Saved {
        if let Some(cut) = &self.cut {
            let _ = cut.journal.unmark_cut(&cut.version);
        }
        self.saved
    }

    /// Make HEAD name this version: the journal's changes are marked as
    /// held by it first (see `bucket::journal`). Only once the store is
    /// synced, and while nothing else may write HEAD (the caller holds off
    /// merges and checked [`Mount::is_base`]): it needs no lock on the Mount.
    pub fn name_head(&self) -> std::result::Result<(), NotNamed> {
        let hash = self.saved.hash;
        if let Some(cut) = &self.cut {
            cut.journal.retire(&hash).map_err(|error| NotNamed {
                error,
                journal_retired: false,
            })?;
        }
        self.core.name_head(&hash).map_err(|error| NotNamed {
            error,
            journal_retired: self.cut.is_some(),
        })?;
        crate::crash_point::hit("head-moved");
        if let Some(cut) = &self.cut {
            cut.journal.drop_retired();
        }
        Ok(())
    }
}

impl Mount {
    /// Write a new signed version (`height + 1`, `previous` = the old head) and
    /// make it the bucket's head. Saving with no changes writes nothing.
    pub fn save(&mut self) -> Result<Saved> {
        self.check_writable()?;
        if !self.changed {
            return Ok(self.base());
        }
        self.commit(None)
    }

    /// A head written before manifests were bound (format 1) is not taken
    /// from a peer (see `Bucket::check_written_by_member`): the first
    /// writable mount after an upgrade writes the same tree again as a
    /// bound version, so peers can take this node's history. Best effort:
    /// a failure leaves the old head, and peers wait for the next save.
    pub(crate) fn rebind_unbound_head(&mut self) {
        if self.read_only || self.base.is_bound() {
            return;
        }
        self.changed = true;
        match self.save() {
            Ok(saved) => {
                tracing::info!(bucket = %self.core.id, version = %saved.hash, "the head predates bound manifests; wrote it again as a bound version")
            }
            Err(e) => {
                tracing::warn!(bucket = %self.core.id, error = %e, "could not write the unbound head again as a bound version; peers take this node's changes from its next save")
            }
        }
    }

    /// Flush, persist the tree and write a manifest whose parents are the
    /// base and, for a merge, `merged`; then make it durable and the head.
    pub(crate) fn commit(&mut self, merged: Option<(Hash, u64)>) -> Result<Saved> {
        let (manifest, hash) = self.write_manifest(merged)?;
        let prepared = PreparedVersion {
            saved: Saved {
                hash,
                height: manifest.body.height,
                used_bytes: manifest.body.used_bytes,
            },
            core: self.core.clone(),
            cut: self.cut_journal(hash),
        };
        self.journal_rebase(hash);
        let named = self
            .core
            .store
            .sync()
            .map_err(|e| NotNamed {
                error: e.into(),
                journal_retired: false,
            })
            .and_then(|()| prepared.name_head());
        if let Err(NotNamed {
            error,
            journal_retired,
        }) = named
        {
            self.give_back_cut(prepared, journal_retired);
            return Err(error);
        }
        self.take_as_base(manifest, hash);
        Ok(self.base())
    }

    /// The first half of a save, for callers that make it durable without
    /// holding this Mount (so readers and writers of other files go on
    /// during the fsyncs): seal, persist the tree and write the manifest,
    /// and take it as the base. Nothing is durable and HEAD has not moved
    /// until a sync of [`Mount::blob_store`] and then
    /// [`PreparedVersion::name_head`]; a failure in between goes to
    /// [`Mount::unpublished`]. `None` when there is nothing to save.
    pub fn prepare_save(&mut self) -> Result<Option<PreparedVersion>> {
        self.check_writable()?;
        if !self.changed {
            return Ok(None);
        }
        let (manifest, hash) = self.write_manifest(None)?;
        let cut = self.cut_journal(hash);
        self.journal_rebase(hash);
        self.take_as_base(manifest, hash);
        Ok(Some(PreparedVersion {
            saved: self.base(),
            core: self.core.clone(),
            cut,
        }))
    }

    /// The store a prepared version's blobs wait in.
    pub fn blob_store(&self) -> Arc<crate::store::BlobStore> {
        self.core.store.clone()
    }

    /// Whether the prepared version is still this Mount's base (nothing
    /// replaced it since), so naming it as HEAD loses nothing.
    pub fn is_base(&self, prepared: &PreparedVersion) -> bool {
        self.base_hash == prepared.saved.hash
    }

    /// A prepared version could not be made durable or named: its changes
    /// count as unsaved again, so the next save writes them (on top of it,
    /// which is harmless: its blobs are in the store either way). The
    /// journal keeps them too, unless it already names the version.
    pub fn unpublished(&mut self, prepared: PreparedVersion, journal_retired: bool) {
        if self.is_base(&prepared) {
            self.changed = true;
        }
        self.give_back_cut(prepared, journal_retired);
    }

    /// A version that HEAD does not name gives its cut of the journal back,
    /// unless the journal already names it as holding those changes.
    fn give_back_cut(&mut self, prepared: PreparedVersion, journal_retired: bool) {
        if let Some(cut) = prepared.cut {
            if !journal_retired {
                self.uncut_journal(cut);
            }
        }
    }

    /// The version just written is what this Mount's changes are relative to.
    fn take_as_base(&mut self, manifest: Manifest, hash: Hash) {
        self.base = manifest;
        self.base_hash = hash;
        self.changed = false;
    }

    /// Seal dirty data, persist the tree and store a signed manifest on top
    /// of the base (and `merged`), durable or not as the store's next sync.
    fn write_manifest(&mut self, merged: Option<(Hash, u64)>) -> Result<(Manifest, Hash)> {
        self.flush_data()?;
        let root_hash = self.persist_dir(ROOT_INO)?;
        crate::crash_point::hit("tree-written");
        let root_key = match &self.inodes[&ROOT_INO].body {
            Body::Dir(d) => d.key.clone(),
            _ => unreachable!("root is a directory"),
        };
        // Any member may sign a version at the largest height: the next
        // one is an error, never a wrap (release) or a panic (debug).
        let height = self
            .base
            .body
            .height
            .max(merged.map(|m| m.1).unwrap_or(0))
            .checked_add(1)
            .ok_or_else(|| BucketError::ChainBroken {
                at: merged.map(|m| m.0).unwrap_or(self.base_hash),
                reason: "a version at the largest height has no successor".into(),
            })?;
        // A node removed from the cluster gets no share of what is written
        // now, whatever version brought its share here.
        self.drop_shares_of_revoked();
        let ring = self.core.ring();
        self.refresh_shares(&ring)?;
        let mut body = ManifestBody {
            bucket_id: self.core.id,
            height,
            previous: Some(self.base_hash),
            merged: merged.map(|m| m.0),
            root: root_hash,
            root_key: Vec::new(),
            chunk_size: self.io.chunk_size as u32,
            quota: self.quota,
            used_bytes: self.used_bytes,
            entries: self.entries,
            shares: self.shares.clone(),
            author: self.core.identity.node_id(),
            created_at: Timestamp::now(),
        };
        body.seal_root_key(ring.current(), &root_key.0)?;
        let manifest = Manifest::sign(body, &self.core.identity)?;
        let hash = manifest.store(&self.core.store)?;
        crate::crash_point::hit("manifest-written");
        tracing::debug!(bucket = %self.core.id, version = %hash, height, "wrote version");
        Ok((manifest, hash))
    }

    /// The sealed root of the current tree, persisting dirty parts first (used by merge).
    pub(crate) fn persist_root(&mut self) -> Result<Link> {
        self.flush_data()?;
        let hash = self.persist_dir(ROOT_INO)?;
        let key = match &self.inodes[&ROOT_INO].body {
            Body::Dir(d) => d.key.clone(),
            _ => unreachable!("root is a directory"),
        };
        Ok(Link { hash, key })
    }

    /// Make `version`'s tree this mount's content (unsaved until the next
    /// save, which records it as a restore). Members stay as they are.
    pub fn restore_version(&mut self, version: &Hash) -> Result<()> {
        self.start_change()?;
        let old = self.core.load_manifest(version)?;
        let key = self.core.open_root_key(&old)?;
        self.replace_tree(
            Link {
                hash: old.body.root,
                key,
            },
            old.body.used_bytes,
            old.body.entries,
        )?;
        self.log(Op::Restore {
            version: version.to_hex(),
        });
        self.record(|| Change::Restore { version: *version });
        Ok(())
    }

    /// Replace the tree by the one at `root` (a merge result) with the given totals.
    pub(crate) fn replace_tree(&mut self, root: Link, used_bytes: u64, entries: u64) -> Result<()> {
        self.install_root(root, true)?;
        // The installed root is a new tree: it must be written out on commit.
        self.inodes.get_mut(&ROOT_INO).expect("root").dirty = true;
        self.used_bytes = used_bytes;
        self.entries = entries;
        self.changed = true;
        Ok(())
    }

    /// Reload from another version of the same bucket, dropping local state.
    /// The tree's inode ids are stable, so the kernel's references (and
    /// open files) carry over: a file still in the new tree keeps its number
    /// and shows the new content; orphans stay as they are.
    pub(crate) fn reset_to(&mut self, hash: Hash) -> Result<()> {
        let manifest = self.core.load_manifest(&hash)?;
        let root = Link {
            hash: manifest.body.root,
            key: self.core.open_root_key(&manifest)?,
        };
        self.install_root(root, true)?;
        self.used_bytes = manifest.body.used_bytes;
        self.entries = manifest.body.entries;
        self.quota = manifest.body.quota;
        self.shares = manifest.body.shares.clone();
        self.shares_epochs = None;
        self.base = manifest;
        self.base_hash = hash;
        let dropped = std::mem::replace(&mut self.changed, false);
        // Later changes apply to the new base; dropped ones (never, on a
        // fast-forward) must not be replayed on it.
        self.journal_rebase(hash);
        if dropped {
            self.journal_breaks();
        }
        Ok(())
    }
}
