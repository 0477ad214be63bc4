//! The API's listener: accepts connections, over TLS completes each handshake (bounded in
//! time) and decides the connection's `Identity` from its client certificate once, and
//! serves HTTP/1.1 and HTTP/2 on it with that identity in every request's extensions. Plain
//! HTTP (`--insecure-http`) takes the same path without the handshake and the identity. Every
//! connection is bounded (`Limits`): header size and time, connections per client, idle time.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tower::Service;

use crate::authn::{ClientCa, Identity};

/// A handshake that has not finished by then is dropped (a client that connects and says
/// nothing, or speaks plain HTTP and waits for an answer).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes that failed or timed out (`/metrics`: `apiserver_tls_handshake_errors_total`).
pub static HANDSHAKE_ERRORS: AtomicU64 = AtomicU64::new(0);

/// What the TLS listener needs.
pub struct Tls {
    pub config: Arc<rustls::ServerConfig>,
    pub client_ca: Arc<ClientCa>,
    /// Bearer tokens accepted (`--token-auth-file`).
    pub tokens: Arc<crate::authn::StaticTokens>,
}

/// What a connection may hold, and for how long (Kubernetes' values where it has them).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// A request's headers must have arrived this long after its first byte was awaited
    /// (Go's `ReadHeaderTimeout` in kube-apiserver: 32 s).
    pub read_header_timeout: Duration,
    /// The most bytes of request headers (kube-apiserver's `MaxHeaderBytes`: 1 MiB); more is
    /// a 431 and the connection closes.
    pub max_header_bytes: usize,
    /// Open connections from one client address; more are closed at accept.
    pub max_connections_per_client: usize,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { read_header_timeout: Duration::from_secs(32), max_header_bytes: 1 << 20, max_connections_per_client: 4096, idle_timeout: Duration::from_secs(90) }
    }
}

/// Each limit, counted when it is hit (`/metrics`: `apiserver_connection_limit_hits_total`).
pub static CONNECTIONS_REFUSED_PER_CLIENT: AtomicU64 = AtomicU64::new(0);
pub static IDLE_CLOSED: AtomicU64 = AtomicU64::new(0);

/// Open connections per client address.
#[derive(Default)]
struct PerClient(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

impl PerClient {
    fn enter(&self, ip: std::net::IpAddr, max: usize) -> bool {
        let mut m = self.0.lock().unwrap();
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    fn leave(&self, ip: std::net::IpAddr) {
        let mut m = self.0.lock().unwrap();
        if let Some(n) = m.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }
}

/// Requests in flight on one connection and when the last one ended, for the idle timeout.
#[derive(Default)]
struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    /// Milliseconds since the connection started.
    last_ms: AtomicU64,
}

/// Counts a request in flight until its response body is done (a watch stays in flight
/// while it streams).
struct InFlight(Arc<Activity>, std::time::Instant);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.last_ms.store(self.1.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that holds its request's `InFlight` until it is dropped.
struct Tracked<B> {
    inner: B,
    _guard: InFlight,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `app` on `listener` until `shutdown` resolves; then stops accepting, lets open
/// connections finish what they are serving, and returns. With `tls`, each connection's
/// handshake is completed (bounded in time) and its identity decided; without, it is plain
/// HTTP (`--insecure-http`) and requests carry no identity.
pub async fn serve(listener: TcpListener, app: Router, tls: Option<Tls>, limits: Limits, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let acceptor = tls.as_ref().map(|t| tokio_rustls::TlsAcceptor::from(t.config.clone()));
    let client_ca = tls.as_ref().map(|t| t.client_ca.clone());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let per_client = Arc::new(PerClient::default());
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if !per_client.enter(peer.ip(), limits.max_connections_per_client) {
            let n = CONNECTIONS_REFUSED_PER_CLIENT.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(%peer, max = limits.max_connections_per_client, refused_so_far = n, "a client has too many connections open; closing the new one");
            }
            drop(tcp);
            continue;
        }
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let ca = client_ca.clone();
        let watcher = graceful.watcher();
        let per_client = per_client.clone();
        tokio::spawn(async move {
            match acceptor {
                Some(acceptor) => {
                    if let Some(stream) = handshake(tcp, peer, &acceptor).await {
                        let identity = ca.map(|ca| ca.identify(stream.get_ref().1.peer_certificates())).unwrap_or(Identity::Anonymous);
                        if let Identity::Rejected(why) = &identity {
                            tracing::debug!(%peer, reason = %why, "client certificate rejected; its requests get 401");
                        }
                        serve_connection(stream, peer, Some(identity), app, limits, watcher).await;
                    }
                }
                None => serve_connection(tcp, peer, None, app, limits, watcher).await,
            }
            per_client.leave(peer.ip());
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// The TLS handshake of a new connection, or `None` (counted and logged) if it fails.
async fn handshake(mut tcp: tokio::net::TcpStream, peer: std::net::SocketAddr, acceptor: &tokio_rustls::TlsAcceptor) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    // A TLS connection starts with a handshake record (0x16). Anything else is most likely
    // plain HTTP: answer it as Go's TLS server does, so the client says why.
    let mut first = [0u8; 1];
    if let Ok(Ok(1)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await
        && first[0] != 0x16
    {
        let n = HANDSHAKE_ERRORS.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(%peer, failed_so_far = n, "a client spoke plain HTTP to the HTTPS port");
        use tokio::io::AsyncWriteExt;
        let _ = tcp.write_all(b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n").await;
        let _ = tcp.shutdown().await;
        return None;
    }
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            let n = HANDSHAKE_ERRORS.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::info!(%peer, error = %e, failed_so_far = n, "TLS handshake failed (a client speaking plain HTTP to the HTTPS port?)");
            None
        }
        Err(_) => {
            let n = HANDSHAKE_ERRORS.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::info!(%peer, failed_so_far = n, "TLS handshake did not finish in {HANDSHAKE_TIMEOUT:?}");
            None
        }
    }
}

/// HTTP/1.1 and HTTP/2 on one connection, under `limits`, until the client closes it, it is
/// idle too long, or the server shuts down.
async fn serve_connection<IO>(io: IO, peer: std::net::SocketAddr, identity: Option<Identity>, app: Router, limits: Limits, watcher: hyper_util::server::graceful::Watcher)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let started = std::time::Instant::now();
    let activity = Arc::new(Activity::default());
    let act = activity.clone();
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        if let Some(id) = &identity {
            req.extensions_mut().insert(id.clone());
        }
        req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        act.in_flight.fetch_add(1, Ordering::Relaxed);
        let guard = InFlight(act.clone(), started);
        let mut app = app.clone();
        async move { app.call(req).await.map(|r| r.map(|b| Tracked { inner: b, _guard: guard })) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(limits.read_header_timeout).max_buf_size(limits.max_header_bytes.max(8192));
    builder.http2().max_header_list_size(limits.max_header_bytes.min(u32::MAX as usize) as u32);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc).into_owned();
    let conn = watcher.watch(conn);
    tokio::pin!(conn);
    // The idle check: the connection is dropped (and so closed) once nothing has been in
    // flight for `idle_timeout`.
    let tick = (limits.idle_timeout / 4).max(Duration::from_millis(10));
    loop {
        tokio::select! {
            r = &mut conn => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = tokio::time::sleep(tick) => {
                let idle_for = started.elapsed().saturating_sub(Duration::from_millis(activity.last_ms.load(Ordering::Relaxed)));
                if activity.in_flight.load(Ordering::Relaxed) == 0 && idle_for >= limits.idle_timeout {
                    IDLE_CLOSED.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "closing an idle connection");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_address_holds_at_most_its_limit_of_connections() {
        let pc = PerClient::default();
        let (a, b): (std::net::IpAddr, std::net::IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert!(pc.enter(a, 2) && pc.enter(a, 2));
        assert!(!pc.enter(a, 2), "a third connection from the same address");
        assert!(pc.enter(b, 2), "another address has its own count");
        pc.leave(a);
        assert!(pc.enter(a, 2), "a closed connection frees its place");
        pc.leave(a);
        pc.leave(a);
        pc.leave(b);
        assert!(pc.0.lock().unwrap().is_empty(), "addresses with no connection are forgotten");
    }
}
