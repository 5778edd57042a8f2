//! What can go wrong in the node agent, typed, so the CSI layer maps each
//! failure to its gRPC code in one place (`csi/status.rs`).

use crate::bucket::{BucketError, BucketId};
use crate::db::{DbError, KeyError};
use crate::fuse::MountError;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Another operation on the volume is under way on this node.
    #[error("an operation on volume {0} is already in progress on this node; retry")]
    Busy(BucketId),
    #[error(transparent)]
    Mount(#[from] MountError),
    /// A bucket operation failed; `what` says which.
    #[error("{what}: {source}")]
    Bucket {
        what: String,
        #[source]
        source: BucketError,
    },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Db(#[from] DbError),
    /// What the volume needs is on other nodes and none of them answered.
    #[error("{0}")]
    PeersUnavailable(String),
    /// What should not happen: a malformed control-plane record, a worker
    /// thread that died.
    #[error("{0}")]
    Internal(String),
    /// A path this node must create or mount could not be.
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl NodeError {
    /// A bucket failure, saying what was being done.
    pub fn bucket(what: impl Into<String>) -> impl FnOnce(BucketError) -> Self {
        let what = what.into();
        move |source| NodeError::Bucket { what, source }
    }
}
