//! A live bucket Mount shared by every FUSE session (and pod) that uses a
//! volume on this node, with its write-back committer: a new version is
//! written on fsync and after a short quiet period, never per write call.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::bucket::{BucketError, Mount, Saved};

/// How long writes must pause before the committer writes a version.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(500);
/// Longest a busy writer can keep changes uncommitted.
pub const MAX_COMMIT_DELAY: Duration = Duration::from_secs(5);

/// Called after every commit (to report the new head, notify peers, …).
pub type CommitHook = Box<dyn Fn(Saved) + Send + Sync>;

#[derive(Default)]
struct Pending {
    /// When the first uncommitted change happened, if any.
    since: Option<Instant>,
    /// When the last change happened.
    last: Option<Instant>,
    stop: bool,
}

struct Shared {
    mount: Mutex<Mount>,
    pending: Mutex<Pending>,
    wake: Condvar,
    on_commit: Mutex<Option<CommitHook>>,
    debounce: Duration,
}

/// A bucket Mount behind a lock, with a background committer.
#[derive(Clone)]
pub struct LiveMount {
    shared: Arc<Shared>,
    committer: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl LiveMount {
    pub fn new(mount: Mount, debounce: Duration) -> Self {
        let shared = Arc::new(Shared {
            mount: Mutex::new(mount),
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            on_commit: Mutex::new(None),
            debounce,
        });
        let worker = shared.clone();
        let handle = std::thread::Builder::new()
            .name("jax-committer".into())
            .spawn(move || committer(worker))
            .expect("spawning the committer thread");
        Self {
            shared,
            committer: Arc::new(Mutex::new(Some(handle))),
        }
    }

    /// Lock the Mount for one operation.
    pub fn lock(&self) -> MutexGuard<'_, Mount> {
        self.shared
            .mount
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Set the hook run after each commit.
    pub fn set_commit_hook(&self, hook: CommitHook) {
        *self.shared.on_commit.lock().unwrap() = Some(hook);
    }

    /// Note a change: the committer writes a version once writes pause.
    pub fn touched(&self) {
        let now = Instant::now();
        let mut p = self.shared.pending.lock().unwrap();
        p.last = Some(now);
        // Wake the committer only on the first change: while changes are
        // pending it wakes at its deadline and sees `last` moved on.
        if p.since.is_none() {
            p.since = Some(now);
            self.shared.wake.notify_one();
        }
    }

    /// Write a version now (fsync, unmount, shutdown).
    pub fn commit_now(&self) -> Result<Saved, BucketError> {
        commit(&self.shared)
    }

    /// Stop the committer after a final commit. Idempotent.
    pub fn shutdown(&self) -> Result<(), BucketError> {
        {
            let mut p = self.shared.pending.lock().unwrap();
            p.stop = true;
            self.shared.wake.notify_all();
        }
        if let Some(h) = self.committer.lock().unwrap().take() {
            let _ = h.join();
        }
        if self.lock().is_read_only() {
            return Ok(());
        }
        commit(&self.shared).map(|_| ())
    }
}

fn commit(shared: &Shared) -> Result<Saved, BucketError> {
    {
        let mut p = shared.pending.lock().unwrap();
        p.since = None;
        p.last = None;
    }
    let (saved, changed) = {
        let mut m = shared
            .mount
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if m.is_read_only() {
            return Ok(m.base());
        }
        let before = m.base();
        let saved = m.save()?;
        (saved, saved != before)
    };
    if changed {
        if let Some(hook) = shared.on_commit.lock().unwrap().as_ref() {
            hook(saved);
        }
    }
    Ok(saved)
}

/// Wait for changes, then for a quiet period (or the maximum delay), then commit.
fn committer(shared: Arc<Shared>) {
    let mut p = shared.pending.lock().unwrap();
    loop {
        if p.stop {
            return;
        }
        let (Some(since), Some(last)) = (p.since, p.last) else {
            p = shared.wake.wait(p).unwrap();
            continue;
        };
        let due = (last + shared.debounce).min(since + MAX_COMMIT_DELAY);
        let now = Instant::now();
        if now < due {
            p = shared.wake.wait_timeout(p, due - now).unwrap().0;
            continue;
        }
        drop(p);
        if let Err(e) = commit(&shared) {
            tracing::error!(error = %e, "background commit failed; will retry on the next change");
        }
        p = shared.pending.lock().unwrap();
    }
}
