//! Which blobs of the shared store belong to a bucket: what a peer that
//! proved the bucket's secret may read from this node (#26, finding 1).
//!
//! The store is shared by every bucket on the node, and a blob's address
//! says nothing of its bucket. The index of a bucket is the set of blobs
//! its versions here reach: manifests of its history (each checked to be
//! the bucket's), directory nodes (each opened with the bucket's keys) and
//! the chunks they name. It is kept in memory once asked for and in
//! `buckets/<id>/BLOBS` (32 bytes a blob, appended), and brought up to the
//! bucket's head whenever it is asked for: a walk of the versions it does
//! not hold yet and of their directories it does not hold yet, so it costs
//! what changed since, and a lookup is O(1). Every way blobs come to a
//! bucket (saves, merges, pulls, imports, clones, restores) moves the head
//! or the pinned roots, so the walk finds them; a bucket without the file
//! (older nodes) is indexed whole on first use. GC replaces the set by what
//! its pass found live.
//!
//! What a member of the bucket can still do: name, in a version it writes,
//! a blob of another bucket as a chunk. It has to know the address: other
//! buckets' directory and chunk addresses are inside their encrypted
//! directories, and their manifests (whose addresses Postgres lists) are
//! refused by the server's check that a manifest served belongs to the
//! proven bucket.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, RwLock};

use super::error::{BucketError, Result};
use super::tree::{DirNode, EntryKind, Link};
use super::Bucket;
use crate::store::Hash;

/// A bucket's index (see the module).
#[derive(Debug, Default)]
pub struct BlobIndex {
    set: RwLock<HashSet<Hash>>,
    /// Held by a walk that brings the set up to date (one at a time).
    walking: Mutex<bool>,
}

impl BlobIndex {
    /// Whether `blob` belongs to the bucket (as of the last catch-up).
    pub fn contains(&self, blob: &Hash) -> bool {
        self.set
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(blob)
    }

    pub fn len(&self) -> usize {
        self.set.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The indexes in memory, by bucket directory (one per bucket per node).
static INDEXES: LazyLock<Mutex<HashMap<PathBuf, Arc<BlobIndex>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn index_path(dir: &Path) -> PathBuf {
    dir.join("BLOBS")
}

/// Forget the index of the bucket at `dir` (it was removed).
pub(super) fn forget(dir: &Path) {
    INDEXES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(dir);
}

fn read_file(path: &Path) -> Result<Option<HashSet<Hash>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(
            bytes
                .chunks_exact(32)
                .map(|c| Hash(c.try_into().expect("32 bytes")))
                .collect(),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(BucketError::io(path)(e)),
    }
}

fn append(path: &Path, blobs: &[Hash]) -> Result<()> {
    if blobs.is_empty() {
        return Ok(());
    }
    let mut bytes = Vec::with_capacity(blobs.len() * 32);
    for h in blobs {
        bytes.extend_from_slice(&h.0);
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(BucketError::io(path))?;
    // A torn last record is dropped on load (chunks_exact); a lost tail
    // loses entries, never adds one: the blobs are answered missing until
    // the next GC rewrites the file.
    f.write_all(&bytes).map_err(BucketError::io(path))
}

fn rewrite(path: &Path, set: &HashSet<Hash>) -> Result<()> {
    let mut bytes = Vec::with_capacity(set.len() * 32);
    for h in set {
        bytes.extend_from_slice(&h.0);
    }
    super::write_atomic(path, &bytes)
}

impl Bucket {
    /// This bucket's blob index, brought up to its head and pinned roots.
    /// Blocking: the first call per bucket reads (or builds) the file.
    pub fn blob_index(&self) -> Result<Arc<BlobIndex>> {
        let dir = self.core.dir.clone();
        let idx = INDEXES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(dir.clone())
            .or_default()
            .clone();
        let path = index_path(&dir);
        let mut loaded = idx.walking.lock().unwrap_or_else(|e| e.into_inner());
        if !*loaded {
            if let Some(set) = read_file(&path)? {
                *idx.set.write().unwrap_or_else(|e| e.into_inner()) = set;
            }
            *loaded = true;
        }
        let new = {
            let known = idx.set.read().unwrap_or_else(|e| e.into_inner());
            self.blobs_not_in(&known)?
        };
        if !new.is_empty() {
            append(&path, &new)?;
            idx.set
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .extend(new);
        }
        drop(loaded);
        Ok(idx)
    }

    /// GC found `live` to be what this bucket's retained versions reach:
    /// the index (if one was made) becomes that.
    pub(super) fn replace_blob_index(&self, live: HashSet<Hash>) -> Result<()> {
        let dir = &self.core.dir;
        let idx = INDEXES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(dir)
            .cloned();
        let path = index_path(dir);
        match idx {
            Some(idx) => {
                let mut loaded = idx.walking.lock().unwrap_or_else(|e| e.into_inner());
                rewrite(&path, &live)?;
                *idx.set.write().unwrap_or_else(|e| e.into_inner()) = live;
                *loaded = true;
                Ok(())
            }
            None if path.exists() => rewrite(&path, &live),
            None => Ok(()),
        }
    }

    /// The blobs this bucket's versions (from the head and the pinned
    /// roots) reach that `known` lacks, children before what names them.
    /// A version or directory of `known` is taken as indexed with all it
    /// reaches; one that does not open with this bucket's keys (or is not
    /// here) is left out.
    fn blobs_not_in(&self, known: &HashSet<Hash>) -> Result<Vec<Hash>> {
        let pruned = self.core.pruned()?;
        let mut versions = vec![self.head()?];
        versions.extend(self.core.roots()?);
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        while let Some(v) = versions.pop() {
            if known.contains(&v) || pruned.contains(&v) || !seen.insert(v) {
                continue;
            }
            // Checked to be this bucket's (and signed by a member of it).
            let Ok(m) = self.core.load_manifest(&v) else {
                continue;
            };
            out.push(v);
            versions.extend(m.parents());
            let Ok(key) = self.core.open_root_key(&m) else {
                continue;
            };
            let mut stack = vec![Link {
                hash: m.body.root,
                key,
            }];
            while let Some(link) = stack.pop() {
                if known.contains(&link.hash) || seen.contains(&link.hash) {
                    continue;
                }
                let Ok(node) = DirNode::load_cached(&self.core.store, &link) else {
                    continue;
                };
                seen.insert(link.hash);
                out.push(link.hash);
                stack.extend(node.links);
                for e in node.entries {
                    match e.kind {
                        EntryKind::File(f) => {
                            for c in f.chunks.blobs() {
                                if !known.contains(&c) && seen.insert(c) {
                                    out.push(c);
                                }
                            }
                        }
                        EntryKind::Dir(l) => stack.push(l),
                        EntryKind::Symlink(_) | EntryKind::Special { .. } | EntryKind::Shared => {}
                    }
                }
            }
        }
        // Parents after their children: a file cut short keeps no directory
        // whose subtree it lost.
        out.reverse();
        Ok(out)
    }
}
