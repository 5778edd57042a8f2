//! `jax-csi local up`: a whole cluster's control plane on one machine, with
//! an embedded Postgres, for the demo, the tests and trying jax-csi out.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use jax_csi::crypto::Kek;
use jax_csi::csi::run::{run_controller, run_node, ControllerConfig, NodeConfig};
use jax_csi::csi::server::shutdown_signal;
use jax_csi::db::embedded::{EmbeddedPostgres, EmbeddedPostgresOptions};

#[derive(Subcommand, Debug)]
pub enum LocalCommand {
    /// Start Postgres, a controller and N node plugins; print one JSON line when ready; run until SIGINT/SIGTERM.
    Up {
        /// State directory (Postgres data, KEK, sockets, node state); reused across runs.
        #[arg(long)]
        state_dir: PathBuf,
        /// Node plugins to start (each with its own state dir, socket and id `node-<i>`).
        #[arg(long, default_value_t = 0)]
        nodes: usize,
    },
}

pub fn run(cmd: LocalCommand) -> anyhow::Result<()> {
    let LocalCommand::Up { state_dir, nodes } = cmd;
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let state_dir = state_dir.canonicalize()?;
    let kek_path = state_dir.join("kek.hex");
    if !kek_path.exists() {
        Kek::generate()?.write_file(&kek_path)?;
    }
    let kek = Kek::from_file(&kek_path)?;
    let pg = EmbeddedPostgres::start(
        &state_dir.join("postgres"),
        EmbeddedPostgresOptions { fsync: true },
    )
    .context("starting the embedded Postgres")?;
    let socket = state_dir.join("controller.sock");
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(async {
        // One signal stops everything: controller and nodes watch this channel.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = stop_tx.send(true);
        });
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let cfg = ControllerConfig {
            socket: socket.clone(),
            database_url: pg.database_url(),
            kek: kek.clone(),
            node_id: "local-controller".into(),
            db_timeout: Duration::from_secs(5),
        };
        let mut servers = vec![tokio::spawn(run_controller(cfg, stopped(stop_rx.clone())))];
        wait_ready(&socket).await?;
        let mut node_list = Vec::new();
        for i in 0..nodes {
            let id = format!("node-{i}");
            let node_socket = state_dir.join(format!("{id}.sock"));
            // A port of its own on loopback for each node's sync endpoint.
            let sync_addr = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
            let cfg = NodeConfig {
                socket: node_socket.clone(),
                node_id: id.clone(),
                state_dir: state_dir.join("nodes").join(&id),
                database_url: pg.database_url(),
                kek: kek.clone(),
                max_volumes: 256,
                db_timeout: Duration::from_secs(5),
                kubelet_dir: None,
                gc_interval: Duration::from_secs(600),
                gc_grace: jax_csi::csi::node_gc::GRACE,
                sync_listen: sync_addr,
                advertise_ip: None,
                anti_entropy: Duration::from_secs(5),
            };
            servers.push(tokio::spawn(run_node(cfg, stopped(stop_rx.clone()))));
            wait_ready(&node_socket).await?;
            node_list.push(serde_json::json!({
                "id": id,
                "endpoint": format!("unix://{}", node_socket.display()),
                "sync": sync_addr.to_string(),
            }));
        }
        let line = serde_json::json!({
            "controller": format!("unix://{}", socket.display()),
            "database_url": pg.database_url(),
            "kek_file": kek_path.display().to_string(),
            "nodes": node_list,
        });
        println!("{line}");
        let mut first_error = None;
        for s in servers {
            if let Err(e) = s.await.context("server task")? {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    });
    drop(rt);
    pg.stop().context("stopping the embedded Postgres")?;
    result
}

pub(super) async fn wait_ready(
    socket: &std::path::Path,
) -> anyhow::Result<tonic::transport::Channel> {
    use jax_csi::csi::proto::identity_client::IdentityClient;
    use jax_csi::csi::proto::ProbeRequest;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(ch) = jax_csi::csi::server::connect_unix(socket).await {
            let mut client = IdentityClient::new(ch.clone());
            if let Ok(r) = client.probe(ProbeRequest {}).await {
                if r.into_inner().ready == Some(true) {
                    return Ok(ch);
                }
            }
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("controller did not become ready within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
