//! Runs the local cluster's controller and node plugins as child processes,
//! the way Kubernetes runs them: each its own `jax-csi` process with its
//! own socket and log file, restarted (with backoff) when it dies, and
//! stopped with SIGINT (then SIGKILL) when the supervisor stops: a node
//! plugin then unmounts, where SIGTERM (an upgrade, `local upgrade`) would
//! hand its mounts over to its fd-keeper. A node whose upgrade marker is
//! set is started again at once; one whose hold marker is set (`local
//! lose-node` wiping its state) is started once the marker is gone.
//!
//! Runs on a current-thread runtime: children are spawned from the main
//! thread, so their parent-death signal (sent when the spawning *thread*
//! exits) fires exactly when the supervisor dies.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::future::select_all;
use tokio::process::{Child, Command};

use super::local_layout::{Layout, Pids};

/// How long a child gets to stop (final commits, unmounts) before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// A child that ran at least this long starts its backoff afresh.
const HEALTHY_RUN: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// One process to run.
#[derive(Clone, Debug)]
pub struct ChildSpec {
    /// `controller` or the node id: names the log file and log lines.
    pub name: String,
    pub args: Vec<OsString>,
    /// The socket it serves (probed for readiness).
    pub socket: PathBuf,
    pub kind: ChildKind,
}

/// What a child serves on its socket, which says how to probe it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildKind {
    /// CSI Identity: ready when Probe says so.
    Csi,
    /// An fd-keeper: ready when it answers a `list`.
    FdKeeper,
}

struct Supervised {
    spec: ChildSpec,
    child: Option<Child>,
    started: Instant,
    /// Restarts since it last ran for [`HEALTHY_RUN`].
    recent_restarts: u32,
    restarts: u32,
}

pub struct Supervisor {
    exe: PathBuf,
    layout: Layout,
    children: Vec<Supervised>,
}

impl Supervisor {
    pub fn new(layout: Layout) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding the jax-csi executable")?;
        // The nodes' kubelet dir exists before them, as a real kubelet's
        // does: mount points are opened below it, never the root made.
        for dir in [layout.logs(), layout.kubelet()] {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(Self {
            exe,
            layout,
            children: Vec::new(),
        })
    }

    /// Start a child and wait until its socket answers a Probe with ready.
    pub async fn start(&mut self, spec: ChildSpec) -> anyhow::Result<()> {
        let child = self.spawn(&spec)?;
        self.children.push(Supervised {
            spec,
            child: Some(child),
            started: Instant::now(),
            recent_restarts: 0,
            restarts: 0,
        });
        self.save_pids();
        let i = self.children.len() - 1;
        self.wait_ready(i).await
    }

    fn spawn(&self, spec: &ChildSpec) -> anyhow::Result<Child> {
        let log_path = self.layout.log(&spec.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut cmd = Command::new(&self.exe);
        cmd.args(&spec.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a terminal's Ctrl-C reaches only the
            // supervisor, which stops the children in order.
            .process_group(0)
            .kill_on_drop(false);
        let parent = std::process::id();
        // SAFETY: prctl and getppid are async-signal-safe; nothing here
        // allocates or takes locks between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, nix::libc::SIGINT) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The supervisor died before the signal was armed.
                if nix::libc::getppid() as u32 != parent {
                    nix::libc::_exit(1);
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", spec.name))?;
        tracing::info!(process = %spec.name, pid = child.id(), log = %log_path.display(), "started");
        Ok(child)
    }

    async fn wait_ready(&mut self, i: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if probe(&self.children[i].spec).await {
                return Ok(());
            }
            let name = self.children[i].spec.name.clone();
            if let Some(child) = self.children[i].child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    anyhow::bail!(
                        "{name} exited ({status}) before it was ready; its log ({}) ends:\n{}",
                        self.layout.log(&name).display(),
                        log_tail(&self.layout.log(&name), 20)
                    );
                }
            }
            if Instant::now() > deadline {
                anyhow::bail!("{name} did not become ready within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Restart children that die until `shutdown` resolves.
    pub async fn supervise(&mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let exited = {
                let waits = self.children.iter_mut().enumerate().filter_map(|(i, s)| {
                    let child = s.child.as_mut()?;
                    Some(Box::pin(async move { (i, child.wait().await) }))
                });
                let waits: Vec<_> = waits.collect();
                if waits.is_empty() {
                    shutdown.as_mut().await;
                    return;
                }
                tokio::select! {
                    _ = shutdown.as_mut() => return,
                    ((i, status), _, _) = select_all(waits) => (i, status),
                }
            };
            let (i, status) = exited;
            let s = &mut self.children[i];
            s.child = None;
            if s.started.elapsed() >= HEALTHY_RUN {
                s.recent_restarts = 0;
            }
            let upgrade = std::fs::remove_file(self.layout.upgrade_marker(&s.spec.name)).is_ok();
            let backoff = if upgrade {
                Duration::ZERO
            } else {
                (Duration::from_millis(500) * 2u32.pow(s.recent_restarts.min(5))).min(MAX_BACKOFF)
            };
            let status = status.map_or_else(|e| e.to_string(), |st| st.to_string());
            tracing::warn!(
                process = %s.spec.name,
                %status,
                restarts = s.restarts,
                backoff_ms = backoff.as_millis() as u64,
                upgrade,
                "exited; restarting"
            );
            tokio::select! {
                _ = shutdown.as_mut() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            let hold = self.layout.hold_marker(&self.children[i].spec.name);
            while hold.exists() {
                tokio::select! {
                    _ = shutdown.as_mut() => return,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
            let spec = self.children[i].spec.clone();
            match self.spawn(&spec) {
                Ok(child) => {
                    let s = &mut self.children[i];
                    s.child = Some(child);
                    s.started = Instant::now();
                    if !upgrade {
                        s.recent_restarts += 1;
                    }
                    s.restarts += 1;
                    self.save_pids();
                }
                Err(e) => tracing::error!(process = %spec.name, error = %e, "restart failed"),
            }
        }
    }

    /// SIGINT every child (in the reverse of their start: each node before
    /// its fd-keeper, the controller last), wait for each for up to
    /// [`STOP_GRACE`], SIGKILL what is left.
    pub async fn stop_all(&mut self) {
        for s in self.children.iter_mut().rev() {
            let Some(mut child) = s.child.take() else {
                continue;
            };
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGINT,
                );
            }
            match tokio::time::timeout(STOP_GRACE, child.wait()).await {
                Ok(Ok(status)) if status.success() => {
                    tracing::info!(process = %s.spec.name, "stopped")
                }
                Ok(Ok(status)) => {
                    tracing::warn!(process = %s.spec.name, %status, "stopped with an error")
                }
                Ok(Err(e)) => tracing::warn!(process = %s.spec.name, error = %e, "wait failed"),
                Err(_) => {
                    tracing::error!(process = %s.spec.name, "did not stop in time; killing it");
                    let _ = child.kill().await;
                }
            }
        }
        Pids::remove(&self.layout);
    }

    /// Pids of the running children, for the pids file and the ready line.
    pub fn pids(&self) -> Pids {
        Pids {
            supervisor: std::process::id() as i32,
            children: self
                .children
                .iter()
                .filter_map(|s| Some((s.spec.name.clone(), s.child.as_ref()?.id()? as i32)))
                .collect(),
        }
    }

    fn save_pids(&self) {
        if let Err(e) = self.pids().save(&self.layout) {
            tracing::warn!(error = %e, "could not record the children's pids");
        }
    }
}

/// One readiness probe of a child.
async fn probe(spec: &ChildSpec) -> bool {
    match spec.kind {
        ChildKind::Csi => super::local_cmd::probe_ready(&spec.socket).await,
        ChildKind::FdKeeper => jax_csi::fuse::keeper::KeeperClient::new(&spec.socket)
            .list()
            .is_ok(),
    }
}

/// The last `n` lines of a log file.
fn log_tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
