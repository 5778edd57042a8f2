//! Events on a claim when its volume has fewer replicas in sync than it
//! asks for, and again when it is whole (#28). The controller's leader
//! looks every few seconds; a volume must stay under-replicated for two
//! looks in a row before the Warning, so a replica being placed or
//! catching up for a moment says nothing.

use std::collections::HashMap;

use kube::Client;

use super::events::{EventType, Involved, Recorder};
use crate::db::replicas::Health;
use crate::db::Db;

/// Looks in a row a volume must be under-replicated before the Warning.
const LOOKS_BEFORE_WARNING: u32 = 2;

pub struct ReplicaEvents {
    recorder: Recorder,
    /// Looks in a row each volume was under-replicated.
    under: HashMap<String, u32>,
    /// Volumes a Warning was posted for (and no Normal since).
    warned: HashMap<String, Involved>,
}

impl ReplicaEvents {
    pub fn new(client: Client, host: &str) -> Self {
        Self {
            recorder: Recorder::new(client, "jax-csi-controller", host),
            under: HashMap::new(),
            warned: HashMap::new(),
        }
    }

    /// One look at every volume's `health`.
    pub async fn observe(&mut self, db: &Db, health: &HashMap<String, Health>) {
        for (volume, h) in health {
            let (abnormal, message) = h.condition();
            if abnormal {
                let looks = self.under.entry(volume.clone()).or_default();
                *looks += 1;
                if *looks != LOOKS_BEFORE_WARNING || self.warned.contains_key(volume) {
                    continue;
                }
                let Some(claim) = claim_of(db, volume).await else {
                    continue;
                };
                self.post(
                    &claim,
                    EventType::Warning,
                    "VolumeUnderReplicated",
                    &message,
                )
                .await;
                self.warned.insert(volume.clone(), claim);
            } else {
                self.under.remove(volume);
                if let Some(claim) = self.warned.remove(volume) {
                    self.post(&claim, EventType::Normal, "VolumeReplicasInSync", &message)
                        .await;
                }
            }
        }
        self.under.retain(|v, _| health.contains_key(v));
        self.warned.retain(|v, _| health.contains_key(v));
    }

    async fn post(&self, claim: &Involved, kind: EventType, reason: &str, message: &str) {
        if let Err(e) = self.recorder.record(claim, kind, reason, message).await {
            tracing::warn!(claim = %claim.name, error = %e, "could not post an Event");
        }
    }
}

/// The claim a volume was provisioned for (the provisioner's
/// `--extra-create-metadata` parameters).
pub async fn claim_of(db: &Db, volume: &str) -> Option<Involved> {
    let v = db.volume_by_id(volume).await.ok()??;
    let params: HashMap<String, String> = serde_json::from_str(&v.parameters).ok()?;
    Some(Involved::claim(
        params.get("csi.storage.k8s.io/pvc/namespace")?,
        params.get("csi.storage.k8s.io/pvc/name")?,
    ))
}
