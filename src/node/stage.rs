//! Staging a volume on this node: its bucket brought here (fetched from the
//! nodes that hold it, a clone's source version fetched, or a new bucket
//! under the controller's secret), opened only with keys the cryptography
//! accepts for this very record (a Postgres row pointing elsewhere does not
//! open), then mounted with the volume's quota and its head reported.

use std::path::PathBuf;

use super::{peers::peers_of, NodeAgent, NodeError};
use crate::bucket::{BucketError, BucketId, BucketOptions, StateDir};
use crate::crypto::{Kek, SecretKey, UnwrapError, WrapContext};
use crate::db::{HeadKey, KeyError, VolumeRecord};
use crate::fuse::MountOptions;
use crate::store::Hash;

/// How long a NodeStage waits for the node making a volume's first version.
const FIRST_VERSION_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

fn parse_id(id: &str) -> Result<BucketId, NodeError> {
    BucketId::from_hex(id)
        .map_err(|_| NodeError::Internal(format!("malformed bucket id {id:?} in a record")))
}

fn source_head(src: &HeadKey) -> Result<Hash, NodeError> {
    src.head
        .as_deref()
        .unwrap_or_default()
        .parse()
        .map_err(|_| NodeError::Internal("malformed source head in the volume record".into()))
}

impl NodeAgent {
    /// The cluster key-encryption key.
    pub fn kek(&self) -> &Kek {
        &self.kek
    }

    /// Bring what staging `vol` needs onto this node: a bucket other nodes
    /// hold is fetched from them (tree now, chunks on demand and in the
    /// background) — never a fresh empty version while any node reported a
    /// head; a clone's source version is fetched if it is not here.
    pub async fn prepare_bucket(
        &self,
        vol: &VolumeRecord,
        secret: &SecretKey,
        tenant: Option<&Kek>,
    ) -> Result<(), NodeError> {
        let id = parse_id(&vol.id)?;
        // Only a volume whose fsyncs wait for replicas leaves journal
        // copies on them.
        let copied =
            crate::db::replicas::sync_replicas_of(&vol.parameters, &vol.mutable_parameters) > 0;
        if self.state.has_bucket(&id) {
            if copied && self.manager.get_live_mount(&id).is_none() {
                // A writer lost since may have left fsyncs only its
                // replicas' journal copies hold.
                self.sync.replay_journal_copies(id, false).await;
            }
            return Ok(());
        }
        // A head reported, or a first version recorded (its holders may
        // all be replicas, or removed): never made again.
        let (mut genesis, _) = self.db.genesis_of(&vol.id).await?;
        let mut held_elsewhere = genesis.is_some() || self.db.latest_head(&vol.id).await?.is_some();
        if !held_elsewhere && !self.db.claim_genesis(&vol.id, &self.node_id).await? {
            // Another node is making the volume's first version: it is
            // taken from there, never made twice (and recorded meanwhile).
            held_elsewhere = self.wait_for_first_version(&vol.id).await?;
            genesis = self.db.genesis_of(&vol.id).await?.0;
        }
        if held_elsewhere {
            // What the history begins with, known before any version is taken.
            if let Some(genesis) = genesis {
                let genesis: Hash = genesis.parse().map_err(|_| {
                    NodeError::Internal("malformed first version in the volume record".into())
                })?;
                self.state
                    .set_genesis(&id, &genesis)
                    .map_err(NodeError::bucket("recording the volume's first version"))?;
            }
            let peers = peers_of(&self.db, &id, &self.node_id).await?;
            self.sync
                .fetch_bucket(id, secret.clone(), peers)
                .await
                .map_err(|e| {
                    NodeError::PeersUnavailable(format!(
                        "volume {} is held by other nodes and none that holds it answered: {e}",
                        vol.id
                    ))
                })?;
            if copied {
                // The fsyncs a lost writer made durable only on its
                // replicas, this node's own included when its state dir
                // was lost.
                self.sync.replay_journal_copies(id, true).await;
            }
            let sync = self.sync.clone();
            tokio::spawn(async move {
                match sync.complete(id).await {
                    Ok(n) => {
                        tracing::info!(bucket = %id, chunks = n, "bucket complete on this node")
                    }
                    Err(e) => {
                        tracing::warn!(bucket = %id, error = %e, "bucket not complete yet; reads fetch what they need")
                    }
                }
            });
            return Ok(());
        }
        if let Some(src) = HeadKey::of_clone_source(vol) {
            let head = source_head(&src)?;
            let src_id = parse_id(&src.bucket)?;
            let src_secret = || {
                src.open(
                    &self.kek,
                    tenant,
                    &format!("the source of volume {}", vol.id),
                )
            };
            // Here and openable, or fetched: the version, and (when it was
            // written after a rotation of the source's secret) the source's
            // key ring, which its members seal to a node that proves the
            // base secret.
            let opens = self.state.store().contains(&head)
                && self
                    .state
                    .bucket_with_secret(&src_id, src_secret()?)
                    .can_open_version(&head)
                    .map_err(NodeError::bucket("reading the source version"))?;
            if !opens {
                let peers = peers_of(&self.db, &src_id, &self.node_id).await?;
                self.sync
                    .fetch_foreign_version(src_id, src_secret()?, head, peers)
                    .await
                    .map_err(|e| {
                        NodeError::PeersUnavailable(format!(
                            "the version volume {} starts from (or its source's key ring) is on no node that answered: {e}",
                            vol.id
                        ))
                    })?;
            }
        }
        Ok(())
    }

    /// Wait (up to [`FIRST_VERSION_WAIT`]) for the node that claimed the
    /// making of `volume`'s first version to report a head; whether one
    /// did.
    async fn wait_for_first_version(&self, volume: &str) -> Result<bool, NodeError> {
        let deadline = tokio::time::Instant::now() + FIRST_VERSION_WAIT;
        loop {
            if self.db.latest_head(volume).await?.is_some() {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                let (_, by) = self.db.genesis_of(volume).await?;
                return Err(NodeError::PeersUnavailable(format!(
                    "node {} is making volume {volume}'s first version and has not reported it yet",
                    by.unwrap_or_default()
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Mount `vol`'s bucket (made if it is not here yet, see
    /// [`ensure_bucket`]) at `staging` with `options`, give it the volume's
    /// capacity as its quota, and report its head to Postgres.
    pub async fn mount_volume(
        &self,
        vol: &VolumeRecord,
        secret: SecretKey,
        tenant: Option<Kek>,
        staging: PathBuf,
        options: MountOptions,
    ) -> Result<(), NodeError> {
        let id = parse_id(&vol.id)?;
        let (state, kek, manager) = (self.state.clone(), self.kek.clone(), self.manager.clone());
        let vol = vol.clone();
        let quota = vol.capacity_bytes as u64;
        tokio::task::spawn_blocking(move || {
            ensure_bucket(&state, &kek, &vol, secret, tenant.as_ref())?;
            // Below the kubelet dir, made without following any link.
            manager.make_mount_point(&staging)?;
            manager.create_mount(&id, &staging, options)?;
            manager.start(&id)?;
            // The volume's capacity is its quota on every node.
            if let Some(live) = manager.get_live_mount(&id) {
                let mut m = live.lock();
                if !m.is_read_only() && m.usage().quota != Some(quota) {
                    m.set_quota(Some(quota))
                        .map_err(NodeError::bucket("setting the quota"))?;
                    drop(m);
                    live.commit_now()
                        .map_err(NodeError::bucket("committing the quota"))?;
                }
            }
            Ok::<(), NodeError>(())
        })
        .await
        .map_err(|e| NodeError::Internal(format!("mount worker failed: {e}")))??;
        // The first version this node made (before the head: a node waiting
        // for the head reads it next).
        if let Some(genesis) = self
            .state
            .genesis_of(&id)
            .map_err(NodeError::bucket("reading the volume's first version"))?
        {
            let recorded = self
                .db
                .record_genesis(&id.to_hex(), &genesis.to_hex())
                .await?;
            if recorded.as_deref().is_some_and(|r| r != genesis.to_hex()) {
                // Another node made the volume first (this one's claim
                // lapsed): peers refuse this copy's history.
                return Err(NodeError::Internal(format!(
                    "this node's copy of volume {id} began at {genesis}, but the volume's history begins at {}; unstage it here and remove buckets/{id} from this node's state dir to take the volume from its holders",
                    recorded.unwrap_or_default()
                )));
            }
        }
        self.report_head(&id).await;
        Ok(())
    }

    /// Record the live mount's head in Postgres (for snapshots and clones).
    pub async fn report_head(&self, volume: &BucketId) {
        let Some(live) = self.manager.get_live_mount(volume) else {
            return;
        };
        let saved = live.lock().base();
        if let Err(e) = self
            .db
            .report_head(
                &volume.to_hex(),
                &self.node_id,
                &saved.hash.to_string(),
                saved.height as i64,
                Some(saved.used_bytes as i64),
            )
            .await
        {
            tracing::warn!(%volume, error = %e, "could not report the head; will report at the next commit");
        }
    }

    /// With Postgres down, a tenant's volume staged here is confirmed with
    /// the node's own tenant check: the request must carry the same tenant key.
    pub fn verify_local_tenant(
        &self,
        id: &BucketId,
        tenant: Option<&Kek>,
    ) -> Result<(), NodeError> {
        let Some(check) = self
            .state
            .tenant_check(id)
            .map_err(NodeError::bucket("reading the tenant check"))?
        else {
            return Ok(());
        };
        let key_error = |source| KeyError {
            what: format!("volume {id}"),
            source,
        };
        let t = tenant.ok_or_else(|| key_error(UnwrapError::TenantKeyRequired))?;
        t.unwrap_for(&check, &WrapContext::node_local(&id.to_hex()), false)
            .map(|_| ())
            .map_err(|_| key_error(UnwrapError::WrongTenantKey).into())
    }
}

/// Make sure `vol`'s bucket (whose secret is `secret`) is in `state`: an
/// O(1) clone of its source's version, or a new bucket; a tenant's volume
/// also gets the node-local tenant check.
fn ensure_bucket(
    state: &StateDir,
    kek: &Kek,
    vol: &VolumeRecord,
    secret: SecretKey,
    tenant: Option<&Kek>,
) -> Result<(), NodeError> {
    let id = parse_id(&vol.id)?;
    if !state.has_bucket(&id) {
        match HeadKey::of_clone_source(vol) {
            Some(src) => {
                let head = source_head(&src)?;
                let src_secret =
                    src.open(kek, tenant, &format!("the source of volume {}", vol.id))?;
                let src_id = parse_id(&src.bucket)?;
                let source = state.bucket_with_secret(&src_id, src_secret.clone());
                state
                    .clone_bucket_with_secret(id, secret.clone(), &source, &head, kek)
                    .map_err(|e| match e {
                        BucketError::Store(_) | BucketError::VersionNotFound(_) => {
                            NodeError::PeersUnavailable(format!(
                                "the source version {head} is not on this node yet: {e}"
                            ))
                        }
                        e => NodeError::bucket("cloning the source")(e),
                    })?;
                // Chunks of the source's tree not here come from its peers.
                state
                    .set_source(&id, &src_id, &src_secret, kek)
                    .map_err(NodeError::bucket("recording the clone's source"))?;
            }
            None => {
                let opts = BucketOptions {
                    quota: Some(vol.capacity_bytes as u64),
                    chunk_size: vol.chunk_size as u32,
                    root_mode: 0o777,
                    ..Default::default()
                };
                state
                    .create_bucket_with_secret(id, secret.clone(), kek, &opts)
                    .map_err(NodeError::bucket("creating the bucket"))?;
            }
        }
    }
    if let Some(t) = tenant.filter(|_| vol.tenant_wrapped_key.is_some()) {
        // Written when missing, and again when the tenant key changed (a
        // rotation: the record opened with this key, the old check not).
        let ctx = WrapContext::node_local(&vol.id);
        let current = state
            .tenant_check(&id)
            .map_err(NodeError::bucket("reading the tenant check"))?
            .is_some_and(|check| t.wrapped_current(&check, &ctx));
        if !current {
            let check = t
                .wrap_for(&secret, &WrapContext::node_local(&vol.id))
                .map_err(|e| NodeError::Internal(format!("sealing the tenant check: {e}")))?;
            state
                .set_tenant_check(&id, &check)
                .map_err(NodeError::bucket("recording the tenant check"))?;
        }
    }
    Ok(())
}
