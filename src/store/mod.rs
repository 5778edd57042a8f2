//! Content-addressed blob store on local disk.
//!
//! A blob's address is the BLAKE3 hash of its bytes (which are always
//! ciphertext or a signed manifest: the store never sees plaintext). Writes are
//! atomic: a temp file is written, fsynced and renamed into place, so a crash
//! leaves either the whole blob or nothing. Every read re-hashes the bytes and
//! refuses a mismatch, so a flipped bit on disk surfaces as
//! [`StoreError::Corrupt`], never as wrong data.
//!
//! Layout: `<root>/blobs/<2 hex>/<64 hex>`, temp files in `<root>/tmp/`.

mod hash;

pub use hash::Hash;

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Errors from the blob store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("blob {0} not found")]
    NotFound(Hash),
    #[error("blob {hash} is corrupt: its content hashes to {actual}")]
    Corrupt { hash: Hash, actual: Hash },
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
    root: PathBuf,
    tmp_counter: AtomicU64,
}

impl BlobStore {
    /// Open (creating if needed) a store rooted at `root`.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        for sub in ["blobs", "tmp"] {
            let p = root.join(sub);
            std::fs::create_dir_all(&p).map_err(io_at(&p))?;
        }
        // Leftover temp files are from writes that never completed.
        let tmp = root.join("tmp");
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(Self {
            root: root.to_path_buf(),
            tmp_counter: AtomicU64::new(0),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob with this address lives on disk.
    pub fn path_of(&self, hash: &Hash) -> PathBuf {
        let hex = hash.to_hex();
        self.root.join("blobs").join(&hex[..2]).join(hex)
    }

    /// Store `bytes`; returns their address. Storing an existing blob is a no-op.
    pub fn put(&self, bytes: &[u8]) -> Result<Hash, StoreError> {
        let hash = Hash::of(bytes);
        self.put_hashed(hash, bytes)?;
        Ok(hash)
    }

    /// Store `bytes` whose hash the caller already computed (it must be `Hash::of(bytes)`).
    pub fn put_hashed(&self, hash: Hash, bytes: &[u8]) -> Result<(), StoreError> {
        debug_assert_eq!(hash, Hash::of(bytes));
        let dest = self.path_of(&hash);
        if dest.exists() {
            return Ok(());
        }
        let dir = dest.parent().expect("blob path has a parent");
        std::fs::create_dir_all(dir).map_err(io_at(dir))?;
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.root.join("tmp").join(format!(
            "{}-{}-{n}",
            std::process::id(),
            &hash.to_hex()[..16]
        ));
        let mut f = File::create(&tmp).map_err(io_at(&tmp))?;
        f.write_all(bytes).map_err(io_at(&tmp))?;
        f.sync_all().map_err(io_at(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, &dest).map_err(io_at(&dest))?;
        Ok(())
    }

    /// Read a blob and check that its bytes still hash to its address.
    pub fn get(&self, hash: &Hash) -> Result<Vec<u8>, StoreError> {
        let path = self.path_of(hash);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(*hash))
            }
            Err(e) => return Err(io_at(&path)(e)),
        };
        let actual = Hash::of(&bytes);
        if actual != *hash {
            tracing::error!(blob = %hash, %actual, "blob failed its integrity check");
            return Err(StoreError::Corrupt {
                hash: *hash,
                actual,
            });
        }
        Ok(bytes)
    }

    pub fn contains(&self, hash: &Hash) -> bool {
        self.path_of(hash).exists()
    }

    /// Remove one blob; removing a missing blob is not an error.
    pub fn remove(&self, hash: &Hash) -> Result<(), StoreError> {
        let p = self.path_of(hash);
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_at(&p)(e)),
        }
    }

    /// Every blob address in the store.
    pub fn list(&self) -> Result<Vec<Hash>, StoreError> {
        let blobs = self.root.join("blobs");
        let mut out = Vec::new();
        for fan in std::fs::read_dir(&blobs).map_err(io_at(&blobs))? {
            let fan = fan.map_err(io_at(&blobs))?.path();
            for e in std::fs::read_dir(&fan).map_err(io_at(&fan))? {
                let e = e.map_err(io_at(&fan))?;
                if let Some(h) = e.file_name().to_str().and_then(|s| Hash::from_hex(s).ok()) {
                    out.push(h);
                }
            }
        }
        Ok(out)
    }

    /// Remove every blob not in `live`.
    pub fn gc(&self, live: &HashSet<Hash>) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        for h in self.list()? {
            if live.contains(&h) {
                report.kept += 1;
                continue;
            }
            let p = self.path_of(&h);
            report.bytes_freed += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            self.remove(&h)?;
            report.removed += 1;
        }
        tracing::info!(removed = report.removed, kept = report.kept, "blob gc");
        Ok(report)
    }

    /// Bytes used by all blobs on disk.
    pub fn disk_usage(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        for h in self.list()? {
            let p = self.path_of(&h);
            total += std::fs::metadata(&p).map_err(io_at(&p))?.len();
        }
        Ok(total)
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
        let p = s.path_of(&h);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[3] ^= 0x40;
        std::fs::write(&p, bytes).unwrap();
        assert!(matches!(s.get(&h), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn gc_keeps_only_live() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let a = s.put(b"a").unwrap();
        let b = s.put(b"b").unwrap();
        let report = s.gc(&[a].into_iter().collect()).unwrap();
        assert_eq!((report.removed, report.kept), (1, 1));
        assert!(s.contains(&a) && !s.contains(&b));
    }
}
