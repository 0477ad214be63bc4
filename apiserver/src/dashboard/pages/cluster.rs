//! The cluster page: nodes and their capacity, pods by phase, the API server's and the
//! store's charts, recent warnings.

use super::*;

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

/// Warning events, newest first (at most `n`), of the namespaces the viewer may list events in.
pub(super) async fn warnings(st: &AppState, v: &Viewer, n: usize) -> Result<Vec<Value>, UiError> {
    let c = cache(st, "", "events").await?;
    let all = v.may("list", "", "events", None);
    let finder = memchr::memmem::Finder::new(br#""type":"Warning""#);
    let mut out: Vec<(String, Value)> = Vec::new();
    for o in c.snapshot().1.values() {
        if finder.find(&o.json()).is_none() {
            continue;
        }
        if !all && !o.meta.namespace.as_deref().is_some_and(|ns| v.may("list", "", "events", Some(ns))) {
            continue;
        }
        let Ok(e) = serde_json::from_slice::<Value>(&o.json()) else { continue };
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

pub(super) async fn cluster(st: &Arc<AppState>, v: &Viewer) -> Result<Markup, UiError> {
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
