//! Chunked file content: reading and writing byte ranges of a file whose
//! content is a list of fixed-size encrypted chunks.
//!
//! Only the chunks a request touches are loaded. Writes go to in-memory dirty
//! chunk buffers that are sealed and stored when the mount flushes (on save,
//! or when a file's dirty bytes pass a bound), so a 4 KiB write rewrites one
//! chunk and memory stays bounded however large the file is. Several chunks
//! are sealed or opened in parallel on all cores.
//!
//! `io` reads and seals one chunk through the store (the cache of
//! decrypted chunks, read-ahead, fetching from peers); `workers` holds the
//! threads that do so in parallel; `file` is a file's content in a live
//! mount and its writes; `read` plans and runs a read of it.

mod file;
mod io;
mod patch;
mod read;
mod workers;

pub use file::{allocated, FileData};
pub(crate) use io::open_chunk;
pub use io::{ChunkIo, ReadBuf, RemoteBlobs};
pub(crate) use patch::apply_patch;
pub use patch::{ChunkEdits, Overlay};
pub use read::ReadPlan;
pub use workers::{SealedChunk, SealsInFlight};

use crate::crypto::FRAME_LEN;
use crate::store::slices;

// Frames must be the store's verified slices, so a frame read hashes one slice.
const _: () = assert!(FRAME_LEN == slices::SLICE_LEN);

/// A dirty chunk taken to be sealed: as a patch of `edits` over its stored
/// content when it has them, as an overlay patch when it has an `overlay`
/// (and no `buf`: it was never loaded), else whole.
pub struct DirtyChunk {
    pub index: u64,
    /// The chunk's plaintext as it is now (empty with an overlay).
    pub buf: Vec<u8>,
    pub edits: Option<ChunkEdits>,
    pub overlay: Option<Overlay>,
}

/// Default chunk size: 1 MiB.
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;

/// Largest file size: the quota bounds what is stored, this bounds what a
/// sparse file may claim (8 PiB; larger truncates and writes give EFBIG).
pub const MAX_FILE_SIZE: u64 = 1 << 53;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::workers::MAX_PENDING_SEALS;
    use super::*;
    use crate::bucket::chunk_map::ChunkMap;
    use crate::store::BlobStore;

    fn io(dir: &std::path::Path, cs: u32) -> ChunkIo {
        ChunkIo::new(Arc::new(BlobStore::open(dir).unwrap()), cs)
    }

    /// A chunk sealed before framing (one AES-GCM object) still reads, whole
    /// or in part, and a chunk sealed under another key does not.
    #[test]
    fn chunks_sealed_before_framing_still_open() {
        let d = tempfile::tempdir().unwrap();
        let io = io(d.path(), 1 << 20);
        let plain: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let mut f = FileData::empty().unwrap();
        let legacy = f.key.key().seal(&plain).unwrap();
        let h = io.store.put(&legacy).unwrap();
        f.size = plain.len() as u64;
        f.chunks = ChunkMap::from_dense(vec![Some(h)]);
        // A small read far from the last one takes the frame path first.
        let got = f.read_buf(&io, 200_000, 4096).unwrap().into_vec();
        assert_eq!(got, plain[200_000..204_096]);
        assert_eq!(f.read_buf(&io, 0, 300_000).unwrap().into_vec(), plain);
        let mut other = FileData::empty().unwrap();
        other.size = f.size;
        other.chunks = f.chunks.clone();
        // A second store sees only blobs made durable.
        io.store.sync().unwrap();
        let fresh = self::io(d.path(), 1 << 20);
        match other.read_buf(&fresh, 200_000, 4096) {
            Err(e) => assert!(e.is_integrity(), "{e}"),
            Ok(_) => panic!("a chunk under another file's key must not open"),
        }
    }

    #[test]
    fn write_read_across_chunks_and_holes() {
        let d = tempfile::tempdir().unwrap();
        let io = io(d.path(), 16);
        let mut f = FileData::empty().unwrap();
        f.write(&io, 10, b"abcdefghijklmnopqrstuvwxyz").unwrap();
        assert_eq!(f.size, 36);
        f.flush(&io, false).unwrap();
        let mut expected = vec![0u8; 10];
        expected.extend_from_slice(b"abcdefghijklmnopqrstuvwxyz");
        assert_eq!(f.read_buf(&io, 0, 100).unwrap().into_vec(), expected);
        f.truncate(&io, 100).unwrap();
        expected.resize(100, 0);
        assert_eq!(f.read_buf(&io, 0, 1000).unwrap().into_vec(), expected);
        f.truncate(&io, 12).unwrap();
        f.truncate(&io, 40).unwrap();
        expected.truncate(12);
        expected.resize(40, 0);
        assert_eq!(f.read_buf(&io, 0, 1000).unwrap().into_vec(), expected);
        f.flush(&io, false).unwrap();
        assert_eq!(
            f.read_buf(&io, 5, 20).unwrap().into_vec(),
            expected[5..25].to_vec()
        );
    }

    /// A small change to a stored chunk is sealed as a patch, not the whole
    /// chunk again; a reader with no cache sees every byte, through many
    /// patches and cuts; past the patch limit the chunk is sealed whole.
    #[test]
    fn small_changes_are_patches_and_read_back() {
        let cs: u64 = 64 << 10;
        let d = tempfile::tempdir().unwrap();
        let writer = io(d.path(), cs as u32);
        let mut f = FileData::empty().unwrap();
        let mut model: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        f.write(&writer, 0, &model).unwrap();
        f.flush(&writer, false).unwrap();
        assert_eq!(f.chunks.patch_blobs().count(), 0);
        writer.store.sync().unwrap();
        let stored_before = writer.store.list().unwrap().len();
        // Appends and overwrites of a few bytes each become one patch per flush.
        for round in 0..10u32 {
            let line = format!("line {round}\n").into_bytes();
            let at = model.len() as u64;
            f.write(&writer, at, &line).unwrap();
            model.extend_from_slice(&line);
            f.write(&writer, 70_000 + round as u64, b"X").unwrap();
            model[70_000 + round as usize] = b'X';
            f.flush(&writer, false).unwrap();
        }
        assert_eq!(f.chunks.patches(1).len(), 10, "one patch per flush");
        writer.store.sync().unwrap();
        assert_eq!(writer.store.list().unwrap().len(), stored_before + 10);
        // A cut inside the patched chunk, then growth past it by a write.
        f.truncate(&writer, 90_000).unwrap();
        model.truncate(90_000);
        f.write(&writer, 95_000, b"after a hole").unwrap();
        model.resize(95_000, 0);
        model.extend_from_slice(b"after a hole");
        f.flush(&writer, false).unwrap();
        writer.store.sync().unwrap();
        let fresh = io(d.path(), cs as u32);
        fresh.set_cache_capacity(0);
        let mut reader = FileData::from_node(&f.to_node(), cs).unwrap();
        assert_eq!(
            reader.read_buf(&fresh, 0, 200_000).unwrap().into_vec(),
            model
        );
        assert_eq!(
            reader.read_buf(&fresh, 80_000, 100).unwrap().into_vec(),
            model[80_000..80_100]
        );
        // Past the limit, the chunk is sealed whole and its patches go.
        for round in 0..8u32 {
            f.write(&writer, 71_000 + round as u64, b"Y").unwrap();
            model[71_000 + round as usize] = b'Y';
            f.flush(&writer, false).unwrap();
        }
        assert!(
            f.chunks.patches(1).len() < 8,
            "{}",
            f.chunks.patches(1).len()
        );
        // A large change is sealed whole at once.
        f.write(&writer, 65_536, &vec![3u8; 20_000]).unwrap();
        model[65_536..85_536].fill(3);
        f.flush(&writer, false).unwrap();
        assert!(f.chunks.patches(1).is_empty());
        writer.store.sync().unwrap();
        let mut reader = FileData::from_node(&f.to_node(), cs).unwrap();
        assert_eq!(
            reader.read_buf(&fresh, 0, 200_000).unwrap().into_vec(),
            model
        );
    }

    /// A small write into a stored chunk loads nothing: it is kept as an
    /// overlay, read back through it, and sealed as a small patch.
    #[test]
    fn a_small_write_into_a_stored_chunk_loads_nothing() {
        let cs: u64 = 64 << 10;
        let d = tempfile::tempdir().unwrap();
        let io = io(d.path(), cs as u32);
        let mut f = FileData::empty().unwrap();
        let mut model: Vec<u8> = (0..200_000u32).map(|i| (i % 249) as u8).collect();
        f.write(&io, 0, &model).unwrap();
        f.flush(&io, false).unwrap();
        io.set_cache_capacity(0);
        f.write(&io, 70_000, &[9u8; 4096]).unwrap();
        model[70_000..74_096].fill(9);
        assert!(f.dirty.is_empty(), "no chunk was loaded");
        assert_eq!(f.overlays.len(), 1);
        assert_eq!(f.dirty_bytes(), 4096);
        assert_eq!(
            f.read_buf(&io, 69_000, 6_000).unwrap().into_vec(),
            model[69_000..75_000]
        );
        f.flush(&io, false).unwrap();
        assert!(!f.is_dirty());
        assert_eq!(f.chunks.patches(1).len(), 1);
        let mut reader = FileData::from_node(&f.to_node(), cs).unwrap();
        assert_eq!(reader.read_buf(&io, 0, 300_000).unwrap().into_vec(), model);
    }

    #[derive(Clone, Debug)]
    enum FileStep {
        Write(u64, Vec<u8>),
        Truncate(u64),
        Flush,
    }

    fn file_step() -> impl proptest::strategy::Strategy<Value = FileStep> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0u64..20_000, prop::collection::vec(any::<u8>(), 1..400))
                .prop_map(|(at, b)| FileStep::Write(at, b)),
            1 => (0u64..20_000).prop_map(FileStep::Truncate),
            2 => Just(FileStep::Flush),
        ]
    }

    proptest::proptest! {
        /// Whatever mix of writes (into overlays or loaded chunks),
        /// truncates and flushes a file sees, it reads as a plain byte
        /// vector given the same steps, and so does a fresh reader of what
        /// was stored, with no cache.
        #[test]
        fn a_file_reads_as_its_model(steps in proptest::collection::vec(file_step(), 1..40)) {
            let cs = 4096u32;
            let d = tempfile::tempdir().unwrap();
            let io = io(d.path(), cs);
            let mut f = FileData::empty().unwrap();
            let mut model: Vec<u8> = Vec::new();
            for step in steps {
                match step {
                    FileStep::Write(at, b) => {
                        f.write(&io, at, &b).unwrap();
                        let end = at as usize + b.len();
                        if model.len() < end {
                            model.resize(end, 0);
                        }
                        model[at as usize..end].copy_from_slice(&b);
                    }
                    FileStep::Truncate(n) => {
                        f.truncate(&io, n).unwrap();
                        model.resize(n as usize, 0);
                    }
                    FileStep::Flush => f.flush(&io, false).unwrap(),
                }
                proptest::prop_assert_eq!(f.size, model.len() as u64);
                proptest::prop_assert_eq!(&f.read_buf(&io, 0, 40_000).unwrap().into_vec(), &model);
            }
            f.flush(&io, false).unwrap();
            io.store.sync().unwrap();
            let fresh = self::io(d.path(), cs);
            fresh.set_cache_capacity(0);
            let mut reader = FileData::from_node(&f.to_node(), cs as u64).unwrap();
            proptest::prop_assert_eq!(&reader.read_buf(&fresh, 0, 40_000).unwrap().into_vec(), &model);
        }
    }

    /// A write's reply goes at once while seals have room, and otherwise
    /// waits for the seal that makes room, not for every seal.
    #[test]
    fn a_reply_waits_only_while_the_seals_are_full() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let seals = SealsInFlight::default();
        let replied = Arc::new(AtomicUsize::new(0));
        let reply = || {
            let r = replied.clone();
            Box::new(move || {
                r.fetch_add(1, Ordering::SeqCst);
            }) as Box<dyn FnOnce() + Send>
        };
        seals.started();
        seals.when_room(reply());
        assert_eq!(replied.load(Ordering::SeqCst), 1, "room: at once");
        (1..MAX_PENDING_SEALS).for_each(|_| seals.started());
        seals.when_room(reply());
        seals.when_room(reply());
        assert_eq!(replied.load(Ordering::SeqCst), 1, "full: both wait");
        seals.finished();
        assert_eq!(replied.load(Ordering::SeqCst), 3, "one seal done: room");
    }

    /// Read-ahead starts once reads form a stream, not whenever a random
    /// reader lands near its last read.
    #[test]
    fn read_ahead_waits_for_a_stream() {
        let cs: u64 = 64 << 10;
        let d = tempfile::tempdir().unwrap();
        let writer = io(d.path(), cs as u32);
        let mut f = FileData::empty().unwrap();
        f.write(&writer, 0, &vec![5u8; 20 * cs as usize]).unwrap();
        f.flush(&writer, false).unwrap();
        writer.store.sync().unwrap();
        let io = io(d.path(), cs as u32);
        let ahead = |f: &FileData, i: u64| io.cached_or_loading(&f.chunks.get(i).unwrap());
        // A random reader: a read far away, then one near it.
        f.read_buf(&io, 10 * cs + 100, 4096).unwrap();
        f.read_buf(&io, 10 * cs + 30_000, 4096).unwrap();
        assert!(!(11..20).any(|i| ahead(&f, i)), "random reads read ahead");
        // A stream: reads that each continue the last.
        for i in 0..3 {
            f.read_buf(&io, i * cs, cs).unwrap();
        }
        assert!((3..=10).all(|i| ahead(&f, i)), "a stream is not read ahead");
    }
}
