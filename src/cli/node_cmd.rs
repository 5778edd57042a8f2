//! `jax-csi node`: the CSI Identity + Node services and the FUSE mounts of
//! this node.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use jax_csi::crypto::Kek;
use jax_csi::csi::run::{run_node, NodeConfig};
use jax_csi::csi::server::{parse_endpoint, shutdown_signal};

#[derive(Args, Debug)]
pub struct NodeArgs {
    /// Where to serve: `unix:///path/csi.sock` or a bare path.
    #[arg(long, env = "CSI_ENDPOINT")]
    endpoint: String,
    /// This node's id (the Kubernetes node name).
    #[arg(long, env = "NODE_ID")]
    node_id: String,
    /// The node's blob store, buckets and mount records.
    #[arg(long, env = "JAX_STATE_DIR")]
    state_dir: PathBuf,
    /// Postgres URL for the control-plane records.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// The cluster key-encryption key (32 bytes or 64 hex characters).
    #[arg(long, env = "JAX_KEK_FILE")]
    kek_file: PathBuf,
    /// Volumes this node accepts (NodeGetInfo); 0 = no limit.
    #[arg(long, default_value_t = 256)]
    max_volumes: i64,
    /// How long a request waits for a database connection before UNAVAILABLE.
    #[arg(long, default_value_t = 5000)]
    db_timeout_ms: u64,
    /// Kubelet's root directory: every staging and target path must lie
    /// under it (the chart sets /var/lib/kubelet). Unset: any clean
    /// absolute path is accepted.
    #[arg(long, env = "KUBELET_DIR")]
    kubelet_dir: Option<PathBuf>,
    /// Seconds between garbage-collection passes (deleted volumes, history
    /// retention, unreferenced blobs).
    #[arg(long, default_value_t = 600)]
    gc_interval_secs: u64,
    /// Blobs written less than this many seconds ago are never collected
    /// (chunks sealed ahead of a commit, blobs a sync is still fetching).
    #[arg(long, default_value_t = 600)]
    gc_grace_secs: u64,
    /// UDP address of the peer-to-peer sync endpoint.
    #[arg(long, env = "JAX_SYNC_LISTEN", default_value = "0.0.0.0:9810")]
    listen: std::net::SocketAddr,
    /// The IP peers dial (the pod's or host's IP); default: the listen IP,
    /// or 127.0.0.1 when that is unspecified.
    #[arg(long, env = "JAX_ADVERTISE_IP")]
    advertise_ip: Option<std::net::IpAddr>,
    /// Seconds between comparisons of heads with every peer (anti-entropy).
    #[arg(long, default_value_t = 5)]
    anti_entropy_secs: u64,
}

pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    let socket = parse_endpoint(&args.endpoint)?;
    let kek = Kek::from_file(&args.kek_file).context("reading the KEK file")?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(run_node(
        NodeConfig {
            socket,
            node_id: args.node_id,
            state_dir: args.state_dir,
            database_url: args.database_url,
            kek,
            max_volumes: args.max_volumes,
            db_timeout: Duration::from_millis(args.db_timeout_ms),
            kubelet_dir: args.kubelet_dir,
            gc_interval: Duration::from_secs(args.gc_interval_secs.max(1)),
            gc_grace: Duration::from_secs(args.gc_grace_secs),
            sync_listen: args.listen,
            advertise_ip: args.advertise_ip,
            anti_entropy: Duration::from_secs(args.anti_entropy_secs.max(1)),
        },
        shutdown_signal(),
    ))
}
