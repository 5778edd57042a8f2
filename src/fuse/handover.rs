//! Mounts that outlive the node plugin process: every session's connection
//! is also held by an fd-keeper (`fuse::keeper`), so an upgrade or a crash
//! of the plugin never unmounts a pod's volume.
//!
//! - **Upgrade** ([`MountManager::hand_over_all`], on SIGTERM): each session
//!   stops reading (requests already read are answered, none other is), the
//!   Mount commits, and the kernel's references (inode, count, path) are
//!   written to `<state>/handover/<volume>.json`. The process exits without
//!   unmounting; requests wait in the kernel.
//! - **Start** ([`MountManager::resume_kept`]): for each volume the keeper
//!   holds, the successor opens the Mount at its head, takes over the
//!   references (inode numbers are tree ids, so the same paths give the same
//!   numbers) and serves a clone of the kept descriptor without INIT
//!   (`Session::resume_from_fd`, our fuser patch). Pods saw a pause.
//! - **Crash**: the dead process's descriptor closes, so the kernel fails
//!   only the requests it had read (ECONNABORTED); the keeper's keeps the
//!   connection. With no state file the successor loads the whole tree, so
//!   any inode the kernel names is found; files unlinked while open are not
//!   in the tree and answer ENOENT.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::keeper::KeeperClient;
use super::lookups::KernelRef;
use super::mount_manager::{
    session_options, MountError, MountManager, MountStatus, Notice, Running,
};
use super::session::{self, FuseSession};
use crate::bucket::BucketId;

/// Version of the handover state file.
const STATE_VERSION: u32 = 1;

/// What a process that handed a volume over leaves for its successor.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HandoverState {
    pub v: u32,
    pub volume: String,
    pub connection: u32,
    pub refs: Vec<KernelRef>,
}

/// What [`MountManager::resume_kept`] did.
#[derive(Debug, Default)]
pub struct Resumed {
    /// Volumes served again from a kept connection.
    pub resumed: Vec<BucketId>,
    /// Kept connections that could not be resumed (mounted afresh instead).
    pub failed: Vec<(BucketId, MountError)>,
}

impl MountManager {
    /// Use the fd-keeper at `client` for every mount from now on.
    pub fn set_keeper(&self, client: KeeperClient) {
        *self.keeper.lock().unwrap() = Some(client);
    }

    fn keeper_client(&self) -> Option<KeeperClient> {
        self.keeper.lock().unwrap().clone()
    }

    fn handover_dir(&self) -> PathBuf {
        self.state().root().join("handover")
    }

    /// Give the keeper a descriptor of a new session's connection.
    pub(super) fn keep_connection(&self, volume: &BucketId, session: &FuseSession) {
        let Some(keeper) = self.keeper_client() else {
            return;
        };
        if let Err(e) = give_to_keeper(&keeper, volume, session) {
            tracing::warn!(%volume, error = %e, "the fd-keeper does not hold this mount; it will not survive a restart of this process");
        }
    }

    /// The volume is being unmounted: the keeper must let its connection go.
    pub(super) fn release_connection(&self, volume: &BucketId) {
        if let Some(keeper) = self.keeper_client() {
            if let Err(e) = keeper.drop_volume(&volume.to_hex()) {
                tracing::warn!(%volume, error = %e, "could not tell the fd-keeper to release a mount");
            }
        }
    }

    /// Serve again every volume whose connection the keeper holds (at node
    /// start, before [`MountManager::start_auto`], which then skips them).
    /// Kept connections of volumes this node has no record of are released.
    pub fn resume_kept(&self) -> Resumed {
        let mut out = Resumed::default();
        let Some(keeper) = self.keeper_client() else {
            return out;
        };
        let kept = match keeper.list() {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %e, "the fd-keeper does not answer; mounting volumes afresh");
                return out;
            }
        };
        for k in kept {
            let started = Instant::now();
            let Ok(rec) = BucketId::from_hex(&k.volume)
                .map_err(|_| MountError::Database(format!("kept volume {:?}", k.volume)))
                .and_then(|id| self.get(&id))
            else {
                tracing::warn!(volume = %k.volume, "the fd-keeper holds a volume this node has no record of; releasing it");
                let _ = keeper.drop_volume(&k.volume);
                continue;
            };
            match self.resume_one(&keeper, &rec) {
                Ok(refs) => {
                    tracing::info!(volume = %k.volume, connection = k.connection, refs, elapsed_ms = started.elapsed().as_millis() as u64, "mount resumed from the fd-keeper");
                    self.notify(Notice::MountRecovered {
                        volume_id: rec.volume_id,
                    });
                    out.resumed.push(rec.volume_id);
                }
                Err(e) => {
                    tracing::error!(volume = %k.volume, error = %e, "could not resume a kept mount; mounting it afresh");
                    let _ = keeper.drop_volume(&k.volume);
                    out.failed.push((rec.volume_id, e));
                }
            }
        }
        out
    }

    /// Resume one volume; returns how many kernel references it took over.
    fn resume_one(
        &self,
        keeper: &KeeperClient,
        rec: &super::MountRecord,
    ) -> Result<usize, MountError> {
        let volume = &rec.volume_id;
        let name = volume.to_hex();
        let spawn_failed = |source| MountError::SpawnFailed {
            path: rec.mount_point.clone(),
            source,
        };
        let (kept, fd) = keeper
            .get(&name)
            .map_err(|e| spawn_failed(std::io::Error::other(e.to_string())))?
            .ok_or_else(|| spawn_failed(std::io::Error::other("the fd-keeper let it go")))?;
        let state =
            take_state(&self.handover_dir(), &name).filter(|s| s.connection == kept.connection);
        let live = self.open_live(rec, |m| {
            // A crash left no state: any inode may be named.
            if state.is_none() {
                m.load_all()?;
            }
            Ok(())
        })?;
        // Nothing serves this Mount yet: the references are taken over
        // before the first request. Without a handover state the previous
        // process crashed, and what it had not made durable is lost: the
        // first fsync of each inode says so.
        if state.is_none() {
            live.resumed_after_crash();
            tracing::warn!(volume = %volume, "resumed after a crash: writes not fsynced before it are lost, and the first fsync of each file reports EIO once");
        }
        let refs = state.map_or(0, |s| live.adopt_kernel_refs(&s.refs));
        self.lock().reserve_stopped(volume)?;
        let resumed = session::resume(
            live.clone(),
            fd,
            &rec.mount_point,
            kept.connection,
            &session_options(rec),
        );
        let mut inner = self.lock();
        inner.busy.remove(volume);
        match resumed {
            Ok(session) => {
                inner.running.insert(*volume, Running { live, session });
                self.set_status(&mut inner, volume, MountStatus::Running);
                Ok(refs)
            }
            Err(source) => {
                drop(inner);
                let _ = live.shutdown();
                Err(spawn_failed(source))
            }
        }
    }

    /// Hand every running volume over to a successor (see the module
    /// docs): nothing is unmounted. A volume the keeper does not hold is
    /// stopped cleanly instead. Returns the volumes handed over.
    pub fn hand_over_all(&self) -> Vec<BucketId> {
        let mut kept: Vec<BucketId> = Vec::new();
        if let Some(keeper) = self.keeper_client() {
            match keeper.list() {
                Ok(list) => {
                    kept = list
                        .iter()
                        .filter_map(|k| BucketId::from_hex(&k.volume).ok())
                        .collect();
                    // A keeper that was restarted holds nothing yet: give it what runs.
                    self.keep_missing(&keeper, &mut kept);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the fd-keeper does not answer; unmounting instead of handing over")
                }
            }
        }
        let volumes: Vec<BucketId> = self.lock().running.keys().copied().collect();
        let mut handed = Vec::new();
        for volume in volumes {
            if !kept.contains(&volume) {
                if let Err(e) = self.stop(&volume) {
                    tracing::error!(%volume, error = %e, "stop failed");
                }
                continue;
            }
            match self.hand_over(&volume) {
                Ok(refs) => {
                    tracing::info!(%volume, refs, "mount handed over");
                    handed.push(volume);
                }
                Err(e) => tracing::error!(%volume, error = %e, "handover failed"),
            }
        }
        handed
    }

    /// Give `keeper` the running volumes it does not hold (`kept`), adding
    /// those it took to `kept`.
    fn keep_missing(&self, keeper: &KeeperClient, kept: &mut Vec<BucketId>) {
        let inner = self.lock();
        for (volume, r) in inner.running.iter() {
            if kept.contains(volume) {
                continue;
            }
            match give_to_keeper(keeper, volume, &r.session) {
                Ok(()) => kept.push(*volume),
                Err(e) => {
                    tracing::warn!(%volume, error = %e, "the fd-keeper would not take this mount; unmounting it instead")
                }
            }
        }
    }

    fn hand_over(&self, volume: &BucketId) -> Result<usize, MountError> {
        let Running { live, session } = {
            let mut inner = self.lock();
            if !inner.busy.insert(*volume) {
                return Err(MountError::Busy(*volume));
            }
            match inner.running.remove(volume) {
                Some(r) => r,
                None => {
                    inner.busy.remove(volume);
                    return Err(MountError::MountNotFound(*volume));
                }
            }
        };
        let connection = session.connection();
        let path = session.path().to_path_buf();
        // Readers stop; the session's end runs the final commit.
        session.hand_over();
        let refs = live.kernel_refs();
        let committed = live.shutdown();
        let state = HandoverState {
            v: STATE_VERSION,
            volume: volume.to_hex(),
            connection,
            refs,
        };
        let written = write_state(&self.handover_dir(), &state);
        self.lock().busy.remove(volume);
        committed.map_err(|source| MountError::CommitFailed {
            volume: *volume,
            source,
        })?;
        written.map_err(|source| MountError::SpawnFailed { path, source })?;
        Ok(state.refs.len())
    }
}

/// Hand `keeper` a clone of the descriptor of `session`'s connection.
fn give_to_keeper(
    keeper: &KeeperClient,
    volume: &BucketId,
    session: &FuseSession,
) -> std::io::Result<()> {
    let fd = session.clone_device()?;
    keeper
        .keep(
            &volume.to_hex(),
            session.connection(),
            std::os::fd::AsFd::as_fd(&fd),
        )
        .map_err(std::io::Error::other)
}

fn state_path(dir: &Path, volume: &str) -> PathBuf {
    dir.join(format!("{volume}.json"))
}

fn write_state(dir: &Path, state: &HandoverState) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let bytes = serde_json::to_vec(state).expect("handover state serializes");
    crate::durable::write_atomic(&state_path(dir, &state.volume), &bytes, 0o600)
}

/// Read and remove the state a predecessor left for `volume`, if any.
fn take_state(dir: &Path, volume: &str) -> Option<HandoverState> {
    let path = state_path(dir, volume);
    let bytes = std::fs::read(&path).ok()?;
    let _ = std::fs::remove_file(&path);
    match serde_json::from_slice::<HandoverState>(&bytes) {
        Ok(s) if s.v == STATE_VERSION && s.volume == volume => Some(s),
        Ok(s) => {
            tracing::warn!(
                volume,
                version = s.v,
                "ignoring a handover state of another version or volume"
            );
            None
        }
        Err(e) => {
            tracing::warn!(volume, error = %e, "ignoring a malformed handover state");
            None
        }
    }
}
