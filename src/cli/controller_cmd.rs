//! `jax-csi controller`: the CSI Identity + Controller services.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use jax_csi::csi::run::{run_controller, ControllerConfig};
use jax_csi::csi::server::{parse_endpoint, shutdown_signal};

#[derive(Args, Debug)]
pub struct ControllerArgs {
    /// Where to serve: `unix:///path/csi.sock` or a bare path.
    #[arg(long, env = "CSI_ENDPOINT")]
    endpoint: String,
    /// Postgres URL for the control-plane records.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// The cluster key-encryption key (32 bytes or 64 hex characters).
    #[arg(long, env = "JAX_KEK_FILE")]
    kek_file: PathBuf,
    /// During a KEK rotation: the KEK being replaced (keys it wrapped still
    /// open; everything is wrapped anew by `--kek-file`).
    #[arg(long, env = "JAX_PREVIOUS_KEK_FILE")]
    previous_kek_file: Option<PathBuf>,
    /// This replica's name in logs (default: the host name).
    #[arg(long, env = "NODE_ID")]
    node_id: Option<String>,
    /// How long a request waits for a database connection before UNAVAILABLE.
    #[arg(long, default_value_t = 5000)]
    db_timeout_ms: u64,
    /// Serve Prometheus metrics at `http://ADDR/metrics` (e.g. 0.0.0.0:9808); off when unset.
    #[arg(long, env = "JAX_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// The Kubernetes API: `auto` (in-cluster when run in a pod, none
    /// otherwise), `off`, or a URL. With it the leader sweeps volumes that
    /// no PersistentVolume names.
    #[arg(long, env = "JAX_KUBERNETES", default_value = "auto")]
    kubernetes: jax_csi::k8s::ApiTarget,
    /// Seconds a volume may go without a PersistentVolume before the
    /// orphan sweep deletes it.
    #[arg(long, default_value_t = 3600)]
    orphan_grace_secs: u64,
    /// Seconds between orphan sweeps (and looks for deleted Nodes).
    #[arg(long, default_value_t = 300)]
    orphan_scan_secs: u64,
    /// Seconds a registered node may go without a Kubernetes Node before
    /// it is removed as `jax-csi node remove` removes it (with a Kubernetes
    /// API only).
    #[arg(long, default_value_t = 60)]
    node_gone_grace_secs: u64,
    /// Seconds without a heartbeat (nodes send one every 5 s) after which a
    /// node's replicas are replaced on other nodes and a volume counts it
    /// as lost. At least 15.
    #[arg(long, default_value_t = 300)]
    replica_timeout_secs: u64,
}

pub fn run(args: ControllerArgs) -> anyhow::Result<()> {
    let socket = parse_endpoint(&args.endpoint)?;
    let kek = super::kek_cmd::load(&args.kek_file, args.previous_kek_file.as_deref())?;
    let node_id = args.node_id.unwrap_or_else(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "controller".into())
    });
    let heartbeat = jax_csi::node::records::HEARTBEAT.as_secs();
    if args.replica_timeout_secs < 3 * heartbeat {
        anyhow::bail!(
            "--replica-timeout-secs {}: must be at least {} (three node heartbeats of {heartbeat} s), \
             or a node that is only slow counts as lost",
            args.replica_timeout_secs,
            3 * heartbeat
        );
    }
    let rt = tokio::runtime::Runtime::new()?;
    let orphans = {
        let _in_runtime = rt.enter();
        jax_csi::k8s::client(&args.kubernetes)
            .context("connecting to the Kubernetes API")?
            .map(|client| jax_csi::csi::run::OrphanSweep {
                client,
                grace: Duration::from_secs(args.orphan_grace_secs),
                every: Duration::from_secs(args.orphan_scan_secs.max(1)),
                node_gone_grace: Duration::from_secs(args.node_gone_grace_secs),
            })
    };
    if let Some(addr) = args.metrics_addr {
        let _in_runtime = rt.enter();
        jax_csi::metrics::serve(addr)?;
    }
    rt.block_on(run_controller(
        ControllerConfig {
            socket,
            database_url: args.database_url,
            kek,
            node_id,
            db_timeout: Duration::from_millis(args.db_timeout_ms),
            orphans,
            replica_timeout: Duration::from_secs(args.replica_timeout_secs.max(1)),
        },
        shutdown_signal(),
    ))
}
