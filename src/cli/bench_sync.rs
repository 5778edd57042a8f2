//! `jax-csi bench sync`: our node-to-node sync against syncthing between the
//! same two network namespaces, in one run (root; `--release`).
//!
//! Ours: an embedded Postgres, a controller, and node plugins in their own
//! namespaces; one RWX volume published on nodes A and B. A "sync" is over
//! when B's HEAD is A's (B fetched every blob and applied the head).
//! Syncthing: two instances in the same namespaces, one shared folder, TCP,
//! no discovery, relays or NAT; after each change A is told to rescan at
//! once (its best case: no watcher delay), and a sync is over when B's files
//! have the contents written on A.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use jax_csi::csi::proto::controller_client::ControllerClient;
use jax_csi::csi::proto::node_client::NodeClient;
use jax_csi::csi::proto::volume_capability::access_mode::Mode;
use jax_csi::csi::proto::volume_capability::{AccessMode, AccessType, MountVolume};
use jax_csi::csi::proto::*;
use jax_csi::db::embedded::EmbeddedPostgres;
use jax_csi::netns::Net;

pub struct SyncBench {
    pub dir: PathBuf,
    pub size_mib: usize,
    pub files: Vec<usize>,
    pub latency_samples: usize,
    pub only: Vec<String>,
}

const MIB: usize = 1 << 20;

/// The links' MTU (JAX_BENCH_MTU, default 1500).
fn mtu() -> u32 {
    std::env::var("JAX_BENCH_MTU")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500)
}

/// `len` bytes derived from `seed` (incompressible, distinct per seed).
pub(super) fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

fn wait(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > limit {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(start.elapsed())
}

fn fsync(p: &Path) -> std::io::Result<()> {
    std::fs::File::open(p)?.sync_all()
}

/// What one system measured.
#[derive(Default)]
struct Results {
    big: Option<Duration>,
    files: Vec<(usize, Duration)>,
    latency: Vec<Duration>,
    edit_bytes: Option<u64>,
    move_first_read: Option<Duration>,
    move_complete: Option<Duration>,
}

pub fn bench_sync(b: SyncBench) -> anyhow::Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "bench sync needs root (namespaces, FUSE)"
    );
    let want = |name: &str| b.only.is_empty() || b.only.iter().any(|o| o == name);
    let mut ours = Results::default();
    let mut theirs = Results::default();
    if want("jax-csi") {
        eprintln!("measuring jax-csi ...");
        ours = tokio::runtime::Runtime::new()?.block_on(measure_ours(&b))?;
    }
    if want("syncthing") {
        eprintln!("measuring syncthing ...");
        theirs = measure_syncthing(&b)?;
    }
    print_table(&b, &ours, &theirs);
    Ok(())
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.2}", d.as_secs_f64()))
}

fn ratio(theirs: Option<Duration>, ours: Option<Duration>) -> String {
    match (theirs, ours) {
        (Some(t), Some(o)) if o > Duration::ZERO => {
            format!("{:.2}x", t.as_secs_f64() / o.as_secs_f64())
        }
        _ => "-".into(),
    }
}

fn pct(v: &[Duration], p: f64) -> Option<Duration> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort();
    Some(s[((s.len() - 1) as f64 * p).round() as usize])
}

fn print_table(b: &SyncBench, ours: &Results, theirs: &Results) {
    println!(
        "jax-csi bench sync: two nodes in network namespaces, stores on {}",
        b.dir.display()
    );
    println!();
    println!("| workload | jax-csi | syncthing | syncthing time / ours |");
    println!("|---|---|---|---|");
    let mib = b.size_mib as f64;
    let tput = |d: Option<Duration>| {
        d.map_or("-".into(), |d| {
            format!(
                "{:.0} MiB/s ({:.2} s)",
                mib / d.as_secs_f64(),
                d.as_secs_f64()
            )
        })
    };
    println!(
        "| {} MiB file, A to B | {} | {} | {} |",
        b.size_mib,
        tput(ours.big),
        tput(theirs.big),
        ratio(theirs.big, ours.big)
    );
    for (n, d) in &ours.files {
        let t = theirs.files.iter().find(|(m, _)| m == n).map(|x| x.1);
        println!(
            "| {n} files of 4 KiB, A to B (s) | {} | {} | {} |",
            secs(Some(*d)),
            secs(t),
            ratio(t, Some(*d))
        );
    }
    for (label, p) in [("p50", 0.5), ("max", 1.0)] {
        let (o, t) = (pct(&ours.latency, p), pct(&theirs.latency, p));
        println!(
            "| small write + fsync on A seen on B, {label} (ms, {} samples) | {} | {} | {} |",
            ours.latency.len().max(theirs.latency.len()),
            o.map_or("-".into(), |d| format!("{:.1}", d.as_secs_f64() * 1e3)),
            t.map_or("-".into(), |d| format!("{:.1}", d.as_secs_f64() * 1e3)),
            ratio(t, o)
        );
    }
    println!(
        "| 4 KiB edit in the {} MiB file: bytes B stored | {} | - | |",
        b.size_mib,
        ours.edit_bytes.map_or("-".into(), |n| format!(
            "{n} ({:.2} chunks of 1 MiB)",
            n as f64 / MIB as f64
        ))
    );
    println!(
        "| volume moved to a new node: stage + first 4 KiB read (s) | {} | - | |",
        secs(ours.move_first_read)
    );
    println!(
        "| volume moved to a new node: whole {} MiB readable (s) | {} | - | |",
        b.size_mib,
        secs(ours.move_complete)
    );
}

// ----- ours ------------------------------------------------------------------

struct Ours {
    _pg: EmbeddedPostgres,
    dir: tempfile::TempDir,
    children: Vec<Child>,
    net: Net,
    ctl: ControllerClient<tonic::transport::Channel>,
    nodes: Vec<NodeClient<tonic::transport::Channel>>,
}

impl Drop for Ours {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
    }
}

fn rwx() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode {
            mode: Mode::MultiNodeMultiWriter as i32,
        }),
    }
}

impl Ours {
    async fn start(dir: &Path, nodes: usize) -> anyhow::Result<Self> {
        let tmp = tempfile::Builder::new()
            .prefix("jax-bench-sync-")
            .tempdir_in(dir)?;
        let pg = EmbeddedPostgres::start_temp().context("a throwaway Postgres")?;
        let kek = tmp.path().join("kek");
        jax_csi::crypto::Kek::generate()?.write_file(&kek)?;
        let exe = std::env::current_exe()?;
        let log = |name: &str| std::fs::File::create(tmp.path().join(format!("{name}.log")));
        let ctl_sock = tmp.path().join("c.sock");
        let mut children = vec![Command::new(&exe)
            .current_dir(tmp.path())
            .args(["controller", "--endpoint"])
            .arg(&ctl_sock)
            .args(["--database-url", &pg.database_url(), "--kek-file"])
            .arg(&kek)
            .stdout(Stdio::null())
            .stderr(log("controller")?)
            .spawn()?];
        let net = Net::with_mtu(nodes, mtu());
        let ctl = ControllerClient::new(super::local_cmd::wait_ready(&ctl_sock).await?);
        let mut clients = Vec::new();
        for i in 0..nodes {
            let sock = tmp.path().join(format!("n{i}.sock"));
            let mut cmd = Command::new(&exe);
            cmd.args(["node", "--endpoint"])
                .arg(&sock)
                .args(["--node-id", &format!("node-{i}"), "--state-dir"])
                .arg(tmp.path().join(format!("node-{i}")))
                .args(["--database-url", &pg.database_url(), "--kek-file"])
                .arg(&kek)
                .args(["--listen", &format!("{}:9810", net.addr(i))])
                .arg("--kubelet-dir")
                .arg(tmp.path())
                .stdout(Stdio::null())
                .stderr(log(&format!("node-{i}"))?);
            net.enter(i, &mut cmd);
            children.push(cmd.spawn()?);
            clients.push(NodeClient::new(super::local_cmd::wait_ready(&sock).await?));
        }
        Ok(Self {
            _pg: pg,
            dir: tmp,
            children,
            net,
            ctl,
            nodes: clients,
        })
    }

    async fn publish(&mut self, i: usize, id: &str) -> anyhow::Result<PathBuf> {
        let staging = self.dir.path().join(format!("node-{i}-staging/{id}"));
        let target = self.dir.path().join(format!("node-{i}-pod/{id}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.nodes[i]
                .node_stage_volume(NodeStageVolumeRequest {
                    volume_id: id.into(),
                    staging_target_path: staging.display().to_string(),
                    volume_capability: Some(rwx()),
                    ..Default::default()
                })
                .await;
            match r {
                Ok(_) => break,
                Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(s) => bail!("staging on node-{i}: {s}"),
            }
        }
        self.nodes[i]
            .node_publish_volume(NodePublishVolumeRequest {
                volume_id: id.into(),
                staging_target_path: staging.display().to_string(),
                target_path: target.display().to_string(),
                volume_capability: Some(rwx()),
                ..Default::default()
            })
            .await?;
        Ok(target)
    }

    fn head(&self, i: usize, id: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node-{i}/buckets/{id}/HEAD")))
            .unwrap_or_default()
    }

    fn store_bytes(&self, i: usize) -> u64 {
        jax_csi::store::BlobStore::open(&self.dir.path().join(format!("node-{i}/store")))
            .and_then(|s| s.disk_usage())
            .unwrap_or(0)
    }

    /// Wait until B (node 1) holds A's (node 0) head, once A's head holds
    /// everything A fsynced (an fsync goes to the journal; the version
    /// that follows retires it). The time counts from the call.
    fn synced(&self, id: &str, limit: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let journal = self.dir.path().join(format!("node-0/buckets/{id}/journal"));
        wait("A's version of what it fsynced", limit, || {
            !jax_csi::bucket::journal::holds_changes(&journal)
        })?;
        let a = self.head(0, id);
        wait("B to hold A's head", limit, || self.head(1, id) == a)?;
        Ok(start.elapsed())
    }
}

async fn measure_ours(b: &SyncBench) -> anyhow::Result<Results> {
    let mut r = Results::default();
    let mut o = Ours::start(&b.dir, 3).await?;
    let id = o
        .ctl
        .create_volume(CreateVolumeRequest {
            name: "bench".into(),
            volume_capabilities: vec![rwx()],
            capacity_range: Some(CapacityRange {
                required_bytes: ((b.size_mib as i64) << 20) * 3 + (1 << 30),
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await?
        .into_inner()
        .volume
        .context("a volume")?
        .volume_id;
    let a = o.publish(0, &id).await?;
    std::fs::write(a.join("seed"), b"seed")
        .with_context(|| format!("writing into {}", a.display()))?;
    fsync(&a.join("seed"))?;
    tokio::time::sleep(Duration::from_millis(300)).await; // the head reaches Postgres
    let bb = o.publish(1, &id).await?;
    o.synced(&id, Duration::from_secs(30))?;

    // One large file.
    let data = pattern(b.size_mib * MIB, 1);
    std::fs::write(a.join("big.bin"), &data)?;
    fsync(&a.join("big.bin"))?;
    let t = o.synced(&id, Duration::from_secs(600))?;
    r.big = Some(t);
    ensure!(
        std::fs::read(bb.join("big.bin"))? == data,
        "B's copy differs"
    );

    // Many small files.
    for &n in &b.files {
        let d = a.join(format!("small-{n}"));
        std::fs::create_dir(&d)?;
        for i in 0..n {
            std::fs::write(d.join(format!("f{i:06}")), pattern(4096, i as u64))?;
        }
        fsync(&d)?; // fsyncdir: a commit now
        let t = o.synced(&id, Duration::from_secs(600))?;
        r.files.push((n, t));
        ensure!(
            std::fs::read_dir(bb.join(format!("small-{n}")))?.count() == n,
            "B misses files"
        );
    }

    // A small write's latency.
    for k in 0..b.latency_samples {
        let text = format!("sample {k}");
        let start = Instant::now();
        std::fs::write(a.join("latency.txt"), &text)?;
        fsync(&a.join("latency.txt"))?;
        wait("B to read the sample", Duration::from_secs(10), || {
            std::fs::read(bb.join("latency.txt")).ok().as_deref() == Some(text.as_bytes())
        })?;
        r.latency.push(start.elapsed());
    }

    // A 4 KiB edit in the large file: what B has to store for it.
    let before = o.store_bytes(1);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(a.join("big.bin"))?;
        f.write_all_at(&[0xAB; 4096], (b.size_mib * MIB / 2) as u64)?;
        f.sync_all()?;
    }
    o.synced(&id, Duration::from_secs(60))?;
    r.edit_bytes = Some(o.store_bytes(1).saturating_sub(before));

    // The volume moves to a node that never held it.
    let start = Instant::now();
    let c = o.publish(2, &id).await?;
    let mut first = vec![0u8; 4096];
    {
        use std::io::Read;
        std::fs::File::open(c.join("big.bin"))?.read_exact(&mut first)?;
    }
    r.move_first_read = Some(start.elapsed());
    let all = std::fs::read(c.join("big.bin"))?;
    r.move_complete = Some(start.elapsed());
    ensure!(all.len() == data.len(), "C's copy is short");
    let _ = &o.net;
    if std::env::var_os("JAX_BENCH_KEEP").is_some() {
        eprintln!("kept {}", o.dir.path().display());
        std::mem::forget(std::mem::replace(&mut o.dir, tempfile::tempdir()?));
    }
    Ok(r)
}

// ----- syncthing ---------------------------------------------------------------

struct Syncthing {
    child: Child,
    folder: PathBuf,
    gui: String,
    key: String,
    ns: usize,
}

impl Drop for Syncthing {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn curl(
    net: &Net,
    s: &Syncthing,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<String> {
    let mut c = net.exec(s.ns, "curl");
    c.args(["-sf", "-X", method, "-H", &format!("X-API-Key: {}", s.key)]);
    if let Some(b) = body {
        c.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    c.arg(format!("http://{}{path}", s.gui));
    let out = c.output()?;
    ensure!(
        out.status.success(),
        "syncthing REST {method} {path} failed"
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn start_syncthing(net: &Net, i: usize, root: &Path) -> anyhow::Result<Syncthing> {
    let home = root.join(format!("st-home-{i}"));
    let folder = root.join(format!("st-folder-{i}"));
    std::fs::create_dir_all(&folder)?;
    let gen = Command::new("syncthing")
        .args([
            "generate",
            "--no-default-folder",
            "--skip-port-probing",
            "--home",
        ])
        .arg(&home)
        .output()
        .context("running syncthing (apt install syncthing)")?;
    ensure!(gen.status.success(), "syncthing generate failed");
    let key = format!("jaxbench{i}");
    let gui = "127.0.0.1:8384".to_string();
    let mut cmd = Command::new("syncthing");
    cmd.args([
        "serve",
        "--no-browser",
        "--no-restart",
        "--no-upgrade",
        "--home",
    ])
    .arg(&home)
    .args([
        "--gui-address",
        &format!("http://{gui}"),
        "--gui-apikey",
        &key,
    ])
    .env("STNODEFAULTFOLDER", "1")
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    net.enter(i, &mut cmd);
    let s = Syncthing {
        child: cmd.spawn()?,
        folder,
        gui,
        key,
        ns: i,
    };
    wait("syncthing's REST API", Duration::from_secs(30), || {
        curl(net, &s, "GET", "/rest/system/ping", None).is_ok()
    })?;
    Ok(s)
}

fn device_id(net: &Net, s: &Syncthing) -> anyhow::Result<String> {
    let v: serde_json::Value =
        serde_json::from_str(&curl(net, s, "GET", "/rest/system/status", None)?)?;
    Ok(v["myID"].as_str().context("myID")?.to_string())
}

fn configure(
    net: &Net,
    s: &Syncthing,
    me: &str,
    peer: &str,
    peer_addr: &str,
) -> anyhow::Result<()> {
    let mut cfg: serde_json::Value =
        serde_json::from_str(&curl(net, s, "GET", "/rest/config", None)?)?;
    let o = &mut cfg["options"];
    o["globalAnnounceEnabled"] = false.into();
    o["localAnnounceEnabled"] = false.into();
    o["relaysEnabled"] = false.into();
    o["natEnabled"] = false.into();
    o["urAccepted"] = (-1).into();
    o["crashReportingEnabled"] = false.into();
    o["autoUpgradeIntervalH"] = 0.into();
    o["listenAddresses"] = serde_json::json!(["tcp://0.0.0.0:22000"]);
    let device = |id: &str, addr: &str| serde_json::json!({"deviceID": id, "name": id[..7].to_string(), "addresses": [addr], "compression": "never", "autoAcceptFolders": false});
    cfg["devices"] = serde_json::json!([device(me, "dynamic"), device(peer, peer_addr)]);
    cfg["folders"] = serde_json::json!([{
        "id": "bench", "label": "bench", "path": s.folder.display().to_string(), "type": "sendreceive",
        "devices": [{"deviceID": me}, {"deviceID": peer}],
        "rescanIntervalS": 3600, "fsWatcherEnabled": true, "fsWatcherDelayS": 1,
    }]);
    curl(net, s, "PUT", "/rest/config", Some(&cfg.to_string()))?;
    Ok(())
}

fn measure_syncthing(b: &SyncBench) -> anyhow::Result<Results> {
    let root = tempfile::Builder::new()
        .prefix("jax-bench-st-")
        .tempdir_in(&b.dir)?;
    let net = Net::with_mtu(2, mtu());
    let sa = start_syncthing(&net, 0, root.path())?;
    let sb = start_syncthing(&net, 1, root.path())?;
    let (ida, idb) = (device_id(&net, &sa)?, device_id(&net, &sb)?);
    configure(
        &net,
        &sa,
        &ida,
        &idb,
        &format!("tcp://{}:22000", net.addr(1)),
    )?;
    configure(
        &net,
        &sb,
        &idb,
        &ida,
        &format!("tcp://{}:22000", net.addr(0)),
    )?;
    wait(
        "the two syncthings to connect",
        Duration::from_secs(60),
        || {
            curl(&net, &sa, "GET", "/rest/system/connections", None)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .is_some_and(|v| v["connections"][&idb]["connected"].as_bool() == Some(true))
        },
    )?;
    let scan = || curl(&net, &sa, "POST", "/rest/db/scan?folder=bench", None).map(|_| ());
    let mut r = Results::default();

    let data = pattern(b.size_mib * MIB, 1);
    std::fs::write(sa.folder.join("big.bin"), &data)?;
    let start = Instant::now();
    scan()?;
    let want = blake3::hash(&data);
    wait(
        "syncthing's copy of big.bin",
        Duration::from_secs(900),
        || {
            std::fs::metadata(sb.folder.join("big.bin")).is_ok_and(|m| m.len() == data.len() as u64)
                && std::fs::read(sb.folder.join("big.bin")).is_ok_and(|d| blake3::hash(&d) == want)
        },
    )?;
    r.big = Some(start.elapsed());

    for &n in &b.files {
        let d = sa.folder.join(format!("small-{n}"));
        std::fs::create_dir(&d)?;
        for i in 0..n {
            std::fs::write(d.join(format!("f{i:06}")), pattern(4096, i as u64))?;
        }
        let start = Instant::now();
        scan()?;
        let there = sb.folder.join(format!("small-{n}"));
        wait("syncthing's small files", Duration::from_secs(900), || {
            std::fs::read_dir(&there).is_ok_and(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| !e.file_name().to_string_lossy().starts_with(".syncthing"))
                    .filter(|e| e.metadata().is_ok_and(|m| m.len() == 4096))
                    .count()
                    == n
            })
        })?;
        r.files.push((n, start.elapsed()));
    }

    for k in 0..b.latency_samples {
        let text = format!("sample {k}");
        let start = Instant::now();
        std::fs::write(sa.folder.join("latency.txt"), &text)?;
        fsync(&sa.folder.join("latency.txt"))?;
        scan()?;
        wait("syncthing's sample", Duration::from_secs(30), || {
            std::fs::read(sb.folder.join("latency.txt")).ok().as_deref() == Some(text.as_bytes())
        })?;
        r.latency.push(start.elapsed());
    }
    Ok(r)
}
