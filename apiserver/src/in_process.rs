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
                    let status = serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "the request's handler failed", "reason": "InternalError", "code": 500});
                    let mut r = axum::response::Response::new(axum::body::Body::from(status.to_string()));
                    *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
                    r
                }
            };
            resp.map(|b| b.map_err(|e| Box::new(e) as client::local::BoxError).boxed_unsync())
        })
    }
}
