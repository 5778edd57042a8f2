//! Files of hex hashes, one a line (`PRUNED`, `ROOTS`), read through a
//! process-wide cache.
//!
//! `PRUNED` grows to thousands of lines on a volume that makes versions
//! all day, and every chain check, walk and pull read and parsed it again:
//! a quarter of a node's sync CPU under three RWX writers. The cache is
//! keyed by path and checked against the file's inode, length and mtime
//! (every write is an atomic rename, so a new file is a new inode); this
//! process's own writes go through it as well.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use super::error::{BucketError, Result};
use crate::store::Hash;

/// What identifies one written state of a file.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }
}

type Cache = Mutex<HashMap<PathBuf, (Stamp, Arc<HashSet<Hash>>)>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(Cache::default)
}

/// The hashes listed in `path` (missing = none), shared: parsed again only
/// when the file changed.
pub fn read_shared(path: &Path) -> Result<Arc<HashSet<Hash>>> {
    let stamp = match std::fs::metadata(path) {
        Ok(meta) => Stamp::of(&meta),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            cache()
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(path);
            return Ok(Arc::default());
        }
        Err(e) => return Err(BucketError::io(path)(e)),
    };
    if let Some((s, set)) = cache().lock().unwrap_or_else(|p| p.into_inner()).get(path) {
        if *s == stamp {
            return Ok(set.clone());
        }
    }
    let set = Arc::new(parse(path)?);
    // Stamped as read before the parse: a change in between is seen as a
    // change at the next read, never hidden.
    cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(path.to_path_buf(), (stamp, set.clone()));
    Ok(set)
}

/// The hashes listed in `path`, to change and write back.
pub fn read(path: &Path) -> Result<HashSet<Hash>> {
    Ok(read_shared(path)?.as_ref().clone())
}

/// Write `hashes` to `path` (sorted, atomically).
pub fn write(path: &Path, hashes: &HashSet<Hash>) -> Result<()> {
    let mut sorted: Vec<String> = hashes.iter().map(Hash::to_hex).collect();
    sorted.sort();
    let mut text = sorted.join("\n");
    text.push('\n');
    super::write_atomic(path, text.as_bytes())?;
    // Taken in at once: the next read finds it without parsing.
    if let Ok(meta) = std::fs::metadata(path) {
        cache().lock().unwrap_or_else(|p| p.into_inner()).insert(
            path.to_path_buf(),
            (Stamp::of(&meta), Arc::new(hashes.clone())),
        );
    }
    Ok(())
}

fn parse(path: &Path) -> Result<HashSet<Hash>> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                Hash::from_hex(l.trim()).map_err(|reason| BucketError::Format {
                    what: "list of versions",
                    reason,
                })
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashSet::new()),
        Err(e) => Err(BucketError::io(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(b: u8) -> Hash {
        Hash([b; 32])
    }

    /// A list written here, by another writer, or removed reads as it is
    /// on disk, whatever was cached before.
    #[test]
    fn a_list_reads_as_the_file_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("PRUNED");
        assert!(read_shared(&path).unwrap().is_empty());
        write(&path, &HashSet::from([h(1), h(2)])).unwrap();
        assert_eq!(*read_shared(&path).unwrap(), HashSet::from([h(1), h(2)]));
        // Another process's write (an atomic rename of a new file).
        let tmp = dir.path().join("tmp");
        std::fs::write(&tmp, format!("{}\n", h(3).to_hex())).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(read(&path).unwrap(), HashSet::from([h(3)]));
        std::fs::remove_file(&path).unwrap();
        assert!(read(&path).unwrap().is_empty());
        std::fs::write(&path, "not hex\n").unwrap();
        assert!(read(&path).is_err());
    }
}
