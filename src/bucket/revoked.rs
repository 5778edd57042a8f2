//! Identities removed from the cluster (`jax-csi node remove`): no version
//! this node writes shares a bucket with them (a merge brings no share of
//! theirs back either), and the sync refuses them. Kept in
//! `<state>/REVOKED`, one hex node id a line, so a node that restarts
//! without Postgres still knows.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use super::error::{BucketError, Result};
use crate::crypto::NodeId;

#[derive(Debug)]
pub struct Revoked {
    path: PathBuf,
    set: RwLock<HashSet<NodeId>>,
}

impl Revoked {
    /// The list kept under state dir `root` (empty when there is none).
    pub(super) fn load(root: &Path) -> Result<Self> {
        Self::at(&root.join("REVOKED"))
    }

    /// A list kept at `path` (its file need not exist yet).
    pub fn at(path: &Path) -> Result<Self> {
        let path = path.to_path_buf();
        let set = match std::fs::read_to_string(&path) {
            Ok(text) => text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| {
                    NodeId::from_hex(l.trim()).map_err(|_| BucketError::Format {
                        what: "REVOKED",
                        reason: format!("{l:?} is not a node id"),
                    })
                })
                .collect::<Result<HashSet<_>>>()?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashSet::new(),
            Err(e) => return Err(BucketError::io(&path)(e)),
        };
        Ok(Self {
            path,
            set: RwLock::new(set),
        })
    }

    pub fn contains(&self, node: &NodeId) -> bool {
        self.set
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(node)
    }

    pub fn all(&self) -> HashSet<NodeId> {
        self.set.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Add `nodes` (durably); returns those that were not listed before.
    pub fn add(&self, nodes: impl IntoIterator<Item = NodeId>) -> Result<Vec<NodeId>> {
        let mut set = self.set.write().unwrap_or_else(|e| e.into_inner());
        let new: Vec<NodeId> = nodes.into_iter().filter(|n| set.insert(*n)).collect();
        if !new.is_empty() {
            let mut lines: Vec<String> = set.iter().map(NodeId::to_hex).collect();
            lines.sort();
            let text = lines.join("\n") + "\n";
            crate::durable::write_atomic(&self.path, text.as_bytes(), 0o600)
                .map_err(BucketError::io(&self.path))?;
        }
        Ok(new)
    }
}
