//! `jax-csi bench …`: throughput and latency tables, each measured side by
//! side with a baseline in the same run (the machines are shared and noisy,
//! so ratios are what to compare).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Subcommand;
use jax_csi::bucket::{BucketId, BucketOptions, Ino, Mount, StateDir, ROOT_INO};
use jax_csi::crypto::Kek;
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// The bucket engine against raw AES-256-GCM on the same bytes.
    Bucket {
        /// Where to put the state dir (tmpfs by default, so the disk is not measured).
        #[arg(long, default_value = "/dev/shm")]
        dir: PathBuf,
        /// Size of the large file in MiB.
        #[arg(long, default_value_t = 1024)]
        size_mib: usize,
        /// Number of 4 KiB files in the small-file phase.
        #[arg(long, default_value_t = 10_000)]
        files: usize,
        /// Number of random 4 KiB reads per file.
        #[arg(long, default_value_t = 2000)]
        random_reads: usize,
        /// Internal: measure only the streaming write and read (with the
        /// worker count JAX_WORKER_THREADS sets) and print them as JSON.
        #[arg(long, hide = true)]
        stream_only: bool,
    },
    /// Our FUSE mount against gocryptfs, bindfs and a plain directory of the same disk (run as root, with `--release`).
    Fuse {
        /// Where the backing stores live: a disk by default (users run on
        /// disks); `/dev/shm` measures without one.
        #[arg(long, default_value = "/var/tmp")]
        dir: PathBuf,
        /// Size of the sequential file in MiB.
        #[arg(long, default_value_t = 1024)]
        size_mib: usize,
        /// Number of 4 KiB files in the small-file phases.
        #[arg(long, default_value_t = 10_000)]
        files: usize,
        /// Random 4 KiB reads per file.
        #[arg(long, default_value_t = 2000)]
        random_reads: usize,
        /// Chunk size of our bucket in bytes (the StorageClass `chunkSize`).
        #[arg(long, default_value_t = jax_csi::bucket::DEFAULT_CHUNK_SIZE)]
        chunk_size: u32,
        /// Run only these file systems (comma-separated: jax-csi, gocryptfs, bindfs, raw).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Random mixed operations on a 4 MiB file (reads, writes,
        /// truncates, mmap reads and writes).
        #[arg(long, default_value_t = 100_000)]
        mixed_ops: usize,
        /// Operations of the integrity workload (`fsx`): random reads,
        /// writes, truncates and mapped reads and writes with msync on one
        /// file of up to 4 MiB, every byte checked.
        #[arg(long, default_value_t = 20_000)]
        fsx_ops: usize,
        /// Idle cost: volumes mounted at once (as a node stages them) to
        /// measure memory, threads and descriptors per volume (0 = skip).
        #[arg(long, default_value_t = 200)]
        idle_volumes: usize,
        /// Run only these workloads (comma-separated: seq, random, mixed,
        /// fsx, readers, small, pgbench; all by default). `random` and `readers`
        /// write the sequential file first.
        #[arg(long, value_delimiter = ',')]
        workloads: Vec<String>,
        /// pgbench: concurrent clients.
        #[arg(long, default_value_t = 4)]
        pgbench_clients: usize,
        /// pgbench: seconds of transactions (after loading).
        #[arg(long, default_value_t = 30)]
        pgbench_seconds: u64,
        /// pgbench: scale (1 = 100,000 accounts, about 16 MiB).
        #[arg(long, default_value_t = 10)]
        pgbench_scale: usize,
    },
    /// The random mixed workload of `bench fuse` on one file, run in a
    /// process of its own (a process that maps files of a FUSE mount it
    /// serves itself can deadlock on its own address space). Prints seconds.
    #[command(hide = true)]
    MixedOps {
        #[arg(long)]
        path: PathBuf,
        #[arg(long)]
        ops: usize,
    },
    /// The integrity workload of `bench fuse` (`fsx`) on one file, in a
    /// process of its own for the same reason. Prints seconds; a byte that
    /// differs from the model fails with its offset.
    #[command(hide = true)]
    FsxOps {
        #[arg(long)]
        path: PathBuf,
        #[arg(long)]
        ops: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Node-to-node sync against syncthing between the same two network namespaces (root, `--release`).
    Sync {
        /// Where the nodes' stores and syncthing's folders live.
        #[arg(long, default_value = "/dev/shm")]
        dir: PathBuf,
        /// Size of the large file in MiB.
        #[arg(long, default_value_t = 1024)]
        size_mib: usize,
        /// Small-file phases: how many 4 KiB files each (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        files: Vec<usize>,
        /// Small writes timed from fsync on A until B reads them.
        #[arg(long, default_value_t = 50)]
        latency_samples: usize,
        /// Run only these (comma-separated: jax-csi, syncthing).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Building a blind replica (#28) from one and from two holders, beside
    /// `cp` of the same blobs on the same disk and one raw QUIC stream.
    Rebuild {
        /// Where the nodes' state dirs live (a disk by default).
        #[arg(long, default_value = "/var/tmp")]
        dir: PathBuf,
        /// Size of the large-file volume in MiB.
        #[arg(long, default_value_t = 1024)]
        size_mib: usize,
        /// Files of 4 KiB in the small-file volume (0: skip it).
        #[arg(long, default_value_t = 10_000)]
        files: usize,
    },
    /// CSI controller RPC latency against a `SELECT 1` round trip to the same Postgres.
    Controller {
        /// Where to put Postgres's data directory.
        #[arg(long, default_value = "/dev/shm")]
        dir: PathBuf,
        /// Volumes created (and then deleted) one by one for the latency table.
        #[arg(long, default_value_t = 1000)]
        volumes: usize,
        /// Volumes in the table when ListVolumes is measured.
        #[arg(long, default_value_t = 10_000)]
        list_volumes: usize,
    },
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::MixedOps { path, ops } => {
            let took = super::bench_fuse::mixed_ops(&path, ops)?;
            println!("{}", took.as_secs_f64());
            Ok(())
        }
        BenchCommand::FsxOps { path, ops, seed } => {
            let took = super::bench_fsx::fsx_ops(&path, ops, seed)?;
            println!("{}", took.as_secs_f64());
            Ok(())
        }
        BenchCommand::Bucket {
            dir,
            size_mib,
            files,
            random_reads,
            stream_only: true,
        } => {
            let _ = (files, random_reads);
            let (w, r) = stream_only(&dir, size_mib)?;
            println!(
                "{}",
                serde_json::json!({"write_s": w.as_secs_f64(), "read_s": r.as_secs_f64()})
            );
            Ok(())
        }
        BenchCommand::Bucket {
            dir,
            size_mib,
            files,
            random_reads,
            stream_only: false,
        } => bench_bucket(&dir, size_mib, files, random_reads),
        BenchCommand::Fuse {
            dir,
            size_mib,
            files,
            random_reads,
            chunk_size,
            only,
            mixed_ops,
            fsx_ops,
            idle_volumes,
            workloads,
            pgbench_clients,
            pgbench_seconds,
            pgbench_scale,
        } => super::bench_fuse::bench_fuse(super::bench_fuse::FuseBench {
            workloads,
            pgbench: super::bench_pgbench::Pgbench {
                clients: pgbench_clients,
                seconds: pgbench_seconds,
                scale: pgbench_scale,
            },
            mixed_ops,
            fsx_ops,
            dir,
            size_mib,
            files,
            random_reads,
            chunk_size,
            only,
            idle_volumes,
        }),
        BenchCommand::Sync {
            dir,
            size_mib,
            files,
            latency_samples,
            only,
        } => super::bench_sync::bench_sync(super::bench_sync::SyncBench {
            dir,
            size_mib,
            files,
            latency_samples,
            only,
        }),
        BenchCommand::Rebuild {
            dir,
            size_mib,
            files,
        } => super::bench_rebuild::bench_rebuild(super::bench_rebuild::RebuildBench {
            dir,
            size_mib,
            files,
        }),
        BenchCommand::Controller {
            dir,
            volumes,
            list_volumes,
        } => super::bench_controller::bench_controller(&dir, volumes, list_volumes),
    }
}

const MIB: usize = 1 << 20;

fn gib_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1u64 << 30) as f64 / d.as_secs_f64()
}

/// Tiny deterministic PRNG for offsets (xorshift).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

pub(super) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

/// p50 and p99 of `n` random aligned 4 KiB reads of `ino`.
fn random_reads(
    m: &mut Mount,
    ino: Ino,
    size: u64,
    n: usize,
    seed: u64,
) -> anyhow::Result<(Duration, Duration)> {
    let mut rng = Rng(seed);
    let blocks = size / 4096;
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let off = (rng.next() % blocks) * 4096;
        let t = Instant::now();
        let got = m.read(ino, off, 4096)?;
        lat.push(t.elapsed());
        ensure!(got.len() == 4096, "short random read");
    }
    lat.sort();
    Ok((percentile(&lat, 0.5), percentile(&lat, 0.99)))
}

fn test_data(size_mib: usize) -> Vec<u8> {
    let mut data = vec![0u8; size_mib * MIB];
    blake3::Hasher::new()
        .update(b"jax-csi bench")
        .finalize_xof()
        .fill(&mut data);
    data
}

/// Raw AES-256-GCM (ring, the implementation the bucket uses) over `data`
/// in 1 MiB pieces, in place, on `threads` threads: (encrypt, decrypt).
fn raw_aes(data: &[u8], threads: usize) -> anyhow::Result<(Duration, Duration)> {
    let cipher = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, &[7u8; 32]).map_err(|_| anyhow::anyhow!("key"))?,
    );
    let nonce_for = |i: usize| {
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&(i as u64).to_le_bytes());
        Nonce::assume_unique_for_key(nonce)
    };
    let mut ct = data.to_vec();
    let pieces = data.len().div_ceil(MIB);
    let per = pieces.div_ceil(threads.max(1)) * MIB;
    let t = Instant::now();
    let tags: Vec<Vec<Tag>> = std::thread::scope(|s| {
        let handles: Vec<_> = ct
            .chunks_mut(per)
            .enumerate()
            .map(|(k, part)| {
                let cipher = &cipher;
                s.spawn(move || {
                    part.chunks_mut(MIB)
                        .enumerate()
                        .map(|(i, piece)| {
                            cipher
                                .seal_in_place_separate_tag(
                                    nonce_for(k * per / MIB + i),
                                    Aad::empty(),
                                    piece,
                                )
                                .expect("encrypt")
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("encrypt thread"))
            .collect()
    });
    let enc = t.elapsed();
    let t = Instant::now();
    std::thread::scope(|s| {
        for (k, (part, tags)) in ct.chunks_mut(per).zip(&tags).enumerate() {
            let cipher = &cipher;
            s.spawn(move || {
                for (i, piece) in part.chunks_mut(MIB).enumerate() {
                    cipher
                        .open_in_place_separate_tag(
                            nonce_for(k * per / MIB + i),
                            Aad::empty(),
                            tags[i],
                            piece,
                            0..,
                        )
                        .expect("decrypt");
                }
            });
        }
    });
    let dec = t.elapsed();
    ensure!(ct == data, "baseline round trip");
    Ok((enc, dec))
}

/// Ours, streaming: a sequential write through the Mount API and a save,
/// then a cold sequential read from a fresh mount, 1 MiB at a time.
fn stream_only(dir: &std::path::Path, size_mib: usize) -> anyhow::Result<(Duration, Duration)> {
    let data = test_data(size_mib);
    let tmp = tempfile::Builder::new()
        .prefix("jax-bench-")
        .tempdir_in(dir)
        .with_context(|| format!("creating a temp dir in {}", dir.display()))?;
    let state = StateDir::open(&tmp.path().join("state"))?;
    let kek = Kek::generate()?;
    let bucket = state.create_bucket(BucketId::generate()?, &kek, &BucketOptions::default())?;
    let mut m = bucket.mount()?;
    let big = m.create(ROOT_INO, b"big.bin", 0o644, 0, 0)?.ino;
    let t = Instant::now();
    for (i, piece) in data.chunks(MIB).enumerate() {
        m.write(big, (i * MIB) as u64, piece)?;
    }
    m.save()?;
    let write = t.elapsed();
    let mut m = bucket.mount()?;
    let big = m.lookup(ROOT_INO, b"big.bin")?.ino;
    let mut read = Duration::ZERO;
    for (i, want) in data.chunks(MIB).enumerate() {
        let t = Instant::now();
        let got = m.read(big, (i * MIB) as u64, MIB as u32)?;
        read += t.elapsed();
        ensure!(got == want, "read back differs at MiB {i}");
    }
    Ok((write, read))
}

/// [`stream_only`] in a child process whose chunk workers are limited to one
/// core (the worker count is fixed once per process).
fn stream_on_one_core(
    dir: &std::path::Path,
    size_mib: usize,
) -> anyhow::Result<(Duration, Duration)> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(["bench", "bucket", "--stream-only", "--size-mib"])
        .arg(size_mib.to_string())
        .arg("--dir")
        .arg(dir)
        .env("JAX_WORKER_THREADS", "1")
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running the one-core measurement")?;
    ensure!(out.status.success(), "the one-core measurement failed");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let secs = |k: &str| Duration::from_secs_f64(v[k].as_f64().unwrap_or(f64::NAN));
    Ok((secs("write_s"), secs("read_s")))
}

fn bench_bucket(
    dir: &std::path::Path,
    size_mib: usize,
    files: usize,
    reads: usize,
) -> anyhow::Result<()> {
    let size = size_mib * MIB;
    let tmp = tempfile::Builder::new()
        .prefix("jax-bench-")
        .tempdir_in(dir)
        .with_context(|| format!("creating a temp dir in {}", dir.display()))?;
    eprintln!("generating {size_mib} MiB of test data ...");
    let data = test_data(size_mib);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    // Like with like: ours on one core against raw AES on one core, and
    // ours on every core against raw AES on every core.
    let (raw_enc1, raw_dec1) = raw_aes(&data, 1)?;
    let (raw_enc_n, raw_dec_n) = raw_aes(&data, cores)?;
    let (write1, read1) = stream_on_one_core(dir, size_mib)?;
    let (our_write, our_read) = stream_only(dir, size_mib)?;

    let state = StateDir::open(&tmp.path().join("state"))?;
    let kek = Kek::generate()?;
    let bucket = state.create_bucket(BucketId::generate()?, &kek, &BucketOptions::default())?;
    let mut m = bucket.mount()?;
    let big = m.create(ROOT_INO, b"big.bin", 0o644, 0, 0)?.ino;
    for (i, piece) in data.chunks(MIB).enumerate() {
        m.write(big, (i * MIB) as u64, piece)?;
    }

    // Random 4 KiB reads: the large file against a 1 MiB file.
    let small = m.create(ROOT_INO, b"small.bin", 0o644, 0, 0)?.ino;
    m.write(small, 0, &data[..MIB])?;
    m.save()?;
    m.set_cache_chunks(0);
    let cold_big = random_reads(&mut m, big, size as u64, reads, 0x9E3779B97F4A7C15)?;
    let cold_small = random_reads(&mut m, small, MIB as u64, reads, 0x9E3779B97F4A7C15)?;
    m.set_cache_chunks(32);
    let warm_big = random_reads(&mut m, big, size as u64, reads, 0x2545F4914F6CDD1D)?;
    let warm_small = random_reads(&mut m, small, MIB as u64, reads, 0x2545F4914F6CDD1D)?;
    drop(m);

    // Small files: create N 4 KiB files in one directory and save.
    let bucket2 = state.create_bucket(BucketId::generate()?, &kek, &BucketOptions::default())?;
    let mut m = bucket2.mount()?;
    let t = Instant::now();
    for i in 0..files {
        let ino = m
            .create(ROOT_INO, format!("f{i:06}").as_bytes(), 0o644, 0, 0)?
            .ino;
        let off = (i * 4096) % (size - 4096);
        m.write(ino, 0, &data[off..off + 4096])?;
    }
    m.save()?;
    let small_files = t.elapsed();
    // Native baseline: the same files as plain files in a directory on the same file system.
    let native = tmp.path().join("native");
    std::fs::create_dir(&native)?;
    let t = Instant::now();
    for i in 0..files {
        let off = (i * 4096) % (size - 4096);
        std::fs::write(native.join(format!("f{i:06}")), &data[off..off + 4096])?;
    }
    let native_files = t.elapsed();

    println!("jax-csi bench bucket: {size_mib} MiB file, {files} small files, state dir on {} ({cores} cores)", dir.display());
    println!();
    println!("| workload | ours | baseline | ratio | target |");
    println!("|---|---|---|---|---|");
    for (label, ours, raw, what, target) in [
        (
            "sequential write + save, 1 core",
            write1,
            raw_enc1,
            "encrypt, 1 core",
            ">= 0.70x",
        ),
        (
            "sequential write + save, all cores",
            our_write,
            raw_enc_n,
            "encrypt, all cores",
            ">= 0.70x",
        ),
        (
            "sequential read, cold, 1 core",
            read1,
            raw_dec1,
            "decrypt, 1 core",
            ">= 0.80x",
        ),
        (
            "sequential read, cold, all cores",
            our_read,
            raw_dec_n,
            "decrypt, all cores",
            ">= 0.80x",
        ),
    ] {
        let (o, r) = (gib_per_s(size, ours), gib_per_s(size, raw));
        println!(
            "| {label} | {o:.2} GiB/s | {r:.2} GiB/s raw AES-256-GCM {what} | {:.2}x | {target} |",
            o / r
        );
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "| 4 KiB random read p50, cache off | {:.0} us ({size_mib} MiB file) | {:.0} us (1 MiB file) | {:.2}x | <= 1.5x |",
        us(cold_big.0), us(cold_small.0), us(cold_big.0) / us(cold_small.0)
    );
    println!(
        "| 4 KiB random read p99, cache off | {:.0} us ({size_mib} MiB file) | {:.0} us (1 MiB file) | {:.2}x | |",
        us(cold_big.1), us(cold_small.1), us(cold_big.1) / us(cold_small.1)
    );
    println!(
        "| 4 KiB random read p50, 32-chunk cache | {:.1} us ({size_mib} MiB file) | {:.1} us (1 MiB file) | {:.2}x | |",
        us(warm_big.0), us(warm_small.0), us(warm_big.0) / us(warm_small.0)
    );
    let fps = files as f64 / small_files.as_secs_f64();
    let nfps = files as f64 / native_files.as_secs_f64();
    println!("| create {files} x 4 KiB files + save | {fps:.0} files/s | {nfps:.0} files/s plain files on the same fs | {:.2}x | |", fps / nfps);
    Ok(())
}
