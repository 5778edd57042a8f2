//! Content-addressed blob store on local disk.
//!
//! A blob's address is the BLAKE3 hash of its bytes (which are always
//! ciphertext or a signed manifest: the store never sees plaintext). A put
//! writes a temp file and returns without waiting for the disk; readers find
//! the blob there at once. [`BlobStore::sync`] (which every commit runs
//! before it moves HEAD) makes all waiting blobs durable together and only
//! then renames them into place, so a name under `blobs/` always stands for
//! durable bytes and a crash leaves either the whole blob or nothing. One
//! fsync per blob at put time cost a disk's sequential write more than half
//! its speed; batched, the kernel writes back while we encrypt the next
//! chunk and most fsyncs find nothing left to do. Every read re-hashes the bytes and
//! refuses a mismatch, so a flipped bit on disk surfaces as
//! [`StoreError::Corrupt`], never as wrong data.
//!
//! Large blobs can also be read in part: [`BlobStore::reader`] checks only
//! the 16 KiB slices a read touches, against the address, using the blob's
//! outboard (see [`slices`]).
//!
//! Layout: `<root>/blobs/<2 hex>/<64 hex>`, each large blob's outboard beside
//! it as `<64 hex>.ob` (derived data: rebuilt when missing or wrong), temp
//! files in `<root>/tmp/<one dir per open store>/` (see [`tmp`]).

mod hash;
mod pending;
pub mod slices;
mod tmp;

pub use hash::Hash;

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Write};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::cache::BoundedMap;
use pending::{Added, Backlog, Pending};
use tmp::TmpDir;

/// Errors from the blob store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("blob {0} not found")]
    NotFound(Hash),
    #[error("blob {hash} is corrupt: its content hashes to {actual}")]
    Corrupt { hash: Hash, actual: Hash },
    #[error("blob {hash} is corrupt: bytes in its slice {slice} do not belong to the address")]
    CorruptSlice { hash: Hash, slice: usize },
    #[error("blob store I/O at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a garbage collection pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub removed: usize,
    pub kept: usize,
    pub bytes_freed: u64,
}

/// A directory of immutable, hash-addressed blobs.
#[derive(Debug)]
pub struct BlobStore {
    /// What a sync works on (and the store's root), shared with the background sync that a put
    /// starts when many blobs wait (see [`BlobStore::put_hashed`]).
    durability: Arc<Durability>,
    /// Outboards already checked against their addresses (with the tails
    /// that completed the check), so a random reader of a large file does
    /// not redo the check on every read.
    verified: Mutex<BoundedMap<Hash, Arc<Verified>>>,
    /// Blobs recently opened for partial reads, kept open: a random reader
    /// of a large file then costs one pread per read, not an open and a
    /// close as well. Blobs never change, so a kept descriptor reads what
    /// a fresh open would (a removed blob is dropped from here).
    open_files: Mutex<BoundedMap<Hash, Arc<File>>>,
}

/// The blobs waiting to be made durable, and what making them so needs.
#[derive(Debug)]
struct Durability {
    root: PathBuf,
    /// Held here, not by the store alone, so a background sync still owns
    /// the temp files it renames if the store is dropped meanwhile.
    tmp: TmpDir,
    /// Blobs written but not yet durable nor named.
    pending: Pending,
    /// Held for the whole of a sync, so a sync returns only once
    /// everything stored before it began is durable, even when another
    /// sync was already running.
    syncing: Mutex<()>,
    /// Fan-out directories with blobs renamed in since the last sync.
    unsynced: Mutex<HashSet<PathBuf>>,
    /// A background sync is running (at most one at a time).
    background: AtomicBool,
}

/// How many verified outboards are kept: about 3 KiB each for a 1 MiB
/// chunk, so 2048 cover random reads over 2 GiB for ~6 MiB of memory.
const VERIFIED_OUTBOARDS: usize = 2048;
/// At most this many blob descriptors are kept open: a random reader of
/// 1 GiB in 1 MiB chunks then never opens a blob twice. An open costs a
/// 4 KiB random read more than its pread, its hash and its decryption.
const OPEN_BLOBS: u64 = 1024;

/// A blob's trusted slice CVs and the bytes after its last full slice.
#[derive(Debug)]
struct Verified {
    len: usize,
    cvs: Vec<[u8; 32]>,
    tail: Vec<u8>,
}

/// What a failed open or read of blob `hash` at `path` means.
fn read_error<'p>(hash: &Hash, path: &'p Path) -> impl FnOnce(std::io::Error) -> StoreError + 'p {
    let hash = *hash;
    move |e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            StoreError::NotFound(hash)
        } else {
            io_at(path)(e)
        }
    }
}

/// A blob whose bytes hash to `actual`, not to its address `hash`.
fn corrupt(hash: &Hash, actual: Hash) -> StoreError {
    tracing::error!(blob = %hash, %actual, "blob failed its integrity check");
    StoreError::Corrupt {
        hash: *hash,
        actual,
    }
}

impl BlobStore {
    /// Open (creating if needed) a store rooted at `root`.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        for sub in ["blobs", "tmp"] {
            let p = root.join(sub);
            std::fs::create_dir_all(&p).map_err(io_at(&p))?;
        }
        // Leftover temp files of dead stores are from blobs never synced.
        let tmp_root = root.join("tmp");
        let tmp = TmpDir::claim(&tmp_root).map_err(io_at(&tmp_root))?;
        Ok(Self {
            durability: Arc::new(Durability {
                root: root.to_path_buf(),
                tmp,
                pending: Pending::default(),
                syncing: Mutex::new(()),
                unsynced: Mutex::new(HashSet::new()),
                background: AtomicBool::new(false),
            }),
            verified: Mutex::new(BoundedMap::new(VERIFIED_OUTBOARDS)),
            open_files: Mutex::new(BoundedMap::new(open_blobs_kept())),
        })
    }

    pub fn root(&self) -> &Path {
        &self.durability.root
    }

    /// Where the blob with this address lives on disk.
    pub fn path_of(&self, hash: &Hash) -> PathBuf {
        blob_path(self.root(), hash)
    }

    /// Store `bytes`; returns their address. Storing an existing blob is a no-op.
    pub fn put(&self, bytes: &[u8]) -> Result<Hash, StoreError> {
        let hash = Hash::of(bytes);
        self.put_hashed(hash, bytes)?;
        Ok(hash)
    }

    /// Where a blob's outboard (the CVs of its full slices) lives.
    fn outboard_path(&self, hash: &Hash) -> PathBuf {
        let mut p = self.path_of(hash).into_os_string();
        p.push(".ob");
        PathBuf::from(p)
    }

    /// Store `bytes` with their outboard, as computed by
    /// [`slices::hash_with_outboard`], so parts of them can be read alone.
    pub fn put_with_outboard(
        &self,
        hash: Hash,
        bytes: &[u8],
        cvs: &[[u8; 32]],
    ) -> Result<(), StoreError> {
        self.put_hashed(hash, bytes)?;
        if !cvs.is_empty() {
            if !self.outboard_path(&hash).exists() {
                self.write_outboard(&hash, cvs);
            }
            // We hashed these bytes ourselves: the outboard is trusted as is.
            self.remember(
                hash,
                Verified {
                    len: bytes.len(),
                    cvs: cvs.to_vec(),
                    tail: bytes[cvs.len() * slices::SLICE_LEN..].to_vec(),
                },
            );
        }
        Ok(())
    }

    /// Keep an outboard known to match its blob.
    fn remember(&self, hash: Hash, verified: Verified) -> Arc<Verified> {
        let verified = Arc::new(verified);
        self.verified
            .lock()
            .expect("verified outboards lock")
            .insert(hash, verified.clone());
        verified
    }

    /// A fresh temp file name for (a file derived from) blob `hash`.
    fn tmp_path(&self, hash: &Hash, suffix: &str) -> PathBuf {
        self.durability.tmp.fresh(&hash.to_hex()[..16], suffix)
    }

    /// Best effort, no fsync: an outboard is checked on every use and
    /// rebuilt from the blob when missing or wrong.
    fn write_outboard(&self, hash: &Hash, cvs: &[[u8; 32]]) {
        let dest = self.outboard_path(hash);
        let tmp = self.tmp_path(hash, ".ob");
        let written = std::fs::write(&tmp, cvs.concat()).and_then(|_| std::fs::rename(&tmp, &dest));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!(blob = %hash, error = %e, "could not write a blob outboard");
        }
    }

    fn read_outboard(&self, hash: &Hash, slices: usize) -> Option<Vec<[u8; 32]>> {
        let bytes = std::fs::read(self.outboard_path(hash)).ok()?;
        if bytes.len() != slices * 32 {
            return None;
        }
        Some(
            bytes
                .chunks_exact(32)
                .map(|c| c.try_into().expect("32-byte pieces"))
                .collect(),
        )
    }

    /// Open a blob for verified reads of parts of it. A large blob whose
    /// outboard matches its address is read slice by slice; any other blob
    /// is read whole and verified now (rebuilding a missing outboard).
    pub fn reader(&self, hash: &Hash) -> Result<BlobReader, StoreError> {
        let path = self.path_of(hash);
        let file = self.open_blob(hash, &path)?;
        let known = self
            .verified
            .lock()
            .expect("verified outboards lock")
            .get(hash);
        if let Some(verified) = known {
            return Ok(BlobReader {
                hash: *hash,
                len: verified.len,
                source: Source::Sliced { file, verified },
            });
        }
        let len = file.metadata().map_err(io_at(&path))?.len() as usize;
        let k = slices::full_slices(len);
        if k > 0 {
            if let Some(cvs) = self.read_outboard(hash, k) {
                let mut tail = vec![0u8; len - k * slices::SLICE_LEN];
                file.read_exact_at(&mut tail, (k * slices::SLICE_LEN) as u64)
                    .map_err(io_at(&path))?;
                if slices::root_from(&cvs, &tail, len) == Some(*hash) {
                    let verified = self.remember(*hash, Verified { len, cvs, tail });
                    return Ok(BlobReader {
                        hash: *hash,
                        len,
                        source: Source::Sliced { file, verified },
                    });
                }
                tracing::warn!(blob = %hash, "blob outboard or tail does not match the address; reading the blob whole");
            }
        }
        let mut bytes = vec![0u8; len];
        file.read_exact_at(&mut bytes, 0).map_err(io_at(&path))?;
        let (actual, cvs) = slices::hash_with_outboard(&bytes);
        if actual != *hash {
            return Err(corrupt(hash, actual));
        }
        if !cvs.is_empty() {
            self.write_outboard(hash, &cvs);
        }
        Ok(BlobReader {
            hash: *hash,
            len: bytes.len(),
            source: Source::Whole(bytes),
        })
    }

    /// Store `bytes` whose hash the caller already computed (it must be
    /// `Hash::of(bytes)`). The bytes wait in a temp file, readable at once,
    /// until the next [`BlobStore::sync`] makes them durable and names
    /// them (a commit syncs before it moves HEAD). Too much waiting makes
    /// this call sync.
    pub fn put_hashed(&self, hash: Hash, bytes: &[u8]) -> Result<(), StoreError> {
        debug_assert_eq!(hash, Hash::of(bytes));
        let dest = self.path_of(&hash);
        if self.durability.pending.contains(&hash) || dest.exists() {
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
    /// (the first forces the journal commit that covers the rest), rename
    /// them into place, then fsync the fan-out directories they went into
    /// (each once, however many blobs it got). On an error, what was not
    /// done waits for the next try.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.durability.sync()
    }

    /// Blob `hash` opened for reading, wherever it is now: in its temp file
    /// while it waits for a sync, else under its name. A sync may rename
    /// it between the two looks; then the second finds it.
    fn open_current(&self, hash: &Hash) -> std::io::Result<File> {
        if let Some(tmp) = self.durability.pending.temp_of(hash) {
            match File::open(&tmp) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                opened => return opened,
            }
        }
        File::open(self.path_of(hash))
    }

    /// Read a blob and check that its bytes still hash to its address.
    pub fn get(&self, hash: &Hash) -> Result<Vec<u8>, StoreError> {
        let path = self.path_of(hash);
        let mut bytes = Vec::new();
        self.open_current(hash)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(read_error(hash, &path))?;
        let actual = Hash::of(&bytes);
        if actual != *hash {
            return Err(corrupt(hash, actual));
        }
        Ok(bytes)
    }

    /// True when blob `hash` is stored and begins with `prefix` (unverified:
    /// a cheap filter before a verified read).
    pub fn starts_with(&self, hash: &Hash, prefix: &[u8]) -> bool {
        let mut buf = vec![0u8; prefix.len()];
        self.open_current(hash)
            .and_then(|f| f.read_exact_at(&mut buf, 0))
            .is_ok_and(|()| buf == prefix)
    }

    pub fn contains(&self, hash: &Hash) -> bool {
        self.durability.pending.contains(hash) || self.path_of(hash).exists()
    }

    /// Blob `hash` opened for reading, kept open for the next reader.
    fn open_blob(&self, hash: &Hash, path: &Path) -> Result<Arc<File>, StoreError> {
        let kept = self.open_files.lock().expect("open blobs lock").get(hash);
        if let Some(file) = kept {
            return Ok(file);
        }
        let file = Arc::new(self.open_current(hash).map_err(read_error(hash, path))?);
        self.open_files
            .lock()
            .expect("open blobs lock")
            .insert(*hash, file.clone());
        Ok(file)
    }

    /// Forget what was learnt of blob `hash`: its checked outboard and its
    /// kept descriptor (it was removed, or failed a check and may be
    /// replaced by a good copy).
    fn forget(&self, hash: &Hash) {
        self.verified
            .lock()
            .expect("verified outboards lock")
            .remove(hash);
        self.open_files
            .lock()
            .expect("open blobs lock")
            .remove(hash);
    }

    /// Remove one blob; removing a missing blob is not an error.
    pub fn remove(&self, hash: &Hash) -> Result<(), StoreError> {
        let _ = std::fs::remove_file(self.outboard_path(hash));
        self.forget(hash);
        if let Some(tmp) = self.durability.pending.finish(hash) {
            let _ = std::fs::remove_file(tmp);
        }
        let p = self.path_of(hash);
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_at(&p)(e)),
        }
    }

    /// Every blob address in the store.
    pub fn list(&self) -> Result<Vec<Hash>, StoreError> {
        Ok(self
            .files()?
            .iter()
            .filter_map(|p| p.file_name()?.to_str().and_then(|s| Hash::from_hex(s).ok()))
            .collect())
    }

    /// Every file under `blobs/`: blobs and outboards.
    fn files(&self) -> Result<Vec<PathBuf>, StoreError> {
        let blobs = self.root().join("blobs");
        let mut out = Vec::new();
        for fan in std::fs::read_dir(&blobs).map_err(io_at(&blobs))? {
            let fan = fan.map_err(io_at(&blobs))?.path();
            for e in std::fs::read_dir(&fan).map_err(io_at(&fan))? {
                out.push(e.map_err(io_at(&fan))?.path());
            }
        }
        Ok(out)
    }

    /// Remove every blob not in `live`, but those written in the last `grace`.
    pub fn gc(
        &self,
        live: &HashSet<Hash>,
        grace: std::time::Duration,
    ) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        let cutoff = std::time::SystemTime::now() - grace;
        for h in self.list()? {
            if live.contains(&h) {
                report.kept += 1;
                continue;
            }
            let p = self.path_of(&h);
            let young = !grace.is_zero()
                && std::fs::metadata(&p)
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t > cutoff);
            if young {
                report.kept += 1;
                continue;
            }
            report.bytes_freed += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            self.remove(&h)?;
            report.removed += 1;
        }
        // Outboards whose blob is gone (removed by an interrupted pass).
        for ob in self.outboards()? {
            if !ob.with_extension("").exists() {
                let _ = std::fs::remove_file(&ob);
            }
        }
        tracing::info!(removed = report.removed, kept = report.kept, "blob gc");
        Ok(report)
    }

    /// Bytes used by all blobs (and their outboards) on disk.
    pub fn disk_usage(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        for h in self.list()? {
            let p = self.path_of(&h);
            total += std::fs::metadata(&p).map_err(io_at(&p))?.len();
        }
        for ob in self.outboards()? {
            total += std::fs::metadata(&ob).map(|m| m.len()).unwrap_or(0);
        }
        Ok(total)
    }

    /// Paths of every outboard file in the store.
    fn outboards(&self) -> Result<Vec<PathBuf>, StoreError> {
        let mut files = self.files()?;
        files.retain(|p| p.extension().is_some_and(|x| x == "ob"));
        Ok(files)
    }
}

impl Durability {
    /// See [`BlobStore::sync`].
    fn sync(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.syncing.lock().expect("sync lock");
        let waiting = self.pending.snapshot();
        for (_, tmp) in &waiting {
            File::open(tmp)
                .and_then(|f| f.sync_data())
                .map_err(io_at(tmp))?;
        }
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
        for (i, dir) in dirs.iter().enumerate() {
            if let Err(e) = crate::durable::sync_dir(dir) {
                // Not synced: keep them for the next try.
                self.unsynced
                    .lock()
                    .expect("unsynced dirs lock")
                    .extend(dirs[i..].iter().cloned());
                return Err(io_at(dir)(e));
            }
        }
        Ok(())
    }
}

/// Where the blob with this address lives under store root `root`.
fn blob_path(root: &Path, hash: &Hash) -> PathBuf {
    let hex = hash.to_hex();
    root.join("blobs").join(&hex[..2]).join(hex)
}

/// Blob descriptors kept open per store (one store per node): up to
/// [`OPEN_BLOBS`], but at most a sixteenth of the descriptors this process
/// may open, so a low limit is not spent on them.
fn open_blobs_kept() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 1024,
        rlim_max: 1024,
    };
    // SAFETY: getrlimit fills the struct we pass; on failure it is left as set.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (limit.rlim_cur / 16).clamp(16, OPEN_BLOBS) as usize
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

/// A blob opened for verified partial reads (see [`BlobStore::reader`]).
pub struct BlobReader {
    hash: Hash,
    len: usize,
    source: Source,
}

enum Source {
    /// The file, the trusted CVs of its full slices and the bytes after them.
    Sliced {
        file: Arc<File>,
        verified: Arc<Verified>,
    },
    /// The whole blob, already verified.
    Whole(Vec<u8>),
}

impl BlobReader {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes `range` of the blob (clamped to its end), each one checked
    /// against the address: the slices they lie in are read and hashed whole.
    pub fn read(&self, range: Range<usize>) -> Result<Vec<u8>, StoreError> {
        let range = range.start.min(self.len)..range.end.min(self.len);
        let (file, cvs, tail) = match &self.source {
            Source::Whole(bytes) => return Ok(bytes[range].to_vec()),
            Source::Sliced { file, verified } => (file, &verified.cvs, &verified.tail),
        };
        // The slices the range lies in, read with one pread, then checked
        // one by one.
        let span = slices::slices_for(&range, cvs.len());
        let base = span.start * slices::SLICE_LEN;
        let mut slices_read = vec![0u8; span.len() * slices::SLICE_LEN];
        match file.read_exact_at(&mut slices_read, base as u64) {
            Ok(()) => {}
            // The blob got shorter than when it was checked: corrupt.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                tracing::error!(blob = %self.hash, slice = span.start, "blob is shorter than its checked length");
                return Err(StoreError::CorruptSlice {
                    hash: self.hash,
                    slice: span.start,
                });
            }
            Err(source) => {
                return Err(StoreError::Io {
                    path: PathBuf::from(format!("blob {}", self.hash)),
                    source,
                })
            }
        }
        for (j, slice) in span
            .clone()
            .zip(slices_read.chunks_exact(slices::SLICE_LEN))
        {
            if slices::slice_cv(j, slice) != cvs[j] {
                tracing::error!(blob = %self.hash, slice = j, "blob slice failed its integrity check");
                return Err(StoreError::CorruptSlice {
                    hash: self.hash,
                    slice: j,
                });
            }
        }
        // A range of whole slices (a chunk's frame) is the answer as read.
        if range.start == base && range.end == base + slices_read.len() {
            return Ok(slices_read);
        }
        let mut out = Vec::with_capacity(range.len());
        for (j, slice) in span.zip(slices_read.chunks_exact(slices::SLICE_LEN)) {
            let start = j * slices::SLICE_LEN;
            let from = range.start.max(start) - start;
            let to = range.end.min(start + slices::SLICE_LEN) - start;
            out.extend_from_slice(&slice[from..to]);
        }
        let tail_start = cvs.len() * slices::SLICE_LEN;
        if range.end > tail_start {
            let from = range.start.max(tail_start) - tail_start;
            out.extend_from_slice(&tail[from..range.end - tail_start]);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_and_dedupe() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let h = s.put(b"abc").unwrap();
        assert_eq!(s.put(b"abc").unwrap(), h);
        assert_eq!(s.get(&h).unwrap(), b"abc");
        s.sync().unwrap();
        assert_eq!(s.put(b"abc").unwrap(), h);
        assert_eq!(s.list().unwrap(), vec![h]);
        assert!(matches!(
            s.get(&Hash::of(b"zz")),
            Err(StoreError::NotFound(_))
        ));
    }

    #[test]
    fn corrupt_blob_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let h = s.put(b"hello world").unwrap();
        s.sync().unwrap();
        let p = s.path_of(&h);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[3] ^= 0x40;
        std::fs::write(&p, bytes).unwrap();
        assert!(matches!(s.get(&h), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn partial_reads_are_verified_and_survive_a_bad_outboard() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let bytes: Vec<u8> = (0..5 * slices::SLICE_LEN + 300)
            .map(|i| (i % 251) as u8)
            .collect();
        let (h, cvs) = slices::hash_with_outboard(&bytes);
        s.put_with_outboard(h, &bytes, &cvs).unwrap();
        s.sync().unwrap();
        let r = s.reader(&h).unwrap();
        assert!(matches!(r.source, Source::Sliced { .. }));
        let sl = slices::SLICE_LEN;
        // Whole slices (a chunk's frames) are returned as read; the rest
        // is cut from them.
        for range in [
            0..10,
            sl + 100..3 * sl + 5,
            5 * sl - 5..bytes.len(),
            2 * sl..3 * sl,
            sl..3 * sl,
            4 * sl..bytes.len(),
        ] {
            assert_eq!(r.read(range.clone()).unwrap(), bytes[range]);
        }
        // A flipped byte in slice 2 fails reads of slice 2 only, whole or in part.
        let p = s.path_of(&h);
        let mut on_disk = std::fs::read(&p).unwrap();
        on_disk[2 * slices::SLICE_LEN + 9] ^= 0x10;
        std::fs::write(&p, &on_disk).unwrap();
        let r = s.reader(&h).unwrap();
        for range in [2 * sl..2 * sl + 4, 2 * sl..3 * sl, sl..3 * sl] {
            assert!(matches!(
                r.read(range),
                Err(StoreError::CorruptSlice { slice: 2, .. })
            ));
        }
        assert_eq!(r.read(0..10).unwrap(), bytes[0..10]);
        assert_eq!(r.read(3 * sl..4 * sl).unwrap(), bytes[3 * sl..4 * sl]);
        on_disk[2 * slices::SLICE_LEN + 9] ^= 0x10;
        std::fs::write(&p, &on_disk).unwrap();
        // A wrong outboard is not trusted (by a store that has not checked
        // this blob yet): the blob is read whole and the outboard rebuilt.
        let s = BlobStore::open(dir.path()).unwrap();
        std::fs::write(s.outboard_path(&h), vec![0u8; cvs.len() * 32]).unwrap();
        let r = s.reader(&h).unwrap();
        assert!(matches!(r.source, Source::Whole(_)));
        assert_eq!(r.read(100..200).unwrap(), bytes[100..200]);
        let s = BlobStore::open(dir.path()).unwrap();
        assert!(matches!(
            s.reader(&h).unwrap().source,
            Source::Sliced { .. }
        ));
        // A flipped tail byte is caught when a fresh store opens the blob;
        // one that checked it before serves the tail it verified.
        on_disk[bytes.len() - 1] ^= 1;
        std::fs::write(&p, &on_disk).unwrap();
        assert_eq!(
            s.reader(&h)
                .unwrap()
                .read(bytes.len() - 4..bytes.len())
                .unwrap(),
            bytes[bytes.len() - 4..]
        );
        let fresh = BlobStore::open(dir.path()).unwrap();
        assert!(matches!(fresh.reader(&h), Err(StoreError::Corrupt { .. })));
        // Removing the blob removes its outboard.
        s.remove(&h).unwrap();
        assert!(!s.outboard_path(&h).exists());
        // ... and the descriptor kept for it: it reads as missing.
        assert!(matches!(s.reader(&h), Err(StoreError::NotFound(_))));
    }

    #[test]
    fn gc_sweeps_outboards_left_without_their_blob() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let bytes = vec![7u8; 3 * slices::SLICE_LEN + 5];
        let (h, cvs) = slices::hash_with_outboard(&bytes);
        s.put_with_outboard(h, &bytes, &cvs).unwrap();
        s.sync().unwrap();
        assert_eq!(
            s.disk_usage().unwrap(),
            (bytes.len() + cvs.len() * 32) as u64
        );
        std::fs::remove_file(s.path_of(&h)).unwrap();
        assert!(s.outboard_path(&h).exists());
        s.gc(&HashSet::new(), std::time::Duration::ZERO).unwrap();
        assert!(!s.outboard_path(&h).exists());
        assert_eq!(s.disk_usage().unwrap(), 0);
    }

    #[test]
    fn gc_keeps_only_live() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let a = s.put(b"a").unwrap();
        let b = s.put(b"b").unwrap();
        s.sync().unwrap();
        let report = s
            .gc(&[a].into_iter().collect(), std::time::Duration::ZERO)
            .unwrap();
        assert_eq!((report.removed, report.kept), (1, 1));
        let c = s.put(b"c").unwrap();
        s.sync().unwrap();
        let report = s
            .gc(
                &[a].into_iter().collect(),
                std::time::Duration::from_secs(60),
            )
            .unwrap();
        assert!(s.contains(&c), "a blob younger than the grace stays");
        assert_eq!((report.removed, report.kept), (0, 2));
        assert!(s.contains(&a) && !s.contains(&b));
    }

    #[test]
    fn a_blob_is_readable_at_once_and_named_only_once_synced() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let bytes: Vec<u8> = (0..3 * slices::SLICE_LEN + 7).map(|i| i as u8).collect();
        let (h, cvs) = slices::hash_with_outboard(&bytes);
        s.put_with_outboard(h, &bytes, &cvs).unwrap();
        let small = s.put(b"small").unwrap();

        // Waiting: every reader finds it, nothing has its name yet.
        assert!(s.contains(&h) && s.contains(&small));
        assert_eq!(s.get(&h).unwrap(), bytes);
        assert_eq!(
            s.reader(&h).unwrap().read(5..20_000).unwrap(),
            bytes[5..20_000]
        );
        assert!(s.starts_with(&small, b"sm"));
        assert!(!s.path_of(&h).exists());
        assert_eq!(s.list().unwrap(), vec![]);

        // A second store on the same root (another process, say) leaves
        // the first one's waiting blobs alone.
        let other = BlobStore::open(dir.path()).unwrap();
        assert!(!other.contains(&h));
        drop(other);

        s.sync().unwrap();
        assert!(s.path_of(&h).exists() && s.path_of(&small).exists());
        let mut listed = s.list().unwrap();
        listed.sort();
        let mut want = vec![h, small];
        want.sort();
        assert_eq!(listed, want);
        assert_eq!(s.get(&small).unwrap(), b"small");
        // The descriptor kept while it waited still reads it.
        assert_eq!(s.reader(&h).unwrap().read(0..10).unwrap(), bytes[0..10]);
    }

    #[test]
    fn blobs_never_synced_are_gone_after_their_store_dies() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let kept = s.put(b"synced").unwrap();
        s.sync().unwrap();
        let lost = s.put(b"never synced").unwrap();
        drop(s);
        let s = BlobStore::open(dir.path()).unwrap();
        assert_eq!(s.get(&kept).unwrap(), b"synced");
        assert!(matches!(s.get(&lost), Err(StoreError::NotFound(_))));
        let leftovers = std::fs::read_dir(dir.path().join("tmp")).unwrap().count();
        assert_eq!(leftovers, 1, "only the new store's own temp dir remains");
    }

    #[test]
    fn a_removed_waiting_blob_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let h = s.put(b"short-lived").unwrap();
        s.remove(&h).unwrap();
        assert!(!s.contains(&h));
        s.sync().unwrap();
        assert!(!s.path_of(&h).exists());
    }

    #[test]
    fn a_full_backlog_is_synced_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let blobs: Vec<Vec<u8>> = (0..pending::MAX_BLOBS + 3)
            .map(|i| format!("blob {i}").into_bytes())
            .collect();
        let hashes: Vec<Hash> = blobs.iter().map(|b| Hash::of(b)).collect();
        std::thread::scope(|scope| {
            // A sync is running (a commit's, say): the writer that fills
            // the backlog must not wait for it.
            let running = s.hold_syncs();
            let (done, finished) = std::sync::mpsc::channel();
            let (s, blobs) = (&s, &blobs);
            scope.spawn(move || {
                for b in blobs {
                    s.put(b).unwrap();
                }
                done.send(()).unwrap();
            });
            finished
                .recv_timeout(std::time::Duration::from_secs(20))
                .expect("the writer waited for a sync to store past the backlog's bound");
            assert!(hashes.iter().all(|h| !s.path_of(h).exists()));
            drop(running);
        });
        // The background sync, now free to run, names them (the blobs put
        // after it took its snapshot wait for the next sync).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !s.path_of(&hashes[0]).exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "no background sync ran"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        s.sync().unwrap();
        for (h, b) in hashes.iter().zip(&blobs) {
            assert!(s.path_of(h).exists());
            assert_eq!(&s.get(h).unwrap(), b);
        }
    }

    #[test]
    fn blob_descriptors_kept_fit_the_descriptor_limit() {
        let kept = open_blobs_kept() as u64;
        assert!((16..=OPEN_BLOBS).contains(&kept), "{kept}");
    }
}
