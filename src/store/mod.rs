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
//!
//! Here: the store, its errors, and what finds, lists and removes blobs;
//! `durability` stores blobs and makes them durable; `reader` the
//! outboards and verified partial reads.

mod durability;
mod hash;
mod pending;
mod reader;
pub mod slices;
#[cfg(test)]
mod tests;
mod tmp;

pub use hash::Hash;
pub use reader::BlobReader;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use crate::cache::BoundedMap;
use pending::Pending;
use reader::{open_blobs_kept, Verified, VERIFIED_OUTBOARDS};
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

/// Claims kept before old ones are dropped between collections, and how
/// long a claim is worth keeping then (longer than the default grace).
const CLAIMS_PRUNED_AT: usize = 1 << 16;
const CLAIMS_KEPT_FOR: std::time::Duration = std::time::Duration::from_secs(3600);

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
    /// When each blob a collection found unreferenced was first found so
    /// (this process's passes only: a restart starts the wait again).
    unreferenced_since: Mutex<HashMap<Hash, std::time::Instant>>,
    /// When each blob was last found here by someone about to rely on it
    /// ([`BlobStore::contains`], a put of bytes already stored): a pull
    /// that skips fetching a blob it holds, a merge that writes a
    /// directory node it wrote before. A collection keeps a blob claimed
    /// within its grace, and the lock orders a claim and a removal, so a
    /// blob is either claimed and kept, or removed and then not found.
    claims: Mutex<HashMap<Hash, std::time::Instant>>,
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
            unreferenced_since: Mutex::new(HashMap::new()),
            claims: Mutex::new(HashMap::new()),
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

    /// A fresh temp file name for (a file derived from) blob `hash`.
    fn tmp_path(&self, hash: &Hash, suffix: &str) -> PathBuf {
        self.durability.tmp.fresh(&hash.to_hex()[..16], suffix)
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

    /// True when blob `hash` is here. Whoever asks may rely on it from now
    /// on (it is claimed): a collection running meanwhile keeps it for its
    /// grace, long enough for a version naming it to be written.
    pub fn contains(&self, hash: &Hash) -> bool {
        let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        let here = self.holds(hash);
        if here {
            if claims.len() >= CLAIMS_PRUNED_AT {
                // No collection ran for long (Postgres down): claims older
                // than any grace we use protect nothing.
                claims.retain(|_, at| at.elapsed() < CLAIMS_KEPT_FOR);
            }
            claims.insert(*hash, std::time::Instant::now());
        }
        here
    }

    /// True when blob `hash` is here, without claiming it: for checks of
    /// many blobs that something else keeps live (a blind replica's
    /// pending version).
    pub fn holds(&self, hash: &Hash) -> bool {
        self.durability.pending.contains(hash) || self.path_of(hash).exists()
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

    /// Remove every blob not in `live`, but those written in the last
    /// `grace` and those a pass of this process first found unreferenced
    /// less than `grace` ago. The second rule is for blobs of versions just
    /// pruned: a chunk written long ago and overwritten now is old by its
    /// time, yet a peer a few seconds behind still fetches the version that
    /// named it.
    pub fn gc(
        &self,
        live: &HashSet<Hash>,
        grace: std::time::Duration,
    ) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        let cutoff = std::time::SystemTime::now() - grace;
        let now = std::time::Instant::now();
        let mut since = self
            .unreferenced_since
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let listed = self.list()?;
        // Referenced again, or gone: forget when it was found dead.
        {
            let present: HashSet<&Hash> = listed.iter().collect();
            since.retain(|h, _| !live.contains(h) && present.contains(h));
        }
        for h in listed {
            if live.contains(&h) {
                report.kept += 1;
                continue;
            }
            let p = self.path_of(&h);
            let young = !grace.is_zero()
                && std::fs::metadata(&p)
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t > cutoff);
            let dead_for = now.duration_since(*since.entry(h).or_insert(now));
            if young || dead_for < grace {
                report.kept += 1;
                continue;
            }
            // Under the claims lock: a claim either came first (kept) or
            // comes after the removal (and finds nothing).
            let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
            if claims.get(&h).is_some_and(|at| at.elapsed() < grace) {
                report.kept += 1;
                continue;
            }
            claims.remove(&h);
            since.remove(&h);
            report.bytes_freed += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            self.remove(&h)?;
            drop(claims);
            report.removed += 1;
        }
        // Claims older than the grace protect nothing any more.
        self.claims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, at| at.elapsed() < grace);
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

/// Where the blob with this address lives under store root `root`.
fn blob_path(root: &Path, hash: &Hash) -> PathBuf {
    let hex = hash.to_hex();
    root.join("blobs").join(&hex[..2]).join(hex)
}
