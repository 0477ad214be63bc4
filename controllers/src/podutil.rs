//! Pod facts the controllers share: readiness, availability, activity, and the order in
//! which a ReplicaSet gives up pods.

use std::sync::Arc;

use client::obj::Obj;

pub fn ts(v: &Obj) -> Option<i64> {
    v.as_str()?.parse::<jiff::Timestamp>().ok().map(|t| t.as_second())
}

pub fn is_active(p: &Obj) -> bool {
    let phase = p["status"]["phase"].as_str().unwrap_or("");
    phase != "Succeeded" && phase != "Failed" && p["metadata"].get("deletionTimestamp").is_none()
}

fn ready_cond(p: &Obj) -> Option<&Obj> {
    p["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Ready")
}

pub fn is_ready(p: &Obj) -> bool {
    ready_cond(p).is_some_and(|c| c["status"] == "True")
}

/// Ready for at least `min_ready` seconds at `now` (unix seconds).
pub fn is_available(p: &Obj, min_ready: i64, now: i64) -> bool {
    match ready_cond(p) {
        Some(c) if c["status"] == "True" => min_ready == 0 || ts(&c["lastTransitionTime"]).is_some_and(|t| t + min_ready <= now),
        _ => false,
    }
}

fn restarts(p: &Obj) -> i64 {
    p["status"]["containerStatuses"].as_array().into_iter().flatten().map(|c| c["restartCount"].as_i64().unwrap_or(0)).sum()
}

/// Sorts pods so that the ones to delete first come first, as Kubernetes ranks them:
/// unassigned before assigned; Pending before Unknown before Running; not ready before
/// ready; more restarts before fewer; newer before older.
pub fn rank_for_deletion(pods: &mut [Arc<Obj>]) {
    let phase_rank = |p: &Obj| match p["status"]["phase"].as_str().unwrap_or("Pending") {
        "Pending" => 0,
        "Unknown" => 1,
        _ => 2,
    };
    pods.sort_by(|a, b| {
        let assigned = |p: &Obj| p["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty());
        assigned(a)
            .cmp(&assigned(b))
            .then(phase_rank(a).cmp(&phase_rank(b)))
            .then(is_ready(a).cmp(&is_ready(b)))
            .then(restarts(b).cmp(&restarts(a)))
            .then(ts(&b["metadata"]["creationTimestamp"]).cmp(&ts(&a["metadata"]["creationTimestamp"])))
            .then(a["metadata"]["name"].as_str().cmp(&b["metadata"]["name"].as_str()))
    });
}

pub use api::meta::selector_matches;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deletion_ranking() {
        let p = |name: &str, node: Option<&str>, phase: &str, ready: bool, created: &str| {
            Arc::new(Obj::from(json!({"metadata": {"name": name, "creationTimestamp": created}, "spec": {"nodeName": node},
                "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})))
        };
        let mut pods = vec![
            p("old-ready", Some("n"), "Running", true, "2026-01-01T00:00:00Z"),
            p("new-ready", Some("n"), "Running", true, "2026-01-02T00:00:00Z"),
            p("unready", Some("n"), "Running", false, "2026-01-01T00:00:00Z"),
            p("pending", Some("n"), "Pending", false, "2026-01-01T00:00:00Z"),
            p("unassigned", None, "Pending", false, "2026-01-01T00:00:00Z"),
        ];
        rank_for_deletion(&mut pods);
        let names: Vec<&str> = pods.iter().map(|p| p["metadata"]["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["unassigned", "pending", "unready", "new-ready", "old-ready"]);
    }

    #[test]
    fn availability_waits_min_ready_seconds() {
        let p = Obj::from(json!({"status": {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-22T00:00:00Z"}]}}));
        let t = ts(&Obj::from(json!("2026-11-22T00:00:00Z"))).unwrap();
        assert!(is_available(&p, 0, t));
        assert!(!is_available(&p, 10, t + 5));
        assert!(is_available(&p, 10, t + 10));
    }
}
