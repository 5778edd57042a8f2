//! `JaxFs`: a thin `fuser::Filesystem` adapter over a [`LiveMount`]. Each
//! operation locks the Mount, calls one bucket method and maps the result;
//! file-system semantics live in `bucket::Mount`, errno mapping in
//! `errno.rs`, and permission checks in the kernel (`default_permissions`).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags as FuseRenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::errno::errno_of;
use super::live::LiveMount;
use crate::bucket::{
    Attr, DirEntry, FileKind, Mount, RenameFlags, SetAttr, SpecialKind, Timestamp, XattrFlags,
};

/// Largest write the kernel sends in one request: whole 1 MiB chunks.
pub const MAX_WRITE: u32 = 1 << 20;
/// Block size reported by stat and statfs.
const BLOCK_SIZE: u32 = 4096;
/// Inodes reported as the file system's total when there is no quota on them.
const MAX_FILES: u64 = 1 << 32;
const S_ISGID: u32 = 0o2000;

/// Tuning for one FUSE session.
#[derive(Clone, Debug)]
pub struct FsOptions {
    /// How long the kernel may cache attributes and directory entries.
    pub ttl: Duration,
}

impl Default for FsOptions {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(1),
        }
    }
}

pub struct JaxFs {
    live: LiveMount,
    opts: FsOptions,
    dirs: DirHandles,
}

impl JaxFs {
    pub fn new(live: LiveMount, opts: FsOptions) -> Self {
        Self {
            live,
            opts,
            dirs: DirHandles::default(),
        }
    }

    /// A directory's entries with `.` and `..` first, as readdir serves them.
    fn listing(&self, ino: INodeNo) -> Result<Arc<Vec<DirEntry>>, Errno> {
        self.with(|m| {
            if m.kind_mode_gid(ino.0)?.0 != FileKind::Dir {
                return Err(crate::bucket::BucketError::NotADirectory);
            }
            let dot = |name: &[u8]| DirEntry {
                name: name.to_vec(),
                ino: ino.0,
                kind: FileKind::Dir,
            };
            let mut all = vec![dot(b"."), dot(b"..")];
            all.extend(m.readdir(ino.0)?);
            Ok(Arc::new(all))
        })
    }

    /// The listing taken at opendir, so offsets stay stable while entries
    /// are removed (rm -r); reading from offset 0 again takes a fresh one.
    fn listing_for(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
    ) -> Result<Arc<Vec<DirEntry>>, Errno> {
        match self.dirs.get(fh.0) {
            Some(l) if offset != 0 => Ok(l),
            _ => {
                let l = self.listing(ino)?;
                self.dirs.replace(fh.0, l.clone());
                Ok(l)
            }
        }
    }

    /// Run `f` on the locked Mount.
    fn with<T>(&self, f: impl FnOnce(&mut Mount) -> crate::bucket::Result<T>) -> Result<T, Errno> {
        let mut m = self.live.lock();
        f(&mut m).map_err(|e| {
            if matches!(e, crate::bucket::BucketError::QuotaExceeded { .. }) {
                drop(m);
                self.live.quota_reached();
            }
            errno_of("fuse", &e)
        })
    }

    /// Run a mutating `f`, and tell the committer on success.
    fn change<T>(
        &self,
        f: impl FnOnce(&mut Mount) -> crate::bucket::Result<T>,
    ) -> Result<T, Errno> {
        let r = self.with(f);
        if r.is_ok() {
            self.live.touched();
        }
        r
    }

    /// fsync and fsyncdir: write a version now, so the data is durable.
    fn commit(&self, op: &'static str, reply: ReplyEmpty) {
        match self.live.commit_now() {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(errno_of(op, &e)),
        }
    }

    /// `f`, then count the kernel's new reference to the inode it answers
    /// with, under the same Mount lock: the kernel holds it until FORGET,
    /// which keeps an unlinked file alive while open, and no unlink can
    /// slip in between.
    fn counted<'a>(
        &'a self,
        f: impl FnOnce(&mut Mount) -> crate::bucket::Result<Attr> + 'a,
    ) -> impl FnOnce(&mut Mount) -> crate::bucket::Result<Attr> + 'a {
        move |m| {
            let a = f(m)?;
            self.live.lookups().looked_up(m, a.ino);
            Ok(a)
        }
    }

    /// Answer with an entry (counted by [`JaxFs::counted`] in the same
    /// lock that found or made it).
    fn entry(&self, reply: ReplyEntry, r: Result<Attr, Errno>) {
        match r {
            Ok(a) => reply.entry(&self.opts.ttl, &file_attr(&a), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    /// Owner of a new entry: the caller, or the parent's group when the
    /// parent is set-group-id (how `fsGroup` ownership propagates).
    fn new_owner(&self, req: &Request, parent: INodeNo) -> Result<(u32, u32, bool), Errno> {
        let (_, mode, gid) = self.with(|m| m.kind_mode_gid(parent.0))?;
        if mode & S_ISGID != 0 {
            Ok((req.uid(), gid, true))
        } else {
            Ok((req.uid(), req.gid(), false))
        }
    }
}

/// Open directory handles and the listing each one reads from.
struct DirHandles {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>,
}

impl Default for DirHandles {
    /// Numbers start at a random point: after a handover the kernel still
    /// holds its predecessor's handles, which must not name new listings
    /// (an unknown handle just reads a fresh listing).
    fn default() -> Self {
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        Self {
            next: AtomicU64::new(u64::from_le_bytes(seed) >> 2),
            open: Mutex::default(),
        }
    }
}

impl DirHandles {
    fn open(&self, listing: Arc<Vec<DirEntry>>) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.open.lock().unwrap().insert(fh, listing);
        fh
    }

    fn get(&self, fh: u64) -> Option<Arc<Vec<DirEntry>>> {
        self.open.lock().unwrap().get(&fh).cloned()
    }

    fn replace(&self, fh: u64, listing: Arc<Vec<DirEntry>>) {
        if let Some(l) = self.open.lock().unwrap().get_mut(&fh) {
            *l = listing;
        }
    }

    fn close(&self, fh: u64) {
        self.open.lock().unwrap().remove(&fh);
    }
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: file_type(a.kind),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        // The kernel's dev_t as mknod handed it over (a 32-bit encoding).
        rdev: a.rdev as u32,
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

fn time(t: TimeOrNow) -> Timestamp {
    match t {
        TimeOrNow::SpecificTime(t) => Timestamp::from(t),
        TimeOrNow::Now => Timestamp::from(SystemTime::now()),
    }
}

fn reply_xattr(reply: ReplyXattr, size: u32, data: &[u8]) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if data.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(data);
    }
}

impl Filesystem for JaxFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Opens carry no message (see `open`), so FUSE_ATOMIC_O_TRUNC must stay
        // off: without it O_TRUNC arrives as a setattr; with it, it would be lost.
        // Large writes: whole chunks per request (the default is 128 KiB).
        let _ = config.add_capabilities(InitFlags::FUSE_MAX_PAGES);
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_readahead(MAX_WRITE);
        let _ = config
            .add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO);
        Ok(())
    }

    fn destroy(&mut self) {
        if let Err(e) = self.live.commit_now() {
            tracing::error!(error = %e, "commit at unmount failed");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _op = crate::metrics::FuseOp::start("lookup");
        let r = self.with(self.counted(|m| m.lookup(parent.0, name.as_bytes())));
        self.entry(reply, r)
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _op = crate::metrics::FuseOp::start("getattr");
        match self.with(|m| m.getattr(ino.0)) {
            Ok(a) => reply.attr(&self.opts.ttl, &file_attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _op = crate::metrics::FuseOp::start("setattr");
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time),
            mtime: mtime.map(time),
        };
        match self.change(|m| m.setattr(ino.0, set)) {
            Ok(a) => reply.attr(&self.opts.ttl, &file_attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _op = crate::metrics::FuseOp::start("readlink");
        match self.with(|m| m.readlink(ino.0)) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _op = crate::metrics::FuseOp::start("mknod");
        let kind = match mode & libc::S_IFMT {
            0 | libc::S_IFREG => None,
            libc::S_IFIFO => Some(SpecialKind::Fifo),
            libc::S_IFSOCK => Some(SpecialKind::Socket),
            libc::S_IFCHR => Some(SpecialKind::CharDevice),
            libc::S_IFBLK => Some(SpecialKind::BlockDevice),
            _ => return reply.error(Errno::EINVAL),
        };
        let perm = mode & !umask & 0o7777;
        let r = self.new_owner(req, parent).and_then(|(uid, gid, _)| {
            self.change(self.counted(|m| match kind {
                None => m.create(parent.0, name.as_bytes(), perm, uid, gid),
                Some(kind) => m.mknod(
                    parent.0,
                    name.as_bytes(),
                    kind,
                    perm,
                    u64::from(rdev),
                    uid,
                    gid,
                ),
            }))
        });
        self.entry(reply, r)
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let _op = crate::metrics::FuseOp::start("mkdir");
        let r = self.new_owner(req, parent).and_then(|(uid, gid, inherit)| {
            let mode = (mode & !umask) | if inherit { S_ISGID } else { 0 };
            self.change(self.counted(|m| m.mkdir(parent.0, name.as_bytes(), mode, uid, gid)))
        });
        self.entry(reply, r)
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _op = crate::metrics::FuseOp::start("unlink");
        match self.change(|m| m.unlink(parent.0, name.as_bytes())) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _op = crate::metrics::FuseOp::start("rmdir");
        match self.change(|m| m.rmdir(parent.0, name.as_bytes())) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let _op = crate::metrics::FuseOp::start("symlink");
        let r = self.new_owner(req, parent).and_then(|(uid, gid, _)| {
            self.change(self.counted(|m| {
                m.symlink(
                    parent.0,
                    link_name.as_bytes(),
                    target.as_os_str().as_bytes(),
                    uid,
                    gid,
                )
            }))
        });
        self.entry(reply, r)
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: FuseRenameFlags,
        reply: ReplyEmpty,
    ) {
        let _op = crate::metrics::FuseOp::start("rename");
        if flags.contains(FuseRenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        let flags = RenameFlags {
            no_replace: flags.contains(FuseRenameFlags::RENAME_NOREPLACE),
            exchange: flags.contains(FuseRenameFlags::RENAME_EXCHANGE),
        };
        let r = self.change(|m| {
            m.rename(
                parent.0,
                name.as_bytes(),
                newparent.0,
                newname.as_bytes(),
                flags,
            )
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _op = crate::metrics::FuseOp::start("link");
        let r = self.change(self.counted(|m| m.link(ino.0, newparent.0, newname.as_bytes())));
        self.entry(reply, r)
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _op = crate::metrics::FuseOp::start("open");
        // Files need no per-open state, so ENOSYS turns on the kernel's
        // zero-message opens: no OPEN and no RELEASE round trip per file from
        // now on, and the page cache is kept across opens (remote changes
        // invalidate it). Directories still go through `opendir`.
        reply.error(Errno::ENOSYS)
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _op = crate::metrics::FuseOp::start("read");
        // The mount is held only to plan the read: chunks are loaded and
        // decrypted after it is released, so readers of one volume overlap
        // (and a writer does not wait for them). The reply is written from
        // the cached chunk itself when it can be.
        let read = self
            .with(|m| m.read_plan(ino.0, offset, size))
            .and_then(|(plan, io)| plan.run(&io).map_err(|e| errno_of("fuse", &e)));
        match read {
            Ok(data) => {
                crate::metrics::fuse_read(data.as_slice().len());
                reply.data(data.as_slice())
            }
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _op = crate::metrics::FuseOp::start("write");
        let written =
            self.change(|m| Ok((m.write(ino.0, offset, data)?, m.seals_in_flight(ino.0))));
        match written {
            Ok((n, seals)) => {
                crate::metrics::fuse_written(n as usize);
                // A writer faster than sealing gets its reply once a seal
                // made room: without the Mount held, and without this
                // worker waiting, so other requests go on meanwhile.
                match seals {
                    Some(seals) => seals.when_room(Box::new(move || reply.written(n))),
                    None => reply.written(n),
                }
            }
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let _op = crate::metrics::FuseOp::start("flush");
        // close(2) does not promise durability (the committer writes soon),
        // so there is nothing to do: ENOSYS tells the kernel to stop sending
        // FLUSH on every close.
        reply.error(Errno::ENOSYS)
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _op = crate::metrics::FuseOp::start("fsync");
        self.commit("fsync", reply)
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _op = crate::metrics::FuseOp::start("opendir");
        match self.listing(ino) {
            Ok(listing) => {
                let fh = self.dirs.open(listing);
                reply.opened(FileHandle(fh), FopenFlags::empty())
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _op = crate::metrics::FuseOp::start("readdir");
        let listing = match self.listing_for(ino, fh, offset) {
            Ok(l) => l,
            Err(e) => return reply.error(e),
        };
        for (i, e) in listing.iter().enumerate().skip(offset as usize) {
            if reply.add(
                INodeNo(e.ino),
                i as u64 + 1,
                file_type(e.kind),
                OsStr::from_bytes(&e.name),
            ) {
                break;
            }
        }
        reply.ok()
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _op = crate::metrics::FuseOp::start("readdirplus");
        let listing = match self.listing_for(ino, fh, offset) {
            Ok(l) => l,
            Err(e) => return reply.error(e),
        };
        let mut m = self.live.lock();
        for (i, e) in listing.iter().enumerate().skip(offset as usize) {
            // The listing is from opendir: an entry removed or replaced since
            // is skipped (a name must never lead the kernel to an old inode).
            let dot = e.name == b"." || e.name == b"..";
            let current = if dot {
                m.getattr(e.ino)
            } else {
                m.lookup(ino.0, &e.name)
            };
            let Ok(attr) = current else { continue };
            if attr.ino != e.ino {
                continue;
            }
            if reply.add(
                INodeNo(e.ino),
                i as u64 + 1,
                OsStr::from_bytes(&e.name),
                &self.opts.ttl,
                &file_attr(&attr),
                Generation(0),
            ) {
                break;
            }
            // The kernel takes a reference to every entry but `.` and `..`.
            if !dot {
                self.live.lookups().looked_up(&mut m, e.ino);
            }
        }
        drop(m);
        reply.ok()
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let _op = crate::metrics::FuseOp::start("releasedir");
        self.dirs.close(fh.0);
        reply.ok()
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _op = crate::metrics::FuseOp::start("fsyncdir");
        self.commit("fsyncdir", reply)
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _op = crate::metrics::FuseOp::start("statfs");
        let (usage, store) = {
            let m = self.live.lock();
            (m.usage(), m.store_dir())
        };
        let bs = BLOCK_SIZE as u64;
        let used = usage.used_bytes.div_ceil(bs);
        // The quota is the size; without one, the node's disk is the ceiling.
        let (total, free) = match usage.quota {
            Some(q) => (q / bs, (q / bs).saturating_sub(used)),
            None => match nix::sys::statvfs::statvfs(&store) {
                Ok(s) => {
                    let frag = s.fragment_size();
                    let avail = s.blocks_available() * frag / bs;
                    (used + avail, avail)
                }
                Err(_) => (used, 0),
            },
        };
        let ffree = MAX_FILES.saturating_sub(usage.entries);
        reply.statfs(
            total, free, free, MAX_FILES, ffree, BLOCK_SIZE, 255, BLOCK_SIZE,
        );
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _op = crate::metrics::FuseOp::start("setxattr");
        let flags = XattrFlags {
            create: flags & libc::XATTR_CREATE != 0,
            replace: flags & libc::XATTR_REPLACE != 0,
        };
        match self.change(|m| m.setxattr(ino.0, name.as_bytes(), value, flags)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _op = crate::metrics::FuseOp::start("getxattr");
        match self.with(|m| m.getxattr(ino.0, name.as_bytes())) {
            Ok(v) => reply_xattr(reply, size, &v),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _op = crate::metrics::FuseOp::start("listxattr");
        match self.with(|m| m.listxattr(ino.0)) {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(&n);
                    buf.push(0);
                }
                reply_xattr(reply, size, &buf)
            }
            Err(e) => reply.error(e),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _op = crate::metrics::FuseOp::start("removexattr");
        match self.change(|m| m.removexattr(ino.0, name.as_bytes())) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        let _op = crate::metrics::FuseOp::start("access");
        // With default_permissions the kernel checks mode bits itself; this
        // only answers whether the inode exists.
        match self.with(|m| m.kind_mode_gid(ino.0)) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let _op = crate::metrics::FuseOp::start("create");
        let r = self.new_owner(req, parent).and_then(|(uid, gid, _)| {
            self.change(
                self.counted(|m| m.create(parent.0, name.as_bytes(), mode & !umask, uid, gid)),
            )
        });
        match r {
            Ok(a) => reply.created(
                &self.opts.ttl,
                &file_attr(&a),
                Generation(0),
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let mut m = self.live.lock();
        self.live.lookups().forget(&mut m, ino.0, nlookup);
    }
}
