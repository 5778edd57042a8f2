//! The kernel's lookup counts: every entry the adapter hands the kernel
//! (lookup, create, mkdir, mknod, symlink, link, readdirplus) is one more
//! reference the kernel holds on that inode, until FORGET gives `n` of them
//! back. This is FUSE's business, so it is counted here, not in the bucket:
//! the Mount is only told to pin an inode when the kernel takes its first
//! reference and to unpin it when the last one is forgotten (which keeps a
//! file unlinked while open alive as an orphan).
//!
//! The counts also outlive a process: on handover ([`Lookups::refs`]) each
//! referenced inode is written with the names leading to it, and the
//! successor takes them over ([`Lookups::adopt`]) so it answers for the
//! same inode numbers (`fuse::handover`).
//!
//! Callers lock the Mount before the counts (`LiveMount::lookups`), and
//! count under the same Mount lock that found or made the entry, so no
//! unlink slips in between.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::bucket::{Ino, Mount, ROOT_INO};

/// A reference the kernel holds on an inode, and the names leading to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelRef {
    pub ino: Ino,
    pub count: u64,
    pub path: Vec<Vec<u8>>,
}

/// How many references the kernel holds on each inode (none: not listed).
#[derive(Debug, Default)]
pub struct Lookups {
    counts: HashMap<Ino, u64>,
}

impl Lookups {
    /// The kernel took one more reference to `ino`.
    pub fn looked_up(&mut self, m: &mut Mount, ino: Ino) {
        self.add(m, ino, 1);
    }

    fn add(&mut self, m: &mut Mount, ino: Ino, n: u64) {
        let count = self.counts.entry(ino).or_default();
        if *count == 0 {
            m.pin(ino);
        }
        *count += n;
    }

    /// The kernel gave back `n` references to `ino` (FORGET); with none
    /// left the Mount may let it go.
    pub fn forget(&mut self, m: &mut Mount, ino: Ino, n: u64) {
        let Some(count) = self.counts.get_mut(&ino) else {
            return;
        };
        *count = count.saturating_sub(n);
        if *count == 0 {
            self.counts.remove(&ino);
            m.unpin(ino);
        }
    }

    /// How many references the kernel holds on `ino`.
    pub fn count(&self, ino: Ino) -> u64 {
        self.counts.get(&ino).copied().unwrap_or(0)
    }

    /// The references the kernel holds, each with the names leading to its
    /// inode from the root: what a successor process needs to answer for
    /// the same inode numbers. Orphans (unlinked, still open) have no path
    /// and are left out.
    pub fn refs(&self, m: &Mount) -> Vec<KernelRef> {
        self.counts
            .iter()
            .filter_map(|(&ino, &count)| {
                let path = m.names_to(ino)?;
                Some(KernelRef { ino, count, path })
            })
            .collect()
    }

    /// Take over references a predecessor held: each path is looked up
    /// (loading the directories on it), and counted when it still leads to
    /// the same inode. Returns how many were taken over.
    pub fn adopt(&mut self, m: &mut Mount, refs: &[KernelRef]) -> usize {
        let mut adopted = 0;
        for r in refs {
            let found = r
                .path
                .iter()
                .try_fold(ROOT_INO, |ino, name| m.lookup(ino, name).map(|a| a.ino));
            if found.is_ok_and(|ino| ino == r.ino) {
                self.add(m, r.ino, r.count);
                adopted += 1;
            }
        }
        adopted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::{test_bucket, BucketOptions};

    fn mount(dir: &std::path::Path) -> (crate::bucket::Bucket, Mount) {
        let b = test_bucket(dir, BucketOptions::default().chunk_size);
        let m = b.mount().unwrap();
        (b, m)
    }

    /// The Mount keeps an unlinked file while the kernel holds any
    /// reference to it, and drops it with the last FORGET.
    #[test]
    fn an_unlinked_file_lives_until_the_last_forget() {
        let dir = tempfile::tempdir().unwrap();
        let (_b, mut m) = mount(dir.path());
        let mut l = Lookups::default();
        let f = m.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap().ino;
        l.looked_up(&mut m, f);
        l.looked_up(&mut m, f);
        m.write(f, 0, b"data").unwrap();
        m.unlink(ROOT_INO, b"f").unwrap();
        assert_eq!(l.count(f), 2);
        l.forget(&mut m, f, 1);
        assert_eq!(m.read(f, 0, 4).unwrap(), b"data", "one reference left");
        l.forget(&mut m, f, 1);
        assert_eq!(l.count(f), 0);
        assert!(m.getattr(f).is_err(), "gone with the last reference");
        assert_eq!(m.usage().used_bytes, 0);
        // A FORGET of an inode not counted (or more than counted) is harmless.
        l.forget(&mut m, f, 5);
        l.forget(&mut m, 12345, 1);
    }

    /// A file never referenced is not kept: unlink removes it at once.
    #[test]
    fn an_unreferenced_file_goes_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let (_b, mut m) = mount(dir.path());
        let mut l = Lookups::default();
        let f = m.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap().ino;
        l.looked_up(&mut m, f);
        l.forget(&mut m, f, 1);
        m.unlink(ROOT_INO, b"f").unwrap();
        assert!(m.getattr(f).is_err());
    }

    /// References handed over carry their counts and paths; orphans are
    /// left out; a successor takes over those whose path still leads to
    /// the same inode, with the same counts.
    #[test]
    fn references_are_handed_over_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let (b, mut m) = mount(dir.path());
        let mut l = Lookups::default();
        let d = m.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
        let f = m.create(d, b"f", 0o644, 0, 0).unwrap().ino;
        let gone = m.create(d, b"gone", 0o644, 0, 0).unwrap().ino;
        let moved = m.create(d, b"moved", 0o644, 0, 0).unwrap().ino;
        for ino in [d, f, f, f, gone, moved] {
            l.looked_up(&mut m, ino);
        }
        m.unlink(d, b"gone").unwrap();
        let mut refs = l.refs(&m);
        refs.sort_by_key(|r| r.ino);
        let want = |ino, count, path: &[&[u8]]| KernelRef {
            ino,
            count,
            path: path.iter().map(|p| p.to_vec()).collect(),
        };
        let mut expected = vec![
            want(d, 1, &[b"d"]),
            want(f, 3, &[b"d", b"f"]),
            want(moved, 1, &[b"d", b"moved"]),
        ];
        expected.sort_by_key(|r| r.ino);
        assert_eq!(refs, expected);
        m.save().unwrap();
        // The successor: a fresh Mount of the head, where `moved` is now
        // another file's name.
        let mut next = b.mount().unwrap();
        crate::bucket::path::resolve(&mut next, "/d").unwrap();
        next.unlink(d, b"moved").unwrap();
        next.create(d, b"moved", 0o644, 0, 0).unwrap();
        let mut l2 = Lookups::default();
        assert_eq!(l2.adopt(&mut next, &refs), 2);
        assert_eq!((l2.count(d), l2.count(f), l2.count(moved)), (1, 3, 0));
        // What was taken over is pinned: unlinked, `f` lives on until the
        // kernel forgets its three references.
        next.unlink(d, b"f").unwrap();
        l2.forget(&mut next, f, 2);
        assert!(next.getattr(f).is_ok());
        l2.forget(&mut next, f, 1);
        assert!(next.getattr(f).is_err());
    }
}
