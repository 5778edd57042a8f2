//! A throwaway cluster for integration tests: an embedded Postgres, the real
//! `jax-csi` binary as controller replicas and node plugins on unix sockets.
#![allow(dead_code)]

pub mod csi;
pub mod pod;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jax_csi::crypto::Kek;
use jax_csi::csi::proto::identity_client::IdentityClient;
use jax_csi::csi::proto::ProbeRequest;
use jax_csi::db::embedded::EmbeddedPostgres;
use tonic::transport::Channel;

pub struct Cluster {
    pub pg: Option<EmbeddedPostgres>,
    pub dir: tempfile::TempDir,
    pub kek: Kek,
    pub controllers: Vec<Child>,
    pub nodes: Vec<(String, Child)>,
    /// fd-keepers (stopped after the nodes).
    pub keepers: Vec<Child>,
    /// Nodes started with an fd-keeper of their own: its socket.
    pub handover: std::collections::HashMap<String, PathBuf>,
    /// More arguments for the nodes started from now on.
    pub node_args: Vec<String>,
    /// `--gc-grace-secs` of the nodes started from now on.
    pub gc_grace: &'static str,
    /// `--gc-interval-secs` of the nodes started from now on.
    pub gc_interval: &'static str,
}

impl Cluster {
    pub fn start() -> Self {
        let pg = EmbeddedPostgres::start_temp().expect("throwaway postgres");
        let mut dir = tempfile::tempdir().unwrap();
        // `JAX_TEST_KEEP_DIR=1` keeps the nodes' logs and state to read after.
        if std::env::var_os("JAX_TEST_KEEP_DIR").is_some() {
            dir.disable_cleanup(true);
            eprintln!("test cluster kept in {}", dir.path().display());
        }
        let kek = Kek::generate().unwrap();
        kek.write_file(&dir.path().join("kek")).unwrap();
        Self {
            pg: Some(pg),
            dir,
            kek,
            controllers: vec![],
            nodes: vec![],
            keepers: vec![],
            handover: Default::default(),
            node_args: Vec::new(),
            gc_grace: "300",
            gc_interval: "1",
        }
    }

    pub fn url(&self) -> String {
        self.pg.as_ref().unwrap().database_url()
    }

    pub fn socket(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("c{n}.sock"))
    }

    /// Start controller replica `n`; returns once its Probe says ready.
    pub async fn controller(&mut self, n: usize) -> Channel {
        let child = self.spawn(n);
        self.controllers.push(child);
        wait_ready(&self.socket(n)).await
    }

    /// [`Cluster::controller`] with extra arguments.
    pub async fn controller_with(&mut self, n: usize, extra: &[&str]) -> Channel {
        let child = self.spawn_with(n, extra);
        self.controllers.push(child);
        wait_ready(&self.socket(n)).await
    }

    pub fn spawn(&self, n: usize) -> Child {
        self.spawn_with(n, &[])
    }

    pub fn spawn_with(&self, n: usize, extra: &[&str]) -> Child {
        Command::new(jax_bin())
            .args(["controller", "--endpoint"])
            .arg(format!("unix://{}", self.socket(n).display()))
            .args(["--database-url", &self.url(), "--kek-file"])
            .arg(self.dir.path().join("kek"))
            .args([
                "--node-id",
                &format!("replica-{n}"),
                "--db-timeout-ms",
                "1000",
            ])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.log(n)).unwrap())
            .spawn()
            .expect("spawning jax-csi controller")
    }

    /// Each replica logs to a file (an undrained pipe would block it).
    pub fn log(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("c{n}.log"))
    }

    pub fn node_socket(&self, id: &str) -> PathBuf {
        self.dir.path().join(format!("{id}.sock"))
    }

    pub fn node_state(&self, id: &str) -> PathBuf {
        self.dir.path().join("nodes").join(id)
    }

    /// Node `id`'s operator (Admin) service: its own socket in the node's
    /// state dir (the default `--admin-endpoint`), never the CSI socket.
    pub async fn node_admin(&self, id: &str) -> Channel {
        let socket = self.node_state(id).join("admin.sock");
        jax_csi::csi::server::connect_unix(&socket).await.unwrap()
    }

    pub fn node_log(&self, id: &str) -> PathBuf {
        self.dir.path().join(format!("{id}.log"))
    }

    /// Start (or restart) node plugin `id`; returns once it answers Probe.
    pub async fn node(&mut self, id: &str) -> Channel {
        self.node_with(id, "127.0.0.1:0", |_| {}).await
    }

    /// [`Cluster::node`] with its sync endpoint on `listen`, and `setup`
    /// applied to the command (to run it in a network namespace).
    pub async fn node_with(
        &mut self,
        id: &str,
        listen: &str,
        setup: impl FnOnce(&mut Command),
    ) -> Channel {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.node_log(id))
            .unwrap();
        let mut cmd = Command::new(jax_bin());
        cmd.args(["node", "--endpoint"])
            .arg(format!("unix://{}", self.node_socket(id).display()))
            .args(["--node-id", id, "--state-dir"])
            .arg(self.node_state(id))
            .args(["--database-url", &self.url(), "--kek-file"])
            .arg(self.dir.path().join("kek"))
            .args([
                "--db-timeout-ms",
                "2000",
                "--gc-interval-secs",
                self.gc_interval,
                "--gc-grace-secs",
                self.gc_grace,
            ])
            .args(["--listen", listen, "--anti-entropy-secs", "1"])
            .arg("--kubelet-dir")
            .arg(self.dir.path())
            .env(
                "RUST_LOG",
                std::env::var("JAX_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(log);
        cmd.args(&self.node_args);
        if let Some(socket) = self.handover.get(id) {
            cmd.arg("--handover-socket").arg(socket);
        }
        setup(&mut cmd);
        let child = cmd.spawn().expect("spawning jax-csi node");
        self.nodes.push((id.to_string(), child));
        wait_ready(&self.node_socket(id)).await
    }

    /// SIGKILL node `id` (no clean unmount: its FUSE mounts go stale).
    pub fn kill_node(&mut self, id: &str) {
        let i = self.nodes.iter().position(|(n, _)| n == id).expect("node");
        let (_, mut child) = self.nodes.remove(i);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM node `id` and wait for it to exit; returns its exit status.
    pub fn stop_node(&mut self, id: &str) -> std::process::ExitStatus {
        let i = self.nodes.iter().position(|(n, _)| n == id).expect("node");
        let (_, mut child) = self.nodes.remove(i);
        terminate(&mut child)
    }

    /// Start a `jax-csi fd-keeper`; returns its socket once it answers.
    pub fn fd_keeper(&mut self) -> PathBuf {
        self.spawn_keeper("fd-keeper")
    }

    /// An fd-keeper for node `id` alone (as each node of a cluster has its
    /// own): the node is started with it from now on, so a node killed and
    /// started again serves its mounts on.
    pub fn fd_keeper_for(&mut self, id: &str) -> PathBuf {
        let socket = self.spawn_keeper(&format!("fd-keeper-{id}"));
        self.handover.insert(id.to_string(), socket.clone());
        socket
    }

    fn spawn_keeper(&mut self, name: &str) -> PathBuf {
        let socket = self.dir.path().join(format!("{name}.sock"));
        let child = Command::new(jax_bin())
            .args(["fd-keeper", "--socket"])
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap())
            .spawn()
            .expect("spawning jax-csi fd-keeper");
        self.keepers.push(child);
        let client = jax_csi::fuse::keeper::KeeperClient::new(&socket);
        let deadline = Instant::now() + Duration::from_secs(10);
        while client.list().is_err() {
            assert!(Instant::now() < deadline, "the fd-keeper never answered");
            std::thread::sleep(Duration::from_millis(10));
        }
        socket
    }

    pub fn psql(&self, sql: &str) -> String {
        self.pg
            .as_ref()
            .unwrap()
            .psql("jax", sql)
            .unwrap()
            .trim()
            .to_string()
    }
}

fn terminate(c: &mut Child) -> std::process::ExitStatus {
    signal_and_wait(c, nix::sys::signal::Signal::SIGTERM)
}

pub fn signal_and_wait(c: &mut Child, sig: nix::sys::signal::Signal) -> std::process::ExitStatus {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
    c.wait().unwrap()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SIGINT: a node always unmounts (SIGTERM would hand its mounts to
        // an fd-keeper, if the test runs one).
        for (_, c) in &mut self.nodes {
            signal_and_wait(c, nix::sys::signal::Signal::SIGINT);
        }
        for c in &mut self.controllers {
            terminate(c);
        }
        for c in &mut self.keepers {
            terminate(c);
        }
        // Nodes a test killed leave their mounts behind: detach them, so
        // the temp dir goes and the host's mount table stays clean.
        let mut left = jax_csi::fuse::session::mounts_under(self.dir.path());
        left.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for m in left {
            let _ = jax_csi::fuse::session::lazy_unmount(&m);
        }
    }
}

/// Write `path` with `data` and fsync it (what a pod does before it
/// counts a write as kept).
pub fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Connect to `socket` once the plugin there answers Probe with ready.
pub async fn wait_ready(socket: &Path) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(ch) = jax_csi::csi::server::connect_unix(socket).await {
            if let Ok(r) = IdentityClient::new(ch.clone()).probe(ProbeRequest {}).await {
                if r.into_inner().ready == Some(true) {
                    return ch;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "plugin on {} never became ready",
            socket.display()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The jax-csi binary the cluster runs: this build's, or `JAX_TEST_BIN`
/// (a release build, to measure what users run).
pub fn jax_bin() -> PathBuf {
    std::env::var_os("JAX_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_jax-csi")))
}
