//! The CSI gRPC services (tonic) and what they share.

/// Types and service stubs generated from `proto/csi/csi.proto`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("csi.v1");
}

pub mod controller;
pub mod identity;
pub mod node;
pub mod node_sync;
pub mod params;
pub mod run;
pub mod server;
pub mod status;
