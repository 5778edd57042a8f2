//! `jax-csi local` as a user runs it: the binary, its supervised child
//! processes and embedded Postgres; a state dir under a 0700 parent; a
//! SIGKILL and the restart after it; `local down`; the operator CLI against
//! the running cluster (table and JSON); `/metrics` scraped and parsed
//! after known traffic; JSON logs.

mod cluster;

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cluster::csi;
use jax_csi::csi::proto::controller_client::ControllerClient;
use jax_csi::csi::proto::node_client::NodeClient;
use jax_csi::csi::proto::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_jax-csi");

/// Poll `f` until it holds or `secs` pass.
fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn alive(pid: i32) -> bool {
    jax_csi::db::embedded::process_alive(pid)
}

/// A running `jax-csi local up`.
struct Local {
    state: PathBuf,
    child: Option<Child>,
    ready: serde_json::Value,
}

impl Local {
    fn up(state: &Path, nodes: usize) -> Self {
        let mut child = Command::new(BIN)
            .args(["local", "up", "--nodes", &nodes.to_string(), "--state-dir"])
            .arg(state)
            .stdout(Stdio::piped())
            .stderr(
                fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(state.with_extension("log"))
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ready = serde_json::from_str(&line).unwrap_or_else(|_| {
            let log = fs::read_to_string(state.with_extension("log")).unwrap_or_default();
            panic!("local up printed no ready line; its log:\n{log}")
        });
        Self {
            state: state.to_path_buf(),
            child: Some(child),
            ready,
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    fn endpoint(&self, v: &serde_json::Value) -> PathBuf {
        jax_csi::csi::server::parse_endpoint(v.as_str().unwrap()).unwrap()
    }

    fn node_endpoint(&self, i: usize) -> String {
        self.ready["nodes"][i]["endpoint"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Node `i`'s Admin socket (`admin` in the ready line), apart from its
    /// CSI socket.
    fn admin_endpoint(&self, i: usize) -> String {
        self.ready["nodes"][i]["admin"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn database_url(&self) -> String {
        self.ready["database_url"].as_str().unwrap().to_string()
    }

    async fn controller(&self) -> ControllerClient<Channel> {
        let socket = self.endpoint(&self.ready["controller"]);
        ControllerClient::new(jax_csi::csi::server::connect_unix(&socket).await.unwrap())
    }

    async fn node(&self, i: usize) -> NodeClient<Channel> {
        let socket = self.endpoint(&self.ready["nodes"][i]["endpoint"]);
        NodeClient::new(jax_csi::csi::server::connect_unix(&socket).await.unwrap())
    }

    fn kubelet(&self) -> PathBuf {
        PathBuf::from(self.ready["kubelet_dir"].as_str().unwrap())
    }

    /// The children's pids from the pids file.
    fn children(&self) -> HashMap<String, i32> {
        let pids: serde_json::Value =
            serde_json::from_slice(&fs::read(self.state.join("local.pids")).unwrap()).unwrap();
        pids["children"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_i64().unwrap() as i32))
            .collect()
    }

    /// SIGTERM and wait: a clean stop exits 0.
    fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "local up exited with {status}");
    }

    /// SIGKILL (the OOM killer, a closed terminal) and reap.
    fn kill(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let _ = child.wait();
        }
    }
}

/// The postmaster's pid of a state dir's embedded Postgres (wherever its data lives).
fn postmaster_pid(state: &Path) -> Option<i32> {
    let pg = state.join("postgres");
    let parent = match fs::read_to_string(pg.join("LOCATION")) {
        Ok(p) => PathBuf::from(p.trim()),
        Err(_) => pg,
    };
    fs::read_to_string(parent.join("pgdata/postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

async fn volume_names(ctl: &mut ControllerClient<Channel>) -> Vec<String> {
    ctl.list_volumes(ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries
        .into_iter()
        .map(|e| e.volume.unwrap().volume_id)
        .collect()
}

/// Stage and publish `id` on node `i`; returns the pod's target path.
async fn publish(local: &Local, i: usize, id: &str, pod: &str) -> PathBuf {
    publish_with(local, i, id, pod, &HashMap::new()).await
}

/// [`publish`] with the secrets the sidecars would send.
async fn publish_with(
    local: &Local,
    i: usize,
    id: &str,
    pod: &str,
    secrets: &HashMap<String, String>,
) -> PathBuf {
    let mut node = local.node(i).await;
    let staging = local
        .kubelet()
        .join(format!("plugins/jax/{id}/globalmount"));
    let target = local.kubelet().join(format!("pods/{pod}/volumes/data"));
    node.node_stage_volume(NodeStageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(csi::rwx()),
        secrets: secrets.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    node.node_publish_volume(NodePublishVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(csi::rwx()),
        secrets: secrets.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    target
}

/// A state dir under a parent only root can enter (as `mktemp -d` or
/// `/root` make): `local up` works there, and after a SIGKILL leaves its
/// Postgres orphaned, the next `local up` finds it, stops it and comes back
/// with the volumes; a clean stop leaves no process, mount or socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_up_under_a_private_parent_survives_a_sigkill() {
    let parent = tempfile::tempdir().unwrap();
    fs::set_permissions(parent.path(), fs::Permissions::from_mode(0o700)).unwrap();
    let state = parent.path().join("jax");
    let local = Local::up(&state, 1);
    let mut ctl = local.controller().await;
    let id = csi::create_volume(&mut ctl, "kept", 64 << 20).await;
    let target = publish(&local, 0, &id, "p").await;
    cluster::write_synced(&target.join("f"), b"before the kill").unwrap();
    let children = local.children();
    let postmaster = postmaster_pid(&state).expect("postgres runs");
    local.kill();

    // The children are told (parent-death signal) and stop on their own;
    // Postgres is not our child and stays behind.
    for (name, pid) in &children {
        eventually(
            60,
            &format!("{name} stops after its supervisor died"),
            || !alive(*pid),
        );
    }
    assert!(
        alive(postmaster),
        "an orphaned Postgres is what we must cope with"
    );

    let local = Local::up(&state, 1);
    assert!(!alive(postmaster), "the orphan was stopped");
    let mut ctl = local.controller().await;
    assert!(
        volume_names(&mut ctl).await.contains(&id),
        "the volume is kept"
    );
    // The node brought its mount back from its records.
    let target = local.kubelet().join("pods/p/volumes/data");
    eventually(30, "the pod's target serves the file again", || {
        fs::read(target.join("f")).ok().as_deref() == Some(&b"before the kill"[..])
    });
    let postmaster = postmaster_pid(&state).unwrap();
    let children = local.children();
    local.stop();
    assert!(!alive(postmaster), "a clean stop stops Postgres");
    for (name, pid) in children {
        assert!(!alive(pid), "{name} still runs");
    }
    assert!(
        jax_csi::fuse::session::mounts_under(&state).is_empty(),
        "mounts left: {:?}",
        jax_csi::fuse::session::mounts_under(&state)
    );
    let sockets: Vec<_> = fs::read_dir(&state)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "sock"))
        .collect();
    assert!(sockets.is_empty(), "sockets left: {sockets:?}");
    if let Ok(location) = fs::read_to_string(state.join("postgres/LOCATION")) {
        let _ = fs::remove_dir_all(location.trim());
    }
}

/// A child that dies is restarted; `local down` cleans up after a killed
/// supervisor, and stops a running one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_are_restarted_and_local_down_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("jax");
    let local = Local::up(&state, 1);
    let node_pid = local.children()["node-0"];
    kill(Pid::from_raw(node_pid), Signal::SIGKILL).unwrap();
    eventually(30, "node-0 restarted with a new pid", || {
        local
            .children()
            .get("node-0")
            .is_some_and(|p| *p != node_pid && alive(*p))
    });
    let socket = PathBuf::from(local.node_endpoint(0).trim_start_matches("unix://"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let probe = async {
            let ch = jax_csi::csi::server::connect_unix(&socket).await.ok()?;
            let mut c = jax_csi::csi::proto::identity_client::IdentityClient::new(ch);
            c.probe(ProbeRequest {}).await.ok()?.into_inner().ready
        };
        if probe.await == Some(true) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted node never answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = fs::read_to_string(state.with_extension("log")).unwrap();
    assert!(log.contains("exited; restarting"), "{log}");

    // Killed: `local down` stops what it left.
    let postmaster = postmaster_pid(&state).unwrap();
    let children = local.children();
    local.kill();
    let out = Command::new(BIN)
        .args(["local", "down", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("stopped Postgres (pid {postmaster})")),
        "{text}"
    );
    assert!(!alive(postmaster));
    for (name, pid) in children {
        assert!(!alive(pid), "{name} still runs");
    }

    // Running: `local down` asks it to stop, and it does.
    let local = Local::up(&state, 0);
    let supervisor = local.pid();
    let out = Command::new(BIN)
        .args(["local", "down", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains(&format!("stopping `local up` (pid {supervisor})")));
    let mut local = local;
    let status = local.child.take().unwrap().wait().unwrap();
    assert!(status.success(), "{status}");

    // Not a local state dir: a clear error.
    let out = Command::new(BIN)
        .args(["local", "down", "--state-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a `jax-csi local` state directory"));
}

/// `local upgrade` replaces a node plugin process under a working pod:
/// the pod sees a pause and no error, its mount is the same one, and
/// nothing calls NodeStage or NodePublish again. Then a SIGKILL of the new
/// process: the supervisor restarts it, the kept mount answers again, and
/// at most the request in flight failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_upgrade_and_a_node_crash_keep_the_pods_mount() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("jax");
    let local = Local::up(&state, 1);
    let mut ctl = local.controller().await;
    let id = csi::create_volume(&mut ctl, "upgraded", 64 << 20).await;
    let target = publish(&local, 0, &id, "pod-u").await;
    cluster::write_synced(&target.join("before"), b"written before\n").unwrap();
    let dev = fs::metadata(&target).unwrap().dev();
    let pod = cluster::pod::Pod::start(target.clone());
    pod.wait_more(30);

    let old = local.children()["node-0"];
    let from = Instant::now();
    let line = cli_json(&[
        "local",
        "upgrade",
        "--state-dir",
        state.to_str().unwrap(),
        "--node",
        "node-0",
    ]);
    assert_eq!(line["old_pid"].as_i64(), Some(old as i64), "{line}");
    assert_ne!(line["new_pid"].as_i64(), Some(old as i64), "{line}");
    assert_eq!(line["mounts_kept"].as_u64(), Some(1), "{line}");
    assert!(!alive(old));
    pod.wait_more(30);
    assert_eq!(fs::metadata(&target).unwrap().dev(), dev, "the same mount");

    let crashed = local.children()["node-0"];
    let crash_from = Instant::now();
    kill(Pid::from_raw(crashed), Signal::SIGKILL).unwrap();
    eventually(30, "node-0 restarted after the SIGKILL", || {
        local
            .children()
            .get("node-0")
            .is_some_and(|p| *p != crashed && alive(*p))
    });
    pod.wait_more(30);
    let ops = pod.finish();
    let node_log = fs::read_to_string(state.join("logs/node-0.log")).unwrap();
    let (up_errors, up_pause) = cluster::pod::window(&ops, from, crash_from);
    assert!(
        up_errors.is_empty(),
        "the upgrade cost errors: {up_errors:?}; node log:\n{node_log}"
    );
    let (crash_errors, crash_pause) = cluster::pod::window(&ops, crash_from, Instant::now());
    cluster::pod::assert_crash_errors(&crash_errors);
    assert_eq!(fs::metadata(&target).unwrap().dev(), dev, "the same mount");
    println!(
        "local upgrade: {line}; longest pod operation {up_pause:?}; after SIGKILL: longest {crash_pause:?}, errors {}",
        crash_errors.len()
    );
    assert_eq!(
        node_log.matches("mount resumed from the fd-keeper").count(),
        2,
        "{node_log}"
    );
    local.stop();
    assert!(
        jax_csi::fuse::session::mounts_under(&state).is_empty(),
        "a clean stop unmounts"
    );
}

fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn cli_json(args: &[&str]) -> serde_json::Value {
    let (ok, out, err) = cli(args);
    assert!(ok, "{args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out}"))
}

/// The operator CLI reads what the services wrote, and restores through the
/// node; `/metrics` counts the traffic that was made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_cli_and_metrics_against_a_local_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("jax");
    let local = Local::up(&state, 1);
    let url = local.database_url();
    let node = local.admin_endpoint(0);
    let mut ctl = local.controller().await;
    let id = csi::create_volume(&mut ctl, "ops", 64 << 20).await;
    // One refused request, to see its code counted.
    let refused = ctl
        .create_volume(CreateVolumeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let target = publish(&local, 0, &id, "ops").await;
    cluster::write_synced(&target.join("notes.txt"), b"first").unwrap();
    // The fsync went to the journal: wait for the version that follows it,
    // so "first" has a version of its own to restore.
    let history = || {
        cli_json(&[
            "volume",
            "history",
            &id,
            "-o",
            "json",
            "--node-endpoint",
            &node,
        ])
    };
    eventually(30, "a version holds the first write", || {
        history().as_array().is_some_and(|a| a.len() >= 2)
    });
    fs::create_dir(target.join("dir")).unwrap();
    cluster::write_synced(&target.join("notes.txt"), b"second, longer").unwrap();
    let mut f = fs::File::open(target.join("notes.txt")).unwrap();
    let mut read_back = Vec::new();
    f.read_to_end(&mut read_back).unwrap();
    assert_eq!(read_back, b"second, longer");

    // Records, from Postgres.
    eventually(30, "node-0 reports its head", || {
        let v = cli_json(&["volume", "list", "-o", "json", "--database-url", &url]);
        v.as_array().unwrap().iter().any(|x| {
            x["id"] == id.as_str()
                && x["replicas"][0]["node_id"] == "node-0"
                && !x["head"].is_null()
        })
    });
    let (ok, table, _) = cli(&["volume", "list", "--database-url", &url]);
    assert!(
        ok && table.starts_with("ID ") && table.contains(&id) && table.contains("64.0 MiB"),
        "{table}"
    );
    let shown = cli_json(&["volume", "show", &id, "-o", "json", "--database-url", &url]);
    assert_eq!(shown["name"], "ops");
    // One node: the second replica a volume asks for by default has
    // nowhere to go, and the volume says so.
    assert_eq!(shown["replicas_wanted"], 2, "{shown}");
    assert_eq!(shown["replicas_in_sync"], 1, "{shown}");
    assert_eq!(shown["abnormal"], true, "{shown}");
    assert!(
        shown["condition"]
            .as_str()
            .unwrap()
            .contains("1 of 2 replicas in sync: node-0 (stages, in sync)"),
        "{shown}"
    );
    assert_eq!(shown["replicas"][0]["in_sync"], true, "{shown}");
    let nodes = cli_json(&["node", "list", "-o", "json", "--database-url", &url]);
    let n0 = &nodes.as_array().unwrap()[0];
    assert_eq!(n0["id"], "node-0");
    assert_eq!(n0["volumes_held"], 1);
    assert!(n0["addresses"].as_str().unwrap().contains("127.0.0.1:"));
    let mounts = cli_json(&["mount", "list", "-o", "json", "--database-url", &url]);
    assert_eq!(mounts[0]["status"], "running");
    assert_eq!(mounts[0]["published"], true);
    let snaps = cli_json(&["snapshot", "list", "-o", "json", "--database-url", &url]);
    assert_eq!(snaps.as_array().unwrap().len(), 0);

    // Contents, history and restore, through the node.
    let listing = cli_json(&[
        "volume",
        "ls",
        &id,
        "/",
        "-o",
        "json",
        "--node-endpoint",
        &node,
    ]);
    let names: Vec<&str> = listing["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["dir", "notes.txt"]);
    let (ok, cat, _) = cli(&["volume", "cat", &id, "/notes.txt", "--node-endpoint", &node]);
    assert!(ok);
    assert_eq!(cat, "second, longer");
    // The CSI socket (what the sidecars reach) does not serve Admin.
    let csi = local.node_endpoint(0);
    let (ok, _, err) = cli(&["volume", "cat", &id, "/notes.txt", "--node-endpoint", &csi]);
    assert!(!ok && err.to_lowercase().contains("unimplemented"), "{err}");
    let history = history();
    let history = history.as_array().unwrap();
    assert!(history.len() >= 3, "{history:?}");
    // The version that first had notes.txt = "first".
    let first = history
        .iter()
        .rev()
        .find(|v| {
            let h = v["hash"].as_str().unwrap();
            cli(&[
                "volume",
                "cat",
                &id,
                "/notes.txt",
                "--version",
                h,
                "--node-endpoint",
                &node,
            ])
            .1 == "first"
        })
        .expect("a version with the first content");
    let height = first["height"].as_u64().unwrap().to_string();
    let restored = cli_json(&[
        "volume",
        "restore",
        &id,
        "--version",
        &height,
        "-o",
        "json",
        "--node-endpoint",
        &node,
    ]);
    assert_eq!(restored["restored"]["hash"], first["hash"]);
    assert_eq!(
        fs::read(target.join("notes.txt")).unwrap(),
        b"first",
        "the pod sees the restore"
    );
    // By time: the newest version at or after "now" is the restored head.
    let at = format!(
        "@{}",
        restored["head"]["created_unix_seconds"].as_i64().unwrap()
    );
    let (ok, cat, err) = cli(&[
        "volume",
        "cat",
        &id,
        "/notes.txt",
        "--at",
        &at,
        "--node-endpoint",
        &node,
    ]);
    assert!(ok, "{err}");
    assert_eq!(cat, "first");

    // The volume's secret rotated on demand: the pod reads and writes on,
    // and versions from before still open.
    let rotated = cli_json(&[
        "volume",
        "rotate-secret",
        &id,
        "-o",
        "json",
        "--node-endpoint",
        &node,
    ]);
    assert_eq!(rotated["volume"], id.as_str(), "{rotated}");
    assert!(
        rotated["head"]["height"].as_u64().unwrap() > restored["head"]["height"].as_u64().unwrap()
    );
    assert_eq!(fs::read(target.join("notes.txt")).unwrap(), b"first");
    cluster::write_synced(&target.join("after.txt"), b"sealed under the new secret").unwrap();
    let (ok, cat, err) = cli(&["volume", "cat", &id, "/after.txt", "--node-endpoint", &node]);
    assert!(ok, "{err}");
    assert_eq!(cat, "sealed under the new secret");
    let (ok, cat, err) = cli(&[
        "volume",
        "cat",
        &id,
        "/notes.txt",
        "--version",
        first["hash"].as_str().unwrap(),
        "--node-endpoint",
        &node,
    ]);
    assert!(ok, "{err}");
    assert_eq!(cat, "first", "a version from before the rotation");

    // Clear errors.
    let (ok, _, err) = cli(&["volume", "show", "feedface", "--database-url", &url]);
    assert!(!ok && err.contains("no volume feedface"), "{err}");
    let (ok, _, err) = cli(&[
        "volume",
        "ls",
        "0123456789abcdef0123456789abcdef",
        "--node-endpoint",
        &node,
    ]);
    assert!(!ok && err.contains("NOT_FOUND"), "{err}");
    let (ok, _, err) = cli(&[
        "volume",
        "list",
        "--database-url",
        "postgres://jax:secret@127.0.0.1:1/jax",
    ]);
    assert!(
        !ok && err.contains("does not answer") && !err.contains("secret"),
        "{err}"
    );
    let (ok, _, err) = cli(&[
        "volume",
        "history",
        &id,
        "--node-endpoint",
        "unix:///nonexistent.sock",
    ]);
    assert!(!ok && err.contains("no node plugin answers"), "{err}");

    // Metrics: counters that match the traffic above.
    let node_metrics = scrape(local.ready["nodes"][0]["metrics"].as_str().unwrap());
    assert_eq!(
        counter(
            &node_metrics,
            "jax_csi_csi_requests_total",
            &[("method", "NodeStageVolume"), ("code", "OK")]
        ),
        1.0
    );
    assert_eq!(
        counter(
            &node_metrics,
            "jax_csi_csi_requests_total",
            &[("method", "NodePublishVolume"), ("code", "OK")]
        ),
        1.0
    );
    assert_eq!(
        counter(
            &node_metrics,
            "jax_csi_csi_requests_total",
            &[("method", "AdminRestore"), ("code", "OK")]
        ),
        1.0
    );
    assert_eq!(
        counter(
            &node_metrics,
            "jax_csi_csi_requests_total",
            &[("method", "AdminRotateSecret"), ("code", "OK")]
        ),
        1.0
    );
    assert!(counter(&node_metrics, "jax_csi_fuse_written_bytes_total", &[]) >= 19.0);
    assert!(counter(&node_metrics, "jax_csi_fuse_read_bytes_total", &[]) >= 14.0);
    assert!(counter(&node_metrics, "jax_csi_fuse_ops_total", &[("op", "write")]) >= 2.0);
    assert!(counter(&node_metrics, "jax_csi_commits_total", &[("result", "ok")]) >= 3.0);
    assert_eq!(
        counter(&node_metrics, "jax_csi_mounts", &[("status", "running")]),
        1.0
    );
    assert!(
        histogram_count(
            &node_metrics,
            "jax_csi_fuse_op_duration_seconds",
            &[("op", "write")]
        ) >= 2
    );
    let ctl_url = local.ready["controller_metrics"]
        .as_str()
        .unwrap()
        .to_string();
    // One node, and the volume asks for two replicas: the leader counts it
    // under-replicated (the condition above says abnormal for the same reason).
    eventually(30, "the leader counts one under-replicated volume", || {
        counter(&scrape(&ctl_url), "jax_csi_under_replicated_volumes", &[]) == 1.0
    });
    let ctl_metrics = scrape(&ctl_url);
    assert_eq!(
        counter(
            &ctl_metrics,
            "jax_csi_csi_requests_total",
            &[("method", "CreateVolume"), ("code", "OK")]
        ),
        1.0
    );
    assert_eq!(
        counter(
            &ctl_metrics,
            "jax_csi_csi_requests_total",
            &[("method", "CreateVolume"), ("code", "INVALID_ARGUMENT")]
        ),
        1.0
    );
    assert_eq!(
        histogram_count(
            &ctl_metrics,
            "jax_csi_csi_request_duration_seconds",
            &[("method", "CreateVolume")]
        ),
        2
    );
    local.stop();
}

/// GET an `http://127.0.0.1:port/metrics` URL and parse the exposition.
fn scrape(url: &str) -> prometheus_parse::Scrape {
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "{head}"
    );
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap()
}

fn matching<'s>(
    scrape: &'s prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Vec<&'s prometheus_parse::Sample> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect()
}

/// A counter's or gauge's value (0 when absent).
fn counter(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    matching(scrape, name, labels)
        .iter()
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            other => panic!("{name} is not a counter: {other:?}"),
        })
        .sum()
}

/// How many observations a histogram has.
fn histogram_count(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> u64 {
    matching(scrape, name, labels)
        .iter()
        .map(|s| match &s.value {
            prometheus_parse::Value::Histogram(buckets) => {
                buckets.iter().map(|b| b.count).fold(0.0, f64::max) as u64
            }
            other => panic!("{name} is not a histogram: {other:?}"),
        })
        .sum()
}

/// `--log-format json`: every log line is a JSON object with a level and message.
#[test]
fn json_logs() {
    let dir = tempfile::tempdir().unwrap();
    let kek = dir.path().join("kek");
    assert!(cli(&["kek", "generate", "--out", kek.to_str().unwrap()]).0);
    let socket = dir.path().join("c.sock");
    let mut child = Command::new(BIN)
        .args(["--log-format", "json", "controller", "--endpoint"])
        .arg(&socket)
        .args([
            "--database-url",
            "postgres://nobody@127.0.0.1:1/none",
            "--kek-file",
        ])
        .arg(&kek)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    eventually(30, "the controller serves", || socket.exists());
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    child.wait().unwrap();
    let lines: Vec<&str> = err.lines().collect();
    assert!(!lines.is_empty());
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{line}"
        );
    }
    assert!(err.contains("controller serving"), "{err}");
}

/// #26: the cluster KEK rotates in `local up` the way the chart README
/// says, with no data copied: the current KEK moves to `kek.previous.hex`
/// and a new one takes `kek.hex`; every process, restarted, opens with
/// either and re-wraps its node-local keys; `kek rotate` re-wraps every
/// Postgres record; then the previous KEK goes and the volume stages and
/// reads with the new one alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_kek_rotates_in_local_up() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("jax");
    let local = Local::up(&state, 1);
    let mut ctl = local.controller().await;
    let id = csi::create_volume(&mut ctl, "rotated", 64 << 20).await;
    let target = publish(&local, 0, &id, "before").await;
    cluster::write_synced(&target.join("f"), b"under the old KEK").unwrap();
    local.stop();

    let (kek, previous) = (state.join("kek.hex"), state.join("kek.previous.hex"));
    fs::rename(&kek, &previous).unwrap();
    jax_csi::crypto::Kek::generate()
        .unwrap()
        .write_file(&kek)
        .unwrap();
    let local = Local::up(&state, 1);
    assert_eq!(
        local.ready["previous_kek_file"],
        previous.display().to_string()
    );
    let url_now = local.database_url();
    let rotated = cli_json(&[
        "kek",
        "rotate",
        "--database-url",
        &url_now,
        "--kek-file",
        kek.to_str().unwrap(),
        "--previous-kek-file",
        previous.to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert!(
        rotated["rewrapped"].as_u64().unwrap() >= 1,
        "the volume's record was re-wrapped: {rotated}"
    );
    local.stop();

    fs::remove_file(&previous).unwrap();
    let local = Local::up(&state, 1);
    assert!(local.ready["previous_kek_file"].is_null());
    let target = publish(&local, 0, &id, "after").await;
    eventually(30, "the volume reads with the new KEK alone", || {
        fs::read(target.join("f")).ok().as_deref() == Some(&b"under the old KEK"[..])
    });
    let mut ctl = local.controller().await;
    let fresh = csi::create_volume(&mut ctl, "after-rotation", 64 << 20).await;
    let target = publish(&local, 0, &fresh, "fresh").await;
    cluster::write_synced(&target.join("g"), b"new").unwrap();
    local.stop();
}

/// #26: `node remove` in `local up`: the other node refuses the removed
/// one, drops its key share from their shared volume and rotates the
/// volume's secret in the same version; the pod on the remaining node
/// reads and writes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_removed_in_local_up() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("jax");
    let local = Local::up(&state, 2);
    let url = local.database_url();
    let mut ctl = local.controller().await;
    let id = csi::create_volume(&mut ctl, "shared", 64 << 20).await;
    let target = publish(&local, 0, &id, "p0").await;
    cluster::write_synced(&target.join("f"), b"shared").unwrap();
    let on_1 = publish(&local, 1, &id, "p1").await;
    eventually(30, "node-1 reads node-0's file", || {
        fs::read(on_1.join("f")).ok().as_deref() == Some(&b"shared"[..])
    });
    let removed = cli_json(&[
        "node",
        "remove",
        "node-1",
        "--database-url",
        &url,
        "-o",
        "json",
    ]);
    println!("node remove: {removed}");
    let node_0 = PathBuf::from(local.ready["nodes"][0]["state_dir"].as_str().unwrap());
    let epochs = node_0.join("epochs").join(&id);
    eventually(30, "node-0 rotates the shared volume's secret", || {
        fs::read_dir(&epochs).is_ok_and(|d| d.count() >= 1)
    });
    let removed_id = fs::read_to_string(node_0.join("REVOKED")).unwrap();
    assert!(!removed_id.trim().is_empty());
    cluster::write_synced(&target.join("after"), b"after the removal").unwrap();
    assert_eq!(fs::read(target.join("f")).unwrap(), b"shared");
    local.stop();
}

/// #26: a tenant's key rotates in `local up` without copying data: `kek
/// rotate-tenant` re-seals the tenant layer of its volume's record; then a
/// NodeStage carrying the old key is refused and one carrying the new key
/// stages it, and a pod reads what was written under the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_key_rotates_in_local_up() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("jax");
    let local = Local::up(&state, 1);
    let (old_key, new_key) = (hex::encode([3u8; 32]), hex::encode([4u8; 32]));
    let secrets =
        |k: &str| -> HashMap<String, String> { [("tenantKey".to_string(), k.to_string())].into() };
    let mut ctl = local.controller().await;
    let id = ctl
        .create_volume(CreateVolumeRequest {
            name: "tenant".into(),
            capacity_range: Some(CapacityRange {
                required_bytes: 64 << 20,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![csi::rwx()],
            parameters: [("tenantKeySecret".to_string(), "team-a".to_string())].into(),
            secrets: secrets(&old_key),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    let target = publish_with(&local, 0, &id, "t", &secrets(&old_key)).await;
    cluster::write_synced(&target.join("data.txt"), b"tenant bytes").unwrap();

    let (old_file, new_file) = (dir.path().join("old.hex"), dir.path().join("new.hex"));
    fs::write(&old_file, &old_key).unwrap();
    fs::write(&new_file, &new_key).unwrap();
    let report = cli_json(&[
        "kek",
        "rotate-tenant",
        "-o",
        "json",
        "--database-url",
        &local.database_url(),
        "--kek-file",
        local.ready["kek_file"].as_str().unwrap(),
        "--tenant-key-file",
        new_file.to_str().unwrap(),
        "--previous-tenant-key-file",
        old_file.to_str().unwrap(),
    ]);
    assert_eq!(report["rewrapped"], 1, "{report}");

    let stage = |key: &str| NodeStageVolumeRequest {
        volume_id: id.clone(),
        staging_target_path: local
            .kubelet()
            .join(format!("plugins/jax/{id}/globalmount"))
            .display()
            .to_string(),
        volume_capability: Some(csi::rwx()),
        secrets: secrets(key),
        ..Default::default()
    };
    let mut node = local.node(0).await;
    let refused = node.node_stage_volume(stage(&old_key)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    node.node_stage_volume(stage(&new_key)).await.unwrap();
    let again = publish_with(&local, 0, &id, "t2", &secrets(&new_key)).await;
    assert_eq!(fs::read(again.join("data.txt")).unwrap(), b"tenant bytes");
    local.stop();
}
