//! The MountManager: one live bucket Mount per volume on this node, its FUSE
//! session at the staging path, the bind mounts into pods, and the mount
//! records. Records live in a node-local file (so mounts come back while
//! Postgres is down) and are mirrored to Postgres's `mounts` table.
//!
//! Modelled on jax-daemon's MountManager; stricter where it was weak: a
//! mount is `running` only once the kernel answers a `stat` of its root, a
//! stale mount point is lazily unmounted before mounting again, and errors
//! are a typed enum.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};

use super::keeper::KeeperClient;
use super::live::{CommitHook, LiveMount, DEFAULT_DEBOUNCE};
use super::safe_path::{open_below, OpenDir, SafePathError};
use super::session::{self, FuseSession, SessionOptions};
use super::FsOptions;
use crate::bucket::{BucketError, BucketId, Saved, StateDir};
use crate::crypto::Kek;
use crate::store::Hash;

/// Where a mount stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", content = "message", rename_all = "lowercase")]
pub enum MountStatus {
    Stopped,
    Starting,
    Running,
    Error(String),
}

impl MountStatus {
    /// The `mounts.status` column value.
    pub fn as_db(&self) -> &'static str {
        match self {
            MountStatus::Stopped => "stopped",
            MountStatus::Starting => "starting",
            MountStatus::Running => "running",
            MountStatus::Error(_) => "error",
        }
    }
}

/// Options of one mount.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountOptions {
    pub read_only: bool,
    /// Start again when the node starts.
    pub auto_mount: bool,
    /// Decrypted chunks kept in memory.
    pub cache_chunks: usize,
    /// Kernel attribute / entry cache lifetime.
    pub cache_ttl_ms: u64,
    /// Group that owns the volume's root (`fsGroup` / `volume_mount_group`).
    pub group: Option<u32>,
    /// Other replicas an fsync waits for (`syncReplicas`); 0: none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sync_replicas: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            read_only: false,
            auto_mount: true,
            cache_chunks: 32,
            cache_ttl_ms: 1000,
            group: None,
            sync_replicas: 0,
        }
    }
}

/// A bind mount of the volume into a pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub path: PathBuf,
    pub read_only: bool,
    /// The pod it was published for (kubelet passes it: `podInfoOnMount`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
}

/// A pod, as NodePublishVolume's volume context names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub uid: String,
}

/// A mount record, as kept on disk and in Postgres.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRecord {
    /// Kept in the records file as 32 hex characters.
    #[serde(with = "hex_id")]
    pub volume_id: BucketId,
    pub mount_point: PathBuf,
    pub options: MountOptions,
    pub status: MountStatus,
    #[serde(default)]
    pub targets: Vec<Target>,
}

/// Changes for [`MountManager::update`]; `None` keeps a field.
#[derive(Clone, Debug, Default)]
pub struct MountUpdate {
    pub read_only: Option<bool>,
    pub auto_mount: Option<bool>,
    pub cache_chunks: Option<usize>,
    pub cache_ttl_ms: Option<u64>,
}

/// What users should hear of (the node turns these into Kubernetes Events
/// on the claim and its pods).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// Concurrent edits from another node were kept as conflict copies.
    ConflictsResolved { volume_id: BucketId, copies: usize },
    /// A volume's mount came back after the node plugin restarted.
    MountRecovered { volume_id: BucketId },
    /// A write failed: the volume is full.
    QuotaReached { volume_id: BucketId },
    /// A pod's target was unmounted because its pod no longer exists.
    TargetRemoved {
        volume_id: BucketId,
        path: PathBuf,
        pod: Option<PodRef>,
    },
}

/// What subscribers of [`MountManager::subscribe_sync_events`] hear.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncEvent {
    /// A remote head was merged into the live mount; caches were dropped.
    MountInvalidated {
        volume: BucketId,
        head: Hash,
        height: u64,
        used_bytes: u64,
    },
    /// A new local version was committed.
    Committed {
        volume: BucketId,
        head: Hash,
        height: u64,
        used_bytes: u64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("volume {0} has no replica on this node")]
    BucketNotFound(BucketId),
    #[error("no mount for volume {0}")]
    MountNotFound(BucketId),
    #[error("mount point {0} does not exist")]
    MountPointMissing(PathBuf),
    #[error("mount point {0} is not a directory")]
    MountPointNotADirectory(PathBuf),
    #[error("volume {0} is already mounted")]
    AlreadyRunning(BucketId),
    #[error("volume {0} is being mounted or unmounted by another request")]
    Busy(BucketId),
    /// The final commit failed: the volume stays mounted with its changes.
    #[error("volume {volume}: the final commit failed, so it stays mounted with its changes (retry once the cause is fixed): {source}")]
    CommitFailed {
        volume: BucketId,
        #[source]
        source: BucketError,
    },
    #[error("loading bucket {volume}: {source}")]
    LoadFailed {
        volume: BucketId,
        #[source]
        source: BucketError,
    },
    #[error("mounting {path}: {source}")]
    SpawnFailed {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unmounting {path}: {source}")]
    UnmountFailed {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mount records: {0}")]
    Database(String),
    /// A mount point below the kubelet dir goes through a symbolic link,
    /// is not a directory, or is not below it at all.
    #[error(transparent)]
    UnsafePath(#[from] SafePathError),
}

/// A running volume: its live Mount and kernel session.
pub(super) struct Running {
    pub(super) live: LiveMount,
    pub(super) session: FuseSession,
}

pub(super) struct Inner {
    pub(super) records: BTreeMap<BucketId, MountRecord>,
    pub(super) running: BTreeMap<BucketId, Running>,
    /// Volumes a start or stop is working on (outside the lock).
    pub(super) busy: std::collections::BTreeSet<BucketId>,
}

impl Inner {
    /// Reserve a volume that is not running for a start (fresh or resumed):
    /// a second start is refused while the first works outside the lock.
    pub(super) fn reserve_stopped(&mut self, volume: &BucketId) -> Result<(), MountError> {
        if self.running.contains_key(volume) {
            return Err(MountError::AlreadyRunning(*volume));
        }
        if !self.busy.insert(*volume) {
            return Err(MountError::Busy(*volume));
        }
        Ok(())
    }
}

/// Owns every mount of this node.
#[derive(Clone)]
pub struct MountManager {
    state: Arc<StateDir>,
    kek: Arc<Kek>,
    records_path: PathBuf,
    inner: Arc<Mutex<Inner>>,
    events: broadcast::Sender<SyncEvent>,
    notices: broadcast::Sender<Notice>,
    mirror: Option<mpsc::UnboundedSender<MountRecord>>,
    debounce: Duration,
    remote: Arc<Mutex<Option<RemoteProvider>>>,
    replica_waiter: Arc<Mutex<Option<ReplicaWaiter>>>,
    /// Holds a clone of each session's descriptor, so mounts outlive this
    /// process (see `fuse::keeper` and `fuse::handover`).
    pub(super) keeper: Arc<Mutex<Option<KeeperClient>>>,
    /// Kubelet's root: every mount point must lie below it and is opened
    /// without following symbolic links (`safe_path`). None (tests, tools):
    /// mount points are used by path.
    kubelet_dir: Option<PathBuf>,
}

/// Waits until `n` other replicas of a volume hold what an fsync made
/// durable (its journal frames, or a version), or says why not: what an
/// fsync of a volume with `syncReplicas` does before it returns.
pub type ReplicaWaiter =
    Arc<dyn Fn(&BucketId, crate::fuse::live::Durable<'_>, u32) -> Result<(), String> + Send + Sync>;

/// Gives a mount of a bucket the fetcher of chunks this node lacks.
pub type RemoteProvider =
    Arc<dyn Fn(&BucketId) -> Arc<dyn crate::bucket::RemoteBlobs> + Send + Sync>;

/// The node-local mount records' file in a node's state dir.
pub const RECORDS_FILE: &str = "mounts.json";

/// The mount records kept at `path` (a missing file is none).
pub fn read_records(path: &Path) -> Result<Vec<MountRecord>, MountError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| MountError::Database(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(MountError::Database(format!("{}: {e}", path.display()))),
    }
}

impl MountManager {
    /// Load the node-local records from `records_path` (missing = none).
    /// `mirror`, when given, receives every record change for Postgres.
    pub fn new(
        state: Arc<StateDir>,
        kek: Arc<Kek>,
        records_path: PathBuf,
        mirror: Option<mpsc::UnboundedSender<MountRecord>>,
    ) -> Result<Self, MountError> {
        let records = read_records(&records_path)?
            .into_iter()
            .map(|r| (r.volume_id, r))
            .collect();
        Ok(Self {
            state,
            kek,
            records_path,
            inner: Arc::new(Mutex::new(Inner {
                records,
                running: BTreeMap::new(),
                busy: Default::default(),
            })),
            events: broadcast::channel(256).0,
            notices: broadcast::channel(64).0,
            mirror,
            debounce: DEFAULT_DEBOUNCE,
            remote: Arc::new(Mutex::new(None)),
            replica_waiter: Arc::new(Mutex::new(None)),
            keeper: Arc::new(Mutex::new(None)),
            kubelet_dir: None,
        })
    }

    /// Confine every mount point to below `dir` (kubelet's root), opened
    /// component by component without following a symbolic link.
    pub fn with_kubelet_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.kubelet_dir = dir;
        self
    }

    /// Make the directory `path` (and its parents) to mount on: below the
    /// kubelet dir through [`open_below`], refusing any symbolic link.
    pub fn make_mount_point(&self, path: &Path) -> Result<(), MountError> {
        match &self.kubelet_dir {
            Some(root) => open_below(root, path, true).map(drop).map_err(Into::into),
            None => std::fs::create_dir_all(path).map_err(|source| MountError::SpawnFailed {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    pub fn state(&self) -> &Arc<StateDir> {
        &self.state
    }

    pub fn kek(&self) -> &Kek {
        &self.kek
    }

    /// Where mounts fetch chunks this node lacks (the sync engine).
    pub fn set_remote_provider(&self, provider: RemoteProvider) {
        *self.remote.lock().unwrap() = Some(provider);
    }

    /// How a mount with `sync_replicas` waits for its replicas (the sync
    /// engine): called with the volume, the version and how many.
    pub fn set_replica_waiter(&self, waiter: ReplicaWaiter) {
        *self.replica_waiter.lock().unwrap() = Some(waiter);
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Write the records file atomically and mirror `changed` to Postgres.
    fn persist(&self, inner: &Inner, changed: Option<&MountRecord>) -> Result<(), MountError> {
        let all: Vec<&MountRecord> = inner.records.values().collect();
        let bytes = serde_json::to_vec_pretty(&all).expect("records serialize");
        crate::durable::write_atomic(&self.records_path, &bytes, 0o600)
            .map_err(|e| MountError::Database(format!("{}: {e}", self.records_path.display())))?;
        if let (Some(tx), Some(r)) = (&self.mirror, changed) {
            let _ = tx.send(r.clone());
        }
        report_mounts(inner);
        Ok(())
    }

    pub(super) fn set_status(&self, inner: &mut Inner, volume: &BucketId, status: MountStatus) {
        if let Some(r) = inner.records.get_mut(volume) {
            r.status = status;
            let r = r.clone();
            if let Err(e) = self.persist(inner, Some(&r)) {
                tracing::error!(%volume, error = %e, "could not record mount status");
            }
        }
    }

    /// Register a mount of `volume_id` at `mount_point` (stopped).
    pub fn create_mount(
        &self,
        volume: &BucketId,
        mount_point: &Path,
        options: MountOptions,
    ) -> Result<MountRecord, MountError> {
        if !self.state.has_bucket(volume) {
            return Err(MountError::BucketNotFound(*volume));
        }
        open_mount_point(self.kubelet_dir.as_deref(), mount_point, false)?;
        let mut inner = self.lock();
        if inner.running.contains_key(volume) {
            return Err(MountError::AlreadyRunning(*volume));
        }
        if inner.busy.contains(volume) {
            return Err(MountError::Busy(*volume));
        }
        let targets = inner
            .records
            .get(volume)
            .map(|r| r.targets.clone())
            .unwrap_or_default();
        let rec = MountRecord {
            volume_id: *volume,
            mount_point: mount_point.to_path_buf(),
            options,
            status: MountStatus::Stopped,
            targets,
        };
        inner.records.insert(*volume, rec.clone());
        self.persist(&inner, Some(&rec))?;
        Ok(rec)
    }

    pub fn get(&self, volume: &BucketId) -> Result<MountRecord, MountError> {
        self.lock()
            .records
            .get(volume)
            .cloned()
            .ok_or(MountError::MountNotFound(*volume))
    }

    pub fn list(&self) -> Vec<MountRecord> {
        self.lock().records.values().cloned().collect()
    }

    /// Change options. The cache size applies at once to a running mount;
    /// read-only and the TTL apply at the next start.
    pub fn update(&self, volume: &BucketId, u: MountUpdate) -> Result<MountRecord, MountError> {
        let mut inner = self.lock();
        let rec = inner
            .records
            .get_mut(volume)
            .ok_or(MountError::MountNotFound(*volume))?;
        if let Some(v) = u.read_only {
            rec.options.read_only = v;
        }
        if let Some(v) = u.auto_mount {
            rec.options.auto_mount = v;
        }
        if let Some(v) = u.cache_chunks {
            rec.options.cache_chunks = v;
        }
        if let Some(v) = u.cache_ttl_ms {
            rec.options.cache_ttl_ms = v;
        }
        let rec = rec.clone();
        if let (Some(n), Some(r)) = (u.cache_chunks, inner.running.get(volume)) {
            r.live.lock().set_cache_chunks(n);
        }
        self.persist(&inner, Some(&rec))?;
        Ok(rec)
    }

    /// Stop (if running) and forget a mount.
    pub fn delete(&self, volume: &BucketId) -> Result<(), MountError> {
        self.get(volume)?;
        self.stop(volume)?;
        let mut inner = self.lock();
        if let Some(mut rec) = inner.records.remove(volume) {
            rec.status = MountStatus::Stopped;
            self.persist(&inner, Some(&rec))?;
        }
        Ok(())
    }

    /// Mount the volume's live bucket at its mount point. Running only once
    /// the kernel answers on it; a stale mount there is detached first.
    pub fn start(&self, volume: &BucketId) -> Result<MountRecord, MountError> {
        // Checked and reserved in one lock scope: a second start of the same
        // volume is refused while this one mounts outside the lock.
        let rec = {
            let mut inner = self.lock();
            let rec = inner
                .records
                .get(volume)
                .cloned()
                .ok_or(MountError::MountNotFound(*volume))?;
            inner.reserve_stopped(volume)?;
            self.set_status(&mut inner, volume, MountStatus::Starting);
            rec
        };
        let started = self.start_inner(&rec);
        self.lock().busy.remove(volume);
        match started {
            Ok(running) => {
                let mut inner = self.lock();
                inner.running.insert(*volume, running);
                self.set_status(&mut inner, volume, MountStatus::Running);
                tracing::info!(%volume, path = %rec.mount_point.display(), "mount running");
                Ok(inner.records[volume].clone())
            }
            Err(e) => {
                let mut inner = self.lock();
                self.set_status(&mut inner, volume, MountStatus::Error(e.to_string()));
                tracing::error!(%volume, error = %e, "mount failed");
                Err(e)
            }
        }
    }

    fn start_inner(&self, rec: &MountRecord) -> Result<Running, MountError> {
        let path = &rec.mount_point;
        if session::is_stale(path) || session::is_mount_point(path) {
            tracing::warn!(path = %path.display(), "detaching a stale mount before mounting");
            session::lazy_unmount(path).map_err(|source| MountError::UnmountFailed {
                path: path.clone(),
                source,
            })?;
        }
        // Held open until the kernel has mounted on it.
        let dir = open_mount_point(self.kubelet_dir.as_deref(), path, false)?;
        let via = dir
            .as_ref()
            .map_or_else(|| path.clone(), OpenDir::proc_path);
        let live = self.open_live(rec, |_| Ok(()))?;
        let mounted = session::mount_via(live.clone(), path, &via, &session_options(rec));
        drop(dir);
        let session = match mounted {
            Ok(s) => s,
            Err(source) => {
                let _ = live.shutdown();
                return Err(MountError::SpawnFailed {
                    path: path.clone(),
                    source,
                });
            }
        };
        self.keep_connection(&rec.volume_id, &session);
        Ok(Running { live, session })
    }

    /// The live Mount of a record's volume at its head, with the node's
    /// hooks; `prepare` runs on the Mount before it goes live.
    pub(super) fn open_live(
        &self,
        rec: &MountRecord,
        prepare: impl FnOnce(&mut crate::bucket::Mount) -> crate::bucket::Result<()>,
    ) -> Result<LiveMount, MountError> {
        let id = rec.volume_id;
        let load = |source| MountError::LoadFailed {
            volume: rec.volume_id,
            source,
        };
        let bucket = self.state.open_bucket(&id, &self.kek).map_err(load)?;
        let mut mount = if rec.options.read_only {
            bucket.open_version(&bucket.head().map_err(load)?)
        } else {
            bucket.mount_journaled()
        }
        .map_err(load)?;
        mount.set_cache_chunks(rec.options.cache_chunks);
        if let Some(provider) = self.remote.lock().unwrap().as_ref() {
            mount.set_remote(provider(&id));
        }
        if let Some(group) = rec.options.group {
            if !rec.options.read_only {
                apply_group(&mut mount, group).map_err(load)?;
            }
        }
        prepare(&mut mount).map_err(load)?;
        let live = LiveMount::new(mount, self.debounce);
        let events = self.events.clone();
        let volume = rec.volume_id;
        let hook: CommitHook = Box::new(move |saved| {
            let _ = events.send(SyncEvent::Committed {
                volume,
                head: saved.hash,
                height: saved.height,
                used_bytes: saved.used_bytes,
            });
        });
        live.set_commit_hook(hook);
        let notices = self.notices.clone();
        let volume = rec.volume_id;
        live.set_quota_hook(Box::new(move || {
            let _ = notices.send(Notice::QuotaReached { volume_id: volume });
        }));
        live.set_replica_wait(self.replica_wait(&volume, &rec.options).map_err(load)?);
        Ok(live)
    }

    /// What an fsync of `volume` mounted with `options` waits for before
    /// it returns (`syncReplicas`), if anything.
    fn replica_wait(
        &self,
        volume: &BucketId,
        options: &MountOptions,
    ) -> Result<Option<crate::fuse::live::ReplicaWait>, crate::bucket::BucketError> {
        let k = options.sync_replicas;
        if k == 0 || options.read_only {
            return Ok(None);
        }
        let Some(waiter) = self.replica_waiter.lock().unwrap().clone() else {
            return Err(crate::bucket::BucketError::Unavailable(
                "the volume's fsyncs wait for replicas, and this node has no sync engine".into(),
            ));
        };
        let volume = *volume;
        Ok(Some(Arc::new(move |what| waiter(&volume, what, k))))
    }

    /// Change how many other replicas an fsync of `volume` waits for
    /// (`syncReplicas`, changed by ControllerModifyVolume): kept in its
    /// record, and applied at once to its running mount. Whether it changed.
    pub fn set_sync_replicas(&self, volume: &BucketId, k: u32) -> Result<bool, MountError> {
        let mut inner = self.lock();
        let rec = inner
            .records
            .get_mut(volume)
            .ok_or(MountError::MountNotFound(*volume))?;
        if rec.options.sync_replicas == k {
            return Ok(false);
        }
        // The wait first: when it cannot be made, nothing changes and the
        // next pass tries again.
        let mut options = rec.options.clone();
        options.sync_replicas = k;
        let wait =
            self.replica_wait(volume, &options)
                .map_err(|source| MountError::LoadFailed {
                    volume: *volume,
                    source,
                })?;
        rec.options = options;
        let rec = rec.clone();
        if let Some(r) = inner.running.get(volume) {
            r.live.set_replica_wait(wait);
        }
        self.persist(&inner, Some(&rec))?;
        Ok(true)
    }

    /// Unmount after a final commit. Stopping a stopped mount is fine.
    /// Pod bind mounts are detached first (they would keep the FUSE
    /// connection alive) but stay in the record, so a restart re-binds them.
    /// When the final commit fails, nothing is unmounted: the targets are
    /// bound again, the mount keeps running with its changes (the committer
    /// retries) and [`MountError::CommitFailed`] says why.
    pub fn stop(&self, volume: &BucketId) -> Result<(), MountError> {
        let (live, targets, mount_point) = {
            let mut inner = self.lock();
            let Some(rec) = inner.records.get(volume) else {
                return Err(MountError::MountNotFound(*volume));
            };
            let (targets, mount_point) = (rec.targets.clone(), rec.mount_point.clone());
            let Some(live) = inner.running.get(volume).map(|r| r.live.clone()) else {
                return Ok(());
            };
            if !inner.busy.insert(*volume) {
                return Err(MountError::Busy(*volume));
            }
            (live, targets, mount_point)
        };
        let release = |this: &Self| {
            this.lock().busy.remove(volume);
        };
        for t in &targets {
            if session::is_mount_point(&t.path) {
                if let Err(e) = session::lazy_unmount(&t.path) {
                    tracing::warn!(target = %t.path.display(), error = %e, "detaching a pod target failed");
                }
            }
        }
        if let Err(source) = live.shutdown() {
            for t in &targets {
                if let Err(e) = bind_target(self.kubelet_dir.as_deref(), &mount_point, t) {
                    tracing::error!(%volume, target = %t.path.display(), error = %e, "re-binding a pod target after a failed commit");
                }
            }
            release(self);
            tracing::error!(%volume, error = %source, "final commit failed; the volume stays mounted");
            return Err(MountError::CommitFailed {
                volume: *volume,
                source,
            });
        }
        let Some(Running { session, .. }) = self.lock().running.remove(volume) else {
            release(self);
            return Ok(());
        };
        self.release_connection(volume);
        let path = session.path().to_path_buf();
        let unmounted = session.unmount();
        {
            let mut inner = self.lock();
            inner.busy.remove(volume);
            self.set_status(&mut inner, volume, MountStatus::Stopped);
        }
        if let Err(source) = unmounted {
            // The kernel may still hold it (busy); detach so it goes when idle.
            session::lazy_unmount(&path).ok();
            return Err(MountError::UnmountFailed { path, source });
        }
        Ok(())
    }

    pub fn stop_all(&self) {
        let ids: Vec<BucketId> = self.lock().running.keys().copied().collect();
        for id in ids {
            if let Err(e) = self.stop(&id) {
                tracing::error!(volume = %id, error = %e, "stop failed");
            }
        }
    }

    /// Start every auto-mount record (at node start); returns those that failed.
    pub fn start_auto(&self) -> Vec<(BucketId, MountError)> {
        let auto: Vec<MountRecord> = self
            .list()
            .into_iter()
            .filter(|r| r.options.auto_mount)
            .collect();
        let mut failed = Vec::new();
        for rec in auto {
            if self.lock().running.contains_key(&rec.volume_id) {
                continue;
            }
            if let Err(e) = self.start(&rec.volume_id) {
                failed.push((rec.volume_id, e));
                continue;
            }
            let _ = self.notices.send(Notice::MountRecovered {
                volume_id: rec.volume_id,
            });
            for t in &rec.targets {
                if let Err(e) = bind_target(self.kubelet_dir.as_deref(), &rec.mount_point, t) {
                    tracing::error!(volume = %rec.volume_id, target = %t.path.display(), error = %e, "re-binding a pod target failed");
                }
            }
        }
        failed
    }

    pub fn get_live_mount(&self, volume: &BucketId) -> Option<LiveMount> {
        self.lock().running.get(volume).map(|r| r.live.clone())
    }

    /// The cache settings of a mount: (decrypted chunks, kernel TTL).
    pub fn get_mount_cache(&self, volume: &BucketId) -> Result<(usize, Duration), MountError> {
        let r = self.get(volume)?;
        Ok((
            r.options.cache_chunks,
            Duration::from_millis(r.options.cache_ttl_ms),
        ))
    }

    /// What users should hear of: conflicts, recovered mounts, full volumes.
    pub fn subscribe_notices(&self) -> broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }

    /// Tell subscribers of [`Self::subscribe_notices`] something.
    pub fn notify(&self, notice: Notice) {
        let _ = self.notices.send(notice);
    }

    pub fn subscribe_sync_events(&self) -> broadcast::Receiver<SyncEvent> {
        self.events.subscribe()
    }

    /// How `volume` is served here now, for a change of its replica (see
    /// [`Serving`]); `Busy` while a stage or unstage of it is under way.
    pub fn serving(&self, volume: &BucketId) -> Result<Serving, MountError> {
        let inner = self.lock();
        if inner.busy.contains(volume) {
            return Err(MountError::Busy(*volume));
        }
        Ok(match inner.running.get(volume) {
            None => Serving::NotMounted,
            Some(r) => {
                let live = LiveHandle {
                    live: r.live.clone(),
                    notifier: r.session.notifier().clone(),
                };
                if r.live.lock().is_read_only() {
                    Serving::ReadOnly(live)
                } else {
                    Serving::Writable(live)
                }
            }
        })
    }

    /// Tell subscribers a version was written outside a live mount's
    /// committer (peers hear of it, Postgres records it).
    pub fn committed(&self, volume: &BucketId, saved: &Saved) {
        let _ = self.events.send(SyncEvent::Committed {
            volume: *volume,
            head: saved.hash,
            height: saved.height,
            used_bytes: saved.used_bytes,
        });
    }

    /// Tell subscribers the replica moved to a head that came from a peer.
    pub fn applied(&self, volume: &BucketId, saved: &Saved) {
        let _ = self.events.send(SyncEvent::MountInvalidated {
            volume: *volume,
            head: saved.hash,
            height: saved.height,
            used_bytes: saved.used_bytes,
        });
    }

    /// Volume `volume`'s bucket on this node, with chunks it lacks
    /// fetched from peers (for the admin service's reads of old versions).
    pub fn open_bucket(&self, volume: &BucketId) -> Result<crate::bucket::Bucket, MountError> {
        if !self.state.has_bucket(volume) {
            return Err(MountError::BucketNotFound(*volume));
        }
        self.state
            .open_bucket(volume, &self.kek)
            .map_err(|source| MountError::LoadFailed {
                volume: *volume,
                source,
            })
    }

    /// A read-only view of `version` whose missing chunks come from peers.
    pub fn open_version(
        &self,
        volume: &BucketId,
        version: &Hash,
    ) -> Result<crate::bucket::Mount, MountError> {
        let bucket = self.open_bucket(volume)?;
        let mut m = bucket
            .open_version(version)
            .map_err(|source| MountError::LoadFailed {
                volume: *volume,
                source,
            })?;
        if let Some(provider) = self.remote.lock().unwrap().as_ref() {
            m.set_remote(provider(volume));
        }
        Ok(m)
    }

    /// Bind the staged volume into a pod path and remember it for restarts.
    pub fn add_target(&self, volume: &BucketId, target: Target) -> Result<(), MountError> {
        let rec = self.get(volume)?;
        bind_target(self.kubelet_dir.as_deref(), &rec.mount_point, &target)?;
        let mut inner = self.lock();
        if let Some(r) = inner.records.get_mut(volume) {
            r.targets.retain(|t| t.path != target.path);
            r.targets.push(target);
            let r = r.clone();
            self.persist(&inner, Some(&r))?;
        }
        Ok(())
    }

    /// Unmount pod path `target` of `volume_id` (safe when it is gone or
    /// dead) and forget it. Only a path recorded as this volume's target is
    /// touched; returns false (and does nothing) for any other.
    pub fn remove_target(&self, volume: &BucketId, target: &Path) -> Result<bool, MountError> {
        let ours = self
            .lock()
            .records
            .get(volume)
            .is_some_and(|r| r.targets.iter().any(|t| t.path == target));
        if !ours {
            return Ok(false);
        }
        unbind(target).map_err(|source| MountError::UnmountFailed {
            path: target.to_path_buf(),
            source,
        })?;
        let mut inner = self.lock();
        if let Some(r) = inner.records.get_mut(volume) {
            r.targets.retain(|t| t.path != target);
            let r = r.clone();
            self.persist(&inner, Some(&r))?;
        }
        Ok(true)
    }

    /// Which volume's mount has `target` as a pod path, if any.
    pub fn volume_of_target(&self, target: &Path) -> Option<(BucketId, Target)> {
        self.lock().records.values().find_map(|r| {
            r.targets
                .iter()
                .find(|t| t.path == target)
                .map(|t| (r.volume_id, t.clone()))
        })
    }
}

/// How a volume is served on this node, for a change of its replica
/// (a synced head, a restore, a new member).
pub enum Serving {
    /// A writable live mount: the change goes through it.
    Writable(LiveHandle),
    /// A read-only live mount: the change goes to the bucket on disk, and
    /// the mount follows the new head.
    ReadOnly(LiveHandle),
    /// Not mounted here: the change goes to the bucket on disk.
    NotMounted,
}

/// A running volume's live Mount with its session's kernel notifier.
pub struct LiveHandle {
    pub live: LiveMount,
    notifier: fuser::Notifier,
}

impl LiveHandle {
    /// Run `change` on the Mount and then tell the kernel exactly what it
    /// changed (stale pages and attributes of changed files, stale names in
    /// loaded directories). With `merge`, the Mount is locked as for a
    /// merge (no commit between writing a version and naming it). The
    /// kernel is told without the Mount's lock (it may call back in).
    pub fn change<T>(
        &self,
        merge: bool,
        change: impl FnOnce(&mut crate::bucket::Mount) -> crate::bucket::Result<T>,
    ) -> crate::bucket::Result<T> {
        let (out, stale) = if merge {
            let mut m = self.live.lock_to_merge();
            let before = m.cached_view();
            let out = change(&mut m)?;
            (out, m.changed_since(&before))
        } else {
            let mut m = self.live.lock();
            let before = m.cached_view();
            let out = change(&mut m)?;
            (out, m.changed_since(&before))
        };
        self.invalidate(&stale);
        Ok(out)
    }

    fn invalidate(&self, stale: &crate::bucket::Invalidations) {
        use std::os::unix::ffi::OsStrExt;
        for ino in &stale.inodes {
            let _ = self.notifier.inval_inode(fuser::INodeNo(*ino), 0, 0);
        }
        for (dir, name) in &stale.entries {
            let _ = self
                .notifier
                .inval_entry(fuser::INodeNo(*dir), std::ffi::OsStr::from_bytes(name));
        }
    }
}

/// How a record's volume is served by FUSE.
pub(super) fn session_options(rec: &MountRecord) -> SessionOptions {
    SessionOptions {
        fs_name: session::source_of(&rec.volume_id),
        read_only: rec.options.read_only,
        fs: FsOptions {
            ttl: Duration::from_millis(rec.options.cache_ttl_ms),
        },
    }
}

/// The mount point `path` opened below `root` (see `safe_path`), or with
/// no root, checked by path (None: mount by path).
fn open_mount_point(
    root: Option<&Path>,
    path: &Path,
    create: bool,
) -> Result<Option<OpenDir>, MountError> {
    match root {
        Some(root) => match open_below(root, path, create) {
            Ok(dir) => Ok(Some(dir)),
            Err(SafePathError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Err(MountError::MountPointMissing(path.to_path_buf()))
            }
            Err(e) => Err(e.into()),
        },
        None => {
            if create {
                std::fs::create_dir_all(path).map_err(|source| MountError::SpawnFailed {
                    path: path.to_path_buf(),
                    source,
                })?;
            }
            check_mount_point(path).map(|()| None)
        }
    }
}

fn check_mount_point(path: &Path) -> Result<(), MountError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(MountError::MountPointNotADirectory(path.to_path_buf())),
        Err(_) => Err(MountError::MountPointMissing(path.to_path_buf())),
    }
}

/// Give the volume root to `group`, group-writable and set-group-id, so
/// every new file and directory belongs to the pod's fsGroup.
fn apply_group(mount: &mut crate::bucket::Mount, group: u32) -> crate::bucket::Result<()> {
    let root = mount.getattr(crate::bucket::ROOT_INO)?;
    let mode = root.mode | 0o2070;
    if root.gid != group || root.mode != mode {
        mount.setattr(
            crate::bucket::ROOT_INO,
            crate::bucket::SetAttr {
                gid: Some(group),
                mode: Some(mode),
                ..Default::default()
            },
        )?;
    }
    Ok(())
}

/// Bind-mount `source` at `t.path` (read-only if asked). Idempotent.
/// With `root` (kubelet's dir), both are opened below it without following
/// a symbolic link and the mount goes through their descriptors, so a
/// component swapped meanwhile cannot move it elsewhere on the host.
pub fn bind_target(root: Option<&Path>, source: &Path, t: &Target) -> Result<(), MountError> {
    use nix::mount::{mount, MsFlags};
    use std::os::unix::fs::MetadataExt;
    let failed = |source: std::io::Error| MountError::SpawnFailed {
        path: t.path.clone(),
        source,
    };
    if session::is_mount_point(&t.path) {
        // Already bound to this very mount: nothing to do. Anything else
        // there (a bind of a mount whose daemon died, answering or not)
        // is detached and bound again.
        let same = match (std::fs::metadata(&t.path), std::fs::metadata(source)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev(),
            _ => false,
        };
        if same {
            return Ok(());
        }
        session::lazy_unmount(&t.path).map_err(failed)?;
    } else if session::is_stale(&t.path) {
        session::lazy_unmount(&t.path).map_err(failed)?;
    }
    let from = open_mount_point(root, source, false)?;
    let to = open_mount_point(root, &t.path, true)?;
    let via = |dir: &Option<OpenDir>, path: &Path| {
        dir.as_ref()
            .map_or_else(|| path.to_path_buf(), OpenDir::proc_path)
    };
    mount(
        Some(&via(&from, source)),
        &via(&to, &t.path),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| failed(e.into()))?;
    if t.read_only {
        let flags = MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV;
        // The descriptor taken before the bind names the directory under
        // it; the walk again (no link followed) reaches the new mount.
        let remounted = match (root, &from) {
            (Some(root), Some(from)) => open_bound(root, &t.path, from).and_then(|top| {
                mount(
                    None::<&str>,
                    &top.proc_path(),
                    None::<&str>,
                    flags,
                    None::<&str>,
                )
                .map_err(|e| failed(e.into()))
            }),
            _ => mount(None::<&str>, &t.path, None::<&str>, flags, None::<&str>)
                .map_err(|e| failed(e.into())),
        };
        if let Err(e) = remounted {
            let _ = session::lazy_unmount(&t.path);
            return Err(e);
        }
    }
    Ok(())
}

/// `path` opened below `root` after a bind of `source` onto it: the bind's
/// root, or an error when what is there now is not that mount.
fn open_bound(root: &Path, path: &Path, source: &OpenDir) -> Result<OpenDir, MountError> {
    let top = open_below(root, path, false)?;
    if top.dev()? != source.dev()? {
        return Err(MountError::SpawnFailed {
            path: path.to_path_buf(),
            source: std::io::Error::other("the bind mount is not where it was made"),
        });
    }
    Ok(top)
}

/// Undo a bind mount; a missing path or a dead mount is not an error.
pub fn unbind(target: &Path) -> std::io::Result<()> {
    if session::is_stale(target) || session::is_mount_point(target) {
        session::lazy_unmount(target)?;
    }
    match std::fs::remove_dir(target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        // Kubelet may own the directory; leaving it is harmless.
        Err(_) => Ok(()),
    }
}

/// The mounts gauge: how many records are in each status.
fn report_mounts(inner: &Inner) {
    let mut counts = [
        ("stopped", 0),
        ("starting", 0),
        ("running", 0),
        ("error", 0),
    ];
    for r in inner.records.values() {
        let status = r.status.as_db();
        if let Some(c) = counts.iter_mut().find(|(s, _)| *s == status) {
            c.1 += 1;
        }
    }
    crate::metrics::mounts(&counts);
}

/// A volume id in the records file: 32 hex characters (the records stay
/// readable by operators and by older and newer plugins).
mod hex_id {
    use crate::bucket::BucketId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &BucketId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&id.to_hex())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BucketId, D::Error> {
        let text = String::deserialize(d)?;
        BucketId::from_hex(&text).map_err(serde::de::Error::custom)
    }
}
