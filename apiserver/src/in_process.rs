//! The API server offered to clients in its own process (`client::local`): each request is a
//! call into the same router the network listener serves, carrying what the listener would
//! attach to it: the identity a TLS handshake presenting the client's certificate would give
//! its connection (decided once per link, as once per connection) and a loopback peer
//! address. Authentication, authorization, admission, audit and fairness are the router's,
//! so they treat an in-process caller exactly as a remote one.

use std::sync::Arc;

use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rustls::pki_types::CertificateDer;
use tower::ServiceExt;

use crate::authn::{ClientCa, Identity};

/// What the listener knows of its clients: `client_ca` when it serves TLS (clients are then
/// identified by their certificates), none over plain HTTP (nothing is authenticated).
pub struct InProcess {
    app: Router,
    client_ca: Option<Arc<ClientCa>>,
}

impl InProcess {
    pub fn new(app: Router, client_ca: Option<Arc<ClientCa>>) -> InProcess {
        InProcess { app, client_ca }
    }
}

static REQUESTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Requests served through calls since the process started
/// (`capstan_in_process_requests_total`).
pub fn requests() -> u64 {
    REQUESTS.load(std::sync::atomic::Ordering::Relaxed)
}

/// The peer address in-process requests come from (audit's `sourceIPs`).
const LOOPBACK: std::net::SocketAddr = std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

struct Link {
    app: Router,
    identity: Option<Identity>,
}

impl client::local::Server for InProcess {
    fn connect(&self, certs: &[CertificateDer<'static>]) -> Arc<dyn client::local::Link> {
        let identity = self.client_ca.as_ref().map(|ca| ca.identify((!certs.is_empty()).then_some(certs)));
        if let Some(Identity::Rejected(why)) = &identity {
            tracing::debug!(reason = %why, "an in-process client's certificate was rejected; its requests get 401");
        }
        Arc::new(Link { app: self.app.clone(), identity })
    }
}

impl client::local::Link for Link {
    fn call(&self, mut req: hyper::Request<Full<Bytes>>) -> client::local::Answer {
        REQUESTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(id) = &self.identity {
            req.extensions_mut().insert(id.clone());
        }
        req.extensions_mut().insert(axum::extract::ConnectInfo(LOOPBACK));
        // A task of its own, as a connection's request is: a caller that stops waiting (a
        // timeout) does not cancel the handler half-way through its writes.
        let handled = tokio::spawn(self.app.clone().oneshot(req));
        Box::pin(async move {
            let resp = match handled.await {
                Ok(Ok(r)) => r,
                Ok(Err(never)) => match never {},
                Err(e) => {
                    tracing::error!(error = %e, "an in-process request's handler failed");
                    axum::response::IntoResponse::into_response(crate::status::ApiError::internal("the request's handler failed"))
                }
            };
            resp.map(pumped)
        })
    }
}

/// How many bytes of a streamed response (a watch, a chunked list) are produced ahead of its
/// reader: about what a loopback connection's socket buffers hold (Linux's default
/// `tcp_wmem` maximum is 4 MiB).
pub const STREAM_AHEAD_BYTES: usize = 4 << 20;

/// A response body as its reader receives it. One whose length is known is handed over as it
/// is. A streamed one is drained by a task of its own into a buffer of at most
/// `STREAM_AHEAD_BYTES`, as a connection's task drains it into the socket: the server's side
/// of a watch (the watch cache's queue for it) keeps emptying while the reader is busy with
/// what it received, instead of waiting to be polled by it. The task ends when the body ends
/// or the reader goes away.
fn pumped(body: axum::body::Body) -> client::local::Body {
    use hyper::body::Body as _;
    if body.size_hint().exact().is_some() {
        return body.map_err(|e| Box::new(e) as client::local::BoxError).boxed_unsync();
    }
    let room = Arc::new(tokio::sync::Semaphore::new(STREAM_AHEAD_BYTES));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut body = body;
        loop {
            let frame = tokio::select! {
                f = body.frame() => f,
                () = tx.closed() => return,
            };
            let Some(frame) = frame else { return };
            let frame = frame.map_err(|e| Box::new(e) as client::local::BoxError);
            // A frame larger than the buffer waits for all of it (and then fills it).
            let len = frame.as_ref().ok().and_then(|f| f.data_ref()).map_or(0, |d| d.len()).clamp(1, STREAM_AHEAD_BYTES);
            let permit = tokio::select! {
                p = room.clone().acquire_many_owned(len as u32) => p.expect("the semaphore is never closed"),
                () = tx.closed() => return,
            };
            if tx.send((frame, permit)).is_err() {
                return;
            }
        }
    });
    Pumped { rx }.boxed_unsync()
}

/// The reader's side of `pumped`: each frame gives its bytes back to the buffer as it is taken.
struct Pumped {
    rx: tokio::sync::mpsc::UnboundedReceiver<(Result<hyper::body::Frame<Bytes>, client::local::BoxError>, tokio::sync::OwnedSemaphorePermit)>,
}

impl hyper::body::Body for Pumped {
    type Data = Bytes;
    type Error = client::local::BoxError;

    fn poll_frame(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        self.rx.poll_recv(cx).map(|f| f.map(|(frame, _permit)| frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// Counts what a streamed body's producer has yielded, and says when it was dropped.
    struct Probe {
        yielded: Arc<AtomicUsize>,
        dropped: Arc<AtomicBool>,
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::SeqCst);
        }
    }

    async fn wait_for(what: &str, f: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while !f() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    // One thread: the pump runs only when the test yields, and each time until it waits, so
    // the yields below show where it stops.
    #[tokio::test]
    async fn a_streamed_body_is_drained_ahead_of_its_reader_up_to_the_buffer() {
        const MIB: usize = 1 << 20;
        let (yielded, dropped) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
        let probe = Probe { yielded: yielded.clone(), dropped: dropped.clone() };
        // An endless stream of 1 MiB frames, its length unknown (as a watch's).
        let frames = futures_util::stream::unfold(probe, |p| async move {
            p.yielded.fetch_add(1, Ordering::SeqCst);
            Some((Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; MIB])), p))
        });
        let mut body = pumped(axum::body::Body::from_stream(frames));
        let ahead = STREAM_AHEAD_BYTES / MIB;
        // Nobody reads, yet the buffer fills: the producer is polled by the pump, not the reader.
        wait_for("the pump to fill the buffer", || yielded.load(Ordering::SeqCst) >= ahead + 1).await;
        // ... and stops there (one frame waits for room; nothing beyond it is asked for).
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        assert_eq!(yielded.load(Ordering::SeqCst), ahead + 1, "the pump went past its buffer");
        // Reading a frame makes room for the next.
        let f = body.frame().await.unwrap().unwrap();
        assert_eq!(f.data_ref().map(|d| d.len()), Some(MIB));
        wait_for("the pump to take the next frame", || yielded.load(Ordering::SeqCst) == ahead + 2).await;
        // The reader goes away: the producer is dropped (a watch ends).
        drop(body);
        wait_for("the producer to be dropped with its reader", || dropped.load(Ordering::SeqCst)).await;
    }

    #[tokio::test]
    async fn a_body_of_known_length_is_handed_over_as_it_is() {
        let body = pumped(axum::body::Body::from("whole"));
        assert_eq!(hyper::body::Body::size_hint(&body).exact(), Some(5));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "whole");
    }
}
