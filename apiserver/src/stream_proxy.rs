//! The streaming subresources of pods (`pods/exec`, `pods/attach`, `pods/portforward`): the
//! API server checks the request as Kubernetes does, then carries the client's upgrade
//! (WebSocket, or SPDY for old clients) to the pod's kubelet and, once the kubelet switched
//! protocols, copies bytes both ways until either side closes, as kube-apiserver's
//! UpgradeAwareHandler does. The protocol itself is the kubelet's (`kubelet/src/stream.rs`);
//! this end never parses a frame.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::node_proxy;
use crate::status::ApiError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Request headers the kubelet needs to agree on a protocol.
const UPGRADE_HEADERS: &[&str] = &["connection", "upgrade", "sec-websocket-key", "sec-websocket-version", "sec-websocket-protocol", "sec-websocket-extensions", "x-stream-protocol-version"];

pub(crate) trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// Kubernetes' checks of an exec or attach request, before anything reaches the node.
pub fn check(pod: &Value, sub: &str, query: &HashMap<String, String>, commands: usize) -> Result<(), ApiError> {
    let name = pod["metadata"]["name"].as_str().unwrap_or("");
    let phase = pod["status"]["phase"].as_str().unwrap_or("");
    if sub != "portforward" {
        if matches!(phase, "Succeeded" | "Failed") {
            let verb = if sub == "exec" { "exec into" } else { "attach to" };
            return Err(ApiError::bad_request(format!("cannot {verb} a container in a completed pod; current phase is {phase}")));
        }
        if sub == "exec" && commands == 0 {
            return Err(ApiError::bad_request("you must specify at least 1 command"));
        }
        let on = |k: &str| query.get(k).is_some_and(|v| matches!(v.as_str(), "1" | "true" | "True" | "t"));
        if !(on("stdin") || on("stdout") || on("stderr")) {
            return Err(ApiError::bad_request("you must specify at least one of stdin, stdout, stderr"));
        }
    }
    if pod["spec"]["nodeName"].as_str().is_none_or(str::is_empty) {
        return Err(ApiError::bad_request(format!("pod {name} does not have a host assigned")));
    }
    Ok(())
}

/// Carries an upgrade request for `sub` of pod `ns/name` to its kubelet's `path_on_node`
/// (with `query`) and, once switched, the connection.
pub async fn proxy(node: &Value, method: &Method, path_on_node: String, raw_query: &str, headers: &HeaderMap, client: Option<hyper::upgrade::OnUpgrade>) -> Result<Response<Body>, ApiError> {
    let node_name = node["metadata"]["name"].as_str().unwrap_or("");
    if !headers.get(header::UPGRADE).is_some_and(|u| !u.is_empty()) {
        return Err(ApiError::bad_request("Upgrade request required"));
    }
    let client = client.ok_or_else(|| ApiError::bad_request("this connection cannot be upgraded (HTTP/2): use HTTP/1.1 for exec, attach and port-forward"))?;
    let ep = node_proxy::kubelet_endpoint(node).ok_or_else(|| ApiError::bad_request(format!("node {node_name:?} publishes no kubelet endpoint")))?;
    let unavailable = |e: String| ApiError::unavailable(format!("error dialing backend: the kubelet of node {node_name:?} at {ep}: {e}"));
    let io = tokio::time::timeout(CONNECT_TIMEOUT, connect(&ep)).await.map_err(|_| unavailable("no answer".into()))?.map_err(unavailable)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| unavailable(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let uri = if raw_query.is_empty() { path_on_node } else { format!("{path_on_node}?{raw_query}") };
    let mut req = hyper::Request::builder().method(method.clone()).uri(uri).header(header::HOST, ep.as_str());
    for h in UPGRADE_HEADERS {
        for v in headers.get_all(*h) {
            req = req.header(*h, v);
        }
    }
    let req = req.body(http_body_util::Empty::<bytes::Bytes>::new()).map_err(|e| ApiError::internal(e.to_string()))?;
    let mut resp = tokio::time::timeout(CONNECT_TIMEOUT, sender.send_request(req)).await.map_err(|_| unavailable("no answer".into()))?.map_err(|e| unavailable(e.to_string()))?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        use http_body_util::BodyExt;
        let code = resp.status();
        let body = tokio::time::timeout(CONNECT_TIMEOUT, http_body_util::Limited::new(resp.into_body(), 64 << 10).collect()).await.ok().and_then(|r| r.ok()).map(|b| b.to_bytes()).unwrap_or_default();
        let msg = String::from_utf8_lossy(&body).trim().to_string();
        return Err(match code.as_u16() {
            404 => ApiError::new(404, "NotFound", msg),
            400..=499 => ApiError::bad_request(msg),
            _ => ApiError::internal(msg),
        });
    }
    let node_side = hyper::upgrade::on(&mut resp);
    let mut out = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for (k, v) in resp.headers() {
        if UPGRADE_HEADERS.contains(&k.as_str()) || k.as_str().starts_with("sec-websocket") {
            out = out.header(k, v);
        }
    }
    tokio::spawn(async move {
        let (Ok(a), Ok(b)) = tokio::join!(client, node_side) else { return };
        let (mut a, mut b) = (TokioIo::new(a), TokioIo::new(b));
        let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
    });
    out.body(Body::empty()).map_err(|e| ApiError::internal(e.to_string()))
}

/// A connection to a kubelet endpoint: TLS when the API server reaches kubelets over HTTPS.
pub(crate) async fn connect(ep: &str) -> Result<Box<dyn Io>, String> {
    let tcp = tokio::net::TcpStream::connect(ep).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    match node_proxy::tls_config() {
        None => Ok(Box::new(tcp)),
        Some(cfg) => {
            let mut cfg = (*cfg).clone();
            cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
            let host = ep.rsplit_once(':').map_or(ep, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
            let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await.map_err(|e| e.to_string())?;
            Ok(Box::new(tls))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_kubernetes_refuses() {
        let q = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<HashMap<_, _>>();
        let running = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n"}, "status": {"phase": "Running"}});
        assert!(check(&running, "exec", &q(&[("stdout", "true")]), 1).is_ok());
        assert_eq!(check(&running, "exec", &q(&[("stdout", "true")]), 0).unwrap_err().message, "you must specify at least 1 command");
        assert_eq!(check(&running, "exec", &q(&[]), 1).unwrap_err().message, "you must specify at least one of stdin, stdout, stderr");
        let done = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n"}, "status": {"phase": "Succeeded"}});
        assert_eq!(check(&done, "exec", &q(&[("stdout", "1")]), 1).unwrap_err().message, "cannot exec into a container in a completed pod; current phase is Succeeded");
        let pending = json!({"metadata": {"name": "p"}, "spec": {}, "status": {"phase": "Pending"}});
        assert_eq!(check(&pending, "attach", &q(&[("stdout", "1")]), 0).unwrap_err().message, "pod p does not have a host assigned");
    }
}
