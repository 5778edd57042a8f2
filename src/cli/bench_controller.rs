//! `jax-csi bench controller`: CSI controller latency over a real unix
//! socket and a real (embedded) Postgres, next to a plain `SELECT 1` round
//! trip to the same Postgres as the baseline.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use jax_csi::crypto::Kek;
use jax_csi::csi::proto::controller_client::ControllerClient;
use jax_csi::csi::proto::volume_capability::access_mode::Mode;
use jax_csi::csi::proto::volume_capability::{AccessMode, AccessType, MountVolume};
use jax_csi::csi::proto::{
    CapacityRange, CreateVolumeRequest, DeleteVolumeRequest, ListVolumesRequest, VolumeCapability,
};
use jax_csi::csi::run::{run_controller, ControllerConfig};
use jax_csi::db::embedded::{EmbeddedPostgres, EmbeddedPostgresOptions};
use tonic::transport::Channel;

use super::bench::percentile;

/// Parallel clients used only to fill the table for the listing phase.
const FILL_CONCURRENCY: usize = 8;

pub fn bench_controller(dir: &Path, volumes: usize, list_volumes: usize) -> anyhow::Result<()> {
    let work = tempfile::Builder::new()
        .prefix("jax-bench-controller-")
        .tempdir_in(dir)
        .with_context(|| format!("creating a work dir in {}", dir.display()))?;
    // fsync on: the numbers should be what a real deployment pays.
    let pg = EmbeddedPostgres::start(
        &work.path().join("postgres"),
        EmbeddedPostgresOptions { fsync: true },
    )?;
    let socket = work.path().join("controller.sock");
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(async {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let cfg = ControllerConfig {
            socket: socket.clone(),
            database_url: pg.database_url(),
            kek: Kek::generate()?,
            node_id: "bench-controller".into(),
            db_timeout: Duration::from_secs(10),
            orphans: None,
            replica_timeout: std::time::Duration::from_secs(300),
        };
        let server = tokio::spawn(run_controller(cfg, async {
            let _ = stop_rx.await;
        }));
        let channel = super::local_cmd::wait_ready(&socket).await?;
        let table = measure(&pg.database_url(), channel, volumes, list_volumes).await;
        let _ = stop_tx.send(());
        server.await.context("controller task")??;
        table
    });
    drop(rt);
    pg.stop()?;
    print!("{}", result?);
    Ok(())
}

fn create_request(name: String) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name,
        capacity_range: Some(CapacityRange {
            required_bytes: 1 << 30,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume::default())),
            access_mode: Some(AccessMode {
                mode: Mode::MultiNodeMultiWriter as i32,
            }),
        }],
        ..Default::default()
    }
}

struct Row {
    name: &'static str,
    n: usize,
    p50: Duration,
    p99: Duration,
}

fn summarize(name: &'static str, mut lat: Vec<Duration>) -> Row {
    lat.sort();
    Row {
        name,
        n: lat.len(),
        p50: percentile(&lat, 0.50),
        p99: percentile(&lat, 0.99),
    }
}

async fn measure(
    database_url: &str,
    channel: Channel,
    volumes: usize,
    list_volumes: usize,
) -> anyhow::Result<String> {
    let mut ctl = ControllerClient::new(channel);

    // Baseline: one round trip to the same Postgres over a pooled connection.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(database_url)
        .await?;
    let mut select1 = Vec::with_capacity(volumes);
    for _ in 0..volumes {
        let t = Instant::now();
        let _: (i32,) = sqlx::query_as("SELECT 1").fetch_one(&pool).await?;
        select1.push(t.elapsed());
    }

    let mut create = Vec::with_capacity(volumes);
    let mut ids = Vec::with_capacity(volumes);
    for i in 0..volumes {
        let t = Instant::now();
        let v = ctl
            .create_volume(create_request(format!("bench-{i}")))
            .await?
            .into_inner();
        create.push(t.elapsed());
        ids.push(
            v.volume
                .context("CreateVolume returned no volume")?
                .volume_id,
        );
    }
    let mut delete = Vec::with_capacity(volumes);
    for id in ids {
        let t = Instant::now();
        ctl.delete_volume(DeleteVolumeRequest {
            volume_id: id,
            secrets: Default::default(),
        })
        .await?;
        delete.push(t.elapsed());
    }

    fill(&ctl, list_volumes).await?;
    // ListVolumes: every page of a full listing, and the whole listing.
    let mut pages = Vec::new();
    let mut full = Vec::new();
    let mut seen = 0;
    for _round in 0..5 {
        let started = Instant::now();
        let mut token = String::new();
        seen = 0;
        loop {
            let t = Instant::now();
            let page = ctl
                .list_volumes(ListVolumesRequest {
                    max_entries: 500,
                    starting_token: token,
                })
                .await?
                .into_inner();
            pages.push(t.elapsed());
            seen += page.entries.len();
            token = page.next_token;
            if token.is_empty() {
                break;
            }
        }
        full.push(started.elapsed());
    }
    anyhow::ensure!(
        seen == list_volumes,
        "listing saw {seen} volumes, expected {list_volumes}"
    );

    let base = summarize("SELECT 1 (baseline)", select1);
    let rows = [
        summarize("CreateVolume", create),
        summarize("DeleteVolume", delete),
        summarize("ListVolumes page of 500", pages),
        summarize("ListVolumes all pages", full),
    ];
    let mut out = format!(
        "controller over a unix socket, embedded Postgres with fsync on; {volumes} creates/deletes, listing {list_volumes} volumes\n"
    );
    out += &format!(
        "{:<26} {:>6} {:>11} {:>11} {:>10} {:>10}\n",
        "operation", "n", "p50", "p99", "p50/base", "p99/base"
    );
    for r in std::iter::once(&base).chain(rows.iter()) {
        out += &format!(
            "{:<26} {:>6} {:>11} {:>11} {:>9.1}x {:>9.1}x\n",
            r.name,
            r.n,
            format!("{:.3?}", r.p50),
            format!("{:.3?}", r.p99),
            r.p50.as_secs_f64() / base.p50.as_secs_f64(),
            r.p99.as_secs_f64() / base.p99.as_secs_f64(),
        );
    }
    Ok(out)
}

/// Create `n` volumes with a few parallel clients (not measured).
async fn fill(ctl: &ControllerClient<Channel>, n: usize) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for worker in 0..FILL_CONCURRENCY {
        let mut ctl = ctl.clone();
        tasks.push(tokio::spawn(async move {
            for i in (worker..n).step_by(FILL_CONCURRENCY) {
                ctl.create_volume(create_request(format!("list-{i}")))
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}
