//! The authorization reviews: may a user do this (`SelfSubjectAccessReview`, `kubectl auth
//! can-i`; `SubjectAccessReview` and `LocalSubjectAccessReview` for another user, as webhook
//! authorizers and controllers ask), and what may the caller do in a namespace
//! (`SelfSubjectRulesReview`, `can-i --list`). Each answers as the request path would: the
//! Node authorizer for kubelets, then `system:masters`, then RBAC.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::authn::UserInfo;
use crate::handlers::AppState;
use crate::rbac::{Attributes, MASTERS, Target, authorized};
use crate::status::ApiError;

/// The caller and the body of a review request (JSON, YAML or kubectl's protobuf).
async fn read_review(req: Request) -> Result<(Arc<UserInfo>, Value), ApiError> {
    let user = req.extensions().get::<Arc<UserInfo>>().cloned().ok_or_else(ApiError::unauthorized)?;
    let ctype = req.headers().get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let body = axum::body::to_bytes(req.into_body(), 1 << 20).await.map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
    Ok((user, crate::handlers::parse_body(&ctype, &body)?))
}

/// The attributes a review's spec asks about; `kind` names the review in errors.
fn attributes_of(kind: &str, spec: &Value) -> Result<Attributes, ApiError> {
    let s = |v: &Value, k: &str| v[k].as_str().unwrap_or("").to_string();
    let a = if let Some(r) = spec.get("resourceAttributes").filter(|r| r.is_object()) {
        Attributes {
            verb: s(r, "verb"),
            target: Target::Resource { group: s(r, "group"), resource: s(r, "resource"), subresource: s(r, "subresource"), namespace: s(r, "namespace"), name: s(r, "name") },
        }
    } else if let Some(n) = spec.get("nonResourceAttributes").filter(|r| r.is_object()) {
        Attributes { verb: s(n, "verb"), target: Target::NonResource { path: s(n, "path") } }
    } else {
        return Err(ApiError::invalid("authorization.k8s.io", kind, "", vec![("spec.resourceAttributes".into(), "exactly one of nonResourceAttributes or resourceAttributes must be specified".into())]));
    };
    if a.verb.is_empty() {
        return Err(ApiError::invalid("authorization.k8s.io", kind, "", vec![("spec.resourceAttributes.verb".into(), "Required value".into())]));
    }
    Ok(a)
}

/// The decision and its reason for `user` doing `a`.
async fn decide(st: &AppState, user: &UserInfo, a: &Attributes) -> Value {
    // A kubelet's request is the Node authorizer's first, as in the authorize middleware.
    let by_node = match crate::node_authz::node_of(user) {
        Some(node) => crate::node_authz::authorize(st, node, a, "").await == crate::node_authz::Decision::Allow,
        None => false,
    };
    let allowed = by_node || authorized(&st.rbac.index(), user, a);
    let mut status = json!({ "allowed": allowed });
    if allowed {
        status["reason"] = json!(if by_node { "allowed by the Node authorizer" } else if user.groups.iter().any(|g| g == MASTERS) { "the user is in system:masters" } else { "allowed by RBAC" });
    }
    status
}

fn created(kind: &str, metadata: Value, spec: &Value, status: Value) -> Response {
    let out = json!({ "kind": kind, "apiVersion": "authorization.k8s.io/v1", "metadata": metadata, "spec": spec, "status": status });
    (axum::http::StatusCode::CREATED, axum::Json(out)).into_response()
}

/// `POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews`: may the caller do this?
pub async fn self_subject_access_review(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let (user, review) = match read_review(req).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let a = match attributes_of("SelfSubjectAccessReview", &review["spec"]) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let status = decide(&st, &user, &a).await;
    created("SelfSubjectAccessReview", json!({ "creationTimestamp": null }), &review["spec"], status)
}

/// `POST /apis/authorization.k8s.io/v1/subjectaccessreviews` and
/// `.../namespaces/{ns}/localsubjectaccessreviews`: may `spec.user` in `spec.groups` do this?
/// (A LocalSubjectAccessReview asks within its namespace only.)
pub async fn subject_access_review(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let local_ns = {
        let parts: Vec<&str> = req.uri().path().split('/').collect();
        // /apis/authorization.k8s.io/v1/namespaces/{ns}/localsubjectaccessreviews
        (parts.len() == 7 && parts[4] == "namespaces" && parts[6] == "localsubjectaccessreviews").then(|| parts[5].to_string())
    };
    let kind = if local_ns.is_some() { "LocalSubjectAccessReview" } else { "SubjectAccessReview" };
    let (_, review) = match read_review(req).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let spec = &review["spec"];
    let a = match attributes_of(kind, spec) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    if let (Some(ns), Target::Resource { namespace, .. }) = (&local_ns, &a.target)
        && namespace != ns
    {
        return ApiError::bad_request(format!("spec.resourceAttributes.namespace must match the namespace of the request ({ns:?}), not {namespace:?}")).into_response();
    }
    let name = spec["user"].as_str().unwrap_or("");
    let groups: Vec<String> = spec["groups"].as_array().into_iter().flatten().filter_map(|g| g.as_str().map(str::to_string)).collect();
    if name.is_empty() && groups.is_empty() {
        return ApiError::invalid("authorization.k8s.io", kind, "", vec![("spec.user".into(), "at least one of user or group must be specified".into())]).into_response();
    }
    let user = UserInfo { name: name.to_string(), groups, uid: spec["uid"].as_str().unwrap_or("").to_string(), extra: Default::default() };
    let status = decide(&st, &user, &a).await;
    let metadata = match &local_ns {
        Some(ns) => json!({ "namespace": ns, "creationTimestamp": null }),
        None => json!({ "creationTimestamp": null }),
    };
    created(kind, metadata, spec, status)
}

/// `POST /apis/authorization.k8s.io/v1/selfsubjectrulesreviews`: what may the caller do in
/// a namespace (`kubectl auth can-i --list`).
pub async fn self_subject_rules_review(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let (user, review) = match read_review(req).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let namespace = review["spec"]["namespace"].as_str().unwrap_or("").to_string();
    let (res, non) = st.rbac.index().rules_for(&user, &namespace);
    let out = json!({
        "kind": "SelfSubjectRulesReview",
        "apiVersion": "authorization.k8s.io/v1",
        "metadata": { "creationTimestamp": null },
        "spec": { "namespace": namespace },
        "status": { "resourceRules": res, "nonResourceRules": non, "incomplete": false },
    });
    (axum::http::StatusCode::CREATED, axum::Json(out)).into_response()
}
