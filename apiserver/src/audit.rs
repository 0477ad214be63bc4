//! Auditing, in Kubernetes' formats: a policy (`audit.k8s.io/v1` Policy: the first rule that
//! matches a request gives its level — None, Metadata, Request, RequestResponse — and the
//! stages to leave out) and a log backend writing `audit.k8s.io/v1` Events as JSON lines,
//! rotated by size and count.
//!
//! Every request gets an audit ID (`init`: the client's `Audit-ID` header, or a new UUID),
//! shared by its events and returned in the answer's `Audit-Id` header. The request path
//! only builds an event and offers it to a bounded queue; one writer thread encodes and
//! writes them a batch at a time. When the queue is full the event is dropped, counted
//! (`apiserver_audit_error_total`, Kubernetes' name) and logged, never silently and never by blocking
//! a request.
//!
//! Stages: `RequestReceived` before the request is handled, then `ResponseComplete` when its
//! answer is ready, or `ResponseStarted` for a watch or a stream (whose end is not awaited
//! here). Requests refused by authentication (401) are audited by the authentication
//! middleware (`Auditor::failed_authentication`): no user, `ResponseStarted`, code 401.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::Request;
use axum::response::Response;
use serde::Deserialize;
use serde_json::Value;

use crate::audit_event::{AuditId, Event, ObjectRef};
use crate::authn::UserInfo;
use crate::rbac::{Attributes, Target};

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    None,
    Metadata,
    Request,
    RequestResponse,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum Stage {
    RequestReceived,
    ResponseStarted,
    ResponseComplete,
    Panic,
}

impl Stage {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Stage::RequestReceived => "RequestReceived",
            Stage::ResponseStarted => "ResponseStarted",
            Stage::ResponseComplete => "ResponseComplete",
            Stage::Panic => "Panic",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupResources {
    #[serde(default)]
    group: String,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default, rename = "resourceNames")]
    resource_names: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    level: Level,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default, rename = "userGroups")]
    user_groups: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    resources: Vec<GroupResources>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default, rename = "nonResourceURLs")]
    non_resource_urls: Vec<String>,
    #[serde(default, rename = "omitStages")]
    omit_stages: Vec<Stage>,
    #[serde(default, rename = "omitManagedFields")]
    _omit_managed_fields: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyDoc {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    rules: Vec<Rule>,
    #[serde(default, rename = "omitStages")]
    omit_stages: Vec<Stage>,
    #[serde(default, rename = "omitManagedFields")]
    _omit_managed_fields: Option<bool>,
}

/// A parsed audit policy.
#[derive(Debug)]
pub struct Policy {
    rules: Vec<Rule>,
    omit_stages: Vec<Stage>,
}

impl Policy {
    /// Parses a Policy document; the error names the field and, for YAML errors, the line.
    pub fn parse(text: &str) -> Result<Policy, String> {
        let doc: PolicyDoc = crate::config_yaml::parse(text)?;
        if doc.kind != "Policy" || !matches!(doc.api_version.as_str(), "audit.k8s.io/v1" | "audit.k8s.io/v1beta1") {
            return Err(format!("kind/apiVersion: want audit.k8s.io/v1 Policy, got {} {}", doc.api_version, doc.kind));
        }
        let _ = doc.metadata;
        Ok(Policy { rules: doc.rules, omit_stages: doc.omit_stages })
    }

    /// The level and the stages to leave out for a request (no rule matching: None).
    pub fn decide(&self, user: &UserInfo, a: &Attributes) -> (Level, Vec<Stage>) {
        for r in &self.rules {
            if !r.users.is_empty() && !r.users.iter().any(|u| *u == user.name) {
                continue;
            }
            if !r.user_groups.is_empty() && !r.user_groups.iter().any(|g| user.groups.contains(g)) {
                continue;
            }
            if !r.verbs.is_empty() && !r.verbs.iter().any(|v| *v == a.verb) {
                continue;
            }
            let ok = match &a.target {
                Target::Resource { group, resource, subresource, namespace, name } => {
                    if !r.non_resource_urls.is_empty() && r.resources.is_empty() {
                        false
                    } else {
                        let ns_ok = r.namespaces.is_empty() || r.namespaces.iter().any(|n| n == namespace);
                        let full = if subresource.is_empty() { resource.clone() } else { format!("{resource}/{subresource}") };
                        let res_ok = r.resources.is_empty()
                            || r.resources.iter().any(|gr| {
                                gr.group == *group
                                    && (gr.resources.is_empty() || gr.resources.iter().any(|x| x == "*" || *x == full || *x == *resource && subresource.is_empty() || *x == format!("*/{subresource}") || *x == format!("{resource}/*")))
                                    && (gr.resource_names.is_empty() || gr.resource_names.iter().any(|n| n == name))
                            });
                        ns_ok && res_ok
                    }
                }
                Target::NonResource { path } => {
                    r.resources.is_empty()
                        && r.namespaces.is_empty()
                        && (r.non_resource_urls.is_empty() || r.non_resource_urls.iter().any(|u| u == path || (u.ends_with('*') && path.starts_with(&u[..u.len() - 1]))))
                }
            };
            if ok {
                let mut omit = self.omit_stages.clone();
                omit.extend(r.omit_stages.iter().copied());
                return (r.level, omit);
            }
        }
        (Level::None, Vec::new())
    }
}

/// Where audit events go, and how much of them are kept.
pub struct LogConfig {
    pub path: PathBuf,
    /// Rotate when the file passes this many bytes (`--audit-log-maxsize` is in megabytes).
    pub max_bytes: u64,
    /// Rotated files kept (`--audit-log-maxbackup`; 0 keeps them all).
    pub max_backups: usize,
}

/// Events waiting for the writer at most; past it they are dropped and counted.
pub const QUEUE_EVENTS: usize = 10_000;

pub static DROPPED: AtomicU64 = AtomicU64::new(0);
pub static WRITTEN: AtomicU64 = AtomicU64::new(0);

/// The auditor the API server holds.
pub struct Auditor {
    policy: Policy,
    tx: crossbeam::channel::Sender<Event>,
}

impl Auditor {
    /// Opens the log (appending) and starts its writer thread.
    pub fn start(policy: Policy, cfg: LogConfig) -> std::io::Result<Arc<Auditor>> {
        if let Some(dir) = cfg.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&cfg.path)?;
        let (tx, rx) = crossbeam::channel::bounded::<Event>(QUEUE_EVENTS);
        std::thread::Builder::new().name("audit-log".into()).spawn(move || writer(rx, file, cfg))?;
        Ok(Arc::new(Auditor { policy, tx }))
    }

    /// Audits a request that authentication refused (401), as Kubernetes does: no user, the
    /// `ResponseStarted` stage, the level the policy gives a request without a user.
    pub fn failed_authentication(&self, req: &Request) {
        let path = req.uri().path();
        let a = crate::rbac::attributes(req.method().as_str(), path, req.uri().query().unwrap_or(""));
        let nobody = Arc::new(UserInfo::default());
        let (level, omit) = self.policy.decide(&nobody, &a);
        if level == Level::None || omit.contains(&Stage::ResponseStarted) {
            return;
        }
        let api_version = path.split('/').filter(|p| !p.is_empty()).nth(if path.starts_with("/apis/") { 2 } else { 1 }).unwrap_or("");
        let (verb, object_ref) = object_ref(a, api_version);
        let now = jiff::Timestamp::now();
        self.offer(Event {
            audit_id: AuditId::of(req),
            level: Level::Metadata.min(level),
            stage: Stage::ResponseStarted,
            request_uri: req.uri().path_and_query().map_or_else(|| path.to_string(), |pq| pq.as_str().to_string()),
            verb,
            user: nobody,
            impersonated_user: None,
            source_ip: req.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip()),
            user_agent: req.headers().get(axum::http::header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("").to_string(),
            object_ref,
            received: now,
            stage_time: now,
            code: Some(401),
            body_omitted: false,
            request_object: None,
            response_object: None,
        });
    }

    fn offer(&self, ev: Event) {
        if self.tx.try_send(ev).is_err() {
            let n = DROPPED.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(dropped_so_far = n, "audit: the log writer is behind; events dropped");
            }
        }
    }
}

/// How long the writer lets events gather after writing a batch. Waking it for every event or
/// two cost each request a futex wake and, on two cores, a context switch (16,000-23,000 wakes
/// for 83,000 events in `api-perf`); a busy log is written at most this late, an idle one at
/// once (the writer sleeps on the queue when it found nothing to write).
const GATHER: std::time::Duration = std::time::Duration::from_millis(5);

fn writer(rx: crossbeam::channel::Receiver<Event>, file: std::fs::File, cfg: LogConfig) {
    let mut size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut out = std::io::BufWriter::with_capacity(256 << 10, file);
    let mut line = Vec::with_capacity(1024);
    let mut scratch = crate::audit_event::Scratch::default();
    while let Ok(ev) = rx.recv() {
        let mut next = Some(ev);
        while let Some(ev) = next.take() {
            line.clear();
            if crate::audit_event::encode(&ev, &mut scratch, &mut line).is_ok() {
                line.push(b'\n');
                if size > 0 && size + line.len() as u64 > cfg.max_bytes {
                    let _ = out.flush();
                    match rotate(&cfg) {
                        Ok(f) => {
                            out = std::io::BufWriter::with_capacity(256 << 10, f);
                            size = 0;
                        }
                        Err(e) => tracing::warn!(error = %e, path = %cfg.path.display(), "audit: rotating the log failed; writing on"),
                    }
                }
                if let Err(e) = out.write_all(&line) {
                    DROPPED.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "audit: writing an event failed");
                } else {
                    size += line.len() as u64;
                    WRITTEN.fetch_add(1, Ordering::Relaxed);
                }
            }
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
        // Not parked on the queue meanwhile, so the request path's sends wake nobody.
        std::thread::sleep(GATHER);
    }
}

/// Renames the log to `NAME-<time>.EXT` beside it, removes the oldest backups past
/// `max_backups`, and opens a new log.
fn rotate(cfg: &LogConfig) -> std::io::Result<std::fs::File> {
    let dir = cfg.path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let stem = cfg.path.file_stem().and_then(|s| s.to_str()).unwrap_or("audit").to_string();
    let ext = cfg.path.extension().and_then(|s| s.to_str()).map(|e| format!(".{e}")).unwrap_or_default();
    let stamp = jiff::Timestamp::now().strftime("%Y-%m-%dT%H-%M-%S%.3f").to_string();
    let mut backup = dir.join(format!("{stem}-{stamp}{ext}"));
    let mut n = 1;
    while backup.exists() {
        backup = dir.join(format!("{stem}-{stamp}-{n}{ext}"));
        n += 1;
    }
    std::fs::rename(&cfg.path, &backup)?;
    if cfg.max_backups > 0 {
        let prefix = format!("{stem}-");
        let mut backups: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p != &cfg.path && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix) && n.ends_with(&ext)))
            .collect();
        backups.sort();
        while backups.len() > cfg.max_backups {
            let _ = std::fs::remove_file(backups.remove(0));
        }
    }
    std::fs::OpenOptions::new().create(true).append(true).open(&cfg.path)
}

/// The largest request or response body an event carries; a bigger one is left out (and
/// the event says so in an annotation).
const BODY_BYTES_MAX: usize = 1 << 20;

/// `objectRef` of a resource request, moved out of its attributes.
fn object_ref(a: Attributes, api_version: &str) -> (String, Option<ObjectRef>) {
    match a.target {
        Target::Resource { group, resource, subresource, namespace, name } => {
            (a.verb, Some(ObjectRef { resource, namespace, name, api_group: group, api_version: api_version.to_string(), subresource }))
        }
        Target::NonResource { .. } => (a.verb, None),
    }
}

/// The step before authentication (so a 401 has one too, `pipeline`): gives every request
/// its audit ID and its answer the `Audit-Id` header, whether or not it is audited, as
/// Kubernetes does.
pub async fn init<F: std::future::Future<Output = Response>>(mut req: Request, next: impl FnOnce(Request) -> F) -> Response {
    let id = AuditId::for_request(req.headers());
    let header = id.header_value();
    req.extensions_mut().insert(id);
    let mut resp = next(req).await;
    resp.headers_mut().insert("audit-id", header);
    resp
}

/// The step after authentication: audits each authenticated request as the policy says.
pub async fn audit<F: std::future::Future<Output = Response>>(auditor: Option<&Arc<Auditor>>, req: Request, next: impl FnOnce(Request) -> F) -> Response {
    let Some(auditor) = auditor else { return next(req).await };
    let Some(user) = req.extensions().get::<Arc<UserInfo>>().cloned() else { return next(req).await };
    let received = jiff::Timestamp::now();
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    let a = crate::rbac::attributes(req.method().as_str(), path, query);
    let (level, omit) = auditor.policy.decide(&user, &a);
    if level == Level::None {
        return next(req).await;
    }
    let api_version = path.split('/').filter(|p| !p.is_empty()).nth(if path.starts_with("/apis/") { 2 } else { 1 }).unwrap_or("");
    let streaming = a.verb == "watch" || query.contains("follow=true");
    let wants_body = level >= Level::Request && matches!(a.verb.as_str(), "create" | "update" | "patch" | "delete" | "deletecollection");
    let (verb, object_ref) = object_ref(a, api_version);
    let mut ev = Event {
        audit_id: AuditId::of(&req),
        level,
        stage: Stage::RequestReceived,
        request_uri: req.uri().path_and_query().map_or_else(|| req.uri().path().to_string(), |pq| pq.as_str().to_string()),
        verb,
        user,
        impersonated_user: req.headers().get("impersonate-user").map(|v| v.to_str().unwrap_or("").to_string()),
        source_ip: req.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip()),
        user_agent: req.headers().get(axum::http::header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("").to_string(),
        object_ref,
        received,
        stage_time: received,
        code: None,
        body_omitted: false,
        request_object: None,
        response_object: None,
    };
    // The request body, at Request level and above (a body past the bound is left out).
    let req = if wants_body {
        let (parts, body) = req.into_parts();
        match axum::body::to_bytes(body, BODY_BYTES_MAX).await {
            Ok(bytes) => {
                // JSON, YAML or kubectl's protobuf, as the handler will read it.
                let ctype = parts.headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
                ev.request_object = crate::handlers::parse_body(ctype, &bytes).ok();
                Request::from_parts(parts, axum::body::Body::from(bytes))
            }
            Err(_) => {
                // Too large to audit; the request itself goes on with no body and fails as
                // a too-large request would.
                ev.body_omitted = true;
                Request::from_parts(parts, axum::body::Body::empty())
            }
        }
    } else {
        req
    };
    if !omit.contains(&Stage::RequestReceived) {
        auditor.offer(ev.clone());
    }
    let resp = next(req).await;
    let stage = if streaming { Stage::ResponseStarted } else { Stage::ResponseComplete };
    if omit.contains(&stage) {
        return resp;
    }
    ev.stage = stage;
    ev.stage_time = jiff::Timestamp::now();
    ev.code = Some(resp.status().as_u16());
    if level == Level::RequestResponse && !streaming {
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, BODY_BYTES_MAX * 16).await.unwrap_or_default();
        ev.response_object = serde_json::from_slice::<Value>(&bytes).ok();
        auditor.offer(ev);
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    }
    auditor.offer(ev);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_matching_rule_decides_the_level() {
        let p = Policy::parse(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n\
             - level: None\n  users: [system:kube-proxy]\n\
             - level: Metadata\n  resources: [{group: \"\", resources: [secrets, configmaps]}]\n\
             - level: None\n  nonResourceURLs: [/healthz*, /version]\n\
             - level: RequestResponse\n  verbs: [create]\n  namespaces: [prod]\n\
             - level: Request\n",
        )
        .unwrap();
        let u = UserInfo::new("alice", vec![]);
        let at = |m: &str, path: &str| crate::rbac::attributes(m, path, "");
        assert_eq!(p.decide(&u, &at("POST", "/api/v1/namespaces/prod/secrets")).0, Level::Metadata, "secrets at Metadata, before the create rule");
        assert_eq!(p.decide(&u, &at("POST", "/api/v1/namespaces/prod/pods")).0, Level::RequestResponse);
        assert_eq!(p.decide(&u, &at("POST", "/api/v1/namespaces/dev/pods")).0, Level::Request);
        assert_eq!(p.decide(&u, &at("GET", "/healthz/ready")).0, Level::None);
        assert_eq!(p.decide(&u, &at("GET", "/metrics")).0, Level::Request);
        let proxy = UserInfo::new("system:kube-proxy", vec![]);
        assert_eq!(p.decide(&proxy, &at("GET", "/api/v1/namespaces/dev/pods")).0, Level::None);
        assert_eq!(p.decide(&u, &at("GET", "/api/v1/pods")).1, vec![Stage::RequestReceived]);
    }

    #[test]
    fn a_malformed_policy_is_refused_naming_the_field_and_line() {
        for (text, want) in [
            ("apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Loud\n", "rules[0].level: unknown variant `Loud`"),
            ("apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: None\n  verb: [get]\n", "rules[0]: unknown field `verb`"),
            ("apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [Sometimes]\n", "omitStages[0]: unknown variant `Sometimes`"),
            ("apiVersion: v1\nkind: ConfigMap\n", "kind/apiVersion"),
            ("apiVersion: audit.k8s.io/v1\nkind: Policy\nrules: [\n", "line"),
        ] {
            let e = Policy::parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
            if text.contains("Loud") {
                assert!(e.contains("at line 4"), "the line is named: {e}");
            }
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_blocking() {
        let (tx, rx) = crossbeam::channel::bounded(1);
        let a = Auditor { policy: Policy::parse("apiVersion: audit.k8s.io/v1\nkind: Policy\n").unwrap(), tx };
        let before = DROPPED.load(Ordering::Relaxed);
        let ev = |uri: &str| Event {
            audit_id: AuditId::New(uuid::Uuid::new_v4()),
            level: Level::Metadata,
            stage: Stage::ResponseComplete,
            request_uri: uri.into(),
            verb: "get".into(),
            user: Arc::new(UserInfo::new("u", vec![])),
            impersonated_user: None,
            source_ip: None,
            user_agent: String::new(),
            object_ref: None,
            received: jiff::Timestamp::now(),
            stage_time: jiff::Timestamp::now(),
            code: Some(200),
            body_omitted: false,
            request_object: None,
            response_object: None,
        };
        a.offer(ev("/1"));
        a.offer(ev("/2"));
        a.offer(ev("/3"));
        assert_eq!(DROPPED.load(Ordering::Relaxed) - before, 2);
        assert_eq!(rx.try_recv().unwrap().request_uri, "/1", "the queued event is kept");
    }

    #[test]
    fn the_log_rotates_by_size_and_keeps_the_newest_backups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let cfg = LogConfig { path: path.clone(), max_bytes: 300, max_backups: 2 };
        std::fs::write(&path, "x".repeat(290)).unwrap();
        for _ in 0..4 {
            let _f = rotate(&cfg).unwrap();
            std::fs::write(&path, "y").unwrap();
        }
        let backups: Vec<_> = std::fs::read_dir(dir.path()).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name().into_string().unwrap()).filter(|n| n != "audit.log").collect();
        assert_eq!(backups.len(), 2, "{backups:?}");
        assert!(backups.iter().all(|b| b.starts_with("audit-") && b.ends_with(".log")), "{backups:?}");
    }
}
