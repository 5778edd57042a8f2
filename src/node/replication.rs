//! The node agent's replicas of volumes no pod here mounts (#28): the
//! volumes the controller's leader assigned to this node are held blind
//! (`bucket::blind`), brought to the newest version any node reported and
//! to every version a member announces, and reported to Postgres as any
//! holder's head is. An assignment taken back drops the replica (its blobs
//! go with the next GC). A node that holds a volume's key records the
//! volume's proof key for volumes created before blind replicas.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;

use crate::bucket::{BucketId, StateDir};
use crate::crypto::Kek;
use crate::db::Db;
use crate::store::Hash;
use crate::sync::replicate::Keep;
use crate::sync::SyncEngine;

/// What the loop needs.
#[derive(Clone)]
pub struct Replication {
    pub db: Db,
    pub node_id: String,
    pub sync: SyncEngine,
    pub state: Arc<StateDir>,
    pub kek: Arc<Kek>,
    /// Volumes being brought to a version now (one task each).
    busy: Arc<Mutex<HashSet<BucketId>>>,
}

impl Replication {
    pub fn new(
        db: Db,
        node_id: String,
        sync: SyncEngine,
        state: Arc<StateDir>,
        kek: Arc<Kek>,
    ) -> Self {
        Self {
            db,
            node_id,
            sync,
            state,
            kek,
            busy: Default::default(),
        }
    }

    /// Follow the assignments every `every`, and each announcement at once.
    pub async fn run(
        self,
        every: Duration,
        mut announced: Option<UnboundedReceiver<(BucketId, Hash)>>,
    ) {
        loop {
            let heard = async {
                match announced.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(every) => {
                    if let Err(e) = self.pass().await {
                        tracing::debug!(error = %e, "replica assignments not followed this time (Postgres down?)");
                    }
                }
                got = heard => match got {
                    Some((bucket, version)) if self.state.has_blind(&bucket) => {
                        self.bring(bucket, version, None);
                    }
                    Some(_) => {}
                    None => announced = None,
                },
            }
        }
    }

    /// One look at the assignments: start, follow and drop replicas.
    pub async fn pass(&self) -> Result<(), crate::db::DbError> {
        self.record_proof_keys().await?;
        let assigned: HashSet<BucketId> = self
            .db
            .assigned_to(&self.node_id)
            .await?
            .iter()
            .filter_map(|v| BucketId::from_hex(v).ok())
            .collect();
        for id in &assigned {
            if self.state.has_bucket(id) {
                // The volume's key is here (it is or was staged): that copy
                // is the replica, synced as every staged volume is.
                if self.state.has_blind(id) {
                    self.drop_blind(id);
                }
                continue;
            }
            if !self.state.has_blind(id) {
                let Some(wrapped) = self.db.proof_key(&id.to_hex()).await? else {
                    tracing::warn!(volume = %id, "assigned a replica of a volume with no proof key recorded yet; a node that holds its key records it");
                    continue;
                };
                if let Err(e) = self.state.create_blind(id, &wrapped, &self.kek) {
                    tracing::error!(volume = %id, error = %e, "could not start a blind replica");
                    continue;
                }
                tracing::info!(volume = %id, "holding a blind replica");
            }
            let peers = super::peers::peers_of(&self.db, id, &self.node_id).await?;
            self.sync.set_peers(*id, peers);
            let Some((head, _)) = self.db.latest_head(&id.to_hex()).await? else {
                continue;
            };
            let pins: Vec<Hash> = self
                .db
                .snapshot_heads(&id.to_hex())
                .await?
                .iter()
                .filter_map(|h| h.parse().ok())
                .collect();
            if let Ok(version) = head.parse::<Hash>() {
                self.bring(*id, version, Some(pins));
            }
        }
        for id in self.state.list_blind().unwrap_or_default() {
            if !assigned.contains(&id) {
                self.drop_blind(&id);
            }
        }
        Ok(())
    }

    fn drop_blind(&self, id: &BucketId) {
        match self.state.remove_blind(id) {
            Ok(()) => tracing::info!(volume = %id, "blind replica dropped"),
            Err(e) => tracing::warn!(volume = %id, error = %e, "could not drop a blind replica"),
        }
    }

    /// Bring the blind replica of `bucket` to `version`, and keep exactly
    /// `pins` (snapshots' versions) beside it when given, in a task of its
    /// own unless one runs (the next pass or announcement tries again).
    fn bring(&self, bucket: BucketId, version: Hash, pins: Option<Vec<Hash>>) {
        let Ok(r) = self.state.open_blind(&bucket, &self.kek) else {
            return;
        };
        let head_done = r.head().ok().flatten().is_some_and(|(v, _)| v == version);
        let held: HashSet<Hash> = r
            .pinned()
            .unwrap_or_default()
            .into_iter()
            .map(|(v, _)| v)
            .collect();
        let pins_done = pins
            .as_ref()
            .is_none_or(|p| p.iter().copied().collect::<HashSet<_>>() == held);
        if head_done && pins_done {
            return;
        }
        if !self.busy.lock().unwrap().insert(bucket) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            if !head_done {
                me.follow(bucket, version).await;
            }
            for pin in pins.iter().flatten().filter(|p| !held.contains(p)) {
                match me.sync.replicate(bucket, *pin, Keep::Pinned).await {
                    Ok(done) => crate::metrics::rebuild_bytes(done.bytes_fetched),
                    Err(e) => {
                        tracing::warn!(volume = %bucket, version = %pin, error = %e, "a snapshot's version not replicated yet; trying again")
                    }
                }
            }
            if let Some(pins) = &pins {
                let keep: HashSet<Hash> = pins.iter().copied().collect();
                if let Err(e) = r.keep_pinned_only(&keep) {
                    tracing::warn!(volume = %bucket, error = %e, "could not drop the versions of deleted snapshots");
                }
            }
            me.busy.lock().unwrap().remove(&bucket);
        });
    }

    /// Bring the replica's head to `version` and report it.
    async fn follow(&self, bucket: BucketId, version: Hash) {
        match self.sync.replicate(bucket, version, Keep::Head).await {
            Ok(done) => {
                crate::metrics::rebuild_bytes(done.bytes_fetched);
                if let Err(e) = self
                    .db
                    .report_head(
                        &bucket.to_hex(),
                        &self.node_id,
                        &version.to_string(),
                        done.height as i64,
                        None,
                    )
                    .await
                {
                    tracing::debug!(volume = %bucket, error = %e, "replica head not reported yet");
                }
            }
            Err(e) => {
                tracing::warn!(volume = %bucket, %version, error = %e, "blind replica not brought up to date; trying again")
            }
        }
    }

    /// Once Postgres answers: drop the records that say this node holds a
    /// volume it does not (a node back with a new or wiped state dir), so
    /// the leader places those copies elsewhere at once.
    pub async fn forget_lost_copies(self, manager: crate::fuse::MountManager) {
        loop {
            let done = async {
                // Postgres's time first: a stage after it keeps its rows.
                let since = self.db.now_epoch().await?;
                let mut held = self.keyed_volumes();
                for id in self.state.list_blind().unwrap_or_default() {
                    let has_version = self
                        .state
                        .open_blind(&id, &self.kek)
                        .is_ok_and(|r| r.head().ok().flatten().is_some());
                    if has_version {
                        held.push(id.to_hex());
                    }
                }
                let mounted: Vec<String> = manager
                    .list()
                    .iter()
                    .map(|r| r.volume_id.to_hex())
                    .collect();
                self.db
                    .forget_lost_copies(&self.node_id, &held, &mounted, since)
                    .await
            }
            .await;
            match done {
                Ok(0) => return,
                Ok(n) => {
                    tracing::warn!(records = n, "Postgres said this node held volumes its state dir does not have; those records are gone, and the leader places the copies elsewhere");
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "records of lost copies not checked yet");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
    }

    /// The volumes whose key (bucket) this node holds, as ids.
    fn keyed_volumes(&self) -> Vec<String> {
        self.state
            .list_buckets()
            .unwrap_or_default()
            .iter()
            .map(BucketId::to_hex)
            .collect()
    }

    /// Record the proof key of each volume whose key this node holds and
    /// Postgres has none for (volumes from before blind replicas).
    async fn record_proof_keys(&self) -> Result<(), crate::db::DbError> {
        let held = self.keyed_volumes();
        if held.is_empty() {
            return Ok(());
        }
        for vid in self.db.without_proof_key(&held).await? {
            let Ok(id) = BucketId::from_hex(&vid) else {
                continue;
            };
            let Ok(b) = self.state.open_bucket(&id, &self.kek) else {
                continue;
            };
            match crate::db::replicas::wrap_proof_key(&self.kek, &vid, &b.proof_key()) {
                Ok(w) => {
                    if self.db.ensure_proof_key(&vid, &w).await? {
                        tracing::info!(volume = %vid, "recorded the volume's proof key for blind replicas");
                    }
                }
                Err(e) => tracing::warn!(volume = %vid, error = %e, "could not wrap a proof key"),
            }
        }
        Ok(())
    }
}
