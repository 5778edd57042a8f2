//! The fd-keeper: a tiny process that holds, for each mounted volume, one
//! clone of its /dev/fuse descriptor and never reads from it. While it
//! holds one, the kernel keeps the connection (and the pods' mounts, open
//! files and working directories in it) alive when the node plugin exits
//! or crashes; requests queue until a successor resumes serving them from
//! a clone of the kept descriptor. It rarely changes, so it is not
//! restarted when the node plugin is upgraded (its own DaemonSet, or its
//! own process under `local up`).
//!
//! Protocol `jax-csi fd-keeper v1`: a SOCK_SEQPACKET unix socket, one
//! connection per request, one JSON message each way (`"v": 1`). A
//! descriptor travels with a `keep` request and with a `get` reply
//! (SCM_RIGHTS). Requests: `keep {volume, connection}` (replaces an entry),
//! `get {volume}`, `drop {volume}`, `list`. Entries whose connection the
//! kernel ended are pruned on every request.

use std::collections::BTreeMap;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{
    self, AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
    SockType, UnixAddr,
};
use serde::{Deserialize, Serialize};

/// The protocol version every message carries.
pub const KEEPER_PROTOCOL: u32 = 1;
/// Largest message (a `list` of a thousand volumes is about 80 KiB).
const MAX_MESSAGE: usize = 256 * 1024;
/// A client that stalls mid-request is dropped after this long.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    #[error("fd-keeper at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("fd-keeper at {path} answered: {message}")]
    Refused { path: PathBuf, message: String },
    #[error("fd-keeper at {path}: malformed message: {message}")]
    Protocol { path: PathBuf, message: String },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Keep the descriptor sent with this message for `volume`.
    Keep {
        volume: String,
        connection: u32,
    },
    /// Send a duplicate of the descriptor kept for `volume`.
    Get {
        volume: String,
    },
    /// Close the descriptor kept for `volume` (it is being unmounted).
    Drop {
        volume: String,
    },
    List,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Envelope<T> {
    v: u32,
    #[serde(flatten)]
    body: T,
}

/// One kept descriptor: the volume and the kernel's connection number.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Kept {
    pub volume: String,
    pub connection: u32,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Reply {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    kept: Vec<Kept>,
}

/// Talks to an fd-keeper at a socket path.
#[derive(Clone, Debug)]
pub struct KeeperClient {
    path: PathBuf,
}

impl KeeperClient {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hand the keeper a descriptor of `volume`'s connection to hold.
    pub fn keep(
        &self,
        volume: &str,
        connection: u32,
        fd: BorrowedFd<'_>,
    ) -> Result<(), KeeperError> {
        let req = Request::Keep {
            volume: volume.into(),
            connection,
        };
        self.call(&req, Some(fd)).map(|_| ())
    }

    /// A duplicate of the descriptor kept for `volume`, with its connection.
    pub fn get(&self, volume: &str) -> Result<Option<(Kept, OwnedFd)>, KeeperError> {
        let req = Request::Get {
            volume: volume.into(),
        };
        let (reply, fd) = self.call(&req, None)?;
        Ok(match (reply.kept.into_iter().next(), fd) {
            (Some(kept), Some(fd)) => Some((kept, fd)),
            _ => None,
        })
    }

    pub fn drop_volume(&self, volume: &str) -> Result<(), KeeperError> {
        let req = Request::Drop {
            volume: volume.into(),
        };
        self.call(&req, None).map(|_| ())
    }

    pub fn list(&self) -> Result<Vec<Kept>, KeeperError> {
        Ok(self.call(&Request::List, None)?.0.kept)
    }

    fn call(
        &self,
        req: &Request,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(Reply, Option<OwnedFd>), KeeperError> {
        let io = |source: std::io::Error| KeeperError::Io {
            path: self.path.clone(),
            source,
        };
        let sock = connect(&self.path).map_err(io)?;
        let body = serde_json::to_vec(&Envelope {
            v: KEEPER_PROTOCOL,
            body: req.clone(),
        })
        .expect("requests serialize");
        send(sock.as_fd(), &body, fd).map_err(io)?;
        let (bytes, fd) = receive(sock.as_fd()).map_err(io)?;
        let reply: Envelope<Reply> =
            serde_json::from_slice(&bytes).map_err(|e| KeeperError::Protocol {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
        if reply.v != KEEPER_PROTOCOL {
            return Err(KeeperError::Protocol {
                path: self.path.clone(),
                message: format!(
                    "protocol version {} (this node speaks {KEEPER_PROTOCOL})",
                    reply.v
                ),
            });
        }
        if !reply.body.ok {
            return Err(KeeperError::Refused {
                path: self.path.clone(),
                message: reply.body.error.unwrap_or_default(),
            });
        }
        Ok((reply.body, fd))
    }
}

/// Serve the keeper on `path` until the process is stopped. Requests are
/// served one at a time: each is a few microseconds of work.
pub fn serve(path: &Path) -> std::io::Result<()> {
    let listener = listen(path)?;
    tracing::info!(socket = %path.display(), "fd-keeper ready");
    let mut kept: BTreeMap<String, (u32, OwnedFd)> = BTreeMap::new();
    loop {
        let conn = match socket::accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
            // SAFETY: accept4 returned a new descriptor that nothing else owns.
            Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        if let Err(why) = peer_allowed(conn.as_fd()) {
            tracing::warn!(reason = %why, "fd-keeper request refused");
            let _ = set_timeouts(conn.as_fd()).and_then(|()| receive(conn.as_fd()));
            let _ = send_reply(conn.as_fd(), refuse(why), None);
            continue;
        }
        if let Err(e) = serve_one(conn.as_fd(), &mut kept) {
            tracing::warn!(error = %e, "fd-keeper request failed");
        }
    }
}

/// Only a process of the keeper's own user (root: the node plugin) is
/// served, whatever the socket file's mode says: the kernel's credentials
/// of the peer (SO_PEERCRED) decide. A root of a user namespace (a
/// container mapped to another host user) that reaches the socket through
/// a hostPath is not root here, and is refused. A host root needs no
/// keeper to take a descriptor (it can open /proc/PID/fd of the plugin),
/// so this is the bound the socket can keep.
fn peer_allowed(conn: BorrowedFd<'_>) -> Result<(), String> {
    let cred = socket::getsockopt(&conn, socket::sockopt::PeerCredentials)
        .map_err(|e| format!("the peer's credentials cannot be read: {e}"))?;
    let me = nix::unistd::geteuid().as_raw();
    if cred.uid() != me {
        return Err(format!(
            "process {} runs as uid {}, not as this keeper's uid {me}",
            cred.pid(),
            cred.uid()
        ));
    }
    Ok(())
}

fn serve_one(
    conn: BorrowedFd<'_>,
    kept: &mut BTreeMap<String, (u32, OwnedFd)>,
) -> std::io::Result<()> {
    set_timeouts(conn)?;
    let (bytes, fd) = receive(conn)?;
    prune_ended(kept);
    let mut reply = Reply {
        ok: true,
        ..Default::default()
    };
    let mut send_fd = None;
    match serde_json::from_slice::<Envelope<Request>>(&bytes) {
        Err(e) => {
            reply = refuse(format!("malformed request: {e}"));
        }
        Ok(env) if env.v != KEEPER_PROTOCOL => {
            reply = refuse(format!(
                "protocol version {} (this keeper speaks {KEEPER_PROTOCOL})",
                env.v
            ));
        }
        Ok(env) => match env.body {
            Request::Keep { volume, connection } => match fd {
                Some(fd) => {
                    tracing::info!(volume, connection, "keeping a FUSE connection");
                    kept.insert(volume, (connection, fd));
                }
                None => reply = refuse("keep: no descriptor came with the request".into()),
            },
            Request::Get { volume } => {
                if let Some((connection, fd)) = kept.get(&volume) {
                    send_fd = Some(fd.as_fd());
                    reply.kept.push(Kept {
                        volume,
                        connection: *connection,
                    });
                }
            }
            Request::Drop { volume } => {
                if kept.remove(&volume).is_some() {
                    tracing::info!(volume, "released a FUSE connection");
                }
            }
            Request::List => {
                reply.kept = kept
                    .iter()
                    .map(|(volume, (connection, _))| Kept {
                        volume: volume.clone(),
                        connection: *connection,
                    })
                    .collect();
            }
        },
    }
    send_reply(conn, reply, send_fd)
}

/// Send `reply` (with the descriptor `fd`, if any) in its envelope.
fn send_reply(
    conn: BorrowedFd<'_>,
    reply: Reply,
    fd: Option<BorrowedFd<'_>>,
) -> std::io::Result<()> {
    let body = serde_json::to_vec(&Envelope {
        v: KEEPER_PROTOCOL,
        body: reply,
    })
    .expect("replies serialize");
    send(conn, &body, fd)
}

fn refuse(error: String) -> Reply {
    Reply {
        ok: false,
        error: Some(error),
        kept: Vec::new(),
    }
}

/// Forget descriptors whose connection the kernel ended (the volume was
/// unmounted or aborted): /dev/fuse then polls as an error.
fn prune_ended(kept: &mut BTreeMap<String, (u32, OwnedFd)>) {
    kept.retain(|volume, (connection, fd)| {
        let alive = connection_alive(fd.as_fd());
        if !alive {
            tracing::info!(
                volume,
                connection = *connection,
                "dropping an ended FUSE connection"
            );
        }
        alive
    });
}

/// False once the kernel ended the connection of a /dev/fuse descriptor.
pub fn connection_alive(fd: BorrowedFd<'_>) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    !(n > 0 && p.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0)
}

fn listen(path: &Path) -> std::io::Result<OwnedFd> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let fd = seqpacket()?;
    socket::bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    // Only root (the node plugin) may hand over or take descriptors.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    socket::listen(&fd, Backlog::new(64)?)?;
    Ok(fd)
}

/// A new unix SOCK_SEQPACKET socket (the protocol's transport).
fn seqpacket() -> std::io::Result<OwnedFd> {
    Ok(socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

fn connect(path: &Path) -> std::io::Result<OwnedFd> {
    let fd = seqpacket()?;
    socket::connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    set_timeouts(fd.as_fd())?;
    Ok(fd)
}

fn set_timeouts(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    let tv = nix::sys::time::TimeVal::new(IO_TIMEOUT.as_secs() as _, 0);
    socket::setsockopt(&fd, socket::sockopt::ReceiveTimeout, &tv)?;
    socket::setsockopt(&fd, socket::sockopt::SendTimeout, &tv)?;
    Ok(())
}

fn send(sock: BorrowedFd<'_>, body: &[u8], fd: Option<BorrowedFd<'_>>) -> std::io::Result<()> {
    let fds: Vec<RawFd> = fd.iter().map(|f| f.as_raw_fd()).collect();
    let cmsgs: Vec<ControlMessage<'_>> = if fds.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&fds)]
    };
    socket::sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(body)],
        &cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    Ok(())
}

fn receive(sock: BorrowedFd<'_>) -> std::io::Result<(Vec<u8>, Option<OwnedFd>)> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let (len, truncated, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = socket::recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(received) = c {
                // SAFETY: descriptors the kernel just installed for us.
                fds.extend(
                    received
                        .into_iter()
                        .map(|f| unsafe { OwnedFd::from_raw_fd(f) }),
                );
            }
        }
        let truncated = msg
            .flags
            .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
        (msg.bytes, truncated, fds)
    };
    if truncated {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "message larger than the protocol allows",
        ));
    }
    if len == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the peer closed the connection",
        ));
    }
    buf.truncate(len);
    let mut fds = fds.into_iter();
    let fd = fds.next();
    Ok((buf, fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A keeper serving `dir/keeper.sock` on a thread, and a client that
    /// it answered.
    fn keeper_in(dir: &Path) -> (PathBuf, KeeperClient) {
        let path = dir.join("keeper.sock");
        let server_path = path.clone();
        std::thread::spawn(move || serve(&server_path));
        let client = KeeperClient::new(&path);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while client.list().is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "keeper never answered"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        (path, client)
    }

    /// Keep, list, get (a duplicate of the same open file) and drop over a
    /// real socket, with a pipe standing in for /dev/fuse.
    #[test]
    fn keeps_lists_gets_and_drops_descriptors() {
        let dir = tempfile::tempdir().unwrap();
        let (_, client) = keeper_in(dir.path());
        let (read, write) = nix::unistd::pipe().unwrap();
        client.keep("vol-a", 42, read.as_fd()).unwrap();
        drop(read);
        assert_eq!(
            client.list().unwrap(),
            vec![Kept {
                volume: "vol-a".into(),
                connection: 42
            }]
        );
        let (kept, fd) = client.get("vol-a").unwrap().expect("kept");
        assert_eq!(kept.connection, 42);
        nix::unistd::write(&write, b"x").unwrap();
        let mut b = [0u8; 1];
        nix::unistd::read(&fd, &mut b).unwrap();
        assert_eq!(&b, b"x", "the descriptor is the same pipe");
        assert!(client.get("vol-b").unwrap().is_none());
        client.drop_volume("vol-a").unwrap();
        assert!(client.list().unwrap().is_empty());
    }

    /// #26 finding 8: the socket's file mode is not the only guard. With
    /// the socket opened to everyone, a process of another user that
    /// connects is refused by its kernel credentials and gets nothing.
    #[test]
    fn a_process_of_another_user_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to run a client as another user");
            return;
        }
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let (path, client) = keeper_in(dir.path());
        let (read, _write) = nix::unistd::pipe().unwrap();
        client.keep("vol-a", 42, read.as_fd()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let script = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect(sys.argv[1])
s.send(b'{"v":1,"op":"get","volume":"vol-a"}')
msg, anc, flags, addr = s.recvmsg(65536, socket.CMSG_SPACE(4))
print(msg.decode(), "fds" if anc else "no-fds")
"#;
        let out = std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(&path)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{said} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(said.contains(r#""ok":false"#), "{said}");
        assert!(said.contains("not as this keeper's uid"), "{said}");
        assert!(
            said.contains("no-fds"),
            "a descriptor went to another user: {said}"
        );
        // The keeper's own user is still served.
        assert_eq!(client.list().unwrap().len(), 1);
    }
}
