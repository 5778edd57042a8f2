//! Accepting every gRPC client of the CSI sockets.
//!
//! gRPC clients of the C-core family (Python `grpcio`, Ruby, C++) send the
//! percent-encoded socket path as the HTTP/2 `:authority` of a unix-socket
//! call (`tmp%2Fx%2Fcsi.sock`). The `http` crate under h2 accepts `%` only in
//! userinfo, so h2 answers RST_STREAM(PROTOCOL_ERROR) and every such client
//! fails. Go clients (kubelet, the sidecars) send `localhost` and are not
//! affected.
//!
//! [`FixAuthority`] sits between the socket and the server and reads the
//! client's HTTP/2 frames. Header blocks are decoded (HPACK, keeping the
//! decoder's state in step with the client's encoder) and passed on
//! unchanged, until one carries an `:authority` that h2 would refuse: from
//! then on every header block of the connection is re-encoded as plain
//! literals (no Huffman, no table), with such an authority replaced by
//! `localhost`. The server's decoder then never needs the dynamic table the
//! client's encoder filled, so the two stay consistent. Frames other than
//! HEADERS and CONTINUATION, and everything the server sends, pass through
//! untouched. On anything it cannot parse it stops interfering and passes
//! bytes through as they are.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE_LEN: usize = 24;
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The frame size every HTTP/2 peer accepts (SETTINGS_MAX_FRAME_SIZE's floor).
const MAX_FRAME: usize = 16_384;
/// A header block larger than this is not a CSI request: passed on as is.
const MAX_BLOCK: usize = 1 << 20;

/// A connection whose client `:authority` is made acceptable to h2.
pub struct FixAuthority<T> {
    inner: T,
    fix: Fixer,
}

impl<T> FixAuthority<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            fix: Fixer::default(),
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

/// A header block being collected (HEADERS then CONTINUATION frames).
struct Block {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    /// The frames as received, to pass on when nothing is rewritten.
    raw: Vec<u8>,
}

#[derive(Default)]
struct Fixer {
    input: Vec<u8>,
    output: Vec<u8>,
    sent: usize,
    preface_seen: bool,
    decoder: fluke_hpack::Decoder<'static>,
    rewriting: bool,
    block: Option<Block>,
    /// Gave up (unparseable input): bytes pass through as they are.
    passthrough: bool,
}

/// An authority h2 accepts.
fn acceptable(authority: &[u8]) -> bool {
    !authority.contains(&b'%') && http::uri::Authority::try_from(authority).is_ok()
}

fn frame_header(len: usize, kind: u8, flags: u8, stream: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
}

/// HPACK integer with an `n`-bit prefix whose other bits are `first`.
fn hpack_int(value: usize, n: u32, first: u8, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// A header block of literals without indexing (no Huffman): decodable
/// with an empty dynamic table.
fn encode_literals(headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.push(0x00);
        hpack_int(name.len(), 7, 0, &mut out);
        out.extend_from_slice(name);
        hpack_int(value.len(), 7, 0, &mut out);
        out.extend_from_slice(value);
    }
    out
}

impl Fixer {
    /// Take in bytes the client sent; frames that are complete move to the output.
    fn feed(&mut self, bytes: &[u8]) {
        if self.passthrough {
            self.output.extend_from_slice(bytes);
            return;
        }
        self.input.extend_from_slice(bytes);
        if !self.preface_seen {
            if self.input.len() < PREFACE_LEN {
                return;
            }
            self.output.extend(self.input.drain(..PREFACE_LEN));
            self.preface_seen = true;
        }
        while self.input.len() >= FRAME_HEADER {
            let len = u32::from_be_bytes([0, self.input[0], self.input[1], self.input[2]]) as usize;
            if self.input.len() < FRAME_HEADER + len {
                return;
            }
            let frame: Vec<u8> = self.input.drain(..FRAME_HEADER + len).collect();
            self.frame(frame);
            if self.passthrough {
                let rest = std::mem::take(&mut self.input);
                self.output.extend(rest);
                return;
            }
        }
    }

    fn give_up(&mut self, why: &str) {
        tracing::debug!(
            why,
            "HTTP/2 authority fixer steps aside for this connection"
        );
        if let Some(b) = self.block.take() {
            self.output.extend(b.raw);
        }
        self.passthrough = true;
    }

    fn frame(&mut self, frame: Vec<u8>) {
        let (kind, flags) = (frame[3], frame[4]);
        let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[FRAME_HEADER..];
        match kind {
            HEADERS => {
                if self.block.is_some() {
                    self.output.extend_from_slice(&frame);
                    return self.give_up("HEADERS inside a header block");
                }
                let mut body = payload;
                let mut pad = 0;
                if flags & PADDED != 0 {
                    let Some((&p, rest)) = body.split_first() else {
                        self.output.extend_from_slice(&frame);
                        return self.give_up("short padded HEADERS");
                    };
                    pad = p as usize;
                    body = rest;
                }
                let mut priority = None;
                if flags & PRIORITY != 0 {
                    if body.len() < 5 {
                        self.output.extend_from_slice(&frame);
                        return self.give_up("short HEADERS priority");
                    }
                    priority = Some(body[..5].try_into().expect("5 bytes"));
                    body = &body[5..];
                }
                if pad > body.len() {
                    self.output.extend_from_slice(&frame);
                    return self.give_up("padding past the frame");
                }
                self.block = Some(Block {
                    stream,
                    end_stream: flags & END_STREAM != 0,
                    priority,
                    fragment: body[..body.len() - pad].to_vec(),
                    raw: frame.clone(),
                });
            }
            CONTINUATION => match &mut self.block {
                Some(b) if b.stream == stream && b.fragment.len() + payload.len() <= MAX_BLOCK => {
                    b.fragment.extend_from_slice(payload);
                    b.raw.extend_from_slice(&frame);
                }
                _ => {
                    self.output.extend_from_slice(&frame);
                    return self.give_up("unexpected CONTINUATION");
                }
            },
            _ => {
                if self.block.is_some() {
                    self.output.extend_from_slice(&frame);
                    return self.give_up("a frame inside a header block");
                }
                self.output.extend_from_slice(&frame);
                return;
            }
        }
        if flags & END_HEADERS != 0 {
            let block = self.block.take().expect("collected above");
            self.finish(block);
        }
    }

    fn finish(&mut self, block: Block) {
        let mut headers = Vec::new();
        if self
            .decoder
            .decode_with_cb(&block.fragment, |n, v| {
                headers.push((n.into_owned(), v.into_owned()))
            })
            .is_err()
        {
            self.output.extend(block.raw);
            return self.give_up("header block does not decode");
        }
        let bad = headers
            .iter()
            .any(|(n, v)| n.as_slice() == b":authority" && !acceptable(v));
        if bad && !self.rewriting {
            tracing::debug!("client sent an :authority h2 refuses (a C-core gRPC client on a unix socket); rewriting this connection's headers");
            self.rewriting = true;
        }
        if !self.rewriting {
            self.output.extend(block.raw);
            return;
        }
        for (n, v) in &mut headers {
            if n.as_slice() == b":authority" && !acceptable(v) {
                *v = b"localhost".to_vec();
            }
        }
        let mut encoded = encode_literals(&headers);
        let mut first = Vec::new();
        let mut flags = 0;
        if block.end_stream {
            flags |= END_STREAM;
        }
        if let Some(p) = block.priority {
            flags |= PRIORITY;
            first.extend_from_slice(&p);
        }
        let room = MAX_FRAME - first.len();
        let rest = if encoded.len() > room {
            encoded.split_off(room)
        } else {
            Vec::new()
        };
        first.extend_from_slice(&encoded);
        let chunks: Vec<&[u8]> = rest.chunks(MAX_FRAME).collect();
        if chunks.is_empty() {
            flags |= END_HEADERS;
        }
        frame_header(first.len(), HEADERS, flags, block.stream, &mut self.output);
        self.output.extend_from_slice(&first);
        for (i, c) in chunks.iter().enumerate() {
            let f = if i + 1 == chunks.len() {
                END_HEADERS
            } else {
                0
            };
            frame_header(c.len(), CONTINUATION, f, block.stream, &mut self.output);
            self.output.extend_from_slice(c);
        }
    }

    /// Input that never formed a frame (the client closed): passed on.
    fn flush_at_eof(&mut self) {
        if let Some(b) = self.block.take() {
            self.output.extend(b.raw);
        }
        let rest = std::mem::take(&mut self.input);
        self.output.extend(rest);
    }

    fn pending(&self) -> &[u8] {
        &self.output[self.sent..]
    }

    fn consume(&mut self, n: usize) {
        self.sent += n;
        if self.sent == self.output.len() {
            self.output.clear();
            self.sent = 0;
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FixAuthority<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        loop {
            let pending = this.fix.pending();
            if !pending.is_empty() {
                let n = pending.len().min(buf.remaining());
                buf.put_slice(&pending[..n]);
                this.fix.consume(n);
                return Poll::Ready(Ok(()));
            }
            let mut tmp = [0u8; 16 * 1024];
            let mut rb = ReadBuf::new(&mut tmp);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    this.fix.flush_at_eof();
                    if this.fix.pending().is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Ready(Ok(())) => {
                    let got = rb.filled().to_vec();
                    this.fix.feed(&got);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FixAuthority<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected
    for FixAuthority<T>
{
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_frame(block: &[u8], flags: u8, stream: u32) -> Vec<u8> {
        let mut f = Vec::new();
        frame_header(block.len(), HEADERS, flags, stream, &mut f);
        f.extend_from_slice(block);
        f
    }

    fn decode_all(bytes: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut d = fluke_hpack::Decoder::new();
        let mut out = Vec::new();
        let mut rest = &bytes[PREFACE_LEN..];
        while rest.len() >= FRAME_HEADER {
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            let (frame, tail) = rest.split_at(FRAME_HEADER + len);
            if frame[3] == HEADERS {
                out.push(d.decode(&frame[FRAME_HEADER..]).unwrap());
            }
            rest = tail;
        }
        out
    }

    /// A block from a (dynamic-table-using) encoder with a percent-encoded
    /// authority comes out decodable, with `localhost`, and a later block
    /// that leans on the client's dynamic table still decodes right.
    #[test]
    fn percent_authorities_become_localhost_and_state_stays_consistent() {
        let mut enc = fluke_hpack::Encoder::new();
        let h1: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":authority", b"tmp%2Fx%2Fcsi.sock"),
            (b":path", b"/csi.v1.Identity/Probe"),
            (b"te", b"trailers"),
        ];
        let b1 = enc.encode(h1.iter().copied());
        let b2 = enc.encode(h1.iter().copied());
        let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        wire.extend(headers_frame(&b1, END_HEADERS, 1));
        wire.extend(headers_frame(&b2, END_HEADERS | END_STREAM, 3));
        let mut fix = Fixer::default();
        // Fed in awkward pieces, as a socket delivers them.
        for piece in wire.chunks(7) {
            fix.feed(piece);
        }
        let blocks = decode_all(fix.pending());
        assert_eq!(blocks.len(), 2);
        for b in &blocks {
            let auth = b
                .iter()
                .find(|(n, _)| n.as_slice() == b":authority")
                .unwrap();
            assert_eq!(auth.1, b"localhost");
            assert!(b.iter().any(
                |(n, v)| n.as_slice() == b":path" && v.as_slice() == b"/csi.v1.Identity/Probe"
            ));
        }
    }

    #[test]
    fn good_authorities_pass_through_byte_for_byte() {
        let mut enc = fluke_hpack::Encoder::new();
        let block = enc.encode([(&b":authority"[..], &b"localhost"[..])]);
        let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        wire.extend(headers_frame(&block, END_HEADERS, 1));
        let mut fix = Fixer::default();
        fix.feed(&wire);
        assert_eq!(fix.pending(), &wire[..]);
    }
}
