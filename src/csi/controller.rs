//! The CSI Controller service: volumes and snapshots as Postgres records.
//!
//! Volumes are buckets. The controller creates each bucket's secret and
//! stores it only wrapped (by the cluster KEK, and by a tenant KEK when the
//! StorageClass names one); the nodes create the bucket's first version when
//! they stage it. Snapshots record a head (O(1)); a clone records the tree it
//! starts from (O(1), no data copied). Every consistency rule lives in
//! Postgres constraints, so several replicas can serve at once.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::params::{self, capacity_fits, capacity_for, check_capabilities, parse_parameters};
use super::proto::controller_server::Controller;
use super::proto::controller_service_capability::{self, rpc};
use super::proto::volume_content_source::{self, SnapshotSource, VolumeSource};
use super::proto::*;
use super::status::{page_size, parse_token, require, require_some, traced};
use crate::bucket::BucketId;
use crate::crypto::{Kek, SecretKey};
use crate::db::{Db, NewSnapshot, NewVolume, SnapshotRecord, VolumeRecord};

/// The most entries one List call returns.
const MAX_PAGE: i64 = 1000;

pub struct ControllerService {
    db: Db,
    kek: Arc<Kek>,
}

impl ControllerService {
    pub fn new(db: Db, kek: Arc<Kek>) -> Self {
        Self { db, kek }
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

fn snapshot_of(s: &SnapshotRecord) -> Snapshot {
    Snapshot {
        size_bytes: s.size_bytes,
        snapshot_id: s.id.clone(),
        source_volume_id: s.source_volume_id.clone(),
        creation_time: Some(prost_types::Timestamp {
            seconds: s.created_secs,
            nanos: s.created_nanos,
        }),
        ready_to_use: true,
        group_snapshot_id: String::new(),
    }
}

/// Where a new volume's content comes from.
struct Source {
    snapshot_id: Option<String>,
    volume_id: Option<String>,
    head: Option<String>,
    wrapped_key: Option<Vec<u8>>,
    size: i64,
}

impl ControllerService {
    async fn resolve_source(
        &self,
        src: Option<&VolumeContentSource>,
    ) -> Result<Option<Source>, Status> {
        let Some(src) = src else { return Ok(None) };
        match &src.r#type {
            Some(volume_content_source::Type::Snapshot(s)) => {
                let id = require(&s.snapshot_id, "volume_content_source.snapshot.snapshot_id")?;
                let snap = self.db.snapshot_by_id(id).await?.ok_or_else(|| {
                    Status::not_found(format!("source snapshot {id} does not exist"))
                })?;
                Ok(Some(Source {
                    snapshot_id: Some(snap.id),
                    // The bucket whose versions the snapshot's head belongs to.
                    volume_id: Some(snap.source_volume_id),
                    head: snap.head,
                    wrapped_key: Some(snap.wrapped_key),
                    size: snap.size_bytes,
                }))
            }
            Some(volume_content_source::Type::Volume(v)) => {
                let id = require(&v.volume_id, "volume_content_source.volume.volume_id")?;
                let vol = self.db.volume_by_id(id).await?.ok_or_else(|| {
                    Status::not_found(format!("source volume {id} does not exist"))
                })?;
                let (head, wrapped_key) = self.current_head(&vol).await?;
                Ok(Some(Source {
                    snapshot_id: None,
                    volume_id: Some(vol.id),
                    head,
                    wrapped_key: Some(wrapped_key),
                    size: vol.capacity_bytes,
                }))
            }
            None => Err(Status::invalid_argument(
                "volume_content_source.type is required",
            )),
        }
    }

    /// A volume's current head and the wrapped key that opens it: the newest
    /// head a node reported, else (an untouched clone) the tree it started from.
    async fn current_head(&self, vol: &VolumeRecord) -> Result<(Option<String>, Vec<u8>), Status> {
        if let Some((head, _)) = self.db.latest_head(&vol.id).await? {
            return Ok((Some(head), vol.wrapped_key.clone()));
        }
        match (&vol.source_head, &vol.source_wrapped_key) {
            (Some(h), Some(k)) => Ok((Some(h.clone()), k.clone())),
            _ => Ok((None, vol.wrapped_key.clone())),
        }
    }

    fn tenant_kek(
        &self,
        p: &params::VolumeParams,
        secrets: &std::collections::HashMap<String, String>,
    ) -> Result<Option<Kek>, Status> {
        let Some(secret_name) = &p.tenant_key_secret else {
            return Ok(None);
        };
        let hex_key = secrets.get(params::SECRET_TENANT_KEY).ok_or_else(|| {
            Status::invalid_argument(format!(
                "secrets: the StorageClass names tenant key secret {secret_name:?} but the request carries no {:?} entry",
                params::SECRET_TENANT_KEY
            ))
        })?;
        let bytes = hex::decode(hex_key.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "secrets: {:?} must be 64 hex characters",
                    params::SECRET_TENANT_KEY
                ))
            })?;
        Ok(Some(Kek::new(SecretKey::from_bytes(bytes))))
    }

    /// Same name, compatible request: the existing volume; otherwise ALREADY_EXISTS.
    fn check_same(
        existing: &VolumeRecord,
        range: Option<&CapacityRange>,
        p: &params::VolumeParams,
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
        let (snap, vol) = match source {
            Some(s) => (s.snapshot_id.as_deref(), s.volume_id.as_deref()),
            None => (None, None),
        };
        if existing.source_snapshot_id.as_deref() != snap
            || existing.source_volume_id.as_deref() != vol
        {
            return Err(conflict("content source"));
        }
        Ok(())
    }

    async fn published(
        &self,
        ids: &[String],
    ) -> Result<std::collections::HashMap<String, Vec<String>>, Status> {
        let mut out: std::collections::HashMap<String, Vec<String>> = Default::default();
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT volume_id, node_id FROM mounts WHERE volume_id = ANY($1) AND status = 'running' ORDER BY node_id",
        )
        .bind(ids)
        .fetch_all(self.db.pool())
        .await
        .map_err(crate::db::DbError::from)?;
        for (v, n) in rows {
            out.entry(v).or_default().push(n);
        }
        Ok(out)
    }

    async fn condition(&self, volume_id: &str) -> Result<VolumeCondition, Status> {
        let states = self.db.mount_states(volume_id).await?;
        let bad: Vec<String> = states
            .iter()
            .filter(|(_, status, _)| status == "error")
            .map(|(node, _, msg)| format!("{node}: {}", msg.as_deref().unwrap_or("mount failed")))
            .collect();
        Ok(if bad.is_empty() {
            VolumeCondition {
                abnormal: false,
                message: "volume is healthy".into(),
            }
        } else {
            VolumeCondition {
                abnormal: true,
                message: format!("mount errors: {}", bad.join("; ")),
            }
        })
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
            let name = require(&req.name, "name")?;
            if name
                .chars()
                .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
            {
                return Err(Status::invalid_argument("name contains control characters"));
            }
            let modes = check_capabilities(&req.volume_capabilities)?;
            let p = parse_parameters(&req.parameters)?;
            let capacity = capacity_for(req.capacity_range.as_ref())?;
            let source = self
                .resolve_source(req.volume_content_source.as_ref())
                .await?;
            if let Some(existing) = self.db.volume_by_name(name).await? {
                Self::check_same(&existing, req.capacity_range.as_ref(), &p, &source)?;
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
            let tenant = self.tenant_kek(&p, &req.secrets)?;
            let secret = SecretKey::generate().map_err(|e| Status::internal(e.to_string()))?;
            let wrap = |k: &Kek| {
                k.wrap(&secret)
                    .map(|w| w.0)
                    .map_err(|e| Status::internal(e.to_string()))
            };
            let id = BucketId::generate()
                .map_err(|e| Status::internal(e.to_string()))?
                .to_hex();
            let new = NewVolume {
                id,
                name: name.to_string(),
                capacity_bytes: capacity,
                parameters: p.canonical.clone(),
                access_modes: serde_json::to_string(&modes).expect("ints serialize"),
                chunk_size: p.chunk_size as i32,
                wrapped_key: wrap(&self.kek)?,
                tenant_wrapped_key: tenant.as_ref().map(wrap).transpose()?,
                source_snapshot_id: source.as_ref().and_then(|s| s.snapshot_id.clone()),
                source_volume_id: source.as_ref().and_then(|s| s.volume_id.clone()),
                source_head: source.as_ref().and_then(|s| s.head.clone()),
                source_wrapped_key: source.as_ref().and_then(|s| s.wrapped_key.clone()),
            };
            let volume = match self.db.insert_volume(&new).await? {
                Some(v) => v,
                None => {
                    // Another request with this name won the race: answer as an idempotent repeat.
                    let existing = self
                        .db
                        .volume_by_name(name)
                        .await?
                        .ok_or_else(|| Status::aborted("volume name conflict; retry"))?;
                    Self::check_same(&existing, req.capacity_range.as_ref(), &p, &source)?;
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
            let id = require(&req.volume_id, "volume_id")?;
            if self.db.delete_volume(id).await? {
                tracing::info!("volume deleted; blobs queued for collection");
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
                let id = require(&req.volume_id, "volume_id")?;
                if req.volume_capabilities.is_empty() {
                    return Err(Status::invalid_argument("volume_capabilities is required"));
                }
                let vol = self
                    .db
                    .volume_by_id(id)
                    .await?
                    .ok_or_else(|| Status::not_found(format!("volume {id} does not exist")))?;
                if let Err(s) = check_capabilities(&req.volume_capabilities) {
                    return Ok(ValidateVolumeCapabilitiesResponse {
                        confirmed: None,
                        message: s.message().to_string(),
                    });
                }
                if !req.parameters.is_empty()
                    && parse_parameters(&req.parameters).map(|p| p.canonical).ok()
                        != Some(vol.parameters)
                {
                    return Ok(ValidateVolumeCapabilitiesResponse {
                        confirmed: None,
                        message: "parameters differ from the volume's".into(),
                    });
                }
                Ok(ValidateVolumeCapabilitiesResponse {
                    confirmed: Some(validate_volume_capabilities_response::Confirmed {
                        volume_context: req.volume_context,
                        volume_capabilities: req.volume_capabilities,
                        parameters: req.parameters,
                        mutable_parameters: Default::default(),
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
            let mut published = self.published(&ids).await?;
            let entries = rows
                .iter()
                .map(|v| list_volumes_response::Entry {
                    volume: Some(volume_of(v)),
                    status: Some(list_volumes_response::VolumeStatus {
                        published_node_ids: published.remove(&v.id).unwrap_or_default(),
                        volume_condition: None,
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
            let (total, largest) = self.db.node_capacity().await?;
            let used = self.db.provisioned_bytes().await?;
            Ok(GetCapacityResponse {
                available_capacity: (total - used).max(0),
                maximum_volume_size: Some(largest.min(params::MAX_CAPACITY)),
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
                let source = require(&req.source_volume_id, "source_volume_id")?;
                let name = require(&req.name, "name")?;
                if let Some(existing) = self.db.snapshot_by_name(name).await? {
                    if existing.source_volume_id != source {
                        return Err(Status::already_exists(format!(
                            "snapshot {name:?} exists for another source volume"
                        )));
                    }
                    return Ok(CreateSnapshotResponse {
                        snapshot: Some(snapshot_of(&existing)),
                    });
                }
                let vol = self.db.volume_by_id(source).await?.ok_or_else(|| {
                    Status::not_found(format!("source volume {source} does not exist"))
                })?;
                let (head, wrapped_key) = self.current_head(&vol).await?;
                let new = NewSnapshot {
                    id: format!("snap-{}", uuid::Uuid::new_v4()),
                    name: name.to_string(),
                    source_volume_id: vol.id.clone(),
                    head,
                    wrapped_key,
                    size_bytes: vol.capacity_bytes,
                };
                let snap = match self.db.insert_snapshot(&new).await? {
                    Some(s) => s,
                    None => {
                        let existing = self
                            .db
                            .snapshot_by_name(name)
                            .await?
                            .ok_or_else(|| Status::aborted("snapshot name conflict; retry"))?;
                        if existing.source_volume_id != source {
                            return Err(Status::already_exists(format!(
                                "snapshot {name:?} exists for another source volume"
                            )));
                        }
                        existing
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
            let id = require(&req.snapshot_id, "snapshot_id")?;
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
            let id = (!req.snapshot_id.is_empty()).then_some(req.snapshot_id.as_str());
            let source =
                (!req.source_volume_id.is_empty()).then_some(req.source_volume_id.as_str());
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
                let id = require(&req.volume_id, "volume_id")?;
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
                Ok(ControllerExpandVolumeResponse {
                    capacity_bytes: capacity,
                    node_expansion_required: false,
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
            let id = require(&req.volume_id, "volume_id")?;
            let vol = self
                .db
                .volume_by_id(id)
                .await?
                .ok_or_else(|| Status::not_found(format!("volume {id} does not exist")))?;
            let published_node_ids = self.db.publishing_nodes(id).await?;
            Ok(ControllerGetVolumeResponse {
                volume: Some(volume_of(&vol)),
                status: Some(controller_get_volume_response::VolumeStatus {
                    published_node_ids,
                    volume_condition: Some(self.condition(id).await?),
                }),
            })
        })
        .await
    }

    async fn controller_modify_volume(
        &self,
        _: Request<ControllerModifyVolumeRequest>,
    ) -> Result<Response<ControllerModifyVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "volume attributes cannot be modified (MODIFY_VOLUME is not advertised)",
        ))
    }
}
