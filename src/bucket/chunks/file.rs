//! A file's content in a live mount: its chunks, dirty buffers and
//! background seals; what it allocates (for the quota); writes, truncates
//! and flushes.

use std::collections::BTreeMap;
use std::sync::{mpsc, Arc};

use super::io::{seal_dirty, seal_store, ChunkIo};
use super::patch::{ChunkEdits, Overlay};
use super::workers::{
    par_map, worker_pool, Job, Sealed, SealedChunk, SealsInFlight, MAX_UNRECORDED_SEALS,
};
use super::{DirtyChunk, MAX_FILE_SIZE};
use crate::bucket::chunk_map::ChunkMap;
use crate::bucket::error::{BucketError, Result};
use crate::bucket::tree::{FileNode, KeyBytes};

/// A file's content as held by a live mount.
pub struct FileData {
    pub size: u64,
    pub key: KeyBytes,
    /// Stored chunks (an index absent is a hole).
    pub chunks: ChunkMap,
    /// How many chunks hold data (stored, dirty or sealing): what the file
    /// allocates, kept as it changes so the quota check is O(1).
    data_chunks: u64,
    /// Chunks changed since the last flush, by index.
    pub(super) dirty: BTreeMap<u64, Vec<u8>>,
    /// What changed in the dirty chunks loaded from stored content (a
    /// chunk absent here is sealed whole).
    edits: BTreeMap<u64, ChunkEdits>,
    /// Small writes into stored chunks that were not loaded (see
    /// [`Overlay`]); a chunk is in at most one of `dirty`, `overlays`
    /// and `pending`.
    pub(super) overlays: BTreeMap<u64, Overlay>,
    /// Full chunks being sealed in the background, by index.
    pending: BTreeMap<u64, mpsc::Receiver<Sealed>>,
    /// How many of `pending` still run.
    seals: Arc<SealsInFlight>,
    /// Where the last read ended, to recognise a sequential reader.
    pub(super) last_read_end: u64,
    /// Reads in a row that continued near where the one before ended.
    pub(super) streak: u8,
    /// The chunk the last small read was in: a second small read of the
    /// same chunk loads (and caches) all of it instead of its frames.
    pub(super) last_partial_chunk: Option<u64>,
    /// A chunk failed to be stored (a full disk): until a flush succeeds,
    /// writes try one first and fail as it does, so the writer keeps
    /// seeing the error and memory does not fill with unstorable chunks.
    store_failed: bool,
}

fn chunk_count(size: u64, cs: u64) -> usize {
    size.div_ceil(cs) as usize
}

/// Bytes a file of `size` allocates when `data_chunks` of its chunks hold
/// data and `last_is_data` tells whether the last one does: whole chunks,
/// but the last one only up to the end of the file. Holes allocate nothing.
fn allocated_bytes(size: u64, cs: u64, data_chunks: u64, last_is_data: bool) -> u64 {
    let slack = if last_is_data && !size.is_multiple_of(cs) {
        cs - size % cs
    } else {
        0
    };
    (data_chunks * cs).saturating_sub(slack)
}

/// Bytes a stored file allocates (chunks that are not holes).
pub fn allocated(node: &FileNode, cs: u64) -> u64 {
    let count = chunk_count(node.size, cs);
    let data = node.chunks.len();
    let last_is_data = count > 0 && node.chunks.contains(count as u64 - 1);
    allocated_bytes(node.size, cs, data, last_is_data)
}

impl FileData {
    pub fn empty() -> Result<Self> {
        Ok(Self::empty_with(KeyBytes::generate()?))
    }

    /// An empty file sealed under `key`.
    pub fn empty_with(key: KeyBytes) -> Self {
        Self {
            size: 0,
            key,
            chunks: ChunkMap::default(),
            data_chunks: 0,
            dirty: BTreeMap::new(),
            edits: BTreeMap::new(),
            overlays: BTreeMap::new(),
            pending: BTreeMap::new(),
            seals: Arc::default(),
            last_read_end: 0,
            streak: 0,
            last_partial_chunk: None,
            store_failed: false,
        }
    }

    /// A stored file, checked against the chunk size: a chunk list longer
    /// than the file or a size past the maximum is corrupt, not a panic.
    pub fn from_node(node: &FileNode, cs: u64) -> Result<Self> {
        if node.size > MAX_FILE_SIZE || node.chunks.end() > chunk_count(node.size, cs) as u64 {
            return Err(BucketError::Integrity(format!(
                "a file node of {} bytes lists chunks up to index {} of {cs} bytes",
                node.size,
                node.chunks.end()
            )));
        }
        Ok(Self {
            size: node.size,
            key: node.key.clone(),
            chunks: node.chunks.clone(),
            data_chunks: node.chunks.len(),
            dirty: BTreeMap::new(),
            edits: BTreeMap::new(),
            overlays: BTreeMap::new(),
            pending: BTreeMap::new(),
            seals: Arc::default(),
            last_read_end: 0,
            streak: 0,
            last_partial_chunk: None,
            store_failed: false,
        })
    }

    /// The persisted form; only valid when nothing is dirty.
    pub fn to_node(&self) -> FileNode {
        debug_assert!(!self.is_dirty(), "flush before persisting");
        FileNode {
            size: self.size,
            key: self.key.clone(),
            chunks: self.chunks.clone(),
        }
    }

    /// True when chunk `i` holds data (stored, dirty or being sealed).
    fn is_data(&self, i: u64) -> bool {
        self.dirty.contains_key(&i) || self.pending.contains_key(&i) || self.chunks.contains(i)
    }

    /// Bytes this file allocates: its chunks that are not holes.
    pub fn allocated(&self, cs: u64) -> u64 {
        let count = chunk_count(self.size, cs) as u64;
        let last_is_data = count > 0 && self.is_data(count - 1);
        allocated_bytes(self.size, cs, self.data_chunks, last_is_data)
    }

    /// Bytes the file would allocate after writing `len` bytes at `offset`
    /// (for the quota check before the write).
    pub fn allocated_after_write(&self, cs: u64, offset: u64, len: u64) -> u64 {
        if len == 0 {
            return self.allocated(cs);
        }
        let end = offset + len;
        let size = self.size.max(end);
        let (first, last) = (offset / cs, (end - 1) / cs);
        let fresh = (first..=last).filter(|i| !self.is_data(*i)).count() as u64;
        let count = chunk_count(size, cs) as u64;
        let last_is_data = (first..=last).contains(&(count - 1)) || self.is_data(count - 1);
        allocated_bytes(size, cs, self.data_chunks + fresh, last_is_data)
    }

    /// Bytes the file would allocate at size `new_size`.
    pub fn allocated_after_truncate(&self, cs: u64, new_size: u64) -> u64 {
        if new_size >= self.size {
            // Growing adds a hole; the old last chunk keeps its bytes and
            // now counts whole if it is no longer last.
            let count = chunk_count(new_size, cs) as u64;
            let last_is_data = count > 0 && self.is_data(count - 1);
            return allocated_bytes(new_size, cs, self.data_chunks, last_is_data);
        }
        let count = chunk_count(new_size, cs) as u64;
        let kept = self.data_chunks - self.data_chunks_from(count);
        let last_is_data = count > 0 && self.is_data(count - 1);
        allocated_bytes(new_size, cs, kept, last_is_data)
    }

    /// How many data chunks have index `from` or above.
    fn data_chunks_from(&self, from: u64) -> u64 {
        let stored = self
            .chunks
            .iter_from(from)
            .filter(|(i, _)| !self.dirty.contains_key(i) && !self.pending.contains_key(i))
            .count() as u64;
        let dirty = self.dirty.range(from..).count() as u64;
        let pending = self
            .pending
            .range(from..)
            .filter(|(i, _)| !self.dirty.contains_key(i))
            .count() as u64;
        stored + dirty + pending
    }

    /// This file's background seals, for a writer to wait on.
    pub fn seals_in_flight(&self) -> Arc<SealsInFlight> {
        self.seals.clone()
    }

    pub fn dirty_bytes(&self) -> u64 {
        let overlays: usize = self.overlays.values().map(Overlay::bytes).sum();
        self.dirty.values().map(|b| b.len() as u64).sum::<u64>() + overlays as u64
    }

    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty() || !self.pending.is_empty() || !self.overlays.is_empty()
    }

    /// Hand full chunk `i` to the seal workers.
    fn submit(&mut self, io: &ChunkIo, i: u64) -> Result<()> {
        self.record_finished_seals(io)?;
        while self.pending.len() >= MAX_UNRECORDED_SEALS {
            let oldest = *self.pending.keys().next().expect("non-empty");
            self.wait_pending(io, oldest)?;
        }
        let Some(mut buf) = self.dirty.remove(&i) else {
            return Ok(());
        };
        // A full chunk is sealed whole: its patches fold into it.
        self.edits.remove(&i);
        let (tx, rx) = mpsc::sync_channel(1);
        let (store, key, seals) = (io.store.clone(), self.key.key(), self.seals.clone());
        let job: Job = Box::new(move || {
            let r = seal_store(&store, &key, &mut buf);
            let _ = tx.send((buf, r));
            seals.finished();
        });
        self.seals.started();
        if worker_pool()
            .lock()
            .expect("worker queue lock")
            .send(job)
            .is_err()
        {
            self.seals.finished();
            return Err(BucketError::InvalidArgument("seal workers are gone".into()));
        }
        self.pending.insert(i, rx);
        Ok(())
    }

    /// Record the background seals that are done, without waiting: a
    /// writer learns of a failed one (a full disk) at its next chunk.
    fn record_finished_seals(&mut self, io: &ChunkIo) -> Result<()> {
        let mut done = Vec::new();
        self.pending.retain(|&i, rx| match rx.try_recv() {
            Ok((buf, r)) => {
                done.push((whole(i, buf), r));
                false
            }
            Err(_) => true,
        });
        if done.is_empty() {
            return Ok(());
        }
        self.apply_sealed(io, done)
    }

    /// Wait for chunk `i`'s background seal, if any, and record its outcome.
    pub(super) fn wait_pending(&mut self, io: &ChunkIo, i: u64) -> Result<()> {
        let Some(rx) = self.pending.remove(&i) else {
            return Ok(());
        };
        let (buf, r) = rx
            .recv()
            .map_err(|_| BucketError::InvalidArgument("seal worker died".into()))?;
        self.apply_sealed(io, vec![(whole(i, buf), r)])
    }

    /// Wait for every background seal of this file.
    fn wait_all_pending(&mut self, io: &ChunkIo) -> Result<()> {
        let mut first_err = None;
        while let Some(&i) = self.pending.keys().next() {
            if let Err(e) = self.wait_pending(io, i) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// A mutable buffer for chunk `i`, loading its stored bytes unless
    /// `overwrite_all` (what changes in a loaded one is noted in `edits`).
    fn dirty_chunk(&mut self, io: &ChunkIo, i: u64, overwrite_all: bool) -> Result<&mut Vec<u8>> {
        self.wait_pending(io, i)?;
        if let Some(overlay) = self.overlays.remove(&i) {
            if let Err(e) = self.load_under(io, i, &overlay) {
                self.overlays.insert(i, overlay);
                return Err(e);
            }
        }
        if !self.dirty.contains_key(&i) {
            let mut buf = io.chunk_buffer();
            match self.chunks.get_ref(i) {
                Some(chunk) if !overwrite_all => {
                    buf.extend_from_slice(&io.load(&self.key.key(), &chunk)?);
                    self.edits.insert(i, ChunkEdits::loaded(buf.len()));
                }
                _ => {}
            }
            self.dirty.insert(i, buf);
        }
        Ok(self.dirty.get_mut(&i).expect("just inserted"))
    }

    /// Make overlaid chunk `i` an ordinary dirty chunk: its stored content
    /// loaded, the overlay applied and noted as edits.
    fn load_under(&mut self, io: &ChunkIo, i: u64, overlay: &Overlay) -> Result<()> {
        let chunk = self.chunks.get_ref(i).ok_or_else(|| {
            BucketError::Integrity(format!("an overlay on chunk {i}, which is not stored"))
        })?;
        let mut buf = io.chunk_buffer();
        buf.extend_from_slice(&io.load(&self.key.key(), &chunk)?);
        let mut edits = ChunkEdits::loaded(buf.len());
        overlay.apply(&mut buf);
        for r in overlay.ranges() {
            edits.wrote(r);
        }
        self.edits.insert(i, edits);
        self.dirty.insert(i, buf);
        Ok(())
    }

    /// Whether a write of `n` bytes into chunk `i` (not covering its old
    /// bytes) goes to an overlay rather than a loaded chunk: a stored
    /// chunk not loaded or sealing, with room for a patch.
    fn overlay_takes(&self, i: u64, n: usize, cs: u64) -> bool {
        !self.dirty.contains_key(&i)
            && !self.pending.contains_key(&i)
            && self.chunks.contains(i)
            && Overlay::fits(self.overlays.get(&i), n, self.chunks.patches(i).len(), cs)
    }

    /// Write `data` at `offset`, extending the file as needed.
    pub fn write(&mut self, io: &ChunkIo, offset: u64, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if self.store_failed {
            self.flush(io, false)?;
        }
        let cs = io.chunk_size;
        let end = offset + data.len() as u64;
        if end > MAX_FILE_SIZE {
            return Err(BucketError::FileTooLarge);
        }
        let old_size = self.size;
        if end > self.size {
            self.size = end;
        }
        let mut pos = offset;
        while pos < end {
            let i = pos / cs;
            let chunk_start = i * cs;
            let in_chunk = (pos - chunk_start) as usize;
            let n = ((chunk_start + cs).min(end) - pos) as usize;
            // Nothing old to keep if the write covers the chunk's old bytes.
            let old_len_in_chunk = old_size.saturating_sub(chunk_start).min(cs) as usize;
            let overwrite_all = in_chunk == 0 && n >= old_len_in_chunk;
            let src = &data[(pos - offset) as usize..(pos - offset) as usize + n];
            if !overwrite_all && self.overlay_takes(i, n, cs) {
                self.overlays.entry(i).or_default().write(in_chunk, src);
                pos += n as u64;
                continue;
            }
            let was_data = self.is_data(i);
            let buf = self.dirty_chunk(io, i, overwrite_all)?;
            if buf.len() < in_chunk {
                buf.resize(in_chunk, 0);
            }
            // Overwrite what overlaps, append the rest (no zero-fill of new bytes).
            let overlap = buf.len().min(in_chunk + n) - in_chunk;
            buf[in_chunk..in_chunk + overlap].copy_from_slice(&src[..overlap]);
            buf.extend_from_slice(&src[overlap..]);
            if let Some(edits) = self.edits.get_mut(&i) {
                edits.wrote(in_chunk..in_chunk + n);
            }
            pos += n as u64;
            if !was_data {
                self.data_chunks += 1;
            }
            if in_chunk + n == cs as usize {
                // A writer that reached the end of a chunk is moving on: seal it now.
                self.submit(io, i)?;
            }
        }
        Ok(())
    }

    /// Change the size: shrinking drops and trims chunks, growing adds a hole.
    pub fn truncate(&mut self, io: &ChunkIo, new_size: u64) -> Result<()> {
        if new_size > MAX_FILE_SIZE {
            return Err(BucketError::FileTooLarge);
        }
        self.wait_all_pending(io)?;
        let cs = io.chunk_size;
        if new_size < self.size {
            let count = chunk_count(new_size, cs);
            self.data_chunks -= self.data_chunks_from(count as u64);
            self.chunks.truncate(count as u64);
            self.dirty.retain(|i, _| (*i as usize) < count);
            self.edits.retain(|i, _| (*i as usize) < count);
            self.overlays.retain(|i, _| (*i as usize) < count);
            let tail = (new_size % cs) as usize;
            let i = new_size / cs;
            // A hole needs no trimming (and must stay a hole).
            if tail != 0 && self.is_data(i) {
                let buf = self.dirty_chunk(io, i, false)?;
                buf.truncate(tail);
                if let Some(edits) = self.edits.get_mut(&i) {
                    edits.truncated(tail);
                }
            }
        }
        self.size = new_size;
        Ok(())
    }

    /// Take the dirty chunks to seal. With `full_only`, keep partial chunks
    /// buffered (an appending writer will fill them). A chunk whose changes
    /// are small, over stored content, is taken as a patch; one that did
    /// not change after all is dropped.
    pub fn take_dirty(&mut self, io: &ChunkIo, full_only: bool) -> Result<Vec<DirtyChunk>> {
        self.wait_all_pending(io)?;
        let cs = io.chunk_size;
        let take: Vec<u64> = self
            .dirty
            .iter()
            .filter(|(_, b)| !full_only || b.len() as u64 == cs)
            .map(|(i, _)| *i)
            .collect();
        let mut out = Vec::with_capacity(take.len());
        for index in take {
            let buf = self.dirty.remove(&index).expect("listed as dirty");
            let edits = self.edits.remove(&index);
            if edits.as_ref().is_some_and(|e| e.unchanged(buf.len())) {
                continue;
            }
            let patches = self.chunks.patches(index).len();
            let edits = edits.filter(|e| e.worth_a_patch(patches, cs));
            out.push(DirtyChunk {
                index,
                buf,
                edits,
                overlay: None,
            });
        }
        // Overlays are small by construction: always taken.
        for (index, overlay) in std::mem::take(&mut self.overlays) {
            out.push(DirtyChunk {
                index,
                buf: Vec::new(),
                edits: None,
                overlay: Some(overlay),
            });
        }
        Ok(out)
    }

    /// Record sealed chunks; a failed one goes back to the dirty set so no
    /// acknowledged byte is lost.
    pub fn apply_sealed(&mut self, io: &ChunkIo, results: Vec<SealedChunk>) -> Result<()> {
        let mut first_err = None;
        for (chunk, r) in results {
            let DirtyChunk {
                index,
                buf,
                edits,
                overlay,
            } = chunk;
            if let Some(overlay) = overlay {
                match r {
                    Ok(h) => self.chunks.add_patch(index, h),
                    Err(e) => {
                        self.overlays.insert(index, overlay);
                        first_err.get_or_insert(e);
                    }
                }
                continue;
            }
            match (r, edits) {
                (Ok(h), Some(_)) => {
                    self.chunks.add_patch(index, h);
                    if let Some(patched) = self.chunks.get_ref(index) {
                        io.cache_patched(&patched, buf);
                    }
                }
                (Ok(h), None) => {
                    self.chunks.set(index, h);
                    crate::bucket::buffers::give(buf);
                }
                (Err(e), edits) => {
                    self.dirty.insert(index, buf);
                    if let Some(edits) = edits {
                        self.edits.insert(index, edits);
                    }
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => {
                self.store_failed = true;
                Err(e)
            }
            None => {
                if !self.is_dirty() {
                    self.store_failed = false;
                }
                Ok(())
            }
        }
    }

    /// Seal and store this file's dirty chunks, several at once.
    pub fn flush(&mut self, io: &ChunkIo, full_only: bool) -> Result<()> {
        let dirty = self.take_dirty(io, full_only)?;
        if dirty.is_empty() {
            return Ok(());
        }
        let key = self.key.key();
        let results = par_map(dirty, |mut chunk| {
            let r = seal_dirty(&io.store, &key, &mut chunk);
            (chunk, r)
        });
        self.apply_sealed(io, results)
    }
}

/// A chunk sealed whole in the background, as its outcome names it.
fn whole(index: u64, buf: Vec<u8>) -> DirtyChunk {
    DirtyChunk {
        index,
        buf,
        edits: None,
        overlay: None,
    }
}
