//! Where a file's chunks are: runs of consecutive chunk addresses, and the
//! patches laid over some of them.
//!
//! A file is mostly written front to back, so its chunks form one run (32
//! bytes a chunk, like a plain list); a sparse file is a few runs with
//! nothing stored for its holes, so a 1 TiB file with one chunk of data
//! costs one entry in memory and in its directory node, not a list of a
//! million holes. Both the tree format and the live mount use this type.
//!
//! A chunk may carry *patches* (see `chunks::patch`): small sealed blobs of
//! the bytes changed since its base was sealed, applied in order. An append
//! of a few bytes to a log then stores and ships those bytes, not the whole
//! chunk again. On the wire the patches of chunk `i` are one more run, at
//! index `PATCH_SPACE + (i << PATCH_SLOT_BITS)`: the directory-node format
//! is unchanged, every walker of the encoded runs sees the patch blobs, and
//! a build that predates patches refuses such a file (its runs pass the
//! file's end) instead of reading stale bytes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::store::Hash;

/// Where patch runs start in the encoded index space (far above any chunk
/// index: a file is at most 2^53 bytes).
const PATCH_SPACE: u64 = 1 << 62;
/// Bits of a patch run's index that number the patch within its chunk.
const PATCH_SLOT_BITS: u32 = 6;
/// The most patches one chunk may carry in a stored node.
pub const MAX_STORED_PATCHES: usize = (1 << PATCH_SLOT_BITS) - 1;

/// Chunk addresses by chunk index; an index that is absent is a hole.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "WireChunkMap")]
pub struct ChunkMap {
    /// Sorted, non-empty, neither overlapping nor touching (canonical).
    runs: Vec<Run>,
    /// Patches by chunk index, oldest first: only on chunks in `runs`.
    patches: BTreeMap<u64, Vec<Hash>>,
}

/// A chunk as a reader needs it: its base blob and the patches over it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkRef {
    pub base: Hash,
    pub patches: Vec<Hash>,
}

impl ChunkRef {
    /// A chunk with no patches.
    pub fn plain(base: Hash) -> Self {
        Self {
            base,
            patches: Vec::new(),
        }
    }

    /// What the decrypted chunk is cached under: its base's address, or,
    /// patched, an address derived from the base and every patch.
    pub fn cache_key(&self) -> Hash {
        if self.patches.is_empty() {
            return self.base;
        }
        let mut h = blake3::Hasher::new_derive_key("jax-csi patched chunk v1");
        h.update(&self.base.0);
        for p in &self.patches {
            h.update(&p.0);
        }
        Hash(*h.finalize().as_bytes())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Run {
    start: u64,
    hashes: Vec<Hash>,
}

impl Run {
    fn end(&self) -> u64 {
        self.start + self.hashes.len() as u64
    }
}

/// The encoded form: one list of runs, patch runs after the chunk runs.
#[derive(Deserialize)]
struct WireChunkMap {
    runs: Vec<Run>,
}

/// A run as encoded, borrowing its addresses (encodes like [`Run`]).
#[derive(Serialize)]
struct WireRun<'a> {
    start: u64,
    hashes: &'a [Hash],
}

impl Serialize for ChunkMap {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeSeq, SerializeStruct};
        struct Runs<'a>(&'a ChunkMap);
        impl Serialize for Runs<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let map = self.0;
                let mut seq = s.serialize_seq(Some(map.runs.len() + map.patches.len()))?;
                for r in &map.runs {
                    seq.serialize_element(&WireRun {
                        start: r.start,
                        hashes: &r.hashes,
                    })?;
                }
                for (i, p) in &map.patches {
                    seq.serialize_element(&WireRun {
                        start: PATCH_SPACE + (i << PATCH_SLOT_BITS),
                        hashes: p,
                    })?;
                }
                seq.end()
            }
        }
        let mut st = s.serialize_struct("ChunkMap", 1)?;
        st.serialize_field("runs", &Runs(self))?;
        st.end()
    }
}

impl TryFrom<WireChunkMap> for ChunkMap {
    type Error = String;

    fn try_from(wire: WireChunkMap) -> Result<Self, String> {
        let mut map = ChunkMap::default();
        for run in wire.runs {
            if run.start < PATCH_SPACE {
                if run
                    .start
                    .checked_add(run.hashes.len() as u64)
                    .is_none_or(|e| e > PATCH_SPACE)
                {
                    return Err("a chunk run reaches into the patch index space".into());
                }
                map.runs.push(run);
                continue;
            }
            let rel = run.start - PATCH_SPACE;
            let chunk = rel >> PATCH_SLOT_BITS;
            if rel & ((1 << PATCH_SLOT_BITS) - 1) != 0
                || run.hashes.is_empty()
                || run.hashes.len() > MAX_STORED_PATCHES
            {
                return Err(format!("a malformed patch run for chunk {chunk}"));
            }
            if map.patches.insert(chunk, run.hashes).is_some() {
                return Err(format!("chunk {chunk} has two patch runs"));
            }
        }
        Ok(map)
    }
}

impl ChunkMap {
    /// From a dense list where `None` is a hole (the first tree format).
    pub fn from_dense(chunks: Vec<Option<Hash>>) -> Self {
        let mut map = Self::default();
        for (i, c) in chunks.into_iter().enumerate() {
            if let Some(h) = c {
                map.set(i as u64, h);
            }
        }
        map
    }

    /// The run holding index `i`, or where a run starting at `i` would go.
    fn find(&self, i: u64) -> Result<usize, usize> {
        // The last run starting at or before `i`.
        let pos = self.runs.partition_point(|r| r.start <= i);
        if pos > 0 && i < self.runs[pos - 1].end() {
            Ok(pos - 1)
        } else {
            Err(pos)
        }
    }

    /// Chunk `i` and its patches, when it holds data.
    pub fn get_ref(&self, i: u64) -> Option<ChunkRef> {
        self.get(i).map(|base| ChunkRef {
            base,
            patches: self.patches(i).to_vec(),
        })
    }

    /// The patches laid over chunk `i`, oldest first.
    pub fn patches(&self, i: u64) -> &[Hash] {
        self.patches.get(&i).map_or(&[], Vec::as_slice)
    }

    /// Lay patch `h` over chunk `i` (which must hold data).
    pub fn add_patch(&mut self, i: u64, h: Hash) {
        debug_assert!(self.contains(i), "a patch over a hole");
        self.patches.entry(i).or_default().push(h);
    }

    /// `(index, address)` of every patch, chunk by chunk, oldest first.
    pub fn patch_blobs(&self) -> impl Iterator<Item = (u64, Hash)> + '_ {
        self.patches
            .iter()
            .flat_map(|(i, p)| p.iter().map(move |h| (*i, *h)))
    }

    /// Every blob the file's content needs: chunks, then patches.
    pub fn blobs(&self) -> impl Iterator<Item = Hash> + '_ {
        self.iter()
            .map(|(_, h)| h)
            .chain(self.patch_blobs().map(|(_, h)| h))
    }

    /// The base address of chunk `i` (without its patches).
    pub fn get(&self, i: u64) -> Option<Hash> {
        self.find(i)
            .ok()
            .map(|r| self.runs[r].hashes[(i - self.runs[r].start) as usize])
    }

    pub fn contains(&self, i: u64) -> bool {
        self.find(i).is_ok()
    }

    /// Chunk `i` is now the sealed blob `h` (its patches are folded in).
    pub fn set(&mut self, i: u64, h: Hash) {
        self.patches.remove(&i);
        let at = match self.find(i) {
            Ok(r) => {
                let start = self.runs[r].start;
                self.runs[r].hashes[(i - start) as usize] = h;
                return;
            }
            Err(pos) if pos > 0 && self.runs[pos - 1].end() == i => {
                self.runs[pos - 1].hashes.push(h);
                pos - 1
            }
            Err(pos) => {
                self.runs.insert(
                    pos,
                    Run {
                        start: i,
                        hashes: vec![h],
                    },
                );
                pos
            }
        };
        // Join the next run if the two now touch.
        if at + 1 < self.runs.len() && self.runs[at].end() == self.runs[at + 1].start {
            let next = self.runs.remove(at + 1);
            self.runs[at].hashes.extend(next.hashes);
        }
    }

    /// Forget every chunk at index `count` or above.
    pub fn truncate(&mut self, count: u64) {
        self.patches.retain(|i, _| *i < count);
        let keep = self.runs.partition_point(|r| r.start < count);
        self.runs.truncate(keep);
        if let Some(last) = self.runs.last_mut() {
            if last.end() > count {
                last.hashes.truncate((count - last.start) as usize);
            }
        }
    }

    /// How many chunks hold data (patches are not chunks).
    // Public only through the hidden `bucket::decoders` (for the fuzz
    // harness); nothing asks whether a map is empty.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u64 {
        self.runs.iter().map(|r| r.hashes.len() as u64).sum()
    }

    /// One past the highest index that holds data (0 when none does).
    pub fn end(&self) -> u64 {
        self.runs.last().map_or(0, Run::end)
    }

    /// `(index, address)` of every chunk that holds data, in order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, Hash)> + '_ {
        self.runs.iter().flat_map(|r| {
            r.hashes
                .iter()
                .enumerate()
                .map(move |(j, h)| (r.start + j as u64, *h))
        })
    }

    /// `(index, address)` of the chunks at index `from` or above.
    pub fn iter_from(&self, from: u64) -> impl Iterator<Item = (u64, Hash)> + '_ {
        let first = self.runs.partition_point(|r| r.end() <= from);
        self.runs[first..]
            .iter()
            .flat_map(move |r| {
                r.hashes
                    .iter()
                    .enumerate()
                    .map(move |(j, h)| (r.start + j as u64, *h))
            })
            .filter(move |(i, _)| *i >= from)
    }

    /// Whether the runs are in the one canonical form (what a stored node
    /// must hold: sorted, non-empty, neither overlapping nor touching), and
    /// every patch lies over a chunk that holds data.
    pub fn is_canonical(&self) -> bool {
        // Every run's end must fit a u64 (a decoded map may say anything),
        // checked before `Run::end` is used on it.
        self.runs
            .iter()
            .all(|r| !r.hashes.is_empty() && r.start.checked_add(r.hashes.len() as u64).is_some())
            && self.runs.windows(2).all(|w| w[0].end() < w[1].start)
            && self
                .patches
                .iter()
                .all(|(i, p)| !p.is_empty() && p.len() <= MAX_STORED_PATCHES && self.contains(*i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn h(n: u64) -> Hash {
        Hash::of(&n.to_le_bytes())
    }

    #[test]
    fn a_far_chunk_is_one_entry() {
        let mut m = ChunkMap::default();
        m.set(1 << 30, h(1));
        assert_eq!(m.len(), 1);
        assert_eq!(m.end(), (1 << 30) + 1);
        assert_eq!(m.get(1 << 30), Some(h(1)));
        assert_eq!(m.get(5), None);
        assert!(postcard::to_stdvec(&m).unwrap().len() < 50);
    }

    /// A map without patches encodes as before patches existed; one with
    /// patches round-trips, and its patch runs sit above every chunk index.
    #[test]
    fn patches_ride_in_the_run_list() {
        #[derive(Serialize)]
        struct Before {
            runs: Vec<Run>,
        }
        let mut m = ChunkMap::default();
        m.set(0, h(0));
        m.set(1, h(1));
        m.set(7, h(7));
        let before = Before {
            runs: m.runs.clone(),
        };
        assert_eq!(
            postcard::to_stdvec(&m).unwrap(),
            postcard::to_stdvec(&before).unwrap()
        );
        m.add_patch(1, h(10));
        m.add_patch(1, h(11));
        m.add_patch(7, h(12));
        assert!(m.is_canonical());
        let bytes = postcard::to_stdvec(&m).unwrap();
        let back: ChunkMap = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.patches(1), &[h(10), h(11)]);
        assert_eq!(back.len(), 3, "patches are not chunks");
        assert_eq!(back.end(), 8);
        assert_eq!(back.blobs().count(), 6);
        // Sealing chunk 1 whole folds its patches; a cut drops chunk 7's.
        m.set(1, h(20));
        assert!(m.patches(1).is_empty());
        m.truncate(7);
        assert_eq!(m.patch_blobs().count(), 0);
        // A patch over a hole is not canonical; a malformed patch run does not decode.
        let mut bad = ChunkMap::default();
        bad.set(0, h(0));
        bad.patches.insert(3, vec![h(1)]);
        assert!(!bad.is_canonical());
        let odd = Before {
            runs: vec![Run {
                start: PATCH_SPACE + 1,
                hashes: vec![h(1)],
            }],
        };
        assert!(postcard::from_bytes::<ChunkMap>(&postcard::to_stdvec(&odd).unwrap()).is_err());
    }

    proptest! {
        /// The map behaves as a sorted map of index to address, and stays canonical.
        #[test]
        fn behaves_like_a_btreemap(ops in prop::collection::vec((0u64..40, 0u64..5, any::<bool>()), 1..80)) {
            let mut m = ChunkMap::default();
            let mut model = BTreeMap::new();
            for (i, v, cut) in ops {
                if cut {
                    m.truncate(i);
                    model.retain(|k, _| *k < i);
                } else {
                    m.set(i, h(v));
                    model.insert(i, h(v));
                }
                prop_assert!(m.is_canonical());
                prop_assert_eq!(m.iter().collect::<Vec<_>>(), model.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>());
                prop_assert_eq!(m.len(), model.len() as u64);
                for from in [0, 3, 17, 39] {
                    prop_assert_eq!(
                        m.iter_from(from).collect::<Vec<_>>(),
                        model.range(from..).map(|(k, v)| (*k, *v)).collect::<Vec<_>>()
                    );
                }
            }
        }
    }
}
