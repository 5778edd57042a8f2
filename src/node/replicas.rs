//! A volume's replica on this node brought to a new state: a head a peer
//! sent (merged in), an old version restored, a new member granted. All
//! three take one path: through the writable live mount when one runs (the
//! kernel is told exactly which inodes and names changed), else through the
//! bucket on disk, which a read-only live mount then follows.

use crate::bucket::{BucketError, BucketId, ConflictFile, Mount, Saved};
use crate::crypto::NodeId;
use crate::fuse::{MountManager, Notice, Serving};
use crate::store::Hash;

use super::NodeError;

/// What to do to a replica.
enum Change<'a> {
    /// Merge a verified head from a peer (a fast-forward when nothing is
    /// pending here, conflict copies for concurrent edits).
    Merge(&'a Hash),
    /// Make an old version the content of a new head.
    Restore(&'a Hash),
    /// Share the bucket with another node (a peer that proved the secret).
    Grant(&'a NodeId),
    /// Drop the shares of nodes removed from the cluster, and rotate the
    /// secret so they cannot open what is written after.
    DropRevoked,
    /// Rotate the bucket secret (an operator's request).
    RotateSecret,
}

impl Change<'_> {
    fn what(&self) -> &'static str {
        match self {
            Change::Merge(_) => "merging a synced head",
            Change::Restore(_) => "restoring a version",
            Change::Grant(_) => "sharing the volume with a node",
            Change::DropRevoked => "dropping removed nodes from the volume's members",
            Change::RotateSecret => "rotating the volume's secret",
        }
    }

    /// Apply the change to `m`; the number of conflict copies it made.
    /// A merge writes its version itself; the others leave it to a commit.
    fn apply(&self, m: &mut Mount) -> Result<usize, BucketError> {
        match self {
            Change::Merge(head) => Ok(m.merge_from(head, &ConflictFile)?.conflicts.len()),
            Change::Restore(version) => m.restore_version(version).map(|()| 0),
            Change::Grant(node) => m.grant(node).map(|()| 0),
            Change::DropRevoked => {
                m.drop_revoked_members()?;
                // The shares go whatever happens to the rotation.
                if let Err(e) = m.rotate_secret() {
                    tracing::error!(error = %e, "a removed node's share is dropped but the volume's secret was not rotated");
                }
                Ok(0)
            }
            Change::RotateSecret => m.rotate_secret().map(|_| 0),
        }
    }

    fn writes_its_version(&self) -> bool {
        matches!(self, Change::Merge(_))
    }
}

/// Changes a node's replicas, whether a pod mounts them here or not.
#[derive(Clone)]
pub struct Replicas {
    manager: MountManager,
}

impl Replicas {
    pub fn new(manager: MountManager) -> Self {
        Self { manager }
    }

    /// Bring `volume`'s replica to the verified head `head` (in the local
    /// store). Returns the local head after, when it is not `head` (a
    /// merge of ours, which the peers must hear of).
    pub fn apply_head(&self, volume: &BucketId, head: &Hash) -> Result<Option<Hash>, NodeError> {
        let started = std::time::Instant::now();
        let (saved, conflicts) = self.change(volume, Change::Merge(head))?;
        if conflicts > 0 {
            crate::metrics::conflicts_resolved(conflicts);
            self.manager.notify(Notice::ConflictsResolved {
                volume_id: *volume,
                copies: conflicts,
            });
            tracing::warn!(
                %volume,
                conflicts,
                "concurrent edits merged; the losing versions are kept as conflict copies"
            );
        }
        tracing::info!(
            %volume,
            incoming = %head,
            now = %saved.hash,
            ms = started.elapsed().as_millis() as u64,
            "applied a synced head"
        );
        self.manager.applied(volume, &saved);
        Ok((saved.hash != *head).then_some(saved.hash))
    }

    /// Make `version` the content of a new head of `volume`. A live mount's
    /// unsaved changes are committed first, so they stay in the history.
    /// Peers hear of the new head like of any commit.
    pub fn restore(&self, volume: &BucketId, version: &Hash) -> Result<Saved, NodeError> {
        self.change(volume, Change::Restore(version))
            .map(|(saved, _)| saved)
    }

    /// Share `volume` with `node` in a new version; returns that version.
    pub fn grant(&self, volume: &BucketId, node: &NodeId) -> Result<Hash, NodeError> {
        self.change(volume, Change::Grant(node))
            .map(|(saved, _)| saved.hash)
    }

    /// Write a version of `volume` without the shares of removed nodes;
    /// returns that version (the head as it was when there were none).
    pub fn drop_revoked(&self, volume: &BucketId) -> Result<Hash, NodeError> {
        self.change(volume, Change::DropRevoked)
            .map(|(saved, _)| saved.hash)
    }

    /// Rotate `volume`'s secret in a new version (see
    /// `Mount::rotate_secret`); returns that version.
    pub fn rotate_secret(&self, volume: &BucketId) -> Result<Saved, NodeError> {
        self.change(volume, Change::RotateSecret)
            .map(|(saved, _)| saved)
    }

    /// The one path every change takes (see the module docs); the head
    /// after it, and the conflict copies it made.
    fn change(&self, volume: &BucketId, change: Change) -> Result<(Saved, usize), NodeError> {
        let err = NodeError::bucket(format!("volume {volume}: {}", change.what()));
        match self.manager.serving(volume)? {
            Serving::Writable(live) => {
                if !change.writes_its_version() {
                    // Pending changes go into the history before this one.
                    live.live.commit_now().map_err(NodeError::bucket(format!(
                        "volume {volume}: committing before {}",
                        change.what()
                    )))?;
                }
                let conflicts = live
                    .change(change.writes_its_version(), |m| change.apply(m))
                    .map_err(err)?;
                let saved = if change.writes_its_version() {
                    live.live.lock().base()
                } else {
                    // The commit hook reports and announces the new head.
                    live.live.commit_now().map_err(NodeError::bucket(format!(
                        "volume {volume}: committing after {}",
                        change.what()
                    )))?
                };
                Ok((saved, conflicts))
            }
            serving => {
                let bucket = self.manager.open_bucket(volume)?;
                let (saved, conflicts) = (|| {
                    let mut m = bucket.mount()?;
                    let conflicts = change.apply(&mut m)?;
                    let saved = if change.writes_its_version() {
                        m.base()
                    } else {
                        let saved = m.save()?;
                        self.manager.committed(volume, &saved);
                        saved
                    };
                    Ok((saved, conflicts))
                })()
                .map_err(err)?;
                if let Serving::ReadOnly(live) = serving {
                    live.change(false, |m| m.follow(&saved.hash))
                        .map_err(NodeError::bucket(format!(
                            "volume {volume}: a read-only mount following its new head"
                        )))?;
                }
                Ok((saved, conflicts))
            }
        }
    }
}

impl crate::sync::Replicas for Replicas {
    fn apply_head(
        &self,
        bucket: &BucketId,
        head: &Hash,
    ) -> Result<Option<Hash>, crate::sync::ApplyError> {
        Replicas::apply_head(self, bucket, head).map_err(Into::into)
    }

    fn grant(&self, bucket: &BucketId, node: &NodeId) -> Result<Hash, crate::sync::ApplyError> {
        Replicas::grant(self, bucket, node).map_err(Into::into)
    }
}
