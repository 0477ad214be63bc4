//! Admission: a chain of mutating steps then validating steps, each a small [`Admission`]
//! implementation over JSON values; the handlers run the chain on every create and update.
//!
//! The standard chain: Kubernetes' defaults (pods, workloads, services, namespaces, CRDs);
//! names (DNS-1123 subdomain, or label for namespaces and services), label keys and values;
//! required fields of pods and workloads; fields immutable after creation.

use serde_json::{Value, json};

use crate::registry::ResourceInfo;
use crate::status::ApiError;

fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub(crate) fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

fn is_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.')
            && v.as_bytes()[0].is_ascii_alphanumeric()
            && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric())
}

fn is_label_key(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    prefix.is_none_or(is_dns1123_subdomain) && !name.is_empty() && is_label_value(name)
}

fn validate_meta(info: &ResourceInfo, obj: &Value, name: &str, causes: &mut Vec<(String, String)>) {
    let label_names = matches!(info.kind, "Namespace" | "Service");
    let ok = if label_names { is_dns1123_label(name) } else { is_dns1123_subdomain(name) };
    if !ok {
        let what = if label_names { "a lowercase RFC 1123 label" } else { "a lowercase RFC 1123 subdomain" };
        causes.push((
            "metadata.name".into(),
            format!("Invalid value: {name:?}: must be {what} (lowercase alphanumerics, '-' or '.', starting and ending with an alphanumeric)"),
        ));
    }
    if let Some(labels) = obj["metadata"].get("labels").and_then(|l| l.as_object()) {
        for (k, v) in labels {
            if !is_label_key(k) {
                causes.push(("metadata.labels".to_string(), format!("Invalid value: {k:?}: not a valid label key")));
            }
            match v.as_str() {
                Some(s) if is_label_value(s) => {}
                _ => causes.push(("metadata.labels".to_string(), format!("Invalid value: {v}: not a valid label value"))),
            }
        }
    }
}

fn validate_spec(info: &ResourceInfo, obj: &Value, causes: &mut Vec<(String, String)>) {
    match info.kind {
        "Pod" => {
            let containers = obj["spec"].get("containers").and_then(|c| c.as_array());
            match containers {
                None => causes.push(("spec.containers".into(), "Required value".into())),
                Some(cs) if cs.is_empty() => causes.push(("spec.containers".into(), "Required value".into())),
                Some(cs) => {
                    for (i, c) in cs.iter().enumerate() {
                        if c.get("name").and_then(|n| n.as_str()).is_none_or(|n| !is_dns1123_label(n)) {
                            causes.push((format!("spec.containers[{i}].name"), "Invalid value: must be a DNS-1123 label".into()));
                        }
                        if c.get("image").and_then(|n| n.as_str()).is_none_or(|n| n.is_empty()) {
                            causes.push((format!("spec.containers[{i}].image"), "Required value".into()));
                        }
                    }
                }
            }
            for list in ["initContainers", "ephemeralContainers"] {
                for (i, c) in obj["spec"][list].as_array().into_iter().flatten().enumerate() {
                    if c.get("name").and_then(|n| n.as_str()).is_none_or(|n| !is_dns1123_label(n)) {
                        causes.push((format!("spec.{list}[{i}].name"), "Invalid value: must be a DNS-1123 label".into()));
                    }
                }
            }
            for (i, v) in obj["spec"]["volumes"].as_array().into_iter().flatten().enumerate() {
                if v.get("name").and_then(|n| n.as_str()).is_none_or(|n| !is_dns1123_label(n)) {
                    causes.push((format!("spec.volumes[{i}].name"), "Invalid value: must be a DNS-1123 label".into()));
                }
            }
        }
        "ResourceQuota" => causes.extend(api::quota_scope::validate(obj)),
        "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration" if info.group == crate::webhook::GROUP => crate::webhook::validate_configuration(obj, causes),
        "ValidatingAdmissionPolicy" if info.group == crate::webhook::GROUP => crate::admission_policy::validate_policy(obj, causes),
        "ValidatingAdmissionPolicyBinding" if info.group == crate::webhook::GROUP => crate::admission_policy::validate_binding(obj, causes),
        "APIService" if info.group == crate::aggregator::GROUP => crate::aggregator::validate(obj, causes),
        "CronJob" => {
            let schedule = obj["spec"]["schedule"].as_str().unwrap_or("");
            if schedule.trim_start().starts_with("TZ=") || schedule.trim_start().starts_with("CRON_TZ=") {
                causes.push(("spec.schedule".into(), format!("Invalid value: {schedule:?}: cannot use TZ or CRON_TZ in schedule, use timeZone field instead")));
            }
            if let Some(tz) = obj["spec"]["timeZone"].as_str()
                && jiff::tz::TimeZone::get(tz).is_err()
            {
                causes.push(("spec.timeZone".into(), format!("Invalid value: {tz:?}: unknown time zone {tz}")));
            }
        }
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" => {
            if obj["spec"].get("selector").is_none() {
                causes.push(("spec.selector".into(), "Required value".into()));
            }
            if obj["spec"].get("replicas").and_then(|r| r.as_i64()).is_some_and(|r| r < 0) {
                causes.push(("spec.replicas".into(), "Invalid value: must be greater than or equal to 0".into()));
            }
        }
        "ReplicationController" => {
            let sel = obj["spec"]["selector"].as_object().cloned().unwrap_or_default();
            if sel.is_empty() {
                causes.push(("spec.selector".into(), "Required value".into()));
            } else if obj["spec"]["template"].is_object() && !sel.iter().all(|(k, v)| obj["spec"]["template"]["metadata"]["labels"][k] == *v) {
                causes.push(("spec.template.metadata.labels".into(), format!("Invalid value: {}: `selector` does not match template `labels`", obj["spec"]["template"]["metadata"]["labels"])));
            }
            if obj["spec"].get("replicas").and_then(|r| r.as_i64()).is_some_and(|r| r < 0) {
                causes.push(("spec.replicas".into(), "Invalid value: must be greater than or equal to 0".into()));
            }
        }
        _ => {}
    }
}

/// One admission step. Mutating steps all run before validating steps.
pub trait Admission: Send + Sync {
    /// Changes the object (defaulting). `old` is `None` on create.
    fn mutate(&self, _info: &ResourceInfo, _old: Option<&Value>, _obj: &mut Value) {}
    /// Adds (field, message) causes for what is invalid.
    fn validate(&self, _info: &ResourceInfo, _old: Option<&Value>, _obj: &Value, _causes: &mut Vec<(String, String)>) {}
}

struct Defaults;
impl Admission for Defaults {
    fn mutate(&self, info: &ResourceInfo, old: Option<&Value>, obj: &mut Value) {
        default(info, obj);
        // An update that leaves the allocated cluster IP out keeps it (as Kubernetes does).
        if let (Some(old), "Service") = (old, info.kind) {
            let empty = obj["spec"].get("clusterIP").and_then(|c| c.as_str()).is_none_or(|c| c.is_empty());
            if empty && obj.get("spec").is_some_and(|s| s.is_object()) {
                for f in ["clusterIP", "clusterIPs"] {
                    if let Some(v) = old["spec"].get(f) {
                        obj["spec"][f] = v.clone();
                    }
                }
            }
        }
    }
}

struct MetaAndSpec;
impl Admission for MetaAndSpec {
    fn validate(&self, info: &ResourceInfo, old: Option<&Value>, obj: &Value, causes: &mut Vec<(String, String)>) {
        let name = obj["metadata"].get("name").and_then(|n| n.as_str()).unwrap_or("");
        validate_meta(info, obj, name, causes);
        validate_spec(info, obj, causes);
        if info.kind == "Pod" && info.group.is_empty() && old.is_none() && obj["spec"]["ephemeralContainers"].as_array().is_some_and(|a| !a.is_empty()) {
            causes.push(("spec.ephemeralContainers".into(), "Forbidden: cannot be set on create".into()));
        }
        if info.kind == "Namespace" && info.group.is_empty() {
            causes.extend(crate::pod_security::label_errors(&obj["metadata"]["labels"]));
        }
    }
}

/// Fields that cannot change once set, as Kubernetes' validation refuses them.
struct Immutable;
impl Admission for Immutable {
    fn validate(&self, info: &ResourceInfo, old: Option<&Value>, new: &Value, causes: &mut Vec<(String, String)>) {
        let Some(old) = old else { return };
        let fixed: &[(&str, &[&str])] = match info.kind {
            "Pod" => &[("spec.nodeName", &["spec", "nodeName"])],
            "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" => &[("spec.selector", &["spec", "selector"])],
            "Job" => &[("spec.selector", &["spec", "selector"]), ("spec.completions", &["spec", "completions"])],
            "Service" => &[("spec.clusterIP", &["spec", "clusterIP"])],
            // Given once, by the node IPAM or the kubelet that registers with it.
            "Node" => &[("spec.podCIDR", &["spec", "podCIDR"]), ("spec.podCIDRs", &["spec", "podCIDRs"])],
            "PersistentVolumeClaim" => &[("spec.storageClassName", &["spec", "storageClassName"])],
            "ConfigMap" | "Secret" if old.get("immutable").and_then(|i| i.as_bool()) == Some(true) => {
                &[("data", &["data"]), ("binaryData", &["binaryData"])]
            }
            _ => &[],
        };
        for (field, path) in fixed {
            let get = |v: &Value| path.iter().try_fold(v, |cur, p| cur.get(p)).filter(|x| !x.is_null() && x.as_str() != Some("")).cloned();
            let (before, after) = (get(old), get(new));
            if before.is_some() && before != after {
                causes.push((field.to_string(), "Invalid value: field is immutable".into()));
            }
        }
        if info.kind == "Pod" && info.group.is_empty() && !pod_spec_update_allowed(&old["spec"], &new["spec"]) {
            causes.push(("spec".into(), POD_SPEC_UPDATE.into()));
        }
    }
}

/// Kubernetes' wording for a pod update that changes what it may not.
const POD_SPEC_UPDATE: &str = "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

/// Whether a pod's spec may go from `old` to `new`, as Kubernetes' ValidatePodUpdate allows:
/// container and init container images, activeDeadlineSeconds, terminationGracePeriodSeconds,
/// tolerations added (none removed or changed), scheduling gates removed, and the node set
/// once (by binding); nothing else.
fn pod_spec_update_allowed(old: &Value, new: &Value) -> bool {
    let mut a = old.clone();
    let set = |a: &mut Value, k: &str, v: Option<&Value>| {
        if let Some(o) = a.as_object_mut() {
            match v {
                Some(v) => {
                    o.insert(k.into(), v.clone());
                }
                None => {
                    o.remove(k);
                }
            }
        }
    };
    for list in ["containers", "initContainers"] {
        // (get_mut: indexing would insert the key.)
        let (Some(olds), Some(news)) = (a.get_mut(list).and_then(Value::as_array_mut), new[list].as_array()) else { continue };
        if olds.len() != news.len() {
            return false;
        }
        for (o, n) in olds.iter_mut().zip(news) {
            if let Some(o) = o.as_object_mut() {
                match n.get("image") {
                    Some(i) => o.insert("image".into(), i.clone()),
                    None => o.remove("image"),
                };
            }
        }
    }
    // Ephemeral containers change only through their subresource, which checks them
    // (`ephemeral_update`); the main resource keeps them as they were.
    for k in ["activeDeadlineSeconds", "terminationGracePeriodSeconds", "ephemeralContainers"] {
        set(&mut a, k, new.get(k));
    }
    let list = |v: &Value, k: &str| v[k].as_array().cloned().unwrap_or_default();
    let (old_tol, new_tol) = (list(old, "tolerations"), list(new, "tolerations"));
    if old_tol.iter().all(|t| new_tol.contains(t)) {
        set(&mut a, "tolerations", new.get("tolerations"));
    }
    let (old_gates, new_gates) = (list(old, "schedulingGates"), list(new, "schedulingGates"));
    if new_gates.iter().all(|g| old_gates.contains(g)) {
        set(&mut a, "schedulingGates", new.get("schedulingGates"));
    }
    if old["nodeName"].as_str().is_none_or(str::is_empty) {
        set(&mut a, "nodeName", new.get("nodeName"));
    }
    a == *new
}

/// The steps, mutating then validating.
pub struct Chain(Vec<Box<dyn Admission>>);

impl Chain {
    pub fn standard() -> Chain {
        Chain(vec![Box::new(Defaults), Box::new(MetaAndSpec), Box::new(Immutable)])
    }

    /// Runs every mutation, then every validation; 422 with all causes if any.
    pub fn admit(&self, info: &ResourceInfo, old: Option<&Value>, obj: &mut Value) -> Result<(), ApiError> {
        for step in &self.0 {
            step.mutate(info, old, obj);
        }
        let mut causes = Vec::new();
        for step in &self.0 {
            step.validate(info, old, obj, &mut causes);
        }
        if causes.is_empty() {
            Ok(())
        } else {
            let name = obj["metadata"].get("name").and_then(|n| n.as_str()).unwrap_or("");
            Err(ApiError::invalid(info.group, info.kind, name, causes))
        }
    }
}

impl Default for Chain {
    fn default() -> Self {
        Chain::standard()
    }
}

pub fn validate_create(info: &ResourceInfo, obj: &Value, name: &str) -> Result<(), ApiError> {
    let mut causes = Vec::new();
    validate_meta(info, obj, name, &mut causes);
    validate_spec(info, obj, &mut causes);
    if causes.is_empty() { Ok(()) } else { Err(ApiError::invalid(info.group, info.kind, name, causes)) }
}

fn set_default(v: &mut Value, key: &str, default: Value) {
    if let Some(m) = v.as_object_mut() {
        m.entry(key.to_string()).or_insert(default);
    }
}

fn default_pod_spec(spec: &mut Value) {
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "securityContext", json!({}));
    for list in ["containers", "initContainers"] {
        if let Some(cs) = spec.get_mut(list).and_then(|c| c.as_array_mut()) {
            for c in cs {
                let image = c.get("image").and_then(|i| i.as_str()).unwrap_or("").to_string();
                let tag_latest = !image.contains(':') || image.ends_with(":latest");
                let policy = if tag_latest && !image.contains('@') { "Always" } else { "IfNotPresent" };
                set_default(c, "imagePullPolicy", json!(policy));
                set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
                set_default(c, "terminationMessagePolicy", json!("File"));
                set_default(c, "resources", json!({}));
                // Requests not given default to the limits given (Kubernetes' defaulting).
                if let Some(limits) = c["resources"]["limits"].as_object().cloned() {
                    if !c["resources"]["requests"].is_object() {
                        c["resources"]["requests"] = json!({});
                    }
                    for (k, v) in limits {
                        if c["resources"]["requests"].get(&k).is_none() {
                            c["resources"]["requests"][k] = v;
                        }
                    }
                }
            }
        }
    }
    default_ephemeral(spec);
}

/// An ephemeral container's defaults (no resources: it may have none).
fn default_ephemeral(spec: &mut Value) {
    for c in spec.get_mut("ephemeralContainers").and_then(|c| c.as_array_mut()).into_iter().flatten() {
        let image = c.get("image").and_then(|i| i.as_str()).unwrap_or("").to_string();
        let tag_latest = !image.contains(':') || image.ends_with(":latest");
        set_default(c, "imagePullPolicy", json!(if tag_latest && !image.contains('@') { "Always" } else { "IfNotPresent" }));
        set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
        set_default(c, "terminationMessagePolicy", json!("File"));
    }
}

/// What the `ephemeralcontainers` subresource may do to `pod`: add ephemeral containers
/// (defaulted here), never change or remove one, each with a name unique in the pod, an
/// image, a `targetContainerName` naming one of the pod's containers, and none of what an
/// ephemeral container may not have (Kubernetes' ValidatePodEphemeralContainersUpdate and
/// validateEphemeralContainers, with their wording).
pub fn ephemeral_update(pod: &Value, new: Option<&Value>) -> Result<(), Vec<(String, String)>> {
    let mut tmp = json!({"ephemeralContainers": new.cloned().unwrap_or(json!([]))});
    default_ephemeral(&mut tmp);
    let new = tmp["ephemeralContainers"].as_array().cloned().unwrap_or_default();
    let old = pod["spec"]["ephemeralContainers"].as_array().cloned().unwrap_or_default();
    let mut causes = Vec::new();
    for o in &old {
        let name = o["name"].as_str().unwrap_or("");
        match new.iter().find(|n| n["name"] == o["name"]) {
            None => causes.push(("spec.ephemeralContainers".into(), format!("Forbidden: existing ephemeral containers {name:?} may not be removed"))),
            Some(n) if n != o => causes.push(("spec.ephemeralContainers".into(), format!("Forbidden: existing ephemeral containers {name:?} may not be changed"))),
            Some(_) => {}
        }
    }
    let names = |k: &str| -> Vec<String> { pod["spec"][k].as_array().into_iter().flatten().filter_map(|c| c["name"].as_str().map(String::from)).collect() };
    let (main, init) = (names("containers"), names("initContainers"));
    let mut seen: Vec<&str> = Vec::new();
    for (i, c) in new.iter().enumerate() {
        let at = |f: &str| format!("spec.ephemeralContainers[{i}].{f}");
        let name = c["name"].as_str().unwrap_or("");
        if name.is_empty() {
            causes.push((at("name"), "Required value".into()));
        } else if main.iter().chain(&init).any(|n| n == name) || seen.contains(&name) {
            causes.push((at("name"), format!("Duplicate value: {name:?}")));
        }
        seen.push(name);
        if c["image"].as_str().is_none_or(str::is_empty) {
            causes.push((at("image"), "Required value".into()));
        }
        if let Some(t) = c["targetContainerName"].as_str().filter(|t| !t.is_empty())
            && !main.iter().chain(&init).any(|n| n == t)
        {
            causes.push((at("targetContainerName"), format!("Not found: {t:?}")));
        }
        for f in ["ports", "livenessProbe", "readinessProbe", "startupProbe", "lifecycle", "resources", "restartPolicy", "resizePolicy"] {
            let set = match c.get(f) {
                None | Some(Value::Null) => false,
                // `resources: {}` (or with empty maps) is no resources.
                Some(Value::Object(m)) => !m.values().all(|v| f == "resources" && v.as_object().is_some_and(|x| x.is_empty())),
                Some(Value::Array(a)) => !a.is_empty(),
                Some(_) => true,
            };
            if set {
                causes.push((at(f), "Forbidden: cannot be set for an Ephemeral Container".into()));
            }
        }
    }
    if causes.is_empty() { Ok(()) } else { Err(causes) }
}

/// A pod's QoS class, as Kubernetes computes it at create (after admission): Guaranteed when
/// every container limits cpu and memory and requests as much, BestEffort when none asks for
/// either, Burstable otherwise.
pub fn qos_class(pod: &Value) -> &'static str {
    let containers: Vec<&Value> = ["initContainers", "containers"].iter().flat_map(|l| pod["spec"][*l].as_array().into_iter().flatten()).collect();
    let nonzero = |v: &Value| v.as_str().and_then(|s| api::Quantity::parse(s).ok()).is_some_and(|q| q.milli != 0);
    let any = containers.iter().any(|c| ["requests", "limits"].iter().any(|f| ["cpu", "memory"].iter().any(|r| nonzero(&c["resources"][*f][*r]))));
    if !any {
        return "BestEffort";
    }
    let guaranteed = containers.iter().all(|c| {
        ["cpu", "memory"].iter().all(|r| {
            let (l, q) = (&c["resources"]["limits"][*r], &c["resources"]["requests"][*r]);
            nonzero(l) && (q.is_null() || q.as_str().and_then(|s| api::Quantity::parse(s).ok()) == l.as_str().and_then(|s| api::Quantity::parse(s).ok()))
        })
    });
    if guaranteed { "Guaranteed" } else { "Burstable" }
}

/// A Secret's `stringData` is write-only: merged into `data` (base64), as Kubernetes does,
/// its values winning over `data`'s.
fn merge_string_data(obj: &mut Value) {
    use base64::Engine;
    let Some(sd) = obj.as_object_mut().and_then(|m| m.remove("stringData")) else { return };
    let Some(sd) = sd.as_object() else { return };
    if !obj["data"].is_object() {
        obj["data"] = json!({});
    }
    for (k, v) in sd {
        let text = v.as_str().unwrap_or("");
        obj["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(text));
    }
}

/// Kubernetes' defaults for the built-in types.
pub fn default(info: &ResourceInfo, obj: &mut Value) {
    if info.kind == "Secret" && info.group.is_empty() {
        merge_string_data(obj);
        set_default(obj, "type", json!("Opaque"));
    }
    match info.kind {
        // Pointer fields Kubernetes always defaults, which kubectl describe dereferences.
        "PriorityClass" => set_default(obj, "preemptionPolicy", json!("PreemptLowerPriority")),
        // Kubernetes' CSIDriver defaults (pointer fields kubectl describe dereferences).
        "CSIDriver" => {
            if let Some(spec) = obj.get_mut("spec") {
                for (k, v) in [("attachRequired", json!(true)), ("podInfoOnMount", json!(false)), ("storageCapacity", json!(false)), ("requiresRepublish", json!(false)), ("seLinuxMount", json!(false)),
                    ("fsGroupPolicy", json!("ReadWriteOnceWithFSType")), ("volumeLifecycleModes", json!(["Persistent"]))]
                {
                    set_default(spec, k, v);
                }
            }
        }
        "EndpointSlice" => {
            for p in obj.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten() {
                set_default(p, "name", json!(""));
                set_default(p, "protocol", json!("TCP"));
            }
        }
        "Pod" => {
            if let Some(spec) = obj.get_mut("spec") {
                default_pod_spec(spec);
            }
            if obj.get("status").is_none() {
                obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
            }
        }
        "LimitRange" => crate::limit_range::default_object(obj),
        "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration" if info.group == crate::webhook::GROUP => {
            crate::webhook::default_configuration(obj, info.kind.starts_with("Mutating"))
        }
        "ValidatingAdmissionPolicy" if info.group == crate::webhook::GROUP => {
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                spec.entry("failurePolicy").or_insert(json!("Fail"));
                if let Some(m) = spec.get_mut("matchConstraints").and_then(Value::as_object_mut) {
                    m.entry("matchPolicy").or_insert(json!("Equivalent"));
                    m.entry("namespaceSelector").or_insert(json!({}));
                    m.entry("objectSelector").or_insert(json!({}));
                }
            }
        }
        "ReplicationController" => {
            // Selector and labels default to the template's labels (Kubernetes' defaulting).
            let tl = obj["spec"]["template"]["metadata"]["labels"].clone();
            if let Some(spec) = obj.get_mut("spec") {
                set_default(spec, "replicas", json!(1));
                if tl.is_object() && spec.get("selector").is_none_or(|s| s.as_object().is_none_or(|m| m.is_empty())) {
                    spec["selector"] = tl.clone();
                }
                if let Some(ps) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
                    default_pod_spec(ps);
                }
            }
            if tl.is_object() && obj["metadata"]["labels"].as_object().is_none_or(|m| m.is_empty()) {
                obj["metadata"]["labels"] = tl;
            }
            if obj.get("status").is_none() {
                obj["status"] = json!({"replicas": 0});
            }
        }
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" => {
            if let Some(spec) = obj.get_mut("spec") {
                if info.kind != "DaemonSet" {
                    set_default(spec, "replicas", json!(1));
                }
                set_default(spec, "revisionHistoryLimit", json!(10));
                if info.kind == "Deployment" {
                    set_default(spec, "progressDeadlineSeconds", json!(600));
                    set_default(spec, "strategy", json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}));
                }
                if info.kind == "DaemonSet" {
                    set_default(spec, "updateStrategy", json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}));
                }
                if info.kind == "StatefulSet" {
                    set_default(spec, "updateStrategy", json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}));
                    set_default(spec, "podManagementPolicy", json!("OrderedReady"));
                }
                if let Some(ps) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
                    default_pod_spec(ps);
                }
            }
            // The counters Kubernetes always writes (Go ints without omitempty): typed clients
            // require them in a status.
            let counters: &[&str] = match info.kind {
                "ReplicaSet" | "StatefulSet" => &["replicas"],
                "DaemonSet" => &["currentNumberScheduled", "numberMisscheduled", "desiredNumberScheduled", "numberReady"],
                _ => &[],
            };
            if obj.get("status").is_none() {
                obj["status"] = json!({});
            }
            for k in counters {
                if obj["status"].is_object() && obj["status"].get(*k).is_none() {
                    obj["status"][*k] = json!(0);
                }
            }
        }
        "Service" => {
            if let Some(spec) = obj.get_mut("spec") {
                set_default(spec, "type", json!("ClusterIP"));
                set_default(spec, "sessionAffinity", json!("None"));
                if let Some(ports) = spec.get_mut("ports").and_then(|p| p.as_array_mut()) {
                    for p in ports {
                        set_default(p, "protocol", json!("TCP"));
                        if let Some(port) = p.get("port").cloned() {
                            set_default(p, "targetPort", port);
                        }
                    }
                }
            }
        }
        "Namespace" => {
            // The namespace controller's finalizer, as Kubernetes' registry sets it; a phase
            // only when none is there (a Terminating namespace stays Terminating).
            if obj["status"]["phase"].is_null() {
                obj["status"] = json!({"phase": "Active"});
            }
            if obj["spec"]["finalizers"].is_null() {
                obj["spec"]["finalizers"] = json!(["kubernetes"]);
            }
        }
        "CustomResourceDefinition" => {
            // Names are accepted and the CRD established at once: this server serves its
            // resources as soon as it is stored.
            let names = obj["spec"].get("names").cloned().unwrap_or(json!({}));
            let storage = obj["spec"]["versions"]
                .as_array()
                .and_then(|vs| vs.iter().find(|v| v["storage"].as_bool() == Some(true)))
                .and_then(|v| v["name"].as_str())
                .map(|s| vec![s.to_string()])
                .unwrap_or_default();
            let now = crate::object::now_rfc3339();
            obj["status"] = json!({
                "acceptedNames": names,
                "storedVersions": storage,
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
                ],
            });
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;

    #[test]
    fn invalid_names_are_422_with_the_field_named() {
        let reg = Registry::new();
        let pods = &reg.find("", "v1", "pods").unwrap();
        let pod = json!({"metadata": {"name": "Bad_Name"}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}});
        let e = validate_create(pods, &pod, "Bad_Name").unwrap_err();
        assert_eq!(e.code, 422);
        assert_eq!(e.to_json()["details"]["causes"][0]["field"], "metadata.name");
        let ok = json!({"metadata": {"name": "web-1.a"}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}});
        validate_create(pods, &ok, "web-1.a").unwrap();
        let ns = &reg.find("", "v1", "namespaces").unwrap();
        assert!(validate_create(ns, &json!({"metadata": {}}), "a.b").is_err(), "namespaces are labels, no dots");
    }

    #[test]
    fn pod_updates_change_only_what_kubernetes_lets_them() {
        let spec = json!({"containers": [{"name": "c", "image": "a:1", "env": [{"name": "X", "value": "1"}]}], "tolerations": [{"key": "k", "operator": "Exists"}], "schedulingGates": [{"name": "g"}]});
        let with = |f: &dyn Fn(&mut Value)| {
            let mut n = spec.clone();
            f(&mut n);
            n
        };
        let ok = |n: Value| pod_spec_update_allowed(&spec, &n);
        assert!(ok(spec.clone()));
        assert!(ok(with(&|n| n["containers"][0]["image"] = json!("a:2"))), "image");
        assert!(ok(with(&|n| n["activeDeadlineSeconds"] = json!(30))));
        assert!(ok(with(&|n| n["terminationGracePeriodSeconds"] = json!(1))));
        assert!(ok(with(&|n| n["tolerations"].as_array_mut().unwrap().push(json!({"key": "other", "operator": "Exists"})))), "a toleration added");
        assert!(ok(with(&|n| n["schedulingGates"] = json!([]))), "a gate removed");
        assert!(ok(with(&|n| n["nodeName"] = json!("n1"))), "bound once");
        assert!(!ok(with(&|n| n["containers"][0]["env"][0]["value"] = json!("2"))), "env");
        assert!(!ok(with(&|n| n["tolerations"] = json!([]))), "a toleration removed");
        assert!(!ok(with(&|n| n["schedulingGates"].as_array_mut().unwrap().push(json!({"name": "h"})))), "a gate added");
        assert!(!ok(with(&|n| n["containers"].as_array_mut().unwrap().push(json!({"name": "d", "image": "b"})))), "a container added");
        assert!(!ok(with(&|n| n["restartPolicy"] = json!("Never"))));
        let mut bound = spec.clone();
        bound["nodeName"] = json!("n1");
        let mut moved = bound.clone();
        moved["nodeName"] = json!("n2");
        assert!(!pod_spec_update_allowed(&bound, &moved), "moved to another node");
    }

    #[test]
    fn the_chain_defaults_then_refuses_changes_to_immutable_fields() {
        let reg = Registry::new();
        let pods = &reg.find("", "v1", "pods").unwrap();
        let chain = Chain::standard();
        let mut old = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]}});
        chain.admit(pods, None, &mut old).unwrap();
        assert_eq!(old["spec"]["restartPolicy"], "Always");
        let mut moved = old.clone();
        moved["spec"]["nodeName"] = json!("n2");
        let e = chain.admit(pods, Some(&old), &mut moved).unwrap_err();
        assert_eq!(e.to_json()["details"]["causes"][0]["field"], "spec.nodeName");
        let deps = &reg.find("apps", "v1", "deployments").unwrap();
        let mut d = json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"a": "1"}}}});
        chain.admit(deps, None, &mut d).unwrap();
        let mut d2 = d.clone();
        d2["spec"]["selector"]["matchLabels"]["a"] = json!("2");
        assert!(chain.admit(deps, Some(&d), &mut d2).is_err());
    }

    #[test]
    fn pods_need_containers_with_images() {
        let reg = Registry::new();
        let pods = &reg.find("", "v1", "pods").unwrap();
        let e = validate_create(pods, &json!({"metadata": {}, "spec": {"containers": [{"name": "c"}]}}), "p").unwrap_err();
        assert_eq!(e.to_json()["details"]["causes"][0]["field"], "spec.containers[0].image");
    }

    #[test]
    fn pod_defaults_follow_kubernetes() {
        let reg = Registry::new();
        let pods = &reg.find("", "v1", "pods").unwrap();
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "nginx"}, {"name": "b", "image": "nginx:1.25"}]}});
        default(pods, &mut pod);
        assert_eq!(pod["spec"]["restartPolicy"], "Always");
        assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 30);
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(pod["spec"]["containers"][1]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(pod["status"]["phase"], "Pending");
    }

    #[test]
    fn label_validation() {
        assert!(is_label_key("app.kubernetes.io/name"));
        assert!(!is_label_key("-bad"));
        assert!(is_label_value(""));
        assert!(!is_label_value("bad value"));
    }
}
