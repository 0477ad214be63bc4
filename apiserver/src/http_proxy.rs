//! The `proxy` subresources: HTTP to a pod (`pods/NAME[:PORT]/proxy/PATH`), to a ready
//! endpoint of a Service (`services/NAME[:PORT]/proxy/PATH`, PORT a port's name or number)
//! or to a node's kubelet (`nodes/NAME[:PORT]/proxy/PATH`), as `kubectl proxy` users reach
//! in-cluster web pages. Kubernetes' rules: a pod without a port goes to its first
//! container port (80 without one); a Service's endpoint is chosen at random among the ready
//! ones of the asked port, and none is `503 no endpoints available for service "NAME"`; a node
//! without a port is its kubelet endpoint.
//!
//! The request is sent on as it came (method, path after `proxy`, query, body streamed),
//! without the caller's `Authorization`, impersonation and hop-by-hop headers; the answer
//! comes back as the target gave it (status, headers, body streamed). Only `http:` targets
//! (and the kubelet's own scheme); `https:` pod or Service names are refused with 400, and
//! connection upgrades (WebSocket through the proxy) are not carried. Kubernetes rewrites
//! links in proxied HTML pages; capstan does not.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Response, header};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use storage::{RangeRequest, Store};

use crate::node_proxy;
use crate::status::ApiError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the target may take to start answering.
const HEADERS_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Pod,
    Service,
    Node,
}

/// A proxy request's target, as the path names it.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    pub kind: Kind,
    pub namespace: Option<String>,
    pub name: String,
    /// A port name or number (empty: the default).
    pub port: String,
    pub scheme: String,
    /// The path on the target, from its leading `/`.
    pub path: String,
}

/// Reads `/api/v1/namespaces/NS/{pods,services}/SPEC/proxy[/PATH]` and
/// `/api/v1/nodes/SPEC/proxy[/PATH]`, SPEC being `[scheme:]name[:port]`.
pub fn parse(path: &str) -> Option<Target> {
    let rest = path.strip_prefix("/api/v1/")?;
    let (kind, namespace, after) = if let Some(r) = rest.strip_prefix("nodes/") {
        (Kind::Node, None, r)
    } else {
        let r = rest.strip_prefix("namespaces/")?;
        let (ns, r) = r.split_once('/')?;
        if let Some(r) = r.strip_prefix("pods/") {
            (Kind::Pod, Some(ns.to_string()), r)
        } else if let Some(r) = r.strip_prefix("services/") {
            (Kind::Service, Some(ns.to_string()), r)
        } else {
            return None;
        }
    };
    let (spec, r) = after.split_once('/')?;
    let tail = match r.strip_prefix("proxy") {
        Some("") => "/",
        Some(t) if t.starts_with('/') => t,
        _ => return None,
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let (scheme, name, port) = match parts.as_slice() {
        [n] => ("", *n, ""),
        [n, p] => ("", *n, *p),
        [s, n, p] => (*s, *n, *p),
        _ => return None,
    };
    if name.is_empty() {
        return None;
    }
    Some(Target { kind, namespace, name: name.to_string(), port: port.to_string(), scheme: scheme.to_string(), path: tail.to_string() })
}

/// Where a pod's proxy goes: its IP and the port (`port`, else its first container port,
/// else 80).
pub fn pod_address(pod: &Value, port: &str) -> Result<String, ApiError> {
    let name = pod["metadata"]["name"].as_str().unwrap_or("");
    let ip = pod["status"]["podIP"].as_str().filter(|i| !i.is_empty()).ok_or_else(|| ApiError::unavailable(format!("pod {name} has no IP address yet")))?;
    let port: u64 = match port {
        "" => pod["spec"]["containers"][0]["ports"][0]["containerPort"].as_u64().unwrap_or(80),
        p => p.parse().ok().filter(|n| (1..=65535).contains(n)).or_else(|| {
            // A named container port.
            pod["spec"]["containers"].as_array()?.iter().flat_map(|c| c["ports"].as_array().into_iter().flatten()).find(|cp| cp["name"] == p)?["containerPort"].as_u64()
        }).ok_or_else(|| ApiError::bad_request(format!("invalid port {p:?} for pod {name}")))?,
    };
    Ok(format!("{ip}:{port}"))
}

/// The ready endpoints a Service's `port` (name or number; empty: any) leads to.
pub fn service_endpoints(svc: &Value, slices: &[Value], port: &str) -> Vec<String> {
    let name = svc["metadata"]["name"].as_str().unwrap_or("");
    let mut out = Vec::new();
    for sp in svc["spec"]["ports"].as_array().into_iter().flatten() {
        let pname = sp["name"].as_str().unwrap_or("");
        let matches = port.is_empty() || port == pname || sp["port"].as_u64().is_some_and(|n| n.to_string() == port);
        if !matches {
            continue;
        }
        for s in slices.iter().filter(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] == name) {
            let Some(target) = s["ports"].as_array().into_iter().flatten().find(|p| p["name"].as_str().unwrap_or("") == pname).and_then(|p| p["port"].as_u64()) else { continue };
            for e in s["endpoints"].as_array().into_iter().flatten().filter(|e| e["conditions"]["ready"] != false) {
                for a in e["addresses"].as_array().into_iter().flatten().filter_map(|a| a.as_str()) {
                    out.push(format!("{a}:{target}"));
                }
            }
        }
        if !out.is_empty() {
            break;
        }
    }
    out
}

/// Serves one proxy request.
pub async fn serve(store: &Store, t: Target, method: &Method, raw_query: &str, headers: &HeaderMap, body: Body) -> Result<Response<Body>, ApiError> {
    if !t.scheme.is_empty() && t.scheme != "http" {
        return Err(ApiError::bad_request(format!("scheme {:?} is not supported by capstan's proxy (http only)", t.scheme)));
    }
    let ns = t.namespace.clone().unwrap_or_default();
    let (addr, tls) = match t.kind {
        Kind::Pod => {
            let pod = node_proxy::read(store, format!("/registry/core/pods/{ns}/{}", t.name)).await?.ok_or_else(|| ApiError::not_found("", "pods", &t.name))?;
            (pod_address(&pod, &t.port)?, false)
        }
        Kind::Service => {
            let svc = node_proxy::read(store, format!("/registry/core/services/{ns}/{}", t.name)).await?.ok_or_else(|| ApiError::not_found("", "services", &t.name))?;
            let r = store.range(RangeRequest::prefix(format!("/registry/discovery.k8s.io/endpointslices/{ns}/"))).await?;
            let slices: Vec<Value> = r.kvs.iter().filter_map(|kv| crate::object::Stored::from_kv(kv).and_then(|s| s.value_at(kv.mod_revision)).ok()).collect();
            let eps = service_endpoints(&svc, &slices, &t.port);
            if eps.is_empty() {
                return Err(ApiError::unavailable(format!("no endpoints available for service \"{}\"", t.name)));
            }
            (eps[rand::random_range(0..eps.len())].clone(), false)
        }
        Kind::Node => {
            let node = node_proxy::read(store, format!("/registry/core/nodes/{}", t.name)).await?.ok_or_else(|| ApiError::not_found("", "nodes", &t.name))?;
            match t.port.as_str() {
                "" => (node_proxy::kubelet_endpoint(&node).ok_or_else(|| ApiError::bad_request(format!("node {:?} publishes no kubelet endpoint", t.name)))?, true),
                p => {
                    let ip = node["status"]["addresses"].as_array().into_iter().flatten().find(|a| a["type"] == "InternalIP").and_then(|a| a["address"].as_str()).unwrap_or("127.0.0.1");
                    let p: u16 = p.parse().map_err(|_| ApiError::bad_request(format!("invalid port {p:?} for node {}", t.name)))?;
                    (format!("{ip}:{p}"), false)
                }
            }
        }
    };
    let unavailable = |e: String| ApiError::unavailable(format!("error trying to reach service: dial tcp {addr}: {e}"));
    let io: Box<dyn crate::stream_proxy::Io> = if tls {
        tokio::time::timeout(CONNECT_TIMEOUT, crate::stream_proxy::connect(&addr)).await.map_err(|_| unavailable("i/o timeout".into()))?.map_err(unavailable)?
    } else {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&addr)).await.map_err(|_| unavailable("i/o timeout".into()))?.map_err(|e| unavailable(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        Box::new(tcp)
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| unavailable(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let uri = if raw_query.is_empty() { t.path.clone() } else { format!("{}?{raw_query}", t.path) };
    let mut req = hyper::Request::builder().method(method.clone()).uri(uri);
    for (k, v) in headers {
        if !forwarded(k.as_str()) {
            continue;
        }
        req = req.header(k, v);
    }
    req = req.header(header::HOST, HeaderValue::from_str(&addr).map_err(|e| ApiError::internal(e.to_string()))?);
    let req = req.body(body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let resp = tokio::time::timeout(HEADERS_TIMEOUT, sender.send_request(req)).await.map_err(|_| unavailable("no answer".into()))?.map_err(|e| unavailable(e.to_string()))?;
    let (parts, incoming) = resp.into_parts();
    let mut out = Response::builder().status(parts.status);
    for (k, v) in &parts.headers {
        if forwarded(k.as_str()) {
            out = out.header(k, v);
        }
    }
    out.body(Body::new(incoming)).map_err(|e| ApiError::internal(e.to_string()))
}

/// Headers carried through the proxy: not hop-by-hop ones, not the caller's credentials.
fn forwarded(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    !matches!(n.as_str(), "connection" | "keep-alive" | "proxy-authenticate" | "proxy-authorization" | "te" | "trailer" | "transfer-encoding" | "upgrade" | "host" | "authorization" | "content-length")
        && !n.starts_with("impersonate-")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_name_the_target_port_and_path() {
        let t = parse("/api/v1/namespaces/ns/pods/web:8080/proxy/a/b").unwrap();
        assert_eq!((t.kind, t.namespace.as_deref(), t.name.as_str(), t.port.as_str(), t.path.as_str()), (Kind::Pod, Some("ns"), "web", "8080", "/a/b"));
        let t = parse("/api/v1/namespaces/ns/services/https:web:api/proxy").unwrap();
        assert_eq!((t.kind, t.scheme.as_str(), t.name.as_str(), t.port.as_str(), t.path.as_str()), (Kind::Service, "https", "web", "api", "/"));
        let t = parse("/api/v1/nodes/n1/proxy/healthz").unwrap();
        assert_eq!((t.kind, t.namespace, t.name.as_str(), t.path.as_str()), (Kind::Node, None, "n1", "/healthz"));
        for bad in ["/api/v1/namespaces/ns/pods/web", "/api/v1/namespaces/ns/pods/web/proxyx", "/api/v1/namespaces/ns/pods/web/log", "/api/v1/namespaces/ns/configmaps/c/proxy", "/api/v1/nodes/:80/proxy", "/apis/apps/v1/nodes/n/proxy"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn ports_default_as_kubernetes_defaults_them() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"ports": [{"name": "web", "containerPort": 8080}]}]}, "status": {"podIP": "10.0.0.5"}});
        assert_eq!(pod_address(&pod, "").unwrap(), "10.0.0.5:8080");
        assert_eq!(pod_address(&pod, "web").unwrap(), "10.0.0.5:8080");
        assert_eq!(pod_address(&pod, "9").unwrap(), "10.0.0.5:9");
        assert_eq!(pod_address(&pod, "nope").unwrap_err().code, 400);
        assert_eq!(pod_address(&json!({"metadata": {"name": "p"}, "status": {}}), "").unwrap_err().code, 503);
        let svc = json!({"metadata": {"name": "s"}, "spec": {"ports": [{"name": "http", "port": 80}, {"name": "admin", "port": 9000}]}});
        let slices = vec![json!({"metadata": {"labels": {"kubernetes.io/service-name": "s"}}, "ports": [{"name": "http", "port": 8080}, {"name": "admin", "port": 9090}],
            "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"], "conditions": {"ready": false}}]})];
        assert_eq!(service_endpoints(&svc, &slices, "admin"), ["10.0.0.1:9090"]);
        assert_eq!(service_endpoints(&svc, &slices, "80"), ["10.0.0.1:8080"]);
        assert_eq!(service_endpoints(&svc, &slices, ""), ["10.0.0.1:8080"]);
        assert!(service_endpoints(&svc, &slices, "other").is_empty());
        assert!(!forwarded("Authorization") && !forwarded("Impersonate-User") && forwarded("Accept"));
    }
}
