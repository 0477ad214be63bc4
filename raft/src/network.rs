//! The peer network: HTTP/2 between replicas.
//!
//! **Why HTTP/2 (hyper) and not gRPC (tonic).** Every message here is encoded by `codec.rs`
//! already (entries travel as the bytes the log stores, with their checksum), so gRPC's
//! protobuf layer would add a code generator (and a `protoc`, which this machine lacks) to
//! carry opaque bytes. HTTP/2 gives what the protocol needs: one connection per peer with
//! many concurrent requests (votes and forwarded writes beside replication), flow control,
//! and full-duplex streams — replication is one long request whose body is a stream of
//! AppendEntries and whose response is a stream of their results, which is openraft's
//! `stream_append` (pipelined: the leader does not wait for one batch's answer before sending
//! the next). hyper is already in the tree. TLS wraps the connection under the same code:
//! [`Connector`] is the seam on the dialing side ([`TcpConnector`], or [`TlsConnector`] with a
//! client certificate), a `rustls::ServerConfig` in `ReplicaConfig::peer_tls` on the
//! accepting side (whose client-certificate verifier decides which peers are admitted:
//! mutual TLS).
//!
//! **Bounds.** A frame is at most `FRAME_BYTES_MAX`; a replication stream holds at most
//! `STREAM_QUEUE` requests in flight per peer (the sender waits); snapshot files stream in
//! chunks of `SNAPSHOT_CHUNK_BYTES`.
//!
//! **Identity.** Every request carries the sender's cluster id and node id; a replica refuses
//! (412) a request from another cluster, naming both ids.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use openraft::base::{BoxFuture, BoxStream};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, VoteRequest, VoteResponse};
use openraft::raft::{TransferLeaderRequest, TransferLeaderResponse};
use storage::command::Reader;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::codec;
use crate::faults::{Fate, Faults};
use crate::state_machine::{Snapshot, SnapshotFiles};
use crate::types::*;

pub type Body = BoxBody<Bytes, io::Error>;

/// Largest frame a peer accepts (an AppendEntries of many batches, a snapshot header).
pub const FRAME_BYTES_MAX: usize = 64 << 20;
/// AppendEntries requests in flight on one replication stream (the per-peer queue).
pub const STREAM_QUEUE: usize = 16;
/// Snapshot files travel in chunks of this size.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

pub const H_CLUSTER: &str = "x-capstan-cluster";
pub const H_FROM: &str = "x-capstan-from";

pub fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|never: Infallible| match never {}).boxed()
}

/// A body fed through a bounded channel, frame by frame (`[length u32][bytes]`).
pub struct FrameSender {
    tx: mpsc::Sender<Result<Frame<Bytes>, io::Error>>,
}

impl FrameSender {
    /// Sends one frame; waits while the queue is full. `Err` once the other side is gone.
    pub async fn send(&self, frame: Bytes) -> Result<(), ()> {
        let mut len = BytesMut::with_capacity(4);
        len.put_u32_le(frame.len() as u32);
        self.tx.send(Ok(Frame::data(len.freeze()))).await.map_err(|_| ())?;
        if !frame.is_empty() {
            self.tx.send(Ok(Frame::data(frame))).await.map_err(|_| ())?;
        }
        Ok(())
    }

    /// Sends one frame given as parts (sent one after the other, not copied together).
    pub async fn send_parts(&self, parts: Vec<Bytes>) -> Result<(), ()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut l = BytesMut::with_capacity(4);
        l.put_u32_le(len as u32);
        self.tx.send(Ok(Frame::data(l.freeze()))).await.map_err(|_| ())?;
        for p in parts {
            if !p.is_empty() {
                self.tx.send(Ok(Frame::data(p))).await.map_err(|_| ())?;
            }
        }
        Ok(())
    }

    /// Ends the body with an error (the other side sees the stream reset).
    pub async fn fail(&self, why: String) {
        let _ = self.tx.send(Err(io::Error::other(why))).await;
    }
}

pub fn frame_channel(frames: usize) -> (FrameSender, Body) {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, io::Error>>(frames * 2);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    (FrameSender { tx }, BodyExt::boxed(StreamBody::new(stream)))
}

/// Reassembles `[length u32][bytes]` frames from a body, refusing frames over the bound.
pub struct FrameReader {
    body: Incoming,
    buf: BytesMut,
    max: usize,
}

impl FrameReader {
    pub fn new(body: Incoming) -> FrameReader {
        FrameReader { body, buf: BytesMut::new(), max: FRAME_BYTES_MAX }
    }

    /// The next frame; `None` at the end of the body.
    pub async fn next(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            if self.buf.len() >= 4 {
                let n = u32::from_le_bytes(self.buf[..4].try_into().unwrap()) as usize;
                if n > self.max {
                    return Some(Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {n} bytes is over the limit of {}", self.max))));
                }
                if self.buf.len() >= 4 + n {
                    self.buf.advance(4);
                    return Some(Ok(self.buf.split_to(n).freeze()));
                }
                self.buf.reserve(4 + n - self.buf.len());
            }
            match self.body.frame().await {
                None if self.buf.is_empty() => return None,
                None => return Some(Err(io::Error::new(io::ErrorKind::UnexpectedEof, "body ended inside a frame"))),
                Some(Err(e)) => return Some(Err(io::Error::other(e))),
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        self.buf.extend_from_slice(&d);
                    }
                }
            }
        }
    }
}

/// A byte stream to a peer (plain TCP, or TLS around it).
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Opens connections to peers: the seam where TLS goes.
pub trait Connector: Send + Sync + 'static {
    fn connect(&self, authority: String) -> BoxFuture<'static, io::Result<Box<dyn Io>>>;
}

pub struct TcpConnector;

impl Connector for TcpConnector {
    fn connect(&self, authority: String) -> BoxFuture<'static, io::Result<Box<dyn Io>>> {
        Box::pin(async move {
            let s = tokio::net::TcpStream::connect(&authority).await?;
            s.set_nodelay(true)?;
            Ok(Box::new(s) as Box<dyn Io>)
        })
    }
}

/// TLS to peers: the server's certificate must name the host dialed and chain to the roots
/// of `config`, which also carries this replica's client certificate.
pub struct TlsConnector {
    pub config: Arc<rustls::ClientConfig>,
}

impl Connector for TlsConnector {
    fn connect(&self, authority: String) -> BoxFuture<'static, io::Result<Box<dyn Io>>> {
        let tls = tokio_rustls::TlsConnector::from(self.config.clone());
        Box::pin(async move {
            let host = match authority.rsplit_once(':') {
                Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']').to_string(),
                None => authority.clone(),
            };
            let name = rustls::pki_types::ServerName::try_from(host).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{authority}: {e}")))?;
            let s = tokio::net::TcpStream::connect(&authority).await?;
            s.set_nodelay(true)?;
            let s = tls.connect(name, s).await?;
            Ok(Box::new(s) as Box<dyn Io>)
        })
    }
}

/// `http://host:port` (or `host:port`) to `host:port`.
pub fn authority(url: &str) -> String {
    let s = url.trim_end_matches('/');
    s.strip_prefix("http://").or_else(|| s.strip_prefix("https://")).unwrap_or(s).to_string()
}

/// Who is speaking: this replica's cluster id (0 until a joining member learns it) and id.
#[derive(Clone)]
pub struct Wire {
    pub cluster: Arc<AtomicU64>,
    pub me: NodeId,
    /// The highest index of a committed membership, reported by a peer, that does not contain
    /// this member (0: none): a membership newer than this member's own that left it out.
    pub left_out_at: Arc<AtomicU64>,
}

/// The answer to a vote from a member a peer's committed membership leaves out.
pub const NOT_A_MEMBER: &str = "not-a-member";

impl Wire {
    pub fn cluster(&self) -> u64 {
        self.cluster.load(Ordering::SeqCst)
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    /// The request never left (no connection, dropped by fault injection): it had no effect.
    #[error("peer unreachable, nothing sent: {0}")]
    NotSent(String),
    /// The request may have reached the peer; its answer did not come back.
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    #[error("peer refused: {0}")]
    Refused(String),
    #[error("peer answered an error: {0}")]
    Remote(String),
    #[error("peer did not answer within {0:?}")]
    Timeout(Duration),
}

/// One peer's connection: lazily (re)connected, shared by every request to it.
pub struct PeerClient {
    pub to: NodeId,
    /// `host:port`; changes when the member moves (`redirect`).
    authority: std::sync::Mutex<String>,
    wire: Wire,
    connector: Arc<dyn Connector>,
    faults: Option<Arc<Faults>>,
    conn: tokio::sync::Mutex<Option<hyper::client::conn::http2::SendRequest<Body>>>,
}

impl PeerClient {
    pub fn new(to: NodeId, url: &str, wire: Wire, connector: Arc<dyn Connector>, faults: Option<Arc<Faults>>) -> PeerClient {
        PeerClient { to, authority: std::sync::Mutex::new(authority(url)), wire, connector, faults, conn: tokio::sync::Mutex::new(None) }
    }

    fn authority(&self) -> String {
        self.authority.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Points this client at the member's new peer URL (etcd's MemberUpdate): the next
    /// request connects there. Requests and streams already on the old connection go on until
    /// it ends (the member restarting on its new URL ends it).
    pub async fn redirect(&self, url: &str) {
        *self.authority.lock().unwrap_or_else(|p| p.into_inner()) = authority(url);
        *self.conn.lock().await = None;
    }

    async fn sender(&self) -> Result<hyper::client::conn::http2::SendRequest<Body>, PeerError> {
        let mut conn = self.conn.lock().await;
        if let Some(s) = conn.as_ref()
            && !s.is_closed()
        {
            return Ok(s.clone());
        }
        let authority = self.authority();
        let io = tokio::time::timeout(Duration::from_secs(3), self.connector.connect(authority.clone()))
            .await
            .map_err(|_| PeerError::NotSent(format!("connecting to {authority} timed out")))?
            .map_err(|e| PeerError::NotSent(format!("connecting to {authority}: {e}")))?;
        let (send, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(8 << 20)
            .initial_connection_window_size(32 << 20)
            .max_frame_size(1 << 20)
            .keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(3))
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| PeerError::NotSent(format!("HTTP/2 handshake with {authority}: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(peer = %authority, error = %e, "peer connection ended");
            }
        });
        *conn = Some(send.clone());
        Ok(send)
    }

    fn request(&self, path: &str, body: Body) -> Request<Body> {
        Request::post(format!("http://{}{path}", self.authority()))
            .header(H_CLUSTER, format!("{:016x}", self.wire.cluster()))
            .header(H_FROM, self.wire.me.to_string())
            .body(body)
            .expect("a valid request")
    }

    async fn fate(&self) -> Result<bool, PeerError> {
        let Some(f) = &self.faults else { return Ok(false) };
        match f.decide(self.wire.me, self.to) {
            Fate::Partitioned => Err(PeerError::NotSent(format!("partitioned from {} (fault injection)", self.to))),
            Fate::Drop => Err(PeerError::NotSent("message dropped (fault injection)".into())),
            Fate::Deliver { delay, lose_answer } => {
                if let Some(d) = delay {
                    tokio::time::sleep(d).await;
                }
                Ok(lose_answer)
            }
        }
    }

    /// One request, and its answer's status and body as they are (a JSON admin call's).
    pub async fn unary_raw(&self, path: &str, body: Bytes, timeout: Duration) -> Result<(StatusCode, Bytes), PeerError> {
        let call = async {
            let mut s = self.sender().await?;
            s.ready().await.map_err(|e| PeerError::NotSent(e.to_string()))?;
            let resp = s.send_request(self.request(path, full(body))).await.map_err(|e| PeerError::Unreachable(e.to_string()))?;
            let status = resp.status();
            let bytes = resp.into_body().collect().await.map_err(|e| PeerError::Unreachable(e.to_string()))?.to_bytes();
            Ok::<_, PeerError>((status, bytes))
        };
        tokio::time::timeout(timeout, call).await.map_err(|_| PeerError::Timeout(timeout))?
    }

    /// One request, one answer.
    pub async fn unary(&self, path: &str, body: Bytes, timeout: Duration) -> Result<Bytes, PeerError> {
        let lose_answer = self.fate().await?;
        let (status, bytes) = self.unary_raw(path, body, timeout).await?;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // The peer process is stopping: connect again next time.
            *self.conn.lock().await = None;
        }
        if status == StatusCode::GONE
            && let Some(at) = std::str::from_utf8(&bytes).ok().and_then(|t| t.strip_prefix(NOT_A_MEMBER)).and_then(|t| t.trim().parse::<u64>().ok())
        {
            self.wire.left_out_at.fetch_max(at, Ordering::SeqCst);
        }
        if lose_answer {
            return Err(PeerError::Unreachable("answer dropped (fault injection)".into()));
        }
        answer(status, bytes)
    }

    /// A full-duplex stream of frames: what this side sends, and the peer's answers.
    pub async fn stream(&self, path: &str) -> Result<(FrameSender, FrameReader), PeerError> {
        self.fate().await?;
        let (tx, body) = frame_channel(STREAM_QUEUE);
        let mut s = self.sender().await?;
        s.ready().await.map_err(|e| PeerError::Unreachable(e.to_string()))?;
        let resp = tokio::time::timeout(Duration::from_secs(5), s.send_request(self.request(path, body)))
            .await
            .map_err(|_| PeerError::Timeout(Duration::from_secs(5)))?
            .map_err(|e| PeerError::Unreachable(e.to_string()))?;
        if resp.status() != StatusCode::OK {
            let status = resp.status();
            let bytes = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            return Err(answer(status, bytes).err().unwrap_or_else(|| PeerError::Remote(format!("status {status}"))));
        }
        Ok((tx, FrameReader::new(resp.into_body())))
    }

    fn faults(&self) -> Option<&Arc<Faults>> {
        self.faults.as_ref()
    }
}

/// A unary answer: `[0][payload]` or `[1][message]`; 412 means another cluster.
fn answer(status: StatusCode, bytes: Bytes) -> Result<Bytes, PeerError> {
    let text = || String::from_utf8_lossy(&bytes).into_owned();
    match status {
        StatusCode::OK => match bytes.first() {
            Some(0) => Ok(bytes.slice(1..)),
            Some(1) => Err(PeerError::Remote(String::from_utf8_lossy(&bytes[1..]).into_owned())),
            _ => Err(PeerError::Remote("malformed answer".into())),
        },
        StatusCode::PRECONDITION_FAILED | StatusCode::GONE => Err(PeerError::Refused(text())),
        s => Err(PeerError::Remote(format!("status {s}: {}", text()))),
    }
}

/// The answer bodies `answer` reads.
pub fn ok_body(payload: Bytes) -> Response<Body> {
    let mut b = BytesMut::with_capacity(1 + payload.len());
    b.put_u8(0);
    b.put_slice(&payload);
    Response::new(full(b.freeze()))
}

pub fn err_body(message: &str) -> Response<Body> {
    let mut b = BytesMut::with_capacity(1 + message.len());
    b.put_u8(1);
    b.put_slice(message.as_bytes());
    Response::new(full(b.freeze()))
}

pub fn status_body(status: StatusCode, message: String) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from(message)));
    *r.status_mut() = status;
    r
}

// ---------------------------------------------------------------------------------------------
// openraft's network
// ---------------------------------------------------------------------------------------------

/// Makes the peer clients openraft replicates through (one per target, shared).
#[derive(Clone)]
pub struct PeerNetworkFactory {
    pub wire: Wire,
    pub connector: Arc<dyn Connector>,
    pub faults: Option<Arc<Faults>>,
    pub clients: Arc<std::sync::Mutex<std::collections::HashMap<(NodeId, String), Arc<PeerClient>>>>,
}

impl PeerNetworkFactory {
    pub fn new(wire: Wire, connector: Arc<dyn Connector>, faults: Option<Arc<Faults>>) -> PeerNetworkFactory {
        PeerNetworkFactory { wire, connector, faults, clients: Default::default() }
    }

    /// The client for a peer (one connection per peer and URL).
    pub fn client(&self, id: NodeId, url: &str) -> Arc<PeerClient> {
        let mut m = self.clients.lock().unwrap();
        m.entry((id, url.to_string()))
            .or_insert_with(|| Arc::new(PeerClient::new(id, url, self.wire.clone(), self.connector.clone(), self.faults.clone())))
            .clone()
    }
}

impl PeerNetworkFactory {
    /// Member `id` now listens at `url`: every client of it connects there from now on,
    /// raft's replication streams to it included (openraft keeps a stream when only a
    /// member's address changes).
    pub async fn moved(&self, id: NodeId, url: &str) {
        let clients: Vec<Arc<PeerClient>> = self.clients.lock().unwrap().iter().filter(|((to, _), _)| *to == id).map(|(_, c)| c.clone()).collect();
        for c in clients {
            c.redirect(url).await;
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerNetwork {
        PeerNetwork { client: self.client(target, &node.peer_url), target }
    }
}

pub struct PeerNetwork {
    client: Arc<PeerClient>,
    target: NodeId,
}

/// Every failure backs off (Unreachable): retrying at once against a peer that refused or
/// failed would only spin.
fn rpc_err(e: PeerError) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::from_string(e.to_string()))
}

fn decode_err(what: &str, e: String) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::from_string(format!("malformed {what}: {e}")))
}

impl RaftNetworkV2<TypeConfig> for PeerNetwork {
    type SnapshotData = SnapshotFiles;

    async fn append_entries(&mut self, rpc: AppendEntriesRequest<TypeConfig>, option: RPCOption) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let parts = codec::append_request_parts(&rpc);
        let mut b = BytesMut::with_capacity(parts.iter().map(|p| p.len()).sum());
        for p in parts {
            b.put_slice(&p);
        }
        let body = b.freeze();
        let b = self.client.unary("/raft/append1", body, option.hard_ttl()).await.map_err(rpc_err)?;
        codec::decode_all(&b, codec::read_append_response).map_err(|e| decode_err("append answer", e))
    }

    fn stream_append<'s, S>(
        &'s mut self,
        mut input: S,
        _option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>, RPCError<TypeConfig>>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        let client = self.client.clone();
        Box::pin(async move {
            let (tx, rx) = client.stream("/raft/append").await.map_err(rpc_err)?;
            let faults = client.faults().cloned();
            let (me, to) = (client.wire.me, client.to);
            let generation = faults.as_ref().map(|f| f.generation());
            tokio::spawn(async move {
                while let Some(req) = input.next().await {
                    if let Some(f) = &faults
                        && (!f.connected(me, to) || Some(f.generation()) != generation)
                    {
                        tx.fail("partitioned (fault injection)".into()).await;
                        return;
                    }
                    if tx.send_parts(codec::append_request_parts(&req)).await.is_err() {
                        return;
                    }
                }
            });
            let faults = client.faults().cloned();
            let out = futures_util::stream::unfold(Some(rx), move |state| {
                let faults = faults.clone();
                async move {
                    let mut rx = state?;
                    if let Some(f) = &faults
                        && (!f.connected(me, to) || Some(f.generation()) != generation)
                    {
                        return Some((Err(RPCError::Unreachable(Unreachable::from_string("partitioned (fault injection)"))), None));
                    }
                    match rx.next().await {
                        None => None,
                        Some(Err(e)) => Some((Err(RPCError::Unreachable(Unreachable::from_string(format!("replication stream: {e}")))), None)),
                        Some(Ok(frame)) => match codec::decode_all(&frame, codec::read_stream_result) {
                            Ok(r) => {
                                let more = r.is_ok();
                                Some((Ok(r), more.then_some(rx)))
                            }
                            Err(e) => Some((Err(decode_err("append stream answer", e)), None)),
                        },
                    }
                }
            });
            Ok(Box::pin(out) as BoxStream<'s, _>)
        })
    }

    async fn vote(&mut self, rpc: VoteRequest<TypeConfig>, option: RPCOption) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let body = codec::encode_with(|o| codec::vote_request(o, &rpc));
        let b = self.client.unary("/raft/vote", body, option.hard_ttl()).await.map_err(rpc_err)?;
        codec::decode_all(&b, codec::read_vote_response).map_err(|e| decode_err("vote answer", e))
    }

    async fn pre_vote(&mut self, rpc: VoteRequest<TypeConfig>, option: RPCOption) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let body = codec::encode_with(|o| codec::vote_request(o, &rpc));
        let b = self.client.unary("/raft/pre-vote", body, option.hard_ttl()).await.map_err(rpc_err)?;
        codec::decode_all(&b, codec::read_vote_response).map_err(|e| decode_err("pre-vote answer", e))
    }

    async fn transfer_leader(&mut self, req: TransferLeaderRequest<TypeConfig>, option: RPCOption) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let body = codec::encode_with(|o| codec::transfer_request(o, &req));
        let b = self.client.unary("/raft/transfer-leader", body, option.hard_ttl()).await.map_err(rpc_err)?;
        codec::decode_all(&b, codec::read_transfer_response).map_err(|e| decode_err("transfer-leader answer", e))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl std::future::Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let target = self.target;
        let send = send_snapshot(self.client.clone(), vote, snapshot);
        tokio::select! {
            r = send => r.map_err(|e| match e {
                PeerError::Remote(m) => StreamingError::Network(NetworkError::from_string(m)),
                e => StreamingError::Unreachable(Unreachable::from_string(format!("sending a snapshot to {target}: {e}"))),
            }),
            closed = cancel => Err(StreamingError::Closed(closed)),
        }
    }
}

/// Streams a snapshot: a header frame (vote, position, file names and sizes), then each file
/// in chunks. The files are opened first: a newer snapshot replacing this one on disk does
/// not cut a transfer short.
async fn send_snapshot(client: Arc<PeerClient>, vote: Vote, snapshot: Snapshot) -> Result<SnapshotResponse<TypeConfig>, PeerError> {
    let files = &snapshot.snapshot;
    let mut opened = Vec::new();
    for name in &files.files {
        let f = std::fs::File::open(files.dir.join(name)).map_err(|e| PeerError::Remote(format!("opening snapshot file {name}: {e}")))?;
        let len = f.metadata().map_err(|e| PeerError::Remote(e.to_string()))?.len();
        opened.push((name.clone(), f, len));
    }
    let header = codec::encode_with(|o| {
        codec::vote(o, &vote);
        codec::snapshot_meta(o, &snapshot.meta);
        o.put_u32_le(opened.len() as u32);
        for (name, _, len) in &opened {
            codec::put_str(o, name);
            o.put_u64_le(*len);
        }
    });
    let (tx, mut rx) = client.stream("/raft/snapshot").await?;
    let total: u64 = opened.iter().map(|(_, _, l)| l).sum();
    let started = std::time::Instant::now();
    let pump = async move {
        tx.send(header).await.map_err(|_| PeerError::Unreachable("snapshot stream closed".into()))?;
        for (name, f, len) in opened {
            let mut off = 0u64;
            let f = Arc::new(f);
            while off < len {
                let n = (len - off).min(SNAPSHOT_CHUNK_BYTES as u64) as usize;
                let f2 = f.clone();
                let chunk = tokio::task::spawn_blocking(move || {
                    use std::os::unix::fs::FileExt;
                    let mut buf = vec![0u8; n];
                    f2.read_exact_at(&mut buf, off).map(|()| Bytes::from(buf))
                })
                .await
                .map_err(|e| PeerError::Remote(e.to_string()))?
                .map_err(|e| PeerError::Remote(format!("reading snapshot file {name}: {e}")))?;
                tx.send(chunk).await.map_err(|_| PeerError::Unreachable("snapshot stream closed".into()))?;
                off += n as u64;
            }
        }
        Ok::<_, PeerError>(())
    };
    let (sent, answer) = tokio::join!(pump, rx.next());
    sent?;
    let frame = answer
        .ok_or_else(|| PeerError::Unreachable("no answer to a snapshot".into()))?
        .map_err(|e| PeerError::Unreachable(e.to_string()))?;
    let mut r = Reader::new(&frame);
    match r.u8().map_err(PeerError::Remote)? {
        0 => {
            let v = codec::read_vote(&mut r).map_err(PeerError::Remote)?;
            tracing::info!(to = client.to, bytes = total, secs = started.elapsed().as_secs_f64(), "snapshot sent");
            Ok(SnapshotResponse::new(v))
        }
        _ => Err(PeerError::Remote(r.string().unwrap_or_else(|e| e))),
    }
}
