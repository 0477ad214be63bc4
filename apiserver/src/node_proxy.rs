//! What the API server asks of kubelets: the `pods/log` subresource (proxied to the pod's
//! node, streamed, so `kubectl logs -f` follows) and the `metrics.k8s.io/v1beta1` API
//! (`kubectl top`), built from the kubelets' `/stats/capstan` documents as metrics-server
//! builds it from theirs — one request per kubelet endpoint, however many nodes it hosts.
//!
//! A kubelet is found through its Node object: the `InternalIP` address and
//! `status.daemonEndpoints.kubeletEndpoint.Port`, as Kubernetes does. Calls to kubelets are
//! bounded by a timeout; an endpoint that does not answer leaves its nodes out of the
//! metrics (kubectl shows `<unknown>`), never the whole answer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use storage::{RangeRequest, Store};

use crate::object::Stored;
use crate::selector::LabelSelector;
use crate::status::ApiError;

const KUBELET_TIMEOUT: Duration = Duration::from_secs(5);
const STATS_BYTES_MAX: usize = 256 << 20;

type HttpClient = hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, http_body_util::Empty<Bytes>>;

/// The client to kubelets: plain HTTP, or (`use_client_certificate`) HTTPS presenting the API
/// server's kubelet client certificate, as kube-apiserver's `--kubelet-client-certificate`.
/// Kubelets' serving certificates are not verified (their own, self-signed), as kube-apiserver
/// does without `--kubelet-certificate-authority`.
static KUBELETS: std::sync::OnceLock<(HttpClient, &'static str, Option<Arc<rustls::ClientConfig>>)> = std::sync::OnceLock::new();

fn http() -> &'static HttpClient {
    &KUBELETS.get_or_init(|| (client(rustls::ClientConfig::builder().dangerous().with_custom_certificate_verifier(Arc::new(AnyServer)).with_no_client_auth()), "http", None)).0
}

/// The TLS configuration for kubelets (their HTTPS endpoints), if they are reached over TLS.
pub fn tls_config() -> Option<Arc<rustls::ClientConfig>> {
    let _ = http();
    KUBELETS.get().and_then(|k| k.2.clone())
}

/// `http` or `https`.
fn scheme() -> &'static str {
    let _ = http();
    KUBELETS.get().map_or("http", |k| k.1)
}

fn client(cfg: rustls::ClientConfig) -> HttpClient {
    let mut h = hyper_util::client::legacy::connect::HttpConnector::new();
    h.enforce_http(false);
    let c = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(cfg).https_or_http().enable_http1().wrap_connector(h);
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(c)
}

/// Makes this process reach kubelets over HTTPS with this client certificate (once, before
/// the first request to a kubelet).
pub fn use_client_certificate(cert_pem: &str, key_pem: &str) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    let chain = rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().map_err(|e| format!("the kubelet client certificate: {e}"))?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| format!("the kubelet client key: {e}"))?;
    let cfg = rustls::ClientConfig::builder().dangerous().with_custom_certificate_verifier(Arc::new(AnyServer)).with_client_auth_cert(chain, key).map_err(|e| format!("the kubelet client certificate: {e}"))?;
    KUBELETS.set((client(cfg.clone()), "https", Some(Arc::new(cfg)))).map_err(|_| "the kubelet client is set already".to_string())
}

/// Accepts a kubelet's serving certificate without checking who signed it (see `KUBELETS`);
/// the handshake's signature is still checked, so the connection is encrypted to whoever
/// holds that certificate's key.
#[derive(Debug)]
pub struct AnyServer;

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(&self, _: &rustls::pki_types::CertificateDer<'_>, _: &[rustls::pki_types::CertificateDer<'_>], _: &rustls::pki_types::ServerName<'_>, _: &[u8], _: rustls::pki_types::UnixTime) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &rustls::pki_types::CertificateDer<'_>, dss: &rustls::DigitallySignedStruct) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &rustls::crypto::ring::default_provider().signature_verification_algorithms)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &rustls::pki_types::CertificateDer<'_>, dss: &rustls::DigitallySignedStruct) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &rustls::crypto::ring::default_provider().signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
    }
}

pub(crate) async fn read(store: &Store, key: String) -> Result<Option<Value>, ApiError> {
    match store.get(key).await? {
        None => Ok(None),
        Some(kv) => Ok(Some(Stored::from_kv(&kv).map_err(ApiError::internal)?.value_at(kv.mod_revision).map_err(ApiError::internal)?)),
    }
}

async fn list(store: &Store, prefix: String) -> Result<Vec<Value>, ApiError> {
    let r = store.range(RangeRequest::prefix(prefix)).await?;
    let mut out = Vec::with_capacity(r.kvs.len());
    for kv in &r.kvs {
        out.push(Stored::from_kv(kv).map_err(ApiError::internal)?.value_at(kv.mod_revision).map_err(ApiError::internal)?);
    }
    Ok(out)
}

/// `host:port` of a node's kubelet, if it published one.
pub fn kubelet_endpoint(node: &Value) -> Option<String> {
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"].as_u64().filter(|p| *p > 0 && *p < 65536)?;
    let addrs = node["status"]["addresses"].as_array()?;
    let ip = ["InternalIP", "ExternalIP"].iter().find_map(|t| addrs.iter().find(|a| a["type"] == *t)?["address"].as_str())?;
    Some(format!("{ip}:{port}"))
}

/// Which container `kubectl logs` means, or the error Kubernetes gives.
pub fn pick_container(pod: &Value, asked: Option<&str>) -> Result<String, ApiError> {
    let name = pod["metadata"]["name"].as_str().unwrap_or("");
    let names = |list: &str| -> Vec<String> { pod["spec"][list].as_array().into_iter().flatten().filter_map(|c| c["name"].as_str().map(String::from)).collect() };
    let (main, init, eph) = (names("containers"), names("initContainers"), names("ephemeralContainers"));
    match asked.filter(|c| !c.is_empty()) {
        Some(c) if main.iter().chain(&init).chain(&eph).any(|x| x == c) => Ok(c.to_string()),
        Some(c) => Err(ApiError::bad_request(format!("container {c} is not valid for pod {name}"))),
        None if main.len() == 1 => Ok(main[0].clone()),
        None => {
            let mut msg = format!("a container name must be specified for pod {name}, choose one of: [{}]", main.join(" "));
            if !init.is_empty() {
                msg.push_str(&format!(" or one of the init containers: [{}]", init.join(" ")));
            }
            Err(ApiError::bad_request(msg))
        }
    }
}

/// `GET .../pods/{name}/log`.
pub async fn pod_log(store: &Store, pod_key: String, ns: &str, name: &str, query: &HashMap<String, String>) -> Result<Response, ApiError> {
    let pod = read(store, pod_key).await?.ok_or_else(|| ApiError::not_found("", "pods", name))?;
    let container = pick_container(&pod, query.get("container").map(String::as_str))?;
    let mut params = vec![];
    for k in ["follow", "previous", "timestamps", "insecureSkipTLSVerifyBackend"] {
        if let Some(v) = query.get(k) {
            match v.as_str() {
                "true" | "1" => params.push(format!("{k}=true")),
                "false" | "0" | "" => {}
                _ => return Err(ApiError::bad_request(format!("{k}: strconv.ParseBool: parsing {v:?}: invalid syntax"))),
            }
        }
    }
    for k in ["tailLines", "limitBytes", "sinceSeconds"] {
        if let Some(v) = query.get(k) {
            let n: i64 = v.parse().map_err(|_| ApiError::bad_request(format!("{k}: strconv.ParseInt: parsing {v:?}: invalid syntax")))?;
            if n < 0 || (k != "tailLines" && n == 0) {
                return Err(ApiError::bad_request(format!("{k} must be greater than {}", if k == "tailLines" { "or equal to 0" } else { "0" })));
            }
            params.push(format!("{k}={n}"));
        }
    }
    if let Some(t) = query.get("sinceTime") {
        let ts: jiff::Timestamp = t.parse().map_err(|_| ApiError::bad_request(format!("sinceTime: {t:?} is not an RFC 3339 time")))?;
        let secs = (jiff::Timestamp::now().as_second() - ts.as_second()).max(1);
        params.push(format!("sinceSeconds={secs}"));
    }
    let node_name = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()).ok_or_else(|| ApiError::bad_request(format!("pod {name} does not have a host assigned")))?;
    let node = read(store, format!("/registry/core/nodes/{node_name}")).await?.ok_or_else(|| ApiError::bad_request(format!("node {node_name:?} of pod {name} not found")))?;
    let ep = kubelet_endpoint(&node).ok_or_else(|| ApiError::bad_request(format!("node {node_name:?} publishes no kubelet endpoint")))?;
    let uri = format!("{}://{ep}/containerLogs/{ns}/{name}/{container}?{}", scheme(), params.join("&"));
    let req = axum::http::Request::get(&uri).body(http_body_util::Empty::new()).map_err(|e| ApiError::internal(e.to_string()))?;
    let resp = tokio::time::timeout(KUBELET_TIMEOUT, http().request(req))
        .await
        .map_err(|_| ApiError::unavailable(format!("the kubelet of node {node_name:?} at {ep} did not answer within {}s", KUBELET_TIMEOUT.as_secs())))?
        .map_err(|e| ApiError::unavailable(format!("the kubelet of node {node_name:?} at {ep}: {e}")))?;
    let code = resp.status();
    if !code.is_success() {
        let body = tokio::time::timeout(KUBELET_TIMEOUT, resp.into_body().collect()).await.ok().and_then(|r| r.ok()).map(|b| b.to_bytes()).unwrap_or_default();
        let msg = String::from_utf8_lossy(&body[..body.len().min(4096)]).trim().to_string();
        return Err(if code.is_server_error() { ApiError::internal(msg) } else { ApiError::bad_request(msg) });
    }
    let mut r = Response::new(Body::new(resp.into_body()));
    *r.status_mut() = StatusCode::OK;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(r)
}

/// `pods/exec`, `pods/attach`, `pods/portforward`: checked here, carried to the pod's kubelet
/// (`stream_proxy`).
pub async fn pod_stream(store: &Store, pod_key: String, ns: &str, name: &str, sub: &str, method: &axum::http::Method, raw_query: &str, headers: &axum::http::HeaderMap, upgrade: Option<hyper::upgrade::OnUpgrade>) -> Result<Response, ApiError> {
    let pod = read(store, pod_key).await?.ok_or_else(|| ApiError::not_found("", "pods", name))?;
    let query: HashMap<String, String> = form_urlencoded::parse(raw_query.as_bytes()).into_owned().collect();
    let commands = form_urlencoded::parse(raw_query.as_bytes()).filter(|(k, _)| k == "command").count();
    crate::stream_proxy::check(&pod, sub, &query, commands)?;
    let path = if sub == "portforward" {
        format!("/portForward/{ns}/{name}")
    } else {
        let container = pick_container(&pod, query.get("container").map(String::as_str))?;
        format!("/{sub}/{ns}/{name}/{container}")
    };
    let node_name = pod["spec"]["nodeName"].as_str().unwrap_or("");
    let node = read(store, format!("/registry/core/nodes/{node_name}")).await?.ok_or_else(|| ApiError::bad_request(format!("node {node_name:?} of pod {name} not found")))?;
    crate::stream_proxy::proxy(&node, method, path, raw_query, headers, upgrade).await
}

/// The stats documents of every kubelet endpoint (concurrently, each bounded in time).
async fn gather(nodes: &[Value]) -> Vec<Value> {
    let mut eps: Vec<String> = nodes.iter().filter_map(kubelet_endpoint).collect();
    eps.sort();
    eps.dedup();
    let fetches = eps.into_iter().map(|ep| async move {
        let req = axum::http::Request::get(format!("{}://{ep}/stats/capstan", scheme())).body(http_body_util::Empty::new()).ok()?;
        let resp = tokio::time::timeout(KUBELET_TIMEOUT, http().request(req)).await.ok()?.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let body = tokio::time::timeout(KUBELET_TIMEOUT, http_body_util::Limited::new(resp.into_body(), STATS_BYTES_MAX).collect()).await.ok()?.ok()?.to_bytes();
        serde_json::from_slice::<Value>(&body).ok()
    });
    futures_util::future::join_all(fetches).await.into_iter().flatten().collect()
}

fn cpu(nano: u64) -> String {
    format!("{nano}n")
}

fn mem(bytes: u64) -> String {
    format!("{}Ki", bytes / 1024)
}

fn group_doc() -> Value {
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": "metrics.k8s.io", "versions": [{"groupVersion": "metrics.k8s.io/v1beta1", "version": "v1beta1"}], "preferredVersion": {"groupVersion": "metrics.k8s.io/v1beta1", "version": "v1beta1"}})
}

/// Discovery entries for the group (aggregated discovery lists it beside the stored groups).
pub fn aggregated_group() -> Value {
    let r = |res: &str, kind: &str, scope: &str| {
        json!({"resource": res, "responseKind": {"group": "metrics.k8s.io", "version": "v1beta1", "kind": kind}, "scope": scope,
            "singularResource": "", "verbs": ["get", "list"]})
    };
    json!({
        "metadata": {"name": "metrics.k8s.io", "creationTimestamp": null},
        "versions": [{"version": "v1beta1", "freshness": "Current", "resources": [r("nodes", "NodeMetrics", "Cluster"), r("pods", "PodMetrics", "Namespaced")]}],
    })
}

pub fn legacy_group() -> Value {
    let mut g = group_doc();
    g.as_object_mut().map(|m| {
        m.remove("kind");
        m.remove("apiVersion");
    });
    g
}

fn ok(v: &Value) -> Response {
    let mut r = (StatusCode::OK, serde_json::to_vec(v).unwrap_or_default()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Serves `/apis/metrics.k8s.io[/v1beta1[/...]]`; `rest` is what follows the group.
pub async fn metrics_api(store: &Store, rest: &str, query: &HashMap<String, String>) -> Result<Response, ApiError> {
    let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let selector = LabelSelector::parse(query.get("labelSelector").map(String::as_str).unwrap_or("")).map_err(ApiError::bad_request)?;
    match parts.as_slice() {
        [] => Ok(ok(&group_doc())),
        ["v1beta1"] => Ok(ok(&json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "metrics.k8s.io/v1beta1", "resources": [
            {"name": "nodes", "singularName": "", "namespaced": false, "kind": "NodeMetrics", "verbs": ["get", "list"]},
            {"name": "pods", "singularName": "", "namespaced": true, "kind": "PodMetrics", "verbs": ["get", "list"]},
        ]}))),
        ["v1beta1", "nodes"] => node_metrics(store, None, &selector).await,
        ["v1beta1", "nodes", name] => node_metrics(store, Some(name), &selector).await,
        ["v1beta1", "pods"] => pod_metrics(store, None, None, &selector).await,
        ["v1beta1", "namespaces", ns, "pods"] => pod_metrics(store, Some(ns), None, &selector).await,
        ["v1beta1", "namespaces", ns, "pods", name] => pod_metrics(store, Some(ns), Some(name), &selector).await,
        _ => Err(ApiError::path_not_found(&format!("/apis/metrics.k8s.io/{rest}"))),
    }
}

async fn node_metrics(store: &Store, name: Option<&str>, selector: &LabelSelector) -> Result<Response, ApiError> {
    let nodes: Vec<Value> = list(store, "/registry/core/nodes/".into())
        .await?
        .into_iter()
        .filter(|n| name.is_none_or(|x| n["metadata"]["name"] == x) && selector.matches(n["metadata"]["labels"].as_object()))
        .collect();
    if let Some(n) = name
        && nodes.is_empty()
    {
        return Err(ApiError::not_found("metrics.k8s.io", "nodes", n));
    }
    let docs = gather(&nodes).await;
    let mut usage: HashMap<&str, &Value> = HashMap::new();
    for d in &docs {
        for n in d["nodes"].as_array().into_iter().flatten() {
            if let Some(name) = n["name"].as_str() {
                usage.insert(name, n);
            }
        }
    }
    let items: Vec<Value> = nodes
        .iter()
        .filter_map(|n| {
            let nm = n["metadata"]["name"].as_str()?;
            let u = usage.get(nm)?;
            Some(json!({
                "metadata": {"name": nm, "creationTimestamp": u["timestamp"], "labels": n["metadata"]["labels"]},
                "timestamp": u["timestamp"], "window": u["window"],
                "usage": {"cpu": cpu(u["cpuNanoCores"].as_u64().unwrap_or(0)), "memory": mem(u["memoryBytes"].as_u64().unwrap_or(0))},
            }))
        })
        .collect();
    match name {
        Some(n) => {
            let mut it = items.into_iter().next().ok_or_else(|| ApiError::not_found("metrics.k8s.io", "nodes", n))?;
            it["kind"] = json!("NodeMetrics");
            it["apiVersion"] = json!("metrics.k8s.io/v1beta1");
            Ok(ok(&it))
        }
        None => Ok(ok(&json!({"kind": "NodeMetricsList", "apiVersion": "metrics.k8s.io/v1beta1", "metadata": {}, "items": items}))),
    }
}

async fn pod_metrics(store: &Store, ns: Option<&str>, name: Option<&str>, selector: &LabelSelector) -> Result<Response, ApiError> {
    let prefix = match ns {
        Some(ns) => format!("/registry/core/pods/{ns}/"),
        None => "/registry/core/pods/".into(),
    };
    let pods: Vec<Value> = list(store, prefix)
        .await?
        .into_iter()
        .filter(|p| name.is_none_or(|x| p["metadata"]["name"] == x) && selector.matches(p["metadata"]["labels"].as_object()))
        .collect();
    let nodes = list(store, "/registry/core/nodes/".into()).await?;
    let wanted: std::collections::HashSet<&str> = pods.iter().filter_map(|p| p["spec"]["nodeName"].as_str()).collect();
    let nodes: Vec<Value> = nodes.into_iter().filter(|n| n["metadata"]["name"].as_str().is_some_and(|x| wanted.contains(x))).collect();
    let docs = gather(&nodes).await;
    let mut usage: HashMap<(&str, &str), &Value> = HashMap::new();
    for d in &docs {
        for p in d["pods"].as_array().into_iter().flatten() {
            if let (Some(ns), Some(n)) = (p["namespace"].as_str(), p["name"].as_str()) {
                usage.insert((ns, n), p);
            }
        }
    }
    let items: Vec<Value> = pods
        .iter()
        .filter_map(|p| {
            let (pns, pn) = (p["metadata"]["namespace"].as_str()?, p["metadata"]["name"].as_str()?);
            let u = usage.get(&(pns, pn))?;
            let containers: Vec<Value> = u["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| json!({"name": c["name"], "usage": {"cpu": cpu(c["cpuNanoCores"].as_u64().unwrap_or(0)), "memory": mem(c["memoryBytes"].as_u64().unwrap_or(0))}}))
                .collect();
            Some(json!({
                "metadata": {"name": pn, "namespace": pns, "creationTimestamp": u["timestamp"], "labels": p["metadata"]["labels"]},
                "timestamp": u["timestamp"], "window": u["window"], "containers": containers,
            }))
        })
        .collect();
    match name {
        Some(n) => {
            let mut it = items.into_iter().next().ok_or_else(|| ApiError::not_found("metrics.k8s.io", "pods", n))?;
            it["kind"] = json!("PodMetrics");
            it["apiVersion"] = json!("metrics.k8s.io/v1beta1");
            Ok(ok(&it))
        }
        None => Ok(ok(&json!({"kind": "PodMetricsList", "apiVersion": "metrics.k8s.io/v1beta1", "metadata": {}, "items": items}))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_choice_matches_kubernetes() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "b"}], "initContainers": [{"name": "i"}]}});
        assert_eq!(pick_container(&pod, Some("b")).unwrap(), "b");
        assert_eq!(pick_container(&pod, Some("i")).unwrap(), "i");
        assert_eq!(pick_container(&pod, Some("z")).unwrap_err().message, "container z is not valid for pod p");
        assert_eq!(pick_container(&pod, None).unwrap_err().message, "a container name must be specified for pod p, choose one of: [a b] or one of the init containers: [i]");
        let one = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}});
        assert_eq!(pick_container(&one, None).unwrap(), "a");
    }

    #[test]
    fn endpoints_come_from_the_node() {
        let n = json!({"status": {"addresses": [{"type": "Hostname", "address": "h"}, {"type": "InternalIP", "address": "127.0.0.1"}], "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}}});
        assert_eq!(kubelet_endpoint(&n).as_deref(), Some("127.0.0.1:10250"));
        assert_eq!(kubelet_endpoint(&json!({"status": {}})), None);
    }
}
