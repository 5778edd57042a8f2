//! The CSI gRPC services (tonic) and what they share.

/// Types and service stubs generated from `proto/csi/csi.proto`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("csi.v1");
}

/// The node's operator service (`proto/admin/admin.proto`).
#[allow(clippy::all, missing_docs)]
pub mod admin_proto {
    tonic::include_proto!("jaxcsi.admin.v1");
}

pub mod admin;
mod authority;
pub mod controller;
pub mod group_controller;
pub mod identity;
mod keys;
pub mod locks;
pub mod node;
pub mod node_gc;
pub mod node_k8s;
pub mod node_peers;
pub mod node_sync;
pub mod params;
pub mod paths;
pub mod run;
pub mod server;
mod stage;
pub mod status;
