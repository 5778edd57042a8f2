//! One chunk through the store: `ChunkIo` (the blob store, a small cache of
//! decrypted chunks, read-ahead, peers to fetch missing chunks from), whole
//! and frame-wise opens, and sealing a chunk into the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use super::patch::{apply_patch, seal_overlay, seal_patch};
use super::workers::{par_map, worker_pool, Job};
use super::DirtyChunk;
use crate::bucket::chunk_map::ChunkRef;
use crate::bucket::error::{BucketError, Result};
use crate::cache::BoundedMap;
use crate::crypto::{FrameLayout, SecretKey};
use crate::store::{slices, BlobStore, Hash};

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
pub(super) struct Source {
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

/// Apply `chunk`'s patches, oldest first, over its decrypted base.
fn apply_patches(
    src: &Source,
    key: &SecretKey,
    chunk: &ChunkRef,
    plain: &mut Vec<u8>,
    chunk_size: u64,
) -> Result<()> {
    for p in &chunk.patches {
        let sealed = src.get(p)?;
        apply_patch(key, p, &sealed, plain, chunk_size)?;
    }
    Ok(())
}

/// A whole chunk, patches applied, without the cache.
fn load_chunk_uncached(
    src: &Source,
    key: &SecretKey,
    chunk: &ChunkRef,
    chunk_size: u64,
) -> Result<Vec<u8>> {
    let mut plain = load_uncached(src, key, &chunk.base)?;
    apply_patches(src, key, chunk, &mut plain, chunk_size)?;
    Ok(plain)
}

/// Plaintext bytes `range` of one chunk (clamped to its length), reading,
/// verifying and decrypting only the 16 KiB frames they lie in.
pub(super) fn load_range(
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

    pub(super) fn source(&self) -> Source {
        Source {
            store: self.store.clone(),
            remote: self.remote.clone(),
        }
    }

    /// Change how many decrypted chunks are cached (0 turns the cache off).
    pub fn set_cache_capacity(&self, chunks: usize) {
        self.shared.cache().reset(chunks);
    }

    /// Load, verify and decrypt one chunk, patches applied (cached; a
    /// patched chunk's base is cached on its own too, for the next patch).
    pub(super) fn load(&self, key: &SecretKey, chunk: &ChunkRef) -> Result<Arc<Vec<u8>>> {
        let cache_key = chunk.cache_key();
        if let Some(hit) = self.shared.cache().get(&cache_key) {
            return Ok(hit);
        }
        let pending = self.shared.inflight().get(&cache_key).cloned();
        if let Some(cell) = pending {
            return cell.wait().clone().map_err(BucketError::Integrity);
        }
        let plain = if chunk.patches.is_empty() {
            Arc::new(load_uncached(&self.source(), key, &chunk.base)?)
        } else {
            let base = self.load(key, &ChunkRef::plain(chunk.base))?;
            let mut plain = Vec::with_capacity(self.chunk_size as usize);
            plain.extend_from_slice(&base);
            apply_patches(&self.source(), key, chunk, &mut plain, self.chunk_size)?;
            Arc::new(plain)
        };
        self.shared.cache().insert(cache_key, plain.clone());
        Ok(plain)
    }

    /// A chunk's content just sealed as a patch: cache it, so the writer's
    /// next change to the chunk need not apply every patch again.
    pub(super) fn cache_patched(&self, chunk: &ChunkRef, plain: Vec<u8>) {
        if self.caching() {
            self.shared
                .cache()
                .insert(chunk.cache_key(), Arc::new(plain));
        }
    }

    /// Whether decrypted chunks are cached at all.
    pub(super) fn caching(&self) -> bool {
        self.shared.cache().capacity() > 0
    }

    /// Whether a chunk is in the cache or being loaded into it.
    pub(super) fn cached_or_loading(&self, hash: &Hash) -> bool {
        self.shared.cache().contains(hash) || self.shared.inflight().contains_key(hash)
    }

    /// Start loading a chunk in the background unless it is cached or on its way.
    pub(super) fn prefetch(&self, key: &SecretKey, chunk: ChunkRef) {
        let hash = chunk.cache_key();
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
        let chunk_size = self.chunk_size;
        let job: Job = Box::new(move || {
            let loaded = load_chunk_uncached(&src, &key, &chunk, chunk_size).map(Arc::new);
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

    /// A buffer for one chunk with room to be sealed in place.
    pub(super) fn chunk_buffer(&self) -> Vec<u8> {
        crate::bucket::buffers::take(FrameLayout::for_plain(self.chunk_size as usize).sealed_len())
    }
}

/// Seal one chunk in place (framed, see `crypto::frames`) and store it with
/// its outboard; returns its address. On a store failure the buffer is
/// decrypted back, so the caller keeps its bytes.
pub(super) fn seal_store(store: &BlobStore, key: &SecretKey, buf: &mut Vec<u8>) -> Result<Hash> {
    key.seal_frames_in_place(buf)?;
    let (hash, outboard) = slices::hash_with_outboard(buf);
    if let Err(e) = store.put_with_outboard(hash, buf, &outboard) {
        key.open_frames_in_place(buf)?;
        return Err(e.into());
    }
    Ok(hash)
}

/// Seal a dirty chunk into the store: its changes as a patch when it
/// carries edits, else the whole chunk (in place; plaintext again on a
/// failure). Returns the address of what was stored.
pub(super) fn seal_dirty(
    store: &BlobStore,
    key: &SecretKey,
    chunk: &mut DirtyChunk,
) -> Result<Hash> {
    if let Some(overlay) = &chunk.overlay {
        return seal_overlay(store, key, overlay);
    }
    match &chunk.edits {
        Some(edits) => seal_patch(store, key, &chunk.buf, edits),
        None => seal_store(store, key, &mut chunk.buf),
    }
}

impl ChunkIo {
    /// Seal many files' dirty chunks at once: `(file, key, chunk)`.
    pub fn seal_many<F: Send>(
        &self,
        jobs: Vec<(F, SecretKey, DirtyChunk)>,
    ) -> Vec<(F, DirtyChunk, Result<Hash>)> {
        par_map(jobs, |(f, key, mut chunk)| {
            let r = seal_dirty(&self.store, &key, &mut chunk);
            (f, chunk, r)
        })
    }
}
