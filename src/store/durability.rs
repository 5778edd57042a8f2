//! Storing a blob and making it durable: a put writes a temp file and
//! returns; a sync (every commit runs one before it moves HEAD) fdatasyncs
//! what waits, renames it into place and fsyncs the fan-out directories.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use super::pending::{Added, Backlog};
use super::{blob_path, io_at, BlobStore, Durability, Hash, StoreError};

impl BlobStore {
    /// Store `bytes` whose hash the caller already computed (it must be
    /// `Hash::of(bytes)`). The bytes wait in a temp file, readable at once,
    /// until the next [`BlobStore::sync`] makes them durable and names
    /// them (a commit syncs before it moves HEAD). Too much waiting makes
    /// this call sync.
    pub fn put_hashed(&self, hash: Hash, bytes: &[u8]) -> Result<(), StoreError> {
        debug_assert_eq!(hash, Hash::of(bytes));
        let dest = self.path_of(&hash);
        // Already here: claimed, so a collection running now keeps it for
        // whoever names it next.
        if self.contains(&hash) {
            return Ok(());
        }
        // The fan-out directory first: the outboard goes there at once.
        let dir = dest.parent().expect("blob path has a parent");
        crate::durable::create_dir_all(dir).map_err(io_at(dir))?;
        let tmp = self.tmp_path(&hash, "");
        let written = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(bytes)?;
            start_writeback(&f);
            Ok(())
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_at(&tmp)(e));
        }
        match self
            .durability
            .pending
            .add(hash, tmp.clone(), bytes.len() as u64)
        {
            Added::Duplicate => {
                let _ = std::fs::remove_file(&tmp);
                Ok(())
            }
            Added::Waiting(Backlog::Small) => Ok(()),
            // The disk works while the writer goes on encrypting.
            Added::Waiting(Backlog::Full) => {
                self.sync_in_background();
                Ok(())
            }
            // The disk is slower than the writer: wait for it.
            Added::Waiting(Backlog::Overfull) => self.sync(),
        }
    }

    /// Start making the waiting blobs durable on a thread of its own,
    /// unless such a sync is already running. Its failure is only logged:
    /// the blobs keep waiting, and the next sync (every commit runs one)
    /// retries them and reports the error.
    fn sync_in_background(&self) {
        let durability = &self.durability;
        if durability.background.swap(true, Ordering::AcqRel) {
            return;
        }
        let shared = durability.clone();
        let spawned = std::thread::Builder::new()
            .name("jax-blob-sync".into())
            .spawn(move || {
                if let Err(e) = shared.sync() {
                    tracing::warn!(error = %e, "background blob sync failed; the next commit retries it");
                }
                shared.background.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            durability.background.store(false, Ordering::Release);
        }
    }

    /// Hold off every sync until the guard drops (tests of what runs
    /// while a commit waits for the disk).
    #[cfg(test)]
    pub(crate) fn hold_syncs(&self) -> std::sync::MutexGuard<'_, ()> {
        self.durability.syncing.lock().expect("sync lock")
    }

    /// Make every blob stored so far durable: fdatasync each waiting blob
    /// (several at once), rename them into place, then fsync the fan-out
    /// directories they went into (each once, however many blobs it got,
    /// several at once). On an error, what was not done waits for the next
    /// try.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.durability.sync()
    }
}

impl Durability {
    /// See [`BlobStore::sync`].
    fn sync(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.syncing.lock().expect("sync lock");
        let waiting = self.pending.snapshot();
        in_parallel(&waiting, |(_, tmp)| {
            File::open(tmp)
                .and_then(|f| f.sync_data())
                .map_err(io_at(tmp))
        })?;
        if !waiting.is_empty() {
            crate::crash_point::hit("blob-written");
        }
        for (hash, tmp) in &waiting {
            let dest = blob_path(&self.root, hash);
            let dir = dest.parent().expect("blob path has a parent");
            std::fs::rename(tmp, &dest).map_err(io_at(&dest))?;
            self.pending.finish(hash);
            self.unsynced
                .lock()
                .expect("unsynced dirs lock")
                .insert(dir.to_path_buf());
        }
        if !waiting.is_empty() {
            crate::crash_point::hit("blob-renamed");
        }
        let dirs: Vec<PathBuf> =
            std::mem::take(&mut *self.unsynced.lock().expect("unsynced dirs lock"))
                .into_iter()
                .collect();
        let synced = in_parallel(&dirs, |dir| {
            crate::durable::sync_dir(dir).map_err(io_at(dir))
        });
        if synced.is_err() {
            // Not all synced: keep them for the next try (again is harmless).
            self.unsynced
                .lock()
                .expect("unsynced dirs lock")
                .extend(dirs);
        }
        synced
    }
}

/// Threads that flush at once in a sync: each flush mostly waits for the
/// disk, and a file system commits concurrent flushes together (ext4's
/// journal takes them in one commit), so a version's ten blobs and their
/// directories cost about one flush's wait instead of twenty in a row.
const FLUSH_THREADS: usize = 8;

/// Run `flush` on every item, on up to [`FLUSH_THREADS`] threads; the
/// first error, once all have run.
fn in_parallel<T: Sync>(
    items: &[T],
    flush: impl Fn(&T) -> Result<(), StoreError> + Sync,
) -> Result<(), StoreError> {
    if items.len() <= 1 {
        return items.iter().try_for_each(flush);
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let first_err = std::sync::Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..items.len().min(FLUSH_THREADS) {
            s.spawn(|| {
                while let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) {
                    if let Err(e) = flush(item) {
                        first_err.lock().expect("error slot").get_or_insert(e);
                    }
                }
            });
        }
    });
    first_err
        .into_inner()
        .expect("error slot")
        .map_or(Ok(()), Err)
}

/// Ask the kernel to start writing `file` back now, without waiting, so
/// the disk works while the next blob is encrypted and the sync that
/// makes it durable finds little left to do. Only a hint: a failure here
/// shows again, and counts, at that sync.
fn start_writeback(file: &File) {
    // SAFETY: sync_file_range on a descriptor we own, with no pointers.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}
