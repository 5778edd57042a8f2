//! `jax-csi node`: the node agent (this node's replicas, FUSE mounts, sync
//! and background duties) served over the CSI socket (Identity and Node,
//! what kubelet and the sidecars use) and, on a socket of its own, the
//! operator's Admin service. The Admin service opens any volume with the
//! cluster KEK, so it is not on the socket the sidecars mount: its default
//! lives in the state dir, which only the plugin container mounts.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use jax_csi::csi::identity::{IdentityService, ReadyCheck};
use jax_csi::csi::server::parse_endpoint;
use jax_csi::node::{NodeAgent, NodeConfig, NodeStop};
use tonic::transport::Server;

/// `jax-csi node …`: the plugin itself (no subcommand), or `node list`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct NodeCli {
    #[command(subcommand)]
    command: Option<super::operator_cmd::NodeCommand>,
    #[command(flatten)]
    serve: NodeArgs,
}

// The required flags are `Option`s so that `node list` parses without them;
// clap still requires them when the plugin runs.
#[derive(Args, Debug)]
pub struct NodeArgs {
    /// Where to serve: `unix:///path/csi.sock` or a bare path.
    #[arg(long, env = "CSI_ENDPOINT", required = true)]
    endpoint: Option<String>,
    /// Group allowed to connect to `--endpoint` (the socket becomes
    /// root:GID, mode 0660), so a sidecar such as the liveness probe can run
    /// as that group instead of root. Unset: root only (mode 0700).
    #[arg(long, env = "JAX_ENDPOINT_GROUP")]
    endpoint_group: Option<u32>,
    /// Where the operator's Admin service is served (what `jax-csi volume …
    /// --node-endpoint` connects to); default `unix://STATE_DIR/admin.sock`.
    /// Never on `--endpoint`: the sidecars that share that socket's
    /// directory must not reach it.
    #[arg(long, env = "JAX_ADMIN_ENDPOINT")]
    admin_endpoint: Option<String>,
    /// This node's id (the Kubernetes node name).
    #[arg(long, env = "NODE_ID", required = true)]
    node_id: Option<String>,
    /// The node's blob store, buckets and mount records.
    #[arg(long, env = "JAX_STATE_DIR", required = true)]
    state_dir: Option<PathBuf>,
    /// Postgres URL for the control-plane records.
    #[arg(long, env = "DATABASE_URL", required = true)]
    database_url: Option<String>,
    /// The cluster key-encryption key (32 bytes or 64 hex characters).
    #[arg(long, env = "JAX_KEK_FILE", required = true)]
    kek_file: Option<PathBuf>,
    /// During a KEK rotation: the KEK being replaced (keys it wrapped still
    /// open; everything is wrapped anew by `--kek-file`).
    #[arg(long, env = "JAX_PREVIOUS_KEK_FILE")]
    previous_kek_file: Option<PathBuf>,
    /// Volumes this node accepts (NodeGetInfo); 0 = no limit.
    #[arg(long, default_value_t = 256)]
    max_volumes: i64,
    /// How long a request waits for a database connection before UNAVAILABLE.
    #[arg(long, default_value_t = 5000)]
    db_timeout_ms: u64,
    /// Serve Prometheus metrics at `http://ADDR/metrics` (e.g. 0.0.0.0:9808); off when unset.
    #[arg(long, env = "JAX_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Kubelet's root directory: every staging and target path must lie
    /// under it, with no symbolic link below it, so a request cannot make
    /// the plugin mount over an arbitrary host path.
    #[arg(long, env = "KUBELET_DIR", default_value = "/var/lib/kubelet")]
    kubelet_dir: PathBuf,
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
    /// Most MiB a second a blind replica on this node fetches while it
    /// catches up (a rebuild), on top of its yielding to load on the nodes
    /// serving it (it rests while their fetches are slow); 0: no cap.
    #[arg(long, env = "JAX_REBUILD_MIB_PER_SEC", default_value_t = 0)]
    rebuild_mib_per_sec: u64,
    /// The Kubernetes API: `auto` (in-cluster when run in a pod, none
    /// otherwise), `off`, or a URL. With it the node records its labels,
    /// posts Events on claims and pods, and removes targets whose pod is gone.
    #[arg(long, env = "JAX_KUBERNETES", default_value = "auto")]
    kubernetes: jax_csi::k8s::ApiTarget,
    /// Seconds a target's pod must be gone before the target is removed.
    #[arg(long, default_value_t = 300)]
    orphan_grace_secs: u64,
    /// Seconds between checks of the targets' pods.
    #[arg(long, default_value_t = 60)]
    orphan_scan_secs: u64,
    /// The socket of a `jax-csi fd-keeper`: it holds every mount's FUSE
    /// connection, so pods keep their mounts (a pause, no error) when this
    /// process is upgraded (SIGTERM hands the mounts over) or crashes. Unset:
    /// SIGTERM unmounts, and a crash leaves mounts dead until restart.
    #[arg(long, env = "JAX_HANDOVER_SOCKET")]
    handover_socket: Option<PathBuf>,
}

pub fn run(cli: NodeCli) -> anyhow::Result<()> {
    if let Some(cmd) = cli.command {
        return super::operator_cmd::run_node(cmd);
    }
    let args = cli.serve;
    let required = "clap requires it when no subcommand is given";
    let socket = parse_endpoint(&args.endpoint.expect(required))?;
    let state_dir = args.state_dir.expect(required);
    let admin_socket = parse_endpoint(
        &args
            .admin_endpoint
            .unwrap_or_else(|| default_admin_endpoint(&state_dir)),
    )
    .context("the admin endpoint (--admin-endpoint, default STATE_DIR/admin.sock)")?;
    if admin_socket == socket {
        anyhow::bail!("--admin-endpoint must not be --endpoint: the sidecars reach that socket");
    }
    let kek = super::kek_cmd::load(
        &args.kek_file.expect(required),
        args.previous_kek_file.as_deref(),
    )?;
    let rt = tokio::runtime::Runtime::new()?;
    let k8s = {
        let _in_runtime = rt.enter();
        jax_csi::k8s::client(&args.kubernetes)
            .context("connecting to the Kubernetes API")?
            .map(|client| jax_csi::node::k8s::NodeK8s {
                client,
                orphan_grace: Duration::from_secs(args.orphan_grace_secs),
                orphan_every: Duration::from_secs(args.orphan_scan_secs.max(1)),
            })
    };
    if let Some(addr) = args.metrics_addr {
        let _in_runtime = rt.enter();
        jax_csi::metrics::serve(addr)?;
    }
    let serve = Serve {
        socket,
        socket_group: args.endpoint_group,
        admin_socket,
        kubelet_dir: args.kubelet_dir.clone(),
    };
    rt.block_on(run_node(
        NodeConfig {
            node_id: args.node_id.expect(required),
            state_dir,
            database_url: args.database_url.expect(required),
            kek,
            max_volumes: args.max_volumes,
            db_timeout: Duration::from_millis(args.db_timeout_ms),
            gc_interval: Duration::from_secs(args.gc_interval_secs.max(1)),
            gc_grace: Duration::from_secs(args.gc_grace_secs),
            sync_listen: args.listen,
            advertise_ip: args.advertise_ip,
            anti_entropy: Duration::from_secs(args.anti_entropy_secs.max(1)),
            rebuild_bytes_per_sec: Some(args.rebuild_mib_per_sec << 20).filter(|r| *r > 0),
            k8s,
            handover_socket: args.handover_socket,
            kubelet_dir: Some(args.kubelet_dir),
        },
        serve,
        jax_csi::node::stop_signal(),
    ))
}

/// The Admin service's default endpoint: in the state dir, which the
/// plugin container alone mounts.
pub fn default_admin_endpoint(state_dir: &std::path::Path) -> String {
    format!("unix://{}", state_dir.join("admin.sock").display())
}

/// Where and how the CSI services are served.
struct Serve {
    socket: PathBuf,
    /// Group given access to `socket` (mode 0660), if any.
    socket_group: Option<u32>,
    /// The Admin service's own socket (mode 0700).
    admin_socket: PathBuf,
    /// Staging and target paths must lie under it.
    kubelet_dir: PathBuf,
}

/// Start the node agent, serve Identity + Node on the CSI socket and Admin
/// on its own socket until `shutdown` resolves, then stop the agent as it
/// says (hand the mounts over, or unmount them cleanly).
async fn run_node(
    cfg: NodeConfig,
    serve: Serve,
    shutdown: impl Future<Output = NodeStop> + Send,
) -> anyhow::Result<()> {
    use jax_csi::csi::admin_proto::admin_server::AdminServer;
    use jax_csi::csi::proto::identity_server::IdentityServer;
    use jax_csi::csi::proto::node_server::NodeServer;

    let node_id = cfg.node_id.clone();
    let agent = NodeAgent::start(cfg).await?;
    let admin_listener = jax_csi::csi::server::bind_unix(&serve.admin_socket).await?;
    let listener =
        jax_csi::csi::server::bind_unix_for_group(&serve.socket, serve.socket_group).await?;
    let ready: ReadyCheck = Arc::new(|| Box::pin(async { true }));
    let admin = Arc::new(jax_csi::csi::admin::AdminService::new(agent.clone()));
    let node = jax_csi::csi::node::NodeService::new(agent.clone(), Some(serve.kubelet_dir));
    tracing::info!(socket = %serve.socket.display(), admin = %serve.admin_socket.display(), node = %node_id, "node serving");
    let stop = Arc::new(std::sync::Mutex::new(NodeStop::Unmount));
    // One signal ends both servers.
    let (stopped_tx, stopped) = tokio::sync::watch::channel(false);
    let shutdown = {
        let stop = stop.clone();
        async move {
            let how = shutdown.await;
            *stop.lock().unwrap() = how;
            let _ = stopped_tx.send(true);
        }
    };
    let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let csi = Server::builder()
        .add_service(IdentityServer::new(IdentityService::new(false, ready)))
        .add_service(NodeServer::new(node))
        .serve_with_incoming_shutdown(
            jax_csi::csi::server::incoming(listener),
            until_stopped(stopped.clone()),
        );
    let operator = Server::builder()
        .add_service(AdminServer::new(admin))
        .serve_with_incoming_shutdown(
            jax_csi::csi::server::incoming(admin_listener),
            until_stopped(stopped),
        );
    let (_, served, admin_served) = tokio::join!(shutdown, csi, operator);
    let _ = std::fs::remove_file(&serve.socket);
    let _ = std::fs::remove_file(&serve.admin_socket);
    let how = *stop.lock().unwrap();
    agent.stop(how).await?;
    served?;
    admin_served?;
    tracing::info!("node stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        node: NodeCli,
    }

    /// Kubelet's usual root is the default: a chart that leaves
    /// `--kubelet-dir` out still confines every path below it.
    #[test]
    fn the_kubelet_dir_defaults_to_var_lib_kubelet() {
        let cli = Cli::try_parse_from([
            "jax-csi",
            "--endpoint=/csi/csi.sock",
            "--node-id=n",
            "--state-dir=/var/lib/jax-csi",
            "--database-url=postgres://x",
            "--kek-file=/k",
        ])
        .unwrap();
        assert_eq!(
            cli.node.serve.kubelet_dir,
            PathBuf::from("/var/lib/kubelet")
        );
        assert_eq!(cli.node.serve.admin_endpoint, None);
        assert_eq!(
            default_admin_endpoint(std::path::Path::new("/var/lib/jax-csi")),
            "unix:///var/lib/jax-csi/admin.sock"
        );
    }
}
