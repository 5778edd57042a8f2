//! Chunked file content: reading and writing byte ranges of a file whose
//! content is a list of fixed-size encrypted chunks.
//!
//! Only the chunks a request touches are loaded. Writes go to in-memory dirty
//! chunk buffers that are sealed and stored when the mount flushes (on save,
//! or when a file's dirty bytes pass a bound), so a 4 KiB write rewrites one
//! chunk and memory stays bounded however large the file is. Several chunks
//! are sealed or opened in parallel on all cores.

use std::collections::{BTreeMap, HashMap};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock};

use super::chunk_map::ChunkMap;
use super::error::{BucketError, Result};
use super::tree::{FileNode, KeyBytes};
use crate::cache::BoundedMap;
use crate::crypto::{FrameLayout, SecretKey, FRAME_LEN};
use crate::store::{slices, BlobStore, Hash};

// Frames must be the store's verified slices, so a frame read hashes one slice.
const _: () = assert!(FRAME_LEN == slices::SLICE_LEN);

/// Default chunk size: 1 MiB.
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
/// How many decrypted chunks the read cache keeps.
const CACHE_CHUNKS: usize = 32;

/// Shared access to the blob store with a small cache of decrypted chunks
/// and a read-ahead that loads the next chunks of a sequential reader on
/// background threads.
#[derive(Clone)]
pub struct ChunkIo {
    pub store: Arc<BlobStore>,
    pub chunk_size: u64,
    shared: Arc<Shared>,
    remote: Option<Arc<dyn RemoteBlobs>>,
}

type Loaded = std::result::Result<Arc<Vec<u8>>, String>;

struct Shared {
    cache: Mutex<ChunkCache>,
    /// Chunks being loaded by read-ahead; a reader that needs one waits for it.
    inflight: Mutex<HashMap<Hash, Arc<OnceLock<Loaded>>>>,
}

impl Shared {
    fn cache(&self) -> MutexGuard<'_, ChunkCache> {
        self.cache.lock().expect("chunk cache lock")
    }

    fn inflight(&self) -> MutexGuard<'_, HashMap<Hash, Arc<OnceLock<Loaded>>>> {
        self.inflight.lock().expect("inflight lock")
    }
}

type ChunkCache = BoundedMap<Hash, Arc<Vec<u8>>>;

/// Bytes read from a file: owned, or a range of a cached decrypted chunk.
pub enum ReadBuf {
    Owned(Vec<u8>),
    Shared(Arc<Vec<u8>>, std::ops::Range<usize>),
}

impl ReadBuf {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            ReadBuf::Owned(v) => v,
            ReadBuf::Shared(c, r) => &c[r.clone()],
        }
    }

    pub fn into_vec(self) -> Vec<u8> {
        match self {
            ReadBuf::Owned(v) => v,
            ReadBuf::Shared(c, r) => c[r].to_vec(),
        }
    }
}

fn undecryptable(hash: &Hash) -> BucketError {
    tracing::error!(chunk = %hash, "chunk failed authenticated decryption");
    BucketError::Integrity(format!("chunk {hash} does not decrypt"))
}

/// Decrypt a whole sealed chunk in place (its blob already verified).
/// Chunks written before framing (one AES-GCM object, no associated data)
/// still open, so no data from an earlier build is lost.
pub(crate) fn open_chunk(
    store: &BlobStore,
    key: &SecretKey,
    hash: &Hash,
    sealed: &mut Vec<u8>,
) -> Result<()> {
    if key.open_frames_in_place(sealed).is_ok() {
        return Ok(());
    }
    // A failed open leaves the buffer scrambled: start again from the store.
    *sealed = store.get(hash)?;
    key.open_in_place(sealed, b"")
        .map_err(|_| undecryptable(hash))
}

/// Fetches a blob the local store lacks from a peer: set on the mount of a
/// bucket whose chunks are still arriving (a volume just moved to this
/// node), so a read of a chunk not here yet waits for it instead of failing.
pub trait RemoteBlobs: Send + Sync {
    /// Put blob `hash` (verified) into the local store; an error when no
    /// peer that holds it answered.
    fn fetch(&self, hash: &Hash) -> std::result::Result<(), String>;
}

/// Where chunk blobs come from: the local store, then the peers.
#[derive(Clone)]
struct Source {
    store: Arc<BlobStore>,
    remote: Option<Arc<dyn RemoteBlobs>>,
}

impl Source {
    /// Run `f` on the store; when the blob is not here, fetch it and again.
    fn with_fetch<T>(
        &self,
        hash: &Hash,
        f: impl Fn(&BlobStore) -> std::result::Result<T, crate::store::StoreError>,
    ) -> Result<T> {
        match f(&self.store) {
            Err(crate::store::StoreError::NotFound(_)) if self.remote.is_some() => {
                let remote = self.remote.as_ref().expect("checked");
                remote.fetch(hash).map_err(|why| {
                    BucketError::Unavailable(format!("chunk {hash} is not on this node yet: {why}"))
                })?;
                Ok(f(&self.store)?)
            }
            other => Ok(other?),
        }
    }

    fn get(&self, hash: &Hash) -> Result<Vec<u8>> {
        self.with_fetch(hash, |s| s.get(hash))
    }

    fn reader(&self, hash: &Hash) -> Result<crate::store::BlobReader> {
        self.with_fetch(hash, |s| s.reader(hash))
    }
}

/// Load, verify and decrypt one chunk (in place), without the cache.
fn load_uncached(src: &Source, key: &SecretKey, hash: &Hash) -> Result<Vec<u8>> {
    let store = &*src.store;
    let mut buf = src.get(hash)?;
    open_chunk(store, key, hash, &mut buf)?;
    Ok(buf)
}

/// Plaintext bytes `range` of one chunk (clamped to its length), reading,
/// verifying and decrypting only the 16 KiB frames they lie in.
fn load_range(
    src: &Source,
    key: &SecretKey,
    hash: &Hash,
    range: std::ops::Range<usize>,
) -> Result<Vec<u8>> {
    let blob = src.reader(hash)?;
    let whole = || -> Result<Vec<u8>> {
        // Not a framed chunk (or not ours): open it whole, which also
        // reads chunks sealed before framing, or reports the failure.
        let plain = load_uncached(src, key, hash)?;
        Ok(plain[range.start.min(plain.len())..range.end.min(plain.len())].to_vec())
    };
    let Some(shift_at) = FrameLayout::shift_at(blob.len()) else {
        return whole();
    };
    let shift = blob.read(shift_at..shift_at + 1)?;
    let Some(layout) = FrameLayout::for_sealed(blob.len(), shift[0]) else {
        return whole();
    };
    let want = range.start.min(layout.plain_len)..range.end.min(layout.plain_len);
    let frames: Vec<usize> = layout.frames_for(&want).collect();
    let (Some(&first), Some(&last)) = (frames.first(), frames.last()) else {
        return Ok(Vec::new());
    };
    let body_start = layout.frame(first).start;
    let mut body = blob.read(body_start..layout.frame(last).end)?;
    let trailer = blob.read(layout.trailer())?;
    if key
        .open_frames(&layout, &frames, &mut body, &trailer)
        .is_err()
    {
        return whole();
    }
    Ok(body[want.start - body_start..want.end - body_start].to_vec())
}

impl ChunkIo {
    pub fn new(store: Arc<BlobStore>, chunk_size: u32) -> Self {
        Self {
            store,
            chunk_size: chunk_size as u64,
            shared: Arc::new(Shared {
                cache: Mutex::new(ChunkCache::new(CACHE_CHUNKS)),
                inflight: Mutex::new(HashMap::new()),
            }),
            remote: None,
        }
    }

    /// Fetch chunks this node lacks from `remote` (see [`RemoteBlobs`]).
    pub fn set_remote(&mut self, remote: Arc<dyn RemoteBlobs>) {
        self.remote = Some(remote);
    }

    fn source(&self) -> Source {
        Source {
            store: self.store.clone(),
            remote: self.remote.clone(),
        }
    }

    /// Change how many decrypted chunks are cached (0 turns the cache off).
    pub fn set_cache_capacity(&self, chunks: usize) {
        self.shared.cache().reset(chunks);
    }

    /// Load, verify and decrypt one chunk (cached).
    fn load(&self, key: &SecretKey, hash: &Hash) -> Result<Arc<Vec<u8>>> {
        if let Some(hit) = self.shared.cache().get(hash) {
            return Ok(hit);
        }
        let pending = self.shared.inflight().get(hash).cloned();
        if let Some(cell) = pending {
            return cell.wait().clone().map_err(BucketError::Integrity);
        }
        let plain = Arc::new(load_uncached(&self.source(), key, hash)?);
        self.shared.cache().insert(*hash, plain.clone());
        Ok(plain)
    }

    /// Whether decrypted chunks are cached at all.
    fn caching(&self) -> bool {
        self.shared.cache().capacity() > 0
    }

    /// Whether a chunk is in the cache or being loaded into it.
    fn cached_or_loading(&self, hash: &Hash) -> bool {
        self.shared.cache().contains(hash) || self.shared.inflight().contains_key(hash)
    }

    /// Start loading a chunk in the background unless it is cached or on its way.
    fn prefetch(&self, key: &SecretKey, hash: Hash) {
        if !self.caching() || self.shared.cache().contains(&hash) {
            return;
        }
        let cell = {
            let mut inflight = self.shared.inflight();
            if inflight.contains_key(&hash) {
                return;
            }
            let cell = Arc::new(OnceLock::new());
            inflight.insert(hash, cell.clone());
            cell
        };
        let (src, shared, key) = (self.source(), self.shared.clone(), key.clone());
        let job: Job = Box::new(move || {
            let loaded = load_uncached(&src, &key, &hash).map(Arc::new);
            if let Ok(data) = &loaded {
                shared.cache().insert(hash, data.clone());
            }
            let _ = cell.set(loaded.map_err(|e| e.to_string()));
            shared.inflight().remove(&hash);
        });
        if worker_pool()
            .lock()
            .expect("worker queue lock")
            .send(job)
            .is_err()
        {
            // No workers: the reader loads the chunk itself when it gets there.
            self.shared.inflight().remove(&hash);
        }
    }

    fn seal_store(&self, key: &SecretKey, buf: &mut Vec<u8>) -> Result<Hash> {
        seal_store(&self.store, key, buf)
    }

    /// A buffer for one chunk with room to be sealed in place.
    fn chunk_buffer(&self) -> Vec<u8> {
        super::buffers::take(FrameLayout::for_plain(self.chunk_size as usize).sealed_len())
    }
}

/// Seal one chunk in place (framed, see `crypto::frames`) and store it with
/// its outboard; returns its address. On a store failure the buffer is
/// decrypted back, so the caller keeps its bytes.
fn seal_store(store: &BlobStore, key: &SecretKey, buf: &mut Vec<u8>) -> Result<Hash> {
    key.seal_frames_in_place(buf)?;
    let (hash, outboard) = slices::hash_with_outboard(buf);
    if let Err(e) = store.put_with_outboard(hash, buf, &outboard) {
        key.open_frames_in_place(buf)?;
        return Err(e.into());
    }
    Ok(hash)
}

/// A chunk's sealing outcome: its buffer (plaintext again on failure) and address.
type Sealed = (Vec<u8>, Result<Hash>);
/// A sealing outcome for chunk index `.0` of a file.
pub type SealedChunk = (u64, Vec<u8>, Result<Hash>);
type Job = Box<dyn FnOnce() + Send>;

/// Worker threads (one per core) that seal full chunks while the writer goes
/// on filling the next ones, and load chunks ahead of a sequential reader, so
/// streaming I/O keeps every core busy. Long-lived, so their allocator arenas
/// stay warm.
fn worker_pool() -> &'static Mutex<mpsc::Sender<Job>> {
    static POOL: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..cores() {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("jax-chunk-{n}"))
                .spawn(move || loop {
                    let job = match rx.lock().expect("worker queue lock").recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    };
                    job();
                })
                .expect("spawning a seal worker");
        }
        Mutex::new(tx)
    })
}

/// Chunks of one file a writer lets seal in the background before it waits
/// (outside the Mount: see [`SealsInFlight::when_room`]).
const MAX_PENDING_SEALS: usize = 8;
/// Seals of one file (running or done, not yet recorded) past which a write
/// waits inside the Mount: the bound on memory for callers that never wait
/// outside it, and for many writers of one file at once.
const MAX_UNRECORDED_SEALS: usize = 2 * MAX_PENDING_SEALS;

/// How many of one file's chunks the workers are sealing now, so a writer
/// can wait for room after it let go of the Mount, instead of holding
/// every other reader and writer of the volume while a seal runs.
#[derive(Default)]
pub struct SealsInFlight {
    state: Mutex<InFlight>,
}

#[derive(Default)]
struct InFlight {
    running: usize,
    /// What runs once there is room again (a FUSE write's reply).
    waiting: Vec<Box<dyn FnOnce() + Send>>,
}

impl SealsInFlight {
    fn lock(&self) -> MutexGuard<'_, InFlight> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn started(&self) {
        self.lock().running += 1;
    }

    fn finished(&self) {
        let ready = {
            let mut s = self.lock();
            s.running = s.running.saturating_sub(1);
            if s.running < MAX_PENDING_SEALS {
                std::mem::take(&mut s.waiting)
            } else {
                Vec::new()
            }
        };
        ready.into_iter().for_each(|then| then());
    }

    /// Run `then` once fewer than [`MAX_PENDING_SEALS`] seals run: now, or
    /// on the worker whose seal makes room. The caller's thread never
    /// waits, so a FUSE worker is free for other requests meanwhile.
    pub fn when_room(&self, then: Box<dyn FnOnce() + Send>) {
        {
            let mut s = self.lock();
            if s.running >= MAX_PENDING_SEALS {
                s.waiting.push(then);
                return;
            }
        }
        then()
    }
}

/// Chunks a sequential reader loads ahead of where it reads.
const READ_AHEAD_CHUNKS: u64 = 8;

/// Threads that seal and open chunks: the cores this process may use, or
/// `JAX_WORKER_THREADS` when set (to cap a node's CPU, or to measure one
/// core). Asked once: `available_parallelism` reads cgroup files under /proc
/// on every call, far too slow for a per-read path.
fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| {
        std::env::var("JAX_WORKER_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            })
    })
}

/// Run `f` over `items` on up to all cores, keeping the order of results.
pub(crate) fn par_map<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let threads = cores().min(items.len());
    if threads <= 1 {
        return items.into_iter().map(f).collect();
    }
    let mut groups: Vec<Vec<(usize, T)>> = (0..threads).map(|_| Vec::new()).collect();
    let n = items.len();
    for (i, item) in items.into_iter().enumerate() {
        groups[i % threads].push((i, item));
    }
    let f = &f;
    let mut results: Vec<Option<R>> = (0..n).map(|_| None).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = groups
            .into_iter()
            .map(|g| s.spawn(move || g.into_iter().map(|(i, t)| (i, f(t))).collect::<Vec<_>>()))
            .collect();
        for h in handles {
            for (i, r) in h.join().expect("chunk worker panicked") {
                results[i] = Some(r);
            }
        }
    });
    results
        .into_iter()
        .map(|r| r.expect("every index filled"))
        .collect()
}

/// Largest file size: the quota bounds what is stored, this bounds what a
/// sparse file may claim (8 PiB; larger truncates and writes give EFBIG).
pub const MAX_FILE_SIZE: u64 = 1 << 53;

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
    dirty: BTreeMap<u64, Vec<u8>>,
    /// Full chunks being sealed in the background, by index.
    pending: BTreeMap<u64, mpsc::Receiver<Sealed>>,
    /// How many of `pending` still run.
    seals: Arc<SealsInFlight>,
    /// Where the last read ended, to recognise a sequential reader.
    last_read_end: u64,
    /// Reads in a row that continued near where the one before ended.
    streak: u8,
    /// The chunk the last small read was in: a second small read of the
    /// same chunk loads (and caches) all of it instead of its frames.
    last_partial_chunk: Option<u64>,
    /// A chunk failed to be stored (a full disk): until a flush succeeds,
    /// writes try one first and fail as it does, so the writer keeps
    /// seeing the error and memory does not fill with unstorable chunks.
    store_failed: bool,
}

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
        wanted: Vec<(u64, Hash)>,
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
            other => other.assemble(io, &BTreeMap::new()),
        }
    }

    /// The bytes of a `Chunks` plan, with `dirty` buffers taking the place
    /// of stored chunks.
    fn assemble(self, io: &ChunkIo, dirty: &BTreeMap<u64, Vec<u8>>) -> Result<ReadBuf> {
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
        if first == last && !dirty.contains_key(&first) {
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
            out.extend_from_slice(&data[have_from..have_to]);
            out.resize(out.len() + (to - from) as usize - (have_to - have_from), 0);
        }
        Ok(ReadBuf::Owned(out))
    }
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
        Ok(Self {
            size: 0,
            key: KeyBytes::generate()?,
            chunks: ChunkMap::default(),
            data_chunks: 0,
            dirty: BTreeMap::new(),
            pending: BTreeMap::new(),
            seals: Arc::default(),
            last_read_end: 0,
            streak: 0,
            last_partial_chunk: None,
            store_failed: false,
        })
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
        debug_assert!(
            self.dirty.is_empty() && self.pending.is_empty(),
            "flush before persisting"
        );
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
        self.dirty.values().map(|b| b.len() as u64).sum()
    }

    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty() || !self.pending.is_empty()
    }

    /// Hand full chunk `i` to the seal workers.
    fn submit(&mut self, io: &ChunkIo, i: u64) -> Result<()> {
        self.record_finished_seals()?;
        while self.pending.len() >= MAX_UNRECORDED_SEALS {
            let oldest = *self.pending.keys().next().expect("non-empty");
            self.wait_pending(oldest)?;
        }
        let Some(mut buf) = self.dirty.remove(&i) else {
            return Ok(());
        };
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
    fn record_finished_seals(&mut self) -> Result<()> {
        let mut done = Vec::new();
        self.pending.retain(|&i, rx| match rx.try_recv() {
            Ok((buf, r)) => {
                done.push((i, buf, r));
                false
            }
            Err(_) => true,
        });
        if done.is_empty() {
            return Ok(());
        }
        self.apply_sealed(done)
    }

    /// Wait for chunk `i`'s background seal, if any, and record its outcome.
    fn wait_pending(&mut self, i: u64) -> Result<()> {
        let Some(rx) = self.pending.remove(&i) else {
            return Ok(());
        };
        let (buf, r) = rx
            .recv()
            .map_err(|_| BucketError::InvalidArgument("seal worker died".into()))?;
        self.apply_sealed(vec![(i, buf, r)])
    }

    /// Wait for every background seal of this file.
    fn wait_all_pending(&mut self) -> Result<()> {
        let mut first_err = None;
        while let Some(&i) = self.pending.keys().next() {
            if let Err(e) = self.wait_pending(i) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

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
            self.wait_pending(i)?;
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
                if let Some(h) = self.chunks.get(i) {
                    if !self.dirty.contains_key(&i) {
                        io.prefetch(&key, h);
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
        {
            if let Some(h) = self.chunks.get(first) {
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
        let wanted: Vec<(u64, Hash)> = (first..=last)
            .filter(|i| !self.dirty.contains_key(i))
            .filter_map(|i| self.chunks.get(i).map(|h| (i, h)))
            .collect();
        let plan = ReadPlan::Chunks {
            key,
            offset,
            end,
            wanted,
        };
        if (first..=last).any(|i| self.dirty.contains_key(&i)) {
            // Unsaved bytes are read under the caller's lock, as they are.
            return Ok(ReadPlan::Ready(plan.assemble(io, &self.dirty)?));
        }
        Ok(plan)
    }

    /// A mutable buffer for chunk `i`, loading its stored bytes unless `overwrite_all`.
    fn dirty_chunk(&mut self, io: &ChunkIo, i: u64, overwrite_all: bool) -> Result<&mut Vec<u8>> {
        self.wait_pending(i)?;
        if !self.dirty.contains_key(&i) {
            let mut buf = io.chunk_buffer();
            match self.chunks.get(i) {
                Some(h) if !overwrite_all => buf.extend_from_slice(&io.load(&self.key.key(), &h)?),
                _ => {}
            }
            self.dirty.insert(i, buf);
        }
        Ok(self.dirty.get_mut(&i).expect("just inserted"))
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
            let was_data = self.is_data(i);
            let buf = self.dirty_chunk(io, i, overwrite_all)?;
            let src = &data[(pos - offset) as usize..(pos - offset) as usize + n];
            if buf.len() < in_chunk {
                buf.resize(in_chunk, 0);
            }
            // Overwrite what overlaps, append the rest (no zero-fill of new bytes).
            let overlap = buf.len().min(in_chunk + n) - in_chunk;
            buf[in_chunk..in_chunk + overlap].copy_from_slice(&src[..overlap]);
            buf.extend_from_slice(&src[overlap..]);
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
        self.wait_all_pending()?;
        let cs = io.chunk_size;
        if new_size < self.size {
            let count = chunk_count(new_size, cs);
            self.data_chunks -= self.data_chunks_from(count as u64);
            self.chunks.truncate(count as u64);
            self.dirty.retain(|i, _| (*i as usize) < count);
            let tail = (new_size % cs) as usize;
            let i = new_size / cs;
            // A hole needs no trimming (and must stay a hole).
            if tail != 0 && self.is_data(i) {
                let buf = self.dirty_chunk(io, i, false)?;
                buf.truncate(tail);
            }
        }
        self.size = new_size;
        Ok(())
    }

    /// Take the dirty chunks to seal. With `full_only`, keep partial chunks
    /// buffered (an appending writer will fill them).
    pub fn take_dirty(&mut self, cs: u64, full_only: bool) -> Result<Vec<(u64, Vec<u8>)>> {
        self.wait_all_pending()?;
        let take: Vec<u64> = self
            .dirty
            .iter()
            .filter(|(_, b)| !full_only || b.len() as u64 == cs)
            .map(|(i, _)| *i)
            .collect();
        Ok(take
            .into_iter()
            .map(|i| (i, self.dirty.remove(&i).expect("listed as dirty")))
            .collect())
    }

    /// Record sealed chunks; a failed one goes back to the dirty set so no
    /// acknowledged byte is lost.
    pub fn apply_sealed(&mut self, results: Vec<SealedChunk>) -> Result<()> {
        let mut first_err = None;
        for (i, buf, r) in results {
            match r {
                Ok(h) => {
                    self.chunks.set(i, h);
                    super::buffers::give(buf);
                }
                Err(e) => {
                    self.dirty.insert(i, buf);
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
                if self.dirty.is_empty() && self.pending.is_empty() {
                    self.store_failed = false;
                }
                Ok(())
            }
        }
    }

    /// Seal and store this file's dirty chunks, several at once.
    pub fn flush(&mut self, io: &ChunkIo, full_only: bool) -> Result<()> {
        let bufs = self.take_dirty(io.chunk_size, full_only)?;
        if bufs.is_empty() {
            return Ok(());
        }
        let key = self.key.key();
        let results = par_map(bufs, |(i, mut buf)| {
            let r = io.seal_store(&key, &mut buf);
            (i, buf, r)
        });
        self.apply_sealed(results)
    }
}

impl ChunkIo {
    /// Seal many files' chunks at once: `(file, chunk index, key, bytes)`.
    pub fn seal_many<F: Send>(
        &self,
        jobs: Vec<(F, u64, SecretKey, Vec<u8>)>,
    ) -> Vec<(F, u64, Vec<u8>, Result<Hash>)> {
        par_map(jobs, |(f, i, key, mut buf)| {
            let r = self.seal_store(&key, &mut buf);
            (f, i, buf, r)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
