//! Running the controller: database start-up, leader election, the gRPC
//! server on a unix socket, and a clean stop.

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
}

/// How the controller leader looks for orphaned volumes.
#[derive(Clone)]
pub struct OrphanSweep {
    pub client: kube::Client,
    /// How long a volume may go without a PersistentVolume before it is deleted.
    pub grace: Duration,
    /// How often to look.
    pub every: Duration,
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
    let service = Arc::new(ControllerService::new(db.clone(), Arc::new(cfg.kek)));
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
async fn background(db: Db, migrated: Arc<AtomicBool>, me: String, orphans: Option<OrphanSweep>) {
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
                let mut last_sweep: Option<tokio::time::Instant> = None;
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
                    if let Some(o) = &orphans {
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

/// What `jax-csi node` needs.
pub struct NodeConfig {
    pub socket: PathBuf,
    pub node_id: String,
    /// The node's blob store, buckets and mount records.
    pub state_dir: PathBuf,
    pub database_url: String,
    pub kek: Kek,
    /// Reported by NodeGetInfo (0 = no limit).
    pub max_volumes: i64,
    pub db_timeout: Duration,
    /// Staging and target paths must lie under it, when set.
    pub kubelet_dir: Option<PathBuf>,
    /// How often garbage collection and retention run.
    pub gc_interval: Duration,
    /// Blobs younger than this are never collected.
    pub gc_grace: Duration,
    /// The sync endpoint's UDP address.
    pub sync_listen: std::net::SocketAddr,
    /// The IP peers dial (the pod's or host's); default: the listen IP,
    /// or 127.0.0.1 when that is unspecified.
    pub advertise_ip: Option<std::net::IpAddr>,
    /// How often heads are compared with every peer.
    pub anti_entropy: Duration,
    /// The fd-keeper's socket: mounts survive this process (upgrades,
    /// crashes) while it runs. None: mounts end with the process.
    pub handover_socket: Option<PathBuf>,
    /// Kubernetes: node labels, Events, orphaned targets (with an API server only).
    pub k8s: Option<super::node_k8s::NodeK8s>,
}

/// The `ip:port` addresses to register for a sync endpoint bound to `bound`.
pub fn sync_addresses(
    bound: &[std::net::SocketAddr],
    advertise: Option<std::net::IpAddr>,
) -> Vec<String> {
    let mut out: Vec<String> = bound
        .iter()
        .filter(|a| a.is_ipv4())
        .map(|a| {
            let ip = match advertise {
                Some(ip) => ip,
                None if a.ip().is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
                None => a.ip(),
            };
            std::net::SocketAddr::new(ip, a.port()).to_string()
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// How a node plugin ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeStop {
    /// Final commits and clean unmounts (SIGINT, or no fd-keeper).
    Unmount,
    /// Leave every mount in place for a successor (SIGTERM with an
    /// fd-keeper: what Kubernetes sends when it replaces the pod).
    HandOver,
}

/// SIGTERM hands the mounts over (when an fd-keeper is configured); SIGINT
/// always unmounts.
pub async fn node_stop_signal() -> NodeStop {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {
            tracing::info!("SIGTERM: stopping; mounts are handed over if an fd-keeper holds them");
            NodeStop::HandOver
        }
        _ = int.recv() => {
            tracing::info!("SIGINT: stopping and unmounting");
            NodeStop::Unmount
        }
    }
}

/// Serve Identity + Node until `shutdown` resolves, then unmount cleanly or
/// hand the mounts over, as it says.
pub async fn run_node(
    cfg: NodeConfig,
    shutdown: impl Future<Output = NodeStop> + Send,
) -> anyhow::Result<()> {
    use crate::bucket::StateDir;
    use crate::fuse::MountManager;
    use anyhow::Context;

    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating {}", cfg.state_dir.display()))?;
    let state = Arc::new(
        StateDir::open(&cfg.state_dir)
            .with_context(|| format!("opening the state dir {}", cfg.state_dir.display()))?,
    );
    let db = Db::connect_lazy(&cfg.database_url, cfg.db_timeout)?;
    let kek = Arc::new(cfg.kek);
    let (mirror_tx, mirror_rx) = tokio::sync::mpsc::unbounded_channel();
    let manager = MountManager::new(
        state.clone(),
        kek.clone(),
        cfg.state_dir.join("mounts.json"),
        Some(mirror_tx),
    )?;
    let sync = crate::sync::SyncEngine::start(
        &crate::sync::SyncConfig {
            listen: cfg.sync_listen,
            anti_entropy: cfg.anti_entropy,
        },
        state.identity(),
        state.clone(),
        kek.clone(),
    )
    .await?;
    sync.set_replicas(Arc::new(super::node_peers::MountReplicas(manager.clone())));
    {
        let db = db.clone();
        sync.set_registry_check(Arc::new(move |node| {
            let db = db.clone();
            Box::pin(async move {
                db.registered_endpoints()
                    .await
                    .is_ok_and(|all| all.contains(&node.to_hex()))
            })
        }));
    }
    {
        let s = sync.clone();
        manager.set_remote_provider(Arc::new(move |b| s.remote_for(*b)));
    }
    let registration = crate::db::NodeSync {
        endpoint_id: state.identity().node_id().to_hex(),
        addresses: sync_addresses(&sync.local_addrs(), cfg.advertise_ip),
    };
    tracing::info!(addresses = ?registration.addresses, "sync endpoint registered as");
    let mut tasks = vec![
        tokio::spawn(super::node_sync::mirror_mounts(
            db.clone(),
            cfg.node_id.clone(),
            mirror_rx,
        )),
        tokio::spawn(super::node_sync::report_heads(
            db.clone(),
            cfg.node_id.clone(),
            manager.subscribe_sync_events(),
        )),
        tokio::spawn(super::node_sync::register_node(
            db.clone(),
            cfg.node_id.clone(),
            cfg.max_volumes,
            cfg.state_dir.clone(),
            Some(registration),
        )),
        tokio::spawn(super::node_peers::refresh_peers(
            db.clone(),
            cfg.node_id.clone(),
            sync.clone(),
            manager.clone(),
            Duration::from_secs(2),
        )),
        tokio::spawn(super::node_peers::announce_commits(
            sync.clone(),
            manager.subscribe_sync_events(),
        )),
        tokio::spawn(super::node_gc::run(
            db.clone(),
            cfg.node_id.clone(),
            manager.clone(),
            kek.clone(),
            cfg.gc_interval,
            cfg.gc_grace,
        )),
    ];
    // Mounts kept alive by the fd-keeper are served again first; the
    // others come back from the node-local records, Postgres or not.
    if let Some(socket) = &cfg.handover_socket {
        manager.set_keeper(crate::fuse::keeper::KeeperClient::new(socket));
        let m = manager.clone();
        let resumed = tokio::task::spawn_blocking(move || m.resume_kept()).await?;
        if !resumed.resumed.is_empty() || !resumed.failed.is_empty() {
            tracing::info!(
                resumed = resumed.resumed.len(),
                failed = resumed.failed.len(),
                "mounts taken over from the fd-keeper"
            );
        }
    }
    let failed = {
        let m = manager.clone();
        tokio::task::spawn_blocking(move || m.start_auto()).await?
    };
    for (volume, e) in failed {
        tracing::error!(volume, error = %e, "could not restore a mount at start");
    }

    let listener = super::server::bind_unix(&cfg.socket).await?;
    let ready: ReadyCheck = Arc::new(|| Box::pin(async { true }));
    let admin = Arc::new(super::admin::AdminService::new(manager.clone()));
    let node = super::node::NodeService::new(
        cfg.node_id.clone(),
        cfg.max_volumes,
        manager.clone(),
        db.clone(),
        kek,
        cfg.kubelet_dir.clone(),
        sync.clone(),
    );
    if let Some(k) = &cfg.k8s {
        let recorder = Arc::new(crate::k8s::events::Recorder::new(
            k.client.clone(),
            "jax-csi-node",
            &cfg.node_id,
        ));
        tasks.push(tokio::spawn(super::node_k8s::label_node(
            k.client.clone(),
            db.clone(),
            cfg.node_id.clone(),
        )));
        tasks.push(tokio::spawn(super::node_k8s::post_events(
            recorder,
            db.clone(),
            manager.clone(),
            manager.subscribe_notices(),
        )));
        tasks.push(tokio::spawn(super::node_k8s::sweep_targets(
            k.client.clone(),
            manager.clone(),
            node.locks(),
            k.orphan_grace,
            k.orphan_every,
        )));
    }
    tracing::info!(socket = %cfg.socket.display(), node = %cfg.node_id, "node serving");
    let stop = Arc::new(std::sync::Mutex::new(NodeStop::Unmount));
    let shutdown = {
        let stop = stop.clone();
        async move {
            let how = shutdown.await;
            *stop.lock().unwrap() = how;
        }
    };
    let served = Server::builder()
        .add_service(IdentityServer::new(IdentityService::new(false, ready)))
        .add_service(super::proto::node_server::NodeServer::new(node))
        .add_service(super::admin_proto::admin_server::AdminServer::new(admin))
        .serve_with_incoming_shutdown(super::server::incoming(listener), shutdown)
        .await;
    let _ = std::fs::remove_file(&cfg.socket);
    let how = *stop.lock().unwrap();
    if how == NodeStop::HandOver && cfg.handover_socket.is_some() {
        // Final commits; the mounts stay for the successor to resume.
        let handed = tokio::task::spawn_blocking(move || manager.hand_over_all()).await?;
        tracing::info!(
            volumes = handed.len(),
            "mounts handed over to the next node plugin"
        );
    } else {
        // Final commits and clean unmounts; auto-mount records bring them back.
        tokio::task::spawn_blocking(move || manager.stop_all()).await?;
    }
    for t in tasks.drain(..) {
        t.abort();
    }
    sync.shutdown().await;
    db.pool().close().await;
    served?;
    tracing::info!("node stopped");
    Ok(())
}
