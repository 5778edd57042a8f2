//! Mounts outlive the node plugin: with an fd-keeper, a node plugin that is
//! upgraded (SIGTERM, a new process) or killed (SIGKILL, a new process)
//! leaves its pods' mounts in place. A "pod" keeps a file and a directory
//! open in the volume and works on through both; the upgrade must cost it
//! no error at all, the crash at most the one request in flight and the
//! first fsync of the file (EIO: its unsynced writes may be lost), and
//! neither may need NodeStage or NodePublish again.

mod cluster;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cluster::pod::{window, Pod};
use cluster::{csi, Cluster};
use jax_csi::csi::proto::controller_client::ControllerClient;
use jax_csi::csi::proto::node_client::NodeClient;
use jax_csi::fuse::keeper::KeeperClient;

fn with_keeper(socket: &Path) -> impl FnOnce(&mut Command) + '_ {
    move |cmd| {
        cmd.arg("--handover-socket").arg(socket);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_and_crash_of_the_node_plugin_keep_the_pods_mounts() {
    let mut c = Cluster::start();
    let keeper_socket = c.fd_keeper();
    let keeper = KeeperClient::new(&keeper_socket);
    let mut ctl = ControllerClient::new(c.controller(0).await);
    let mut node = NodeClient::new(
        c.node_with("node-a", "127.0.0.1:0", with_keeper(&keeper_socket))
            .await,
    );
    let root = c.dir.path().to_path_buf();
    let id = csi::create_volume(&mut ctl, "survivor", 64 << 20).await;
    let target = csi::stage_and_publish(&mut node, &root, &id, "pod-1").await;
    std::fs::write(target.join("before"), "written before\n").unwrap();
    let kept = keeper.list().unwrap();
    assert_eq!(kept.len(), 1, "the keeper holds the new mount: {kept:?}");
    assert_eq!(kept[0].volume, id);
    let dev = std::fs::metadata(&target).unwrap().dev();

    let pod = Pod::start(target.clone());
    pod.wait_more(50);

    // Upgrade: SIGTERM (the mounts are handed over), then a new process.
    let up_from = Instant::now();
    let status = c.stop_node("node-a");
    assert!(
        status.success(),
        "the old node plugin exits cleanly: {status}"
    );
    let handed_over = up_from.elapsed();
    drop(node);
    let node = NodeClient::new(
        c.node_with("node-a", "127.0.0.1:0", with_keeper(&keeper_socket))
            .await,
    );
    let upgraded = up_from.elapsed();
    pod.wait_more(50);
    assert_eq!(
        std::fs::metadata(&target).unwrap().dev(),
        dev,
        "the same mount serves the pod: nothing was unmounted or mounted again"
    );

    // Crash: SIGKILL, then a new process (as Kubernetes restarts it).
    let synced_before_crash = pod.synced.load(Ordering::SeqCst);
    let crash_from = Instant::now();
    c.kill_node("node-a");
    drop(node);
    let mut node = NodeClient::new(
        c.node_with("node-a", "127.0.0.1:0", with_keeper(&keeper_socket))
            .await,
    );
    let restarted = crash_from.elapsed();
    pod.wait_more(50);
    let crash_to = Instant::now();
    let written = pod.written.clone();
    let ops = pod.finish();
    assert_eq!(std::fs::metadata(&target).unwrap().dev(), dev);

    let (up_errors, up_pause) = window(&ops, up_from, crash_from);
    assert!(
        up_errors.is_empty(),
        "an upgrade must cost the pod no error: {up_errors:?}"
    );
    let (crash_errors, crash_pause) = window(&ops, crash_from, crash_to);
    cluster::pod::assert_crash_errors(&crash_errors);
    assert!(
        restarted < Duration::from_secs(10),
        "restart took {restarted:?}"
    );
    // Every line whose fsync returned before the crash is there, in order;
    // every line written after the restart too.
    let log = std::fs::read_to_string(target.join("log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    for n in 0..synced_before_crash {
        assert!(
            lines.contains(&format!("line {n}").as_str()),
            "line {n} was fsynced before the crash and is lost"
        );
    }
    let last = written.load(Ordering::SeqCst) - 1;
    assert_eq!(lines.last().copied(), Some(format!("line {last}").as_str()));
    println!(
        "upgrade: old process handed over in {handed_over:?}, new one ready after {upgraded:?}, \
         longest pod operation {up_pause:?}, errors 0"
    );
    println!(
        "crash: new process ready {restarted:?} after SIGKILL, longest pod operation {crash_pause:?}, \
         errors {} ({crash_errors:?})",
        crash_errors.len()
    );

    // Both successors resumed the kept connection (no fresh mount).
    let node_log = std::fs::read_to_string(c.node_log("node-a")).unwrap();
    assert_eq!(
        node_log.matches("mount handed over").count(),
        1,
        "{node_log}"
    );
    assert_eq!(
        node_log.matches("mount resumed from the fd-keeper").count(),
        2,
        "{node_log}"
    );
    assert_eq!(
        node_log.matches("mount running").count(),
        1,
        "mounted once, by the first stage, never afresh"
    );

    // The volume ends as usual, and the keeper lets it go.
    csi::unpublish_and_unstage(&mut node, &root, &id, "pod-1").await;
    assert!(keeper.list().unwrap().is_empty(), "the keeper released it");
}
