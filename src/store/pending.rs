//! Blobs written to temp files but not yet durable nor named.
//!
//! A blob gets its name under `blobs/` only once its bytes are on disk, so a
//! name always means durable bytes (a power cut cannot leave a named blob
//! empty, and "already stored" is a safe reason to skip a write). Until the
//! next [`super::BlobStore::sync`], readers find the bytes through here.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use super::Hash;

/// How many blobs may wait before the writer that adds one more starts a
/// sync of them all in the background: this bounds how much a crash can
/// discard and how much the final fsync of a long write has left to do.
pub(super) const MAX_BLOBS: usize = 256;
/// How many bytes may wait before a background sync starts (see [`MAX_BLOBS`]).
const MAX_BYTES: u64 = 128 << 20;
/// Past this many times the bounds above, the disk is slower than the
/// writers: the writer that adds a blob syncs before it goes on.
const OVERFULL: usize = 2;

#[derive(Debug, Default)]
pub(super) struct Pending {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Each waiting blob's temp file and length.
    blobs: HashMap<Hash, (PathBuf, u64)>,
    bytes: u64,
}

/// What [`Pending::add`] did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Added {
    /// Another writer got there first: the caller's temp file is not needed.
    Duplicate,
    /// Recorded, with how much now waits.
    Waiting(Backlog),
}

/// How much waits for a sync, against the bounds.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Backlog {
    Small,
    /// At the bounds: time to start a sync.
    Full,
    /// Over them [`OVERFULL`] times: a sync has not kept up.
    Overfull,
}

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("pending blobs lock")
    }

    /// The temp file holding blob `hash`, while it waits for a sync.
    pub(super) fn temp_of(&self, hash: &Hash) -> Option<PathBuf> {
        self.lock().blobs.get(hash).map(|(tmp, _)| tmp.clone())
    }

    pub(super) fn contains(&self, hash: &Hash) -> bool {
        self.lock().blobs.contains_key(hash)
    }

    /// Record blob `hash`, written to `tmp`.
    pub(super) fn add(&self, hash: Hash, tmp: PathBuf, len: u64) -> Added {
        let mut inner = self.lock();
        if inner.blobs.contains_key(&hash) {
            return Added::Duplicate;
        }
        inner.blobs.insert(hash, (tmp, len));
        inner.bytes += len;
        let (blobs, bytes) = (inner.blobs.len(), inner.bytes);
        let over = |times: usize| blobs >= times * MAX_BLOBS || bytes >= times as u64 * MAX_BYTES;
        Added::Waiting(if over(OVERFULL) {
            Backlog::Overfull
        } else if over(1) {
            Backlog::Full
        } else {
            Backlog::Small
        })
    }

    /// Every waiting blob and its temp file.
    pub(super) fn snapshot(&self) -> Vec<(Hash, PathBuf)> {
        self.lock()
            .blobs
            .iter()
            .map(|(h, (tmp, _))| (*h, tmp.clone()))
            .collect()
    }

    /// Blob `hash` no longer waits (it was named, or removed); returns its
    /// temp file.
    pub(super) fn finish(&self, hash: &Hash) -> Option<PathBuf> {
        let mut inner = self.lock();
        let (tmp, len) = inner.blobs.remove(hash)?;
        inner.bytes -= len;
        Some(tmp)
    }
}
