//! Each page: what it reads (the watch caches, the sampler, the scheduler's summary) and how
//! it is drawn. A page is a `View` parsed from its address; its live region is `region`,
//! rendered again when `stamp` changes; `page` is the whole document.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use ui::svg::{self, LineChart, Series};
use ui::{Markup, html};

use super::digest::{self, Phase};
use super::sampler;
use super::{UiError, Viewer};
use crate::handlers::AppState;
use crate::selector::LabelSelector;

/// Rows per page of a list, unless asked (at most `LIMIT_MAX`).
pub const LIMIT_DEFAULT: usize = 100;
pub const LIMIT_MAX: usize = 500;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodFilter {
    pub namespace: Option<String>,
    pub selector: String,
    pub node: String,
    pub phase: Option<Phase>,
    /// The key after which this page starts (the last key of the page before).
    pub after: Option<String>,
    pub limit: usize,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeFilter {
    pub selector: String,
    pub after: Option<String>,
    pub limit: usize,
}

/// A page.
#[derive(Clone, Debug, PartialEq)]
pub enum View {
    Cluster,
    Nodes(NodeFilter),
    Node(String),
    Pods(PodFilter),
    Pod(String, String),
    Workloads(Option<String>),
    Scheduler,
    /// The profile page: a flame graph of N seconds.
    Profile(u64),
    Store,
    Loadgen,
}

fn nonempty(q: &HashMap<String, String>, k: &str) -> Option<String> {
    q.get(k).map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

fn limit(q: &HashMap<String, String>) -> Result<usize, UiError> {
    match nonempty(q, "limit") {
        None => Ok(LIMIT_DEFAULT),
        Some(s) => s.parse().ok().filter(|n| (1..=LIMIT_MAX).contains(n)).ok_or_else(|| UiError::bad_request(format!("limit must be a whole number from 1 to {LIMIT_MAX}, not {s:?}"))),
    }
}

fn selector(q: &HashMap<String, String>) -> Result<String, UiError> {
    let s = nonempty(q, "labelSelector").unwrap_or_default();
    LabelSelector::parse(&s).map_err(|e| UiError::bad_request(format!("unable to parse requirement: {e}")))?;
    Ok(s)
}

/// One path segment that names an object (a DNS subdomain or label; no slashes).
fn object_name(s: &str) -> Result<String, UiError> {
    if s.is_empty() || s.len() > 253 || !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.') {
        return Err(UiError::not_found(format!("no such page: {s:?} is not an object's name")));
    }
    Ok(s.to_string())
}

impl View {
    pub fn parse(path: &str, q: &HashMap<String, String>) -> Result<View, UiError> {
        let segs: Vec<&str> = path.trim_start_matches("/ui").split('/').filter(|s| !s.is_empty()).collect();
        Ok(match segs.as_slice() {
            [] => View::Cluster,
            ["nodes"] => View::Nodes(NodeFilter { selector: selector(q)?, after: nonempty(q, "after"), limit: limit(q)? }),
            ["nodes", name] => View::Node(object_name(name)?),
            ["pods"] => {
                let phase = match nonempty(q, "phase") {
                    None => None,
                    Some(p) => Some(Phase::parse(&p).ok_or_else(|| UiError::bad_request(format!("phase must be one of Pending, Running, Succeeded, Failed, Unknown, not {p:?}")))?),
                };
                View::Pods(PodFilter { namespace: nonempty(q, "namespace"), selector: selector(q)?, node: nonempty(q, "node").unwrap_or_default(), phase, after: nonempty(q, "after"), limit: limit(q)? })
            }
            ["pods", ns, name] => View::Pod(object_name(ns)?, object_name(name)?),
            ["workloads"] => View::Workloads(nonempty(q, "namespace")),
            ["scheduler"] => View::Scheduler,
            ["scheduler", "profile"] => {
                let s = nonempty(q, "seconds").unwrap_or_else(|| "5".into());
                View::Profile(s.parse().ok().filter(|n| (1..=30).contains(n)).ok_or_else(|| UiError::bad_request(format!("seconds must be a whole number from 1 to 30, not {s:?}")))?)
            }
            ["store"] => View::Store,
            ["loadgen"] => View::Loadgen,
            _ => return Err(UiError::not_found(format!("no such page: {path}"))),
        })
    }

    fn section(&self) -> &'static str {
        match self {
            View::Cluster => "/ui/",
            View::Nodes(_) | View::Node(_) => "/ui/nodes",
            View::Pods(_) | View::Pod(..) => "/ui/pods",
            View::Workloads(_) => "/ui/workloads",
            View::Scheduler | View::Profile(_) => "/ui/scheduler",
            View::Store => "/ui/store",
            View::Loadgen => "/ui/loadgen",
        }
    }

    /// Whether the page follows the cluster live.
    fn live(&self) -> bool {
        !matches!(self, View::Profile(_) | View::Loadgen)
    }
}

async fn cache(st: &AppState, group: &str, resource: &str) -> Result<watchcache::Cache, UiError> {
    let info = st.reg.find(group, "v1", resource).ok_or_else(|| UiError::not_found(format!("{resource} are not served")))?;
    Ok(st.caches.get(&st.store, &info).await?)
}

/// The store key of an object (or with an empty name, the prefix of its resource, in
/// `namespace` when given), as the registry makes them.
fn key(st: &AppState, group: &str, resource: &str, namespace: Option<&str>, name: &str) -> String {
    match st.reg.find(group, "v1", resource) {
        Some(info) if name.is_empty() => info.prefix(namespace),
        Some(info) => info.key(namespace, name),
        None => String::from("\u{0}"),
    }
}

fn now_second() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// What a page's live region depends on: it is rendered again when this changes.
pub async fn stamp(st: &AppState, view: &View) -> u64 {
    let rev = |g: &'static str, r: &'static str| async move { cache(st, g, r).await.map_or(0, |c| c.revision()) };
    match view {
        // Pages with charts over time move every second.
        View::Cluster | View::Scheduler | View::Store => now_second(),
        View::Nodes(_) | View::Node(_) => rev("", "nodes").await.wrapping_mul(31).wrapping_add(rev("", "pods").await),
        View::Pods(_) => rev("", "pods").await,
        // A pod's timeline includes the scheduler's attempts, which are not in the store.
        View::Pod(..) => rev("", "pods").await.wrapping_mul(31).wrapping_add(rev("", "events").await).wrapping_add(now_second() / 5),
        View::Workloads(_) => {
            let mut s = 0u64;
            for (g, r) in WORKLOADS {
                s = s.wrapping_mul(31).wrapping_add(rev(g, r).await);
            }
            s
        }
        View::Profile(_) | View::Loadgen => 0,
    }
}

const WORKLOADS: [(&str, &str); 6] = [("apps", "deployments"), ("apps", "replicasets"), ("apps", "statefulsets"), ("apps", "daemonsets"), ("batch", "jobs"), ("batch", "cronjobs")];

fn title(view: &View) -> String {
    match view {
        View::Cluster => "Cluster".into(),
        View::Nodes(_) => "Nodes".into(),
        View::Node(n) => format!("Node {n}"),
        View::Pods(_) => "Pods".into(),
        View::Pod(ns, n) => format!("Pod {ns}/{n}"),
        View::Workloads(_) => "Workloads".into(),
        View::Scheduler => "Scheduler".into(),
        View::Profile(_) => "CPU profile".into(),
        View::Store => "Store".into(),
        View::Loadgen => "loadgen reports".into(),
    }
}

fn page_address(view: &View) -> String {
    fn q(pairs: &[(&str, String)]) -> String {
        let mut s = form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs {
            if !v.is_empty() {
                s.append_pair(k, v);
            }
        }
        let s = s.finish();
        if s.is_empty() { s } else { format!("?{s}") }
    }
    match view {
        View::Cluster => "/ui/".into(),
        View::Nodes(f) => format!("/ui/nodes{}", q(&[("labelSelector", f.selector.clone()), ("after", f.after.clone().unwrap_or_default()), ("limit", limit_param(f.limit))])),
        View::Node(n) => format!("/ui/nodes/{n}"),
        View::Pods(f) => format!("/ui/pods{}", pods_query(f, f.after.as_deref())),
        View::Pod(ns, n) => format!("/ui/pods/{ns}/{n}"),
        View::Workloads(ns) => format!("/ui/workloads{}", q(&[("namespace", ns.clone().unwrap_or_default())])),
        View::Scheduler => "/ui/scheduler".into(),
        View::Profile(s) => format!("/ui/scheduler/profile?seconds={s}"),
        View::Store => "/ui/store".into(),
        View::Loadgen => "/ui/loadgen".into(),
    }
}

fn limit_param(l: usize) -> String {
    if l == LIMIT_DEFAULT { String::new() } else { l.to_string() }
}

fn pods_query(f: &PodFilter, after: Option<&str>) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in [
        ("namespace", f.namespace.clone().unwrap_or_default()),
        ("labelSelector", f.selector.clone()),
        ("node", f.node.clone()),
        ("phase", f.phase.map(|p| p.as_str().to_string()).unwrap_or_default()),
        ("after", after.unwrap_or("").to_string()),
        ("limit", limit_param(f.limit)),
    ] {
        if !v.is_empty() {
            s.append_pair(k, &v);
        }
    }
    let s = s.finish();
    if s.is_empty() { s } else { format!("?{s}") }
}

/// The whole page.
pub async fn page(st: &Arc<AppState>, v: &Viewer, view: &View) -> Result<String, UiError> {
    let region = region(st, v, view).await?;
    let head = head(st, v, view).await?;
    let address = page_address(view);
    let live = view.live().then(|| {
        let mut s = form_urlencoded::Serializer::new(String::from("/ui/events?"));
        s.append_pair("path", &address);
        s.finish()
    });
    let t = title(view);
    Ok(ui::page::render(&ui::page::Page { title: &t, section: view.section(), live: live.as_deref(), user: Some(v.name()) }, html! { (head) div #live { (region) } }))
}

/// What stays put above the live region: the title and the filters.
async fn head(st: &Arc<AppState>, v: &Viewer, view: &View) -> Result<Markup, UiError> {
    let t = title(view);
    Ok(match view {
        View::Pods(f) => {
            let namespaces = namespace_names(st, v).await;
            html! {
                h1 { (t) }
                form.filters method="get" action="/ui/pods" {
                    label { "namespace" select name="namespace" {
                        option value="" { "(all)" }
                        @for n in &namespaces { option value=(n) selected[f.namespace.as_deref() == Some(n.as_str())] { (n) } }
                    } }
                    label { "label selector" input type="text" name="labelSelector" value=(f.selector) placeholder="app=web,tier!=db"; }
                    label { "node" input type="text" name="node" value=(f.node); }
                    label { "phase" select name="phase" {
                        option value="" { "(any)" }
                        @for p in Phase::ALL { option value=(p.as_str()) selected[f.phase == Some(p)] { (p.as_str()) } }
                    } }
                    button type="submit" { "Filter" }
                }
            }
        }
        View::Nodes(f) => html! {
            h1 { (t) }
            form.filters method="get" action="/ui/nodes" {
                label { "label selector" input type="text" name="labelSelector" value=(f.selector); }
                button type="submit" { "Filter" }
            }
        },
        View::Workloads(ns) => {
            let namespaces = namespace_names(st, v).await;
            html! {
                h1 { (t) }
                form.filters method="get" action="/ui/workloads" {
                    label { "namespace" select name="namespace" {
                        option value="" { "(all)" }
                        @for n in &namespaces { option value=(n) selected[ns.as_deref() == Some(n.as_str())] { (n) } }
                    } }
                    button type="submit" { "Show" }
                }
            }
        }
        View::Pod(ns, name) => html! {
            h1 { "Pod " (ns) "/" (name) }
        },
        _ => html! { h1 { (t) } },
    })
}

async fn namespace_names(st: &AppState, v: &Viewer) -> Vec<String> {
    if !v.may("list", "", "namespaces", None) {
        return Vec::new();
    }
    match cache(st, "", "namespaces").await {
        Ok(c) => c.snapshot().1.values().map(|o| o.meta.name.to_string()).collect(),
        Err(_) => Vec::new(),
    }
}

/// The live region of a page.
pub async fn region(st: &Arc<AppState>, v: &Viewer, view: &View) -> Result<Markup, UiError> {
    match view {
        View::Cluster => cluster(st, v).await,
        View::Nodes(f) => nodes(st, v, f).await,
        View::Node(n) => node(st, v, n).await,
        View::Pods(f) => pods(st, v, f).await,
        View::Pod(ns, n) => pod(st, v, ns, n).await,
        View::Workloads(ns) => workloads(st, v, ns.as_deref()).await,
        View::Scheduler => scheduler(st, v).await,
        View::Profile(s) => profile(v, *s),
        View::Store => store(st, v).await,
        View::Loadgen => Ok(loadgen_form(None)),
    }
}

/// What the cluster page counts over the nodes.
#[derive(Debug, Default)]
pub struct NodeCounts {
    pub ready: u64,
    pub not_ready: u64,
    pub cordoned: u64,
    pub hollow: u64,
    /// Allocatable over all nodes (milli-CPU, bytes, pods).
    pub allocatable: (i64, i64, i64),
}

/// The node counts at the nodes' current revision (walked again only when it changed: a few
/// thousand digests looked up).
pub async fn node_counts(st: &AppState) -> Result<Arc<NodeCounts>, UiError> {
    let (rev, snap) = cache(st, "", "nodes").await?.snapshot();
    if let Some((r, c)) = &*st.ui.cluster.lock().unwrap()
        && *r == rev
    {
        return Ok(c.clone());
    }
    let mut c = NodeCounts::default();
    st.ui.nodes.with(true, |get| {
        for o in snap.values() {
            let n = get(o);
            if n.ready { c.ready += 1 } else { c.not_ready += 1 }
            c.cordoned += u64::from(n.unschedulable);
            c.hollow += u64::from(n.hollow);
            c.allocatable.0 += n.cpu_milli;
            c.allocatable.1 += n.memory;
            c.allocatable.2 += n.pods;
        }
    });
    let c = Arc::new(c);
    *st.ui.cluster.lock().unwrap() = Some((rev, c.clone()));
    Ok(c)
}

/// A pod's digest: the model's, else parsed now.
fn pod_digest(st: &AppState, o: &watchcache::Object) -> Arc<digest::Pod> {
    st.ui.model.with(|m| m.digest(&o.key)).flatten().unwrap_or_else(|| Arc::new(digest::pod(&o.json)))
}

fn cpu(m: i64) -> String {
    if m % 1000 == 0 { format!("{}", m / 1000) } else { format!("{:.2}", m as f64 / 1000.0) }
}

fn pct(a: i64, b: i64) -> String {
    if b <= 0 { "-".into() } else { format!("{:.0}%", a as f64 * 100.0 / b as f64) }
}

fn denied(what: &str) -> Markup {
    html! { p.muted { "You may not list " (what) "." } }
}

/// Warning events, newest first (at most `n`), of the namespaces the viewer may list events in.
async fn warnings(st: &AppState, v: &Viewer, n: usize) -> Result<Vec<Value>, UiError> {
    let c = cache(st, "", "events").await?;
    let all = v.may("list", "", "events", None);
    let finder = memchr::memmem::Finder::new(br#""type":"Warning""#);
    let mut out: Vec<(String, Value)> = Vec::new();
    for o in c.snapshot().1.values() {
        if finder.find(&o.json).is_none() {
            continue;
        }
        if !all && !o.meta.namespace.as_deref().is_some_and(|ns| v.may("list", "", "events", Some(ns))) {
            continue;
        }
        let Ok(e) = serde_json::from_slice::<Value>(&o.json) else { continue };
        let at = e["lastTimestamp"].as_str().or(e["eventTime"].as_str()).or(e["metadata"]["creationTimestamp"].as_str()).unwrap_or("").to_string();
        out.push((at, e));
        if out.len() > 4 * n {
            out.sort_by(|a, b| b.0.cmp(&a.0));
            out.truncate(n);
        }
    }
    out.sort_by(|a, b| b.0.cmp(&a.0));
    out.truncate(n);
    Ok(out.into_iter().map(|x| x.1).collect())
}

fn events_table(events: &[Value]) -> Markup {
    html! {
        @if events.is_empty() { p.muted { "None." } } @else {
            table {
                tr { th { "last seen" } th { "type" } th { "reason" } th { "object" } th { "message" } th { "count" } }
                @for e in events {
                    @let io = &e["involvedObject"];
                    tr {
                        td { (e["lastTimestamp"].as_str().or(e["eventTime"].as_str()).unwrap_or("")) }
                        td class=(e["type"].as_str().unwrap_or("")) { (e["type"].as_str().unwrap_or("")) }
                        td { (e["reason"].as_str().unwrap_or("")) }
                        td {
                            @let (kind, ns, name) = (io["kind"].as_str().unwrap_or(""), io["namespace"].as_str().unwrap_or(""), io["name"].as_str().unwrap_or(""));
                            @if kind == "Pod" { a href={"/ui/pods/" (ns) "/" (name)} { (kind) "/" (name) } }
                            @else if kind == "Node" { a href={"/ui/nodes/" (name)} { (kind) "/" (name) } }
                            @else { (kind) "/" (name) }
                        }
                        td { (e["message"].as_str().unwrap_or("")) }
                        td.n { (e["count"].as_u64().unwrap_or(1)) }
                    }
                }
            }
        }
    }
}

fn card(label: &str, value: String, class: &str) -> Markup {
    html! { div.card { span class=(class) { (label) } b { (value) } } }
}

async fn cluster(st: &Arc<AppState>, v: &Viewer) -> Result<Markup, UiError> {
    let (see_pods, see_nodes) = (v.may("list", "", "pods", None), v.may("list", "", "nodes", None));
    let nodes = if see_nodes { Some(node_counts(st).await?) } else { None };
    // (phases, requested): none until the model is built (a second or so at 150,000 pods).
    let pods = st.ui.model.with(|m| (m.phases, m.requested));
    let samples = st.ui.ring.snapshot();
    let verbs: Vec<String> = samples.last().map(|s| s.verbs.iter().map(|x| x.0.clone()).filter(|v| v != "ui" && v != "watch").collect()).unwrap_or_default();
    let rates: Vec<Vec<(f64, f64)>> = verbs.iter().map(|verb| sampler::rate(&samples, |s| s.verbs.iter().find(|x| &x.0 == verb).map(|x| x.1 as f64))).collect();
    let lat: Vec<Vec<(f64, f64)>> = verbs.iter().map(|verb| sampler::mean_latency_ms(&samples, verb)).collect();
    let rate_series: Vec<Series> = verbs.iter().zip(&rates).map(|(n, p)| Series { name: n, points: p }).collect();
    let lat_series: Vec<Series> = verbs.iter().zip(&lat).map(|(n, p)| Series { name: n, points: p }).collect();
    let writes = sampler::rate(&samples, |s| Some(s.revision as f64));
    let warnings = if v.may("list", "", "events", None) { Some(warnings(st, v, 20).await?) } else { None };
    let stats = st.store.stats().await;
    Ok(html! {
        h2 { "Nodes" }
        @match &nodes {
            None => (denied("nodes")),
            Some(n) => {
                div.cards {
                    (card("Ready", n.ready.to_string(), "Ready"))
                    (card("NotReady", n.not_ready.to_string(), "NotReady"))
                    (card("cordoned", n.cordoned.to_string(), ""))
                    (card("hollow", n.hollow.to_string(), "muted"))
                }
                @let req = if see_pods { pods.map(|p| p.1) } else { None };
                @let show = |x: Option<i64>, f: &dyn Fn(i64) -> String| x.map_or("-".to_string(), f);
                table {
                    tr { th {} th { "allocatable" } th { "requested" } th { "share" } }
                    tr { th { "CPU (cores)" } td.n { (cpu(n.allocatable.0)) } td.n { (show(req.map(|r| r.0), &cpu)) } td.n { (show(req.map(|r| r.0), &|x| pct(x, n.allocatable.0))) } }
                    tr { th { "memory" } td.n { (ui::bytes(n.allocatable.1 as f64)) } td.n { (show(req.map(|r| r.1), &|x| ui::bytes(x as f64))) } td.n { (show(req.map(|r| r.1), &|x| pct(x, n.allocatable.1))) } }
                    tr { th { "pods" } td.n { (n.allocatable.2) } td.n { (show(req.map(|r| r.2), &|x| x.to_string())) } td.n { (show(req.map(|r| r.2), &|x| pct(x, n.allocatable.2))) } }
                }
            }
        }
        h2 { "Pods" }
        @if !see_pods { (denied("pods")) }
        @else if let Some((phases, _)) = pods {
            div.cards {
                @for p in Phase::ALL {
                    a href={"/ui/pods?phase=" (p.as_str())} { (card(p.as_str(), phases[p as usize].to_string(), p.as_str())) }
                }
            }
        } @else { p.muted { "Counting the pods…" } }
        h2 { "API server" }
        div.charts {
            (svg::line_chart(&LineChart { title: "Requests by verb", x_unit: "s", y_unit: "per second", series: &rate_series, width: 560, height: 220 }))
            (svg::line_chart(&LineChart { title: "Mean latency by verb", x_unit: "s", y_unit: "ms", series: &lat_series, width: 560, height: 220 }))
        }
        h2 { "Store" }
        (ui::page::facts(&[
            ("revision", stats.revision.to_string()),
            ("keys", stats.live_keys.to_string()),
            ("size (keys and values, history included)", ui::bytes((stats.key_bytes + stats.value_bytes) as f64)),
            ("log since the last snapshot", ui::bytes(stats.wal_bytes_since_snapshot as f64)),
        ]))
        div.charts {
            (svg::line_chart(&LineChart { title: "Writes", x_unit: "s", y_unit: "revisions per second", series: &[Series { name: "revisions", points: &writes }], width: 560, height: 200 }))
        }
        h2 { "Recent warnings" }
        @match &warnings {
            Some(w) => (events_table(w)),
            None => (denied("events")),
        }
    })
}

fn labels_match(sel: &LabelSelector, o: &watchcache::Object) -> bool {
    sel.matches_with(|k| o.meta.labels.iter().find(|(lk, _)| &**lk == k).map(|(_, v)| &**v))
}

async fn nodes(st: &Arc<AppState>, v: &Viewer, f: &NodeFilter) -> Result<Markup, UiError> {
    v.must("list", "", "nodes", None)?;
    let sel = LabelSelector::parse(&f.selector).map_err(UiError::bad_request)?;
    let snap = cache(st, "", "nodes").await?.snapshot().1;
    let see_pods = v.may("list", "", "pods", None);
    let mut total = 0usize;
    let mut rows = Vec::new();
    let mut next = None;
    let start = f.after.as_ref().map(|a| Bytes::from(format!("{}\u{0}", key(st, "", "nodes", None, a))));
    st.ui.nodes.with(false, |get| {
        for o in snap.values() {
            if !labels_match(&sel, o) {
                continue;
            }
            total += 1;
            if start.as_ref().is_some_and(|s| o.key < *s) {
                continue;
            }
            if rows.len() == f.limit {
                next.get_or_insert_with(|| rows.last().map(|(o, _): &(Arc<watchcache::Object>, _)| o.meta.name.to_string()).unwrap_or_default());
                continue;
            }
            rows.push((o.clone(), get(o)));
        }
    });
    Ok(html! {
        p { (total) " nodes match." }
        table {
            tr { th { "name" } th { "status" } th { "pods" } th { "CPU" } th { "memory" } th { "created" } }
            @for (o, n) in &rows {
                tr {
                    td { a href={"/ui/nodes/" (o.meta.name)} { (o.meta.name) } @if n.hollow { " " span.muted { "(hollow)" } } }
                    td class=(if n.ready { "Ready" } else { "NotReady" }) { (if n.ready { "Ready" } else { "NotReady" }) @if n.unschedulable { ", SchedulingDisabled" } }
                    td.n { (if see_pods { st.ui.model.with(|m| format!("{} / {}", m.node_use(&o.meta.name).pods, n.pods)).unwrap_or_else(|| "-".into()) } else { "-".into() }) }
                    td.n { (cpu(n.cpu_milli)) }
                    td.n { (ui::bytes(n.memory as f64)) }
                    td { (n.created) }
                }
            }
        }
        @if let Some(after) = &next {
            p { a href={"/ui/nodes" (format!("?{}", form_urlencoded::Serializer::new(String::new()).append_pair("labelSelector", &f.selector).append_pair("after", after).finish()))} { "Next page →" } }
        }
    })
}

async fn node(st: &Arc<AppState>, v: &Viewer, name: &str) -> Result<Markup, UiError> {
    v.must("get", "", "nodes", None)?;
    let snap = cache(st, "", "nodes").await?.snapshot().1;
    let o = snap.get(key(st, "", "nodes", None, name).as_bytes()).cloned().ok_or_else(|| UiError::not_found(format!("nodes \"{name}\" not found")))?;
    let n: Value = serde_json::from_slice(&o.json).map_err(|e| UiError::bad_request(e.to_string()))?;
    let pods: Vec<(Arc<watchcache::Object>, Arc<digest::Pod>)> = if v.may("list", "", "pods", None) {
        let psnap = cache(st, "", "pods").await?.snapshot().1;
        psnap.values().filter(|p| p.meta.node_name.as_deref() == Some(name)).take(LIMIT_MAX).map(|p| (p.clone(), pod_digest(st, p))).collect()
    } else {
        Vec::new()
    };
    let s = &n["status"];
    Ok(html! {
        (ui::page::facts(&[
            ("created", n["metadata"]["creationTimestamp"].as_str().unwrap_or("").to_string()),
            ("pod CIDR", n["spec"]["podCIDR"].as_str().unwrap_or("-").to_string()),
            ("addresses", s["addresses"].as_array().into_iter().flatten().map(|a| format!("{}={}", a["type"].as_str().unwrap_or(""), a["address"].as_str().unwrap_or(""))).collect::<Vec<_>>().join(", ")),
            ("unschedulable", n["spec"]["unschedulable"].as_bool().unwrap_or(false).to_string()),
            ("capacity", s["capacity"].as_object().map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect::<Vec<_>>().join(", ")).unwrap_or_default()),
            ("allocatable", s["allocatable"].as_object().map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect::<Vec<_>>().join(", ")).unwrap_or_default()),
            ("labels", o.meta.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")),
        ]))
        h2 { "Conditions" }
        table {
            tr { th { "type" } th { "status" } th { "reason" } th { "last transition" } th { "message" } }
            @for c in s["conditions"].as_array().into_iter().flatten() {
                tr { td { (c["type"].as_str().unwrap_or("")) } td class=(c["status"].as_str().unwrap_or("")) { (c["status"].as_str().unwrap_or("")) } td { (c["reason"].as_str().unwrap_or("")) } td { (c["lastTransitionTime"].as_str().unwrap_or("")) } td { (c["message"].as_str().unwrap_or("")) } }
            }
        }
        h2 { "Pods (" (pods.len()) ")" }
        (pod_rows(pods.iter().take(LIMIT_MAX).map(|(o, d)| (o, d))))
    })
}

fn pod_rows<'a>(rows: impl Iterator<Item = (&'a Arc<watchcache::Object>, &'a Arc<digest::Pod>)>) -> Markup {
    html! {
        table.pods {
            tr { th { "namespace" } th { "name" } th { "ready" } th { "status" } th { "restarts" } th { "node" } th { "IP" } th { "created" } }
            @for (o, p) in rows {
                @let ns = o.meta.namespace.as_deref().unwrap_or("");
                tr {
                    td { (ns) }
                    td { a href={"/ui/pods/" (ns) "/" (o.meta.name)} { (o.meta.name) } }
                    td.n { (p.ready.0) "/" (p.ready.1) }
                    td class=(p.phase.as_str()) { (if p.terminating { "Terminating" } else if !p.reason.is_empty() { &*p.reason } else { p.phase.as_str() }) }
                    td.n { (p.restarts) }
                    td { @if let Some(n) = &o.meta.node_name { a href={"/ui/nodes/" (n)} { (n) } } @else { span.muted { "-" } } }
                    td { (p.ip) }
                    td { (p.created) }
                }
            }
        }
    }
}

/// The pods of the filter: one page of rows (from `after`), how many match in all, and the
/// key to start the next page after.
pub struct PodPage {
    pub rows: Vec<(Arc<watchcache::Object>, Arc<digest::Pod>)>,
    pub total: usize,
    pub next: Option<String>,
}

/// One page of the filter's pods. Without a phase, the walk is over the namespace's keys
/// (or all), reading only the cache's index fields (node, labels); with a phase, over the
/// model's keys of that phase. Rows stop at `limit`; the total is read from the counts when
/// nothing else filters (all pods, one phase), else counted on to the end of the walk.
pub async fn pod_page(st: &AppState, f: &PodFilter) -> Result<PodPage, UiError> {
    let sel = LabelSelector::parse(&f.selector).map_err(|e| UiError::bad_request(format!("unable to parse requirement: {e}")))?;
    if let Some(ns) = &f.namespace {
        let nss = cache(st, "", "namespaces").await?.snapshot().1;
        if !nss.contains_key(key(st, "", "namespaces", None, ns).as_bytes()) {
            return Err(UiError::not_found(format!("namespaces \"{ns}\" not found")));
        }
    }
    let snap = cache(st, "", "pods").await?.snapshot().1;
    let prefix = Bytes::from(key(st, "", "pods", f.namespace.as_deref(), ""));
    let after = f.after.as_ref().map(|a| Bytes::from(key(st, "", "pods", None, a)));
    let matches = |o: &watchcache::Object| (f.node.is_empty() || o.meta.node_name.as_deref() == Some(f.node.as_str())) && (sel.is_empty() || labels_match(&sel, o));
    let only_index = f.node.is_empty() && sel.is_empty();
    let mut page = PodPage { rows: Vec::with_capacity(f.limit), total: 0, next: None };
    let take = |page: &mut PodPage, o: &Arc<watchcache::Object>, d: Arc<digest::Pod>| {
        if page.rows.len() < f.limit {
            page.rows.push((o.clone(), d));
        } else if page.next.is_none() {
            page.next = page.rows.last().map(|(o, _)| format!("{}/{}", o.meta.namespace.as_deref().unwrap_or(""), o.meta.name));
        }
    };
    match f.phase {
        Some(phase) if st.ui.model.with(|_| ()).is_some() => {
            // The phase's keys from the model (in key order), narrowed to the namespace's.
            let counted = only_index && f.namespace.is_none();
            st.ui.model.with(|m| {
                for k in m.phase_keys(phase, &prefix) {
                    if !k.starts_with(&prefix) {
                        break;
                    }
                    let Some(o) = snap.get(k) else { continue };
                    if !matches(o) {
                        continue;
                    }
                    page.total += 1;
                    if after.as_ref().is_some_and(|a| k <= a) {
                        continue;
                    }
                    if page.next.is_none() {
                        take(&mut page, o, m.digest(k).unwrap_or_else(|| Arc::new(digest::pod(&o.json))));
                    } else if counted {
                        // Nothing else filters: the model has counted the rest.
                        page.total = m.phases[phase as usize] as usize;
                        break;
                    }
                }
            });
        }
        _ => {
            let whole = only_index && f.phase.is_none() && f.namespace.is_none();
            for (k, o) in snap.range(prefix.clone()..) {
                if !k.starts_with(&prefix) {
                    break;
                }
                if !matches(o) {
                    continue;
                }
                if let Some(p) = f.phase
                    && pod_digest(st, o).phase != p
                {
                    continue;
                }
                page.total += 1;
                if after.as_ref().is_some_and(|a| k <= a) {
                    continue;
                }
                if page.next.is_none() {
                    take(&mut page, o, pod_digest(st, o));
                }
                if whole && page.next.is_some() {
                    page.total = snap.len();
                    break;
                }
            }
        }
    }
    Ok(page)
}

async fn pods(st: &Arc<AppState>, v: &Viewer, f: &PodFilter) -> Result<Markup, UiError> {
    v.must("list", "", "pods", f.namespace.as_deref())?;
    let p = pod_page(st, f).await?;
    Ok(html! {
        p { (p.total) " pods match" @if f.after.is_some() { " (this page starts after " (f.after.as_deref().unwrap_or("")) ")" } "." }
        (pod_rows(p.rows.iter().map(|(o, d)| (o, d))))
        p {
            @if f.after.is_some() { a href={"/ui/pods" (pods_query(f, None))} { "← First page" } " " }
            @if let Some(next) = &p.next { a href={"/ui/pods" (pods_query(f, Some(next)))} { "Next page →" } }
        }
    })
}

fn attempt_details(a: &Value) -> Markup {
    let plugins = |field: &str| -> Vec<(String, u64)> { a[field].as_array().into_iter().flatten().filter_map(|p| Some((p[0].as_str()?.to_string(), p[1].as_u64()?))).collect() };
    let (filters, scores) = (plugins("filter_us"), plugins("score_us"));
    html! {
        (a["result"].as_str().unwrap_or("")) " — " (ui::micros(a["total_us"].as_f64().unwrap_or(0.0)))
        ", " (a["feasible"].as_u64().unwrap_or(0)) " feasible of " (a["evaluated"].as_u64().unwrap_or(0)) " evaluated (" (a["nodes"].as_u64().unwrap_or(0)) " nodes; candidates: " (a["candidates"].as_str().unwrap_or("")) ")"
        ", queued " (ui::micros(a["queue_wait_us"].as_f64().unwrap_or(0.0)))
        br;
        span.muted {
            "PreFilter " (ui::micros(a["pre_filter_us"].as_f64().unwrap_or(0.0)))
            @for (p, us) in &filters { " · Filter/" (p) " " (ui::micros(*us as f64)) }
            @for (p, us) in &scores { " · Score/" (p) " " (ui::micros(*us as f64)) }
            @if let Some(b) = a["bind_us"].as_f64() { " · Bind " (ui::micros(b)) }
        }
        @let reasons: Vec<&Value> = a["reasons"].as_array().into_iter().flatten().collect();
        @if !reasons.is_empty() {
            br;
            "Filter verdicts: "
            @for (i, r) in reasons.iter().enumerate() {
                @if i > 0 { ", " }
                (r[1].as_u64().unwrap_or(0)) " node(s): " (r[0].as_str().unwrap_or(""))
            }
        }
    }
}

async fn pod(st: &Arc<AppState>, v: &Viewer, ns: &str, name: &str) -> Result<Markup, UiError> {
    v.must("get", "", "pods", Some(ns))?;
    let snap = cache(st, "", "pods").await?.snapshot().1;
    let o = snap.get(key(st, "", "pods", Some(ns), name).as_bytes()).cloned().ok_or_else(|| UiError::not_found(format!("pods \"{name}\" not found")))?;
    let p: Value = serde_json::from_slice(&o.json).map_err(|e| UiError::bad_request(e.to_string()))?;
    let attempts: Vec<Value> = st.ui.hooks.scheduler().and_then(|s| s.attempts(&format!("{ns}/{name}"))).and_then(|a| a.as_array().cloned()).unwrap_or_default();
    let steps = ui::timeline::assemble(&p, &attempts);
    let offsets = ui::timeline::offsets(&steps);
    let events: Vec<Value> = if v.may("list", "", "events", Some(ns)) {
        let prefix = format!("{}.", key(st, "", "events", Some(ns), name));
        let es = cache(st, "", "events").await?.snapshot().1;
        let mut list: Vec<Value> = es
            .range(Bytes::from(prefix.clone())..)
            .take_while(|(k, _)| k.starts_with(prefix.as_bytes()))
            .take(1000)
            .filter_map(|(_, o)| serde_json::from_slice::<Value>(&o.json).ok())
            .filter(|e| e["involvedObject"]["name"] == name && e["involvedObject"]["kind"] == "Pod")
            .collect();
        list.sort_by(|a, b| b["lastTimestamp"].as_str().unwrap_or("").cmp(a["lastTimestamp"].as_str().unwrap_or("")));
        list
    } else {
        Vec::new()
    };
    let s = &p["status"];
    Ok(html! {
        (ui::page::facts(&[
            ("phase", s["phase"].as_str().unwrap_or("").to_string()),
            ("node", p["spec"]["nodeName"].as_str().unwrap_or("-").to_string()),
            ("pod IP", s["podIP"].as_str().unwrap_or("-").to_string()),
            ("QoS class", s["qosClass"].as_str().unwrap_or("-").to_string()),
            ("created", p["metadata"]["creationTimestamp"].as_str().unwrap_or("").to_string()),
            ("labels", o.meta.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")),
            ("owner", p["metadata"]["ownerReferences"].as_array().into_iter().flatten().map(|r| format!("{}/{}", r["kind"].as_str().unwrap_or(""), r["name"].as_str().unwrap_or(""))).collect::<Vec<_>>().join(", ")),
        ]))
        h2 { "Timeline" }
        table.timeline {
            tr { th { "at (server time)" } th { "after created" } th { "what" } }
            @for (i, step) in steps.iter().enumerate() {
                tr {
                    td { (step.at.to_string()) }
                    td.n { (format!("+{:.3} s", offsets[i])) }
                    td { @match &step.what {
                        ui::timeline::What::Created => "Created",
                        ui::timeline::What::Attempt(k) => { "Scheduling attempt " (k + 1) ": " (attempt_details(&attempts[*k])) },
                        ui::timeline::What::Scheduled { node } => { "Bound to " a href={"/ui/nodes/" (node)} { (node) } },
                        ui::timeline::What::Unschedulable { message } => { "Unschedulable: " (message) },
                        ui::timeline::What::Accepted => "Accepted by the kubelet",
                        ui::timeline::What::ContainerStarted { container } => { "Container " (container) " started" },
                        ui::timeline::What::Ready => "Ready",
                        ui::timeline::What::ContainerTerminated { container, reason, exit_code } => { "Container " (container) " terminated: " (reason) " (exit code " (exit_code) ")" },
                        ui::timeline::What::DeletionRequested => "Deletion requested",
                    } }
                }
            }
        }
        p.muted { "Kubernetes stamps objects to the second; the scheduler's attempts are to the microsecond. Within one second, steps keep the order of a pod's life." }
        @if attempts.is_empty() && st.ui.hooks.scheduler().is_none() {
            p.muted { "The scheduler does not run in this process: its attempts are not shown." }
        }
        h2 { "Containers" }
        table {
            tr { th { "name" } th { "image / command" } th { "ready" } th { "restarts" } th { "state" } }
            @for c in p["spec"]["containers"].as_array().into_iter().flatten() {
                @let cs = s["containerStatuses"].as_array().into_iter().flatten().find(|x| x["name"] == c["name"]);
                tr {
                    td { (c["name"].as_str().unwrap_or("")) }
                    td { (c["image"].as_str().unwrap_or("")) " " span.muted { (c["command"].as_array().map(|a| a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(" ")).unwrap_or_default()) } }
                    td { (cs.and_then(|x| x["ready"].as_bool()).unwrap_or(false)) }
                    td.n { (cs.and_then(|x| x["restartCount"].as_u64()).unwrap_or(0)) }
                    td { (cs.and_then(|x| x["state"].as_object()).map(|m| m.iter().map(|(k, v)| match v["reason"].as_str() { Some(r) => format!("{k} ({r})"), None => k.clone() }).collect::<Vec<_>>().join(", ")).unwrap_or_default()) }
                }
            }
        }
        h2 { "Conditions" }
        table {
            tr { th { "type" } th { "status" } th { "last transition" } th { "reason" } th { "message" } }
            @for c in s["conditions"].as_array().into_iter().flatten() {
                tr { td { (c["type"].as_str().unwrap_or("")) } td class=(c["status"].as_str().unwrap_or("")) { (c["status"].as_str().unwrap_or("")) } td { (c["lastTransitionTime"].as_str().unwrap_or("")) } td { (c["reason"].as_str().unwrap_or("")) } td { (c["message"].as_str().unwrap_or("")) } }
            }
        }
        h2 { "Events" }
        (events_table(&events))
        h2 { "Log" }
        @if v.may("get", "", "pods/log", Some(ns)) {
            pre.log #log data-src={"/ui/pods/" (ns) "/" (name) "/log"} { "loading…" }
        } @else { (denied("this pod's log")) }
    })
}

/// Objects of one resource the viewer may list, parsed, in the namespace given or all.
async fn objects(st: &AppState, v: &Viewer, group: &str, resource: &str, ns: Option<&str>) -> Result<Option<Vec<Value>>, UiError> {
    if !v.may("list", group, resource, ns) {
        return Ok(None);
    }
    let snap = cache(st, group, resource).await?.snapshot().1;
    let mut out = Vec::new();
    for o in snap.values() {
        if ns.is_some_and(|n| o.meta.namespace.as_deref() != Some(n)) {
            continue;
        }
        if let Ok(v) = serde_json::from_slice::<Value>(&o.json) {
            out.push(v);
        }
    }
    Ok(Some(out))
}

fn n(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn meta_name(o: &Value) -> String {
    format!("{}/{}", o["metadata"]["namespace"].as_str().unwrap_or(""), o["metadata"]["name"].as_str().unwrap_or(""))
}

async fn workloads(st: &Arc<AppState>, v: &Viewer, ns: Option<&str>) -> Result<Markup, UiError> {
    let deployments = objects(st, v, "apps", "deployments", ns).await?;
    let replicasets = objects(st, v, "apps", "replicasets", ns).await?.unwrap_or_default();
    let statefulsets = objects(st, v, "apps", "statefulsets", ns).await?;
    let daemonsets = objects(st, v, "apps", "daemonsets", ns).await?;
    let jobs = objects(st, v, "batch", "jobs", ns).await?;
    let cronjobs = objects(st, v, "batch", "cronjobs", ns).await?;
    let owned = |uid: &Value| -> Vec<&Value> {
        let mut rs: Vec<&Value> = replicasets.iter().filter(|r| r["metadata"]["ownerReferences"].as_array().into_iter().flatten().any(|o| o["uid"] == *uid)).collect();
        rs.sort_by_key(|r| std::cmp::Reverse(r["metadata"]["annotations"]["deployment.kubernetes.io/revision"].as_str().and_then(|s| s.parse::<i64>().ok()).unwrap_or(0)));
        rs
    };
    Ok(html! {
        h2 { "Deployments" }
        @match &deployments {
            None => (denied("deployments")),
            Some(list) => table {
                tr { th { "name" } th { "ready" } th { "up to date" } th { "available" } th { "rollout" } th { "ReplicaSets (newest first)" } }
                @for d in list {
                    @let (spec, s) = (&d["spec"], &d["status"]);
                    @let want = spec["replicas"].as_i64().unwrap_or(1);
                    @let progressing = s["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == "Progressing");
                    tr {
                        td { (meta_name(d)) }
                        td.n { (n(&s["readyReplicas"])) "/" (want) }
                        td.n { (n(&s["updatedReplicas"])) }
                        td.n { (n(&s["availableReplicas"])) }
                        td { @if n(&s["updatedReplicas"]) >= want && n(&s["availableReplicas"]) >= want && n(&s["replicas"]) == want { span.True { "complete" } } @else { span.Pending { "in progress" } }
                             @if let Some(c) = progressing { br; span.muted { (c["reason"].as_str().unwrap_or("")) } } }
                        td { @for (i, r) in owned(&d["metadata"]["uid"]).iter().enumerate() {
                            @if i > 0 { br; }
                            (r["metadata"]["name"].as_str().unwrap_or("")) " (revision " (r["metadata"]["annotations"]["deployment.kubernetes.io/revision"].as_str().unwrap_or("?")) "): "
                            (n(&r["status"]["readyReplicas"])) "/" (n(&r["spec"]["replicas"])) " ready"
                        } }
                    }
                }
            },
        }
        h2 { "StatefulSets" }
        @match &statefulsets {
            None => (denied("statefulsets")),
            Some(list) => table {
                tr { th { "name" } th { "ready" } th { "current" } th { "updated" } th { "revisions" } }
                @for x in list {
                    @let s = &x["status"];
                    tr { td { (meta_name(x)) } td.n { (n(&s["readyReplicas"])) "/" (x["spec"]["replicas"].as_i64().unwrap_or(1)) } td.n { (n(&s["currentReplicas"])) } td.n { (n(&s["updatedReplicas"])) }
                         td { (s["currentRevision"].as_str().unwrap_or("")) @if s["updateRevision"] != s["currentRevision"] { " → " (s["updateRevision"].as_str().unwrap_or("")) } } }
                }
            },
        }
        h2 { "DaemonSets" }
        @match &daemonsets {
            None => (denied("daemonsets")),
            Some(list) => table {
                tr { th { "name" } th { "desired" } th { "current" } th { "ready" } th { "up to date" } th { "available" } }
                @for x in list {
                    @let s = &x["status"];
                    tr { td { (meta_name(x)) } td.n { (n(&s["desiredNumberScheduled"])) } td.n { (n(&s["currentNumberScheduled"])) } td.n { (n(&s["numberReady"])) } td.n { (n(&s["updatedNumberScheduled"])) } td.n { (n(&s["numberAvailable"])) } }
                }
            },
        }
        h2 { "Jobs" }
        @match &jobs {
            None => (denied("jobs")),
            Some(list) => table {
                tr { th { "name" } th { "completions" } th { "active" } th { "failed" } th { "status" } }
                @for x in list {
                    @let s = &x["status"];
                    @let done = s["conditions"].as_array().into_iter().flatten().find(|c| c["status"] == "True" && (c["type"] == "Complete" || c["type"] == "Failed"));
                    tr { td { (meta_name(x)) } td.n { (n(&s["succeeded"])) "/" (x["spec"]["completions"].as_i64().map_or("-".to_string(), |c| c.to_string())) } td.n { (n(&s["active"])) } td.n { (n(&s["failed"])) }
                         td { (done.and_then(|c| c["type"].as_str()).unwrap_or("Running")) } }
                }
            },
        }
        h2 { "CronJobs" }
        @match &cronjobs {
            None => (denied("cronjobs")),
            Some(list) => table {
                tr { th { "name" } th { "schedule" } th { "suspended" } th { "active" } th { "last schedule" } }
                @for x in list {
                    tr { td { (meta_name(x)) } td { code { (x["spec"]["schedule"].as_str().unwrap_or("")) } @if let Some(tz) = x["spec"]["timeZone"].as_str() { " " span.muted { (tz) } } }
                         td { (x["spec"]["suspend"].as_bool().unwrap_or(false)) } td.n { (x["status"]["active"].as_array().map_or(0, |a| a.len())) } td { (x["status"]["lastScheduleTime"].as_str().unwrap_or("-")) } }
                }
            },
        }
    })
}

fn strip_row(label: Markup, v: &Value) -> Markup {
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    html! {
        tr {
            td { (label) }
            td.n { (v["count"].as_u64().unwrap_or(0)) }
            td.n { (ui::micros(f("p50_us"))) } td.n { (ui::micros(f("p90_us"))) } td.n { (ui::micros(f("p99_us"))) } td.n { (ui::micros(f("max_us"))) }
            td { (ui::svg::quantile_strip(f("p50_us"), f("p90_us"), f("p99_us"), f("max_us"))) }
        }
    }
}

/// A summary's buckets as (label, count), from one before the first non-empty bucket to one
/// after the last.
fn used_buckets(e: &Value) -> Vec<(String, f64)> {
    let all: Vec<(f64, f64)> = e["buckets"].as_array().into_iter().flatten().filter_map(|b| Some((b[0].as_f64()?, b[1].as_f64()?))).collect();
    let first = all.iter().position(|b| b.1 > 0.0).unwrap_or(0).saturating_sub(1);
    let last = (all.iter().rposition(|b| b.1 > 0.0).unwrap_or(0) + 2).min(all.len());
    all[first..last.max(first)].iter().map(|(le, n)| (format!("≤{}", ui::micros(*le)), *n)).collect()
}

fn strip_head() -> Markup {
    html! { tr { th {} th { "count" } th { "p50" } th { "p90" } th { "p99" } th { "max" } th { "1 µs … 10 s (log)" } } }
}

async fn scheduler_lease(st: &AppState) -> Option<String> {
    let c = cache(st, "coordination.k8s.io", "leases").await.ok()?;
    let o = c.snapshot().1.get(key(st, "coordination.k8s.io", "leases", Some("kube-system"), "kube-scheduler").as_bytes()).cloned()?;
    let v: Value = serde_json::from_slice(&o.json).ok()?;
    v["spec"]["holderIdentity"].as_str().map(str::to_string)
}

async fn scheduler(st: &Arc<AppState>, v: &Viewer) -> Result<Markup, UiError> {
    v.must("list", "", "pods", None)?;
    let Some(sched) = st.ui.hooks.scheduler() else {
        let holder = scheduler_lease(st).await;
        return Ok(html! {
            p { "The scheduler does not run in this process." }
            @if let Some(h) = holder { p { "The kube-system/kube-scheduler lease is held by " code { (h) } ": its dashboard shows it." } }
        });
    };
    let s = sched.summary();
    let samples = st.ui.ring.snapshot();
    let attempts = sampler::rate(&samples, |x| x.attempts.map(|a| a as f64));
    let queues: Vec<Vec<(f64, f64)>> = (0..3).map(|i| sampler::gauge(&samples, |x| x.pending.map(|p| p[i] as f64))).collect();
    let queue_series = [Series { name: "active", points: &queues[0] }, Series { name: "backoff", points: &queues[1] }, Series { name: "unschedulable", points: &queues[2] }];
    let ext: Vec<&Value> = s["extension_points"].as_array().into_iter().flatten().collect();
    Ok(html! {
        div.cards {
            (card("attempts", s["attempts_total"].to_string(), ""))
            (card("active queue", s["pending"]["active"].to_string(), ""))
            (card("backoff", s["pending"]["backoff"].to_string(), "Pending"))
            (card("unschedulable", s["pending"]["unschedulable"].to_string(), "Failed"))
            (card("restarts", s["restarts"].to_string(), "muted"))
        }
        div.charts {
            (svg::line_chart(&LineChart { title: "Attempts", x_unit: "s", y_unit: "per second", series: &[Series { name: "attempts", points: &attempts }], width: 560, height: 220 }))
            (svg::line_chart(&LineChart { title: "Queue depth", x_unit: "s", y_unit: "pods", series: &queue_series, width: 560, height: 220 }))
        }
        h2 { "Attempts by result" }
        table {
            (strip_head())
            @for (r, h) in s["attempts"].as_object().into_iter().flatten() { (strip_row(html! { (r) }, h)) }
            (strip_row(html! { "queue wait" }, &s["queue_wait"]))
            (strip_row(html! { "pending to bound (SLI)" }, &s["e2e"]))
        }
        h2 { "Extension points" }
        table {
            (strip_head())
            @for e in &ext { (strip_row(html! { (e["name"].as_str().unwrap_or("")) }, e)) }
        }
        div.charts {
            @for e in &ext {
                @let buckets = used_buckets(e);
                @let t = format!("{} (attempts per latency bucket)", e["name"].as_str().unwrap_or(""));
                (svg::bars(&t, &buckets, 420, 150))
            }
        }
        h2 { "Plugins" }
        table {
            (strip_head())
            @for p in s["plugins"].as_array().into_iter().flatten() { (strip_row(html! { (p["extension_point"].as_str().unwrap_or("")) "/" (p["plugin"].as_str().unwrap_or("")) }, p)) }
        }
        h2 { "Slowest attempts of the last minute" }
        table {
            tr { th { "pod" } th { "at" } th { "took" } th { "result" } }
            @for a in s["slowest"].as_array().into_iter().flatten() {
                @let pod = a["pod"].as_str().unwrap_or("");
                tr { td { a href={"/ui/pods/" (pod)} { (pod) } } td { (a["at"].as_str().unwrap_or("")) } td.n { (ui::micros(a["total_us"].as_f64().unwrap_or(0.0))) } td { (a["result"].as_str().unwrap_or("")) } }
            }
        }
        h2 { "Why pods did not fit (last minute)" }
        table {
            tr { th { "reason" } th { "attempts" } }
            @for r in s["unschedulable_reasons"].as_array().into_iter().flatten() { tr { td { (r["reason"].as_str().unwrap_or("")) } td.n { (r["attempts"].as_u64().unwrap_or(0)) } } }
        }
        h2 { "CPU profile" }
        form method="get" action="/ui/scheduler/profile" {
            "Sample the whole process for "
            select name="seconds" { option value="2" { "2" } option value="5" selected { "5" } option value="10" { "10" } option value="30" { "30" } }
            " seconds: "
            button type="submit" { "Take a CPU profile" }
        }
    })
}

fn profile(v: &Viewer, seconds: u64) -> Result<Markup, UiError> {
    v.must("list", "", "pods", None)?;
    Ok(html! {
        p { "Sampling every thread of the process at 99 Hz for " (seconds) " s; the flame graph appears below when done (open it alone to search and zoom)." }
        p { a href={"/ui/scheduler/flamegraph.svg?seconds=" (seconds)} { "Open the flame graph alone" } }
        img #flamegraph src={"/ui/scheduler/flamegraph.svg?seconds=" (seconds)} alt="CPU flame graph" style="max-width:100%;background:#fff";
    })
}

async fn store(st: &Arc<AppState>, v: &Viewer) -> Result<Markup, UiError> {
    // The store holds every object: as much as listing the cluster's pods.
    v.must("list", "", "pods", None)?;
    let stats = st.store.stats().await;
    let io = st.store.shard_io();
    let samples = st.ui.ring.snapshot();
    let per_shard: Vec<Vec<(f64, f64)>> = (0..io.len()).map(|i| sampler::rate(&samples, |s| s.shard_commits.get(i).map(|c| *c as f64))).collect();
    let names: Vec<String> = (0..io.len()).map(|i| format!("shard {i}")).collect();
    let series: Vec<Series> = names.iter().zip(&per_shard).map(|(n, p)| Series { name: n, points: p }).collect();
    let window = |i: usize, f: &dyn Fn(&sampler::Sample) -> Option<u64>| -> f64 {
        let w: Vec<&sampler::Sample> = samples.iter().rev().take(11).collect();
        match (w.first(), w.last()) {
            (Some(b), Some(a)) if b.t > a.t => (f(b).unwrap_or(0).saturating_sub(f(a).unwrap_or(0))) as f64 / (b.t - a.t),
            _ => {
                let _ = i;
                0.0
            }
        }
    };
    let writes = sampler::rate(&samples, |s| Some(s.revision as f64));
    Ok(html! {
        (ui::page::facts(&[
            ("revision", stats.revision.to_string()),
            ("compacted through", stats.compact_revision.to_string()),
            ("last snapshot at revision", stats.snapshot_revision.to_string()),
            ("keys (live / with history)", format!("{} / {}", stats.live_keys, stats.indexed_keys)),
            ("revisions retained", stats.retained_revisions.to_string()),
            ("keys and values", ui::bytes((stats.key_bytes + stats.value_bytes) as f64)),
            ("of which history (until compaction)", ui::bytes(stats.history_value_bytes as f64)),
            ("log since the last snapshot", ui::bytes(stats.wal_bytes_since_snapshot as f64)),
            ("watchers", stats.watchers.to_string()),
            ("leases", stats.leases.to_string()),
            ("replicated", if st.store.is_replicated() { "yes (raft: the log is raft's; shards below apply it)".to_string() } else { "no (each shard writes its own log)".to_string() }),
        ]))
        div.charts {
            (svg::line_chart(&LineChart { title: "Writes", x_unit: "s", y_unit: "revisions per second", series: &[Series { name: "revisions", points: &writes }], width: 560, height: 220 }))
            (svg::line_chart(&LineChart { title: "Group commits per shard", x_unit: "s", y_unit: "per second", series: &series, width: 560, height: 220 }))
        }
        h2 { "Shards" }
        table {
            tr { th { "shard" } th { "commits" } th { "commits/s (10 s)" } th { "written" } th { "bytes/s (10 s)" } th { "append+fdatasync p50" } th { "p99" } }
            @for (i, s) in io.iter().enumerate() {
                tr {
                    td { (i) }
                    td.n { (s.commits) }
                    td.n { (format!("{:.1}", window(i, &|x| x.shard_commits.get(i).copied()))) }
                    td.n { (ui::bytes(s.bytes as f64)) }
                    td.n { (ui::bytes(window(i, &|x| x.shard_bytes.get(i).copied()))) }
                    td.n { (s.sync_quantile_us(0.5).map_or("-".into(), |u| format!("≤ {}", ui::micros(u as f64)))) }
                    td.n { (s.sync_quantile_us(0.99).map_or("-".into(), |u| format!("≤ {}", ui::micros(u as f64)))) }
                }
            }
        }
        p.muted { "Append latencies are counted in power-of-two buckets since the process started; a bound is the bucket's upper edge." }
        @if let Some(r) = st.ui.hooks.replication().map(|f| f()) {
            (replication(&r, &st.ui.ring.elections()))
        }
    })
}

/// The replica's raft view: its state, the leader and term, each member's replication (on
/// the leader: how far behind the leader's log each is), and the leader changes seen.
fn replication(r: &Value, elections: &[(f64, u64, String)]) -> Markup {
    let last = r["lastLogIndex"].as_u64().unwrap_or(0);
    html! {
        h2 { "Replication" }
        (ui::page::facts(&[
            ("this replica", format!("{} ({})", r["name"].as_str().unwrap_or(""), r["state"].as_str().unwrap_or(""))),
            ("leader", r["leader"].as_str().unwrap_or("(none)").to_string()),
            ("term", r["term"].to_string()),
            ("log: last / committed / applied / snapshot", format!("{} / {} / {} / {}", r["lastLogIndex"], r["committed"], r["applied"], r["snapshot"])),
            ("entries proposed (commands)", format!("{} ({}), mean {} µs", r["proposed"]["entries"], r["proposed"]["commands"], r["proposed"]["meanEntryMicros"])),
        ]))
        table {
            tr { th { "member" } th { "peer URL" } th { "role" } th { "matched index" } th { "behind the leader" } }
            @for m in r["members"].as_array().into_iter().flatten() {
                @let matched = r["matched"][m["id"].as_str().unwrap_or("")].as_u64();
                tr {
                    td { (m["name"].as_str().unwrap_or("")) }
                    td { (m["peerURL"].as_str().unwrap_or("")) }
                    td { (if m["leader"].as_bool() == Some(true) { "leader" } else if m["voter"].as_bool() == Some(true) { "voter" } else { "learner" }) }
                    td.n { (matched.map_or("-".to_string(), |x| x.to_string())) }
                    td.n { (matched.map_or("-".to_string(), |x| last.saturating_sub(x).to_string())) }
                }
            }
        }
        @if r["matched"].is_null() { p.muted { "Each member's lag is known on the leader; this replica is not it." } }
        h3 { "Leader changes seen" }
        table {
            tr { th { "at" } th { "term" } th { "leader" } }
            @for (t, term, leader) in elections {
                tr { td { (jiff::Timestamp::from_second(*t as i64).map(|x| x.to_string()).unwrap_or_default()) } td.n { (term) } td { (leader) } }
            }
        }
    }
}

fn loadgen_form(message: Option<&str>) -> Markup {
    html! {
        @if let Some(m) = message { p.error { (m) } }
        p { "Upload a report written by " code { "loadgen run --report-json FILE" } " to see it drawn; upload two to compare them side by side (B against A)." }
        form method="post" action="/ui/loadgen" enctype="multipart/form-data" {
            label { "Report A " input type="file" name="a" accept=".json,application/json" required; }
            " "
            label { "Report B (optional) " input type="file" name="b" accept=".json,application/json"; }
            " "
            button type="submit" { "Show" }
        }
    }
}

/// `POST /ui/loadgen`: one report drawn, or two compared.
pub async fn loadgen_upload(v: &Viewer, req: axum::extract::Request) -> Result<String, UiError> {
    use axum::extract::FromRequest;
    let page = |body: Markup| ui::page::render(&ui::page::Page { title: "loadgen reports", section: "/ui/loadgen", live: None, user: Some(v.name()) }, html! { h1 { "loadgen reports" } (body) });
    let mut form = match axum::extract::Multipart::from_request(req, &()).await {
        Ok(f) => f,
        Err(e) => return Ok(page(loadgen_form(Some(&format!("The upload is not a form with files: {e}"))))),
    };
    let mut reports: HashMap<String, Value> = HashMap::new();
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Ok(page(loadgen_form(Some(&format!("The upload could not be read: {e}"))))),
        };
        let name = field.name().unwrap_or("").to_string();
        if name != "a" && name != "b" {
            continue;
        }
        let mut field = field;
        let mut buf = Vec::new();
        loop {
            match field.chunk().await {
                Ok(Some(c)) => {
                    if buf.len() + c.len() > super::REPORT_BYTES_MAX {
                        return Ok(page(loadgen_form(Some(&format!("Report {} is larger than {} MiB.", name.to_uppercase(), super::REPORT_BYTES_MAX >> 20)))));
                    }
                    buf.extend_from_slice(&c);
                }
                Ok(None) => break,
                Err(e) => return Ok(page(loadgen_form(Some(&format!("The upload could not be read: {e}"))))),
            }
        }
        if buf.is_empty() {
            continue;
        }
        let parsed: Value = match serde_json::from_slice(&buf) {
            Ok(v) => v,
            Err(e) => return Ok(page(loadgen_form(Some(&format!("Report {} is not JSON: {e}", name.to_uppercase()))))),
        };
        if let Err(e) = ui::report::check(&parsed) {
            return Ok(page(loadgen_form(Some(&format!("Report {}: {e}", name.to_uppercase())))));
        }
        reports.insert(name, parsed);
    }
    Ok(match (reports.get("a"), reports.get("b")) {
        (Some(a), Some(b)) => page(html! { (loadgen_form(None)) h2 { "A against B" } (ui::report::compare(a, b)) }),
        (Some(a), None) | (None, Some(a)) => page(html! { (loadgen_form(None)) (ui::report::one(a)) }),
        (None, None) => page(loadgen_form(Some("Choose a report file to upload."))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn addresses_parse_into_views_and_bad_filters_say_why() {
        assert_eq!(View::parse("/ui/", &q(&[])).unwrap(), View::Cluster);
        assert_eq!(
            View::parse("/ui/pods", &q(&[("namespace", "d"), ("phase", "Running"), ("labelSelector", "app=web")])).unwrap(),
            View::Pods(PodFilter { namespace: Some("d".into()), selector: "app=web".into(), node: String::new(), phase: Some(Phase::Running), after: None, limit: LIMIT_DEFAULT })
        );
        assert_eq!(View::parse("/ui/pods/d/web-1", &q(&[])).unwrap(), View::Pod("d".into(), "web-1".into()));
        let e = View::parse("/ui/pods", &q(&[("labelSelector", "a in (b")])).unwrap_err();
        assert_eq!(e.code, axum::http::StatusCode::BAD_REQUEST);
        assert!(e.message.starts_with("unable to parse requirement"), "{}", e.message);
        assert!(View::parse("/ui/pods", &q(&[("phase", "Runing")])).unwrap_err().message.contains("Runing"));
        assert!(View::parse("/ui/pods", &q(&[("limit", "0")])).is_err());
        assert!(View::parse("/ui/pods", &q(&[("limit", "501")])).is_err());
        assert_eq!(View::parse("/ui/pods/D/x", &q(&[])).unwrap_err().code, axum::http::StatusCode::NOT_FOUND);
        assert_eq!(View::parse("/ui/nope", &q(&[])).unwrap_err().code, axum::http::StatusCode::NOT_FOUND);
        assert!(View::parse("/ui/scheduler/profile", &q(&[("seconds", "31")])).is_err());
    }

    #[test]
    fn the_replication_view_shows_how_far_each_member_is_behind_the_leader() {
        let r = serde_json::json!({
            "name": "a", "state": "Leader", "leader": "a", "term": 3, "lastLogIndex": 100, "committed": 100, "applied": 100, "snapshot": null,
            "members": [{"id": "01", "name": "a", "peerURL": "https://a", "voter": true, "leader": true}, {"id": "02", "name": "b<", "peerURL": "https://b", "voter": true, "leader": false}],
            "matched": {"01": 100, "02": 93},
            "proposed": {"entries": 1, "commands": 2, "meanEntryMicros": 3}
        });
        let s = replication(&r, &[(1_767_225_600.0, 3, "a".into())]).into_string();
        assert!(s.contains(r#"<td>b&lt;</td><td>https://b</td><td>voter</td><td class="n">93</td><td class="n">7</td>"#), "{s}");
        assert!(s.contains(r#"<td class="n">100</td><td class="n">0</td>"#), "{s}");
        assert!(s.contains("2026-01-01T00:00:00Z"));
        // On a follower, no lag is known.
        let mut f = r.clone();
        f["matched"] = serde_json::Value::Null;
        assert!(replication(&f, &[]).into_string().contains("this replica is not it"));
    }

    #[test]
    fn a_filtered_list_keeps_its_filters_in_its_page_links() {
        let f = PodFilter { namespace: Some("d".into()), selector: "app=web".into(), node: String::new(), phase: Some(Phase::Pending), after: None, limit: 50 };
        assert_eq!(pods_query(&f, Some("d/web-9")), "?namespace=d&labelSelector=app%3Dweb&phase=Pending&after=d%2Fweb-9&limit=50");
        assert_eq!(page_address(&View::Pods(PodFilter { limit: LIMIT_DEFAULT, ..Default::default() })), "/ui/pods");
    }
}
