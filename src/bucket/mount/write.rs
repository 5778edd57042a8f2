//! Changes to what an inode holds: writes, truncates and other attribute
//! changes, xattrs, and the quota that bounds the bytes files allocate.

use std::sync::Arc;

use super::inodes::Body;
use super::{Attr, Ino, Mount};
use crate::bucket::chunks::SealsInFlight;
use crate::bucket::error::{BucketError, Result};
use crate::bucket::journal::Change;
use crate::bucket::ops::Op;
use crate::bucket::tree::Timestamp;

/// A file's dirty bytes past this are flushed to the store without waiting for a save.
const DIRTY_FILE_LIMIT: u64 = 64 << 20;

/// Largest extended attribute value, as Linux's XATTR_SIZE_MAX.
const XATTR_VALUE_MAX: usize = 64 << 10;

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

/// `setxattr` flags, as setxattr(2).
#[derive(Clone, Copy, Debug, Default)]
pub struct XattrFlags {
    pub create: bool,
    pub replace: bool,
}

impl Mount {
    pub fn setattr(&mut self, ino: Ino, set: SetAttr) -> Result<Attr> {
        self.start_change()?;
        let now = self.now();
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
            if size > crate::bucket::chunks::MAX_FILE_SIZE {
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
                inode.meta.mtime = now;
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
        inode.meta.ctime = now;
        inode.meta.touch(writer);
        self.entry_changed(ino);
        self.record(|| Change::set_attr(ino, &set));
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
        self.start_change()?;
        let cs = self.io.chunk_size;
        let len = data.len() as u64;
        if offset
            .checked_add(len)
            .is_none_or(|end| end > crate::bucket::chunks::MAX_FILE_SIZE)
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
        let now = self.now();
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
        inode.meta.mtime = now;
        inode.meta.ctime = now;
        inode.meta.touch(writer);
        self.account(ino, before, now_allocated);
        self.entry_changed(ino);
        self.log_for(ino, |path| Op::Write { path, offset, len });
        // What reached the buffers is the file's content, even if a flush
        // failed: a replay must make the same.
        self.record(|| Change::Write {
            ino,
            offset,
            data: data.to_vec(),
        });
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
        self.start_change()?;
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
        let now = self.now();
        let inode = self.inode_mut(ino)?;
        let exists = inode.meta.xattrs.contains_key(name);
        if flags.create && exists {
            return Err(BucketError::Exists);
        }
        if flags.replace && !exists {
            return Err(BucketError::NoXattr);
        }
        inode.meta.xattrs.insert(name.to_vec(), value.to_vec());
        inode.meta.ctime = now;
        inode.meta.touch(writer);
        self.entry_changed(ino);
        self.record(|| Change::set_xattr(ino, name, value, flags));
        let name = String::from_utf8_lossy(name).into_owned();
        self.log_for(ino, |path| Op::SetXattr { path, name });
        Ok(())
    }

    pub fn removexattr(&mut self, ino: Ino, name: &[u8]) -> Result<()> {
        self.start_change()?;
        let now = self.now();
        let inode = self.inode_mut(ino)?;
        inode.meta.xattrs.remove(name).ok_or(BucketError::NoXattr)?;
        inode.meta.ctime = now;
        self.entry_changed(ino);
        self.record(|| Change::RemoveXattr {
            ino,
            name: name.to_vec(),
        });
        let name = String::from_utf8_lossy(name).into_owned();
        self.log_for(ino, |path| Op::RemoveXattr { path, name });
        Ok(())
    }

    /// Change the byte quota (`None` = unlimited). Takes effect at once.
    pub fn set_quota(&mut self, quota: Option<u64>) -> Result<()> {
        self.start_change()?;
        self.quota = quota;
        self.changed = true;
        self.record(|| Change::SetQuota { quota });
        Ok(())
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
}
