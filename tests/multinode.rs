//! Several node plugins, each in its own network namespace with its own
//! address, sharing one throwaway Postgres (over its unix socket): volumes
//! move between nodes and are written on several at once, links are cut
//! and healed, nodes are killed, strangers knock. Only these namespaces and
//! loopback carry traffic.

mod cluster;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::Cluster;
use jax_csi::csi::proto::controller_client::ControllerClient;
use jax_csi::csi::proto::node_client::NodeClient;
use jax_csi::csi::proto::volume_capability::access_mode::Mode;
use jax_csi::csi::proto::volume_capability::{AccessMode, AccessType, MountVolume};
use jax_csi::csi::proto::volume_content_source::{SnapshotSource, Type as SourceType};
use jax_csi::csi::proto::*;
use jax_csi::netns::Net;
use tonic::transport::Channel;

const SYNC_PORT: u16 = 9810;

type Secrets = std::collections::HashMap<String, String>;
/// The log line of each GC pass.
const GC_PASS: &str = "node::gc: garbage collection ";

fn rwx() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode {
            mode: Mode::MultiNodeMultiWriter as i32,
        }),
    }
}

struct Nodes {
    c: Cluster,
    net: Net,
    ctl: ControllerClient<Channel>,
    clients: Vec<NodeClient<Channel>>,
}

fn name(i: usize) -> String {
    format!("node-{i}")
}

impl Nodes {
    async fn start(n: usize) -> Self {
        Self::start_with(n, |_| {}).await
    }

    /// [`Nodes::start`], with the cluster's node settings changed first.
    async fn start_with(n: usize, configure: impl FnOnce(&mut Cluster)) -> Self {
        Self::start_full(n, configure, &[]).await
    }

    /// [`Nodes::start_with`], the controller run with `controller_args`.
    async fn start_full(
        n: usize,
        configure: impl FnOnce(&mut Cluster),
        controller_args: &[&str],
    ) -> Self {
        let mut c = Cluster::start();
        configure(&mut c);
        let net = Net::new(n);
        let ctl = ControllerClient::new(c.controller_with(0, controller_args).await);
        let mut nodes = Self {
            c,
            net,
            ctl,
            clients: Vec::new(),
        };
        for i in 0..n {
            let ch = nodes.spawn(i).await;
            nodes.clients.push(NodeClient::new(ch));
        }
        nodes
    }

    /// Start (or restart) node `i` in its namespace.
    async fn spawn(&mut self, i: usize) -> Channel {
        let listen = format!("{}:{SYNC_PORT}", self.net.addr(i));
        let net = &self.net;
        let (c, id) = (&mut self.c, name(i));
        c.node_with(&id, &listen, |cmd| net.enter(i, cmd)).await
    }

    async fn restart(&mut self, i: usize) {
        let ch = self.spawn(i).await;
        self.clients[i] = NodeClient::new(ch);
    }

    fn kill(&mut self, i: usize) {
        self.c.kill_node(&name(i));
    }

    async fn create(&mut self, name: &str, source: Option<SourceType>) -> String {
        self.create_with(name, source, &[], &Secrets::new()).await
    }

    /// [`Nodes::create`] with StorageClass parameters and secrets.
    async fn create_with(
        &mut self,
        name: &str,
        source: Option<SourceType>,
        parameters: &[(&str, &str)],
        secrets: &Secrets,
    ) -> String {
        self.ctl
            .create_volume(CreateVolumeRequest {
                name: name.into(),
                volume_capabilities: vec![rwx()],
                capacity_range: Some(CapacityRange {
                    required_bytes: 1 << 30,
                    limit_bytes: 0,
                }),
                volume_content_source: source.map(|t| VolumeContentSource { r#type: Some(t) }),
                parameters: parameters
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                secrets: secrets.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap()
            .volume_id
    }

    /// CreateSnapshot of `id` named `name`.
    async fn snapshot(&mut self, id: &str, name: &str) -> Snapshot {
        self.ctl
            .create_snapshot(CreateSnapshotRequest {
                source_volume_id: id.into(),
                name: name.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap()
    }

    fn staging(&self, i: usize, id: &str) -> PathBuf {
        self.c.dir.path().join(format!("{}/staging/{id}", name(i)))
    }

    fn target(&self, i: usize, id: &str) -> PathBuf {
        self.c.dir.path().join(format!("{}/pods/p/{id}", name(i)))
    }

    async fn stage(&mut self, i: usize, id: &str) -> Result<(), tonic::Status> {
        self.stage_with(i, id, &Secrets::new()).await
    }

    async fn stage_with(
        &mut self,
        i: usize,
        id: &str,
        secrets: &Secrets,
    ) -> Result<(), tonic::Status> {
        let req = NodeStageVolumeRequest {
            volume_id: id.into(),
            staging_target_path: self.staging(i, id).display().to_string(),
            volume_capability: Some(rwx()),
            secrets: secrets.clone(),
            ..Default::default()
        };
        self.clients[i].node_stage_volume(req).await.map(|_| ())
    }

    async fn publish(&mut self, i: usize, id: &str) -> PathBuf {
        self.publish_with(i, id, &Secrets::new()).await
    }

    async fn publish_with(&mut self, i: usize, id: &str, secrets: &Secrets) -> PathBuf {
        self.stage_with(i, id, secrets).await.unwrap();
        let req = NodePublishVolumeRequest {
            volume_id: id.into(),
            staging_target_path: self.staging(i, id).display().to_string(),
            target_path: self.target(i, id).display().to_string(),
            volume_capability: Some(rwx()),
            secrets: secrets.clone(),
            ..Default::default()
        };
        self.clients[i].node_publish_volume(req).await.unwrap();
        self.target(i, id)
    }

    async fn unpublish(&mut self, i: usize, id: &str) {
        let t = self.target(i, id).display().to_string();
        let s = self.staging(i, id).display().to_string();
        self.clients[i]
            .node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: id.into(),
                target_path: t,
            })
            .await
            .unwrap();
        self.clients[i]
            .node_unstage_volume(NodeUnstageVolumeRequest {
                volume_id: id.into(),
                staging_target_path: s,
            })
            .await
            .unwrap();
    }

    /// Wait until Postgres knows node `i`'s head of `id`.
    fn wait_reported(&self, i: usize, id: &str) {
        let head_file = self
            .c
            .node_state(&name(i))
            .join("buckets")
            .join(id)
            .join("HEAD");
        wait_for(&format!("{}'s head in Postgres", name(i)), || {
            let local = fs::read_to_string(&head_file).unwrap_or_default();
            let reported = self.c.psql(&format!(
                "SELECT head FROM bucket_heads WHERE volume_id = '{id}' AND node_id = '{}'",
                name(i)
            ));
            !local.is_empty() && local.trim() == reported
        });
    }

    fn log(&self, i: usize) -> String {
        fs::read_to_string(self.c.node_log(&name(i))).unwrap_or_default()
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for i in 0..self.clients.len() {
                eprintln!("----- log of {} -----\n{}", name(i), self.log(i));
            }
            // Warnings and errors last: a CI report keeps the start and the
            // end of what a failed test printed, not the middle.
            for i in 0..self.clients.len() {
                let log = self.log(i);
                let bad: Vec<&str> = log
                    .lines()
                    .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
                    .collect();
                let shown = &bad[bad.len().saturating_sub(20)..];
                eprintln!(
                    "----- {} warnings and errors on {} (the last {}) -----\n{}",
                    bad.len(),
                    name(i),
                    shown.len(),
                    shown.join("\n")
                );
            }
        }
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn fsync(p: &Path) {
    fs::File::open(p).unwrap().sync_all().unwrap();
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 7) as u8)
        .collect()
}

/// All paths and contents under `dir`.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            if p.is_dir() {
                stack.push(p);
                out.push((rel + "/", Vec::new()));
            } else {
                let bytes = fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
                out.push((rel, bytes));
            }
        }
    }
    out.sort();
    out
}

/// A pod moves: written and fsynced on node 0, unstaged there, staged on
/// node 1, which never held the volume: every byte is there. The stage
/// does not wait for the chunks (#28: a pod that moves works at once):
/// a read fetches what it needs, the rest comes in the background.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_moves_and_takes_every_byte_with_it() {
    let mut n = Nodes::start(2).await;
    let id = n.create("moving", None).await;
    let a = n.publish(0, &id).await;
    let big = pattern(128 << 20, 1);
    fs::write(a.join("data.bin"), &big).unwrap();
    fs::create_dir_all(a.join("dir/sub")).unwrap();
    fs::write(a.join("dir/sub/small.txt"), b"small").unwrap();
    fsync(&a.join("data.bin"));
    fsync(&a.join("dir/sub/small.txt"));
    n.unpublish(0, &id).await;
    n.wait_reported(0, &id);
    let b = n.publish(1, &id).await;
    assert_eq!(fs::read(b.join("dir/sub/small.txt")).unwrap(), b"small");
    // Near the end of the file, before the background has it all.
    let mut tail = vec![0u8; 4096];
    {
        use std::os::unix::fs::FileExt;
        let f = fs::File::open(b.join("data.bin")).unwrap();
        f.read_exact_at(&mut tail, (120 << 20) + 123).unwrap();
    }
    let complete_before_reads = n.log(1).contains("bucket complete on this node");
    assert_eq!(tail, big[(120 << 20) + 123..][..4096]);
    assert!(
        !complete_before_reads,
        "the stage (or the first reads) waited for every chunk"
    );
    assert!(
        fs::read(b.join("data.bin")).unwrap() == big,
        "128 MiB arrive intact"
    );
    wait_for("the rest fetched in the background", || {
        n.log(1).contains("bucket complete on this node")
    });
}

/// RWX across nodes: writes, deletes and renames go both ways, `ls` shows
/// them, and a file held open on one node reads the other's new content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_is_one_across_nodes() {
    let mut n = Nodes::start(2).await;
    let id = n.create("shared", None).await;
    let a = n.publish(0, &id).await;
    fs::write(a.join("notes.txt"), b"version 1").unwrap();
    fsync(&a.join("notes.txt"));
    n.wait_reported(0, &id);
    let b = n.publish(1, &id).await;
    assert_eq!(fs::read(b.join("notes.txt")).unwrap(), b"version 1");
    let mut held = fs::File::open(b.join("notes.txt")).unwrap();
    fs::write(b.join("from-b.txt"), b"written on b").unwrap();
    fsync(&b.join("from-b.txt"));
    wait_for("b's file on a", || {
        fs::read(a.join("from-b.txt")).ok().as_deref() == Some(&b"written on b"[..])
    });
    fs::write(a.join("notes.txt"), b"version 2, longer").unwrap();
    fsync(&a.join("notes.txt"));
    wait_for("a's change through b's open file", || {
        let mut s = String::new();
        held.seek(SeekFrom::Start(0)).unwrap();
        held.read_to_string(&mut s).is_ok() && s == "version 2, longer"
    });
    fs::rename(a.join("from-b.txt"), a.join("renamed.txt")).unwrap();
    fs::remove_file(a.join("notes.txt")).unwrap();
    fs::File::open(&a).unwrap().sync_all().unwrap();
    wait_for("the rename and delete on b", || {
        let names: Vec<String> = fs::read_dir(&b)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names == vec!["renamed.txt".to_string()]
    });
    assert_eq!(tree(&a), tree(&b));
}

/// Both nodes edit one file while their link is cut; once it heals they
/// converge on the same tree, one side's version under a conflict name,
/// no byte lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_during_a_partition_converge_with_a_conflict_copy() {
    let mut n = Nodes::start(2).await;
    let id = n.create("split", None).await;
    let a = n.publish(0, &id).await;
    fs::write(a.join("doc.txt"), b"base").unwrap();
    fsync(&a.join("doc.txt"));
    n.wait_reported(0, &id);
    let b = n.publish(1, &id).await;
    assert_eq!(fs::read(b.join("doc.txt")).unwrap(), b"base");
    n.net.cut(1);
    fs::write(a.join("doc.txt"), b"edited on a").unwrap();
    fsync(&a.join("doc.txt"));
    fs::write(b.join("doc.txt"), b"edited on b").unwrap();
    fs::write(b.join("only-b.txt"), b"b alone").unwrap();
    fsync(&b.join("doc.txt"));
    fsync(&b.join("only-b.txt"));
    n.net.heal(1);
    wait_for("both sides converged", || {
        let (ta, tb) = (tree(&a), tree(&b));
        ta == tb && ta.len() == 3
    });
    let t = tree(&a);
    let contents: Vec<&[u8]> = t.iter().map(|(_, c)| c.as_slice()).collect();
    assert!(contents.contains(&&b"edited on a"[..]), "{t:?}");
    assert!(contents.contains(&&b"edited on b"[..]), "{t:?}");
    assert!(
        t.iter().any(|(p, _)| p.starts_with("doc@")),
        "a conflict copy: {t:?}"
    );
    assert!(t.iter().any(|(p, c)| p == "only-b.txt" && c == b"b alone"));
}

/// A node killed while it fetches a volume comes back and converges;
/// with Postgres down, nodes go on syncing with the peers they know.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_converges_and_postgres_is_not_needed_to_sync() {
    let mut n = Nodes::start(2).await;
    let id = n.create("killed", None).await;
    let a = n.publish(0, &id).await;
    let big = pattern(96 << 20, 7);
    fs::write(a.join("big.bin"), &big).unwrap();
    fsync(&a.join("big.bin"));
    n.wait_reported(0, &id);
    let b = n.publish(1, &id).await;
    // Its chunks are arriving in the background: kill it now.
    n.kill(1);
    n.restart(1).await;
    // The restarted node remounts from its records and completes on demand.
    wait_for("b's remount", || b.join("big.bin").exists());
    assert!(fs::read(b.join("big.bin")).unwrap() == big);
    // Postgres goes away; both nodes keep the peers they knew.
    n.c.pg.as_mut().unwrap().pause().unwrap();
    fs::write(a.join("while-pg-down.txt"), b"still syncing").unwrap();
    fsync(&a.join("while-pg-down.txt"));
    wait_for("a write on a reaching b without Postgres", || {
        fs::read(b.join("while-pg-down.txt")).ok().as_deref() == Some(&b"still syncing"[..])
    });
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(b.join("while-pg-down.txt"))
        .unwrap();
    f.write_all(b" both ways").unwrap();
    f.sync_all().unwrap();
    wait_for("b's append on a", || {
        fs::read(a.join("while-pg-down.txt")).ok().as_deref()
            == Some(&b"still syncing both ways"[..])
    });
    // b crashes while Postgres is still down: started again, it knows its
    // peers from its state dir (`peers.json`) and syncs both ways at once.
    let logged_before = n.log(1).len();
    n.kill(1);
    n.restart(1).await;
    wait_for("b's remount without Postgres", || {
        b.join("while-pg-down.txt").exists()
    });
    fs::write(a.join("after-b-restarted.txt"), b"to b").unwrap();
    fsync(&a.join("after-b-restarted.txt"));
    wait_for("a write on a reaching the restarted b", || {
        fs::read(b.join("after-b-restarted.txt")).ok().as_deref() == Some(&b"to b"[..])
    });
    fs::write(b.join("from-restarted-b.txt"), b"to a").unwrap();
    fsync(&b.join("from-restarted-b.txt"));
    wait_for("a write on the restarted b reaching a", || {
        fs::read(a.join("from-restarted-b.txt")).ok().as_deref() == Some(&b"to a"[..])
    });
    assert!(
        n.log(1)[logged_before..].contains("peer lists from the state dir in force"),
        "the restarted node used the lists it kept"
    );
}

/// A snapshot taken while the node that wrote it is offline is complete
/// once any node that holds it answers: a third node restores it from the
/// second. A node that no holder answers for fails with UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_restore_from_any_holder() {
    let mut n = Nodes::start(3).await;
    // One replica: no blind copy on the third node (the end of the test
    // finds no holder left).
    let id = n
        .create_with("snapped", None, &[("replicas", "1")], &Secrets::new())
        .await;
    let a = n.publish(0, &id).await;
    fs::write(a.join("keep.txt"), b"in the snapshot").unwrap();
    fsync(&a.join("keep.txt"));
    n.wait_reported(0, &id);
    let b = n.publish(1, &id).await;
    assert_eq!(fs::read(b.join("keep.txt")).unwrap(), b"in the snapshot");
    n.wait_reported(1, &id);
    n.kill(0);
    let snap = n.snapshot(&id, "while-a-is-down").await;
    assert!(snap.ready_to_use);
    let restored = n
        .create(
            "restored",
            Some(SourceType::Snapshot(SnapshotSource {
                snapshot_id: snap.snapshot_id.clone(),
            })),
        )
        .await;
    let c = n.publish(2, &restored).await;
    assert_eq!(fs::read(c.join("keep.txt")).unwrap(), b"in the snapshot");
    // With every holder of a volume gone, staging it elsewhere is UNAVAILABLE.
    n.kill(1);
    let err = n.stage(2, &id).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("none that holds it answered"),
        "{}",
        err.message()
    );
}

/// What one writer did: its last acknowledged line, when each line was
/// acknowledged, and the errors it saw.
struct Written {
    acked: Option<u64>,
    acked_at: Vec<Instant>,
    errors: Vec<String>,
}

/// Watch `file` (another node's log, through this node's mount) until
/// `stop`: when each line first became readable here, and the reads that
/// failed (other than "not there yet"). Only the bytes past those already
/// seen are read (the log only grows), so watching costs the nodes little.
fn watch_lines(file: PathBuf, stop: Arc<AtomicBool>) -> (Vec<Instant>, Vec<String>) {
    let mut seen = Vec::new();
    let mut errors = Vec::new();
    let mut offset = 0u64;
    let mut tail = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let read = fs::File::open(&file).and_then(|mut f| {
            f.seek(SeekFrom::Start(offset))?;
            tail.clear();
            f.read_to_end(&mut tail)
        });
        match read {
            Ok(_) => {
                // Whole lines only: a line is seen once its newline is.
                let whole = tail.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
                let lines = tail[..whole].iter().filter(|b| **b == b'\n').count();
                offset += whole as u64;
                let now = Instant::now();
                seen.extend(std::iter::repeat_n(now, lines));
            }
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                errors.push(format!("reading {}: {e}", file.display()));
            }
            Err(_) => {}
        }
        // Often enough to time a line, seldom enough not to load the node.
        std::thread::sleep(Duration::from_millis(25));
    }
    (seen, errors)
}

/// Append numbered lines to `dir/w<i>.log`, each followed by an fsync, and
/// every 20 appends overwrite `dir/shared.txt`, until `stop`.
fn append_until(dir: PathBuf, i: usize, stop: Arc<AtomicBool>) -> Written {
    let mut out = Written {
        acked: None,
        acked_at: Vec::new(),
        errors: Vec::new(),
    };
    let mut log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("w{i}.log")))
        .unwrap();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let line = format!("w{i} {seq}\n");
        match log.write_all(line.as_bytes()).and_then(|_| log.sync_data()) {
            Ok(()) => {
                out.acked = Some(seq);
                out.acked_at.push(Instant::now());
            }
            Err(e) => {
                out.errors.push(format!("append {seq}: {e}"));
                return out;
            }
        }
        if seq % 20 == 19 {
            let body = format!("w{i} wrote this at {seq}\n");
            if let Err(e) = cluster::write_synced(&dir.join("shared.txt"), body.as_bytes()) {
                out.errors.push(format!("shared at {seq}: {e}"));
            }
        }
        seq += 1;
    }
    out
}

/// The `ms=` values of the log lines that say `what`, sorted.
fn logged_ms(log: &str, what: &str) -> Vec<u64> {
    logged(log, what, "ms")
}

/// The `field=` values of the log lines that say `what`, sorted.
fn logged(log: &str, what: &str, field: &str) -> Vec<u64> {
    let key = format!(" {field}=");
    let mut values: Vec<u64> = log
        .lines()
        .filter(|l| l.contains(what))
        .filter_map(|l| {
            l.split(key.as_str())
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    values.sort();
    values
}

fn heads(n: &Nodes, id: &str) -> Vec<String> {
    (0..3)
        .map(|i| {
            let head =
                n.c.node_state(&name(i))
                    .join("buckets")
                    .join(id)
                    .join("HEAD");
            fs::read_to_string(head).unwrap_or_default()
        })
        .collect()
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Three nodes append to their own logs in one RWX volume at once, each
/// line fsynced, and take turns overwriting one shared file, while first
/// one node's and then another's sync traffic is cut for 5 s. Once the
/// writers stop: one tree on every node, every acknowledged line in every
/// copy of its log in order with no gap, no conflict copy of a file only
/// one node wrote, and no new version while nobody writes.
/// In the last third, with every link up, node 0's process is SIGKILLed
/// and started again at once (its mounts live on in its fd-keeper, as
/// under a supervisor; `JAX_SOAK_NO_KILLS` leaves it alone), then the
/// controller's Postgres is stopped for 2 s and started again
/// (`JAX_SOAK_NO_PG_RESTART` leaves it alone). The crash may fail the one
/// request node 0's writer had in flight (ECONNABORTED) and the first
/// fsync of its file after it (EIO: writes the dead process had not made
/// durable are lost): that writer stops at its first error, and its log
/// holds every line it had acknowledged and at most one more.
/// `JAX_SOAK_SECS` sets how long the writers run (default 20).
/// The nodes collect garbage every 5 s with a grace of
/// `JAX_SOAK_GC_GRACE_SECS` (default 15; 0 keeps the cluster's 300 s,
/// which removes no blob in a soak), so pruning and the blob sweep race
/// the sync, and the state dirs are measured again after a pass that
/// began past the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_writers_converge_and_keep_every_acknowledged_line() {
    let secs: u64 = std::env::var("JAX_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let gc_grace: Option<u64> = match std::env::var("JAX_SOAK_GC_GRACE_SECS") {
        Ok(s) => s.parse().ok().filter(|g| *g > 0),
        Err(_) => Some(15),
    };
    let faults = std::env::var("JAX_SOAK_NO_KILLS").is_err();
    let mut n = Nodes::start_with(3, |c| {
        if let Some(g) = gc_grace {
            c.gc_interval = "5";
            c.gc_grace = Box::leak(g.to_string().into_boxed_str());
        }
        if faults {
            c.fd_keeper_for(&name(0));
        }
    })
    .await;
    let id = n.create("soak", None).await;
    let mut dirs = Vec::new();
    for i in 0..3 {
        dirs.push(n.publish(i, &id).await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|i| {
            let (dir, stop) = (dirs[i].clone(), stop.clone());
            std::thread::spawn(move || append_until(dir, i, stop))
        })
        .collect();
    // Node i watches writer i+1's log: how long a line takes to show up.
    let watching = Arc::new(AtomicBool::new(false));
    let watchers: Vec<_> = (0..3)
        .map(|i| {
            let file = dirs[i].join(format!("w{}.log", (i + 1) % 3));
            let stop = watching.clone();
            std::thread::spawn(move || watch_lines(file, stop))
        })
        .collect();
    // Two thirds with a cut each (`JAX_SOAK_NO_CUTS` leaves the links
    // alone), then a third with every link up.
    let third = Duration::from_secs(secs) / 3;
    let cutting = std::env::var("JAX_SOAK_NO_CUTS").is_err();
    for cut in [1, 2] {
        let around = third.saturating_sub(Duration::from_secs(5)) / 2;
        tokio::time::sleep(around).await;
        if cutting {
            n.net.cut(cut);
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        n.net.heal(cut);
        tokio::time::sleep(around).await;
    }
    let mut crash = None;
    if faults {
        tokio::time::sleep(third / 4).await;
        let killed = Instant::now();
        n.kill(0);
        n.restart(0).await;
        crash = Some(killed.elapsed());
    } else {
        tokio::time::sleep(third / 4).await;
    }
    let pg_restart = std::env::var("JAX_SOAK_NO_PG_RESTART").is_err();
    if pg_restart {
        tokio::time::sleep(third / 4).await;
        n.c.pg.as_mut().unwrap().pause().unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        n.c.pg
            .as_mut()
            .unwrap()
            .resume(jax_csi::db::embedded::EmbeddedPostgresOptions { fsync: false })
            .unwrap();
        tokio::time::sleep((third / 2).saturating_sub(Duration::from_secs(2))).await;
    } else {
        tokio::time::sleep(third * 3 / 4).await;
    }
    stop.store(true, Ordering::Relaxed);
    let written: Vec<Written> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    let stopped = Instant::now();
    for (i, w) in written.iter().enumerate() {
        // Node 0's crash may fail the request in flight (ECONNABORTED) and
        // the first fsync of each file after it (EIO: writes the dead
        // process had answered but not made durable are lost); no other.
        let crashed = faults && i == 0;
        let allowed =
            |e: &String| crashed && (e.contains("os error 103") || e.contains("os error 5)"));
        assert!(
            w.errors.len() <= 2 * usize::from(crashed) && w.errors.iter().all(allowed),
            "writer {i} saw errors: {:?}",
            w.errors
        );
    }

    // One tree (and one head) everywhere.
    let deadline = stopped + Duration::from_secs(60);
    let converged = loop {
        let trees: Vec<_> = dirs.iter().map(|d| tree(d)).collect();
        let now = heads(&n, &id);
        if trees.iter().all(|t| *t == trees[0]) && now.iter().all(|h| *h == now[0]) {
            break stopped.elapsed();
        }
        if Instant::now() > deadline {
            let differ: Vec<_> = (1..3)
                .map(|k| {
                    trees[k]
                        .iter()
                        .filter(|e| !trees[0].contains(e))
                        .map(|(p, c)| format!("{p} ({} bytes)", c.len()))
                        .collect::<Vec<_>>()
                })
                .collect();
            panic!(
                "no single tree 60 s after the writers stopped; differences: {differ:?}; heads {:?}",
                heads(&n, &id)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    watching.store(true, Ordering::Relaxed);
    let mut delays: Vec<Duration> = Vec::new();
    for (i, w) in watchers.into_iter().enumerate() {
        let (seen, read_errors) = w.join().unwrap();
        // Node 0's crash may fail the one read it had in flight.
        let crashed = faults && i == 0;
        assert!(
            read_errors.len() <= usize::from(crashed)
                && read_errors.iter().all(|e| e.contains("os error 103")),
            "node {i}: {} reads of a peer's log failed, the first: {:?}",
            read_errors.len(),
            &read_errors[..read_errors.len().min(3)]
        );
        let acked = &written[(i + 1) % 3].acked_at;
        let mine: Vec<(Instant, Duration)> = seen
            .iter()
            .zip(acked)
            .map(|(s, a)| (*a, s.saturating_duration_since(*a)))
            .collect();
        // The worst delay in each 5 s of the run: a node falling further
        // behind shows as a rising line, a stall as one spike.
        let started = acked.first().copied().unwrap_or(stopped);
        let mut worst = vec![Duration::ZERO; (secs as usize).div_ceil(5) + 1];
        for (a, d) in &mine {
            let slot = (a.duration_since(started).as_secs() / 5) as usize;
            if let Some(w) = worst.get_mut(slot) {
                *w = (*w).max(*d);
            }
        }
        // The longest time the reader saw no new line (from when, into
        // the run): a view that froze while the writer went on.
        let stall = seen
            .windows(2)
            .map(|w| (w[1].saturating_duration_since(w[0]), w[0]))
            .max()
            .map(|(d, from)| {
                (
                    d.as_millis(),
                    from.saturating_duration_since(started).as_millis(),
                )
            });
        println!(
            "node {i} sees w{}.log: worst delay per 5 s {:?} ms; longest stall (ms, from ms) {:?}",
            (i + 1) % 3,
            worst.iter().map(|d| d.as_millis()).collect::<Vec<_>>(),
            stall
        );
        delays.extend(mine.into_iter().map(|(_, d)| d));
    }
    delays.sort();
    let pct = |p: usize| {
        delays
            .get(delays.len() * p / 100)
            .copied()
            .unwrap_or_default()
    };

    // Every acknowledged line everywhere, in order, with no gap.
    let t = tree(&dirs[0]);
    for (i, w) in written.iter().enumerate() {
        let expected: String = (0..=w.acked.expect("at least one append"))
            .map(|s| format!("w{i} {s}\n"))
            .collect();
        let log = t
            .iter()
            .find(|(p, _)| *p == format!("w{i}.log"))
            .map(|(_, c)| String::from_utf8_lossy(c).into_owned())
            .unwrap_or_default();
        // A writer the crash stopped: its append in flight may have landed.
        let in_flight = format!("{expected}w{i} {}\n", w.acked.unwrap() + 1);
        if !(log == expected || (!w.errors.is_empty() && log == in_flight)) {
            // Where the copy leaves the acknowledged lines, to see what
            // went missing, came twice or came back.
            let at = log
                .lines()
                .zip(expected.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(log.lines().count().min(expected.lines().count()));
            let around = |text: &str| -> Vec<String> {
                text.lines()
                    .skip(at.saturating_sub(2))
                    .take(5)
                    .map(str::to_owned)
                    .collect()
            };
            panic!(
                "w{i}.log holds {} bytes ({} lines), {} expected (acknowledged up to line {:?}, \
                 writer errors {:?}); first difference at line {at}: holds {:?}, expected {:?}",
                log.len(),
                log.lines().count(),
                expected.len(),
                w.acked,
                w.errors,
                around(&log),
                around(&expected)
            );
        }
    }
    let copies: Vec<&String> = t
        .iter()
        .map(|(p, _)| p)
        .filter(|p| p.starts_with('w') && p.contains('@'))
        .collect();
    assert!(
        copies.is_empty(),
        "conflict copies of single-writer files: {copies:?}"
    );

    // Idle: no node makes a version.
    let settled = heads(&n, &id);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        heads(&n, &id),
        settled,
        "versions were made while nobody wrote"
    );
    let shared_copies = t.iter().filter(|(p, _)| p.starts_with("shared@")).count();
    // From the nodes' logs: merges each made, and how long its pulls took.
    for i in 0..3 {
        let log = n.log(i);
        let merges = log.matches("merged concurrent head").count();
        let pull_ms = logged_ms(&log, "pulled a head");
        let apply_ms = logged_ms(&log, "applied a synced head");
        let median = apply_ms.get(apply_ms.len() / 2).copied().unwrap_or(0);
        let at = |p: usize| pull_ms.get(pull_ms.len() * p / 100).copied().unwrap_or(0);
        let troubles: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            // Three writers of shared.txt: conflict copies are the point.
            .filter(|l| !l.contains("concurrent edits merged"))
            .collect();
        if !troubles.is_empty() {
            println!(
                "node {i}: {} WARN/ERROR lines, the first: {:?}",
                troubles.len(),
                &troubles[..troubles.len().min(3)]
            );
        }
        let middle = |v: Vec<u64>| v.get(v.len() / 2).copied().unwrap_or(0);
        // (The parts with JAX_TEST_LOG=info,jax_csi::node::gc=debug,jax_csi::bucket=debug.)
        let passes = logged(&log, GC_PASS, "ms");
        println!(
            "node {i}: {} GC passes, p50 {} ms (prune {} ms; live set {} ms, sweep {} ms)",
            passes.len(),
            middle(passes.clone()),
            middle(logged(&log, "retention and blob collection", "prune_ms")),
            middle(logged(&log, "blob garbage collection", "live_ms")),
            middle(logged(&log, "blob garbage collection", "sweep_ms")),
        );
        println!(
            "node {i}: {merges} merges ({:.1}/s), {} pulls, pull p50 {} ms, p99 {} ms (chain p50 {} ms, \
             {} versions, {} bytes), apply p50 {median} ms",
            merges as f64 / secs as f64,
            pull_ms.len(),
            at(50),
            at(99),
            middle(logged(&log, "pulled a head", "chain_ms")),
            middle(logged(&log, "pulled a head", "versions")),
            middle(logged(&log, "pulled a head", "bytes")),
        );
    }
    let state: Vec<u64> = (0..3)
        .map(|i| dir_bytes(&n.c.node_state(&name(i))))
        .collect();
    // After a GC pass that began once every blob of the run was past the
    // grace: what the node keeps is the retained history (`count=100`).
    let mut collected = Vec::new();
    if let Some(g) = gc_grace {
        tokio::time::sleep_until((stopped + Duration::from_secs(g)).into()).await;
        let passes = |n: &Nodes| -> Vec<usize> {
            (0..3).map(|i| n.log(i).matches(GC_PASS).count()).collect()
        };
        let before = passes(&n);
        let deadline = Instant::now() + Duration::from_secs(60);
        // The first pass that ends may have begun before; the second has not.
        while passes(&n)
            .iter()
            .zip(&before)
            .any(|(now, was)| now < &(was + 2))
        {
            assert!(Instant::now() < deadline, "no GC pass within 60 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        collected = (0..3)
            .map(|i| dir_bytes(&n.c.node_state(&name(i))))
            .collect();
    }
    println!(
        "three writers, {secs} s: acknowledged lines {:?}; a line seen on the next node after p50 {:?}, \
         p99 {:?} (cuts: {cutting}); one tree {converged:?} after the writers stopped; \
         conflict copies of the shared file {shared_copies}; state dirs {state:?} bytes, \
         {collected:?} after a GC; node 0 SIGKILLed and serving again after {crash:?}, \
         writer errors {:?}",
        written.iter().map(|w| w.acked.map_or(0, |a| a + 1)).collect::<Vec<_>>(),
        pct(50),
        pct(99),
        written.iter().map(|w| w.errors.len()).collect::<Vec<_>>(),
    );
}

/// A metric's value (summed over its series) from node `i`'s
/// `--metrics-addr 127.0.0.1:9808`, read inside its network namespace.
fn metric(n: &Nodes, i: usize, name: &str) -> f64 {
    let out = n
        .net
        .exec(i, "curl")
        .args(["-sf", "http://127.0.0.1:9808/metrics"])
        .output()
        .expect("running curl");
    assert!(out.status.success(), "node {i} served no metrics");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The nodes other than `writer` the leader assigned `id` to.
fn assigned(n: &Nodes, id: &str) -> Vec<usize> {
    n.c.psql(&format!(
        "SELECT node_id FROM replicas WHERE volume_id = '{id}' ORDER BY node_id"
    ))
    .lines()
    .filter_map(|l| l.trim().strip_prefix("node-")?.parse().ok())
    .collect()
}

fn reported_head(n: &Nodes, i: usize, id: &str) -> String {
    n.c.psql(&format!(
        "SELECT head FROM bucket_heads WHERE volume_id = '{id}' AND node_id = '{}'",
        name(i)
    ))
    .trim()
    .to_string()
}

/// #28: a tenant's volume with two replicas on three nodes. The second copy
/// is blind: a node that never saw the tenant key follows the writer's
/// versions with no mount and no key that opens them. The writer is
/// destroyed (process killed, state dir deleted); the third node stages
/// the volume from the blind copy with every fsynced byte, the volume is
/// on two nodes again, and a snapshot taken before the last write restores
/// from the version the blind copy kept pinned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_outlives_its_writer_on_a_blind_replica() {
    let mut n = Nodes::start_full(3, |_| {}, &["--replica-timeout-secs", "15"]).await;
    let tenant: Secrets = [("tenantKey".to_string(), "5a".repeat(32))].into();
    let id = n
        .create_with(
            "durable",
            None,
            &[("tenantKeySecret", "team-a"), ("replicas", "2")],
            &tenant,
        )
        .await;
    let a = n.publish_with(0, &id, &tenant).await;
    let big = pattern(8 << 20, 28);
    fs::write(a.join("data.bin"), &big).unwrap();
    fs::write(a.join("small.txt"), b"fsynced on the writer").unwrap();
    fsync(&a.join("data.bin"));
    fsync(&a.join("small.txt"));
    n.wait_reported(0, &id);

    // The leader puts the second copy on another node, which catches up
    // with no mount: its head in Postgres is the writer's.
    wait_for("a replica assigned", || !assigned(&n, &id).is_empty());
    let r = assigned(&n, &id)[0];
    assert_ne!(r, 0, "the writer counts as a replica already");
    let c = (1..3).find(|i| *i != r).unwrap();
    wait_for("the blind replica at the writer's head", || {
        let want = reported_head(&n, 0, &id);
        !want.is_empty() && reported_head(&n, r, &id) == want
    });
    let state = n.c.node_state(&name(r));
    assert!(
        !state.join("buckets").join(&id).exists(),
        "the replica holds no bucket key"
    );
    let mut held: Vec<String> = fs::read_dir(state.join("replicas").join(&id))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    held.sort();
    assert_eq!(held, ["HEAD", "proof.wrapped"], "a version and a proof key");
    assert!(
        n.c.psql(&format!(
            "SELECT count(*) FROM mounts WHERE volume_id = '{id}' AND node_id = '{}'",
            name(r)
        ))
        .trim()
            == "0",
        "no mount on the replica"
    );
    let (abnormal, message) = condition(&mut n, &id).await;
    assert!(!abnormal, "two of two in sync: {message}");
    assert!(message.contains("2 of 2 replicas in sync"), "{message}");

    let snap = n.snapshot(&id, "before-the-loss").await;
    // The writer goes on; the replica follows, and keeps the snapshot's
    // version beside its new head.
    fs::write(a.join("small.txt"), b"changed after the snapshot").unwrap();
    fsync(&a.join("small.txt"));
    n.wait_reported(0, &id);
    let pinned = state.join("replicas").join(&id).join("PINNED");
    wait_for("the replica at the new head, the snapshot pinned", || {
        let want = reported_head(&n, 0, &id);
        reported_head(&n, r, &id) == want && fs::read(&pinned).is_ok_and(|p| p.len() == 64)
    });

    // The writer is destroyed.
    n.kill(0);
    fs::remove_dir_all(n.c.node_state(&name(0))).unwrap();

    // The third node, which held nothing, stages it from the blind copy.
    let moved = n.publish_with(c, &id, &tenant).await;
    assert_eq!(
        fs::read(moved.join("small.txt")).unwrap(),
        b"changed after the snapshot"
    );
    assert!(
        fs::read(moved.join("data.bin")).unwrap() == big,
        "8 MiB from the blind replica, intact"
    );
    fs::write(moved.join("after.txt"), b"written on the new node").unwrap();
    fsync(&moved.join("after.txt"));

    // Two replicas again once the writer's node counts as lost: the new
    // stager and the blind copy, which follows the new node's versions.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (abnormal, message) = condition(&mut n, &id).await;
        if !abnormal && message.contains("2 of 2 replicas in sync") && message.contains("node lost")
        {
            break;
        }
        assert!(Instant::now() < deadline, "never whole again: {message}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The snapshot taken before the loss restores.
    let restored = n
        .create_with(
            "restored",
            Some(SourceType::Snapshot(SnapshotSource {
                snapshot_id: snap.snapshot_id,
            })),
            &[("tenantKeySecret", "team-a")],
            &tenant,
        )
        .await;
    let back = n.publish_with(c, &restored, &tenant).await;
    assert!(fs::read(back.join("data.bin")).unwrap() == big);
    assert_eq!(
        fs::read(back.join("small.txt")).unwrap(),
        b"fsynced on the writer",
        "the snapshot's own bytes, which only the replica's pinned version kept"
    );
    assert!(
        !back.join("after.txt").exists(),
        "the snapshot is from before"
    );

    // The replica's node comes back with an empty disk: Postgres no longer
    // counts its lost copy, and it rebuilds from the node that stages it.
    n.kill(r);
    fs::remove_dir_all(n.c.node_state(&name(r))).unwrap();
    n.restart(r).await;
    wait_for(
        "the wiped node's stale head forgotten, then rebuilt",
        || {
            let want = reported_head(&n, c, &id);
            n.log(r)
                .contains("Postgres said this node held volumes its state dir does not have")
                && state.join("replicas").join(&id).join("HEAD").exists()
                && !want.is_empty()
                && reported_head(&n, r, &id) == want
        },
    );
}

/// Whether ControllerGetVolume calls `id` abnormal, and its message.
/// ListVolumes must report the same condition: checked whenever the
/// condition held still across the two calls (it changes as replicas
/// catch up).
async fn condition(n: &mut Nodes, id: &str) -> (bool, String) {
    let got = get_condition(n, id).await;
    let listed = n
        .ctl
        .list_volumes(ListVolumesRequest {
            max_entries: 0,
            starting_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .entries
        .into_iter()
        .find(|e| e.volume.as_ref().is_some_and(|v| v.volume_id == id))
        .and_then(|e| e.status?.volume_condition)
        .map(|c| (c.abnormal, c.message))
        .expect("ListVolumes lists the volume with its condition");
    if get_condition(n, id).await == got {
        assert_eq!(listed, got, "ListVolumes and ControllerGetVolume disagree");
    }
    got
}

async fn get_condition(n: &mut Nodes, id: &str) -> (bool, String) {
    let got = n
        .ctl
        .controller_get_volume(ControllerGetVolumeRequest {
            volume_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let c = got.status.unwrap().volume_condition.unwrap();
    (c.abnormal, c.message)
}

/// Wait for the leader to assign `id`'s second replica to node-1 and for
/// node-1 to hold it blind; the replica's directory there.
fn wait_blind_on_node_1(n: &Nodes, id: &str) -> PathBuf {
    wait_for("node-1 assigned the second replica", || {
        assigned(n, id) == [1]
    });
    let blind = n.c.node_state("node-1").join("replicas").join(id);
    wait_for("node-1 holding the replica", || {
        blind.join("proof.wrapped").exists()
    });
    blind
}

/// Append `line` to `file` and fsync it; the fsync's result.
fn append_synced(file: &Path, line: &str) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)?;
    f.write_all(line.as_bytes())?;
    f.sync_all()
}

/// #28: with `syncReplicas: 1` an fsync returns once the other replica
/// holds what it made durable; with that replica's link cut it fails with
/// EIO within the timeout (never a silent success); after healing, fsyncs
/// succeed again, and every acknowledged line is on the replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_fsync_waits_for_its_replica_or_fails() {
    let mut n = Nodes::start(2).await;
    let id = n
        .create_with(
            "synced",
            None,
            &[("replicas", "2"), ("syncReplicas", "1")],
            &Secrets::new(),
        )
        .await;
    let a = n.publish(0, &id).await;
    let blind = wait_blind_on_node_1(&n, &id);
    let log = a.join("log");
    append_synced(&log, "one\n").expect("an fsync the replica confirmed");
    assert!(blind.join("HEAD").exists(), "the replica holds a version");

    n.net.cut(1);
    let started = Instant::now();
    let err = append_synced(&log, "two\n").expect_err("no replica reachable");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "it fails within the timeout"
    );
    assert!(
        n.log(0)
            .contains("fsync failed: the replicas it waits for did not confirm"),
        "a clear log line"
    );

    n.net.heal(1);
    let mut tries = 0;
    while let Err(e) = append_synced(&log, "three\n") {
        tries += 1;
        assert!(tries < 4, "fsyncs fail after healing: {e}");
    }
    // What the replica holds has every acknowledged line.
    n.unpublish(0, &id).await;
    let b = n.publish(1, &id).await;
    let text = fs::read_to_string(b.join("log")).unwrap();
    assert!(text.starts_with("one\n"), "{text:?}");
    assert!(text.ends_with("three\n"), "{text:?}");
}

/// #28: with `syncReplicas: 1` what an fsync acknowledged is on the
/// replica before the fsync returns (a copy of the journal frame, not a
/// version), and survives the writer: killed at once, its state dir
/// deleted, before the version that holds the line can reach the replica.
/// The third node stages the volume from the blind replica and replays
/// the copy: every acknowledged line is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_fsync_its_replica_confirmed_survives_the_writer() {
    let mut n = Nodes::start_full(3, |_| {}, &["--replica-timeout-secs", "15"]).await;
    let id = n
        .create_with(
            "confirmed",
            None,
            &[("replicas", "2"), ("syncReplicas", "1")],
            &Secrets::new(),
        )
        .await;
    let a = n.publish(0, &id).await;
    wait_for("a replica assigned", || !assigned(&n, &id).is_empty());
    let r = assigned(&n, &id)[0];
    let c = (1..3).find(|i| *i != r).unwrap();
    let log = a.join("log");
    append_synced(&log, "one\n").expect("an fsync the replica confirmed");
    n.wait_reported(0, &id);
    wait_for("the replica at the writer's head", || {
        let want = reported_head(&n, 0, &id);
        !want.is_empty() && reported_head(&n, r, &id) == want
    });

    // Acknowledged: the replica holds a copy of the journal frame.
    let copies = n.c.node_state(&name(r)).join("journal-copies").join(&id);
    let started = Instant::now();
    append_synced(&log, "two\n").expect("an fsync the replica confirmed");
    let confirmed_in = started.elapsed();
    n.kill(0);
    let held: Vec<_> = fs::read_dir(&copies)
        .expect("the replica keeps journal copies")
        .map(|e| e.unwrap().metadata().unwrap().len())
        .collect();
    assert!(
        held.len() == 1 && held[0] > 0,
        "one copy of the writer's journal file: {held:?}"
    );
    fs::remove_dir_all(n.c.node_state(&name(0))).unwrap();

    let moved = n.publish(c, &id).await;
    assert_eq!(
        fs::read_to_string(moved.join("log")).unwrap(),
        "one\ntwo\n",
        "every acknowledged line (the last confirmed in {confirmed_in:?})"
    );
    assert!(
        n.log(c)
            .contains("replayed a replica's copy of a node's journal"),
        "the stager replayed the replica's copy"
    );
}

/// #28: `syncReplicas` changes through ControllerModifyVolume on a mount
/// that runs: raised, an fsync waits for the replica (EIO when it is cut
/// off); lowered again, fsyncs are durable on the node alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_replicas_changes_on_a_running_mount() {
    let mut n = Nodes::start(2).await;
    let id = n
        .create_with("modified", None, &[("replicas", "2")], &Secrets::new())
        .await;
    let a = n.publish(0, &id).await;
    wait_blind_on_node_1(&n, &id);
    let log = a.join("log");
    let modify = |k: &str| ControllerModifyVolumeRequest {
        volume_id: id.clone(),
        mutable_parameters: [("syncReplicas".to_string(), k.to_string())].into(),
        secrets: Default::default(),
    };
    n.net.cut(1);
    append_synced(&log, "alone\n").expect("no replica is waited for yet");

    n.ctl.controller_modify_volume(modify("1")).await.unwrap();
    // Within a pass of the node's loop, an fsync waits for node-1, cut off.
    let deadline = Instant::now() + Duration::from_secs(30);
    let err = loop {
        match append_synced(&log, "waits\n") {
            Ok(()) => assert!(Instant::now() < deadline, "fsyncs never waited"),
            Err(e) => break e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        n.log(0).contains("syncReplicas changed"),
        "the node says so"
    );
    n.net.heal(1);
    let mut tries = 0;
    while let Err(e) = append_synced(&log, "confirmed\n") {
        tries += 1;
        assert!(tries < 4, "fsyncs fail after healing: {e}");
    }

    n.ctl.controller_modify_volume(modify("0")).await.unwrap();
    n.net.cut(1);
    // Applied within seconds: until then an fsync may still wait and fail.
    let deadline = Instant::now() + Duration::from_secs(60);
    while append_synced(&log, "alone again\n").is_err() {
        assert!(
            Instant::now() < deadline,
            "fsyncs still wait for the cut replica"
        );
    }
    let started = Instant::now();
    append_synced(&log, "at once\n").expect("durable here alone");
    assert!(
        started.elapsed() < jax_csi::node::SYNC_REPLICA_TIMEOUT,
        "an fsync waited for the replica after syncReplicas went to 0"
    );
    n.net.heal(1);
}

/// #28: a rebuild is paced (`--rebuild-mib-per-sec`) and resumes where it
/// stopped: a second replica is asked for a volume that holds 48 MiB, its
/// node is killed part way through the rebuild and started again, and it
/// fetches only what it did not have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_killed_part_way_resumes_and_is_paced() {
    const RATE_MIB: u64 = 16;
    let mut n = Nodes::start_with(2, |c| {
        c.node_args = vec![
            "--rebuild-mib-per-sec".into(),
            RATE_MIB.to_string(),
            // Each node in its own network namespace: one port for all.
            "--metrics-addr".into(),
            "127.0.0.1:9808".into(),
        ];
    })
    .await;
    let id = n
        .create_with("rebuilt", None, &[("replicas", "1")], &Secrets::new())
        .await;
    let a = n.publish(0, &id).await;
    let data = pattern(48 << 20, 9);
    fs::write(a.join("data.bin"), &data).unwrap();
    fsync(&a.join("data.bin"));
    n.wait_reported(0, &id);
    assert!(assigned(&n, &id).is_empty(), "one replica: nothing placed");

    n.ctl
        .controller_modify_volume(ControllerModifyVolumeRequest {
            volume_id: id.clone(),
            mutable_parameters: [("replicas".to_string(), "2".to_string())].into(),
            secrets: Default::default(),
        })
        .await
        .unwrap();
    // Part way: some blobs durable on node-1 (a paced rebuild syncs each
    // group of 16), the version not taken yet.
    let blobs = n.c.node_state("node-1").join("store").join("blobs");
    let head =
        n.c.node_state("node-1")
            .join("replicas")
            .join(&id)
            .join("HEAD");
    let named = || -> usize {
        fs::read_dir(&blobs)
            .map(|d| {
                d.flatten()
                    .map(|f| {
                        // Blobs only: an outboard (`.ob`) is written before
                        // its blob is durable.
                        fs::read_dir(f.path()).map_or(0, |e| {
                            e.flatten()
                                .filter(|b| b.path().extension().is_none())
                                .count()
                        })
                    })
                    .sum()
            })
            .unwrap_or(0)
    };
    wait_for("part of the rebuild durable on node-1", || named() >= 16);
    assert!(
        !head.exists(),
        "the rebuild finished before it could be cut"
    );
    let logged_before = n.log(1).len();
    n.kill(1);
    let kept = named();
    n.restart(1).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let line = loop {
        let log = n.log(1);
        if let Some(l) = log[logged_before..]
            .lines()
            .rfind(|l| l.contains("blind replica holds a new version"))
        {
            break l.to_string();
        }
        assert!(Instant::now() < deadline, "the rebuild never finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let field = |k: &str| -> u64 {
        line.split(&format!(" {k}="))
            .nth(1)
            .and_then(|v| v.split(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {k}= in {line}"))
    };
    let (all, fetched, bytes, ms) = (
        field("blobs"),
        field("fetched"),
        field("bytes"),
        field("ms"),
    );
    assert!(fetched < all, "started again from 0%: {line}");
    // Paced: never faster than the rate (slower on a busy machine).
    assert!(
        ms as f64 >= (bytes as f64 / (RATE_MIB << 20) as f64) * 1000.0 * 0.9,
        "faster than {RATE_MIB} MiB/s: {line}"
    );
    wait_for("the replica at the writer's head", || {
        reported_head(&n, 1, &id) == reported_head(&n, 0, &id)
    });
    // The restarted node's counter: what it fetched for the rebuild (the
    // same bytes its log line names; nothing else was replicated since).
    let counted = metric(&n, 1, "jax_csi_replica_rebuild_bytes_total");
    assert!(
        counted >= bytes as f64 && counted <= (data.len() + (1 << 20)) as f64,
        "rebuild bytes metric {counted}, the rebuild fetched {bytes}: {line}"
    );
    println!(
        "rebuild killed with {kept} blobs of every kind durable on node-1; after the restart it fetched {fetched} of {all} \
         ({bytes} bytes in {ms} ms, paced at {RATE_MIB} MiB/s; rebuild bytes metric {counted})"
    );
}

/// #28: a replica whose node is lost (no heartbeat for the replica
/// timeout) is replaced: the leader assigns the third node, which catches
/// up from the node that stages the volume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_replica_is_replaced_on_another_node() {
    let mut n = Nodes::start_full(3, |_| {}, &["--replica-timeout-secs", "15"]).await;
    let id = n.create("replaced", None).await;
    let a = n.publish(0, &id).await;
    let data = pattern(4 << 20, 6);
    fs::write(a.join("data.bin"), &data).unwrap();
    fsync(&a.join("data.bin"));
    n.wait_reported(0, &id);
    wait_for("a replica in sync", || {
        let r = assigned(&n, &id);
        r.len() == 1 && reported_head(&n, r[0], &id) == reported_head(&n, 0, &id)
    });
    let lost = assigned(&n, &id)[0];
    let other = (1..3).find(|i| *i != lost).unwrap();
    n.kill(lost);
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(90);
    loop {
        let now = assigned(&n, &id);
        let head = reported_head(&n, 0, &id);
        if now == [other] && reported_head(&n, other, &id) == head {
            break;
        }
        assert!(Instant::now() < deadline, "not replaced: assigned {now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // For the note: the replica timeout (15 s here) plus placement and
    // the rebuild.
    eprintln!(
        "two replicas in sync again {:.1} s after the replica's node was killed",
        killed.elapsed().as_secs_f64()
    );
    let (abnormal, message) = condition(&mut n, &id).await;
    assert!(!abnormal, "{message}");
    assert!(message.contains("2 of 2 replicas in sync"), "{message}");
}

/// What the harness tells the hostile process (see [`hostile_peer_process`]).
#[derive(serde::Serialize, serde::Deserialize)]
struct HostileSpec {
    /// The compromised node's state dir and the cluster KEK file.
    state: PathBuf,
    kek: PathBuf,
    /// The honest node attacked: its sync identity and address.
    target_id: String,
    target_addr: String,
    /// A volume the compromised node was never given, and its head there.
    victim: String,
    victim_head: String,
    /// The compromised node's own volume, which the honest node holds too.
    own: String,
    /// Every blob address in the honest node's store (what a peer could
    /// learn or guess).
    guesses: Vec<String>,
    /// Written by the hostile process once its stalled requests are open;
    /// it lets them go when the harness writes `done`.
    ready: PathBuf,
    done: PathBuf,
}

/// #26's hostile-node harness: a node is compromised (its process is
/// killed and its identity, state dir and the cluster KEK are taken over by
/// a process in its network namespace that speaks the real protocol with
/// none of an honest client's restraint). It asks an honest node for
/// another volume's blobs under its own volume's proof, for that volume's
/// history, to be enrolled in it or sealed its key ring, announces a head
/// for it, sends junk and an oversized length, and holds hundreds of
/// requests open. The honest node serves it nothing of the other volume,
/// installs nothing, stays within a bound of disk and memory, and keeps
/// serving its pods (a line written on it is read on a third node, and a
/// new volume stages) while the requests are held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_node_reaches_nothing_it_was_not_given() {
    let mut n = Nodes::start(3).await;
    let one = [("replicas", "1")];
    let victim = n.create_with("victim", None, &one, &Secrets::new()).await;
    let on_0 = n.publish(0, &victim).await;
    fs::write(on_0.join("secret.txt"), b"not for node-2").unwrap();
    fsync(&on_0.join("secret.txt"));
    n.wait_reported(0, &victim);
    let on_1 = n.publish(1, &victim).await;
    let own = n.create_with("own", None, &one, &Secrets::new()).await;
    let own_on_2 = n.publish(2, &own).await;
    fs::write(own_on_2.join("mine.txt"), b"node-2's own").unwrap();
    fsync(&own_on_2.join("mine.txt"));
    n.wait_reported(2, &own);
    n.stage(0, &own).await.unwrap();
    n.wait_reported(0, &own);
    assert!(
        assigned(&n, &victim).iter().all(|i| *i != 2),
        "node-2 was never given the victim volume"
    );

    // node-2 is compromised: its process stops, its identity and state
    // are someone else's now.
    n.kill(2);
    let state_2 = n.c.node_state(&name(2));
    let held_by_2: std::collections::HashSet<String> = blob_names(&state_2);
    let state_0 = n.c.node_state(&name(0));
    let guesses: Vec<String> = blob_names(&state_0).into_iter().collect();
    assert!(guesses.len() > held_by_2.len() / 2);
    let kek_file = n.c.dir.path().join("hostile-kek");
    n.c.kek.write_file(&kek_file).unwrap();
    let victim_head = reported_head(&n, 0, &victim);
    let spec = HostileSpec {
        state: state_2.clone(),
        kek: kek_file,
        target_id: n
            .c
            .psql("SELECT endpoint_id FROM nodes WHERE id = 'node-0'"),
        target_addr: format!("{}:{SYNC_PORT}", n.net.addr(0)),
        victim: victim.clone(),
        victim_head,
        own: own.clone(),
        guesses,
        ready: n.c.dir.path().join("hostile-ready"),
        done: n.c.dir.path().join("hostile-done"),
    };
    let spec_file = n.c.dir.path().join("hostile-spec.json");
    fs::write(&spec_file, serde_json::to_vec(&spec).unwrap()).unwrap();
    let disk_before = dir_bytes(&state_0);
    let pid_0 =
        n.c.nodes
            .iter()
            .find(|(id, _)| *id == name(0))
            .unwrap()
            .1
            .id();
    let rss_before = rss_kib(pid_0);

    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "hostile_peer_process",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("JAX_HOSTILE_SPEC", &spec_file)
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::inherit());
    n.net.enter(2, &mut cmd);
    let hostile = cmd.spawn().unwrap();

    // While its requests are held open, the honest nodes serve their pods.
    wait_for("the hostile process holds its requests open", || {
        spec.ready.exists()
    });
    let rss_held = rss_kib(pid_0);
    let started = Instant::now();
    append_synced(&on_0.join("during.log"), "written while attacked").unwrap();
    wait_for("node-1 reads a line node-0 wrote while attacked", || {
        fs::read_to_string(on_1.join("during.log"))
            .is_ok_and(|s| s.contains("written while attacked"))
    });
    let seen_after = started.elapsed();
    let fresh = n
        .create_with("staged-while-attacked", None, &one, &Secrets::new())
        .await;
    let fresh_on_0 = n.publish(0, &fresh).await;
    fs::write(fresh_on_0.join("ok"), b"ok").unwrap();
    fs::write(&spec.done, b"").unwrap();
    let out = hostile.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the hostile process failed:\n{stdout}"
    );
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("HOSTILE-RESULTS ").map(|(_, r)| r))
        .unwrap_or_else(|| panic!("no results from the hostile process:\n{stdout}"));
    let r: serde_json::Value = serde_json::from_str(line).unwrap();
    println!("hostile requests and what they got: {r:#}");
    println!(
        "node-0 while attacked: a line seen on node-1 after {} ms; RSS {} -> {} KiB",
        seen_after.as_millis(),
        rss_before,
        rss_held
    );

    // Nothing of the victim volume, under the compromised node's own proof.
    let sent: Vec<String> =
        serde_json::from_value(r["blobs_asked_under_own_proof"].clone()).unwrap();
    assert!(
        !sent.is_empty(),
        "its own volume's blobs are served: the probe works"
    );
    println!(
        "asked under its own volume's proof for {} blob addresses (node-0's whole store): {} sent",
        spec.guesses.len(),
        sent.len()
    );
    for h in &sent {
        assert!(
            held_by_2.contains(h),
            "node-0 served blob {h}, which node-2 never held"
        );
    }
    assert_eq!(r["victim_history_under_own_proof"], 0);
    for refused in [
        "victim_blobs_with_a_made_up_proof",
        "enroll_in_victim_with_own_proof",
        "keyring_of_victim_with_own_proof",
        "announce_for_victim",
        "junk",
        "oversized_length",
    ] {
        assert_eq!(r[refused], "refused", "{refused}: {}", r[refused]);
    }
    // Bounded: requests beyond the per-peer cap wait unaccepted, and no
    // announced length is allocated ahead of its bytes.
    let opened = r["stalled_opened"].as_u64().unwrap();
    println!("stalled requests the hostile process opened: {opened} of 600");
    assert!(
        rss_held < rss_before + 256 * 1024,
        "node-0 grew from {rss_before} to {rss_held} KiB"
    );
    let disk_after = dir_bytes(&state_0);
    assert!(
        disk_after < disk_before + (16 << 20),
        "node-0's state dir grew from {disk_before} to {disk_after} bytes"
    );
    // Nothing forged was installed: node-0's victim head is its own.
    assert_eq!(
        fs::read(on_0.join("secret.txt")).unwrap(),
        b"not for node-2"
    );
    assert!(
        !members_include_2(&n, &victim),
        "node-2 became a member of the victim"
    );
}

/// Every blob address in a node's store.
fn blob_names(state: &Path) -> std::collections::HashSet<String> {
    let mut out = std::collections::HashSet::new();
    for shard in fs::read_dir(state.join("store/blobs")).unwrap().flatten() {
        for blob in fs::read_dir(shard.path()).unwrap().flatten() {
            out.insert(blob.file_name().to_string_lossy().into_owned());
        }
    }
    out
}

/// A process's resident memory.
fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Whether node-2's identity holds a share at node-0's head of `id`.
fn members_include_2(n: &Nodes, id: &str) -> bool {
    let endpoint =
        n.c.psql("SELECT endpoint_id FROM nodes WHERE id = 'node-2'");
    jax_csi::bucket::StateDir::open(&n.c.node_state(&name(0)))
        .unwrap()
        .members_at_head(&id.parse().unwrap())
        .unwrap()
        .iter()
        .any(|m| endpoint.contains(&m.to_hex()))
}

/// The hostile process of [`a_hostile_node_reaches_nothing_it_was_not_given`]:
/// run by the harness in the compromised node's namespace; on its own (no
/// spec in the environment) it does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peer_process() {
    use jax_csi::bucket::{BucketId, StateDir};
    use jax_csi::crypto::{Kek, NodeId};
    use jax_csi::store::Hash;
    use jax_csi::sync::proto::{Request, Response};
    use jax_csi::sync::{Peer, SyncConfig, SyncEngine};

    let Ok(spec_file) = std::env::var("JAX_HOSTILE_SPEC") else {
        return;
    };
    let spec: HostileSpec = serde_json::from_slice(&fs::read(spec_file).unwrap()).unwrap();
    let kek = Arc::new(Kek::from_file(&spec.kek).unwrap());
    let state = Arc::new(StateDir::open(&spec.state).unwrap());
    let identity = state.identity().clone();
    let cfg = SyncConfig {
        listen: "0.0.0.0:0".parse().unwrap(),
        anti_entropy: Duration::from_secs(3600),
        rebuild_bytes_per_sec: None,
        rebuild_yields: false,
    };
    let engine = SyncEngine::start(&cfg, &identity, state.clone(), kek.clone())
        .await
        .unwrap();
    let target = Peer {
        node: NodeId::from_hex(&spec.target_id).unwrap(),
        addrs: vec![spec.target_addr.parse().unwrap()],
    };
    let (victim, own): (BucketId, BucketId) =
        (spec.victim.parse().unwrap(), spec.own.parse().unwrap());
    engine.hostile_know(own, target.clone());
    let mine = state.open_bucket(&own, &kek).unwrap();
    let me = identity.node_id();
    let own_proof = mine.proof_key().proof(&own, &me.0, &target.node.0);
    // A node that registered a moment ago is let in once the honest
    // node's list names it (a 2 s refresh).
    let heads = Request::Heads {
        buckets: vec![(own, own_proof)],
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(
        engine.hostile_ask(&target, &heads).await,
        Ok(Response::Heads(_))
    ) {
        assert!(
            Instant::now() < deadline,
            "never let in as a registered node"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let own_enroll = mine.enroll_key().proof(&own, &me.0, &target.node.0);
    let made_up = [7u8; 32];
    let victim_head = Hash::from_hex(&spec.victim_head).unwrap();
    let verdict = |answer: Result<Response, _>| -> serde_json::Value {
        match answer {
            Ok(Response::Refused { .. }) | Err(_) => "refused".into(),
            Ok(other) => format!("answered {other:?}").into(),
        }
    };
    let mut r = serde_json::Map::new();

    // Finding 1: any blob of the store, by address, under its own proof.
    let mut sent = Vec::new();
    for batch in spec.guesses.chunks(4096) {
        let hashes = batch.iter().map(|h| Hash::from_hex(h).unwrap()).collect();
        let req = Request::GetBlobs {
            bucket: own,
            proof: own_proof,
            hashes,
        };
        let (got, _) = engine.hostile_blobs(&target, &req).await.unwrap();
        sent.extend(got.into_iter().map(|(h, _)| h.to_hex()));
    }
    r.insert("blobs_asked_under_own_proof".into(), sent.into());
    let req = Request::History {
        bucket: own,
        proof: own_proof,
        head: victim_head,
        have: vec![],
    };
    let history = engine
        .hostile_blobs(&target, &req)
        .await
        .map(|(got, _)| got.len())
        .unwrap_or(0);
    r.insert("victim_history_under_own_proof".into(), history.into());
    let req = Request::GetBlobs {
        bucket: victim,
        proof: made_up,
        hashes: vec![victim_head],
    };
    let got = engine.hostile_blobs(&target, &req).await;
    r.insert(
        "victim_blobs_with_a_made_up_proof".into(),
        match got {
            Ok((sent, _)) if !sent.is_empty() => "answered with blobs".into(),
            _ => "refused".into(),
        },
    );
    // Findings 2 and 6: membership, the key ring, a head for the victim.
    for (name, req) in [
        (
            "enroll_in_victim_with_own_proof",
            Request::Enroll {
                bucket: victim,
                proof: own_enroll,
            },
        ),
        (
            "keyring_of_victim_with_own_proof",
            Request::Keyring {
                bucket: victim,
                proof: own_enroll,
            },
        ),
        (
            "announce_for_victim",
            Request::Announce {
                bucket: victim,
                proof: own_proof,
                head: Hash::of(b"a head node-2 made up"),
            },
        ),
    ] {
        r.insert(
            name.into(),
            verdict(engine.hostile_ask(&target, &req).await),
        );
    }
    // Finding 4: junk, an oversized length, and requests held open.
    let junk = engine.hostile_junk(&target, b"\x05\x00\x00\x00junk!").await;
    r.insert(
        "junk".into(),
        if junk { "answered" } else { "refused" }.into(),
    );
    let oversized = engine.hostile_junk(&target, &u32::MAX.to_le_bytes()).await;
    r.insert(
        "oversized_length".into(),
        if oversized { "answered" } else { "refused" }.into(),
    );
    let stalled = engine
        .hostile_stall(&target, 600, 1 << 20, Duration::from_secs(2))
        .await;
    r.insert("stalled_opened".into(), stalled.opened.into());
    fs::write(&spec.ready, b"").unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !spec.done.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(stalled);
    println!("HOSTILE-RESULTS {}", serde_json::Value::Object(r));
}
