//! Typed access to the control-plane tables.

use std::collections::BTreeMap;

use sqlx::FromRow;

use crate::bucket::Retention;

use super::{Db, DbError, DbResult};

#[derive(Clone, Debug, FromRow, PartialEq, Eq)]
pub struct VolumeRecord {
    pub id: String,
    pub name: String,
    pub seq: i64,
    pub capacity_bytes: i64,
    pub parameters: String,
    pub access_modes: String,
    pub chunk_size: i32,
    pub wrapped_key: Vec<u8>,
    pub tenant_wrapped_key: Option<Vec<u8>>,
    pub source_snapshot_id: Option<String>,
    pub source_volume_id: Option<String>,
    pub source_head: Option<String>,
    pub source_wrapped_key: Option<Vec<u8>>,
    /// Parameters ControllerModifyVolume may change, canonical JSON.
    pub mutable_parameters: String,
}

impl VolumeRecord {
    /// The access modes the volume was created with (CSI enum values).
    pub fn modes(&self) -> Vec<i32> {
        serde_json::from_str(&self.access_modes).unwrap_or_default()
    }
}

/// A volume to insert (everything but the sequence number).
#[derive(Clone, Debug)]
pub struct NewVolume {
    pub id: String,
    pub name: String,
    pub capacity_bytes: i64,
    pub parameters: String,
    pub access_modes: String,
    pub chunk_size: i32,
    pub wrapped_key: Vec<u8>,
    pub tenant_wrapped_key: Option<Vec<u8>>,
    pub source_snapshot_id: Option<String>,
    pub source_volume_id: Option<String>,
    pub source_head: Option<String>,
    pub source_wrapped_key: Option<Vec<u8>>,
    pub mutable_parameters: String,
}

#[derive(Clone, Debug, FromRow, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub id: String,
    pub name: String,
    pub seq: i64,
    pub source_volume_id: String,
    pub head: Option<String>,
    pub wrapped_key: Vec<u8>,
    pub size_bytes: i64,
    pub created_secs: i64,
    pub created_nanos: i32,
    pub group_snapshot_id: Option<String>,
    /// The bucket `head` belongs to (`source_volume_id` when `None`).
    pub bucket_id: Option<String>,
    /// False while the head to record is not known yet.
    pub ready: bool,
}

impl SnapshotRecord {
    /// The bucket whose version the snapshot records.
    pub fn bucket(&self) -> &str {
        self.bucket_id.as_deref().unwrap_or(&self.source_volume_id)
    }
}

/// A node's sync endpoint, as it registers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSync {
    /// Hex of the node's identity (its iroh endpoint id).
    pub endpoint_id: String,
    /// `ip:port` addresses peers dial.
    pub addresses: Vec<String>,
}

/// A peer holding a volume, from [`Db::sync_peers`].
#[derive(Clone, Debug, FromRow, PartialEq, Eq)]
pub struct NodeSyncRow {
    pub node_id: String,
    pub endpoint_id: String,
    /// JSON list of `ip:port`.
    pub addresses: String,
    pub height: Option<i64>,
}

#[derive(Clone, Debug, FromRow, PartialEq, Eq)]
pub struct GroupSnapshotRecord {
    pub id: String,
    pub name: String,
    pub created_secs: i64,
    pub created_nanos: i32,
}

#[derive(Clone, Debug)]
pub struct NewSnapshot {
    pub id: String,
    pub name: String,
    pub source_volume_id: String,
    pub head: Option<String>,
    pub wrapped_key: Vec<u8>,
    pub size_bytes: i64,
    pub group_snapshot_id: Option<String>,
    pub bucket_id: Option<String>,
    pub ready: bool,
}

pub(super) const VOLUME_COLUMNS: &str =
    "id, name, seq, capacity_bytes, parameters, access_modes, chunk_size, wrapped_key, \
     tenant_wrapped_key, source_snapshot_id, source_volume_id, source_head, source_wrapped_key, \
     mutable_parameters";

pub(super) const SNAPSHOT_COLUMNS: &str =
    "id, name, seq, source_volume_id, head, wrapped_key, size_bytes, \
     EXTRACT(EPOCH FROM date_trunc('second', created_at))::BIGINT AS created_secs, \
     (EXTRACT(MICROSECONDS FROM created_at)::BIGINT % 1000000 * 1000)::INT AS created_nanos, \
     group_snapshot_id, bucket_id, ready";

const GROUP_COLUMNS: &str = "id, name, \
     EXTRACT(EPOCH FROM date_trunc('second', created_at))::BIGINT AS created_secs, \
     (EXTRACT(MICROSECONDS FROM created_at)::BIGINT % 1000000 * 1000)::INT AS created_nanos";

impl Db {
    /// One row of `table` whose `column` equals `value` (columns and names
    /// are constants of this module, never caller input).
    async fn find<T>(
        &self,
        columns: &str,
        table: &str,
        column: &str,
        value: &str,
    ) -> DbResult<Option<T>>
    where
        T: for<'r> FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
    {
        let sql = format!("SELECT {columns} FROM {table} WHERE {column} = $1");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(value)
            .fetch_optional(self.pool())
            .await?)
    }

    /// Insert a volume unless one with its name exists; `None` means the name is taken.
    pub async fn insert_volume(&self, v: &NewVolume) -> DbResult<Option<VolumeRecord>> {
        let sql = format!(
            "INSERT INTO volumes (id, name, capacity_bytes, parameters, access_modes, chunk_size, wrapped_key, \
             tenant_wrapped_key, source_snapshot_id, source_volume_id, source_head, source_wrapped_key, \
             mutable_parameters) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT (name) DO NOTHING RETURNING {VOLUME_COLUMNS}"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(&v.id)
            .bind(&v.name)
            .bind(v.capacity_bytes)
            .bind(&v.parameters)
            .bind(&v.access_modes)
            .bind(v.chunk_size)
            .bind(&v.wrapped_key)
            .bind(&v.tenant_wrapped_key)
            .bind(&v.source_snapshot_id)
            .bind(&v.source_volume_id)
            .bind(&v.source_head)
            .bind(&v.source_wrapped_key)
            .bind(&v.mutable_parameters)
            .fetch_optional(self.pool())
            .await?)
    }

    /// Replace a volume's mutable parameters; false if it does not exist.
    pub async fn set_mutable_parameters(&self, id: &str, json: &str) -> DbResult<bool> {
        Ok(
            sqlx::query("UPDATE volumes SET mutable_parameters = $2 WHERE id = $1")
                .bind(id)
                .bind(json)
                .execute(self.pool())
                .await?
                .rows_affected()
                > 0,
        )
    }

    pub async fn volume_by_name(&self, name: &str) -> DbResult<Option<VolumeRecord>> {
        self.find(VOLUME_COLUMNS, "volumes", "name", name).await
    }

    pub async fn volume_by_id(&self, id: &str) -> DbResult<Option<VolumeRecord>> {
        self.find(VOLUME_COLUMNS, "volumes", "id", id).await
    }

    /// Delete a volume and queue its blobs for collection; false if it did not exist.
    pub async fn delete_volume(&self, id: &str) -> DbResult<bool> {
        let mut tx = self.pool().begin().await?;
        let deleted = sqlx::query("DELETE FROM volumes WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            > 0;
        if deleted {
            sqlx::query("INSERT INTO gc_queue (volume_id) VALUES ($1) ON CONFLICT DO NOTHING")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM mounts WHERE volume_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(deleted)
    }

    /// Up to `limit` volumes after sequence number `after`, in order.
    pub async fn list_volumes(&self, after: i64, limit: i64) -> DbResult<Vec<VolumeRecord>> {
        let sql =
            format!("SELECT {VOLUME_COLUMNS} FROM volumes WHERE seq > $1 ORDER BY seq LIMIT $2");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(after)
            .bind(limit)
            .fetch_all(self.pool())
            .await?)
    }

    pub async fn set_volume_capacity(&self, id: &str, bytes: i64) -> DbResult<bool> {
        Ok(sqlx::query(
            "UPDATE volumes SET capacity_bytes = GREATEST(capacity_bytes, $2) WHERE id = $1",
        )
        .bind(id)
        .bind(bytes)
        .execute(self.pool())
        .await?
        .rows_affected()
            > 0)
    }

    /// Total bytes provisioned to volumes.
    pub async fn provisioned_bytes(&self) -> DbResult<i64> {
        let (sum,): (Option<i64>,) =
            sqlx::query_as("SELECT SUM(capacity_bytes)::BIGINT FROM volumes")
                .fetch_one(self.pool())
                .await?;
        Ok(sum.unwrap_or(0))
    }

    /// Free bytes on the node with the most room, among the nodes heard
    /// from in the last `fresh` seconds (a volume must fit on one node).
    pub async fn largest_free_space(&self, fresh_secs: i64) -> DbResult<i64> {
        let (max,): (Option<i64>,) = sqlx::query_as(
            "SELECT MAX(free_bytes) FROM nodes WHERE last_seen > now() - make_interval(secs => $1)",
        )
        .bind(fresh_secs as f64)
        .fetch_one(self.pool())
        .await?;
        Ok(max.unwrap_or(0))
    }

    /// The highest head any node reported for a volume.
    pub async fn latest_head(&self, volume_id: &str) -> DbResult<Option<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT head, height FROM bucket_heads WHERE volume_id = $1 ORDER BY height DESC, updated_at DESC LIMIT 1",
        )
        .bind(volume_id)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Claim the making of volume `volume_id`'s first version for node
    /// `node_id`: whether this node may make it. It may when nobody claimed
    /// it, when it did before, or when the claim is older than
    /// [`GENESIS_CLAIM_SECS`] and no node reported a head (its node died
    /// before it made one).
    pub async fn claim_genesis(&self, volume_id: &str, node_id: &str) -> DbResult<bool> {
        let claimed = sqlx::query(
            "UPDATE volumes SET genesis_claimed_by = $2, genesis_claimed_at = now() \
             WHERE id = $1 AND (genesis_claimed_by IS NULL OR genesis_claimed_by = $2 \
               OR (genesis IS NULL AND genesis_claimed_at < now() - make_interval(secs => $3) \
                   AND NOT EXISTS (SELECT 1 FROM bucket_heads WHERE volume_id = $1)))",
        )
        .bind(volume_id)
        .bind(node_id)
        .bind(GENESIS_CLAIM_SECS as f64)
        .execute(self.pool())
        .await?;
        Ok(claimed.rows_affected() == 1)
    }

    /// Record the version volume `volume_id`'s history begins with (once:
    /// a record is never replaced); the one recorded after it.
    pub async fn record_genesis(&self, volume_id: &str, genesis: &str) -> DbResult<Option<String>> {
        sqlx::query("UPDATE volumes SET genesis = $2 WHERE id = $1 AND genesis IS NULL")
            .bind(volume_id)
            .bind(genesis)
            .execute(self.pool())
            .await?;
        Ok(self.genesis_of(volume_id).await?.0)
    }

    /// The version volume `volume_id`'s history begins with, when recorded;
    /// and the node that claimed its making.
    pub async fn genesis_of(&self, volume_id: &str) -> DbResult<(Option<String>, Option<String>)> {
        Ok(
            sqlx::query_as("SELECT genesis, genesis_claimed_by FROM volumes WHERE id = $1")
                .bind(volume_id)
                .fetch_optional(self.pool())
                .await?
                .unwrap_or((None, None)),
        )
    }

    /// Record a node's head for a volume (nodes call this after each commit).
    pub async fn report_head(
        &self,
        volume_id: &str,
        node_id: &str,
        head: &str,
        height: i64,
        used_bytes: Option<i64>,
    ) -> DbResult<()> {
        sqlx::query(
            "INSERT INTO bucket_heads (volume_id, node_id, head, height, used_bytes) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (volume_id, node_id) DO UPDATE SET head = EXCLUDED.head, height = EXCLUDED.height, \
             used_bytes = COALESCE(EXCLUDED.used_bytes, bucket_heads.used_bytes), updated_at = now()",
        )
        .bind(volume_id)
        .bind(node_id)
        .bind(head)
        .bind(height)
        .bind(used_bytes)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Register a node or refresh it (the heartbeat): its volume limit,
    /// the size and free bytes of its state dir's file system, last sighting.
    pub async fn upsert_node(
        &self,
        node_id: &str,
        max_volumes: i64,
        capacity_bytes: i64,
        free_bytes: i64,
        sync: Option<&NodeSync>,
    ) -> DbResult<()> {
        // A removed identity does not register again (`remove_node`).
        let refused = sqlx::query(
            "INSERT INTO nodes (id, max_volumes, capacity_bytes, free_bytes, endpoint_id, addresses) \
             SELECT $1, $2, $3, $4, $5, COALESCE($6, '[]') \
             WHERE NOT EXISTS (SELECT 1 FROM removed_nodes r WHERE r.endpoint_id = $5) \
             ON CONFLICT (id) DO UPDATE SET max_volumes = EXCLUDED.max_volumes, \
             capacity_bytes = EXCLUDED.capacity_bytes, free_bytes = EXCLUDED.free_bytes, \
             endpoint_id = COALESCE(EXCLUDED.endpoint_id, nodes.endpoint_id), \
             addresses = CASE WHEN $6 IS NULL THEN nodes.addresses ELSE EXCLUDED.addresses END, \
             last_seen = now()",
        )
        .bind(node_id)
        .bind(max_volumes)
        .bind(capacity_bytes)
        .bind(free_bytes)
        .bind(sync.map(|s| s.endpoint_id.as_str()))
        .bind(sync.map(|s| serde_json::to_string(&s.addresses).expect("strings serialize")))
        .execute(self.pool())
        .await?
        .rows_affected()
            == 0;
        if refused {
            return Err(DbError::Removed(node_id.to_string()));
        }
        Ok(())
    }

    /// Remove a node for good: its registration, heads and mount records
    /// go, and its sync identity is listed as removed, so every node
    /// refuses it and it cannot register again. Returns its endpoint id
    /// (`None`: no such node).
    pub async fn remove_node(&self, node_id: &str) -> DbResult<Option<String>> {
        let mut tx = self.pool().begin().await?;
        let row: Option<(Option<String>,)> =
            sqlx::query_as("SELECT endpoint_id FROM nodes WHERE id = $1 FOR UPDATE")
                .bind(node_id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((endpoint,)) = row else {
            return Ok(None);
        };
        let endpoint = endpoint.unwrap_or_default();
        sqlx::query(
            "INSERT INTO removed_nodes (endpoint_id, node_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(&endpoint)
        .bind(node_id)
        .execute(&mut *tx)
        .await?;
        for table in ["bucket_heads", "mounts"] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE node_id = $1"
            )))
            .bind(node_id)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DELETE FROM nodes WHERE id = $1")
            .bind(node_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(endpoint))
    }

    /// The sync endpoint ids of every removed node.
    pub async fn removed_endpoints(&self) -> DbResult<Vec<String>> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT endpoint_id FROM removed_nodes WHERE endpoint_id <> ''")
                .fetch_all(self.pool())
                .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// The sync endpoint ids of every registered node.
    pub async fn registered_endpoints(&self) -> DbResult<Vec<String>> {
        Ok(self
            .registered_nodes()
            .await?
            .into_iter()
            .map(|r| r.endpoint_id)
            .collect())
    }

    /// Every registered node's sync endpoint and addresses.
    pub async fn registered_nodes(&self) -> DbResult<Vec<NodeSyncRow>> {
        Ok(sqlx::query_as(
            "SELECT id AS node_id, endpoint_id, addresses, NULL::BIGINT AS height FROM nodes \
             WHERE endpoint_id IS NOT NULL ORDER BY id",
        )
        .fetch_all(self.pool())
        .await?)
    }

    /// The nodes other than `me` that hold volume `volume_id` (a reported
    /// head, a mount record or a replica assignment), freshest head first, with their sync
    /// endpoint and addresses.
    pub async fn sync_peers(&self, volume_id: &str, me: &str) -> DbResult<Vec<NodeSyncRow>> {
        Ok(sqlx::query_as(
            "SELECT n.id AS node_id, n.endpoint_id AS endpoint_id, n.addresses AS addresses, \
                    h.height AS height \
             FROM nodes n LEFT JOIN bucket_heads h ON h.node_id = n.id AND h.volume_id = $1 \
             WHERE n.id <> $2 AND n.endpoint_id IS NOT NULL AND (h.volume_id IS NOT NULL OR EXISTS \
                (SELECT 1 FROM mounts m WHERE m.node_id = n.id AND m.volume_id = $1) OR EXISTS \
                (SELECT 1 FROM replicas r WHERE r.node_id = n.id AND r.volume_id = $1)) \
             ORDER BY h.height DESC NULLS LAST, n.id",
        )
        .bind(volume_id)
        .bind(me)
        .fetch_all(self.pool())
        .await?)
    }

    /// Nodes where the volume is published to at least one pod.
    pub async fn publishing_nodes(&self, volume_id: &str) -> DbResult<Vec<String>> {
        let ids = [volume_id.to_string()];
        Ok(self
            .published_nodes(&ids)
            .await?
            .remove(volume_id)
            .unwrap_or_default())
    }

    /// For each of `ids` that exists: (id, parameters, mutable parameters).
    pub async fn parameters_of(&self, ids: &[String]) -> DbResult<Vec<(String, String, String)>> {
        Ok(sqlx::query_as(
            "SELECT id, parameters, mutable_parameters FROM volumes WHERE id = ANY($1)",
        )
        .bind(ids)
        .fetch_all(self.pool())
        .await?)
    }

    /// For each of `ids`, the nodes where it is published, sorted.
    pub async fn published_nodes(
        &self,
        ids: &[String],
    ) -> DbResult<std::collections::HashMap<String, Vec<String>>> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT volume_id, node_id FROM mounts WHERE volume_id = ANY($1) AND status = 'running' \
             AND published ORDER BY node_id",
        )
        .bind(ids)
        .fetch_all(self.pool())
        .await?;
        let mut out: std::collections::HashMap<String, Vec<String>> = Default::default();
        for (v, n) in rows {
            out.entry(v).or_default().push(n);
        }
        Ok(out)
    }

    /// Mount states of each of `ids`: (volume, node, status, message).
    pub async fn mount_states_of(
        &self,
        ids: &[String],
    ) -> DbResult<Vec<(String, String, String, Option<String>)>> {
        Ok(sqlx::query_as(
            "SELECT volume_id, node_id, status, message FROM mounts WHERE volume_id = ANY($1) \
             ORDER BY volume_id, node_id",
        )
        .bind(ids)
        .fetch_all(self.pool())
        .await?)
    }

    /// Mount status rows for a volume: (node, status, message).
    pub async fn mount_states(
        &self,
        volume_id: &str,
    ) -> DbResult<Vec<(String, String, Option<String>)>> {
        Ok(sqlx::query_as(
            "SELECT node_id, status, message FROM mounts WHERE volume_id = $1 ORDER BY node_id",
        )
        .bind(volume_id)
        .fetch_all(self.pool())
        .await?)
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn upsert_mount(
        &self,
        volume_id: &str,
        node_id: &str,
        staging_path: &str,
        status: &str,
        message: Option<&str>,
        published: bool,
    ) -> DbResult<()> {
        sqlx::query(
            "INSERT INTO mounts (volume_id, node_id, staging_path, status, message, published) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (volume_id, node_id) DO UPDATE SET staging_path = EXCLUDED.staging_path, \
             status = EXCLUDED.status, message = EXCLUDED.message, published = EXCLUDED.published, \
             updated_at = now()",
        )
        .bind(volume_id)
        .bind(node_id)
        .bind(staging_path)
        .bind(status)
        .bind(message)
        .bind(published)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn insert_snapshot(&self, s: &NewSnapshot) -> DbResult<Option<SnapshotRecord>> {
        let sql = format!(
            "INSERT INTO snapshots (id, name, source_volume_id, head, wrapped_key, size_bytes, \
             group_snapshot_id, bucket_id, ready) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (name) DO NOTHING RETURNING {SNAPSHOT_COLUMNS}"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(&s.id)
            .bind(&s.name)
            .bind(&s.source_volume_id)
            .bind(&s.head)
            .bind(&s.wrapped_key)
            .bind(s.size_bytes)
            .bind(&s.group_snapshot_id)
            .bind(&s.bucket_id)
            .bind(s.ready)
            .fetch_optional(self.pool())
            .await?)
    }

    /// A snapshot taken before its volume's head was known gets one now.
    pub async fn fill_snapshot_head(
        &self,
        id: &str,
        bucket_id: &str,
        head: &str,
        wrapped_key: &[u8],
    ) -> DbResult<()> {
        sqlx::query(
            "UPDATE snapshots SET head = $3, wrapped_key = $4, bucket_id = $2, ready = true \
             WHERE id = $1 AND NOT ready",
        )
        .bind(id)
        .bind(bucket_id)
        .bind(head)
        .bind(wrapped_key)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Whether any node ever recorded a mount of the volume (then its
    /// content is only known once a head is reported).
    pub async fn ever_mounted(&self, volume_id: &str) -> DbResult<bool> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM mounts WHERE volume_id = $1")
            .bind(volume_id)
            .fetch_one(self.pool())
            .await?;
        Ok(n > 0)
    }

    /// Insert a group snapshot unless one with its name exists.
    pub async fn insert_group_snapshot(
        &self,
        id: &str,
        name: &str,
    ) -> DbResult<Option<GroupSnapshotRecord>> {
        let sql = format!(
            "INSERT INTO group_snapshots (id, name) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING \
             RETURNING {GROUP_COLUMNS}"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(name)
            .fetch_optional(self.pool())
            .await?)
    }

    pub async fn group_snapshot_by_name(
        &self,
        name: &str,
    ) -> DbResult<Option<GroupSnapshotRecord>> {
        self.find(GROUP_COLUMNS, "group_snapshots", "name", name)
            .await
    }

    pub async fn group_snapshot_by_id(&self, id: &str) -> DbResult<Option<GroupSnapshotRecord>> {
        self.find(GROUP_COLUMNS, "group_snapshots", "id", id).await
    }

    /// The snapshots of a group, in their volumes' order.
    pub async fn snapshots_of_group(&self, group_id: &str) -> DbResult<Vec<SnapshotRecord>> {
        let sql = format!(
            "SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE group_snapshot_id = $1 ORDER BY seq"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(group_id)
            .fetch_all(self.pool())
            .await?)
    }

    /// Delete a group snapshot and its member snapshots.
    pub async fn delete_group_snapshot(&self, id: &str) -> DbResult<()> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM snapshots WHERE group_snapshot_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM group_snapshots WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The newest reported head of each volume, all read in one statement
    /// (one point in time for a group snapshot).
    pub async fn latest_heads(
        &self,
        ids: &[String],
    ) -> DbResult<std::collections::HashMap<String, String>> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT DISTINCT ON (volume_id) volume_id, head FROM bucket_heads WHERE volume_id = ANY($1) \
             ORDER BY volume_id, height DESC, updated_at DESC",
        )
        .bind(ids)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().collect())
    }

    /// Versions of volume `id` that must survive pruning: snapshot heads,
    /// heads clones start from, and every node's reported head.
    pub async fn pinned_heads(&self, volume_id: &str) -> DbResult<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT head FROM snapshots WHERE COALESCE(bucket_id, source_volume_id) = $1 AND head IS NOT NULL \
             UNION SELECT source_head FROM volumes WHERE source_volume_id = $1 AND source_head IS NOT NULL \
             UNION SELECT head FROM bucket_heads WHERE volume_id = $1",
        )
        .bind(volume_id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Deleted volumes this node has not collected yet.
    pub async fn gc_pending_for(&self, node_id: &str) -> DbResult<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT q.volume_id FROM gc_queue q WHERE NOT EXISTS \
             (SELECT 1 FROM gc_done d WHERE d.volume_id = q.volume_id AND d.node_id = $1) \
             ORDER BY q.enqueued_at",
        )
        .bind(node_id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    pub async fn mark_gc_done(&self, volume_id: &str, node_id: &str) -> DbResult<()> {
        sqlx::query(
            "INSERT INTO gc_done (volume_id, node_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(volume_id)
        .bind(node_id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Leader housekeeping: queue entries every registered node collected
    /// are done; returns how many were closed.
    pub async fn close_collected_gc(&self) -> DbResult<u64> {
        Ok(sqlx::query(
            "UPDATE gc_queue q SET done_at = now() WHERE done_at IS NULL AND NOT EXISTS \
             (SELECT 1 FROM nodes n WHERE NOT EXISTS \
              (SELECT 1 FROM gc_done d WHERE d.volume_id = q.volume_id AND d.node_id = n.id))",
        )
        .execute(self.pool())
        .await?
        .rows_affected())
    }

    /// Whether any snapshot still records a head of volume `id`.
    pub async fn has_snapshots(&self, volume_id: &str) -> DbResult<bool> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM snapshots WHERE COALESCE(bucket_id, source_volume_id) = $1",
        )
        .bind(volume_id)
        .fetch_one(self.pool())
        .await?;
        Ok(n > 0)
    }

    pub async fn snapshot_by_name(&self, name: &str) -> DbResult<Option<SnapshotRecord>> {
        self.find(SNAPSHOT_COLUMNS, "snapshots", "name", name).await
    }

    pub async fn snapshot_by_id(&self, id: &str) -> DbResult<Option<SnapshotRecord>> {
        self.find(SNAPSHOT_COLUMNS, "snapshots", "id", id).await
    }

    pub async fn delete_snapshot(&self, id: &str) -> DbResult<bool> {
        Ok(sqlx::query("DELETE FROM snapshots WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?
            .rows_affected()
            > 0)
    }

    /// Up to `limit` snapshots after sequence `after`, optionally of one id or one source volume.
    pub async fn list_snapshots(
        &self,
        id: Option<&str>,
        source: Option<&str>,
        after: i64,
        limit: i64,
    ) -> DbResult<Vec<SnapshotRecord>> {
        let sql = format!(
            "SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE seq > $1 \
             AND ($2::TEXT IS NULL OR id = $2) AND ($3::TEXT IS NULL OR source_volume_id = $3) \
             ORDER BY seq LIMIT $4"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(after)
            .bind(id)
            .bind(source)
            .bind(limit)
            .fetch_all(self.pool())
            .await?)
    }

    /// Try to become the leader (session advisory lock on a dedicated connection).
    /// The returned connection holds the lock until it is dropped or closed.
    pub async fn try_lead(&self) -> DbResult<Option<sqlx::pool::PoolConnection<sqlx::Postgres>>> {
        let mut conn = self.pool().acquire().await?;
        let (got,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
            .bind(LEADER_LOCK)
            .fetch_one(&mut *conn)
            .await?;
        Ok(got.then_some(conn))
    }
}

/// Advisory lock key of the controller leader ("jaxcsi" in ASCII).
/// How long a claim on making a volume's first version holds with no head
/// reported: after it, another node may make it (the claimer died first).
pub const GENESIS_CLAIM_SECS: u64 = 60;

const LEADER_LOCK: i64 = 0x6a61_7863_7369;

/// StorageClass or VolumeAttributesClass parameter: how much history a
/// volume keeps (`count=N,age=D`, see [`Retention`]); mutable.
pub const PARAM_HISTORY_RETENTION: &str = "historyRetention";

/// A volume's parameter `key` from its parameters (JSON maps, as stored):
/// its mutable value when set and valid, else its StorageClass value when
/// valid.
pub fn parameter<T: std::str::FromStr>(
    parameters: &str,
    mutable_parameters: &str,
    key: &str,
) -> Option<T> {
    let get = |json: &str| -> Option<T> {
        let map: BTreeMap<String, String> = serde_json::from_str(json).ok()?;
        map.get(key)?.trim().parse().ok()
    };
    get(mutable_parameters).or_else(|| get(parameters))
}

/// A volume's history retention from its parameters (see [`parameter`]),
/// else the default.
pub fn retention_of(parameters: &str, mutable_parameters: &str) -> Retention {
    parameter(parameters, mutable_parameters, PARAM_HISTORY_RETENTION).unwrap_or_default()
}

impl VolumeRecord {
    /// This volume's history retention (see [`retention_of`]).
    pub fn retention(&self) -> Retention {
        retention_of(&self.parameters, &self.mutable_parameters)
    }
}
