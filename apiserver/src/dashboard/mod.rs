//! The dashboard at `/ui/`: the cluster, its nodes, pods, workloads, scheduler and store as
//! server-rendered pages that follow the cluster live (server-sent events, at most one
//! update a second per page), and loadgen reports uploaded and drawn.
//!
//! **Where things are.** This file is the door: routes, who may see what, login, the live
//! stream. `pages/` gathers each page's data from the watch caches (one file per section) and renders it with the
//! `ui` crate (shell, charts, timeline, reports: pure, no I/O); `digest.rs` keeps the few
//! fields a list shows of each pod and node, parsed once per revision; `sampler.rs` keeps
//! ten minutes of counters for the charts.
//!
//! **Access.** `/ui/` pages pass the RBAC middleware's non-resource check and are authorized
//! here, per thing shown: a user sees what they may `list` (or `get`), and a page they may
//! not see at all is the page's 403. Through `kubectl proxy` the proxy's credentials apply;
//! directly, a bearer token pasted at `/ui/login` is kept in an HttpOnly, SameSite=Strict
//! cookie sent only to `/ui`, and checked at every request as an `Authorization` header is.

pub mod digest;
pub mod model;
pub mod pages;
pub mod sampler;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::authn::UserInfo;
use crate::handlers::AppState;
use crate::rbac::{Attributes, Target};

/// The cookie a login keeps its token in.
pub const TOKEN_COOKIE: &str = "capstan-ui-token";
/// Largest loadgen report accepted by the upload (each of two).
pub const REPORT_BYTES_MAX: usize = 16 << 20;
/// Renders kept for live pages (per page address and data stamp).
const MEMO_MAX: usize = 64;

/// What the scheduler of this process shows the dashboard (when it runs here).
pub trait SchedulerView: Send + Sync {
    /// `scheduler::Scheduler::summary`.
    fn summary(&self) -> Value;
    /// One pod's recorded attempts (`namespace/name`).
    fn attempts(&self, pod: &str) -> Option<Value>;
}

/// Takes a CPU profile of the process for N seconds and answers its flame graph (SVG).
pub type Profiler = Arc<dyn Fn(u64) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<u8>, String>> + Send>> + Send + Sync>;

/// The replica's raft status (`raft::Replica::status`), when the store is replicated.
pub type Replication = Arc<dyn Fn() -> Value + Send + Sync>;

#[derive(Default)]
struct HookSet {
    scheduler: Option<Arc<dyn SchedulerView>>,
    profiler: Option<Profiler>,
    replication: Option<Replication>,
    /// Components running in this process (`scheduler`, `controller-manager`): what
    /// ComponentStatus reports healthy without asking further.
    running: Vec<&'static str>,
}

/// What the process around the API server lends the dashboard: its scheduler and a CPU
/// profiler. Filled in after the server starts (the scheduler is a client of it); cloned
/// handles share one set.
#[derive(Clone, Default)]
pub struct Hooks(Arc<RwLock<HookSet>>);

impl Hooks {
    pub fn set_scheduler(&self, s: Option<Arc<dyn SchedulerView>>) {
        self.0.write().unwrap().scheduler = s;
    }

    pub fn set_profiler(&self, p: Profiler) {
        self.0.write().unwrap().profiler = Some(p);
    }

    /// Records that a component runs (or stopped running) in this process.
    pub fn set_running(&self, component: &'static str, running: bool) {
        let mut h = self.0.write().unwrap();
        h.running.retain(|c| *c != component);
        if running {
            h.running.push(component);
        }
    }

    pub fn is_running(&self, component: &str) -> bool {
        self.0.read().unwrap().running.contains(&component)
    }

    pub fn set_replication(&self, r: Replication) {
        self.0.write().unwrap().replication = Some(r);
    }

    pub fn replication(&self) -> Option<Replication> {
        self.0.read().unwrap().replication.clone()
    }

    pub fn scheduler(&self) -> Option<Arc<dyn SchedulerView>> {
        self.0.read().unwrap().scheduler.clone()
    }

    pub fn profiler(&self) -> Option<Profiler> {
        self.0.read().unwrap().profiler.clone()
    }
}

/// The dashboard's part of the server's state.
pub struct UiState {
    pub hooks: Hooks,
    pub ring: sampler::Ring,
    /// The pods, counted as they change (`model`).
    pub model: model::PodModel,
    pub nodes: digest::Digests<digest::Node>,
    /// Live regions rendered, by page address: (stamp, markup), shared by every open copy.
    memo: Mutex<HashMap<String, (u64, Arc<String>)>>,
    /// The nodes' counts of the cluster page, by the nodes' revision.
    pub(crate) cluster: Mutex<Option<(u64, Arc<pages::NodeCounts>)>>,
    sampling: std::sync::Once,
}

impl UiState {
    pub fn new(hooks: Hooks) -> UiState {
        UiState {
            hooks,
            ring: Default::default(),
            model: Default::default(),
            nodes: digest::Digests::new(digest::node),
            memo: Default::default(),
            cluster: Default::default(),
            sampling: std::sync::Once::new(),
        }
    }
}

/// An answer that is a page of its own: the error page with its code.
#[derive(Debug)]
pub struct UiError {
    pub code: StatusCode,
    pub message: String,
}

impl UiError {
    pub fn bad_request(m: impl Into<String>) -> UiError {
        UiError { code: StatusCode::BAD_REQUEST, message: m.into() }
    }
    pub fn not_found(m: impl Into<String>) -> UiError {
        UiError { code: StatusCode::NOT_FOUND, message: m.into() }
    }
    pub fn forbidden(m: impl Into<String>) -> UiError {
        UiError { code: StatusCode::FORBIDDEN, message: m.into() }
    }
}

impl From<crate::status::ApiError> for UiError {
    fn from(e: crate::status::ApiError) -> UiError {
        UiError { code: StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), message: e.message }
    }
}

/// Who is asking, and what they may do.
pub struct Viewer {
    pub user: Arc<UserInfo>,
    st: Arc<AppState>,
}

impl Viewer {
    /// Whether the viewer may `verb` `resource` (of `group`) in `namespace` (None: across
    /// the cluster).
    pub fn may(&self, verb: &str, group: &str, resource: &str, namespace: Option<&str>) -> bool {
        crate::rbac::authorized(&self.st.rbac.index(), &self.user, &attributes(verb, group, resource, namespace))
    }

    /// As `may`, as an error with Kubernetes' words when not.
    pub fn must(&self, verb: &str, group: &str, resource: &str, namespace: Option<&str>) -> Result<(), UiError> {
        let a = attributes(verb, group, resource, namespace);
        if crate::rbac::authorized(&self.st.rbac.index(), &self.user, &a) {
            Ok(())
        } else {
            self.st.metrics.forbidden.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(UiError::forbidden(crate::rbac::forbidden(&self.user, &a).message))
        }
    }

    pub fn name(&self) -> &str {
        &self.user.name
    }
}

fn attributes(verb: &str, group: &str, resource: &str, namespace: Option<&str>) -> Attributes {
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    Attributes {
        verb: verb.into(),
        target: Target::Resource { group: group.into(), resource: resource.into(), subresource: subresource.into(), namespace: namespace.unwrap_or("").into(), name: String::new() },
    }
}

/// A request the RBAC middleware leaves to the dashboard: every `/ui` path (each page
/// authorizes what it shows).
pub fn is_ui(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

/// The token of the login cookie, for requests to the dashboard without an Authorization
/// header.
pub fn cookie_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|c| c.trim().strip_prefix(TOKEN_COOKIE)?.strip_prefix('=')).filter(|t| !t.is_empty())
}

/// Marks a request whose login cookie the authenticator refused.
#[derive(Clone, Copy, Debug)]
pub struct CookieRefused;

fn html(code: StatusCode, body: String) -> Response {
    let mut r = (code, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    // The pages load only their own script and style; anything injected would not run.
    r.headers_mut().insert("content-security-policy", HeaderValue::from_static("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; frame-ancestors 'none'"));
    r.headers_mut().insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn error_page(e: &UiError, user: Option<&str>) -> Response {
    html(e.code, ui::page::error(e.code.as_u16(), e.code.canonical_reason().unwrap_or("Error"), &e.message, user))
}

fn redirect(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    r.headers_mut().insert(header::LOCATION, HeaderValue::from_str(to).unwrap_or(HeaderValue::from_static("/ui/")));
    r
}

fn asset(ct: &'static str, body: &'static str) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
    r.headers_mut().insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    r
}

/// `/ui`: to `/ui/`.
pub async fn to_root() -> Response {
    let mut r = StatusCode::PERMANENT_REDIRECT.into_response();
    r.headers_mut().insert(header::LOCATION, HeaderValue::from_static("/ui/"));
    r
}

/// Every request under `/ui/`.
pub async fn dispatch(State(st): State<Arc<AppState>>, req: axum::extract::Request) -> Response {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query: HashMap<String, String> = req.uri().query().map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default();
    let resp = route(&st, method, &path, query, req).await;
    st.metrics.observe("ui", "dashboard", resp.status().as_u16(), started.elapsed());
    resp
}

async fn route(st: &Arc<AppState>, method: Method, path: &str, query: HashMap<String, String>, req: axum::extract::Request) -> Response {
    match (path, &method) {
        ("/ui/assets/ui.js", &Method::GET) => return asset("text/javascript; charset=utf-8", ui::page::SCRIPT),
        ("/ui/assets/ui.css", &Method::GET) => return asset("text/css; charset=utf-8", ui::page::STYLE),
        ("/ui/login", &Method::GET) => {
            let refused = req.extensions().get::<CookieRefused>().is_some();
            return html(StatusCode::OK, ui::page::login(refused.then_some("The API server did not accept that token.")));
        }
        ("/ui/login", &Method::POST) => return login(req).await,
        ("/ui/logout", _) => {
            let mut r = redirect("/ui/login");
            r.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_static("capstan-ui-token=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"));
            return r;
        }
        _ => {}
    }
    let Some(user) = req.extensions().get::<Arc<UserInfo>>().cloned() else {
        return if req.extensions().get::<CookieRefused>().is_some() { redirect("/ui/login?refused=1") } else { redirect("/ui/login") };
    };
    st.ui.sampling.call_once(|| sampler::run(Arc::downgrade(st)));
    st.ui.model.start(Arc::downgrade(st));
    let viewer = Viewer { user, st: st.clone() };
    let shown_user = Some(viewer.name().to_string());
    let r = match (path, &method) {
        ("/ui/events", &Method::GET) => return events(st.clone(), viewer, &query),
        ("/ui/loadgen", &Method::POST) => pages::loadgen_upload(&viewer, req).await.map(|b| html(StatusCode::OK, b)),
        ("/ui/scheduler/flamegraph.svg", &Method::GET) => flamegraph(st, &viewer, &query).await,
        (p, &Method::GET) if log_target(p).is_some() => pod_log(st, &viewer, p).await,
        (_, &Method::GET) => match pages::View::parse(path, &query) {
            Ok(view) => pages::page(st, &viewer, &view).await.map(|b| html(StatusCode::OK, b)),
            Err(e) => Err(e),
        },
        _ => Err(UiError { code: StatusCode::METHOD_NOT_ALLOWED, message: format!("{method} is not supported on {path}") }),
    };
    r.unwrap_or_else(|e| error_page(&e, shown_user.as_deref()))
}

/// `POST /ui/login` (`token=...`): keeps the token in the cookie and goes to the cluster
/// page, where the authenticator checks it.
async fn login(req: axum::extract::Request) -> Response {
    let body = match axum::body::to_bytes(req.into_body(), 64 << 10).await {
        Ok(b) => b,
        Err(_) => return html(StatusCode::PAYLOAD_TOO_LARGE, ui::page::login(Some("That is too long to be a token."))),
    };
    let token = form_urlencoded::parse(&body).find(|(k, _)| k == "token").map(|(_, v)| v.trim().to_string()).unwrap_or_default();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return html(StatusCode::BAD_REQUEST, ui::page::login(Some("A token is one line of printable characters.")));
    }
    let mut r = redirect("/ui/");
    match HeaderValue::from_str(&format!("{TOKEN_COOKIE}={token}; Path=/ui; HttpOnly; SameSite=Strict")) {
        Ok(v) => {
            r.headers_mut().insert(header::SET_COOKIE, v);
            r
        }
        Err(_) => html(StatusCode::BAD_REQUEST, ui::page::login(Some("A token is one line of printable characters."))),
    }
}

/// The pod of a log tail's address, `/ui/pods/{ns}/{name}/log` (a pod may be named `log`).
fn log_target(path: &str) -> Option<(&str, &str)> {
    match path.strip_prefix("/ui/pods/")?.split('/').collect::<Vec<_>>().as_slice() {
        [ns, name, "log"] if !ns.is_empty() && !name.is_empty() => Some((ns, name)),
        _ => None,
    }
}

/// `/ui/pods/{ns}/{name}/log`: the last lines of the pod's first container, followed.
async fn pod_log(st: &Arc<AppState>, v: &Viewer, path: &str) -> Result<Response, UiError> {
    let (ns, name) = log_target(path).ok_or_else(|| UiError::not_found(format!("no such page: {path}")))?;
    v.must("get", "", "pods/log", Some(ns))?;
    let info = st.reg.find("", "v1", "pods").ok_or_else(|| UiError::not_found("pods are not served"))?;
    let q: HashMap<String, String> = [("follow".to_string(), "true".to_string()), ("tailLines".to_string(), "200".to_string())].into();
    let r = crate::node_proxy::pod_log(&st.store, info.key(Some(ns), name), ns, name, &q).await?;
    Ok(r)
}

/// `/ui/scheduler/flamegraph.svg?seconds=N`: a CPU profile of this process as a flame graph.
async fn flamegraph(st: &Arc<AppState>, v: &Viewer, query: &HashMap<String, String>) -> Result<Response, UiError> {
    // The profile sees every thread of the process: as much as reading its pods.
    v.must("list", "", "pods", None)?;
    let seconds: u64 = match query.get("seconds") {
        None => 5,
        Some(s) => s.parse().ok().filter(|n| (1..=30).contains(n)).ok_or_else(|| UiError::bad_request(format!("seconds must be a whole number from 1 to 30, not {s:?}")))?,
    };
    let p = st.ui.hooks.profiler().ok_or_else(|| UiError::not_found("this process takes no CPU profiles"))?;
    let svg = p(seconds).await.map_err(|e| UiError { code: StatusCode::CONFLICT, message: e })?;
    let mut r = (StatusCode::OK, svg).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("image/svg+xml"));
    // The flame graph's own script is what makes it searchable; it runs only when the SVG
    // is opened as a document, and the graph holds no object data.
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// A live page's stream: its region rendered again whenever what it shows changes, checked
/// once a second; renders are shared by every open copy of the same page.
fn events(st: Arc<AppState>, viewer: Viewer, query: &HashMap<String, String>) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let target = query.get("path").cloned().unwrap_or_default();
    let (path, q) = target.split_once('?').unwrap_or((target.as_str(), ""));
    let q: HashMap<String, String> = form_urlencoded::parse(q.as_bytes()).into_owned().collect();
    let view = match pages::View::parse(path, &q) {
        Ok(v) => v,
        Err(e) => return error_page(&e, Some(viewer.name())),
    };
    // (stamp, hash of the markup) last sent: a render equal to the last one is not sent.
    let state = (st, viewer, view, target, (0u64, 0u64), true);
    let stream = futures_util::stream::unfold(state, |(st, viewer, view, target, mut last, first)| async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if first {
            // The page was rendered a moment ago: wait a second before the first update.
            tick.tick().await;
        }
        loop {
            tick.tick().await;
            let stamp = pages::stamp(&st, &view).await;
            if stamp == last.0 {
                continue;
            }
            let markup = match render_shared(&st, &viewer, &view, &target, stamp).await {
                Ok(m) => m,
                Err(e) => Arc::new(ui::html! { p.error { (e.message) } }.into_string()),
            };
            let hash = {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                markup.hash(&mut h);
                h.finish()
            };
            if hash == last.1 {
                last.0 = stamp;
                continue;
            }
            last = (stamp, hash);
            let ev: Result<Event, std::convert::Infallible> = Ok(Event::default().event("update").data(markup.as_str()));
            return Some((ev, (st, viewer, view, target, last, false)));
        }
    });
    let mut r = Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The live region of `view` at `stamp`, rendered once for every viewer who may see it.
/// The memo is keyed by the page and the viewer's name, so one user's render never reaches
/// another.
async fn render_shared(st: &Arc<AppState>, viewer: &Viewer, view: &pages::View, target: &str, stamp: u64) -> Result<Arc<String>, UiError> {
    let key = format!("{}\u{0}{target}", viewer.name());
    if let Some((s, m)) = st.ui.memo.lock().unwrap().get(&key)
        && *s == stamp
    {
        return Ok(m.clone());
    }
    let m = Arc::new(pages::region(st, viewer, view).await?.into_string());
    let mut memo = st.ui.memo.lock().unwrap();
    if memo.len() >= MEMO_MAX && !memo.contains_key(&key) {
        memo.clear();
    }
    memo.insert(key, (stamp, m.clone()));
    Ok(m)
}

/// A body for tests and benchmarks: the page at `path?query` as `user` sees it.
pub async fn render_for(st: &Arc<AppState>, user: Arc<UserInfo>, path: &str, query: &HashMap<String, String>) -> Result<String, UiError> {
    let viewer = Viewer { user, st: st.clone() };
    let view = pages::View::parse(path, query)?;
    pages::page(st, &viewer, &view).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_login_cookie_is_found_among_others() {
        let mut h = axum::http::HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=b; capstan-ui-token=abc.def"));
        assert_eq!(cookie_token(&h), Some("abc.def"));
        let mut h = axum::http::HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("capstan-ui-token-x=1; capstan-ui-token="));
        assert_eq!(cookie_token(&h), None);
        assert!(is_ui("/ui") && is_ui("/ui/pods") && !is_ui("/uix") && !is_ui("/api/ui"));
        assert_eq!(log_target("/ui/pods/d/web/log"), Some(("d", "web")));
        assert_eq!(log_target("/ui/pods/d/log/log"), Some(("d", "log")));
        assert_eq!(log_target("/ui/pods/d/log"), None, "a pod named log is a pod page");
        assert_eq!(log_target("/ui/pods/d/a/b/log"), None);
    }
}
