//! A live bucket Mount shared by every FUSE session (and pod) that uses a
//! volume on this node, with its write-back committer: a new version is
//! written on fsync and after a short quiet period, never per write call.
//! A commit that fails (a full disk, an I/O error) leaves the changes
//! pending: the committer tries again with a growing delay, and a final
//! commit that fails at shutdown keeps the mount live and says so.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::committers::{self, Committable};
use super::lookups::{KernelRef, Lookups};

use crate::bucket::{Appended, BucketError, Mount, NotNamed, Saved};

/// How long writes must pause before the committer writes a version.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(500);
/// Longest a busy writer can keep changes uncommitted.
pub const MAX_COMMIT_DELAY: Duration = Duration::from_secs(5);
/// After an fsync the journal made durable, the committer writes a version
/// this soon (fsyncs that follow at once share it; peers see the write
/// within about this plus a pull) ...
pub const FSYNC_VERSION_DELAY: Duration = Duration::from_millis(2);
/// With `syncReplicas`, the version follows an fsync this late instead: the
/// first fsync on a new version waits until a replica holds that version
/// (its journal copy is replayed on it), so a version after every fsync
/// would make every other fsync wait for a version's replication.
pub const FSYNC_VERSION_DELAY_REPLICATED: Duration = Duration::from_millis(100);
/// ... unless versions come back to back: the next one starts no sooner
/// than this many times the last one's cost after it ended, so versions
/// take at most a fifth of the time of a volume under constant fsyncs (a
/// database's) ...
const VERSION_COST_FACTOR: u32 = 4;
/// ... and however much the last one cost (a disk that stalled once), no
/// later than this after the fsync.
const FSYNC_VERSION_DELAY_MAX: Duration = Duration::from_secs(1);
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
    /// A version is due by then (changes an fsync journaled).
    soon: Option<Instant>,
    /// How long the last version took to write, and when it was done.
    last_cost: Duration,
    last_done: Option<Instant>,
    stop: bool,
}

struct Shared {
    /// This mount's place in the shared committer pool.
    id: u64,
    mount: Mutex<Mount>,
    /// The kernel's references to the Mount's inodes; locked after `mount`.
    lookups: Mutex<Lookups>,
    /// Held for a whole commit (see [`commit`]).
    committing: Mutex<()>,
    /// Held while an fsync takes its batch and appends it, and while a
    /// version is cut: a batch taken before a cut is appended before the
    /// changes after it. Taken after `committing`, before `mount`.
    journal_order: Mutex<()>,
    pending: Mutex<Pending>,
    on_commit: Mutex<Option<CommitHook>>,
    /// The hook, and when it last ran.
    on_quota: Mutex<(Option<QuotaHook>, Option<Instant>)>,
    /// `syncReplicas`: what an fsync waits for after its append (or version).
    replica_wait: Mutex<Option<ReplicaWait>>,
    /// Resumed after the previous process crashed: writes it had answered
    /// but not made durable are gone, and the kernel does not know. The
    /// first fsync of each inode reports it (EIO, once), as Linux reports
    /// a lost writeback; the inodes that have reported it are listed.
    crash: Mutex<Option<std::collections::HashSet<crate::bucket::Ino>>>,
    debounce: Duration,
}

/// What an fsync made durable here, for other replicas to hold too.
pub enum Durable<'a> {
    /// A version (the journal could not take the changes).
    Version(&'a crate::store::Hash),
    /// Frames appended to the journal, up to `upto`: replicas keep a
    /// copy of the file up to there.
    Journal {
        journal: &'a Arc<crate::bucket::journal::Journal>,
        upto: crate::bucket::journal::Position,
    },
}

/// Waits until enough other replicas hold what an fsync made durable (or
/// says why not).
pub type ReplicaWait = Arc<dyn Fn(Durable<'_>) -> Result<(), String> + Send + Sync>;

/// A bucket Mount behind a lock, committed in the background by the
/// process's shared committer pool.
#[derive(Clone)]
pub struct LiveMount {
    shared: Arc<Shared>,
}

impl LiveMount {
    pub fn new(mount: Mount, debounce: Duration) -> Self {
        let shared = Arc::new(Shared {
            id: committers::next_id(),
            mount: Mutex::new(mount),
            lookups: Mutex::new(Lookups::default()),
            committing: Mutex::new(()),
            journal_order: Mutex::new(()),
            pending: Mutex::new(Pending::default()),
            on_commit: Mutex::new(None),
            on_quota: Mutex::new((None, None)),
            replica_wait: Mutex::new(None),
            crash: Mutex::new(None),
            debounce,
        });
        Self { shared }
    }

    /// Have the committer pool look at this mount at `at`.
    fn schedule(&self, at: Instant) {
        committers::schedule(self.shared.id, committers::weak_of(&self.shared), at);
    }

    /// Lock the Mount for one operation.
    pub fn lock(&self) -> MutexGuard<'_, Mount> {
        self.shared.lock_mount()
    }

    /// The kernel's lookup counts. Lock the Mount first ([`LiveMount::lock`])
    /// and count under that lock: every user takes the two in this order.
    pub fn lookups(&self) -> MutexGuard<'_, Lookups> {
        self.shared
            .lookups
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The references the kernel holds, for a successor process
    /// ([`Lookups::refs`]).
    pub fn kernel_refs(&self) -> Vec<KernelRef> {
        let m = self.lock();
        self.lookups().refs(&m)
    }

    /// This mount was resumed after its previous process crashed (see
    /// [`LiveMount::lost_in_crash`]).
    pub fn resumed_after_crash(&self) {
        *self.shared.crash.lock().unwrap() = Some(Default::default());
    }

    /// An fsync of `ino` must fail once because writes to it that the
    /// crashed process had answered may be lost: the error for the first
    /// fsync of each inode after a crash, `None` after.
    pub fn lost_in_crash(&self, ino: crate::bucket::Ino) -> Option<BucketError> {
        let mut crash = self.shared.crash.lock().unwrap();
        let reported = crash.as_mut()?;
        if !reported.insert(ino) {
            return None;
        }
        tracing::error!(
            ino,
            "fsync failed once: the node plugin crashed, and writes to this inode it had not made durable may be lost"
        );
        Some(BucketError::Unavailable(
            "writes not made durable before the node plugin crashed may be lost".into(),
        ))
    }

    /// Take over a predecessor's references ([`Lookups::adopt`]); returns
    /// how many were taken over.
    pub fn adopt_kernel_refs(&self, refs: &[KernelRef]) -> usize {
        let mut m = self.lock();
        self.lookups().adopt(&mut m, refs)
    }

    /// Lock the Mount for a change that writes HEAD itself (a merge): no
    /// commit of this mount is between writing a version and naming it,
    /// so none names an older version as HEAD after the merge.
    pub fn lock_to_merge(&self) -> MergeGuard<'_> {
        let committing = self.shared.lock_committing();
        let in_order = self.shared.lock_journal_order();
        MergeGuard {
            mount: self.lock(),
            _in_order: in_order,
            _committing: committing,
        }
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
        // Queue the mount only on the first change: while changes are
        // pending the committer looks at its deadline and sees `last`
        // moved on.
        if p.since.is_none() && !p.stop {
            p.since = Some(now);
            drop(p);
            self.schedule(now + self.shared.debounce);
        }
    }

    /// Write a version now (unmount, shutdown, a snapshot, a peer's need).
    pub fn commit_now(&self) -> Result<Saved, BucketError> {
        commit(&self.shared)
    }

    /// Make every change so far durable (fsync, fsyncdir): one append to
    /// the journal, shared by the fsyncs that wait meanwhile; a version
    /// follows soon. Without a journal, or past what it takes, a version.
    pub fn sync_changes(&self) -> Result<(), BucketError> {
        // Taken out of the lock: a change of `syncReplicas` does not wait
        // for an fsync that waits for its replicas.
        let wait = self.shared.replica_wait.lock().unwrap().clone();
        // Not the commit lock: a version being made durable meanwhile does
        // not hold the fsync up (the journal takes changes on it, see
        // `bucket::journal`); only the cut waits for an append in flight.
        let in_order = self.shared.lock_journal_order();
        let (batch, journal) = {
            let mut m = self.lock();
            (m.take_journal_batch(), m.journal())
        };
        // The append runs without the Mount: readers and writers go on.
        let appended = batch.append();
        // Nothing new: an fsync that ran meanwhile appended these changes
        // (under the same lock), up to where the file ends now.
        let nothing_since = match (&appended, &journal) {
            (Appended::Nothing, Some(j)) if wait.is_some() => j.position(),
            _ => None,
        };
        drop(in_order);
        let (version, upto) = match appended {
            Appended::Nothing => (None, nothing_since),
            Appended::Done(at) => {
                self.version_soon(wait.is_some());
                (None, Some(at))
            }
            Appended::NeedsVersion => (Some(commit(&self.shared)?), None),
            Appended::Failed => {
                // The changes are still in the Mount: a version holds them.
                self.lock().journal_breaks();
                (Some(commit(&self.shared)?), None)
            }
        };
        let Some(wait) = wait else {
            return Ok(());
        };
        // `syncReplicas`: the fsync returns once enough replicas hold
        // what it made durable: the journal's frames (the usual case), or
        // the version.
        let base;
        let what = match (&version, &journal, upto) {
            (Some(saved), _, _) => Durable::Version(&saved.hash),
            (None, Some(journal), Some(upto)) => Durable::Journal { journal, upto },
            // Every change is in a durable version already (perhaps by an
            // fsync that ran meanwhile and whose replicas are not done).
            _ => {
                base = self.lock().base().hash;
                Durable::Version(&base)
            }
        };
        wait(what).map_err(|why| {
            tracing::error!(
                why,
                "fsync failed: the replicas it waits for did not confirm"
            );
            BucketError::Unavailable(format!("fsync: {why}"))
        })
    }

    /// Make every fsync wait, once durable here, for `wait` (`syncReplicas`);
    /// `None`: fsyncs are durable here alone again.
    pub fn set_replica_wait(&self, wait: Option<ReplicaWait>) {
        if let Some(journal) = self.lock().journal() {
            journal.keep_copies(wait.is_some());
        }
        *self.shared.replica_wait.lock().unwrap() = wait;
    }

    /// Have the committer write a version soon (see [`FSYNC_VERSION_DELAY`];
    /// `replicated`: the mount's fsyncs wait for replicas).
    fn version_soon(&self, replicated: bool) {
        let mut p = self.shared.pending.lock().unwrap();
        if p.stop {
            return;
        }
        let now = Instant::now();
        let paced = p
            .last_done
            .map_or(now, |done| done + p.last_cost * VERSION_COST_FACTOR);
        let delay = if replicated {
            FSYNC_VERSION_DELAY_REPLICATED
        } else {
            FSYNC_VERSION_DELAY
        };
        let at = paced.max(now + delay).min(now + FSYNC_VERSION_DELAY_MAX);
        p.since.get_or_insert(now);
        p.last.get_or_insert(now);
        if p.soon.is_none_or(|s| s > at) {
            p.soon = Some(at);
            drop(p);
            self.schedule(at);
        }
    }

    /// Stop the committer after a final commit. Idempotent. When the final
    /// commit fails, the committer is started again and the error returned:
    /// the mount stays live with its changes, so nothing is dropped.
    pub fn shutdown(&self) -> Result<(), BucketError> {
        self.shared.pending.lock().unwrap().stop = true;
        committers::forget(self.shared.id);
        if self.lock().is_read_only() {
            return Ok(());
        }
        match commit(&self.shared) {
            Ok(_) => Ok(()),
            Err(e) => {
                // Keep committing in the background until it succeeds.
                self.shared.pending.lock().unwrap().stop = false;
                self.schedule(Instant::now() + RETRY_FIRST);
                Err(e)
            }
        }
    }

    /// Whether changes wait to be committed (none after a successful commit).
    pub fn has_pending_changes(&self) -> bool {
        self.lock().has_unsaved_changes()
    }
}

impl Shared {
    fn lock_mount(&self) -> MutexGuard<'_, Mount> {
        self.mount
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_committing(&self) -> MutexGuard<'_, ()> {
        self.committing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_journal_order(&self) -> MutexGuard<'_, ()> {
        self.journal_order
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The Mount, with commits of it held off (see [`LiveMount::lock_to_merge`]).
pub struct MergeGuard<'a> {
    // Dropped in this order: the reverse of taking them.
    mount: MutexGuard<'a, Mount>,
    _in_order: MutexGuard<'a, ()>,
    _committing: MutexGuard<'a, ()>,
}

impl std::ops::Deref for MergeGuard<'_> {
    type Target = Mount;
    fn deref(&self) -> &Mount {
        &self.mount
    }
}

impl std::ops::DerefMut for MergeGuard<'_> {
    fn deref_mut(&mut self) -> &mut Mount {
        &mut self.mount
    }
}

fn commit(shared: &Shared) -> Result<Saved, BucketError> {
    // One commit of this mount at a time: a second one waits for the first
    // to name its version before it writes one on top.
    let _one_at_a_time = shared.lock_committing();
    let taken = {
        let mut p = shared.pending.lock().unwrap();
        p.soon = None;
        (p.since.take(), p.last.take())
    };
    let started = Instant::now();
    let result = save_without_blocking_others(shared);
    let (saved, changed) = match result {
        Ok(r) => {
            let mut p = shared.pending.lock().unwrap();
            p.retry = None;
            if r.1 {
                p.last_cost = started.elapsed();
                p.last_done = Some(Instant::now());
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

/// Write a version: the Mount is locked to seal and write the tree and
/// manifest, but not while the store fsyncs the blobs and HEAD is written,
/// so readers and writers of other files go on meanwhile. Whether the
/// version differs from the base before.
fn save_without_blocking_others(shared: &Shared) -> Result<(Saved, bool), BucketError> {
    let (prepared, store) = {
        let _in_order = shared.lock_journal_order();
        let mut m = shared.lock_mount();
        if m.is_read_only() {
            return Ok((m.base(), false));
        }
        match m.prepare_save()? {
            Some(p) => (p, m.blob_store()),
            None => return Ok((m.base(), false)),
        }
    };
    if let Err(e) = store.sync() {
        shared.lock_mount().unpublished(prepared, false);
        return Err(e.into());
    }
    // Merges take `committing` too, so the base is still this version;
    // HEAD is written without the Mount, like the blobs.
    if !shared.lock_mount().is_base(&prepared) {
        return Ok((prepared.abandon(), true));
    }
    match prepared.name_head() {
        Ok(()) => Ok((prepared.version(), true)),
        Err(NotNamed {
            error,
            journal_retired,
        }) => {
            shared.lock_mount().unpublished(prepared, journal_retired);
            Err(error)
        }
    }
}

impl Committable for Shared {
    /// Commit once writes paused for the debounce (or the maximum delay
    /// passed), not before a failed commit's retry time.
    fn step(&self) -> Option<Instant> {
        let due = |p: &Pending| -> Option<Instant> {
            if p.stop {
                return None;
            }
            let (since, last) = (p.since?, p.last?);
            let mut due = (last + self.debounce).min(since + MAX_COMMIT_DELAY);
            if let Some(soon) = p.soon {
                due = due.min(soon);
            }
            if let Some((at, _)) = p.retry {
                due = due.max(at);
            }
            Some(due)
        };
        {
            let p = self.pending.lock().unwrap();
            match due(&p) {
                None => return None,
                Some(at) if at > Instant::now() => return Some(at),
                Some(_) => {}
            }
        }
        if let Err(e) = commit(self) {
            tracing::error!(error = %e, "background commit failed; the changes stay pending and it will be retried");
        }
        due(&self.pending.lock().unwrap())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::{test_bucket, BucketOptions, ROOT_INO};

    /// A new file `name` in the root of `live`, holding `data`.
    fn file_with(live: &LiveMount, name: &[u8], data: &[u8]) -> crate::bucket::Ino {
        let mut m = live.lock();
        let f = m.create(ROOT_INO, name, 0o644, 0, 0).unwrap().ino;
        m.write(f, 0, data).unwrap();
        f
    }

    /// A commit of `live`, run on a thread of its own.
    fn commit_in_a_thread(live: &LiveMount) -> std::thread::JoinHandle<Result<Saved, BucketError>> {
        let live = live.clone();
        std::thread::spawn(move || live.commit_now())
    }

    /// An fsync while a commit waits for the store does not wait for the
    /// commit: the journal takes the change on the version being made
    /// durable, and a mount after a crash (no shutdown) has it.
    #[test]
    fn an_fsync_during_a_commit_returns_before_the_commit_and_survives() {
        let dir = tempfile::tempdir().unwrap();
        let bucket = test_bucket(dir.path(), BucketOptions::default().chunk_size);
        let live = LiveMount::new(bucket.mount_journaled().unwrap(), Duration::from_secs(3600));
        let f = file_with(&live, b"f", b"before the cut");
        let store = live.lock().blob_store();
        let held = store.hold_syncs();
        let committer = commit_in_a_thread(&live);
        let deadline = Instant::now() + Duration::from_secs(10);
        while live.lock().has_unsaved_changes() {
            assert!(
                Instant::now() < deadline,
                "the commit never cut its version"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let g = file_with(&live, b"g", b"after the cut");
        let (tx, rx) = std::sync::mpsc::channel();
        let syncer = {
            let live = live.clone();
            std::thread::spawn(move || tx.send(live.sync_changes()).unwrap())
        };
        let synced = rx.recv_timeout(Duration::from_secs(10));
        assert!(
            matches!(synced, Ok(Ok(()))),
            "the fsync waited for the commit's sync: {synced:?}"
        );
        syncer.join().unwrap();
        drop(held);
        committer.join().unwrap().unwrap();
        // A crash: the process goes without a final commit (and its
        // committer writes no version meanwhile).
        live.shared.pending.lock().unwrap().stop = true;
        committers::forget(live.shared.id);
        std::mem::forget(live);
        let mut m = bucket.mount_journaled().unwrap();
        assert_eq!(m.read(f, 0, 64).unwrap(), b"before the cut");
        assert_eq!(m.read(g, 0, 64).unwrap(), b"after the cut");
    }

    /// While a commit waits for the store to make its blobs durable, the
    /// Mount is free (a reader of the volume goes on) and HEAD still names
    /// the old version; HEAD moves once the sync is done.
    #[test]
    fn a_commit_leaves_the_mount_free_while_its_blobs_are_synced() {
        let dir = tempfile::tempdir().unwrap();
        let bucket = test_bucket(dir.path(), BucketOptions::default().chunk_size);
        let before = bucket.head().unwrap();
        let live = LiveMount::new(bucket.mount().unwrap(), Duration::from_secs(3600));
        let f = file_with(&live, b"f", b"data");
        let store = live.lock().blob_store();
        let held = store.hold_syncs();
        let committer = commit_in_a_thread(&live);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let written = live
                .shared
                .mount
                .try_lock()
                .is_ok_and(|m| !m.has_unsaved_changes());
            if written {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the Mount stayed locked while the commit waited for the store"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(live.lock().read(f, 0, 4).unwrap(), b"data");
        assert_eq!(bucket.head().unwrap(), before, "HEAD moved before a sync");
        drop(held);
        let saved = committer.join().unwrap().unwrap();
        assert_ne!(saved.hash, before);
        assert_eq!(bucket.head().unwrap(), saved.hash);
    }
}
