//! Verified reads of part of a blob: outboards (checked against the
//! address, kept once checked), blob descriptors kept open, and
//! `BlobReader`, which hashes only the slices a read touches.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{corrupt, io_at, read_error, slices, BlobStore, Hash, StoreError};

/// How many verified outboards are kept: about 3 KiB each for a 1 MiB
/// chunk, so 2048 cover random reads over 2 GiB for ~6 MiB of memory.
pub(super) const VERIFIED_OUTBOARDS: usize = 2048;

/// At most this many blob descriptors are kept open: a random reader of
/// 1 GiB in 1 MiB chunks then never opens a blob twice. An open costs a
/// 4 KiB random read more than its pread, its hash and its decryption.
pub(super) const OPEN_BLOBS: u64 = 1024;

/// A blob's trusted slice CVs and the bytes after its last full slice.
#[derive(Debug)]
pub(super) struct Verified {
    len: usize,
    cvs: Vec<[u8; 32]>,
    tail: Vec<u8>,
}

impl BlobStore {
    /// Where a blob's outboard (the CVs of its full slices) lives.
    pub(super) fn outboard_path(&self, hash: &Hash) -> PathBuf {
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
    pub(super) fn forget(&self, hash: &Hash) {
        self.verified
            .lock()
            .expect("verified outboards lock")
            .remove(hash);
        self.open_files
            .lock()
            .expect("open blobs lock")
            .remove(hash);
    }
}

/// Blob descriptors kept open per store (one store per node): up to
/// [`OPEN_BLOBS`], but at most a sixteenth of the descriptors this process
/// may open, so a low limit is not spent on them.
pub(super) fn open_blobs_kept() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 1024,
        rlim_max: 1024,
    };
    // SAFETY: getrlimit fills the struct we pass; on failure it is left as set.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (limit.rlim_cur / 16).clamp(16, OPEN_BLOBS) as usize
}

/// A blob opened for verified partial reads (see [`BlobStore::reader`]).
pub struct BlobReader {
    hash: Hash,
    len: usize,
    pub(super) source: Source,
}

pub(super) enum Source {
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
