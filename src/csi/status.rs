//! Turning failures into the gRPC status codes the CSI spec asks for.

use std::future::Future;

use tonic::{Code, Response, Status};
use tracing::Instrument;

use super::params::SECRET_TENANT_KEY;
use crate::bucket::BucketError;
use crate::crypto::UnwrapError;
use crate::db::{DbError, KeyError};
use crate::fuse::safe_path::SafePathError;
use crate::fuse::MountError;
use crate::node::NodeError;

/// A required string field: INVALID_ARGUMENT naming it when empty.
pub fn require<'a>(value: &'a str, field: &str) -> Result<&'a str, Status> {
    if value.is_empty() {
        Err(Status::invalid_argument(format!("{field} is required")))
    } else {
        Ok(value)
    }
}

/// The CSI spec's size limit for a string field (names and ids).
pub const MAX_ID: usize = 128;

/// A required name or id: INVALID_ARGUMENT naming the field when it is
/// empty, longer than the spec's 128 bytes, or holds a control character
/// other than tab, newline or carriage return (a NUL cannot be stored).
pub fn require_id<'a>(value: &'a str, field: &str) -> Result<&'a str, Status> {
    let value = require(value, field)?;
    if value.len() > MAX_ID {
        return Err(Status::invalid_argument(format!(
            "{field} {}: longer than {MAX_ID} bytes",
            shown(value)
        )));
    }
    if value
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        return Err(Status::invalid_argument(format!(
            "{field} {}: contains control characters",
            shown(value)
        )));
    }
    Ok(value)
}

/// `value` as a message shows it: quoted, and cut after 64 characters
/// (with its length), so a huge input never becomes a huge error.
pub fn shown(value: &str) -> String {
    const KEEP: usize = 64;
    match value.char_indices().nth(KEEP) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &value[..cut], value.len()),
    }
}

/// A required message field: INVALID_ARGUMENT naming it when absent.
pub fn require_some<'a, T>(value: &'a Option<T>, field: &str) -> Result<&'a T, Status> {
    value
        .as_ref()
        .ok_or_else(|| Status::invalid_argument(format!("{field} is required")))
}

// One map from every failure below the gRPC services to its CSI code.

impl From<DbError> for Status {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Unavailable(m) => {
                Status::unavailable(format!("control-plane database unavailable: {m}"))
            }
            other => Status::internal(other.to_string()),
        }
    }
}

/// The code for a bucket failure: what a request named is missing or
/// malformed, data failed verification, the volume or disk is full, …
fn bucket_code(e: &BucketError) -> Code {
    match e {
        BucketError::NotFound | BucketError::VersionNotFound(_) => Code::NotFound,
        BucketError::InvalidArgument(_)
        | BucketError::InvalidName(_)
        | BucketError::NameTooLong
        | BucketError::NotADirectory
        | BucketError::IsADirectory => Code::InvalidArgument,
        BucketError::ReadOnly => Code::FailedPrecondition,
        BucketError::NoSpace(_) | BucketError::QuotaExceeded { .. } => Code::ResourceExhausted,
        BucketError::Unavailable(_) => Code::Unavailable,
        e if e.is_integrity() => Code::DataLoss,
        _ => Code::Internal,
    }
}

/// A bucket failure; `what` (may be empty) says what was being done.
pub fn bucket_status(what: &str, e: BucketError) -> Status {
    let message = if what.is_empty() {
        e.to_string()
    } else {
        format!("{what}: {e}")
    };
    Status::new(bucket_code(&e), message)
}

impl From<BucketError> for Status {
    fn from(e: BucketError) -> Self {
        bucket_status("", e)
    }
}

impl From<MountError> for Status {
    fn from(e: MountError) -> Self {
        let code = match &e {
            MountError::BucketNotFound(_) | MountError::MountNotFound(_) => Code::NotFound,
            MountError::MountPointMissing(_) | MountError::MountPointNotADirectory(_) => {
                Code::FailedPrecondition
            }
            MountError::AlreadyRunning(_) => Code::AlreadyExists,
            MountError::Busy(_) => Code::Aborted,
            MountError::CommitFailed { source, .. } | MountError::LoadFailed { source, .. } => {
                bucket_code(source)
            }
            MountError::SpawnFailed { .. }
            | MountError::UnmountFailed { .. }
            | MountError::Database(_) => Code::Internal,
            MountError::UnsafePath(p) => match p {
                SafePathError::Symlink(_) | SafePathError::Outside { .. } => Code::InvalidArgument,
                SafePathError::NotADirectory(_) => Code::FailedPrecondition,
                // The kubelet directory (or a part of it) is not there.
                SafePathError::Io { source, .. }
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    Code::FailedPrecondition
                }
                SafePathError::Io { .. } => Code::Internal,
            },
        };
        Status::new(code, e.to_string())
    }
}

/// A key that does not open, naming what it was for and how to fix it.
impl From<KeyError> for Status {
    fn from(KeyError { what, source }: KeyError) -> Self {
        match source {
            UnwrapError::TenantKeyRequired => Status::invalid_argument(format!(
                "{what} is protected by a tenant key: the request's secrets must carry it as \
                 {SECRET_TENANT_KEY:?} (the StorageClass's provisioner and node-stage secrets)"
            )),
            UnwrapError::WrongTenantKey => Status::permission_denied(format!(
                "{what}: the tenant key in the request's secrets is not the one it is protected by"
            )),
            UnwrapError::WrongClusterKey => Status::failed_precondition(format!(
                "{what}: the wrapped key does not open with this cluster's KEK (another KEK, or a \
                 record that does not belong to this volume)"
            )),
            UnwrapError::Malformed => Status::data_loss(format!(
                "{what}: the wrapped key in its record is malformed"
            )),
        }
    }
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Busy(_) => Status::aborted(e.to_string()),
            NodeError::Mount(e) => e.into(),
            NodeError::Bucket { what, source } => bucket_status(&what, source),
            NodeError::Key(e) => e.into(),
            NodeError::Db(e) => e.into(),
            NodeError::PeersUnavailable(m) => Status::unavailable(m),
            NodeError::Internal(m) => Status::internal(m),
            e @ NodeError::Io { .. } => Status::internal(e.to_string()),
        }
    }
}

/// Parse a paging token (a sequence number we handed out); ABORTED if it is not one.
pub fn parse_token(token: &str) -> Result<i64, Status> {
    if token.is_empty() {
        return Ok(0);
    }
    token
        .parse::<i64>()
        .ok()
        .filter(|v| *v >= 0)
        .ok_or_else(|| {
            Status::aborted(format!(
                "starting_token {} is not a token this plugin issued",
                shown(token)
            ))
        })
}

/// `max_entries`: 0 means no limit; negative is INVALID_ARGUMENT.
pub fn page_size(max_entries: i32, cap: i64) -> Result<i64, Status> {
    match max_entries {
        n if n < 0 => Err(Status::invalid_argument("max_entries must not be negative")),
        0 => Ok(cap),
        n => Ok((n as i64).min(cap)),
    }
}

/// Run one request inside a span naming the method and volume, and log its outcome.
pub async fn traced<T>(
    method: &'static str,
    volume: &str,
    f: impl Future<Output = Result<T, Status>>,
) -> Result<Response<T>, Status> {
    let volume = if volume.len() > MAX_ID {
        shown(volume)
    } else {
        volume.to_string()
    };
    let span = tracing::info_span!("csi", method, volume = %volume);
    async move {
        let start = std::time::Instant::now();
        let r = f.await;
        let elapsed = start.elapsed();
        let code = r.as_ref().map_or_else(|s| s.code(), |_| tonic::Code::Ok);
        crate::metrics::csi_request(method, code, elapsed);
        let ms = elapsed.as_secs_f64() * 1e3;
        match &r {
            Ok(_) => tracing::info!(outcome = "ok", ms, "request"),
            Err(s) => tracing::warn!(outcome = ?s.code(), message = s.message(), ms, "request"),
        }
        r.map(Response::new)
    }
    .instrument(span)
    .await
}
