//! Directory nodes decrypted and decoded lately, shared by the process.
//!
//! Under RWX load one root directory is opened again and again: by the
//! pull that fetched it (compared with the local head's), by the merge
//! (local, remote and base), by the blob index and by the peer's bundle
//! answer. A root of a few hundred entries cost a verify, a decrypt and a
//! decode each time: 18% of a node's CPU with three writers. A node is
//! keyed by its address *and* its key (a digest of it), so a load with
//! another key still fails as the blob does; what is cached was verified
//! against its address when it was read (or is what a merge just wrote).
//! A mount's reads and the store's
//! checks (`verify`, GC) load from the disk, so a blob damaged there is
//! still found.

use std::sync::{Arc, Mutex, OnceLock};

use super::tree::{DirNode, Link};
use crate::cache::BoundedMap;
use crate::store::Hash;

/// Nodes kept: a few versions' roots and the directories a merge walks.
const CAPACITY: usize = 64;

type Key = (Hash, [u8; 32]);

fn cache() -> &'static Mutex<BoundedMap<Key, Arc<DirNode>>> {
    static CACHE: OnceLock<Mutex<BoundedMap<Key, Arc<DirNode>>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(BoundedMap::new(CAPACITY)))
}

fn key_of(link: &Link) -> Key {
    (link.hash, *blake3::hash(&link.key.0).as_bytes())
}

/// The node at `link`, if it was loaded lately.
pub(super) fn get(link: &Link) -> Option<Arc<DirNode>> {
    cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key_of(link))
}

/// Keep `node`, just loaded (verified, opened and checked) from `link`.
pub(super) fn keep(link: &Link, node: Arc<DirNode>) {
    cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key_of(link), node);
}

#[cfg(test)]
mod tests {
    use super::super::tree::{DirNode, KeyBytes, Link};
    use crate::store::BlobStore;

    /// A node loaded once is served again, but only for its own key: the
    /// same address with another key fails as it did before.
    #[test]
    fn a_cached_node_opens_only_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let key = KeyBytes::generate().unwrap();
        let node = DirNode::default();
        let link = Link {
            hash: node.store(&store, &key).unwrap(),
            key,
        };
        assert_eq!(DirNode::load_cached(&store, &link).unwrap(), node);
        assert!(super::get(&link).is_some(), "kept after the first load");
        let wrong = Link {
            hash: link.hash,
            key: KeyBytes::generate().unwrap(),
        };
        assert!(DirNode::load_cached(&store, &wrong).is_err());
        // Gone from the disk: still served from memory, checked once.
        store.remove(&link.hash).unwrap();
        assert_eq!(DirNode::load_cached(&store, &link).unwrap(), node);
        assert!(DirNode::load(&store, &link).is_err(), "load reads the disk");
    }
}
