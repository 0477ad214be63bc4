//! The door of a process's own HTTP endpoints, as Kubernetes' components keep theirs with
//! delegated authentication and authorization: TLS, client certificates of the cluster CA
//! (CN = user, O = groups), and every request authorized by a SubjectAccessReview to the
//! API server. Two kinds of doors:
//! - a kubelet's endpoint (`--client-ca-file`, `--authorization-mode=Webhook`): a
//!   self-signed serving certificate (as a kubelet makes one without `--tls-cert-file`), a
//!   client certificate required, `nodes/<subresource>` of the node asked (`stats` for
//!   `/stats/...`, `proxy` for the rest, as the kubelet maps its paths);
//! - the scheduler's and controllers' metrics and profiling port (kube-scheduler's secure
//!   port): a serving certificate given by the caller, the request's path asked as a
//!   non-resource URL (`get /metrics`), `/healthz`, `/livez` and `/readyz` open to anyone
//!   (`--authorization-always-allow-paths`).
//!
//! Answers are remembered as the kubelet's webhook cache does: allowed for 5 minutes, denied
//! for 30 seconds, at most 4,096 entries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::client::Client;

const ALLOWED_TTL: Duration = Duration::from_secs(300);
const DENIED_TTL: Duration = Duration::from_secs(30);
const CACHE_MAX: usize = 4096;
const HANDSHAKE: Duration = Duration::from_secs(10);

/// A caller, from its client certificate.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Caller {
    pub user: String,
    pub groups: Vec<String>,
}

/// What a review asks about.
#[derive(Clone, Debug)]
enum Asks {
    /// `nodes/<subresource>` of this node ("" for a process hosting many nodes: any node).
    Node(String),
    /// The request's path, as a non-resource URL.
    Paths,
}

/// Paths anyone may read on a components port.
const OPEN_PATHS: &[&str] = &["/healthz", "/livez", "/readyz"];

/// A self-signed serving certificate for `localhost` and 127.0.0.1, made in memory (as a
/// kubelet or kube-scheduler makes one when given none): clients that check it pin it.
pub(crate) fn self_signed(cn: &str) -> Result<(rustls::pki_types::CertificateDer<'static>, rustls::pki_types::PrivateKeyDer<'static>), String> {
    use rustls::pki_types::pem::PemObject;
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut p = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).map_err(|e| e.to_string())?;
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    let cert = p.self_signed(&key).map_err(|e| e.to_string())?;
    let der_key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).map_err(|e| e.to_string())?;
    Ok((cert.der().clone(), der_key))
}

/// What guards the endpoint.
pub struct Guard {
    tls: Arc<rustls::ServerConfig>,
    /// Asks the API server (SubjectAccessReview).
    api: Client,
    asks: Asks,
    decided: Mutex<HashMap<(Caller, String), (Instant, bool)>>,
}

impl Guard {
    /// Trusting client certificates of `client_ca_pem`, serving a self-signed certificate.
    pub fn new(client_ca_pem: &str, api: Client, node: String) -> Result<Guard, String> {
        let verifier = client_verifier(client_ca_pem, false)?;
        let (cert, key) = self_signed(&format!("{}@kubelet", if node.is_empty() { "hollow" } else { &node }))?;
        let tls = rustls::ServerConfig::builder().with_client_cert_verifier(verifier).with_single_cert(vec![cert], key).map_err(|e| e.to_string())?;
        Ok(Guard { tls: Arc::new(tls), api, asks: Asks::Node(node), decided: Mutex::new(HashMap::new()) })
    }

    /// A standalone component's port (`capstan scheduler`, `capstan controllers`), as
    /// kube-scheduler's without `--tls-cert-file`: a self-signed serving certificate named
    /// `name`, otherwise as `for_paths`.
    pub fn self_signed_for_paths(client_ca_pem: &str, name: &str, api: Client) -> Result<Guard, String> {
        let verifier = client_verifier(client_ca_pem, true)?;
        let (cert, key) = self_signed(name)?;
        let tls = rustls::ServerConfig::builder().with_client_cert_verifier(verifier).with_single_cert(vec![cert], key).map_err(|e| e.to_string())?;
        Ok(Guard { tls: Arc::new(tls), api, asks: Asks::Paths, decided: Mutex::new(HashMap::new()) })
    }

    /// A components port's door: serving `cert_pem` (with `key_pem`), client certificates of
    /// `client_ca_pem` optional (anonymous callers reach the open paths only).
    pub fn for_paths(client_ca_pem: &str, cert_pem: &str, key_pem: &str, api: Client) -> Result<Guard, String> {
        use rustls::pki_types::pem::PemObject;
        let verifier = client_verifier(client_ca_pem, true)?;
        let chain = rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().map_err(|e| format!("the serving certificate: {e}"))?;
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| format!("the serving key: {e}"))?;
        let tls = rustls::ServerConfig::builder().with_client_cert_verifier(verifier).with_single_cert(chain, key).map_err(|e| e.to_string())?;
        Ok(Guard { tls: Arc::new(tls), api, asks: Asks::Paths, decided: Mutex::new(HashMap::new()) })
    }

    /// What a request for `path` is reviewed as.
    fn subject(&self, path: &str) -> String {
        match &self.asks {
            Asks::Node(_) if path.starts_with("/stats") => "stats".into(),
            Asks::Node(_) => "proxy".into(),
            Asks::Paths => path.to_string(),
        }
    }

    async fn allowed(&self, who: &Caller, subject: &str) -> bool {
        let key = (who.clone(), subject.to_string());
        if let Some((at, ok)) = self.decided.lock().unwrap().get(&key)
            && at.elapsed() < if *ok { ALLOWED_TTL } else { DENIED_TTL }
        {
            return *ok;
        }
        let attributes = match &self.asks {
            Asks::Node(node) => json!({"resourceAttributes": {"verb": "get", "resource": "nodes", "subresource": subject, "name": node}}),
            Asks::Paths => json!({"nonResourceAttributes": {"verb": "get", "path": subject}}),
        };
        let mut spec = json!({"user": who.user, "groups": who.groups});
        for (k, v) in attributes.as_object().into_iter().flatten() {
            spec[k] = v.clone();
        }
        let review = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec});
        let ok = match self.api.post("/apis/authorization.k8s.io/v1/subjectaccessreviews", &review).await {
            Ok(v) => v["status"]["allowed"] == true,
            Err(e) => {
                tracing::warn!(error = %e, "the kubelet could not ask the API server to authorize a request");
                return false;
            }
        };
        let mut d = self.decided.lock().unwrap();
        if d.len() >= CACHE_MAX {
            d.clear();
        }
        d.insert(key, (Instant::now(), ok));
        ok
    }
}

/// Verifies client certificates of `client_ca_pem`; `optional`: a caller may present none.
fn client_verifier(client_ca_pem: &str, optional: bool) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(client_ca_pem.as_bytes()) {
        roots.add(c.map_err(|e| format!("the client CA: {e}"))?).map_err(|e| format!("the client CA: {e}"))?;
    }
    let b = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots));
    let b = if optional { b.allow_unauthenticated() } else { b };
    b.build().map_err(|e| format!("the client CA: {e}"))
}

/// The caller of a certificate (CN, O).
fn caller_of(der: &[u8]) -> Option<Caller> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let user = cert.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    let groups = cert.subject().iter_organization().filter_map(|o| o.as_str().ok().map(str::to_string)).collect();
    Some(Caller { user, groups })
}

/// The authorization middleware: the open paths of a components port to anyone, else 401
/// without a caller, 403 when the review says no.
async fn authorize(State(g): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    if matches!(g.asks, Asks::Paths) && OPEN_PATHS.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let Some(who) = req.extensions().get::<Caller>().cloned() else { return (StatusCode::UNAUTHORIZED, "Unauthorized").into_response() };
    let subject = g.subject(req.uri().path());
    if !g.allowed(&who, &subject).await {
        let msg = match &g.asks {
            Asks::Node(_) => format!("Forbidden (user={}, verb=get, resource=nodes, subresource={subject})", who.user),
            Asks::Paths => format!("Forbidden (user={}, verb=get, path={subject})", who.user),
        };
        return (StatusCode::FORBIDDEN, msg).into_response();
    }
    next.run(req).await
}

/// Serves `app` on `listener`: over TLS behind `guard`, or plain HTTP without one.
pub async fn serve(listener: tokio::net::TcpListener, app: axum::Router, guard: Option<Arc<Guard>>) {
    let Some(g) = guard else {
        let _ = axum::serve(listener, app).await;
        return;
    };
    let app = app.layer(axum::middleware::from_fn_with_state(g.clone(), authorize));
    let acceptor = tokio_rustls::TlsAcceptor::from(g.tls.clone());
    loop {
        let Ok((stream, from)) = listener.accept().await else { continue };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%from, error = %e, "a TLS handshake with the kubelet endpoint failed");
                    return;
                }
                Err(_) => return,
            };
            let who = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| caller_of(c));
            let app = match who {
                Some(w) => app.layer(axum::Extension(w)),
                None => app,
            };
            let svc = hyper_util::service::TowerToHyperService::new(app);
            let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new()).serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), svc).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_is_its_certificates_common_name_and_organizations() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, "kube-apiserver-kubelet-client");
        p.distinguished_name.push(rcgen::DnType::OrganizationName, "system:masters");
        let cert = p.self_signed(&key).unwrap();
        assert_eq!(caller_of(cert.der()), Some(Caller { user: "kube-apiserver-kubelet-client".into(), groups: vec!["system:masters".into()] }));
        assert_eq!(caller_of(b"not a certificate"), None);
    }
}
