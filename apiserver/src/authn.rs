//! Authentication: who a request comes from.
//!
//! The identity of a connection is decided once, when its TLS handshake ends, from the client
//! certificate it presented (`ClientCa::identify`): CN is the user, each O a group, as in
//! Kubernetes. The handshake itself accepts any certificate (proving the client holds its
//! key); the chain is checked against the cluster CA afterwards, so that a certificate of
//! another CA, or an expired one, gets Kubernetes' 401 `Status` instead of a TLS alert.
//! The server loop (`serve.rs`) puts the connection's `Identity` into every request's
//! extensions; the `authenticate` middleware turns it into a `UserInfo` or a 401.
//!
//! Without TLS (`--insecure-http`, for benchmarks) there is no identity to check: every request
//! is `system:unsecured` in `system:masters`, as on kube-apiserver's old insecure port.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use crate::handlers::AppState;
use crate::sa_token::{Claims, Keys};
use crate::status::ApiError;

/// The group every authenticated user is in.
pub const AUTHENTICATED: &str = "system:authenticated";

/// Who sent a request.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct UserInfo {
    pub name: String,
    pub groups: Vec<String>,
    /// Empty when the authenticator knows none (certificates).
    pub uid: String,
    /// What an authenticator adds (a ServiceAccount token's pod, its credential id).
    pub extra: std::collections::BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    pub fn new(name: impl Into<String>, groups: Vec<String>) -> UserInfo {
        UserInfo { name: name.into(), groups, ..Default::default() }
    }

    /// The user of a request on the insecure port.
    pub fn unsecured() -> UserInfo {
        UserInfo::new("system:unsecured", vec!["system:masters".into(), AUTHENTICATED.into()])
    }

    /// As Kubernetes' `UserInfo` (`username`, `uid`, `groups`, `extra`; empty ones left out).
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({ "username": self.name, "groups": self.groups });
        if !self.uid.is_empty() {
            v["uid"] = serde_json::json!(self.uid);
        }
        if !self.extra.is_empty() {
            v["extra"] = serde_json::json!(self.extra);
        }
        v
    }
}

/// What a connection's handshake established.
#[derive(Clone, Debug)]
pub enum Identity {
    /// No client certificate.
    Anonymous,
    /// A verified certificate's user, and the certificate's `notAfter` (Unix seconds): a
    /// connection outliving its certificate authenticates nothing more, as Kubernetes checks
    /// a client certificate on every request.
    User(Arc<UserInfo>, i64),
    /// A certificate that did not verify; the reason is logged, the client gets 401.
    Rejected(Arc<str>),
}

/// The cluster CA, as the judge of client certificates.
#[derive(Debug)]
pub struct ClientCa {
    webpki: Arc<dyn ClientCertVerifier>,
}

impl ClientCa {
    pub fn new(roots: RootCertStore) -> Result<ClientCa, String> {
        let webpki = WebPkiClientVerifier::builder(Arc::new(roots)).allow_unauthenticated().build().map_err(|e| format!("client CA: {e}"))?;
        Ok(ClientCa { webpki })
    }

    /// The verifier for the TLS handshake: asks for a certificate, accepts any (after checking
    /// the client's signature with its key), leaves the chain to `identify`.
    pub fn handshake_verifier(self: &Arc<Self>) -> Arc<dyn ClientCertVerifier> {
        Arc::new(Lenient(self.clone()))
    }

    /// The identity of a connection that presented `certs` (leaf first), or none.
    pub fn identify(&self, certs: Option<&[CertificateDer<'_>]>) -> Identity {
        let Some((leaf, intermediates)) = certs.and_then(|c| c.split_first()) else {
            return Identity::Anonymous;
        };
        if let Err(e) = self.webpki.verify_client_cert(leaf, intermediates, UnixTime::now()) {
            return Identity::Rejected(format!("client certificate: {e}").into());
        }
        let not_after = x509_parser::parse_x509_certificate(leaf).map(|(_, c)| c.validity().not_after.timestamp()).unwrap_or(i64::MIN);
        match user_of_certificate(leaf) {
            Ok(u) => Identity::User(Arc::new(u), not_after),
            Err(e) => Identity::Rejected(e.into()),
        }
    }
}

/// CN is the user name, each O a group; every authenticated user is also in
/// `system:authenticated`.
pub fn user_of_certificate(der: &[u8]) -> Result<UserInfo, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("client certificate: {e}"))?;
    let subject = cert.subject();
    let name = subject.iter_common_name().next().and_then(|cn| cn.as_str().ok()).unwrap_or("").to_string();
    if name.is_empty() {
        return Err("client certificate has no common name".into());
    }
    let mut groups: Vec<String> = subject.iter_organization().filter_map(|o| o.as_str().ok().map(str::to_string)).collect();
    if !groups.iter().any(|g| g == AUTHENTICATED) {
        groups.push(AUTHENTICATED.into());
    }
    Ok(UserInfo::new(name, groups))
}

#[derive(Debug)]
struct Lenient(Arc<ClientCa>);

impl ClientCertVerifier for Lenient {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.webpki.root_hint_subjects()
    }

    fn verify_client_cert(&self, _: &CertificateDer<'_>, _: &[CertificateDer<'_>], _: UnixTime) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.webpki.supported_verify_schemes()
    }
}

/// How the API server learns who is asking.
#[derive(Clone, Debug)]
pub enum Mode {
    /// TLS: from the connection's client certificate, else from a bearer token.
    Tls { tokens: Arc<StaticTokens> },
    /// `--insecure-http`: everyone is `system:unsecured`.
    Insecure,
}

/// Kubernetes' static token file (`--token-auth-file`): CSV lines of
/// `token,user,uid[,"group1,group2,..."]`; blank lines and `#` comments are skipped.
#[derive(Debug, Default)]
pub struct StaticTokens {
    users: std::collections::HashMap<String, Arc<UserInfo>>,
}

impl StaticTokens {
    pub fn none() -> Arc<StaticTokens> {
        Arc::new(StaticTokens::default())
    }

    /// Parses the file's text; an error names the line and the field.
    pub fn parse(text: &str) -> Result<StaticTokens, String> {
        let mut users = std::collections::HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields = split_csv(line).map_err(|e| format!("line {n}: {e}"))?;
            if fields.len() < 3 {
                return Err(format!("line {n}: need token,user,uid[,groups]; found {} field(s)", fields.len()));
            }
            if fields.len() > 4 {
                return Err(format!("line {n}: more than 4 fields (quote the groups: \"g1,g2\")"));
            }
            let (token, user) = (fields[0].as_str(), fields[1].as_str());
            if token.is_empty() {
                return Err(format!("line {n}: field 1 (token) is empty"));
            }
            if user.is_empty() {
                return Err(format!("line {n}: field 2 (user) is empty"));
            }
            let mut groups: Vec<String> = fields.get(3).map(|g| g.split(',').map(str::trim).filter(|g| !g.is_empty()).map(str::to_string).collect()).unwrap_or_default();
            if !groups.iter().any(|g| g == AUTHENTICATED) {
                groups.push(AUTHENTICATED.into());
            }
            if users.insert(token.to_string(), Arc::new(UserInfo { name: user.to_string(), groups, uid: fields[2].clone(), ..Default::default() })).is_some() {
                return Err(format!("line {n}: field 1 (token) repeats an earlier line's token"));
            }
        }
        Ok(StaticTokens { users })
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    fn user(&self, token: &str) -> Option<Arc<UserInfo>> {
        self.users.get(token).cloned()
    }
}

/// One CSV line: fields separated by commas, a field in double quotes may hold commas (and
/// `""` for a quote).
fn split_csv(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', false) if cur.is_empty() && !was_quoted => {
                quoted = true;
                was_quoted = true;
            }
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            ('"', true) => quoted = false,
            (',', false) => {
                out.push(std::mem::take(&mut cur));
                was_quoted = false;
            }
            ('"', false) => return Err(format!("field {}: a quote inside an unquoted field", out.len() + 1)),
            (c, _) => {
                if was_quoted && !quoted {
                    return Err(format!("field {}: text after the closing quote", out.len() + 1));
                }
                cur.push(c);
            }
        }
    }
    if quoted {
        return Err(format!("field {}: unterminated quote", out.len() + 1));
    }
    out.push(cur);
    Ok(out)
}

/// The token of an `Authorization: Bearer` header; `Err` for a header that is there but
/// malformed.
fn bearer(req: &Request) -> Result<Option<&str>, ()> {
    let Some(h) = req.headers().get(axum::http::header::AUTHORIZATION) else { return Ok(None) };
    let h = h.to_str().map_err(|_| ())?;
    let (scheme, token) = h.split_once(' ').ok_or(())?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        // Another scheme (Basic): not ours to judge; the request stays anonymous.
        return Ok(None);
    }
    let token = token.trim();
    if token.is_empty() { Err(()) } else { Ok(Some(token)) }
}

/// Paths anyone may read without credentials, as Kubernetes' `system:public-info-viewer`
/// role allows unauthenticated users by default.
fn public(path: &str) -> bool {
    matches!(path, "/healthz" | "/livez" | "/readyz" | "/version") || path.starts_with("/healthz/") || path.starts_with("/livez/") || path.starts_with("/readyz/")
}

/// Requests refused for want of credentials, by cause (`/metrics`).
#[derive(Debug, Default)]
pub struct Counters {
    pub anonymous: AtomicU64,
    pub rejected: AtomicU64,
}

pub static COUNTERS: Counters = Counters { anonymous: AtomicU64::new(0), rejected: AtomicU64::new(0) };

/// The user a bearer token names: a line of the static token file, else a ServiceAccount
/// token. `Err` says why not (logged, never told to the client).
async fn token_user(st: &AppState, tokens: &StaticTokens, token: &str) -> Result<Arc<UserInfo>, String> {
    token_user_for(st, tokens, token, None).await.map(|(u, _)| u)
}

/// As `token_user`, for one of `audiences` (the API server's own when `None`); also the
/// audiences the token is good for among them.
async fn token_user_for(st: &AppState, tokens: &StaticTokens, token: &str, audiences: Option<&[String]>) -> Result<(Arc<UserInfo>, Vec<String>), String> {
    // Static and bootstrap tokens are good for the API server's audiences only.
    let api = st.sa_keys.as_ref().map(|k| k.api_audiences()).unwrap_or_default();
    let audiences = audiences.map_or_else(|| api.clone(), <[String]>::to_vec);
    let for_api = || audiences.iter().filter(|a| api.contains(a)).cloned().collect::<Vec<_>>();
    if let Some(u) = tokens.user(token) {
        return Ok((u, for_api()));
    }
    if let Some(u) = crate::bootstrap_token::authenticate(st, token).await? {
        return Ok((Arc::new(u), for_api()));
    }
    if let Some(u) = crate::node_token::authenticate(st, token).await? {
        return Ok((Arc::new(u), for_api()));
    }
    let Some(keys) = &st.sa_keys else { return Err("unknown token".into()) };
    if !Keys::looks_like_jwt(token) {
        return Err("unknown token".into());
    }
    let claims = match keys.verify(token, &audiences, jiff::Timestamp::now().as_second()) {
        Ok(c) => c,
        // A legacy Secret-based token (issuer kubernetes/serviceaccount, no audience): good
        // for the API server's audiences, as Kubernetes takes them.
        Err(bound) => match crate::legacy_token::verify(keys, token) {
            Ok(legacy) => return crate::legacy_token::user(st, token, &legacy).await.map(|u| (Arc::new(u), for_api())),
            Err(_) => return Err(bound),
        },
    };
    let good: Vec<String> = audiences.into_iter().filter(|a| claims.aud.contains(a)).collect();
    service_account_user(st, &claims).await.map(|u| (Arc::new(u), good))
}

/// `POST /apis/authentication.k8s.io/v1/tokenreviews`: whom a bearer token authenticates, for
/// the audiences asked (the API server's when none), as a webhook token authenticator asks.
pub async fn token_review(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let ctype = req.headers().get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let body = match axum::body::to_bytes(req.into_body(), 1 << 20).await {
        Ok(b) => b,
        Err(_) => return ApiError::bad_request("the body of the request could not be read (at most 1 MiB)").into_response(),
    };
    let review = match crate::handlers::parse_body(&ctype, &body) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let Some(token) = review["spec"]["token"].as_str().filter(|t| !t.is_empty()) else {
        return ApiError::invalid("authentication.k8s.io", "TokenReview", "", vec![("spec.token".into(), "Required value".into())]).into_response();
    };
    let audiences: Option<Vec<String>> = review["spec"]["audiences"].as_array().filter(|a| !a.is_empty()).map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect());
    let none = StaticTokens::none();
    let tokens = match &st.authn {
        Mode::Tls { tokens } => tokens.clone(),
        Mode::Insecure => none,
    };
    let status = match token_user_for(&st, &tokens, token, audiences.as_deref()).await {
        Ok((u, aud)) => serde_json::json!({ "authenticated": true, "user": u.to_json(), "audiences": aud }),
        Err(why) => serde_json::json!({ "user": {}, "error": why }),
    };
    let mut spec = review["spec"].clone();
    if let Some(o) = spec.as_object_mut() {
        o.remove("token");
    }
    let body = serde_json::json!({
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": { "creationTimestamp": null },
        "spec": spec,
        "status": status,
    });
    (axum::http::StatusCode::CREATED, axum::Json(body)).into_response()
}

/// `GET /.well-known/openid-configuration`: the ServiceAccount issuer's discovery document.
pub async fn openid_configuration(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let Some(keys) = &st.sa_keys else { return ApiError::path_not_found(req.uri().path()).into_response() };
    // HTTP/2 carries the host in the URI's authority, HTTP/1.1 in the Host header.
    let host = req.uri().authority().map(|a| a.as_str()).or_else(|| req.headers().get(axum::http::header::HOST).and_then(|h| h.to_str().ok())).unwrap_or("localhost");
    let scheme = if matches!(st.authn, Mode::Insecure) { "http" } else { "https" };
    axum::Json(keys.discovery(&format!("{scheme}://{host}"))).into_response()
}

/// `GET /openid/v1/jwks`: the public keys ServiceAccount tokens are signed with.
pub async fn jwks(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let Some(keys) = &st.sa_keys else { return ApiError::path_not_found(req.uri().path()).into_response() };
    let body = serde_json::to_vec(keys.jwks()).unwrap_or_default();
    ([(axum::http::header::CONTENT_TYPE, "application/jwk-set+json")], body).into_response()
}

/// How long a token bound to a pod outlives the pod's deletion mark, as in Kubernetes (the
/// pod is still stopping and may need its token meanwhile).
const BOUND_POD_GRACE_SECONDS: i64 = 60;

/// The user of a verified ServiceAccount token, if what it was issued for still exists: the
/// ServiceAccount, and the Pod, Secret or Node it is bound to, each with the UID the token
/// names (so a deleted and re-created object does not revive it).
pub async fn service_account_user(st: &AppState, c: &Claims) -> Result<UserInfo, String> {
    let ns = c.k8s.namespace.as_str();
    let live = |resource: &'static str, namespaced: bool, r: &crate::sa_token::Ref| {
        let r = r.clone();
        async move {
            let ns_of = namespaced.then_some(ns);
            let obj = st.lookup(resource, ns_of, &r.name).await.map_err(|e| e.message)?.ok_or_else(|| format!("{resource} {:?} no longer exists", r.name))?;
            let uid = obj["metadata"]["uid"].as_str().unwrap_or("");
            if uid != r.uid {
                return Err(format!("{resource} {:?} has UID {uid}, the token names {}", r.name, r.uid));
            }
            Ok(obj)
        }
    };
    live("serviceaccounts", true, &c.k8s.serviceaccount).await?;
    let mut extra = std::collections::BTreeMap::new();
    extra.insert("authentication.kubernetes.io/credential-id".to_string(), vec![format!("JTI={}", c.jti)]);
    if let Some(p) = &c.k8s.pod {
        let pod = live("pods", true, p).await?;
        if let Some(ts) = pod["metadata"]["deletionTimestamp"].as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok())
            && ts.as_second() + BOUND_POD_GRACE_SECONDS < jiff::Timestamp::now().as_second()
        {
            return Err(format!("pod {:?} is being deleted", p.name));
        }
        extra.insert("authentication.kubernetes.io/pod-name".to_string(), vec![p.name.clone()]);
        extra.insert("authentication.kubernetes.io/pod-uid".to_string(), vec![p.uid.clone()]);
    }
    if let Some(s) = &c.k8s.secret {
        live("secrets", true, s).await?;
    }
    if let Some(n) = &c.k8s.node {
        // A node named by a pod-bound token is informational; one the token is bound to
        // directly must exist.
        if c.k8s.pod.is_none() {
            live("nodes", false, n).await?;
        }
        extra.insert("authentication.kubernetes.io/node-name".to_string(), vec![n.name.clone()]);
        extra.insert("authentication.kubernetes.io/node-uid".to_string(), vec![n.uid.clone()]);
    }
    Ok(UserInfo {
        name: c.sub.clone(),
        groups: vec!["system:serviceaccounts".into(), format!("system:serviceaccounts:{ns}"), AUTHENTICATED.into()],
        uid: c.k8s.serviceaccount.uid.clone(),
        extra,
    })
}

/// A 401, audited (Kubernetes audits failed authentication too).
fn refuse(st: &AppState, req: &Request) -> Response {
    if let Some(a) = &st.auditor {
        a.failed_authentication(req);
    }
    ApiError::unauthorized().into_response()
}

fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// The step (`pipeline`): puts the request's `UserInfo` into its extensions, or answers 401.
pub async fn authenticate<F: std::future::Future<Output = Response>>(st: &AppState, mut req: Request, next: impl FnOnce(Request) -> F) -> Response {
    let user = match &st.authn {
        Mode::Insecure => Some(Arc::new(UserInfo::unsecured())),
        // Kubernetes' order: the client certificate, then a bearer token; a credential
        // that is presented and fails is a 401 even where anonymous requests are allowed.
        Mode::Tls { tokens } => match req.extensions().get::<Identity>() {
            Some(Identity::User(u, not_after)) if now_unix() <= *not_after => Some(u.clone()),
            Some(Identity::User(u, _)) => {
                COUNTERS.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(user = %u.name, path = req.uri().path(), "client certificate expired on an open connection");
                return refuse(&st, &req);
            }
            Some(Identity::Rejected(why)) => {
                COUNTERS.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(reason = %why, path = req.uri().path(), "unauthorized");
                return refuse(&st, &req);
            }
            Some(Identity::Anonymous) | None => match bearer(&req) {
                // The dashboard's login cookie, when no header brings a credential: a token
                // it does not accept sends the browser back to the login page.
                Ok(None) if crate::dashboard::is_ui(req.uri().path()) => match crate::dashboard::cookie_token(req.headers()).map(str::to_string) {
                    None => None,
                    Some(token) => match token_user(&st, tokens, &token).await {
                        Ok(u) => Some(u),
                        Err(why) => {
                            COUNTERS.rejected.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(reason = %why, "the dashboard's login cookie was refused");
                            req.extensions_mut().insert(crate::dashboard::CookieRefused);
                            None
                        }
                    },
                },
                Ok(None) => None,
                Ok(Some(token)) => match token_user(&st, tokens, token).await {
                    Ok(u) => Some(u),
                    Err(why) => {
                        COUNTERS.rejected.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(reason = %why, path = req.uri().path(), "unauthorized bearer token");
                        return refuse(&st, &req);
                    }
                },
                Err(()) => {
                    COUNTERS.rejected.fetch_add(1, Ordering::Relaxed);
                    return refuse(&st, &req);
                }
            },
        },
    };
    match user {
        Some(u) => {
            req.extensions_mut().insert(u);
        }
        None if public(req.uri().path()) => {}
        // The dashboard answers anonymous browsers with its login page.
        None if crate::dashboard::is_ui(req.uri().path()) => {}
        None => {
            COUNTERS.anonymous.fetch_add(1, Ordering::Relaxed);
            return refuse(&st, &req);
        }
    }
    next(req).await
}

/// `POST /apis/authentication.k8s.io/{v1,v1beta1}/selfsubjectreviews`: who the caller is
/// (`kubectl auth whoami`).
pub async fn self_subject_review(req: Request) -> Response {
    let Some(user) = req.extensions().get::<Arc<UserInfo>>().cloned() else {
        return ApiError::unauthorized().into_response();
    };
    let version = if req.uri().path().contains("/v1beta1/") { "authentication.k8s.io/v1beta1" } else { "authentication.k8s.io/v1" };
    let body = serde_json::json!({
        "kind": "SelfSubjectReview",
        "apiVersion": version,
        "metadata": { "creationTimestamp": null },
        "status": { "userInfo": user.to_json() },
    });
    (axum::http::StatusCode::CREATED, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: &str, orgs: &[&str]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        if !cn.is_empty() {
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        }
        for o in orgs {
            p.distinguished_name.push(rcgen::DnType::OrganizationName, *o);
        }
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn a_static_token_file_is_read_as_kubernetes_reads_it() {
        let t = StaticTokens::parse("# comment\n\nabc,alice,1\ndef,bob,2,\"devs,ops\"\n\"g,h\",carol,3,admins\n").unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(*t.user("abc").unwrap(), UserInfo { name: "alice".into(), groups: vec![AUTHENTICATED.into()], uid: "1".into(), ..Default::default() });
        assert_eq!(t.user("def").unwrap().groups, vec!["devs".to_string(), "ops".into(), AUTHENTICATED.into()]);
        assert_eq!(t.user("g,h").unwrap().name, "carol");
        assert!(t.user("nope").is_none());
        for (text, want) in [
            ("abc,alice\n", "line 1: need token,user,uid"),
            ("ok,a,1\n,bob,2\n", "line 2: field 1 (token) is empty"),
            ("abc,,1\n", "line 1: field 2 (user) is empty"),
            ("abc,alice,1,\"g1,g2\n", "line 1: field 4: unterminated quote"),
            ("abc,alice,1,g1,g2\n", "line 1: more than 4 fields"),
            ("abc,alice,1\nabc,bob,2\n", "line 2: field 1 (token) repeats"),
            ("a\"b,alice,1\n", "line 1: field 1: a quote inside"),
        ] {
            let e = StaticTokens::parse(text).unwrap_err();
            assert!(e.starts_with(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn the_user_is_the_common_name_and_the_groups_the_organizations() {
        let u = user_of_certificate(&cert("kubernetes-admin", &["system:masters"])).unwrap();
        assert_eq!(u, UserInfo::new("kubernetes-admin", vec!["system:masters".into(), AUTHENTICATED.into()]));
        // (rcgen writes one value per attribute type, so a fixture has at most one O.)
        let u = user_of_certificate(&cert("system:node:n1", &["system:nodes"])).unwrap();
        assert_eq!(u.groups, vec!["system:nodes".to_string(), AUTHENTICATED.into()]);
        let u = user_of_certificate(&cert("bob", &[])).unwrap();
        assert_eq!(u.groups, vec![AUTHENTICATED.to_string()], "no O: only system:authenticated");
        assert!(user_of_certificate(&cert("", &["g"])).is_err(), "a certificate without a CN names nobody");
        assert!(user_of_certificate(b"not a certificate").is_err());
    }
}
