//! Replicas as buckets on disk, with no mounts and no node agent: what a
//! sync engine runs with in tools (`jax-csi bench rebuild`) and tests.

use std::sync::Arc;

use super::{ApplyError, Replicas};
use crate::bucket::{BucketId, ConflictFile, StateDir};
use crate::crypto::{Kek, NodeId};
use crate::store::Hash;

/// Heads merged into the bucket on disk; members granted in a new version.
pub struct OnDisk {
    pub state: Arc<StateDir>,
    pub kek: Arc<Kek>,
}

impl Replicas for OnDisk {
    fn apply_head(&self, bucket: &BucketId, head: &Hash) -> Result<Option<Hash>, ApplyError> {
        let b = self.state.open_bucket(bucket, &self.kek)?;
        let mut m = b.mount()?;
        let r = m.merge_from(head, &ConflictFile)?;
        let v = r.version.unwrap_or(*head);
        Ok((v != *head).then_some(v))
    }

    fn grant(&self, bucket: &BucketId, node: &NodeId) -> Result<Hash, ApplyError> {
        let b = self.state.open_bucket(bucket, &self.kek)?;
        let mut m = b.mount()?;
        m.grant(node)?;
        Ok(m.save()?.hash)
    }
}
