//! Recovery, before a writable mount goes live: every change a crash left
//! in the journal goes into HEAD (see the module docs of `journal` for why
//! each case is right).

use std::sync::Arc;

use super::Journal;
use crate::bucket::error::{BucketError, Result};
use crate::bucket::{Bucket, ConflictFile, Mount};

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
            let head = core.head()?;
            let mut m = Mount::open(core.clone(), base, false).map_err(|e| {
                BucketError::Integrity(format!(
                    "the journal's changes apply to version {base}, which does not load ({e}); they stay in {}",
                    journal.dir.display()
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
            tracing::info!(bucket = %core.id, replayed = total - skipped, skipped, version = %saved, "journaled changes a crash left are in HEAD");
        }
        journal.clear()?;
        let mut m = self.mount()?;
        m.attach_journal(journal);
        Ok(m)
    }
}
