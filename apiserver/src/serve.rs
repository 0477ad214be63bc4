//! The API's listener over TLS: accepts connections, completes each handshake (bounded in
//! time), decides the connection's `Identity` from its client certificate once, and serves
//! HTTP/1.1 and HTTP/2 on it with that identity in every request's extensions. Plain HTTP
//! (`--insecure-http`) is served by `axum::serve` in the binary, with no identity.

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

/// Serves `app` on `listener` over TLS until `shutdown` resolves; then stops accepting, lets
/// open connections finish what they are serving, and returns.
pub async fn serve_tls(listener: TcpListener, app: Router, tls: Tls, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
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
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let ca = tls.client_ca.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let mut tcp = tcp;
            // A TLS connection starts with a handshake record (0x16). Anything else is most
            // likely plain HTTP: answer it as Go's TLS server does, so the client says why.
            let mut first = [0u8; 1];
            if let Ok(Ok(1)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await
                && first[0] != 0x16
            {
                let n = HANDSHAKE_ERRORS.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::info!(%peer, failed_so_far = n, "a client spoke plain HTTP to the HTTPS port");
                use tokio::io::AsyncWriteExt;
                let _ = tcp.write_all(b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n").await;
                let _ = tcp.shutdown().await;
                return;
            }
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    let n = HANDSHAKE_ERRORS.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::info!(%peer, error = %e, failed_so_far = n, "TLS handshake failed (a client speaking plain HTTP to the HTTPS port?)");
                    return;
                }
                Err(_) => {
                    let n = HANDSHAKE_ERRORS.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::info!(%peer, failed_so_far = n, "TLS handshake did not finish in {HANDSHAKE_TIMEOUT:?}");
                    return;
                }
            };
            let identity = ca.identify(stream.get_ref().1.peer_certificates());
            if let Identity::Rejected(why) = &identity {
                tracing::debug!(%peer, reason = %why, "client certificate rejected; its requests get 401");
            }
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(identity.clone());
                req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                let mut app = app.clone();
                async move { app.call(req).await }
            });
            let conn = auto::Builder::new(TokioExecutor::new()).serve_connection_with_upgrades(TokioIo::new(stream), svc).into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
