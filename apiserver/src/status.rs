//! Every error the API answers is a Kubernetes `Status` with the right code and reason.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<serde_json::Value>,
}

impl ApiError {
    pub(crate) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { code, reason, message: message.into(), details: None }
    }

    fn with_details(mut self, name: &str, group: &str, kind: &str) -> ApiError {
        let mut d = json!({ "name": name, "kind": kind });
        if !group.is_empty() {
            d["group"] = json!(group);
        }
        self.details = Some(d);
        self
    }

    /// 429 with one cause (an eviction a disruption budget refuses).
    pub fn too_many_requests(message: &str, cause_reason: &str, cause: &str) -> ApiError {
        let mut e = ApiError::new(429, "TooManyRequests", message);
        e.details = Some(json!({"causes": [{"reason": cause_reason, "message": cause}]}));
        e
    }

    /// 401, as Kubernetes words it for every authentication failure.
    pub fn unauthorized() -> ApiError {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(403, "Forbidden", message)
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    pub fn not_found(group: &str, resource: &str, name: &str) -> ApiError {
        let what = if group.is_empty() { resource.to_string() } else { format!("{resource}.{group}") };
        ApiError::new(404, "NotFound", format!("{what} \"{name}\" not found")).with_details(name, group, resource)
    }

    pub fn path_not_found(path: &str) -> ApiError {
        ApiError::new(404, "NotFound", format!("the server could not find the requested resource ({path})"))
    }

    pub fn already_exists(group: &str, resource: &str, name: &str) -> ApiError {
        let what = if group.is_empty() { resource.to_string() } else { format!("{resource}.{group}") };
        ApiError::new(409, "AlreadyExists", format!("{what} \"{name}\" already exists")).with_details(name, group, resource)
    }

    pub fn conflict(group: &str, resource: &str, name: &str) -> ApiError {
        let what = if group.is_empty() { resource.to_string() } else { format!("{resource}.{group}") };
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {what} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        )
        .with_details(name, group, resource)
    }

    /// 409 with Kubernetes' conflict message and a reason of the caller's.
    pub fn conflict_because(group: &str, resource: &str, name: &str, why: &str) -> ApiError {
        let what = if group.is_empty() { resource.to_string() } else { format!("{resource}.{group}") };
        ApiError::new(409, "Conflict", format!("Operation cannot be fulfilled on {what} \"{name}\": {why}")).with_details(name, group, resource)
    }

    /// 504: the request's deadline passed (Kubernetes' words).
    pub fn timeout() -> ApiError {
        ApiError::new(504, "Timeout", "Timeout: request did not complete within requested timeout - context deadline exceeded")
    }

    /// 422 with one cause per invalid field.
    pub fn invalid(group: &str, kind: &str, name: &str, causes: Vec<(String, String)>) -> ApiError {
        let summary: Vec<String> = causes.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        // Kubernetes' qualified kind: `Deployment.apps`, `Pod`.
        let what = if group.is_empty() { kind.to_string() } else { format!("{kind}.{group}") };
        let mut e = ApiError::new(422, "Invalid", format!("{what} \"{name}\" is invalid: {}", summary.join(", ")))
            .with_details(name, group, kind);
        if let Some(d) = e.details.as_mut() {
            d["causes"] = json!(causes
                .iter()
                .map(|(f, m)| json!({"reason": "FieldValueInvalid", "message": m, "field": f}))
                .collect::<Vec<_>>());
        }
        e
    }

    pub fn method_not_allowed(message: impl Into<String>) -> ApiError {
        ApiError::new(405, "MethodNotAllowed", message)
    }

    pub fn too_large(bytes: usize, max: usize) -> ApiError {
        ApiError::new(413, "RequestEntityTooLarge", format!("request body of {bytes} bytes is over the limit of {max} bytes"))
    }

    pub fn unsupported_media_type(ct: &str) -> ApiError {
        ApiError::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf, application/merge-patch+json, application/json-patch+json, application/strategic-merge-patch+json (got {ct:?})"))
    }

    pub fn gone(message: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(500, "InternalError", message)
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(503, "ServiceUnavailable", message)
    }

    /// 503 that tells the client when to retry (`details.retryAfterSeconds` and the
    /// `Retry-After` header, as Kubernetes sends them): a replica without a quorum.
    pub fn unavailable_retry(message: impl Into<String>, seconds: u32) -> ApiError {
        let mut e = ApiError::new(503, "ServiceUnavailable", message);
        e.details = Some(json!({"retryAfterSeconds": seconds}));
        e
    }

    /// Seconds the client should wait before retrying, when the error says so.
    pub fn retry_after(&self) -> Option<u64> {
        self.details.as_ref()?.get("retryAfterSeconds")?.as_u64()
    }

    pub fn to_json(&self) -> serde_json::Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
    }
}

impl From<storage::StoreError> for ApiError {
    fn from(e: storage::StoreError) -> ApiError {
        use storage::StoreError as E;
        match &e {
            E::TooLarge { bytes, max } => ApiError::too_large(*bytes, *max),
            E::Compacted { .. } => ApiError::gone(format!("too old resource version: {e}")),
            E::FutureRevision { .. } => ApiError::new(504, "Timeout", format!("Too large resource version: {e}")),
            E::Invalid(m) => ApiError::bad_request(m.clone()),
            E::NoSpace | E::Io(_) | E::Failed(_) | E::Shutdown => ApiError::unavailable(e.to_string()),
            E::Unavailable(_) | E::NoQuorum(_) => ApiError::unavailable_retry(e.to_string(), 1),
            E::LeaseNotFound(_) | E::LeaseExists(_) => ApiError::internal(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.to_json()).unwrap_or_default();
        let mut r = (StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), body).into_response();
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(s) = self.retry_after()
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }
}
