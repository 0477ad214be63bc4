//! Deployments with their ReplicaSets, StatefulSets, DaemonSets, Jobs and CronJobs.

use super::*;

/// Objects of one resource the viewer may list, parsed, in the namespace given or all.
pub(super) async fn objects(st: &AppState, v: &Viewer, group: &str, resource: &str, ns: Option<&str>) -> Result<Option<Vec<Value>>, UiError> {
    if !v.may("list", group, resource, ns) {
        return Ok(None);
    }
    let snap = cache(st, group, resource).await?.snapshot().1;
    let mut out = Vec::new();
    for o in snap.values() {
        if ns.is_some_and(|n| o.meta.namespace.as_deref() != Some(n)) {
            continue;
        }
        if let Ok(v) = serde_json::from_slice::<Value>(&o.json()) {
            out.push(v);
        }
    }
    Ok(Some(out))
}

pub(super) fn n(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

pub(super) fn meta_name(o: &Value) -> String {
    format!("{}/{}", o["metadata"]["namespace"].as_str().unwrap_or(""), o["metadata"]["name"].as_str().unwrap_or(""))
}

pub(super) async fn workloads(st: &Arc<AppState>, v: &Viewer, ns: Option<&str>) -> Result<Markup, UiError> {
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
