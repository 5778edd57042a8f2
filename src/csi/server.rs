//! Serving CSI over a unix socket, and connecting to one (sidecars, tests,
//! `jax-csi local`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tonic::transport::{Channel, Endpoint, Uri};

/// Accept `unix:///abs/path`, `unix://rel` or a bare path.
pub fn parse_endpoint(endpoint: &str) -> anyhow::Result<PathBuf> {
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .unwrap_or(endpoint);
    if path.is_empty() {
        bail!("endpoint {endpoint:?} names no socket path");
    }
    if endpoint.contains("://") && !endpoint.starts_with("unix://") {
        bail!("endpoint {endpoint:?}: only unix sockets are supported");
    }
    if path.len() >= 108 {
        bail!("socket path {path:?} is longer than the 107 bytes a unix socket allows");
    }
    Ok(PathBuf::from(path))
}

/// Bind the socket: a stale socket file is removed, a live one (another
/// process answering) is an error. The socket is made mode 0700.
pub async fn bind_unix(path: &Path) -> anyhow::Result<UnixListener> {
    bind_unix_for_group(path, None).await
}

/// [`bind_unix`], and with `group` the socket is given to that group with
/// mode 0660: a sidecar (the liveness probe) then connects as a non-root
/// user of that group, while every other non-root user is still refused.
pub async fn bind_unix_for_group(path: &Path, group: Option<u32>) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            bail!("another process is already serving on {}", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
        tracing::info!(socket = %path.display(), "removed a stale socket file");
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    let mode = match group {
        Some(gid) => {
            std::os::unix::fs::chown(path, None, Some(gid))
                .with_context(|| format!("chgrp {gid} {}", path.display()))?;
            0o660
        }
        None => 0o700,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(listener)
}

/// The connections of a bound socket, each behind the `:authority` fixer
/// (see `authority.rs`), ready for `serve_with_incoming`.
pub fn incoming(
    listener: UnixListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<super::authority::FixAuthority<UnixStream>>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::UnixListenerStream::new(listener)
        .map(|conn| conn.map(super::authority::FixAuthority::new))
}

/// A gRPC channel over a unix socket, as kubelet and the sidecars use.
pub async fn connect_unix(path: &Path) -> anyhow::Result<Channel> {
    let path = path.to_path_buf();
    let channel = Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
        .context("connecting to the CSI socket")?;
    Ok(channel)
}

/// Resolves when SIGINT or SIGTERM arrives.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("unix:///run/csi.sock").unwrap(),
            PathBuf::from("/run/csi.sock")
        );
        assert_eq!(
            parse_endpoint("/run/csi.sock").unwrap(),
            PathBuf::from("/run/csi.sock")
        );
        assert!(parse_endpoint("tcp://1.2.3.4:5").is_err());
        assert!(parse_endpoint("unix://").is_err());
        assert!(parse_endpoint(&format!("/{}", "x".repeat(120))).is_err());
    }

    #[tokio::test]
    async fn sockets_are_root_only_unless_given_to_a_group() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
        let _a = bind_unix(&a).await.unwrap();
        let _b = bind_unix_for_group(&b, Some(65532)).await.unwrap();
        let (ma, mb) = (
            std::fs::metadata(&a).unwrap(),
            std::fs::metadata(&b).unwrap(),
        );
        assert_eq!(ma.mode() & 0o777, 0o700);
        assert_eq!((mb.mode() & 0o777, mb.gid()), (0o660, 65532));
    }
}
