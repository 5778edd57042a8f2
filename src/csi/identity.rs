//! The CSI Identity service: who we are, what we offer, whether we are ready.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::proto::identity_server::Identity;
use super::proto::plugin_capability::{self, service, volume_expansion};
use super::proto::*;

/// The CSI driver name.
pub const DRIVER_NAME: &str = "csi.jax.dev";

/// A readiness check (the controller asks Postgres; the node its own state).
pub type ReadyCheck = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

pub struct IdentityService {
    controller: bool,
    ready: ReadyCheck,
}

impl IdentityService {
    pub fn new(controller: bool, ready: ReadyCheck) -> Self {
        Self { controller, ready }
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: DRIVER_NAME.into(),
            vendor_version: env!("CARGO_PKG_VERSION").into(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        let mut capabilities = vec![PluginCapability {
            r#type: Some(plugin_capability::Type::VolumeExpansion(
                plugin_capability::VolumeExpansion {
                    r#type: volume_expansion::Type::Online as i32,
                },
            )),
        }];
        if self.controller {
            for t in [
                service::Type::ControllerService,
                service::Type::GroupControllerService,
            ] {
                capabilities.push(PluginCapability {
                    r#type: Some(plugin_capability::Type::Service(
                        plugin_capability::Service { r#type: t as i32 },
                    )),
                });
            }
        }
        Ok(Response::new(GetPluginCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        let ready = (self.ready)().await;
        Ok(Response::new(ProbeResponse { ready: Some(ready) }))
    }
}
