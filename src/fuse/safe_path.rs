//! Opening a mount point below kubelet's directory without a race.
//!
//! `csi::paths::check_path` refuses a path that goes through a symbolic link,
//! but a check by path followed by `mkdir -p` and `mount(2)` by path leaves a
//! window: a process that can write under the kubelet dir swaps a component
//! for a symlink in between and the mount lands elsewhere on the host (over
//! `/etc`, say). Here the trusted root is opened once (an admin-configured
//! root may itself be a link), then every component below it is opened
//! relative to its parent's descriptor with `O_NOFOLLOW` and made with
//! `mkdirat` when missing. The caller mounts on `/proc/self/fd/N` of the
//! final descriptor, which the kernel resolves to that very directory, so
//! nothing is looked up by name again between the check and the mount.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{open, openat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, mkdirat, Mode, SFlag};

/// Mode of directories the walk makes (kubelet's own pod dirs are 0750).
const DIR_MODE: u32 = 0o750;

#[derive(Debug, thiserror::Error)]
pub enum SafePathError {
    #[error("{path} is not below {root}")]
    Outside { path: PathBuf, root: PathBuf },
    #[error("{0} is a symbolic link (paths under the kubelet directory must not go through one)")]
    Symlink(PathBuf),
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A directory held open by descriptor, and the path it was reached by.
#[derive(Debug)]
pub struct OpenDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl OpenDir {
    /// The path the directory was reached by (for messages and mountinfo).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `/proc/self/fd/N`: a name for this very directory that the kernel
    /// resolves through the descriptor, not by walking `path` again.
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// The device of the file system the descriptor is on.
    pub fn dev(&self) -> Result<u64, SafePathError> {
        nix::sys::stat::fstat(&self.fd)
            .map(|s| s.st_dev)
            .map_err(|e| io_error(&self.path, e))
    }
}

impl AsFd for OpenDir {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn io_error(path: &Path, e: Errno) -> SafePathError {
    SafePathError::Io {
        path: path.to_path_buf(),
        source: e.into(),
    }
}

/// Open directory `path`, which must lie below `root` (or be it), following
/// no symbolic link below `root`; with `create`, missing directories are
/// made (mode 0750). `root` itself is opened normally.
pub fn open_below(root: &Path, path: &Path, create: bool) -> Result<OpenDir, SafePathError> {
    let outside = || SafePathError::Outside {
        path: path.to_path_buf(),
        root: root.to_path_buf(),
    };
    let rest = path.strip_prefix(root).map_err(|_| outside())?;
    let dir_flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut fd = open(root, dir_flags, Mode::empty()).map_err(|e| match e {
        Errno::ENOTDIR => SafePathError::NotADirectory(root.to_path_buf()),
        e => io_error(root, e),
    })?;
    let mut at = root.to_path_buf();
    for c in rest.components() {
        let Component::Normal(name) = c else {
            return Err(outside());
        };
        at.push(name);
        fd = open_child(&fd, name, &at, create)?;
    }
    Ok(OpenDir { fd, path: at })
}

/// Open `name` in directory `dir` (reached as `at`) without following it.
fn open_child(
    dir: &OwnedFd,
    name: &std::ffi::OsStr,
    at: &Path,
    create: bool,
) -> Result<OwnedFd, SafePathError> {
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    // Two rounds at most: made here (or by a racing caller), then opened.
    for _ in 0..2 {
        match openat(dir, name, flags, Mode::empty()) {
            Ok(fd) => return Ok(fd),
            Err(Errno::ENOENT) if create => {
                match mkdirat(dir, name, Mode::from_bits_truncate(DIR_MODE)) {
                    Ok(()) | Err(Errno::EEXIST) => continue,
                    Err(e) => return Err(io_error(at, e)),
                }
            }
            // O_PATH|O_NOFOLLOW on a link gives ENOTDIR (ELOOP without
            // O_PATH); the entry itself tells which refusal to give.
            Err(Errno::ENOTDIR | Errno::ELOOP) => {
                let link = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).is_ok_and(|s| {
                    SFlag::from_bits_truncate(s.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK
                });
                return Err(if link {
                    SafePathError::Symlink(at.to_path_buf())
                } else {
                    SafePathError::NotADirectory(at.to_path_buf())
                });
            }
            Err(e) => return Err(io_error(at, e)),
        }
    }
    Err(io_error(at, Errno::ENOENT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn walks_and_makes_directories_below_the_root() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("pods/p/volumes/v/mount");
        let dir = open_below(root.path(), &path, true).unwrap();
        assert_eq!(dir.path(), path);
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.permissions().mode() & 0o777, 0o750);
        // The magic link names the same directory.
        assert_eq!(std::fs::read_link(dir.proc_path()).unwrap(), path);
        // Without `create`, a missing directory is an error; the root itself opens.
        let missing = root.path().join("pods/q");
        assert!(matches!(
            open_below(root.path(), &missing, false),
            Err(SafePathError::Io { .. })
        ));
        assert!(!missing.exists());
        assert!(open_below(root.path(), root.path(), false).is_ok());
        assert!(matches!(
            open_below(root.path(), Path::new("/etc"), true),
            Err(SafePathError::Outside { .. })
        ));
    }

    #[test]
    fn a_root_that_is_a_link_is_followed_but_no_component_below_it() {
        let real = tempfile::tempdir().unwrap();
        let links = tempfile::tempdir().unwrap();
        let root = links.path().join("kubelet");
        std::os::unix::fs::symlink(real.path(), &root).unwrap();
        open_below(&root, &root.join("pods/x"), true).unwrap();
        assert!(real.path().join("pods/x").is_dir());

        std::fs::write(real.path().join("file"), b"").unwrap();
        let e = open_below(&root, &root.join("file/x"), true).unwrap_err();
        assert!(matches!(e, SafePathError::NotADirectory(_)), "{e}");
    }

    /// A component swapped for a symlink after the early check (by path) is
    /// refused by the walk, nothing is made outside the root, and a mount
    /// through the walk's descriptor lands inside the root.
    #[test]
    fn a_symlink_swapped_in_below_the_root_is_refused_and_nothing_lands_outside() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let staging = root.path().join("plugins/staging/vol");
        std::fs::create_dir_all(root.path().join("plugins/staging")).unwrap();
        // The early check passes: no link yet.
        let checked = crate::csi::paths::check_path(
            "staging_target_path",
            staging.to_str().unwrap(),
            Some(root.path()),
        );
        assert!(checked.is_ok());
        // The swap: `staging` becomes a link out of the root.
        std::fs::remove_dir(root.path().join("plugins/staging")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("plugins/staging")).unwrap();
        let e = open_below(root.path(), &staging, true).unwrap_err();
        assert!(matches!(e, SafePathError::Symlink(_)), "{e}");
        assert!(e.to_string().contains("plugins/staging"), "{e}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        // The leaf itself as a link is refused as well.
        std::fs::remove_file(root.path().join("plugins/staging")).unwrap();
        std::fs::create_dir(root.path().join("plugins/staging")).unwrap();
        std::os::unix::fs::symlink(outside.path(), &staging).unwrap();
        let e = open_below(root.path(), &staging, true).unwrap_err();
        assert!(matches!(e, SafePathError::Symlink(_)), "{e}");
    }

    /// Mount points in /proc/self/mountinfo (field 5).
    pub(crate) fn mount_points() -> Vec<PathBuf> {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(PathBuf::from))
            .collect()
    }

    /// The race itself: the walk's descriptor is taken, then a component is
    /// swapped for a link out of the root; a tmpfs mounted through
    /// `/proc/self/fd/N` still lands on the directory that was walked.
    #[test]
    fn a_mount_through_the_descriptor_ignores_a_later_swap() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to mount");
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let dir = open_below(root.path(), &root.path().join("a/b"), true).unwrap();
        std::fs::rename(root.path().join("a"), root.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("a")).unwrap();
        std::fs::create_dir(outside.path().join("b")).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &dir.proc_path(),
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some("size=1m"),
        )
        .unwrap();
        let landed = root.path().join("moved/b");
        let points = mount_points();
        let unmounted = nix::mount::umount2(&landed, nix::mount::MntFlags::MNT_DETACH);
        assert!(points.contains(&landed), "{points:?}");
        assert!(!points.iter().any(|p| p.starts_with(outside.path())));
        unmounted.unwrap();
        assert!(!mount_points().contains(&landed));
    }
}
