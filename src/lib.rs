//! jax-csi: a Kubernetes CSI driver for end-to-end encrypted buckets that
//! nodes keep in sync peer to peer. See ARCHITECTURE.md for the layers.

pub mod alloc;
pub mod bucket;
mod cache;
mod coalesce;
pub mod crash_point;
pub mod crypto;
pub mod csi;
pub mod db;
pub mod durable;
pub mod fuse;
pub mod k8s;
pub mod metrics;
pub mod netns;
pub mod node;
pub mod progress;
pub mod store;
pub mod sync;
