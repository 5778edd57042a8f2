//! Named points on the commit path where a test can make the process die as
//! a crash would: `JAX_CSI_CRASH_AT=<point>` (or `<point>:<n>` for its n-th
//! hit) makes the process SIGKILL itself there. Nothing is flushed and no
//! destructor runs. Unset (always, outside tests) each point costs one
//! load of an initialised `OnceLock`. `tests/crash_points.rs` stops a commit at
//! every point and checks what survives.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The environment variable that arms a point.
pub const ENV: &str = "JAX_CSI_CRASH_AT";

/// Every point, in the order a commit passes them.
pub const POINTS: &[&str] = &[
    // A file's dirty chunks were sealed and stored (blobs not yet in a tree,
    // nor durable: they wait in temp files for the commit's sync).
    "chunks-sealed",
    // The tree's nodes are stored; no manifest names them yet.
    "tree-written",
    // The signed manifest is stored; HEAD still names the previous version.
    "manifest-written",
    // The commit's sync fdatasynced every waiting blob; none is renamed yet.
    "blob-written",
    // The waiting blobs are renamed into place; their directories are not
    // yet fsynced.
    "blob-renamed",
    // A small file's temp copy (HEAD's among them) is fsynced, not yet renamed.
    "durable-temp-written",
    // HEAD names the new version; nothing after the commit has run.
    "head-moved",
];

/// The journal's points, in the order an fsync and then a version pass them.
pub const JOURNAL_POINTS: &[&str] = &[
    // An fsync's journal frame is written and fdatasynced (acknowledged).
    "journal-appended",
    // A durable version took the journal over (the active file is renamed
    // for it); HEAD does not name the version yet.
    "journal-retired",
    // HEAD names it; the retired file is still there.
    "head-moved",
];

/// The journal's points when an fsync comes while a version is made
/// durable, in the order they are passed: the fsync's append (the second
/// append), the tail written to the version's new file, the old file
/// retired, the new one not yet renamed to be the active file.
pub const TAIL_POINTS: &[&str] = &[
    "journal-appended:2",
    "journal-next-written",
    "journal-next-pending",
    "journal-retired",
    "head-moved",
];

fn armed() -> Option<&'static (String, u64)> {
    static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var(ENV).ok()?;
            let (name, nth) = match spec.split_once(':') {
                Some((name, n)) => (name.to_string(), n.parse().ok()?),
                None => (spec, 1),
            };
            Some((name, nth))
        })
        .as_ref()
}

/// Die here if this point is armed and this is its chosen hit.
pub fn hit(point: &'static str) {
    static HITS: AtomicU64 = AtomicU64::new(0);
    let Some((name, nth)) = armed() else {
        return;
    };
    if name != point {
        return;
    }
    if HITS.fetch_add(1, Ordering::SeqCst) + 1 == *nth {
        eprintln!("crash point {point}: killing this process");
        // SAFETY: kill of our own pid; it does not return.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
