//! The CSI gRPC services (tonic) and what they share. They validate
//! requests and translate them into calls on the controller's records and
//! the node agent (`crate::node`); `status.rs` maps every failure to its code.

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
pub mod node;
pub mod params;
pub mod paths;
pub mod run;
pub mod server;
pub mod status;
