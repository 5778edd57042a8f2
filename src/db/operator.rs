//! Read-only views of the control-plane records for the operator CLI: the
//! same tables the controller and nodes write, joined for people.

use serde::Serialize;
use sqlx::FromRow;

use super::{Db, DbResult};

/// One volume as `jax-csi volume list` shows it.
#[derive(Clone, Debug, FromRow, Serialize, PartialEq, Eq)]
pub struct VolumeView {
    pub id: String,
    pub name: String,
    pub capacity_bytes: i64,
    pub created_secs: i64,
    pub source_snapshot_id: Option<String>,
    pub source_volume_id: Option<String>,
}

/// A node's copy of a volume: the head it reported and its mount record.
#[derive(Clone, Debug, FromRow, Serialize, PartialEq, Eq)]
pub struct ReplicaView {
    pub volume_id: String,
    pub node_id: String,
    pub head: Option<String>,
    pub height: Option<i64>,
    pub used_bytes: Option<i64>,
    pub head_updated_secs: Option<i64>,
    /// `stopped`, `starting`, `running`, `error`; `None` for a replica
    /// without a mount (kept after an unstage, or fetched by sync).
    pub status: Option<String>,
    pub message: Option<String>,
    pub published: Option<bool>,
}

/// A registered node with what it holds.
#[derive(Clone, Debug, FromRow, Serialize, PartialEq, Eq)]
pub struct NodeView {
    pub id: String,
    pub endpoint_id: Option<String>,
    /// JSON list of `ip:port` sync addresses.
    pub addresses: String,
    pub max_volumes: i64,
    pub capacity_bytes: i64,
    pub free_bytes: i64,
    pub last_seen_secs: i64,
    pub volumes_held: i64,
    /// Versions behind the newest head any node reported, summed over the
    /// volumes it holds (0: in sync with every peer).
    pub versions_behind: i64,
    /// The node's Kubernetes labels, JSON (`{}` outside Kubernetes).
    pub labels: String,
}

/// A mount record of one node.
#[derive(Clone, Debug, FromRow, Serialize, PartialEq, Eq)]
pub struct MountView {
    pub volume_id: String,
    pub node_id: String,
    pub staging_path: String,
    pub status: String,
    pub message: Option<String>,
    pub published: bool,
    pub read_only: bool,
    pub updated_secs: i64,
}

/// A volume's condition from its nodes' mount states (what ListVolumes and
/// ControllerGetVolume report): abnormal while a node reports an error.
pub fn volume_condition(states: &[(String, String, Option<String>)]) -> (bool, String) {
    let bad: Vec<String> = states
        .iter()
        .filter(|(_, status, _)| status == "error")
        .map(|(node, _, msg)| format!("{node}: {}", msg.as_deref().unwrap_or("mount failed")))
        .collect();
    if bad.is_empty() {
        (false, "volume is healthy".into())
    } else {
        (true, format!("mount errors: {}", bad.join("; ")))
    }
}

const EPOCH: &str = "EXTRACT(EPOCH FROM date_trunc('second', {}))::BIGINT";

fn epoch(column: &str) -> String {
    EPOCH.replace("{}", column)
}

impl Db {
    /// Every volume (or the one with `id`), oldest first.
    pub async fn volume_views(&self, id: Option<&str>) -> DbResult<Vec<VolumeView>> {
        let sql = format!(
            "SELECT id, name, capacity_bytes, {} AS created_secs, source_snapshot_id, source_volume_id \
             FROM volumes WHERE ($1::TEXT IS NULL OR id = $1) ORDER BY seq",
            epoch("created_at")
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_all(self.pool())
            .await?)
    }

    /// The replicas of every volume (or of `volume`): each node's reported
    /// head joined with its mount record.
    pub async fn replica_views(&self, volume: Option<&str>) -> DbResult<Vec<ReplicaView>> {
        let sql = format!(
            "SELECT COALESCE(h.volume_id, m.volume_id) AS volume_id, \
                    COALESCE(h.node_id, m.node_id) AS node_id, \
                    h.head, h.height, h.used_bytes, {} AS head_updated_secs, \
                    m.status, m.message, m.published \
             FROM bucket_heads h FULL OUTER JOIN mounts m \
               ON h.volume_id = m.volume_id AND h.node_id = m.node_id \
             WHERE ($1::TEXT IS NULL OR COALESCE(h.volume_id, m.volume_id) = $1) \
               AND COALESCE(h.volume_id, m.volume_id) IN (SELECT id FROM volumes) \
             ORDER BY 1, 2",
            epoch("h.updated_at")
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(volume)
            .fetch_all(self.pool())
            .await?)
    }

    /// Every registered node, with the volumes it holds and how far behind it is.
    pub async fn node_views(&self) -> DbResult<Vec<NodeView>> {
        let sql = format!(
            "SELECT n.id, n.endpoint_id, n.addresses, n.max_volumes, n.capacity_bytes, n.free_bytes, \
                    {} AS last_seen_secs, \
                    COUNT(h.volume_id) AS volumes_held, \
                    COALESCE(SUM(best.height - h.height), 0)::BIGINT AS versions_behind, \
                    n.labels \
             FROM nodes n \
             LEFT JOIN bucket_heads h ON h.node_id = n.id AND h.volume_id IN (SELECT id FROM volumes) \
             LEFT JOIN (SELECT volume_id, MAX(height) AS height FROM bucket_heads GROUP BY volume_id) best \
               ON best.volume_id = h.volume_id \
             GROUP BY n.id ORDER BY n.id",
            epoch("n.last_seen")
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_all(self.pool())
            .await?)
    }

    /// Mount records, of every node or of one.
    pub async fn mount_views(&self, node: Option<&str>) -> DbResult<Vec<MountView>> {
        let sql = format!(
            "SELECT volume_id, node_id, staging_path, status, message, published, read_only, \
                    {} AS updated_secs \
             FROM mounts WHERE ($1::TEXT IS NULL OR node_id = $1) ORDER BY node_id, volume_id",
            epoch("updated_at")
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(node)
            .fetch_all(self.pool())
            .await?)
    }
}
