//! The paths kubelet hands the node service: checked before anything is
//! created or mounted. A path must be absolute, clean (no `.`, `..` or empty
//! components), of a sane length, and under `--kubelet-dir` when it is set,
//! so a request cannot make the plugin mount over an arbitrary host path.

use std::path::{Component, Path, PathBuf};

use tonic::Status;

/// Longest path accepted, as Linux's PATH_MAX.
const PATH_MAX: usize = 4096;

/// Check `value` (request field `field`) and return it as a path.
pub fn check_path(field: &str, value: &str, kubelet_dir: Option<&Path>) -> Result<PathBuf, Status> {
    let bad = |why: &str| Status::invalid_argument(format!("{field} {value:?}: {why}"));
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
    }
    Ok(path)
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
    }
}
