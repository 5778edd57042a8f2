//! Recording the changes of a writable mount for the journal (what makes
//! fsync one small append), and replaying them after a crash.
//!
//! Every change starts with [`Mount::start_change`] and takes what it
//! draws (its time, a new inode id or key) through [`Mount::now`],
//! [`Mount::fresh_ino`] and [`Mount::fresh_key`]; on success it calls
//! [`Mount::record`]. Replaying hands the recorded draws back, so the
//! replayed tree is the tree the changes made, clocks and times included.

use std::sync::Arc;

use super::{Ino, Mount, RenameFlags, SetAttr, XattrFlags};
use crate::bucket::error::Result;
use crate::bucket::journal::{Change, Draws, Journal, Recorded};
use crate::bucket::tree::{fresh_ino, KeyBytes, Timestamp};
use crate::store::Hash;

/// Bytes of file data recorded between two fsyncs that the journal takes;
/// past it (a large copy) the next fsync writes a version instead, which
/// costs about the same for that much data and keeps memory bounded.
const BATCH_MAX: u64 = 16 << 20;

/// The changes recorded since the last fsync or version.
pub(crate) struct Recording {
    journal: Arc<Journal>,
    /// The durable version the recorded (and journaled) changes apply to.
    base: Hash,
    changes: Vec<Recorded>,
    bytes: u64,
    /// Changes went unrecorded (too many bytes, a failed journal write, a
    /// tree replaced by a merge): only a version makes them durable now.
    broken: bool,
}

/// What an fsync has to do (see [`Mount::take_journal_batch`]).
pub enum JournalBatch {
    /// This mount keeps no journal: write a version.
    NotJournaled,
    /// The journal cannot hold the changes: write a version.
    NeedsVersion,
    /// Nothing changed since the last fsync or version.
    Empty,
    /// Append these changes, made on `base`.
    Changes {
        journal: Arc<Journal>,
        base: Hash,
        changes: Vec<Recorded>,
    },
}

/// What an fsync's batch came to ([`JournalBatch::append`]).
pub enum Appended {
    /// Nothing was waiting: every change is durable already.
    Nothing,
    /// One journal append made the changes durable; where it ended.
    Done(crate::bucket::journal::Position),
    /// Only a version makes them durable (no journal, or it cannot
    /// take them).
    NeedsVersion,
    /// The append failed (logged): the changes are only in memory, so
    /// break the recording ([`Mount::journal_breaks`]) and write a version.
    Failed,
}

impl JournalBatch {
    /// Make the batch durable with one journal append (one frame, one
    /// flush), outside the Mount's lock if the caller likes.
    pub fn append(self) -> Appended {
        let (journal, base, changes) = match self {
            JournalBatch::Empty => return Appended::Nothing,
            JournalBatch::NotJournaled | JournalBatch::NeedsVersion => {
                return Appended::NeedsVersion
            }
            JournalBatch::Changes {
                journal,
                base,
                changes,
            } => (journal, base, changes),
        };
        let appended = journal.append(&base, &changes);
        crate::metrics::journal_append(appended.is_ok());
        match appended {
            Ok(at) => Appended::Done(at),
            Err(e) => {
                tracing::warn!(error = %e, "appending to the journal failed; writing a version instead");
                Appended::Failed
            }
        }
    }
}

/// The recorded changes a version took at its cut (given back if the
/// version does not become durable).
pub(crate) struct JournalCut {
    pub(super) journal: Arc<Journal>,
    base: Hash,
    /// The version cut (the journal holds its unjournaled changes).
    pub(super) version: Hash,
    bytes: u64,
    broken: bool,
}

impl Mount {
    /// Record every change from now on into `journal` (after recovery, so
    /// the journal is empty and HEAD is this mount's base).
    pub(crate) fn attach_journal(&mut self, journal: Arc<Journal>) {
        self.recording = Some(Recording {
            journal,
            base: self.base_hash,
            changes: Vec::new(),
            bytes: 0,
            broken: false,
        });
    }

    /// The journal this mount records into, if any.
    pub fn journal(&self) -> Option<Arc<Journal>> {
        self.recording.as_ref().map(|r| r.journal.clone())
    }

    /// Whether changes are recorded for a journal.
    pub fn is_journaled(&self) -> bool {
        self.recording.is_some()
    }

    /// The start of a change: the mount must be writable, and the change
    /// draws afresh.
    pub(super) fn start_change(&mut self) -> Result<()> {
        self.check_writable()?;
        self.drawn = Draws::default();
        Ok(())
    }

    /// The time of the current change (one for all it touches).
    pub(super) fn now(&mut self) -> Timestamp {
        if let Some(r) = &self.replaying {
            if let Some(at) = r.at {
                return at;
            }
        }
        *self.drawn.at.get_or_insert_with(Timestamp::now)
    }

    /// An inode id for a new entry, unused in this mount.
    pub(super) fn fresh_ino(&mut self) -> Result<Ino> {
        if let Some(ino) = self.replaying.as_ref().and_then(|r| r.ino) {
            return Ok(ino);
        }
        let mut ino = fresh_ino()?;
        while self.inodes.contains_key(&ino) {
            ino = fresh_ino()?;
        }
        self.drawn.ino = Some(ino);
        Ok(ino)
    }

    /// A key for a new file or directory.
    pub(super) fn fresh_key(&mut self) -> Result<KeyBytes> {
        if let Some(key) = self.replaying.as_ref().and_then(|r| r.key.clone()) {
            return Ok(key);
        }
        let key = KeyBytes::generate()?;
        self.drawn.key = Some(key.clone());
        Ok(key)
    }

    /// The current change succeeded: keep it for the journal.
    pub(super) fn record(&mut self, change: impl FnOnce() -> Change) {
        let draws = std::mem::take(&mut self.drawn);
        if self.replaying.is_some() {
            return;
        }
        let Some(rec) = &mut self.recording else {
            return;
        };
        if rec.broken {
            return;
        }
        let change = change();
        rec.bytes += change.data_len();
        rec.changes.push(Recorded { draws, change });
        if rec.bytes > BATCH_MAX {
            rec.break_off();
        }
    }

    /// The tree changed by something that is not a recorded change (a
    /// merge's result), or an append failed: until a version holds the
    /// changes, fsync writes a version.
    pub fn journal_breaks(&mut self) {
        if let Some(rec) = &mut self.recording {
            rec.break_off();
        }
    }

    /// Hand the changes recorded since the last call to an fsync.
    pub fn take_journal_batch(&mut self) -> JournalBatch {
        match &mut self.recording {
            None => JournalBatch::NotJournaled,
            Some(rec) if rec.broken => JournalBatch::NeedsVersion,
            Some(rec) if rec.changes.is_empty() => JournalBatch::Empty,
            Some(rec) => {
                rec.bytes = 0;
                JournalBatch::Changes {
                    journal: rec.journal.clone(),
                    base: rec.base,
                    changes: std::mem::take(&mut rec.changes),
                }
            }
        }
    }

    /// Make every recorded change durable with one journal append (an
    /// fsync, for a caller that owns the Mount; a live mount appends
    /// outside its lock). A version when the journal cannot take them.
    pub fn sync_to_journal(&mut self) -> Result<()> {
        match self.take_journal_batch().append() {
            Appended::Nothing | Appended::Done(_) => Ok(()),
            Appended::NeedsVersion => self.save().map(drop),
            Appended::Failed => {
                self.journal_breaks();
                self.save().map(drop)
            }
        }
    }

    /// `version`'s cut: it holds every change so far; the ones recorded
    /// from now on apply to it. Its changes no fsync journaled go to the
    /// journal, which writes them ahead of the first fsync on `version`
    /// that comes before the version is durable.
    pub(super) fn cut_journal(&mut self, version: Hash) -> Option<JournalCut> {
        let rec = self.recording.as_mut()?;
        let broken = std::mem::take(&mut rec.broken);
        let untold = std::mem::take(&mut rec.changes);
        rec.journal.mark_cut(rec.base, version, untold, !broken);
        Some(JournalCut {
            journal: rec.journal.clone(),
            base: rec.base,
            version,
            bytes: std::mem::take(&mut rec.bytes),
            broken,
        })
    }

    /// The changes recorded from now on apply to `version`.
    pub(super) fn journal_rebase(&mut self, version: Hash) {
        if let Some(rec) = &mut self.recording {
            rec.base = version;
        }
    }

    /// A version did not become durable: its cut's changes come first
    /// again, on the cut's base, before those recorded since.
    pub(super) fn uncut_journal(&mut self, cut: JournalCut) {
        if let Some(rec) = &mut self.recording {
            rec.base = cut.base;
            let untold = cut.journal.unmark_cut(&cut.version).unwrap_or_default();
            let later = std::mem::replace(&mut rec.changes, untold);
            rec.changes.extend(later);
            rec.bytes += cut.bytes;
            rec.broken |= cut.broken;
            if rec.broken {
                rec.break_off();
            }
        }
    }

    /// Apply one recorded change again, with the draws it made.
    pub(crate) fn replay(&mut self, rec: Recorded) -> Result<()> {
        self.replaying = Some(rec.draws);
        let result = self.apply_change(rec.change);
        self.replaying = None;
        result
    }

    fn apply_change(&mut self, change: Change) -> Result<()> {
        match change {
            Change::Create {
                parent,
                name,
                mode,
                uid,
                gid,
            } => self.create(parent, &name, mode, uid, gid).map(drop),
            Change::Mkdir {
                parent,
                name,
                mode,
                uid,
                gid,
            } => self.mkdir(parent, &name, mode, uid, gid).map(drop),
            Change::Symlink {
                parent,
                name,
                target,
                uid,
                gid,
            } => self.symlink(parent, &name, &target, uid, gid).map(drop),
            Change::Mknod {
                parent,
                name,
                kind,
                mode,
                rdev,
                uid,
                gid,
            } => self
                .mknod(parent, &name, kind, mode, rdev, uid, gid)
                .map(drop),
            Change::Link {
                ino,
                new_parent,
                new_name,
            } => self.link(ino, new_parent, &new_name).map(drop),
            Change::Unlink { parent, name } => self.unlink(parent, &name),
            Change::Rmdir { parent, name } => self.rmdir(parent, &name),
            Change::Rename {
                parent,
                name,
                new_parent,
                new_name,
                no_replace,
                exchange,
            } => self.rename(
                parent,
                &name,
                new_parent,
                &new_name,
                RenameFlags {
                    no_replace,
                    exchange,
                },
            ),
            Change::Write { ino, offset, data } => self.write(ino, offset, &data).map(drop),
            Change::SetAttr {
                ino,
                mode,
                uid,
                gid,
                size,
                atime,
                mtime,
            } => self
                .setattr(
                    ino,
                    SetAttr {
                        mode,
                        uid,
                        gid,
                        size,
                        atime,
                        mtime,
                    },
                )
                .map(drop),
            Change::SetXattr {
                ino,
                name,
                value,
                create,
                replace,
            } => self.setxattr(ino, &name, &value, XattrFlags { create, replace }),
            Change::RemoveXattr { ino, name } => self.removexattr(ino, &name),
            Change::SetQuota { quota } => self.set_quota(quota),
            Change::Grant { node } => self.grant(&node),
            Change::Restore { version } => self.restore_version(&version),
        }
    }
}

impl Recording {
    fn break_off(&mut self) {
        self.broken = true;
        self.changes.clear();
        self.bytes = 0;
    }
}
