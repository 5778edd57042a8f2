//! Recovery, before a writable mount goes live: every change a crash left
//! in the journal goes into HEAD (see the module docs of `journal` for why
//! each case is right).

use std::sync::Arc;

use super::{Journal, Recorded};
use crate::bucket::error::{BucketError, Result};
use crate::bucket::{Bucket, BucketCore, ConflictFile, Mount};
use crate::store::Hash;

impl Bucket {
    /// A read-write mount of the head that records its changes for the
    /// journal, once every change an earlier process journaled is in HEAD.
    pub fn mount_journaled(&self) -> Result<Mount> {
        let core = &self.core;
        let journal = Arc::new(Journal::open(core.clone())?);
        let found = journal.scan()?;
        for version in &found.retired {
            // Durable before it was named: merge it in unless HEAD has it.
            if let Err(e) = core.load_manifest(version) {
                tracing::error!(bucket = %core.id, %version, error = %e, "the journal names a version that does not load; its changes cannot be recovered from it");
                continue;
            }
            let head = core.head()?;
            let mut m = Mount::open(core.clone(), head, false)?;
            m.merge_from(version, &ConflictFile)?;
            if core.head()? != head {
                tracing::info!(bucket = %core.id, %version, "a version whose commit a crash interrupted is in HEAD now");
            }
        }
        if let Some((base, changes)) = found.active.filter(|(_, c)| !c.is_empty()) {
            replay_on(core, base, changes).map_err(|e| match e {
                BucketError::Integrity(why) => {
                    BucketError::Integrity(format!("{why}; they stay in {}", journal.dir.display()))
                }
                other => other,
            })?;
        }
        journal.clear()?;
        let mut m = self.mount()?;
        m.attach_journal(journal);
        Ok(m)
    }

    /// Put the changes of `bytes`, a replica's copy of another node's
    /// journal (`syncReplicas`), into HEAD as recovery does with this
    /// node's own; the version that holds them, or `None` when the copy
    /// holds no change. Changes HEAD has already (the same edits) make
    /// no conflict.
    pub fn replay_journal_copy(&self, bytes: &[u8]) -> Result<Option<Hash>> {
        let journal = Journal::open(self.core.clone())?;
        let Some((base, changes)) = journal.read_copy(bytes)?.filter(|(_, c)| !c.is_empty()) else {
            return Ok(None);
        };
        let me = self.core.identity.node_id();
        if self.is_member_at(&base, &me)? {
            return replay_on(&self.core, base, changes).map(Some);
        }
        // A version this node writes on `base` would not verify (it was
        // no member then; it made itself one since, when it imported the
        // bucket from a replica): the changes go on HEAD, which holds
        // `base` and the share (the same tree, unless HEAD moved on).
        let head = self.core.head()?;
        tracing::info!(bucket = %self.core.id, %base, %head, "this node was no member at the copy's base: its changes are replayed on the head");
        replay_on(&self.core, head, changes).map(Some)
    }
}

/// Replay `changes` on `base` and save them, merged with HEAD if HEAD
/// moved past `base` without them; the version that holds them.
fn replay_on(core: &Arc<BucketCore>, base: Hash, changes: Vec<Recorded>) -> Result<Hash> {
    let head = core.head()?;
    let mut m = Mount::open(core.clone(), base, false).map_err(|e| {
        BucketError::Integrity(format!(
            "journaled changes apply to version {base}, which does not load ({e})"
        ))
    })?;
    let total = changes.len();
    let mut skipped = 0usize;
    for change in changes {
        if let Err(e) = m.replay(change) {
            // Only a change to a file unlinked while open (alive
            // then, gone in a fresh mount) fails the second time.
            skipped += 1;
            tracing::debug!(bucket = %core.id, error = %e, "a journaled change does not apply again");
        }
    }
    let saved = if base == head {
        m.save()?.hash
    } else {
        // HEAD moved without these changes (a peer's head taken
        // in before this mount opened): merge them.
        m.merge_from(&head, &ConflictFile)?;
        m.base().hash
    };
    tracing::info!(bucket = %core.id, replayed = total - skipped, skipped, version = %saved, "journaled changes are in HEAD");
    Ok(saved)
}
