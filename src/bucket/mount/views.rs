//! What the kernel may have cached, and what it must forget after the tree
//! changed under it (a sync, a merge); a read-only mount following a head.

use std::collections::{BTreeMap, HashMap};

use super::inodes::Body;
use super::{Ino, Mount};
use crate::bucket::error::{BucketError, Result};
use crate::bucket::tree::Timestamp;
use crate::store::Hash;

/// A snapshot of what the kernel may cache (see [`Mount::cached_view`]).
#[derive(Clone, Debug, Default)]
pub struct CachedView {
    attrs: HashMap<Ino, (u64, Timestamp, Timestamp, u32, u32, u32)>,
    names: HashMap<Ino, BTreeMap<Vec<u8>, Ino>>,
}

/// What to tell the kernel after the tree changed under it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Invalidations {
    /// Inodes whose attributes or pages are stale.
    pub inodes: Vec<Ino>,
    /// `(directory, name)` entries that are stale.
    pub entries: Vec<(Ino, Vec<u8>)>,
}

impl Mount {
    /// A read-only mount follows a newer head of its bucket (a sync).
    pub fn follow(&mut self, head: &Hash) -> Result<()> {
        if !self.read_only {
            return Err(BucketError::InvalidArgument(
                "only a read-only mount follows a head; a writable one merges".into(),
            ));
        }
        self.reset_to(*head)
    }

    /// What the kernel may have cached of this mount: each loaded inode's
    /// attributes and each loaded directory's names. Compared with the tree
    /// after a sync ([`Mount::changed_since`]) to know what to invalidate.
    pub fn cached_view(&self) -> CachedView {
        let mut attrs = HashMap::new();
        let mut names = HashMap::new();
        for (ino, n) in &self.inodes {
            let size = match &n.body {
                Body::File(f) => f.size,
                Body::Symlink(t) => t.len() as u64,
                Body::Special { rdev, .. } => *rdev,
                Body::Dir(d) => {
                    if let Some(c) = &d.children {
                        names.insert(*ino, c.clone());
                    }
                    0
                }
            };
            attrs.insert(
                *ino,
                (
                    size,
                    n.meta.mtime,
                    n.meta.ctime,
                    n.meta.mode,
                    n.meta.uid,
                    n.meta.gid,
                ),
            );
        }
        CachedView { attrs, names }
    }

    /// What changed since `before`: inodes whose attributes or content
    /// changed or that are gone, and names added, removed or retargeted
    /// in directories that were loaded.
    pub fn changed_since(&self, before: &CachedView) -> Invalidations {
        let now = self.cached_view();
        let mut out = Invalidations::default();
        for (ino, a) in &before.attrs {
            if now.attrs.get(ino) != Some(a) {
                out.inodes.push(*ino);
            }
        }
        for (dir, old) in &before.names {
            let new = now.names.get(dir);
            for (name, ino) in old {
                if new.and_then(|n| n.get(name)) != Some(ino) {
                    out.entries.push((*dir, name.clone()));
                }
            }
            if let Some(new) = new {
                for name in new.keys().filter(|n| !old.contains_key(*n)) {
                    out.entries.push((*dir, name.clone()));
                }
            }
        }
        out.inodes.sort_unstable();
        out.entries.sort();
        out
    }
}
