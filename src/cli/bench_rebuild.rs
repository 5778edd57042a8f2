//! `jax-csi bench rebuild`: how fast a blind replica is built (#28), from
//! one holder and from two at once, beside `cp` of the same blobs between
//! two state dirs on the same disk and one raw QUIC stream of the same
//! bytes over the same loopback link. Sync engines run in this process on
//! 127.0.0.1, their state dirs under `--dir` (a disk by default).
//!
//! Ratios: the rebuild's throughput over the slower of the two baselines
//! (the goal is at least 0.8x), and one source's time over two sources'.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use jax_csi::bucket::{BucketId, BucketOptions, ProofKey, StateDir, ROOT_INO};
use jax_csi::crypto::{Kek, NodeId, SecretKey};
use jax_csi::store::Hash;
use jax_csi::sync::on_disk::OnDisk;
use jax_csi::sync::{Peer, SyncConfig, SyncEngine};

use super::bench_sync::pattern;

pub struct RebuildBench {
    pub dir: PathBuf,
    pub size_mib: usize,
    pub files: usize,
}

struct Node {
    state: Arc<StateDir>,
    engine: SyncEngine,
}

async fn node(root: &Path, name: &str, kek: &Arc<Kek>, yields: bool) -> anyhow::Result<Node> {
    let state = Arc::new(StateDir::open(&root.join(name))?);
    let engine = SyncEngine::start(
        &SyncConfig {
            listen: "127.0.0.1:0".parse()?,
            anti_entropy: Duration::from_secs(3600),
            rebuild_bytes_per_sec: None,
            rebuild_yields: yields,
        },
        state.identity(),
        state.clone(),
        kek.clone(),
    )
    .await?;
    engine.set_replicas(Arc::new(OnDisk {
        state: state.clone(),
        kek: kek.clone(),
    }));
    Ok(Node { state, engine })
}

fn peer(n: &Node) -> Peer {
    n.engine.as_peer()
}

/// One workload's figures.
struct Row {
    what: String,
    bytes: u64,
    blobs: u64,
    cp: Duration,
    raw: Duration,
    one: Duration,
    two: Duration,
    /// With a pod's writes on the serving node (the first workload only).
    under_load: Option<UnderLoad>,
}

/// A pod's fsynced 4 KiB writes on the serving node: their latency alone,
/// while a rebuild fetches flat out, and while one yields (`sync::pace`).
struct UnderLoad {
    alone: Latency,
    flat: (Latency, Duration),
    yielding: (Latency, Duration),
}

/// p50 and p99 of a pod's operations, and how many it made a second.
#[derive(Clone, Copy)]
struct Latency {
    p50: Duration,
    p99: Duration,
    per_sec: f64,
}

pub fn bench_rebuild(b: RebuildBench) -> anyhow::Result<()> {
    std::fs::create_dir_all(&b.dir).with_context(|| format!("creating {}", b.dir.display()))?;
    let root = tempfile::Builder::new()
        .prefix("jax-bench-rebuild-")
        .tempdir_in(&b.dir)?;
    let rt = tokio::runtime::Runtime::new()?;
    let rows = rt.block_on(async {
        let mut rows = Vec::new();
        let size = b.size_mib as u64 * (1 << 20);
        rows.push(
            workload(
                root.path(),
                &format!("{} MiB file", b.size_mib),
                true,
                |m| {
                    let f = m.create(ROOT_INO, b"big.bin", 0o644, 0, 0)?.ino;
                    let block = pattern(1 << 20, 1);
                    let mut off = 0;
                    while off < size {
                        let n = (size - off).min(block.len() as u64) as usize;
                        m.write(f, off, &block[..n])?;
                        // Distinct chunks: a counter in each MiB.
                        m.write(f, off, &off.to_le_bytes())?;
                        off += n as u64;
                    }
                    Ok(())
                },
            )
            .await?,
        );
        if b.files > 0 {
            let files = b.files;
            rows.push(
                workload(
                    root.path(),
                    &format!("{files} x 4 KiB files"),
                    false,
                    move |m| {
                        for i in 0..files {
                            let dir = format!("d{}", i / 1000);
                            let d = match m.lookup(ROOT_INO, dir.as_bytes()) {
                                Ok(a) => a.ino,
                                Err(_) => m.mkdir(ROOT_INO, dir.as_bytes(), 0o755, 0, 0)?.ino,
                            };
                            let f = m.create(d, format!("f{i}").as_bytes(), 0o644, 0, 0)?.ino;
                            m.write(f, 0, &pattern(4096, i as u64))?;
                        }
                        Ok(())
                    },
                )
                .await?,
            );
        }
        anyhow::Ok(rows)
    })?;
    print_table(&b, &rows);
    Ok(())
}

/// Write a volume with `fill` on a member A, copy it whole to a member
/// B, then time: `cp` of A's blobs, a raw stream of as many bytes, a blind
/// replica from A alone, and one from A and B at once.
async fn workload(
    root: &Path,
    what: &str,
    with_load: bool,
    fill: impl FnOnce(&mut jax_csi::bucket::Mount) -> jax_csi::bucket::Result<()>,
) -> anyhow::Result<Row> {
    let root = root.join(what.replace(' ', "-"));
    let kek = Arc::new(Kek::generate()?);
    let a = node(&root, "a", &kek, false).await?;
    let bnode = node(&root, "b", &kek, false).await?;
    // As a node runs them: yielding to load (none here).
    let one = node(&root, "one-source", &kek, true).await?;
    let two = node(&root, "two-sources", &kek, true).await?;
    let flat = node(&root, "flat-under-load", &kek, false).await?;
    let yielding = node(&root, "yielding-under-load", &kek, true).await?;
    let all: HashSet<NodeId> = [&a, &bnode, &one, &two, &flat, &yielding]
        .iter()
        .map(|n| n.engine.node_id())
        .collect();
    for n in [&a, &bnode, &one, &two, &flat, &yielding] {
        n.engine.set_registered(all.clone());
    }
    let id = BucketId::generate()?;
    let secret = SecretKey::generate()?;
    let bucket =
        a.state
            .create_bucket_with_secret(id, secret.clone(), &kek, &BucketOptions::default())?;
    let mut m = bucket.mount()?;
    fill(&mut m)?;
    m.save()?;
    drop(m);
    a.engine.set_peers(id, vec![peer(&bnode)]);
    let head = bnode
        .engine
        .fetch_bucket(id, secret.clone(), vec![peer(&a)])
        .await?;
    bnode.engine.complete(id).await?;
    a.engine.pull(id, head).await?;
    // What a replica fetches: the set of the version, and its bytes.
    let statement = bucket.statement_for(&head)?;
    let set = jax_csi::bucket::blob_set::read_held(a.state.store(), &statement)?;
    let mut bytes = 0u64;
    for h in &set.members {
        bytes += a.state.store().get(h)?.len() as u64;
    }
    a.state.store().sync()?;

    let cp = copy_blobs(&a.state, &set.members, &root.join("cp"))?;
    let raw = jax_csi::sync::raw::raw_stream("127.0.0.1:0".parse()?, "127.0.0.1:0".parse()?, bytes)
        .await?;
    let wrapped =
        jax_csi::db::replicas::wrap_proof_key(&kek, &id.to_hex(), &ProofKey::of(&secret))?;
    let mut times = Vec::new();
    for (replica, sources) in [(&one, vec![peer(&a)]), (&two, vec![peer(&a), peer(&bnode)])] {
        replica.state.create_blind(&id, &wrapped, &kek)?;
        replica.engine.set_peers(id, sources);
        let started = Instant::now();
        let done = replica
            .engine
            .replicate(id, head, jax_csi::sync::replicate::Keep::Head)
            .await?;
        times.push(started.elapsed());
        anyhow::ensure!(
            done.blobs == set.members.len() as u64,
            "the replica took a different set"
        );
    }
    let mut under_load = None;
    if with_load {
        // The pod's file sits beside the serving node's state dir.
        let pod_file = root.join("a-pod.bin");
        let alone = pod_writes(&pod_file, Duration::ZERO, || {
            Box::pin(async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                Ok(())
            })
        })
        .await?
        .0;
        let mut runs = Vec::new();
        for replica in [&flat, &yielding] {
            replica.state.create_blind(&id, &wrapped, &kek)?;
            replica.engine.set_peers(id, vec![peer(&a)]);
            let engine = replica.engine.clone();
            // The pod's load comes a second into the rebuild: what it
            // yields to is load that grows.
            let (latency, took) = pod_writes(&pod_file, Duration::from_secs(1), move || {
                Box::pin(async move {
                    engine
                        .replicate(id, head, jax_csi::sync::replicate::Keep::Head)
                        .await
                        .map(drop)
                        .map_err(anyhow::Error::from)
                })
            })
            .await?;
            runs.push((latency, took));
        }
        under_load = Some(UnderLoad {
            alone,
            flat: runs[0],
            yielding: runs[1],
        });
    }
    for n in [a, bnode, one, two, flat, yielding] {
        n.engine.shutdown().await;
    }
    Ok(Row {
        what: what.to_string(),
        bytes,
        blobs: set.members.len() as u64,
        cp,
        raw,
        one: times[0],
        two: times[1],
        under_load,
    })
}

type Work = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>;

/// Run `work` while a thread plays a pod on the serving node: each of its
/// operations hashes 256 KiB (its CPU) and writes 4 KiB to `file` (within
/// 64 MiB), fdatasynced (its disk). The operations' latency, and how long
/// `work` took. The pod starts `starts_after` into the work.
async fn pod_writes(
    file: &Path,
    starts_after: Duration,
    work: impl FnOnce() -> Work,
) -> anyhow::Result<(Latency, Duration)> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(file)?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || -> std::io::Result<Vec<Duration>> {
            let work = pattern(256 << 10, 7);
            let mut took = Vec::new();
            let mut at = 0u64;
            std::thread::sleep(starts_after);
            // At least one operation, however short the work.
            loop {
                let t = Instant::now();
                // Counted as a FUSE request of this node's: what the
                // serving side yields to.
                let _op = jax_csi::metrics::FuseOp::start("bench-pod");
                let digest = blake3::hash(&work);
                f.write_all_at(&digest.as_bytes().repeat(128), at)?;
                f.sync_data()?;
                took.push(t.elapsed());
                // A stride that visits the whole file, block by block.
                at = (at + 4096 * 97) % (64 << 20);
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
            }
            Ok(took)
        })
    };
    let started = Instant::now();
    let done = work().await;
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut ops = writer
        .join()
        .map_err(|_| anyhow::anyhow!("the pod's writer panicked"))??;
    done?;
    ops.sort();
    let at = |q: f64| ops[((ops.len() - 1) as f64 * q) as usize];
    Ok((
        Latency {
            p50: at(0.5),
            p99: at(0.99),
            per_sec: ops.len() as f64 / took.saturating_sub(starts_after).as_secs_f64().max(1e-3),
        },
        took,
    ))
}

/// Copy the blob files of `blobs` (as the store lays them out) under
/// `to`, one file at a time, then sync the file system: what `cp` of the
/// same bytes between state dirs costs.
fn copy_blobs(state: &StateDir, blobs: &HashSet<Hash>, to: &Path) -> anyhow::Result<Duration> {
    std::fs::create_dir_all(to)?;
    let started = Instant::now();
    for (i, h) in blobs.iter().enumerate() {
        let bytes = state.store().get(h)?;
        let sub = to.join(format!("{:02x}", i % 256));
        if i < 256 {
            std::fs::create_dir_all(&sub)?;
        }
        std::fs::write(sub.join(h.to_string()), &bytes)?;
    }
    nix::unistd::sync();
    Ok(started.elapsed())
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64().max(1e-9)
}

fn print_table(b: &RebuildBench, rows: &[Row]) {
    println!(
        "# rebuild of a blind replica, state dirs under {} (loopback, one process)",
        b.dir.display()
    );
    println!(
        "| workload | blobs | MiB | cp (disk) | raw QUIC stream | 1 source | 2 sources | 1 source / slower baseline | 2 sources / 1 source |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let slower = r.cp.max(r.raw);
        println!(
            "| {} | {} | {:.0} | {:.2} s ({:.0} MiB/s) | {:.2} s ({:.0} MiB/s) | {:.2} s ({:.0} MiB/s) | {:.2} s ({:.0} MiB/s) | {:.2}x | {:.2}x faster |",
            r.what,
            r.blobs,
            r.bytes as f64 / (1 << 20) as f64,
            r.cp.as_secs_f64(),
            mib_s(r.bytes, r.cp),
            r.raw.as_secs_f64(),
            mib_s(r.bytes, r.raw),
            r.one.as_secs_f64(),
            mib_s(r.bytes, r.one),
            r.two.as_secs_f64(),
            mib_s(r.bytes, r.two),
            slower.as_secs_f64() / r.one.as_secs_f64(),
            r.one.as_secs_f64() / r.two.as_secs_f64(),
        );
    }
    let loaded: Vec<_> = rows
        .iter()
        .filter_map(|r| Some((r, r.under_load.as_ref()?)))
        .collect();
    if loaded.is_empty() {
        return;
    }
    println!();
    println!("# a pod on the serving node (each operation: hash 256 KiB, write 4 KiB, fdatasync), during a rebuild from it");
    println!(
        "| workload | pod alone p50 / p99 (ops/s) | rebuild flat out: pod p50 / p99 (ops/s), rebuild | rebuild that yields: pod p50 / p99 (ops/s), rebuild | pod ops/s, yielding / flat out |"
    );
    println!("|---|---|---|---|---|");
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let cell = |l: &Latency| format!("{:.2} / {:.2} ms ({:.0})", ms(l.p50), ms(l.p99), l.per_sec);
    for (r, u) in loaded {
        println!(
            "| {} | {} | {}, {:.2} s ({:.0} MiB/s) | {}, {:.2} s ({:.0} MiB/s) | {:.2}x |",
            r.what,
            cell(&u.alone),
            cell(&u.flat.0),
            u.flat.1.as_secs_f64(),
            mib_s(r.bytes, u.flat.1),
            cell(&u.yielding.0),
            u.yielding.1.as_secs_f64(),
            mib_s(r.bytes, u.yielding.1),
            u.yielding.0.per_sec / u.flat.0.per_sec,
        );
    }
}
