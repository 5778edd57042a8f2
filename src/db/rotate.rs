//! A cluster KEK rotation's work in Postgres (`jax-csi kek rotate`): every
//! record's wrapped key re-wrapped by the current KEK, in one transaction.
//! Only the outer (cluster) layer changes: a tenant's inner layer is kept,
//! so no tenant key is needed, and no data is copied.

use serde::Serialize;

use super::records::{SNAPSHOT_COLUMNS, VOLUME_COLUMNS};
use super::{Db, DbResult, HeadKey, SnapshotRecord, VolumeRecord};
use crate::crypto::{rewrap_tenant, rewrap_to_current, Kek, UnwrapError, WrapContext, WrappedKey};

/// What a rotation found and did.
#[derive(Debug, Default, Serialize)]
pub struct RewrapReport {
    /// Keys re-wrapped by the current KEK.
    pub rewrapped: u64,
    /// Keys the current KEK wrapped already (a rotation run again).
    pub already_current: u64,
    /// Records whose key no KEK given opens; when any, nothing was written.
    pub unreadable: Vec<String>,
    /// A tenant rotation: records of no tenant, or of another tenant.
    pub other_tenant: u64,
    /// Whether the transaction was committed.
    pub committed: bool,
}

impl RewrapReport {
    /// Re-wrap `key` (of the record `what`); the new bytes when it changed.
    fn take(&mut self, kek: &Kek, key: &HeadKey, what: String) -> Option<WrappedKey> {
        match rewrap_to_current(kek, &key.wrapped, &key.outer) {
            Ok(Some(new)) => {
                self.rewrapped += 1;
                Some(new)
            }
            Ok(None) => {
                self.already_current += 1;
                None
            }
            Err(e) => {
                self.unreadable.push(format!("{what}: {e}"));
                None
            }
        }
    }
}

impl RewrapReport {
    /// Re-seal the tenant layer of `key` by `tenant`'s current key.
    fn take_tenant(
        &mut self,
        cluster: &Kek,
        tenant: &Kek,
        key: &HeadKey,
        what: String,
    ) -> Option<WrappedKey> {
        match rewrap_tenant(cluster, tenant, &key.wrapped, &key.inner(), &key.outer) {
            Ok(Some(new)) => {
                self.rewrapped += 1;
                Some(new)
            }
            Ok(None) if crate::crypto::is_tenant_wrapped(&key.wrapped) => {
                self.already_current += 1;
                None
            }
            Ok(None) | Err(UnwrapError::WrongTenantKey) => {
                self.other_tenant += 1;
                None
            }
            Err(e) => {
                self.unreadable.push(format!("{what}: {e}"));
                None
            }
        }
    }
}

/// Which layer a walk over the records re-seals.
enum Layer<'k> {
    /// The outer layer, by the current cluster KEK.
    Cluster(&'k Kek),
    /// One tenant's layer, by its current key (and the outer by `cluster`).
    Tenant { cluster: &'k Kek, tenant: &'k Kek },
}

impl Layer<'_> {
    fn take(&self, report: &mut RewrapReport, key: &HeadKey, what: String) -> Option<WrappedKey> {
        match self {
            Layer::Cluster(kek) => report.take(kek, key, what),
            Layer::Tenant { cluster, tenant } => report.take_tenant(cluster, tenant, key, what),
        }
    }

    /// A volume's proof key (for blind replicas, cluster KEK only)
    /// re-wrapped by the current KEK (cluster rotations only).
    async fn proof_key(
        &self,
        report: &mut RewrapReport,
        volume: &VolumeRecord,
        tx: &mut sqlx::PgConnection,
    ) -> DbResult<Option<WrappedKey>> {
        let Layer::Cluster(kek) = self else {
            return Ok(None);
        };
        let (wrapped,): (Option<Vec<u8>>,) =
            sqlx::query_as("SELECT proof_key_wrapped FROM volumes WHERE id = $1")
                .bind(&volume.id)
                .fetch_one(&mut *tx)
                .await?;
        let Some(wrapped) = wrapped.map(WrappedKey) else {
            return Ok(None);
        };
        let ctx = WrapContext::replica_proof(&volume.id);
        if kek.wrapped_current(&wrapped, &ctx) {
            report.already_current += 1;
            return Ok(None);
        }
        match kek
            .unwrap_for(&wrapped, &ctx, false)
            .and_then(|key| kek.wrap_for(&key, &ctx))
        {
            Ok(new) => {
                report.rewrapped += 1;
                Ok(Some(new))
            }
            Err(e) => {
                report
                    .unreadable
                    .push(format!("volume {} (its proof key): {e}", volume.id));
                Ok(None)
            }
        }
    }

    /// A volume's copy wrapped by the tenant key alone, re-wrapped by its
    /// current key when the previous one opens it (tenant rotations only).
    fn tenant_copy(&self, volume: &VolumeRecord) -> Option<WrappedKey> {
        let Layer::Tenant { tenant, .. } = self else {
            return None;
        };
        let ctx = WrapContext::volume(&volume.id);
        let copy = WrappedKey(volume.tenant_wrapped_key.clone()?);
        if tenant.wrapped_current(&copy, &ctx) {
            return None;
        }
        let secret = tenant.unwrap_for(&copy, &ctx, false).ok()?;
        tenant.wrap_for(&secret, &ctx).ok()
    }
}

impl Db {
    /// Re-wrap every volume's key, every clone's source key and every
    /// snapshot's key by `kek`'s current key (`kek` must still open the old
    /// ones: `Kek::still_opening`). The rows are locked for the run, so a
    /// concurrent CreateSnapshot or head fill waits for it. Nothing is
    /// written when any record does not open.
    pub async fn rewrap_keys(&self, kek: &Kek) -> DbResult<RewrapReport> {
        self.rewrap(Layer::Cluster(kek)).await
    }

    /// A tenant's key rotation: every record whose tenant layer the key
    /// `tenant` replaces (`Kek::still_opening`) opens gets that layer
    /// sealed by its current key, and the volume's copy wrapped by the
    /// tenant key alone too. Records of other tenants are left as they
    /// are. One transaction, rows locked; nothing is written when a
    /// record's cluster layer does not open.
    pub async fn rewrap_tenant_keys(&self, cluster: &Kek, tenant: &Kek) -> DbResult<RewrapReport> {
        self.rewrap(Layer::Tenant { cluster, tenant }).await
    }

    /// Re-seal `layer` of every key record, in one transaction.
    async fn rewrap(&self, layer: Layer<'_>) -> DbResult<RewrapReport> {
        let mut report = RewrapReport::default();
        let mut tx = self.pool().begin().await?;
        let volumes: Vec<VolumeRecord> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {VOLUME_COLUMNS} FROM volumes ORDER BY seq FOR UPDATE"
        )))
        .fetch_all(&mut *tx)
        .await?;
        for v in &volumes {
            let own = HeadKey::of_volume(v, None);
            let source = HeadKey::of_clone_source(v);
            let updates = [
                (
                    "wrapped_key",
                    layer.take(&mut report, &own, format!("volume {}", v.id)),
                ),
                (
                    "source_wrapped_key",
                    source.and_then(|key| {
                        let what = format!("volume {} (its clone source's key)", v.id);
                        layer.take(&mut report, &key, what)
                    }),
                ),
                ("tenant_wrapped_key", layer.tenant_copy(v)),
                (
                    "proof_key_wrapped",
                    layer.proof_key(&mut report, v, &mut tx).await?,
                ),
            ];
            for (column, new) in updates {
                let Some(new) = new else { continue };
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE volumes SET {column} = $2 WHERE id = $1"
                )))
                .bind(&v.id)
                .bind(&new.0)
                .execute(&mut *tx)
                .await?;
            }
        }
        let snapshots: Vec<SnapshotRecord> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {SNAPSHOT_COLUMNS} FROM snapshots ORDER BY seq FOR UPDATE"
        )))
        .fetch_all(&mut *tx)
        .await?;
        for s in &snapshots {
            let key = HeadKey::of_snapshot(s);
            if let Some(new) = layer.take(&mut report, &key, format!("snapshot {}", s.id)) {
                sqlx::query("UPDATE snapshots SET wrapped_key = $2 WHERE id = $1")
                    .bind(&s.id)
                    .bind(&new.0)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        if report.unreadable.is_empty() {
            tx.commit().await?;
            report.committed = true;
        } else {
            tx.rollback().await?;
        }
        Ok(report)
    }
}
