//! Where `jax-csi local` keeps things in its state directory, the ports it
//! chose (kept across runs so peers and scrapers find the same addresses),
//! the pids of the processes it runs, and the clean-up after a crash.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// The paths of one local cluster's state directory.
#[derive(Clone, Debug)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// `root` must exist; it is resolved so every derived path is absolute.
    pub fn new(root: &Path) -> anyhow::Result<Self> {
        let root = root
            .canonicalize()
            .with_context(|| format!("resolving {}", root.display()))?;
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn kek(&self) -> PathBuf {
        self.root.join("kek.hex")
    }
    /// A KEK rotation in progress: the previous KEK, beside the current one.
    pub fn previous_kek(&self) -> PathBuf {
        self.root.join("kek.previous.hex")
    }
    pub fn postgres(&self) -> PathBuf {
        self.root.join("postgres")
    }
    pub fn controller_socket(&self) -> PathBuf {
        self.root.join("controller.sock")
    }
    pub fn node_socket(&self, node: &str) -> PathBuf {
        self.root.join(format!("{node}.sock"))
    }
    /// Node `node`'s operator (Admin) service, apart from its CSI socket.
    pub fn admin_socket(&self, node: &str) -> PathBuf {
        self.root.join(format!("{node}-admin.sock"))
    }
    /// The fd-keeper that holds node `node`'s FUSE connections.
    pub fn keeper_socket(&self, node: &str) -> PathBuf {
        self.root.join(format!("{node}-fd-keeper.sock"))
    }
    /// Left by `local upgrade`: the supervisor restarts `node` at once.
    pub fn upgrade_marker(&self, node: &str) -> PathBuf {
        self.root.join(format!("{node}.upgrade"))
    }
    /// Left by `local lose-node`: the supervisor does not restart
    /// process `name` while it exists.
    pub fn hold_marker(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.hold"))
    }
    pub fn node_state(&self, node: &str) -> PathBuf {
        self.root.join("nodes").join(node)
    }
    /// Every staging and target path of the local nodes lies under it.
    pub fn kubelet(&self) -> PathBuf {
        self.root.join("kubelet")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn log(&self, process: &str) -> PathBuf {
        self.logs().join(format!("{process}.log"))
    }
    fn ports_file(&self) -> PathBuf {
        self.root.join("local.json")
    }
    fn pids_file(&self) -> PathBuf {
        self.root.join("local.pids")
    }
    /// Held by the `local up` that runs this cluster.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("local.lock")
    }
}

/// The ports of the processes, chosen once and reused.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Ports {
    pub controller_metrics: u16,
    pub nodes: BTreeMap<String, NodePorts>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct NodePorts {
    /// UDP, the sync endpoint.
    pub sync: u16,
    /// TCP, `/metrics`.
    pub metrics: u16,
}

impl Ports {
    /// The recorded ports, with fresh ones for new processes and for any
    /// recorded port something else has taken meanwhile; saved back.
    pub fn load_or_choose(layout: &Layout, nodes: &[String]) -> anyhow::Result<Self> {
        let path = layout.ports_file();
        let mut ports: Ports = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a ports file", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ports::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        if !tcp_free(ports.controller_metrics) {
            ports.controller_metrics = free_tcp_port()?;
        }
        for node in nodes {
            let entry = ports.nodes.get(node).copied();
            let sync = match entry {
                Some(p) if udp_free(p.sync) => p.sync,
                _ => free_udp_port()?,
            };
            let metrics = match entry {
                Some(p) if tcp_free(p.metrics) => p.metrics,
                _ => free_tcp_port()?,
            };
            ports
                .nodes
                .insert(node.clone(), NodePorts { sync, metrics });
        }
        jax_csi::durable::write_atomic(&path, &serde_json::to_vec_pretty(&ports)?, 0o644)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(ports)
    }
}

fn tcp_free(port: u16) -> bool {
    port != 0 && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn udp_free(port: u16) -> bool {
    port != 0 && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
}

fn free_tcp_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn free_udp_port() -> anyhow::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Who runs a local cluster: the supervisor and each of its children.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Pids {
    pub supervisor: i32,
    pub children: BTreeMap<String, i32>,
}

impl Pids {
    pub fn load(layout: &Layout) -> Option<Self> {
        serde_json::from_slice(&std::fs::read(layout.pids_file()).ok()?).ok()
    }

    pub fn save(&self, layout: &Layout) -> anyhow::Result<()> {
        let path = layout.pids_file();
        jax_csi::durable::write_atomic(&path, &serde_json::to_vec_pretty(self)?, 0o644)
            .with_context(|| format!("writing {}", path.display()))
    }

    pub fn remove(layout: &Layout) {
        let _ = std::fs::remove_file(layout.pids_file());
    }
}

/// True if `pid` is a live process whose command line mentions `root`
/// (so a recycled pid is never signalled).
pub fn runs_in(pid: i32, root: &Path) -> bool {
    if !jax_csi::db::embedded::process_alive(pid) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let root = root.as_os_str().as_encoded_bytes();
    cmdline.windows(root.len()).any(|w| w == root)
}

/// SIGINT (a node plugin then unmounts rather than handing its mounts
/// over), then SIGKILL after `grace`; returns once `pid` is gone.
pub fn terminate(pid: i32, grace: Duration) {
    let pid_t = Pid::from_raw(pid);
    let _ = kill(pid_t, Signal::SIGINT);
    let deadline = Instant::now() + grace;
    while jax_csi::db::embedded::process_alive(pid) {
        if Instant::now() > deadline {
            let _ = kill(pid_t, Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What [`clean_leftovers`] found and undid.
#[derive(Debug, Default)]
pub struct Cleaned {
    pub processes: Vec<String>,
    pub mounts: Vec<PathBuf>,
    pub sockets: Vec<PathBuf>,
}

impl Cleaned {
    pub fn is_empty(&self) -> bool {
        self.processes.is_empty() && self.mounts.is_empty() && self.sockets.is_empty()
    }
}

/// Undo what a killed `local up` left: its children still running (they
/// were told to stop when it died, and get time for their final commits),
/// mounts under the state dir, and sockets. Only call while holding the
/// state dir's lock.
pub fn clean_leftovers(layout: &Layout) -> Cleaned {
    let mut cleaned = Cleaned::default();
    if let Some(pids) = Pids::load(layout) {
        for (name, pid) in pids.children {
            if runs_in(pid, layout.root()) {
                tracing::warn!(process = %name, pid, "stopping a process left by an earlier run");
                terminate(pid, Duration::from_secs(30));
                cleaned.processes.push(format!("{name} (pid {pid})"));
            }
        }
        Pids::remove(layout);
    }
    cleaned.mounts = detach_mounts_under(layout.root());
    let sockets = std::fs::read_dir(layout.root())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "sock"));
    for socket in sockets {
        if std::fs::remove_file(&socket).is_ok() {
            cleaned.sockets.push(socket);
        }
    }
    cleaned
}

/// Lazily detach every mount below `root`, deepest first; returns them.
pub fn detach_mounts_under(root: &Path) -> Vec<PathBuf> {
    let mut mounts = jax_csi::fuse::session::mounts_under(root);
    mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    mounts.dedup();
    for m in &mounts {
        if let Err(e) = jax_csi::fuse::session::lazy_unmount(m) {
            tracing::warn!(mount = %m.display(), error = %e, "could not detach a leftover mount");
        }
    }
    mounts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_kept_across_runs_and_replaced_when_taken() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path()).unwrap();
        let nodes = vec!["node-0".to_string(), "node-1".to_string()];
        let first = Ports::load_or_choose(&layout, &nodes).unwrap();
        let again = Ports::load_or_choose(&layout, &nodes).unwrap();
        assert_eq!(first.nodes["node-0"].sync, again.nodes["node-0"].sync);
        assert_eq!(first.controller_metrics, again.controller_metrics);
        // Something else takes the controller's metrics port.
        let _squatter =
            std::net::TcpListener::bind(("127.0.0.1", again.controller_metrics)).unwrap();
        let moved = Ports::load_or_choose(&layout, &nodes).unwrap();
        assert_ne!(moved.controller_metrics, again.controller_metrics);
        assert_eq!(moved.nodes["node-1"].metrics, again.nodes["node-1"].metrics);
    }

    #[test]
    fn a_recycled_pid_is_not_ours() {
        let dir = tempfile::tempdir().unwrap();
        // This test process's command line does not mention the temp dir.
        assert!(!runs_in(std::process::id() as i32, dir.path()));
        assert!(!runs_in(i32::MAX, dir.path()));
    }
}
