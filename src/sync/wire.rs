//! Reading and writing protocol messages on QUIC streams, with size caps.

use iroh::endpoint::{RecvStream, SendStream};
use serde::{Deserialize, Serialize};

use super::proto::{frame, WireError};

/// Write one length-prefixed message.
pub async fn write_msg<T: Serialize>(send: &mut SendStream, msg: &T) -> Result<(), WireError> {
    send.write_all(&frame(msg))
        .await
        .map_err(|e| WireError::Stream(e.to_string()))
}

/// Read one length-prefixed message of at most
/// [`MAX_MESSAGE`](super::proto::MAX_MESSAGE) bytes;
/// `None` when the stream ended cleanly before it.
pub async fn read_msg<T: for<'de> Deserialize<'de>>(
    recv: &mut RecvStream,
) -> Result<Option<T>, WireError> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(iroh::endpoint::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(WireError::Stream(e.to_string())),
    }
    let len = super::proto::body_len(len)?;
    let body = read_bytes(recv, len).await?;
    super::proto::decode(&body).map(Some)
}

/// What is read at once: an announced length is never allocated ahead of
/// the bytes that fill it.
const PIECE: usize = 64 << 10;

/// Read exactly `len` bytes (a blob after its frame, a message body), in
/// pieces: the buffer grows with what arrived, not with what the length
/// prefix announced.
pub async fn read_bytes(recv: &mut RecvStream, len: usize) -> Result<Vec<u8>, WireError> {
    let mut buf = Vec::with_capacity(len.min(PIECE));
    while buf.len() < len {
        let start = buf.len();
        buf.resize(start + (len - start).min(PIECE), 0);
        recv.read_exact(&mut buf[start..])
            .await
            .map_err(|e| WireError::Stream(e.to_string()))?;
    }
    Ok(buf)
}
