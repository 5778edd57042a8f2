//! The Kubernetes API (kube + k8s-openapi): which API server to talk to,
//! the node's labels, Events for users, and the orphan sweeps. Everything
//! here is optional: without an API server (local mode) none of it runs.

pub mod events;
pub mod nodes;
pub mod orphans;
pub mod replicas;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client, Config};

/// The CSI driver name, as PersistentVolumes name it.
pub const DRIVER_NAME: &str = "csi.jax.dev";

#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    #[error("no Kubernetes API configuration: {0}")]
    Config(String),
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
}

/// Where the API server is: `auto` (in-cluster when running in a pod, none
/// otherwise), `off`, or a URL (a proxy, a test server).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiTarget {
    Auto,
    Off,
    Url(String),
}

impl std::str::FromStr for ApiTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "off" => Ok(Self::Off),
            url if url.starts_with("http://") || url.starts_with("https://") => {
                Ok(Self::Url(url.to_string()))
            }
            other => Err(format!(
                "{other:?}: expected auto, off or an http(s):// URL"
            )),
        }
    }
}

/// A client for `target`; `None` when there is no API server to talk to.
pub fn client(target: &ApiTarget) -> Result<Option<Client>, K8sError> {
    let config = match target {
        ApiTarget::Off => return Ok(None),
        ApiTarget::Auto if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() => {
            return Ok(None)
        }
        ApiTarget::Auto => Config::incluster().map_err(|e| K8sError::Config(e.to_string()))?,
        ApiTarget::Url(url) => Config::new(
            url.parse()
                .map_err(|e| K8sError::Config(format!("{url}: {e}")))?,
        ),
    };
    Ok(Some(Client::try_from(config).map_err(K8sError::Api)?))
}

/// The labels of node `name` (zone and region labels among them).
pub async fn node_labels(
    client: &Client,
    name: &str,
) -> Result<BTreeMap<String, String>, K8sError> {
    let node = Api::<Node>::all(client.clone()).get(name).await?;
    Ok(node.metadata.labels.unwrap_or_default())
}

/// The zone label of a node, if it has one (the one reading placement uses).
pub use crate::db::placement::zone;

/// True for a 404 from the API server.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}
