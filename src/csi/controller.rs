//! The CSI Controller service: volumes and snapshots as Postgres records.
//!
//! Volumes are buckets. The controller creates each bucket's secret and
//! stores it only wrapped: by the cluster KEK, and first by the tenant's KEK
//! when the StorageClass names one (then neither key alone opens it), each
//! wrap bound to the record it is in. The nodes create the bucket's first
//! version when they stage it. Snapshots record a head (O(1)); a clone
//! records the tree it starts from (O(1), no data copied). Every
//! consistency rule lives in Postgres constraints, so several replicas can
//! serve at once.

use std::collections::HashMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::params::tenant_from;
use super::params::{
    self, capacity_fits, capacity_for, check_capabilities, parse_mutable, parse_parameters,
};
use super::proto::controller_server::Controller;
use super::proto::controller_service_capability::{self, rpc};
use super::proto::volume_content_source::{self, SnapshotSource, VolumeSource};
use super::proto::*;
use super::status::{page_size, parse_token, require_id, require_some, traced};
use crate::bucket::BucketId;
use crate::crypto::{is_tenant_wrapped, wrap_layered, Kek, SecretKey, WrapContext};
use crate::db::HeadKey;
use crate::db::{Db, NewSnapshot, NewVolume, SnapshotRecord, VolumeRecord};

/// The most entries one List call returns.
const MAX_PAGE: i64 = 1000;
/// Nodes heard from within this many seconds count for GetCapacity.
const FRESH_NODE_SECS: i64 = 120;

pub struct ControllerService {
    db: Db,
    kek: Arc<Kek>,
    /// A holder whose node sent no heartbeat for this long counts as lost.
    replica_timeout_secs: i64,
}

impl ControllerService {
    pub fn new(db: Db, kek: Arc<Kek>) -> Self {
        Self {
            db,
            kek,
            replica_timeout_secs: 300,
        }
    }

    pub fn with_replica_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.replica_timeout_secs = timeout.as_secs().max(1) as i64;
        self
    }
}

fn volume_of(v: &VolumeRecord) -> Volume {
    let content_source = match (&v.source_snapshot_id, &v.source_volume_id) {
        (Some(s), _) => Some(VolumeContentSource {
            r#type: Some(volume_content_source::Type::Snapshot(SnapshotSource {
                snapshot_id: s.clone(),
            })),
        }),
        (None, Some(src)) => Some(VolumeContentSource {
            r#type: Some(volume_content_source::Type::Volume(VolumeSource {
                volume_id: src.clone(),
            })),
        }),
        _ => None,
    };
    Volume {
        capacity_bytes: v.capacity_bytes,
        volume_id: v.id.clone(),
        volume_context: [(
            params::PARAM_CHUNK_SIZE.to_string(),
            v.chunk_size.to_string(),
        )]
        .into(),
        content_source,
        accessible_topology: vec![],
    }
}

pub(super) fn snapshot_of(s: &SnapshotRecord) -> Snapshot {
    Snapshot {
        size_bytes: s.size_bytes,
        snapshot_id: s.id.clone(),
        source_volume_id: s.source_volume_id.clone(),
        creation_time: Some(prost_types::Timestamp {
            seconds: s.created_secs,
            nanos: s.created_nanos,
        }),
        ready_to_use: s.ready,
        group_snapshot_id: s.group_snapshot_id.clone().unwrap_or_default(),
    }
}

/// Where a new volume's content comes from.
struct Source {
    snapshot_id: Option<String>,
    /// The bucket the head belongs to.
    bucket: String,
    head: HeadKey,
    size: i64,
}

/// The volume's condition from its mount states and its replicas.
fn condition_from(
    states: &[(String, String, Option<String>)],
    health: Option<&crate::db::replicas::Health>,
) -> VolumeCondition {
    let (mut abnormal, mut message) = crate::db::operator::volume_condition(states);
    if let Some(h) = health {
        let (under, replicas) = h.condition();
        abnormal |= under;
        message = format!("{message}; {replicas}");
    }
    VolumeCondition { abnormal, message }
}

impl ControllerService {
    async fn resolve_source(
        &self,
        src: Option<&VolumeContentSource>,
    ) -> Result<Option<Source>, Status> {
        let Some(src) = src else { return Ok(None) };
        match &src.r#type {
            Some(volume_content_source::Type::Snapshot(s)) => {
                let id = require_id(&s.snapshot_id, "volume_content_source.snapshot.snapshot_id")?;
                let snap = self.db.snapshot_by_id(id).await?.ok_or_else(|| {
                    Status::not_found(format!("source snapshot {id} does not exist"))
                })?;
                if !snap.ready {
                    return Err(Status::unavailable(format!(
                        "source snapshot {id} is not ready yet (its head is not known yet)"
                    )));
                }
                Ok(Some(Source {
                    snapshot_id: Some(snap.id.clone()),
                    bucket: snap.bucket().to_string(),
                    head: HeadKey::of_snapshot(&snap),
                    size: snap.size_bytes,
                }))
            }
            Some(volume_content_source::Type::Volume(v)) => {
                let id = require_id(&v.volume_id, "volume_content_source.volume.volume_id")?;
                let vol = self.db.volume_by_id(id).await?.ok_or_else(|| {
                    Status::not_found(format!("source volume {id} does not exist"))
                })?;
                let head = self.current_head(&vol).await?;
                Ok(Some(Source {
                    snapshot_id: None,
                    bucket: head.bucket.clone(),
                    head,
                    size: vol.capacity_bytes,
                }))
            }
            None => Err(Status::invalid_argument(
                "volume_content_source.type is required",
            )),
        }
    }

    /// A volume's current head and the wrapped key that opens it: the newest
    /// head a node reported, else (an untouched clone) the tree it started
    /// from, else none (never written: empty).
    async fn current_head(&self, vol: &VolumeRecord) -> Result<HeadKey, Status> {
        if let Some((head, _)) = self.db.latest_head(&vol.id).await? {
            return Ok(HeadKey::of_volume(vol, Some(head)));
        }
        Ok(HeadKey::of_clone_source(vol).unwrap_or_else(|| HeadKey::of_volume(vol, None)))
    }

    /// Same name, compatible request: the existing volume; otherwise ALREADY_EXISTS.
    fn check_same(
        existing: &VolumeRecord,
        range: Option<&CapacityRange>,
        p: &params::VolumeParams,
        modes: &[i32],
        source: &Option<Source>,
    ) -> Result<(), Status> {
        let conflict = |what: &str| {
            Status::already_exists(format!(
                "volume {:?} exists with a different {what}",
                existing.name
            ))
        };
        if !capacity_fits(existing.capacity_bytes, range) {
            return Err(conflict("capacity"));
        }
        if existing.parameters != p.canonical {
            return Err(conflict("set of parameters"));
        }
        if existing.modes() != modes {
            return Err(conflict("set of access modes"));
        }
        let (snap, bucket) = match source {
            Some(s) => (s.snapshot_id.as_deref(), Some(s.bucket.as_str())),
            None => (None, None),
        };
        if existing.source_snapshot_id.as_deref() != snap
            || (existing.source_volume_id.is_some() || bucket.is_some())
                && existing.source_volume_id.as_deref() != bucket
        {
            return Err(conflict("content source"));
        }
        Ok(())
    }

    /// Record a snapshot of `vol` named `name` (in `group`, if any): its
    /// current head, or, when a node holds the volume but has not reported
    /// a head yet, a snapshot that is not ready until one is reported.
    pub(super) async fn take_snapshot(
        &self,
        vol: &VolumeRecord,
        name: &str,
        group: Option<&str>,
        head: Option<HeadKey>,
    ) -> Result<SnapshotRecord, Status> {
        let id = format!("snap-{}", uuid::Uuid::new_v4());
        let head = match head {
            Some(h) => h,
            None => self.current_head(vol).await?,
        };
        // Unknown content (held somewhere, no head yet) is not ready.
        let ready = head.head.is_some() || !self.db.ever_mounted(&vol.id).await?;
        let to = WrapContext::snapshot(&id, &head.bucket, head.head.as_deref().unwrap_or(""));
        let wrapped = head.rewrap(&self.kek, &to, &format!("the key of volume {}", vol.id))?;
        let new = NewSnapshot {
            id,
            name: name.to_string(),
            source_volume_id: vol.id.clone(),
            head: head.head.clone(),
            wrapped_key: wrapped.0,
            size_bytes: vol.capacity_bytes,
            group_snapshot_id: group.map(str::to_string),
            bucket_id: Some(head.bucket.clone()),
            ready,
        };
        match self.db.insert_snapshot(&new).await? {
            Some(s) => Ok(s),
            None => {
                let existing = self
                    .db
                    .snapshot_by_name(name)
                    .await?
                    .ok_or_else(|| Status::aborted("snapshot name conflict; retry"))?;
                if existing.source_volume_id != vol.id {
                    return Err(Status::already_exists(format!(
                        "snapshot {name:?} exists for another source volume"
                    )));
                }
                Ok(existing)
            }
        }
    }

    /// A snapshot that was not ready: fill in the head if one is known now.
    pub(super) async fn refresh_snapshot(
        &self,
        snap: SnapshotRecord,
    ) -> Result<SnapshotRecord, Status> {
        if snap.ready {
            return Ok(snap);
        }
        let Some(vol) = self.db.volume_by_id(&snap.source_volume_id).await? else {
            return Ok(snap);
        };
        let head = self.current_head(&vol).await?;
        let Some(h) = head.head.as_deref() else {
            return Ok(snap);
        };
        let to = WrapContext::snapshot(&snap.id, &head.bucket, h);
        let wrapped = head.rewrap(&self.kek, &to, &format!("the key of volume {}", vol.id))?;
        self.db
            .fill_snapshot_head(&snap.id, &head.bucket, h, &wrapped.0)
            .await?;
        Ok(self.db.snapshot_by_id(&snap.id).await?.unwrap_or(snap))
    }

    pub(super) fn db(&self) -> &Db {
        &self.db
    }
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(
        &self,
        request: Request<CreateVolumeRequest>,
    ) -> Result<Response<CreateVolumeResponse>, Status> {
        let req = request.into_inner();
        traced("CreateVolume", &req.name.clone(), async move {
            let name = require_id(&req.name, "name")?;
            let modes = check_capabilities(&req.volume_capabilities)?;
            let p = parse_parameters(&req.parameters)?;
            let mutable = parse_mutable(&req.mutable_parameters)?;
            let waits = crate::db::replicas::sync_replicas_of(&p.canonical, &mutable);
            if waits >= crate::db::replicas::replicas_of(&p.canonical, &mutable) {
                return Err(Status::invalid_argument(format!(
                    "mutable parameter replicas: syncReplicas {waits} needs at least {} replicas",
                    waits + 1
                )));
            }
            let capacity = capacity_for(req.capacity_range.as_ref())?;
            let source = self
                .resolve_source(req.volume_content_source.as_ref())
                .await?;
            if let Some(existing) = self.db.volume_by_name(name).await? {
                Self::check_same(&existing, req.capacity_range.as_ref(), &p, &modes, &source)?;
                return Ok(CreateVolumeResponse {
                    volume: Some(volume_of(&existing)),
                });
            }
            if let Some(s) = &source {
                if capacity < s.size {
                    return Err(Status::out_of_range(format!(
                        "capacity {capacity} is smaller than the source's {} bytes",
                        s.size
                    )));
                }
            }
            let given = tenant_from(&req.secrets)?;
            let source_is_tenant = source
                .as_ref()
                .is_some_and(|s| is_tenant_wrapped(&s.head.wrapped));
            if let Some(secret_name) = &p.tenant_key_secret {
                if given.is_none() {
                    return Err(Status::invalid_argument(format!(
                        "secrets: the StorageClass names tenant key secret {secret_name:?} but the request carries no {:?} entry",
                        params::SECRET_TENANT_KEY
                    )));
                }
            }
            // A clone keeps its source's tenant: the request must carry the
            // very key the source is protected by.
            let tenant = if p.tenant_key_secret.is_some() || source_is_tenant {
                given.as_ref()
            } else {
                None
            };
            let id = BucketId::generate()
                .map_err(|e| Status::internal(e.to_string()))?
                .to_hex();
            let (source_head, source_wrapped_key) = match &source {
                Some(s) => {
                    s.head
                        .open(&self.kek, tenant, &format!("the source of volume {name:?}"))?;
                    let head = s.head.head.clone();
                    let to = WrapContext::clone_source(&id, &s.bucket, head.as_deref().unwrap_or(""));
                    let key = s.head.rewrap(&self.kek, &to, "the source's key")?;
                    (head, Some(key.0))
                }
                None => (None, None),
            };
            let secret = SecretKey::generate().map_err(|e| Status::internal(e.to_string()))?;
            let ctx = WrapContext::volume(&id);
            let wrapped = wrap_layered(&self.kek, tenant, &secret, &ctx, &ctx)
                .map_err(|e| Status::internal(e.to_string()))?;
            let tenant_wrapped = tenant
                .map(|t| t.wrap_for(&secret, &ctx).map(|w| w.0))
                .transpose()
                .map_err(|e| Status::internal(e.to_string()))?;
            let new = NewVolume {
                id,
                name: name.to_string(),
                capacity_bytes: capacity,
                parameters: p.canonical.clone(),
                access_modes: serde_json::to_string(&modes).expect("ints serialize"),
                chunk_size: p.chunk_size as i32,
                wrapped_key: wrapped.0,
                tenant_wrapped_key: tenant_wrapped,
                source_snapshot_id: source.as_ref().and_then(|s| s.snapshot_id.clone()),
                source_volume_id: source.as_ref().map(|s| s.bucket.clone()),
                source_head,
                source_wrapped_key,
                mutable_parameters: mutable,
            };
            let volume = match self.db.insert_volume(&new).await? {
                Some(v) => {
                    // What blind replicas fetch and serve by (it opens nothing).
                    let proof = crate::db::replicas::wrap_proof_key(
                        &self.kek,
                        &v.id,
                        &crate::bucket::ProofKey::of(&secret),
                    )
                    .map_err(|e| Status::internal(e.to_string()))?;
                    self.db.ensure_proof_key(&v.id, &proof).await?;
                    v
                }
                None => {
                    // Another request with this name won the race: answer as an idempotent repeat.
                    let existing = self
                        .db
                        .volume_by_name(name)
                        .await?
                        .ok_or_else(|| Status::aborted("volume name conflict; retry"))?;
                    Self::check_same(&existing, req.capacity_range.as_ref(), &p, &modes, &source)?;
                    existing
                }
            };
            Ok(CreateVolumeResponse {
                volume: Some(volume_of(&volume)),
            })
        })
        .await
    }

    async fn delete_volume(
        &self,
        request: Request<DeleteVolumeRequest>,
    ) -> Result<Response<DeleteVolumeResponse>, Status> {
        let req = request.into_inner();
        traced("DeleteVolume", &req.volume_id.clone(), async move {
            let id = require_id(&req.volume_id, "volume_id")?;
            if self.db.delete_volume(id).await? {
                tracing::info!("volume deleted; blobs queued for collection on the nodes");
            }
            Ok(DeleteVolumeResponse {})
        })
        .await
    }

    async fn controller_publish_volume(
        &self,
        _: Request<ControllerPublishVolumeRequest>,
    ) -> Result<Response<ControllerPublishVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "jax-csi needs no attach step (attachRequired: false)",
        ))
    }

    async fn controller_unpublish_volume(
        &self,
        _: Request<ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<ControllerUnpublishVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "jax-csi needs no attach step (attachRequired: false)",
        ))
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<ValidateVolumeCapabilitiesResponse>, Status> {
        let req = request.into_inner();
        traced(
            "ValidateVolumeCapabilities",
            &req.volume_id.clone(),
            async move {
                let id = require_id(&req.volume_id, "volume_id")?;
                if req.volume_capabilities.is_empty() {
                    return Err(Status::invalid_argument("volume_capabilities is required"));
                }
                let vol = self
                    .db
                    .volume_by_id(id)
                    .await?
                    .ok_or_else(|| Status::not_found(format!("volume {id} does not exist")))?;
                let unconfirmed = |message: String| ValidateVolumeCapabilitiesResponse {
                    confirmed: None,
                    message,
                };
                let modes = match check_capabilities(&req.volume_capabilities) {
                    Ok(m) => m,
                    Err(s) => return Ok(unconfirmed(s.message().to_string())),
                };
                let stored = vol.modes();
                if let Some(m) = modes.iter().find(|m| !stored.contains(m)) {
                    return Ok(unconfirmed(format!(
                        "access mode {m} was not requested when the volume was created (it has {stored:?})"
                    )));
                }
                if !req.parameters.is_empty()
                    && parse_parameters(&req.parameters).map(|p| p.canonical).ok()
                        != Some(vol.parameters)
                {
                    return Ok(unconfirmed("parameters differ from the volume's".into()));
                }
                if !req.mutable_parameters.is_empty() {
                    let asked = parse_mutable(&req.mutable_parameters)?;
                    if asked != vol.mutable_parameters {
                        return Ok(unconfirmed(
                            "mutable parameters differ from the volume's".into(),
                        ));
                    }
                }
                Ok(ValidateVolumeCapabilitiesResponse {
                    confirmed: Some(validate_volume_capabilities_response::Confirmed {
                        volume_context: req.volume_context,
                        volume_capabilities: req.volume_capabilities,
                        parameters: req.parameters,
                        mutable_parameters: req.mutable_parameters,
                    }),
                    message: String::new(),
                })
            },
        )
        .await
    }

    async fn list_volumes(
        &self,
        request: Request<ListVolumesRequest>,
    ) -> Result<Response<ListVolumesResponse>, Status> {
        let req = request.into_inner();
        traced("ListVolumes", "", async move {
            let after = parse_token(&req.starting_token)?;
            let limit = page_size(req.max_entries, MAX_PAGE)?;
            let mut rows = self.db.list_volumes(after, limit + 1).await?;
            let next_token = if rows.len() as i64 > limit {
                rows.truncate(limit as usize);
                rows.last().map(|v| v.seq.to_string()).unwrap_or_default()
            } else {
                String::new()
            };
            let ids: Vec<String> = rows.iter().map(|v| v.id.clone()).collect();
            let mut published = self.db.published_nodes(&ids).await?;
            let mut states: HashMap<String, Vec<(String, String, Option<String>)>> = HashMap::new();
            for (v, n, s, m) in self.db.mount_states_of(&ids).await? {
                states.entry(v).or_default().push((n, s, m));
            }
            let health = self
                .db
                .replica_health(Some(&ids), self.replica_timeout_secs)
                .await?;
            let entries = rows
                .iter()
                .map(|v| list_volumes_response::Entry {
                    volume: Some(volume_of(v)),
                    status: Some(list_volumes_response::VolumeStatus {
                        published_node_ids: published.remove(&v.id).unwrap_or_default(),
                        volume_condition: Some(condition_from(
                            states.get(&v.id).map(Vec::as_slice).unwrap_or(&[]),
                            health.get(&v.id),
                        )),
                    }),
                })
                .collect();
            Ok(ListVolumesResponse {
                entries,
                next_token,
            })
        })
        .await
    }

    async fn get_capacity(
        &self,
        request: Request<GetCapacityRequest>,
    ) -> Result<Response<GetCapacityResponse>, Status> {
        let req = request.into_inner();
        traced("GetCapacity", "", async move {
            for cap in &req.volume_capabilities {
                if params::check_capability(cap).is_err() {
                    // Capabilities we cannot serve have no capacity.
                    return Ok(GetCapacityResponse {
                        available_capacity: 0,
                        maximum_volume_size: Some(0),
                        minimum_volume_size: Some(params::MIN_CAPACITY),
                    });
                }
            }
            if !req.parameters.is_empty() {
                parse_parameters(&req.parameters)?;
            }
            // A volume lives whole on each node that holds it: what fits is
            // the free space of the roomiest node (each node reports its own).
            let free = self.db.largest_free_space(FRESH_NODE_SECS).await?;
            Ok(GetCapacityResponse {
                available_capacity: free,
                maximum_volume_size: Some(free.min(params::MAX_CAPACITY)),
                minimum_volume_size: Some(params::MIN_CAPACITY),
            })
        })
        .await
    }

    async fn controller_get_capabilities(
        &self,
        _: Request<ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<ControllerGetCapabilitiesResponse>, Status> {
        use rpc::Type as T;
        let capabilities = [
            T::CreateDeleteVolume,
            T::ListVolumes,
            T::GetCapacity,
            T::CreateDeleteSnapshot,
            T::ListSnapshots,
            T::CloneVolume,
            T::ExpandVolume,
            T::ListVolumesPublishedNodes,
            T::VolumeCondition,
            T::GetVolume,
            T::SingleNodeMultiWriter,
            T::ModifyVolume,
        ]
        .into_iter()
        .map(|t| ControllerServiceCapability {
            r#type: Some(controller_service_capability::Type::Rpc(
                controller_service_capability::Rpc { r#type: t as i32 },
            )),
        })
        .collect();
        Ok(Response::new(ControllerGetCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn create_snapshot(
        &self,
        request: Request<CreateSnapshotRequest>,
    ) -> Result<Response<CreateSnapshotResponse>, Status> {
        let req = request.into_inner();
        traced(
            "CreateSnapshot",
            &req.source_volume_id.clone(),
            async move {
                let source = require_id(&req.source_volume_id, "source_volume_id")?;
                let name = require_id(&req.name, "name")?;
                params::check_no_parameters(&req.parameters)?;
                let snap = match self.db.snapshot_by_name(name).await? {
                    Some(existing) => {
                        if existing.source_volume_id != source {
                            return Err(Status::already_exists(format!(
                                "snapshot {name:?} exists for another source volume"
                            )));
                        }
                        // The CO asks again until ready_to_use: maybe now.
                        self.refresh_snapshot(existing).await?
                    }
                    None => {
                        let vol = self.db.volume_by_id(source).await?.ok_or_else(|| {
                            Status::not_found(format!("source volume {source} does not exist"))
                        })?;
                        self.take_snapshot(&vol, name, None, None).await?
                    }
                };
                Ok(CreateSnapshotResponse {
                    snapshot: Some(snapshot_of(&snap)),
                })
            },
        )
        .await
    }

    async fn delete_snapshot(
        &self,
        request: Request<DeleteSnapshotRequest>,
    ) -> Result<Response<DeleteSnapshotResponse>, Status> {
        let req = request.into_inner();
        traced("DeleteSnapshot", "", async move {
            let id = require_id(&req.snapshot_id, "snapshot_id")?;
            self.db.delete_snapshot(id).await?;
            Ok(DeleteSnapshotResponse {})
        })
        .await
    }

    async fn list_snapshots(
        &self,
        request: Request<ListSnapshotsRequest>,
    ) -> Result<Response<ListSnapshotsResponse>, Status> {
        let req = request.into_inner();
        traced("ListSnapshots", &req.source_volume_id.clone(), async move {
            let after = parse_token(&req.starting_token)?;
            let limit = page_size(req.max_entries, MAX_PAGE)?;
            // Filters are optional; one given must be a valid id.
            let id = (!req.snapshot_id.is_empty())
                .then(|| require_id(&req.snapshot_id, "snapshot_id"))
                .transpose()?;
            let source = (!req.source_volume_id.is_empty())
                .then(|| require_id(&req.source_volume_id, "source_volume_id"))
                .transpose()?;
            let mut rows = self.db.list_snapshots(id, source, after, limit + 1).await?;
            let next_token = if rows.len() as i64 > limit {
                rows.truncate(limit as usize);
                rows.last().map(|s| s.seq.to_string()).unwrap_or_default()
            } else {
                String::new()
            };
            Ok(ListSnapshotsResponse {
                entries: rows
                    .iter()
                    .map(|s| list_snapshots_response::Entry {
                        snapshot: Some(snapshot_of(s)),
                    })
                    .collect(),
                next_token,
            })
        })
        .await
    }

    async fn controller_expand_volume(
        &self,
        request: Request<ControllerExpandVolumeRequest>,
    ) -> Result<Response<ControllerExpandVolumeResponse>, Status> {
        let req = request.into_inner();
        traced(
            "ControllerExpandVolume",
            &req.volume_id.clone(),
            async move {
                let id = require_id(&req.volume_id, "volume_id")?;
                let range = require_some(&req.capacity_range, "capacity_range")?;
                if let Some(cap) = &req.volume_capability {
                    params::check_capability(cap)?;
                }
                let want = capacity_for(Some(range))?;
                let vol = self
                    .db
                    .volume_by_id(id)
                    .await?
                    .ok_or_else(|| Status::not_found(format!("volume {id} does not exist")))?;
                let capacity = want.max(vol.capacity_bytes);
                if range.limit_bytes > 0 && capacity > range.limit_bytes {
                    return Err(Status::out_of_range(format!(
                        "volume is already {} bytes, above limit_bytes {}",
                        vol.capacity_bytes, range.limit_bytes
                    )));
                }
                if !self.db.set_volume_capacity(id, capacity).await? {
                    return Err(Status::not_found(format!("volume {id} does not exist")));
                }
                // The quota of each running mount is raised by NodeExpandVolume,
                // which kubelet calls on every node that has it staged.
                Ok(ControllerExpandVolumeResponse {
                    capacity_bytes: capacity,
                    node_expansion_required: true,
                })
            },
        )
        .await
    }

    async fn controller_get_volume(
        &self,
        request: Request<ControllerGetVolumeRequest>,
    ) -> Result<Response<ControllerGetVolumeResponse>, Status> {
        let req = request.into_inner();
        traced("ControllerGetVolume", &req.volume_id.clone(), async move {
            let id = require_id(&req.volume_id, "volume_id")?;
            let vol = self
                .db
                .volume_by_id(id)
                .await?
                .ok_or_else(|| Status::not_found(format!("volume {id} does not exist")))?;
            let published_node_ids = self.db.publishing_nodes(id).await?;
            let states = self.db.mount_states(id).await?;
            let health = self
                .db
                .replica_health(Some(&[id.to_string()]), self.replica_timeout_secs)
                .await?;
            Ok(ControllerGetVolumeResponse {
                volume: Some(volume_of(&vol)),
                status: Some(controller_get_volume_response::VolumeStatus {
                    published_node_ids,
                    volume_condition: Some(condition_from(&states, health.get(id))),
                }),
            })
        })
        .await
    }

    async fn controller_modify_volume(
        &self,
        request: Request<ControllerModifyVolumeRequest>,
    ) -> Result<Response<ControllerModifyVolumeResponse>, Status> {
        let req = request.into_inner();
        traced(
            "ControllerModifyVolume",
            &req.volume_id.clone(),
            async move {
                let id = require_id(&req.volume_id, "volume_id")?;
                // An empty mutable_parameters (the spec calls the field
                // REQUIRED, but proto3 cannot tell empty from missing) asks
                // for no change: the volume must exist, nothing is modified
                // (SPs "MUST NOT modify volumes based on the absence of
                // keys"); csi-sanity expects OK, or NOT_FOUND.
                parse_mutable(&req.mutable_parameters)?;
                let vol = self
                    .db
                    .volume_by_id(id)
                    .await?
                    .ok_or_else(|| Status::not_found(format!("volume {id} does not exist")))?;
                let mut merged: HashMap<String, String> =
                    serde_json::from_str(&vol.mutable_parameters).unwrap_or_default();
                merged.extend(req.mutable_parameters);
                let json = parse_mutable(&merged)?;
                let wanted = crate::db::replicas::replicas_of(&vol.parameters, &json);
                let waits = crate::db::replicas::sync_replicas_of(&vol.parameters, &json);
                if waits >= wanted {
                    return Err(Status::invalid_argument(format!(
                        "mutable parameters: the volume's fsyncs would wait for {waits} other \
                         replicas (syncReplicas) of {wanted} (replicas), so replicas must be at \
                         least {} or syncReplicas at most {}",
                        waits + 1,
                        wanted.saturating_sub(1)
                    )));
                }
                if !self.db.set_mutable_parameters(id, &json).await? {
                    return Err(Status::not_found(format!("volume {id} does not exist")));
                }
                tracing::info!(parameters = %json, "volume modified: the leader places replicas within seconds, nodes that stage the volume apply syncReplicas within seconds and retention at their next pruning");
                Ok(ControllerModifyVolumeResponse {})
            },
        )
        .await
    }
}
