//! The intent journal: what makes an `fsync` durable without writing a
//! version. A writable mount records each change it makes (see
//! `mount::recording`); `fsync` seals the changes recorded since the last
//! one into a frame, appends it to `journal/active` and fdatasyncs: one
//! small write and one flush, however many files changed. Versions come
//! from the committer at its own pace.
//!
//! The active file starts with a header frame naming its *base*, the
//! durable version the changes apply to, in order. When a version that
//! holds every journaled change is durable, the active file is renamed
//! `retired-<version>` (the commit's intent, fsynced) before HEAD names
//! the version, and removed after. Recovery (`recover`) therefore knows,
//! after any crash: a retired file's version holds its changes (merge it
//! in unless HEAD has it), and an active file's changes are in no version
//! (replay them on its base, merge with HEAD).
//!
//! Frames are `[u32 length][sealed postcard]`, sealed with the bucket
//! secret; the associated data binds each to its bucket, its file's base
//! and random epoch, and its place in the file, so a frame moved, dropped,
//! altered or left from the file's earlier life does not open. A frame cut
//! short by a crash was never acknowledged: reading stops there.
//!
//! A version is cut (its tree written) before it is durable, and an fsync
//! does not wait for that. Its changes recorded after the cut apply to
//! the new version, but the active file still holds changes on the old
//! base; so until the version is retired, such an fsync appends to the
//! active file behind the cut's own changes that no fsync had journaled
//! yet (written with it), keeping the file one sequence on its base. When
//! the version is retired, those later changes (the *tail*) are first
//! written to `next`, a file on the new version, which becomes the active
//! file once the old one is renamed. Recovery: `next` beside an active
//! file is a copy of the active file's end (removed); alone, it is the
//! active file (the rename that was cut short is finished).
//!
//! A retired file is kept as the `spare` and written over from its start
//! by the next active file: an fsync then rewrites blocks the file already
//! has, so its fdatasync flushes the data alone (an append that grows a
//! file also commits the file system's journal: two flushes, not one).

pub mod copies;
mod record;
pub(crate) mod recover;
#[cfg(test)]
mod tests;

pub(crate) use record::bytes as serde_bytes;
pub use record::{Change, Draws, Recorded};

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use serde::{Deserialize, Serialize};

use crate::bucket::error::{BucketError, Result};
use crate::bucket::BucketCore;
use crate::store::Hash;

const ACTIVE: &str = "active";
/// The tail of a version being retired, on that version (see the module docs).
const NEXT: &str = "next";
const SPARE: &str = "spare";
const RETIRED_PREFIX: &str = "retired-";
/// A new active file (no spare) is first filled with zeros to this size.
const PREALLOCATE: u64 = 1 << 20;
/// A retired file larger than this is removed rather than kept as the spare.
const SPARE_MAX: u64 = 64 << 20;
const AAD_TAG: &[u8] = b"jax-csi journal v1";
/// A frame larger than this is not one we wrote (a batch is bounded well below).
const FRAME_MAX: usize = 256 << 20;

/// The first frame of an active file.
#[derive(Serialize, Deserialize)]
struct Header {
    base: Hash,
    /// Chosen afresh for each active file: frames of a reused file's
    /// earlier life do not open in its new one.
    epoch: [u8; 16],
}

/// One bucket's journal directory.
pub struct Journal {
    core: Arc<BucketCore>,
    dir: PathBuf,
    state: Mutex<State>,
    /// Signalled when a cut is retired or handed back (an append that
    /// must wait for its version, see [`Journal::append`]).
    cut_settled: Condvar,
    /// Whether files started from now on keep their bytes in memory for
    /// replicas' copies (`syncReplicas`; see [`Journal::keep_copies`]).
    keeps_copies: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct State {
    active: Option<Active>,
    /// The file the last retire took over, its bytes (if kept) for a
    /// replica whose copy had not reached its end yet.
    previous: Option<(FileId, Option<Vec<u8>>)>,
    cut: Option<Cut>,
    /// The last versions cut and then handed back (never durable): a
    /// batch of changes on one of them, taken before, is refused.
    abandoned: Vec<Hash>,
}

/// How many handed-back versions [`State::abandoned`] remembers.
const ABANDONED_KEPT: usize = 8;

/// A version cut from the recorded changes that is not durable and
/// retired yet (see the module docs).
struct Cut {
    /// The base of the changes it holds (the active file's).
    base: Hash,
    version: Hash,
    /// The cut's changes no fsync had journaled, until the first append
    /// of a change on the version writes them ahead of it.
    untold: Option<Vec<Recorded>>,
    /// The changes on the version appended so far.
    tail: Vec<Recorded>,
    /// False when changes went unrecorded before the cut (a merge, a
    /// broken recording): the file cannot stand for the version, so an
    /// append on it waits until it is retired.
    takes_tail: bool,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("dir", &self.dir).finish()
    }
}

/// The open active file.
struct Active {
    file: File,
    base: Hash,
    epoch: [u8; 16],
    /// Frames written so far (the header is frame 0).
    frames: u64,
    /// Where the next frame goes.
    end: u64,
    /// The file's bytes up to `end` (frames since the last version), for
    /// replicas' copies: kept only while a mount's fsyncs wait for
    /// replicas (a large write fsynced in batches would otherwise hold
    /// them all in memory until the version, on every mount).
    bytes: Option<Vec<u8>>,
}

impl Active {
    fn id(&self) -> FileId {
        FileId {
            base: self.base,
            epoch: self.epoch,
        }
    }
}

/// Which active file a copy of journal bytes belongs to: its base and
/// epoch (a file reused for another base, or started afresh, is another).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileId {
    pub base: Hash,
    pub epoch: [u8; 16],
}

/// Where an append left a journal file: its frames end at `end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub file: FileId,
    pub end: u64,
}

/// Bytes of a journal file from `offset`, for a replica to keep a copy
/// of (`syncReplicas`: an fsync returns once replicas hold its frame).
#[derive(Debug)]
pub struct CopiedBytes {
    pub file: FileId,
    pub offset: u64,
    pub bytes: Vec<u8>,
}

/// What [`Journal::copy_for`] found.
#[derive(Debug)]
pub enum Copyable {
    /// The file's bytes from where the replica's copy ends.
    Bytes(CopiedBytes),
    /// The file went with an older version than the last one retired:
    /// its changes are in HEAD's history, which replicas hold instead.
    Gone,
    /// The file's bytes were not kept (it started before copies were
    /// asked for): replicas must hold the version that takes it over.
    NotKept,
}

/// What a journal directory holds, read back.
#[derive(Debug, Default)]
pub struct Found {
    /// The active file's base and the changes after it, in order.
    pub active: Option<(Hash, Vec<Recorded>)>,
    /// Versions named by retired files.
    pub retired: Vec<Hash>,
}

impl Journal {
    /// The journal of `core`'s bucket (its directory is made if missing).
    pub fn open(core: Arc<BucketCore>) -> Result<Self> {
        let dir = core.dir.join("journal");
        crate::durable::create_dir_all(&dir).map_err(BucketError::io(&dir))?;
        Ok(Self {
            core,
            dir,
            state: Mutex::new(State::default()),
            cut_settled: Condvar::new(),
            keeps_copies: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Keep the bytes of journal files started from now on, for replicas'
    /// copies (`syncReplicas`), or stop keeping them.
    pub fn keep_copies(&self, on: bool) {
        self.keeps_copies
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Where the active file's frames end now, if there is one.
    pub fn position(&self) -> Option<Position> {
        self.lock().active.as_ref().map(|a| Position {
            file: a.id(),
            end: a.end,
        })
    }

    /// The bytes of `file` (the active file, or the one the last retire
    /// took over) a replica needs after the first `have` of it, at most
    /// `max` of them (from its start when `have` names another file).
    pub fn copy_for(&self, file: &FileId, have: Option<(FileId, u64)>, max: usize) -> Copyable {
        let st = self.lock();
        let kept = match (&st.active, &st.previous) {
            (Some(a), _) if a.id() == *file => &a.bytes,
            (_, Some((id, bytes))) if id == file => bytes,
            _ => return Copyable::Gone,
        };
        let Some(bytes) = kept else {
            return Copyable::NotKept;
        };
        let offset = match have {
            Some((id, at)) if id == *file => (at as usize).min(bytes.len()),
            _ => 0,
        };
        let len = (bytes.len() - offset).min(max);
        Copyable::Bytes(CopiedBytes {
            file: *file,
            offset: offset as u64,
            bytes: bytes[offset..offset + len].to_vec(),
        })
    }

    /// The base and changes of a copy of an active file (a replica's, of
    /// another node's journal): read as recovery reads the file here.
    pub fn read_copy(&self, bytes: &[u8]) -> Result<Option<(Hash, Vec<Recorded>)>> {
        self.read_active(Path::new("<a replica's copy>"), bytes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `version` was cut from the changes on `base`: `untold` are those of
    /// its changes no fsync journaled. Changes on `version` may be
    /// appended from now on (unless `takes_tail` is false); [`retire`] or
    /// [`unmark_cut`] ends it.
    ///
    /// [`retire`]: Journal::retire
    /// [`unmark_cut`]: Journal::unmark_cut
    pub fn mark_cut(&self, base: Hash, version: Hash, untold: Vec<Recorded>, takes_tail: bool) {
        let mut st = self.lock();
        let mut cut = Cut {
            base,
            version,
            untold: Some(untold),
            tail: Vec::new(),
            takes_tail,
        };
        // One never settled (a commit that neither named nor handed back
        // its version): its changes come first, on its base.
        if let Some(old) = st.cut.take() {
            let mut untold = old.untold.unwrap_or_default();
            untold.extend(cut.untold.take().unwrap_or_default());
            cut.untold = Some(untold);
            cut.base = old.base;
        }
        st.cut = Some(cut);
    }

    /// `version` will not be named: the cut ends. Its untold changes come
    /// back unless an append wrote them already.
    pub fn unmark_cut(&self, version: &Hash) -> Option<Vec<Recorded>> {
        let mut st = self.lock();
        let given = match st.cut.take_if(|c| c.version == *version) {
            Some(cut) => cut.untold,
            None => None,
        };
        if st.abandoned.len() >= ABANDONED_KEPT {
            st.abandoned.remove(0);
        }
        st.abandoned.push(*version);
        drop(st);
        self.cut_settled.notify_all();
        given
    }

    fn aad(&self, base: &Hash, epoch: &[u8; 16], index: u64) -> Vec<u8> {
        let mut aad = AAD_TAG.to_vec();
        aad.extend_from_slice(&self.core.id.0);
        aad.extend_from_slice(&base.0);
        aad.extend_from_slice(epoch);
        aad.extend_from_slice(&index.to_le_bytes());
        aad
    }

    fn frame(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>> {
        let sealed = self.core.current_secret().seal_with_aad(plain, aad)?;
        let mut out = Vec::with_capacity(4 + sealed.len());
        out.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Append `changes` (made on top of `base`) and make them durable.
    /// The first append after a version starts a new active file. Changes
    /// on a version cut but not yet retired go to the active file behind
    /// the cut's untold changes (or wait for the version, when the file
    /// cannot stand for it).
    pub fn append(&self, base: &Hash, changes: &[Recorded]) -> Result<Position> {
        let mut st = self.lock();
        while st
            .cut
            .as_ref()
            .is_some_and(|c| c.version == *base && !c.takes_tail)
        {
            st = self.cut_settled.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        if st.abandoned.contains(base) {
            // Never a file on a version that may not be durable: the
            // caller writes a version instead.
            return Err(BucketError::Integrity(format!(
                "journal of bucket {}: changes on version {base}, which was not made durable",
                self.core.id
            )));
        }
        let State { active, cut, .. } = &mut *st;
        match cut.as_mut().filter(|c| c.version == *base) {
            Some(cut) => {
                let mut batch = cut.untold.take().unwrap_or_default();
                batch.extend_from_slice(changes);
                self.write_frame(active, &cut.base, &batch)?;
                cut.tail.extend_from_slice(changes);
            }
            None => self.write_frame(active, base, changes)?,
        }
        let a = active.as_ref().expect("written above");
        Ok(Position {
            file: a.id(),
            end: a.end,
        })
    }

    /// One frame of `changes` on `base` appended to the active file and
    /// fdatasynced (the file started if there is none).
    fn write_frame(
        &self,
        active: &mut Option<Active>,
        base: &Hash,
        changes: &[Recorded],
    ) -> Result<()> {
        let created = self.write_frame_at(&self.dir.join(ACTIVE), active, base, changes)?;
        crate::crash_point::hit("journal-appended");
        if created {
            crate::durable::sync_dir(&self.dir).map_err(BucketError::io(&self.dir))?;
        }
        Ok(())
    }

    /// One frame of `changes` on `base` written to `active`, the file at
    /// `path` (started on `base` if there is none), and fdatasynced;
    /// whether the file was started.
    fn write_frame_at(
        &self,
        path: &Path,
        active: &mut Option<Active>,
        base: &Hash,
        changes: &[Recorded],
    ) -> Result<bool> {
        let io = |e| BucketError::io(path)(e);
        if active.as_ref().is_some_and(|a| a.base != *base) {
            return Err(BucketError::Integrity(format!(
                "journal of bucket {}: changes on {base} while the active file holds changes on {}",
                self.core.id,
                active.as_ref().map(|a| a.base).expect("checked")
            )));
        }
        let created = active.is_none();
        let mut bytes = Vec::new();
        if created {
            let mut epoch = [0u8; 16];
            crate::crypto::random_bytes(&mut epoch)?;
            let header =
                postcard::to_stdvec(&Header { base: *base, epoch }).map_err(format_error)?;
            bytes.extend(self.frame(&self.header_aad(), &header)?);
            *active = Some(Active {
                file: self.new_active_file(path).map_err(io)?,
                base: *base,
                epoch,
                frames: 1,
                end: 0,
                bytes: self
                    .keeps_copies
                    .load(std::sync::atomic::Ordering::Relaxed)
                    .then(Vec::new),
            });
        }
        let a = active.as_mut().expect("opened above");
        let plain = postcard::to_stdvec(changes).map_err(format_error)?;
        bytes.extend(self.frame(&self.aad(base, &a.epoch, a.frames), &plain)?);
        // The end marker (a zero length) ends the file where a reused one
        // goes on with its earlier life; it is written over by the next frame.
        let frame_len = bytes.len() as u64;
        bytes.extend_from_slice(&[0; 4]);
        let written = a
            .file
            .write_all_at(&bytes, a.end)
            .and_then(|()| a.file.sync_data());
        if let Err(e) = written {
            // The file may end in part of a frame: nothing may follow it.
            *active = None;
            return Err(io(e));
        }
        a.frames += 1;
        a.end += frame_len;
        if let Some(kept) = &mut a.bytes {
            kept.extend_from_slice(&bytes[..frame_len as usize]);
        }
        Ok(created)
    }

    /// The file a new active file is written in: the spare, renamed (its
    /// blocks are there already), or a new file filled with zeros.
    fn new_active_file(&self, path: &Path) -> std::io::Result<File> {
        let spare = self.dir.join(SPARE);
        if std::fs::rename(&spare, path).is_ok() {
            return OpenOptions::new().write(true).open(path);
        }
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        file.write_all_at(&vec![0; PREALLOCATE as usize], 0)?;
        Ok(file)
    }

    /// `version` holds every change journaled so far on the active file's
    /// base and is durable: mark the active file as its (before HEAD
    /// names it; see the module docs). Changes on `version` appended
    /// meanwhile move to a new active file on it.
    pub fn retire(&self, version: &Hash) -> Result<()> {
        let mut st = self.lock();
        let tail = match &st.cut {
            Some(cut) if cut.version == *version => cut.tail.clone(),
            _ => Vec::new(),
        };
        let State { active, .. } = &mut *st;
        if let Some(old) = self.retire_file(active, version, &tail)? {
            st.previous = Some((old.id(), old.bytes));
        }
        st.cut.take_if(|c| c.version == *version);
        drop(st);
        self.cut_settled.notify_all();
        crate::crash_point::hit("journal-retired");
        Ok(())
    }

    /// Rename the active file for `version`, `tail` (its changes on the
    /// version) moved first into the file that becomes the active one;
    /// the file it took over, if it was open.
    fn retire_file(
        &self,
        active: &mut Option<Active>,
        version: &Hash,
        tail: &[Recorded],
    ) -> Result<Option<Active>> {
        let from = self.dir.join(ACTIVE);
        if active.is_none() && !from.exists() {
            return Ok(None);
        }
        let to = self
            .dir
            .join(format!("{RETIRED_PREFIX}{}", version.to_hex()));
        // The tail first, durably, in a file of its own on the version.
        let next = match tail {
            [] => None,
            tail => Some(self.write_next(version, tail)?),
        };
        std::fs::rename(&from, &to).map_err(BucketError::io(&from))?;
        let old = active.take();
        if next.is_some() {
            crate::crash_point::hit("journal-next-pending");
            let path = self.dir.join(NEXT);
            std::fs::rename(&path, &from).map_err(BucketError::io(&path))?;
        }
        crate::durable::sync_dir(&self.dir).map_err(BucketError::io(&self.dir))?;
        *active = next;
        Ok(old)
    }

    /// `next`: a file on `version` holding `tail`, fdatasynced (its
    /// directory entry is made durable by the retire's directory sync).
    fn write_next(&self, version: &Hash, tail: &[Recorded]) -> Result<Active> {
        let mut next = None;
        self.write_frame_at(&self.dir.join(NEXT), &mut next, version, tail)?;
        crate::crash_point::hit("journal-next-written");
        Ok(next.expect("started by the write"))
    }

    /// HEAD names a version holding every retired file's changes: keep
    /// one as the spare and remove the others (a leftover is harmless:
    /// recovery finds its version in HEAD).
    pub fn drop_retired(&self) {
        for (path, _) in self.retired_files() {
            self.keep_as_spare(&path);
        }
    }

    /// A file whose changes are in HEAD becomes the spare (if there is
    /// none and it is not too large), or goes.
    fn keep_as_spare(&self, path: &Path) {
        let spare = self.dir.join(SPARE);
        let small = std::fs::metadata(path).is_ok_and(|m| m.len() <= SPARE_MAX);
        // Its header is made an end marker first, durably: renamed back to
        // `active` by an append that a crash cuts short, it reads as empty
        // (never as the changes it held, which HEAD has).
        let emptied = || -> std::io::Result<()> {
            let f = OpenOptions::new().write(true).open(path)?;
            f.write_all_at(&[0; 4], 0)?;
            f.sync_data()
        };
        if small && !spare.exists() && emptied().is_ok() && std::fs::rename(path, &spare).is_ok() {
            return;
        }
        if let Err(e) = std::fs::remove_file(path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "removing a retired journal file");
            }
        }
    }

    /// Remove everything (recovery put all of it into HEAD).
    pub(crate) fn clear(&self) -> Result<()> {
        let mut st = self.lock();
        st.active = None;
        st.previous = None;
        st.cut = None;
        let path = self.dir.join(ACTIVE);
        // Its changes must never be read again: a spare is never read.
        if path.exists() {
            self.keep_as_spare(&path);
            if path.exists() {
                return Err(BucketError::Integrity(format!(
                    "{} could not be set aside after recovery",
                    path.display()
                )));
            }
        }
        self.drop_retired();
        crate::durable::sync_dir(&self.dir).map_err(BucketError::io(&self.dir))
    }

    fn retired_files(&self) -> Vec<(PathBuf, Option<Hash>)> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let hex = name.strip_prefix(RETIRED_PREFIX)?;
                Some((e.path(), Hash::from_hex(hex).ok()))
            })
            .collect()
    }

    /// Read back what the directory holds (for recovery).
    pub fn scan(&self) -> Result<Found> {
        self.settle_next()?;
        let mut found = Found::default();
        for (path, version) in self.retired_files() {
            match version {
                Some(v) => found.retired.push(v),
                None => {
                    tracing::warn!(path = %path.display(), "a retired journal file with a malformed name; ignored")
                }
            }
        }
        let path = self.dir.join(ACTIVE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
            Err(e) => return Err(BucketError::io(&path)(e)),
        };
        found.active = self.read_active(&path, &bytes)?;
        Ok(found)
    }

    /// A `next` file a crash left (see the module docs): beside an active
    /// file it copies the active file's end, so it goes; alone, it is the
    /// active file.
    fn settle_next(&self) -> Result<()> {
        let next = self.dir.join(NEXT);
        if !next.exists() {
            return Ok(());
        }
        let active = self.dir.join(ACTIVE);
        if active.exists() {
            std::fs::remove_file(&next).map_err(BucketError::io(&next))?;
        } else {
            std::fs::rename(&next, &active).map_err(BucketError::io(&next))?;
        }
        crate::durable::sync_dir(&self.dir).map_err(BucketError::io(&self.dir))
    }

    /// The frames of an active file, up to the first that is cut short or
    /// does not open (a crash mid-append; anything after it is reported).
    fn read_active(&self, path: &Path, bytes: &[u8]) -> Result<Option<(Hash, Vec<Recorded>)>> {
        let mut at = 0usize;
        let mut index = 0u64;
        let mut base = None;
        let mut epoch = [0u8; 16];
        let mut changes = Vec::new();
        let ring = self.core.ring();
        let stop = |at: usize, why: &str| {
            if at < bytes.len() {
                tracing::warn!(
                    path = %path.display(),
                    offset = at,
                    ignored = bytes.len() - at,
                    why,
                    "the journal ends in a frame that does not read (a crash while appending it, which no fsync acknowledged)"
                );
            }
        };
        loop {
            let Some(len) = bytes.get(at..at + 4) else {
                stop(at, "cut short");
                break;
            };
            let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
            if len == 0 {
                // The end marker: what follows is the file's earlier life.
                break;
            }
            let Some(sealed) = bytes.get(at + 4..at + 4 + len).filter(|_| len <= FRAME_MAX) else {
                stop(at, "cut short");
                break;
            };
            let aad_base = base.unwrap_or(Hash([0; 32]));
            let aad = match index {
                // The header's own base is inside it: bind it to nothing yet.
                0 => self.header_aad(),
                _ => self.aad(&aad_base, &epoch, index),
            };
            // Frames written before a rotation are sealed with an older secret.
            let plain = ring
                .newest_first()
                .find_map(|secret| secret.open_with_aad(sealed, &aad).ok());
            let Some(plain) = plain else {
                stop(at, "does not open");
                break;
            };
            if index == 0 {
                let h: Header = postcard::from_bytes(&plain).map_err(format_error)?;
                base = Some(h.base);
                epoch = h.epoch;
            } else {
                let batch: Vec<Recorded> = postcard::from_bytes(&plain).map_err(format_error)?;
                changes.extend(batch);
            }
            at += 4 + len;
            index += 1;
        }
        Ok(base.map(|b| (b, changes)))
    }

    fn header_aad(&self) -> Vec<u8> {
        self.aad(&Hash([0; 32]), &[0; 16], 0)
    }
}

/// Whether the journal directory `dir` holds changes HEAD may not name
/// yet (an active file, or a retired one whose version HEAD is about to
/// name): false once everything fsynced is in HEAD. For tests and
/// benchmarks that wait for the version after an fsync.
pub fn holds_changes(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|rd| {
        rd.flatten().any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name == ACTIVE || name == NEXT || name.starts_with(RETIRED_PREFIX)
        })
    })
}

fn format_error(e: postcard::Error) -> BucketError {
    BucketError::Format {
        what: "journal frame",
        reason: e.to_string(),
    }
}
