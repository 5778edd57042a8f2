//! A live bucket Mount shared by every FUSE session (and pod) that uses a
//! volume on this node, with its write-back committer: a new version is
//! written on fsync and after a short quiet period, never per write call.
//! A commit that fails (a full disk, an I/O error) leaves the changes
//! pending: the committer tries again with a growing delay, and a final
//! commit that fails at shutdown keeps the mount live and says so.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::bucket::{BucketError, Mount, Saved};

/// How long writes must pause before the committer writes a version.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(500);
/// Longest a busy writer can keep changes uncommitted.
pub const MAX_COMMIT_DELAY: Duration = Duration::from_secs(5);
/// First wait before a failed background commit is tried again (doubling to 30 s).
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Called after every commit (to report the new head, notify peers, …).
pub type CommitHook = Box<dyn Fn(Saved) + Send + Sync>;
/// Called when a write is refused because the volume is full.
pub type QuotaHook = Box<dyn Fn() + Send + Sync>;
/// A full volume is reported at most this often.
const QUOTA_NOTICE_EVERY: Duration = Duration::from_secs(300);

#[derive(Default)]
struct Pending {
    /// When the first uncommitted change happened, if any.
    since: Option<Instant>,
    /// When the last change happened.
    last: Option<Instant>,
    /// After a failed commit: when to try again, and the wait after that.
    retry: Option<(Instant, Duration)>,
    stop: bool,
}

struct Shared {
    mount: Mutex<Mount>,
    pending: Mutex<Pending>,
    wake: Condvar,
    on_commit: Mutex<Option<CommitHook>>,
    /// The hook, and when it last ran.
    on_quota: Mutex<(Option<QuotaHook>, Option<Instant>)>,
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
            on_quota: Mutex::new((None, None)),
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

    fn spawn_committer(&self) {
        let worker = self.shared.clone();
        let handle = std::thread::Builder::new()
            .name("jax-committer".into())
            .spawn(move || committer(worker))
            .expect("spawning the committer thread");
        *self.committer.lock().unwrap() = Some(handle);
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

    /// Set the hook run when writes fail because the volume is full.
    pub fn set_quota_hook(&self, hook: QuotaHook) {
        self.shared.on_quota.lock().unwrap().0 = Some(hook);
    }

    /// A write failed on the quota: tell the hook (rate-limited).
    pub fn quota_reached(&self) {
        let mut q = self.shared.on_quota.lock().unwrap();
        if q.1.is_some_and(|t| t.elapsed() < QUOTA_NOTICE_EVERY) {
            return;
        }
        q.1 = Some(Instant::now());
        if let Some(hook) = &q.0 {
            hook();
        }
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

    /// Stop the committer after a final commit. Idempotent. When the final
    /// commit fails, the committer is started again and the error returned:
    /// the mount stays live with its changes, so nothing is dropped.
    pub fn shutdown(&self) -> Result<(), BucketError> {
        {
            let mut p = self.shared.pending.lock().unwrap();
            p.stop = true;
            self.shared.wake.notify_all();
        }
        let running = self.committer.lock().unwrap().take();
        let was_running = running.is_some();
        if let Some(h) = running {
            let _ = h.join();
        }
        if self.lock().is_read_only() {
            return Ok(());
        }
        match commit(&self.shared) {
            Ok(_) => Ok(()),
            Err(e) => {
                self.shared.pending.lock().unwrap().stop = false;
                if was_running {
                    self.spawn_committer();
                }
                Err(e)
            }
        }
    }

    /// Whether changes wait to be committed (none after a successful commit).
    pub fn has_pending_changes(&self) -> bool {
        self.lock().has_unsaved_changes()
    }
}

fn commit(shared: &Shared) -> Result<Saved, BucketError> {
    let taken = {
        let mut p = shared.pending.lock().unwrap();
        (p.since.take(), p.last.take())
    };
    let result = {
        let mut m = shared
            .mount
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if m.is_read_only() {
            return Ok(m.base());
        }
        let before = m.base();
        m.save().map(|saved| (saved, saved != before))
    };
    let (saved, changed) = match result {
        Ok(r) => {
            shared.pending.lock().unwrap().retry = None;
            if r.1 {
                crate::metrics::commit(true);
            }
            r
        }
        Err(e) => {
            crate::metrics::commit(false);
            // The changes are still in the Mount: keep them pending so the
            // committer tries again, later and later while it keeps failing.
            let mut p = shared.pending.lock().unwrap();
            let now = Instant::now();
            p.since = p.since.or(taken.0).or(Some(now));
            p.last = p.last.or(taken.1).or(Some(now));
            let wait = p.retry.map_or(RETRY_FIRST, |(_, w)| (w * 2).min(RETRY_MAX));
            p.retry = Some((now + wait, wait));
            return Err(e);
        }
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
        let mut due = (last + shared.debounce).min(since + MAX_COMMIT_DELAY);
        if let Some((at, _)) = p.retry {
            due = due.max(at);
        }
        let now = Instant::now();
        if now < due {
            p = shared.wake.wait_timeout(p, due - now).unwrap().0;
            continue;
        }
        drop(p);
        if let Err(e) = commit(&shared) {
            tracing::error!(error = %e, "background commit failed; the changes stay pending and it will be retried");
        }
        p = shared.pending.lock().unwrap();
    }
}
