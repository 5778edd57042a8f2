//! Sealing the tree: what a change marks to be rewritten, and the writing
//! of dirty chunks, directories (bottom-up) and the link table to the store.

use std::collections::HashMap;

use super::inodes::{Body, Inode};
use super::{FileKind, Ino, Mount, ROOT_INO};
use crate::bucket::chunks::SealedChunk;
use crate::bucket::error::Result;
use crate::bucket::links;
use crate::bucket::tree::{DirNode, Entry, EntryKind, KeyBytes, Link};
use crate::store::Hash;

impl Mount {
    /// A hard-linked file changed: the table is rewritten on save.
    pub(super) fn links_changed(&mut self) {
        self.links_dirty = true;
        self.changed = true;
        self.mark_dirty(ROOT_INO);
    }

    /// Seal and store every dirty chunk (file bytes become durable blobs),
    /// without writing a new version.
    pub fn flush_data(&mut self) -> Result<()> {
        // Gather every file's dirty chunks so many small files seal in parallel.
        let mut jobs = Vec::new();
        let mut first_err = None;
        for (ino, inode) in self.inodes.iter_mut() {
            if let Body::File(f) = &mut inode.body {
                if f.is_dirty() {
                    let key = f.key.key();
                    match f.take_dirty(&self.io, false) {
                        Ok(dirty) => {
                            jobs.extend(dirty.into_iter().map(|chunk| (*ino, key.clone(), chunk)))
                        }
                        Err(e) => {
                            first_err.get_or_insert(e);
                        }
                    }
                }
            }
        }
        if jobs.is_empty() {
            return first_err.map_or(Ok(()), Err);
        }
        let mut by_file: HashMap<Ino, Vec<SealedChunk>> = HashMap::new();
        for (ino, chunk, r) in self.io.seal_many(jobs) {
            by_file.entry(ino).or_default().push((chunk, r));
        }
        crate::crash_point::hit("chunks-sealed");
        for (ino, results) in by_file {
            if let Some(Inode {
                body: Body::File(f),
                ..
            }) = self.inodes.get_mut(&ino)
            {
                if let Err(e) = f.apply_sealed(&self.io, results) {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// A directory's entry list changed: bump its times and mark it dirty.
    pub(super) fn touch_dir(&mut self, dir: Ino) {
        let now = self.now();
        let writer = self.writer();
        if let Some(n) = self.inodes.get_mut(&dir) {
            n.meta.mtime = now;
            n.meta.ctime = now;
            n.meta.touch(writer);
        }
        self.mark_dirty(dir);
    }

    /// `ino`'s entry changed: its directory (and, for a directory, itself) must be rewritten.
    pub(super) fn entry_changed(&mut self, ino: Ino) {
        if self.orphans.contains(&ino) {
            return;
        }
        if self.inodes.get(&ino).is_some_and(|n| n.shared.is_some()) {
            // Its content and metadata live in the link table.
            self.links_changed();
            return;
        }
        let parent = self.inodes.get(&ino).map(|n| n.parent).unwrap_or(ROOT_INO);
        if ino == ROOT_INO || self.inodes[&ino].kind() == FileKind::Dir {
            self.mark_dirty(ino);
        }
        self.mark_dirty(parent);
        self.changed = true;
    }

    pub(super) fn mark_dirty(&mut self, mut dir: Ino) {
        loop {
            let Some(n) = self.inodes.get_mut(&dir) else {
                return;
            };
            if n.dirty && dir != ROOT_INO {
                // Ancestors of a dirty directory are already dirty.
                return;
            }
            n.dirty = true;
            if dir == ROOT_INO {
                return;
            }
            dir = n.parent;
        }
    }

    /// Seal the link table if it changed (refreshing the entries of loaded
    /// shared files); its link, or `None` when no file has several names.
    fn persist_links(&mut self) -> Result<Option<Link>> {
        if !self.links_dirty {
            return Ok(self.links_stored.clone());
        }
        let ids: Vec<Ino> = self.link_table.keys().copied().collect();
        for id in ids {
            let Some(inode) = self.inodes.get(&id) else {
                continue;
            };
            let Some(shared) = &inode.shared else {
                continue;
            };
            let kind = match &inode.body {
                Body::File(f) => EntryKind::File(f.to_node()),
                Body::Symlink(t) => EntryKind::Symlink(t.clone()),
                Body::Special { kind, rdev } => EntryKind::Special {
                    kind: *kind,
                    rdev: *rdev,
                },
                Body::Dir(_) => unreachable!("directories have one name"),
            };
            let entry = Entry {
                name: links::table_name(id),
                ino: id,
                meta: links::with_nlink(&inode.meta, shared.nlink),
                kind,
            };
            self.link_table.insert(id, entry);
        }
        let stored = if self.link_table.is_empty() {
            None
        } else {
            let node = links::to_node(self.link_table.values().cloned());
            let key = match &self.links_stored {
                Some(l) => l.key.clone(),
                None => KeyBytes::generate()?,
            };
            let hash = node.store(&self.core.store, &key)?;
            Some(Link { hash, key })
        };
        self.links_stored = stored.clone();
        self.links_dirty = false;
        Ok(stored)
    }

    /// Seal directory `ino` (and dirty directories below it); returns its address.
    pub(super) fn persist_dir(&mut self, ino: Ino) -> Result<Hash> {
        {
            let n = &self.inodes[&ino];
            if let Body::Dir(d) = &n.body {
                if !n.dirty {
                    if let Some(h) = d.stored {
                        return Ok(h);
                    }
                }
            }
        }
        let children: Vec<(Vec<u8>, Ino)> = self
            .children(ino)?
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let mut entries = Vec::with_capacity(children.len());
        for (name, child) in children {
            if self.inodes[&child].shared.is_some() {
                entries.push(Entry {
                    name,
                    ino: child,
                    meta: links::name_meta(),
                    kind: EntryKind::Shared,
                });
                continue;
            }
            let kind = match &self.inodes[&child].body {
                Body::File(f) => EntryKind::File(f.to_node()),
                Body::Symlink(t) => EntryKind::Symlink(t.clone()),
                Body::Special { kind, rdev } => EntryKind::Special {
                    kind: *kind,
                    rdev: *rdev,
                },
                Body::Dir(d) => {
                    let key = d.key.clone();
                    let hash = self.persist_dir(child)?;
                    EntryKind::Dir(Link { hash, key })
                }
            };
            entries.push(Entry {
                name,
                ino: child,
                meta: self.inodes[&child].meta.clone(),
                kind,
            });
        }
        let links = if ino == ROOT_INO {
            self.persist_links()?
        } else {
            None
        };
        let inode = &self.inodes[&ino];
        let node = DirNode {
            root_meta: (ino == ROOT_INO).then(|| inode.meta.clone()),
            links,
            entries,
        };
        let key = match &inode.body {
            Body::Dir(d) => d.key.clone(),
            _ => unreachable!("persist_dir on a directory"),
        };
        let hash = node.store(&self.core.store, &key)?;
        let inode = self.inodes.get_mut(&ino).expect("present");
        inode.dirty = false;
        if let Body::Dir(d) = &mut inode.body {
            d.stored = Some(hash);
        }
        Ok(hash)
    }
}
