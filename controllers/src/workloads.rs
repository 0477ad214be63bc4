//! Job, DaemonSet and StatefulSet: pure decisions (tested as tables) for what to create and
//! delete, given the object and its pods.

use std::sync::Arc;

use serde_json::json;

use client::obj::Obj;

use crate::podutil::{is_active, is_ready};

fn phase(p: &Obj) -> &str {
    p["status"]["phase"].as_str().unwrap_or("Pending")
}

/// What a Job sync decides.
#[derive(Debug, PartialEq)]
pub enum JobStep {
    /// Create this many pods.
    Create(usize),
    /// Done: `Complete` (true) or `Failed` (false) with a reason and message; active pods
    /// are deleted.
    Finish { complete: bool, reason: &'static str, message: String },
    Wait,
}

/// (active, succeeded, failed) counts of a Job's pods.
pub fn job_counts(pods: &[Arc<Obj>]) -> (i64, i64, i64) {
    let active = pods.iter().filter(|p| is_active(p)).count() as i64;
    let succeeded = pods.iter().filter(|p| phase(p) == "Succeeded").count() as i64;
    let failed = pods.iter().filter(|p| phase(p) == "Failed").count() as i64;
    (active, succeeded, failed)
}

/// The Job's next step: completions (unset: done when one pod succeeded and none is
/// running), parallelism, backoffLimit (default 6), activeDeadlineSeconds.
pub fn job_step(job: &Obj, pods: &[Arc<Obj>], elapsed_secs: i64) -> JobStep {
    let (active, succeeded, failed) = job_counts(pods);
    let spec = &job["spec"];
    let parallelism = spec["parallelism"].as_i64().unwrap_or(1).max(0);
    let backoff = spec["backoffLimit"].as_i64().unwrap_or(6);
    if failed > backoff {
        return JobStep::Finish { complete: false, reason: "BackoffLimitExceeded", message: "Job has reached the specified backoff limit".into() };
    }
    if let Some(deadline) = spec["activeDeadlineSeconds"].as_i64()
        && elapsed_secs >= deadline
    {
        return JobStep::Finish { complete: false, reason: "DeadlineExceeded", message: "Job was active longer than specified deadline".into() };
    }
    match spec["completions"].as_i64() {
        Some(completions) => {
            if succeeded >= completions {
                return JobStep::Finish { complete: true, reason: "Completed", message: "Reached expected number of succeeded pods".into() };
            }
            let want = parallelism.min(completions - succeeded);
            if want > active { JobStep::Create((want - active) as usize) } else { JobStep::Wait }
        }
        None => {
            if succeeded > 0 {
                return if active == 0 { JobStep::Finish { complete: true, reason: "Completed", message: "Reached expected number of succeeded pods".into() } } else { JobStep::Wait };
            }
            if parallelism > active { JobStep::Create((parallelism - active) as usize) } else { JobStep::Wait }
        }
    }
}

/// One node of a DaemonSet being rolled: its pods of the old templates and of the current
/// one, each with whether it is ready.
pub struct DaemonNode<'a> {
    pub node: &'a str,
    pub old: Vec<(&'a str, bool)>,
    pub new: Vec<(&'a str, bool)>,
}

/// A DaemonSet's RollingUpdate step, as kube-controller-manager takes it: the nodes to give a
/// new pod beside the old one (`maxSurge`), and the old pods to delete: on a node whose new
/// pod is ready; an old pod that is not ready (it serves nothing); and, without surge, ready
/// old pods while fewer than `maxUnavailable` nodes are without a ready pod.
pub fn daemon_rollout(nodes: &[DaemonNode], max_surge: i64, max_unavailable: i64) -> (Vec<String>, Vec<String>) {
    let (mut create, mut delete) = (Vec::new(), Vec::new());
    let mut unavailable = nodes.iter().filter(|n| !n.old.iter().chain(&n.new).any(|p| p.1)).count() as i64;
    let mut surging = nodes.iter().filter(|n| !n.old.is_empty() && !n.new.is_empty()).count() as i64;
    for n in nodes.iter().filter(|n| !n.old.is_empty()) {
        if !n.new.is_empty() {
            if n.new.iter().any(|p| p.1) {
                delete.extend(n.old.iter().map(|p| p.0.to_string()));
                if max_surge > 0 {
                    surging -= 1;
                }
            }
            continue;
        }
        if !n.old.iter().any(|p| p.1) {
            delete.extend(n.old.iter().map(|p| p.0.to_string()));
            continue;
        }
        if max_surge > 0 {
            if surging < max_surge {
                create.push(n.node.to_string());
                surging += 1;
            }
        } else if unavailable < max_unavailable {
            delete.extend(n.old.iter().map(|p| p.0.to_string()));
            unavailable += 1;
        }
    }
    (create, delete)
}

/// Whether a DaemonSet's pod belongs on `node`: node selector, required node affinity (by
/// labels), and NoSchedule / NoExecute taints tolerated.
pub fn daemon_fits(template: &Obj, node: &Obj) -> bool {
    let labels = &node["metadata"]["labels"];
    for (k, v) in template["spec"]["nodeSelector"].as_object().into_iter().flatten() {
        if labels[k] != *v {
            return false;
        }
    }
    let terms = &template["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"];
    if let Some(terms) = terms.as_array()
        && !terms.iter().any(|t| crate::podutil::selector_matches(&json!({"matchExpressions": t["matchExpressions"]}), labels))
    {
        return false;
    }
    let tolerations = template["spec"]["tolerations"].as_array().unwrap_or_default();
    for t in node["spec"]["taints"].as_array().into_iter().flatten() {
        let effect = t["effect"].as_str().unwrap_or("");
        if effect != "NoSchedule" && effect != "NoExecute" {
            continue;
        }
        let ok = tolerations.iter().any(|tol| {
            let eff_ok = tol["effect"].as_str().is_none_or(|e| e.is_empty() || e == effect);
            let key = tol["key"].as_str().unwrap_or("");
            eff_ok && ((key.is_empty() && tol["operator"] == "Exists") || (key == t["key"].as_str().unwrap_or("") && (tol["operator"] == "Exists" || tol["value"] == t["value"])))
        });
        // The DaemonSet controller tolerates the node lifecycle taints, as Kubernetes does.
        let lifecycle = t["key"].as_str().is_some_and(|k| k.starts_with("node.kubernetes.io/"));
        if !ok && !lifecycle {
            return false;
        }
    }
    true
}

/// The ordinal of a StatefulSet pod named `<set>-<n>`.
pub fn ordinal(set: &str, pod: &str) -> Option<i64> {
    pod.strip_prefix(set)?.strip_prefix('-')?.parse().ok()
}

/// What a StatefulSet sync does next.
#[derive(Debug, PartialEq)]
pub enum SetStep {
    Create(Vec<i64>),
    Delete(Vec<String>),
    Wait,
}

/// OrderedReady: create the lowest missing ordinal once all below it are Running and Ready;
/// delete the highest ordinal beyond `replicas` once all others are ready. Parallel: all at
/// once. `pods` are the set's active pods.
pub fn set_step(set: &str, replicas: i64, parallel: bool, pods: &[Arc<Obj>]) -> SetStep {
    let mut have: Vec<(i64, &Arc<Obj>)> = pods.iter().filter_map(|p| Some((ordinal(set, p["metadata"]["name"].as_str()?)?, p))).collect();
    have.sort_by_key(|(o, _)| *o);
    let extra: Vec<(i64, &Arc<Obj>)> = have.iter().filter(|(o, _)| *o >= replicas).cloned().collect();
    let missing: Vec<i64> = (0..replicas).filter(|i| !have.iter().any(|(o, _)| o == i)).collect();
    if parallel {
        if !missing.is_empty() {
            return SetStep::Create(missing);
        }
        if !extra.is_empty() {
            return SetStep::Delete(extra.iter().filter_map(|(_, p)| p["metadata"]["name"].as_str().map(String::from)).collect());
        }
        return SetStep::Wait;
    }
    let all_ready = |below: i64| have.iter().filter(|(o, _)| *o < below).all(|(_, p)| is_ready(p) && phase(p) == "Running");
    if let Some(&first) = missing.first() {
        return if all_ready(first) { SetStep::Create(vec![first]) } else { SetStep::Wait };
    }
    if let Some((_, p)) = extra.last() {
        let others_ready = have.iter().filter(|(o, _)| *o < replicas).all(|(_, q)| is_ready(q));
        return if others_ready { SetStep::Delete(vec![p["metadata"]["name"].as_str().unwrap_or("").to_string()]) } else { SetStep::Wait };
    }
    SetStep::Wait
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_sets_roll_by_surge_or_by_unavailability() {
        let node = |n: &'static str, old: &[(&'static str, bool)], new: &[(&'static str, bool)]| DaemonNode { node: n, old: old.to_vec(), new: new.to_vec() };
        let fresh = vec![node("a", &[("a-old", true)], &[]), node("b", &[("b-old", true)], &[]), node("c", &[("c-old", true)], &[])];
        // maxUnavailable 1, no surge: one ready old pod goes.
        assert_eq!(daemon_rollout(&fresh, 0, 1), (vec![], vec!["a-old".to_string()]));
        // maxUnavailable 2: two.
        assert_eq!(daemon_rollout(&fresh, 0, 2).1, ["a-old", "b-old"]);
        // A node already without a ready pod counts against it.
        let one_down = vec![node("a", &[], &[("a-new", false)]), node("b", &[("b-old", true)], &[])];
        assert_eq!(daemon_rollout(&one_down, 0, 1), (vec![], vec![]));
        // maxSurge 2: new pods beside the old on two nodes; nothing deleted yet.
        assert_eq!(daemon_rollout(&fresh, 2, 0), (vec!["a".to_string(), "b".to_string()], vec![]));
        // A surged node whose new pod is ready loses its old one, and frees a surge slot.
        let surged = vec![node("a", &[("a-old", true)], &[("a-new", true)]), node("b", &[("b-old", true)], &[("b-new", false)]), node("c", &[("c-old", true)], &[])];
        assert_eq!(daemon_rollout(&surged, 2, 0), (vec!["c".to_string()], vec!["a-old".to_string()]));
        // Not ready old pods go at once, whatever the budget.
        let broken = vec![node("a", &[("a-old", false)], &[])];
        assert_eq!(daemon_rollout(&broken, 0, 1).1, ["a-old"]);
        assert_eq!(daemon_rollout(&broken, 1, 0).1, ["a-old"]);
    }

    fn pod(name: &str, phase: &str, ready: bool) -> Arc<Obj> {
        Arc::new(Obj::from(json!({"metadata": {"name": name}, "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})))
    }

    #[test]
    fn job_steps() {
        let job = |c: Option<i64>, p: i64| Obj::from(json!({"spec": {"completions": c, "parallelism": p, "backoffLimit": 1}}));
        assert_eq!(job_step(&job(Some(3), 2), &[], 0), JobStep::Create(2));
        assert_eq!(job_step(&job(Some(3), 2), &[pod("a", "Succeeded", false), pod("b", "Running", true)], 0), JobStep::Create(1));
        assert_eq!(job_step(&job(Some(3), 5), &[pod("a", "Succeeded", false), pod("b", "Succeeded", false)], 0), JobStep::Create(1), "never more than the completions left");
        assert!(matches!(job_step(&job(Some(1), 1), &[pod("a", "Succeeded", false)], 0), JobStep::Finish { complete: true, .. }));
        assert!(matches!(job_step(&job(Some(1), 1), &[pod("a", "Failed", false), pod("b", "Failed", false)], 0), JobStep::Finish { complete: false, reason: "BackoffLimitExceeded", .. }));
        // Work-queue jobs: done when one succeeded and none runs.
        assert_eq!(job_step(&job(None, 2), &[pod("a", "Succeeded", false), pod("b", "Running", true)], 0), JobStep::Wait);
        assert!(matches!(job_step(&job(None, 2), &[pod("a", "Succeeded", false)], 0), JobStep::Finish { complete: true, .. }));
        let deadline = Obj::from(json!({"spec": {"activeDeadlineSeconds": 10}}));
        assert!(matches!(job_step(&deadline, &[], 10), JobStep::Finish { reason: "DeadlineExceeded", .. }));
    }

    #[test]
    fn daemon_placement() {
        let t = Obj::from(json!({"spec": {"nodeSelector": {"disk": "ssd"}, "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]}}));
        assert!(daemon_fits(&t, &Obj::from(json!({"metadata": {"labels": {"disk": "ssd"}}, "spec": {"taints": [{"key": "gpu", "effect": "NoSchedule"}]}}))));
        assert!(!daemon_fits(&t, &Obj::from(json!({"metadata": {"labels": {"disk": "hdd"}}}))));
        assert!(!daemon_fits(&t, &Obj::from(json!({"metadata": {"labels": {"disk": "ssd"}}, "spec": {"taints": [{"key": "other", "effect": "NoExecute"}]}}))));
        assert!(daemon_fits(&t, &Obj::from(json!({"metadata": {"labels": {"disk": "ssd"}}, "spec": {"taints": [{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]}}))));
    }

    #[test]
    fn stateful_order() {
        assert_eq!(ordinal("db", "db-12"), Some(12));
        assert_eq!(ordinal("db", "dbx-1"), None);
        assert_eq!(set_step("db", 3, false, &[]), SetStep::Create(vec![0]));
        assert_eq!(set_step("db", 3, false, &[pod("db-0", "Pending", false)]), SetStep::Wait, "waits for db-0 to be ready");
        assert_eq!(set_step("db", 3, false, &[pod("db-0", "Running", true)]), SetStep::Create(vec![1]));
        assert_eq!(set_step("db", 3, true, &[pod("db-0", "Pending", false)]), SetStep::Create(vec![1, 2]));
        let three = [pod("db-0", "Running", true), pod("db-1", "Running", true), pod("db-2", "Running", true)];
        assert_eq!(set_step("db", 1, false, &three), SetStep::Delete(vec!["db-2".into()]), "highest first, one at a time");
        assert_eq!(set_step("db", 1, true, &three), SetStep::Delete(vec!["db-1".into(), "db-2".into()]));
    }
}
