//! Where a file's chunks are: runs of consecutive chunk addresses.
//!
//! A file is mostly written front to back, so its chunks form one run (32
//! bytes a chunk, like a plain list); a sparse file is a few runs with
//! nothing stored for its holes, so a 1 TiB file with one chunk of data
//! costs one entry in memory and in its directory node, not a list of a
//! million holes. Both the tree format and the live mount use this type.

use serde::{Deserialize, Serialize};

use crate::store::Hash;

/// Chunk addresses by chunk index; an index that is absent is a hole.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkMap {
    /// Sorted, non-empty, neither overlapping nor touching (canonical).
    runs: Vec<Run>,
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

    pub fn get(&self, i: u64) -> Option<Hash> {
        self.find(i)
            .ok()
            .map(|r| self.runs[r].hashes[(i - self.runs[r].start) as usize])
    }

    pub fn contains(&self, i: u64) -> bool {
        self.find(i).is_ok()
    }

    pub fn set(&mut self, i: u64, h: Hash) {
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
        let keep = self.runs.partition_point(|r| r.start < count);
        self.runs.truncate(keep);
        if let Some(last) = self.runs.last_mut() {
            if last.end() > count {
                last.hashes.truncate((count - last.start) as usize);
            }
        }
    }

    /// How many chunks hold data.
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
    /// must hold: sorted, non-empty, neither overlapping nor touching).
    pub fn is_canonical(&self) -> bool {
        // Every run's end must fit a u64 (a decoded map may say anything),
        // checked before `Run::end` is used on it.
        self.runs
            .iter()
            .all(|r| !r.hashes.is_empty() && r.start.checked_add(r.hashes.len() as u64).is_some())
            && self.runs.windows(2).all(|w| w[0].end() < w[1].start)
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
