//! SPDY/3.1, the server side, as much of it as Kubernetes' streaming protocols use (kubectl
//! 1.29 and older for exec and attach; every kubectl for port-forward, directly or tunnelled
//! through a WebSocket): the client opens streams (SYN_STREAM, with headers such as
//! `streamtype` and `port`), each is answered at once (SYN_REPLY), data flows both ways in
//! DATA frames, FIN half-closes, RST_STREAM ends a stream, PINGs are echoed.
//!
//! Header blocks are zlib streams, one per direction for the whole session, primed with the
//! dictionary of the SPDY/3 draft (§2.6.10.1) for what the client sends. Replies carry no
//! headers; they are compressed without a dictionary, which a zlib reader accepts.
//! Flow control (WINDOW_UPDATE) is not enforced, as Go's spdystream (the client of every
//! kubectl) does not enforce it either; memory stays bounded by the queues instead: a stream's
//! inbound queue is [`STREAM_QUEUE`] frames, and a full one stops the reading of the whole
//! connection until it drains.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// The largest frame accepted (the protocol allows 16 MiB; clients send 32 KiB).
const FRAME_MAX: usize = 1 << 20;
/// The most header bytes one stream may carry, decompressed.
const HEADERS_MAX: usize = 64 << 10;
/// Inbound data frames queued per stream.
pub const STREAM_QUEUE: usize = 16;
/// Streams opened and not yet taken by the session's user.
const NEW_STREAMS: usize = 64;
/// Frames queued towards the client.
const OUT_QUEUE: usize = 64;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const FLAG_FIN: u8 = 1;
/// RST_STREAM status CANCEL.
const CANCEL: u32 = 5;

/// The SPDY/3 header dictionary: length-prefixed header names and common values, then a run
/// of status codes, dates and media types (draft 3, §2.6.10.1).
fn dictionary() -> Vec<u8> {
    const WORDS: &[&str] = &[
        "options", "head", "post", "put", "delete", "trace", "accept", "accept-charset", "accept-encoding", "accept-language", "accept-ranges", "age", "allow",
        "authorization", "cache-control", "connection", "content-base", "content-encoding", "content-language", "content-length", "content-location", "content-md5",
        "content-range", "content-type", "date", "etag", "expect", "expires", "from", "host", "if-match", "if-modified-since", "if-none-match", "if-range",
        "if-unmodified-since", "last-modified", "location", "max-forwards", "pragma", "proxy-authenticate", "proxy-authorization", "range", "referer", "retry-after",
        "server", "te", "trailer", "transfer-encoding", "upgrade", "user-agent", "vary", "via", "warning", "www-authenticate", "method", "get", "status", "200 OK",
        "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin",
    ];
    const TAIL: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized403 Forbidden",
        "404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable",
        "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
        "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,text/javascript,",
        "publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
    );
    let mut d = Vec::with_capacity(1500);
    for w in WORDS {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    d.extend_from_slice(TAIL.as_bytes());
    d
}

/// A frame to send.
enum Out {
    Reply(u32),
    Data { id: u32, data: Bytes, fin: bool },
    Reset(u32),
    Ping(u32),
    GoAway,
}

/// The sending half of one stream.
#[derive(Clone)]
pub struct Sender {
    id: u32,
    tx: mpsc::Sender<Out>,
}

impl Sender {
    /// Sends data; false once the connection is gone.
    pub async fn data(&self, data: Bytes) -> bool {
        let mut rest = data;
        while !rest.is_empty() {
            let piece = rest.split_to(rest.len().min(32 << 10));
            if self.tx.send(Out::Data { id: self.id, data: piece, fin: false }).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Half-closes the stream (no more data from this side).
    pub async fn fin(&self) {
        let _ = self.tx.send(Out::Data { id: self.id, data: Bytes::new(), fin: true }).await;
    }

    /// Ends the stream both ways.
    pub async fn reset(&self) {
        let _ = self.tx.send(Out::Reset(self.id)).await;
    }

    /// Ends the whole session (GOAWAY, then the connection closes).
    pub async fn go_away(&self) {
        let _ = self.tx.send(Out::GoAway).await;
    }
}

/// A stream the client opened.
pub struct Stream {
    pub id: u32,
    /// Its headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// What the client sends on it; ends at its FIN (or a reset, or the connection's end).
    pub rx: mpsc::Receiver<Bytes>,
    pub tx: Sender,
}

impl Stream {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Runs a SPDY session over `io`: the streams the client opens arrive on the receiver; the
/// receiver ends when the connection does.
pub fn serve<IO: AsyncRead + AsyncWrite + Send + 'static>(io: IO) -> mpsc::Receiver<Stream> {
    let (r, w) = tokio::io::split(io);
    let (out_tx, out_rx) = mpsc::channel(OUT_QUEUE);
    let (new_tx, new_rx) = mpsc::channel(NEW_STREAMS);
    tokio::spawn(write_loop(w, out_rx));
    tokio::spawn(read_loop(r, out_tx, new_tx));
    new_rx
}

fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + payload.len());
    f.extend_from_slice(&(0x8003u16).to_be_bytes());
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

async fn write_loop<W: AsyncWrite + Unpin>(mut w: W, mut rx: mpsc::Receiver<Out>) {
    let mut z = flate2::Compress::new(flate2::Compression::default(), true);
    while let Some(o) = rx.recv().await {
        let frame = match o {
            Out::Reply(id) => {
                // An empty header block: a count of zero pairs.
                let mut block = Vec::with_capacity(64);
                if z.compress_vec(&0u32.to_be_bytes(), &mut block, flate2::FlushCompress::Sync).is_err() {
                    return;
                }
                let mut p = id.to_be_bytes().to_vec();
                p.extend_from_slice(&block);
                control(SYN_REPLY, 0, &p)
            }
            Out::Data { id, data, fin } => {
                let mut f = Vec::with_capacity(8 + data.len());
                f.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
                f.push(if fin { FLAG_FIN } else { 0 });
                f.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
                f.extend_from_slice(&data);
                f
            }
            Out::Reset(id) => {
                let mut p = id.to_be_bytes().to_vec();
                p.extend_from_slice(&CANCEL.to_be_bytes());
                control(RST_STREAM, 0, &p)
            }
            Out::Ping(id) => control(PING, 0, &id.to_be_bytes()),
            Out::GoAway => {
                let _ = w.write_all(&control(GOAWAY, 0, &[0; 8])).await;
                let _ = w.flush().await;
                let _ = w.shutdown().await;
                return;
            }
        };
        if w.write_all(&frame).await.is_err() {
            return;
        }
        // Flush when nothing else is queued: frames queued together go out together.
        if rx.is_empty() && w.flush().await.is_err() {
            return;
        }
    }
}

/// Inflates one header block (the stream continues across blocks) and parses its pairs.
fn headers(z: &mut flate2::Decompress, dict: &[u8], block: &[u8]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::with_capacity(256);
    let mut input = block;
    loop {
        out.reserve(1024);
        let (before_in, before_out) = (z.total_in(), z.total_out());
        match z.decompress_vec(input, &mut out, flate2::FlushDecompress::Sync) {
            // The session's header stream never ends: an end is a malformed block.
            Ok(flate2::Status::StreamEnd) => return Err("header block: the zlib stream ended".into()),
            Ok(_) => {}
            Err(e) if e.needs_dictionary().is_some() => {
                z.set_dictionary(dict).map_err(|e| format!("header dictionary: {e}"))?;
                input = &input[(z.total_in() - before_in) as usize..];
                continue;
            }
            Err(e) => return Err(format!("header block: {e}")),
        }
        if z.total_in() == before_in && z.total_out() == before_out && !input.is_empty() {
            return Err("header block: no progress".into());
        }
        input = &input[(z.total_in() - before_in) as usize..];
        if out.len() > HEADERS_MAX {
            return Err("header block too large".into());
        }
        if input.is_empty() && out.len() < out.capacity() {
            break;
        }
    }
    let mut p = &out[..];
    let u32_at = |p: &mut &[u8]| -> Result<u32, String> {
        if p.len() < 4 {
            return Err("truncated header block".into());
        }
        let v = u32::from_be_bytes([p[0], p[1], p[2], p[3]]);
        *p = &p[4..];
        Ok(v)
    };
    let count = u32_at(&mut p)? as usize;
    let mut pairs = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let mut s = || -> Result<String, String> {
            let n = u32_at(&mut p)? as usize;
            if p.len() < n {
                return Err("truncated header block".into());
            }
            let v = String::from_utf8_lossy(&p[..n]).into_owned();
            p = &p[n..];
            Ok(v)
        };
        let (k, v) = (s()?, s()?);
        pairs.push((k.to_ascii_lowercase(), v));
    }
    Ok(pairs)
}

async fn read_loop<R: AsyncRead + Unpin>(mut r: R, out: mpsc::Sender<Out>, new: mpsc::Sender<Stream>) {
    let dict = dictionary();
    let mut z = flate2::Decompress::new(true);
    let mut streams: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    let mut head = [0u8; 8];
    loop {
        if r.read_exact(&mut head).await.is_err() {
            return;
        }
        let flags = head[4];
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        if len > FRAME_MAX {
            let _ = out.send(Out::GoAway).await;
            return;
        }
        let mut payload = BytesMut::zeroed(len);
        if r.read_exact(&mut payload).await.is_err() {
            return;
        }
        let payload = payload.freeze();
        if head[0] & 0x80 == 0 {
            // DATA
            let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff;
            if let Some(tx) = streams.get(&id) {
                if !payload.is_empty() && tx.send(payload).await.is_err() {
                    // The stream's user stopped reading: nothing more for it.
                    streams.remove(&id);
                }
                if flags & FLAG_FIN != 0 {
                    streams.remove(&id);
                }
            }
            continue;
        }
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        let kind = u16::from_be_bytes([head[2], head[3]]);
        if version != 3 {
            let _ = out.send(Out::GoAway).await;
            return;
        }
        match kind {
            SYN_STREAM if payload.len() >= 10 => {
                let id = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff;
                let hs = match headers(&mut z, &dict, &payload[10..]) {
                    Ok(h) => h,
                    Err(e) => {
                        tracing::debug!(error = %e, "SPDY: a malformed header block ends the session");
                        let _ = out.send(Out::GoAway).await;
                        return;
                    }
                };
                let (tx, rx) = mpsc::channel(STREAM_QUEUE);
                if flags & FLAG_FIN == 0 {
                    streams.insert(id, tx);
                }
                if out.send(Out::Reply(id)).await.is_err() {
                    return;
                }
                let s = Stream { id, headers: hs, rx, tx: Sender { id, tx: out.clone() } };
                if new.send(s).await.is_err() {
                    return;
                }
            }
            RST_STREAM if payload.len() >= 4 => {
                let id = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff;
                streams.remove(&id);
            }
            PING if payload.len() >= 4 => {
                let id = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                let _ = out.send(Out::Ping(id)).await;
            }
            GOAWAY => return,
            // SETTINGS, WINDOW_UPDATE, HEADERS, anything newer: nothing to do.
            _ => {}
        }
    }
}

/// What a client session needs in tests: the frames a client sends.
#[cfg(test)]
pub(crate) mod client {
    use super::*;

    pub struct Client {
        pub z: flate2::Compress,
    }

    impl Client {
        pub fn new() -> Client {
            let mut z = flate2::Compress::new(flate2::Compression::default(), true);
            z.set_dictionary(&dictionary()).unwrap();
            Client { z }
        }

        pub fn syn_stream(&mut self, id: u32, headers: &[(&str, &str)], fin: bool) -> Vec<u8> {
            let mut raw = (headers.len() as u32).to_be_bytes().to_vec();
            for (k, v) in headers {
                raw.extend_from_slice(&(k.len() as u32).to_be_bytes());
                raw.extend_from_slice(k.as_bytes());
                raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
                raw.extend_from_slice(v.as_bytes());
            }
            let mut block = Vec::with_capacity(raw.len() + 64);
            self.z.compress_vec(&raw, &mut block, flate2::FlushCompress::Sync).unwrap();
            let mut p = id.to_be_bytes().to_vec();
            p.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
            p.extend_from_slice(&block);
            control(SYN_STREAM, if fin { FLAG_FIN } else { 0 }, &p)
        }

        pub fn data(id: u32, data: &[u8], fin: bool) -> Vec<u8> {
            let mut f = id.to_be_bytes().to_vec();
            f.push(if fin { FLAG_FIN } else { 0 });
            f.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
            f.extend_from_slice(data);
            f
        }
    }

    /// Reads one frame: (control type or None for data, stream id or ping id, flags, payload).
    pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Option<(Option<u16>, u32, u8, Vec<u8>)> {
        let mut head = [0u8; 8];
        r.read_exact(&mut head).await.ok()?;
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        let mut p = vec![0u8; len];
        r.read_exact(&mut p).await.ok()?;
        if head[0] & 0x80 == 0 {
            Some((None, u32::from_be_bytes([head[0], head[1], head[2], head[3]]), head[4], p))
        } else {
            let id = if p.len() >= 4 { u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff } else { 0 };
            Some((Some(u16::from_be_bytes([head[2], head[3]])), id, head[4], p))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::client::*;
    use super::*;

    #[test]
    fn the_dictionary_is_the_drafts() {
        let d = dictionary();
        // Its length and zlib's Adler-32 of it (what a stream primed with it names).
        assert_eq!(d.len(), 1423);
        let (mut a, mut b) = (1u32, 0u32);
        for x in &d {
            a = (a + *x as u32) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!((b << 16) | a, 0xe3c6_a7c2, "adler32 {:#x}", (b << 16) | a);
    }

    #[tokio::test]
    async fn streams_open_carry_data_both_ways_and_half_close() {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let mut streams = serve(ours);
        let (mut r, mut w) = tokio::io::split(theirs);
        let mut c = Client::new();
        w.write_all(&c.syn_stream(1, &[("streamType", "data"), ("port", "80")], false)).await.unwrap();
        let mut s = streams.recv().await.unwrap();
        assert_eq!((s.id, s.header("streamtype"), s.header("port")), (1, Some("data"), Some("80")));
        // The reply comes first, then our data.
        s.tx.data(Bytes::from_static(b"hello")).await;
        let (kind, id, _, _) = read_frame(&mut r).await.unwrap();
        assert_eq!((kind, id), (Some(SYN_REPLY), 1));
        let (kind, id, _, p) = read_frame(&mut r).await.unwrap();
        assert_eq!((kind, id, p.as_slice()), (None, 1, &b"hello"[..]));
        // Their data, then their FIN ends what we read.
        w.write_all(&Client::data(1, b"abc", false)).await.unwrap();
        w.write_all(&Client::data(1, b"", true)).await.unwrap();
        assert_eq!(s.rx.recv().await.unwrap(), Bytes::from_static(b"abc"));
        assert!(s.rx.recv().await.is_none());
        // A second stream's headers decompress in the same zlib stream.
        w.write_all(&c.syn_stream(3, &[("streamtype", "error"), ("port", "80")], true)).await.unwrap();
        let s2 = streams.recv().await.unwrap();
        assert_eq!(s2.header("streamtype"), Some("error"));
        s.tx.fin().await;
        let _ = read_frame(&mut r).await.unwrap(); // reply to 3
        let (_, id, flags, _) = read_frame(&mut r).await.unwrap();
        assert_eq!((id, flags), (1, FLAG_FIN));
    }

    #[tokio::test]
    async fn malformed_input_ends_the_session() {
        for bad in [
            // A frame claiming 16 MiB.
            vec![0x80, 3, 0, 1, 0, 0xff, 0xff, 0xff],
            // SPDY/2.
            control(SYN_STREAM, 0, &[0; 12]).into_iter().enumerate().map(|(i, b)| if i == 1 { 2 } else { b }).collect(),
            // A header block that is not zlib.
            control(SYN_STREAM, 0, &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]),
            // A header block whose zlib stream ends, then one more byte (it used to spin).
            {
                let mut z = flate2::Compress::new(flate2::Compression::default(), true);
                let mut block = Vec::with_capacity(64);
                z.compress_vec(&0u32.to_be_bytes(), &mut block, flate2::FlushCompress::Finish).unwrap();
                block.push(0);
                let mut p = vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
                p.extend_from_slice(&block);
                control(SYN_STREAM, 0, &p)
            },
        ] {
            let (ours, theirs) = tokio::io::duplex(1 << 16);
            let mut streams = serve(ours);
            let (mut r, mut w) = tokio::io::split(theirs);
            w.write_all(&bad).await.unwrap();
            let (kind, ..) = read_frame(&mut r).await.unwrap();
            assert_eq!(kind, Some(GOAWAY), "{bad:?}");
            assert!(streams.recv().await.is_none());
        }
    }
}
