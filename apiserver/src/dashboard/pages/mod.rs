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

mod cluster;
mod lists;
mod pod;
mod workloads;
mod scheduler;
mod store;
mod loadgen;

pub use cluster::NodeCounts;
pub use lists::{PodPage, pod_page};
pub use loadgen::loadgen_upload;
use cluster::*;
use lists::*;
use loadgen::*;
use pod::*;
use scheduler::*;
use store::*;
use workloads::*;

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
                    (namespace_select(&namespaces, f.namespace.as_deref()))
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
                    (namespace_select(&namespaces, ns.as_deref()))
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

/// The filters' namespace choice: all, or one the viewer may list.
fn namespace_select(namespaces: &[String], selected: Option<&str>) -> Markup {
    html! {
        label { "namespace" select name="namespace" {
            option value="" { "(all)" }
            @for n in namespaces { option value=(n) selected[selected == Some(n.as_str())] { (n) } }
        } }
    }
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

/// A pod's digest: the model's, else parsed now.
fn pod_digest(st: &AppState, o: &watchcache::Object) -> Arc<digest::Pod> {
    st.ui.model.with(|m| m.digest(&o.key)).flatten().unwrap_or_else(|| Arc::new(digest::pod(&o.json())))
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

fn labels_match(sel: &LabelSelector, o: &watchcache::Object) -> bool {
    sel.matches_with(|k| o.meta.labels.iter().find(|(lk, _)| &**lk == k).map(|(_, v)| &**v))
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
