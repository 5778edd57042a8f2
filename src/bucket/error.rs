//! The bucket engine's error type. The FUSE layer maps each variant to an errno
//! in one place; the CSI layer maps them to gRPC codes.

use crate::crypto::CryptoError;
use crate::store::{Hash, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotADirectory,
    #[error("is a directory")]
    IsADirectory,
    #[error("directory not empty")]
    NotEmpty,
    #[error("invalid name: {0}")]
    InvalidName(&'static str),
    #[error("name longer than 255 bytes")]
    NameTooLong,
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("not a symbolic link")]
    NotASymlink,
    #[error("no such extended attribute")]
    NoXattr,
    #[error("the mount is read-only")]
    ReadOnly,
    #[error("quota exceeded: {needed} bytes needed, quota is {quota}")]
    QuotaExceeded { quota: u64, needed: u64 },
    #[error("file too large")]
    FileTooLarge,
    /// Data this node does not hold yet and no peer could send.
    #[error("not available yet: {0}")]
    Unavailable(String),
    /// The node's disk (or the file system under the state dir) is full.
    #[error("no space left on the node's disk: {0}")]
    NoSpace(String),
    #[error("operation not permitted: {0}")]
    NotPermitted(&'static str),
    #[error("not supported: {0}")]
    NotSupported(&'static str),
    #[error("unknown inode {0}")]
    UnknownInode(u64),
    /// A blob or tree node failed its hash or AEAD check.
    #[error("integrity check failed: {0}")]
    Integrity(String),
    /// The bucket secret could not be unwrapped with the key offered.
    #[error("wrong key for bucket {0}")]
    WrongKey(String),
    /// A manifest's signature does not verify, or its author may not write.
    #[error("manifest {manifest}: {reason}")]
    BadSignature { manifest: Hash, reason: String },
    /// A manifest's `previous`/`merged` links do not form a valid chain.
    #[error("version chain broken at {at}: {reason}")]
    ChainBroken { at: Hash, reason: String },
    /// Bytes that do not decode as the format they claim to be.
    #[error("malformed {what}: {reason}")]
    Format { what: &'static str, reason: String },
    #[error("bucket {0} not found")]
    BucketNotFound(String),
    #[error("bucket {0} already exists")]
    BucketExists(String),
    #[error("bucket has no version {0}")]
    VersionNotFound(Hash),
    #[error("blob store: {0}")]
    Store(#[source] StoreError),
    #[error("crypto: {0}")]
    Crypto(#[from] CryptoError),
    #[error("I/O at {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl From<StoreError> for BucketError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Corrupt { .. } | StoreError::CorruptSlice { .. } => {
                BucketError::Integrity(e.to_string())
            }
            StoreError::Io { ref source, .. } if is_no_space(source) => {
                BucketError::NoSpace(e.to_string())
            }
            other => BucketError::Store(other),
        }
    }
}

/// True for the errors a full disk (or a disk quota) gives.
pub fn is_no_space(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

impl BucketError {
    /// True for errors that mean stored data failed verification.
    pub fn is_integrity(&self) -> bool {
        matches!(self, BucketError::Integrity(_))
    }

    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| {
            if is_no_space(&source) {
                BucketError::NoSpace(format!("{}: {source}", path.display()))
            } else {
                BucketError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            }
        }
    }
}

pub type Result<T, E = BucketError> = std::result::Result<T, E>;
