//! Running the controller: database start-up, leader election, the gRPC
//! server on a unix socket, and a clean stop. (The node plugin's daemon is
//! the node agent, `crate::node`, served by `jax-csi node`.)

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::Server;

use super::controller::ControllerService;
use super::group_controller::GroupControllerService;
use super::identity::{IdentityService, ReadyCheck};
use super::proto::controller_server::ControllerServer;
use super::proto::group_controller_server::GroupControllerServer;
use super::proto::identity_server::IdentityServer;
use crate::crypto::Kek;
use crate::db::Db;
use tonic::service::interceptor::InterceptedService;

/// What `jax-csi controller` needs.
pub struct ControllerConfig {
    pub socket: PathBuf,
    pub database_url: String,
    pub kek: Kek,
    /// This replica's name in logs (defaults to the host name).
    pub node_id: String,
    /// How long a request may wait for a database connection.
    pub db_timeout: Duration,
    /// The leader's sweep of volumes no PersistentVolume names (with a
    /// Kubernetes API server only).
    pub orphans: Option<OrphanSweep>,
    /// A replica whose node sent no heartbeat for this long is replaced.
    pub replica_timeout: Duration,
}

/// How the controller leader looks for orphaned volumes.
#[derive(Clone)]
pub struct OrphanSweep {
    pub client: kube::Client,
    /// How long a volume may go without a PersistentVolume before it is deleted.
    pub grace: Duration,
    /// How often to look.
    pub every: Duration,
    /// How long a registered node may go without a Kubernetes Node before
    /// it is removed (`k8s::nodes`).
    pub node_gone_grace: Duration,
}

/// Serve Identity + Controller until `shutdown` resolves.
pub async fn run_controller(
    cfg: ControllerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let db = Db::connect_lazy(&cfg.database_url, cfg.db_timeout)?;
    let migrated = Arc::new(AtomicBool::new(false));
    let background = tokio::spawn(background(
        db.clone(),
        migrated.clone(),
        cfg.node_id.clone(),
        cfg.orphans.clone(),
        cfg.replica_timeout,
    ));

    let ready: ReadyCheck = {
        let (db, migrated) = (db.clone(), migrated.clone());
        Arc::new(move || {
            let (db, migrated) = (db.clone(), migrated.clone());
            Box::pin(async move { migrated.load(Ordering::SeqCst) && db.ping().await.is_ok() })
        })
    };
    let gate = migrated.clone();
    let schema_ready = move |req: tonic::Request<()>| {
        if gate.load(Ordering::SeqCst) {
            Ok(req)
        } else {
            Err(tonic::Status::unavailable(
                "controller is starting: database schema not ready",
            ))
        }
    };
    let service = Arc::new(
        ControllerService::new(db.clone(), Arc::new(cfg.kek))
            .with_replica_timeout(cfg.replica_timeout),
    );
    let controller = InterceptedService::new(
        ControllerServer::from_arc(service.clone()),
        schema_ready.clone(),
    );
    let group = InterceptedService::new(
        GroupControllerServer::new(GroupControllerService::new(service)),
        schema_ready,
    );
    let listener = super::server::bind_unix(&cfg.socket).await?;
    tracing::info!(socket = %cfg.socket.display(), node = %cfg.node_id, "controller serving");
    let served = Server::builder()
        .add_service(IdentityServer::new(IdentityService::new(true, ready)))
        .add_service(controller)
        .add_service(group)
        .serve_with_incoming_shutdown(super::server::incoming(listener), shutdown)
        .await;
    background.abort();
    let _ = std::fs::remove_file(&cfg.socket);
    db.pool().close().await;
    served?;
    tracing::info!("controller stopped");
    Ok(())
}

/// Run migrations (retrying while Postgres is down), then take part in the
/// leader election: one replica holds a Postgres advisory lock and does the
/// background work; the others keep serving requests.
async fn background(
    db: Db,
    migrated: Arc<AtomicBool>,
    me: String,
    orphans: Option<OrphanSweep>,
    replica_timeout: Duration,
) {
    let tick = orphans.as_ref().map_or(Duration::from_secs(5), |o| {
        o.every.min(Duration::from_secs(5))
    });
    let mut delay = Duration::from_millis(200);
    loop {
        match db.migrate().await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, "database not ready; retrying migrations");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    migrated.store(true, Ordering::SeqCst);
    tracing::info!("database schema ready");
    loop {
        match db.try_lead().await {
            Ok(Some(mut conn)) => {
                tracing::info!(replica = %me, "became the controller leader");
                // Events on claims whose volumes are under-replicated
                // (with a Kubernetes API only).
                let mut events = orphans
                    .as_ref()
                    .map(|o| crate::k8s::replicas::ReplicaEvents::new(o.client.clone(), &me));
                let mut last_sweep: Option<tokio::time::Instant> = None;
                let mut node_sweep = crate::k8s::nodes::NodeSweep::default();
                loop {
                    tokio::time::sleep(tick).await;
                    if sqlx::query("SELECT 1").execute(&mut *conn).await.is_err() {
                        tracing::warn!(replica = %me, "lost the leader lock's connection");
                        break;
                    }
                    // Deleted volumes every node has collected are done.
                    match db.close_collected_gc().await {
                        Ok(n) if n > 0 => {
                            tracing::info!(volumes = n, "deleted volumes collected on every node")
                        }
                        Ok(_) => {}
                        Err(e) => tracing::debug!(error = %e, "gc bookkeeping"),
                    }
                    // Every volume on as many nodes as it asks for.
                    match crate::db::placement::place(&db, replica_timeout.as_secs() as i64).await {
                        Ok(moves) if !moves.is_empty() => {
                            tracing::info!(moves = moves.len(), "replica placement")
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "replica placement skipped"),
                    }
                    let secs = replica_timeout.as_secs() as i64;
                    if let Ok(health) = db.replica_health(None, secs).await {
                        let under = health.values().filter(|h| h.condition().0).count();
                        crate::metrics::under_replicated(under);
                        if let Some(events) = events.as_mut() {
                            events.observe(&db, &health).await;
                        }
                    }
                    if let Some(o) = &orphans {
                        // Every tick, so the grace is what it says.
                        match node_sweep.pass(&o.client, &db, o.node_gone_grace).await {
                            Ok(removed) if !removed.is_empty() => {
                                tracing::info!(?removed, "nodes whose Kubernetes Node is gone")
                            }
                            Ok(_) => {}
                            Err(e) => tracing::warn!(error = %e, "deleted-Node sweep skipped"),
                        }
                        if last_sweep.is_none_or(|t| t.elapsed() >= o.every) {
                            last_sweep = Some(tokio::time::Instant::now());
                            match crate::k8s::orphans::sweep_volumes(&o.client, &db, o.grace).await
                            {
                                Ok(s) if !s.deleted.is_empty() || !s.marked.is_empty() => {
                                    crate::metrics::orphans_found(s.marked.len(), s.deleted.len());
                                    tracing::info!(
                                        marked = s.marked.len(),
                                        cleared = s.cleared,
                                        deleted = s.deleted.len(),
                                        "orphan sweep"
                                    );
                                }
                                Ok(_) => {}
                                Err(e) => tracing::warn!(error = %e, "orphan sweep skipped"),
                            }
                        }
                    }
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "leader election"),
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}
