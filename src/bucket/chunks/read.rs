//! Reading a file: deciding what a read needs (and noticing a sequential
//! reader to read ahead for) under the mount, then loading and decrypting
//! it without the mount.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::io::{load_range, ChunkIo, ReadBuf};
use super::patch::Overlay;
use super::workers::par_map;
use super::FileData;
use crate::bucket::chunk_map::ChunkRef;
use crate::bucket::error::Result;
use crate::crypto::SecretKey;
use crate::store::Hash;

/// Chunks a sequential reader loads ahead of where it reads.
const READ_AHEAD_CHUNKS: u64 = 8;

/// What a read of stored chunks needs (see [`FileData::read_plan`]).
pub enum ReadPlan {
    /// The bytes, read already.
    Ready(ReadBuf),
    /// A small range of one chunk: only the frames it covers.
    Frames {
        key: SecretKey,
        hash: Hash,
        range: std::ops::Range<usize>,
    },
    /// Whole chunks (cached, loaded in parallel), then the range of them.
    Chunks {
        key: SecretKey,
        offset: u64,
        end: u64,
        wanted: Vec<(u64, ChunkRef)>,
    },
}

impl ReadPlan {
    /// Load, verify and decrypt what the plan names.
    pub fn run(self, io: &ChunkIo) -> Result<ReadBuf> {
        match self {
            ReadPlan::Frames { key, hash, range } => {
                let len = range.len();
                let mut data = load_range(&io.source(), &key, &hash, range)?;
                // Bytes past the chunk's stored length read as zeros.
                data.resize(len, 0);
                Ok(ReadBuf::Owned(data))
            }
            other => other.assemble(io, &BTreeMap::new(), &BTreeMap::new()),
        }
    }

    /// The bytes of a `Chunks` plan, with `dirty` buffers taking the place
    /// of stored chunks and `overlays` laid over them.
    fn assemble(
        self,
        io: &ChunkIo,
        dirty: &BTreeMap<u64, Vec<u8>>,
        overlays: &BTreeMap<u64, Overlay>,
    ) -> Result<ReadBuf> {
        let (key, offset, end, wanted) = match self {
            ReadPlan::Ready(buf) => return Ok(buf),
            ReadPlan::Frames { .. } => return self.run(io),
            ReadPlan::Chunks {
                key,
                offset,
                end,
                wanted,
            } => (key, offset, end, wanted),
        };
        let cs = io.chunk_size;
        let first = offset / cs;
        let last = (end - 1) / cs;
        let in_chunk = (offset - first * cs) as usize..(end - first * cs) as usize;
        let loaded: Vec<(u64, Result<Arc<Vec<u8>>>)> =
            par_map(wanted, |(i, h)| (i, io.load(&key, &h)));
        let mut fetched = HashMap::new();
        for (i, r) in loaded {
            fetched.insert(i, r?);
        }
        if first == last && !dirty.contains_key(&first) && !overlays.contains_key(&first) {
            if let Some(chunk) = fetched.get(&first) {
                if in_chunk.end <= chunk.len() {
                    return Ok(ReadBuf::Shared(chunk.clone(), in_chunk));
                }
            }
        }
        let mut out = Vec::with_capacity((end - offset) as usize);
        for i in first..=last {
            let chunk_start = i * cs;
            let from = offset.max(chunk_start) - chunk_start;
            let to = end.min(chunk_start + cs) - chunk_start;
            let data: &[u8] = match dirty.get(&i) {
                Some(buf) => buf,
                None => fetched.get(&i).map(|a| a.as_slice()).unwrap_or(&[]),
            };
            // Bytes past a chunk's stored length (holes, extended files) read as zeros.
            let have_to = (to as usize).min(data.len());
            let have_from = (from as usize).min(have_to);
            let at = out.len();
            out.extend_from_slice(&data[have_from..have_to]);
            out.resize(out.len() + (to - from) as usize - (have_to - have_from), 0);
            if let Some(overlay) = overlays.get(&i) {
                overlay.copy_into(from as usize..to as usize, &mut out[at..]);
            }
        }
        Ok(ReadBuf::Owned(out))
    }
}

impl FileData {
    /// Read up to `len` bytes at `offset` (short at end of file). A range
    /// inside one stored chunk comes back as a view of the cached chunk,
    /// without a copy.
    pub fn read_buf(&mut self, io: &ChunkIo, offset: u64, len: u64) -> Result<ReadBuf> {
        self.read_plan(io, offset, len)?.run(io)
    }

    /// Decide what a read needs (and note the reader's pattern) without
    /// loading anything: a range that touches unsaved data is read here,
    /// at once; one of stored chunks only becomes a plan that
    /// [`ReadPlan::run`] carries out without the file, so the caller can
    /// release the mount while chunks are read and decrypted.
    pub fn read_plan(&mut self, io: &ChunkIo, offset: u64, len: u64) -> Result<ReadPlan> {
        if offset >= self.size || len == 0 {
            return Ok(ReadPlan::Ready(ReadBuf::Owned(Vec::new())));
        }
        let cs = io.chunk_size;
        let end = (offset + len).min(self.size);
        let first = offset / cs;
        let last = (end - 1) / cs;
        for i in first..=last {
            self.wait_pending(io, i)?;
        }
        let key = self.key.key();
        // Streaming: this read starts within a chunk of where the last one
        // ended (the kernel's async reads may arrive slightly out of order).
        let streaming = offset.abs_diff(self.last_read_end) <= cs;
        let contiguous = offset == self.last_read_end;
        // Read ahead only for a stream: this read and the one before it
        // both continued where the last ended. A random reader lands near
        // its previous read now and then, and must not pay for loading
        // READ_AHEAD_CHUNKS chunks each time (that was the p99 of random
        // 4 KiB reads).
        self.streak = if streaming {
            self.streak.saturating_add(1)
        } else {
            0
        };
        if self.streak >= 2 {
            for i in last + 1..=last + READ_AHEAD_CHUNKS {
                if let Some(chunk) = self.chunks.get_ref(i) {
                    if !self.dirty.contains_key(&i) {
                        io.prefetch(&key, chunk);
                    }
                }
            }
        }
        self.last_read_end = if streaming {
            self.last_read_end.max(end)
        } else {
            end
        };
        // A small read that does not continue the last one: verify and
        // decrypt only the frames it needs, not the whole chunk.
        let revisit = self.last_partial_chunk.replace(first) == Some(first) && io.caching();
        // The range within chunk `first`, when it lies in one chunk.
        let in_chunk = (offset - first * cs) as usize..(end - first * cs) as usize;
        if first == last
            && !contiguous
            && !revisit
            && (end - offset) * 4 <= cs
            && !self.dirty.contains_key(&first)
            && !self.overlays.contains_key(&first)
        {
            // A patched chunk is read whole (its patches apply to all of it).
            if let Some(h) = self
                .chunks
                .get(first)
                .filter(|_| self.chunks.patches(first).is_empty())
            {
                if !io.cached_or_loading(&h) {
                    return Ok(ReadPlan::Frames {
                        key,
                        hash: h,
                        range: in_chunk,
                    });
                }
            }
        }
        // Fetch the stored chunks the range needs, in parallel when several.
        let wanted: Vec<(u64, ChunkRef)> = (first..=last)
            .filter(|i| !self.dirty.contains_key(i))
            .filter_map(|i| self.chunks.get_ref(i).map(|c| (i, c)))
            .collect();
        let plan = ReadPlan::Chunks {
            key,
            offset,
            end,
            wanted,
        };
        if (first..=last).any(|i| self.dirty.contains_key(&i) || self.overlays.contains_key(&i)) {
            // Unsaved bytes are read under the caller's lock, as they are.
            return Ok(ReadPlan::Ready(plan.assemble(
                io,
                &self.dirty,
                &self.overlays,
            )?));
        }
        Ok(plan)
    }
}
