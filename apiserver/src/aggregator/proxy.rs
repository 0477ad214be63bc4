//! Proxying a request to an aggregated server: a connection to a ready endpoint of its
//! Service (TLS named `SERVICE.NAMESPACE.svc`), the request passed on with the user's
//! identity in the front-proxy headers instead of its credentials, the answer streamed back
//! (watches included). A backend that cannot be reached answers 503, as kube-apiserver's.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::BodyExt;

use super::Remote;
use crate::authn::UserInfo;
use crate::handlers::AppState;
use crate::status::ApiError;

/// How long a connection (TCP and TLS) to a backend may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest discovery answer read from a backend.
const DISCOVERY_BYTES_MAX: usize = 16 << 20;

/// Headers not passed on: credentials (the front-proxy headers say who asks), what a client
/// might forge, and the hop-by-hop ones.
fn dropped(name: &HeaderName) -> bool {
    let n = name.as_str();
    matches!(n, "authorization" | "host" | "connection" | "keep-alive" | "proxy-connection" | "te" | "trailer" | "transfer-encoding" | "upgrade" | "proxy-authorization")
        || n.starts_with("impersonate-")
        || n.starts_with("x-remote-")
}

async fn connect<B>(r: &Remote, ip: &str, port: u16) -> Result<hyper::client::conn::http1::SendRequest<B>, String>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tls = r.tls.clone()?;
    let setup = async {
        let tcp = tokio::net::TcpStream::connect((ip, port)).await.map_err(|e| format!("dial tcp {ip}:{port}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let name = rustls::pki_types::ServerName::try_from(r.server_name()).map_err(|e| e.to_string())?;
        let stream = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.map_err(|e| format!("tls: {e}"))?;
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.map_err(|e| e.to_string())
    };
    let (send, conn) = tokio::time::timeout(CONNECT_TIMEOUT, setup).await.map_err(|_| format!("dial tcp {ip}:{port}: i/o timeout"))??;
    // The connection lives as long as the answer's body is read (a watch: as long as it runs).
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

/// Passes the request on to `r`'s server and its answer back.
pub async fn forward(st: &AppState, r: &Remote, user: Option<&UserInfo>, method: &Method, uri: &Uri, headers: &HeaderMap, body: Body) -> Response {
    let (ip, port) = match st.service_endpoint(&r.namespace, &r.service, r.port).await {
        Ok(e) => e,
        Err((_, why)) => {
            tracing::debug!(apiservice = r.name, error = why, "aggregated API unavailable");
            return ApiError::unavailable("service unavailable").into_response();
        }
    };
    let mut send = match connect::<Body>(r, &ip, port).await {
        Ok(s) => s,
        Err(e) => return ApiError::unavailable(format!("error trying to reach service: {e}")).into_response(),
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut req = hyper::Request::builder().method(method.clone()).uri(path);
    for (k, v) in headers.iter().filter(|(k, _)| !dropped(k)) {
        req = req.header(k, v);
    }
    req = req.header(header::HOST, format!("{}:{}", r.server_name(), r.port));
    if let Some(u) = user {
        req = req.header("x-remote-user", u.name.as_str());
        for g in &u.groups {
            req = req.header("x-remote-group", g.as_str());
        }
        for (k, vs) in &u.extra {
            let key: String = form_urlencoded::byte_serialize(k.as_bytes()).collect();
            for v in vs {
                req = req.header(format!("x-remote-extra-{key}"), v.as_str());
            }
        }
    }
    let req = match req.body(body) {
        Ok(r) => r,
        Err(e) => return ApiError::bad_request(format!("the request cannot be passed on: {e}")).into_response(),
    };
    match send.send_request(req).await {
        Ok(resp) => {
            let (parts, incoming) = resp.into_parts();
            let mut out = Response::new(Body::new(incoming));
            *out.status_mut() = parts.status;
            for (k, v) in parts.headers.iter().filter(|(k, _)| !dropped(k)) {
                out.headers_mut().append(k.clone(), v.clone());
            }
            out
        }
        Err(e) => ApiError::unavailable(format!("error trying to reach service: {e}")).into_response(),
    }
}

/// GETs `path` from `r`'s server at `ip:port`, for the availability check: the body of a 2xx
/// answer, within `timeout`.
pub async fn get(r: &Remote, ip: &str, port: u16, path: &str, timeout: Duration) -> Result<Bytes, String> {
    let exchange = async {
        let mut send = connect::<http_body_util::Empty<Bytes>>(r, ip, port).await?;
        let mut req = hyper::Request::get(path).header(header::HOST, format!("{}:{}", r.server_name(), r.port)).header(header::ACCEPT, "application/json");
        // The availability check asks as the API server itself.
        req = req.header("x-remote-user", "system:kube-aggregator").header("x-remote-group", HeaderValue::from_static("system:masters"));
        let resp = send.send_request(req.body(http_body_util::Empty::new()).map_err(|e| e.to_string())?).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), DISCOVERY_BYTES_MAX).collect().await.map_err(|e| e.to_string())?.to_bytes();
        if !status.is_success() {
            return Err(format!("bad status from https://{ip}:{port}{path}: {}", status.as_u16()));
        }
        Ok(body)
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| format!("https://{ip}:{port}{path}: context deadline exceeded"))?
}

/// Whether `path` is under `/apis/GROUP/VERSION` of a remote: its (group, version).
pub fn target(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/apis/")?;
    let mut it = rest.splitn(3, '/');
    let (g, v) = (it.next()?, it.next()?);
    (!g.is_empty() && !v.is_empty()).then_some((g, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_under_a_group_version_are_aggregated_targets() {
        assert_eq!(target("/apis/wardle.example.com/v1alpha1"), Some(("wardle.example.com", "v1alpha1")));
        assert_eq!(target("/apis/wardle.example.com/v1alpha1/namespaces/x/flunders"), Some(("wardle.example.com", "v1alpha1")));
        assert_eq!(target("/apis/wardle.example.com"), None);
        assert_eq!(target("/apis/wardle.example.com/"), None);
        assert_eq!(target("/api/v1/pods"), None);
    }

    #[test]
    fn credentials_and_forged_identities_are_not_passed_on() {
        for h in ["authorization", "impersonate-user", "x-remote-user", "x-remote-group", "x-remote-extra-scopes", "connection", "host"] {
            assert!(dropped(&HeaderName::from_static(h)), "{h}");
        }
        for h in ["accept", "content-type", "user-agent"] {
            assert!(!dropped(&HeaderName::from_static(h)), "{h}");
        }
    }
}
