//! The node and pod lists and a node's page: filtered and paged on the server.

use super::*;

pub(super) async fn nodes(st: &Arc<AppState>, v: &Viewer, f: &NodeFilter) -> Result<Markup, UiError> {
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

pub(super) async fn node(st: &Arc<AppState>, v: &Viewer, name: &str) -> Result<Markup, UiError> {
    v.must("get", "", "nodes", None)?;
    let snap = cache(st, "", "nodes").await?.snapshot().1;
    let o = snap.get(key(st, "", "nodes", None, name).as_bytes()).cloned().ok_or_else(|| UiError::not_found(format!("nodes \"{name}\" not found")))?;
    let n: Value = serde_json::from_slice(&o.json()).map_err(|e| UiError::bad_request(e.to_string()))?;
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
                        take(&mut page, o, m.digest(k).unwrap_or_else(|| Arc::new(digest::pod(&o.json()))));
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

pub(super) async fn pods(st: &Arc<AppState>, v: &Viewer, f: &PodFilter) -> Result<Markup, UiError> {
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
