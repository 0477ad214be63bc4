//! ResourceQuota scopes: which pods a quota with `spec.scopes` or `spec.scopeSelector`
//! tracks, as Kubernetes decides it (shared by the API server's admission, which charges only
//! the quotas a pod is in scope of, and the controller that recounts them). A quota with
//! scopes tracks pods only.

use serde_json::Value;

use crate::json::Json;

/// The scopes Kubernetes defines.
pub const SCOPES: [&str; 6] = ["Terminating", "NotTerminating", "BestEffort", "NotBestEffort", "PriorityClass", "CrossNamespacePodAffinity"];

/// Whether a quota has any scope.
pub fn scoped<J: Json>(quota: &J) -> bool {
    quota["spec"]["scopes"].as_array().is_some_and(|s| !s.is_empty()) || quota["spec"]["scopeSelector"]["matchExpressions"].as_array().is_some_and(|s| !s.is_empty())
}

/// A pod's QoS is BestEffort: no container (nor init container) requests or limits anything.
fn best_effort<J: Json>(pod: &J) -> bool {
    ["containers", "initContainers"].iter().all(|list| {
        pod["spec"][*list].as_array().into_iter().flatten().all(|c| {
            let empty = |k: &str| c["resources"][k].entries().is_none_or(|mut m| m.next().is_none());
            empty("requests") && empty("limits")
        })
    })
}

/// Whether the pod has a pod-affinity term reaching other namespaces.
fn cross_namespace<J: Json>(pod: &J) -> bool {
    let a = &pod["spec"]["affinity"];
    ["podAffinity", "podAntiAffinity"].iter().any(|k| {
        let terms = a[*k]["requiredDuringSchedulingIgnoredDuringExecution"].as_array().into_iter().flatten().chain(
            a[*k]["preferredDuringSchedulingIgnoredDuringExecution"].as_array().into_iter().flatten().map(|w| &w["podAffinityTerm"]),
        );
        terms.into_iter().any(|t| t["namespaces"].as_array().is_some_and(|n| !n.is_empty()) || t.get("namespaceSelector").is_some_and(|s| !s.is_null()))
    })
}

/// Whether a pod is in one scope; for PriorityClass, whether its class is among `values`
/// (under `op`: In, NotIn, Exists, DoesNotExist).
fn in_scope<J: Json>(pod: &J, scope: &str, op: &str, values: &[&str]) -> bool {
    let terminating = pod["spec"]["activeDeadlineSeconds"].as_i64().is_some();
    let matches = match scope {
        "Terminating" => terminating,
        "NotTerminating" => !terminating,
        "BestEffort" => best_effort(pod),
        "NotBestEffort" => !best_effort(pod),
        "CrossNamespacePodAffinity" => cross_namespace(pod),
        "PriorityClass" => {
            let class = pod["spec"]["priorityClassName"].as_str().filter(|c| !c.is_empty());
            return match op {
                "In" => class.is_some_and(|c| values.contains(&c)),
                "NotIn" => class.is_none_or(|c| !values.contains(&c)),
                "DoesNotExist" => class.is_none(),
                _ => class.is_some(),
            };
        }
        _ => false,
    };
    if op == "DoesNotExist" { !matches } else { matches }
}

/// Whether `quota` tracks `obj` (`is_pod`: it is a Pod): an unscoped quota tracks everything;
/// a scoped one only pods in every scope it lists and every expression of its selector.
pub fn tracks<Q: Json, J: Json>(quota: &Q, is_pod: bool, obj: &J) -> bool {
    if !scoped(quota) {
        return true;
    }
    if !is_pod {
        return false;
    }
    let scopes = quota["spec"]["scopes"].as_array().into_iter().flatten().filter_map(|s| s.as_str());
    if !scopes.into_iter().all(|s| in_scope(obj, s, "Exists", &[])) {
        return false;
    }
    quota["spec"]["scopeSelector"]["matchExpressions"].as_array().into_iter().flatten().all(|e| {
        let values: Vec<&str> = e["values"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect();
        in_scope(obj, e["scopeName"].as_str().unwrap_or(""), e["operator"].as_str().unwrap_or(""), &values)
    })
}

/// Validation of a quota's scopes, as Kubernetes words it: (field, message) per problem.
pub fn validate(quota: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let supported = || SCOPES.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
    for (i, s) in quota["spec"]["scopes"].as_array().into_iter().flatten().enumerate() {
        let name = s.as_str().unwrap_or("");
        if !SCOPES.contains(&name) {
            out.push((format!("spec.scopes[{i}]"), format!("Unsupported value: {name:?}: supported values: {}", supported())));
        }
    }
    for (i, e) in quota["spec"]["scopeSelector"]["matchExpressions"].as_array().into_iter().flatten().enumerate() {
        let name = e["scopeName"].as_str().unwrap_or("");
        let op = e["operator"].as_str().unwrap_or("");
        let values = e["values"].as_array().map_or(0, |v| v.len());
        if !SCOPES.contains(&name) {
            out.push((format!("spec.scopeSelector.matchExpressions[{i}].scopeName"), format!("Unsupported value: {name:?}: supported values: {}", supported())));
        }
        match op {
            "In" | "NotIn" if name != "PriorityClass" => out.push((format!("spec.scopeSelector.matchExpressions[{i}].operator"), format!("Invalid value: {op:?}: must be 'Exist' when scope is any of ResourceQuotaScopeTerminating, ResourceQuotaScopeNotTerminating, ResourceQuotaScopeBestEffort, ResourceQuotaScopeNotBestEffort or ResourceQuotaScopeCrossNamespacePodAffinity"))),
            "In" | "NotIn" if values == 0 => out.push((format!("spec.scopeSelector.matchExpressions[{i}].values"), "Required value: must be at least one value when `operator` is 'In' or 'NotIn' for scope selector".into())),
            "Exists" | "DoesNotExist" if values > 0 => out.push((format!("spec.scopeSelector.matchExpressions[{i}].values"), "Invalid value: must be no value when `operator` is 'Exist' or 'DoesNotExist' for scope selector".into())),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            _ => out.push((format!("spec.scopeSelector.matchExpressions[{i}].operator"), format!("Unsupported value: {op:?}: supported values: \"DoesNotExist\", \"Exists\", \"In\", \"NotIn\""))),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(extra: Value) -> Value {
        let mut p = json!({"spec": {"containers": [{"name": "c"}]}});
        for (k, v) in extra.as_object().unwrap() {
            p["spec"][k] = v.clone();
        }
        p
    }

    #[test]
    fn scopes_pick_the_pods_kubernetes_picks() {
        let quota = |spec: Value| json!({"spec": spec});
        let plain = pod(json!({}));
        let terminating = pod(json!({"activeDeadlineSeconds": 60}));
        let burstable = pod(json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]}));
        let high = pod(json!({"priorityClassName": "high", "containers": [{"name": "c", "resources": {"limits": {"cpu": "1"}}}]}));
        let cross = pod(json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": "k", "namespaces": ["other"]}]}}}));
        let table = [
            (json!({"hard": {"pods": "1"}}), [true, true, true, true, true]),
            (json!({"scopes": ["Terminating"]}), [false, true, false, false, false]),
            (json!({"scopes": ["NotTerminating"]}), [true, false, true, true, true]),
            (json!({"scopes": ["BestEffort"]}), [true, true, false, false, true]),
            (json!({"scopes": ["NotBestEffort", "NotTerminating"]}), [false, false, true, true, false]),
            (json!({"scopes": ["CrossNamespacePodAffinity"]}), [false, false, false, false, true]),
            (json!({"scopeSelector": {"matchExpressions": [{"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]}}), [false, false, false, true, false]),
            (json!({"scopeSelector": {"matchExpressions": [{"scopeName": "PriorityClass", "operator": "NotIn", "values": ["high"]}]}}), [true, true, true, false, true]),
            (json!({"scopeSelector": {"matchExpressions": [{"scopeName": "PriorityClass", "operator": "Exists"}]}}), [false, false, false, true, false]),
            (json!({"scopeSelector": {"matchExpressions": [{"scopeName": "BestEffort", "operator": "DoesNotExist"}]}}), [false, false, true, true, false]),
        ];
        for (spec, want) in table {
            let q = quota(spec.clone());
            let got: Vec<bool> = [&plain, &terminating, &burstable, &high, &cross].iter().map(|p| tracks(&q, true, *p)).collect();
            assert_eq!(got, want, "{spec}");
        }
        // A scoped quota tracks pods only.
        assert!(!tracks(&quota(json!({"scopes": ["NotTerminating"]})), false, &json!({})));
        assert!(tracks(&quota(json!({})), false, &json!({})));
    }

    #[test]
    fn bad_scopes_are_refused_with_kubernetes_words() {
        let v = validate(&json!({"spec": {"scopes": ["Nope"], "scopeSelector": {"matchExpressions": [
            {"scopeName": "BestEffort", "operator": "In", "values": ["x"]},
            {"scopeName": "PriorityClass", "operator": "In"},
            {"scopeName": "PriorityClass", "operator": "Exists", "values": ["x"]},
            {"scopeName": "PriorityClass", "operator": "Gt"}
        ]}}}));
        let fields: Vec<&str> = v.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, [
            "spec.scopes[0]",
            "spec.scopeSelector.matchExpressions[0].operator",
            "spec.scopeSelector.matchExpressions[1].values",
            "spec.scopeSelector.matchExpressions[2].values",
            "spec.scopeSelector.matchExpressions[3].operator",
        ]);
        assert!(v[0].1.starts_with("Unsupported value: \"Nope\": supported values: \"Terminating\""), "{}", v[0].1);
        assert!(validate(&json!({"spec": {"scopes": ["BestEffort"], "scopeSelector": {"matchExpressions": [{"scopeName": "PriorityClass", "operator": "In", "values": ["a"]}]}}})).is_empty());
    }
}
