//! The inode table: what an inode holds, finding one, and loading a
//! directory's entries from its sealed node the first time it is looked
//! into (or the whole tree at once, for a restarted process).

use std::collections::{BTreeMap, HashSet};

use super::{FileKind, Ino, Mount, ROOT_INO};
use crate::bucket::chunks::FileData;
use crate::bucket::error::{BucketError, Result};
use crate::bucket::links;
use crate::bucket::names::validate_name;
use crate::bucket::tree::{fresh_ino, DirNode, EntryKind, KeyBytes, Link, Meta, SpecialKind};
use crate::store::Hash;

pub(super) enum Body {
    File(FileData),
    Dir(DirData),
    Symlink(Vec<u8>),
    /// A FIFO, socket or device node: metadata only, the kernel serves
    /// opens of it (pipes, sockets) or refuses them (`nodev`).
    Special {
        kind: SpecialKind,
        rdev: u64,
    },
}

pub(super) struct DirData {
    pub(super) key: KeyBytes,
    /// The sealed node this directory was loaded from or last saved as.
    pub(super) stored: Option<Hash>,
    /// `None` until the directory is first looked into.
    pub(super) children: Option<BTreeMap<Vec<u8>, Ino>>,
    /// How many of `children` are directories (for nlink, in O(1)).
    pub(super) subdirs: u32,
}

pub(super) struct Inode {
    /// The entry's directory and name; for a file with several names, one
    /// of them (the others are in `shared`).
    pub(super) parent: Ino,
    pub(super) name: Vec<u8>,
    pub(super) meta: Meta,
    pub(super) body: Body,
    /// For directories: the sealed node must be rewritten on save.
    pub(super) dirty: bool,
    /// Set for a file with several names (kept in the link table).
    pub(super) shared: Option<SharedNames>,
}

/// A hard-linked file's name count and the names of it loaded so far
/// (names in directories not yet looked into are counted, not listed).
pub(super) struct SharedNames {
    pub(super) nlink: u32,
    pub(super) names: Vec<(Ino, Vec<u8>)>,
}

impl Inode {
    pub(super) fn kind(&self) -> FileKind {
        match self.body {
            Body::File(_) => FileKind::File,
            Body::Dir(_) => FileKind::Dir,
            Body::Symlink(_) => FileKind::Symlink,
            Body::Special { kind, .. } => kind.into(),
        }
    }
}

impl Mount {
    /// Replace the whole tree with the root at `link` (used on open and after
    /// a merge or sync). `from_cache`: the root may come from the nodes the
    /// sync and merge paths loaded lately (a mount's first open reads the
    /// disk).
    pub(super) fn install_root(&mut self, link: Link, from_cache: bool) -> Result<()> {
        let node = match from_cache {
            true => DirNode::load_cached(&self.core.store, &link)?,
            false => DirNode::load(&self.core.store, &link)?,
        };
        let meta = node.root_meta.clone().ok_or_else(|| BucketError::Format {
            what: "root directory node",
            reason: "missing root metadata".into(),
        })?;
        let table = match &node.links {
            Some(l) => links::by_ino(DirNode::load(&self.core.store, l)?),
            None => BTreeMap::new(),
        };
        let old_table = std::mem::replace(&mut self.link_table, table);
        let old_links = std::mem::replace(&mut self.links_stored, node.links.clone());
        let old_links_dirty = std::mem::replace(&mut self.links_dirty, false);
        let mut old = std::mem::take(&mut self.inodes);
        // Directories the kernel may have looked into: loaded again below,
        // so the numbers it holds under them keep answering.
        let loaded_before: HashSet<Ino> = old
            .iter()
            .filter(|(_, n)| matches!(&n.body, Body::Dir(d) if d.children.is_some()))
            .map(|(i, _)| *i)
            .collect();
        // Orphans are outside every tree: they outlive the old one (and keep
        // their numbers: an entry of the new tree with the same id is given
        // another, see `fill_children`).
        self.inodes.extend(
            self.orphans
                .iter()
                .filter_map(|i| old.remove(i).map(|n| (*i, n))),
        );
        self.inodes.insert(
            ROOT_INO,
            Inode {
                parent: ROOT_INO,
                name: Vec::new(),
                meta,
                body: Body::Dir(DirData {
                    key: link.key.clone(),
                    stored: Some(link.hash),
                    children: None,
                    subdirs: 0,
                }),
                dirty: false,
                shared: None,
            },
        );
        if let Err(e) = self.fill_children(ROOT_INO, node) {
            // Keep the old tree whole rather than half of the new one.
            self.inodes.remove(&ROOT_INO);
            old.extend(self.inodes.drain());
            self.inodes = old;
            self.link_table = old_table;
            self.links_stored = old_links;
            self.links_dirty = old_links_dirty;
            return Err(e);
        }
        let mut queue = vec![ROOT_INO];
        while let Some(dir) = queue.pop() {
            let subdirs: Vec<Ino> = match &self.inodes[&dir].body {
                Body::Dir(DirData {
                    children: Some(c), ..
                }) => c
                    .values()
                    .filter(|i| loaded_before.contains(i))
                    .copied()
                    .collect(),
                _ => Vec::new(),
            };
            for d in subdirs {
                match self.children(d) {
                    Ok(_) => queue.push(d),
                    Err(e) => {
                        tracing::warn!(bucket = %self.core.id, dir = d, error = %e, "could not load a directory of the new tree")
                    }
                }
            }
        }
        Ok(())
    }

    /// The path of `ino` from the root, for logs and the ops log.
    pub fn path_of(&self, ino: Ino) -> String {
        let mut parts = Vec::new();
        let mut cur = ino;
        while cur != ROOT_INO {
            match self.inodes.get(&cur) {
                Some(n) => {
                    parts.push(String::from_utf8_lossy(&n.name).into_owned());
                    cur = n.parent;
                }
                None => break,
            }
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    }

    /// Load every directory (and so every inode) of the tree: after a
    /// crash the kernel may name any inode it was given before, with no
    /// path to find it by. Costs one read of each directory node.
    pub fn load_all(&mut self) -> Result<usize> {
        let mut pending = vec![ROOT_INO];
        while let Some(dir) = pending.pop() {
            let children: Vec<Ino> = self.children(dir)?.values().copied().collect();
            for child in children {
                if matches!(self.inodes.get(&child).map(|n| &n.body), Some(Body::Dir(_))) {
                    pending.push(child);
                }
            }
        }
        Ok(self.inodes.len())
    }

    pub(super) fn inode(&self, ino: Ino) -> Result<&Inode> {
        self.inodes.get(&ino).ok_or(BucketError::UnknownInode(ino))
    }

    pub(super) fn inode_mut(&mut self, ino: Ino) -> Result<&mut Inode> {
        self.inodes
            .get_mut(&ino)
            .ok_or(BucketError::UnknownInode(ino))
    }

    /// Load directory `ino` if needed and return its children.
    pub(super) fn children(&mut self, ino: Ino) -> Result<&BTreeMap<Vec<u8>, Ino>> {
        let link = match &self.inode(ino)?.body {
            Body::Dir(d) if d.children.is_some() => None,
            Body::Dir(d) => Some(Link {
                hash: d.stored.expect("an unloaded directory has a stored node"),
                key: d.key.clone(),
            }),
            _ => return Err(BucketError::NotADirectory),
        };
        if let Some(link) = link {
            let node = DirNode::load(&self.core.store, &link)?;
            self.fill_children(ino, node)?;
        }
        match &self.inodes[&ino].body {
            Body::Dir(d) => Ok(d.children.as_ref().expect("loaded above")),
            _ => unreachable!("checked to be a directory"),
        }
    }

    /// Create inodes for the entries of a freshly loaded directory node.
    /// Each gets its stored id as its number; an id already taken here (an
    /// orphan's, or a duplicate a merge of two moves of one file left) gets
    /// a number derived from where the entry is instead.
    fn fill_children(&mut self, ino: Ino, node: DirNode) -> Result<()> {
        let mut children = BTreeMap::new();
        let subdirs = node
            .entries
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::Dir(_)))
            .count() as u32;
        let cs = self.io.chunk_size;
        let mut bodies = Vec::with_capacity(node.entries.len());
        let mut shared_names = Vec::new();
        for entry in node.entries {
            let body = match entry.kind {
                EntryKind::File(f) => Body::File(FileData::from_node(&f, cs)?),
                EntryKind::Dir(link) => Body::Dir(DirData {
                    key: link.key,
                    stored: Some(link.hash),
                    children: None,
                    subdirs: 0,
                }),
                EntryKind::Symlink(t) => Body::Symlink(t),
                EntryKind::Special { kind, rdev } => Body::Special { kind, rdev },
                EntryKind::Shared => {
                    shared_names.push((entry.name, entry.ino));
                    continue;
                }
            };
            bodies.push((entry.name, entry.ino, entry.meta, body));
        }
        for (name, id, meta, body) in bodies {
            let mut child = id;
            // A regular entry with a hard-linked file's id (a merge kept an
            // edit made before the file got its second name) is another file.
            if self.inodes.contains_key(&child) || self.link_table.contains_key(&child) {
                child = crate::bucket::tree::derived_ino(&[
                    b"dup",
                    &ino.to_le_bytes(),
                    &name,
                    &id.to_le_bytes(),
                ]);
                while self.inodes.contains_key(&child) || self.link_table.contains_key(&child) {
                    child = fresh_ino()?;
                }
                tracing::debug!(bucket = %self.core.id, id, child, "inode id taken here; numbering the entry apart");
            }
            children.insert(name.clone(), child);
            self.inodes.insert(
                child,
                Inode {
                    parent: ino,
                    name,
                    meta,
                    body,
                    dirty: false,
                    shared: None,
                },
            );
        }
        for (name, id) in shared_names {
            if self.add_shared_name(ino, &name, id)? {
                children.insert(name, id);
            }
        }
        if let Some(Inode {
            body: Body::Dir(d), ..
        }) = self.inodes.get_mut(&ino)
        {
            d.children = Some(children);
            d.subdirs = subdirs;
        }
        Ok(())
    }

    /// A name of hard-linked file `id` found in directory `dir`: the file's
    /// inode is made from the link table when this is the first of its
    /// names loaded. False (and a log line) when the name cannot be one.
    fn add_shared_name(&mut self, dir: Ino, name: &[u8], id: Ino) -> Result<bool> {
        if let Some(inode) = self.inodes.get_mut(&id) {
            return Ok(match &mut inode.shared {
                Some(s) if !self.orphans.contains(&id) => {
                    if !s.names.iter().any(|(d, n)| *d == dir && n == name) {
                        s.names.push((dir, name.to_vec()));
                    }
                    true
                }
                _ => {
                    tracing::warn!(bucket = %self.core.id, id, "a hard link's id is taken by another file here; the name is hidden");
                    false
                }
            });
        }
        let Some(entry) = self.link_table.get(&id) else {
            tracing::warn!(bucket = %self.core.id, id, "a hard link names a file the link table lacks; the name is hidden");
            return Ok(false);
        };
        let (meta, nlink) = links::split_nlink(entry.meta.clone());
        let body = match &entry.kind {
            EntryKind::File(f) => Body::File(FileData::from_node(f, self.io.chunk_size)?),
            EntryKind::Symlink(t) => Body::Symlink(t.clone()),
            EntryKind::Special { kind, rdev } => Body::Special {
                kind: *kind,
                rdev: *rdev,
            },
            EntryKind::Dir(_) | EntryKind::Shared => {
                return Err(BucketError::Format {
                    what: "link table",
                    reason: format!("entry {id} is not a file"),
                })
            }
        };
        self.inodes.insert(
            id,
            Inode {
                parent: dir,
                name: name.to_vec(),
                meta,
                body,
                dirty: false,
                shared: Some(SharedNames {
                    nlink,
                    names: vec![(dir, name.to_vec())],
                }),
            },
        );
        Ok(true)
    }

    pub(super) fn child(&mut self, parent: Ino, name: &[u8]) -> Result<Option<Ino>> {
        validate_name(name)?;
        Ok(self.children(parent)?.get(name).copied())
    }
}
