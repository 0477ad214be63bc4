//! Routing and the verbs. Each request becomes a `Target` (discovery, or a resource path),
//! then a verb over the store: every write is one compare-and-swap txn on the key's revision.
//! Reads (`read.rs`), watches (`watch.rs`), what a create reads first (`admit.rs`) and the
//! rules of single resources (`rules.rs`) are in `handlers/`; routing, the request and the
//! write protocol are here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Map, Value, json};
use storage::{
    Compare, CompareOp, CompareTarget, DeleteRequest, EventKind, KeyRange, PutRequest, RangeRequest, Store, TxnOp,
    TxnOpResponse, TxnRequest, WatchRequest,
};

use crate::discovery;
use crate::object::{self, Stored, encode_stored, meta_mut, meta_str};
use crate::patch::{self, PatchType};
use crate::registry::{Registry, ResourceInfo};
use crate::reserve::{self, Reservation};
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::custom_columns;
use crate::table;
use crate::webhook::rules::Operation;

mod admit;
mod read;
mod rules;
mod token;
mod watch;
mod webhooks;

use watch::*;

/// Largest request body accepted (Kubernetes' limit is 3 MiB).
pub const REQUEST_BODY_BYTES_MAX: usize = 3 << 20;
const CAS_RETRIES_MAX: usize = 16;

pub struct AppState {
    pub store: Store,
    pub reg: Registry,
    pub admission: crate::admission::Chain,
    pub metrics: crate::metrics::Metrics,
    /// Whether the custom resources of stored CRDs have been loaded (at the first request).
    pub crds_loaded: std::sync::atomic::AtomicBool,
    pub caches: crate::cached::Caches,
    /// Turns true when the server is stopping: watches end with a bookmark.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Keeps `shutdown`'s sender alive when the caller has none to give (a closed channel
    /// would wake the watch streams forever).
    pub _shutdown_sender: Option<tokio::sync::watch::Sender<bool>>,
    /// Set once the built-in resources' watch caches are started.
    pub warm: std::sync::atomic::AtomicBool,
    /// The RBAC index, kept current by `rbac::follow`.
    pub rbac: crate::rbac::Authorizer,
    /// API Priority and Fairness: its configuration and its levels' seats and queues.
    pub apf: crate::apf::Apf,
    /// How requests are authenticated.
    pub authn: crate::authn::Mode,
    /// The audit log, when one is configured (for requests refused before they are audited).
    pub auditor: Option<Arc<crate::audit::Auditor>>,
    /// Signs and checks ServiceAccount tokens; none in in-process test servers.
    pub sa_keys: Option<Arc<crate::sa_token::Keys>>,
    /// Objects the authenticators and authorizers look up at every request (token Secrets,
    /// ServiceAccounts), parsed once per revision (`lookup`).
    pub parsed: std::sync::Mutex<std::collections::HashMap<Bytes, (u64, Arc<Value>)>>,
    /// The dashboard's digests, samples and hooks (`dashboard`).
    pub ui: crate::dashboard::UiState,
    /// The admission webhooks, kept current by `webhook::follow`.
    pub webhooks: crate::webhook::Webhooks,
    /// The ValidatingAdmissionPolicy bindings, kept current by `admission_policy::follow`.
    pub policies: crate::admission_policy::Policies,
    /// The aggregated APIs (remote APIServices), kept current by `aggregator::follow`.
    pub aggregator: crate::aggregator::Aggregator,
}

/// At most this many objects in `AppState::parsed` (emptied when full).
const PARSED_MAX: usize = 16_384;

impl AppState {
    /// One object of a core (`v1`) resource, from its watch cache, parsed once per revision;
    /// from the store when the cache does not have it (yet: a token made a moment ago). What
    /// authentication and the Node authorizer ask at every request, as Kubernetes' asks its
    /// informers.
    pub(crate) async fn lookup(&self, resource: &str, namespace: Option<&str>, name: &str) -> Result<Option<Arc<Value>>, ApiError> {
        let info = self.reg.find("", "v1", resource).ok_or_else(|| ApiError::internal(format!("{resource} is not served")))?;
        let key = Bytes::from(info.key(namespace, name));
        if let Ok(cache) = self.caches.get(&self.store, &info).await
            && let Some(o) = cache.snapshot().1.get(&key).cloned()
        {
            if let Some((rev, v)) = self.parsed.lock().unwrap().get(&key)
                && *rev == o.revision
            {
                return Ok(Some(v.clone()));
            }
            let v: Arc<Value> = Arc::new(serde_json::from_slice(&o.json()).map_err(|e| ApiError::internal(e.to_string()))?);
            let mut p = self.parsed.lock().unwrap();
            if p.len() >= PARSED_MAX {
                p.clear();
            }
            p.insert(key, (o.revision, v.clone()));
            return Ok(Some(v));
        }
        Ok(self.read_object("", resource, namespace, name).await?.map(Arc::new))
    }

    /// The node a pod is bound to (`Some(None)`: not bound), from the pods' watch cache
    /// without parsing it; from the store when the cache does not have it.
    pub(crate) async fn pod_node(&self, namespace: &str, name: &str) -> Result<Option<Option<Arc<str>>>, ApiError> {
        let info = self.reg.find("", "v1", "pods").ok_or_else(|| ApiError::internal("pods are not served"))?;
        if let Ok(cache) = self.caches.get(&self.store, &info).await
            && let Some(o) = cache.snapshot().1.get(info.key(Some(namespace), name).as_bytes())
        {
            return Ok(Some(o.meta.node_name.clone()));
        }
        Ok(self.read_object("", "pods", Some(namespace), name).await?.map(|p| p["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()).map(Arc::from)))
    }

    /// One object of a built-in resource as stored, or none.
    pub(crate) async fn read_object(&self, group: &str, resource: &str, namespace: Option<&str>, name: &str) -> Result<Option<Value>, ApiError> {
        let info = self.reg.find(group, "v1", resource).ok_or_else(|| ApiError::internal(format!("{resource} is not served")))?;
        match self.store.get(info.key(namespace, name)).await? {
            None => Ok(None),
            Some(kv) => Ok(Some(Stored::from_kv(&kv).map_err(ApiError::internal)?.value_at(kv.mod_revision).map_err(ApiError::internal)?)),
        }
    }
}

/// How long a consistent read waits for its cache to reach the store's revision.
const CACHE_WAIT: Duration = Duration::from_secs(10);

type ApiResult = Result<Response, ApiError>;

/// Names tried for one create with `generateName` before it answers AlreadyExists (Kubernetes
/// tries 8).
const GENERATE_NAME_ATTEMPTS: u32 = 8;

/// Whether a create whose name was taken on `attempt` (from 1) tries another name: only a
/// generated name, and at most `GENERATE_NAME_ATTEMPTS` in all.
fn retry_generated_name(generated: bool, attempt: u32) -> bool {
    generated && attempt < GENERATE_NAME_ATTEMPTS
}

fn json_response(code: StatusCode, body: Bytes) -> Response {
    let mut r = (code, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn json_value(code: StatusCode, v: &Value) -> Response {
    json_response(code, Bytes::from(serde_json::to_vec(v).unwrap_or_default()))
}

/// What a path names.
#[derive(Debug)]
enum Target {
    Resource { info: ResourceInfo, namespace: Option<String>, name: Option<String>, sub: Option<String> },
    /// `/api/v1` or `/apis/g/v`
    GroupVersion { group: String, version: String },
    Group(String),
}

fn parse_target(reg: &Registry, path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g] => return Some(Target::Group(g.to_string())),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    if rest.is_empty() {
        return Some(Target::GroupVersion { group: group.into(), version: version.into() });
    }
    // `namespaces/{ns}/{resource}...` when {resource} is a namespaced resource of this
    // group-version; otherwise `namespaces` is the resource itself.
    if rest[0] == "namespaces" && rest.len() >= 3
        && let Some(info) = reg.find(group, version, rest[2]).filter(|i| i.namespaced) {
            return Some(Target::Resource {
                info,
                namespace: Some(rest[1].to_string()),
                name: rest.get(3).map(|s| s.to_string()),
                sub: rest.get(4).map(|s| s.to_string()),
            });
        }
    let info = reg.find(group, version, rest[0])?;
    if rest.len() > 3 {
        return None;
    }
    Some(Target::Resource {
        info,
        namespace: None,
        name: rest.get(1).map(|s| s.to_string()),
        sub: rest.get(2).map(|s| s.to_string()),
    })
}

/// The single entry point: every request under `/api` and `/apis`.
pub async fn dispatch(
    State(st): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    user: Option<axum::Extension<Arc<crate::authn::UserInfo>>>,
    req: axum::extract::Request,
) -> Response {
    let (mut parts, body) = req.into_parts();
    let started = Instant::now();
    let user = user.map(|u| u.0);
    if !st.crds_loaded.load(std::sync::atomic::Ordering::SeqCst)
        && let Err(e) = refresh_crds(&st).await {
            return e.into_response();
        }
    let path = uri.path().to_string();
    let query: HashMap<String, String> = Query::try_from_uri(&uri).map(|q: Query<HashMap<String, String>>| q.0).unwrap_or_default();
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let ctype = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    // An aggregated API: its group-version belongs to another server.
    if let Some((g, v)) = crate::aggregator::proxy::target(&path)
        && let Some(remote) = st.aggregator.remote(g, v)
    {
        let resp = crate::aggregator::proxy::forward(&st, &remote, user.as_deref(), &method, &uri, &headers, body).await;
        st.metrics.observe("proxy", "apiservices", resp.status().as_u16(), started.elapsed());
        return resp;
    }
    if let Some(g) = path.strip_prefix("/apis/").map(|g| g.trim_end_matches('/')).filter(|g| !g.is_empty() && !g.contains('/'))
        && st.aggregator.serves_group(g)
        && let Some(doc) = st.aggregator.group_of(&st.reg, g)
    {
        return json_value(StatusCode::OK, &doc);
    }
    if let Some(rest) = path.strip_prefix("/apis/metrics.k8s.io").filter(|r| r.is_empty() || r.starts_with('/')) {
        let r = if method == Method::GET {
            crate::node_proxy::metrics_api(&st.store, rest, &query).await
        } else {
            Err(ApiError::method_not_allowed(format!("{method} is not supported by metrics.k8s.io")))
        };
        return r.unwrap_or_else(|e| e.into_response());
    }
    if let Some(t) = crate::http_proxy::parse(&path) {
        let resource = match t.kind {
            crate::http_proxy::Kind::Pod => "pods/proxy",
            crate::http_proxy::Kind::Service => "services/proxy",
            crate::http_proxy::Kind::Node => "nodes/proxy",
        };
        let resp = crate::http_proxy::serve(&st.store, t, &method, uri.query().unwrap_or(""), &headers, body).await.unwrap_or_else(|e| e.into_response());
        st.metrics.observe("proxy", resource, resp.status().as_u16(), started.elapsed());
        return resp;
    }
    let target = parse_target(&st.reg, &path);
    let (verb, resource) = describe(&method, &query, &target);
    let result = match target {
        None => Err(ApiError::path_not_found(&path)),
        Some(Target::Group(g)) => discovery::api_group_of(&st.reg, &g)
            .map(|v| json_value(StatusCode::OK, &v))
            .ok_or_else(|| ApiError::path_not_found(&path)),
        Some(Target::GroupVersion { group, version }) => discovery::api_resource_list(&st.reg, &group, &version)
            .map(|v| json_value(StatusCode::OK, &v))
            .ok_or_else(|| ApiError::path_not_found(&path)),
        Some(Target::Resource { info, namespace, name: Some(name), sub: Some(sub) })
            if info.group.is_empty() && info.resource == "pods" && matches!(sub.as_str(), "exec" | "attach" | "portforward") =>
        {
            let ns = namespace.as_deref().unwrap_or("default");
            let key = info.key(Some(ns), &name);
            let upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
            crate::node_proxy::pod_stream(&st.store, key, ns, &name, &sub, &method, uri.query().unwrap_or(""), &headers, upgrade).await
        }
        Some(Target::Resource { info, namespace, name, sub }) => {
            let body = if matches!(method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE) {
                match axum::body::to_bytes(body, REQUEST_BODY_BYTES_MAX + 1).await {
                    Ok(b) if b.len() > REQUEST_BODY_BYTES_MAX => Err(ApiError::too_large(b.len(), REQUEST_BODY_BYTES_MAX)),
                    Ok(b) => Ok(b),
                    Err(_) => Err(ApiError::too_large(REQUEST_BODY_BYTES_MAX + 1, REQUEST_BODY_BYTES_MAX)),
                }
            } else {
                Ok(Bytes::new())
            };
            // autoscaling/v1 HorizontalPodAutoscalers are the v2 resource seen through a
            // conversion (`hpa_v1`): the request goes to v2, the answer comes back as v1.
            let v1_hpa = info.group == "autoscaling" && info.version == "v1" && info.resource == "horizontalpodautoscalers";
            let v2_info = if v1_hpa { st.reg.resources.iter().find(|r| r.group == "autoscaling" && r.version == "v2" && r.resource == info.resource).cloned() } else { None };
            let mut method = method.clone();
            let mut ctype = ctype.clone();
            let body = match (body, &v2_info) {
                (Ok(b), Some(_)) => crate::hpa_v1::request_to_v2(&st, &info, namespace.as_deref(), name.as_deref(), &mut method, &mut ctype, b).await,
                (b, _) => b,
            };
            let info = v2_info.unwrap_or(info);
            match body {
                Err(e) => Err(e),
                Ok(body) => {
                    let is_crd = info.group == "apiextensions.k8s.io" && info.resource == "customresourcedefinitions";
                    let req = Req { st: &st, info: &info, namespace, name, sub, query: &query, accept: &accept, ctype: &ctype, body, warnings: Default::default(),
                        user_agent: headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("").to_string(), user: user.clone() };
                    let mut r = req.run(&method).await;
                    // Objects of a CRD of several versions, at the version asked for.
                    if let Some(c) = info.conversion.clone() {
                        r = match r {
                            Ok(resp) => Ok(crate::crd_conversion::respond(st.clone(), c, info.api_version(), info.kind, resp, is_true(q(&query, "watch"))).await),
                            Err(e) => Err(e),
                        };
                    }
                    if v1_hpa {
                        r = match r {
                            Ok(resp) => Ok(crate::hpa_v1::response_to_v1(resp, is_true(q(&query, "watch"))).await),
                            Err(e) => Err(e),
                        };
                    }
                    if is_crd && method != Method::GET && r.as_ref().is_ok_and(|x| x.status().is_success())
                        && let Err(e) = refresh_crds(&st).await {
                            tracing::warn!(error = %e.message, "refreshing custom resources after a CRD change failed");
                        }
                    if let Ok(resp) = r.as_mut() {
                        for w in req.warnings.lock().unwrap().iter() {
                            if let Ok(v) = HeaderValue::from_str(&format!("299 - {w:?}")) {
                                resp.headers_mut().append("Warning", v);
                            }
                        }
                    }
                    r
                }
            }
        }
    };
    let resp = result.unwrap_or_else(|e| e.into_response());
    st.metrics.observe(&verb, &resource, resp.status().as_u16(), started.elapsed());
    tracing::debug!(
        verb, resource, path, code = resp.status().as_u16(), latency_us = started.elapsed().as_micros() as u64,
        user_agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or(""),
        "request"
    );
    resp
}

/// Serves the custom resources of the stored CRDs.
pub async fn refresh_crds(st: &AppState) -> Result<(), ApiError> {
    let resp = st.store.range(RangeRequest::prefix("/registry/apiextensions.k8s.io/customresourcedefinitions/")).await?;
    let mut crds = Vec::new();
    for kv in &resp.kvs {
        if let Some(v) = decode_at(kv) {
            crds.push(v);
        }
    }
    st.reg.set_custom(&crds);
    st.crds_loaded.store(true, std::sync::atomic::Ordering::SeqCst);
    Ok(())
}

fn describe(method: &Method, query: &HashMap<String, String>, target: &Option<Target>) -> (String, String) {
    let resource = match target {
        Some(Target::Resource { info, sub, .. }) => match sub {
            Some(s) => format!("{}/{s}", info.resource),
            None => info.resource.to_string(),
        },
        _ => "discovery".into(),
    };
    let named = matches!(target, Some(Target::Resource { name: Some(_), .. }));
    let verb = match *method {
        Method::GET if is_true(query.get("watch").map(|s| s.as_str())) => "watch",
        Method::GET if named => "get",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => "other",
    };
    (verb.to_string(), resource)
}

struct Req<'a> {
    st: &'a AppState,
    info: &'a ResourceInfo,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
    query: &'a HashMap<String, String>,
    accept: &'a str,
    ctype: &'a str,
    body: Bytes,
    /// `Warning` headers to send (unknown fields under fieldValidation=Warn).
    warnings: std::sync::Mutex<Vec<String>>,
    user_agent: String,
    /// Who asks (none on the public paths).
    user: Option<Arc<crate::authn::UserInfo>>,
}

/// Go's `strconv.ParseBool` truth values, as Kubernetes parses boolean query parameters.
fn is_true(v: Option<&str>) -> bool {
    matches!(v, Some("1" | "t" | "T" | "true" | "TRUE" | "True"))
}

fn q<'a>(query: &'a HashMap<String, String>, k: &str) -> Option<&'a str> {
    query.get(k).map(|s| s.as_str()).filter(|s| !s.is_empty())
}

impl Req<'_> {
    /// `componentstatuses`: computed at each request (`component_status.rs`), read-only.
    async fn component_statuses(&self, method: &Method) -> ApiResult {
        self.warnings.lock().unwrap().push(crate::component_status::DEPRECATED.to_string());
        if *method != Method::GET || self.sub.is_some() || is_true(q(self.query, "watch")) {
            return Err(ApiError::method_not_allowed(format!("the server does not allow this method on the requested resource ({method} componentstatuses)")));
        }
        let mut items = crate::component_status::all(self.st).await;
        let as_table = table::wants_table(self.accept);
        if let Some(name) = &self.name {
            let one = items.drain(..).find(|o| o["metadata"]["name"] == name.as_str()).ok_or_else(|| ApiError::not_found("", "componentstatuses", name))?;
            return Ok(json_value(StatusCode::OK, &if as_table { table::table("ComponentStatus", vec![table::row("ComponentStatus", &one)], "", None) } else { one }));
        }
        Ok(json_value(
            StatusCode::OK,
            &if as_table {
                table::table("ComponentStatus", items.iter().map(|o| table::row("ComponentStatus", o)).collect(), "", None)
            } else {
                json!({"kind": "ComponentStatusList", "apiVersion": "v1", "metadata": {}, "items": items})
            },
        ))
    }
}

/// One object read from the store: its value and revision.
struct Current {
    obj: Value,
    mod_revision: u64,
}

impl Req<'_> {
    /// Drops fields the kind's schema does not define, as decoding into Kubernetes' types does;
    /// `fieldValidation=Strict` (kubectl's default) refuses them instead, `Warn` (the server's
    /// default) reports them in `Warning` headers, `Ignore` drops them silently.
    fn field_validation(&self, obj: &mut Value) -> Result<(), ApiError> {
        let schemas = crate::schema::Schemas::get(&self.st.reg);
        let unknown = match &self.info.custom_schema {
            Some(cs) => {
                let mut causes = Vec::new();
                crate::schema::validate_basic(cs, obj, "", &mut causes);
                if !causes.is_empty() {
                    let name = meta_str(obj, "name").unwrap_or(self.name()).to_string();
                    return Err(ApiError::invalid(self.info.group, self.info.kind, &name, causes));
                }
                schemas.prune_with(cs, obj)
            }
            None => schemas.prune_unknown(self.info.group, self.info.version, self.info.kind, obj).map_err(ApiError::bad_request)?,
        };
        if unknown.is_empty() {
            return Ok(());
        }
        match q(self.query, "fieldValidation").unwrap_or("Warn") {
            "Strict" => {
                let list: Vec<String> = unknown.iter().map(|u| format!("unknown field {u:?}")).collect();
                Err(ApiError::bad_request(format!(
                    "{} in version {:?} cannot be handled as a {}: strict decoding error: {}",
                    self.info.kind,
                    self.info.version,
                    self.info.kind,
                    list.join(", ")
                )))
            }
            "Ignore" => Ok(()),
            "Warn" => {
                self.warnings.lock().unwrap().extend(unknown.iter().map(|u| format!("unknown field {u:?}")));
                Ok(())
            }
            other => Err(ApiError::bad_request(format!("fieldValidation must be Strict, Warn or Ignore, not {other:?}"))),
        }
    }

    async fn run(&self, method: &Method) -> ApiResult {
        if self.info.namespaced && self.name.is_some() && self.namespace.is_none() {
            return Err(ApiError::path_not_found("a namespaced object needs /namespaces/{namespace}/"));
        }
        if self.info.group.is_empty() && self.info.resource == "componentstatuses" {
            return self.component_statuses(method).await;
        }
        match (method.clone(), self.name.is_some(), self.sub.as_deref()) {
            (Method::GET, false, None) => {
                if is_true(q(self.query, "watch")) {
                    self.watch().await
                } else {
                    self.list().await
                }
            }
            (Method::GET, true, None | Some("status")) => self.get().await,
            (Method::GET, true, Some("ephemeralcontainers")) if self.is_pod() => self.get().await,
            (Method::PUT, true, Some("ephemeralcontainers")) if self.is_pod() => self.update().await,
            (Method::PATCH, true, Some("ephemeralcontainers")) if self.is_pod() => self.patch().await,
            (Method::GET, true, Some("approval")) if self.is_csr() => self.get().await,
            (Method::PUT, true, Some("approval")) if self.is_csr() => self.update().await,
            (Method::PATCH, true, Some("approval")) if self.is_csr() => self.patch().await,
            (Method::GET, true, Some("scale")) => self.get_scale().await,
            (Method::POST, false, None) => self.create().await,
            (Method::POST, true, Some("binding")) => self.bind().await,
            (Method::POST, true, Some("eviction")) => self.evict().await,
            (Method::POST, true, Some("token")) if self.info.kind == "ServiceAccount" => self.token_request().await,
            (Method::PUT, true, None | Some("status")) => self.update().await,
            (Method::PUT, true, Some("scale")) => self.update_scale().await,
            (Method::PUT, true, Some("finalize")) if self.info.kind == "Namespace" => self.finalize_namespace().await,
            (Method::PATCH, true, None | Some("status")) => self.patch().await,
            (Method::PATCH, true, Some("scale")) => self.patch_scale().await,
            (Method::DELETE, true, None) => self.delete().await,
            (Method::DELETE, false, None) => self.delete_collection().await,
            (Method::GET, true, Some("log")) => {
                crate::node_proxy::pod_log(&self.st.store, self.key(), self.namespace.as_deref().unwrap_or(""), self.name(), self.query).await
            }
            (_, _, Some(sub)) if !self.info.subresources.iter().any(|s| s.name == sub) => {
                Err(ApiError::path_not_found(&format!("{}/{sub}", self.info.resource)))
            }
            (m, _, sub) => Err(ApiError::method_not_allowed(format!(
                "{m} is not supported on {}{}",
                self.info.resource,
                sub.map(|s| format!("/{s}")).unwrap_or_default()
            ))),
        }
    }

    fn key(&self) -> String {
        self.info.key(self.namespace.as_deref(), self.name.as_deref().unwrap_or(""))
    }

    fn is_pod(&self) -> bool {
        self.info.kind == "Pod" && self.info.group.is_empty()
    }

    fn is_csr(&self) -> bool {
        self.info.kind == "CertificateSigningRequest" && self.info.group == "certificates.k8s.io"
    }

    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    fn not_found(&self) -> ApiError {
        ApiError::not_found(self.info.group, self.info.resource, self.name())
    }

    fn dry_run(&self) -> bool {
        q(self.query, "dryRun") == Some("All")
    }

    async fn read(&self, key: &str) -> Result<Option<Current>, ApiError> {
        match self.st.store.get(key.to_string()).await? {
            None => Ok(None),
            Some(kv) => {
                let stored = Stored::from_kv(&kv).map_err(ApiError::internal)?;
                let mut obj = stored.value_at(kv.mod_revision).map_err(ApiError::internal)?;
                // A custom resource of several versions is written at the request's version.
                if let Some(c) = &self.info.conversion {
                    crate::crd_conversion::convert(self.st, c, vec![&mut obj], &self.info.api_version()).await?;
                }
                Ok(Some(Current { obj, mod_revision: kv.mod_revision }))
            }
        }
    }

    fn respond_object(&self, code: StatusCode, stored: &Stored, rev: u64) -> Response {
        if table::wants_table(self.accept) {
            let obj = stored.value_at(rev).unwrap_or(Value::Null);
            let rows = vec![custom_columns::row_for(self.info, &obj)];
            return json_value(code, &custom_columns::table_for(self.info, rows, &rev.to_string(), None));
        }
        json_response(code, stored.at(rev))
    }

    /// The cache of this resource, caught up as the request's resourceVersion asks: unset
    /// means consistent with the store, "0" any state.
    async fn cache(&self) -> Result<(watchcache::Cache, u64), ApiError> {
        let cache = self.st.caches.get(&self.st.store, self.info).await?;
        let rev = if q(self.query, "resourceVersion") == Some("0") {
            cache.revision()
        } else {
            cache.wait_consistent(CACHE_WAIT).await.map_err(consistency_error)?
        };
        Ok((cache, rev))
    }

    fn parse_body(&self) -> Result<Value, ApiError> {
        parse_body(self.ctype, &self.body)
    }

    /// apiVersion/kind must name this resource (filled in when absent).
    fn check_kind(&self, obj: &mut Value, expect: (&str, &str)) -> Result<(), ApiError> {
        let (api_version, kind) = expect;
        let map = obj.as_object_mut().unwrap();
        match map.get("apiVersion").and_then(|v| v.as_str()) {
            None => {
                map.insert("apiVersion".into(), json!(api_version));
            }
            Some(v) if v == api_version => {}
            Some(v) => return Err(ApiError::bad_request(format!("the API version in the data ({v}) does not match the expected API version ({api_version})"))),
        }
        match map.get("kind").and_then(|v| v.as_str()) {
            None => {
                map.insert("kind".into(), json!(kind));
            }
            Some(k) if k == kind => {}
            Some(k) => return Err(ApiError::bad_request(format!("the kind in the data ({k}) does not match the expected kind ({kind})"))),
        }
        Ok(())
    }

    fn check_namespace(&self, obj: &mut Value) -> Result<(), ApiError> {
        if !self.info.namespaced {
            meta_mut(obj).remove("namespace");
            return Ok(());
        }
        let ns = self.namespace.clone().unwrap_or_default();
        let m = meta_mut(obj);
        match m.get("namespace").and_then(|v| v.as_str()) {
            Some(x) if !x.is_empty() && x != ns => {
                Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"))
            }
            _ => {
                m.insert("namespace".into(), json!(ns));
                Ok(())
            }
        }
    }

    /// Who a write is attributed to in managedFields: `fieldManager`, else the client's name
    /// from its User-Agent (as Kubernetes does).
    fn manager(&self) -> String {
        if let Some(m) = q(self.query, "fieldManager") {
            return m.to_string();
        }
        let ua = self.user_agent.split('/').next().unwrap_or("").trim();
        if ua.is_empty() { "unknown".into() } else { ua.chars().take(128).collect() }
    }

    async fn create(&self) -> ApiResult {
        let mut obj = self.parse_body()?;
        self.check_kind(&mut obj, (&self.info.api_version(), self.info.kind))?;
        self.check_namespace(&mut obj)?;
        self.field_validation(&mut obj)?;
        meta_mut(&mut obj).remove("managedFields");
        self.create_object(obj).await
    }

    /// Everything a create does after the body is read: names, identity, defaults,
    /// validation, and one txn that fails if the key exists.
    async fn create_object(&self, mut obj: Value) -> ApiResult {
        let generated = meta_str(&obj, "name").is_none_or(|n| n.is_empty());
        let mut name = {
            let m = meta_mut(&mut obj);
            match (m.get("name").and_then(|v| v.as_str()), m.get("generateName").and_then(|v| v.as_str())) {
                (Some(n), _) if !n.is_empty() => n.to_string(),
                (_, Some(g)) if !g.is_empty() => {
                    let n = format!("{g}{}", object::name_suffix());
                    m.insert("name".into(), json!(n));
                    n
                }
                _ => {
                    return Err(ApiError::invalid(self.info.group, self.info.kind, "", vec![(
                        "metadata.name".into(),
                        "Required value: name or generateName is required".into(),
                    )]));
                }
            }
        };
        let ns_json = self.namespace_exists().await?;
        {
            let m = meta_mut(&mut obj);
            m.insert("uid".into(), json!(object::new_uid()));
            m.insert("creationTimestamp".into(), json!(object::now_rfc3339()));
            m.remove("resourceVersion");
            m.remove("deletionTimestamp");
            m.remove("deletionGracePeriodSeconds");
            if self.info.has_spec {
                m.insert("generation".into(), json!(1));
            }
        }
        if self.is_csr() {
            crate::csr::prepare_create(self.user.as_deref(), &mut obj)?;
        }
        if self.is_pod() {
            // A new pod's status is the API server's, whatever the client sent (Kubernetes'
            // PrepareForCreate): Pending, its QoS class added after admission.
            obj["status"] = json!({"phase": "Pending"});
        }
        if self.info.kind == "Secret" && self.info.group.is_empty() {
            crate::legacy_token::fill(self.st, &mut obj).await?;
        }
        self.st.admission.admit(self.info, None, &mut obj)?;
        self.node_restriction(&obj, None)?;
        self.guard_rbac(&obj).await?;
        self.pod_security(&obj, ns_json.as_ref())?;
        if self.info.kind == "Pod" && self.info.group.is_empty() {
            self.resolve_priority(&name, &mut obj).await?;
            self.runtime_class(&name, &mut obj).await?;
            self.service_account(&mut obj).await?;
        }
        if self.info.kind == "PersistentVolumeClaim" && self.info.group.is_empty() {
            self.default_storage_class(&mut obj).await?;
        }
        if matches!(self.info.kind, "Pod" | "PersistentVolumeClaim") && self.info.group.is_empty() {
            self.limit_ranges(&name, &mut obj).await?;
        }
        // Admission webhooks after the built-in mutations, as Kubernetes orders them; what a
        // mutating webhook changed is validated again.
        if self.mutate_by_webhooks(Operation::Create, &mut obj, None).await? {
            self.st.admission.admit(self.info, None, &mut obj)?;
            self.pod_security(&obj, ns_json.as_ref())?;
        }
        self.dynamic_validation(Operation::Create, Some(&obj), None).await?;
        if obj["metadata"].get("managedFields").is_none() {
            crate::ssa::record_update(None, &mut obj, &self.manager(), &self.info.api_version(), &object::now_rfc3339(), false);
        }
        if self.dry_run() {
            let s = Stored::parse(&encode_stored(&obj)).map_err(ApiError::internal)?;
            return Ok(self.respond_object(StatusCode::CREATED, &s, 0));
        }
        // One txn puts the object with its quota charges and cluster IP, each guarded by the
        // revision it was computed from: a create that fails takes nothing (`reserve.rs`). A
        // reservation that moved meanwhile is computed again; a generated name that is taken
        // is generated again, as Kubernetes does (its RetryGenerateName): 5 characters of 27
        // collide often among 100,000s of pods.
        let mut name_attempt = 1;
        let mut reservation_attempts = 0;
        loop {
            let mut reservations = if self.info.namespaced { self.quota_reservations(&name, &obj).await? } else { vec![] };
            reservations.extend(self.service_reservations(&mut obj).await?);
            let stored = encode_stored(&*self.for_storage(&obj).await?);
            let key = Bytes::from(self.info.key(self.namespace.as_deref(), &name));
            let resp = self.st.store.txn(reserve::create_txn(key, stored.clone(), &reservations).map_err(ApiError::internal)?).await?;
            if resp.succeeded {
                let s = Stored::parse(&stored).map_err(ApiError::internal)?;
                return Ok(self.respond_object(StatusCode::CREATED, &s, resp.revision));
            }
            let exists = match resp.responses.first() {
                Some(TxnOpResponse::Range(r)) => r.count > 0,
                _ => reservations.is_empty(),
            };
            if !exists {
                reservation_attempts += 1;
                if reservation_attempts >= CAS_RETRIES_MAX {
                    return Err(ApiError::conflict(self.info.group, self.info.resource, &name));
                }
                continue;
            }
            if !retry_generated_name(generated, name_attempt) {
                return Err(ApiError::already_exists(self.info.group, self.info.resource, &name));
            }
            name_attempt += 1;
            let prefix = meta_str(&obj, "generateName").unwrap_or("").to_string();
            name = format!("{prefix}{}", object::name_suffix());
            meta_mut(&mut obj).insert("name".into(), json!(name));
        }
    }

    /// Writes `new` over `cur` with compare-and-swap; `Ok(None)` if the key changed since.
    async fn cas_put(&self, key: &str, mod_revision: u64, new: &Value) -> Result<Option<(Stored, u64)>, ApiError> {
        self.cas_put_reserving(key, mod_revision, new, &[]).await
    }

    /// [`Self::cas_put`] that also writes `reservations` (node ports an update takes), each
    /// guarded by its key's revision as read: all or nothing.
    async fn cas_put_reserving(&self, key: &str, mod_revision: u64, new: &Value, reservations: &[Reservation]) -> Result<Option<(Stored, u64)>, ApiError> {
        let stored = encode_stored(&*self.for_storage(new).await?);
        let s = Stored::parse(&stored).map_err(ApiError::internal)?;
        if self.dry_run() {
            return Ok(Some((s, mod_revision)));
        }
        let key_b = Bytes::copy_from_slice(key.as_bytes());
        let mut compare = vec![Compare { key: key_b.clone(), op: CompareOp::Equal, target: CompareTarget::ModRevision(mod_revision), range_end: None }];
        let mut success = vec![TxnOp::Put(PutRequest { value: crate::encryption::seal(&key_b, stored).map_err(ApiError::internal)?, key: key_b, lease: 0, prev_kv: false })];
        for r in reservations {
            compare.push(Compare { key: r.key.clone(), op: CompareOp::Equal, target: CompareTarget::ModRevision(r.mod_revision), range_end: None });
            success.push(TxnOp::Put(PutRequest { key: r.key.clone(), value: crate::encryption::seal(&r.key, r.value.clone()).map_err(ApiError::internal)?, lease: 0, prev_kv: false }));
        }
        let resp = self.st.store.txn(TxnRequest { compare, success, failure: vec![] }).await?;
        Ok(resp.succeeded.then_some((s, resp.revision)))
    }

    /// `obj` at the storage version of its CRD, when that is not the request's
    /// (`crd_conversion`).
    async fn for_storage<'o>(&self, obj: &'o Value) -> Result<std::borrow::Cow<'o, Value>, ApiError> {
        let Some(c) = &self.info.conversion else { return Ok(std::borrow::Cow::Borrowed(obj)) };
        let mut o = obj.clone();
        crate::crd_conversion::convert(self.st, c, vec![&mut o], &c.storage).await?;
        Ok(std::borrow::Cow::Owned(o))
    }

    async fn cas_delete(&self, key: &str, mod_revision: u64) -> Result<bool, ApiError> {
        if self.dry_run() {
            return Ok(true);
        }
        let key_b = Bytes::copy_from_slice(key.as_bytes());
        let resp = self
            .st
            .store
            .txn(TxnRequest {
                compare: vec![Compare { key: key_b.clone(), op: CompareOp::Equal, target: CompareTarget::ModRevision(mod_revision), range_end: None }],
                success: vec![TxnOp::Delete(DeleteRequest { range: KeyRange::Key(key_b), prev_kv: self.is_service() })],
                failure: vec![],
            })
            .await?;
        // A Service gone releases its cluster IPs (their IPAddress objects). A crash between
        // the two leaves an IPAddress without its Service, which the start's repair removes.
        if resp.succeeded && self.is_service()
            && let Some(storage::TxnOpResponse::Delete(d)) = resp.responses.first()
        {
            for kv in &d.prev_kvs {
                if let Ok(svc) = Stored::from_kv(kv).and_then(|s| s.value_at(kv.mod_revision)) {
                    crate::system_services::release_cluster_ips(&self.st.store, &svc).await?;
                }
            }
        }
        Ok(resp.succeeded)
    }

    fn is_service(&self) -> bool {
        self.info.kind == "Service" && self.info.group.is_empty()
    }

    /// Merges what a write may change into `cur`: the main resource never changes status
    /// (when the type has a status subresource), `/status` changes only status; identity
    /// fields are kept; generation follows spec changes.
    fn next_object(&self, cur: &Value, incoming: Value) -> Result<Value, ApiError> {
        self.next_object_as(cur, incoming, true)
    }

    /// `track`: attribute the changed fields to this request's manager (every write but an
    /// apply, which has set managedFields itself).
    fn next_object_as(&self, cur: &Value, mut incoming: Value, track: bool) -> Result<Value, ApiError> {
        self.check_kind(&mut incoming, (&self.info.api_version(), self.info.kind))?;
        self.check_namespace(&mut incoming)?;
        self.field_validation(&mut incoming)?;
        if meta_str(&incoming, "name").is_some_and(|n| n != self.name()) {
            return Err(ApiError::bad_request(format!("the name of the object ({}) does not match the name on the URL ({})", meta_str(&incoming, "name").unwrap_or(""), self.name())));
        }
        let has_status_sub = self.info.subresources.iter().any(|s| s.name == "status");
        let mut next = if self.sub.as_deref() == Some("approval") && self.is_csr() {
            crate::csr::approval_next(cur, &incoming)
        } else if self.sub.as_deref() == Some("ephemeralcontainers") && self.is_pod() {
            // Only the ephemeral containers change, and only by additions
            // (ValidatePodEphemeralContainersUpdate).
            let mut n = cur.clone();
            let new = incoming["spec"].get("ephemeralContainers").cloned();
            crate::admission::ephemeral_update(cur, new.as_ref()).map_err(|causes| ApiError::invalid("", "Pod", self.name(), causes))?;
            match new {
                Some(e) => n["spec"]["ephemeralContainers"] = e,
                None => {
                    if let Some(spec) = n["spec"].as_object_mut() {
                        spec.remove("ephemeralContainers");
                    }
                }
            }
            n
        } else if self.sub.as_deref() == Some("status") {
            let mut n = cur.clone();
            match incoming.as_object_mut().and_then(|m| m.remove("status")) {
                Some(s) => n["status"] = s,
                None => {
                    n.as_object_mut().unwrap().remove("status");
                }
            }
            n
        } else {
            if has_status_sub {
                match cur.get("status") {
                    Some(s) => incoming["status"] = s.clone(),
                    None => {
                        incoming.as_object_mut().unwrap().remove("status");
                    }
                }
            }
            // A pod's ephemeral containers change only through their subresource: the main
            // resource keeps them as they are (Kubernetes' PrepareForUpdate).
            if self.is_pod() && incoming["spec"].is_object() {
                match cur["spec"].get("ephemeralContainers") {
                    Some(e) => incoming["spec"]["ephemeralContainers"] = e.clone(),
                    None => {
                        incoming["spec"].as_object_mut().unwrap().remove("ephemeralContainers");
                    }
                }
            }
            incoming
        };
        {
            let none = Value::Object(Map::new());
            let cm = cur.get("metadata").unwrap_or(&none);
            let m = meta_mut(&mut next);
            for f in ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"] {
                match cm.get(f) {
                    Some(v) => m.insert(f.into(), v.clone()),
                    None => m.remove(f),
                };
            }
            m.insert("name".into(), json!(self.name()));
            m.remove("resourceVersion");
        }
        if track {
            let status = self.sub.as_deref() == Some("status");
            crate::ssa::record_update(Some(cur), &mut next, &self.manager(), &self.info.api_version(), &object::now_rfc3339(), status);
        }
        if self.info.has_spec && cur.get("spec") != next.get("spec") {
            let g = cur["metadata"].get("generation").and_then(|g| g.as_i64()).unwrap_or(0) + 1;
            meta_mut(&mut next).insert("generation".into(), json!(g));
        }
        self.st.admission.admit(self.info, Some(cur), &mut next)?;
        self.node_restriction(&next, Some(cur))?;
        if self.is_csr() {
            crate::csr::admit_update(&self.st.rbac.index(), self.user.as_deref(), self.sub.as_deref(), cur, &next)?;
        }
        Ok(next)
    }

    /// RBAC's escalation checks on a Role, ClusterRole or binding being written
    /// (`escalation`).
    async fn guard_rbac(&self, obj: &Value) -> Result<(), ApiError> {
        if self.info.group != "rbac.authorization.k8s.io" {
            return Ok(());
        }
        let Some(user) = self.user.as_deref() else { return Ok(()) };
        crate::escalation::check(self.st, user, self.info.resource, self.namespace.as_deref().unwrap_or(""), obj).await
    }

    /// NodeRestriction, when a kubelet writes (`node_authz::admit`).
    fn node_restriction(&self, obj: &Value, existing: Option<&Value>) -> Result<(), ApiError> {
        let Some(node) = self.user.as_deref().and_then(crate::node_authz::node_of) else { return Ok(()) };
        let resource = match (self.info.group, self.info.resource) {
            ("", r @ ("nodes" | "pods")) => r,
            ("coordination.k8s.io", "leases") if self.namespace.as_deref() == Some("kube-node-lease") => "leases",
            _ => return Ok(()),
        };
        crate::node_authz::admit(node, resource, self.sub.as_deref().unwrap_or(""), obj, existing)
    }

    /// Completes a write: an object being deleted whose last finalizer went away is removed.
    /// Writes `next` over `cur` (compare-and-swap), with the node ports it newly takes
    /// (`reservations`); None when `cur` or a reservation key moved meanwhile.
    async fn finish_write(&self, key: &str, cur: &Current, next: Value, reservations: &[Reservation]) -> Result<Option<Response>, ApiError> {
        let deleting = next["metadata"].get("deletionTimestamp").is_some();
        let no_finalizers = next["metadata"].get("finalizers").and_then(|f| f.as_array()).is_none_or(|a| a.is_empty())
            && (self.info.kind != "Namespace" || next["spec"]["finalizers"].as_array().is_none_or(|a| a.is_empty()));
        if deleting && no_finalizers {
            if self.cas_delete(key, cur.mod_revision).await? {
                let s = Stored::parse(&encode_stored(&next)).map_err(ApiError::internal)?;
                return Ok(Some(self.respond_object(StatusCode::OK, &s, cur.mod_revision)));
            }
            return Ok(None);
        }
        // A write that changes nothing is not written (Kubernetes' GuaranteedUpdate): the
        // object keeps its resourceVersion and no watcher sees an event.
        if unchanged(&cur.obj, &next) && !crate::encryption::configured_for(key.as_bytes()) {
            let s = Stored::parse(&encode_stored(&cur.obj)).map_err(ApiError::internal)?;
            return Ok(Some(self.respond_object(StatusCode::OK, &s, cur.mod_revision)));
        }
        match self.cas_put_reserving(key, cur.mod_revision, &next, reservations).await? {
            Some((s, rev)) => Ok(Some(self.respond_object(StatusCode::OK, &s, rev))),
            None => Ok(None),
        }
    }

    /// The node ports `next` takes that `cur` did not hold (an update's reservations: the
    /// ports a Service already had are its own).
    async fn node_ports_taken(&self, cur: &Value, next: &mut Value) -> Result<Vec<Reservation>, ApiError> {
        let had: std::collections::HashSet<u64> = cur["spec"]["ports"].as_array().into_iter().flatten().filter_map(|p| p["nodePort"].as_u64()).collect();
        let mut taken = self.assign_node_ports(next).await?;
        let prefix = reserve::NODE_PORTS.as_bytes();
        taken.retain(|r| std::str::from_utf8(&r.key[prefix.len()..]).ok().and_then(|n| n.parse::<u64>().ok()).is_none_or(|n| !had.contains(&n)));
        Ok(taken)
    }

    /// PUT. Without a resourceVersion in the body it is unconditional and, as Kubernetes'
    /// GuaranteedUpdate, applied again over a newer object when another write came first; with
    /// one, a newer object is a 409. A node port another Service's update or create took
    /// meanwhile is seen on the next pass (422 if it was asked for, another one if not).
    async fn update(&self) -> ApiResult {
        let incoming = self.parse_body()?;
        let key = self.key();
        for _ in 0..CAS_RETRIES_MAX {
            let cur = self.read(&key).await?.ok_or_else(|| self.not_found())?;
            if let Some(rv) = meta_str(&incoming, "resourceVersion")
                && rv != cur.mod_revision.to_string() {
                    return Err(ApiError::conflict(self.info.group, self.info.resource, self.name()));
                }
            let mut next = self.next_object(&cur.obj, incoming.clone())?;
            self.webhooks_on_update(&cur.obj, &mut next).await?;
            let taken = self.node_ports_taken(&cur.obj, &mut next).await?;
            self.guard_rbac(&next).await?;
            if let Some(r) = self.finish_write(&key, &cur, next, &taken).await? {
                return Ok(r);
            }
        }
        Err(ApiError::conflict(self.info.group, self.info.resource, self.name()))
    }

    async fn patch(&self) -> ApiResult {
        let ty = PatchType::from_content_type(self.ctype).ok_or_else(|| ApiError::unsupported_media_type(self.ctype))?;
        if ty == PatchType::Apply {
            return self.server_side_apply().await;
        }
        let key = self.key();
        for _ in 0..CAS_RETRIES_MAX {
            let cur = self.read(&key).await?.ok_or_else(|| self.not_found())?;
            let mut doc = cur.obj.clone();
            if ty == PatchType::Strategic && self.info.custom_schema.is_some() {
                return Err(ApiError::unsupported_media_type("application/strategic-merge-patch+json (strategic merge patch is not supported for custom resources; use a merge patch)"));
            }
            let schemas = crate::schema::Schemas::get(&self.st.reg);
            let def = schemas.name_of(self.info.group, self.info.version, self.info.kind);
            patch::apply_typed(ty, &mut doc, &self.body, Some(schemas), def).map_err(|e| {
                if e.starts_with("invalid") { ApiError::bad_request(e) } else { ApiError::invalid(self.info.group, self.info.kind, self.name(), vec![("patch".into(), e)]) }
            })?;
            if let Some(rv) = meta_str(&doc, "resourceVersion")
                && rv != cur.mod_revision.to_string() {
                    return Err(ApiError::conflict(self.info.group, self.info.resource, self.name()));
                }
            let mut next = self.next_object(&cur.obj, doc)?;
            self.webhooks_on_update(&cur.obj, &mut next).await?;
            let taken = self.node_ports_taken(&cur.obj, &mut next).await?;
            self.guard_rbac(&next).await?;
            if let Some(r) = self.finish_write(&key, &cur, next, &taken).await? {
                return Ok(r);
            }
        }
        Err(ApiError::conflict(self.info.group, self.info.resource, self.name()))
    }

    /// Server-side apply (`application/apply-patch+yaml`): creates or updates the object to
    /// hold the manager's configuration, with field ownership and conflicts (`ssa`).
    async fn server_side_apply(&self) -> ApiResult {
        let manager = q(self.query, "fieldManager")
            .ok_or_else(|| ApiError::bad_request("fieldManager is required for apply requests"))?
            .to_string();
        let force = is_true(q(self.query, "force"));
        // The apply content type is YAML; JSON (what kubectl sends) is YAML too.
        let mut applied: Value = match serde_json::from_slice(&self.body) {
            Ok(v) => v,
            Err(_) => parse_yaml(&self.body)?,
        };
        if !applied.is_object() {
            return Err(ApiError::bad_request("an apply configuration must be an object"));
        }
        self.check_kind(&mut applied, (&self.info.api_version(), self.info.kind))?;
        self.check_namespace(&mut applied)?;
        self.field_validation(&mut applied)?;
        if meta_str(&applied, "name").is_some_and(|n| n != self.name()) {
            return Err(ApiError::bad_request("the name of the object does not match the name on the URL"));
        }
        meta_mut(&mut applied).insert("name".into(), json!(self.name()));
        let api_version = self.info.api_version();
        let key = self.key();
        for _ in 0..CAS_RETRIES_MAX {
            let cur = self.read(&key).await?;
            let base = cur.as_ref().map(|c| c.obj.clone()).unwrap_or_else(|| json!({}));
            let schemas = crate::schema::Schemas::get(&self.st.reg);
            let def = schemas.name_of(self.info.group, self.info.version, self.info.kind);
            let obj = crate::ssa::apply(&base, &applied, &manager, force, &api_version, &object::now_rfc3339(), Some(schemas), def).map_err(|conflicts| {
                let n = conflicts.len();
                let mut e = ApiError::conflict(self.info.group, self.info.resource, self.name());
                e.message = format!(
                    "Apply failed with {n} conflict{}: {}",
                    if n == 1 { "" } else { "s" },
                    conflicts.iter().map(|c| format!("conflict with {:?}: {}", c.manager, c.path)).collect::<Vec<_>>().join(", ")
                );
                if let Some(d) = e.details.as_mut() {
                    d["causes"] = json!(conflicts.iter().map(|c| json!({"reason": "FieldManagerConflict", "message": format!("conflict with {:?}", c.manager), "field": c.path})).collect::<Vec<_>>());
                }
                e
            })?;
            match cur {
                None => return self.create_object(obj).await,
                Some(cur) => {
                    let mut next = self.next_object_as(&cur.obj, obj, false)?;
                    self.webhooks_on_update(&cur.obj, &mut next).await?;
                    let taken = self.node_ports_taken(&cur.obj, &mut next).await?;
                    self.guard_rbac(&next).await?;
                    if let Some(r) = self.finish_write(&key, &cur, next, &taken).await? {
                        return Ok(r);
                    }
                }
            }
        }
        Err(ApiError::conflict(self.info.group, self.info.resource, self.name()))
    }

    async fn delete(&self) -> ApiResult {
        let opts: Value = if self.body.is_empty() { json!({}) } else { parse_body(self.ctype, &self.body)? };
        let key = self.key();
        for _ in 0..CAS_RETRIES_MAX {
            let cur = self.read(&key).await?.ok_or_else(|| self.not_found())?;
            if let Some(pre) = opts.get("preconditions") {
                let uid_ok = pre.get("uid").and_then(|u| u.as_str()).is_none_or(|u| Some(u) == meta_str(&cur.obj, "uid"));
                let rv_ok = pre.get("resourceVersion").and_then(|u| u.as_str()).is_none_or(|r| r == cur.mod_revision.to_string());
                if !uid_ok || !rv_ok {
                    return Err(ApiError::conflict(self.info.group, self.info.resource, self.name()));
                }
            }
            self.dynamic_validation(Operation::Delete, None, Some(&cur.obj)).await?;
            if self.info.kind == "Namespace" {
                return self.delete_namespace(&cur).await;
            }
            // propagationPolicy (or the older orphanDependents): Orphan and Foreground leave
            // the object with a finalizer that the garbage collector removes once it has
            // orphaned or deleted the dependents; Background (the default) deletes now.
            let policy = opts.get("propagationPolicy").and_then(|p| p.as_str()).map(String::from).or_else(|| q(self.query, "propagationPolicy").map(String::from)).or_else(|| {
                match opts.get("orphanDependents").and_then(|o| o.as_bool()) {
                    Some(true) => Some("Orphan".into()),
                    _ => None,
                }
            });
            let gc_finalizer = match policy.as_deref() {
                None | Some("Background") => None,
                Some("Orphan") => Some("orphan"),
                Some("Foreground") => Some("foregroundDeletion"),
                Some(other) => return Err(ApiError::bad_request(format!("propagationPolicy must be Orphan, Background or Foreground, not {other:?}"))),
            };
            let mut cur = cur;
            if let Some(f) = gc_finalizer
                && cur.obj["metadata"].get("deletionTimestamp").is_none()
            {
                let m = meta_mut(&mut cur.obj);
                let list = m.entry("finalizers").or_insert(json!([]));
                if let Some(a) = list.as_array_mut()
                    && !a.iter().any(|x| x == f)
                {
                    a.push(json!(f));
                }
            }
            let finalizers = cur.obj["metadata"].get("finalizers").and_then(|f| f.as_array()).is_some_and(|a| !a.is_empty());
            let grace = opts.get("gracePeriodSeconds").and_then(|g| g.as_i64()).or_else(|| q(self.query, "gracePeriodSeconds").and_then(|g| g.parse().ok()));
            let graceful_pod = self.info.kind == "Pod"
                && cur.obj["spec"].get("nodeName").and_then(|n| n.as_str()).is_some_and(|n| !n.is_empty())
                && grace.unwrap_or_else(|| cur.obj["spec"].get("terminationGracePeriodSeconds").and_then(|g| g.as_i64()).unwrap_or(30)) > 0;
            if finalizers || graceful_pod {
                if cur.obj["metadata"].get("deletionTimestamp").is_some() {
                    let s = Stored::parse(&encode_stored(&cur.obj)).map_err(ApiError::internal)?;
                    return Ok(self.respond_object(StatusCode::OK, &s, cur.mod_revision));
                }
                let mut next = cur.obj.clone();
                let m = meta_mut(&mut next);
                m.insert("deletionTimestamp".into(), json!(object::now_rfc3339()));
                m.insert("deletionGracePeriodSeconds".into(), json!(if graceful_pod { grace.unwrap_or(30) } else { 0 }));
                m.remove("resourceVersion");
                if let Some((s, rev)) = self.cas_put(&key, cur.mod_revision, &next).await? {
                    return Ok(self.respond_object(StatusCode::OK, &s, rev));
                }
                continue;
            }
            if self.cas_delete(&key, cur.mod_revision).await? {
                if self.info.kind == "CustomResourceDefinition" && !self.dry_run() {
                    // The custom resources go with their definition.
                    for r in crate::registry::from_crd(&cur.obj) {
                        self.st.caches.forget(&r).await;
                        self.st.store.delete(DeleteRequest { range: KeyRange::Prefix(Bytes::from(r.prefix(None))), prev_kv: false }).await?;
                    }
                }
                // The resources whose stores set ReturnDeletedObject in Kubernetes answer
                // with the object deleted, and typed clients deserialize it as one (the
                // Python client's delete_* return types say which); every other resource
                // answers a Status of Success.
                if returns_deleted_object(self.info) {
                    let s = Stored::parse(&encode_stored(&cur.obj)).map_err(ApiError::internal)?;
                    return Ok(self.respond_object(StatusCode::OK, &s, cur.mod_revision));
                }
                return Ok(json_value(StatusCode::OK, &json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "details": {"name": self.name(), "group": self.info.group, "kind": self.info.resource, "uid": meta_str(&cur.obj, "uid")},
                })));
            }
        }
        Err(ApiError::conflict(self.info.group, self.info.resource, self.name()))
    }

    async fn delete_collection(&self) -> ApiResult {
        let (ls, fs) = self.selectors()?;
        let resp = self.st.store.range(RangeRequest::prefix(self.info.prefix(self.namespace.as_deref()))).await?;
        let mut deleted = Vec::new();
        for kv in &resp.kvs {
            let v = Stored::from_kv(kv).map_err(ApiError::internal)?.value_at(kv.mod_revision).map_err(ApiError::internal)?;
            let labels = v.get("metadata").and_then(|m| m.get("labels")).and_then(|l| l.as_object());
            if !ls.matches(labels) || !fs.matches(&v) {
                continue;
            }
            let key = String::from_utf8_lossy(&kv.key).to_string();
            self.dynamic_validation(Operation::Delete, None, Some(&v)).await?;
            if self.cas_delete(&key, kv.mod_revision).await? {
                deleted.push(v);
            }
        }
        let out = json!({"kind": self.info.list_kind, "apiVersion": self.info.api_version(), "metadata": {"resourceVersion": self.st.store.revision().to_string()}, "items": deleted});
        Ok(json_value(StatusCode::OK, &out))
    }

}

/// Whether `next` is `cur` but for its resourceVersion.
fn unchanged(cur: &Value, next: &Value) -> bool {
    let (Some(a), Some(b)) = (cur.as_object(), next.as_object()) else { return false };
    if a.len() != b.len() {
        return false;
    }
    a.iter().all(|(k, v)| match b.get(k) {
        None => false,
        Some(w) if k == "metadata" => {
            let (Some(ma), Some(mb)) = (v.as_object(), w.as_object()) else { return v == w };
            let rv = |m: &serde_json::Map<String, Value>| m.keys().filter(|k| *k != "resourceVersion").count();
            rv(ma) == rv(mb) && ma.iter().filter(|(k, _)| *k != "resourceVersion").all(|(k, x)| mb.get(k) == Some(x))
        }
        Some(w) => v == w,
    })
}

/// A YAML body (one document) as JSON.
fn parse_yaml(body: &[u8]) -> Result<Value, ApiError> {
    serde_norway::from_slice::<Value>(body).map_err(|e| ApiError::bad_request(format!("the body of the request is not valid YAML: {e}")))
}

/// A request body as JSON: JSON or YAML as is, Kubernetes protobuf decoded (`protobuf/`).
pub(crate) fn parse_body(ctype: &str, body: &Bytes) -> Result<Value, ApiError> {
    let base = ctype.split(';').next().unwrap_or("").trim();
    let v: Value = match base {
        "" | "application/json" | "*/*" => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the body of the request is not valid JSON: {e}")))?,
        "application/yaml" => parse_yaml(body)?,
        "application/vnd.kubernetes.protobuf" => crate::protobuf::to_json(body).map_err(|e| match e {
            crate::protobuf::PbError::Malformed(m) => ApiError::bad_request(m),
            crate::protobuf::PbError::Unsupported(m) => ApiError::unsupported_media_type(&m),
        })?,
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    if !v.is_object() {
        return Err(ApiError::bad_request("the body of the request must be a JSON object"));
    }
    Ok(v)
}

fn decode_at(kv: &storage::KeyValue) -> Option<Value> {
    Stored::from_kv(kv).ok()?.value_at(kv.mod_revision).ok()
}

/// Whether a DELETE of this resource answers the deleted object rather than a Status
/// (ReturnDeletedObject in Kubernetes' stores): pods, services, service accounts, pod
/// templates, resource quotas, persistent volumes and their claims, storage classes, CSI
/// drivers and nodes, volume attachments.
fn returns_deleted_object(info: &crate::registry::ResourceInfo) -> bool {
    matches!(
        (info.group, info.kind),
        ("", "Pod" | "Service" | "ServiceAccount" | "PodTemplate" | "ResourceQuota" | "PersistentVolume" | "PersistentVolumeClaim")
            | ("storage.k8s.io", "StorageClass" | "CSIDriver" | "CSINode" | "VolumeAttachment")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_generated_name_is_retried_eight_times_in_all_and_a_given_one_never() {
        let tries = |generated| (1..).take_while(|&a| retry_generated_name(generated, a)).count() + 1;
        assert_eq!(tries(true), 8);
        assert_eq!(tries(false), 1);
    }

    #[test]
    fn paths_resolve_to_resources_namespaces_and_subresources() {
        let reg = Registry::new();
        let t = parse_target(&reg, "/api/v1/namespaces/default/pods/p/status").unwrap();
        match t {
            Target::Resource { info, namespace, name, sub } => {
                assert_eq!(info.resource, "pods");
                assert_eq!(namespace.as_deref(), Some("default"));
                assert_eq!(name.as_deref(), Some("p"));
                assert_eq!(sub.as_deref(), Some("status"));
            }
            other => panic!("{other:?}"),
        }
        match parse_target(&reg, "/api/v1/namespaces/kube-system").unwrap() {
            Target::Resource { info, name, .. } => {
                assert_eq!(info.resource, "namespaces");
                assert_eq!(name.as_deref(), Some("kube-system"));
            }
            other => panic!("{other:?}"),
        }
        match parse_target(&reg, "/apis/apps/v1/deployments").unwrap() {
            Target::Resource { info, namespace, name, .. } => {
                assert_eq!(info.kind, "Deployment");
                assert!(namespace.is_none() && name.is_none());
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_target(&reg, "/api/v1/nonsense").is_none());
        assert!(matches!(parse_target(&reg, "/apis/apps/v1"), Some(Target::GroupVersion { .. })));
    }
}

/// A consistent read that could not be made: 503, with a retry hint when a replica has no
/// quorum (it must not answer from a state that may be stale as if it were fresh).
fn consistency_error(e: watchcache::WatchError) -> ApiError {
    match e {
        watchcache::WatchError::Unavailable(m) => ApiError::unavailable_retry(m, 1),
        e => ApiError::unavailable(e.to_string()),
    }
}
