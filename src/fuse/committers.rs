//! One small pool of committer threads for every live mount of the process
//! (a node with a thousand idle volumes has two committer threads, not a
//! thousand). Each mount is queued at the time its pending changes may be
//! due; a worker takes the earliest, commits it if it is due, or queues it
//! again at its new due time (writes that kept coming move it on).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::Instant;

/// Worker threads shared by all mounts: commits of different volumes
/// overlap, and one slow disk does not hold up every volume.
const WORKERS: usize = 2;

/// What the pool drives: one mount's "commit if due" step.
pub(super) trait Committable: Send + Sync + 'static {
    /// Commit if the pending changes are due; the time to look again, if
    /// changes (still or again) wait.
    fn step(&self) -> Option<Instant>;
}

#[derive(Default)]
struct State {
    queue: BTreeSet<(Instant, u64)>,
    due_of: HashMap<u64, Instant>,
    mounts: HashMap<u64, Weak<dyn Committable>>,
    /// Mounts a worker is stepping now (never two workers on one mount).
    busy: HashSet<u64>,
}

struct Pool {
    state: Mutex<State>,
    wake: Condvar,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        }));
        for i in 0..WORKERS {
            std::thread::Builder::new()
                .name(format!("jax-committer-{i}"))
                .spawn(move || worker(pool))
                .expect("spawning a committer thread");
        }
        pool
    })
}

/// Look at mount `id` at `at` (or earlier, if it is queued earlier already).
pub(super) fn schedule(id: u64, mount: Weak<dyn Committable>, at: Instant) {
    let pool = pool();
    let mut s = pool.state.lock().unwrap_or_else(|p| p.into_inner());
    s.mounts.insert(id, mount);
    if let Some(old) = s.due_of.get(&id).copied() {
        if old <= at {
            return;
        }
        s.queue.remove(&(old, id));
    }
    s.queue.insert((at, id));
    s.due_of.insert(id, at);
    pool.wake.notify_one();
}

/// Stop looking at mount `id` (it shut down).
pub(super) fn forget(id: u64) {
    let pool = pool();
    let mut s = pool.state.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(at) = s.due_of.remove(&id) {
        s.queue.remove(&(at, id));
    }
    s.mounts.remove(&id);
}

fn worker(pool: &'static Pool) {
    let mut s = pool.state.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let Some(&(at, id)) = s.queue.iter().find(|(_, id)| !s.busy.contains(id)) else {
            s = pool.wake.wait(s).unwrap_or_else(|p| p.into_inner());
            continue;
        };
        let now = Instant::now();
        if at > now {
            s = pool
                .wake
                .wait_timeout(s, at - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            continue;
        }
        s.queue.remove(&(at, id));
        s.due_of.remove(&id);
        let Some(mount) = s.mounts.get(&id).and_then(Weak::upgrade) else {
            s.mounts.remove(&id);
            continue;
        };
        s.busy.insert(id);
        drop(s);
        let next = mount.step();
        drop(mount);
        s = pool.state.lock().unwrap_or_else(|p| p.into_inner());
        s.busy.remove(&id);
        if let Some(next) = next {
            if s.mounts.contains_key(&id) && !s.due_of.contains_key(&id) {
                s.queue.insert((next, id));
                s.due_of.insert(id, next);
            }
        }
        // Another worker may wait for this mount to be free.
        pool.wake.notify_one();
    }
}

/// A fresh id for a mount.
pub(super) fn next_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Upcast helper for callers holding an `Arc` of a concrete mount.
pub(super) fn weak_of<T: Committable>(a: &Arc<T>) -> Weak<dyn Committable> {
    let w: Weak<T> = Arc::downgrade(a);
    w
}
