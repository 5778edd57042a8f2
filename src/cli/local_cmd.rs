//! `jax-csi local up|down|upgrade|lose-node`: a whole cluster on one machine
//! (an embedded Postgres, a controller, node plugins and their fd-keepers,
//! each its own supervised process) for the demo, the tests and trying
//! jax-csi out; `upgrade` replaces a node plugin the way a DaemonSet update
//! does, `lose-node` loses one the way a machine is lost.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use jax_csi::crypto::Kek;
use jax_csi::csi::server::shutdown_signal;
use jax_csi::db::embedded::{EmbeddedPostgres, EmbeddedPostgresOptions};
use nix::fcntl::{Flock, FlockArg};

use super::local_layout::{clean_leftovers, Layout, Pids, Ports};
use super::local_supervisor::{ChildKind, ChildSpec, Supervisor};

#[derive(Subcommand, Debug)]
pub enum LocalCommand {
    /// Start Postgres, a controller and N node plugins as supervised
    /// processes; print one JSON line when all are ready; run until
    /// SIGINT/SIGTERM, then stop them all (no mount, process or socket left).
    /// The KEK is `STATE_DIR/kek.hex`; a `kek.previous.hex` beside it (a
    /// rotation in progress) is given to every process as the previous KEK.
    Up {
        /// State directory (Postgres data, KEK, sockets, logs, node state);
        /// reused across runs: the volumes and their data are kept.
        #[arg(long)]
        state_dir: PathBuf,
        /// Node plugins to start (ids `node-0`, `node-1`, …).
        #[arg(long, default_value_t = 2)]
        nodes: usize,
    },
    /// Stop a running `local up` on this state dir, or clean up after one
    /// that was killed (its processes, mounts, sockets and Postgres).
    Down {
        #[arg(long)]
        state_dir: PathBuf,
    },
    /// Replace one node plugin process of a running `local up` (by the
    /// `jax-csi` binary at the same path, so a rebuilt one takes over) the
    /// way a DaemonSet update does: SIGTERM hands its mounts to its
    /// fd-keeper, the new process resumes them. Pods see a pause, no
    /// error. Prints one JSON line with the timings.
    Upgrade {
        #[arg(long)]
        state_dir: PathBuf,
        /// The node to replace (`node-0`, …).
        #[arg(long)]
        node: String,
    },
    /// Lose one node of a running `local up` the way a machine is lost:
    /// its node plugin is killed (SIGKILL), the mounts of its pods are
    /// detached and its state dir (blob store, keys, records) is deleted;
    /// the supervisor then starts it again with an empty state dir. Its
    /// volumes live on where the leader placed their other replicas.
    /// Prints one JSON line.
    LoseNode {
        #[arg(long)]
        state_dir: PathBuf,
        /// The node to lose (`node-0`, …).
        #[arg(long)]
        node: String,
    },
}

pub fn run(cmd: LocalCommand) -> anyhow::Result<()> {
    match cmd {
        LocalCommand::Up { state_dir, nodes } => up(&state_dir, nodes),
        LocalCommand::Down { state_dir } => down(&state_dir),
        LocalCommand::Upgrade { state_dir, node } => upgrade(&state_dir, &node),
        LocalCommand::LoseNode { state_dir, node } => lose_node(&state_dir, &node),
    }
}

/// The state dir's lock, or an error naming the `local up` that holds it.
fn lock(layout: &Layout) -> Result<Flock<std::fs::File>, Option<i32>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(layout.lock_file())
        .map_err(|_| None)?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock)
        .map_err(|_| Pids::load(layout).map(|p| p.supervisor))
}

fn up(state_dir: &Path, nodes: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let layout = Layout::new(state_dir)?;
    let _lock = lock(&layout).map_err(|holder| match holder {
        Some(pid) => anyhow::anyhow!(
            "`local up` (pid {pid}) already runs on {}; stop it first (`jax-csi local down --state-dir {}`)",
            layout.root().display(),
            layout.root().display()
        ),
        None => anyhow::anyhow!("cannot lock {}", layout.lock_file().display()),
    })?;
    let cleaned = clean_leftovers(&layout);
    if !cleaned.is_empty() {
        tracing::warn!(
            ?cleaned,
            "cleaned up after an earlier run that did not stop cleanly"
        );
    }
    if !layout.kek().exists() {
        Kek::generate()?.write_file(&layout.kek())?;
    }
    Kek::from_file(&layout.kek()).context("reading the local KEK")?;
    let pg = EmbeddedPostgres::start(&layout.postgres(), EmbeddedPostgresOptions { fsync: true })
        .context("starting the embedded Postgres")?;
    let node_ids: Vec<String> = (0..nodes).map(|i| format!("node-{i}")).collect();
    let ports = Ports::load_or_choose(&layout, &node_ids)?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let shutdown = shutdown_signal();
        tokio::pin!(shutdown);
        let mut supervisor = Supervisor::new(layout.clone())?;
        let started = async {
            supervisor
                .start(controller_spec(&layout, &pg, ports.controller_metrics))
                .await?;
            for id in &node_ids {
                supervisor.start(keeper_spec(&layout, id)).await?;
                supervisor
                    .start(node_spec(&layout, &pg, id, ports.nodes[id]))
                    .await?;
            }
            anyhow::Ok(())
        };
        let outcome = tokio::select! {
            r = started => r,
            _ = shutdown.as_mut() => Err(anyhow::anyhow!("interrupted while starting")),
        };
        if outcome.is_ok() {
            println!("{}", ready_line(&layout, &pg, &ports, &node_ids));
            supervisor.supervise(shutdown.as_mut()).await;
        }
        supervisor.stop_all().await;
        outcome
    });
    drop(rt);
    let left = clean_leftovers(&layout);
    if !left.mounts.is_empty() {
        tracing::warn!(mounts = ?left.mounts, "detached mounts the nodes left behind");
    }
    pg.stop().context("stopping the embedded Postgres")?;
    result
}

fn controller_spec(layout: &Layout, pg: &EmbeddedPostgres, metrics: u16) -> ChildSpec {
    let socket = layout.controller_socket();
    let args: Vec<OsString> = vec![
        "controller".into(),
        format!("--endpoint=unix://{}", socket.display()).into(),
        format!("--database-url={}", pg.database_url()).into(),
        format!("--kek-file={}", layout.kek().display()).into(),
    ];
    let args: Vec<OsString> = args
        .into_iter()
        .chain(previous_kek_arg(layout))
        .chain([
            "--node-id=local-controller".into(),
            "--kubernetes=off".into(),
            format!("--metrics-addr=127.0.0.1:{metrics}").into(),
        ])
        .collect();
    ChildSpec {
        name: "controller".into(),
        args,
        socket,
        kind: ChildKind::Csi,
    }
}

/// `--previous-kek-file` when a rotation is in progress (see `Up`).
fn previous_kek_arg(layout: &Layout) -> Option<OsString> {
    let previous = layout.previous_kek();
    previous
        .exists()
        .then(|| format!("--previous-kek-file={}", previous.display()).into())
}

/// The fd-keeper of node `id`: started before it, stopped after it.
fn keeper_spec(layout: &Layout, id: &str) -> ChildSpec {
    let socket = layout.keeper_socket(id);
    ChildSpec {
        name: format!("{id}-fd-keeper"),
        args: vec![
            "fd-keeper".into(),
            format!("--socket={}", socket.display()).into(),
        ],
        socket,
        kind: ChildKind::FdKeeper,
    }
}

fn node_spec(
    layout: &Layout,
    pg: &EmbeddedPostgres,
    id: &str,
    ports: super::local_layout::NodePorts,
) -> ChildSpec {
    let socket = layout.node_socket(id);
    let args: Vec<OsString> = vec![
        "node".into(),
        format!("--endpoint=unix://{}", socket.display()).into(),
        format!(
            "--admin-endpoint=unix://{}",
            layout.admin_socket(id).display()
        )
        .into(),
        format!("--node-id={id}").into(),
        format!("--state-dir={}", layout.node_state(id).display()).into(),
        format!("--database-url={}", pg.database_url()).into(),
        format!("--kek-file={}", layout.kek().display()).into(),
        format!("--kubelet-dir={}", layout.kubelet().display()).into(),
        "--kubernetes=off".into(),
        format!("--listen=127.0.0.1:{}", ports.sync).into(),
        format!("--metrics-addr=127.0.0.1:{}", ports.metrics).into(),
        format!("--handover-socket={}", layout.keeper_socket(id).display()).into(),
    ];
    let args = args.into_iter().chain(previous_kek_arg(layout)).collect();
    ChildSpec {
        name: id.to_string(),
        args,
        socket,
        kind: ChildKind::Csi,
    }
}

/// The one line `local up` prints when everything answers.
fn ready_line(
    layout: &Layout,
    pg: &EmbeddedPostgres,
    ports: &Ports,
    node_ids: &[String],
) -> serde_json::Value {
    let nodes: Vec<serde_json::Value> = node_ids
        .iter()
        .map(|id| {
            let p = ports.nodes[id];
            serde_json::json!({
                "id": id,
                "endpoint": format!("unix://{}", layout.node_socket(id).display()),
                "admin": format!("unix://{}", layout.admin_socket(id).display()),
                "state_dir": layout.node_state(id).display().to_string(),
                "fd_keeper": layout.keeper_socket(id).display().to_string(),
                "sync": format!("127.0.0.1:{}", p.sync),
                "metrics": format!("http://127.0.0.1:{}/metrics", p.metrics),
            })
        })
        .collect();
    serde_json::json!({
        "pid": std::process::id(),
        "controller": format!("unix://{}", layout.controller_socket().display()),
        "controller_metrics": format!("http://127.0.0.1:{}/metrics", ports.controller_metrics),
        "database_url": pg.database_url(),
        "kek_file": layout.kek().display().to_string(),
        "previous_kek_file": layout
            .previous_kek()
            .exists()
            .then(|| layout.previous_kek().display().to_string()),
        "kubelet_dir": layout.kubelet().display().to_string(),
        "logs": layout.logs().display().to_string(),
        "nodes": nodes,
    })
}

fn down(state_dir: &Path) -> anyhow::Result<()> {
    let layout = Layout::new(state_dir)?;
    if !layout.lock_file().exists() {
        anyhow::bail!(
            "{} is not a `jax-csi local` state directory (no local.lock)",
            layout.root().display()
        );
    }
    let held = match lock(&layout) {
        Ok(held) => held,
        Err(Some(pid)) => {
            // A live `local up`: it stops its children and Postgres itself.
            println!("stopping `local up` (pid {pid})");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = std::time::Instant::now() + Duration::from_secs(90);
            loop {
                if let Ok(held) = lock(&layout) {
                    break held;
                }
                if std::time::Instant::now() > deadline {
                    anyhow::bail!("`local up` (pid {pid}) did not stop within 90 s");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Err(None) => anyhow::bail!("cannot lock {}", layout.lock_file().display()),
    };
    let cleaned = clean_leftovers(&layout);
    for p in &cleaned.processes {
        println!("stopped {p}");
    }
    for m in &cleaned.mounts {
        println!("detached {}", m.display());
    }
    for s in &cleaned.sockets {
        println!("removed {}", s.display());
    }
    if let Some(pid) = EmbeddedPostgres::stop_leftover(&layout.postgres())
        .context("stopping the embedded Postgres")?
    {
        println!("stopped Postgres (pid {pid})");
    }
    drop(held);
    println!("{} is down", layout.root().display());
    Ok(())
}

/// `local upgrade`: SIGTERM the node (it hands its mounts over), let the
/// supervisor start it again at once, and wait until the new process
/// answers Probe.
fn upgrade(state_dir: &Path, node: &str) -> anyhow::Result<()> {
    let layout = Layout::new(state_dir)?;
    let old = running_node(&layout, node)?;
    let keeper = jax_csi::fuse::keeper::KeeperClient::new(layout.keeper_socket(node));
    let held = keeper
        .list()
        .with_context(|| format!("asking {node}'s fd-keeper which mounts it holds"))?
        .len();
    std::fs::write(layout.upgrade_marker(node), b"")
        .with_context(|| format!("writing {}", layout.upgrade_marker(node).display()))?;
    let started = std::time::Instant::now();
    signal_and_wait(node, old, nix::sys::signal::Signal::SIGTERM)?;
    let exited = started.elapsed();
    let new = wait_replaced(&layout, node, old)?;
    let line = serde_json::json!({
        "node": node,
        "old_pid": old,
        "new_pid": new,
        "mounts_kept": held,
        "old_exited_ms": exited.as_millis() as u64,
        "new_ready_ms": started.elapsed().as_millis() as u64,
    });
    println!("{line}");
    Ok(())
}

/// Wait (up to 60 s) until the supervisor runs a new process for `node`
/// (not `old`) and it answers Probe; its pid.
fn wait_replaced(layout: &Layout, node: &str, old: i32) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let new = Pids::load(layout)
                .and_then(|p| p.children.get(node).copied())
                .filter(|&p| p != old);
            if let Some(new) = new {
                if probe_ready(&layout.node_socket(node)).await {
                    return Ok(new);
                }
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "the new {node} did not answer within 60 s; see {}",
                    layout.log(node).display()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

/// `local lose-node`: what losing a machine does to one node. SIGKILL the
/// node plugin (held down meanwhile), detach the mounts its records name
/// (its pods are gone with it), delete its state dir, and let the
/// supervisor start it again with nothing: a node back with an empty disk,
/// which forgets the copies Postgres says it held.
fn lose_node(state_dir: &Path, node: &str) -> anyhow::Result<()> {
    let layout = Layout::new(state_dir)?;
    let old = running_node(&layout, node)?;
    use jax_csi::fuse::mount_manager::{read_records, RECORDS_FILE};
    let mounts = read_records(&layout.node_state(node).join(RECORDS_FILE))
        .with_context(|| format!("reading {node}'s mount records"))?;
    let hold = layout.hold_marker(node);
    std::fs::write(&hold, b"").with_context(|| format!("writing {}", hold.display()))?;
    let result = (|| {
        let started = std::time::Instant::now();
        signal_and_wait(node, old, nix::sys::signal::Signal::SIGKILL)?;
        // Targets before their staging mount: deepest first.
        let mounted = jax_csi::fuse::session::mounts_under(layout.root());
        let mut detached = 0;
        for record in &mounts {
            let paths = record.targets.iter().map(|t| &t.path);
            for path in paths.chain([&record.mount_point]) {
                if mounted.contains(path) {
                    jax_csi::fuse::session::lazy_unmount(path)
                        .with_context(|| format!("detaching {}", path.display()))?;
                    detached += 1;
                }
            }
        }
        let wiped = layout.node_state(node);
        std::fs::remove_dir_all(&wiped).with_context(|| format!("deleting {}", wiped.display()))?;
        std::fs::remove_file(&hold).with_context(|| format!("removing {}", hold.display()))?;
        let new = wait_replaced(&layout, node, old)?;
        println!(
            "{}",
            serde_json::json!({
                "node": node,
                "old_pid": old,
                "new_pid": new,
                "mounts_detached": detached,
                "state_deleted": wiped.display().to_string(),
                "new_ready_ms": started.elapsed().as_millis() as u64,
            })
        );
        Ok(())
    })();
    // Never leave the node held down, whatever failed.
    let _ = std::fs::remove_file(&hold);
    result
}

/// Send `signal` to `node`'s process `pid` and wait (up to 60 s) until it is gone.
fn signal_and_wait(node: &str, pid: i32, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
        .with_context(|| format!("sending {signal} to {node} (pid {pid})"))?;
    if !jax_csi::db::embedded::wait_exited(pid, Duration::from_secs(60)) {
        anyhow::bail!("{node} (pid {pid}) did not exit within 60 s of {signal}");
    }
    Ok(())
}

/// The pid of node `node` of the `local up` running on `layout`.
fn running_node(layout: &Layout, node: &str) -> anyhow::Result<i32> {
    if lock(layout).is_ok() {
        anyhow::bail!(
            "no `local up` runs on {}; start it first",
            layout.root().display()
        );
    }
    let pids = Pids::load(layout).context("reading the pids of `local up`")?;
    pids.children.get(node).copied().ok_or_else(|| {
        anyhow::anyhow!(
            "`local up` on {} runs no node {node} (it runs {:?})",
            layout.root().display(),
            pids.children.keys().collect::<Vec<_>>()
        )
    })
}

/// One Probe: true if the socket answers ready.
pub(super) async fn probe_ready(socket: &Path) -> bool {
    use jax_csi::csi::proto::identity_client::IdentityClient;
    use jax_csi::csi::proto::ProbeRequest;
    let Ok(ch) = jax_csi::csi::server::connect_unix(socket).await else {
        return false;
    };
    let mut client = IdentityClient::new(ch);
    matches!(client.probe(ProbeRequest {}).await, Ok(r) if r.get_ref().ready == Some(true))
}

/// Wait up to 60 s for a socket to answer ready; the channel to it.
pub(super) async fn wait_ready(socket: &Path) -> anyhow::Result<tonic::transport::Channel> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if probe_ready(socket).await {
            return jax_csi::csi::server::connect_unix(socket).await;
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("{} did not become ready within 60 s", socket.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
