//! Object metadata logic every client needs: Kubernetes' time formats and structured label
//! selectors (`matchLabels` + `matchExpressions`) over JSON objects.

use crate::json::Json;

/// `metav1.Time`: RFC 3339 in whole seconds, as Kubernetes writes it.
pub fn now_rfc3339() -> String {
    let t = jiff::Timestamp::now();
    jiff::Timestamp::from_second(t.as_second()).unwrap_or(t).to_string()
}

/// `metav1.MicroTime` (Lease `renewTime`, `acquireTime`): RFC 3339 with microseconds.
pub fn now_micro() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Whether a structured label selector matches `labels`. A missing selector (null) matches
/// nothing, as for a PodDisruptionBudget or a workload's selector.
pub fn selector_matches<S: Json, L: Json>(sel: &S, labels: &L) -> bool {
    if !sel.is_object() {
        return false;
    }
    let get = |k: &str| labels.get(k).and_then(|v| v.as_str());
    for (k, v) in sel["matchLabels"].entries().into_iter().flatten() {
        if get(k) != v.as_str() {
            return false;
        }
    }
    sel["matchExpressions"].as_array().into_iter().flatten().all(|e| {
        let k = e["key"].as_str().unwrap_or("");
        let vals: Vec<&str> = e["values"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect();
        match e["operator"].as_str().unwrap_or("") {
            "In" => get(k).is_some_and(|x| vals.contains(&x)),
            "NotIn" => get(k).is_none_or(|x| !vals.contains(&x)),
            "Exists" => get(k).is_some(),
            "DoesNotExist" => get(k).is_none(),
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn selectors() {
        let l = json!({"app": "web", "tier": "fe"});
        assert!(selector_matches(&json!({"matchLabels": {"app": "web"}}), &l));
        assert!(!selector_matches(&json!({"matchLabels": {"app": "db"}}), &l));
        assert!(selector_matches(&json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["fe", "be"]}, {"key": "x", "operator": "DoesNotExist"}]}), &l));
        assert!(!selector_matches(&json!({"matchExpressions": [{"key": "tier", "operator": "Bogus"}]}), &l));
        assert!(!selector_matches(&Value::Null, &l));
        assert!(selector_matches(&json!({}), &l), "an empty selector matches everything");
    }

    #[test]
    fn time_formats() {
        assert!(now_rfc3339().ends_with('Z') && !now_rfc3339().contains('.'));
        assert_eq!(now_micro().split('.').nth(1).map(|f| f.len()), Some(7), "six digits and Z");
    }
}
