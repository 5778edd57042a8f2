//! One place a FUSE request's failure becomes an errno, the way
//! mountpoint-s3 does it: every bucket error knows its errno (an exhaustive
//! match, [`ToErrno`]); the few answers the adapter decides itself are
//! named [`Refusal`]s, each with its reason; and [`Op::fail`] is the one
//! function that logs a failure at its level, counts it and replies. No
//! request handler names an errno.
//!
//! Integrity and I/O failures are logged here: the caller only sees EIO,
//! the operator sees which blob failed. Expected answers (ENOENT for a
//! name that is not there, the refusals) are not logged above debug: a
//! program probing for files must not fill the node's log.

use fuser::{
    Errno, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyIoctl, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
};

use crate::bucket::BucketError;
use crate::metrics::FuseOp;

/// The errno a FUSE reply carries for an error.
pub trait ToErrno {
    fn errno(&self) -> Errno;
}

impl ToErrno for BucketError {
    fn errno(&self) -> Errno {
        use BucketError as E;
        match self {
            E::NotFound | E::BucketNotFound(_) | E::VersionNotFound(_) => Errno::ENOENT,
            // An inode the kernel still names but a synced head replaced
            // (another node's file took the name): ESTALE makes the kernel
            // look the path up again and retry the open, where ENOENT
            // would fail a `create` of a file that exists.
            E::UnknownInode(_) => Errno::ESTALE,
            E::Exists | E::BucketExists(_) => Errno::EEXIST,
            E::NotADirectory => Errno::ENOTDIR,
            E::IsADirectory => Errno::EISDIR,
            E::NotEmpty => Errno::ENOTEMPTY,
            E::InvalidName(_) | E::InvalidArgument(_) | E::NotASymlink => Errno::EINVAL,
            E::NameTooLong => Errno::ENAMETOOLONG,
            E::NoXattr => Errno::NO_XATTR,
            E::ReadOnly => Errno::EROFS,
            E::QuotaExceeded { .. } | E::NoSpace(_) => Errno::ENOSPC,
            E::FileTooLarge => Errno::EFBIG,
            E::NotSupported(_) => Errno::EOPNOTSUPP,
            E::NotPermitted(_) => Errno::EPERM,
            E::Unavailable(_)
            | E::Integrity(_)
            | E::BadSignature { .. }
            | E::ChainBroken { .. }
            | E::Format { .. }
            | E::WrongKey(_)
            | E::Store(_)
            | E::Crypto(_)
            | E::Io { .. } => Errno::EIO,
        }
    }
}

/// An answer the adapter decides itself, not the bucket: each variant
/// says why the kernel gets its errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `open`: files need no per-open state, and ENOSYS turns on the
    /// kernel's zero-message opens (no OPEN and no RELEASE round trip per
    /// file from then on, the page cache kept across opens).
    NoOpenNeeded,
    /// `flush`: close(2) promises no durability (the committer writes
    /// soon), and ENOSYS tells the kernel to stop sending FLUSH on close.
    NoFlushNeeded,
    /// `ioctl`: no ioctl is served on files or directories. ENOTTY is what
    /// a local file system answers to one it does not know; every Python
    /// `open()` asks one (TCGETS, "is this a terminal?").
    NoIoctl,
    /// `mknod` with a file type none of regular file, FIFO, socket, or
    /// character or block device.
    UnknownFileType,
    /// `rename` with RENAME_WHITEOUT (overlayfs' flag): there are no
    /// whiteouts here.
    NoWhiteout,
    /// `getxattr`/`listxattr`: the answer is larger than the caller's buffer.
    XattrBufferTooSmall,
}

impl ToErrno for Refusal {
    fn errno(&self) -> Errno {
        match self {
            Refusal::NoOpenNeeded | Refusal::NoFlushNeeded => Errno::ENOSYS,
            Refusal::NoIoctl => Errno::ENOTTY,
            Refusal::UnknownFileType | Refusal::NoWhiteout => Errno::EINVAL,
            Refusal::XattrBufferTooSmall => Errno::ERANGE,
        }
    }
}

/// Why a FUSE request failed: the bucket said no, or the adapter did.
#[derive(Debug)]
pub enum FsError {
    Bucket(BucketError),
    Refused(Refusal),
}

impl From<BucketError> for FsError {
    fn from(e: BucketError) -> Self {
        FsError::Bucket(e)
    }
}

impl From<Refusal> for FsError {
    fn from(r: Refusal) -> Self {
        FsError::Refused(r)
    }
}

impl ToErrno for FsError {
    fn errno(&self) -> Errno {
        match self {
            FsError::Bucket(e) => e.errno(),
            FsError::Refused(r) => r.errno(),
        }
    }
}

/// How loudly a failure is logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loudness {
    /// An answer programs expect and ask for all the time (ENOENT, EEXIST,
    /// the refusals): debug at most, never a warning.
    Expected,
    /// Something the operator should see, but the node is fine (data not
    /// here yet, a full disk).
    Warn,
    /// Stored data failed verification, or the disk failed.
    Error,
}

impl FsError {
    /// How loudly this failure is logged (an exhaustive match, like the
    /// errnos: a new error variant must be given its level).
    pub fn loudness(&self) -> Loudness {
        use BucketError as E;
        match self {
            FsError::Refused(_) => Loudness::Expected,
            FsError::Bucket(e) => match e {
                E::Unavailable(_) | E::NoSpace(_) => Loudness::Warn,
                E::Integrity(_)
                | E::BadSignature { .. }
                | E::ChainBroken { .. }
                | E::Format { .. }
                | E::WrongKey(_)
                | E::Store(_)
                | E::Crypto(_)
                | E::Io { .. } => Loudness::Error,
                E::NotFound
                | E::UnknownInode(_)
                | E::BucketNotFound(_)
                | E::VersionNotFound(_)
                | E::Exists
                | E::BucketExists(_)
                | E::NotADirectory
                | E::IsADirectory
                | E::NotEmpty
                | E::InvalidName(_)
                | E::InvalidArgument(_)
                | E::NotASymlink
                | E::NameTooLong
                | E::NoXattr
                | E::ReadOnly
                | E::QuotaExceeded { .. }
                | E::FileTooLarge
                | E::NotSupported(_)
                | E::NotPermitted(_) => Loudness::Expected,
            },
        }
    }

    fn log(&self, op: &'static str) {
        let FsError::Bucket(e) = self else {
            tracing::trace!(op, error = ?self, "refused");
            return;
        };
        match self.loudness() {
            Loudness::Expected => tracing::debug!(op, error = %e, "failed"),
            Loudness::Warn if matches!(e, BucketError::Unavailable(_)) => {
                tracing::warn!(op, error = %e, "data not on this node yet and no peer answered; answering EIO")
            }
            Loudness::Warn => {
                tracing::warn!(op, error = %e, "the node's disk is full; answering ENOSPC")
            }
            Loudness::Error
                if matches!(
                    e,
                    BucketError::Store(_) | BucketError::Crypto(_) | BucketError::Io { .. }
                ) =>
            {
                tracing::error!(op, error = %e, "I/O failure; answering EIO")
            }
            Loudness::Error => {
                tracing::error!(op, error = %e, "stored data failed verification; answering EIO")
            }
        }
    }
}

/// A FUSE reply that can carry an errno.
pub trait ReplyError {
    fn error(self, errno: Errno);
}

macro_rules! reply_error {
    ($($t:ty),*) => {$(
        impl ReplyError for $t {
            fn error(self, errno: Errno) {
                <$t>::error(self, errno)
            }
        }
    )*};
}

reply_error!(
    ReplyAttr,
    ReplyCreate,
    ReplyData,
    ReplyDirectory,
    ReplyDirectoryPlus,
    ReplyEmpty,
    ReplyEntry,
    ReplyIoctl,
    ReplyOpen,
    ReplyStatfs,
    ReplyWrite,
    ReplyXattr
);

/// One FUSE request being answered: timed and counted (by
/// [`FuseOp`]) and, when it fails, logged, counted by errno and replied
/// to by [`Op::fail`].
#[must_use = "the operation is recorded when the guard drops"]
pub struct Op {
    name: &'static str,
    _timer: FuseOp,
}

impl Op {
    pub fn start(name: &'static str) -> Self {
        Self {
            name,
            _timer: FuseOp::start(name),
        }
    }

    /// Answer the request with `e`'s errno, logged at its level.
    pub fn fail(&self, reply: impl ReplyError, e: impl Into<FsError>) {
        let e = e.into();
        let errno = e.errno();
        e.log(self.name);
        crate::metrics::fuse_error(self.name, i32::from(errno));
        reply.error(errno)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every bucket error's errno (one of each variant).
    #[test]
    fn each_error_has_its_errno() {
        let hash = crate::store::Hash::of(b"x");
        let io = || std::io::Error::other("disk");
        let cases = [
            (BucketError::NotFound, libc::ENOENT),
            (BucketError::UnknownInode(7), libc::ESTALE),
            (BucketError::BucketNotFound("b".into()), libc::ENOENT),
            (BucketError::VersionNotFound(hash), libc::ENOENT),
            (BucketError::Exists, libc::EEXIST),
            (BucketError::BucketExists("b".into()), libc::EEXIST),
            (BucketError::NotADirectory, libc::ENOTDIR),
            (BucketError::IsADirectory, libc::EISDIR),
            (BucketError::NotEmpty, libc::ENOTEMPTY),
            (BucketError::InvalidName("."), libc::EINVAL),
            (BucketError::InvalidArgument("x".into()), libc::EINVAL),
            (BucketError::NotASymlink, libc::EINVAL),
            (BucketError::NameTooLong, libc::ENAMETOOLONG),
            (BucketError::NoXattr, libc::ENODATA),
            (BucketError::ReadOnly, libc::EROFS),
            (
                BucketError::QuotaExceeded {
                    quota: 1,
                    needed: 2,
                },
                libc::ENOSPC,
            ),
            (BucketError::NoSpace("disk".into()), libc::ENOSPC),
            (BucketError::FileTooLarge, libc::EFBIG),
            (BucketError::NotSupported("x"), libc::EOPNOTSUPP),
            (BucketError::NotPermitted("x"), libc::EPERM),
            (BucketError::Unavailable("x".into()), libc::EIO),
            (BucketError::Integrity("x".into()), libc::EIO),
            (BucketError::WrongKey("b".into()), libc::EIO),
            (
                BucketError::BadSignature {
                    manifest: hash,
                    reason: "x".into(),
                },
                libc::EIO,
            ),
            (
                BucketError::ChainBroken {
                    at: hash,
                    reason: "x".into(),
                },
                libc::EIO,
            ),
            (
                BucketError::Format {
                    what: "tree node",
                    reason: "x".into(),
                },
                libc::EIO,
            ),
            (
                BucketError::Io {
                    path: "/x".into(),
                    source: io(),
                },
                libc::EIO,
            ),
        ];
        for (e, want) in cases {
            assert_eq!(i32::from(e.errno()), want, "{e}");
            assert_eq!(i32::from(FsError::from(e).errno()), want);
        }
    }

    /// The adapter's own answers, each with the errno its reason needs.
    #[test]
    fn each_refusal_has_its_errno_and_is_not_logged_loudly() {
        let cases = [
            (Refusal::NoOpenNeeded, libc::ENOSYS),
            (Refusal::NoFlushNeeded, libc::ENOSYS),
            (Refusal::NoIoctl, libc::ENOTTY),
            (Refusal::UnknownFileType, libc::EINVAL),
            (Refusal::NoWhiteout, libc::EINVAL),
            (Refusal::XattrBufferTooSmall, libc::ERANGE),
        ];
        for (r, want) in cases {
            assert_eq!(i32::from(r.errno()), want, "{r:?}");
            assert_eq!(FsError::from(r).loudness(), Loudness::Expected, "{r:?}");
        }
    }

    /// What programs ask for all the time is quiet; what the operator must
    /// act on is a warning or an error.
    #[test]
    fn failures_are_logged_at_their_level() {
        let level = |e: BucketError| FsError::from(e).loudness();
        assert_eq!(level(BucketError::NotFound), Loudness::Expected);
        assert_eq!(level(BucketError::Exists), Loudness::Expected);
        assert_eq!(level(BucketError::NoXattr), Loudness::Expected);
        assert_eq!(level(BucketError::ReadOnly), Loudness::Expected);
        assert_eq!(
            level(BucketError::QuotaExceeded {
                quota: 1,
                needed: 2
            }),
            Loudness::Expected
        );
        assert_eq!(level(BucketError::Unavailable("x".into())), Loudness::Warn);
        assert_eq!(level(BucketError::NoSpace("x".into())), Loudness::Warn);
        assert_eq!(level(BucketError::Integrity("x".into())), Loudness::Error);
        assert_eq!(
            level(BucketError::Io {
                path: "/x".into(),
                source: std::io::Error::other("x"),
            }),
            Loudness::Error
        );
    }
}
