//! Inodes the user of the mount holds on to: a pinned file or symlink that
//! is unlinked (or renamed over) stays alive as an orphan, readable and
//! writable, until it is unpinned (POSIX: an unlinked file lives until its
//! last close). The user decides what "in use" means; the FUSE adapter
//! pins what the kernel holds references to (`fuse::lookups`).

use super::inodes::{Body, Inode};
use super::{Ino, Mount, ROOT_INO};

impl Mount {
    /// Keep `ino` alive while it is in use. Pinning a pinned inode does
    /// nothing: one [`Mount::unpin`] releases it.
    pub fn pin(&mut self, ino: Ino) {
        self.pinned.insert(ino);
    }

    /// `ino` is no longer in use; an orphan is gone for good.
    pub fn unpin(&mut self, ino: Ino) {
        if !self.pinned.remove(&ino) {
            return;
        }
        if self.orphans.remove(&ino) {
            if let Some(Inode {
                body: Body::File(f),
                ..
            }) = self.inodes.remove(&ino)
            {
                let bytes = f.allocated(self.io.chunk_size);
                self.orphan_bytes = self.orphan_bytes.saturating_sub(bytes);
            }
        }
    }

    /// The names from the root to `ino`, if it is in the tree as loaded:
    /// `None` for an orphan (unlinked, no name leads to it) or an inode
    /// this mount does not know.
    pub fn names_to(&self, ino: Ino) -> Option<Vec<Vec<u8>>> {
        if self.orphans.contains(&ino) {
            return None;
        }
        let mut names = Vec::new();
        let mut cur = ino;
        while cur != ROOT_INO {
            let n = self.inodes.get(&cur)?;
            names.push(n.name.clone());
            cur = n.parent;
            if names.len() > 4096 {
                return None;
            }
        }
        names.reverse();
        Some(names)
    }
}
