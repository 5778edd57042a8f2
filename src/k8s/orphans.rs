//! Finding what Kubernetes no longer knows of: volumes in Postgres that no
//! PersistentVolume names, and pod targets whose pod is gone.

use std::collections::HashSet;

use k8s_openapi::api::core::v1::{PersistentVolume, Pod};
use kube::api::ListParams;
use kube::{Api, Client};

use super::{is_not_found, K8sError, DRIVER_NAME};

/// The volume handles of every PersistentVolume of this driver (paged).
pub async fn volume_handles(client: &Client) -> Result<HashSet<String>, K8sError> {
    let api = Api::<PersistentVolume>::all(client.clone());
    let mut handles = HashSet::new();
    let mut params = ListParams::default().limit(500);
    loop {
        let page = api.list(&params).await?;
        for pv in &page.items {
            if let Some(csi) = pv.spec.as_ref().and_then(|s| s.csi.as_ref()) {
                if csi.driver == DRIVER_NAME {
                    handles.insert(csi.volume_handle.clone());
                }
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(handles),
        }
    }
}

/// Whether pod `namespace/name` (with `uid`, when known) still exists.
pub async fn pod_exists(
    client: &Client,
    namespace: &str,
    name: &str,
    uid: &str,
) -> Result<bool, K8sError> {
    match Api::<Pod>::namespaced(client.clone(), namespace)
        .get(name)
        .await
    {
        Ok(pod) => Ok(uid.is_empty() || pod.metadata.uid.as_deref() == Some(uid)),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// What one volume sweep did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct VolumeSweep {
    /// Newly found without a PersistentVolume (deleted after the grace).
    pub marked: Vec<String>,
    /// Marked before, named by a PersistentVolume again.
    pub cleared: u64,
    /// Without one for longer than the grace: deleted.
    pub deleted: Vec<String>,
}

/// One pass of the leader's orphan sweep: volumes no PersistentVolume of
/// this driver names are reported, and deleted (as DeleteVolume would:
/// their blobs are collected on the nodes) once that lasted `grace`. A
/// failed PV list does nothing, so an unreachable API server never
/// deletes anything.
pub async fn sweep_volumes(
    client: &Client,
    db: &crate::db::Db,
    grace: std::time::Duration,
) -> Result<VolumeSweep, SweepError> {
    let handles: Vec<String> = volume_handles(client).await?.into_iter().collect();
    let grace_secs = grace.as_secs() as i64;
    let (marked, cleared) = db.mark_orphans(&handles, grace_secs).await?;
    for id in &marked {
        tracing::warn!(volume = %id, grace_secs, "no PersistentVolume names this volume; it will be deleted unless one does within the grace period");
    }
    let mut deleted = Vec::new();
    for id in db.orphans_older_than(grace_secs).await? {
        if db.delete_volume(&id).await? {
            tracing::warn!(volume = %id, "deleted an orphaned volume (no PersistentVolume for the whole grace period); its blobs are collected on the nodes");
            deleted.push(id);
        }
    }
    Ok(VolumeSweep {
        marked,
        cleared,
        deleted,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    K8s(#[from] K8sError),
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
}
