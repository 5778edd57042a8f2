//! Postgres: the control plane's records (volumes, snapshots, nodes, mounts,
//! bucket heads) and the embedded throwaway cluster used by tests and
//! `jax-csi local`.
//!
//! Queries are checked at run time (`query_as` + `FromRow`), so building the
//! crate needs no database. Unique constraints, not process memory, keep
//! concurrent controller replicas consistent.

pub mod embedded;
mod k8s_records;
mod keys;
pub mod operator;
pub mod placement;
mod records;
pub mod replicas;
mod rotate;

pub use keys::{HeadKey, KeyError};
pub use records::{
    retention_of, GroupSnapshotRecord, NewSnapshot, NewVolume, NodeSync, NodeSyncRow,
    SnapshotRecord, VolumeRecord, PARAM_HISTORY_RETENTION,
};
pub use rotate::RewrapReport;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

/// Migrations embedded in the binary, run at start.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Postgres cannot be reached (down, refusing, pool exhausted or timed out).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("bad database URL: {0}")]
    BadUrl(String),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Query(String),
    /// This node's identity was removed from the cluster (`node remove`).
    #[error(
        "node {0} was removed from the cluster (jax-csi node remove); it may not register again"
    )]
    Removed(String),
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => DbError::Unavailable(e.to_string()),
            sqlx::Error::Database(ref d)
                if d.code()
                    .is_some_and(|c| c.starts_with("57") || c.starts_with("08")) =>
            {
                DbError::Unavailable(e.to_string())
            }
            other => DbError::Query(other.to_string()),
        }
    }
}

pub type DbResult<T> = Result<T, DbError>;

/// A pool of connections to the control-plane database.
#[derive(Clone, Debug)]
pub struct Db {
    pool: PgPool,
}

impl Db {
    /// Connect lazily: the pool opens connections on first use, so a
    /// controller can start (and report `ready: false`) while Postgres is down.
    pub fn connect_lazy(url: &str, acquire_timeout: Duration) -> DbResult<Self> {
        let opts: PgConnectOptions = url
            .parse()
            .map_err(|e: sqlx::Error| DbError::BadUrl(e.to_string()))?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(acquire_timeout)
            .connect_lazy_with(opts);
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Run the embedded migrations (idempotent; safe with several replicas).
    pub async fn migrate(&self) -> DbResult<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// One round trip: is Postgres answering?
    pub async fn ping(&self) -> DbResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
