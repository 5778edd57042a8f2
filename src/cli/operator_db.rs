//! What operator commands share: the database connection (with clear
//! errors when it does not answer) and the node endpoint for contents.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use jax_csi::db::{Db, DbError};

use super::output::{redact_url, Output};

/// The control-plane database and the output format.
#[derive(Args, Debug, Clone)]
pub struct DbArgs {
    /// Postgres URL of the control plane (the one the controller uses).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    /// `table` for people, `json` for scripts.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

impl DbArgs {
    /// Connect and check the schema is there, or say what is wrong.
    pub async fn connect(&self) -> anyhow::Result<Db> {
        let shown = redact_url(&self.database_url);
        let db = Db::connect_lazy(&self.database_url, Duration::from_secs(5))
            .with_context(|| format!("bad database URL {shown}"))?;
        db.ping().await.map_err(|e| match e {
            DbError::Unavailable(m) => {
                anyhow::anyhow!("the database at {shown} does not answer: {m}")
            }
            other => anyhow::anyhow!("the database at {shown}: {other}"),
        })?;
        let migrated: Option<(i64,)> =
            sqlx::query_as("SELECT 1::BIGINT FROM pg_tables WHERE tablename = 'volumes'")
                .fetch_optional(db.pool())
                .await
                .context("reading the schema")?;
        if migrated.is_none() {
            anyhow::bail!(
                "the database at {shown} has no jax-csi tables (no controller has run against it)"
            );
        }
        Ok(db)
    }
}

/// A running node plugin to ask about a volume's contents.
#[derive(Args, Debug, Clone)]
pub struct NodeArgs {
    /// The node plugin's socket (`unix:///…/csi.sock`; in `local up`, a
    /// node's `endpoint` from the ready line).
    #[arg(long, env = "JAX_NODE_ENDPOINT")]
    pub node_endpoint: String,
}

impl NodeArgs {
    pub async fn admin(
        &self,
    ) -> anyhow::Result<
        jax_csi::csi::admin_proto::admin_client::AdminClient<tonic::transport::Channel>,
    > {
        let socket = jax_csi::csi::server::parse_endpoint(&self.node_endpoint)?;
        let channel = jax_csi::csi::server::connect_unix(&socket)
            .await
            .with_context(|| format!("no node plugin answers at {}", self.node_endpoint))?;
        Ok(jax_csi::csi::admin_proto::admin_client::AdminClient::new(
            channel,
        ))
    }
}

/// A gRPC error from the node as a plain message.
pub fn node_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(
        "{} ({})",
        status.message(),
        jax_csi::metrics::code_name(status.code())
    )
}
