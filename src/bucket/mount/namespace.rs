//! Names: create, mkdir, symlink, mknod, link, unlink, rmdir and rename,
//! and the edits of the inode table they are made of.

use std::collections::BTreeMap;

use super::inodes::{Body, DirData, Inode, SharedNames};
use super::{Attr, FileKind, Ino, Mount, ROOT_INO};
use crate::bucket::chunks::FileData;
use crate::bucket::error::{BucketError, Result};
use crate::bucket::journal::Change;
use crate::bucket::links;
use crate::bucket::names::validate_name;
use crate::bucket::ops::Op;
use crate::bucket::tree::{Entry, EntryKind, Meta, SpecialKind};

/// Longest symlink target, as Linux's PATH_MAX.
const SYMLINK_MAX: usize = 4096;

/// `rename` flags, as renameat2(2).
#[derive(Clone, Copy, Debug, Default)]
pub struct RenameFlags {
    pub no_replace: bool,
    pub exchange: bool,
}

impl Mount {
    pub fn create(
        &mut self,
        parent: Ino,
        name: &[u8],
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<Attr> {
        self.start_change()?;
        let meta = Meta::new_at(mode, uid, gid, self.writer(), self.now());
        let key = self.fresh_key()?;
        let ino = self.add_entry(parent, name, meta, Body::File(FileData::empty_with(key)))?;
        self.log(Op::Create {
            path: self.path_of(ino),
        });
        self.record(|| Change::Create {
            parent,
            name: name.to_vec(),
            mode,
            uid,
            gid,
        });
        self.getattr(ino)
    }

    pub fn mkdir(
        &mut self,
        parent: Ino,
        name: &[u8],
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<Attr> {
        self.start_change()?;
        let body = Body::Dir(DirData {
            key: self.fresh_key()?,
            stored: None,
            children: Some(BTreeMap::new()),
            subdirs: 0,
        });
        let meta = Meta::new_at(mode, uid, gid, self.writer(), self.now());
        let ino = self.add_entry(parent, name, meta, body)?;
        self.inodes.get_mut(&ino).expect("just added").dirty = true;
        self.log(Op::Mkdir {
            path: self.path_of(ino),
        });
        self.record(|| Change::Mkdir {
            parent,
            name: name.to_vec(),
            mode,
            uid,
            gid,
        });
        self.getattr(ino)
    }

    pub fn symlink(
        &mut self,
        parent: Ino,
        name: &[u8],
        target: &[u8],
        uid: u32,
        gid: u32,
    ) -> Result<Attr> {
        self.start_change()?;
        if target.is_empty() || target.len() > SYMLINK_MAX || target.contains(&0) {
            return Err(BucketError::InvalidArgument(
                "symlink target must be 1..4096 bytes without NUL".into(),
            ));
        }
        let meta = Meta::new_at(0o777, uid, gid, self.writer(), self.now());
        let ino = self.add_entry(parent, name, meta, Body::Symlink(target.to_vec()))?;
        self.log(Op::Symlink {
            path: self.path_of(ino),
        });
        self.record(|| Change::Symlink {
            parent,
            name: name.to_vec(),
            target: target.to_vec(),
            uid,
            gid,
        });
        self.getattr(ino)
    }

    /// Create a FIFO, socket or device node (what mknod(2) and a unix
    /// socket's bind(2) make). `mode` holds permission bits only.
    #[allow(clippy::too_many_arguments)]
    pub fn mknod(
        &mut self,
        parent: Ino,
        name: &[u8],
        kind: SpecialKind,
        mode: u32,
        rdev: u64,
        uid: u32,
        gid: u32,
    ) -> Result<Attr> {
        self.start_change()?;
        let rdev = match kind {
            SpecialKind::CharDevice | SpecialKind::BlockDevice => rdev,
            SpecialKind::Fifo | SpecialKind::Socket => 0,
        };
        let meta = Meta::new_at(mode, uid, gid, self.writer(), self.now());
        let ino = self.add_entry(parent, name, meta, Body::Special { kind, rdev })?;
        self.log(Op::Mknod {
            path: self.path_of(ino),
        });
        self.record(|| Change::Mknod {
            parent,
            name: name.to_vec(),
            kind,
            mode,
            rdev,
            uid,
            gid,
        });
        self.getattr(ino)
    }

    /// Give `ino` another name, `new_name` in `new_parent` (link(2)). The
    /// file moves into the link table the first time it gets a second name.
    pub fn link(&mut self, ino: Ino, new_parent: Ino, new_name: &[u8]) -> Result<Attr> {
        self.start_change()?;
        validate_name(new_name)?;
        let inode = self.inode(ino)?;
        if inode.kind() == FileKind::Dir {
            return Err(BucketError::NotPermitted("hard links to directories"));
        }
        if self.orphans.contains(&ino) {
            return Err(BucketError::NotFound);
        }
        if self.child(new_parent, new_name)?.is_some() {
            return Err(BucketError::Exists);
        }
        if self.inodes[&ino].shared.is_none() {
            // Its entry becomes a name of the table's file.
            let inode = self.inodes.get_mut(&ino).expect("checked above");
            inode.shared = Some(SharedNames {
                nlink: 1,
                names: vec![(inode.parent, inode.name.clone())],
            });
            let parent = inode.parent;
            self.link_table.insert(
                ino,
                Entry {
                    name: links::table_name(ino),
                    ino,
                    meta: inode.meta.clone(),
                    kind: EntryKind::Shared,
                },
            );
            self.mark_dirty(parent);
        }
        self.set_child(new_parent, new_name, ino);
        let writer = self.writer();
        let now = self.now();
        let inode = self.inodes.get_mut(&ino).expect("checked above");
        let shared = inode.shared.as_mut().expect("made shared above");
        shared.nlink += 1;
        shared.names.push((new_parent, new_name.to_vec()));
        inode.meta.ctime = now;
        inode.meta.touch(writer);
        self.entries += 1;
        self.touch_dir(new_parent);
        self.links_changed();
        let from = self.path_of(ino);
        let to = format!(
            "{}/{}",
            self.path_of(new_parent).trim_end_matches('/'),
            String::from_utf8_lossy(new_name)
        );
        self.log(Op::Link { from, to });
        self.record(|| Change::Link {
            ino,
            new_parent,
            new_name: new_name.to_vec(),
        });
        self.getattr(ino)
    }

    /// Remove the name `name` of `ino` from `dir`: one name of a hard-linked
    /// file goes and the others stay; otherwise the inode goes (or becomes
    /// an orphan while pinned).
    fn remove_name(&mut self, dir: Ino, name: &[u8], ino: Ino) {
        self.detach(dir, name);
        let many = self.inodes[&ino]
            .shared
            .as_ref()
            .is_some_and(|s| s.nlink > 1);
        if !many {
            self.drop_subtree(ino);
            return;
        }
        let writer = self.writer();
        let now = self.now();
        let inode = self.inodes.get_mut(&ino).expect("present");
        let shared = inode.shared.as_mut().expect("checked above");
        shared.nlink -= 1;
        shared.names.retain(|(d, n)| !(*d == dir && n == name));
        if inode.parent == dir && inode.name == name {
            // Show it under a name it still has (if one is loaded; else the
            // old one stays for logs until another is looked up).
            if let Some((d, n)) = shared.names.first() {
                inode.parent = *d;
                inode.name = n.clone();
            }
        }
        inode.meta.ctime = now;
        inode.meta.touch(writer);
        self.entries = self.entries.saturating_sub(1);
        self.links_changed();
    }

    /// The name `(dir, name)` of `ino` is now `(new_dir, new_name)`.
    fn move_name(&mut self, ino: Ino, dir: Ino, name: &[u8], new_dir: Ino, new_name: &[u8]) {
        self.reparent(ino, new_dir, new_name);
        let is_shared = self.inodes.get(&ino).is_some_and(|n| n.shared.is_some());
        if is_shared {
            let shared = self
                .inodes
                .get_mut(&ino)
                .and_then(|n| n.shared.as_mut())
                .expect("checked above");
            for (d, n) in shared.names.iter_mut() {
                if *d == dir && n == name {
                    *d = new_dir;
                    *n = new_name.to_vec();
                }
            }
            self.links_changed();
        }
    }

    pub fn unlink(&mut self, parent: Ino, name: &[u8]) -> Result<()> {
        self.start_change()?;
        validate_name(name)?;
        let ino = self.child(parent, name)?.ok_or(BucketError::NotFound)?;
        if self.inodes[&ino].kind() == FileKind::Dir {
            return Err(BucketError::IsADirectory);
        }
        let path = self.path_of(ino);
        self.remove_name(parent, name, ino);
        self.touch_dir(parent);
        self.log(Op::Unlink { path });
        self.record(|| Change::Unlink {
            parent,
            name: name.to_vec(),
        });
        Ok(())
    }

    pub fn rmdir(&mut self, parent: Ino, name: &[u8]) -> Result<()> {
        self.start_change()?;
        validate_name(name)?;
        let ino = self.child(parent, name)?.ok_or(BucketError::NotFound)?;
        if self.inodes[&ino].kind() != FileKind::Dir {
            return Err(BucketError::NotADirectory);
        }
        if !self.children(ino)?.is_empty() {
            return Err(BucketError::NotEmpty);
        }
        let path = self.path_of(ino);
        self.detach(parent, name);
        self.drop_subtree(ino);
        self.touch_dir(parent);
        self.log(Op::Rmdir { path });
        self.record(|| Change::Rmdir {
            parent,
            name: name.to_vec(),
        });
        Ok(())
    }

    pub fn rename(
        &mut self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: RenameFlags,
    ) -> Result<()> {
        self.start_change()?;
        validate_name(name)?;
        validate_name(new_name)?;
        if flags.exchange && flags.no_replace {
            return Err(BucketError::InvalidArgument(
                "RENAME_EXCHANGE and RENAME_NOREPLACE together".into(),
            ));
        }
        let src = self.child(parent, name)?.ok_or(BucketError::NotFound)?;
        let dst = self.child(new_parent, new_name)?;
        let src_is_dir = self.inodes[&src].kind() == FileKind::Dir;
        if src_is_dir && self.is_ancestor(src, new_parent) {
            return Err(BucketError::InvalidArgument(
                "cannot move a directory into itself".into(),
            ));
        }
        let from = self.path_of(src);
        if flags.exchange {
            let dst = dst.ok_or(BucketError::NotFound)?;
            if dst == src {
                // Two names of one hard-linked file: nothing to swap.
                return Ok(());
            }
            if self.inodes[&dst].kind() == FileKind::Dir && self.is_ancestor(dst, parent) {
                return Err(BucketError::InvalidArgument(
                    "cannot move a directory into itself".into(),
                ));
            }
            self.set_child(parent, name, dst);
            self.set_child(new_parent, new_name, src);
            self.move_name(dst, new_parent, new_name, parent, name);
            self.move_name(src, parent, name, new_parent, new_name);
        } else {
            if let Some(dst) = dst {
                if dst == src {
                    return Ok(());
                }
                if flags.no_replace {
                    return Err(BucketError::Exists);
                }
                let dst_is_dir = self.inodes[&dst].kind() == FileKind::Dir;
                match (src_is_dir, dst_is_dir) {
                    (true, false) => return Err(BucketError::NotADirectory),
                    (false, true) => return Err(BucketError::IsADirectory),
                    (true, true) if !self.children(dst)?.is_empty() => {
                        return Err(BucketError::NotEmpty)
                    }
                    _ => {}
                }
                self.remove_name(new_parent, new_name, dst);
            }
            self.detach(parent, name);
            self.set_child(new_parent, new_name, src);
            self.move_name(src, parent, name, new_parent, new_name);
        }
        self.touch_dir(parent);
        self.touch_dir(new_parent);
        let to = self.path_of(src);
        self.log(Op::Rename { from, to });
        self.record(|| Change::rename(parent, name, new_parent, new_name, flags));
        Ok(())
    }

    fn add_entry(&mut self, parent: Ino, name: &[u8], meta: Meta, body: Body) -> Result<Ino> {
        self.check_writable()?;
        if self.child(parent, name)?.is_some() {
            return Err(BucketError::Exists);
        }
        let ino = self.fresh_ino()?;
        self.inodes.insert(
            ino,
            Inode {
                parent,
                name: name.to_vec(),
                meta,
                body,
                dirty: false,
                shared: None,
            },
        );
        self.set_child(parent, name, ino);
        self.entries += 1;
        self.touch_dir(parent);
        Ok(ino)
    }

    fn set_child(&mut self, dir: Ino, name: &[u8], ino: Ino) {
        let is_dir =
            |m: &Self, i: Ino| matches!(m.inodes.get(&i).map(|n| &n.body), Some(Body::Dir(_)));
        let old = match &self.inodes.get(&dir).map(|n| &n.body) {
            Some(Body::Dir(DirData {
                children: Some(c), ..
            })) => c.get(name).copied(),
            _ => None,
        };
        let delta = is_dir(self, ino) as i64 - old.is_some_and(|o| is_dir(self, o)) as i64;
        if let Some(Inode {
            body:
                Body::Dir(DirData {
                    children: Some(c),
                    subdirs,
                    ..
                }),
            ..
        }) = self.inodes.get_mut(&dir)
        {
            c.insert(name.to_vec(), ino);
            *subdirs = (*subdirs as i64 + delta) as u32;
        }
    }

    fn detach(&mut self, dir: Ino, name: &[u8]) {
        let removed_dir = match &self.inodes.get(&dir).map(|n| &n.body) {
            Some(Body::Dir(DirData {
                children: Some(c), ..
            })) => c
                .get(name)
                .is_some_and(|i| matches!(self.inodes.get(i).map(|n| &n.body), Some(Body::Dir(_)))),
            _ => false,
        };
        if let Some(Inode {
            body:
                Body::Dir(DirData {
                    children: Some(c),
                    subdirs,
                    ..
                }),
            ..
        }) = self.inodes.get_mut(&dir)
        {
            if c.remove(name).is_some() && removed_dir {
                *subdirs -= 1;
            }
        }
    }

    fn reparent(&mut self, ino: Ino, parent: Ino, name: &[u8]) {
        let writer = self.writer();
        let now = self.now();
        if let Some(n) = self.inodes.get_mut(&ino) {
            n.parent = parent;
            n.name = name.to_vec();
            n.meta.ctime = now;
            n.meta.touch(writer);
        }
    }

    /// Remove `ino` and everything under it from the table and the totals.
    /// A pinned file or symlink stays as an orphan, outside the tree (its
    /// bytes move from the tree's total to `orphan_bytes`) until unpinned.
    fn drop_subtree(&mut self, ino: Ino) {
        let mut stack = vec![ino];
        while let Some(i) = stack.pop() {
            if self.link_table.remove(&i).is_some() {
                self.links_changed();
            }
            let keep = self.pinned.contains(&i)
                && self
                    .inodes
                    .get(&i)
                    .is_some_and(|n| n.kind() != FileKind::Dir);
            if keep {
                self.entries = self.entries.saturating_sub(1);
                if let Some(Body::File(f)) = self.inodes.get(&i).map(|n| &n.body) {
                    let bytes = f.allocated(self.io.chunk_size);
                    self.used_bytes = self.used_bytes.saturating_sub(bytes);
                    self.orphan_bytes += bytes;
                }
                self.orphans.insert(i);
                continue;
            }
            if let Some(n) = self.inodes.remove(&i) {
                self.entries = self.entries.saturating_sub(1);
                match n.body {
                    Body::File(f) => {
                        let bytes = f.allocated(self.io.chunk_size);
                        self.used_bytes = self.used_bytes.saturating_sub(bytes)
                    }
                    Body::Dir(DirData {
                        children: Some(c), ..
                    }) => stack.extend(c.values()),
                    _ => {}
                }
            }
        }
    }

    /// True if `ancestor` is `ino` or one of its ancestors.
    fn is_ancestor(&self, ancestor: Ino, mut ino: Ino) -> bool {
        loop {
            if ino == ancestor {
                return true;
            }
            if ino == ROOT_INO {
                return false;
            }
            ino = self.inodes.get(&ino).map(|n| n.parent).unwrap_or(ROOT_INO);
        }
    }
}
