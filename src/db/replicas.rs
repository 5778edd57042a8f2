//! Where each volume is kept (#28): the nodes the leader assigned, the
//! nodes that stage it, and how far each one's copy is.

use std::collections::HashMap;

use serde::Serialize;
use sqlx::FromRow;

use super::{Db, DbResult};
use crate::crypto::{Kek, WrapContext, WrappedKey};

/// StorageClass (and mutable) parameter: how many nodes keep a volume.
pub const PARAM_REPLICAS: &str = "replicas";
/// Replicas a volume has when its parameters name none.
pub const DEFAULT_REPLICAS: u32 = 2;
/// Seconds without a heartbeat after which a node's replicas count as lost
/// and are replaced (the controller's `--replica-timeout-secs` default).
pub const DEFAULT_REPLICA_TIMEOUT_SECS: u64 = 300;
/// The most replicas a volume may ask for.
pub const MAX_REPLICAS: u32 = 16;

/// A volume's replica count from its parameters (see
/// `records::parameter`), else [`DEFAULT_REPLICAS`].
pub fn replicas_of(parameters: &str, mutable_parameters: &str) -> u32 {
    super::records::parameter(parameters, mutable_parameters, PARAM_REPLICAS)
        .unwrap_or(DEFAULT_REPLICAS)
}

/// StorageClass parameter: other replicas an fsync waits for.
pub const PARAM_SYNC_REPLICAS: &str = "syncReplicas";

/// A volume's `syncReplicas`: its mutable parameters' (ControllerModifyVolume)
/// over its StorageClass's, 0 when neither names it.
pub fn sync_replicas_of(parameters: &str, mutable_parameters: &str) -> u32 {
    super::records::parameter(parameters, mutable_parameters, PARAM_SYNC_REPLICAS).unwrap_or(0)
}

/// One node's copy of a volume.
#[derive(Clone, Debug, FromRow, Serialize, PartialEq, Eq)]
pub struct Holder {
    pub volume_id: String,
    pub node_id: String,
    /// A pod's mount runs there (a keyed copy).
    pub stages: bool,
    /// The leader assigned it (a blind copy, unless it stages too).
    pub assigned: bool,
    pub head: Option<String>,
    pub height: Option<i64>,
    /// Its node sent a heartbeat within the replica timeout.
    pub live: bool,
}

/// A volume's replicas as its condition reports them.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Health {
    pub wanted: u32,
    pub holders: Vec<HolderState>,
}

/// A holder and whether it is in sync.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct HolderState {
    pub node: String,
    pub role: &'static str,
    pub height: Option<i64>,
    pub in_sync: bool,
    pub live: bool,
}

impl Health {
    /// Live holders at the newest height any node reported.
    pub fn in_sync(&self) -> usize {
        self.holders.iter().filter(|h| h.live && h.in_sync).count()
    }

    /// Abnormal while fewer replicas than asked are in sync; the message
    /// names each holder.
    pub fn condition(&self) -> (bool, String) {
        if self.holders.is_empty() {
            // Never staged nor placed: nothing was written to lose.
            return (
                false,
                format!("no replica yet of {} (never staged)", self.wanted),
            );
        }
        let listed: Vec<String> = self
            .holders
            .iter()
            .map(|h| {
                format!(
                    "{} ({}{})",
                    h.node,
                    h.role,
                    match (h.live, h.in_sync) {
                        (false, _) => ", node lost",
                        (true, true) => ", in sync",
                        (true, false) => ", catching up",
                    }
                )
            })
            .collect();
        let n = self.in_sync();
        let msg = format!(
            "{n} of {} replicas in sync: {}",
            self.wanted,
            listed.join(", ")
        );
        (n < self.wanted as usize, msg)
    }
}

impl Db {
    /// Record the proof key of a volume (wrapped by `kek`) unless one is
    /// recorded: the controller at CreateVolume, a node that holds the
    /// volume's key for volumes from before blind replicas.
    pub async fn ensure_proof_key(&self, volume_id: &str, wrapped: &WrappedKey) -> DbResult<bool> {
        let done = sqlx::query(
            "UPDATE volumes SET proof_key_wrapped = $2 WHERE id = $1 AND proof_key_wrapped IS NULL",
        )
        .bind(volume_id)
        .bind(&wrapped.0)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The volumes (of `ids`) with no proof key recorded yet.
    pub async fn without_proof_key(&self, ids: &[String]) -> DbResult<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT id FROM volumes WHERE id = ANY($1) AND proof_key_wrapped IS NULL",
        )
        .bind(ids)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// The wrapped proof key of a volume, if recorded.
    pub async fn proof_key(&self, volume_id: &str) -> DbResult<Option<WrappedKey>> {
        let row: Option<(Option<Vec<u8>>,)> =
            sqlx::query_as("SELECT proof_key_wrapped FROM volumes WHERE id = $1")
                .bind(volume_id)
                .fetch_optional(self.pool())
                .await?;
        Ok(row.and_then(|(k,)| k).map(WrappedKey))
    }

    /// The versions of a volume its snapshots and clones name: what a
    /// blind replica keeps beside the newest.
    pub async fn snapshot_heads(&self, volume_id: &str) -> DbResult<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT head FROM snapshots WHERE COALESCE(bucket_id, source_volume_id) = $1 AND head IS NOT NULL \
             UNION SELECT source_head FROM volumes WHERE source_volume_id = $1 AND source_head IS NOT NULL",
        )
        .bind(volume_id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|(h,)| h).collect())
    }

    /// Forget what Postgres says `node_id` holds and the node no longer
    /// does (its state dir was lost or replaced): its reported heads of
    /// volumes not in `held`, and its mount records of volumes not in
    /// `mounted`, among the rows older than `since_epoch` (rows a request
    /// wrote since are left alone). Otherwise a node back with an empty
    /// disk counts as a holder in sync. Returns the rows removed.
    pub async fn forget_lost_copies(
        &self,
        node_id: &str,
        held: &[String],
        mounted: &[String],
        since_epoch: f64,
    ) -> DbResult<u64> {
        let mut tx = self.pool().begin().await?;
        let heads = sqlx::query(
            "DELETE FROM bucket_heads WHERE node_id = $1 AND NOT (volume_id = ANY($2)) \
             AND updated_at < to_timestamp($3)",
        )
        .bind(node_id)
        .bind(held)
        .bind(since_epoch)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let mounts = sqlx::query(
            "DELETE FROM mounts WHERE node_id = $1 AND NOT (volume_id = ANY($2)) \
             AND updated_at < to_timestamp($3)",
        )
        .bind(node_id)
        .bind(mounted)
        .bind(since_epoch)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(heads + mounts)
    }

    /// Postgres's clock, as seconds since the epoch.
    pub async fn now_epoch(&self) -> DbResult<f64> {
        let (t,): (f64,) = sqlx::query_as("SELECT extract(epoch FROM now())::FLOAT8")
            .fetch_one(self.pool())
            .await?;
        Ok(t)
    }

    /// The volumes the leader assigned to `node_id`.
    pub async fn assigned_to(&self, node_id: &str) -> DbResult<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT volume_id FROM replicas WHERE node_id = $1 \
             AND volume_id IN (SELECT id FROM volumes) ORDER BY volume_id",
        )
        .bind(node_id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|(v,)| v).collect())
    }

    pub async fn assign_replica(&self, volume_id: &str, node_id: &str) -> DbResult<()> {
        sqlx::query(
            "INSERT INTO replicas (volume_id, node_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(volume_id)
        .bind(node_id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Take an assignment back; the node's reported head of the volume
    /// goes with it (it no longer holds the volume for anyone).
    pub async fn unassign_replica(&self, volume_id: &str, node_id: &str) -> DbResult<()> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM replicas WHERE volume_id = $1 AND node_id = $2")
            .bind(volume_id)
            .bind(node_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "DELETE FROM bucket_heads WHERE volume_id = $1 AND node_id = $2 AND NOT EXISTS \
             (SELECT 1 FROM mounts m WHERE m.volume_id = $1 AND m.node_id = $2)",
        )
        .bind(volume_id)
        .bind(node_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every node that stages or was assigned one of `ids` (every volume
    /// when `None`), with its reported head; a node is live when its last
    /// heartbeat is younger than `timeout_secs`.
    pub async fn holders(
        &self,
        ids: Option<&[String]>,
        timeout_secs: i64,
    ) -> DbResult<Vec<Holder>> {
        Ok(sqlx::query_as(
            "WITH held AS ( \
                 SELECT volume_id, node_id, true AS stages, false AS assigned FROM mounts \
                   WHERE status = 'running' \
                 UNION ALL \
                 SELECT volume_id, node_id, false, true FROM replicas) \
             SELECT held.volume_id, held.node_id, bool_or(held.stages) AS stages, \
                    bool_or(held.assigned) AS assigned, h.head, h.height, \
                    COALESCE(n.last_seen > now() - make_interval(secs => $2), false) AS live \
             FROM held \
             JOIN volumes v ON v.id = held.volume_id \
             LEFT JOIN nodes n ON n.id = held.node_id \
             LEFT JOIN bucket_heads h ON h.volume_id = held.volume_id AND h.node_id = held.node_id \
             WHERE ($1::TEXT[] IS NULL OR held.volume_id = ANY($1)) \
             GROUP BY held.volume_id, held.node_id, h.head, h.height, n.last_seen \
             ORDER BY held.volume_id, held.node_id",
        )
        .bind(ids)
        .bind(timeout_secs as f64)
        .fetch_all(self.pool())
        .await?)
    }

    /// The replica health of each of `ids` (every volume when `None`).
    pub async fn replica_health(
        &self,
        ids: Option<&[String]>,
        timeout_secs: i64,
    ) -> DbResult<HashMap<String, Health>> {
        let newest: Vec<(String, Option<i64>)> = sqlx::query_as(
            "SELECT volume_id, MAX(height) FROM bucket_heads \
             WHERE ($1::TEXT[] IS NULL OR volume_id = ANY($1)) GROUP BY volume_id",
        )
        .bind(ids)
        .fetch_all(self.pool())
        .await?;
        let newest: HashMap<String, i64> = newest
            .into_iter()
            .filter_map(|(v, h)| Some((v, h?)))
            .collect();
        let mut out: HashMap<String, Health> = self
            .wanted_replicas(ids)
            .await?
            .into_iter()
            .map(|(id, wanted)| {
                let h = Health {
                    wanted,
                    holders: Vec::new(),
                };
                (id, h)
            })
            .collect();
        for h in self.holders(ids, timeout_secs).await? {
            let best = newest.get(&h.volume_id).copied();
            let in_sync = match (h.height, best) {
                (Some(mine), Some(best)) => mine >= best,
                // Nothing written anywhere yet: a node holding it is as
                // far as any.
                (None, None) => true,
                _ => false,
            };
            if let Some(health) = out.get_mut(&h.volume_id) {
                health.holders.push(HolderState {
                    role: if h.stages { "stages" } else { "replica" },
                    node: h.node_id,
                    height: h.height,
                    in_sync,
                    live: h.live,
                });
            }
        }
        Ok(out)
    }

    /// Every live node (heartbeat younger than `timeout_secs`, not
    /// removed): id, zone label, free bytes.
    pub async fn live_nodes(&self, timeout_secs: i64) -> DbResult<Vec<(String, String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT id, labels, free_bytes FROM nodes \
             WHERE last_seen > now() - make_interval(secs => $1) AND endpoint_id IS NOT NULL \
             ORDER BY id",
        )
        .bind(timeout_secs as f64)
        .fetch_all(self.pool())
        .await?)
    }

    /// The id and replica count of each of `ids` (every volume when `None`).
    pub async fn wanted_replicas(&self, ids: Option<&[String]>) -> DbResult<Vec<(String, u32)>> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT id, parameters, mutable_parameters FROM volumes \
             WHERE ($1::TEXT[] IS NULL OR id = ANY($1)) ORDER BY seq",
        )
        .bind(ids)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, p, m)| {
                let n = replicas_of(&p, &m);
                (id, n)
            })
            .collect())
    }
}

/// A volume's proof key wrapped for Postgres.
pub fn wrap_proof_key(
    kek: &Kek,
    volume_id: &str,
    key: &crate::bucket::ProofKey,
) -> Result<WrappedKey, crate::crypto::CryptoError> {
    kek.wrap_for(&key.to_secret(), &WrapContext::replica_proof(volume_id))
}
