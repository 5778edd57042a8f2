//! The threads chunks are sealed and opened on: a long-lived pool for
//! background seals and read-ahead, the count of a file's seals in flight
//! a writer waits on, and `par_map` for a batch on all cores.

use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock};

use crate::bucket::error::Result;
use crate::store::Hash;

/// A chunk's sealing outcome: its buffer (plaintext again on failure) and address.
pub(super) type Sealed = (Vec<u8>, Result<Hash>);
/// A dirty chunk's sealing outcome (its buffer plaintext again on failure).
pub type SealedChunk = (super::DirtyChunk, Result<Hash>);
pub(super) type Job = Box<dyn FnOnce() + Send>;

/// Worker threads (one per core) that seal full chunks while the writer goes
/// on filling the next ones, and load chunks ahead of a sequential reader, so
/// streaming I/O keeps every core busy. Long-lived, so their allocator arenas
/// stay warm.
pub(super) fn worker_pool() -> &'static Mutex<mpsc::Sender<Job>> {
    static POOL: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..cores() {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("jax-chunk-{n}"))
                .spawn(move || loop {
                    let job = match rx.lock().expect("worker queue lock").recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    };
                    job();
                })
                .expect("spawning a seal worker");
        }
        Mutex::new(tx)
    })
}

/// Chunks of one file a writer lets seal in the background before it waits
/// (outside the Mount: see [`SealsInFlight::when_room`]).
pub(super) const MAX_PENDING_SEALS: usize = 8;
/// Seals of one file (running or done, not yet recorded) past which a write
/// waits inside the Mount: the bound on memory for callers that never wait
/// outside it, and for many writers of one file at once.
pub(super) const MAX_UNRECORDED_SEALS: usize = 2 * MAX_PENDING_SEALS;

/// How many of one file's chunks the workers are sealing now, so a writer
/// can wait for room after it let go of the Mount, instead of holding
/// every other reader and writer of the volume while a seal runs.
#[derive(Default)]
pub struct SealsInFlight {
    state: Mutex<InFlight>,
}

#[derive(Default)]
struct InFlight {
    running: usize,
    /// What runs once there is room again (a FUSE write's reply).
    waiting: Vec<Box<dyn FnOnce() + Send>>,
}

impl SealsInFlight {
    fn lock(&self) -> MutexGuard<'_, InFlight> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn started(&self) {
        self.lock().running += 1;
    }

    pub(super) fn finished(&self) {
        let ready = {
            let mut s = self.lock();
            s.running = s.running.saturating_sub(1);
            if s.running < MAX_PENDING_SEALS {
                std::mem::take(&mut s.waiting)
            } else {
                Vec::new()
            }
        };
        ready.into_iter().for_each(|then| then());
    }

    /// Run `then` once fewer than [`MAX_PENDING_SEALS`] seals run: now, or
    /// on the worker whose seal makes room. The caller's thread never
    /// waits, so a FUSE worker is free for other requests meanwhile.
    pub fn when_room(&self, then: Box<dyn FnOnce() + Send>) {
        {
            let mut s = self.lock();
            if s.running >= MAX_PENDING_SEALS {
                s.waiting.push(then);
                return;
            }
        }
        then()
    }
}

/// Threads that seal and open chunks: the cores this process may use, or
/// `JAX_WORKER_THREADS` when set (to cap a node's CPU, or to measure one
/// core). Asked once: `available_parallelism` reads cgroup files under /proc
/// on every call, far too slow for a per-read path.
fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| {
        std::env::var("JAX_WORKER_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            })
    })
}

/// Run `f` over `items` on up to all cores, keeping the order of results.
pub(crate) fn par_map<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let threads = cores().min(items.len());
    if threads <= 1 {
        return items.into_iter().map(f).collect();
    }
    let mut groups: Vec<Vec<(usize, T)>> = (0..threads).map(|_| Vec::new()).collect();
    let n = items.len();
    for (i, item) in items.into_iter().enumerate() {
        groups[i % threads].push((i, item));
    }
    let f = &f;
    let mut results: Vec<Option<R>> = (0..n).map(|_| None).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = groups
            .into_iter()
            .map(|g| s.spawn(move || g.into_iter().map(|(i, t)| (i, f(t))).collect::<Vec<_>>()))
            .collect();
        for h in handles {
            for (i, r) in h.join().expect("chunk worker panicked") {
                results[i] = Some(r);
            }
        }
    });
    results
        .into_iter()
        .map(|r| r.expect("every index filled"))
        .collect()
}
