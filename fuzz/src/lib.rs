//! One function per decoder of bytes that come from disk or from a peer,
//! for the `cargo fuzz` targets in `fuzz/` and for `tests/fuzz_decoders.rs`,
//! which runs the same functions under proptest in CI.
//!
//! This file is the fuzz crate's library (`jax_csi_fuzz`, which the targets
//! in `fuzz_targets/` call) and is included as a module by
//! `tests/fuzz_decoders.rs` (`#[path]`), so the library of jax-csi does not
//! compile it. The decoders private to `jax_csi::bucket` are reached
//! through its hidden `bucket::decoders` module.
//!
//! Each function hands its input to the real decoder, which must refuse
//! bad bytes with an error and never panic, hang or allocate without
//! bound. Where a decode succeeds, what is cheap to check about the result
//! is asserted (it encodes back to the same bytes, partial and whole reads
//! agree), so a broken promise is a panic the fuzzer reports. Each returns
//! whether the decoder accepted the input (the seeds must be accepted).
//!
//! The keys are fixed ([`Fixture`]), so the corpus made by [`seeds`] holds
//! inputs that open and verify, and mutations of them reach the code
//! behind the authentication. Blobs go to a scratch store per thread,
//! on tmpfs when there is one, and are removed after each input.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use jax_csi::bucket::decoders::{
    allocated, check_link, encode, read_hashes, signing_input, split_nlink, write_hashes,
    BucketCore, ChunkIo, ChunkMap, DirNode, Entry, EntryKind, FileData, FileNode, KeyBytes, Link,
    Meta, MetaV2, Tag, DIR_VERSION, MAGIC,
};
use jax_csi::bucket::{
    BucketId, Manifest, ManifestBody, SpecialKind, Timestamp, DEFAULT_CHUNK_SIZE,
};
use jax_csi::crypto::{
    is_tenant_wrapped, rewrap_outer, unwrap_layered, wrap_layered, FrameLayout, Identity, Kek,
    KeyShare, Keyring, NodeId, SecretKey, WrapContext, WrappedKey, SIGNATURE_LEN,
};
use jax_csi::fuse::MountRecord;
use jax_csi::store::{slices, BlobStore, Hash, StoreError};
use jax_csi::sync::proto::{self, BlobFrame, Request, Response, MAX_BLOB};

/// The fixed keys every target uses (the seeds are made with them).
pub struct Fixture {
    /// The node identity that signs manifests and holds their shares.
    pub identity: Identity,
    pub bucket_secret: SecretKey,
    /// The root directory's key (sealed in manifests; seals tree nodes).
    pub dir_key: KeyBytes,
    /// The key of the file whose chunks the chunk target opens.
    pub file_key: KeyBytes,
    pub kek: Kek,
    pub tenant: Kek,
}

/// The fixture keys (built once).
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        // An identity is only ever loaded from its key file.
        let path = scratch_root().join("identity.key");
        std::fs::write(&path, [0x11u8; 32]).expect("writing the fixture identity");
        Fixture {
            identity: Identity::load_or_create(&path).expect("the fixture identity loads"),
            bucket_secret: SecretKey::from_bytes([0x22; 32]),
            dir_key: KeyBytes([0x33; 32]),
            file_key: KeyBytes([0x44; 32]),
            kek: Kek::new(SecretKey::from_bytes([0x55; 32])),
            tenant: Kek::new(SecretKey::from_bytes([0x66; 32])),
        }
    })
}

/// This process's scratch directory: on tmpfs when there is one (stores
/// fsync every blob), removed again by the next process that starts when
/// the one that made it is gone.
fn scratch_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        if let Ok(entries) = std::fs::read_dir(&base) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("jax-csi-fuzz-") {
                    if !Path::new("/proc").join(pid).exists() {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
        }
        let root = base.join(format!("jax-csi-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&root).expect("creating the fuzz scratch dir");
        root
    })
}

/// A directory and a blob store of this thread's own (tests run targets
/// on several threads; the blobs one writes must not be another's).
struct Scratch {
    dir: PathBuf,
    store: Arc<BlobStore>,
}

fn with_scratch<R>(f: impl FnOnce(&Scratch) -> R) -> R {
    thread_local! {
        static SCRATCH: Scratch = {
            static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = scratch_root().join(format!("t{n}"));
            std::fs::create_dir_all(&dir).expect("creating a scratch dir");
            let store = Arc::new(BlobStore::open(&dir.join("store")).expect("opening a scratch store"));
            Scratch { dir, store }
        };
    }
    SCRATCH.with(f)
}

// ---------------------------------------------------------------- manifests

/// A manifest blob (`JAXM`, canonical body, signature), as `Manifest::load`
/// reads it from the store or a peer sends it. The fuzzer cannot forge a
/// signature, so the body is also signed again with the fixture identity
/// and decoded once more: mutated bodies reach the checks after the
/// signature too.
pub fn manifest(data: &[u8]) -> bool {
    let accepted = Manifest::from_bytes(Hash::of(data), data)
        .map(|m| check_manifest(&m, data))
        .is_ok();
    if data.len() >= MAGIC.len() + SIGNATURE_LEN && data.starts_with(MAGIC) {
        let body = &data[MAGIC.len()..data.len() - SIGNATURE_LEN];
        let mut again = data[..data.len() - SIGNATURE_LEN].to_vec();
        again.extend_from_slice(&fixture().identity.sign(&signing_input(body)));
        if let Ok(m) = Manifest::from_bytes(Hash::of(&again), &again) {
            check_manifest(&m, &again);
        }
    }
    accepted
}

fn check_manifest(m: &Manifest, bytes: &[u8]) {
    let fx = fixture();
    assert_eq!(
        m.to_bytes().expect("a decoded manifest encodes"),
        bytes,
        "a manifest that verifies is in its one canonical encoding"
    );
    let me = fx.identity.node_id();
    for share in m.body.shares.iter().filter(|s| s.recipient == me) {
        if let Ok(ring) = share.open(&fx.identity) {
            let _ = ring.current().open(&m.body.root_key);
        }
    }
    let h = Hash::of(bytes);
    let _ = check_link(h, m, &[]);
    let _ = check_link(h, m, std::slice::from_ref(m));
}

// --------------------------------------------------------------- tree nodes

/// A directory node's plaintext (format version, tag, postcard body), as
/// `DirNode::load` finds it after decryption: sealed here with the fixture
/// key, stored, and loaded back. The input is also loaded as the sealed
/// blob itself. A node that loads is used as the mount uses one: its files'
/// chunk maps and sizes, link-table name counts, times as `SystemTime`.
pub fn tree_node(data: &[u8]) -> bool {
    let fx = fixture();
    with_scratch(|s| {
        let _ = load_node(&s.store, data, &fx.dir_key);
        let sealed = fx.dir_key.key().seal(data).expect("sealing a node");
        let Some(node) = load_node(&s.store, &sealed, &fx.dir_key) else {
            return false;
        };
        let again = encode(DIR_VERSION, Tag::Dir, &node).expect("a loaded node encodes");
        if data.first() == Some(&DIR_VERSION) {
            assert_eq!(
                again, data,
                "a node that loads is in its canonical encoding"
            );
        } else {
            // An older format: the upgraded node stores and loads as itself.
            let sealed = fx.dir_key.key().seal(&again).expect("sealing a node");
            assert_eq!(
                load_node(&s.store, &sealed, &fx.dir_key).as_ref(),
                Some(&node)
            );
        }
        use_node(&node);
        true
    })
}

fn load_node(store: &BlobStore, sealed: &[u8], key: &KeyBytes) -> Option<DirNode> {
    let hash = store
        .put(sealed)
        .expect("storing a blob in the scratch store");
    let link = Link {
        hash,
        key: key.clone(),
    };
    let node = DirNode::load(store, &link);
    store.remove(&hash).expect("removing a scratch blob");
    node.ok()
}

fn use_node(node: &DirNode) {
    let metas = node
        .root_meta
        .iter()
        .chain(node.entries.iter().map(|e| &e.meta));
    for meta in metas {
        // What `Mount::getattr` hands the kernel.
        let _: [SystemTime; 3] = [meta.atime.into(), meta.mtime.into(), meta.ctime.into()];
        let _ = split_nlink(meta.clone());
    }
    for e in &node.entries {
        if let EntryKind::File(f) = &e.kind {
            use_file(f);
        }
    }
}

fn use_file(f: &FileNode) {
    let end = f.chunks.end();
    assert!(
        f.chunks.len() <= end,
        "a canonical map holds at most `end` chunks"
    );
    let _ = f.chunks.get(end.saturating_sub(1));
    assert_eq!(
        f.chunks.iter_from(end / 2).count() as u64,
        f.chunks.iter().filter(|(i, _)| *i >= end / 2).count() as u64
    );
    let mut cut = f.chunks.clone();
    cut.truncate(end / 2);
    assert!(cut.is_canonical() && cut.end() <= end / 2);
    for cs in [4096u64, DEFAULT_CHUNK_SIZE as u64, 16 << 20] {
        // A live mount takes a stored file only through `from_node`, which
        // refuses chunk lists past the file's end.
        if FileData::from_node(f, cs).is_ok() {
            let _ = allocated(f, cs);
        }
    }
}

// ------------------------------------------------------------- chunk frames

/// A sealed chunk blob of a file (framed, or one AES-GCM object as chunks
/// were sealed before framing) under the fixture file key: opened whole
/// and frame by frame, then stored and read through a live file
/// (`FileData`), by a small read (only the frames it needs) and a whole
/// one. Reads of a chunk that opens give its plaintext (zeros past its
/// end); a chunk that does not open is an error for a whole read.
pub fn chunk_frame(data: &[u8]) -> bool {
    let fx = fixture();
    let key = fx.file_key.key();
    let layout = FrameLayout::of_sealed(data);
    if let Some(l) = &layout {
        assert_eq!(l.sealed_len(), data.len());
        assert!(l.frames >= 1 && l.frame(l.frames - 1).end == l.plain_len);
    }
    let mut framed = data.to_vec();
    let plain = if key.open_frames_in_place(&mut framed).is_ok() {
        let l = layout.expect("a chunk that opens has a layout");
        assert_eq!(framed.len(), l.plain_len);
        for j in 0..l.frames {
            let mut body = data[l.frame(j)].to_vec();
            key.open_frames(&l, &[j], &mut body, &data[l.trailer()])
                .expect("each frame of a chunk that opens opens alone");
            assert_eq!(body, framed[l.frame(j)]);
        }
        Some(framed)
    } else {
        let mut legacy = data.to_vec();
        key.open_in_place(&mut legacy, b"").ok().map(|()| legacy)
    };
    with_scratch(|s| {
        let (hash, cvs) = slices::hash_with_outboard(data);
        s.store
            .put_with_outboard(hash, data, &cvs)
            .expect("storing a blob in the scratch store");
        let cs = DEFAULT_CHUNK_SIZE as u64;
        let node = FileNode {
            size: (data.len() as u64).clamp(1, cs),
            key: fx.file_key.clone(),
            chunks: ChunkMap::from_dense(vec![Some(hash)]),
        };
        let expect = |range: std::ops::Range<u64>| {
            plain.as_ref().map(|p| {
                let mut v = p.clone();
                v.resize(node.size as usize, 0);
                v[range.start as usize..range.end as usize].to_vec()
            })
        };
        // Each read on a fresh file and cache, so the first is a small read
        // of its frames (it does not continue a previous read) and the
        // second a whole-chunk load.
        let io = ChunkIo::new(s.store.clone(), cs as u32);
        let mut file = FileData::from_node(&node, cs).expect("one chunk fits the file");
        let at = node.size / 2;
        let small = at..(at + 100).min(node.size);
        let got = file.read_buf(&io, small.start, small.end - small.start);
        if let Some(want) = expect(small) {
            let got = got.expect("a small read of a chunk that opens");
            assert_eq!(got.as_slice(), want, "a small read gives the chunk's bytes");
        }
        let io = ChunkIo::new(s.store.clone(), cs as u32);
        let mut file = FileData::from_node(&node, cs).expect("one chunk fits the file");
        let got = file.read_buf(&io, 0, node.size);
        match expect(0..node.size) {
            Some(want) => assert_eq!(got.expect("a whole read").as_slice(), want),
            None => assert!(got.is_err(), "a chunk that does not open reads as an error"),
        }
        s.store.remove(&hash).expect("removing a scratch blob");
    });
    plain.is_some()
}

// ---------------------------------------------------------------- outboards

/// A blob file and its outboard file (`<hash>.ob`, the CVs of its full
/// slices) as `BlobStore::reader` finds them on disk. Input: a flags byte,
/// the outboard's length (u16 LE), the outboard, then the blob. The blob's
/// name is its hash (or, with flag 1, a hash it does not have); flag 2
/// flips a byte of the blob file and flag 4 truncates it after the reader
/// checked it. Whatever the files hold, a reader opens only for a blob
/// that hashes to its name and never returns a byte that is not the
/// blob's.
pub fn outboard(data: &[u8]) -> bool {
    let Some((&flags, rest)) = data.split_first() else {
        return false;
    };
    let (ob_len, rest) = match rest.split_first_chunk::<2>() {
        Some((n, rest)) => (u16::from_le_bytes(*n) as usize, rest),
        None => (0, rest),
    };
    let (ob, blob) = rest.split_at(ob_len.min(rest.len()));
    let name = if flags & 1 == 0 {
        Hash::of(blob)
    } else {
        Hash::of(data)
    };
    with_scratch(|s| {
        let path = s.store.path_of(&name);
        let ob_path = PathBuf::from(format!("{}.ob", path.display()));
        std::fs::create_dir_all(path.parent().expect("a blob path has a parent"))
            .expect("creating a fan-out dir");
        std::fs::write(&path, blob).expect("writing a scratch blob");
        std::fs::write(&ob_path, ob).expect("writing a scratch outboard");
        let opened = s.store.reader(&name);
        let accepted = opened.is_ok();
        match opened {
            Ok(reader) => {
                assert_eq!(
                    Hash::of(blob),
                    name,
                    "only a blob that hashes to its name opens"
                );
                assert_eq!(reader.len(), blob.len());
                let tampered = flags & 6 != 0 && !blob.is_empty();
                if tampered {
                    let mut changed = blob.to_vec();
                    if flags & 2 != 0 {
                        let at = (flags as usize).wrapping_mul(7919) % changed.len();
                        changed[at] ^= 0x5a;
                    }
                    if flags & 4 != 0 {
                        changed.truncate(blob.len() / 2);
                    }
                    std::fs::write(&path, &changed).expect("changing a scratch blob");
                }
                let len = blob.len();
                let third = len / 3;
                let slice = slices::SLICE_LEN;
                for range in [
                    0..len,
                    third..third + 1 + flags as usize * 97,
                    len.saturating_sub(5)..len + 10,
                    slice - 1..slice + 1,
                    2 * slice..3 * slice,
                ] {
                    let clamped = range.start.min(len)..range.end.min(len);
                    match reader.read(range) {
                        Ok(bytes) => {
                            assert_eq!(bytes, &blob[clamped], "a read gives the blob's bytes")
                        }
                        Err(e) => assert!(
                            tampered && matches!(e, StoreError::CorruptSlice { .. }),
                            "a read of a checked blob failed: {e}"
                        ),
                    }
                }
            }
            Err(e) => {
                assert_ne!(
                    Hash::of(blob),
                    name,
                    "a blob that hashes to its name opens: {e}"
                );
                assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
            }
        }
        s.store.remove(&name).expect("removing a scratch blob");
        accepted
    })
}

// ------------------------------------------------------------ sync messages

/// What a peer sends on a sync stream: length-prefixed messages, each
/// refused past the size cap before it is read, decoded as every message
/// type ([`Request`], [`Response`], [`BlobFrame`]); a blob frame's bytes
/// follow it (refused past [`MAX_BLOB`], as the client does). Whatever
/// decodes encodes and decodes back to itself.
pub fn sync_message(data: &[u8]) -> bool {
    let mut rest = data;
    let mut decoded = false;
    for _ in 0..64 {
        let Some((prefix, after)) = rest.split_first_chunk::<4>() else {
            break;
        };
        let Ok(len) = proto::body_len(*prefix) else {
            break;
        };
        // A stream that ends early is an error for `read_exact`.
        let Some(body) = after.get(..len) else {
            break;
        };
        rest = &after[len..];
        decoded |= round_trip::<Request>(body).is_some();
        decoded |= round_trip::<Response>(body).is_some();
        let frame = round_trip::<BlobFrame>(body);
        decoded |= frame.is_some();
        if let Some(BlobFrame::Blob { len, .. }) = frame {
            if len as usize > MAX_BLOB {
                break;
            }
            rest = &rest[(len as usize).min(rest.len())..];
        }
    }
    decoded
}

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    body: &[u8],
) -> Option<T> {
    let value: T = proto::decode(body).ok()?;
    let framed = proto::frame(&value);
    let prefix: [u8; 4] = framed[..4].try_into().expect("a 4-byte prefix");
    assert_eq!(
        proto::body_len(prefix).ok(),
        Some(framed.len() - 4),
        "a message that decoded fits the cap again"
    );
    assert_eq!(
        proto::decode::<T>(&framed[4..]).expect("a message decodes after it encodes"),
        value
    );
    Some(value)
}

// ------------------------------------------------------------ mount records

/// `mounts.json`, the node's mount records, as `MountManager::new` reads
/// it; records that decode write and read back as themselves.
pub fn mount_records(data: &[u8]) -> bool {
    let Ok(records) = serde_json::from_slice::<Vec<MountRecord>>(data) else {
        return false;
    };
    let again = serde_json::to_vec_pretty(&records).expect("records serialize");
    assert_eq!(
        serde_json::from_slice::<Vec<MountRecord>>(&again).expect("written records read back"),
        records
    );
    true
}

// -------------------------------------------------------------- state files

/// The small files of a bucket's state dir: `HEAD` (read by
/// `BucketCore::head`, with its fallback to the newest version in the
/// store), `PRUNED` and `ROOTS` (lists of hashes, written and read back),
/// and `SOURCE` (a bucket id).
pub fn state_files(data: &[u8]) -> bool {
    let fx = fixture();
    let text = std::str::from_utf8(data).ok().map(str::trim);
    let head = text.is_some_and(|t| Hash::from_hex(t).is_ok());
    let mut list = false;
    let mut id = false;
    with_scratch(|s| {
        let dir = s.dir.join("bucket");
        std::fs::create_dir_all(&dir).expect("creating a scratch bucket dir");
        std::fs::write(dir.join("HEAD"), data).expect("writing a scratch HEAD");
        let core = BucketCore::new(
            BucketId([7; 16]),
            dir.clone(),
            s.store.clone(),
            Arc::new(fx.identity.clone()),
            Keyring::of(fx.bucket_secret.clone()),
            Arc::new(
                jax_csi::bucket::Revoked::at(&s.dir.join("REVOKED"))
                    .expect("an empty revoked list"),
            ),
        );
        // No version is stored: HEAD must not open, whatever it says.
        assert!(core.head().is_err());
        let path = dir.join("PRUNED");
        std::fs::write(&path, data).expect("writing a scratch list");
        if let Ok(hashes) = read_hashes(&path) {
            list = !hashes.is_empty();
            let again = dir.join("ROOTS");
            write_hashes(&again, &hashes).expect("writing a list of hashes");
            assert_eq!(read_hashes(&again).expect("a written list reads"), hashes);
        }
        if let Some(Ok(bucket)) = text.map(BucketId::from_hex) {
            assert_eq!(BucketId::from_hex(&bucket.to_hex()).ok(), Some(bucket));
            id = true;
        }
    });
    head || list || id
}

// ------------------------------------------------------------- key material

/// Key files and wrapped keys: a KEK file (32 bytes or 64 hex characters),
/// an identity file, a bucket secret wrapped by a KEK (`key.wrapped`,
/// `tenant.wrapped`, a Postgres record: one layer or two), and a key share
/// as a manifest carries it (postcard), opened with the fixture identity.
pub fn key_material(data: &[u8]) -> bool {
    let fx = fixture();
    let kek_file = with_scratch(|s| {
        let path = s.dir.join("key");
        std::fs::write(&path, data).expect("writing a scratch key file");
        let kek = Kek::from_file(&path).is_ok();
        let id = Identity::load_or_create(&path);
        assert_eq!(id.is_ok(), data.len() == 32, "an identity file is 32 bytes");
        kek
    });
    let wrapped = WrappedKey(data.to_vec());
    let local = WrapContext::node_local("b");
    let mut accepted = kek_file || fx.kek.unwrap_for(&wrapped, &local, true).is_ok();
    let (inner, outer, other) = (
        WrapContext::volume("v"),
        WrapContext::volume("v"),
        WrapContext::snapshot("s", "v", "h"),
    );
    let opened = unwrap_layered(&fx.kek, Some(&fx.tenant), &wrapped, &inner, &outer);
    accepted |= opened.is_ok();
    let _ = is_tenant_wrapped(&wrapped);
    if let Ok(moved) = rewrap_outer(&fx.kek, &wrapped, &outer, &other) {
        let again = unwrap_layered(&fx.kek, Some(&fx.tenant), &moved, &inner, &other);
        assert_eq!(
            again.ok().map(|k| *k.expose()),
            opened.ok().map(|k| *k.expose()),
            "a rewrapped key opens as the original did"
        );
    }
    if let Ok(share) = postcard::from_bytes::<KeyShare>(data) {
        accepted |= share.open(&fx.identity).is_ok();
    }
    if let Ok(text) = std::str::from_utf8(data) {
        accepted |= NodeId::from_hex(text.trim()).is_ok();
    }
    accepted
}

// -------------------------------------------------------------------- seeds

/// Valid inputs for every target, made with the real encoders and the
/// fixture keys: `(target, name, bytes)`. `tests/fuzz_decoders.rs` writes
/// them to `fuzz/corpus/<target>/<name>` (an ignored test) and checks the
/// committed corpus still opens.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut add = |target: &'static str, name: &str, bytes: Vec<u8>| {
        out.push((target, name.to_string(), bytes));
    };
    for (name, bytes) in manifest_seeds() {
        add("manifest", &name, bytes);
    }
    for (name, bytes) in tree_seeds() {
        add("tree_node", &name, bytes);
    }
    for (name, bytes) in chunk_seeds() {
        add("chunk_frame", &name, bytes);
    }
    for (name, bytes) in outboard_seeds() {
        add("outboard", &name, bytes);
    }
    for (name, bytes) in sync_seeds() {
        add("sync_message", &name, bytes);
    }
    for (name, bytes) in mount_record_seeds() {
        add("mount_records", &name, bytes);
    }
    for (name, bytes) in state_file_seeds() {
        add("state_files", &name, bytes);
    }
    for (name, bytes) in key_seeds() {
        add("key_material", &name, bytes);
    }
    out
}

/// Inputs that once made a decoder panic, made with the real encoders:
/// `(target, name, bytes)`, kept in the corpus as `crash-<name>` (they
/// need not be accepted, only not panic).
pub fn regressions() -> Vec<(&'static str, String, Vec<u8>)> {
    let fx = fixture();
    let mut out = Vec::new();
    // Times no `SystemTime` can hold, as another replica's node may carry:
    // converting them for getattr overflowed.
    for (name, secs, nanos) in [
        ("time-min", i64::MIN, 0),
        ("time-max", i64::MAX, 3_999_999_999),
    ] {
        let mut m = meta(0o644, &[]);
        m.mtime = ts(secs, nanos);
        let node = DirNode {
            root_meta: Some(m),
            links: None,
            entries: Vec::new(),
        };
        let bytes = encode(DIR_VERSION, Tag::Dir, &node).expect("encoding a node");
        out.push(("tree_node", format!("crash-{name}"), bytes));
    }
    // A chunk map whose first run ends past u64::MAX: checking it for
    // canonical form overflowed. Encoded with marker starts, then the
    // first marker's varint replaced by that of u64::MAX - 1.
    let (first, second) = (0x0123_4567_89ab_u64, 0x0fed_cba9_8765_u64);
    let mut chunks = ChunkMap::default();
    for i in [first, first + 1, second] {
        chunks.set(i, Hash::of(&i.to_le_bytes()));
    }
    let node = DirNode {
        root_meta: None,
        links: None,
        entries: vec![Entry {
            name: b"f".to_vec(),
            ino: 5,
            meta: meta(0o644, &[]),
            kind: EntryKind::File(FileNode {
                size: 1 << 50,
                key: fx.file_key.clone(),
                chunks,
            }),
        }],
    };
    let bytes = encode(DIR_VERSION, Tag::Dir, &node).expect("encoding a node");
    let varint = |v: u64| postcard::to_stdvec(&v).expect("a varint");
    let (from, to) = (varint(first), varint(u64::MAX - 1));
    let at = bytes
        .windows(from.len())
        .position(|w| w == from.as_slice())
        .expect("the marker is in the node");
    let mut crafted = bytes[..at].to_vec();
    crafted.extend_from_slice(&to);
    crafted.extend_from_slice(&bytes[at + from.len()..]);
    out.push(("tree_node", "crash-run-past-u64".into(), crafted));
    // A signed manifest at the largest height: the height a child of it
    // must have overflowed.
    let me = fx.identity.node_id();
    let body = ManifestBody {
        bucket_id: BucketId([7; 16]),
        height: u64::MAX,
        previous: Some(Hash::of(b"p")),
        merged: None,
        root: Hash::of(b"root"),
        root_key: fx
            .bucket_secret
            .seal(&fx.dir_key.0)
            .expect("sealing the root key"),
        chunk_size: DEFAULT_CHUNK_SIZE,
        quota: None,
        used_bytes: 0,
        entries: 0,
        shares: vec![
            KeyShare::create(&Keyring::of(fx.bucket_secret.clone()), &me).expect("a share"),
        ],
        author: me,
        created_at: ts(0, 0),
    };
    let m = Manifest::sign(body, &fx.identity).expect("signing");
    out.push((
        "manifest",
        "crash-height-max".into(),
        m.to_bytes().expect("encoding"),
    ));
    out
}

/// A fuzz target: takes any bytes, tells whether the decoder accepted them.
pub type Target = fn(&[u8]) -> bool;

/// Every fuzz target by name.
pub const TARGETS: &[(&str, Target)] = &[
    ("manifest", manifest),
    ("tree_node", tree_node),
    ("chunk_frame", chunk_frame),
    ("outboard", outboard),
    ("sync_message", sync_message),
    ("mount_records", mount_records),
    ("state_files", state_files),
    ("key_material", key_material),
];

/// Deterministic filler bytes.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let mut v = vec![0u8; len];
    blake3::Hasher::new()
        .update(&[seed])
        .update(&(len as u64).to_le_bytes())
        .finalize_xof()
        .fill(&mut v);
    v
}

fn ts(secs: i64, nanos: u32) -> Timestamp {
    Timestamp { secs, nanos }
}

fn meta(mode: u32, xattrs: &[(&[u8], &[u8])]) -> Meta {
    Meta {
        mode,
        uid: 1000,
        gid: 1000,
        atime: ts(1_700_000_000, 1),
        mtime: ts(1_700_000_001, 999_999_999),
        ctime: ts(-5, 0),
        xattrs: xattrs
            .iter()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect(),
        writer: [9; 8],
        clock: Default::default(),
    }
}

fn manifest_seeds() -> Vec<(String, Vec<u8>)> {
    let fx = fixture();
    let me = fx.identity.node_id();
    let share = KeyShare::create(&Keyring::of(fx.bucket_secret.clone()), &me)
        .expect("a share for the fixture");
    let body = |height: u64, previous: Option<Hash>, merged: Option<Hash>| ManifestBody {
        bucket_id: BucketId([7; 16]),
        height,
        previous,
        merged,
        root: Hash::of(b"root"),
        root_key: fx
            .bucket_secret
            .seal(&fx.dir_key.0)
            .expect("sealing the root key"),
        chunk_size: DEFAULT_CHUNK_SIZE,
        quota: (height > 0).then_some(1 << 30),
        used_bytes: 12345,
        entries: 3,
        shares: vec![share.clone()],
        author: me,
        created_at: ts(1_700_000_000, 5),
    };
    let genesis = Manifest::sign(body(0, None, None), &fx.identity).expect("signing");
    let g = genesis.to_bytes().expect("encoding");
    let next = Manifest::sign(body(1, Some(Hash::of(&g)), None), &fx.identity).expect("signing");
    let merge = Manifest::sign(
        body(2, Some(Hash::of(&g)), Some(Hash::of(b"other"))),
        &fx.identity,
    )
    .expect("signing");
    vec![
        ("genesis".into(), g),
        ("next".into(), next.to_bytes().expect("encoding")),
        ("merge".into(), merge.to_bytes().expect("encoding")),
    ]
}

fn tree_seeds() -> Vec<(String, Vec<u8>)> {
    let fx = fixture();
    let entry = |name: &[u8], ino: u64, kind: EntryKind| Entry {
        name: name.to_vec(),
        ino,
        meta: meta(0o644, &[]),
        kind,
    };
    let mut sparse = ChunkMap::default();
    for i in [0u64, 1, 2, 40, 1 << 30] {
        sparse.set(i, Hash::of(&i.to_le_bytes()));
    }
    let root = DirNode {
        root_meta: Some(meta(0o755, &[(b"user.a", b"1")])),
        links: Some(Link {
            hash: Hash::of(b"links"),
            key: KeyBytes([1; 32]),
        }),
        entries: vec![
            entry(
                b"big",
                10,
                EntryKind::File(FileNode {
                    size: (1 << 30) * DEFAULT_CHUNK_SIZE as u64 + 5,
                    key: fx.file_key.clone(),
                    chunks: sparse,
                }),
            ),
            entry(
                b"dev",
                12,
                EntryKind::Special {
                    kind: SpecialKind::CharDevice,
                    rdev: 0x0103,
                },
            ),
            entry(
                b"dir",
                11,
                EntryKind::Dir(Link {
                    hash: Hash::of(b"dir"),
                    key: KeyBytes([2; 32]),
                }),
            ),
            entry(
                b"fifo",
                13,
                EntryKind::Special {
                    kind: SpecialKind::Fifo,
                    rdev: 0,
                },
            ),
            entry(b"hard", 14, EntryKind::Shared),
            entry(b"hard2", 14, EntryKind::Shared),
            entry(b"link", 15, EntryKind::Symlink(b"../target".to_vec())),
            entry(
                b"small",
                16,
                EntryKind::File(FileNode {
                    size: 100,
                    key: KeyBytes([3; 32]),
                    chunks: ChunkMap::from_dense(vec![Some(Hash::of(b"c0"))]),
                }),
            ),
        ],
    };
    // A link table: entries named by id in hex, with their name counts.
    let table = DirNode {
        root_meta: None,
        links: None,
        entries: vec![Entry {
            name: format!("{:016x}", 14u64).into_bytes(),
            ino: 14,
            meta: meta(0o600, &[(b"\0jax.nlink", &2u32.to_le_bytes())]),
            kind: EntryKind::File(FileNode {
                size: 0,
                key: KeyBytes([4; 32]),
                chunks: ChunkMap::default(),
            }),
        }],
    };
    let enc = |n: &DirNode| encode(DIR_VERSION, Tag::Dir, n).expect("encoding a node");
    vec![
        ("root".into(), enc(&root)),
        ("table".into(), enc(&table)),
        ("empty".into(), enc(&DirNode::default())),
        ("v1".into(), tree_v1_seed()),
    ]
}

/// A node in the first tree format (no inode ids, dense chunk lists),
/// which still loads.
fn tree_v1_seed() -> Vec<u8> {
    #[derive(Serialize, Deserialize)]
    struct NodeV1 {
        root_meta: Option<MetaV2>,
        entries: Vec<EntryV1>,
    }
    #[derive(Serialize, Deserialize)]
    struct EntryV1 {
        name: Vec<u8>,
        meta: MetaV2,
        kind: KindV1,
    }
    #[derive(Serialize, Deserialize)]
    enum KindV1 {
        File {
            size: u64,
            key: KeyBytes,
            chunks: Vec<Option<Hash>>,
        },
        Dir(Link),
        Symlink(Vec<u8>),
    }
    let node = NodeV1 {
        root_meta: Some(meta(0o755, &[]).without_clock()),
        entries: vec![
            EntryV1 {
                name: b"a".to_vec(),
                meta: meta(0o644, &[]).without_clock(),
                kind: KindV1::File {
                    size: 3 * DEFAULT_CHUNK_SIZE as u64,
                    key: KeyBytes([5; 32]),
                    chunks: vec![Some(Hash::of(b"0")), None, Some(Hash::of(b"2"))],
                },
            },
            EntryV1 {
                name: b"d".to_vec(),
                meta: meta(0o755, &[]).without_clock(),
                kind: KindV1::Dir(Link {
                    hash: Hash::of(b"d"),
                    key: KeyBytes([6; 32]),
                }),
            },
            EntryV1 {
                name: b"s".to_vec(),
                meta: meta(0o777, &[]).without_clock(),
                kind: KindV1::Symlink(b"a".to_vec()),
            },
        ],
    };
    encode(1, Tag::Dir, &node).expect("encoding a v1 node")
}

fn chunk_seeds() -> Vec<(String, Vec<u8>)> {
    let key = fixture().file_key.key();
    let f = jax_csi::crypto::FRAME_LEN;
    let mut out = Vec::new();
    for len in [0, 1, 100, f, f + 1, 2 * f + 777] {
        let mut buf = pattern(len, 1);
        key.seal_frames_in_place(&mut buf).expect("sealing a chunk");
        out.push((format!("framed-{len}"), buf));
    }
    // Sealed before framing: one AES-GCM object.
    out.push((
        "legacy-500".into(),
        key.seal(&pattern(500, 2)).expect("sealing"),
    ));
    out
}

fn outboard_seeds() -> Vec<(String, Vec<u8>)> {
    let s = slices::SLICE_LEN;
    let input = |flags: u8, ob: &[u8], blob: &[u8]| {
        let mut v = vec![flags];
        v.extend_from_slice(&(ob.len() as u16).to_le_bytes());
        v.extend_from_slice(ob);
        v.extend_from_slice(blob);
        v
    };
    let mut out = Vec::new();
    for (len, flags) in [
        (100, 0u8),
        (s, 0),
        (s + 1, 2),
        (3 * s + 5000, 0),
        (2 * s + 9, 4),
    ] {
        let blob = pattern(len, 3);
        let (_, cvs) = slices::hash_with_outboard(&blob);
        out.push((
            format!("blob-{len}-{flags}"),
            input(flags, &cvs.concat(), &blob),
        ));
    }
    // An outboard that does not match its blob.
    let blob = pattern(2 * s + 100, 4);
    out.push(("wrong-outboard".into(), input(0, &[0xab; 64], &blob)));
    out
}

fn sync_seeds() -> Vec<(String, Vec<u8>)> {
    let b = BucketId([3; 16]);
    let h = Hash::of(b"head");
    let requests = [
        Request::Heads {
            buckets: vec![(b, [1; 32]), (BucketId([4; 16]), [2; 32])],
        },
        Request::Announce {
            bucket: b,
            proof: [5; 32],
            head: h,
        },
        Request::GetBlobs {
            bucket: b,
            proof: [6; 32],
            hashes: vec![h, Hash::of(b"x")],
        },
        Request::Enroll {
            bucket: b,
            proof: [7; 32],
        },
    ];
    let mut out: Vec<(String, Vec<u8>)> = requests
        .iter()
        .enumerate()
        .map(|(i, r)| (format!("request-{i}"), proto::frame(r)))
        .collect();
    let responses = [
        Response::Heads(vec![(b, Some(h)), (BucketId([4; 16]), None)]),
        Response::Enrolled { head: h },
        Response::Refused {
            reason: "not a member".into(),
        },
    ];
    for (i, r) in responses.iter().enumerate() {
        out.push((format!("response-{i}"), proto::frame(r)));
    }
    // A GetBlobs answer: noted, a blob and its bytes, a missing one.
    let blob = pattern(300, 5);
    let mut stream = proto::frame(&Response::Noted);
    stream.extend(proto::frame(&BlobFrame::Blob {
        hash: Hash::of(&blob),
        len: blob.len() as u32,
    }));
    stream.extend_from_slice(&blob);
    stream.extend(proto::frame(&BlobFrame::Missing { hash: h }));
    out.push(("blob-stream".into(), stream));
    out
}

fn mount_record_seeds() -> Vec<(String, Vec<u8>)> {
    let records = serde_json::json!([
        {
            "volume_id": "0123456789abcdef0123456789abcdef",
            "mount_point": "/var/lib/jax/mounts/a",
            "options": {"read_only": false, "auto_mount": true, "cache_chunks": 32, "cache_ttl_ms": 1000, "group": 2000},
            "status": {"state": "running"},
            "targets": [{"path": "/var/lib/kubelet/pods/x/volumes/v", "read_only": true,
                         "pod": {"namespace": "default", "name": "p", "uid": "u"}}]
        },
        {
            "volume_id": "fedcba9876543210fedcba9876543210",
            "mount_point": "/m/b",
            "options": {"read_only": true, "auto_mount": false, "cache_chunks": 0, "cache_ttl_ms": 0, "group": null},
            "status": {"state": "error", "message": "boom"}
        }
    ]);
    let bytes = serde_json::to_vec_pretty(&records).expect("json");
    let parsed: Vec<MountRecord> = serde_json::from_slice(&bytes).expect("the seed is records");
    vec![
        ("two-records".into(), bytes),
        ("empty".into(), b"[]".to_vec()),
        (
            "written".into(),
            serde_json::to_vec_pretty(&parsed[1..]).expect("json"),
        ),
    ]
}

fn state_file_seeds() -> Vec<(String, Vec<u8>)> {
    let h = |s: &[u8]| Hash::of(s).to_hex();
    vec![
        ("head".into(), format!("{}\n", h(b"a")).into_bytes()),
        (
            "list".into(),
            format!("{}\n\n  {}  \n", h(b"a"), h(b"b")).into_bytes(),
        ),
        ("bucket-id".into(), BucketId([9; 16]).to_hex().into_bytes()),
    ]
}

fn key_seeds() -> Vec<(String, Vec<u8>)> {
    let fx = fixture();
    let secret = SecretKey::from_bytes([0x77; 32]);
    let (inner, outer) = (WrapContext::volume("v"), WrapContext::volume("v"));
    let one = wrap_layered(&fx.kek, None, &secret, &inner, &outer).expect("wrapping");
    let two = wrap_layered(&fx.kek, Some(&fx.tenant), &secret, &inner, &outer).expect("wrapping");
    let local = fx
        .kek
        .wrap_for(&secret, &WrapContext::node_local("b"))
        .expect("wrapping");
    let share =
        KeyShare::create(&Keyring::of(secret.clone()), &fx.identity.node_id()).expect("a share");
    vec![
        ("raw-32".into(), vec![0x42; 32]),
        (
            "hex-64".into(),
            format!("{}\n", hex::encode([0x42u8; 32])).into_bytes(),
        ),
        ("layered-1".into(), one.0),
        ("layered-2".into(), two.0),
        ("node-local".into(), local.0),
        (
            "share".into(),
            postcard::to_stdvec(&share).expect("encoding a share"),
        ),
        (
            "node-id".into(),
            fx.identity.node_id().to_hex().into_bytes(),
        ),
    ]
}
