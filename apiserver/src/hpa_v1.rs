//! `autoscaling/v1` HorizontalPodAutoscalers, served from the `autoscaling/v2` objects the
//! store holds (one stored version, as Kubernetes keeps): a request to v1 is converted to v2
//! and handled by the v2 resource, and its answer (object, list, watch events) converted back.
//!
//! v1 has one metric, `targetCPUUtilizationPercentage`: v2's CPU Resource Utilization metric.
//! A v1 write keeps what only v2 can say (other metrics, `behavior`) from the object it
//! replaces, where Kubernetes round-trips them through annotations; a v1 patch is applied to
//! the v1 form of the current object and written back as a v2 update at its revision.

use axum::response::IntoResponse;
use serde_json::{Value, json};

const CPU: &str = "cpu";

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
    let spec = &v1["spec"];
    let mut s = serde_json::Map::new();
    for k in ["scaleTargetRef", "minReplicas", "maxReplicas"] {
        if let Some(x) = spec.get(k) {
            s.insert(k.into(), x.clone());
        }
    }
    let mut metrics: Vec<Value> = cur.and_then(|c| c["spec"]["metrics"].as_array()).into_iter().flatten().filter(|m| !is_cpu_utilization(m)).cloned().collect();
    if let Some(p) = spec.get("targetCPUUtilizationPercentage").filter(|p| !p.is_null()) {
        metrics.insert(0, json!({"type": "Resource", "resource": {"name": CPU, "target": {"type": "Utilization", "averageUtilization": p}}}));
    }
    if !metrics.is_empty() {
        s.insert("metrics".into(), Value::Array(metrics));
    }
    if let Some(b) = cur.and_then(|c| c["spec"].get("behavior")) {
        s.insert("behavior".into(), b.clone());
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
}
