//! Nodes Kubernetes no longer has: a node plugin registered in Postgres
//! whose Kubernetes Node was deleted (a machine retired, or taken out
//! because it was compromised) is removed as `jax-csi node remove` removes
//! it: every node refuses its sync identity, drops its key share and
//! rotates the secret of the volumes it held. The leader looks every few
//! seconds; a Node deleted under a live kubelet is registered again by it
//! within seconds, well inside the grace, so only a machine whose kubelet
//! is gone for the whole grace loses its node plugin's registration.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::ListParams;
use kube::{Api, Client};

use super::orphans::SweepError;
use super::K8sError;

/// The names of every Kubernetes Node (paged).
pub async fn node_names(client: &Client) -> Result<HashSet<String>, K8sError> {
    let api = Api::<Node>::all(client.clone());
    let mut names = HashSet::new();
    let mut params = ListParams::default().limit(500);
    loop {
        let page = api.list(&params).await?;
        names.extend(page.items.into_iter().filter_map(|n| n.metadata.name));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(names),
        }
    }
}

/// The leader's watch for deleted Nodes: when each registered node was
/// first seen missing from the Node list.
#[derive(Default)]
pub struct NodeSweep {
    missing_since: HashMap<String, Instant>,
}

impl NodeSweep {
    /// One pass: registered nodes missing from Kubernetes for `grace` are
    /// removed; their ids. A failed list, or one with no Node at all (an
    /// API that answers but is not the cluster's), changes nothing.
    pub async fn pass(
        &mut self,
        client: &Client,
        db: &crate::db::Db,
        grace: Duration,
    ) -> Result<Vec<String>, SweepError> {
        let names = node_names(client).await?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let registered: HashSet<String> = db
            .registered_nodes()
            .await?
            .into_iter()
            .map(|r| r.node_id)
            .collect();
        self.missing_since
            .retain(|id, _| registered.contains(id) && !names.contains(id));
        let mut removed = Vec::new();
        for id in registered.iter().filter(|id| !names.contains(*id)) {
            let since = *self.missing_since.entry(id.clone()).or_insert_with(|| {
                tracing::warn!(node = %id, grace_secs = grace.as_secs(), "a registered node has no Kubernetes Node; it is removed unless the Node comes back within the grace period");
                Instant::now()
            });
            if since.elapsed() < grace {
                continue;
            }
            if let Some(endpoint) = db.remove_node(id).await? {
                tracing::warn!(node = %id, %endpoint, "removed a node whose Kubernetes Node was deleted: every node refuses it and rotates the secrets of the volumes it held");
                removed.push(id.clone());
            }
            self.missing_since.remove(id);
        }
        Ok(removed)
    }
}
