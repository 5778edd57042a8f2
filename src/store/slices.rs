//! Verified reads of part of a blob. A blob's address is its BLAKE3 hash, and
//! BLAKE3 is a tree: every aligned 16 KiB slice of a blob is a subtree with
//! its own chaining value (CV). Keeping the CVs of a blob's full slices (its
//! *outboard*, 32 bytes per slice, stored beside the blob and itself checked
//! against the address) lets a reader hash only the slices it reads plus the
//! short tail after them, and still refuse any byte that does not belong to
//! the address. A 4 KiB read of a 1 MiB blob hashes 16 KiB, not 1 MiB.

use std::ops::Range;

use blake3::hazmat::{
    merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};

use super::Hash;

/// Bytes per verified slice: 16 KiB, 16 BLAKE3 chunks.
pub const SLICE_LEN: usize = 16 * 1024;
const CHUNKS_PER_SLICE: usize = SLICE_LEN / blake3::CHUNK_LEN;

/// Number of full slices a blob of `len` bytes has outboard CVs for (none
/// when the blob is one slice or less: it is read whole).
pub fn full_slices(len: usize) -> usize {
    if len <= SLICE_LEN {
        0
    } else {
        len / SLICE_LEN
    }
}

/// The chaining value of full slice `j` with bytes `bytes`.
pub fn slice_cv(j: usize, bytes: &[u8]) -> ChainingValue {
    blake3::Hasher::new()
        .set_input_offset((j * SLICE_LEN) as u64)
        .update(bytes)
        .finalize_non_root()
}

/// A blob's address and the CVs of its full slices, in one pass of hashing.
pub fn hash_with_outboard(bytes: &[u8]) -> (Hash, Vec<ChainingValue>) {
    let k = full_slices(bytes.len());
    if k == 0 {
        return (Hash::of(bytes), Vec::new());
    }
    let cvs: Vec<ChainingValue> = (0..k)
        .map(|j| slice_cv(j, &bytes[j * SLICE_LEN..(j + 1) * SLICE_LEN]))
        .collect();
    let root = root_from(&cvs, &bytes[k * SLICE_LEN..], bytes.len())
        .expect("a tree built from its own bytes is complete");
    (root, cvs)
}

/// The address of a blob of `len` bytes whose full slices have CVs `cvs` and
/// whose bytes after them are `tail`. `None` when the pieces cannot form
/// such a tree (the outboard does not fit the blob).
pub fn root_from(cvs: &[ChainingValue], tail: &[u8], len: usize) -> Option<Hash> {
    let k = cvs.len();
    if k == 0 || k != full_slices(len) || tail.len() != len - k * SLICE_LEN {
        return None;
    }
    let tree = Tree { cvs, tail, len };
    let chunks = len.div_ceil(blake3::CHUNK_LEN);
    let left = largest_power_of_two_below(chunks);
    let l = tree.cv(0, left)?;
    let r = tree.cv(left, chunks)?;
    Some(Hash(*merge_subtrees_root(&l, &r, Mode::Hash).as_bytes()))
}

/// The largest power of two strictly less than `n` (n >= 2): the size of a
/// BLAKE3 node's left subtree, in chunks.
fn largest_power_of_two_below(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

struct Tree<'a> {
    cvs: &'a [ChainingValue],
    tail: &'a [u8],
    len: usize,
}

impl Tree<'_> {
    /// CV of the non-root subtree over BLAKE3 chunks `start..end`.
    fn cv(&self, start: usize, end: usize) -> Option<ChainingValue> {
        let slices_end = self.cvs.len() * CHUNKS_PER_SLICE;
        if end - start == CHUNKS_PER_SLICE
            && start.is_multiple_of(CHUNKS_PER_SLICE)
            && end <= slices_end
        {
            return Some(self.cvs[start / CHUNKS_PER_SLICE]);
        }
        if start >= slices_end {
            let base = slices_end * blake3::CHUNK_LEN;
            let from = start * blake3::CHUNK_LEN - base;
            let to = (end * blake3::CHUNK_LEN).min(self.len) - base;
            return Some(
                blake3::Hasher::new()
                    .set_input_offset((start * blake3::CHUNK_LEN) as u64)
                    .update(self.tail.get(from..to)?)
                    .finalize_non_root(),
            );
        }
        if end - start <= CHUNKS_PER_SLICE {
            // Part of a slice whose bytes we do not hold: cannot happen for
            // a well-formed tree, so treat it as an unusable outboard.
            return None;
        }
        let mid = start + largest_power_of_two_below(end - start);
        Some(merge_subtrees_non_root(
            &self.cv(start, mid)?,
            &self.cv(mid, end)?,
            Mode::Hash,
        ))
    }
}

/// The full slices (of `k`) a byte range of a blob touches; any part of the
/// range past them lies in the tail.
pub fn slices_for(range: &Range<usize>, k: usize) -> Range<usize> {
    if range.is_empty() {
        return 0..0;
    }
    let first = range.start / SLICE_LEN;
    let last = ((range.end - 1) / SLICE_LEN).min(k.saturating_sub(1));
    if first >= k {
        return 0..0;
    }
    first..last + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        blake3::Hasher::new()
            .update(&len.to_le_bytes())
            .finalize_xof()
            .fill(&mut v);
        v
    }

    #[test]
    fn the_tree_root_is_the_blake3_hash_for_every_shape() {
        let s = SLICE_LEN;
        for len in [
            0,
            1,
            s - 1,
            s,
            s + 1,
            s + 28,
            2 * s,
            2 * s + 1023,
            3 * s + 5000,
            16 * s,
            16 * s + 268,
            16 * s - 100 + 268,
            17 * s + 2 * 1024 + 1,
            37 * s + 40_000,
        ] {
            let b = bytes(len);
            let (root, cvs) = hash_with_outboard(&b);
            assert_eq!(root, Hash::of(&b), "len {len}");
            assert_eq!(cvs.len(), full_slices(len));
        }
    }

    #[test]
    fn a_wrong_outboard_or_tail_does_not_reach_the_root() {
        let b = bytes(5 * SLICE_LEN + 300);
        let (root, mut cvs) = hash_with_outboard(&b);
        let tail = &b[5 * SLICE_LEN..];
        assert_eq!(root_from(&cvs, tail, b.len()), Some(root));
        assert_eq!(root_from(&cvs[..4], tail, b.len()), None);
        let mut bad_tail = tail.to_vec();
        bad_tail[7] ^= 1;
        assert_ne!(root_from(&cvs, &bad_tail, b.len()), Some(root));
        cvs[3][0] ^= 1;
        assert_ne!(root_from(&cvs, tail, b.len()), Some(root));
    }

    #[test]
    fn slices_cover_a_range() {
        assert_eq!(slices_for(&(0..1), 16), 0..1);
        assert_eq!(slices_for(&(SLICE_LEN - 1..SLICE_LEN + 1), 16), 0..2);
        assert_eq!(slices_for(&(16 * SLICE_LEN..16 * SLICE_LEN + 5), 16), 0..0);
        assert_eq!(
            slices_for(&(15 * SLICE_LEN..16 * SLICE_LEN + 5), 16),
            15..16
        );
    }
}
