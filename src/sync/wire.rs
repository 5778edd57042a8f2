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
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| WireError::Stream(e.to_string()))?;
    super::proto::decode(&body).map(Some)
}

/// Read exactly `len` bytes (a blob after its frame).
pub async fn read_bytes(recv: &mut RecvStream, len: usize) -> Result<Vec<u8>, WireError> {
    let mut buf = vec![0u8; len];
    recv.read_exact(&mut buf)
        .await
        .map_err(|e| WireError::Stream(e.to_string()))?;
    Ok(buf)
}
