//! The ReplicaSet controller: as many active pods as `replicas`, created from the template
//! in growing batches (1, 2, 4, ... at most 500 per sync, as Kubernetes' slow start), deleted
//! least useful first; expectations stop a second sync from acting again on creations and
//! deletions whose watch events have not arrived; status counts replicas, ready and
//! available pods.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use client::obj::Obj;

use crate::podutil::{self, is_active, is_available, is_ready};

pub const BURST_REPLICAS: usize = 500;

/// What a sync does: pods to create, pods to delete.
#[derive(Debug, PartialEq)]
pub struct Decision {
    pub create: usize,
    pub delete: Vec<String>,
}

/// The pure decision: `active` are the ReplicaSet's active pods.
pub fn decide(replicas: i64, active: &[Arc<Obj>]) -> Decision {
    let diff = replicas - active.len() as i64;
    if diff > 0 {
        return Decision { create: (diff as usize).min(BURST_REPLICAS), delete: vec![] };
    }
    if diff < 0 {
        let mut pods = active.to_vec();
        podutil::rank_for_deletion(&mut pods);
        let n = ((-diff) as usize).min(BURST_REPLICAS);
        return Decision { create: 0, delete: pods.iter().take(n).filter_map(|p| p["metadata"]["name"].as_str().map(String::from)).collect() };
    }
    Decision { create: 0, delete: vec![] }
}

/// Slow start: batch sizes 1, 2, 4, ... summing to `n`.
pub fn batches(n: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let (mut left, mut size) = (n, 1);
    while left > 0 {
        let b = size.min(left);
        out.push(b);
        left -= b;
        size *= 2;
    }
    out
}

/// The pod a ReplicaSet creates.
pub fn pod_from_template(rs: &Obj) -> Value {
    let t = &rs["spec"]["template"];
    let mut meta = t["metadata"].to_value();
    if !meta.is_object() {
        meta = json!({});
    }
    meta["generateName"] = json!(format!("{}-", rs["metadata"]["name"].as_str().unwrap_or("")));
    meta["namespace"] = rs["metadata"]["namespace"].to_value();
    meta["ownerReferences"] = json!([{
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs["metadata"]["name"], "uid": rs["metadata"]["uid"],
        "controller": true, "blockOwnerDeletion": true,
    }]);
    if let Some(m) = meta.as_object_mut() {
        m.remove("name");
        m.remove("creationTimestamp");
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": t["spec"].to_value()})
}

/// The status a ReplicaSet reports for its pods.
pub fn status(rs: &Obj, pods: &[Arc<Obj>], now: i64) -> Value {
    let min_ready = rs["spec"]["minReadySeconds"].as_i64().unwrap_or(0);
    let active: Vec<&Arc<Obj>> = pods.iter().filter(|p| is_active(p)).collect();
    let labels_all = |p: &Obj| {
        rs["spec"]["template"]["metadata"]["labels"].as_object().into_iter().flatten().all(|(k, v)| p["metadata"]["labels"][k] == *v)
    };
    json!({
        "replicas": active.len(),
        "fullyLabeledReplicas": active.iter().filter(|p| labels_all(p)).count(),
        "readyReplicas": active.iter().filter(|p| is_ready(p)).count(),
        "availableReplicas": active.iter().filter(|p| is_available(p, min_ready, now)).count(),
        "observedGeneration": rs["metadata"]["generation"],
    })
}

/// Creations and deletions in flight per ReplicaSet (by key), and the uids expected gone.
#[derive(Default)]
pub struct Expectations {
    m: Mutex<HashMap<String, (i64, HashSet<String>, Instant)>>,
}

const EXPECTATIONS_TTL: Duration = Duration::from_secs(300);

impl Expectations {
    /// Records what one sync is about to do, replacing what was recorded before (as
    /// Kubernetes' `SetExpectations`): a sync acts only when the previous expectations were
    /// met, and an observation beyond them (a pod whose create reported an error yet happened)
    /// must not carry over as credit that lets a later sync act before its pods are seen.
    pub fn expect(&self, key: &str, adds: i64, dels: &[String]) {
        self.m.lock().unwrap().insert(key.to_string(), (adds, dels.iter().cloned().collect(), Instant::now()));
    }

    pub fn observed_add(&self, key: &str) {
        if let Some(e) = self.m.lock().unwrap().get_mut(key) {
            e.0 -= 1;
        }
    }

    pub fn observed_delete(&self, key: &str, name: &str) {
        if let Some(e) = self.m.lock().unwrap().get_mut(key) {
            e.1.remove(name);
        }
    }

    pub fn satisfied(&self, key: &str) -> bool {
        match self.m.lock().unwrap().get(key) {
            None => true,
            Some((adds, dels, at)) => (*adds <= 0 && dels.is_empty()) || at.elapsed() > EXPECTATIONS_TTL,
        }
    }

    pub fn forget(&self, key: &str) {
        self.m.lock().unwrap().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ready: bool) -> Arc<Obj> {
        Arc::new(Obj::from(json!({"metadata": {"name": name, "creationTimestamp": "2026-11-22T00:00:00Z"}, "spec": {"nodeName": "n"},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }, "lastTransitionTime": "2026-11-22T00:00:00Z"}]}})))
    }

    #[test]
    fn expectations_are_set_not_accumulated() {
        let e = Expectations::default();
        e.expect("ns/rs", 1, &[]);
        e.observed_add("ns/rs");
        e.observed_add("ns/rs"); // one more than expected
        assert!(e.satisfied("ns/rs"));
        e.expect("ns/rs", 2, &[]);
        e.observed_add("ns/rs");
        assert!(!e.satisfied("ns/rs"), "the surplus observation is no credit for the next creates");
        e.observed_add("ns/rs");
        assert!(e.satisfied("ns/rs"));
        e.expect("ns/rs", 0, &["p".to_string()]);
        assert!(!e.satisfied("ns/rs"));
        e.observed_delete("ns/rs", "p");
        assert!(e.satisfied("ns/rs"));
    }

    #[test]
    fn decisions() {
        assert_eq!(decide(3, &[pod("a", true)]), Decision { create: 2, delete: vec![] });
        assert_eq!(decide(1, &[pod("a", true), pod("b", false)]), Decision { create: 0, delete: vec!["b".into()] });
        assert_eq!(decide(2, &[pod("a", true), pod("b", true)]), Decision { create: 0, delete: vec![] });
        assert_eq!(decide(10_000, &[]).create, BURST_REPLICAS);
    }

    #[test]
    fn slow_start() {
        assert_eq!(batches(0), Vec::<usize>::new());
        assert_eq!(batches(1), [1]);
        assert_eq!(batches(10), [1, 2, 4, 3]);
        assert_eq!(batches(500).len(), 9);
    }

    #[test]
    fn expectations_hold_until_observed() {
        let e = Expectations::default();
        assert!(e.satisfied("ns/rs"));
        e.expect("ns/rs", 2, &["p1".into()]);
        assert!(!e.satisfied("ns/rs"));
        e.observed_add("ns/rs");
        e.observed_add("ns/rs");
        assert!(!e.satisfied("ns/rs"));
        e.observed_delete("ns/rs", "p1");
        assert!(e.satisfied("ns/rs"));
    }

    #[test]
    fn template_to_pod_and_status() {
        let rs = Obj::from(json!({"metadata": {"name": "web-abc", "namespace": "d", "uid": "u", "generation": 2},
            "spec": {"replicas": 2, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}}));
        let p = pod_from_template(&rs);
        assert_eq!(p["metadata"]["generateName"], "web-abc-");
        assert_eq!(p["metadata"]["ownerReferences"][0]["uid"], "u");
        assert_eq!(p["metadata"]["labels"]["app"], "web");
        let now = podutil::ts(&Obj::from(json!("2026-11-22T01:00:00Z"))).unwrap();
        let s = status(&rs, &[pod("a", true), pod("b", false)], now);
        assert_eq!((s["replicas"].as_i64(), s["readyReplicas"].as_i64(), s["availableReplicas"].as_i64(), s["observedGeneration"].as_i64()), (Some(2), Some(1), Some(1), Some(2)));
    }
}
