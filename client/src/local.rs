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
fn offered(base: &str) -> Option<(Arc<dyn Server>, Arc<AtomicBool>)> {
    let offers = OFFERS.read().unwrap_or_else(|e| e.into_inner());
    offers.iter().find(|o| o.base == base).map(|o| (o.server.clone(), o.open.clone()))
}

/// The certificate chain a client with `cfg` presents in a handshake (asked of the same
/// resolver the handshake asks), empty when it presents none.
fn presented(cfg: &rustls::ClientConfig) -> Vec<CertificateDer<'static>> {
    if !cfg.client_auth_cert_resolver.has_certs() {
        return Vec::new();
    }
    cfg.client_auth_cert_resolver.resolve(&[], &[]).map(|k| k.cert.clone()).unwrap_or_default()
}

/// A client's link, and whether the offer it came from still stands.
#[derive(Clone)]
pub(crate) struct Linked {
    link: Arc<dyn Link>,
    open: Arc<AtomicBool>,
}

impl Linked {
    fn open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }
}

/// A client's in-process link: fixed, or remade when its certificate rotates (as the client's
/// HTTP side starts a new pool of connections).
#[derive(Clone)]
pub(crate) enum ClientLink {
    Fixed(Linked),
    Renewing(Arc<RenewingLink>),
}

pub(crate) struct RenewingLink {
    server: Arc<dyn Server>,
    open: Arc<AtomicBool>,
    tls: crate::tls::ClientTls,
    rotating: Arc<crate::tls::RotatingCert>,
    current: RwLock<(u64, Arc<dyn Link>)>,
}

impl ClientLink {
    /// The link of a client of `bases` presenting `cfg`'s certificate (`rotating`: one that
    /// rotates), if this process's API server offered itself for exactly that base.
    pub(crate) fn of(bases: &[String], cfg: &rustls::ClientConfig, rotating: Option<(&crate::tls::ClientTls, &Arc<crate::tls::RotatingCert>)>) -> Option<ClientLink> {
        let [base] = bases else { return None };
        let (server, open) = offered(base)?;
        let link = server.connect(&presented(cfg));
        Some(match rotating {
            Some((t, r)) => ClientLink::Renewing(std::sync::Arc::new(RenewingLink { server, open, tls: t.clone(), rotating: r.clone(), current: std::sync::RwLock::new((r.generation(), link)) })),
            None => ClientLink::Fixed(Linked { link, open }),
        })
    }

    /// The link to send on now, or `None` once the server withdrew its offer.
    pub(crate) fn link(&self) -> Option<Arc<dyn Link>> {
        match self {
            ClientLink::Fixed(l) => l.open().then(|| l.link.clone()),
            ClientLink::Renewing(r) => {
                if !r.open.load(Ordering::Acquire) {
                    return None;
                }
                let g = r.rotating.generation();
                {
                    let cur = r.current.read().unwrap();
                    if cur.0 == g {
                        return Some(cur.1.clone());
                    }
                }
                let mut cur = r.current.write().unwrap();
                if cur.0 != g {
                    *cur = (g, r.server.connect(&presented(r.tls.config())));
                }
                Some(cur.1.clone())
            }
        }
    }
}
