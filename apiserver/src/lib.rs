//! capstan's Kubernetes API server: the Kubernetes REST API over the store, for kubectl and
//! the client libraries.
//!
//! **Invariants.**
//! - The API server is the only component that talks to the store.
//! - Every write is one compare-and-swap txn on the object's key (`resourceVersion` = the
//!   store's revision); a stale version is a 409, never a lost update.
//! - Objects are stored as JSON with the version spliced in at read time (`object.rs`), so a
//!   read or a list item is served from the stored bytes without decoding or encoding.
//! - Every error is a Kubernetes `Status`.
//!
//! **Where to start reading.** `handlers.rs` (routing, the request, the write protocol) and
//! `handlers/` (reads, watches, admission reads, single resources' rules), then `object.rs`,
//! `discovery.rs`, `registry.rs` (the resources served, from the k8s-openapi types).

pub mod access_review;
pub mod admission;
pub mod admission_policy;
pub mod aggregator;
pub mod apf;
pub mod audit;
pub mod audit_event;
pub mod authn;
pub mod bootstrap_token;
pub mod cached;
pub mod component_status;
pub mod crd_conversion;
pub mod csr;
pub mod custom_columns;
pub mod dashboard;
pub mod config_yaml;
pub mod deadline;
pub mod default_roles;
pub mod default_storage;
pub mod discovery;
pub mod encryption;
pub mod escalation;
pub mod handlers;
pub mod hpa_v1;
pub mod in_process;
pub mod http_proxy;
pub mod legacy_token;
pub mod limit_range;
pub mod lite;
pub mod metrics;
pub mod node_authz;
pub mod node_token;
pub mod node_proxy;
pub mod object;
pub mod openapi_v2;
pub mod patch;
pub mod patch_meta;
pub mod pipeline;
pub mod pod_security;
pub mod protobuf;
pub use api::quota;
pub mod rbac;
pub mod reach;
pub mod sa_token;
pub mod registry;
pub mod reserve;
pub mod runtime_class;
pub mod schema;
pub mod selector;
pub mod serve;
pub mod ssa;
pub mod status;
pub mod system_services;
pub mod stream_proxy;
pub mod table;
pub mod webhook;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};

use serde_json::json;
use storage::Store;

use handlers::AppState;
use registry::Registry;
use status::ApiError;

/// Namespaces that exist in every cluster.
pub const SYSTEM_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

/// Builds the HTTP service over `store`, with no authentication (`authn::Mode::Insecure`:
/// for in-process benchmarks and tests of the API's semantics).
pub fn router(store: Store) -> Router {
    let (tx, rx) = tokio::sync::watch::channel(false);
    build(store, rx, Some(tx), Options::insecure())
}

/// How the API is served.
pub struct Options {
    pub authn: authn::Mode,
    pub audit: Option<Arc<audit::Auditor>>,
    /// ServiceAccount tokens are issued and accepted when given.
    pub sa_keys: Option<Arc<sa_token::Keys>>,
    /// `--request-timeout`: what a request that is not long-running may take (`deadline`).
    pub request_timeout: std::time::Duration,
    /// The seats API Priority and Fairness shares among priority levels
    /// (`--max-requests-inflight` + `--max-mutating-requests-inflight`).
    pub apf_seats: usize,
    /// What the process lends the dashboard (its scheduler, a profiler); filled in later.
    pub ui: dashboard::Hooks,
}

impl Options {
    /// No authentication, no audit, no ServiceAccount tokens, Kubernetes' request timeout.
    pub fn insecure() -> Options {
        Options { authn: authn::Mode::Insecure, audit: None, sa_keys: None, request_timeout: deadline::DEFAULT_REQUEST_TIMEOUT, apf_seats: 600, ui: Default::default() }
    }
}

/// As `router`, authenticating as `mode` says; when `shutdown` turns true, every open watch
/// sends a last bookmark (so its client resumes from a recent revision) and ends, letting a
/// graceful shutdown finish.
pub fn router_with_shutdown(store: Store, shutdown: tokio::sync::watch::Receiver<bool>, opts: Options) -> Router {
    build(store, shutdown, None, opts)
}

fn build(store: Store, shutdown: tokio::sync::watch::Receiver<bool>, keep: Option<tokio::sync::watch::Sender<bool>>, opts: Options) -> Router {
    let Options { authn: mode, audit: auditor, sa_keys, request_timeout, apf_seats, ui: ui_hooks } = opts;
    let state = Arc::new(AppState {
        shutdown,
        _shutdown_sender: keep,
        store,
        reg: Registry::new(),
        admission: admission::Chain::standard(),
        metrics: Default::default(),
        crds_loaded: Default::default(),
        caches: Default::default(),
        warm: Default::default(),
        rbac: Default::default(),
        apf: Default::default(),
        auditor,
        authn: mode,
        sa_keys,
        parsed: Default::default(),
        ui: dashboard::UiState::new(ui_hooks),
        webhooks: Default::default(),
        policies: Default::default(),
        aggregator: Default::default(),
    });
    tokio::spawn(rbac::follow(state.clone()));
    tokio::spawn(webhook::follow(state.clone()));
    tokio::spawn(admission_policy::follow(state.clone()));
    tokio::spawn(aggregator::follow(state.clone()));
    tokio::spawn(aggregator::available::run(state.clone()));
    state.apf.total_seats.store(apf_seats.max(1), Ordering::Relaxed);
    tokio::spawn(apf::follow(state.clone()));
    tokio::spawn(apf::rebalance_loop(state.clone()));
    // Warm a cache for every built-in resource; /readyz answers 200 once they are.
    let warming = state.clone();
    tokio::spawn(async move {
        for info in warming.reg.resources.clone() {
            // A replica may start before the cluster has a quorum: wait for one, saying so.
            let mut delay = std::time::Duration::from_millis(100);
            while let Err(e) = warming.caches.get(&warming.store, &info).await {
                tracing::warn!(resource = info.resource, error = %e.message, "starting a watch cache failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(2));
            }
        }
        warming.warm.store(true, Ordering::SeqCst);
    });
    Router::new()
        .route("/api", get(api_root))
        .route("/apis", get(apis_root))
        // With a trailing slash too, as kube-apiserver answers them (the Python client's
        // `ApisApi.get_api_versions` asks for `/apis/`).
        .route("/api/", get(api_root))
        .route("/apis/", get(apis_root))
        .route("/api/{*rest}", any(handlers::dispatch))
        .route("/apis/{*rest}", any(handlers::dispatch))
        .route("/version", get(version))
        .route("/readyz", get(ready))
        .route("/livez", get(ready))
        .route("/healthz", get(ready))
        .route("/metrics", get(metrics))
        .route("/openapi/v2", get(openapi_v2))
        .route("/ui", get(dashboard::to_root))
        .route("/ui/", any(dashboard::dispatch))
        .route("/ui/{*rest}", any(dashboard::dispatch))
        .route("/openapi/v3", get(openapi_index))
        .route("/openapi/v3/{*gv}", get(openapi_gv))
        .route("/apis/authentication.k8s.io/v1/selfsubjectreviews", axum::routing::post(authn::self_subject_review))
        .route("/apis/authentication.k8s.io/v1beta1/selfsubjectreviews", axum::routing::post(authn::self_subject_review))
        .route("/apis/authentication.k8s.io/v1/tokenreviews", axum::routing::post(authn::token_review))
        .route("/.well-known/openid-configuration", get(authn::openid_configuration))
        .route("/openid/v1/jwks", get(authn::jwks))
        .route("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", axum::routing::post(access_review::self_subject_access_review))
        .route("/apis/authorization.k8s.io/v1/selfsubjectrulesreviews", axum::routing::post(access_review::self_subject_rules_review))
        .route("/apis/authorization.k8s.io/v1/subjectaccessreviews", axum::routing::post(access_review::subject_access_review))
        .route("/apis/authorization.k8s.io/v1/namespaces/{namespace}/localsubjectaccessreviews", axum::routing::post(access_review::subject_access_review))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(Arc::new(pipeline::Checks { state: state.clone(), request_timeout }), pipeline::run))
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// Creates the namespaces every cluster has, if missing.
pub async fn bootstrap(store: &Store) -> Result<(), storage::StoreError> {
    let reg = Registry::new();
    // Kubernetes' default RBAC roles and bindings, each created when missing.
    for (resource, mut obj) in default_roles::defaults() {
        let info = reg.find("rbac.authorization.k8s.io", "v1", resource).expect("RBAC is served");
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        let namespace = obj["metadata"]["namespace"].as_str().map(str::to_string);
        obj["metadata"]["uid"] = json!(object::new_uid());
        obj["metadata"]["creationTimestamp"] = json!(object::now_rfc3339());
        obj["metadata"]["annotations"] = json!({"rbac.authorization.kubernetes.io/autoupdate": "true"});
        create_if_absent(store, info.key(namespace.as_deref(), &name), &obj).await?;
    }
    // API Priority and Fairness: Kubernetes' default levels and schemas, when missing.
    for (resource, mut obj) in apf::defaults() {
        let info = reg.find("flowcontrol.apiserver.k8s.io", "v1", resource).expect("flowcontrol is served");
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        obj["metadata"]["uid"] = json!(object::new_uid());
        obj["metadata"]["creationTimestamp"] = json!(object::now_rfc3339());
        create_if_absent(store, info.key(None, &name), &obj).await?;
    }
    let ns = reg.find("", "v1", "namespaces").expect("namespaces are served");
    for name in SYSTEM_NAMESPACES {
        let key = ns.key(None, name);
        if store.get(key.clone()).await?.is_some() {
            continue;
        }
        let obj = json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "uid": object::new_uid(), "creationTimestamp": object::now_rfc3339(), "labels": {"kubernetes.io/metadata.name": name}},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        });
        create_if_absent(store, key, &obj).await?;
    }
    // The Local APIServices of the group-versions served here (Kubernetes' autoregistration).
    let apiservices = reg.find(aggregator::GROUP, "v1", "apiservices").expect("apiservices are served");
    for obj in aggregator::local_api_services(&reg) {
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        create_if_absent(store, apiservices.key(None, &name), &obj).await?;
    }
    system_services::ensure_dns(store).await?;
    system_services::repair_ip_addresses(store).await?;
    default_storage::ensure(store).await?;
    Ok(())
}

/// Stores `obj` at `key` unless something is there: every replica of a cluster bootstraps,
/// one wins.
pub(crate) async fn create_if_absent(store: &Store, key: String, obj: &serde_json::Value) -> Result<(), storage::StoreError> {
    let key = bytes::Bytes::from(key);
    if store.get(key.clone()).await?.is_some() {
        return Ok(());
    }
    store
        .txn(storage::TxnRequest {
            compare: vec![storage::Compare { key: key.clone(), op: storage::CompareOp::Equal, target: storage::CompareTarget::CreateRevision(0), range_end: None }],
            success: vec![storage::TxnOp::Put(storage::PutRequest {
                value: encryption::seal(&key, object::encode_stored(obj)).map_err(storage::StoreError::Invalid)?,
                key,
                lease: 0,
                prev_kv: false,
            })],
            failure: vec![],
        })
        .await?;
    Ok(())
}

fn with_content_type(v: &serde_json::Value, ct: &'static str) -> Response {
    let mut r = (StatusCode::OK, serde_json::to_vec(v).unwrap_or_default()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    r
}

fn accept(headers: &HeaderMap) -> &str {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("")
}

async fn api_root(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if !st.crds_loaded.load(Ordering::SeqCst) {
        let _ = handlers::refresh_crds(&st).await;
    }
    match discovery::aggregated_version(accept(&headers)) {
        Some(v) => with_content_type(
            &discovery::aggregated(&st.reg, &st.aggregator, true, v),
            if v == "v2" { discovery::AGGREGATED_V2 } else { discovery::AGGREGATED_V2BETA1 },
        ),
        None => with_content_type(&discovery::api_versions(), "application/json"),
    }
}

async fn apis_root(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if !st.crds_loaded.load(Ordering::SeqCst) {
        let _ = handlers::refresh_crds(&st).await;
    }
    match discovery::aggregated_version(accept(&headers)) {
        Some(v) => with_content_type(
            &discovery::aggregated(&st.reg, &st.aggregator, false, v),
            if v == "v2" { discovery::AGGREGATED_V2 } else { discovery::AGGREGATED_V2BETA1 },
        ),
        None => with_content_type(&discovery::api_group_list(&st.reg, &st.aggregator), "application/json"),
    }
}

async fn version() -> Response {
    with_content_type(&discovery::version(), "application/json")
}

async fn ready(State(st): State<Arc<AppState>>) -> Response {
    // Ready when the watch caches are warm, RBAC's index is built and the store answers a read.
    if !st.warm.load(Ordering::SeqCst) {
        return ApiError::unavailable("watch caches are warming up").into_response();
    }
    // As Kubernetes' rbac/bootstrap-roles post-start hook: not ready until authorization
    // knows the default roles (a component started earlier would be refused).
    if !st.rbac.ready() {
        return ApiError::unavailable("RBAC's roles and bindings are not compiled yet").into_response();
    }
    match st.store.get("/registry/core/namespaces/default").await {
        Ok(_) => (StatusCode::OK, "ok").into_response(),
        Err(e) => ApiError::unavailable(format!("store not ready: {e}")).into_response(),
    }
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let authn = format!(
        "# TYPE apiserver_tls_handshake_errors_total counter\napiserver_tls_handshake_errors_total {}\n\
         # TYPE apiserver_unauthorized_requests_total counter\napiserver_unauthorized_requests_total{{cause=\"anonymous\"}} {}\n\
         apiserver_unauthorized_requests_total{{cause=\"rejected_credentials\"}} {}\n\
         # TYPE apiserver_audit_event_total counter\napiserver_audit_event_total {}\n\
         # TYPE apiserver_audit_error_total counter\napiserver_audit_error_total{{plugin=\"log\"}} {}\n\
         # HELP apiserver_request_timeouts_total Requests answered 504 because their deadline passed.\n\
         # TYPE apiserver_request_timeouts_total counter\napiserver_request_timeouts_total {}\n\
         # HELP apiserver_idle_connections_closed_total Connections closed after --idle-connection-timeout with nothing in flight.\n\
         # TYPE apiserver_idle_connections_closed_total counter\napiserver_idle_connections_closed_total {}\n\
         # HELP apiserver_connections_refused_total Connections closed at accept because their client had --max-connections-per-client open.\n\
         # TYPE apiserver_connections_refused_total counter\napiserver_connections_refused_total{{cause=\"per_client\"}} {}\n",
        serve::HANDSHAKE_ERRORS.load(Ordering::Relaxed),
        authn::COUNTERS.anonymous.load(Ordering::Relaxed),
        authn::COUNTERS.rejected.load(Ordering::Relaxed),
        audit::WRITTEN.load(Ordering::Relaxed),
        audit::DROPPED.load(Ordering::Relaxed),
        deadline::TIMEOUTS.load(Ordering::Relaxed),
        serve::IDLE_CLOSED.load(Ordering::Relaxed),
        serve::CONNECTIONS_REFUSED_PER_CLIENT.load(Ordering::Relaxed),
    );
    let mut r = (StatusCode::OK, st.metrics.render() + &authn + &st.apf.render() + &watchcache::render_metrics()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    r
}

/// Protobuf only (kubectl before 1.28 asks for it); a JSON client gets 404, since newer
/// kubectl reads a JSON v2 document as a broken one.
async fn openapi_v2(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if !st.crds_loaded.load(Ordering::SeqCst) {
        let _ = handlers::refresh_crds(&st).await;
    }
    if !accept(&headers).contains("protobuf") {
        let doc = openapi_v2::document_json(&st.reg);
        return with_content_type(&doc, "application/json");
    }
    let mut r = (StatusCode::OK, openapi_v2::document(&st.reg)).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/com.github.proto-openapi.spec.v2.v1.0+protobuf"));
    r
}

async fn openapi_index(State(st): State<Arc<AppState>>) -> Response {
    if !st.crds_loaded.load(Ordering::SeqCst) {
        let _ = handlers::refresh_crds(&st).await;
    }
    with_content_type(&discovery::openapi_index(&st.reg), "application/json")
}

async fn openapi_gv(State(st): State<Arc<AppState>>, axum::extract::Path(gv): axum::extract::Path<String>) -> Response {
    let parts: Vec<&str> = gv.split('/').collect();
    let (g, v) = match parts.as_slice() {
        ["api", v] => ("", *v),
        ["apis", g, v] => (*g, *v),
        _ => return ApiError::path_not_found(&gv).into_response(),
    };
    // Each document is built once (schemas of every kind of the group-version) and kept.
    static CACHE: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<String, Option<bytes::Bytes>>>> = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if !st.crds_loaded.load(Ordering::SeqCst)
        && let Err(e) = handlers::refresh_crds(&st).await {
            return e.into_response();
        }
    let cacheable = !st.reg.is_custom_group(g);
    let doc = {
        let cached = if cacheable { cache.lock().unwrap().get(&gv).cloned() } else { None };
        match cached {
            Some(d) => d,
            None => {
                let d = discovery::openapi_gv(&st.reg, g, v).map(|doc| bytes::Bytes::from(serde_json::to_vec(&doc).unwrap_or_default()));
                if cacheable {
                    cache.lock().unwrap().insert(gv.clone(), d.clone());
                }
                d
            }
        }
    };
    match doc {
        Some(doc) => {
            let mut r = (StatusCode::OK, doc).into_response();
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, immutable"));
            if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", discovery::openapi_hash())) {
                r.headers_mut().insert(header::ETAG, etag);
            }
            r
        }
        None => ApiError::path_not_found(&gv).into_response(),
    }
}

async fn not_found(uri: axum::http::Uri) -> Response {
    ApiError::path_not_found(uri.path()).into_response()
}
