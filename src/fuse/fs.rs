//! `JaxFs`: a thin `fuser::Filesystem` adapter over a [`LiveMount`]. Each
//! operation locks the Mount, calls one bucket method and replies; what a
//! result means for the kernel is decided elsewhere: file-system semantics
//! in `bucket::Mount`, errnos, logging and error metrics in `errno.rs` (every
//! failure goes through [`Op::fail`]), modes, flags and attributes in
//! `convert.rs`, the kernel's lookup counts in `lookups.rs`. Permission
//! checks are the kernel's (`default_permissions`).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, IoctlFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags as FuseRenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::convert::{self, file_attr, file_type, Owner, XattrAnswer, BLOCK_SIZE};
use super::errno::{FsError, Op, Refusal};
use super::live::LiveMount;
use crate::bucket::{Attr, BucketError, DirEntry, FileKind, Mount, SetAttr};

/// Largest write the kernel sends in one request: whole 1 MiB chunks.
pub const MAX_WRITE: u32 = 1 << 20;

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

type FsResult<T> = Result<T, FsError>;

impl JaxFs {
    pub fn new(live: LiveMount, opts: FsOptions) -> Self {
        Self {
            live,
            opts,
            dirs: DirHandles::default(),
        }
    }

    /// A directory's entries with `.` and `..` first, as readdir serves them.
    fn listing(&self, ino: INodeNo) -> FsResult<Arc<Vec<DirEntry>>> {
        self.with(|m| {
            if m.kind_mode_gid(ino.0)?.0 != FileKind::Dir {
                return Err(BucketError::NotADirectory);
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
    ) -> FsResult<Arc<Vec<DirEntry>>> {
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
    fn with<T>(&self, f: impl FnOnce(&mut Mount) -> crate::bucket::Result<T>) -> FsResult<T> {
        let mut m = self.live.lock();
        f(&mut m).map_err(|e| {
            if matches!(e, BucketError::QuotaExceeded { .. }) {
                drop(m);
                self.live.quota_reached();
            }
            FsError::from(e)
        })
    }

    /// Run a mutating `f`, and tell the committer on success.
    fn change<T>(&self, f: impl FnOnce(&mut Mount) -> crate::bucket::Result<T>) -> FsResult<T> {
        let r = self.with(f);
        if r.is_ok() {
            self.live.touched();
        }
        r
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

    /// fsync and fsyncdir: make every change durable (the journal; see
    /// [`LiveMount::sync_changes`]).
    fn sync(&self, op: Op, ino: INodeNo, reply: ReplyEmpty) {
        if let Some(e) = self.live.lost_in_crash(ino.0) {
            return op.fail(reply, e);
        }
        match self.live.sync_changes() {
            Ok(_) => reply.ok(),
            Err(e) => op.fail(reply, e),
        }
    }

    /// Answer with an entry (counted by [`JaxFs::counted`] in the same
    /// lock that found or made it).
    fn entry(&self, op: Op, reply: ReplyEntry, r: FsResult<Attr>) {
        match r {
            Ok(a) => reply.entry(&self.opts.ttl, &file_attr(&a), Generation(0)),
            Err(e) => op.fail(reply, e),
        }
    }

    /// Owner of a new entry in `parent` ([`Owner::of_new_entry`]).
    fn new_owner(&self, req: &Request, parent: INodeNo) -> FsResult<Owner> {
        let (_, mode, gid) = self.with(|m| m.kind_mode_gid(parent.0))?;
        Ok(Owner::of_new_entry((req.uid(), req.gid()), mode, gid))
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

fn reply_xattr(op: Op, reply: ReplyXattr, size: u32, data: &[u8]) {
    match convert::xattr_answer(size, data) {
        Ok(XattrAnswer::Size(n)) => reply.size(n),
        Ok(XattrAnswer::Data(d)) => reply.data(d),
        Err(r) => op.fail(reply, r),
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
        let op = Op::start("lookup");
        let r = self.with(self.counted(|m| m.lookup(parent.0, name.as_bytes())));
        self.entry(op, reply, r)
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let op = Op::start("getattr");
        match self.with(|m| m.getattr(ino.0)) {
            Ok(a) => reply.attr(&self.opts.ttl, &file_attr(&a)),
            Err(e) => op.fail(reply, e),
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
        let op = Op::start("setattr");
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(convert::time),
            mtime: mtime.map(convert::time),
        };
        match self.change(|m| m.setattr(ino.0, set)) {
            Ok(a) => reply.attr(&self.opts.ttl, &file_attr(&a)),
            Err(e) => op.fail(reply, e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let op = Op::start("readlink");
        match self.with(|m| m.readlink(ino.0)) {
            Ok(t) => reply.data(&t),
            Err(e) => op.fail(reply, e),
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
        let op = Op::start("mknod");
        let kind = match convert::node_kind(mode) {
            Ok(k) => k,
            Err(r) => return op.fail(reply, r),
        };
        let perm = convert::file_mode(mode, umask);
        let r = self.new_owner(req, parent).and_then(|o| {
            self.change(self.counted(|m| match kind {
                None => m.create(parent.0, name.as_bytes(), perm, o.uid, o.gid),
                Some(kind) => m.mknod(
                    parent.0,
                    name.as_bytes(),
                    kind,
                    perm,
                    u64::from(rdev),
                    o.uid,
                    o.gid,
                ),
            }))
        });
        self.entry(op, reply, r)
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
        let op = Op::start("mkdir");
        let r = self.new_owner(req, parent).and_then(|o| {
            let mode = o.dir_mode(mode, umask);
            self.change(self.counted(|m| m.mkdir(parent.0, name.as_bytes(), mode, o.uid, o.gid)))
        });
        self.entry(op, reply, r)
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let op = Op::start("unlink");
        match self.change(|m| m.unlink(parent.0, name.as_bytes())) {
            Ok(()) => reply.ok(),
            Err(e) => op.fail(reply, e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let op = Op::start("rmdir");
        match self.change(|m| m.rmdir(parent.0, name.as_bytes())) {
            Ok(()) => reply.ok(),
            Err(e) => op.fail(reply, e),
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
        let op = Op::start("symlink");
        let r = self.new_owner(req, parent).and_then(|o| {
            self.change(self.counted(|m| {
                m.symlink(
                    parent.0,
                    link_name.as_bytes(),
                    target.as_os_str().as_bytes(),
                    o.uid,
                    o.gid,
                )
            }))
        });
        self.entry(op, reply, r)
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
        let op = Op::start("rename");
        let flags = match convert::rename_flags(flags) {
            Ok(f) => f,
            Err(r) => return op.fail(reply, r),
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
            Err(e) => op.fail(reply, e),
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
        let op = Op::start("link");
        let r = self.change(self.counted(|m| m.link(ino.0, newparent.0, newname.as_bytes())));
        self.entry(op, reply, r)
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // Zero-message opens (see `Refusal::NoOpenNeeded`); directories
        // still go through `opendir`.
        Op::start("open").fail(reply, Refusal::NoOpenNeeded)
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
        let op = Op::start("read");
        // The mount is held only to plan the read: chunks are loaded and
        // decrypted after it is released, so readers of one volume overlap
        // (and a writer does not wait for them). The reply is written from
        // the cached chunk itself when it can be.
        let read = self
            .with(|m| m.read_plan(ino.0, offset, size))
            .and_then(|(plan, io)| Ok(plan.run(&io)?));
        match read {
            Ok(data) => {
                crate::metrics::fuse_read(data.as_slice().len());
                reply.data(data.as_slice())
            }
            Err(e) => op.fail(reply, e),
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
        let op = Op::start("write");
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
            Err(e) => op.fail(reply, e),
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
        // Nothing to do on close (see `Refusal::NoFlushNeeded`).
        Op::start("flush").fail(reply, Refusal::NoFlushNeeded)
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.sync(Op::start("fsync"), ino, reply)
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let op = Op::start("opendir");
        match self.listing(ino) {
            Ok(listing) => {
                let fh = self.dirs.open(listing);
                reply.opened(FileHandle(fh), FopenFlags::empty())
            }
            Err(e) => op.fail(reply, e),
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
        let op = Op::start("readdir");
        let listing = match self.listing_for(ino, fh, offset) {
            Ok(l) => l,
            Err(e) => return op.fail(reply, e),
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
        let op = Op::start("readdirplus");
        let listing = match self.listing_for(ino, fh, offset) {
            Ok(l) => l,
            Err(e) => return op.fail(reply, e),
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
        let _op = Op::start("releasedir");
        self.dirs.close(fh.0);
        reply.ok()
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.sync(Op::start("fsyncdir"), ino, reply)
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _op = Op::start("statfs");
        let (usage, store) = {
            let m = self.live.lock();
            (m.usage(), m.store_dir())
        };
        let disk = match usage.quota {
            Some(_) => None,
            None => nix::sys::statvfs::statvfs(&store)
                .ok()
                .map(|s| convert::Disk {
                    blocks_available: s.blocks_available(),
                    fragment_size: s.fragment_size(),
                }),
        };
        let s = convert::statfs(&usage, disk);
        reply.statfs(
            s.blocks,
            s.free,
            s.free,
            s.files,
            s.files_free,
            BLOCK_SIZE,
            convert::NAME_MAX,
            BLOCK_SIZE,
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
        let op = Op::start("setxattr");
        let flags = convert::xattr_flags(flags);
        match self.change(|m| m.setxattr(ino.0, name.as_bytes(), value, flags)) {
            Ok(()) => reply.ok(),
            Err(e) => op.fail(reply, e),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let op = Op::start("getxattr");
        match self.with(|m| m.getxattr(ino.0, name.as_bytes())) {
            Ok(v) => reply_xattr(op, reply, size, &v),
            Err(e) => op.fail(reply, e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let op = Op::start("listxattr");
        match self.with(|m| m.listxattr(ino.0)) {
            Ok(names) => reply_xattr(op, reply, size, &convert::xattr_list(names)),
            Err(e) => op.fail(reply, e),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let op = Op::start("removexattr");
        match self.change(|m| m.removexattr(ino.0, name.as_bytes())) {
            Ok(()) => reply.ok(),
            Err(e) => op.fail(reply, e),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        let op = Op::start("access");
        // With default_permissions the kernel checks mode bits itself; this
        // only answers whether the inode exists.
        match self.with(|m| m.kind_mode_gid(ino.0)) {
            Ok(_) => reply.ok(),
            Err(e) => op.fail(reply, e),
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
        let op = Op::start("create");
        let r = self.new_owner(req, parent).and_then(|o| {
            self.change(
                self.counted(|m| m.create(parent.0, name.as_bytes(), mode & !umask, o.uid, o.gid)),
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
            Err(e) => op.fail(reply, e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let mut m = self.live.lock();
        self.live.lookups().forget(&mut m, ino.0, nlookup);
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        // Not fuser's default, which logs a warning for each (every
        // Python `open()` asks one; see `Refusal::NoIoctl`).
        Op::start("ioctl").fail(reply, Refusal::NoIoctl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(names: &[&str]) -> Arc<Vec<DirEntry>> {
        Arc::new(
            names
                .iter()
                .enumerate()
                .map(|(i, n)| DirEntry {
                    name: n.as_bytes().to_vec(),
                    ino: i as u64 + 2,
                    kind: FileKind::File,
                })
                .collect(),
        )
    }

    /// Each opendir gets its own handle and listing; a listing is replaced
    /// only while its handle is open, and gone once released.
    #[test]
    fn directory_handles_keep_their_listing_until_released() {
        let dirs = DirHandles::default();
        let a = dirs.open(listing(&["x"]));
        let b = dirs.open(listing(&["y", "z"]));
        assert_ne!(a, b);
        assert_eq!(dirs.get(a).unwrap().len(), 1);
        assert_eq!(dirs.get(b).unwrap().len(), 2);
        dirs.replace(a, listing(&["x", "w"]));
        assert_eq!(dirs.get(a).unwrap().len(), 2);
        dirs.close(a);
        assert!(dirs.get(a).is_none());
        dirs.replace(a, listing(&["late"]));
        assert!(
            dirs.get(a).is_none(),
            "a released handle is not brought back"
        );
        assert_eq!(dirs.get(b).unwrap().len(), 2);
    }

    /// Handle numbers start at a random point, so a successor process does
    /// not hand out the numbers its predecessor's kernel still holds.
    #[test]
    fn directory_handles_start_at_a_random_number() {
        let first = |_| DirHandles::default().open(listing(&[]));
        let starts: std::collections::HashSet<u64> = (0..4).map(first).collect();
        assert!(starts.len() > 1, "{starts:?}");
    }
}
