//! The in-process transport: a client of an API server that runs in its own process
//! (`capstan up`'s scheduler, controllers and node, loadgen's embedded hollow nodes) hands
//! each request to the server's request pipeline as a call, instead of writing it to a
//! loopback socket for the same process to read back. What is skipped is the socket, the
//! HTTP/1.1 framing on both sides and the TLS records; what is not is everything the server
//! does with a request: authentication, authorization, admission, audit and fairness see an
//! in-process request exactly as a remote one, with the identity a TLS handshake presenting
//! the client's certificate would have given it (the certificate is verified the same way,
//! once per link as once per connection) and its bearer token in its header.
//!
//! A server offers itself with `offer(base, server)`; a `Client` made afterwards for exactly
//! that base URL (one server, not a list of replicas) uses it. A client made before, or for
//! any other URL, or in another process, uses the network. The offer ends when its `Offer`
//! is dropped: links already made then answer as a closed connection would.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http_body_util::Full;
use rustls::pki_types::CertificateDer;

/// A response body of either transport.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The answer to one request.
pub type Answer = Pin<Box<dyn Future<Output = hyper::Response<Body>> + Send>>;

/// An API server serving callers in its own process.
pub trait Server: Send + Sync {
    /// A link for a client presenting `certs` (leaf first; empty: no certificate), identified
    /// as a TLS handshake presenting them would identify its connection.
    fn connect(&self, certs: &[CertificateDer<'static>]) -> Arc<dyn Link>;
}

/// One client's way into the server (what a connection is on the network).
pub trait Link: Send + Sync {
    fn call(&self, req: hyper::Request<Full<Bytes>>) -> Answer;
}

struct Offered {
    base: String,
    server: Arc<dyn Server>,
    open: Arc<AtomicBool>,
}

static OFFERS: RwLock<Vec<Offered>> = RwLock::new(Vec::new());

/// While held, clients made for `base` in this process reach the server through calls.
#[must_use = "the offer ends when this is dropped"]
pub struct Offer {
    base: String,
    open: Arc<AtomicBool>,
}

/// Offers `server` to this process's clients of `base` (as they name it: scheme, host, port).
/// `CAPSTAN_IN_PROCESS=0` in the environment declines every offer (the components then use
/// loopback connections, for comparing the two).
pub fn offer(base: &str, server: Arc<dyn Server>) -> Offer {
    let base = base.trim_end_matches('/').to_string();
    let open = Arc::new(AtomicBool::new(std::env::var("CAPSTAN_IN_PROCESS").map_or(true, |v| v != "0")));
    if open.load(Ordering::Relaxed) {
        let mut offers = OFFERS.write().unwrap_or_else(|e| e.into_inner());
        offers.retain(|o| o.base != base);
        offers.push(Offered { base: base.clone(), server, open: open.clone() });
    }
    Offer { base, open }
}

impl Drop for Offer {
    fn drop(&mut self) {
        self.open.store(false, Ordering::Release);
        let mut offers = OFFERS.write().unwrap_or_else(|e| e.into_inner());
        offers.retain(|o| !(o.base == self.base && Arc::ptr_eq(&o.open, &self.open)));
    }
}

/// The server offered for `base`, if any, with the flag that says it still is.
pub(crate) fn offered(base: &str) -> Option<(Arc<dyn Server>, Arc<AtomicBool>)> {
    let offers = OFFERS.read().unwrap_or_else(|e| e.into_inner());
    offers.iter().find(|o| o.base == base).map(|o| (o.server.clone(), o.open.clone()))
}

/// The certificate chain a client with `cfg` presents in a handshake (asked of the same
/// resolver the handshake asks), empty when it presents none.
pub(crate) fn presented(cfg: &rustls::ClientConfig) -> Vec<CertificateDer<'static>> {
    if !cfg.client_auth_cert_resolver.has_certs() {
        return Vec::new();
    }
    cfg.client_auth_cert_resolver.resolve(&[], &[]).map(|k| k.cert.clone()).unwrap_or_default()
}

/// A client's link, and whether the offer it came from still stands.
#[derive(Clone)]
pub(crate) struct Linked {
    pub link: Arc<dyn Link>,
    pub open: Arc<AtomicBool>,
}

impl Linked {
    pub fn open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }
}
