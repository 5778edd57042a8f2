//! Readying a volume's bucket on this node before it is mounted: a new
//! bucket under the controller's secret, or an O(1) clone of the version its
//! source record names, opened only with keys the cryptography accepts for
//! this very record (a Postgres row pointing elsewhere does not open).

use tonic::Status;

use super::keys::{unwrap_status, HeadKey};
use crate::bucket::{BucketError, BucketId, BucketOptions, StateDir};
use crate::crypto::{Kek, SecretKey, UnwrapError, WrapContext};
use crate::db::VolumeRecord;
use crate::store::Hash;

pub fn bucket_status(what: &str, e: BucketError) -> Status {
    match e {
        e if e.is_integrity() => Status::data_loss(format!("{what}: {e}")),
        e @ (BucketError::NoSpace(_) | BucketError::QuotaExceeded { .. }) => {
            Status::resource_exhausted(format!("{what}: {e}"))
        }
        e => Status::internal(format!("{what}: {e}")),
    }
}

fn parse_id(id: &str) -> Result<BucketId, Status> {
    BucketId::from_hex(id)
        .map_err(|_| Status::internal(format!("malformed bucket id {id:?} in a record")))
}

/// Make sure `vol`'s bucket (whose secret is `secret`) is in `state`.
pub fn ensure_bucket(
    state: &StateDir,
    kek: &Kek,
    vol: &VolumeRecord,
    secret: SecretKey,
    tenant: Option<&Kek>,
) -> Result<(), Status> {
    let id = parse_id(&vol.id)?;
    if !state.has_bucket(&id) {
        match HeadKey::of_clone_source(vol) {
            Some(src) => {
                let head: Hash = src
                    .head
                    .as_deref()
                    .unwrap_or_default()
                    .parse()
                    .map_err(|_| Status::internal("malformed source head in the volume record"))?;
                let src_secret =
                    src.open(kek, tenant, &format!("the source of volume {}", vol.id))?;
                let src_id = parse_id(&src.bucket)?;
                let source = state.bucket_with_secret(&src_id, src_secret.clone());
                state
                    .clone_bucket_with_secret(id, secret.clone(), &source, &head, kek)
                    .map_err(|e| match e {
                        BucketError::Store(_) | BucketError::VersionNotFound(_) => {
                            Status::unavailable(format!(
                                "the source version {head} is not on this node yet: {e}"
                            ))
                        }
                        e => bucket_status("cloning the source", e),
                    })?;
                // Chunks of the source's tree not here come from its peers.
                state
                    .set_source(&id, &src_id, &src_secret, kek)
                    .map_err(|e| bucket_status("recording the clone's source", e))?;
            }
            None => {
                let opts = BucketOptions {
                    quota: Some(vol.capacity_bytes as u64),
                    chunk_size: vol.chunk_size as u32,
                    root_mode: 0o777,
                    ..Default::default()
                };
                state
                    .create_bucket_with_secret(id, secret.clone(), kek, &opts)
                    .map_err(|e| bucket_status("creating the bucket", e))?;
            }
        }
    }
    if let Some(t) = tenant.filter(|_| vol.tenant_wrapped_key.is_some()) {
        if state
            .tenant_check(&id)
            .map_err(|e| bucket_status("reading the tenant check", e))?
            .is_none()
        {
            let check = t
                .wrap_for(&secret, &WrapContext::node_local(&vol.id))
                .map_err(|e| Status::internal(e.to_string()))?;
            state
                .set_tenant_check(&id, &check)
                .map_err(|e| bucket_status("recording the tenant check", e))?;
        }
    }
    Ok(())
}

/// With Postgres down, a tenant's volume staged here is confirmed with the
/// node's own tenant check: the request must carry the same tenant key.
pub fn verify_local_tenant(
    state: &StateDir,
    id: &BucketId,
    tenant: Option<&Kek>,
) -> Result<(), Status> {
    let Some(check) = state
        .tenant_check(id)
        .map_err(|e| bucket_status("reading the tenant check", e))?
    else {
        return Ok(());
    };
    let what = format!("volume {id}");
    let t = tenant.ok_or_else(|| unwrap_status(&what, UnwrapError::TenantKeyRequired))?;
    t.unwrap_for(&check, &WrapContext::node_local(&id.to_hex()), false)
        .map(|_| ())
        .map_err(|_| unwrap_status(&what, UnwrapError::WrongTenantKey))
}
