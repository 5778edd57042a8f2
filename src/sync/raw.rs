//! One raw QUIC stream between two endpoints set up as sync endpoints are
//! (`bind_endpoint`): the link's best case, which `jax-csi bench rebuild`
//! puts beside a replica's fetch of the same bytes. Nothing is checked or
//! stored; the receiver counts bytes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use iroh::endpoint::Connection;
use iroh::protocol::{AcceptError, ProtocolHandler, Router};
use iroh::EndpointAddr;

use super::{bind_endpoint, SyncError};

const ALPN: &[u8] = b"/jax-csi/bench-raw/1";
const BLOCK: usize = 1 << 20;

/// Sends `bytes` on the first stream a connection opens.
#[derive(Debug, Clone)]
struct Sender {
    bytes: u64,
}

impl ProtocolHandler for Sender {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let Ok((mut send, mut recv)) = conn.accept_bi().await else {
            return Ok(());
        };
        let mut ask = [0u8; 1];
        let _ = recv.read(&mut ask).await;
        let block = vec![0x5a; BLOCK];
        let mut left = self.bytes;
        while left > 0 {
            let n = left.min(BLOCK as u64) as usize;
            if send.write_all(&block[..n]).await.is_err() {
                return Ok(());
            }
            left -= n as u64;
        }
        let _ = send.finish();
        let _ = send.stopped().await;
        Ok(())
    }
}

fn bench_err(why: impl std::fmt::Display) -> SyncError {
    SyncError::Peer {
        peer: "raw stream bench".into(),
        why: why.to_string(),
    }
}

/// Stream `bytes` from an endpoint on `from` to one on `to` (addresses
/// with port 0 pick one); the time from the request to the last byte.
pub async fn raw_stream(
    from: SocketAddr,
    to: SocketAddr,
    bytes: u64,
) -> Result<Duration, SyncError> {
    let sender = bind_endpoint(iroh::SecretKey::generate(), from, ALPN).await?;
    let receiver = bind_endpoint(iroh::SecretKey::generate(), to, ALPN).await?;
    let router = Router::builder(sender.clone())
        .accept(ALPN, Sender { bytes })
        .spawn();
    let mut addr = EndpointAddr::new(sender.id());
    for a in sender.bound_sockets().into_iter().filter(|a| a.is_ipv4()) {
        addr = addr.with_ip_addr(a);
    }
    let started = Instant::now();
    let conn = receiver.connect(addr, ALPN).await.map_err(bench_err)?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(bench_err)?;
    send.write_all(&[1]).await.map_err(bench_err)?;
    send.finish().map_err(bench_err)?;
    let mut buf = vec![0u8; BLOCK];
    let mut got = 0u64;
    while let Some(n) = recv.read(&mut buf).await.map_err(bench_err)? {
        got += n as u64;
    }
    let took = started.elapsed();
    if got != bytes {
        return Err(bench_err(format!("received {got} of {bytes} bytes")));
    }
    conn.close(0u32.into(), b"done");
    let _ = router.shutdown().await;
    receiver.close().await;
    Ok(took)
}
