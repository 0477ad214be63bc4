//! An audit event as the request path records it, and its `audit.k8s.io/v1` Event JSON.
//!
//! The request path only moves what it already has into an `Event` (the request's
//! attributes, its user, two clock readings); the writer thread gives it an ID, formats the
//! timestamps and encodes it into its reused line buffer. Building a `serde_json::Value`
//! per event on the request path, as the first version did, cost a map allocation per field,
//! a UUID and two formatted timestamps per request, and then a second encoding.

use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::audit::{Level, Stage};
use crate::authn::UserInfo;

/// `objectRef`, moved out of the request's attributes.
#[derive(Clone, Debug, Default)]
pub struct ObjectRef {
    pub resource: String,
    pub namespace: String,
    pub name: String,
    pub api_group: String,
    pub api_version: String,
    pub subresource: String,
}

/// A request's audit ID (`auditID` in its events, the `Audit-Id` header of its answer): the
/// one its client sent in an `Audit-ID` header, as Kubernetes keeps it, else a new UUID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditId {
    New(uuid::Uuid),
    Given(Box<str>),
}

/// The longest `Audit-ID` a client may give; a longer (or empty) one is replaced.
pub const GIVEN_ID_MAX: usize = 128;

impl AuditId {
    /// The ID of a request with these headers.
    pub fn for_request(headers: &axum::http::HeaderMap) -> AuditId {
        match headers.get("audit-id").and_then(|v| v.to_str().ok()).map(str::trim) {
            Some(given) if !given.is_empty() && given.len() <= GIVEN_ID_MAX => AuditId::Given(given.into()),
            _ => AuditId::New(uuid::Uuid::new_v4()),
        }
    }

    /// The ID `init` gave the request (a new one for a request that did not pass it).
    pub fn of(req: &axum::extract::Request) -> AuditId {
        req.extensions().get::<AuditId>().cloned().unwrap_or_else(|| AuditId::New(uuid::Uuid::new_v4()))
    }

    /// The ID as its events and the `Audit-Id` header carry it.
    pub fn write(&self, out: &mut String) {
        out.clear();
        match self {
            AuditId::New(u) => out.push_str(u.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer())),
            AuditId::Given(g) => out.push_str(g),
        }
    }

    pub fn header_value(&self) -> axum::http::HeaderValue {
        let mut s = String::with_capacity(36);
        self.write(&mut s);
        // A given ID was a header value already; a UUID is ASCII.
        axum::http::HeaderValue::from_str(&s).unwrap_or(axum::http::HeaderValue::from_static("invalid"))
    }
}

/// One event, before encoding.
#[derive(Clone, Debug)]
pub struct Event {
    pub audit_id: AuditId,
    pub level: Level,
    pub stage: Stage,
    pub request_uri: String,
    pub verb: String,
    pub user: Arc<UserInfo>,
    pub impersonated_user: Option<String>,
    pub source_ip: Option<IpAddr>,
    pub user_agent: String,
    pub object_ref: Option<ObjectRef>,
    pub received: jiff::Timestamp,
    pub stage_time: jiff::Timestamp,
    /// The response's code, from `ResponseStarted`/`ResponseComplete` on.
    pub code: Option<u16>,
    /// Set when a request body was too large to carry.
    pub body_omitted: bool,
    pub request_object: Option<Value>,
    pub response_object: Option<Value>,
}

fn skip_empty(s: &&str) -> bool {
    s.is_empty()
}

#[derive(Serialize)]
struct WireUser<'a> {
    username: &'a str,
    #[serde(skip_serializing_if = "skip_empty")]
    uid: &'a str,
    groups: &'a [String],
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    extra: &'a std::collections::BTreeMap<String, Vec<String>>,
}

#[derive(Serialize)]
struct WireRef<'a> {
    resource: &'a str,
    #[serde(skip_serializing_if = "skip_empty")]
    namespace: &'a str,
    #[serde(skip_serializing_if = "skip_empty")]
    name: &'a str,
    #[serde(rename = "apiGroup", skip_serializing_if = "skip_empty")]
    api_group: &'a str,
    #[serde(rename = "apiVersion")]
    api_version: &'a str,
    #[serde(skip_serializing_if = "skip_empty")]
    subresource: &'a str,
}

#[derive(Serialize)]
struct WireImpersonated<'a> {
    username: &'a str,
}

#[derive(Serialize)]
struct WireMeta {}

#[derive(Serialize)]
struct WireStatus {
    metadata: WireMeta,
    code: u16,
}

#[derive(Serialize)]
struct WireAnnotations {
    #[serde(rename = "authorization.k8s.io/decision", skip_serializing_if = "Option::is_none")]
    decision: Option<&'static str>,
    #[serde(rename = "audit.capstan.dev/request-body", skip_serializing_if = "Option::is_none")]
    body: Option<&'static str>,
}

#[derive(Serialize)]
struct Wire<'a> {
    kind: &'static str,
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    level: &'static str,
    #[serde(rename = "auditID")]
    audit_id: &'a str,
    stage: &'static str,
    #[serde(rename = "requestURI")]
    request_uri: &'a str,
    verb: &'a str,
    user: WireUser<'a>,
    #[serde(rename = "impersonatedUser", skip_serializing_if = "Option::is_none")]
    impersonated_user: Option<WireImpersonated<'a>>,
    #[serde(rename = "sourceIPs")]
    source_ips: &'a [String],
    #[serde(rename = "userAgent")]
    user_agent: &'a str,
    #[serde(rename = "objectRef", skip_serializing_if = "Option::is_none")]
    object_ref: Option<WireRef<'a>>,
    #[serde(rename = "responseStatus", skip_serializing_if = "Option::is_none")]
    response_status: Option<WireStatus>,
    #[serde(rename = "requestObject", skip_serializing_if = "Option::is_none")]
    request_object: Option<&'a Value>,
    #[serde(rename = "responseObject", skip_serializing_if = "Option::is_none")]
    response_object: Option<&'a Value>,
    #[serde(rename = "requestReceivedTimestamp")]
    received: &'a str,
    #[serde(rename = "stageTimestamp")]
    stage_time: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<WireAnnotations>,
}

fn level_str(l: Level) -> &'static str {
    match l {
        Level::None => "None",
        Level::Metadata => "Metadata",
        Level::Request => "Request",
        Level::RequestResponse => "RequestResponse",
    }
}

/// Kubernetes' audit timestamp: RFC 3339 in UTC with microseconds.
pub fn micro(t: jiff::Timestamp, out: &mut String) {
    use std::fmt::Write;
    out.clear();
    let dt = t.to_zoned(jiff::tz::TimeZone::UTC).datetime();
    let _ = write!(out, "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z", dt.year(), dt.month(), dt.day(), dt.hour(), dt.minute(), dt.second(), dt.subsec_nanosecond() / 1000);
}

/// Scratch space the writer reuses from event to event.
#[derive(Default)]
pub struct Scratch {
    id: String,
    received: String,
    stage_time: String,
    ips: Vec<String>,
}

/// Appends `ev` to `out` as one line of JSON (no newline).
pub fn encode(ev: &Event, scratch: &mut Scratch, out: &mut Vec<u8>) -> serde_json::Result<()> {
    ev.audit_id.write(&mut scratch.id);
    micro(ev.received, &mut scratch.received);
    micro(ev.stage_time, &mut scratch.stage_time);
    scratch.ips.clear();
    if let Some(ip) = ev.source_ip {
        scratch.ips.push(ip.to_string());
    }
    // A request refused by authentication (401) never reached authorization.
    let decision = ev.code.filter(|c| *c != 401).map(|c| if c == 403 { "forbid" } else { "allow" });
    let body = ev.body_omitted.then_some("omitted: larger than 1 MiB");
    let wire = Wire {
        kind: "Event",
        api_version: "audit.k8s.io/v1",
        level: level_str(ev.level),
        audit_id: &scratch.id,
        stage: ev.stage.as_str(),
        request_uri: &ev.request_uri,
        verb: &ev.verb,
        user: WireUser { username: &ev.user.name, uid: &ev.user.uid, groups: &ev.user.groups, extra: &ev.user.extra },
        impersonated_user: ev.impersonated_user.as_deref().map(|u| WireImpersonated { username: u }),
        source_ips: &scratch.ips,
        user_agent: &ev.user_agent,
        object_ref: ev.object_ref.as_ref().map(|r| WireRef {
            resource: &r.resource,
            namespace: &r.namespace,
            name: &r.name,
            api_group: &r.api_group,
            api_version: &r.api_version,
            subresource: &r.subresource,
        }),
        response_status: ev.code.map(|code| WireStatus { metadata: WireMeta {}, code }),
        request_object: ev.request_object.as_ref(),
        response_object: ev.response_object.as_ref(),
        received: &scratch.received,
        stage_time: &scratch.stage_time,
        annotations: (decision.is_some() || body.is_some()).then_some(WireAnnotations { decision, body }),
    };
    serde_json::to_writer(out, &wire)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_encodes_as_kubernetes_writes_it() {
        let t = jiff::Timestamp::from_microsecond(1_800_000_000_123_456).unwrap();
        let ev = Event {
            audit_id: AuditId::New(uuid::Uuid::new_v4()),
            level: Level::Metadata,
            stage: Stage::ResponseComplete,
            request_uri: "/api/v1/namespaces/d/pods?limit=5".into(),
            verb: "list".into(),
            user: Arc::new(UserInfo::new("alice", vec!["devs".into()])),
            impersonated_user: None,
            source_ip: Some("127.0.0.1".parse().unwrap()),
            user_agent: "kubectl".into(),
            object_ref: Some(ObjectRef { resource: "pods".into(), namespace: "d".into(), api_version: "v1".into(), ..Default::default() }),
            received: t,
            stage_time: t,
            code: Some(200),
            body_omitted: false,
            request_object: None,
            response_object: None,
        };
        let mut out = Vec::new();
        encode(&ev, &mut Scratch::default(), &mut out).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["kind"], "Event");
        assert_eq!(v["level"], "Metadata");
        assert_eq!(v["stage"], "ResponseComplete");
        assert_eq!(v["user"], serde_json::json!({"username": "alice", "groups": ["devs"]}));
        assert_eq!(v["objectRef"], serde_json::json!({"resource": "pods", "namespace": "d", "apiVersion": "v1"}));
        assert_eq!(v["sourceIPs"], serde_json::json!(["127.0.0.1"]));
        assert_eq!(v["responseStatus"]["code"], 200);
        assert_eq!(v["annotations"]["authorization.k8s.io/decision"], "allow");
        assert_eq!(v["requestReceivedTimestamp"], "2027-01-15T08:00:00.123456Z");
        assert_eq!(v["auditID"].as_str().unwrap().len(), 36);
        assert!(v.get("requestObject").is_none());
        let AuditId::New(u) = &ev.audit_id else { unreachable!() };
        assert_eq!(v["auditID"], u.to_string(), "the request's ID, not a new one per event");
    }

    #[test]
    fn a_client_given_audit_id_is_kept_unless_empty_or_too_long() {
        let with = |v: &str| {
            let mut h = axum::http::HeaderMap::new();
            h.insert("audit-id", axum::http::HeaderValue::from_str(v).unwrap());
            AuditId::for_request(&h)
        };
        assert_eq!(with("trace-7f3a"), AuditId::Given("trace-7f3a".into()));
        assert!(matches!(with(""), AuditId::New(_)));
        assert!(matches!(with(&"x".repeat(GIVEN_ID_MAX + 1)), AuditId::New(_)));
        assert!(matches!(AuditId::for_request(&axum::http::HeaderMap::new()), AuditId::New(_)));
        let mut s = String::new();
        with("trace-7f3a").write(&mut s);
        assert_eq!(s, "trace-7f3a");
    }
}
