//! The node agent: everything a node does with its replicas, whether a pod
//! mounts them here or not. It owns the node's state dir, its mounts (the
//! FUSE MountManager), its sync endpoint and the tasks that keep Postgres,
//! the peers and Kubernetes informed; the CSI Node and Admin services only
//! translate gRPC into calls on it.
//!
//! "A head changed" runs through here: a local commit is announced to the
//! peers (`peers.rs`) and reported to Postgres (`records.rs`); a head a
//! peer sent is applied to the replica by `replicas.rs`, through the live
//! mount when one runs.

mod error;
pub mod gc;
pub mod k8s;
mod locks;
mod mutable;
mod peer_cache;
pub mod peers;
pub mod records;
pub mod replicas;
pub mod replication;
mod revocation;
mod stage;

pub use error::NodeError;
pub use locks::{VolumeGuard, VolumeLocks};
pub use replicas::Replicas;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::bucket::StateDir;
use crate::crypto::Kek;
use crate::db::Db;
use crate::fuse::MountManager;
use crate::sync::SyncEngine;

/// How long an fsync of a volume with `syncReplicas` waits for its
/// replicas before it fails with EIO.
pub const SYNC_REPLICA_TIMEOUT: Duration = Duration::from_secs(10);

/// What a node agent needs.
pub struct NodeConfig {
    pub node_id: String,
    /// The node's blob store, buckets and mount records.
    pub state_dir: PathBuf,
    pub database_url: String,
    pub kek: Kek,
    /// Reported by NodeGetInfo and to Postgres (0 = no limit).
    pub max_volumes: i64,
    pub db_timeout: Duration,
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
    /// See `SyncConfig::rebuild_bytes_per_sec`.
    pub rebuild_bytes_per_sec: Option<u64>,
    /// The fd-keeper's socket: mounts survive this process (upgrades,
    /// crashes) while it runs. None: mounts end with the process.
    pub handover_socket: Option<PathBuf>,
    /// Kubernetes: node labels, Events, orphaned targets (with an API server only).
    pub k8s: Option<k8s::NodeK8s>,
    /// Kubelet's root: mount points below it are opened without following
    /// a symbolic link (see `fuse::safe_path`). None: mounted by path.
    pub kubelet_dir: Option<PathBuf>,
}

/// How a node agent ends.
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
pub async fn stop_signal() -> NodeStop {
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

/// A node's replicas, mounts, sync and background duties.
#[derive(Clone)]
pub struct NodeAgent {
    node_id: String,
    max_volumes: i64,
    state: Arc<StateDir>,
    kek: Arc<Kek>,
    db: Db,
    manager: MountManager,
    sync: SyncEngine,
    replicas: Replicas,
    locks: VolumeLocks,
    handover: bool,
    tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl NodeAgent {
    /// Open the state dir, bind the sync endpoint, start the background
    /// tasks and bring back the mounts this node had: those an fd-keeper
    /// kept alive first, then the others from the node-local records
    /// (Postgres or not). Must run inside a tokio runtime.
    pub async fn start(cfg: NodeConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&cfg.state_dir)
            .with_context(|| format!("creating {}", cfg.state_dir.display()))?;
        let state = Arc::new(
            StateDir::open(&cfg.state_dir)
                .with_context(|| format!("opening the state dir {}", cfg.state_dir.display()))?,
        );
        let db = Db::connect_lazy(&cfg.database_url, cfg.db_timeout)?;
        let kek = Arc::new(cfg.kek);
        let rewrapped = state
            .bind_local_keys(&kek)
            .context("binding this node's bucket keys to their buckets")?;
        if rewrapped > 0 {
            tracing::info!(
                keys = rewrapped,
                "re-wrapped bucket keys of an earlier build, bound to their buckets"
            );
        }
        let (mirror_tx, mirror_rx) = tokio::sync::mpsc::unbounded_channel();
        let manager = MountManager::new(
            state.clone(),
            kek.clone(),
            cfg.state_dir.join(crate::fuse::mount_manager::RECORDS_FILE),
            Some(mirror_tx),
        )?
        .with_kubelet_dir(cfg.kubelet_dir.clone());
        let sync = SyncEngine::start(
            &crate::sync::SyncConfig {
                listen: cfg.sync_listen,
                anti_entropy: cfg.anti_entropy,
                rebuild_bytes_per_sec: cfg.rebuild_bytes_per_sec,
                rebuild_yields: true,
            },
            state.identity(),
            state.clone(),
            kek.clone(),
        )
        .await?;
        let replicas = Replicas::new(manager.clone());
        sync.set_replicas(Arc::new(replicas.clone()));
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
        {
            // `syncReplicas`: a FUSE worker (not a runtime thread) waits.
            use crate::fuse::live::Durable;
            let s = sync.clone();
            let rt = tokio::runtime::Handle::current();
            manager.set_replica_waiter(Arc::new(move |volume, what, k| {
                let (k, volume) = (k as usize, *volume);
                let waited = match what {
                    Durable::Version(version) => {
                        rt.block_on(s.wait_held(volume, *version, k, SYNC_REPLICA_TIMEOUT))
                    }
                    Durable::Journal { journal, upto } => rt.block_on(s.wait_journal_held(
                        volume,
                        journal.clone(),
                        upto,
                        k,
                        SYNC_REPLICA_TIMEOUT,
                    )),
                };
                waited.map(drop).map_err(|e| e.to_string())
            }));
        }
        let registration = crate::db::NodeSync {
            endpoint_id: state.identity().node_id().to_hex(),
            addresses: peers::sync_addresses(&sync.local_addrs(), cfg.advertise_ip),
        };
        tracing::info!(addresses = ?registration.addresses, "sync endpoint registered as");
        let agent = Self {
            node_id: cfg.node_id.clone(),
            max_volumes: cfg.max_volumes,
            state: state.clone(),
            kek: kek.clone(),
            db: db.clone(),
            manager: manager.clone(),
            sync: sync.clone(),
            replicas: replicas.clone(),
            locks: VolumeLocks::default(),
            handover: cfg.handover_socket.is_some(),
            tasks: Default::default(),
        };
        agent.spawn(records::mirror_mounts(
            db.clone(),
            cfg.node_id.clone(),
            mirror_rx,
        ));
        agent.spawn(records::report_heads(
            db.clone(),
            cfg.node_id.clone(),
            manager.subscribe_sync_events(),
        ));
        agent.spawn(records::register_node(
            db.clone(),
            cfg.node_id.clone(),
            cfg.max_volumes,
            cfg.state_dir.clone(),
            Some(registration),
        ));
        agent.spawn(peers::refresh_peers(
            db.clone(),
            cfg.node_id.clone(),
            sync.clone(),
            state.clone(),
            kek.clone(),
            Duration::from_secs(2),
        ));
        agent.spawn(revocation::follow_removals(
            db.clone(),
            sync.clone(),
            state.clone(),
            replicas.clone(),
            Duration::from_secs(2),
        ));
        let replication = replication::Replication::new(
            db.clone(),
            cfg.node_id.clone(),
            sync.clone(),
            state.clone(),
            kek.clone(),
        );
        agent.spawn(
            replication
                .clone()
                .run(Duration::from_secs(2), sync.blind_announcements()),
        );
        agent.spawn(mutable::follow(
            db.clone(),
            manager.clone(),
            Duration::from_secs(2),
        ));
        agent.spawn(peers::announce_commits(
            sync.clone(),
            manager.subscribe_sync_events(),
        ));
        agent.spawn(gc::run(
            db.clone(),
            cfg.node_id.clone(),
            manager.clone(),
            kek.clone(),
            cfg.gc_interval,
            cfg.gc_grace,
        ));
        if let Some(k) = &cfg.k8s {
            agent.start_k8s(k);
        }
        agent.restore_mounts(cfg.handover_socket).await?;
        // After the mounts are back: what they hold is in the records.
        agent.spawn(replication.forget_lost_copies(manager.clone()));
        Ok(agent)
    }

    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.lock().unwrap().push(tokio::spawn(task));
    }

    fn start_k8s(&self, k: &k8s::NodeK8s) {
        let recorder = Arc::new(crate::k8s::events::Recorder::new(
            k.client.clone(),
            "jax-csi-node",
            &self.node_id,
        ));
        self.spawn(k8s::label_node(
            k.client.clone(),
            self.db.clone(),
            self.node_id.clone(),
        ));
        self.spawn(k8s::post_events(
            recorder,
            self.db.clone(),
            self.manager.clone(),
            self.manager.subscribe_notices(),
        ));
        self.spawn(k8s::sweep_targets(
            k.client.clone(),
            self.manager.clone(),
            self.locks.clone(),
            k.orphan_grace,
            k.orphan_every,
        ));
    }

    /// Mounts kept alive by the fd-keeper are served again first; the
    /// others come back from the node-local records, Postgres or not.
    async fn restore_mounts(&self, handover_socket: Option<PathBuf>) -> anyhow::Result<()> {
        if let Some(socket) = &handover_socket {
            self.manager
                .set_keeper(crate::fuse::keeper::KeeperClient::new(socket));
            let m = self.manager.clone();
            let resumed = tokio::task::spawn_blocking(move || m.resume_kept()).await?;
            if !resumed.resumed.is_empty() || !resumed.failed.is_empty() {
                tracing::info!(
                    resumed = resumed.resumed.len(),
                    failed = resumed.failed.len(),
                    "mounts taken over from the fd-keeper"
                );
            }
        }
        let m = self.manager.clone();
        let failed = tokio::task::spawn_blocking(move || m.start_auto()).await?;
        for (volume, e) in failed {
            tracing::error!(%volume, error = %e, "could not restore a mount at start");
        }
        Ok(())
    }

    /// Stop: hand the mounts over to a successor or unmount them cleanly
    /// (after final commits), end the background tasks, close the sync
    /// endpoint and the database pool.
    pub async fn stop(self, how: NodeStop) -> anyhow::Result<()> {
        let manager = self.manager.clone();
        if how == NodeStop::HandOver && self.handover {
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
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
        self.sync.shutdown().await;
        self.db.pool().close().await;
        Ok(())
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn max_volumes(&self) -> i64 {
        self.max_volumes
    }

    pub fn state(&self) -> &Arc<StateDir> {
        &self.state
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn mounts(&self) -> &MountManager {
        &self.manager
    }

    pub fn replicas(&self) -> &Replicas {
        &self.replicas
    }

    pub fn sync(&self) -> &SyncEngine {
        &self.sync
    }

    /// One operation per volume at a time (CSI requests, the orphan sweep).
    pub fn locks(&self) -> &VolumeLocks {
        &self.locks
    }
}
