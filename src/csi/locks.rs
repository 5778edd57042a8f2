//! One operation per volume at a time on this node: a second concurrent
//! request for a volume gets ABORTED (the CO retries it with back-off), as
//! the CSI spec suggests, instead of two stages or unstages racing.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tonic::Status;

#[derive(Clone, Default)]
pub struct VolumeLocks {
    held: Arc<Mutex<HashSet<String>>>,
}

/// Held while a request works on its volume; released on drop.
pub struct VolumeGuard {
    held: Arc<Mutex<HashSet<String>>>,
    volume: String,
}

impl VolumeLocks {
    pub fn lock(&self, volume: &str) -> Result<VolumeGuard, Status> {
        if !self.held.lock().unwrap().insert(volume.to_string()) {
            return Err(Status::aborted(format!(
                "an operation on volume {volume} is already in progress on this node; retry"
            )));
        }
        Ok(VolumeGuard {
            held: self.held.clone(),
            volume: volume.to_string(),
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
        let g = locks.lock("v").unwrap();
        assert_eq!(locks.lock("v").err().unwrap().code(), tonic::Code::Aborted);
        assert!(locks.lock("w").is_ok());
        drop(g);
        assert!(locks.lock("v").is_ok());
    }
}
