//! Custom resources of CRDs with several versions: an object is stored at the CRD's storage
//! version and served at the version asked for, converted by the CRD's `spec.conversion`:
//! `None` changes only `apiVersion` (as Kubernetes), `Webhook` sends a ConversionReview to
//! the CRD's conversion webhook (through the admission webhooks' client, `webhook::call`).
//! Writes convert to the storage version before the store (`to_storage`), reads to the
//! version of the request (`to_version`), and every answer of such a resource passes
//! through `respond` (objects, lists, watch events), which converts what is not at the
//! requested version yet.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::handlers::AppState;
use crate::status::ApiError;
use crate::webhook::Hook;

pub enum Strategy {
    None,
    Webhook(Arc<Hook>),
}

/// How a CRD's objects change version.
pub struct Conversion {
    /// `group/version` of the storage version.
    pub storage: String,
    pub strategy: Strategy,
    /// The CRD's name (errors name it).
    pub crd: String,
}

impl std::fmt::Debug for Conversion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conversion").field("storage", &self.storage).field("webhook", &matches!(self.strategy, Strategy::Webhook(_))).finish()
    }
}

/// A CRD's conversion, when it has more than one version.
pub fn of_crd(crd: &Value) -> Option<Arc<Conversion>> {
    let spec = &crd["spec"];
    let versions = spec["versions"].as_array()?;
    if versions.len() < 2 {
        return None;
    }
    let storage = versions.iter().find(|v| v["storage"].as_bool() == Some(true))?["name"].as_str()?;
    let strategy = match spec["conversion"]["strategy"].as_str() {
        Some("Webhook") => {
            let w = json!({"name": crd["metadata"]["name"], "clientConfig": spec["conversion"]["webhook"]["clientConfig"], "timeoutSeconds": 30});
            Strategy::Webhook(Arc::new(Hook::compile(&w, false)))
        }
        _ => Strategy::None,
    };
    Some(Arc::new(Conversion { storage: format!("{}/{storage}", spec["group"].as_str()?), strategy, crd: crd["metadata"]["name"].as_str().unwrap_or("").to_string() }))
}

/// Converts the objects that are not at `to` (a `group/version`).
pub async fn convert(st: &AppState, c: &Conversion, objects: Vec<&mut Value>, to: &str) -> Result<(), ApiError> {
    let mut pending: Vec<&mut Value> = objects.into_iter().filter(|o| o.is_object() && o["apiVersion"].as_str() != Some(to)).collect();
    if pending.is_empty() {
        return Ok(());
    }
    let hook = match &c.strategy {
        Strategy::None => {
            for o in pending {
                o["apiVersion"] = json!(to);
            }
            return Ok(());
        }
        Strategy::Webhook(h) => h,
    };
    let failed = |why: String| ApiError::internal(format!("conversion webhook for {} failed: {why}", c.crd));
    let uid = crate::object::new_uid();
    let review = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "ConversionReview", "request": {"uid": uid, "desiredAPIVersion": to, "objects": pending.iter().map(|o| &**o).collect::<Vec<_>>()}});
    let body = st.post_to_webhook(hook, serde_json::to_vec(&review).unwrap_or_default()).await.map_err(failed)?;
    let answer: Value = serde_json::from_slice(&body).map_err(|e| failed(format!("the answer is not JSON: {e}")))?;
    let r = &answer["response"];
    if r["uid"].as_str() != Some(uid.as_str()) {
        return Err(failed(format!("expected response.uid={uid:?}, got {:?}", r["uid"].as_str().unwrap_or(""))));
    }
    if r["result"]["status"] != "Success" {
        return Err(failed(r["result"]["message"].as_str().unwrap_or("conversion failed without a message").to_string()));
    }
    let converted = r["convertedObjects"].as_array().ok_or_else(|| failed("response has no convertedObjects".into()))?;
    if converted.len() != pending.len() {
        return Err(failed(format!("returned {} objects, expected {}", converted.len(), pending.len())));
    }
    for (o, mut n) in pending.iter_mut().zip(converted.iter().cloned()) {
        if n["apiVersion"].as_str() != Some(to) || n["kind"] != o["kind"] {
            return Err(failed(format!("invalid converted object: expected {to}, Kind={}", o["kind"].as_str().unwrap_or(""))));
        }
        // A webhook may change labels and annotations; the rest of the metadata stays.
        let mut meta = o["metadata"].clone();
        for k in ["labels", "annotations"] {
            match n["metadata"].get(k) {
                Some(v) => meta[k] = v.clone(),
                None => {
                    if let Some(m) = meta.as_object_mut() {
                        m.remove(k);
                    }
                }
            }
        }
        n["metadata"] = meta;
        **o = n;
    }
    Ok(())
}

/// The objects of `kind` in an answer's document: itself, or a list's items (a Status, a
/// Table or metadata-only objects have none).
fn objects_of<'d>(doc: &'d mut Value, kind: &str) -> Vec<&'d mut Value> {
    if doc["kind"] == kind {
        vec![doc]
    } else if doc["kind"] == format!("{kind}List") {
        doc["items"].as_array_mut().map(|a| a.iter_mut().filter(|i| i["kind"] == kind).collect()).unwrap_or_default()
    } else {
        vec![]
    }
}

/// An answer for a resource of a converting CRD, with every object at `to`: a document
/// converted whole, a watch stream event by event. A conversion that fails in a watch ends it
/// with an ERROR event.
pub async fn respond(st: Arc<AppState>, c: Arc<Conversion>, to: String, kind: &'static str, resp: axum::response::Response, watch: bool) -> axum::response::Response {
    use axum::response::IntoResponse;
    use futures_util::StreamExt;
    let (mut parts, body) = resp.into_parts();
    let json = parts.headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|t| t.starts_with("application/json"));
    if !json {
        return axum::response::Response::from_parts(parts, body);
    }
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    if watch {
        let pending = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let events = body.into_data_stream().then(move |chunk| {
            let (st, c, to, pending) = (st.clone(), c.clone(), to.clone(), pending.clone());
            async move {
                let Ok(chunk) = chunk else { return Ok::<_, std::convert::Infallible>(bytes::Bytes::new()) };
                let lines: Vec<Vec<u8>> = {
                    let mut p = pending.lock().unwrap();
                    p.extend_from_slice(&chunk);
                    let mut out = Vec::new();
                    while let Some(i) = p.iter().position(|b| *b == b'\n') {
                        out.push(p.drain(..=i).collect());
                    }
                    out
                };
                let mut out = Vec::new();
                for line in lines {
                    let Ok(mut ev) = serde_json::from_slice::<Value>(&line) else {
                        out.extend(line);
                        continue;
                    };
                    let is_object = matches!(ev["type"].as_str(), Some("ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK")) && ev["object"]["kind"] == kind;
                    if is_object && let Err(e) = convert(&st, &c, vec![&mut ev["object"]], &to).await {
                        ev = json!({"type": "ERROR", "object": e.to_json()});
                    }
                    out.extend(serde_json::to_vec(&ev).unwrap_or_default());
                    out.push(b'\n');
                }
                Ok(bytes::Bytes::from(out))
            }
        });
        return axum::response::Response::from_parts(parts, axum::body::Body::from_stream(events));
    }
    let Ok(bytes) = axum::body::to_bytes(body, 256 << 20).await else {
        return ApiError::internal("the answer was too large to convert").into_response();
    };
    let Ok(mut doc) = serde_json::from_slice::<Value>(&bytes) else {
        return axum::response::Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    if let Err(e) = convert(&st, &c, objects_of(&mut doc, kind), &to).await {
        return e.into_response();
    }
    axum::response::Response::from_parts(parts, axum::body::Body::from(serde_json::to_vec(&doc).unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd(versions: &[(&str, bool)], conversion: Value) -> Value {
        json!({"metadata": {"name": "widgets.example.com"}, "spec": {"group": "example.com", "conversion": conversion,
            "versions": versions.iter().map(|(n, s)| json!({"name": n, "served": true, "storage": s})).collect::<Vec<_>>()}})
    }

    #[test]
    fn only_crds_of_several_versions_convert_and_know_their_storage_version() {
        assert!(of_crd(&crd(&[("v1", true)], Value::Null)).is_none());
        let c = of_crd(&crd(&[("v1beta1", false), ("v1", true)], json!({"strategy": "None"}))).unwrap();
        assert_eq!(c.storage, "example.com/v1");
        assert!(matches!(c.strategy, Strategy::None));
        let w = of_crd(&crd(&[("v1beta1", false), ("v1", true)], json!({"strategy": "Webhook", "webhook": {"clientConfig": {"url": "https://127.0.0.1:1/convert", "caBundle": ""}, "conversionReviewVersions": ["v1"]}}))).unwrap();
        match &w.strategy {
            Strategy::Webhook(h) => assert_eq!(h.timeout, std::time::Duration::from_secs(30)),
            Strategy::None => panic!("a webhook conversion"),
        }
    }

    #[test]
    fn lists_convert_their_items_and_statuses_and_tables_nothing() {
        let mut list = json!({"kind": "WidgetList", "items": [{"kind": "Widget"}, {"kind": "Widget"}]});
        assert_eq!(objects_of(&mut list, "Widget").len(), 2);
        let mut one = json!({"kind": "Widget"});
        assert_eq!(objects_of(&mut one, "Widget").len(), 1);
        for other in [json!({"kind": "Status", "status": "Success"}), json!({"kind": "Table", "rows": []}), json!({"kind": "PartialObjectMetadataList", "items": [{"kind": "PartialObjectMetadata"}]})] {
            let mut o = other.clone();
            assert!(objects_of(&mut o, "Widget").is_empty(), "{other}");
        }
    }
}
