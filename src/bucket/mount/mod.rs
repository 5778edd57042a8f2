//! `Mount`: a live, virtual file system over one bucket version.
//!
//! The mount keeps an inode table in memory. Directories are loaded from their
//! sealed nodes the first time they are looked into; files carry their chunk
//! list and load chunk bytes only when read. Changes mark the changed entry's
//! directory and its ancestors dirty; [`Mount::save`] flushes dirty chunks,
//! re-seals only dirty directories bottom-up and writes a new signed manifest.
//!
//! The API is inode-based (what FUSE needs); `bucket::path` adds path helpers.
//! Inode numbers are the entries' ids stored in the tree: the same for a file
//! across versions, replicas, merges and restarts (root = 1).
//! Reads do not update atime (as with `noatime`), so reading never dirties
//! the tree.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use super::chunks::{ChunkIo, FileData, ReadBuf, SealedChunk, SealsInFlight};
use super::error::{BucketError, Result};
use super::links;
use super::manifest::{Manifest, ManifestBody};
use super::names::validate_name;
use super::ops::{Op, OpsLog};
use super::tree::{
    fresh_ino, DirNode, Entry, EntryKind, KeyBytes, Link, Meta, SpecialKind, Timestamp,
};
use super::BucketCore;
use crate::crypto::{KeyShare, NodeId};
use crate::store::Hash;

pub type Ino = u64;
/// The root directory's inode number (as FUSE expects).
pub const ROOT_INO: Ino = 1;

/// A reference the kernel holds on an inode, and the names leading to it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KernelRef {
    pub ino: Ino,
    pub count: u64,
    pub path: Vec<Vec<u8>>,
}
/// A file's dirty bytes past this are flushed to the store without waiting for a save.
const DIRTY_FILE_LIMIT: u64 = 64 << 20;
/// Longest symlink target, as Linux's PATH_MAX.
const SYMLINK_MAX: usize = 4096;
/// Largest extended attribute value, as Linux's XATTR_SIZE_MAX.
const XATTR_VALUE_MAX: usize = 64 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl FileKind {
    /// The kind's name in listings ("file", "dir", "fifo", ...).
    pub fn name(self) -> &'static str {
        match self {
            FileKind::File => "file",
            FileKind::Dir => "dir",
            FileKind::Symlink => "symlink",
            FileKind::Fifo => "fifo",
            FileKind::Socket => "socket",
            FileKind::CharDevice => "char-device",
            FileKind::BlockDevice => "block-device",
        }
    }

    /// The type letter `ls -l` shows.
    pub fn ls_char(self) -> char {
        match self {
            FileKind::File => '-',
            FileKind::Dir => 'd',
            FileKind::Symlink => 'l',
            FileKind::Fifo => 'p',
            FileKind::Socket => 's',
            FileKind::CharDevice => 'c',
            FileKind::BlockDevice => 'b',
        }
    }
}

impl From<SpecialKind> for FileKind {
    fn from(k: SpecialKind) -> Self {
        match k {
            SpecialKind::Fifo => FileKind::Fifo,
            SpecialKind::Socket => FileKind::Socket,
            SpecialKind::CharDevice => FileKind::CharDevice,
            SpecialKind::BlockDevice => FileKind::BlockDevice,
        }
    }
}

/// What `stat` shows of an inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub kind: FileKind,
    pub size: u64,
    pub blocks: u64,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    /// Device number of a character or block device node (else 0).
    pub rdev: u64,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
}

/// One `readdir` entry (without `.` and `..`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: Ino,
    pub kind: FileKind,
}

/// Attribute changes for [`Mount::setattr`]; `None` leaves a field alone.
#[derive(Clone, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Timestamp>,
    pub mtime: Option<Timestamp>,
}

/// `rename` flags, as renameat2(2).
#[derive(Clone, Copy, Debug, Default)]
pub struct RenameFlags {
    pub no_replace: bool,
    pub exchange: bool,
}

/// `setxattr` flags, as setxattr(2).
#[derive(Clone, Copy, Debug, Default)]
pub struct XattrFlags {
    pub create: bool,
    pub replace: bool,
}

/// Usage figures for `statfs` and volume stats.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Usage {
    pub used_bytes: u64,
    pub quota: Option<u64>,
    pub entries: u64,
}

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

/// A saved version: its manifest address, height and the bytes it uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Saved {
    pub hash: Hash,
    pub height: u64,
    pub used_bytes: u64,
}

/// A version [`Mount::prepare_save`] wrote that HEAD does not name yet.
#[must_use = "a prepared version is named as HEAD or handed back as unpublished"]
pub struct PreparedVersion {
    saved: Saved,
    core: Arc<BucketCore>,
}

impl PreparedVersion {
    pub fn version(&self) -> Saved {
        self.saved
    }

    /// Make HEAD name this version. Only once the store is synced, and
    /// while nothing else may write HEAD (the caller holds off merges and
    /// checked [`Mount::is_base`]): it needs no lock on the Mount.
    pub fn name_head(&self) -> Result<()> {
        self.core.name_head(&self.saved.hash)?;
        crate::crash_point::hit("head-moved");
        Ok(())
    }
}

enum Body {
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

struct DirData {
    key: KeyBytes,
    /// The sealed node this directory was loaded from or last saved as.
    stored: Option<Hash>,
    /// `None` until the directory is first looked into.
    children: Option<BTreeMap<Vec<u8>, Ino>>,
    /// How many of `children` are directories (for nlink, in O(1)).
    subdirs: u32,
}

struct Inode {
    /// The entry's directory and name; for a file with several names, one
    /// of them (the others are in `shared`).
    parent: Ino,
    name: Vec<u8>,
    meta: Meta,
    body: Body,
    /// For directories: the sealed node must be rewritten on save.
    dirty: bool,
    /// Set for a file with several names (kept in the link table).
    shared: Option<SharedNames>,
}

/// A hard-linked file's name count and the names of it loaded so far
/// (names in directories not yet looked into are counted, not listed).
struct SharedNames {
    nlink: u32,
    names: Vec<(Ino, Vec<u8>)>,
}

impl Inode {
    fn kind(&self) -> FileKind {
        match self.body {
            Body::File(_) => FileKind::File,
            Body::Dir(_) => FileKind::Dir,
            Body::Symlink(_) => FileKind::Symlink,
            Body::Special { kind, .. } => kind.into(),
        }
    }
}

/// A live virtual file system over one bucket version.
pub struct Mount {
    core: Arc<BucketCore>,
    io: ChunkIo,
    base: Manifest,
    base_hash: Hash,
    read_only: bool,
    inodes: HashMap<Ino, Inode>,
    /// Bytes allocated by the tree's files (chunks that are not holes):
    /// what the quota counts, as a block file system's `df` does.
    used_bytes: u64,
    entries: u64,
    quota: Option<u64>,
    ops: OpsLog,
    /// Identities the bucket secret is shared with (carried into each new version).
    shares: Vec<KeyShare>,
    /// Anything changed since `base`.
    changed: bool,
    /// References the user of the mount holds on inodes (the kernel's lookup
    /// counts): a pinned file that is unlinked stays readable and writable.
    pins: HashMap<Ino, u64>,
    /// Files removed from the tree while pinned: alive until unpinned, never
    /// saved (POSIX: an unlinked file lives until its last close).
    orphans: HashSet<Ino>,
    /// Bytes held by orphans: not in any version, but on the quota.
    orphan_bytes: u64,
    /// The link table (files with several names) by inode id, as last
    /// loaded or saved; entries of loaded shared inodes are refreshed from
    /// them when the table is written.
    link_table: BTreeMap<Ino, Entry>,
    /// Where the table was loaded from or last written.
    links_stored: Option<Link>,
    /// The table must be rewritten on save.
    links_dirty: bool,
}

impl std::fmt::Debug for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mount")
            .field("bucket", &self.core.id)
            .field("base", &self.base_hash)
            .field("height", &self.base.body.height)
            .field("read_only", &self.read_only)
            .finish()
    }
}

impl Mount {
    /// Open the version at `hash`; `read_only` refuses every change.
    pub(crate) fn open(core: Arc<BucketCore>, hash: Hash, read_only: bool) -> Result<Self> {
        let manifest = core.load_manifest(&hash)?;
        let root_key = core.open_root_key(&manifest)?;
        let root_link = Link {
            hash: manifest.body.root,
            key: root_key,
        };
        let io = ChunkIo::new(core.store.clone(), manifest.body.chunk_size);
        let mut mount = Self {
            core,
            io,
            used_bytes: manifest.body.used_bytes,
            entries: manifest.body.entries,
            quota: manifest.body.quota,
            shares: manifest.body.shares.clone(),
            base: manifest,
            base_hash: hash,
            read_only,
            inodes: HashMap::new(),
            ops: OpsLog::default(),
            changed: false,
            pins: HashMap::new(),
            orphans: HashSet::new(),
            orphan_bytes: 0,
            link_table: BTreeMap::new(),
            links_stored: None,
            links_dirty: false,
        };
        mount.install_root(root_link)?;
        Ok(mount)
    }

    /// Replace the whole tree with the root at `link` (used on open and after a merge).
    fn install_root(&mut self, link: Link) -> Result<()> {
        let node = DirNode::load(&self.core.store, &link)?;
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

    // ----- read-only queries -------------------------------------------------

    pub fn bucket_id(&self) -> super::BucketId {
        self.core.id
    }

    /// The version this mount was opened at or last saved as.
    pub fn base(&self) -> Saved {
        Saved {
            hash: self.base_hash,
            height: self.base.body.height,
            used_bytes: self.base.body.used_bytes,
        }
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// True when there are changes not yet saved as a version.
    pub fn has_unsaved_changes(&self) -> bool {
        self.changed
    }

    pub fn ops_log(&self) -> &OpsLog {
        &self.ops
    }

    /// Forget the ops log: the current head is now known to the peers.
    pub fn mark_synced(&mut self) {
        self.ops.clear();
    }

    pub fn usage(&self) -> Usage {
        Usage {
            used_bytes: self.used_bytes + self.orphan_bytes,
            quota: self.quota,
            entries: self.entries,
        }
    }

    /// Where this bucket's blobs are stored (for the free space of its disk).
    pub fn store_dir(&self) -> std::path::PathBuf {
        self.core.store.root().to_path_buf()
    }

    pub fn chunk_size(&self) -> u64 {
        self.io.chunk_size
    }

    /// Kind, mode and group of an inode: what permission and ownership
    /// decisions need, without `getattr`'s count of subdirectories.
    pub fn kind_mode_gid(&self, ino: Ino) -> Result<(FileKind, u32, u32)> {
        let inode = self.inode(ino)?;
        Ok((inode.kind(), inode.meta.mode, inode.meta.gid))
    }

    pub fn getattr(&mut self, ino: Ino) -> Result<Attr> {
        let inode = self.inode(ino)?;
        let cs = self.io.chunk_size;
        // A file has its names (one unless hard-linked), or none once it
        // is an orphan.
        let links = if self.orphans.contains(&ino) {
            0
        } else {
            inode.shared.as_ref().map_or(1, |s| s.nlink)
        };
        let mut rdev = 0;
        let (size, nlink, bytes) = match &inode.body {
            Body::File(f) => (f.size, links, f.allocated(cs)),
            Body::Symlink(t) => (t.len() as u64, links, 0),
            Body::Special { rdev: r, .. } => {
                rdev = *r;
                (0, links, 0)
            }
            Body::Dir(d) => {
                debug_assert_eq!(
                    d.subdirs as usize,
                    d.children.as_ref().map_or(0, |c| c
                        .values()
                        .filter(|i| matches!(
                            self.inodes.get(i).map(|n| &n.body),
                            Some(Body::Dir(_))
                        ))
                        .count()),
                    "subdirectory count of inode {ino}"
                );
                (4096, 2 + d.subdirs, 4096)
            }
        };
        Ok(Attr {
            ino,
            kind: inode.kind(),
            size,
            blocks: bytes.div_ceil(512),
            mode: inode.meta.mode,
            nlink,
            uid: inode.meta.uid,
            gid: inode.meta.gid,
            rdev,
            atime: inode.meta.atime.into(),
            mtime: inode.meta.mtime.into(),
            ctime: inode.meta.ctime.into(),
        })
    }

    pub fn lookup(&mut self, parent: Ino, name: &[u8]) -> Result<Attr> {
        let ino = self.child(parent, name)?.ok_or(BucketError::NotFound)?;
        self.getattr(ino)
    }

    /// The entries of directory `ino`, sorted by name, without `.` and `..`.
    pub fn readdir(&mut self, ino: Ino) -> Result<Vec<DirEntry>> {
        self.children(ino)?;
        let Body::Dir(DirData {
            children: Some(children),
            ..
        }) = &self.inodes[&ino].body
        else {
            unreachable!("children() loaded a directory")
        };
        Ok(children
            .iter()
            .map(|(name, child)| DirEntry {
                name: name.clone(),
                ino: *child,
                kind: self.inodes[child].kind(),
            })
            .collect())
    }

    pub fn readlink(&mut self, ino: Ino) -> Result<Vec<u8>> {
        match &self.inode(ino)?.body {
            Body::Symlink(t) => Ok(t.clone()),
            _ => Err(BucketError::NotASymlink),
        }
    }

    pub fn read(&mut self, ino: Ino, offset: u64, len: u32) -> Result<Vec<u8>> {
        self.read_buf(ino, offset, len).map(ReadBuf::into_vec)
    }

    /// What reading `len` bytes at `offset` of `ino` needs, and the chunk
    /// reader to run it with: [`ReadPlan::run`] loads and decrypts without
    /// the mount, so other operations on the mount go on meanwhile.
    pub fn read_plan(
        &mut self,
        ino: Ino,
        offset: u64,
        len: u32,
    ) -> Result<(super::chunks::ReadPlan, ChunkIo)> {
        let io = &self.io;
        match &mut self
            .inodes
            .get_mut(&ino)
            .ok_or(BucketError::UnknownInode(ino))?
            .body
        {
            Body::File(f) => Ok((f.read_plan(io, offset, len as u64)?, io.clone())),
            Body::Dir(_) => Err(BucketError::IsADirectory),
            Body::Symlink(_) | Body::Special { .. } => Err(BucketError::InvalidArgument(
                "read of a symlink or special file".into(),
            )),
        }
    }

    /// [`Mount::read`] without copying a range that lies in one cached chunk.
    pub fn read_buf(&mut self, ino: Ino, offset: u64, len: u32) -> Result<ReadBuf> {
        let io = &self.io;
        match &mut self
            .inodes
            .get_mut(&ino)
            .ok_or(BucketError::UnknownInode(ino))?
            .body
        {
            Body::File(f) => f.read_buf(io, offset, len as u64),
            Body::Dir(_) => Err(BucketError::IsADirectory),
            Body::Symlink(_) | Body::Special { .. } => Err(BucketError::InvalidArgument(
                "read of a symlink or special file".into(),
            )),
        }
    }

    pub fn getxattr(&mut self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        self.inode(ino)?
            .meta
            .xattrs
            .get(name)
            .cloned()
            .ok_or(BucketError::NoXattr)
    }

    pub fn listxattr(&mut self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        Ok(self.inode(ino)?.meta.xattrs.keys().cloned().collect())
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

    // ----- changes ----------------------------------------------------------

    pub fn create(
        &mut self,
        parent: Ino,
        name: &[u8],
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<Attr> {
        let ino = self.add_entry(
            parent,
            name,
            Meta::new(mode, uid, gid, self.writer()),
            Body::File(FileData::empty()?),
        )?;
        self.log(Op::Create {
            path: self.path_of(ino),
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
        let body = Body::Dir(DirData {
            key: KeyBytes::generate()?,
            stored: None,
            children: Some(BTreeMap::new()),
            subdirs: 0,
        });
        let ino = self.add_entry(parent, name, Meta::new(mode, uid, gid, self.writer()), body)?;
        self.inodes.get_mut(&ino).expect("just added").dirty = true;
        self.log(Op::Mkdir {
            path: self.path_of(ino),
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
        if target.is_empty() || target.len() > SYMLINK_MAX || target.contains(&0) {
            return Err(BucketError::InvalidArgument(
                "symlink target must be 1..4096 bytes without NUL".into(),
            ));
        }
        let ino = self.add_entry(
            parent,
            name,
            Meta::new(0o777, uid, gid, self.writer()),
            Body::Symlink(target.to_vec()),
        )?;
        self.log(Op::Symlink {
            path: self.path_of(ino),
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
        let rdev = match kind {
            SpecialKind::CharDevice | SpecialKind::BlockDevice => rdev,
            SpecialKind::Fifo | SpecialKind::Socket => 0,
        };
        let ino = self.add_entry(
            parent,
            name,
            Meta::new(mode, uid, gid, self.writer()),
            Body::Special { kind, rdev },
        )?;
        self.log(Op::Mknod {
            path: self.path_of(ino),
        });
        self.getattr(ino)
    }

    /// Give `ino` another name, `new_name` in `new_parent` (link(2)). The
    /// file moves into the link table the first time it gets a second name.
    pub fn link(&mut self, ino: Ino, new_parent: Ino, new_name: &[u8]) -> Result<Attr> {
        self.check_writable()?;
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
        let inode = self.inodes.get_mut(&ino).expect("checked above");
        let shared = inode.shared.as_mut().expect("made shared above");
        shared.nlink += 1;
        shared.names.push((new_parent, new_name.to_vec()));
        inode.meta.ctime = Timestamp::now();
        inode.meta.writer = writer;
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
        inode.meta.ctime = Timestamp::now();
        inode.meta.writer = writer;
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

    /// A hard-linked file changed: the table is rewritten on save.
    fn links_changed(&mut self) {
        self.links_dirty = true;
        self.changed = true;
        self.mark_dirty(ROOT_INO);
    }

    pub fn unlink(&mut self, parent: Ino, name: &[u8]) -> Result<()> {
        self.check_writable()?;
        validate_name(name)?;
        let ino = self.child(parent, name)?.ok_or(BucketError::NotFound)?;
        if self.inodes[&ino].kind() == FileKind::Dir {
            return Err(BucketError::IsADirectory);
        }
        let path = self.path_of(ino);
        self.remove_name(parent, name, ino);
        self.touch_dir(parent);
        self.log(Op::Unlink { path });
        Ok(())
    }

    pub fn rmdir(&mut self, parent: Ino, name: &[u8]) -> Result<()> {
        self.check_writable()?;
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
        self.check_writable()?;
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
        Ok(())
    }

    pub fn setattr(&mut self, ino: Ino, set: SetAttr) -> Result<Attr> {
        self.check_writable()?;
        if let Some(size) = set.size {
            let current = match &self.inode(ino)?.body {
                Body::File(f) => f.size,
                Body::Dir(_) => return Err(BucketError::IsADirectory),
                Body::Symlink(_) | Body::Special { .. } => {
                    return Err(BucketError::InvalidArgument(
                        "truncate of a symlink or special file".into(),
                    ))
                }
            };
            if size > super::chunks::MAX_FILE_SIZE {
                return Err(BucketError::FileTooLarge);
            }
            let cs = self.io.chunk_size;
            let (before, after) = match &self.inode(ino)?.body {
                Body::File(f) => (f.allocated(cs), f.allocated_after_truncate(cs, size)),
                _ => unreachable!("checked to be a file"),
            };
            self.reserve(before, after)?;
            let io = &self.io;
            let inode = self.inodes.get_mut(&ino).expect("checked above");
            if let Body::File(f) = &mut inode.body {
                f.truncate(io, size)?;
            }
            if size != current {
                inode.meta.mtime = Timestamp::now();
            }
            self.account(ino, before, after);
            self.log_for(ino, |path| Op::Truncate { path, size });
        }
        let writer = self.writer();
        let inode = self.inode_mut(ino)?;
        if let Some(mode) = set.mode {
            inode.meta.mode = mode & 0o7777;
        }
        if let Some(uid) = set.uid {
            inode.meta.uid = uid;
        }
        if let Some(gid) = set.gid {
            inode.meta.gid = gid;
        }
        if let Some(t) = set.atime {
            inode.meta.atime = t;
        }
        if let Some(t) = set.mtime {
            inode.meta.mtime = t;
        }
        inode.meta.ctime = Timestamp::now();
        inode.meta.writer = writer;
        self.entry_changed(ino);
        if set.mode.is_some()
            || set.uid.is_some()
            || set.gid.is_some()
            || set.atime.is_some()
            || set.mtime.is_some()
        {
            self.log_for(ino, |path| Op::SetAttr { path });
        }
        self.getattr(ino)
    }

    /// The background seals of file `ino`'s full chunks: a writer waits
    /// for room there after letting go of the Mount (see
    /// [`SealsInFlight::when_room`]).
    pub fn seals_in_flight(&self, ino: Ino) -> Option<Arc<SealsInFlight>> {
        match &self.inodes.get(&ino)?.body {
            Body::File(f) => Some(f.seals_in_flight()),
            _ => None,
        }
    }

    /// Write `data` at `offset`; returns the number of bytes written (all of them).
    pub fn write(&mut self, ino: Ino, offset: u64, data: &[u8]) -> Result<u32> {
        self.check_writable()?;
        let cs = self.io.chunk_size;
        let len = data.len() as u64;
        if offset
            .checked_add(len)
            .is_none_or(|end| end > super::chunks::MAX_FILE_SIZE)
        {
            return Err(BucketError::FileTooLarge);
        }
        let (before, after) = match &self.inode(ino)?.body {
            Body::File(f) => (f.allocated(cs), f.allocated_after_write(cs, offset, len)),
            Body::Dir(_) => return Err(BucketError::IsADirectory),
            Body::Symlink(_) | Body::Special { .. } => {
                return Err(BucketError::InvalidArgument(
                    "write to a symlink or special file".into(),
                ))
            }
        };
        self.reserve(before, after)?;
        let writer = self.writer();
        let io = &self.io;
        let inode = self.inodes.get_mut(&ino).expect("checked above");
        let Body::File(f) = &mut inode.body else {
            unreachable!("checked to be a file")
        };
        let written = f.write(io, offset, data);
        // Whatever reached the buffers counts, even if the write stopped.
        let now_allocated = f.allocated(cs);
        let flushed = match written {
            Ok(()) if f.dirty_bytes() > DIRTY_FILE_LIMIT => f.flush(io, true),
            other => other,
        };
        let now = Timestamp::now();
        inode.meta.mtime = now;
        inode.meta.ctime = now;
        inode.meta.writer = writer;
        self.account(ino, before, now_allocated);
        self.entry_changed(ino);
        self.log_for(ino, |path| Op::Write { path, offset, len });
        flushed?;
        debug_assert_eq!(now_allocated, after, "allocation estimate of a write");
        Ok(data.len() as u32)
    }

    pub fn setxattr(
        &mut self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        flags: XattrFlags,
    ) -> Result<()> {
        self.check_writable()?;
        if name.is_empty() || name.len() > 255 || name.contains(&0) {
            return Err(BucketError::InvalidArgument(
                "xattr name must be 1..255 bytes without NUL".into(),
            ));
        }
        if value.len() > XATTR_VALUE_MAX {
            return Err(BucketError::InvalidArgument(
                "xattr value larger than 64 KiB".into(),
            ));
        }
        let writer = self.writer();
        let inode = self.inode_mut(ino)?;
        let exists = inode.meta.xattrs.contains_key(name);
        if flags.create && exists {
            return Err(BucketError::Exists);
        }
        if flags.replace && !exists {
            return Err(BucketError::NoXattr);
        }
        inode.meta.xattrs.insert(name.to_vec(), value.to_vec());
        inode.meta.ctime = Timestamp::now();
        inode.meta.writer = writer;
        self.entry_changed(ino);
        let name = String::from_utf8_lossy(name).into_owned();
        self.log_for(ino, |path| Op::SetXattr { path, name });
        Ok(())
    }

    pub fn removexattr(&mut self, ino: Ino, name: &[u8]) -> Result<()> {
        self.check_writable()?;
        let inode = self.inode_mut(ino)?;
        inode.meta.xattrs.remove(name).ok_or(BucketError::NoXattr)?;
        inode.meta.ctime = Timestamp::now();
        self.entry_changed(ino);
        let name = String::from_utf8_lossy(name).into_owned();
        self.log_for(ino, |path| Op::RemoveXattr { path, name });
        Ok(())
    }

    /// Change the byte quota (`None` = unlimited). Takes effect at once.
    pub fn set_quota(&mut self, quota: Option<u64>) -> Result<()> {
        self.check_writable()?;
        self.quota = quota;
        self.changed = true;
        Ok(())
    }

    /// Share the bucket secret with `node` so it can read the bucket and sign
    /// versions other replicas accept. Takes effect with the next save.
    pub fn grant(&mut self, node: &NodeId) -> Result<()> {
        self.check_writable()?;
        if !self.shares.iter().any(|s| s.recipient == *node) {
            self.shares.push(KeyShare::create(&self.core.secret, node)?);
            self.changed = true;
        }
        Ok(())
    }

    /// Take in the shares of another version (a merged head): every member
    /// of either side stays a member.
    pub(crate) fn adopt_shares(&mut self, shares: &[KeyShare]) {
        for s in shares {
            if !self.shares.iter().any(|m| m.recipient == s.recipient) {
                self.shares.push(s.clone());
                self.changed = true;
            }
        }
    }

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

    /// The identities that hold a share of the bucket secret.
    pub fn members(&self) -> Vec<NodeId> {
        self.shares.iter().map(|s| s.recipient).collect()
    }

    /// Seal and store every dirty chunk (file bytes become durable blobs),
    /// without writing a new version.
    pub fn flush_data(&mut self) -> Result<()> {
        // Gather every file's dirty chunks so many small files seal in parallel.
        let cs = self.io.chunk_size;
        let mut jobs = Vec::new();
        let mut first_err = None;
        for (ino, inode) in self.inodes.iter_mut() {
            if let Body::File(f) = &mut inode.body {
                if f.is_dirty() {
                    let key = f.key.key();
                    match f.take_dirty(cs, false) {
                        Ok(bufs) => jobs
                            .extend(bufs.into_iter().map(|(i, buf)| (*ino, i, key.clone(), buf))),
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
        for (ino, i, buf, r) in self.io.seal_many(jobs) {
            by_file.entry(ino).or_default().push((i, buf, r));
        }
        crate::crash_point::hit("chunks-sealed");
        for (ino, results) in by_file {
            if let Some(Inode {
                body: Body::File(f),
                ..
            }) = self.inodes.get_mut(&ino)
            {
                if let Err(e) = f.apply_sealed(results) {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Fetch chunks this node lacks from peers while it reads (a bucket
    /// still being completed after it moved here).
    pub fn set_remote(&mut self, remote: Arc<dyn super::chunks::RemoteBlobs>) {
        self.io.set_remote(remote);
    }

    /// Change how many decrypted chunks the read cache holds (0 = off).
    pub fn set_cache_chunks(&mut self, chunks: usize) {
        self.io.set_cache_capacity(chunks);
    }

    /// Write a new signed version (`height + 1`, `previous` = the old head) and
    /// make it the bucket's head. Saving with no changes writes nothing.
    pub fn save(&mut self) -> Result<Saved> {
        self.check_writable()?;
        if !self.changed {
            return Ok(self.base());
        }
        self.commit(None)
    }

    /// Flush, persist the tree and write a manifest whose parents are the
    /// base and, for a merge, `merged`; then make it durable and the head.
    pub(crate) fn commit(&mut self, merged: Option<(Hash, u64)>) -> Result<Saved> {
        let (manifest, hash) = self.write_manifest(merged)?;
        self.core.write_head(&hash)?;
        crate::crash_point::hit("head-moved");
        self.take_as_base(manifest, hash);
        Ok(self.base())
    }

    /// The first half of a save, for callers that make it durable without
    /// holding this Mount (so readers and writers of other files go on
    /// during the fsyncs): seal, persist the tree and write the manifest,
    /// and take it as the base. Nothing is durable and HEAD has not moved
    /// until a sync of [`Mount::blob_store`] and then
    /// [`PreparedVersion::name_head`]; a failure in between goes to
    /// [`Mount::unpublished`]. `None` when there is nothing to save.
    pub fn prepare_save(&mut self) -> Result<Option<PreparedVersion>> {
        self.check_writable()?;
        if !self.changed {
            return Ok(None);
        }
        let (manifest, hash) = self.write_manifest(None)?;
        self.take_as_base(manifest, hash);
        Ok(Some(PreparedVersion {
            saved: self.base(),
            core: self.core.clone(),
        }))
    }

    /// The store a prepared version's blobs wait in.
    pub fn blob_store(&self) -> Arc<crate::store::BlobStore> {
        self.core.store.clone()
    }

    /// Whether the prepared version is still this Mount's base (nothing
    /// replaced it since), so naming it as HEAD loses nothing.
    pub fn is_base(&self, prepared: &PreparedVersion) -> bool {
        self.base_hash == prepared.saved.hash
    }

    /// A prepared version could not be made durable or named: its changes
    /// count as unsaved again, so the next save writes them (on top of it,
    /// which is harmless: its blobs are in the store either way).
    pub fn unpublished(&mut self, prepared: &PreparedVersion) {
        if self.is_base(prepared) {
            self.changed = true;
        }
    }

    /// The version just written is what this Mount's changes are relative to.
    fn take_as_base(&mut self, manifest: Manifest, hash: Hash) {
        self.base = manifest;
        self.base_hash = hash;
        self.changed = false;
    }

    /// Seal dirty data, persist the tree and store a signed manifest on top
    /// of the base (and `merged`), durable or not as the store's next sync.
    fn write_manifest(&mut self, merged: Option<(Hash, u64)>) -> Result<(Manifest, Hash)> {
        self.flush_data()?;
        let root_hash = self.persist_dir(ROOT_INO)?;
        crate::crash_point::hit("tree-written");
        let root_key = match &self.inodes[&ROOT_INO].body {
            Body::Dir(d) => d.key.clone(),
            _ => unreachable!("root is a directory"),
        };
        let height = self.base.body.height.max(merged.map(|m| m.1).unwrap_or(0)) + 1;
        let body = ManifestBody {
            bucket_id: self.core.id,
            height,
            previous: Some(self.base_hash),
            merged: merged.map(|m| m.0),
            root: root_hash,
            root_key: self.core.secret.seal(&root_key.0)?,
            chunk_size: self.io.chunk_size as u32,
            quota: self.quota,
            used_bytes: self.used_bytes,
            entries: self.entries,
            shares: self.shares.clone(),
            author: self.core.identity.node_id(),
            created_at: Timestamp::now(),
        };
        let manifest = Manifest::sign(body, &self.core.identity)?;
        let hash = manifest.store(&self.core.store)?;
        crate::crash_point::hit("manifest-written");
        tracing::debug!(bucket = %self.core.id, version = %hash, height, "wrote version");
        Ok((manifest, hash))
    }

    /// The sealed root of the current tree, persisting dirty parts first (used by merge).
    pub(crate) fn persist_root(&mut self) -> Result<Link> {
        self.flush_data()?;
        let hash = self.persist_dir(ROOT_INO)?;
        let key = match &self.inodes[&ROOT_INO].body {
            Body::Dir(d) => d.key.clone(),
            _ => unreachable!("root is a directory"),
        };
        Ok(Link { hash, key })
    }

    /// Make `version`'s tree this mount's content (unsaved until the next
    /// save, which records it as a restore). Members stay as they are.
    pub fn restore_version(&mut self, version: &Hash) -> Result<()> {
        if self.read_only {
            return Err(BucketError::ReadOnly);
        }
        let old = self.core.load_manifest(version)?;
        let key = self.core.open_root_key(&old)?;
        self.replace_tree(
            Link {
                hash: old.body.root,
                key,
            },
            old.body.used_bytes,
            old.body.entries,
        )?;
        self.log(Op::Restore {
            version: version.to_hex(),
        });
        Ok(())
    }

    /// Replace the tree by the one at `root` (a merge result) with the given totals.
    pub(crate) fn replace_tree(&mut self, root: Link, used_bytes: u64, entries: u64) -> Result<()> {
        self.install_root(root)?;
        // The installed root is a new tree: it must be written out on commit.
        self.inodes.get_mut(&ROOT_INO).expect("root").dirty = true;
        self.used_bytes = used_bytes;
        self.entries = entries;
        self.changed = true;
        Ok(())
    }

    /// Reload from another version of the same bucket, dropping local state.
    /// The tree's inode ids are stable, so the kernel's references (and
    /// open files) carry over: a file still in the new tree keeps its number
    /// and shows the new content; orphans stay as they are.
    pub(crate) fn reset_to(&mut self, hash: Hash) -> Result<()> {
        let manifest = self.core.load_manifest(&hash)?;
        let root = Link {
            hash: manifest.body.root,
            key: self.core.open_root_key(&manifest)?,
        };
        self.install_root(root)?;
        self.used_bytes = manifest.body.used_bytes;
        self.entries = manifest.body.entries;
        self.quota = manifest.body.quota;
        self.shares = manifest.body.shares.clone();
        self.base = manifest;
        self.base_hash = hash;
        self.changed = false;
        Ok(())
    }

    pub(crate) fn core(&self) -> &Arc<BucketCore> {
        &self.core
    }

    pub(crate) fn log(&mut self, op: Op) {
        self.ops.push(op);
        self.changed = true;
    }

    /// Log a change to `ino`'s content or metadata, unless `ino` is an
    /// orphan (no longer in the tree: nothing to save or merge).
    fn log_for(&mut self, ino: Ino, op: impl FnOnce(String) -> Op) {
        if !self.orphans.contains(&ino) {
            let path = self.path_of(ino);
            self.log(op(path));
        }
    }

    /// A file's allocation changed from `before` to `after` bytes (orphans
    /// are counted apart from the tree).
    fn account(&mut self, ino: Ino, before: u64, after: u64) {
        let total = if self.orphans.contains(&ino) {
            &mut self.orphan_bytes
        } else {
            &mut self.used_bytes
        };
        *total = total.saturating_sub(before) + after;
    }

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

    // ----- internals --------------------------------------------------------

    fn writer(&self) -> [u8; 8] {
        self.core.identity.node_id().short()
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            Err(BucketError::ReadOnly)
        } else {
            Ok(())
        }
    }

    /// Check the quota for a file whose allocation grows from `before` to `after` bytes.
    fn reserve(&self, before: u64, after: u64) -> Result<()> {
        if after <= before {
            return Ok(());
        }
        // Growth against everything held, orphans included.
        let needed = self.used_bytes + self.orphan_bytes + (after - before);
        match self.quota {
            Some(quota) if needed > quota => Err(BucketError::QuotaExceeded { quota, needed }),
            _ => Ok(()),
        }
    }

    fn inode(&self, ino: Ino) -> Result<&Inode> {
        self.inodes.get(&ino).ok_or(BucketError::UnknownInode(ino))
    }

    fn inode_mut(&mut self, ino: Ino) -> Result<&mut Inode> {
        self.inodes
            .get_mut(&ino)
            .ok_or(BucketError::UnknownInode(ino))
    }

    /// Load directory `ino` if needed and return its children.
    fn children(&mut self, ino: Ino) -> Result<&BTreeMap<Vec<u8>, Ino>> {
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
                child = super::tree::derived_ino(&[
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

    fn child(&mut self, parent: Ino, name: &[u8]) -> Result<Option<Ino>> {
        validate_name(name)?;
        Ok(self.children(parent)?.get(name).copied())
    }

    fn add_entry(&mut self, parent: Ino, name: &[u8], meta: Meta, body: Body) -> Result<Ino> {
        self.check_writable()?;
        if self.child(parent, name)?.is_some() {
            return Err(BucketError::Exists);
        }
        let mut ino = fresh_ino()?;
        while self.inodes.contains_key(&ino) {
            ino = fresh_ino()?;
        }
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
        if let Some(n) = self.inodes.get_mut(&ino) {
            n.parent = parent;
            n.name = name.to_vec();
            n.meta.ctime = Timestamp::now();
            n.meta.writer = writer;
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
            let keep = self.pins.contains_key(&i)
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

    /// A directory's entry list changed: bump its times and mark it dirty.
    fn touch_dir(&mut self, dir: Ino) {
        let now = Timestamp::now();
        if let Some(n) = self.inodes.get_mut(&dir) {
            n.meta.mtime = now;
            n.meta.ctime = now;
        }
        self.mark_dirty(dir);
    }

    /// `ino`'s entry changed: its directory (and, for a directory, itself) must be rewritten.
    fn entry_changed(&mut self, ino: Ino) {
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

    fn mark_dirty(&mut self, mut dir: Ino) {
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
    fn persist_dir(&mut self, ino: Ino) -> Result<Hash> {
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

/// A new bucket in a new state dir at `dir`, with chunks of `chunk_size`
/// bytes (tests of the Mount and of what drives it).
#[cfg(test)]
pub(crate) fn test_bucket(dir: &std::path::Path, chunk_size: u32) -> crate::bucket::Bucket {
    let opts = crate::bucket::BucketOptions {
        chunk_size,
        ..Default::default()
    };
    crate::bucket::StateDir::open(dir)
        .unwrap()
        .create_bucket(
            crate::bucket::BucketId::generate().unwrap(),
            &crate::crypto::Kek::generate().unwrap(),
            &opts,
        )
        .unwrap()
}

#[cfg(test)]
mod tests {
    use super::test_bucket as bucket;
    use super::*;
    use crate::bucket::{BucketId, BucketOptions, StateDir};
    use crate::crypto::Kek;

    /// A prepared version that could not be made durable leaves its
    /// changes unsaved: the next save writes them on top of it, and HEAD
    /// names that one.
    #[test]
    fn an_unpublished_version_is_saved_again() {
        let dir = tempfile::tempdir().unwrap();
        let b = bucket(dir.path(), 4096);
        let before = b.head().unwrap();
        let mut m = b.mount().unwrap();
        m.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap();
        let prepared = m.prepare_save().unwrap().expect("a change to save");
        assert!(!m.has_unsaved_changes());
        assert_eq!(b.head().unwrap(), before, "HEAD moved before publish");
        m.unpublished(&prepared);
        assert!(m.has_unsaved_changes());
        let saved = m.save().unwrap();
        assert_eq!(b.head().unwrap(), saved.hash);
        let version = b.open_version(&saved.hash).unwrap();
        assert_eq!(version.base().height, prepared.version().height + 1);
        let mut reopened = b.mount().unwrap();
        reopened.lookup(ROOT_INO, b"f").unwrap();
    }

    /// Inode numbers are the tree's ids: the same after a reopen, and
    /// after the tree is replaced by a later version (as a sync does), so
    /// an open file follows its new content.
    #[test]
    fn inode_numbers_are_stable_across_versions_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let b = bucket(dir.path(), 4096);
        let mut m = b.mount().unwrap();
        let d = m.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
        let f = m.create(d, b"f", 0o644, 0, 0).unwrap().ino;
        m.write(f, 0, b"old").unwrap();
        let v1 = m.save().unwrap();
        let mut other = b.mount().unwrap();
        let f2 = crate::bucket::path::resolve(&mut other, "/d/f").unwrap();
        assert_eq!(f2, f, "a second mount of the version numbers it alike");
        other.write(f2, 0, b"new!").unwrap();
        let v2 = other.save().unwrap();
        assert_ne!(v1.hash, v2.hash);
        m.pin(f);
        m.reset_to(v2.hash).unwrap();
        assert_eq!(m.read(f, 0, 100).unwrap(), b"new!");
        assert_eq!(m.lookup(d, b"f").unwrap().ino, f);
    }

    /// Holes allocate nothing: st_blocks and the usage count chunks that
    /// hold data, so a sparse file may be longer than the quota.
    #[test]
    fn blocks_count_allocated_chunks_only() {
        let dir = tempfile::tempdir().unwrap();
        let b = bucket(dir.path(), 4096);
        let mut m = b.mount().unwrap();
        m.set_quota(Some(1 << 20)).unwrap();
        let f = m.create(ROOT_INO, b"sparse", 0o644, 0, 0).unwrap().ino;
        let huge = SetAttr {
            size: Some(1 << 40),
            ..Default::default()
        };
        m.setattr(f, huge).unwrap();
        assert_eq!(m.getattr(f).unwrap().blocks, 0);
        m.write(f, 1 << 39, &[7; 100]).unwrap();
        let a = m.getattr(f).unwrap();
        assert_eq!((a.size, a.blocks), (1 << 40, 8), "one 4 KiB chunk");
        assert_eq!(m.usage().used_bytes, 4096);
        let saved = m.save().unwrap();
        let mut again = b.open_version(&saved.hash).unwrap();
        let f = crate::bucket::path::resolve(&mut again, "/sparse").unwrap();
        assert_eq!(again.getattr(f).unwrap().blocks, 8);
        assert_eq!(again.read(f, (1 << 39) - 2, 4).unwrap(), [0, 0, 7, 7]);
        assert_eq!(again.usage().used_bytes, 4096);
    }

    /// A stored file node whose chunk list does not fit its size is an
    /// integrity error when the directory is read, never an index panic.
    #[test]
    fn a_file_node_longer_than_its_size_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let b = bucket(dir.path(), 4096);
        let mut m = b.mount().unwrap();
        let key = KeyBytes::generate().unwrap();
        let bogus = Entry {
            name: b"bad".to_vec(),
            ino: 99,
            meta: Meta::new(0o644, 0, 0, [0; 8]),
            kind: EntryKind::File(super::super::tree::FileNode {
                size: 10,
                key: KeyBytes::generate().unwrap(),
                chunks: super::super::chunk_map::ChunkMap::from_dense(vec![
                    Some(Hash::of(b"x"));
                    5
                ]),
            }),
        };
        let node = DirNode {
            root_meta: None,
            links: None,
            entries: vec![bogus],
        };
        let hash = node.store(&m.core.store, &key).unwrap();
        let d = m.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
        if let Body::Dir(dd) = &mut m.inodes.get_mut(&d).unwrap().body {
            dd.children = None;
            dd.stored = Some(hash);
            dd.key = key;
        }
        let err = m.readdir(d).unwrap_err();
        assert!(err.is_integrity(), "{err}");
    }

    /// An unlinked file that is still referenced keeps its bytes and its
    /// inode number, counts on the quota, survives the tree being replaced
    /// by another version (as after a sync), and is gone once unpinned.
    #[test]
    fn orphans_count_on_the_quota_and_survive_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let kek = Kek::generate().unwrap();
        let bucket = state
            .create_bucket(
                BucketId::generate().unwrap(),
                &kek,
                &BucketOptions::default(),
            )
            .unwrap();
        let mut m = bucket.mount().unwrap();
        m.set_quota(Some(10_000)).unwrap();
        for name in [&b"x"[..], b"y", b"z"] {
            m.create(ROOT_INO, name, 0o644, 0, 0).unwrap();
        }
        let a = m.create(ROOT_INO, b"a", 0o644, 0, 0).unwrap().ino;
        m.write(a, 0, &[1u8; 4000]).unwrap();
        m.pin(a);
        m.unlink(ROOT_INO, b"a").unwrap();
        assert_eq!(m.getattr(a).unwrap().nlink, 0);
        assert_eq!(m.usage().used_bytes, 4000);
        let b = m.create(ROOT_INO, b"b", 0o644, 0, 0).unwrap().ino;
        assert!(matches!(
            m.write(b, 0, &[2u8; 7000]),
            Err(BucketError::QuotaExceeded { .. })
        ));
        m.write(a, 4000, &[3u8; 1000]).unwrap();
        assert_eq!(m.usage().used_bytes, 5000);
        m.save().unwrap();
        // Another writer's version with more entries than this mount has
        // handed out numbers: none of them may take the orphan's number.
        let mut other = bucket.mount().unwrap();
        for i in 0..10 {
            other
                .create(ROOT_INO, format!("n{i}").as_bytes(), 0o644, 0, 0)
                .unwrap();
        }
        let theirs = other.save().unwrap();
        m.reset_to(theirs.hash).unwrap();
        let names: Vec<Ino> = m.readdir(ROOT_INO).unwrap().iter().map(|e| e.ino).collect();
        assert_eq!(names.len(), 14, "x, y, z, b and n0..n9");
        assert!(!names.contains(&a), "{names:?} reuses the orphan's {a}");
        let mut want = vec![1u8; 4000];
        want.extend([3u8; 1000]);
        assert_eq!(m.read(a, 0, 6000).unwrap(), want);
        assert_eq!(m.usage().used_bytes, 5000);
        m.unpin(a, 1);
        assert!(m.getattr(a).is_err());
        assert_eq!(m.usage().used_bytes, 0);
    }

    /// Hard links: one file, several names; nlink counts them, data and
    /// metadata are shared, removing one name leaves the others, and all of
    /// it survives a save and a reopen (names loaded lazily, in any order).
    #[test]
    fn hard_links_share_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let b = bucket(dir.path(), 4096);
        let mut m = b.mount().unwrap();
        let d = m.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
        let f = m.create(ROOT_INO, b"a", 0o644, 0, 0).unwrap().ino;
        m.write(f, 0, b"shared bytes").unwrap();
        assert!(matches!(
            m.link(d, ROOT_INO, b"dirlink"),
            Err(BucketError::NotPermitted(_))
        ));
        m.link(f, d, b"a").unwrap();
        assert!(matches!(
            m.link(f, ROOT_INO, b"a"),
            Err(BucketError::Exists)
        ));
        let a = m.link(f, ROOT_INO, b"c").unwrap();
        assert_eq!((a.ino, a.nlink), (f, 3));
        assert_eq!(m.usage().entries, 4, "d and three names");
        m.write(f, 0, b"SHARED").unwrap();
        let via_d = m.lookup(d, b"a").unwrap().ino;
        assert_eq!(m.read(via_d, 0, 64).unwrap(), b"SHARED bytes");
        m.setattr(
            f,
            SetAttr {
                mode: Some(0o600),
                ..Default::default()
            },
        )
        .unwrap();
        m.unlink(ROOT_INO, b"a").unwrap();
        assert_eq!(m.getattr(f).unwrap().nlink, 2);
        // Renaming one name over another name of the same file does nothing.
        m.rename(ROOT_INO, b"c", d, b"a", RenameFlags::default())
            .unwrap();
        assert_eq!(m.getattr(f).unwrap().nlink, 2);
        let used = m.usage().used_bytes;
        let saved = m.save().unwrap();
        assert_eq!(saved.used_bytes, used);

        // A fresh mount: load the subdirectory's name first.
        let mut again = b.open_version(&saved.hash).unwrap();
        let d2 = again.lookup(ROOT_INO, b"d").unwrap().ino;
        let via_d = again.lookup(d2, b"a").unwrap();
        assert_eq!((via_d.ino, via_d.nlink, via_d.mode), (f, 2, 0o600));
        assert_eq!(again.lookup(ROOT_INO, b"c").unwrap().ino, f);
        assert_eq!(again.read(f, 0, 64).unwrap(), b"SHARED bytes");
        assert_eq!(again.usage().used_bytes, used);
        b.verify().unwrap();

        // Removing every name removes the file and its table entry.
        let mut m = b.mount().unwrap();
        let d = m.lookup(ROOT_INO, b"d").unwrap().ino;
        m.unlink(ROOT_INO, b"c").unwrap();
        assert_eq!(m.getattr(f).unwrap().nlink, 1);
        m.unlink(d, b"a").unwrap();
        assert!(m.getattr(f).is_err());
        let saved = m.save().unwrap();
        assert_eq!(saved.used_bytes, 0);
        let mut last = b.open_version(&saved.hash).unwrap();
        assert!(last
            .readdir(ROOT_INO)
            .unwrap()
            .iter()
            .all(|e| e.name != b"c"));
        assert!(last.link_table.is_empty());
    }
}
