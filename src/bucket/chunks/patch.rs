//! Chunk patches: the bytes a version changed in a chunk, sealed on their
//! own instead of the whole chunk again.
//!
//! Why: an append of a line to a log, or a database's 8 KiB page write,
//! dirties one chunk of up to 16 MiB. Sealing that chunk whole at every
//! version re-encrypts and stores it whole, and every peer fetches it whole
//! (a pull grew to ~300 KB per version with three appending writers). A
//! patch holds only the changed ranges: `cut` (the chunk is first cut to
//! that length), `len` (then zero-extended to it) and the edits. A reader
//! applies a chunk's patches in order over its base; past
//! [`MAX_PATCHES`] patches, or when the changes are large, the chunk is
//! sealed whole again and its patches are dropped from the tree.
//!
//! A small write into a stored chunk that is not loaded need not load it at
//! all: an [`Overlay`] keeps the written bytes by offset, and is sealed as a
//! patch of format 2, which only grows the chunk (to the end of its edits)
//! and never cuts it, so it applies without knowing the chunk's length. A
//! database's 8 KiB page write then costs 8 KiB, not a 1 MiB chunk read,
//! verified, decrypted and copied (that was 16% of the FUSE threads' time
//! under pgbench).

use std::collections::BTreeMap;
use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::bucket::error::{BucketError, Result};
use crate::crypto::SecretKey;
use crate::store::{BlobStore, Hash};

/// Patches a chunk carries before the next change seals it whole.
const MAX_PATCHES: usize = 16;
const _: () = assert!(MAX_PATCHES <= crate::bucket::chunk_map::MAX_STORED_PATCHES);
/// A change to a chunk is a patch only when its bytes are at most this
/// share of the chunk size (1/16: 64 KiB of a 1 MiB chunk).
const PATCH_SHARE: u64 = 16;
/// Bound to what a patch may hold, for the format byte and its purpose.
const PATCH_AAD: &[u8] = b"jax-csi chunk patch v1";
/// Cut to `cut`, then zero-extend to `len`, then the edits.
const PATCH_FORMAT: u8 = 1;
/// Zero-extend to `len` if shorter (never cut), then the edits: an overlay.
const OVERLAY_FORMAT: u8 = 2;

/// What changed in a dirty chunk since it was loaded from its stored
/// content: the shortest it was cut to, and the ranges written since.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkEdits {
    /// The stored content's length when the chunk was loaded.
    loaded_len: usize,
    /// The shortest the chunk has been since (bytes past it are zeros
    /// unless written).
    cut: usize,
    /// Written ranges: sorted, merged, all below the chunk's length.
    ranges: Vec<Range<usize>>,
}

impl ChunkEdits {
    /// A chunk just loaded with `len` stored bytes.
    pub fn loaded(len: usize) -> Self {
        Self {
            loaded_len: len,
            cut: len,
            ranges: Vec::new(),
        }
    }

    /// Bytes `range` were written.
    pub fn wrote(&mut self, range: Range<usize>) {
        if range.is_empty() {
            return;
        }
        let first = self.ranges.partition_point(|r| r.end < range.start);
        let last = self.ranges.partition_point(|r| r.start <= range.end);
        let mut merged = range;
        if first < last {
            merged.start = merged.start.min(self.ranges[first].start);
            merged.end = merged.end.max(self.ranges[last - 1].end);
        }
        self.ranges.splice(first..last, [merged]);
    }

    /// The chunk was cut to `len` bytes.
    pub fn truncated(&mut self, len: usize) {
        self.cut = self.cut.min(len);
        self.ranges.retain_mut(|r| {
            r.end = r.end.min(len);
            r.start < r.end
        });
    }

    /// Bytes the edits hold.
    pub fn bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.len() as u64).sum()
    }

    /// Whether a chunk now `len` bytes long is what was loaded.
    pub fn unchanged(&self, len: usize) -> bool {
        self.ranges.is_empty() && self.cut == self.loaded_len && len == self.loaded_len
    }

    /// Whether these changes should be sealed as a patch over a chunk that
    /// carries `patches` already, rather than the chunk sealed whole.
    pub fn worth_a_patch(&self, patches: usize, chunk_size: u64) -> bool {
        self.cut > 0 && patch_sized(self.bytes(), patches, chunk_size)
    }
}

/// Whether `bytes` of change to a chunk carrying `patches` may be sealed
/// as one more patch: at most [`MAX_PATCHES`], each small.
fn patch_sized(bytes: u64, patches: usize, chunk_size: u64) -> bool {
    patches < MAX_PATCHES && bytes * PATCH_SHARE <= chunk_size
}

/// Writes into a stored chunk that was not loaded: the bytes by offset
/// within the chunk, never overlapping. The chunk is its stored content,
/// zero-extended to the end of the overlay if shorter, with these bytes on top.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overlay {
    pieces: BTreeMap<usize, Vec<u8>>,
    bytes: usize,
}

impl Overlay {
    /// Whether a chunk carrying `patches` may take `more` bytes of
    /// overlay beyond what `overlay` holds (small changes only, as for
    /// [`ChunkEdits::worth_a_patch`]).
    pub fn fits(overlay: Option<&Overlay>, more: usize, patches: usize, chunk_size: u64) -> bool {
        let held = overlay.map_or(0, |o| o.bytes);
        patch_sized((held + more) as u64, patches, chunk_size)
    }

    /// Bytes `data` were written at `at`: merged with the pieces they
    /// overlap or touch.
    pub fn write(&mut self, at: usize, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let end = at + data.len();
        // Pieces that start at or before `end` and end at or after `at`.
        let touching: Vec<usize> = self
            .pieces
            .range(..=end)
            .rev()
            .take_while(|(s, b)| *s + b.len() >= at)
            .map(|(s, _)| *s)
            .collect();
        // The common case, an append or overwrite within or at the end of
        // one piece that starts at or before `at`: grow it in place rather
        // than copying it into a new one.
        if let [only] = touching[..] {
            if only <= at {
                let piece = self.pieces.get_mut(&only).expect("listed above");
                let before = piece.len();
                if piece.len() < end - only {
                    piece.resize(end - only, 0);
                }
                piece[at - only..end - only].copy_from_slice(data);
                self.bytes += piece.len() - before;
                return;
            }
        }
        let mut start = at;
        let mut stop = end;
        for s in &touching {
            start = start.min(*s);
            stop = stop.max(s + self.pieces[s].len());
        }
        let mut merged = vec![0u8; stop - start];
        for s in touching {
            let old = self.pieces.remove(&s).expect("listed above");
            self.bytes -= old.len();
            merged[s - start..s - start + old.len()].copy_from_slice(&old);
        }
        merged[at - start..end - start].copy_from_slice(data);
        self.bytes += merged.len();
        self.pieces.insert(start, merged);
    }

    /// Bytes the overlay holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The chunk is at least this long with the overlay applied.
    fn end(&self) -> usize {
        self.pieces
            .iter()
            .next_back()
            .map_or(0, |(s, b)| s + b.len())
    }

    /// The written ranges, in order.
    pub fn ranges(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        self.pieces.iter().map(|(s, b)| *s..s + b.len())
    }

    /// Apply to the chunk's whole content.
    pub fn apply(&self, chunk: &mut Vec<u8>) {
        if chunk.len() < self.end() {
            chunk.resize(self.end(), 0);
        }
        for (s, b) in &self.pieces {
            chunk[*s..s + b.len()].copy_from_slice(b);
        }
    }

    /// Copy what the overlay holds of chunk bytes `range` into `out`,
    /// which holds those bytes (`out[0]` is chunk byte `range.start`).
    pub fn copy_into(&self, range: Range<usize>, out: &mut [u8]) {
        for (s, b) in &self.pieces {
            let (from, to) = ((*s).max(range.start), (s + b.len()).min(range.end));
            if from < to {
                out[from - range.start..to - range.start].copy_from_slice(&b[from - s..to - s]);
            }
        }
    }
}

/// Seal an overlay as a patch (format 2) and store it; returns its address.
pub fn seal_overlay(store: &BlobStore, key: &SecretKey, overlay: &Overlay) -> Result<Hash> {
    let body = PatchBody {
        format: OVERLAY_FORMAT,
        cut: 0,
        len: overlay.end() as u32,
        edits: overlay
            .pieces
            .iter()
            .map(|(s, b)| (*s as u32, b.clone()))
            .collect(),
    };
    seal_body(store, key, &body)
}

#[derive(Serialize, Deserialize)]
struct PatchBody {
    format: u8,
    cut: u32,
    len: u32,
    edits: Vec<(u32, Vec<u8>)>,
}

/// Seal the changes `edits` made to a chunk now holding `plain`, and store
/// the patch; returns its address. `plain` is left as it is.
pub fn seal_patch(
    store: &BlobStore,
    key: &SecretKey,
    plain: &[u8],
    edits: &ChunkEdits,
) -> Result<Hash> {
    let body = PatchBody {
        format: PATCH_FORMAT,
        cut: edits.cut as u32,
        len: plain.len() as u32,
        edits: edits
            .ranges
            .iter()
            .map(|r| (r.start as u32, plain[r.clone()].to_vec()))
            .collect(),
    };
    seal_body(store, key, &body)
}

fn seal_body(store: &BlobStore, key: &SecretKey, body: &PatchBody) -> Result<Hash> {
    let encoded = postcard::to_stdvec(body).map_err(|e| BucketError::Format {
        what: "chunk patch",
        reason: e.to_string(),
    })?;
    let sealed = key.seal_with_aad(&encoded, PATCH_AAD)?;
    Ok(store.put(&sealed)?)
}

/// Apply the sealed patch `sealed` (blob `hash`, verified) to `chunk`: a
/// patch that does not open, or does not fit a chunk of `chunk_size`
/// bytes, is an integrity error and changes nothing.
pub fn apply_patch(
    key: &SecretKey,
    hash: &Hash,
    sealed: &[u8],
    chunk: &mut Vec<u8>,
    chunk_size: u64,
) -> Result<()> {
    let bad = |why: &str| {
        tracing::error!(patch = %hash, why, "chunk patch is unusable");
        BucketError::Integrity(format!("chunk patch {hash}: {why}"))
    };
    let plain = key
        .open_with_aad(sealed, PATCH_AAD)
        .map_err(|_| bad("does not decrypt"))?;
    let body: PatchBody = postcard::from_bytes(&plain).map_err(|_| bad("does not decode"))?;
    let (cut, len) = (body.cut as usize, body.len as usize);
    let fits = (body.format == PATCH_FORMAT || body.format == OVERLAY_FORMAT)
        && len as u64 <= chunk_size
        && body.edits.iter().all(|(at, b)| {
            (*at as usize)
                .checked_add(b.len())
                .is_some_and(|e| e <= len)
        });
    if !fits {
        return Err(bad("does not fit its chunk"));
    }
    if body.format == PATCH_FORMAT {
        chunk.truncate(cut);
        chunk.resize(len, 0);
    } else if chunk.len() < len {
        chunk.resize(len, 0);
    }
    for (at, bytes) in body.edits {
        let at = at as usize;
        chunk[at..at + bytes.len()].copy_from_slice(&bytes);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Whatever writes and cuts a chunk sees, its base with the patch
    /// applied is the chunk as the writer left it.
    #[derive(Clone, Debug)]
    enum Step {
        Write(usize, Vec<u8>),
        Cut(usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0usize..300, prop::collection::vec(any::<u8>(), 1..40))
                .prop_map(|(a, b)| Step::Write(a, b)),
            (0usize..300).prop_map(Step::Cut),
        ]
    }

    proptest! {
        #[test]
        fn a_patch_rebuilds_what_was_written(
            base in prop::collection::vec(any::<u8>(), 1..256),
            steps in prop::collection::vec(step(), 0..12),
        ) {
            let d = tempfile::tempdir().unwrap();
            let store = BlobStore::open(d.path()).unwrap();
            let key = SecretKey::generate().unwrap();
            let mut chunk = base.clone();
            let mut edits = ChunkEdits::loaded(base.len());
            for s in steps {
                match s {
                    Step::Write(at, b) => {
                        if chunk.len() < at {
                            chunk.resize(at, 0);
                        }
                        let end = at + b.len();
                        if chunk.len() < end {
                            chunk.resize(end, 0);
                        }
                        chunk[at..end].copy_from_slice(&b);
                        edits.wrote(at..end);
                    }
                    Step::Cut(n) => {
                        if n < chunk.len() {
                            chunk.truncate(n);
                            edits.truncated(n);
                        }
                    }
                }
            }
            let h = seal_patch(&store, &key, &chunk, &edits).unwrap();
            let mut rebuilt = base.clone();
            apply_patch(&key, &h, &store.get(&h).unwrap(), &mut rebuilt, 1 << 20).unwrap();
            prop_assert_eq!(rebuilt, chunk.clone());
            prop_assert!(edits.bytes() as usize <= chunk.len());
            if edits.unchanged(chunk.len()) {
                prop_assert_eq!(chunk, base);
            }
        }
    }

    proptest! {
        /// An overlay, sealed and applied over the chunk it was written
        /// on (of any length), is that chunk grown as the writes grew it
        /// with the writes on top; and so is what it copies into a read.
        #[test]
        fn an_overlay_rebuilds_what_was_written(
            base in prop::collection::vec(any::<u8>(), 0..300),
            writes in prop::collection::vec(
                (0usize..400, prop::collection::vec(any::<u8>(), 1..40)), 1..12),
            read in (0usize..450, 0usize..450),
        ) {
            let d = tempfile::tempdir().unwrap();
            let store = BlobStore::open(d.path()).unwrap();
            let key = SecretKey::generate().unwrap();
            let mut want = base.clone();
            let mut overlay = Overlay::default();
            for (at, data) in &writes {
                if want.len() < at + data.len() {
                    want.resize(at + data.len(), 0);
                }
                want[*at..at + data.len()].copy_from_slice(data);
                overlay.write(*at, data);
            }
            prop_assert_eq!(overlay.bytes(), overlay.ranges().map(|r| r.len()).sum::<usize>());
            let h = seal_overlay(&store, &key, &overlay).unwrap();
            let mut rebuilt = base.clone();
            apply_patch(&key, &h, &store.get(&h).unwrap(), &mut rebuilt, 1 << 20).unwrap();
            prop_assert_eq!(&rebuilt, &want);
            let mut applied = base.clone();
            overlay.apply(&mut applied);
            prop_assert_eq!(&applied, &want);
            let (a, b) = (read.0.min(read.1), read.0.max(read.1));
            let mut out: Vec<u8> = (a..b).map(|i| base.get(i).copied().unwrap_or(0)).collect();
            overlay.copy_into(a..b, &mut out);
            let expected: Vec<u8> = (a..b).map(|i| want.get(i).copied().unwrap_or(0)).collect();
            prop_assert_eq!(out, expected);
        }
    }

    /// A patch under another key, an altered one, or one too long for the
    /// chunk size is refused and leaves the chunk alone.
    #[test]
    fn a_bad_patch_changes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let store = BlobStore::open(d.path()).unwrap();
        let key = SecretKey::generate().unwrap();
        let mut edits = ChunkEdits::loaded(4);
        edits.wrote(4..100);
        let plain = vec![7u8; 100];
        let h = seal_patch(&store, &key, &plain, &edits).unwrap();
        let sealed = store.get(&h).unwrap();
        let mut chunk = b"base".to_vec();
        let other = SecretKey::generate().unwrap();
        assert!(apply_patch(&other, &h, &sealed, &mut chunk, 1 << 20).is_err());
        let mut altered = sealed.clone();
        altered[3] ^= 1;
        assert!(apply_patch(&key, &h, &altered, &mut chunk, 1 << 20).is_err());
        assert!(apply_patch(&key, &h, &sealed, &mut chunk, 64).is_err());
        assert_eq!(chunk, b"base");
        apply_patch(&key, &h, &sealed, &mut chunk, 1 << 20).unwrap();
        assert_eq!(chunk.len(), 100);
    }
}
