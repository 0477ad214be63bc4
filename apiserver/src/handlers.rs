//! Routing and the verbs. Each request becomes a `Target` (discovery, or a resource path),
//! then a verb over the store: every write is one compare-and-swap txn on the key's revision.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Value, json};
use storage::{
    Compare, CompareOp, CompareTarget, DeleteRequest, EventKind, KeyRange, PutRequest, RangeRequest, Store, TxnOp,
    TxnRequest, WatchRequest,
};

use crate::discovery;
use crate::object::{self, Stored, encode_stored, meta_mut, meta_str};
use crate::patch::{self, PatchType};
use crate::registry::{Registry, ResourceInfo};
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::table;

/// Largest request body accepted (Kubernetes' limit is 3 MiB).
pub const REQUEST_BODY_BYTES_MAX: usize = 3 << 20;
/// Objects read per store round trip while filtering a list.
const LIST_CHUNK_ITEMS: usize = 500;
/// A watch without `timeoutSeconds` ends after this long (clients re-watch).
const WATCH_TIMEOUT_DEFAULT: Duration = Duration::from_secs(1800);
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(60);
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
    body: Body,
) -> Response {
    let started = Instant::now();
    if !st.crds_loaded.load(std::sync::atomic::Ordering::SeqCst)
        && let Err(e) = refresh_crds(&st).await {
            return e.into_response();
        }
    let path = uri.path().to_string();
    let query: HashMap<String, String> = Query::try_from_uri(&uri).map(|q: Query<HashMap<String, String>>| q.0).unwrap_or_default();
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let ctype = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    if let Some(rest) = path.strip_prefix("/apis/metrics.k8s.io").filter(|r| r.is_empty() || r.starts_with('/')) {
        let r = if method == Method::GET {
            crate::node_proxy::metrics_api(&st.store, rest, &query).await
        } else {
            Err(ApiError::method_not_allowed(format!("{method} is not supported by metrics.k8s.io")))
        };
        return r.unwrap_or_else(|e| e.into_response());
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
            match body {
                Err(e) => Err(e),
                Ok(body) => {
                    let is_crd = info.group == "apiextensions.k8s.io" && info.resource == "customresourcedefinitions";
                    let req = Req { st: &st, info: &info, namespace, name, sub, query: &query, accept: &accept, ctype: &ctype, body, warnings: Default::default(),
                        user_agent: headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("").to_string() };
                    let mut r = req.run(&method).await;
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
        if let Some(v) = decode_at(&kv.value, kv.mod_revision) {
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
}

/// Go's `strconv.ParseBool` truth values, as Kubernetes parses boolean query parameters.
fn is_true(v: Option<&str>) -> bool {
    matches!(v, Some("1" | "t" | "T" | "true" | "TRUE" | "True"))
}

fn q<'a>(query: &'a HashMap<String, String>, k: &str) -> Option<&'a str> {
    query.get(k).map(|s| s.as_str()).filter(|s| !s.is_empty())
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
            None => schemas.prune_unknown(self.info.group, self.info.version, self.info.kind, obj),
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
        match (method.clone(), self.name.is_some(), self.sub.as_deref()) {
            (Method::GET, false, None) => {
                if is_true(q(self.query, "watch")) {
                    self.watch().await
                } else {
                    self.list().await
                }
            }
            (Method::GET, true, None | Some("status")) => self.get().await,
            (Method::GET, true, Some("scale")) => self.get_scale().await,
            (Method::POST, false, None) => self.create().await,
            (Method::POST, true, Some("binding")) => self.bind().await,
            (Method::POST, true, Some("eviction")) => self.evict().await,
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
                let stored = Stored::parse(&kv.value).map_err(ApiError::internal)?;
                Ok(Some(Current { obj: stored.value_at(kv.mod_revision).map_err(ApiError::internal)?, mod_revision: kv.mod_revision }))
            }
        }
    }

    fn respond_object(&self, code: StatusCode, stored: &Stored, rev: u64) -> Response {
        if table::wants_table(self.accept) {
            let obj = stored.value_at(rev).unwrap_or(Value::Null);
            let rows = vec![table::row(self.info.kind, &obj)];
            return json_value(code, &table::table(self.info.kind, rows, &rev.to_string(), None));
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

    async fn get(&self) -> ApiResult {
        let (cache, _) = self.cache().await?;
        let (_, snap) = cache.snapshot();
        let o = snap.get(self.key().as_bytes()).ok_or_else(|| self.not_found())?;
        if table::wants_table(self.accept) {
            let v: Value = serde_json::from_slice(&o.json).map_err(|e| ApiError::internal(e.to_string()))?;
            return Ok(json_value(StatusCode::OK, &table::table(self.info.kind, vec![table::row(self.info.kind, &v)], &o.revision.to_string(), None)));
        }
        Ok(json_response(StatusCode::OK, o.json.clone()))
    }

    fn selectors(&self) -> Result<(LabelSelector, FieldSelector), ApiError> {
        let ls = LabelSelector::parse(q(self.query, "labelSelector").unwrap_or("")).map_err(ApiError::bad_request)?;
        let fs = FieldSelector::parse(q(self.query, "fieldSelector").unwrap_or(""), self.info.kind).map_err(ApiError::bad_request)?;
        Ok((ls, fs))
    }

    async fn list(&self) -> ApiResult {
        let exact = q(self.query, "resourceVersionMatch") == Some("Exact");
        if exact {
            // A list at an exact past revision reads the store's history.
            return self.list_store().await;
        }
        if let Some(tok) = q(self.query, "continue") {
            // A later page: from the snapshot the first page was cut from, if the cache still
            // keeps it, else from the store at its revision.
            let (start, rev) = decode_continue(tok, &self.info.prefix(self.namespace.as_deref()))?;
            let cache = self.st.caches.get(&self.st.store, self.info).await?;
            return match cache.kept_snapshot(rev) {
                Some(snap) => self.list_cached(Some((rev, snap, Bytes::from(start)))).await,
                None => self.list_store().await,
            };
        }
        self.list_cached(None).await
    }

    /// A list from the cache's snapshot: items are copied from the cached bytes (parsed only
    /// to filter by selector or render a Table). A limit cuts the list; the snapshot is kept a
    /// while so the continue token's pages come from it (`page`: a later page's snapshot and
    /// first key).
    async fn list_cached(&self, page: Option<(u64, imbl::OrdMap<Bytes, Arc<watchcache::Object>>, Bytes)>) -> ApiResult {
        let (ls, fs) = self.selectors()?;
        let limit: usize = match q(self.query, "limit") {
            Some(l) => l.parse().map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
            None => 0,
        };
        if let Some(rv) = q(self.query, "resourceVersion") {
            let n: u64 = rv.parse().map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?;
            if n > self.st.store.revision() {
                return Err(ApiError::from(storage::StoreError::FutureRevision { requested: n, current: self.st.store.revision() }));
            }
        }
        let cache = match &page {
            Some(_) => self.st.caches.get(&self.st.store, self.info).await?,
            None => self.cache().await?.0,
        };
        let prefix = self.info.prefix(self.namespace.as_deref());
        let (rev, snap, start) = match page {
            Some(p) => p,
            None => {
                let (r, s) = cache.snapshot();
                (r, s, Bytes::from(prefix.clone()))
            }
        };
        let as_table = table::wants_table(self.accept);
        if limit == 0 && !as_table {
            // Streamed: the snapshot is shared, the response goes out in chunks, so the memory
            // a list takes does not grow with the list.
            let head = list_body(self.info, rev, None, b"");
            let head = head.slice(..head.len() - 2); // without the closing "]}"
            let state = ListStream { snap, cursor: std::ops::Bound::Included(start), prefix: Bytes::from(prefix), ls, fs, head: Some(head), first: true, done: false };
            let stream = futures_util::stream::unfold(state, |mut s| async move {
                let chunk = s.next_chunk()?;
                Some((Ok::<_, std::convert::Infallible>(chunk), s))
            });
            return Ok(stream_response(stream));
        }
        let filtering = !ls.is_empty() || !fs.is_empty();
        let mut items = BytesMut::with_capacity(4096);
        let mut rows = Vec::new();
        let mut n = 0usize;
        let mut next: Option<Bytes> = None;
        for (k, o) in snap.range(start..) {
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            if limit != 0 && n == limit {
                next = Some(k.clone());
                break;
            }
            let value = if filtering || as_table { Some(serde_json::from_slice::<Value>(&o.json).map_err(|e| ApiError::internal(e.to_string()))?) } else { None };
            if let Some(v) = &value {
                let labels = v.get("metadata").and_then(|m| m.get("labels")).and_then(|l| l.as_object());
                if !ls.matches(labels) || !fs.matches(v) {
                    continue;
                }
            }
            if as_table {
                rows.push(table::row(self.info.kind, value.as_ref().unwrap()));
            } else {
                if n > 0 {
                    items.put_u8(b',');
                }
                items.put_slice(&o.json);
            }
            n += 1;
        }
        if next.is_some() {
            cache.keep_snapshot(rev, snap.clone());
        }
        let cont = next.map(|k| encode_continue(rev, &k));
        if as_table {
            return Ok(json_value(StatusCode::OK, &table::table(self.info.kind, rows, &rev.to_string(), cont.as_deref())));
        }
        Ok(json_response(StatusCode::OK, list_body(self.info, rev, cont.as_deref(), &items)))
    }

    /// A list page read from the store at the continue token's revision.
    async fn list_store(&self) -> ApiResult {
        let (ls, fs) = self.selectors()?;
        let limit: usize = match q(self.query, "limit") {
            Some(l) => l.parse().map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
            None => 0,
        };
        let prefix = self.info.prefix(self.namespace.as_deref());
        let end = prefix_end(prefix.as_bytes());
        // Continue tokens name the revision and the next key; `resourceVersion` as Kubernetes
        // defines it (unset: newest; "0": any; N: not older than N) is served at the newest.
        let (mut start, rev) = match q(self.query, "continue") {
            Some(tok) => decode_continue(tok, &prefix)?,
            None => (prefix.clone().into_bytes(), 0),
        };
        let mut rev = rev;
        if rev == 0 && q(self.query, "resourceVersionMatch") == Some("Exact") {
            rev = match q(self.query, "resourceVersion") {
                Some(r) => r.parse().map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {r:?}")))?,
                None => return Err(ApiError::bad_request("resourceVersionMatch=Exact needs a resourceVersion")),
            };
            if rev == 0 {
                return Err(ApiError::bad_request("resourceVersionMatch=Exact is not allowed with resourceVersion 0"));
            }
        }
        if let Some(rv) = q(self.query, "resourceVersion") {
            let n: u64 = rv.parse().map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?;
            if n > self.st.store.revision() && q(self.query, "continue").is_none() {
                return Err(ApiError::from(storage::StoreError::FutureRevision { requested: n, current: self.st.store.revision() }));
            }
        }
        let as_table = table::wants_table(self.accept);
        let mut items = BytesMut::with_capacity(4096);
        let mut rows = Vec::new();
        let mut n = 0usize;
        let mut next: Option<Vec<u8>> = None;
        // A metadata.name selector with a namespace is a point read.
        let filtering = !ls.is_empty() || !fs.is_empty();
        loop {
            let chunk = if limit == 0 { 0 } else { (limit - n).max(LIST_CHUNK_ITEMS).min(10 * LIST_CHUNK_ITEMS) };
            let mut req = RangeRequest::new(KeyRange::Range { start: Bytes::from(start.clone()), end: Bytes::from(end.clone()) }).limit(chunk);
            if rev != 0 {
                req = req.at(rev);
            }
            let resp = match self.st.store.range(req).await {
                Ok(r) => r,
                Err(storage::StoreError::Compacted { .. }) => {
                    return Err(ApiError::gone("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter."));
                }
                Err(e) => return Err(e.into()),
            };
            rev = resp.revision;
            let got = resp.kvs.len();
            for kv in &resp.kvs {
                if limit != 0 && n == limit {
                    next = Some(kv.key.to_vec());
                    break;
                }
                let stored = Stored::parse(&kv.value).map_err(ApiError::internal)?;
                let value = if filtering || as_table { Some(stored.value_at(kv.mod_revision).map_err(ApiError::internal)?) } else { None };
                if let Some(v) = &value {
                    let labels = v.get("metadata").and_then(|m| m.get("labels")).and_then(|l| l.as_object());
                    if !ls.matches(labels) || !fs.matches(v) {
                        continue;
                    }
                }
                if as_table {
                    rows.push(table::row(self.info.kind, value.as_ref().unwrap()));
                } else {
                    if n > 0 {
                        items.put_u8(b',');
                    }
                    stored.write_at(kv.mod_revision, &mut items);
                }
                n += 1;
            }
            if next.is_some() || !resp.more || got == 0 {
                break;
            }
            let last = resp.kvs.last().unwrap().key.to_vec();
            start = last;
            start.push(0);
        }
        let cont = next.map(|k| encode_continue(rev, &k));
        if as_table {
            return Ok(json_value(StatusCode::OK, &table::table(self.info.kind, rows, &rev.to_string(), cont.as_deref())));
        }
        Ok(json_response(StatusCode::OK, list_body(self.info, rev, cont.as_deref(), &items)))
    }

    /// A watch served by the cache; from a revision older than the cache's ring, by the store
    /// (its history reaches back to the last compaction), so a client resuming after a
    /// restart does not have to relist.
    async fn watch(&self) -> ApiResult {
        let (ls, fs) = self.selectors()?;
        let send_initial = is_true(q(self.query, "sendInitialEvents"));
        let bookmarks = is_true(q(self.query, "allowWatchBookmarks"));
        let timeout = q(self.query, "timeoutSeconds").and_then(|t| t.parse().ok()).map(Duration::from_secs).unwrap_or(WATCH_TIMEOUT_DEFAULT);
        let rv: Option<u64> = match q(self.query, "resourceVersion") {
            Some(r) => Some(r.parse().map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {r:?}")))?),
            None => None,
        };
        let cache = self.st.caches.get(&self.st.store, self.info).await?;
        let as_table = table::wants_table(self.accept);
        let kind = self.info.kind;
        let api_version = self.info.api_version();
        let (ls2, fs2) = (ls.clone(), fs.clone());
        let node = fs.exact("spec.nodeName").map(String::from);
        // Selectors on the fields the cache keeps in `Meta` (the kubelet's `spec.nodeName=X`,
        // hollow nodes' `spec.nodeName!=`) are answered without decoding the object.
        let simple = ls.is_empty() && fs.0.iter().all(|(f, _, _)| matches!(f.as_str(), "spec.nodeName" | "metadata.namespace" | "metadata.name"));
        let predicate: Arc<dyn Fn(&watchcache::Object) -> bool + Send + Sync> = Arc::new(move |o: &watchcache::Object| {
            if simple {
                return fs2.0.iter().all(|(f, eq, v)| {
                    let have = match f.as_str() {
                        "metadata.name" => &*o.meta.name,
                        "metadata.namespace" => o.meta.namespace.as_deref().unwrap_or(""),
                        _ => o.meta.node_name.as_deref().unwrap_or(""),
                    };
                    (have == v.as_str()) == *eq
                });
            }
            let labels: serde_json::Map<String, Value> = o.meta.labels.iter().map(|(k, v)| (k.to_string(), json!(&**v))).collect();
            if !ls2.matches(Some(&labels)) {
                return false;
            }
            fs2.is_empty() || serde_json::from_slice::<Value>(&o.json).is_ok_and(|v| fs2.matches(&v))
        });
        // Watchers with the same selectors share one evaluation per event.
        let key: Arc<str> = Arc::from(format!("{}|{}", q(self.query, "labelSelector").unwrap_or(""), q(self.query, "fieldSelector").unwrap_or("")));
        let filter = watchcache::Filter::new(self.namespace.clone().filter(|_| self.info.namespaced), node, Some(key), predicate);
        let mut initial = Vec::new();
        let after = match rv {
            Some(r) if r != 0 && !send_initial => r,
            _ => {
                let (rev, snap) = if rv.is_none() && send_initial {
                    let r = cache.wait_consistent(CACHE_WAIT).await.map_err(consistency_error)?;
                    let (_, s) = cache.snapshot();
                    (r, s)
                } else {
                    cache.snapshot()
                };
                let prefix = self.info.prefix(self.namespace.as_deref());
                for (k, o) in snap.range(Bytes::from(prefix.clone())..) {
                    if !k.starts_with(prefix.as_bytes()) {
                        break;
                    }
                    if filter.matches(o) {
                        initial.push(if as_table {
                            event_line("ADDED", &serde_json::from_slice(&o.json).unwrap_or(Value::Null), kind, true)
                        } else {
                            watchcache::encode_line("ADDED", &o.json)
                        });
                    }
                }
                if send_initial {
                    let bm = json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": rev.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}});
                    initial.push(event_line("BOOKMARK", &bm, kind, false));
                }
                rev
            }
        };
        match cache.watch(Some(after), filter.clone()) {
            Ok(w) => {
                let deadline = tokio::time::Instant::now() + timeout;
                let shell = WatchShell::new(self.st, initial, deadline, bookmarks, kind, api_version);
                let state = CacheWatchStream { shell, w, cache, filter, as_table, after };
                let stream = futures_util::stream::unfold(state, |mut s| async move {
                    let next = s.next().await?;
                    Some((Ok::<_, std::convert::Infallible>(next), s))
                });
                Ok(stream_response(stream))
            }
            Err(watchcache::WatchError::TooOld { .. }) => self.watch_store().await,
            Err(e) => Err(ApiError::unavailable(e.to_string())),
        }
    }

    /// A watch served straight from the store's history.
    async fn watch_store(&self) -> ApiResult {
        let (ls, fs) = self.selectors()?;
        let prefix = self.info.prefix(self.namespace.as_deref());
        let send_initial = is_true(q(self.query, "sendInitialEvents"));
        let bookmarks = is_true(q(self.query, "allowWatchBookmarks"));
        let timeout = q(self.query, "timeoutSeconds").and_then(|t| t.parse().ok()).map(Duration::from_secs).unwrap_or(WATCH_TIMEOUT_DEFAULT);
        let rv: Option<u64> = match q(self.query, "resourceVersion") {
            Some(r) => Some(r.parse().map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {r:?}")))?),
            None => None,
        };
        let as_table = table::wants_table(self.accept);
        let kind = self.info.kind;
        let api_version = self.info.api_version();
        let filter = move |v: &Value| {
            let labels = v.get("metadata").and_then(|m| m.get("labels")).and_then(|l| l.as_object());
            ls.matches(labels) && fs.matches(v)
        };
        // Initial state: for a watch from "now" (unset or "0"), Kubernetes first sends the
        // current objects as ADDED; so does sendInitialEvents=true.
        let mut initial = Vec::new();
        let start = match rv {
            Some(r) if r != 0 && !send_initial => r + 1,
            _ => {
                let resp = self.st.store.range(RangeRequest::prefix(prefix.clone())).await?;
                for kv in &resp.kvs {
                    let v = Stored::parse(&kv.value).map_err(ApiError::internal)?.value_at(kv.mod_revision).map_err(ApiError::internal)?;
                    if filter(&v) {
                        initial.push(event_line("ADDED", &v, kind, as_table));
                    }
                }
                if send_initial {
                    let bm = json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": resp.revision.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}});
                    initial.push(event_line("BOOKMARK", &bm, kind, false));
                }
                resp.revision + 1
            }
        };
        let compacted = self.st.store.compact_revision();
        if start <= compacted {
            let status = ApiError::gone(format!("too old resource version: {} ({})", start - 1, compacted)).to_json();
            let line = Bytes::from(format!("{}\n", json!({"type": "ERROR", "object": status})));
            return Ok(stream_response(futures_util::stream::iter(vec![Ok::<_, std::convert::Infallible>(line)])));
        }
        let watcher = self.st.store.watch(WatchRequest { range: KeyRange::Prefix(Bytes::from(prefix)), start_revision: Some(start), prev_kv: true });
        let deadline = tokio::time::Instant::now() + timeout;
        let shell = WatchShell::new(self.st, initial, deadline, bookmarks, kind, api_version);
        let state = WatchStream { shell, watcher, filter: Box::new(filter), as_table, last_rev: start - 1 };
        let stream = futures_util::stream::unfold(state, |mut s| async move {
            let next = s.next().await?;
            Some((Ok::<_, std::convert::Infallible>(next), s))
        });
        Ok(stream_response(stream))
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

    /// Allocates a Service's cluster IP from 10.96.0.0/12 (Kubernetes' default range): a
    /// counter under `/registry/ranges/serviceips` advanced by compare-and-swap. Addresses are
    /// not reused after a Service is deleted (2^20 of them).
    async fn allocate_cluster_ip(&self) -> Result<String, ApiError> {
        const KEY: &str = "/registry/ranges/serviceips";
        const RANGE: u32 = 1 << 20;
        for _ in 0..CAS_RETRIES_MAX {
            let cur = self.st.store.get(KEY).await?;
            let (next, rev) = match &cur {
                Some(kv) => (std::str::from_utf8(&kv.value).ok().and_then(|s| s.parse::<u32>().ok()).unwrap_or(1) + 1, kv.mod_revision),
                None => (2, 0), // .1 is the kubernetes Service's
            };
            if next >= RANGE - 1 {
                return Err(ApiError::internal("the service cluster IP range 10.96.0.0/12 is exhausted"));
            }
            let key = Bytes::from_static(KEY.as_bytes());
            let resp = self
                .st
                .store
                .txn(TxnRequest {
                    compare: vec![Compare { key: key.clone(), op: CompareOp::Equal, target: CompareTarget::ModRevision(rev) }],
                    success: vec![TxnOp::Put(PutRequest { key, value: Bytes::from(next.to_string()), lease: 0, prev_kv: false })],
                    failure: vec![],
                })
                .await?;
            if resp.succeeded {
                let ip = u32::from_be_bytes([10, 96, 0, 0]) + next;
                return Ok(std::net::Ipv4Addr::from(ip).to_string());
            }
        }
        Err(ApiError::internal("could not allocate a cluster IP"))
    }

    async fn namespace_exists(&self) -> Result<(), ApiError> {
        let Some(ns) = &self.namespace else { return Ok(()) };
        let key = format!("/registry/core/namespaces/{ns}");
        match self.st.store.get(key).await? {
            Some(kv) => {
                // Nothing new goes into a namespace being deleted.
                let v = Stored::parse(&kv.value).map_err(ApiError::internal)?.value_at(kv.mod_revision).map_err(ApiError::internal)?;
                if v["metadata"].get("deletionTimestamp").is_some() && self.info.kind != "Event" {
                    return Err(ApiError::forbidden(format!(
                        "{} \"{}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                        self.info.resource,
                        self.name.as_deref().unwrap_or("")
                    )));
                }
                Ok(())
            }
            None => Err(ApiError::not_found("", "namespaces", ns)),
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

    /// ResourceQuota admission (`quota.rs`): reserve this create's usage on every quota of
    /// the namespace, or refuse it.
    async fn charge_quotas(&self, name: &str, obj: &Value) -> Result<(), ApiError> {
        let Some(ns) = self.namespace.as_deref() else { return Ok(()) };
        let prefix = format!("/registry/core/resourcequotas/{ns}/");
        let delta = crate::quota::usage(self.info.group, self.info.resource, obj);
        for _ in 0..CAS_RETRIES_MAX {
            let r = self.st.store.range(RangeRequest::prefix(prefix.clone())).await?;
            if r.kvs.is_empty() {
                return Ok(());
            }
            let mut charged = Vec::new();
            for kv in &r.kvs {
                let q = Stored::parse(&kv.value).map_err(ApiError::internal)?.value_at(kv.mod_revision).map_err(ApiError::internal)?;
                match crate::quota::charge(&q, &delta, obj) {
                    Ok(mut next) => {
                        meta_mut(&mut next).remove("resourceVersion");
                        charged.push((String::from_utf8_lossy(&kv.key).to_string(), kv.mod_revision, next));
                    }
                    Err(msg) => return Err(ApiError::forbidden(format!("{} \"{name}\" is forbidden: {msg}", self.info.resource))),
                }
            }
            let mut all = true;
            for (k, rev, next) in &charged {
                if self.cas_put(k, *rev, next).await?.is_none() {
                    all = false;
                    break;
                }
            }
            if all {
                return Ok(());
            }
        }
        Err(ApiError::conflict("", "resourcequotas", ns))
    }

    /// The Priority admission plugin: `spec.priorityClassName` (or the class marked
    /// `globalDefault`) becomes `spec.priority` and `spec.preemptionPolicy`.
    async fn resolve_priority(&self, name: &str, obj: &mut Value) -> Result<(), ApiError> {
        let forbidden = |msg: String| ApiError::forbidden(format!("pods \"{name}\" is forbidden: {msg}"));
        let class = obj["spec"]["priorityClassName"].as_str().unwrap_or("").to_string();
        let found: Option<(i64, String)> = match class.as_str() {
            "system-node-critical" => Some((2_000_001_000, "PreemptLowerPriority".into())),
            "system-cluster-critical" => Some((2_000_000_000, "PreemptLowerPriority".into())),
            "" => {
                let r = self.st.store.range(RangeRequest::prefix("/registry/scheduling.k8s.io/priorityclasses/")).await?;
                r.kvs.iter().find_map(|kv| {
                    let v = Stored::parse(&kv.value).ok()?.value_at(kv.mod_revision).ok()?;
                    (v["globalDefault"].as_bool() == Some(true)).then(|| (v["value"].as_i64().unwrap_or(0), v["preemptionPolicy"].as_str().unwrap_or("PreemptLowerPriority").to_string()))
                })
            }
            c => match self.st.store.get(format!("/registry/scheduling.k8s.io/priorityclasses/{c}")).await? {
                Some(kv) => {
                    let v = Stored::parse(&kv.value).map_err(ApiError::internal)?.value_at(kv.mod_revision).map_err(ApiError::internal)?;
                    Some((v["value"].as_i64().unwrap_or(0), v["preemptionPolicy"].as_str().unwrap_or("PreemptLowerPriority").to_string()))
                }
                None => return Err(forbidden(format!("no PriorityClass with name {c} was found"))),
            },
        };
        let (value, policy) = found.unwrap_or((0, "PreemptLowerPriority".into()));
        if let Some(given) = obj["spec"]["priority"].as_i64()
            && given != value
        {
            return Err(forbidden(format!(
                "the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"
            )));
        }
        obj["spec"]["priority"] = json!(value);
        if obj["spec"].get("preemptionPolicy").is_none() {
            obj["spec"]["preemptionPolicy"] = json!(policy);
        }
        Ok(())
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
        self.namespace_exists().await?;
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
        self.st.admission.admit(self.info, None, &mut obj)?;
        if self.info.kind == "Pod" && self.info.group.is_empty() {
            self.resolve_priority(&name, &mut obj).await?;
        }
        if self.info.namespaced && !self.dry_run() {
            self.charge_quotas(&name, &obj).await?;
        }
        if self.info.kind == "Service" && self.info.group.is_empty() && !self.dry_run() {
            let spec = &obj["spec"];
            let wants_ip = spec.get("type").and_then(|t| t.as_str()) != Some("ExternalName")
                && spec.get("clusterIP").and_then(|c| c.as_str()).is_none_or(|c| c.is_empty());
            if wants_ip {
                let ip = self.allocate_cluster_ip().await?;
                obj["spec"]["clusterIP"] = json!(ip);
                obj["spec"]["clusterIPs"] = json!([ip]);
            }
        }
        if obj["metadata"].get("managedFields").is_none() {
            crate::ssa::record_update(None, &mut obj, &self.manager(), &self.info.api_version(), &object::now_rfc3339(), false);
        }
        let mut stored = encode_stored(&obj);
        if self.dry_run() {
            let s = Stored::parse(&stored).map_err(ApiError::internal)?;
            return Ok(self.respond_object(StatusCode::CREATED, &s, 0));
        }
        // A generated name that is taken is generated again, as Kubernetes does (its
        // RetryGenerateName): 5 characters of 27 collide often among 100,000s of pods.
        let mut attempt = 1;
        loop {
            let key_b = Bytes::from(self.info.key(self.namespace.as_deref(), &name));
            let resp = self
                .st
                .store
                .txn(TxnRequest {
                    compare: vec![Compare { key: key_b.clone(), op: CompareOp::Equal, target: CompareTarget::CreateRevision(0) }],
                    success: vec![TxnOp::Put(PutRequest { key: key_b, value: stored.clone(), lease: 0, prev_kv: false })],
                    failure: vec![],
                })
                .await?;
            if resp.succeeded {
                let s = Stored::parse(&stored).map_err(ApiError::internal)?;
                return Ok(self.respond_object(StatusCode::CREATED, &s, resp.revision));
            }
            if !retry_generated_name(generated, attempt) {
                return Err(ApiError::already_exists(self.info.group, self.info.resource, &name));
            }
            attempt += 1;
            let prefix = meta_str(&obj, "generateName").unwrap_or("").to_string();
            name = format!("{prefix}{}", object::name_suffix());
            meta_mut(&mut obj).insert("name".into(), json!(name));
            stored = encode_stored(&obj);
        }
    }

    /// Writes `new` over `cur` with compare-and-swap; `Ok(None)` if the key changed since.
    async fn cas_put(&self, key: &str, mod_revision: u64, new: &Value) -> Result<Option<(Stored, u64)>, ApiError> {
        let stored = encode_stored(new);
        let s = Stored::parse(&stored).map_err(ApiError::internal)?;
        if self.dry_run() {
            return Ok(Some((s, mod_revision)));
        }
        let key_b = Bytes::copy_from_slice(key.as_bytes());
        let resp = self
            .st
            .store
            .txn(TxnRequest {
                compare: vec![Compare { key: key_b.clone(), op: CompareOp::Equal, target: CompareTarget::ModRevision(mod_revision) }],
                success: vec![TxnOp::Put(PutRequest { key: key_b, value: stored, lease: 0, prev_kv: false })],
                failure: vec![],
            })
            .await?;
        Ok(resp.succeeded.then_some((s, resp.revision)))
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
                compare: vec![Compare { key: key_b.clone(), op: CompareOp::Equal, target: CompareTarget::ModRevision(mod_revision) }],
                success: vec![TxnOp::Delete(DeleteRequest { range: KeyRange::Key(key_b), prev_kv: false })],
                failure: vec![],
            })
            .await?;
        Ok(resp.succeeded)
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
        let mut next = if self.sub.as_deref() == Some("status") {
            let mut n = cur.clone();
            match incoming.get("status") {
                Some(s) => n["status"] = s.clone(),
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
            incoming
        };
        {
            let cm = cur.get("metadata").cloned().unwrap_or(json!({}));
            let m = meta_mut(&mut next);
            for f in ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"] {
                match cm.get(f) {
                    Some(v) => m.insert(f.into(), v.clone()),
                    None => m.remove(f),
                };
            }
            m.insert("name".into(), json!(self.name()));
            m.remove("resourceVersion");
            if track {
                match cm.get("managedFields") {
                    Some(v) => m.insert("managedFields".into(), v.clone()),
                    None => m.remove("managedFields"),
                };
            }
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
        Ok(next)
    }

    /// Completes a write: an object being deleted whose last finalizer went away is removed.
    async fn finish_write(&self, key: &str, cur: &Current, next: Value) -> Result<Option<Response>, ApiError> {
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
        match self.cas_put(key, cur.mod_revision, &next).await? {
            Some((s, rev)) => Ok(Some(self.respond_object(StatusCode::OK, &s, rev))),
            None => Ok(None),
        }
    }

    async fn update(&self) -> ApiResult {
        let incoming = self.parse_body()?;
        let key = self.key();
        let cur = self.read(&key).await?.ok_or_else(|| self.not_found())?;
        if let Some(rv) = meta_str(&incoming, "resourceVersion")
            && rv != cur.mod_revision.to_string() {
                return Err(ApiError::conflict(self.info.group, self.info.resource, self.name()));
            }
        let next = self.next_object(&cur.obj, incoming)?;
        self.finish_write(&key, &cur, next).await?.ok_or_else(|| ApiError::conflict(self.info.group, self.info.resource, self.name()))
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
            let next = self.next_object(&cur.obj, doc)?;
            if let Some(r) = self.finish_write(&key, &cur, next).await? {
                return Ok(r);
            }
        }
        Err(ApiError::conflict(self.info.group, self.info.resource, self.name()))
    }

    /// Server-side apply (`application/apply-patch+yaml`): creates or updates the object to
    /// hold the manager's configuration, with field ownership and conflicts (`ssa.rs`).
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
                    let next = self.next_object_as(&cur.obj, obj, false)?;
                    if let Some(r) = self.finish_write(&key, &cur, next).await? {
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
                return Ok(json_value(StatusCode::OK, &json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "details": {"name": self.name(), "group": self.info.group, "kind": self.info.resource, "uid": meta_str(&cur.obj, "uid")},
                })));
            }
        }
        Err(ApiError::conflict(self.info.group, self.info.resource, self.name()))
    }

    /// Deleting a namespace marks it Terminating; the namespace controller deletes what is in
    /// it and then finalizes it (`PUT .../finalize` with no `spec.finalizers`), which removes
    /// it. Creating anything in it meanwhile is Forbidden.
    async fn delete_namespace(&self, cur: &Current) -> ApiResult {
        if cur.obj["metadata"].get("deletionTimestamp").is_some() || self.dry_run() {
            let s = Stored::parse(&encode_stored(&cur.obj)).map_err(ApiError::internal)?;
            return Ok(self.respond_object(StatusCode::OK, &s, cur.mod_revision));
        }
        let mut next = cur.obj.clone();
        meta_mut(&mut next).insert("deletionTimestamp".into(), json!(object::now_rfc3339()));
        meta_mut(&mut next).insert("deletionGracePeriodSeconds".into(), json!(0));
        meta_mut(&mut next).remove("resourceVersion");
        next["status"]["phase"] = json!("Terminating");
        let spec_finalizers = next["spec"]["finalizers"].as_array().is_some_and(|a| !a.is_empty());
        let meta_finalizers = next["metadata"]["finalizers"].as_array().is_some_and(|a| !a.is_empty());
        if !spec_finalizers && !meta_finalizers {
            self.cas_delete(&self.key(), cur.mod_revision).await?;
            let s = Stored::parse(&encode_stored(&next)).map_err(ApiError::internal)?;
            return Ok(self.respond_object(StatusCode::OK, &s, cur.mod_revision));
        }
        match self.cas_put(&self.key(), cur.mod_revision, &next).await? {
            Some((s, rev)) => Ok(self.respond_object(StatusCode::OK, &s, rev)),
            None => Err(ApiError::conflict(self.info.group, self.info.resource, self.name())),
        }
    }

    /// `PUT /api/v1/namespaces/{name}/finalize`: sets `spec.finalizers`; a Terminating
    /// namespace with none left (and no metadata finalizers) is removed.
    async fn finalize_namespace(&self) -> ApiResult {
        let body: Value = parse_body(self.ctype, &self.body)?;
        let key = self.key();
        for _ in 0..CAS_RETRIES_MAX {
            let cur = self.read(&key).await?.ok_or_else(|| self.not_found())?;
            let mut next = cur.obj.clone();
            next["spec"]["finalizers"] = body["spec"]["finalizers"].clone();
            meta_mut(&mut next).remove("resourceVersion");
            let empty = next["spec"]["finalizers"].as_array().is_none_or(|a| a.is_empty()) && next["metadata"]["finalizers"].as_array().is_none_or(|a| a.is_empty());
            if empty && next["metadata"].get("deletionTimestamp").is_some() {
                if self.cas_delete(&key, cur.mod_revision).await? {
                    let s = Stored::parse(&encode_stored(&next)).map_err(ApiError::internal)?;
                    return Ok(self.respond_object(StatusCode::OK, &s, cur.mod_revision));
                }
                continue;
            }
            if let Some((s, rev)) = self.cas_put(&key, cur.mod_revision, &next).await? {
                return Ok(self.respond_object(StatusCode::OK, &s, rev));
            }
        }
        Err(ApiError::conflict(self.info.group, self.info.resource, self.name()))
    }

    async fn delete_collection(&self) -> ApiResult {
        let (ls, fs) = self.selectors()?;
        let resp = self.st.store.range(RangeRequest::prefix(self.info.prefix(self.namespace.as_deref()))).await?;
        let mut deleted = Vec::new();
        for kv in &resp.kvs {
            let v = Stored::parse(&kv.value).map_err(ApiError::internal)?.value_at(kv.mod_revision).map_err(ApiError::internal)?;
            let labels = v.get("metadata").and_then(|m| m.get("labels")).and_then(|l| l.as_object());
            if !ls.matches(labels) || !fs.matches(&v) {
                continue;
            }
            let key = String::from_utf8_lossy(&kv.key).to_string();
            if self.cas_delete(&key, kv.mod_revision).await? {
                deleted.push(v);
            }
        }
        let out = json!({"kind": self.info.list_kind, "apiVersion": self.info.api_version(), "metadata": {"resourceVersion": self.st.store.revision().to_string()}, "items": deleted});
        Ok(json_value(StatusCode::OK, &out))
    }

    fn scale_of(&self, obj: &Value, rev: u64) -> Value {
        let selector = obj["spec"]["selector"].get("matchLabels").and_then(|m| m.as_object()).map(|m| {
            m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect::<Vec<_>>().join(",")
        });
        json!({
            "kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {"name": self.name(), "namespace": self.namespace, "uid": meta_str(obj, "uid"), "resourceVersion": rev.to_string(), "creationTimestamp": meta_str(obj, "creationTimestamp")},
            "spec": {"replicas": obj["spec"].get("replicas").cloned().unwrap_or(json!(1))},
            "status": {"replicas": obj["status"].get("replicas").cloned().unwrap_or(json!(0)), "selector": selector.unwrap_or_default()},
        })
    }

    async fn get_scale(&self) -> ApiResult {
        let cur = self.read(&self.key()).await?.ok_or_else(|| self.not_found())?;
        Ok(json_value(StatusCode::OK, &self.scale_of(&cur.obj, cur.mod_revision)))
    }

    async fn write_scale(&self, change: impl Fn(&Value) -> Result<Value, ApiError>) -> ApiResult {
        let key = self.key();
        for _ in 0..CAS_RETRIES_MAX {
            let cur = self.read(&key).await?.ok_or_else(|| self.not_found())?;
            let scale = change(&self.scale_of(&cur.obj, cur.mod_revision))?;
            if let Some(rv) = scale["metadata"].get("resourceVersion").and_then(|r| r.as_str())
                && rv != cur.mod_revision.to_string() {
                    return Err(ApiError::conflict(self.info.group, self.info.resource, self.name()));
                }
            let replicas = scale["spec"].get("replicas").and_then(|r| r.as_i64()).ok_or_else(|| {
                ApiError::invalid("autoscaling", "Scale", self.name(), vec![("spec.replicas".into(), "Required value".into())])
            })?;
            if replicas < 0 {
                return Err(ApiError::invalid("autoscaling", "Scale", self.name(), vec![("spec.replicas".into(), format!("Invalid value: {replicas}: must be greater than or equal to 0"))]));
            }
            let mut next = cur.obj.clone();
            next["spec"]["replicas"] = json!(replicas);
            if cur.obj["spec"] != next["spec"] {
                let g = cur.obj["metadata"].get("generation").and_then(|g| g.as_i64()).unwrap_or(0) + 1;
                meta_mut(&mut next).insert("generation".into(), json!(g));
            }
            meta_mut(&mut next).remove("resourceVersion");
            crate::ssa::record_update(Some(&cur.obj), &mut next, &self.manager(), &self.info.api_version(), &object::now_rfc3339(), false);
            if let Some((_, rev)) = self.cas_put(&key, cur.mod_revision, &next).await? {
                return Ok(json_value(StatusCode::OK, &self.scale_of(&next, rev)));
            }
        }
        Err(ApiError::conflict(self.info.group, self.info.resource, self.name()))
    }

    async fn update_scale(&self) -> ApiResult {
        let body = self.parse_body()?;
        self.write_scale(move |_| Ok(body.clone())).await
    }

    async fn patch_scale(&self) -> ApiResult {
        let ty = PatchType::from_content_type(self.ctype).ok_or_else(|| ApiError::unsupported_media_type(self.ctype))?;
        let body = self.body.clone();
        self.write_scale(move |s| {
            let mut doc = s.clone();
            patch::apply(ty, &mut doc, &body).map_err(ApiError::bad_request)?;
            Ok(doc)
        })
        .await
    }

    /// `pods/binding`: sets `spec.nodeName` once.
    async fn bind(&self) -> ApiResult {
        let b = self.parse_body()?;
        let node = b["target"].get("name").and_then(|n| n.as_str()).filter(|n| !n.is_empty()).ok_or_else(|| {
            ApiError::invalid("", "Binding", self.name(), vec![("target.name".into(), "Required value".into())])
        })?;
        let key = self.key();
        for _ in 0..CAS_RETRIES_MAX {
            let cur = self.read(&key).await?.ok_or_else(|| self.not_found())?;
            if let Some(n) = cur.obj["spec"].get("nodeName").and_then(|n| n.as_str()).filter(|n| !n.is_empty()) {
                return Err(ApiError {
                    code: 409,
                    reason: "Conflict",
                    message: format!("Operation cannot be fulfilled on pods/binding \"{}\": pod {} is already assigned to node \"{n}\"", self.name(), self.name()),
                    details: None,
                });
            }
            let mut next = cur.obj.clone();
            next["spec"]["nodeName"] = json!(node);
            meta_mut(&mut next).remove("resourceVersion");
            if self.cas_put(&key, cur.mod_revision, &next).await?.is_some() {
                return Ok(json_value(StatusCode::CREATED, &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})));
            }
        }
        Err(ApiError::conflict(self.info.group, self.info.resource, self.name()))
    }

    /// `pods/eviction`: deletes the pod (PodDisruptionBudgets are honoured with the
    /// controllers issue).
    /// The eviction subresource: a graceful delete that a PodDisruptionBudget may refuse
    /// (429, as Kubernetes answers, so `kubectl drain` retries). An allowed eviction spends one
    /// of the budget's `disruptionsAllowed` (compare-and-swap on the budget) and is recorded in
    /// its `disruptedPods` until the disruption controller sees the pod go.
    async fn evict(&self) -> ApiResult {
        let body = self.parse_body()?;
        let key = self.key();
        let cur = self.read(&key).await?.ok_or_else(|| self.not_found())?;
        let pod = &cur.obj;
        let phase = pod["status"]["phase"].as_str().unwrap_or("");
        let ns = self.namespace.as_deref().unwrap_or("");
        if phase != "Succeeded" && phase != "Failed" && pod["metadata"].get("deletionTimestamp").is_none() {
            let prefix = format!("/registry/policy/poddisruptionbudgets/{ns}/");
            let r = self.st.store.range(RangeRequest::prefix(prefix)).await?;
            let mut matching = Vec::new();
            for kv in &r.kvs {
                let v = Stored::parse(&kv.value).map_err(ApiError::internal)?.value_at(kv.mod_revision).map_err(ApiError::internal)?;
                if api::meta::selector_matches(&v["spec"]["selector"], &pod["metadata"]["labels"]) {
                    matching.push((kv.key.clone(), kv.mod_revision, v));
                }
            }
            if matching.len() > 1 {
                return Err(ApiError::internal("This pod has more than one PodDisruptionBudget, which the eviction subresource does not support."));
            }
            if let Some((pkey, rev, mut pdb)) = matching.pop() {
                let allowed = pdb["status"]["disruptionsAllowed"].as_i64().unwrap_or(0);
                let stale = pdb["status"]["observedGeneration"].as_i64().unwrap_or(0) < pdb["metadata"]["generation"].as_i64().unwrap_or(0);
                if allowed <= 0 || stale {
                    let pname = pdb["metadata"]["name"].as_str().unwrap_or("");
                    let msg = format!(
                        "The disruption budget {pname} needs {} healthy pods and has {} currently",
                        pdb["status"]["desiredHealthy"].as_i64().unwrap_or(0),
                        pdb["status"]["currentHealthy"].as_i64().unwrap_or(0)
                    );
                    return Err(ApiError::too_many_requests("Cannot evict pod as it would violate the pod's disruption budget.", "DisruptionBudget", &msg));
                }
                pdb["status"]["disruptionsAllowed"] = json!(allowed - 1);
                pdb["status"]["disruptedPods"][self.name()] = json!(object::now_rfc3339());
                meta_mut(&mut pdb).remove("resourceVersion");
                let k = String::from_utf8_lossy(&pkey).to_string();
                if self.cas_put(&k, rev, &pdb).await?.is_none() {
                    return Err(ApiError::conflict("policy", "poddisruptionbudgets", pdb["metadata"]["name"].as_str().unwrap_or("")));
                }
            }
        }
        // A graceful delete, with the eviction's deleteOptions.
        let grace = body["deleteOptions"]["gracePeriodSeconds"].as_i64().or_else(|| pod["spec"]["terminationGracePeriodSeconds"].as_i64()).unwrap_or(30);
        let bound = pod["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty());
        if bound && grace > 0 {
            if pod["metadata"].get("deletionTimestamp").is_none() {
                let mut next = pod.clone();
                let m = meta_mut(&mut next);
                m.insert("deletionTimestamp".into(), json!(object::now_rfc3339()));
                m.insert("deletionGracePeriodSeconds".into(), json!(grace));
                m.remove("resourceVersion");
                if self.cas_put(&key, cur.mod_revision, &next).await?.is_none() {
                    return Err(ApiError::conflict("", "pods", self.name()));
                }
            }
        } else {
            self.cas_delete(&key, cur.mod_revision).await?;
        }
        Ok(json_value(StatusCode::CREATED, &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})))
    }
}

/// A YAML body (one document) as JSON.
fn parse_yaml(body: &[u8]) -> Result<Value, ApiError> {
    serde_norway::from_slice::<Value>(body).map_err(|e| ApiError::bad_request(format!("the body of the request is not valid YAML: {e}")))
}

/// A request body as JSON: JSON or YAML as is, Kubernetes protobuf decoded (`protobuf.rs`).
fn parse_body(ctype: &str, body: &Bytes) -> Result<Value, ApiError> {
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

/// A list's JSON around items that are already encoded (comma-separated objects).
fn list_body(info: &ResourceInfo, rev: u64, cont: Option<&str>, items: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(items.len() + 256);
    out.put_slice(format!("{{\"kind\":\"{}\",\"apiVersion\":\"{}\",\"metadata\":{{\"resourceVersion\":\"{rev}\"", info.list_kind, info.api_version()).as_bytes());
    if let Some(c) = cont {
        out.put_slice(format!(",\"continue\":\"{c}\"").as_bytes());
    }
    out.put_slice(b"},\"items\":[");
    out.put_slice(items);
    out.put_slice(b"]}");
    out.freeze()
}

/// What a watch stream waits for next: its deadline, or (with bookmarks) the next bookmark.
fn watch_wait_until(deadline: tokio::time::Instant, bookmarks: bool) -> tokio::time::Instant {
    if bookmarks { (tokio::time::Instant::now() + BOOKMARK_INTERVAL).min(deadline) } else { deadline }
}

fn bookmark_line(kind: &str, api_version: &str, rev: u64) -> Bytes {
    event_line("BOOKMARK", &json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": rev.to_string()}}), kind, false)
}

fn stream_response<S>(stream: S) -> Response
where
    S: futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static,
{
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, private"));
    r
}

fn event_line(ty: &str, obj: &Value, kind: &str, as_table: bool) -> Bytes {
    let object = if as_table && ty != "BOOKMARK" {
        table::table(kind, vec![table::row(kind, obj)], meta_str(obj, "resourceVersion").unwrap_or(""), None)
    } else {
        obj.clone()
    };
    let mut v = serde_json::to_vec(&json!({"type": ty, "object": object})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// What the two watch streams (store-fed and cache-fed) have in common: the initial events,
/// the deadline, periodic bookmarks and the server's shutdown.
struct WatchShell {
    initial: std::collections::VecDeque<Bytes>,
    deadline: tokio::time::Instant,
    bookmarks: bool,
    kind: &'static str,
    api_version: String,
    done: bool,
    shutdown: tokio::sync::watch::Receiver<bool>,
    shutdown_open: bool,
}

/// What a watch stream's wait ended with.
enum Wait<T> {
    /// The source produced this.
    Got(T),
    /// Time for a bookmark (periodic, or the last one at shutdown).
    Bookmark,
    /// The deadline passed: the stream ends.
    End,
    /// Nothing to do yet (the shutdown channel changed without a shutdown): wait again.
    Again,
}

impl WatchShell {
    fn new(st: &AppState, initial: Vec<Bytes>, deadline: tokio::time::Instant, bookmarks: bool, kind: &'static str, api_version: String) -> WatchShell {
        WatchShell { initial: initial.into(), deadline, bookmarks, kind, api_version, done: false, shutdown: st.shutdown.clone(), shutdown_open: true }
    }

    /// Waits for `source`, the deadline, the next bookmark or the server's shutdown (after
    /// which the stream sends a last bookmark and ends).
    async fn wait<F: std::future::Future>(&mut self, source: F) -> Wait<F::Output> {
        if *self.shutdown.borrow() {
            self.done = true;
            return Wait::Bookmark;
        }
        tokio::select! {
            r = tokio::time::timeout_at(watch_wait_until(self.deadline, self.bookmarks), source) => match r {
                Ok(x) => Wait::Got(x),
                Err(_) if tokio::time::Instant::now() >= self.deadline => Wait::End,
                Err(_) => Wait::Bookmark,
            },
            r = self.shutdown.changed(), if self.shutdown_open => {
                // A closed channel (the sender gone without a shutdown) means none will come.
                self.shutdown_open = r.is_ok();
                Wait::Again
            }
        }
    }

    fn bookmark(&self, rev: u64) -> Bytes {
        bookmark_line(self.kind, &self.api_version, rev)
    }
}

struct WatchStream {
    shell: WatchShell,
    watcher: storage::Watcher,
    filter: Box<dyn Fn(&Value) -> bool + Send + Sync>,
    as_table: bool,
    last_rev: u64,
}

impl WatchStream {
    async fn next(&mut self) -> Option<Bytes> {
        if let Some(b) = self.shell.initial.pop_front() {
            return Some(b);
        }
        loop {
            if self.shell.done {
                return None;
            }
            let batch = match self.shell.wait(self.watcher.next()).await {
                Wait::Again => continue,
                Wait::End | Wait::Got(None) => return None,
                Wait::Bookmark => return Some(self.shell.bookmark(self.last_rev)),
                Wait::Got(Some(Err(e))) => {
                    self.shell.done = true;
                    let status = match e {
                        storage::WatchError::Compacted { .. } => ApiError::gone(format!("too old resource version: {e}")),
                        other => ApiError::internal(other.to_string()),
                    };
                    let mut v = serde_json::to_vec(&json!({"type": "ERROR", "object": status.to_json()})).unwrap_or_default();
                    v.push(b'\n');
                    return Some(Bytes::from(v));
                }
                Wait::Got(Some(Ok(events))) => events,
            };
            let mut out = BytesMut::new();
            for e in batch {
                self.last_rev = e.kv.mod_revision;
                let new = match e.kind {
                    EventKind::Put => decode_at(&e.kv.value, e.kv.mod_revision),
                    EventKind::Delete => None,
                };
                let old = e.prev_kv.as_ref().and_then(|p| decode_at(&p.value, p.mod_revision));
                let old_match = old.as_ref().is_some_and(|o| (self.filter)(o));
                let (ty, obj) = match (e.kind, new) {
                    (EventKind::Put, Some(n)) => {
                        let new_match = (self.filter)(&n);
                        match (old_match, new_match) {
                            (_, true) if e.kv.version == 1 || old.is_none() => ("ADDED", n),
                            (true, true) => ("MODIFIED", n),
                            (false, true) => ("ADDED", n),
                            (true, false) => ("DELETED", n),
                            (false, false) => continue,
                        }
                    }
                    (EventKind::Delete, _) if old_match => {
                        let mut o = old.unwrap();
                        meta_mut(&mut o).insert("resourceVersion".into(), json!(e.kv.mod_revision.to_string()));
                        ("DELETED", o)
                    }
                    _ => continue,
                };
                out.put_slice(&event_line(ty, &obj, self.shell.kind, self.as_table));
            }
            if !out.is_empty() {
                return Some(out.freeze());
            }
        }
    }
}

/// A list written out from a cache snapshot in chunks of about `LIST_STREAM_CHUNK_BYTES`.
struct ListStream {
    snap: imbl::OrdMap<Bytes, Arc<watchcache::Object>>,
    cursor: std::ops::Bound<Bytes>,
    prefix: Bytes,
    ls: LabelSelector,
    fs: FieldSelector,
    head: Option<Bytes>,
    first: bool,
    done: bool,
}

/// Bytes of items per chunk of a streamed list.
const LIST_STREAM_CHUNK_BYTES: usize = 64 << 10;

impl ListStream {
    fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(h) = self.head.take() {
            return Some(h);
        }
        if self.done {
            return None;
        }
        let filtering = !self.ls.is_empty() || !self.fs.is_empty();
        let mut out = BytesMut::with_capacity(LIST_STREAM_CHUNK_BYTES + 4096);
        let mut last: Option<Bytes> = None;
        for (k, o) in self.snap.range((self.cursor.clone(), std::ops::Bound::Unbounded)) {
            if !k.starts_with(&self.prefix) {
                self.done = true;
                break;
            }
            last = Some(k.clone());
            if filtering {
                let Ok(v) = serde_json::from_slice::<Value>(&o.json) else { continue };
                let labels = v.get("metadata").and_then(|m| m.get("labels")).and_then(|l| l.as_object());
                if !self.ls.matches(labels) || !self.fs.matches(&v) {
                    continue;
                }
            }
            if !self.first {
                out.put_u8(b',');
            }
            self.first = false;
            out.put_slice(&o.json);
            if out.len() >= LIST_STREAM_CHUNK_BYTES {
                break;
            }
        }
        match last {
            Some(k) if !self.done => self.cursor = std::ops::Bound::Excluded(k),
            _ => self.done = true,
        }
        if self.done {
            out.put_slice(b"]}");
        }
        Some(out.freeze())
    }
}

struct CacheWatchStream {
    shell: WatchShell,
    w: watchcache::CacheWatcher,
    cache: watchcache::Cache,
    filter: watchcache::Filter,
    as_table: bool,
    /// Events at or below this were covered by the initial state or the client's version.
    after: u64,
}

impl CacheWatchStream {
    async fn next(&mut self) -> Option<Bytes> {
        if let Some(b) = self.shell.initial.pop_front() {
            return Some(b);
        }
        loop {
            if self.shell.done {
                return None;
            }
            let ev = match self.shell.wait(self.w.next()).await {
                Wait::Again => continue,
                Wait::Bookmark => return Some(self.shell.bookmark(self.cache.revision().max(self.w.last_revision()))),
                // A slow watcher's stream ends; the client watches again from its last
                // resourceVersion, which the ring still holds.
                Wait::End | Wait::Got(None) | Wait::Got(Some(Err(_))) => return None,
                Wait::Got(Some(Ok(e))) => e,
            };
            if ev.revision <= self.after {
                continue;
            }
            let new_match = self.filter.matches(&ev.object);
            let old_match = ev.prev.as_ref().is_some_and(|p| self.filter.matches(p));
            let ty = match (ev.kind, old_match, new_match) {
                (watchcache::EventType::Deleted, _, _) => "DELETED",
                (_, true, true) => ev.kind.as_str(),
                (_, false, true) => "ADDED",
                (_, true, false) => "DELETED",
                (_, false, false) => continue,
            };
            if self.as_table {
                let table = || event_line(ty, &serde_json::from_slice(&ev.object.json).unwrap_or(Value::Null), self.shell.kind, true);
                // The Table form is shared too when the watcher sees the event as it happened.
                return Some(if ty == ev.kind.as_str() { ev.table_line(table) } else { table() });
            }
            // The shared encoding when this watcher sees the event as it happened.
            return Some(if ty == ev.kind.as_str() { ev.json_line() } else { watchcache::encode_line(ty, &ev.object.json) });
        }
    }
}

fn decode_at(value: &Bytes, rev: u64) -> Option<Value> {
    Stored::parse(value).ok()?.value_at(rev).ok()
}

/// The smallest key after every key with this prefix.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    Vec::new()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// An opaque continue token: the list's revision and the next key.
fn encode_continue(rev: u64, next_key: &[u8]) -> String {
    format!("{rev}-{}", hex(next_key))
}

fn decode_continue(tok: &str, prefix: &str) -> Result<(Vec<u8>, u64), ApiError> {
    let bad = || ApiError::bad_request(format!("invalid continue token {tok:?}"));
    let (rev, key) = tok.split_once('-').ok_or_else(bad)?;
    let rev: u64 = rev.parse().map_err(|_| bad())?;
    let key = unhex(key).ok_or_else(bad)?;
    if !key.starts_with(prefix.as_bytes()) {
        return Err(bad());
    }
    Ok((key, rev))
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

    #[test]
    fn continue_tokens_round_trip_and_are_checked() {
        let tok = encode_continue(42, b"/registry/core/pods/default/b");
        assert_eq!(decode_continue(&tok, "/registry/core/pods/default/").unwrap(), (b"/registry/core/pods/default/b".to_vec(), 42));
        assert!(decode_continue(&tok, "/registry/core/secrets/").is_err());
        assert!(decode_continue("garbage", "/").is_err());
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
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
