//! Dynamic admission: `MutatingWebhookConfiguration` and `ValidatingWebhookConfiguration`
//! (admissionregistration.k8s.io/v1), as Kubernetes' admission webhooks. The configurations
//! are compiled into a `Set` that follows their watch caches (`follow`); a write asks the set
//! which webhooks its request matches (`rules`), sends each an AdmissionReview (`review`)
//! over HTTPS (`call`), applies the mutating ones' patches in order and lets any validating
//! one deny. The request side (objects, users, namespace labels, Service endpoints) is in
//! `handlers/webhooks.rs`.
//!
//! Order and policy follow Kubernetes: configurations by name, webhooks in their order;
//! mutating webhooks one after another, then the built-in validation again, then the
//! validating webhooks together; `reinvocationPolicy: IfNeeded` calls a mutating webhook once
//! more when a later one changed the object; a webhook that cannot be called, times out or
//! answers nonsense fails the request under `failurePolicy: Fail` (the default) and is
//! skipped under `Ignore`, logged once a minute per webhook.

pub mod call;
pub mod review;
pub mod rules;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use rules::{Attributes, Rule};

pub const GROUP: &str = "admissionregistration.k8s.io";
const DEFAULT_TIMEOUT_SECONDS: u64 = 10;
const MAX_TIMEOUT_SECONDS: i64 = 30;
/// Kubernetes' bound on a webhook's `matchConditions`.
const MAX_MATCH_CONDITIONS: usize = 64;

/// A webhook's failures are logged at most once per this window.
const LOG_WINDOW: Duration = Duration::from_secs(60);

/// Where a webhook is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Url { url: String, host: String, port: u16, path: String },
    /// Called at a ready endpoint of the Service (its EndpointSlices), with the certificate
    /// checked for `NAME.NAMESPACE.svc`.
    Service { namespace: String, name: String, port: u16, path: String },
}

/// One webhook of a configuration, compiled.
pub struct Hook {
    pub name: String,
    rules: Vec<Rule>,
    namespace_selector: Value,
    object_selector: Value,
    pub fail_closed: bool,
    pub timeout: Duration,
    /// `reinvocationPolicy: IfNeeded` (mutating webhooks only).
    pub reinvoke: bool,
    /// `sideEffects` None or NoneOnDryRun: it may be called for a dry run.
    pub dry_run_safe: bool,
    pub endpoint: Result<Endpoint, String>,
    pub tls: Result<Arc<rustls::ClientConfig>, String>,
    /// `matchConditions`, CEL over `request`, `object` and `oldObject`.
    pub match_conditions: Vec<(String, crate::admission_policy::Expr)>,
}

impl Hook {
    pub(crate) fn compile(w: &Value, mutating: bool) -> Hook {
        let cc = &w["clientConfig"];
        let tls = match cc["caBundle"].as_str().filter(|b| !b.is_empty()) {
            Some(b) => {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.decode(b).map_err(|e| format!("caBundle is not base64: {e}")).and_then(|pem| call::tls_config(Some(&pem)))
            }
            None => call::tls_config(None),
        };
        Hook {
            name: w["name"].as_str().unwrap_or("").to_string(),
            rules: w["rules"].as_array().into_iter().flatten().map(Rule::from_json).collect(),
            namespace_selector: w["namespaceSelector"].clone(),
            object_selector: w["objectSelector"].clone(),
            fail_closed: w["failurePolicy"].as_str() != Some("Ignore"),
            timeout: Duration::from_secs(w["timeoutSeconds"].as_u64().filter(|t| (1..=MAX_TIMEOUT_SECONDS as u64).contains(t)).unwrap_or(DEFAULT_TIMEOUT_SECONDS)),
            reinvoke: mutating && w["reinvocationPolicy"].as_str() == Some("IfNeeded"),
            dry_run_safe: matches!(w["sideEffects"].as_str(), Some("None" | "NoneOnDryRun")),
            endpoint: endpoint(cc),
            tls,
            match_conditions: crate::admission_policy::named(&w["matchConditions"]),
        }
    }

    /// Whether the request's attributes match one of the webhook's rules.
    pub fn matches(&self, a: &Attributes) -> bool {
        self.rules.iter().any(|r| r.matches(a))
    }

    /// Whether it needs the namespace's labels to decide (a non-empty namespace selector).
    pub fn has_namespace_selector(&self) -> bool {
        !rules::is_empty(&self.namespace_selector)
    }

    pub fn selects_namespace(&self, labels: Option<&Value>) -> bool {
        rules::selects(&self.namespace_selector, labels)
    }

    /// The object selector is matched against the object and the old object: either will do.
    pub fn selects_object(&self, object: Option<&Value>, old: Option<&Value>) -> bool {
        if rules::is_empty(&self.object_selector) {
            return true;
        }
        [object, old].into_iter().flatten().any(|o| rules::selects(&self.object_selector, o["metadata"].get("labels")))
    }
}

/// A configuration's `clientConfig`: a URL (https, no user, query or fragment) or a Service.
fn endpoint(cc: &Value) -> Result<Endpoint, String> {
    match (cc.get("url").and_then(|u| u.as_str()), cc.get("service").filter(|s| s.is_object())) {
        (Some(url), None) => {
            let uri: hyper::Uri = url.parse().map_err(|e| format!("url {url:?}: {e}"))?;
            if uri.scheme_str() != Some("https") {
                return Err(format!("url {url:?}: 'https' is the only allowed URL scheme"));
            }
            let auth = uri.authority().ok_or_else(|| format!("url {url:?}: host must be specified"))?;
            if auth.as_str().contains('@') {
                return Err(format!("url {url:?}: user information is not permitted in the URL"));
            }
            if uri.query().is_some() || url.contains('#') {
                return Err(format!("url {url:?}: query parameters and fragments are not permitted"));
            }
            let host = auth.host().trim_start_matches('[').trim_end_matches(']').to_string();
            Ok(Endpoint::Url { url: url.to_string(), host, port: auth.port_u16().unwrap_or(443), path: uri.path().to_string() })
        }
        (None, Some(s)) => Ok(Endpoint::Service {
            namespace: s["namespace"].as_str().unwrap_or("").to_string(),
            name: s["name"].as_str().unwrap_or("").to_string(),
            port: s["port"].as_u64().and_then(|p| u16::try_from(p).ok()).unwrap_or(443),
            path: s["path"].as_str().filter(|p| !p.is_empty()).unwrap_or("/").to_string(),
        }),
        _ => Err("exactly one of url or service is required".into()),
    }
}

/// Every webhook, compiled: mutating and validating, each in Kubernetes' order.
#[derive(Default)]
pub struct Set {
    pub mutating: Vec<Arc<Hook>>,
    pub validating: Vec<Arc<Hook>>,
}

impl Set {
    pub fn is_empty(&self) -> bool {
        self.mutating.is_empty() && self.validating.is_empty()
    }
}

/// Compiles the configurations (objects as JSON), sorted by name.
pub fn compile(mutating: &[Value], validating: &[Value]) -> Set {
    let hooks = |configs: &[Value], m: bool| {
        let mut sorted: Vec<&Value> = configs.iter().collect();
        sorted.sort_by(|a, b| a["metadata"]["name"].as_str().cmp(&b["metadata"]["name"].as_str()));
        sorted.into_iter().flat_map(|c| c["webhooks"].as_array().into_iter().flatten()).map(|w| Arc::new(Hook::compile(w, m))).collect()
    };
    Set { mutating: hooks(mutating, true), validating: hooks(validating, false) }
}

/// The compiled webhooks of the server, and when each last had a failure logged.
#[derive(Default)]
pub struct Webhooks {
    set: RwLock<Arc<Set>>,
    logged: Mutex<HashMap<String, Instant>>,
}

impl Webhooks {
    pub fn current(&self) -> Arc<Set> {
        self.set.read().unwrap().clone()
    }

    pub fn set(&self, s: Set) {
        *self.set.write().unwrap() = Arc::new(s);
    }

    /// Logs a webhook's failure, at most once per `LOG_WINDOW` for each webhook.
    pub fn log_failure(&self, hook: &Hook, why: &str) {
        let now = Instant::now();
        let mut logged = self.logged.lock().unwrap();
        if logged.get(&hook.name).is_some_and(|t| now.duration_since(*t) < LOG_WINDOW) {
            return;
        }
        logged.insert(hook.name.clone(), now);
        let policy = if hook.fail_closed { "failing closed" } else { "failing open" };
        tracing::warn!(webhook = hook.name, error = why, "calling an admission webhook failed, {policy} (logged once a minute)");
    }
}

/// Keeps `st.webhooks` compiled from the two configuration resources' watch caches.
pub(crate) async fn follow(st: Arc<crate::handlers::AppState>) {
    let target = st.clone();
    crate::cached::follow(st, &[(GROUP, "mutatingwebhookconfigurations"), (GROUP, "validatingwebhookconfigurations")], move |o| {
        let set = compile(&o[0], &o[1]);
        tracing::debug!(mutating = set.mutating.len(), validating = set.validating.len(), "admission webhooks compiled");
        target.webhooks.set(set);
    })
    .await
}

/// Kubernetes' defaults for a webhook configuration (`mutating`: a MutatingWebhookConfiguration).
pub fn default_configuration(obj: &mut Value, mutating: bool) {
    for w in obj.get_mut("webhooks").and_then(Value::as_array_mut).into_iter().flatten() {
        let Some(m) = w.as_object_mut() else { continue };
        m.entry("failurePolicy").or_insert(json!("Fail"));
        m.entry("matchPolicy").or_insert(json!("Equivalent"));
        m.entry("namespaceSelector").or_insert(json!({}));
        m.entry("objectSelector").or_insert(json!({}));
        m.entry("timeoutSeconds").or_insert(json!(DEFAULT_TIMEOUT_SECONDS));
        if mutating {
            m.entry("reinvocationPolicy").or_insert(json!("Never"));
        }
        if let Some(s) = m.get_mut("clientConfig").and_then(|c| c.get_mut("service")).and_then(Value::as_object_mut) {
            s.entry("port").or_insert(json!(443));
        }
        for r in m.get_mut("rules").and_then(Value::as_array_mut).into_iter().flatten() {
            if let Some(r) = r.as_object_mut() {
                r.entry("scope").or_insert(json!("*"));
            }
        }
    }
}

/// Kubernetes' validation of a webhook configuration, the parts a broken webhook would
/// otherwise show only at its first call.
pub fn validate_configuration(obj: &Value, causes: &mut Vec<(String, String)>) {
    let mut names = std::collections::HashSet::new();
    for (i, w) in obj["webhooks"].as_array().into_iter().flatten().enumerate() {
        let at = |f: &str| format!("webhooks[{i}].{f}");
        let name = w["name"].as_str().unwrap_or("");
        if name.split('.').filter(|s| !s.is_empty()).count() < 3 || !crate::admission::is_dns1123_subdomain(name) {
            causes.push((at("name"), format!("Invalid value: {name:?}: should be a domain with at least three segments separated by dots")));
        } else if !names.insert(name) {
            causes.push((at("name"), format!("Duplicate value: {name:?}")));
        }
        if let Err(e) = endpoint(&w["clientConfig"]) {
            causes.push((at("clientConfig"), format!("Invalid value: {e}")));
        }
        match w["sideEffects"].as_str() {
            Some("None" | "NoneOnDryRun") => {}
            Some(other) => causes.push((at("sideEffects"), format!("Unsupported value: {other:?}: supported values: \"None\", \"NoneOnDryRun\""))),
            None => causes.push((at("sideEffects"), "Required value: must specify one of None, NoneOnDryRun".into())),
        }
        let versions: Vec<&str> = w["admissionReviewVersions"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect();
        if !versions.contains(&"v1") {
            causes.push((at("admissionReviewVersions"), "Invalid value: must include v1 (the AdmissionReview version this server sends)".into()));
        }
        if let Some(t) = w.get("timeoutSeconds").and_then(|t| t.as_i64())
            && !(1..=MAX_TIMEOUT_SECONDS).contains(&t)
        {
            causes.push((at("timeoutSeconds"), format!("Invalid value: {t}: the timeout value must be between 1 and 30 seconds")));
        }
        for (f, allowed) in [("failurePolicy", &["Ignore", "Fail"][..]), ("matchPolicy", &["Exact", "Equivalent"]), ("reinvocationPolicy", &["Never", "IfNeeded"])] {
            if let Some(v) = w.get(f).and_then(|v| v.as_str())
                && !allowed.contains(&v)
            {
                causes.push((at(f), format!("Unsupported value: {v:?}: supported values: {}", allowed.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", "))));
            }
        }
        let conditions = w["matchConditions"].as_array().map_or(&[][..], |a| a.as_slice());
        if conditions.len() > MAX_MATCH_CONDITIONS {
            causes.push((at("matchConditions"), format!("Too many: {}: must have at most {MAX_MATCH_CONDITIONS} items", conditions.len())));
        }
        let mut condition_names = std::collections::HashSet::new();
        for (j, c) in conditions.iter().enumerate() {
            let name = c["name"].as_str().unwrap_or("");
            if name.is_empty() {
                causes.push((at(&format!("matchConditions[{j}].name")), "Required value".into()));
            } else if !condition_names.insert(name) {
                causes.push((at(&format!("matchConditions[{j}].name")), format!("Duplicate value: {name:?}")));
            }
            crate::admission_policy::check_expression(causes, at(&format!("matchConditions[{j}].expression")), c["expression"].as_str());
        }
        for (j, r) in w["rules"].as_array().into_iter().flatten().enumerate() {
            for op in r["operations"].as_array().into_iter().flatten() {
                if !matches!(op.as_str(), Some("*" | "CREATE" | "UPDATE" | "DELETE" | "CONNECT")) {
                    causes.push((at(&format!("rules[{j}].operations")), format!("Unsupported value: {op}: supported values: \"*\", \"CONNECT\", \"CREATE\", \"DELETE\", \"UPDATE\"")));
                }
            }
            if let Some(s) = r["scope"].as_str()
                && !matches!(s, "*" | "Cluster" | "Namespaced")
            {
                causes.push((at(&format!("rules[{j}].scope")), format!("Unsupported value: {s:?}: supported values: \"*\", \"Cluster\", \"Namespaced\"")));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook(name: &str, client: Value) -> Value {
        json!({"name": name, "clientConfig": client, "sideEffects": "None", "admissionReviewVersions": ["v1"],
               "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}]})
    }

    #[test]
    fn configurations_compile_in_name_order_with_kubernetes_defaults() {
        let cfg = |n: &str, hooks: Vec<Value>| json!({"metadata": {"name": n}, "webhooks": hooks});
        let url = json!({"url": "https://127.0.0.1:8443/mutate"});
        let set = compile(&[cfg("b", vec![webhook("b1.x.io", url.clone())]), cfg("a", vec![webhook("a1.x.io", url.clone()), webhook("a2.x.io", url.clone())])], &[]);
        let names: Vec<&str> = set.mutating.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["a1.x.io", "a2.x.io", "b1.x.io"]);
        let h = &set.mutating[0];
        assert!(h.fail_closed && !h.reinvoke && h.dry_run_safe);
        assert_eq!(h.timeout, Duration::from_secs(10));
        assert_eq!(h.endpoint, Ok(Endpoint::Url { url: "https://127.0.0.1:8443/mutate".into(), host: "127.0.0.1".into(), port: 8443, path: "/mutate".into() }));
        let svc = Hook::compile(&webhook("s.x.io", json!({"service": {"namespace": "ns", "name": "hooks"}})), false);
        assert_eq!(svc.endpoint, Ok(Endpoint::Service { namespace: "ns".into(), name: "hooks".into(), port: 443, path: "/".into() }));
        let mut w = webhook("w.x.io", json!({"url": "https://[::1]/x"}));
        w["failurePolicy"] = json!("Ignore");
        w["reinvocationPolicy"] = json!("IfNeeded");
        w["timeoutSeconds"] = json!(3);
        let h = Hook::compile(&w, true);
        assert!(!h.fail_closed && h.reinvoke);
        assert_eq!(h.timeout, Duration::from_secs(3));
        assert!(matches!(h.endpoint, Ok(Endpoint::Url { ref host, port: 443, .. }) if host == "::1"));
        // Not a CA: the webhook is kept and every call to it fails (by its failurePolicy).
        let mut w = webhook("bad.x.io", json!({"url": "https://h/x", "caBundle": "bm90IGEgY2VydA=="}));
        assert!(Hook::compile(&w, false).tls.is_err());
        w["clientConfig"]["caBundle"] = json!("%%%");
        assert!(Hook::compile(&w, false).tls.unwrap_err().starts_with("caBundle is not base64"));

        let mut obj = cfg("c", vec![webhook("d.x.io", json!({"service": {"namespace": "n", "name": "s"}}))]);
        default_configuration(&mut obj, true);
        let d = &obj["webhooks"][0];
        assert_eq!((&d["failurePolicy"], &d["matchPolicy"], &d["timeoutSeconds"], &d["reinvocationPolicy"]), (&json!("Fail"), &json!("Equivalent"), &json!(10), &json!("Never")));
        assert_eq!((&d["clientConfig"]["service"]["port"], &d["rules"][0]["scope"], &d["namespaceSelector"]), (&json!(443), &json!("*"), &json!({})));
    }

    #[test]
    fn selectors_on_namespaces_and_objects() {
        let mut w = webhook("s.x.io", json!({"url": "https://h/x"}));
        let h = Hook::compile(&w, false);
        assert!(!h.has_namespace_selector() && h.selects_object(None, None));
        w["namespaceSelector"] = json!({"matchLabels": {"guard": "on"}});
        w["objectSelector"] = json!({"matchExpressions": [{"key": "hook", "operator": "Exists"}]});
        let h = Hook::compile(&w, false);
        assert!(h.has_namespace_selector());
        assert!(h.selects_namespace(Some(&json!({"guard": "on"}))) && !h.selects_namespace(Some(&json!({}))));
        let with = json!({"metadata": {"labels": {"hook": "1"}}});
        let without = json!({"metadata": {}});
        assert!(h.selects_object(Some(&with), None));
        assert!(h.selects_object(Some(&without), Some(&with)), "the old object's labels count too");
        assert!(!h.selects_object(Some(&without), None));
        assert!(!h.selects_object(None, None));
    }

    #[test]
    fn invalid_configurations_are_refused_with_their_fields() {
        let mut causes = vec![];
        let mut bad = webhook("short.io", json!({"url": "http://h/x"}));
        bad.as_object_mut().unwrap().remove("sideEffects");
        bad["timeoutSeconds"] = json!(31);
        bad["failurePolicy"] = json!("Maybe");
        bad["admissionReviewVersions"] = json!(["v1beta1"]);
        bad["rules"][0]["operations"] = json!(["PATCH"]);
        let dup = webhook("a.b.io", json!({"url": "https://h/x?q=1"}));
        let obj = json!({"webhooks": [bad, dup.clone(), dup]});
        validate_configuration(&obj, &mut causes);
        let fields: Vec<&str> = causes.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, [
            "webhooks[0].name", "webhooks[0].clientConfig", "webhooks[0].sideEffects", "webhooks[0].admissionReviewVersions",
            "webhooks[0].timeoutSeconds", "webhooks[0].failurePolicy", "webhooks[0].rules[0].operations",
            "webhooks[1].clientConfig", "webhooks[2].name", "webhooks[2].clientConfig",
        ]);
        assert!(causes[1].1.contains("'https' is the only allowed URL scheme"), "{causes:?}");
        assert!(causes[8].1.starts_with("Duplicate value"), "{causes:?}");
        let mut ok = vec![];
        validate_configuration(&json!({"webhooks": [webhook("a.b.io", json!({"service": {"namespace": "n", "name": "s"}}))]}), &mut ok);
        assert!(ok.is_empty(), "{ok:?}");
    }

    #[test]
    fn match_conditions_are_named_once_and_must_compile() {
        let mut w = webhook("a.b.io", json!({"url": "https://h/x"}));
        w["matchConditions"] = json!([
            {"name": "ok", "expression": "request.namespace != 'kube-system'"},
            {"name": "ok", "expression": "object.metadata.name.startsWith('x'"},
            {"expression": "true"},
        ]);
        let mut causes = vec![];
        validate_configuration(&json!({"webhooks": [w.clone()]}), &mut causes);
        let fields: Vec<&str> = causes.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["webhooks[0].matchConditions[1].name", "webhooks[0].matchConditions[1].expression", "webhooks[0].matchConditions[2].name"], "{causes:?}");
        assert!(causes[1].1.contains("compilation failed"), "{causes:?}");
        w["matchConditions"] = json!((0..65).map(|i| json!({"name": format!("c{i}"), "expression": "true"})).collect::<Vec<_>>());
        let mut causes = vec![];
        validate_configuration(&json!({"webhooks": [w]}), &mut causes);
        assert_eq!(causes, [("webhooks[0].matchConditions".to_string(), "Too many: 65: must have at most 64 items".to_string())]);
    }
}
