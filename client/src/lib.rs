//! capstan's client of the API server (used by the kubelet, the scheduler and the
//! controllers): a small JSON client over HTTP/1.1 keep-alive connections (one pool per
//! process), with Kubernetes `Status` errors surfaced as `ClientError::Status`.
//!
//! Given several API servers (`http://a,http://b`: the replicas of one cluster), it follows
//! whichever answers: a request that cannot connect is sent to the next one (it was not
//! sent, so this is safe for any verb), and after a 503 (a replica without a quorum) or a
//! broken connection the next request goes to the next one.

pub mod decode;
pub mod events;
pub mod informer;
pub mod kubeconfig;
pub mod local;
pub mod obj;
pub mod tls;
pub mod workqueue;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_rustls::HttpsConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{code} {reason}: {message}")]
    Status { code: u16, reason: String, message: String },
    #[error("transport: {0}")]
    Transport(String),
    #[error("response is not JSON: {0}")]
    Decode(String),
}

#[derive(Clone)]
pub struct Client {
    bases: std::sync::Arc<[String]>,
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    agent: &'static str,
    http: Http,
    /// The API server of this process, when it offered itself for this client's base URL
    /// (`local`): requests go to it as calls, not over `http`.
    local: Option<local::ClientLink>,
    bearer: Option<Bearer>,
}

type Hyper = hyper_util::client::legacy::Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

fn hyper_with(cfg: &rustls::ClientConfig) -> Hyper {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(tls::connector_with(cfg))
}

/// The connections a client sends on.
#[derive(Clone)]
enum Http {
    Fixed(Hyper),
    /// Connections presenting a rotating certificate: when it rotates, the next request
    /// starts a new pool (the old one closes as its last requests end), so no idle
    /// connection goes on presenting the old certificate after it expires, as the kubelet
    /// closes its connections when its certificate rotates.
    Renewing(std::sync::Arc<Renewing>),
}

struct Renewing {
    tls: tls::ClientTls,
    rotating: std::sync::Arc<tls::RotatingCert>,
    /// The pool, and the certificate generation it presents.
    current: std::sync::RwLock<(u64, Hyper)>,
}

impl Http {
    fn get(&self) -> std::borrow::Cow<'_, Hyper> {
        match self {
            Http::Fixed(h) => std::borrow::Cow::Borrowed(h),
            Http::Renewing(r) => {
                let g = r.rotating.generation();
                {
                    let cur = r.current.read().unwrap();
                    if cur.0 == g {
                        return std::borrow::Cow::Owned(cur.1.clone());
                    }
                }
                let mut cur = r.current.write().unwrap();
                if cur.0 != g {
                    *cur = (g, hyper_with(r.tls.config()));
                }
                std::borrow::Cow::Owned(cur.1.clone())
            }
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("bases", &self.bases).field("agent", &self.agent).field("bearer", &self.bearer.is_some()).finish_non_exhaustive()
    }
}

/// A bearer token a client presents (`Authorization: Bearer ...`), replaceable while the
/// client is in use (a ServiceAccount token refreshed before it expires); every clone of a
/// client shares its `Bearer`.
#[derive(Clone)]
pub struct Bearer(std::sync::Arc<std::sync::RwLock<hyper::header::HeaderValue>>);

impl Bearer {
    pub fn new(token: &str) -> Result<Bearer, String> {
        Ok(Bearer(std::sync::Arc::new(std::sync::RwLock::new(Self::header(token)?))))
    }

    fn header(token: &str) -> Result<hyper::header::HeaderValue, String> {
        let mut h = hyper::header::HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| "a bearer token must be printable ASCII".to_string())?;
        h.set_sensitive(true);
        Ok(h)
    }

    /// Replaces the token for every request sent from now on.
    pub fn set(&self, token: &str) -> Result<(), String> {
        *self.0.write().unwrap() = Self::header(token)?;
        Ok(())
    }
}

/// A stream of watch events (one JSON object per line), decoded without managedFields
/// (`decode`).
pub struct WatchStream {
    body: local::Body,
    buf: Vec<u8>,
    /// Where the next line starts in `buf`, and how far it has been searched for a newline:
    /// each byte is scanned once, and consumed lines are dropped a chunk at a time.
    start: usize,
    searched: usize,
}

impl WatchStream {
    pub async fn next(&mut self) -> Option<Value> {
        self.next_with(|line| decode::decode(line).ok()).await
    }

    /// The next event decoded as `T`: a typed struct that names only the fields its reader
    /// needs, so the rest of each line is scanned, not built. Lines that are not a `T` are
    /// skipped.
    pub async fn next_as<T: serde::de::DeserializeOwned>(&mut self) -> Option<T> {
        self.next_with(|line| serde_json::from_slice(line).ok()).await
    }

    async fn next_with<T>(&mut self, decode: impl Fn(&[u8]) -> Option<T>) -> Option<T> {
        loop {
            if let Some(at) = self.buf[self.searched..].iter().position(|b| *b == b'\n') {
                let end = self.searched + at;
                let line = &self.buf[self.start..end];
                self.start = end + 1;
                self.searched = self.start;
                match decode(line) {
                    Some(v) => return Some(v),
                    None => continue,
                }
            }
            self.searched = self.buf.len();
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.searched -= self.start;
                self.start = 0;
            }
            let frame = self.body.frame().await?.ok()?;
            if let Ok(d) = frame.into_data() {
                self.buf.extend_from_slice(&d);
            }
        }
    }
}

/// An answer of `code` >= 300, with its `Status` body's reason and message.
fn status_error(code: u16, status: &Value) -> ClientError {
    ClientError::Status {
        code,
        reason: status["reason"].as_str().unwrap_or("").to_string(),
        message: status["message"].as_str().unwrap_or("").to_string(),
    }
}

impl Client {
    pub fn new(base: &str) -> Client {
 Client::with_agent(base, "capstan/0.1")
    }

    /// A client whose requests say who sends them (`User-Agent`). `base` may list several
    /// API servers of one cluster, comma-separated.
    pub fn with_agent(base: &str, agent: &'static str) -> Client {
        let bases: Vec<String> = base.split(',').map(|b| b.trim().trim_end_matches('/').to_string()).filter(|b| !b.is_empty()).collect();
        let cfg = tls::default_config();
        let local = local::ClientLink::of(&bases, &cfg, None);
        Client {
            bases: bases.into(),
            current: Default::default(),
            agent,
            http: Http::Fixed(hyper_with(&cfg)),
            local,
            bearer: None,
        }
    }

    /// This client (its connections included) presenting `bearer` with every request. A
    /// token is ignored by the server when the connection also presents a client
    /// certificate (certificates authenticate first): give a token client credentials with
    /// the CA only (`with_credentials`).
    pub fn with_bearer(&self, bearer: Bearer) -> Client {
        Client { bearer: Some(bearer), ..self.clone() }
    }

    /// As `with_agent`, presenting `creds` instead of the process's default credentials
    /// (a component with an identity of its own, as a kubelet's `system:node:NAME`).
    pub fn with_credentials(base: &str, agent: &'static str, creds: &tls::Credentials) -> Result<Client, String> {
        let cfg = tls::client_config(creds)?;
        let mut c = Client::with_agent(base, agent);
        c.http = Http::Fixed(hyper_with(&cfg));
        c.local = local::ClientLink::of(&c.bases, &cfg, None);
        Ok(c)
    }

    /// As `with_agent`, with the TLS of `t` (a kubelet's, whose certificate may rotate).
    pub fn with_tls(base: &str, agent: &'static str, t: &tls::ClientTls) -> Client {
        let mut c = Client::with_agent(base, agent);
        c.http = match t.rotating() {
            Some(r) => Http::Renewing(std::sync::Arc::new(Renewing { tls: t.clone(), rotating: r.clone(), current: std::sync::RwLock::new((r.generation(), hyper_with(t.config()))) })),
            None => Http::Fixed(hyper_with(t.config())),
        };
        c.local = local::ClientLink::of(&c.bases, t.config(), t.rotating().map(|r| (t, r)));
        c
    }

    /// The API server requests go to now.
    pub fn base(&self) -> &str {
        &self.bases[self.current.load(std::sync::atomic::Ordering::Relaxed) % self.bases.len()]
    }

    fn next_server(&self, from: usize) {
        if self.bases.len() > 1 {
            let to = (from + 1) % self.bases.len();
            let _ = self.current.compare_exchange(from, to, std::sync::atomic::Ordering::Relaxed, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Whether requests go to this process's API server as calls (`local`).
    pub fn in_process(&self) -> bool {
        self.local.as_ref().is_some_and(|l| l.link().is_some())
    }

    async fn send(&self, method: &str, path: &str, ctype: &str, body: Option<&Value>) -> Result<hyper::Response<local::Body>, ClientError> {
        let bytes = match body {
            Some(b) => Bytes::from(serde_json::to_vec(b).map_err(|e| ClientError::Decode(e.to_string()))?),
            None => Bytes::new(),
        };
        let n = self.bases.len();
        let mut attempt = 0;
        loop {
            let i = self.current.load(std::sync::atomic::Ordering::Relaxed) % n;
            let mut req = hyper::Request::builder()
                .method(method)
                .uri(format!("{}{path}", self.bases[i]))
                .header("Accept", "application/json")
                .header("User-Agent", self.agent);
            if let Some(b) = &self.bearer {
                req = req.header(hyper::header::AUTHORIZATION, b.0.read().unwrap().clone());
            }
            if body.is_some() {
                req = req.header("Content-Type", ctype);
            }
            if let Some(local) = &self.local {
                // As hyper would send it: with its length.
                if body.is_some() {
                    req = req.header(hyper::header::CONTENT_LENGTH, bytes.len());
                }
                let req = req.body(Full::new(bytes.clone())).map_err(|e| ClientError::Transport(e.to_string()))?;
                return match local.link() {
                    Some(link) => Ok(link.call(req).await),
                    None => Err(ClientError::Transport("connection refused: this process's API server stopped".into())),
                };
            }
            let req = req.body(Full::new(bytes.clone())).map_err(|e| ClientError::Transport(e.to_string()))?;
            match self.http.get().request(req).await {
                Ok(resp) => {
                    let resp = resp.map(|b| b.map_err(|e| Box::new(e) as local::BoxError).boxed_unsync());
                    if resp.status().as_u16() == 503 {
                        self.next_server(i);
                    }
                    return Ok(resp);
                }
                // Not sent: another server may take it.
                Err(e) if e.is_connect() && attempt + 1 < n => {
                    self.next_server(i);
                    attempt += 1;
                }
                Err(e) => {
                    self.next_server(i);
                    return Err(ClientError::Transport(e.to_string()));
                }
            }
        }
    }

    async fn call(&self, method: &str, path: &str, ctype: &str, body: Option<&Value>) -> Result<Value, ClientError> {
        let resp = self.send(method, path, ctype, body).await?;
        let code = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.map_err(|e| ClientError::Transport(e.to_string()))?.to_bytes();
        let v: Value = decode::decode(&bytes).map_err(|e| ClientError::Decode(e.to_string()))?;
        if code >= 300 {
            return Err(status_error(code, &v));
        }
        Ok(v)
    }

    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call("GET", path, "", None).await
    }
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.call("POST", path, "application/json", Some(body)).await
    }
    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.call("PUT", path, "application/json", Some(body)).await
    }
    pub async fn merge_patch(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.call("PATCH", path, "application/merge-patch+json", Some(body)).await
    }
    /// A merge patch whose response body is not needed (heartbeats, status writes): only its
    /// status is read, the object sent back is not decoded.
    pub async fn merge_patch_quiet(&self, path: &str, body: &Value) -> Result<(), ClientError> {
        self.call_quiet("PATCH", path, "application/merge-patch+json", body).await
    }
    /// A create whose response body is not needed (a controller's pods): as `merge_patch_quiet`.
    pub async fn post_quiet(&self, path: &str, body: &Value) -> Result<(), ClientError> {
        self.call_quiet("POST", path, "application/json", body).await
    }
    async fn call_quiet(&self, method: &str, path: &str, ctype: &str, body: &Value) -> Result<(), ClientError> {
        let resp = self.send(method, path, ctype, Some(body)).await?;
        let code = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.map_err(|e| ClientError::Transport(e.to_string()))?.to_bytes();
        if code >= 300 {
            return Err(status_error(code, &serde_json::from_slice(&bytes).unwrap_or_default()));
        }
        Ok(())
    }

    pub async fn delete(&self, path: &str, options: &Value) -> Result<Value, ClientError> {
        self.call("DELETE", path, "application/json", Some(options)).await
    }

    /// A GET whose answer is decoded as `T` (a typed struct naming only what its reader
    /// needs); an error answer's `Status` as `get`'s.
    pub async fn get_as<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let resp = self.send("GET", path, "", None).await?;
        let code = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.map_err(|e| ClientError::Transport(e.to_string()))?.to_bytes();
        if code >= 300 {
            return Err(status_error(code, &serde_json::from_slice(&bytes).unwrap_or_default()));
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// A GET whose answer is text, not an object (`/metrics`).
    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let resp = self.send("GET", path, "", None).await?;
        let code = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.map_err(|e| ClientError::Transport(e.to_string()))?.to_bytes();
        if code >= 300 {
            return Err(ClientError::Status { code, reason: String::new(), message: String::from_utf8_lossy(&bytes).into_owned() });
        }
        String::from_utf8(bytes.to_vec()).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Opens a watch (`path` includes `watch=true`).
    pub async fn watch(&self, path: &str) -> Result<WatchStream, ClientError> {
        let resp = self.send("GET", path, "", None).await?;
        if resp.status().as_u16() >= 300 {
            return Err(ClientError::Status { code: resp.status().as_u16(), reason: String::new(), message: "watch refused".into() });
        }
        Ok(WatchStream { body: resp.into_body(), buf: Vec::new(), start: 0, searched: 0 })
    }
}
