//! The Deployment controller's decisions, pure: the template hash that names a ReplicaSet,
//! maxSurge / maxUnavailable arithmetic, how far to scale the new ReplicaSet up and the old
//! ones down in a rolling update (kube-controller-manager's NewRSNewReplicas,
//! cleanupUnhealthyReplicas and scaleDownOldReplicaSetsForRollingUpdate), and the status
//! with its `Available` and `Progressing` conditions, which `kubectl rollout status` reads.

use serde_json::{Value, json};

use client::obj::Obj;

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const HASH_LABEL: &str = "pod-template-hash";

/// A template as Go's types compare it: unset, null, `false` and `""` are the same, so a
/// template that went through JSON and one that went through protobuf are equal.
pub fn normalize(v: &Obj) -> Value {
    match v {
        Obj::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, x)| !matches!(x, Obj::Null | Obj::Bool(false)) && x.as_str() != Some(""))
                .map(|(k, x)| (k.to_string(), normalize(x)))
                .collect(),
        ),
        Obj::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        x => x.to_value(),
    }
}

/// A stable short hash of a pod template (FNV-1a over its canonical JSON), spelled with
/// Kubernetes' safe alphabet (no vowels, no easily confused characters).
pub fn template_hash(template: &Obj) -> String {
    let bytes = serde_json::to_vec(&normalize(template)).unwrap_or_default();
    let mut h: u32 = 0x811c9dc5;
    for b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x01000193);
    }
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut s = String::new();
    for d in h.to_string().bytes() {
        s.push(ALPHA[(d as usize * 7 + s.len()) % ALPHA.len()] as char);
    }
    s
}

/// An int-or-percent against `total`; percentages round up for surge, down for unavailable.
pub fn resolve(v: &Obj, total: i64, round_up: bool, default: &str) -> i64 {
    let s = match v {
        Obj::Number(n) => return n.as_i64().unwrap_or(0).max(0),
        Obj::String(s) => s.to_string(),
        _ => default.to_string(),
    };
    match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
        Some(p) => {
            let x = total * p;
            (if round_up { (x + 99) / 100 } else { x / 100 }).max(0)
        }
        None => s.parse::<i64>().unwrap_or(0).max(0),
    }
}

/// (maxSurge, maxUnavailable) of a RollingUpdate deployment; both 0 becomes unavailable 1.
pub fn surge_unavailable(d: &Obj) -> (i64, i64) {
    let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1);
    let ru = &d["spec"]["strategy"]["rollingUpdate"];
    let surge = resolve(&ru["maxSurge"], replicas, true, "25%");
    let mut unavailable = resolve(&ru["maxUnavailable"], replicas, false, "25%");
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable.min(replicas))
}

/// One ReplicaSet as the arithmetic sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Rs {
    pub name: String,
    pub spec: i64,
    pub available: i64,
    pub created: i64,
}

/// The new ReplicaSet's replicas during a rolling update.
pub fn new_rs_replicas(replicas: i64, surge: i64, all: &[Rs], new: &Rs) -> i64 {
    let current: i64 = all.iter().map(|r| r.spec).sum();
    let max_total = replicas + surge;
    if current >= max_total {
        return new.spec;
    }
    let up = (max_total - current).min(replicas - new.spec).max(0);
    new.spec + up
}

/// New `spec.replicas` for the old ReplicaSets (oldest first) during a rolling update.
pub fn scale_down_old(replicas: i64, unavailable: i64, new: &Rs, old: &[Rs]) -> Vec<(String, i64)> {
    let mut old: Vec<Rs> = old.to_vec();
    old.sort_by_key(|r| r.created);
    let all_spec: i64 = old.iter().map(|r| r.spec).sum::<i64>() + new.spec;
    let min_available = replicas - unavailable;
    let new_unavailable = (new.spec - new.available).max(0);
    let max_scaled_down = all_spec - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return vec![];
    }
    // First the unhealthy replicas of old sets, then available ones above the minimum.
    let mut cleaned = 0;
    for r in old.iter_mut() {
        if cleaned >= max_scaled_down || r.spec == 0 {
            continue;
        }
        let unhealthy = (r.spec - r.available).max(0);
        let n = unhealthy.min(max_scaled_down - cleaned);
        r.spec -= n;
        cleaned += n;
    }
    let available: i64 = old.iter().map(|r| r.available.min(r.spec)).sum::<i64>() + new.available;
    let mut surplus = (available - min_available).max(0);
    for r in old.iter_mut() {
        if surplus == 0 {
            break;
        }
        let n = r.spec.min(surplus);
        r.spec -= n;
        surplus -= n;
    }
    old.into_iter().map(|r| (r.name, r.spec)).collect()
}

/// Deployment status from its ReplicaSets' statuses; `prev` is the current status (its
/// conditions keep their times unless they change), `now` RFC 3339.
pub fn status(d: &Obj, new: Option<&Obj>, all: &[&Obj], prev: &Obj, now: &str, deadline_passed: bool) -> Value {
    let sum = |f: &str| all.iter().map(|r| r["status"][f].as_i64().unwrap_or(0)).sum::<i64>();
    let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1);
    let (_, unavailable) = surge_unavailable(d);
    let available = sum("availableReplicas");
    let updated = new.map_or(0, |n| n["status"]["replicas"].as_i64().unwrap_or(0));
    let total = sum("replicas");
    let new_name = new.and_then(|n| n["metadata"]["name"].as_str()).unwrap_or("");
    let complete = new.is_some() && updated == replicas && available >= replicas && total == replicas;
    let min_ok = d["spec"]["strategy"]["type"] == "Recreate" && available >= replicas || available >= replicas - unavailable;
    let cond = |ty: &str, ok: bool, reason: &str, message: String| {
        let old = prev["conditions"].as_array().and_then(|a| a.iter().find(|c| c["type"] == ty)).cloned().unwrap_or(Obj::Null);
        let st = if ok { "True" } else { "False" };
        let same = old["status"] == st && old["reason"] == reason;
        let transition = if old["status"] == st { old["lastTransitionTime"].to_value() } else { json!(now) };
        let update = if same && ty == "Available" { old["lastUpdateTime"].to_value() } else if same && old["message"] == message.as_str() { old["lastUpdateTime"].to_value() } else { json!(now) };
        json!({"type": ty, "status": st, "reason": reason, "message": message,
            "lastUpdateTime": if update.is_null() { json!(now) } else { update },
            "lastTransitionTime": if transition.is_null() { json!(now) } else { transition }})
    };
    let available_c = if min_ok {
        cond("Available", true, "MinimumReplicasAvailable", "Deployment has minimum availability.".into())
    } else {
        cond("Available", false, "MinimumReplicasUnavailable", "Deployment does not have minimum availability.".into())
    };
    let progressing = if d["spec"]["paused"].as_bool() == Some(true) {
        cond("Progressing", true, "DeploymentPaused", "Deployment is paused".into())
    } else if complete {
        cond("Progressing", true, "NewReplicaSetAvailable", format!("ReplicaSet \"{new_name}\" has successfully progressed."))
    } else if deadline_passed {
        cond("Progressing", false, "ProgressDeadlineExceeded", format!("ReplicaSet \"{new_name}\" has timed out progressing."))
    } else {
        cond("Progressing", true, "ReplicaSetUpdated", format!("ReplicaSet \"{new_name}\" is progressing."))
    };
    json!({
        "observedGeneration": d["metadata"]["generation"],
        "replicas": total,
        "updatedReplicas": updated,
        "readyReplicas": sum("readyReplicas"),
        "availableReplicas": available,
        "unavailableReplicas": (replicas - available).max(0),
        "conditions": [available_c, progressing],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(name: &str, spec: i64, available: i64, created: i64) -> Rs {
        Rs { name: name.into(), spec, available, created }
    }

    #[test]
    fn surge_and_unavailable_arithmetic() {
        let d = |surge: Value, unavail: Value, replicas: i64| Obj::from(json!({"spec": {"replicas": replicas, "strategy": {"rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavail}}}}));
        assert_eq!(surge_unavailable(&d(Value::Null, Value::Null, 10)), (3, 2), "25% rounds up for surge, down for unavailable");
        assert_eq!(surge_unavailable(&d(json!(0), json!(0), 3)), (0, 1));
        assert_eq!(surge_unavailable(&d(json!("50%"), json!(1), 3)), (2, 1));
        assert_eq!(surge_unavailable(&d(json!(1), json!("100%"), 4)), (1, 4));
    }

    #[test]
    fn rolling_update_steps() {
        // 10 replicas, surge 3, unavailable 2; old fully available, new just created.
        let old = vec![rs("old", 10, 10, 1)];
        let new = rs("new", 0, 0, 2);
        let all: Vec<Rs> = old.iter().cloned().chain([new.clone()]).collect();
        assert_eq!(new_rs_replicas(10, 3, &all, &new), 3, "surge: up to 13 in total");
        let new = rs("new", 3, 0, 2);
        assert_eq!(scale_down_old(10, 2, &new, &old), vec![("old".to_string(), 8)], "keep 8 available");
        // New pods became available: the old set can go down by as many.
        let new = rs("new", 3, 3, 2);
        let old = vec![rs("old", 8, 8, 1)];
        assert_eq!(scale_down_old(10, 2, &new, &old), vec![("old".to_string(), 5)]);
        let all: Vec<Rs> = old.iter().cloned().chain([new.clone()]).collect();
        assert_eq!(new_rs_replicas(10, 3, &all, &new), 5);
        // Unhealthy old replicas go first.
        let old = vec![rs("old-a", 2, 0, 1), rs("old-b", 8, 8, 2)];
        let new = rs("new", 3, 0, 3);
        assert_eq!(scale_down_old(10, 2, &new, &old), vec![("old-a".to_string(), 0), ("old-b".to_string(), 8)]);
    }

    #[test]
    fn templates_compare_as_go_types_do() {
        let a = Obj::from(json!({"metadata": {"creationTimestamp": null, "labels": {"app": "w"}}, "spec": {"containers": [{"name": "c", "tty": false, "image": "x"}], "hostNetwork": false}}));
        let b = Obj::from(json!({"metadata": {"labels": {"app": "w"}}, "spec": {"containers": [{"name": "c", "image": "x", "workingDir": ""}]}}));
        assert_eq!(normalize(&a), normalize(&b));
        assert_eq!(template_hash(&a), template_hash(&b));
    }

    #[test]
    fn hashes_are_stable_and_differ() {
        let a = Obj::from(json!({"spec": {"containers": [{"name": "c", "image": "nginx:1"}]}}));
        let b = Obj::from(json!({"spec": {"containers": [{"name": "c", "image": "nginx:2"}]}}));
        // Pinned: a ReplicaSet's name carries this hash, so a new build must compute the
        // same one for the same template, or every Deployment would roll out on upgrade.
        assert_eq!(template_hash(&a), "j2lf8hrzk");
        assert_eq!(template_hash(&a), template_hash(&a.clone()));
        assert_ne!(template_hash(&a), template_hash(&b));
        assert!(template_hash(&a).bytes().all(|c| b"bcdfghjklmnpqrstvwxz2456789".contains(&c)));
    }

    #[test]
    fn status_conditions() {
        let d = Obj::from(json!({"metadata": {"generation": 3}, "spec": {"replicas": 2}}));
        let new = Obj::from(json!({"metadata": {"name": "web-x"}, "status": {"replicas": 2, "readyReplicas": 2, "availableReplicas": 2}}));
        let s = status(&d, Some(&new), &[&new], &Obj::Null, "t0", false);
        assert_eq!(s["observedGeneration"], 3);
        assert_eq!(s["conditions"][1]["reason"], "NewReplicaSetAvailable");
        assert_eq!(s["conditions"][0]["status"], "True");
        let half = Obj::from(json!({"metadata": {"name": "web-x"}, "status": {"replicas": 1, "availableReplicas": 0}}));
        let s2 = status(&d, Some(&half), &[&half], &Obj::from(&s), "t1", true);
        assert_eq!(s2["conditions"][1]["reason"], "ProgressDeadlineExceeded");
        assert_eq!(s2["conditions"][0]["status"], "False");
        assert_eq!(s2["conditions"][0]["lastTransitionTime"], "t1");
    }
}
