//! The LimitRanger admission plugin: a namespace's LimitRanges default and bound what its pods
//! and claims ask for. Kubernetes' rules (kubernetes/plugin/pkg/admission/limitranger):
//! - a LimitRange's `Container` item defaults `default` (limits) to `max` and
//!   `defaultRequest` to `default` when absent (at the LimitRange's own write);
//! - a new pod's containers (init containers too) get the `default` limits and
//!   `defaultRequest` requests they lack, noted in the `kubernetes.io/limit-ranger`
//!   annotation;
//! - then each container must meet `min` (request and limit at least), `max` (limit, and
//!   request, at most; a missing limit is refused) and `maxLimitRequestRatio`; a `Pod` item
//!   bounds the sums over the pod's containers; a `PersistentVolumeClaim` item bounds a
//!   claim's storage request. Every violation is listed in one Forbidden.
//!
//! Pure: the caller reads the namespace's LimitRanges.

use serde_json::{Map, Value, json};

fn q(v: &Value) -> Option<i64> {
    api::Quantity::parse(v.as_str()?).ok().map(|q| q.milli)
}

/// Defaults of a LimitRange object (on create and update).
pub fn default_object(obj: &mut Value) {
    for item in obj["spec"]["limits"].as_array_mut().into_iter().flatten() {
        if item["type"] != "Container" {
            continue;
        }
        if item.get("default").is_none_or(|d| d.is_null())
            && let Some(max) = item.get("max").filter(|m| m.is_object()).cloned()
        {
            item["default"] = max;
        }
        if item.get("defaultRequest").is_none_or(|d| d.is_null())
            && let Some(d) = item.get("default").filter(|m| m.is_object()).cloned()
        {
            item["defaultRequest"] = d;
        }
    }
}

fn items<'a>(ranges: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> {
    ranges.iter().flat_map(|r| r["spec"]["limits"].as_array().into_iter().flatten()).filter(move |i| i["type"] == kind)
}

/// Applies the `Container` defaults to a new pod; returns what was set, for the annotation.
fn apply_defaults(ranges: &[Value], pod: &mut Value) -> Vec<String> {
    let mut notes = Vec::new();
    for item in items(ranges, "Container").cloned().collect::<Vec<_>>() {
        for list in ["initContainers", "containers"] {
            // (get_mut: indexing would write `null` for a list the pod does not have.)
            for c in pod["spec"].get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
                let name = c["name"].as_str().unwrap_or("").to_string();
                if !c["resources"].is_object() {
                    c["resources"] = json!({});
                }
                for (field, what) in [("limits", "default"), ("requests", "defaultRequest")] {
                    let mut set = Vec::new();
                    for (res, v) in item[what].as_object().into_iter().flatten() {
                        if !c["resources"][field].is_object() {
                            c["resources"][field] = json!({});
                        }
                        if c["resources"][field].get(res).is_none() {
                            c["resources"][field][res] = v.clone();
                            set.push(res.clone());
                        }
                    }
                    if !set.is_empty() {
                        set.sort();
                        notes.push(format!("{} {} for {} {name}", set.join(", "), if field == "limits" { "limit" } else { "request" }, if list == "containers" { "container" } else { "init container" }));
                    }
                }
            }
        }
    }
    notes
}

/// The checks of one item's `min`, `max` and `maxLimitRequestRatio` against requests and
/// limits (`what` is "Container" or "Pod" in the messages).
fn check(item: &Value, requests: &Map<String, Value>, limits: &Map<String, Value>, what: &str, out: &mut Vec<String>) {
    for (res, min) in item["min"].as_object().into_iter().flatten() {
        let (Some(m), shown) = (q(min), min.as_str().unwrap_or("")) else { continue };
        match requests.get(res) {
            None => out.push(format!("minimum {res} usage per {what} is {shown}.  No request is specified")),
            Some(r) if q(r).is_some_and(|r| r < m) => out.push(format!("minimum {res} usage per {what} is {shown}, but request is {}", r.as_str().unwrap_or(""))),
            _ => {}
        }
        if let Some(l) = limits.get(res)
            && q(l).is_some_and(|l| l < m)
        {
            out.push(format!("minimum {res} usage per {what} is {shown}, but limit is {}", l.as_str().unwrap_or("")));
        }
    }
    for (res, max) in item["max"].as_object().into_iter().flatten() {
        let (Some(m), shown) = (q(max), max.as_str().unwrap_or("")) else { continue };
        match limits.get(res) {
            None => out.push(format!("maximum {res} usage per {what} is {shown}.  No limit is specified")),
            Some(l) if q(l).is_some_and(|l| l > m) => out.push(format!("maximum {res} usage per {what} is {shown}, but limit is {}", l.as_str().unwrap_or(""))),
            _ => {}
        }
        if let Some(r) = requests.get(res)
            && q(r).is_some_and(|r| r > m)
        {
            out.push(format!("maximum {res} usage per {what} is {shown}, but request is {}", r.as_str().unwrap_or("")));
        }
    }
    for (res, ratio) in item["maxLimitRequestRatio"].as_object().into_iter().flatten() {
        let Some(max) = q(ratio) else { continue };
        let (Some(l), Some(r)) = (limits.get(res).and_then(q), requests.get(res).and_then(q)) else {
            if limits.get(res).is_some() || requests.get(res).is_some() {
                out.push(format!("{res} max limit to request ratio per {what} is {}, but no request or limit is specified", ratio.as_str().unwrap_or("")));
            }
            continue;
        };
        if r > 0 && (l as f64 / r as f64) > max as f64 / 1000.0 {
            out.push(format!("{res} max limit to request ratio per {what} is {}, but provided ratio is {:.6}", ratio.as_str().unwrap_or(""), l as f64 / r as f64));
        }
    }
}

fn resources<'a>(c: &'a Value, field: &str) -> Map<String, Value> {
    c["resources"][field].as_object().cloned().unwrap_or_default()
}

/// LimitRanger for a pod being created: defaults, then the checks. Err: the violations.
pub fn admit_pod(ranges: &[Value], pod: &mut Value) -> Result<(), Vec<String>> {
    if ranges.is_empty() {
        return Ok(());
    }
    let notes = apply_defaults(ranges, pod);
    if !notes.is_empty() {
        pod["metadata"]["annotations"]["kubernetes.io/limit-ranger"] = json!(format!("LimitRanger plugin set: {}", notes.join("; ")));
    }
    let mut out = Vec::new();
    let containers: Vec<&Value> = ["initContainers", "containers"].iter().flat_map(|l| pod["spec"][*l].as_array().into_iter().flatten()).collect();
    for item in items(ranges, "Container") {
        for c in &containers {
            check(item, &resources(c, "requests"), &resources(c, "limits"), "Container", &mut out);
        }
    }
    // The pod's sums over its (regular) containers.
    let sum = |field: &str| {
        let mut m: std::collections::BTreeMap<String, i64> = Default::default();
        for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
            for (k, v) in c["resources"][field].as_object().into_iter().flatten() {
                *m.entry(k.clone()).or_default() += q(v).unwrap_or(0);
            }
        }
        m.into_iter().map(|(k, v)| (k.clone(), json!(show(&k, v)))).collect::<Map<String, Value>>()
    };
    let (req, lim) = (sum("requests"), sum("limits"));
    for item in items(ranges, "Pod") {
        check(item, &req, &lim, "Pod", &mut out);
    }
    if out.is_empty() { Ok(()) } else { Err(out) }
}

/// A milli-quantity shown as Kubernetes shows it: cpu in cores or millicores, the rest as
/// plain units.
fn show(res: &str, milli: i64) -> String {
    let q = api::Quantity::from_milli(milli);
    if res == "cpu" { q.cpu_string() } else if milli % 1000 == 0 { (milli / 1000).to_string() } else { format!("{milli}m") }
}

/// LimitRanger for a claim: its storage request within the `PersistentVolumeClaim` items.
pub fn admit_claim(ranges: &[Value], pvc: &Value) -> Result<(), Vec<String>> {
    let mut out = Vec::new();
    let requests = pvc["spec"]["resources"]["requests"].as_object().cloned().unwrap_or_default();
    let limits = pvc["spec"]["resources"]["limits"].as_object().cloned().unwrap_or_default();
    for item in items(ranges, "PersistentVolumeClaim") {
        let mut item = item.clone();
        // A claim has no limit: `max` bounds its request.
        if let Some(max) = item.as_object_mut().and_then(|m| m.remove("max")) {
            for (res, m) in max.as_object().into_iter().flatten() {
                if let Some(r) = requests.get(res)
                    && q(r).zip(q(m)).is_some_and(|(r, m)| r > m)
                {
                    out.push(format!("maximum {res} usage per PersistentVolumeClaim is {}, but request is {}", m.as_str().unwrap_or(""), r.as_str().unwrap_or("")));
                }
            }
        }
        check(&item, &requests, &limits, "PersistentVolumeClaim", &mut out);
    }
    if out.is_empty() { Ok(()) } else { Err(out) }
}

/// Kubernetes' Forbidden message for `violations` of object `name` of `resource`.
pub fn message(resource: &str, name: &str, violations: &[String]) -> String {
    if violations.len() == 1 { format!("{resource} \"{name}\" is forbidden: {}", violations[0]) } else { format!("{resource} \"{name}\" is forbidden: [{}]", violations.join(", ")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(items: Value) -> Value {
        let mut r = json!({"spec": {"limits": items}});
        default_object(&mut r);
        r
    }

    #[test]
    fn container_defaults_fill_what_is_missing_and_are_noted() {
        let r = range(json!([{"type": "Container", "max": {"cpu": "1"}, "defaultRequest": {"memory": "64Mi"}}]));
        assert_eq!(r["spec"]["limits"][0]["default"], json!({"cpu": "1"}), "default from max");
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "b", "resources": {"limits": {"cpu": "500m"}, "requests": {"cpu": "500m"}}}]}});
        admit_pod(&[r], &mut pod).unwrap();
        assert_eq!(pod["spec"]["containers"][0]["resources"], json!({"limits": {"cpu": "1"}, "requests": {"memory": "64Mi"}}));
        assert_eq!(pod["spec"]["containers"][1]["resources"]["limits"]["cpu"], "500m", "what is given stays");
        assert_eq!(pod["metadata"]["annotations"]["kubernetes.io/limit-ranger"], "LimitRanger plugin set: cpu limit for container a; memory request for container a; memory request for container b");
    }

    #[test]
    fn bounds_refuse_with_kubernetes_messages() {
        let r = range(json!([{"type": "Container", "min": {"memory": "100Mi"}, "max": {"cpu": "500m"}, "maxLimitRequestRatio": {"cpu": "2"}, "default": {"cpu": "500m"}, "defaultRequest": {"cpu": "100m"}},
            {"type": "Pod", "max": {"cpu": "700m"}}]));
        // As the API's defaulting leaves it: requests default to the limits given.
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "resources": {"limits": {"cpu": "1", "memory": "50Mi"}, "requests": {"cpu": "1", "memory": "50Mi"}}},
            {"name": "b", "resources": {"requests": {"memory": "200Mi"}}},
            {"name": "c"}]}});
        let errs = admit_pod(&[r.clone()], &mut pod).unwrap_err();
        for want in [
            "minimum memory usage per Container is 100Mi, but request is 50Mi",
            "minimum memory usage per Container is 100Mi, but limit is 50Mi",
            "maximum cpu usage per Container is 500m, but limit is 1",
            "maximum cpu usage per Container is 500m, but request is 1",
            "cpu max limit to request ratio per Container is 2, but provided ratio is 5.000000",
            "minimum memory usage per Container is 100Mi.  No request is specified",
            "maximum cpu usage per Pod is 700m, but limit is 2",
            "maximum cpu usage per Pod is 700m, but request is 1200m",
        ] {
            assert!(errs.iter().any(|e| e == want), "missing {want:?} in {errs:?}");
        }
        assert_eq!(errs.len(), 9, "{errs:?}");
        let mut fine = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "resources": {"requests": {"memory": "128Mi", "cpu": "300m"}}}]}});
        admit_pod(&[r], &mut fine).unwrap();
        assert_eq!(message("pods", "p", &["x".into()]), "pods \"p\" is forbidden: x");
        assert_eq!(message("pods", "p", &["x".into(), "y".into()]), "pods \"p\" is forbidden: [x, y]");
    }

    #[test]
    fn claims_are_bounded_by_their_storage_request() {
        let r = range(json!([{"type": "PersistentVolumeClaim", "min": {"storage": "1Gi"}, "max": {"storage": "10Gi"}}]));
        let pvc = |s: &str| json!({"spec": {"resources": {"requests": {"storage": s}}}});
        assert!(admit_claim(std::slice::from_ref(&r), &pvc("5Gi")).is_ok());
        assert_eq!(admit_claim(std::slice::from_ref(&r), &pvc("500Mi")).unwrap_err(), ["minimum storage usage per PersistentVolumeClaim is 1Gi, but request is 500Mi"]);
        assert_eq!(admit_claim(&[r], &pvc("20Gi")).unwrap_err(), ["maximum storage usage per PersistentVolumeClaim is 10Gi, but request is 20Gi"]);
    }
}
