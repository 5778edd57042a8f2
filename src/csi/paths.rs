//! The paths kubelet hands the node service: checked before anything is
//! created or mounted. A path must be absolute, clean (no `.`, `..` or empty
//! components), of a sane length, and under `--kubelet-dir` when it is set,
//! so a request cannot make the plugin mount over an arbitrary host path.
//! Below the kubelet dir no existing component may be a symbolic link (the
//! kernel would follow it out), and the node's own state dir is off limits.

use std::path::{Component, Path, PathBuf};

use tonic::Status;

use super::status::shown;

/// Longest path accepted, as Linux's PATH_MAX.
const PATH_MAX: usize = 4096;

/// Check `value` (request field `field`) and return it as a path.
pub fn check_path(field: &str, value: &str, kubelet_dir: Option<&Path>) -> Result<PathBuf, Status> {
    let bad = |why: &str| Status::invalid_argument(format!("{field} {}: {why}", shown(value)));
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    if value.len() > PATH_MAX {
        return Err(bad("longer than 4096 bytes"));
    }
    if value.contains('\0') {
        return Err(bad("contains NUL"));
    }
    if !value.starts_with('/') {
        return Err(bad("must be an absolute path"));
    }
    let trimmed = value.trim_end_matches('/');
    if trimmed
        .split('/')
        .skip(1)
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(bad("must be clean (no '.', '..' or empty components)"));
    }
    let path = PathBuf::from(if trimmed.is_empty() { "/" } else { trimmed });
    if let Some(root) = kubelet_dir {
        let inside = path.starts_with(root)
            && path != root
            && path
                .components()
                .all(|c| !matches!(c, Component::ParentDir));
        if !inside {
            return Err(bad(&format!(
                "must be under the kubelet directory {}",
                root.display()
            )));
        }
        if let Some(link) = symlink_below(root, &path) {
            return Err(bad(&format!(
                "{} is a symbolic link (paths under the kubelet directory must not go through one)",
                link.display()
            )));
        }
    }
    Ok(path)
}

/// The first existing component of `path` below `root` that is a symbolic
/// link, if any (components that do not exist yet cannot be one).
fn symlink_below(root: &Path, path: &Path) -> Option<PathBuf> {
    let mut at = root.to_path_buf();
    for c in path.strip_prefix(root).ok()?.components() {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => return Some(at),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

/// Refuse `path` (request field `field`) when it is `protected` (`what`),
/// lies inside it or contains it: a mount there would cover it.
pub fn check_apart(field: &str, path: &Path, protected: &Path, what: &str) -> Result<(), Status> {
    if path.starts_with(protected) || protected.starts_with(path) {
        return Err(Status::invalid_argument(format!(
            "{field} {}: overlaps {what} {}",
            path.display(),
            protected.display()
        )));
    }
    Ok(())
}

/// FAILED_PRECONDITION when `path` exists and is not a directory, or a
/// component of it is not one (nothing could be mounted there).
pub fn check_directory_or_absent(field: &str, path: &Path) -> Result<(), Status> {
    let not_dir =
        || Status::failed_precondition(format!("{field} {}: not a directory", path.display()));
    match std::fs::metadata(path) {
        Ok(m) if !m.is_dir() => Err(not_dir()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Err(not_dir()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_clean_absolute_paths_under_the_kubelet_dir() {
        let k = Some(Path::new("/var/lib/kubelet"));
        let ok = "/var/lib/kubelet/pods/p/volumes/kubernetes.io~csi/v/mount";
        assert_eq!(check_path("target_path", ok, k).unwrap(), PathBuf::from(ok));
        assert!(check_path("x", "/var/lib/kubelet/pods/p/", k).is_ok());
        for bad in [
            "",
            "relative/path",
            "/var/lib/kubelet/../../etc",
            "/var/lib/kubelet/pods/./x",
            "/var/lib/kubelet//pods",
            "/etc/passwd",
            "/var/lib/kubeletx/pods",
            "/var/lib/kubelet",
            "/var/lib/kubelet/a\0b",
        ] {
            let e = check_path("target_path", bad, k).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
        assert!(check_path("x", &format!("/{}", "a".repeat(5000)), None).is_err());
        assert!(check_path("x", "/anywhere/at/all", None).is_ok());
        let long = check_path("x", &format!("/{}", "a".repeat(1 << 20)), None).unwrap_err();
        assert!(long.message().len() < 200, "a huge path is not echoed");
    }

    #[test]
    fn symlinks_below_the_kubelet_dir_and_the_state_dir_are_refused() {
        let k = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(out.path(), k.path().join("out")).unwrap();
        std::fs::create_dir(k.path().join("pods")).unwrap();
        let root = Some(k.path());
        let at = |rel: &str| k.path().join(rel).display().to_string();
        assert!(check_path("t", &at("pods/x/y"), root).is_ok());
        for bad in ["out", "out/x", "out/x/y"] {
            let e = check_path("target_path", &at(bad), root).unwrap_err();
            assert!(e.message().contains("symbolic link"), "{bad}: {e:?}");
        }
        let state = k.path().join("state");
        for bad in ["state", "state/x"] {
            assert!(check_apart("t", &k.path().join(bad), &state, "the state dir").is_err());
        }
        assert!(check_apart("t", k.path(), &state, "the state dir").is_err());
        assert!(check_apart("t", &k.path().join("pods"), &state, "the state dir").is_ok());
    }
}
