//! The `admission.k8s.io/v1` AdmissionReview a webhook is sent, and what its answer means:
//! allowed or denied (with the webhook's Status), a JSONPatch to apply, warnings. Plain data,
//! no I/O; a malformed answer is an error string that the caller treats by the webhook's
//! failurePolicy.

use base64::Engine;
use serde_json::{Value, json};

use super::rules::Attributes;
use crate::authn::UserInfo;
use crate::status::ApiError;

/// Everything a review says about the request, besides the objects.
pub struct Request<'a> {
    pub uid: &'a str,
    pub attrs: Attributes<'a>,
    /// The group, version and kind of the object sent: the resource's, or a subresource's
    /// own (`autoscaling/v1 Scale`, `policy/v1 Eviction`, `v1 Binding`).
    pub kind: (&'a str, &'a str, &'a str),
    pub name: &'a str,
    pub namespace: Option<&'a str>,
    pub user: Option<&'a UserInfo>,
    pub dry_run: bool,
}

/// The AdmissionReview body for a webhook.
pub fn encode(r: &Request, object: Option<&Value>, old: Option<&Value>) -> Vec<u8> {
    let a = &r.attrs;
    let kind = json!({"group": r.kind.0, "version": r.kind.1, "kind": r.kind.2});
    let resource = json!({"group": a.group, "version": a.version, "resource": a.resource});
    let mut req = json!({
        "uid": r.uid,
        "kind": kind,
        "resource": resource,
        "requestKind": kind,
        "requestResource": resource,
        "name": r.name,
        "operation": a.operation.as_str(),
        "userInfo": match r.user {
            Some(u) => {
                let mut ui = json!({"username": u.name, "groups": u.groups});
                if !u.uid.is_empty() {
                    ui["uid"] = json!(u.uid);
                }
                if !u.extra.is_empty() {
                    ui["extra"] = json!(u.extra);
                }
                ui
            }
            None => json!({"username": "system:anonymous", "groups": ["system:unauthenticated"]}),
        },
        "object": object,
        "oldObject": old,
        "dryRun": r.dry_run,
        "options": {"kind": a.operation.options_kind(), "apiVersion": "meta.k8s.io/v1"},
    });
    if !a.subresource.is_empty() {
        req["subResource"] = json!(a.subresource);
        req["requestSubResource"] = json!(a.subresource);
    }
    if let Some(ns) = r.namespace {
        req["namespace"] = json!(ns);
    }
    serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req})).unwrap_or_default()
}

/// A webhook's answer.
#[derive(Debug)]
pub struct Verdict {
    pub allowed: bool,
    /// The Status it gave with a denial.
    pub status: Value,
    pub patch: Option<json_patch::Patch>,
    pub warnings: Vec<String>,
}

/// Reads an answer to the review `uid`; an answer that is not one is an error (the reasons
/// are Kubernetes').
pub fn decode(body: &[u8], uid: &str) -> Result<Verdict, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("failed to decode the webhook response: {e}"))?;
    if v["apiVersion"] != "admission.k8s.io/v1" || v["kind"] != "AdmissionReview" {
        return Err(format!(
            "expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, got {}, Kind={}",
            v["apiVersion"].as_str().unwrap_or(""),
            v["kind"].as_str().unwrap_or("")
        ));
    }
    let r = v.get("response").filter(|r| r.is_object()).ok_or("webhook response was absent")?;
    if r["uid"].as_str() != Some(uid) {
        return Err(format!("expected response.uid={uid:?}, got {:?}", r["uid"].as_str().unwrap_or("")));
    }
    let allowed = r["allowed"].as_bool().ok_or("webhook response has no allowed field")?;
    let patch = match r.get("patch").and_then(|p| p.as_str()) {
        None | Some("") => None,
        Some(p) => {
            match r["patchType"].as_str() {
                Some("JSONPatch") => {}
                Some(t) => return Err(format!("webhook returned unsupported patchType {t:?}")),
                None => return Err("webhook returned response.patch but not response.patchType".into()),
            }
            let bytes = base64::engine::general_purpose::STANDARD.decode(p).map_err(|e| format!("webhook returned a patch that is not base64: {e}"))?;
            Some(serde_json::from_slice::<json_patch::Patch>(&bytes).map_err(|e| format!("webhook returned an invalid JSONPatch: {e}"))?)
        }
    };
    let warnings = r["warnings"].as_array().into_iter().flatten().filter_map(|w| w.as_str()).map(String::from).collect();
    Ok(Verdict { allowed, status: r.get("status").cloned().unwrap_or(Value::Null), patch, warnings })
}

/// The reasons a webhook may give that are kept as they are (`ApiError::reason` is static).
const REASONS: &[&str] = &["BadRequest", "Unauthorized", "Forbidden", "NotFound", "AlreadyExists", "Conflict", "Invalid", "Timeout", "TooManyRequests", "InternalError", "ServiceUnavailable", "Gone", "MethodNotAllowed"];

/// The error a denial answers (Kubernetes' `ToStatusErr`): the webhook's code (400 when it
/// gave none under 400), its reason, and its message after `admission webhook "NAME" denied
/// the request`.
pub fn denied(webhook: &str, status: &Value) -> ApiError {
    let by = format!("admission webhook {webhook:?} denied the request");
    let code = status["code"].as_u64().filter(|c| (400..600).contains(c)).unwrap_or(400) as u16;
    let reason = status["reason"].as_str().unwrap_or("");
    let message = match (status["message"].as_str().filter(|m| !m.is_empty()), reason) {
        (Some(m), _) => format!("{by}: {m}"),
        (None, r) if !r.is_empty() => format!("{by}: {r}"),
        _ => format!("{by} without explanation"),
    };
    ApiError { code, reason: REASONS.iter().find(|r| **r == reason).copied().unwrap_or(""), message, details: None }
}

/// A webhook that could not be called, or answered nonsense, under failurePolicy Fail: 500,
/// as Kubernetes' `failed calling webhook` internal error.
pub fn call_failed(webhook: &str, why: &str) -> ApiError {
    let cause = format!("failed calling webhook {webhook:?}: {why}");
    let mut e = ApiError::internal(format!("Internal error occurred: {cause}"));
    e.details = Some(json!({"causes": [{"message": cause}]}));
    e
}

#[cfg(test)]
mod tests {
    use super::super::rules::Operation;
    use super::*;

    fn review_answer(resp: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": resp})).unwrap()
    }

    #[test]
    fn a_review_names_the_request() {
        let user = UserInfo::new("alice", vec!["devs".into(), "system:authenticated".into()]);
        let r = Request {
            uid: "u1",
            attrs: Attributes { operation: Operation::Update, group: "", version: "v1", resource: "pods", subresource: "status", namespaced: true },
            kind: ("", "v1", "Pod"),
            name: "p",
            namespace: Some("ns"),
            user: Some(&user),
            dry_run: true,
        };
        let v: Value = serde_json::from_slice(&encode(&r, Some(&json!({"a": 1})), Some(&json!({"a": 0})))).unwrap();
        assert_eq!(v["kind"], "AdmissionReview");
        let q = &v["request"];
        assert_eq!(q["uid"], "u1");
        assert_eq!(q["kind"], json!({"group": "", "version": "v1", "kind": "Pod"}));
        assert_eq!(q["resource"], json!({"group": "", "version": "v1", "resource": "pods"}));
        assert_eq!((&q["subResource"], &q["namespace"], &q["name"], &q["operation"]), (&json!("status"), &json!("ns"), &json!("p"), &json!("UPDATE")));
        assert_eq!(q["userInfo"], json!({"username": "alice", "groups": ["devs", "system:authenticated"]}));
        assert_eq!((&q["object"], &q["oldObject"], &q["dryRun"]), (&json!({"a": 1}), &json!({"a": 0}), &json!(true)));
        assert_eq!(q["options"]["kind"], "UpdateOptions");
    }

    #[test]
    fn answers_are_read_or_refused_with_kubernetes_reasons() {
        let patch = base64::engine::general_purpose::STANDARD.encode(br#"[{"op":"add","path":"/metadata/labels","value":{"a":"b"}}]"#);
        let v = decode(&review_answer(json!({"uid": "u", "allowed": true, "patchType": "JSONPatch", "patch": patch, "warnings": ["w"]})), "u").unwrap();
        assert!(v.allowed && v.patch.is_some() && v.warnings == ["w"]);
        let v = decode(&review_answer(json!({"uid": "u", "allowed": false, "status": {"message": "no", "code": 403}})), "u").unwrap();
        assert!(!v.allowed);
        assert_eq!(v.status["message"], "no");
        for (body, why) in [
            (review_answer(json!({"uid": "other", "allowed": true})), "expected response.uid=\"u\", got \"other\""),
            (review_answer(json!({"uid": "u"})), "webhook response has no allowed field"),
            (review_answer(json!({"uid": "u", "allowed": true, "patch": patch})), "webhook returned response.patch but not response.patchType"),
            (review_answer(json!({"uid": "u", "allowed": true, "patchType": "Merge", "patch": patch})), "webhook returned unsupported patchType \"Merge\""),
            (br#"{"apiVersion":"v1","kind":"Status"}"#.to_vec(), "expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, got v1, Kind=Status"),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(), "webhook response was absent"),
        ] {
            assert_eq!(decode(&body, "u").unwrap_err(), why);
        }
        assert!(decode(b"<html>", "u").unwrap_err().starts_with("failed to decode the webhook response"));
        let bad = base64::engine::general_purpose::STANDARD.encode(b"{}");
        assert!(decode(&review_answer(json!({"uid": "u", "allowed": true, "patchType": "JSONPatch", "patch": bad})), "u").unwrap_err().starts_with("webhook returned an invalid JSONPatch"));
    }

    #[test]
    fn denials_keep_the_webhooks_code_and_message() {
        let e = denied("deny.example.com", &json!({"code": 403, "reason": "Forbidden", "message": "not on Fridays"}));
        assert_eq!((e.code, e.reason, e.message.as_str()), (403, "Forbidden", "admission webhook \"deny.example.com\" denied the request: not on Fridays"));
        let e = denied("d.example.com", &json!({"code": 200}));
        assert_eq!((e.code, e.message.as_str()), (400, "admission webhook \"d.example.com\" denied the request without explanation"));
        let e = denied("d.example.com", &json!({"reason": "NoReason"}));
        assert_eq!((e.code, e.reason, e.message.as_str()), (400, "", "admission webhook \"d.example.com\" denied the request: NoReason"));
        let e = call_failed("w.example.com", "failed to call webhook: connection refused");
        assert_eq!((e.code, e.message.as_str()), (500, "Internal error occurred: failed calling webhook \"w.example.com\": failed to call webhook: connection refused"));
    }
}
