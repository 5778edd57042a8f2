//! `jax-csi bench fuse`: our FUSE mount against gocryptfs (the encrypted
//! FUSE peer), bindfs (plain passthrough FUSE: the ceiling for any FUSE file
//! system) and a plain directory on the same disk, with the same workloads
//! in one run: sequential write and read in 1 MiB blocks, 4 KiB random
//! reads in a large and a 1 MiB file, many small files created, read,
//! listed and removed, and a database (PostgreSQL under pgbench).
//! Peers that are not installed are shown as n/a.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use jax_csi::bucket::{BucketId, BucketOptions, StateDir};
use jax_csi::crypto::Kek;
use jax_csi::fuse::{self, FsOptions, FuseSession, LiveMount, SessionOptions};

use super::bench::percentile;
use super::bench_pgbench::{self, Pgbench};

const MIB: usize = 1 << 20;

/// What to run.
pub struct FuseBench {
    pub dir: PathBuf,
    pub size_mib: usize,
    pub files: usize,
    pub random_reads: usize,
    /// Chunk size of our bucket (the StorageClass `chunkSize`).
    pub chunk_size: u32,
    /// File systems to run (all when empty).
    pub only: Vec<String>,
    /// Random mixed operations on a 4 MiB file.
    pub mixed_ops: usize,
    /// Operations of the integrity workload (`fsx`).
    pub fsx_ops: usize,
    /// Volumes mounted at once for the idle-cost table (0 = skip).
    pub idle_volumes: usize,
    /// Workloads to run (all when empty): see [`WORKLOADS`].
    pub workloads: Vec<String>,
    /// The database workload's settings.
    pub pgbench: Pgbench,
}

/// The workload groups `--workloads` picks from.
pub const WORKLOADS: [&str; 7] = [
    "seq", "random", "mixed", "fsx", "readers", "small", "pgbench",
];

impl FuseBench {
    fn runs(&self, workload: &str) -> bool {
        self.workloads.is_empty() || self.workloads.iter().any(|w| w == workload)
    }
}

/// Size of each of the two files the cached-readers workload reads: both
/// fit in a mount's decrypted-chunk cache (32 chunks by default) with 1 MiB
/// chunks, so what is measured is serving cached data, not decryption.
const CACHED_FILE_MIB: usize = 12;
/// Passes over each file in the cached-readers workload.
const CACHED_PASSES: usize = 8;

/// One file system under test, and how to take it down.
struct Target {
    name: &'static str,
    root: PathBuf,
    teardown: Box<dyn FnOnce() -> anyhow::Result<()>>,
}

/// Mounts (or prepares) one file system under a base directory.
type Setup = fn(&Path, &FuseBench) -> anyhow::Result<Target>;

#[derive(Default, Clone)]
struct Results {
    seq_write: f64,
    /// How much this process's peak RSS grew during the sequential write
    /// (for jax-csi, whose mount runs in this process, the file system's).
    seq_write_rss_mib: f64,
    seq_read: f64,
    /// Two readers of different files at once, combined (cold).
    two_readers: f64,
    /// One reader of a file whose chunks the file system has cached (the
    /// kernel's page cache dropped before each pass).
    cached_one: f64,
    /// Two readers of two such files at once, combined.
    cached_two: f64,
    /// CPU this process used per second of the one cached reader: for
    /// jax-csi that is the reader and the file system together.
    cached_one_cores: f64,
    /// The 99th percentile of the one cached reader's read calls.
    cached_one_p99: Duration,
    /// The cached reader beside a writer of another file.
    cached_with_writer: BesideWriter,
    /// The random mixed workload.
    mixed: Duration,
    /// The integrity workload (`fsx`).
    fsx: Duration,
    rand_big: (Duration, Duration),
    rand_small: (Duration, Duration),
    create: Duration,
    read: Duration,
    list: Duration,
    remove: Duration,
    /// PostgreSQL transactions per second under pgbench.
    pgbench_tps: f64,
}

pub fn bench_fuse(b: FuseBench) -> anyhow::Result<()> {
    let work = tempfile::Builder::new()
        .prefix("jax-bench-fuse-")
        .tempdir_in(&b.dir)
        .with_context(|| format!("creating a work dir in {}", b.dir.display()))?;
    let mut data = vec![0u8; MIB];
    blake3::Hasher::new()
        .update(b"jax-csi bench fuse")
        .finalize_xof()
        .fill(&mut data);
    if !drop_caches() {
        eprintln!("note: cannot drop the page cache (not root?); reads may be warm");
    }
    let setups: [(&str, Setup); 4] = [
        ("jax-csi", setup_jax),
        ("gocryptfs", setup_gocryptfs),
        ("bindfs", setup_bindfs),
        ("raw", setup_plain),
    ];
    if let Some(unknown) = b.only.iter().find(|o| !setups.iter().any(|(n, _)| n == o)) {
        bail!("--only: unknown file system {unknown:?} (jax-csi, gocryptfs, bindfs, raw)");
    }
    if let Some(unknown) = b
        .workloads
        .iter()
        .find(|w| !WORKLOADS.contains(&w.as_str()))
    {
        bail!(
            "--workloads: unknown workload {unknown:?} ({})",
            WORKLOADS.join(", ")
        );
    }
    let mut rows: Vec<(&str, Option<Results>)> = Vec::new();
    for (name, setup) in setups {
        if !b.only.is_empty() && !b.only.iter().any(|o| o == name) {
            continue;
        }
        let base = work.path().join(name);
        fs::create_dir_all(&base)?;
        let target = match setup(&base, &b) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{name}: skipped ({e:#})");
                rows.push((name, None));
                continue;
            }
        };
        eprintln!("{name}: running ...");
        let r = run_workloads(&target.root, &b, &data);
        (target.teardown)().with_context(|| format!("tearing down {}", target.name))?;
        rows.push((
            name,
            Some(r.with_context(|| format!("workloads on {name}"))?),
        ));
    }
    print!("{}", table(&b, &rows));
    if b.idle_volumes > 0 {
        let cost = idle_cost(work.path(), &b)?;
        print!("{cost}");
    }
    Ok(())
}

/// This process's resident memory (bytes), threads and open descriptors.
fn process_usage() -> anyhow::Result<(u64, u64, u64)> {
    let status = fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("{name} in /proc/self/status"))?;
        let n = line
            .split_whitespace()
            .nth(1)
            .context("a number")?
            .parse()?;
        Ok(n)
    };
    let fds = fs::read_dir("/proc/self/fd")?.count() as u64;
    Ok((field("VmRSS:")? * 1024, field("Threads:")?, fds))
}

/// This process's resident memory (bytes) now, with the peak reset so
/// [`peak_rss`] tells the most used from here on.
fn rss_from_here() -> anyhow::Result<u64> {
    // "5" resets the peak resident set size (VmHWM) to the current one.
    fs::write("/proc/self/clear_refs", b"5").context("resetting the peak RSS")?;
    Ok(process_usage()?.0)
}

/// The peak resident memory (bytes) since [`rss_from_here`].
fn peak_rss() -> anyhow::Result<u64> {
    let status = fs::read_to_string("/proc/self/status")?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .context("VmHWM in /proc/self/status")?
        .parse()?;
    Ok(kib * 1024)
}

/// Mount `idle_volumes` buckets the way a node stages volumes (one live
/// mount and FUSE session each), touch each once (a stat and a small file,
/// as a pod's start does), and report what each idle volume costs.
fn idle_cost(work: &Path, b: &FuseBench) -> anyhow::Result<String> {
    let base = work.join("idle");
    let state = StateDir::open(&base.join("state"))?;
    let kek = Kek::generate()?;
    let (rss0, threads0, fds0) = process_usage()?;
    let mut mounted = Vec::with_capacity(b.idle_volumes);
    let started = Instant::now();
    for i in 0..b.idle_volumes {
        let live = bench_live_mount(&state, &kek, b)?;
        let mnt = base.join(format!("mnt-{i}"));
        fs::create_dir_all(&mnt)?;
        let session = fuse::mount(live.clone(), &mnt, &fuse::node_session_options("jax:idle"))
            .with_context(|| format!("mounting idle volume {i}"))?;
        fs::write(mnt.join("ready"), b"ok")?;
        File::open(mnt.join("ready"))?.sync_all()?;
        mounted.push((session, live));
    }
    let took = started.elapsed();
    let (rss1, threads1, fds1) = process_usage()?;
    let n = b.idle_volumes as f64;
    for (session, live) in mounted {
        session.unmount()?;
        live.shutdown()?;
    }
    Ok(format!(
        "idle cost of {} staged volumes (mounted in {:.2} s): RSS {:.1} -> {:.1} MiB ({:.2} MiB per volume), threads {} -> {} ({:.1} per volume), fds {} -> {} ({:.1} per volume)\n",
        b.idle_volumes,
        took.as_secs_f64(),
        rss0 as f64 / MIB as f64,
        rss1 as f64 / MIB as f64,
        (rss1.saturating_sub(rss0)) as f64 / MIB as f64 / n,
        threads0,
        threads1,
        (threads1.saturating_sub(threads0)) as f64 / n,
        fds0,
        fds1,
        (fds1.saturating_sub(fds0)) as f64 / n,
    ))
}

/// The random mixed workload: on a 4 MiB file, `n` operations drawn at
/// random: reads and writes of 1-64 KiB, truncates between 1 and 4 MiB,
/// and reads and writes through a shared mapping (page faults and
/// write-back through the file system). Returns the time taken.
pub fn mixed_ops(path: &Path, n: usize) -> anyhow::Result<Duration> {
    const SIZE: u64 = 4 << 20;
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    f.write_all_at(&vec![7u8; SIZE as usize], 0)?;
    f.sync_all()?;
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut size = SIZE;
    let mut buf = vec![0u8; 64 << 10];
    let t = Instant::now();
    for _ in 0..n {
        let op = next() % 10;
        let len = (1024 + next() % (63 << 10)) as usize;
        let off = next() % SIZE;
        match op {
            0..=3 => {
                let _ = f.read_at(&mut buf[..len], off)?;
            }
            4..=5 => f.write_all_at(&buf[..len], off)?,
            6 => {
                size = (1 << 20) + next() % (SIZE - (1 << 20));
                f.set_len(size)?;
            }
            _ => {
                // One page through a shared mapping of the whole file.
                let page = (next() % (size / 4096)) * 4096;
                mapped_touch(&f, size, page, op >= 8)?;
            }
        }
    }
    let took = t.elapsed();
    drop(f);
    fs::remove_file(path)?;
    Ok(took)
}

/// A mapping workload (`bench mixed-ops` or `bench fsx-ops`, `n`
/// operations on `path`) in a child process: this process serves our FUSE
/// mount, and a munmap here that waits for write-back through the mount,
/// while a serving thread faults in a page of its buffer, would deadlock on
/// the address-space lock.
fn in_child(subcommand: &str, path: &Path, n: usize) -> anyhow::Result<Duration> {
    let out = Command::new(std::env::current_exe()?)
        .args(["bench", subcommand, "--ops", &n.to_string(), "--path"])
        .arg(path)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running bench {subcommand}"))?;
    anyhow::ensure!(out.status.success(), "bench {subcommand}: {}", out.status);
    let secs: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .with_context(|| format!("bench {subcommand}'s time"))?;
    Ok(Duration::from_secs_f64(secs))
}

/// Map `f` (`size` bytes, shared), read or write the page at `page`, unmap.
fn mapped_touch(f: &File, size: u64, page: u64, write: bool) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a fresh shared mapping of our own open file, used only
    // within its length and unmapped before returning.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        anyhow::ensure!(
            p != libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        let at = p.cast::<u8>().add(page as usize);
        if write {
            at.write_volatile(at.read_volatile().wrapping_add(1));
        } else {
            let _ = at.read_volatile();
        }
        libc::munmap(p, size as usize);
    }
    Ok(())
}

/// Write `blocks` copies of `block` to a new file at `p`, then fsync it.
fn write_blocks(p: &Path, blocks: usize, block: &[u8]) -> anyhow::Result<()> {
    let mut f = File::create(p)?;
    for _ in 0..blocks {
        f.write_all(block)?;
    }
    f.sync_all()?;
    Ok(())
}

/// Read a whole file in 1 MiB blocks; the bytes read.
fn read_all(p: &Path) -> anyhow::Result<usize> {
    read_timed(p, &mut Vec::new())
}

/// [`read_all`], adding how long each read call took to `calls`.
fn read_timed(p: &Path, calls: &mut Vec<Duration>) -> anyhow::Result<usize> {
    let mut f = File::open(p)?;
    let mut buf = vec![0u8; MIB];
    let mut total = 0;
    loop {
        let call = Instant::now();
        let n = f.read(&mut buf)?;
        calls.push(call.elapsed());
        if n == 0 {
            return Ok(total);
        }
        total += n;
    }
}

/// `passes` whole reads of `p`, each first dropping the file's pages from
/// the page cache when `uncache` (so every pass goes through the file
/// system): the bytes read and how long each read call took.
fn read_passes(p: &Path, passes: usize, uncache: bool) -> anyhow::Result<(usize, Vec<Duration>)> {
    let (mut total, mut calls) = (0, Vec::new());
    for _ in 0..passes {
        if uncache {
            forget_pages(p)?;
        }
        total += read_timed(p, &mut calls)?;
    }
    Ok((total, calls))
}

/// The 99th percentile of `calls` (never empty: a read pass makes at
/// least its final zero-length call).
fn p99(mut calls: Vec<Duration>) -> Duration {
    calls.sort();
    percentile(&calls, 0.99)
}

fn drop_caches() -> bool {
    // Best effort: sync, then drop clean pages, dentries and inodes.
    nix::unistd::sync();
    fs::write("/proc/sys/vm/drop_caches", b"3").is_ok()
}

fn run_workloads(root: &Path, b: &FuseBench, block: &[u8]) -> anyhow::Result<Results> {
    let mut r = Results::default();
    let size = b.size_mib * MIB;
    let big = root.join("big.bin");
    if b.runs("seq") || b.runs("random") || b.runs("readers") {
        // Sequential write, 1 MiB blocks, with the closing fsync.
        let rss = rss_from_here()?;
        let t = Instant::now();
        write_blocks(&big, b.size_mib, block)?;
        r.seq_write = gib_per_s(size, t.elapsed());
        r.seq_write_rss_mib = peak_rss()?.saturating_sub(rss) as f64 / MIB as f64;
        drop_caches();
        // Sequential read, 1 MiB blocks.
        let t = Instant::now();
        let total = read_all(&big)?;
        anyhow::ensure!(total == size, "read {total} of {size} bytes");
        r.seq_read = gib_per_s(size, t.elapsed());
    }
    if b.runs("random") {
        // Random 4 KiB reads: the big file, then a 1 MiB file.
        let small = root.join("small.bin");
        fs::write(&small, block)?;
        File::open(&small)?.sync_all()?;
        drop_caches();
        r.rand_big = random_reads(&big, size as u64, b.random_reads, 0x9E37_79B9_7F4A_7C15)?;
        r.rand_small = random_reads(&small, MIB as u64, b.random_reads, 0x9E37_79B9_7F4A_7C15)?;
        fs::remove_file(&small)?;
    }
    if b.runs("mixed") {
        r.mixed = in_child("mixed-ops", &root.join("mixed.bin"), b.mixed_ops)?;
    }
    if b.runs("fsx") {
        r.fsx = in_child("fsx-ops", &root.join("fsx.bin"), b.fsx_ops)?;
    }
    if b.runs("readers") {
        // Two readers of two files at once (cold), against one reader above.
        let big2 = root.join("big2.bin");
        write_blocks(&big2, b.size_mib, block)?;
        drop_caches();
        let t = Instant::now();
        let total = read_both(&big, &big2, 1, false)?;
        anyhow::ensure!(total == 2 * size, "read {total} of {} bytes", 2 * size);
        r.two_readers = gib_per_s(total, t.elapsed());
        fs::remove_file(&big2)?;
        let c = cached_readers(root, block)?;
        (r.cached_one, r.cached_two, r.cached_one_cores) = (c.one, c.two, c.cores);
        r.cached_one_p99 = c.one_p99;
        r.cached_with_writer = c.with_writer;
    }
    if big.exists() {
        fs::remove_file(&big)?;
    }
    if b.runs("small") {
        small_files(root, b, block, &mut r)?;
    }
    if b.runs("pgbench") {
        r.pgbench_tps = bench_pgbench::run(root, b.pgbench)?;
    }
    Ok(r)
}

/// [`read_passes`] of `a` and of `b` at once; the bytes read.
fn read_both(a: &Path, b: &Path, passes: usize, uncache: bool) -> anyhow::Result<usize> {
    let (one, two) = std::thread::scope(|s| {
        let x = s.spawn(|| read_passes(a, passes, uncache));
        let y = s.spawn(|| read_passes(b, passes, uncache));
        (x.join(), y.join())
    });
    Ok(one.map_err(|_| anyhow::anyhow!("reader panicked"))??.0
        + two.map_err(|_| anyhow::anyhow!("reader panicked"))??.0)
}

/// Drop one file's clean pages from the kernel's page cache.
fn forget_pages(p: &Path) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let f = File::open(p)?;
    // SAFETY: an advisory call on a descriptor we own.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    anyhow::ensure!(
        rc == 0,
        "posix_fadvise: {}",
        std::io::Error::from_raw_os_error(rc)
    );
    Ok(())
}

/// Readers of files the file system has cached: two small files are read
/// once, then one reader alone and two readers at once each read their file
/// [`CACHED_PASSES`] times with the page cache dropped before every pass.
/// Then one reader again, beside a writer of another file.
fn cached_readers(root: &Path, block: &[u8]) -> anyhow::Result<CachedReaders> {
    let (a, b) = (root.join("cached-a.bin"), root.join("cached-b.bin"));
    write_blocks(&a, CACHED_FILE_MIB, block)?;
    write_blocks(&b, CACHED_FILE_MIB, block)?;
    read_all(&a)?;
    read_all(&b)?;
    let size = CACHED_FILE_MIB * MIB;
    let cpu = cpu_time();
    let t = Instant::now();
    let (one, calls) = read_passes(&a, CACHED_PASSES, true)?;
    anyhow::ensure!(one == CACHED_PASSES * size, "read {one} bytes");
    let one_p99 = p99(calls);
    let cores = (cpu_time() - cpu).as_secs_f64() / t.elapsed().as_secs_f64();
    let one = gib_per_s(one, t.elapsed());
    let t = Instant::now();
    let two = read_both(&a, &b, CACHED_PASSES, true)?;
    anyhow::ensure!(two == 2 * CACHED_PASSES * size, "read {two} bytes");
    let two = gib_per_s(two, t.elapsed());
    let with_writer = read_beside_a_writer(root, &a, block)?;
    fs::remove_file(&a)?;
    fs::remove_file(&b)?;
    Ok(CachedReaders {
        one,
        one_p99,
        two,
        cores,
        with_writer,
    })
}

/// The writer beside the cached reader fsyncs after this many 1 MiB blocks.
const WRITER_FSYNC_EVERY_BLOCKS: u64 = 16;
/// Passes of the cached reader beside the writer.
const WRITER_SIDE_PASSES: usize = 4 * CACHED_PASSES;

/// What the cached reader beside a writer measured.
#[derive(Default, Clone, Copy)]
struct BesideWriter {
    gib_per_s: f64,
    /// The 99th percentile and the longest of its read calls.
    p99: Duration,
    longest: Duration,
}

/// The cached reader of [`cached_readers`] while another thread writes a
/// different file of the same file system in 1 MiB blocks, with an fsync
/// every [`WRITER_FSYNC_EVERY_BLOCKS`]; [`WRITER_SIDE_PASSES`] passes, so
/// several commits happen while it reads.
fn read_beside_a_writer(root: &Path, a: &Path, block: &[u8]) -> anyhow::Result<BesideWriter> {
    let stop = std::sync::atomic::AtomicBool::new(false);
    let written = root.join("writer.bin");
    let (read, writer) = std::thread::scope(|s| {
        let writer = s.spawn(|| -> anyhow::Result<()> {
            let mut f = File::create(&written)?;
            let mut blocks = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.write_all(block)?;
                blocks += 1;
                // Like a database's checkpoints: each fsync commits a
                // version while the reader reads.
                if blocks.is_multiple_of(WRITER_FSYNC_EVERY_BLOCKS) {
                    f.sync_data()?;
                }
            }
            f.sync_all()?;
            Ok(())
        });
        let t = Instant::now();
        let read = read_passes(a, WRITER_SIDE_PASSES, true).map(|(total, calls)| BesideWriter {
            gib_per_s: gib_per_s(total, t.elapsed()),
            longest: calls.iter().max().copied().unwrap_or_default(),
            p99: p99(calls),
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (read, writer.join())
    });
    writer.map_err(|_| anyhow::anyhow!("writer panicked"))??;
    fs::remove_file(&written)?;
    read
}

/// What [`cached_readers`] measured.
struct CachedReaders {
    /// One reader, GiB/s.
    one: f64,
    /// Two readers at once, combined GiB/s.
    two: f64,
    /// Cores this process kept busy for the one reader.
    cores: f64,
    /// The 99th percentile of its read calls.
    one_p99: Duration,
    /// One reader beside a writer of another file.
    with_writer: BesideWriter,
}

/// User and system CPU time this process has used, all threads.
fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Small files: create, read, list with stat (ls -lR), remove.
fn small_files(root: &Path, b: &FuseBench, block: &[u8], r: &mut Results) -> anyhow::Result<()> {
    let dir = root.join("small");
    fs::create_dir(&dir)?;
    let t = Instant::now();
    for i in 0..b.files {
        let d = dir.join(format!("d{:03}", i / 1000));
        if i % 1000 == 0 {
            fs::create_dir(&d)?;
        }
        let mut f = File::create(d.join(format!("f{i:06}")))?;
        f.write_all(&block[(i % 256) * 4096..(i % 256) * 4096 + 4096])?;
    }
    // Durable: one sync of the whole file system, as an application would.
    File::open(&dir)?.sync_all()?;
    nix::unistd::syncfs(File::open(&dir)?)?;
    r.create = t.elapsed();
    drop_caches();
    let t = Instant::now();
    let mut buf = Vec::with_capacity(4096);
    for i in 0..b.files {
        buf.clear();
        let p = dir
            .join(format!("d{:03}", i / 1000))
            .join(format!("f{i:06}"));
        File::open(p)?.read_to_end(&mut buf)?;
        anyhow::ensure!(buf.len() == 4096, "short small file");
    }
    r.read = t.elapsed();
    drop_caches();
    let t = Instant::now();
    let mut seen = 0;
    for d in fs::read_dir(&dir)? {
        let d = d?;
        for e in fs::read_dir(d.path())? {
            let e = e?;
            let _ = fs::symlink_metadata(e.path())?;
            seen += 1;
        }
    }
    r.list = t.elapsed();
    anyhow::ensure!(seen == b.files, "listed {seen} of {} files", b.files);
    let t = Instant::now();
    fs::remove_dir_all(&dir)?;
    r.remove = t.elapsed();
    Ok(())
}

fn random_reads(
    path: &Path,
    size: u64,
    n: usize,
    seed: u64,
) -> anyhow::Result<(Duration, Duration)> {
    let f = File::open(path)?;
    let blocks = size / 4096;
    let mut x = seed;
    let mut buf = [0u8; 4096];
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = (x % blocks) * 4096;
        let t = Instant::now();
        f.read_exact_at(&mut buf, off)?;
        lat.push(t.elapsed());
    }
    lat.sort();
    Ok((percentile(&lat, 0.5), percentile(&lat, 0.99)))
}

fn gib_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1u64 << 30) as f64 / d.as_secs_f64()
}

/// A plain directory of the disk (or tmpfs) `--dir` is on: the baseline.
fn setup_plain(base: &Path, _: &FuseBench) -> anyhow::Result<Target> {
    Ok(Target {
        name: "raw",
        root: base.to_path_buf(),
        teardown: Box::new(|| Ok(())),
    })
}

/// A new world-writable bucket with the bench's chunk size, live-mounted.
fn bench_live_mount(state: &StateDir, kek: &Kek, b: &FuseBench) -> anyhow::Result<LiveMount> {
    let bucket = state.create_bucket(
        BucketId::generate()?,
        kek,
        &BucketOptions {
            root_mode: 0o777,
            chunk_size: b.chunk_size,
            ..Default::default()
        },
    )?;
    // Journaled, as a node's writable mounts are.
    Ok(LiveMount::new(
        bucket.mount_journaled()?,
        fuse::live::DEFAULT_DEBOUNCE,
    ))
}

fn setup_jax(base: &Path, b: &FuseBench) -> anyhow::Result<Target> {
    let state = StateDir::open(&base.join("state"))?;
    let kek = Kek::generate()?;
    let live = bench_live_mount(&state, &kek, b)?;
    let mnt = base.join("mnt");
    fs::create_dir(&mnt)?;
    let opts = SessionOptions {
        fs_name: "jax:bench".into(),
        read_only: false,
        fs: FsOptions::default(),
    };
    let session: FuseSession = fuse::mount(live.clone(), &mnt, &opts)?;
    Ok(Target {
        name: "jax-csi",
        root: mnt,
        teardown: Box::new(move || {
            session.unmount()?;
            live.shutdown()?;
            Ok(())
        }),
    })
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn unmount_command(mnt: PathBuf) -> Box<dyn FnOnce() -> anyhow::Result<()>> {
    Box::new(move || {
        nix::mount::umount(&mnt).with_context(|| format!("unmounting {}", mnt.display()))?;
        Ok(())
    })
}

fn setup_gocryptfs(base: &Path, _: &FuseBench) -> anyhow::Result<Target> {
    let (cipher, plain) = (base.join("cipher"), base.join("plain"));
    fs::create_dir(&cipher)?;
    fs::create_dir(&plain)?;
    let pass = base.join("pass");
    fs::write(&pass, b"bench-password\n")?;
    run(Command::new("gocryptfs")
        .args(["-init", "-q", "-scryptn", "10", "-passfile"])
        .arg(&pass)
        .arg(&cipher))?;
    // allow_other: the database workload runs as PostgreSQL's user.
    run(Command::new("gocryptfs")
        .args(["-q", "-allow_other", "-passfile"])
        .arg(&pass)
        .arg(&cipher)
        .arg(&plain))?;
    Ok(Target {
        name: "gocryptfs",
        root: plain.clone(),
        teardown: unmount_command(plain),
    })
}

fn setup_bindfs(base: &Path, _: &FuseBench) -> anyhow::Result<Target> {
    let (src, mnt) = (base.join("src"), base.join("mnt"));
    fs::create_dir(&src)?;
    fs::create_dir(&mnt)?;
    // big_writes is a FUSE 2 option; newer bindfs builds always write big.
    if run(Command::new("bindfs")
        .args(["-o", "big_writes,allow_other"])
        .arg(&src)
        .arg(&mnt))
    .is_err()
    {
        run(Command::new("bindfs")
            .args(["-o", "allow_other"])
            .arg(&src)
            .arg(&mnt))?;
    }
    Ok(Target {
        name: "bindfs",
        root: mnt.clone(),
        teardown: unmount_command(mnt),
    })
}

fn table(b: &FuseBench, rows: &[(&str, Option<Results>)]) -> String {
    let get = |n: &str| {
        rows.iter()
            .find(|(r, _)| *r == n)
            .and_then(|(_, r)| r.clone())
    };
    let ours = get("jax-csi");
    let goc = get("gocryptfs");
    let bind = get("bindfs");
    let mut out = format!(
        "FUSE file systems, backing store in {} ({} MiB file, jax-csi chunk size {} KiB, {} random reads, {} small files)\n",
        b.dir.display(),
        b.size_mib,
        b.chunk_size / 1024,
        b.random_reads,
        b.files
    );
    out += &format!(
        "{:<28} {:>12} {:>12} {:>12} {:>12} {:>9} {:>9} {:>9}\n",
        "workload", "jax-csi", "gocryptfs", "bindfs", "raw dir", "vs gocr", "vs bind", "vs raw"
    );
    /// (row label, value, higher is better)
    type Metric = (&'static str, fn(&Results) -> f64, bool);
    // Each workload's rows.
    let workloads: [(&str, &[Metric]); 7] = [
        (
            "seq",
            &[
                ("seq write (GiB/s)", |r| r.seq_write, true),
                (
                    "  peak RSS growth, bench (MiB)",
                    |r| r.seq_write_rss_mib,
                    false,
                ),
                ("seq read (GiB/s)", |r| r.seq_read, true),
            ],
        ),
        (
            "readers",
            &[
                ("2 readers cold (GiB/s, sum)", |r| r.two_readers, true),
                (
                    "2 readers / 1 reader, cold",
                    |r| r.two_readers / r.seq_read,
                    true,
                ),
                ("cached 1 reader (GiB/s)", |r| r.cached_one, true),
                ("cached 2 readers (GiB/s)", |r| r.cached_two, true),
                (
                    "cached 2 readers / 1",
                    |r| r.cached_two / r.cached_one,
                    true,
                ),
                ("cores busy, cached 1 reader", |r| r.cached_one_cores, false),
                (
                    "cached reader + writer / alone",
                    |r| r.cached_with_writer.gib_per_s / r.cached_one,
                    true,
                ),
                (
                    "  read call p99 alone (ms)",
                    |r| ms(r.cached_one_p99),
                    false,
                ),
                (
                    "  read call p99 by writer (ms)",
                    |r| ms(r.cached_with_writer.p99),
                    false,
                ),
                (
                    "  longest read by writer (ms)",
                    |r| ms(r.cached_with_writer.longest),
                    false,
                ),
            ],
        ),
        (
            "random",
            &[
                ("4K rand big p50 (µs)", |r| us(r.rand_big.0), false),
                ("4K rand big p99 (µs)", |r| us(r.rand_big.1), false),
                ("4K rand 1MiB p50 (µs)", |r| us(r.rand_small.0), false),
                ("4K rand 1MiB p99 (µs)", |r| us(r.rand_small.1), false),
            ],
        ),
        (
            "small",
            &[
                ("small create+sync (s)", |r| r.create.as_secs_f64(), false),
                ("small read (s)", |r| r.read.as_secs_f64(), false),
                ("small ls -lR (s)", |r| r.list.as_secs_f64(), false),
                ("small remove (s)", |r| r.remove.as_secs_f64(), false),
            ],
        ),
        (
            "mixed",
            &[("mixed ops on 4 MiB (s)", |r| r.mixed.as_secs_f64(), false)],
        ),
        (
            "fsx",
            &[(
                "fsx ops, msync, checked (s)",
                |r| r.fsx.as_secs_f64(),
                false,
            )],
        ),
        (
            "pgbench",
            &[("pgbench TPC-B (tps)", |r| r.pgbench_tps, true)],
        ),
    ];
    let metrics = workloads
        .iter()
        .filter(|(w, _)| b.runs(w))
        .flat_map(|(_, rows)| rows.iter().copied());
    for (name, f, higher_better) in metrics {
        let cell = |r: &Option<Results>| match r {
            Some(r) => format!("{:.3}", f(r)),
            None => "n/a".into(),
        };
        // Ratios read as "how many times better ours is" (>1 = ours wins).
        let ratio = |peer: &Option<Results>| match (&ours, peer) {
            (Some(o), Some(p)) => {
                let (o, p) = (f(o), f(p));
                let x = if higher_better { o / p } else { p / o };
                format!("{x:.2}x")
            }
            _ => "n/a".into(),
        };
        let raw = get("raw");
        out += &format!(
            "{:<28} {:>12} {:>12} {:>12} {:>12} {:>9} {:>9} {:>9}\n",
            name,
            cell(&ours),
            cell(&goc),
            cell(&bind),
            cell(&raw),
            ratio(&goc),
            ratio(&bind),
            ratio(&raw)
        );
    }
    out += "ratios: >1 means jax-csi is faster (throughput higher, time or latency lower)\n";
    out
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
