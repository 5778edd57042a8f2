//! Mounting a [`LiveMount`] with the kernel: the FUSE session, its options,
//! readiness (the kernel answers a `stat` of the root) and clean or lazy
//! unmounts, including of stale mounts whose daemon died.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fuser::{Config, MountOption, Notifier, Session, SessionACL};

use super::fs::{FsOptions, JaxFs};
use super::live::LiveMount;
use super::reactor::{Reactor, Served};

/// How one FUSE session is mounted.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Shown as the source in /proc/mounts (`jax:<volume>`).
    pub fs_name: String,
    pub read_only: bool,
    pub fs: FsOptions,
}

/// The options a node mounts a writable volume with (what benchmarks of
/// the node's mounts use too).
pub fn node_session_options(fs_name: &str) -> SessionOptions {
    SessionOptions {
        fs_name: fs_name.into(),
        read_only: false,
        fs: FsOptions::default(),
    }
}

/// A mounted FUSE session, served by the node's [`Reactor`]; unmounts on
/// [`FuseSession::unmount`] or drop.
pub struct FuseSession {
    path: PathBuf,
    served: Option<Served>,
    notifier: Notifier,
    /// The kernel's FUSE connection number (minor of st_dev), for aborting.
    connection: u32,
}

impl std::fmt::Debug for FuseSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FuseSession")
            .field("path", &self.path)
            .finish()
    }
}

/// Mount `live` at `path` and wait until the kernel answers on it.
pub fn mount(live: LiveMount, path: &Path, opts: &SessionOptions) -> io::Result<FuseSession> {
    mount_via(live, path, path, opts)
}

/// [`mount`] with the kernel mounting on `via` (`/proc/self/fd/N` of the
/// directory `path` was opened as, see `safe_path`), so the mount lands on
/// that directory even if a component of `path` is swapped meanwhile.
/// `path` stays the session's name for readiness, mountinfo and unmount.
pub fn mount_via(
    live: LiveMount,
    path: &Path,
    via: &Path,
    opts: &SessionOptions,
) -> io::Result<FuseSession> {
    let mut options = vec![
        MountOption::FSName(opts.fs_name.clone()),
        MountOption::Subtype("jax".into()),
        // The kernel checks mode bits (EACCES/EPERM) against the caller.
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    if opts.read_only {
        options.push(MountOption::RO);
    }
    let mut config = session_config();
    config.mount_options = options;
    let before = std::fs::metadata(via)?.dev();
    let session = Session::new(JaxFs::new(live, opts.fs.clone()), via, &config)?;
    let mut s = FuseSession::spawn(session, path, 0)?;
    s.connection = wait_answering(path, before, Duration::from_secs(10))?;
    raise_readahead(s.connection);
    Ok(s)
}

/// Go on serving a mounted, initialized connection at `path` from a kept
/// descriptor of it (a predecessor's, see `fuse::keeper`): the session reads
/// from a clone of `kept`, so the keeper's descriptor is never read and
/// requests this process has read die with it alone if it crashes.
pub fn resume(
    live: LiveMount,
    kept: OwnedFd,
    path: &Path,
    connection: u32,
    opts: &SessionOptions,
) -> io::Result<FuseSession> {
    let serving = fuser::clone_fuse_device(kept.as_fd())?;
    drop(kept);
    let session = Session::resume_from_fd(
        JaxFs::new(live, opts.fs.clone()),
        serving,
        SessionACL::All,
        session_config(),
    );
    let s = FuseSession::spawn(session, path, connection)?;
    match std::fs::metadata(path) {
        Ok(m) if libc::minor(m.dev()) == connection => Ok(s),
        Ok(_) => Err(io::Error::other(format!(
            "{} is no longer FUSE connection {connection}",
            path.display()
        ))),
        Err(e) => Err(e),
    }
}

/// Session settings shared by fresh and resumed sessions (the reactor's
/// workers read the requests, so fuser's own thread settings are unused).
fn session_config() -> Config {
    let mut config = Config::default();
    // Pods run as any user; the kernel still applies default_permissions.
    config.acl = SessionACL::All;
    config
}

impl FuseSession {
    fn spawn(session: Session<JaxFs>, path: &Path, connection: u32) -> io::Result<Self> {
        let notifier = session.notifier();
        let served = Reactor::global().serve(session.into_dispatcher()?)?;
        Ok(FuseSession {
            path: path.to_path_buf(),
            served: Some(served),
            notifier,
            connection,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The kernel's number for this FUSE connection.
    pub fn connection(&self) -> u32 {
        self.connection
    }

    /// A new descriptor on this session's connection, for an fd-keeper.
    pub fn clone_device(&self) -> io::Result<OwnedFd> {
        let Some(served) = &self.served else {
            return Err(io::Error::other("the session has ended"));
        };
        // SAFETY: the served session owns this descriptor and keeps it open
        // while it is served (it is, checked above; `self` is borrowed).
        let device = unsafe { BorrowedFd::borrow_raw(served.raw_fd()) };
        fuser::clone_fuse_device(device)
    }

    /// Stop serving without unmounting, for a successor to resume from a
    /// kept descriptor: every request read so far is answered, none other
    /// is read, the Mount's final commit runs (`JaxFs::destroy`), and the
    /// mount stays in place. Requests from then on wait in the kernel.
    pub fn hand_over(mut self) {
        if let Some(served) = self.served.take() {
            stop_serving(served).destroy();
        }
    }

    /// Sends cache invalidations to the kernel (after a remote change).
    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    /// Unmount and wait for the session thread to finish. A busy mount is
    /// detached; a connection that stays alive (another bind of it, a stuck
    /// caller) is aborted after a grace period, so this never hangs.
    pub fn unmount(mut self) -> io::Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> io::Result<()> {
        let Some(served) = self.served.take() else {
            return Ok(());
        };
        match nix::mount::umount(&self.path) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(nix::errno::Errno::EBUSY) => {
                tracing::warn!(path = %self.path.display(), "mount busy; detaching it lazily");
                lazy_unmount(&self.path)?;
            }
            Err(e) => return Err(e.into()),
        }
        if !served.wait_ended(UNMOUNT_GRACE) {
            tracing::warn!(path = %self.path.display(), connection = self.connection, "FUSE connection still in use after unmount; aborting it");
            abort_connection(self.connection)?;
            if !served.wait_ended(UNMOUNT_GRACE) {
                // Not served any more either way: the kernel fails its requests.
                stop_serving(served);
                return Err(io::Error::other(
                    "the FUSE session did not end after an abort",
                ));
            }
        }
        // The session's end: the Mount's final commit (`JaxFs::destroy`).
        stop_serving(served).destroy();
        Ok(())
    }
}

/// Take a session off the reactor. This module unmounts (or leaves
/// mounted) itself, so fuser must never unmount again on drop: the path
/// may be mounted anew by then.
fn stop_serving(served: Served) -> fuser::SessionDispatcher<JaxFs> {
    let dispatcher = Reactor::global().stop(served);
    dispatcher.forget_mount();
    dispatcher
}

/// How long an unmounted session may take to see the kernel let go.
const UNMOUNT_GRACE: Duration = Duration::from_secs(5);

/// Abort a FUSE connection through fusectl (mounting fusectl if needed).
fn abort_connection(connection: u32) -> io::Result<()> {
    let dir = Path::new("/sys/fs/fuse/connections");
    let abort = dir.join(connection.to_string()).join("abort");
    if !abort.exists() {
        let _ = nix::mount::mount(
            Some("fusectl"),
            dir,
            Some("fusectl"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
    }
    std::fs::write(&abort, b"1")
}

impl Drop for FuseSession {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            tracing::warn!(path = %self.path.display(), error = %e, "unmount on drop failed");
        }
    }
}

/// Poll until `stat(path)` shows a new file system that answers (not the
/// directory underneath), or fail after `timeout`. Returns the FUSE
/// connection number.
fn wait_answering(path: &Path, before_dev: u64, timeout: Duration) -> io::Result<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        match std::fs::metadata(path) {
            Ok(m) if m.dev() != before_dev => return Ok(libc::minor(m.dev())),
            Ok(_) | Err(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Ok(_) => {
                return Err(io::Error::other(format!(
                    "{} did not show the new mount within {timeout:?}",
                    path.display()
                )))
            }
            Err(e) => return Err(e),
        }
    }
}

/// Kernel readahead for this mount, in KiB: one default chunk (1 MiB)
/// instead of the default 128 KiB (the FUSE INIT reply cannot raise it).
/// Not more: a page fault in a mapped file reads this much around it, and
/// every truncate drops the file's cached pages, so a random mmap workload
/// (`bench fuse --workloads fsx`) pays for each KiB of it (4 MiB: 9.4 s,
/// 1 MiB: 7.5 s, on tmpfs), while sequential reads gain nothing measurable
/// past one chunk (our own read-ahead loads the next chunks).
const READ_AHEAD_KB: u32 = 1024;

/// Best effort: raise the mount's readahead through its backing-device
/// entry in sysfs (`/sys/class/bdi/0:<connection>`).
fn raise_readahead(connection: u32) {
    let p = format!("/sys/class/bdi/0:{connection}/read_ahead_kb");
    if let Err(e) = std::fs::write(&p, READ_AHEAD_KB.to_string()) {
        tracing::debug!(path = %p, error = %e, "could not raise readahead");
    }
}

/// True when `path` is a mount point whose FUSE daemon is gone
/// ("Transport endpoint is not connected").
pub fn is_stale(path: &Path) -> bool {
    matches!(std::fs::metadata(path), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN))
}

/// True when something is mounted exactly at `path` (per /proc/self/mountinfo).
pub fn is_mount_point(path: &Path) -> bool {
    mount_source(path).is_some()
}

/// The source of the topmost mount exactly at `path` (`jax:<volume>` for
/// ours and binds of ours), per /proc/self/mountinfo.
pub fn mount_source(path: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_string_lossy();
    info.lines()
        .rev()
        .filter(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|mp| unescape_mount_path(mp) == want)
        })
        .find_map(|l| {
            let (_, after) = l.split_once(" - ")?;
            after.split(' ').nth(1).map(unescape_mount_path)
        })
}

/// Every mount point strictly below `root` (per /proc/self/mountinfo).
pub fn mounts_under(root: &Path) -> Vec<std::path::PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4).map(unescape_mount_path))
        .map(std::path::PathBuf::from)
        .filter(|p| p.starts_with(root) && p != root)
        .collect()
}

/// The mount source of volume `volume`'s FUSE mounts and their binds.
pub fn source_of(volume: &crate::bucket::BucketId) -> String {
    format!("jax:{volume}")
}

/// /proc/self/mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let digits = std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Detach whatever is mounted at `path` (lazy unmount); fine if nothing is.
pub fn lazy_unmount(path: &Path) -> io::Result<()> {
    // Never through a link put in the path's place: a symlink is not a
    // mount point, so it reads as "not mounted" (EINVAL).
    let flags = nix::mount::MntFlags::MNT_DETACH | nix::mount::MntFlags::UMOUNT_NOFOLLOW;
    match nix::mount::umount2(path, flags) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(io::Error::from(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// #26 finding 9: an unmount by path does not follow a symbolic link
    /// put in the path's place (it would detach whatever the link names).
    #[test]
    fn a_lazy_unmount_never_follows_a_link_in_the_paths_place() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("mounted");
        std::fs::create_dir(&target).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &target,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        lazy_unmount(&link).unwrap();
        assert!(is_mount_point(&target), "unmounted through the link");
        lazy_unmount(&target).unwrap();
        assert!(!is_mount_point(&target));
    }

    #[test]
    fn mountinfo_paths_unescape() {
        assert_eq!(unescape_mount_path(r"/a\040b"), "/a b");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
        assert_eq!(unescape_mount_path(r"/x\134y"), r"/x\y");
    }
}
