//! One operation per volume at a time on this node: a second concurrent
//! request for a volume is refused as busy (the CSI layer answers ABORTED,
//! and the CO retries it with back-off, as the CSI spec suggests), instead
//! of two stages or unstages racing. Background work (the orphan sweep)
//! takes the same locks.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use super::NodeError;
use crate::bucket::BucketId;

#[derive(Clone, Default)]
pub struct VolumeLocks {
    held: Arc<Mutex<HashSet<BucketId>>>,
}

/// Held while a request works on its volume; released on drop.
pub struct VolumeGuard {
    held: Arc<Mutex<HashSet<BucketId>>>,
    volume: BucketId,
}

impl VolumeLocks {
    pub fn lock(&self, volume: &BucketId) -> Result<VolumeGuard, NodeError> {
        if !self.held.lock().unwrap().insert(*volume) {
            return Err(NodeError::Busy(*volume));
        }
        Ok(VolumeGuard {
            held: self.held.clone(),
            volume: *volume,
        })
    }
}

impl Drop for VolumeGuard {
    fn drop(&mut self) {
        self.held.lock().unwrap().remove(&self.volume);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_operation_is_aborted_until_the_first_ends() {
        let locks = VolumeLocks::default();
        let (v, w) = (BucketId([1; 16]), BucketId([2; 16]));
        let g = locks.lock(&v).unwrap();
        assert!(matches!(locks.lock(&v), Err(NodeError::Busy(b)) if b == v));
        assert!(locks.lock(&w).is_ok());
        drop(g);
        assert!(locks.lock(&v).is_ok());
    }
}
