//! The store's temp directory, one per open store.
//!
//! Blob bytes wait in temp files until the next [`super::BlobStore::sync`]
//! makes them durable and names them, which may be many seconds later. So a
//! store must never sweep away temp files that another live store (another
//! process on the same state dir, such as an operator's `jax-csi bucket`
//! command beside the node) still owns. Each open store claims its own
//! subdirectory of `<root>/tmp/` and holds an exclusive `flock` on a lock
//! file in it; the kernel drops the lock when the owner dies, however it
//! dies, so a subdirectory whose lock can be taken is left by a dead store
//! and can go. Process ids alone would not do: a restarted container's node
//! often gets the same pid as the one before.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{Flock, FlockArg};

const LOCK_FILE: &str = "lock";

/// A temp directory this store owns while it is open.
#[derive(Debug)]
pub(super) struct TmpDir {
    path: PathBuf,
    counter: AtomicU64,
    _lock: Flock<File>,
}

impl TmpDir {
    /// Claim a fresh temp directory under `tmp_root`, first removing what
    /// dead stores left there.
    pub(super) fn claim(tmp_root: &Path) -> io::Result<Self> {
        sweep(tmp_root);
        static INSTANCE: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let name = format!(
            "{}-{nanos}-{}",
            std::process::id(),
            INSTANCE.fetch_add(1, Ordering::Relaxed)
        );
        let path = tmp_root.join(name);
        std::fs::create_dir(&path)?;
        let file = File::create(path.join(LOCK_FILE))?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, errno)| io::Error::from(errno))?;
        Ok(Self {
            path,
            counter: AtomicU64::new(0),
            _lock: lock,
        })
    }

    /// A temp file name no other writer uses.
    pub(super) fn fresh(&self, stem: &str, suffix: &str) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.path.join(format!("{stem}-{n}{suffix}"))
    }
}

/// Remove loose temp files (from before stores owned directories) and the
/// directories of stores that are no longer running.
fn sweep(tmp_root: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp_root) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            let _ = std::fs::remove_file(&path);
        } else if owner_is_gone(&path) {
            if let Err(e) = std::fs::remove_dir_all(&path) {
                tracing::warn!(dir = %path.display(), error = %e, "could not remove a dead store's temp files");
            }
        }
    }
}

/// True when no live store holds the lock of temp directory `dir`.
fn owner_is_gone(dir: &Path) -> bool {
    match File::open(dir.join(LOCK_FILE)) {
        // Taken and dropped at once: nobody held it.
        Ok(file) => Flock::lock(file, FlockArg::LockExclusiveNonblock).is_ok(),
        // A directory without its lock file died while being claimed.
        Err(e) => e.kind() == io::ErrorKind::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_stores_temp_files_survive_another_open_and_a_dead_ones_go() {
        let root = tempfile::tempdir().unwrap();
        let live = TmpDir::claim(root.path()).unwrap();
        let kept = live.fresh("blob", "");
        std::fs::write(&kept, b"waiting for sync").unwrap();
        let dead = TmpDir::claim(root.path()).unwrap();
        let dead_file = dead.fresh("blob", "");
        std::fs::write(&dead_file, b"abandoned").unwrap();
        let dead_dir = dead.path.clone();
        drop(dead);
        std::fs::write(root.path().join("loose"), b"old layout").unwrap();

        let _third = TmpDir::claim(root.path()).unwrap();
        assert!(kept.exists(), "a live store's temp file was swept");
        assert!(!dead_dir.exists(), "a dead store's temp dir stayed");
        assert!(!root.path().join("loose").exists());
    }
}
