//! The kernel's references to inodes (its lookup counts), which keep an
//! unlinked file alive as an orphan, and their handover to a successor
//! process (`fuse::handover`).

use super::inodes::{Body, Inode};
use super::{Ino, Mount, ROOT_INO};

/// A reference the kernel holds on an inode, and the names leading to it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KernelRef {
    pub ino: Ino,
    pub count: u64,
    pub path: Vec<Vec<u8>>,
}

impl Mount {
    /// The user of the mount holds one more reference to `ino` (the kernel
    /// answered a lookup with it).
    pub fn pin(&mut self, ino: Ino) {
        *self.pins.entry(ino).or_default() += 1;
    }

    /// The user dropped `n` references to `ino`; an orphan with none left is
    /// gone for good.
    pub fn unpin(&mut self, ino: Ino, n: u64) {
        let Some(count) = self.pins.get_mut(&ino) else {
            return;
        };
        *count = count.saturating_sub(n);
        if *count == 0 {
            self.pins.remove(&ino);
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
    }

    /// The references the kernel holds (lookup counts), each with the names
    /// leading to its inode from the root: what a successor process needs
    /// to answer for the same inode numbers (see `fuse::handover`). Orphans
    /// (unlinked, still open) have no path and are left out.
    pub fn kernel_refs(&self) -> Vec<KernelRef> {
        let mut refs = Vec::new();
        for (&ino, &count) in &self.pins {
            if self.orphans.contains(&ino) {
                continue;
            }
            if let Some(path) = self.name_path(ino) {
                refs.push(KernelRef { ino, count, path });
            }
        }
        refs
    }

    /// Take over references a predecessor held: each path is looked up
    /// (loading the directories on it) and pinned when it still leads to
    /// the same inode. Returns how many were taken over.
    pub fn adopt_kernel_refs(&mut self, refs: &[KernelRef]) -> usize {
        let mut adopted = 0;
        for r in refs {
            let mut ino = ROOT_INO;
            let mut found = true;
            for name in &r.path {
                match self.lookup(ino, name) {
                    Ok(a) => ino = a.ino,
                    Err(_) => {
                        found = false;
                        break;
                    }
                }
            }
            if found && ino == r.ino {
                *self.pins.entry(ino).or_default() += r.count;
                adopted += 1;
            }
        }
        adopted
    }

    /// The names from the root to `ino`, if it is in the tree.
    fn name_path(&self, ino: Ino) -> Option<Vec<Vec<u8>>> {
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
