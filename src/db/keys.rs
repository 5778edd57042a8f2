//! Which wrapped key of which record opens a version, and the context each
//! wrap is bound to: a volume's own head, a clone's source, a snapshot. The
//! CSI services and the node agent both open keys through [`HeadKey`], so a
//! Postgres row pointing elsewhere never opens. No key material ever reaches
//! an error or a log line.

use crate::crypto::{
    rewrap_outer, unwrap_layered, Kek, SecretKey, UnwrapError, WrapContext, WrappedKey,
};
use crate::db::{SnapshotRecord, VolumeRecord};

/// A wrapped key that did not open, and what it was for (a volume, a
/// snapshot, a clone's source), so the error can say how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct KeyError {
    pub what: String,
    #[source]
    pub source: UnwrapError,
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

    /// The same secret with its outer (cluster) layer bound to `to` instead
    /// (a snapshot's or a clone's record); `what` names it in the error.
    pub fn rewrap(&self, kek: &Kek, to: &WrapContext, what: &str) -> Result<WrappedKey, KeyError> {
        rewrap_outer(kek, &self.wrapped, &self.outer, to).map_err(|source| KeyError {
            what: what.to_string(),
            source,
        })
    }

    /// Open the secret (a tenant's needs `tenant`); `what` names it in the error.
    pub fn open(&self, kek: &Kek, tenant: Option<&Kek>, what: &str) -> Result<SecretKey, KeyError> {
        unwrap_layered(kek, tenant, &self.wrapped, &self.inner(), &self.outer).map_err(|source| {
            KeyError {
                what: what.to_string(),
                source,
            }
        })
    }
}
