//! The node agent's Kubernetes tasks (only with an API server): its Node's
//! labels into Postgres, Events on claims and pods for what users must see,
//! and the removal of pod targets whose pod is gone.
//!
//! Pod targets are swept here, not by the controller leader: only this node
//! can unmount them, and it holds the pod each target was published for.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use super::locks::VolumeLocks;
use crate::bucket::BucketId;
use crate::db::Db;
use crate::fuse::{MountManager, Notice, PodRef};
use crate::k8s::events::{EventType, Involved, Recorder};

/// What the node's Kubernetes tasks need.
#[derive(Clone)]
pub struct NodeK8s {
    pub client: kube::Client,
    /// How long a target's pod must be gone before the target is removed.
    pub orphan_grace: Duration,
    /// How often pods of targets are checked.
    pub orphan_every: Duration,
}

/// Read this node's labels once the API and Postgres answer; store them.
pub async fn label_node(client: kube::Client, db: Db, node_id: String) {
    loop {
        let done = async {
            let labels = crate::k8s::node_labels(&client, &node_id)
                .await
                .map_err(|e| e.to_string())?;
            let json = serde_json::to_string(&labels).expect("labels serialize");
            let stored = db
                .set_node_labels(&node_id, &json)
                .await
                .map_err(|e| e.to_string())?;
            if stored {
                tracing::info!(node = %node_id, zone = crate::k8s::zone(&labels).unwrap_or("-"), labels = labels.len(), "node labels recorded");
            }
            Ok::<bool, String>(stored)
        }
        .await;
        match done {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => tracing::debug!(error = %e, "node labels not read yet"),
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// The claim a volume was provisioned for, from its Postgres record.
async fn claim_of(db: &Db, volume: &BucketId) -> Option<Involved> {
    crate::k8s::replicas::claim_of(db, &volume.to_hex()).await
}

fn pods_of(manager: &MountManager, volume: &BucketId) -> Vec<PodRef> {
    manager
        .get(volume)
        .map(|r| r.targets.into_iter().filter_map(|t| t.pod).collect())
        .unwrap_or_default()
}

/// The Event for a notice: (volume, type, reason, message, extra pod).
fn describe(notice: &Notice) -> (&BucketId, EventType, &'static str, String, Option<PodRef>) {
    match notice {
        Notice::ConflictsResolved { volume_id, copies } => (
            volume_id,
            EventType::Warning,
            "ConflictResolved",
            format!(
                "the same files were changed on two nodes at once: {copies} conflicting version(s) kept next to them as conflict copies (names with \".conflict-\")"
            ),
            None,
        ),
        Notice::MountRecovered { volume_id } => (
            volume_id,
            EventType::Normal,
            "MountRecovered",
            "the volume was mounted again after the node plugin restarted".into(),
            None,
        ),
        Notice::QuotaReached { volume_id } => (
            volume_id,
            EventType::Warning,
            "VolumeFull",
            "the volume is full: writes fail with ENOSPC until files are removed or the claim is expanded".into(),
            None,
        ),
        Notice::TargetRemoved {
            volume_id,
            path,
            pod,
        } => (
            volume_id,
            EventType::Warning,
            "OrphanedMountRemoved",
            format!(
                "the pod this volume was mounted for no longer exists; its mount {} was removed",
                path.display()
            ),
            pod.clone(),
        ),
    }
}

/// Turn the MountManager's notices into Events on the claim and its pods.
pub async fn post_events(
    recorder: Arc<Recorder>,
    db: Db,
    manager: MountManager,
    mut notices: broadcast::Receiver<Notice>,
) {
    loop {
        let notice = match notices.recv().await {
            Ok(n) => n,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "event recorder lagged; some events were not posted");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let (volume, kind, reason, message, extra) = describe(&notice);
        let mut about: Vec<Involved> = pods_of(&manager, volume)
            .iter()
            .chain(extra.iter())
            .map(|p| Involved::pod(&p.namespace, &p.name, &p.uid))
            .collect();
        if let Some(claim) = claim_of(&db, volume).await {
            about.push(claim);
        }
        for object in &about {
            match recorder.record(object, kind, reason, &message).await {
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(%volume, reason, object = %object.name, error = %e, "could not post an event")
                }
            }
        }
    }
}

/// Every `every`, ask the API whether each target's pod still exists; a
/// target whose pod has been gone for `grace` is unmounted and forgotten,
/// and a volume left with no target is unstaged (kubelet, which lost the
/// pod, will not). A pod lookup that fails (API down) changes nothing.
pub async fn sweep_targets(
    client: kube::Client,
    manager: MountManager,
    locks: VolumeLocks,
    grace: Duration,
    every: Duration,
) {
    let mut gone_since: HashMap<PathBuf, Instant> = HashMap::new();
    loop {
        tokio::time::sleep(every).await;
        let mut seen = Vec::new();
        for rec in manager.list() {
            for t in rec.targets.iter() {
                let Some(pod) = &t.pod else { continue };
                seen.push(t.path.clone());
                match crate::k8s::orphans::pod_exists(&client, &pod.namespace, &pod.name, &pod.uid)
                    .await
                {
                    Ok(true) => {
                        gone_since.remove(&t.path);
                    }
                    Ok(false) => {
                        let since = *gone_since.entry(t.path.clone()).or_insert_with(|| {
                            tracing::warn!(volume = %rec.volume_id, pod = %format!("{}/{}", pod.namespace, pod.name), target = %t.path.display(), "the pod of a mounted target is gone; removing the target after the grace period");
                            Instant::now()
                        });
                        if since.elapsed() >= grace {
                            remove_target(
                                &manager,
                                &locks,
                                &rec.volume_id,
                                t.path.clone(),
                                pod.clone(),
                            )
                            .await;
                            gone_since.remove(&t.path);
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "pod lookup failed; sweep skipped"),
                }
            }
        }
        gone_since.retain(|p, _| seen.contains(p));
    }
}

async fn remove_target(
    manager: &MountManager,
    locks: &VolumeLocks,
    volume: &BucketId,
    path: PathBuf,
    pod: PodRef,
) {
    let Ok(_guard) = locks.lock(volume) else {
        return; // A CSI request works on it; next sweep.
    };
    let m = manager.clone();
    let volume = *volume;
    let done = tokio::task::spawn_blocking(move || {
        m.remove_target(&volume, &path)?;
        crate::metrics::orphan_target_removed();
        tracing::warn!(%volume, target = %path.display(), pod = %format!("{}/{}", pod.namespace, pod.name), "removed a target whose pod is gone");

        m.notify(Notice::TargetRemoved {
            volume_id: volume,
            path,
            pod: Some(pod),
        });
        if m.get(&volume).is_ok_and(|r| r.targets.is_empty()) {
            m.delete(&volume)?;
            tracing::warn!(%volume, "unstaged: no pod uses it any more");
        }
        Ok::<(), crate::fuse::MountError>(())
    })
    .await;
    match done {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "removing an orphaned target failed"),
        Err(e) => tracing::warn!(error = %e, "removing an orphaned target failed"),
    }
}
