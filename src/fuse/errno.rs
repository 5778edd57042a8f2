//! One place that turns bucket errors into errnos, so every FUSE operation
//! answers the same way. Integrity failures are logged here: the caller only
//! sees EIO, the operator sees which blob failed.

use fuser::Errno;

use crate::bucket::BucketError;

/// The errno a FUSE reply carries for `e`, logging what the kernel cannot.
pub fn errno_of(op: &'static str, e: &BucketError) -> Errno {
    use BucketError as E;
    match e {
        E::NotFound | E::UnknownInode(_) | E::BucketNotFound(_) | E::VersionNotFound(_) => {
            Errno::ENOENT
        }
        E::Exists | E::BucketExists(_) => Errno::EEXIST,
        E::NotADirectory => Errno::ENOTDIR,
        E::IsADirectory => Errno::EISDIR,
        E::NotEmpty => Errno::ENOTEMPTY,
        E::InvalidName(_) | E::InvalidArgument(_) | E::NotASymlink => Errno::EINVAL,
        E::NameTooLong => Errno::ENAMETOOLONG,
        E::NoXattr => Errno::NO_XATTR,
        E::ReadOnly => Errno::EROFS,
        E::QuotaExceeded { .. } => Errno::ENOSPC,
        E::FileTooLarge => Errno::EFBIG,
        E::Unavailable(_) => {
            tracing::warn!(op, error = %e, "data not on this node yet and no peer answered; answering EIO");
            Errno::EIO
        }
        E::NoSpace(_) => {
            tracing::warn!(op, error = %e, "the node's disk is full; answering ENOSPC");
            Errno::ENOSPC
        }
        E::NotSupported(_) => Errno::EOPNOTSUPP,
        E::NotPermitted(_) => Errno::EPERM,
        E::Integrity(_)
        | E::BadSignature { .. }
        | E::ChainBroken { .. }
        | E::Format { .. }
        | E::WrongKey(_) => {
            tracing::error!(op, error = %e, "stored data failed verification; answering EIO");
            Errno::EIO
        }
        E::Store(_) | E::Crypto(_) | E::Io { .. } => {
            tracing::error!(op, error = %e, "I/O failure; answering EIO");
            Errno::EIO
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_its_errno() {
        let cases = [
            (BucketError::NotFound, libc::ENOENT),
            (BucketError::Exists, libc::EEXIST),
            (BucketError::NotADirectory, libc::ENOTDIR),
            (BucketError::IsADirectory, libc::EISDIR),
            (BucketError::NotEmpty, libc::ENOTEMPTY),
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
            (BucketError::Integrity("x".into()), libc::EIO),
            (BucketError::FileTooLarge, libc::EFBIG),
            (BucketError::NoSpace("disk".into()), libc::ENOSPC),
        ];
        for (e, want) in cases {
            assert_eq!(i32::from(errno_of("test", &e)), want, "{e}");
        }
    }
}
