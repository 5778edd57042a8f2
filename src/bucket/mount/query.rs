//! Reads: attributes, lookups, directory listings, symlink targets, file
//! bytes and xattrs, and where the chunks they need come from (the read
//! cache, peers). None of them changes the tree (no atime).

use std::sync::Arc;
use std::time::SystemTime;

use super::inodes::{Body, DirData};
use super::{Ino, Mount};
use crate::bucket::chunks::{ChunkIo, ReadBuf};
use crate::bucket::error::{BucketError, Result};
use crate::bucket::tree::SpecialKind;

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

impl Mount {
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
    ) -> Result<(crate::bucket::chunks::ReadPlan, ChunkIo)> {
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

    /// Fetch chunks this node lacks from peers while it reads (a bucket
    /// still being completed after it moved here).
    pub fn set_remote(&mut self, remote: Arc<dyn crate::bucket::chunks::RemoteBlobs>) {
        self.io.set_remote(remote);
    }

    /// Change how many decrypted chunks the read cache holds (0 = off).
    pub fn set_cache_chunks(&mut self, chunks: usize) {
        self.io.set_cache_capacity(chunks);
    }
}
