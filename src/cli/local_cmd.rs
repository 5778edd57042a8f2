//! `jax-csi local up`: a whole cluster's control plane on one machine, with
//! an embedded Postgres, for the demo, the tests and trying jax-csi out.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use jax_csi::crypto::Kek;
use jax_csi::csi::run::{run_controller, ControllerConfig};
use jax_csi::csi::server::shutdown_signal;
use jax_csi::db::embedded::{EmbeddedPostgres, EmbeddedPostgresOptions};

#[derive(Subcommand, Debug)]
pub enum LocalCommand {
    /// Start Postgres and a controller; print one JSON line when ready; run until SIGINT/SIGTERM.
    Up {
        /// State directory (Postgres data, KEK, sockets); reused across runs.
        #[arg(long)]
        state_dir: PathBuf,
    },
}

pub fn run(cmd: LocalCommand) -> anyhow::Result<()> {
    let LocalCommand::Up { state_dir } = cmd;
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
        let cfg = ControllerConfig {
            socket: socket.clone(),
            database_url: pg.database_url(),
            kek,
            node_id: "local-controller".into(),
            db_timeout: Duration::from_secs(5),
        };
        let server = tokio::spawn(run_controller(cfg, shutdown_signal()));
        // Ready when the controller answers Probe with ready=true.
        let channel = wait_ready(&socket).await?;
        drop(channel);
        let line = serde_json::json!({
            "controller": format!("unix://{}", socket.display()),
            "database_url": pg.database_url(),
            "kek_file": kek_path.display().to_string(),
            "nodes": [],
        });
        println!("{line}");
        server.await.context("controller task")?
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
