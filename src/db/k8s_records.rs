//! Records the Kubernetes integration keeps: node labels and volumes no
//! PersistentVolume names (the orphan sweep's marks).

use super::{Db, DbResult};

impl Db {
    /// Store node `node_id`'s labels (JSON object); false if it is not registered yet.
    pub async fn set_node_labels(&self, node_id: &str, labels_json: &str) -> DbResult<bool> {
        Ok(sqlx::query("UPDATE nodes SET labels = $2 WHERE id = $1")
            .bind(node_id)
            .bind(labels_json)
            .execute(self.pool())
            .await?
            .rows_affected()
            > 0)
    }

    /// Mark volumes older than `min_age_secs` that `with_pv` does not name
    /// as orphans (returns the newly marked), and unmark those it names
    /// again (returns how many).
    pub async fn mark_orphans(
        &self,
        with_pv: &[String],
        min_age_secs: i64,
    ) -> DbResult<(Vec<String>, u64)> {
        let marked: Vec<(String,)> = sqlx::query_as(
            "UPDATE volumes SET orphan_since = now() \
             WHERE orphan_since IS NULL AND NOT (id = ANY($1)) \
               AND created_at < now() - make_interval(secs => $2::DOUBLE PRECISION) \
             RETURNING id",
        )
        .bind(with_pv)
        .bind(min_age_secs)
        .fetch_all(self.pool())
        .await?;
        let cleared = sqlx::query(
            "UPDATE volumes SET orphan_since = NULL WHERE orphan_since IS NOT NULL AND id = ANY($1)",
        )
        .bind(with_pv)
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok((marked.into_iter().map(|(id,)| id).collect(), cleared))
    }

    /// Volumes marked as orphans more than `secs` ago.
    pub async fn orphans_older_than(&self, secs: i64) -> DbResult<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT id FROM volumes WHERE orphan_since < now() - make_interval(secs => $1::DOUBLE PRECISION) ORDER BY seq",
        )
        .bind(secs)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }
}
