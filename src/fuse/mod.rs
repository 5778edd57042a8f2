//! The FUSE layer: `JaxFs` (a thin adapter over a live bucket Mount), the
//! kernel's lookup counts, the write-back committer, kernel sessions, the fd-keeper that keeps their
//! connections alive across node plugin restarts, and the MountManager that
//! owns one live Mount per volume on this node.

mod committers;
mod convert;
pub mod errno;
pub mod fs;
pub mod handover;
pub mod keeper;
pub mod live;
pub mod lookups;
pub mod mount_manager;
pub mod reactor;
pub mod safe_path;
pub mod session;

pub use fs::{FsOptions, JaxFs};
pub use live::LiveMount;
pub use mount_manager::{
    LiveHandle, MountError, MountManager, MountOptions, MountRecord, MountStatus, Notice, PodRef,
    Serving, SyncEvent, Target,
};
pub use session::{mount, node_session_options, FuseSession, SessionOptions};
