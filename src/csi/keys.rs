//! Bucket secrets as the CSI services see them: the tenant key a request
//! carries in its secrets, the contexts every wrapped key in Postgres is
//! bound to, and the gRPC codes for keys that do not open. No key material
//! ever reaches a message or a log line.

use std::collections::HashMap;

use tonic::Status;

use super::params::SECRET_TENANT_KEY;
use crate::crypto::{unwrap_layered, Kek, SecretKey, UnwrapError, WrapContext, WrappedKey};
use crate::db::{SnapshotRecord, VolumeRecord};

/// The tenant KEK in a request's `secrets`, if it carries one.
pub fn tenant_from(secrets: &HashMap<String, String>) -> Result<Option<Kek>, Status> {
    let Some(hex_key) = secrets.get(SECRET_TENANT_KEY) else {
        return Ok(None);
    };
    let bytes = hex::decode(hex_key.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "secrets: {SECRET_TENANT_KEY:?} must be 64 hex characters"
            ))
        })?;
    Ok(Some(Kek::new(SecretKey::from_bytes(bytes))))
}

/// The status for a key that does not open, naming `what` and how to fix it.
pub fn unwrap_status(what: &str, e: UnwrapError) -> Status {
    match e {
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

/// A version to start from and the key that opens it: the bucket it
/// belongs to, its head (`None`: never written, so empty), and the wrapped
/// secret of that bucket with the contexts it is bound to.
pub struct HeadKey {
    pub bucket: String,
    pub head: Option<String>,
    pub wrapped: WrappedKey,
    /// The context of the wrap's outer (cluster) layer.
    pub outer: WrapContext,
}

impl HeadKey {
    /// A volume's own head, as the newest report names it.
    pub fn of_volume(vol: &VolumeRecord, head: Option<String>) -> Self {
        Self {
            bucket: vol.id.clone(),
            head,
            wrapped: WrappedKey(vol.wrapped_key.clone()),
            outer: WrapContext::volume(&vol.id),
        }
    }

    /// The version a clone nobody wrote yet still starts from.
    pub fn of_clone_source(vol: &VolumeRecord) -> Option<Self> {
        match (
            &vol.source_volume_id,
            &vol.source_head,
            &vol.source_wrapped_key,
        ) {
            (Some(src), Some(head), Some(key)) => Some(Self {
                bucket: src.clone(),
                head: Some(head.clone()),
                wrapped: WrappedKey(key.clone()),
                outer: WrapContext::clone_source(&vol.id, src, head),
            }),
            _ => None,
        }
    }

    /// What a snapshot records.
    pub fn of_snapshot(s: &SnapshotRecord) -> Self {
        Self {
            bucket: s.bucket().to_string(),
            head: s.head.clone(),
            wrapped: WrappedKey(s.wrapped_key.clone()),
            outer: WrapContext::snapshot(&s.id, s.bucket(), s.head.as_deref().unwrap_or("")),
        }
    }

    /// The inner (tenant) layer is bound to the bucket the secret is of.
    pub fn inner(&self) -> WrapContext {
        WrapContext::volume(&self.bucket)
    }

    /// Open the secret (a tenant's needs `tenant`).
    pub fn open(&self, kek: &Kek, tenant: Option<&Kek>, what: &str) -> Result<SecretKey, Status> {
        unwrap_layered(kek, tenant, &self.wrapped, &self.inner(), &self.outer)
            .map_err(|e| unwrap_status(what, e))
    }
}
