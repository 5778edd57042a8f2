//! Typed access to the control-plane tables.

use sqlx::FromRow;

use super::{Db, DbResult};

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
}

#[derive(Clone, Debug)]
pub struct NewSnapshot {
    pub id: String,
    pub name: String,
    pub source_volume_id: String,
    pub head: Option<String>,
    pub wrapped_key: Vec<u8>,
    pub size_bytes: i64,
}

const VOLUME_COLUMNS: &str =
    "id, name, seq, capacity_bytes, parameters, access_modes, chunk_size, wrapped_key, \
     tenant_wrapped_key, source_snapshot_id, source_volume_id, source_head, source_wrapped_key";

const SNAPSHOT_COLUMNS: &str = "id, name, seq, source_volume_id, head, wrapped_key, size_bytes, \
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
             tenant_wrapped_key, source_snapshot_id, source_volume_id, source_head, source_wrapped_key) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
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
            .fetch_optional(self.pool())
            .await?)
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

    /// Capacity the registered nodes report, and the largest single node's.
    pub async fn node_capacity(&self) -> DbResult<(i64, i64)> {
        let (sum, max): (Option<i64>, Option<i64>) =
            sqlx::query_as("SELECT SUM(capacity_bytes)::BIGINT, MAX(capacity_bytes) FROM nodes")
                .fetch_one(self.pool())
                .await?;
        Ok((sum.unwrap_or(0), max.unwrap_or(0)))
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

    /// Record a node's head for a volume (nodes call this after each commit).
    pub async fn report_head(
        &self,
        volume_id: &str,
        node_id: &str,
        head: &str,
        height: i64,
    ) -> DbResult<()> {
        sqlx::query(
            "INSERT INTO bucket_heads (volume_id, node_id, head, height) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (volume_id, node_id) DO UPDATE SET head = EXCLUDED.head, height = EXCLUDED.height, updated_at = now()",
        )
        .bind(volume_id)
        .bind(node_id)
        .bind(head)
        .bind(height)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Register a node (or refresh it): its id, volume limit and last sighting.
    pub async fn upsert_node(&self, node_id: &str, max_volumes: i64) -> DbResult<()> {
        sqlx::query(
            "INSERT INTO nodes (id, max_volumes) VALUES ($1, $2) \
             ON CONFLICT (id) DO UPDATE SET max_volumes = EXCLUDED.max_volumes, last_seen = now()",
        )
        .bind(node_id)
        .bind(max_volumes)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Nodes where the volume is mounted and running.
    pub async fn publishing_nodes(&self, volume_id: &str) -> DbResult<Vec<String>> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT node_id FROM mounts WHERE volume_id = $1 AND status = 'running' ORDER BY node_id")
                .bind(volume_id)
                .fetch_all(self.pool())
                .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
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

    pub async fn upsert_mount(
        &self,
        volume_id: &str,
        node_id: &str,
        staging_path: &str,
        status: &str,
        message: Option<&str>,
    ) -> DbResult<()> {
        sqlx::query(
            "INSERT INTO mounts (volume_id, node_id, staging_path, status, message) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (volume_id, node_id) DO UPDATE SET staging_path = EXCLUDED.staging_path, \
             status = EXCLUDED.status, message = EXCLUDED.message, updated_at = now()",
        )
        .bind(volume_id)
        .bind(node_id)
        .bind(staging_path)
        .bind(status)
        .bind(message)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn insert_snapshot(&self, s: &NewSnapshot) -> DbResult<Option<SnapshotRecord>> {
        let sql = format!(
            "INSERT INTO snapshots (id, name, source_volume_id, head, wrapped_key, size_bytes) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING RETURNING {SNAPSHOT_COLUMNS}"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(&s.id)
            .bind(&s.name)
            .bind(&s.source_volume_id)
            .bind(&s.head)
            .bind(&s.wrapped_key)
            .bind(s.size_bytes)
            .fetch_optional(self.pool())
            .await?)
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

    /// Volumes waiting for blob collection.
    pub async fn pending_gc(&self) -> DbResult<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT volume_id FROM gc_queue WHERE done_at IS NULL ORDER BY enqueued_at",
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }
}

/// Advisory lock key of the controller leader ("jaxcsi" in ASCII).
const LEADER_LOCK: i64 = 0x6a61_7863_7369;
