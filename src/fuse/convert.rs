//! The adapter's pure part: turning the kernel's terms (modes, flags,
//! buffer sizes) into the bucket's, and the bucket's answers (attributes,
//! usage) into the kernel's. No I/O and no lock, so each rule is tested
//! here without a mount; `fs.rs` only calls these and replies.

use std::time::SystemTime;

use fuser::{FileAttr, FileType, INodeNo, RenameFlags as FuseRenameFlags, TimeOrNow};

use super::errno::Refusal;
use crate::bucket::{Attr, FileKind, RenameFlags, SpecialKind, Timestamp, Usage, XattrFlags};

/// Block size reported by stat and statfs.
pub const BLOCK_SIZE: u32 = 4096;
/// Inodes reported as the file system's total when there is no quota on them.
pub const MAX_FILES: u64 = 1 << 32;
/// Longest name, as statfs reports it.
pub const NAME_MAX: u32 = 255;
const S_ISGID: u32 = 0o2000;

pub fn file_type(kind: FileKind) -> FileType {
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

pub fn file_attr(a: &Attr) -> FileAttr {
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

pub fn time(t: TimeOrNow) -> Timestamp {
    match t {
        TimeOrNow::SpecificTime(t) => Timestamp::from(t),
        TimeOrNow::Now => Timestamp::from(SystemTime::now()),
    }
}

/// What `mknod` makes of `mode`'s file type: a regular file (`None`; a
/// type of 0 means one too) or a special file.
pub fn node_kind(mode: u32) -> Result<Option<SpecialKind>, Refusal> {
    match mode & libc::S_IFMT {
        0 | libc::S_IFREG => Ok(None),
        libc::S_IFIFO => Ok(Some(SpecialKind::Fifo)),
        libc::S_IFSOCK => Ok(Some(SpecialKind::Socket)),
        libc::S_IFCHR => Ok(Some(SpecialKind::CharDevice)),
        libc::S_IFBLK => Ok(Some(SpecialKind::BlockDevice)),
        _ => Err(Refusal::UnknownFileType),
    }
}

pub fn rename_flags(flags: FuseRenameFlags) -> Result<RenameFlags, Refusal> {
    if flags.contains(FuseRenameFlags::RENAME_WHITEOUT) {
        return Err(Refusal::NoWhiteout);
    }
    Ok(RenameFlags {
        no_replace: flags.contains(FuseRenameFlags::RENAME_NOREPLACE),
        exchange: flags.contains(FuseRenameFlags::RENAME_EXCHANGE),
    })
}

pub fn xattr_flags(flags: i32) -> XattrFlags {
    XattrFlags {
        create: flags & libc::XATTR_CREATE != 0,
        replace: flags & libc::XATTR_REPLACE != 0,
    }
}

/// The answer to getxattr or listxattr for a caller's buffer of `size`.
#[derive(Debug, PartialEq, Eq)]
pub enum XattrAnswer<'a> {
    /// A buffer of 0 asks how large the value is.
    Size(u32),
    Data(&'a [u8]),
}

pub fn xattr_answer(size: u32, data: &[u8]) -> Result<XattrAnswer<'_>, Refusal> {
    if size == 0 {
        Ok(XattrAnswer::Size(data.len() as u32))
    } else if data.len() > size as usize {
        Err(Refusal::XattrBufferTooSmall)
    } else {
        Ok(XattrAnswer::Data(data))
    }
}

/// listxattr's answer: the names, each ended by a NUL.
pub fn xattr_list(names: Vec<Vec<u8>>) -> Vec<u8> {
    let mut buf = Vec::new();
    for n in names {
        buf.extend_from_slice(&n);
        buf.push(0);
    }
    buf
}

/// Owner of a new entry: the caller, or the parent's group when the
/// parent is set-group-id (how `fsGroup` ownership propagates; a new
/// directory then is set-group-id too).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    /// The parent is set-group-id.
    pub inherits: bool,
}

impl Owner {
    pub fn of_new_entry(caller: (u32, u32), parent_mode: u32, parent_gid: u32) -> Self {
        let (uid, gid) = caller;
        if parent_mode & S_ISGID != 0 {
            Owner {
                uid,
                gid: parent_gid,
                inherits: true,
            }
        } else {
            Owner {
                uid,
                gid,
                inherits: false,
            }
        }
    }

    /// A new directory's mode: `mode` less the umask, set-group-id when
    /// its parent is.
    pub fn dir_mode(&self, mode: u32, umask: u32) -> u32 {
        (mode & !umask) | if self.inherits { S_ISGID } else { 0 }
    }
}

/// A new file's permission bits: `mode` less the umask.
pub fn file_mode(mode: u32, umask: u32) -> u32 {
    mode & !umask & 0o7777
}

/// What statfs answers, in [`BLOCK_SIZE`] blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Statfs {
    pub blocks: u64,
    pub free: u64,
    pub files: u64,
    pub files_free: u64,
}

/// The node's disk under the store, for statfs without a quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Disk {
    pub blocks_available: u64,
    pub fragment_size: u64,
}

/// The volume's size is its quota; without one, the node's disk is the
/// ceiling (`None`: the disk could not be asked, so nothing is free).
pub fn statfs(usage: &Usage, disk: Option<Disk>) -> Statfs {
    let bs = BLOCK_SIZE as u64;
    let used = usage.used_bytes.div_ceil(bs);
    let (blocks, free) = match usage.quota {
        Some(q) => (q / bs, (q / bs).saturating_sub(used)),
        None => match disk {
            Some(d) => {
                let avail = d.blocks_available * d.fragment_size / bs;
                (used + avail, avail)
            }
            None => (used, 0),
        },
    };
    Statfs {
        blocks,
        free,
        files: MAX_FILES,
        files_free: MAX_FILES.saturating_sub(usage.entries),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_carry_over_with_kind_permission_bits_and_rdev() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000);
        let a = Attr {
            ino: 42,
            size: 5000,
            blocks: 16,
            atime: t,
            mtime: t,
            ctime: t + std::time::Duration::from_secs(1),
            kind: FileKind::CharDevice,
            mode: 0o20644 | 0o4000,
            nlink: 2,
            uid: 1000,
            gid: 2000,
            rdev: (1 << 8) | 3,
        };
        let f = file_attr(&a);
        assert_eq!(f.ino, INodeNo(42));
        assert_eq!((f.size, f.blocks, f.nlink), (5000, 16, 2));
        assert_eq!(f.kind, FileType::CharDevice);
        assert_eq!(f.perm, 0o4644, "permission and set-id bits, no type bits");
        assert_eq!((f.uid, f.gid, f.rdev), (1000, 2000, (1 << 8) | 3));
        assert_eq!(
            (f.atime, f.mtime, f.ctime, f.crtime),
            (t, t, a.ctime, a.ctime)
        );
        assert_eq!(f.blksize, BLOCK_SIZE);
    }

    #[test]
    fn every_kind_has_its_file_type() {
        let cases = [
            (FileKind::File, FileType::RegularFile),
            (FileKind::Dir, FileType::Directory),
            (FileKind::Symlink, FileType::Symlink),
            (FileKind::Fifo, FileType::NamedPipe),
            (FileKind::Socket, FileType::Socket),
            (FileKind::CharDevice, FileType::CharDevice),
            (FileKind::BlockDevice, FileType::BlockDevice),
        ];
        for (k, t) in cases {
            assert_eq!(file_type(k), t);
        }
    }

    #[test]
    fn mknod_modes_name_their_kind() {
        assert_eq!(node_kind(0o644), Ok(None));
        assert_eq!(node_kind(libc::S_IFREG | 0o644), Ok(None));
        assert_eq!(node_kind(libc::S_IFIFO), Ok(Some(SpecialKind::Fifo)));
        assert_eq!(node_kind(libc::S_IFSOCK), Ok(Some(SpecialKind::Socket)));
        assert_eq!(node_kind(libc::S_IFCHR), Ok(Some(SpecialKind::CharDevice)));
        assert_eq!(node_kind(libc::S_IFBLK), Ok(Some(SpecialKind::BlockDevice)));
        assert_eq!(node_kind(libc::S_IFDIR), Err(Refusal::UnknownFileType));
        assert_eq!(node_kind(libc::S_IFLNK), Err(Refusal::UnknownFileType));
    }

    #[test]
    fn rename_flags_carry_over_and_whiteouts_are_refused() {
        let plain = rename_flags(FuseRenameFlags::empty()).unwrap();
        assert!(!plain.no_replace && !plain.exchange);
        assert!(
            rename_flags(FuseRenameFlags::RENAME_NOREPLACE)
                .unwrap()
                .no_replace
        );
        assert!(
            rename_flags(FuseRenameFlags::RENAME_EXCHANGE)
                .unwrap()
                .exchange
        );
        assert_eq!(
            rename_flags(FuseRenameFlags::RENAME_WHITEOUT | FuseRenameFlags::RENAME_NOREPLACE)
                .err(),
            Some(Refusal::NoWhiteout)
        );
    }

    #[test]
    fn xattr_flags_and_buffers() {
        let f = xattr_flags(libc::XATTR_CREATE);
        assert!(f.create && !f.replace);
        let f = xattr_flags(libc::XATTR_REPLACE);
        assert!(!f.create && f.replace);
        let f = xattr_flags(0);
        assert!(!f.create && !f.replace);
        assert_eq!(xattr_answer(0, b"value"), Ok(XattrAnswer::Size(5)));
        assert_eq!(xattr_answer(5, b"value"), Ok(XattrAnswer::Data(b"value")));
        assert_eq!(xattr_answer(64, b""), Ok(XattrAnswer::Data(b"")));
        assert_eq!(xattr_answer(4, b"value"), Err(Refusal::XattrBufferTooSmall));
        assert_eq!(
            xattr_list(vec![b"user.a".to_vec(), b"user.bc".to_vec()]),
            b"user.a\0user.bc\0"
        );
        assert_eq!(xattr_list(Vec::new()), b"");
    }

    #[test]
    fn new_entries_inherit_the_group_of_a_set_group_id_parent() {
        let plain = Owner::of_new_entry((1000, 1000), 0o755, 50);
        assert_eq!(
            plain,
            Owner {
                uid: 1000,
                gid: 1000,
                inherits: false
            }
        );
        assert_eq!(plain.dir_mode(0o777, 0o022), 0o755);
        let sgid = Owner::of_new_entry((1000, 1000), 0o2775, 50);
        assert_eq!(
            sgid,
            Owner {
                uid: 1000,
                gid: 50,
                inherits: true
            }
        );
        assert_eq!(sgid.dir_mode(0o777, 0o002), 0o2775);
        assert_eq!(file_mode(0o100666, 0o022), 0o644, "no type bits");
        assert_eq!(file_mode(0o4777, 0o027), 0o4750);
    }

    #[test]
    fn statfs_is_the_quota_or_the_node_disk() {
        let usage = |used_bytes, quota| Usage {
            used_bytes,
            quota,
            entries: 10,
        };
        let disk = Disk {
            blocks_available: 100,
            fragment_size: 8192,
        };
        // A quota is the size, whatever the disk has.
        let s = statfs(&usage(4097, Some(40960)), Some(disk));
        assert_eq!((s.blocks, s.free), (10, 8), "4097 bytes use two blocks");
        assert_eq!((s.files, s.files_free), (MAX_FILES, MAX_FILES - 10));
        // Over quota (orphans can be): nothing free, no underflow.
        let s = statfs(&usage(1 << 20, Some(4096)), None);
        assert_eq!((s.blocks, s.free), (1, 0));
        // No quota: what is used plus what the disk has free.
        let s = statfs(&usage(8192, None), Some(disk));
        assert_eq!((s.blocks, s.free), (2 + 200, 200));
        // No quota, and the disk cannot be asked.
        let s = statfs(&usage(8192, None), None);
        assert_eq!((s.blocks, s.free), (2, 0));
    }
}
