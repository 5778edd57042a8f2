//! The CSI GroupController service: snapshots of several volumes taken
//! together. Each member is an ordinary O(1) snapshot; the group's heads
//! are read in one statement, so they are the heads Postgres knew at one
//! point in time.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::controller::{snapshot_of, ControllerService};
use super::params::check_no_parameters;
use super::proto::group_controller_server::GroupController;
use super::proto::group_controller_service_capability::{self, rpc};
use super::proto::*;
use super::status::{require_id, traced};
use crate::db::GroupSnapshotRecord;
use crate::db::HeadKey;

pub struct GroupControllerService {
    controller: Arc<ControllerService>,
}

impl GroupControllerService {
    pub fn new(controller: Arc<ControllerService>) -> Self {
        Self { controller }
    }

    async fn group_of(&self, g: &GroupSnapshotRecord) -> Result<VolumeGroupSnapshot, Status> {
        let mut snapshots = Vec::new();
        for s in self.controller.db().snapshots_of_group(&g.id).await? {
            snapshots.push(snapshot_of(&self.controller.refresh_snapshot(s).await?));
        }
        Ok(VolumeGroupSnapshot {
            group_snapshot_id: g.id.clone(),
            ready_to_use: snapshots.iter().all(|s| s.ready_to_use),
            snapshots,
            creation_time: Some(prost_types::Timestamp {
                seconds: g.created_secs,
                nanos: g.created_nanos,
            }),
        })
    }
}

#[tonic::async_trait]
impl GroupController for GroupControllerService {
    async fn group_controller_get_capabilities(
        &self,
        _: Request<GroupControllerGetCapabilitiesRequest>,
    ) -> Result<Response<GroupControllerGetCapabilitiesResponse>, Status> {
        Ok(Response::new(GroupControllerGetCapabilitiesResponse {
            capabilities: vec![GroupControllerServiceCapability {
                r#type: Some(group_controller_service_capability::Type::Rpc(
                    group_controller_service_capability::Rpc {
                        r#type: rpc::Type::CreateDeleteGetVolumeGroupSnapshot as i32,
                    },
                )),
            }],
        }))
    }

    async fn create_volume_group_snapshot(
        &self,
        request: Request<CreateVolumeGroupSnapshotRequest>,
    ) -> Result<Response<CreateVolumeGroupSnapshotResponse>, Status> {
        let req = request.into_inner();
        traced("CreateVolumeGroupSnapshot", &req.name.clone(), async move {
            let name = require_id(&req.name, "name")?;
            if req.source_volume_ids.is_empty() {
                return Err(Status::invalid_argument("source_volume_ids is required"));
            }
            for id in &req.source_volume_ids {
                require_id(id, "source_volume_ids")?;
            }
            check_no_parameters(&req.parameters)?;
            let mut ids = req.source_volume_ids.clone();
            ids.sort();
            ids.dedup();
            let db = self.controller.db();
            if let Some(existing) = db.group_snapshot_by_name(name).await? {
                let mut have: Vec<String> = db
                    .snapshots_of_group(&existing.id)
                    .await?
                    .into_iter()
                    .map(|s| s.source_volume_id)
                    .collect();
                have.sort();
                if have != ids {
                    return Err(Status::already_exists(format!(
                        "group snapshot {name:?} exists for another set of volumes"
                    )));
                }
                return Ok(CreateVolumeGroupSnapshotResponse {
                    group_snapshot: Some(self.group_of(&existing).await?),
                });
            }
            let mut vols = Vec::new();
            for id in &ids {
                vols.push(db.volume_by_id(id).await?.ok_or_else(|| {
                    Status::not_found(format!("source volume {id} does not exist"))
                })?);
            }
            // Every member's head as of one read.
            let mut heads = db.latest_heads(&ids).await?;
            let group_id = format!("group-{}", uuid::Uuid::new_v4());
            let group = match db.insert_group_snapshot(&group_id, name).await? {
                Some(g) => g,
                None => {
                    return Err(Status::aborted(format!(
                        "group snapshot {name:?} is being created by another request; retry"
                    )))
                }
            };
            for vol in &vols {
                let head = match heads.remove(&vol.id) {
                    Some(h) => HeadKey::of_volume(vol, Some(h)),
                    None => HeadKey::of_clone_source(vol)
                        .unwrap_or_else(|| HeadKey::of_volume(vol, None)),
                };
                let member = format!("{name}-{}", vol.id);
                self.controller
                    .take_snapshot(vol, &member, Some(&group.id), Some(head))
                    .await?;
            }
            Ok(CreateVolumeGroupSnapshotResponse {
                group_snapshot: Some(self.group_of(&group).await?),
            })
        })
        .await
    }

    async fn delete_volume_group_snapshot(
        &self,
        request: Request<DeleteVolumeGroupSnapshotRequest>,
    ) -> Result<Response<DeleteVolumeGroupSnapshotResponse>, Status> {
        let req = request.into_inner();
        traced("DeleteVolumeGroupSnapshot", "", async move {
            let id = require_id(&req.group_snapshot_id, "group_snapshot_id")?;
            let db = self.controller.db();
            if db.group_snapshot_by_id(id).await?.is_some() {
                let members: Vec<String> = db
                    .snapshots_of_group(id)
                    .await?
                    .into_iter()
                    .map(|s| s.id)
                    .collect();
                if let Some(stray) = req.snapshot_ids.iter().find(|s| !members.contains(s)) {
                    return Err(Status::invalid_argument(format!(
                        "snapshot_ids: {stray} is not a member of group snapshot {id}"
                    )));
                }
                db.delete_group_snapshot(id).await?;
            }
            Ok(DeleteVolumeGroupSnapshotResponse {})
        })
        .await
    }

    async fn get_volume_group_snapshot(
        &self,
        request: Request<GetVolumeGroupSnapshotRequest>,
    ) -> Result<Response<GetVolumeGroupSnapshotResponse>, Status> {
        let req = request.into_inner();
        traced("GetVolumeGroupSnapshot", "", async move {
            let id = require_id(&req.group_snapshot_id, "group_snapshot_id")?;
            let g = self
                .controller
                .db()
                .group_snapshot_by_id(id)
                .await?
                .ok_or_else(|| Status::not_found(format!("group snapshot {id} does not exist")))?;
            Ok(GetVolumeGroupSnapshotResponse {
                group_snapshot: Some(self.group_of(&g).await?),
            })
        })
        .await
    }
}
