//! ResourceQuota admission's arithmetic (shared by the API server and the deterministic
//! simulation): a create in a namespace with quotas charges its usage on each
//! quota's `status.used` in the create's own txn (the API server's `reserve.rs`), so concurrent creates cannot
//! overshoot and a create that fails charges nothing; it is Forbidden if any hard limit would
//! be exceeded, with Kubernetes' message. The resource-quota controller recomputes `used`
//! from what exists.

use serde_json::{Map, Value, json};

/// What creating `obj` (of `resource` in `group`) adds to each quota key it may count.
pub fn usage(group: &str, resource: &str, obj: &Value) -> Vec<(String, i64)> {
    let mut u = Vec::new();
    let count_key = if group.is_empty() { format!("count/{resource}") } else { format!("count/{resource}.{group}") };
    u.push((count_key, 1000));
    if group.is_empty() && matches!(resource, "pods" | "services" | "configmaps" | "secrets" | "persistentvolumeclaims" | "replicationcontrollers" | "resourcequotas") {
        u.push((resource.to_string(), 1000));
    }
    if group.is_empty() && resource == "pods" {
        let sum = |section: &str, res: &str| -> i64 {
            obj["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| c["resources"][section][res].as_str().and_then(|s| crate::Quantity::parse(s).ok()).map_or(0, |q| q.milli))
                .sum()
        };
        for res in ["cpu", "memory", "ephemeral-storage"] {
            let req = sum("requests", res);
            u.push((format!("requests.{res}"), req));
            u.push((res.to_string(), req));
            u.push((format!("limits.{res}"), sum("limits", res)));
        }
    }
    u
}

/// Quota quantities are kept in milli-units internally.
fn milli(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => crate::Quantity::parse(s).ok().map(|q| q.milli),
        Value::Number(n) => n.as_i64().map(|x| x * 1000),
        _ => None,
    }
}

/// The printed form of a quota value.
pub fn show(key: &str, m: i64) -> String {
    let q = crate::Quantity::from_milli(m);
    if key.contains("memory") || key.contains("storage") { q.memory_string() } else { q.cpu_string() }
}

/// Checks `quota` against `delta`; returns the quota with `status.used` raised, or the
/// Forbidden message.
pub fn charge(quota: &Value, delta: &[(String, i64)], obj: &Value) -> Result<Value, String> {
    let hard = quota["spec"]["hard"].as_object().cloned().unwrap_or_default();
    let mut used: Map<String, Value> = quota["status"]["used"].as_object().cloned().unwrap_or_default();
    let name = quota["metadata"]["name"].as_str().unwrap_or("");
    let mut requested = Vec::new();
    let mut used_s = Vec::new();
    let mut limited = Vec::new();
    let mut over = false;
    for (k, h) in &hard {
        let Some(hm) = milli(h) else { continue };
        let Some(d) = delta.iter().find(|(dk, _)| dk == k).map(|(_, d)| *d) else { continue };
        // A pod must state what a quota on requests or limits tracks.
        if (k.starts_with("requests.") || k.starts_with("limits.") || k == "cpu" || k == "memory") && d == 0 && obj["kind"] == "Pod" {
            return Err(format!("failed quota: {name}: must specify {k}"));
        }
        let u = used.get(k).and_then(milli).unwrap_or(0);
        if u + d > hm {
            over = true;
            requested.push(format!("{k}={}", show(k, d)));
            used_s.push(format!("{k}={}", show(k, u)));
            limited.push(format!("{k}={}", show(k, hm)));
        }
        used.insert(k.clone(), json!(show(k, u + d)));
    }
    if over {
        return Err(format!("exceeded quota: {name}, requested: {}, used: {}, limited: {}", requested.join(","), used_s.join(","), limited.join(",")));
    }
    let mut q = quota.clone();
    q["status"]["used"] = Value::Object(used);
    q["status"]["hard"] = Value::Object(hard);
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_and_refuses() {
        let quota = json!({"metadata": {"name": "q"}, "spec": {"hard": {"pods": "2", "requests.cpu": "1"}}, "status": {"used": {"pods": "1", "requests.cpu": "500m"}}});
        let pod = |cpu: &str| json!({"kind": "Pod", "spec": {"containers": [{"resources": {"requests": {"cpu": cpu}}}]}});
        let p = pod("250m");
        let q = charge(&quota, &usage("", "pods", &p), &p).unwrap();
        assert_eq!(q["status"]["used"]["pods"], "2");
        assert_eq!(q["status"]["used"]["requests.cpu"], "750m");
        let big = pod("600m");
        assert_eq!(charge(&quota, &usage("", "pods", &big), &big).unwrap_err(), "exceeded quota: q, requested: requests.cpu=600m, used: requests.cpu=500m, limited: requests.cpu=1");
        let none = json!({"kind": "Pod", "spec": {"containers": [{}]}});
        assert_eq!(charge(&quota, &usage("", "pods", &none), &none).unwrap_err(), "failed quota: q: must specify requests.cpu");
        let cm = json!({"kind": "ConfigMap"});
        let q2 = json!({"metadata": {"name": "c"}, "spec": {"hard": {"count/configmaps": "1"}}, "status": {"used": {"count/configmaps": "1"}}});
        assert!(charge(&q2, &usage("", "configmaps", &cm), &cm).is_err());
    }
}
