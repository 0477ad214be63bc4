//! `autoscaling/v1` HorizontalPodAutoscalers, served from the `autoscaling/v2` objects the
//! store holds (one stored version, as Kubernetes keeps): a request to v1 is converted to v2
//! and handled by the v2 resource, and its answer (object, list, watch events) converted back.
//!
//! v1 has one metric, `targetCPUUtilizationPercentage`: v2's CPU Resource Utilization metric.
//! What only v2 can say travels in Kubernetes' annotations on the v1 object
//! (`autoscaling.alpha.kubernetes.io/metrics`, `current-metrics`, `conditions`, `behavior`,
//! the metrics in v1's MetricSpec form); a v1 write takes them back from its annotations, or,
//! without them, keeps them from the object it replaces. A v1 patch is applied to the v1 form
//! of the current object and written back as a v2 update at its revision.

use axum::response::IntoResponse;
use serde_json::{Value, json};

const CPU: &str = "cpu";
const METRICS: &str = "autoscaling.alpha.kubernetes.io/metrics";
const CURRENT_METRICS: &str = "autoscaling.alpha.kubernetes.io/current-metrics";
const CONDITIONS: &str = "autoscaling.alpha.kubernetes.io/conditions";
const BEHAVIOR: &str = "autoscaling.alpha.kubernetes.io/behavior";

/// `o` with `k: v` when `v` is set.
fn with(mut o: serde_json::Map<String, Value>, k: &str, v: &Value) -> serde_json::Map<String, Value> {
    if !v.is_null() {
        o.insert(k.into(), v.clone());
    }
    o
}

/// The v2 field of a metric type, as v1's annotations name it too.
fn field_of(ty: &str) -> &'static str {
    match ty {
        "Object" => "object",
        "Pods" => "pods",
        "Resource" => "resource",
        "ContainerResource" => "containerResource",
        _ => "external",
    }
}

/// A v2 metric (spec, or status when `current`) in v1's annotation form (Kubernetes'
/// `autoscalingv1.MetricSpec` / `MetricStatus`).
fn metric_to_v1(m: &Value, current: bool) -> Value {
    let ty = m["type"].as_str().unwrap_or("");
    let f = field_of(ty);
    let x = &m[f];
    let v = &x[if current { "current" } else { "target" }];
    let (val, avg, util) = if current { ("currentValue", "currentAverageValue", "currentAverageUtilization") } else { ("targetValue", "targetAverageValue", "targetAverageUtilization") };
    let e = serde_json::Map::new();
    let o = match ty {
        "Object" => with(with(with(with(with(e, "target", &x["describedObject"]), "metricName", &x["metric"]["name"]), "selector", &x["metric"]["selector"]), val, &v["value"]), "averageValue", &v["averageValue"]),
        "Pods" => with(with(with(e, "metricName", &x["metric"]["name"]), "selector", &x["metric"]["selector"]), avg, &v["averageValue"]),
        "Resource" | "ContainerResource" => with(with(with(with(e, "name", &x["name"]), "container", &x["container"]), util, &v["averageUtilization"]), avg, &v["averageValue"]),
        _ => with(with(with(with(e, "metricName", &x["metric"]["name"]), "metricSelector", &x["metric"]["selector"]), val, &v["value"]), avg, &v["averageValue"]),
    };
    json!({"type": ty, f: o})
}

/// A metric of v1's annotation form back in v2's.
fn metric_from_v1(m: &Value, current: bool) -> Value {
    let ty = m["type"].as_str().unwrap_or("");
    let f = field_of(ty);
    let x = &m[f];
    let (val, avg, util) = if current { ("currentValue", "currentAverageValue", "currentAverageUtilization") } else { ("targetValue", "targetAverageValue", "targetAverageUtilization") };
    let metric = |sel: &str| Value::Object(with(with(serde_json::Map::new(), "name", &x["metricName"]), "selector", &x[sel]));
    let target = |kind: &str, fields: &[(&str, &Value)]| {
        let mut t = serde_json::Map::new();
        if !current {
            t.insert("type".into(), json!(kind));
        }
        Value::Object(fields.iter().fold(t, |t, (k, v)| with(t, k, v)))
    };
    let key = if current { "current" } else { "target" };
    let body = match ty {
        "Object" => {
            let kind = if x[val].is_null() { "AverageValue" } else { "Value" };
            json!({"describedObject": x["target"], "metric": metric("selector"), key: target(kind, &[("value", &x[val]), ("averageValue", &x["averageValue"])])})
        }
        "Pods" => json!({"metric": metric("selector"), key: target("AverageValue", &[("averageValue", &x[avg])])}),
        "Resource" | "ContainerResource" => {
            let kind = if x[util].is_null() { "AverageValue" } else { "Utilization" };
            let mut r = json!({"name": x["name"], key: target(kind, &[("averageUtilization", &x[util]), ("averageValue", &x[avg])])});
            if !x["container"].is_null() {
                r["container"] = x["container"].clone();
            }
            r
        }
        _ => {
            let kind = if x[val].is_null() { "AverageValue" } else { "Value" };
            json!({"metric": metric("metricSelector"), key: target(kind, &[("value", &x[val]), ("averageValue", &x[avg])])})
        }
    };
    json!({"type": ty, f: body})
}

/// A v1 annotation's JSON, when there and valid.
fn annotation(v1: &Value, key: &str) -> Option<Value> {
    v1["metadata"]["annotations"][key].as_str().and_then(|s| serde_json::from_str(s).ok())
}

fn is_cpu_utilization(m: &Value) -> bool {
    m["type"] == "Resource" && m["resource"]["name"] == CPU && m["resource"]["target"]["type"] == "Utilization"
}

/// A v2 object as v1 sees it.
pub fn to_v1(v2: &Value) -> Value {
    let mut v1 = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler", "metadata": v2["metadata"].clone()});
    let spec = &v2["spec"];
    let mut s = serde_json::Map::new();
    for k in ["scaleTargetRef", "minReplicas", "maxReplicas"] {
        if let Some(x) = spec.get(k) {
            s.insert(k.into(), x.clone());
        }
    }
    if let Some(p) = spec["metrics"].as_array().into_iter().flatten().find(|m| is_cpu_utilization(m)).and_then(|m| m["resource"]["target"].get("averageUtilization")) {
        s.insert("targetCPUUtilizationPercentage".into(), p.clone());
    }
    v1["spec"] = Value::Object(s);
    // What only v2 says, in Kubernetes' annotations.
    let mut notes: Vec<(&str, String)> = Vec::new();
    let others: Vec<Value> = spec["metrics"].as_array().into_iter().flatten().filter(|m| !is_cpu_utilization(m)).map(|m| metric_to_v1(m, false)).collect();
    if !others.is_empty() {
        notes.push((METRICS, Value::Array(others).to_string()));
    }
    if let Some(b) = spec.get("behavior").filter(|b| !b.is_null()) {
        notes.push((BEHAVIOR, b.to_string()));
    }
    let current: Vec<Value> = v2["status"]["currentMetrics"].as_array().into_iter().flatten().filter(|m| !(m["type"] == "Resource" && m["resource"]["name"] == CPU)).map(|m| metric_to_v1(m, true)).collect();
    if !current.is_empty() {
        notes.push((CURRENT_METRICS, Value::Array(current).to_string()));
    }
    if let Some(c) = v2["status"].get("conditions").filter(|c| c.as_array().is_some_and(|a| !a.is_empty())) {
        notes.push((CONDITIONS, c.to_string()));
    }
    if !notes.is_empty() {
        if !v1["metadata"]["annotations"].is_object() {
            v1["metadata"]["annotations"] = json!({});
        }
        for (k, text) in notes {
            v1["metadata"]["annotations"][k] = json!(text);
        }
    }
    if let Some(st) = v2.get("status").filter(|s| s.is_object()) {
        let mut o = serde_json::Map::new();
        for k in ["observedGeneration", "lastScaleTime", "currentReplicas", "desiredReplicas"] {
            if let Some(x) = st.get(k) {
                o.insert(k.into(), x.clone());
            }
        }
        if let Some(p) = st["currentMetrics"].as_array().into_iter().flatten().find(|m| m["type"] == "Resource" && m["resource"]["name"] == CPU).and_then(|m| m["resource"]["current"].get("averageUtilization")) {
            o.insert("currentCPUUtilizationPercentage".into(), p.clone());
        }
        // Typed v1 clients require these two.
        o.entry("currentReplicas").or_insert(json!(0));
        o.entry("desiredReplicas").or_insert(json!(0));
        v1["status"] = Value::Object(o);
    }
    v1
}

/// A v1 object as the v2 the store keeps: with the metrics other than CPU utilization and the
/// `behavior` of `cur` (the v2 object it replaces, if any), and its status when the v1 one
/// says nothing more.
pub fn to_v2(v1: &Value, cur: Option<&Value>) -> Value {
    let mut v2 = json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": v1["metadata"].clone()});
    // The annotations carry what only v2 says; they are not stored.
    let (notes_metrics, notes_behavior, notes_current, notes_conditions) = (annotation(v1, METRICS), annotation(v1, BEHAVIOR), annotation(v1, CURRENT_METRICS), annotation(v1, CONDITIONS));
    if let Some(a) = v2["metadata"].get_mut("annotations").and_then(Value::as_object_mut) {
        for k in [METRICS, BEHAVIOR, CURRENT_METRICS, CONDITIONS] {
            a.remove(k);
        }
        if a.is_empty() {
            v2["metadata"].as_object_mut().map(|m| m.remove("annotations"));
        }
    }
    let spec = &v1["spec"];
    let mut s = serde_json::Map::new();
    for k in ["scaleTargetRef", "minReplicas", "maxReplicas"] {
        if let Some(x) = spec.get(k) {
            s.insert(k.into(), x.clone());
        }
    }
    let mut metrics: Vec<Value> = match notes_metrics.as_ref().and_then(|m| m.as_array()) {
        Some(list) => list.iter().map(|m| metric_from_v1(m, false)).collect(),
        None => cur.and_then(|c| c["spec"]["metrics"].as_array()).into_iter().flatten().filter(|m| !is_cpu_utilization(m)).cloned().collect(),
    };
    if let Some(p) = spec.get("targetCPUUtilizationPercentage").filter(|p| !p.is_null()) {
        metrics.insert(0, json!({"type": "Resource", "resource": {"name": CPU, "target": {"type": "Utilization", "averageUtilization": p}}}));
    }
    if !metrics.is_empty() {
        s.insert("metrics".into(), Value::Array(metrics));
    }
    if let Some(b) = notes_behavior.or_else(|| cur.and_then(|c| c["spec"].get("behavior")).cloned()) {
        s.insert("behavior".into(), b);
    }
    v2["spec"] = Value::Object(s);
    if let Some(st) = v1.get("status").filter(|s| s.is_object()) {
        let mut o = cur.and_then(|c| c["status"].as_object()).cloned().unwrap_or_default();
        for k in ["observedGeneration", "lastScaleTime", "currentReplicas", "desiredReplicas"] {
            match st.get(k) {
                Some(x) => o.insert(k.into(), x.clone()),
                None => o.remove(k),
            };
        }
        if let Some(list) = notes_current.as_ref().and_then(|m| m.as_array()) {
            o.insert("currentMetrics".into(), Value::Array(list.iter().map(|m| metric_from_v1(m, true)).collect()));
        }
        if let Some(c) = notes_conditions {
            o.insert("conditions".into(), c);
        }
        if let Some(p) = st.get("currentCPUUtilizationPercentage") {
            let mut others: Vec<Value> = o.get("currentMetrics").and_then(|m| m.as_array()).into_iter().flatten().filter(|m| !(m["type"] == "Resource" && m["resource"]["name"] == CPU)).cloned().collect();
            others.insert(0, json!({"type": "Resource", "resource": {"name": CPU, "current": {"averageUtilization": p}}}));
            o.insert("currentMetrics".into(), Value::Array(others));
        }
        v2["status"] = Value::Object(o);
    }
    v2
}

/// An answer of the v2 resource as v1 gives it: an HPA or a list of them converted, anything
/// else (a Status, a Table, watch events' other types) as it is.
pub fn answer_to_v1(v: &mut Value) {
    match v["kind"].as_str() {
        Some("HorizontalPodAutoscaler") => *v = to_v1(v),
        Some("HorizontalPodAutoscalerList") => {
            v["apiVersion"] = json!("autoscaling/v1");
            for i in v["items"].as_array_mut().into_iter().flatten() {
                *i = to_v1(i);
            }
        }
        _ => {}
    }
}

/// The body (and method and content type) of a v1 request, for the v2 resource: a create or
/// replace converted (a replace keeping what only v2 says of the current object); a patch
/// applied to the v1 form of the current object and sent as a replace at its revision (a write
/// in between makes it a 409, as a conflicting patch is); an apply converted as it is.
pub async fn request_to_v2(
    st: &crate::handlers::AppState,
    info: &crate::registry::ResourceInfo,
    namespace: Option<&str>,
    name: Option<&str>,
    method: &mut axum::http::Method,
    ctype: &mut String,
    body: bytes::Bytes,
) -> Result<bytes::Bytes, crate::status::ApiError> {
    use crate::patch::PatchType;
    use crate::status::ApiError;
    use axum::http::Method;
    if !matches!(*method, Method::POST | Method::PUT | Method::PATCH) || body.is_empty() {
        return Ok(body);
    }
    let parse = |b: &[u8]| -> Result<Value, ApiError> {
        serde_json::from_slice(b).or_else(|_| serde_norway::from_slice(b)).map_err(|e| ApiError::bad_request(format!("the request body does not decode: {e}")))
    };
    let current = || async {
        let Some(name) = name else { return Ok::<_, ApiError>(None) };
        let Some(kv) = st.store.get(info.key(namespace, name)).await? else { return Ok(None) };
        let v = crate::object::Stored::from_kv(&kv).and_then(|s| s.value_at(kv.mod_revision)).map_err(ApiError::internal)?;
        Ok(Some(v))
    };
    let out = match (method.clone(), PatchType::from_content_type(ctype)) {
        (Method::POST, _) => to_v2(&parse(&body)?, None),
        (Method::PUT, _) => to_v2(&parse(&body)?, current().await?.as_ref()),
        (Method::PATCH, Some(PatchType::Apply)) => to_v2(&parse(&body)?, None),
        (Method::PATCH, Some(ty)) => {
            let cur = current().await?.ok_or_else(|| ApiError::not_found(info.group, info.resource, name.unwrap_or("")))?;
            let mut doc = to_v1(&cur);
            let schemas = crate::schema::Schemas::get(&st.reg);
            let def = schemas.name_of(info.group, info.version, info.kind);
            crate::patch::apply_typed(ty, &mut doc, &body, Some(schemas), def).map_err(|e| if e.starts_with("invalid") { ApiError::bad_request(e) } else { ApiError::invalid(info.group, info.kind, name.unwrap_or(""), vec![("patch".into(), e)]) })?;
            let mut v2 = to_v2(&doc, Some(&cur));
            v2["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"].clone();
            *method = Method::PUT;
            *ctype = "application/json".into();
            v2
        }
        // A patch type this server does not know: the v2 resource refuses it (415).
        _ => return Ok(body),
    };
    Ok(bytes::Bytes::from(serde_json::to_vec(&out).unwrap_or_default()))
}

/// A v2 answer as v1 gives it: the JSON body converted (`answer_to_v1`), or for a watch each
/// event's object, line by line.
pub async fn response_to_v1(resp: axum::response::Response, watch: bool) -> axum::response::Response {
    use futures_util::StreamExt;
    let (parts, body) = resp.into_parts();
    let json = parts.headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|c| c.starts_with("application/json"));
    if !json {
        return axum::response::Response::from_parts(parts, body);
    }
    if watch {
        let mut pending = Vec::new();
        let lines = body.into_data_stream().map(move |chunk| {
            let Ok(chunk) = chunk else { return Ok::<_, std::convert::Infallible>(bytes::Bytes::new()) };
            pending.extend_from_slice(&chunk);
            let mut out = Vec::new();
            while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=i).collect();
                match serde_json::from_slice::<Value>(&line) {
                    Ok(mut ev) => {
                        if let Some(o) = ev.get_mut("object") {
                            answer_to_v1(o);
                        }
                        out.extend(serde_json::to_vec(&ev).unwrap_or_default());
                        out.push(b'\n');
                    }
                    Err(_) => out.extend(line),
                }
            }
            Ok(bytes::Bytes::from(out))
        });
        let mut parts = parts;
        parts.headers.remove(axum::http::header::CONTENT_LENGTH);
        return axum::response::Response::from_parts(parts, axum::body::Body::from_stream(lines));
    }
    let Ok(bytes) = axum::body::to_bytes(body, 256 << 20).await else {
        return crate::status::ApiError::internal("the answer was too large to convert to autoscaling/v1").into_response();
    };
    let mut parts = parts;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(mut v) => {
            answer_to_v1(&mut v);
            parts.headers.remove(axum::http::header::CONTENT_LENGTH);
            axum::response::Response::from_parts(parts, axum::body::Body::from(serde_json::to_vec(&v).unwrap_or_default()))
        }
        Err(_) => axum::response::Response::from_parts(parts, axum::body::Body::from(bytes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2() -> Value {
        json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "web", "namespace": "d", "resourceVersion": "7"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}, "minReplicas": 1, "maxReplicas": 5,
                "metrics": [
                    {"type": "Pods", "pods": {"metric": {"name": "rps"}, "target": {"type": "AverageValue", "averageValue": "10"}}},
                    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}},
                ],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}}},
            "status": {"currentReplicas": 2, "desiredReplicas": 3, "currentMetrics": [{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 75, "averageValue": "150m"}}}],
                "conditions": [{"type": "AbleToScale", "status": "True"}]}})
    }

    #[test]
    fn v1_sees_the_cpu_target_and_a_v1_write_keeps_what_only_v2_says() {
        let v1 = to_v1(&v2());
        assert_eq!(v1["apiVersion"], "autoscaling/v1");
        assert_eq!(v1["spec"], json!({"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}, "minReplicas": 1, "maxReplicas": 5, "targetCPUUtilizationPercentage": 60}));
        assert_eq!(v1["status"], json!({"currentReplicas": 2, "desiredReplicas": 3, "currentCPUUtilizationPercentage": 75}));
        assert_eq!(v1["metadata"]["resourceVersion"], "7");
        // A v1 client raises the target: the rps metric and behavior stay, CPU comes first.
        let mut edited = v1.clone();
        edited["spec"]["targetCPUUtilizationPercentage"] = json!(80);
        let back = to_v2(&edited, Some(&v2()));
        assert_eq!(back["apiVersion"], "autoscaling/v2");
        assert_eq!(back["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 80);
        assert_eq!(back["spec"]["metrics"][1]["pods"]["metric"]["name"], "rps");
        assert_eq!(back["spec"]["metrics"].as_array().unwrap().len(), 2);
        assert_eq!(back["spec"]["behavior"], v2()["spec"]["behavior"]);
        assert_eq!(back["status"]["conditions"], v2()["status"]["conditions"], "status a v1 client cannot see is kept");
        // Unchanged through v1 and back: the v2 object's spec is the same.
        assert_eq!(to_v2(&to_v1(&v2()), Some(&v2()))["spec"]["metrics"][0]["resource"], v2()["spec"]["metrics"][1]["resource"]);
        // A new v1 object without a target has no metrics (the controller's 80% default).
        let fresh = to_v2(&json!({"metadata": {"name": "x"}, "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "x"}, "maxReplicas": 3}}), None);
        assert!(fresh["spec"].get("metrics").is_none() && fresh.get("status").is_none());
        // A list converts item by item.
        let mut list = json!({"kind": "HorizontalPodAutoscalerList", "apiVersion": "autoscaling/v2", "items": [v2()]});
        answer_to_v1(&mut list);
        assert_eq!((list["apiVersion"].as_str(), list["items"][0]["spec"]["targetCPUUtilizationPercentage"].as_i64()), (Some("autoscaling/v1"), Some(60)));
        let mut status = json!({"kind": "Status", "code": 404});
        answer_to_v1(&mut status);
        assert_eq!(status["code"], 404);
    }

    #[test]
    fn what_only_v2_says_travels_in_kubernetes_annotations() {
        let mut full = v2();
        full["spec"]["metrics"].as_array_mut().unwrap().extend([
            json!({"type": "Object", "object": {"describedObject": {"apiVersion": "v1", "kind": "Service", "name": "front"}, "metric": {"name": "hits"}, "target": {"type": "Value", "value": "2k"}}}),
            json!({"type": "External", "external": {"metric": {"name": "queue", "selector": {"matchLabels": {"q": "jobs"}}}, "target": {"type": "AverageValue", "averageValue": "30"}}}),
            json!({"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}}),
        ]);
        full["status"]["currentMetrics"].as_array_mut().unwrap().push(json!({"type": "Pods", "pods": {"metric": {"name": "rps"}, "current": {"averageValue": "12"}}}));
        let v1 = to_v1(&full);
        let notes = &v1["metadata"]["annotations"];
        let metrics: Value = serde_json::from_str(notes[METRICS].as_str().unwrap()).unwrap();
        assert_eq!(metrics[0], json!({"type": "Pods", "pods": {"metricName": "rps", "targetAverageValue": "10"}}), "v1's MetricSpec form");
        assert_eq!(metrics[1], json!({"type": "Object", "object": {"target": {"apiVersion": "v1", "kind": "Service", "name": "front"}, "metricName": "hits", "targetValue": "2k"}}));
        assert_eq!(metrics[2], json!({"type": "External", "external": {"metricName": "queue", "metricSelector": {"matchLabels": {"q": "jobs"}}, "targetAverageValue": "30"}}));
        assert_eq!(metrics[3], json!({"type": "Resource", "resource": {"name": "memory", "targetAverageValue": "100Mi"}}));
        let current: Value = serde_json::from_str(notes[CURRENT_METRICS].as_str().unwrap()).unwrap();
        assert_eq!(current, json!([{"type": "Pods", "pods": {"metricName": "rps", "currentAverageValue": "12"}}]));
        assert!(notes[BEHAVIOR].is_string() && notes[CONDITIONS].is_string());
        // Back to v2 from the annotations alone (no current object): everything returns, and
        // the annotations are not stored.
        let back = to_v2(&v1, None);
        let mut want: Vec<Value> = full["spec"]["metrics"].as_array().unwrap().clone();
        let cpu = want.remove(1);
        want.insert(0, cpu);
        assert_eq!(back["spec"]["metrics"], Value::Array(want));
        assert_eq!(back["spec"]["behavior"], full["spec"]["behavior"]);
        assert_eq!(back["status"]["conditions"], full["status"]["conditions"]);
        assert_eq!(back["status"]["currentMetrics"][1], full["status"]["currentMetrics"][1]);
        assert!(back["metadata"].get("annotations").is_none(), "{}", back["metadata"]);
    }
}
