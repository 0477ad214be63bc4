//! Protobuf request bodies, as kubectl 1.32+ typed clients send them (`create namespace|
//! configmap|secret|deployment|job|cronjob|service|serviceaccount|priorityclass|role|...`,
//! `run`, `expose`, drain's DELETE): the `k8s\0` magic, a `runtime.Unknown` envelope, and the
//! typed message in `raw`. Messages are decoded with the `k8s-pb` types and converted to the
//! JSON the rest of the server handles.
//!
//! The conversion covers the kinds kubectl's typed clients create and, for each, the fields
//! those commands set (and more of the pod spec); a protobuf body of another kind is answered
//! 415 naming the kind, so a client can send JSON instead. Replies are JSON.

use std::collections::BTreeMap;

use base64::Engine;
use k8s_pb::api::{apps::v1 as apps, batch::v1 as batch, core::v1 as core, policy::v1 as policy, rbac::v1 as rbac, scheduling::v1 as scheduling};
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use prost::Message;
use serde_json::{Map, Value, json};

pub const MAGIC: &[u8; 4] = b"k8s\0";

/// Why a protobuf body could not be used.
#[derive(Debug, PartialEq, Eq)]
pub enum PbError {
    /// Not a Kubernetes protobuf envelope, or a message that does not decode: 400.
    Malformed(String),
    /// A kind this server does not decode from protobuf yet: 415.
    Unsupported(String),
}

/// Converts one value to JSON; `None` means "omit the field" (unset or empty).
trait J {
    fn j(&self) -> Option<Value>;
}

impl J for Option<String> {
    fn j(&self) -> Option<Value> {
        self.as_ref().map(|s| json!(s))
    }
}
impl J for Option<i32> {
    fn j(&self) -> Option<Value> {
        self.map(|v| json!(v))
    }
}
impl J for Option<i64> {
    fn j(&self) -> Option<Value> {
        self.map(|v| json!(v))
    }
}
impl J for Option<bool> {
    fn j(&self) -> Option<Value> {
        self.map(|v| json!(v))
    }
}
impl J for Vec<String> {
    fn j(&self) -> Option<Value> {
        (!self.is_empty()).then(|| json!(self))
    }
}
impl J for BTreeMap<String, String> {
    fn j(&self) -> Option<Value> {
        (!self.is_empty()).then(|| json!(self))
    }
}

/// A message converted as a JSON object.
trait Obj {
    fn obj(&self) -> Value;
}
impl<T: Obj> J for Option<T> {
    fn j(&self) -> Option<Value> {
        self.as_ref().map(|v| v.obj())
    }
}
impl<T: Obj> J for Vec<T> {
    fn j(&self) -> Option<Value> {
        (!self.is_empty()).then(|| Value::Array(self.iter().map(|v| v.obj()).collect()))
    }
}

macro_rules! obj {
    ($($k:literal => $v:expr),* $(,)?) => {{
        let mut m = Map::new();
        $( if let Some(v) = J::j(&$v) { m.insert($k.to_string(), v); } )*
        Value::Object(m)
    }};
}

fn bytes_map(m: &BTreeMap<String, Vec<u8>>) -> Option<Value> {
    (!m.is_empty()).then(|| {
        Value::Object(m.iter().map(|(k, v)| (k.clone(), json!(base64::engine::general_purpose::STANDARD.encode(v)))).collect())
    })
}

fn quantities(m: &BTreeMap<String, k8s_pb::apimachinery::pkg::api::resource::Quantity>) -> Option<Value> {
    (!m.is_empty()).then(|| Value::Object(m.iter().map(|(k, q)| (k.clone(), json!(q.string.clone().unwrap_or_default()))).collect()))
}

fn int_or_string(v: &Option<k8s_pb::apimachinery::pkg::util::intstr::IntOrString>) -> Option<Value> {
    let v = v.as_ref()?;
    Some(if v.r#type == Some(1) { json!(v.str_val.clone().unwrap_or_default()) } else { json!(v.int_val.unwrap_or(0)) })
}

fn insert(v: &mut Value, k: &str, x: Option<Value>) {
    if let (Some(x), Some(m)) = (x, v.as_object_mut()) {
        m.insert(k.into(), x);
    }
}

impl Obj for meta::ObjectMeta {
    fn obj(&self) -> Value {
        obj! {
            "name" => self.name, "generateName" => self.generate_name, "namespace" => self.namespace,
            "uid" => self.uid, "resourceVersion" => self.resource_version, "labels" => self.labels,
            "annotations" => self.annotations, "finalizers" => self.finalizers, "ownerReferences" => self.owner_references,
        }
    }
}
impl Obj for meta::OwnerReference {
    fn obj(&self) -> Value {
        obj! { "apiVersion" => self.api_version, "kind" => self.kind, "name" => self.name, "uid" => self.uid,
            "controller" => self.controller, "blockOwnerDeletion" => self.block_owner_deletion }
    }
}
impl Obj for meta::LabelSelector {
    fn obj(&self) -> Value {
        obj! { "matchLabels" => self.match_labels, "matchExpressions" => self.match_expressions }
    }
}
impl Obj for meta::LabelSelectorRequirement {
    fn obj(&self) -> Value {
        obj! { "key" => self.key, "operator" => self.operator, "values" => self.values }
    }
}
impl Obj for meta::Preconditions {
    fn obj(&self) -> Value {
        obj! { "uid" => self.uid, "resourceVersion" => self.resource_version }
    }
}
impl Obj for meta::DeleteOptions {
    fn obj(&self) -> Value {
        obj! { "gracePeriodSeconds" => self.grace_period_seconds, "preconditions" => self.preconditions,
            "orphanDependents" => self.orphan_dependents, "propagationPolicy" => self.propagation_policy, "dryRun" => self.dry_run }
    }
}
impl Obj for core::EnvVar {
    fn obj(&self) -> Value {
        obj! { "name" => self.name, "value" => self.value }
    }
}
impl Obj for core::ContainerPort {
    fn obj(&self) -> Value {
        obj! { "name" => self.name, "hostPort" => self.host_port, "containerPort" => self.container_port,
            "protocol" => self.protocol, "hostIP" => self.host_ip }
    }
}
impl Obj for core::ResourceRequirements {
    fn obj(&self) -> Value {
        let mut v = json!({});
        insert(&mut v, "limits", quantities(&self.limits));
        insert(&mut v, "requests", quantities(&self.requests));
        v
    }
}
impl Obj for core::Container {
    fn obj(&self) -> Value {
        obj! {
            "name" => self.name, "image" => self.image, "command" => self.command, "args" => self.args,
            "workingDir" => self.working_dir, "ports" => self.ports, "env" => self.env, "resources" => self.resources,
            "imagePullPolicy" => self.image_pull_policy, "stdin" => self.stdin, "stdinOnce" => self.stdin_once, "tty" => self.tty,
            "terminationMessagePath" => self.termination_message_path, "terminationMessagePolicy" => self.termination_message_policy,
        }
    }
}
impl Obj for core::Toleration {
    fn obj(&self) -> Value {
        obj! { "key" => self.key, "operator" => self.operator, "value" => self.value, "effect" => self.effect,
            "tolerationSeconds" => self.toleration_seconds }
    }
}
impl Obj for core::LocalObjectReference {
    fn obj(&self) -> Value {
        obj! { "name" => self.name }
    }
}
impl Obj for core::PodSpec {
    fn obj(&self) -> Value {
        let mut v = obj! {
            "initContainers" => self.init_containers, "containers" => self.containers, "restartPolicy" => self.restart_policy,
            "terminationGracePeriodSeconds" => self.termination_grace_period_seconds,
            "activeDeadlineSeconds" => self.active_deadline_seconds, "dnsPolicy" => self.dns_policy,
            "nodeSelector" => self.node_selector, "serviceAccountName" => self.service_account_name,
            "nodeName" => self.node_name, "hostNetwork" => self.host_network, "imagePullSecrets" => self.image_pull_secrets,
            "hostname" => self.hostname, "subdomain" => self.subdomain, "schedulerName" => self.scheduler_name,
            "tolerations" => self.tolerations, "priorityClassName" => self.priority_class_name, "priority" => self.priority,
        };
        if !self.overhead.is_empty() {
            insert(&mut v, "overhead", quantities(&self.overhead));
        }
        v
    }
}
impl Obj for core::PodTemplateSpec {
    fn obj(&self) -> Value {
        obj! { "metadata" => self.metadata, "spec" => self.spec }
    }
}
impl Obj for core::ServicePort {
    fn obj(&self) -> Value {
        let mut v = obj! { "name" => self.name, "protocol" => self.protocol, "port" => self.port, "nodePort" => self.node_port };
        insert(&mut v, "targetPort", int_or_string(&self.target_port));
        v
    }
}
impl Obj for core::ServiceSpec {
    fn obj(&self) -> Value {
        obj! { "ports" => self.ports, "selector" => self.selector, "clusterIP" => self.cluster_ip, "type" => self.r#type,
            "externalIPs" => self.external_ips, "sessionAffinity" => self.session_affinity, "externalName" => self.external_name }
    }
}
impl Obj for core::NamespaceSpec {
    fn obj(&self) -> Value {
        obj! { "finalizers" => self.finalizers }
    }
}
impl Obj for apps::DeploymentStrategy {
    fn obj(&self) -> Value {
        let mut v = obj! { "type" => self.r#type };
        if let Some(r) = &self.rolling_update {
            let mut ru = json!({});
            insert(&mut ru, "maxSurge", int_or_string(&r.max_surge));
            insert(&mut ru, "maxUnavailable", int_or_string(&r.max_unavailable));
            insert(&mut v, "rollingUpdate", Some(ru));
        }
        v
    }
}
impl Obj for apps::DeploymentSpec {
    fn obj(&self) -> Value {
        obj! { "replicas" => self.replicas, "selector" => self.selector, "template" => self.template, "strategy" => self.strategy,
            "minReadySeconds" => self.min_ready_seconds, "revisionHistoryLimit" => self.revision_history_limit,
            "paused" => self.paused, "progressDeadlineSeconds" => self.progress_deadline_seconds }
    }
}
impl Obj for batch::JobSpec {
    fn obj(&self) -> Value {
        obj! { "parallelism" => self.parallelism, "completions" => self.completions, "activeDeadlineSeconds" => self.active_deadline_seconds,
            "backoffLimit" => self.backoff_limit, "selector" => self.selector, "manualSelector" => self.manual_selector,
            "template" => self.template, "ttlSecondsAfterFinished" => self.ttl_seconds_after_finished, "suspend" => self.suspend }
    }
}
impl Obj for batch::JobTemplateSpec {
    fn obj(&self) -> Value {
        obj! { "metadata" => self.metadata, "spec" => self.spec }
    }
}
impl Obj for batch::CronJobSpec {
    fn obj(&self) -> Value {
        obj! { "schedule" => self.schedule, "timeZone" => self.time_zone, "startingDeadlineSeconds" => self.starting_deadline_seconds,
            "concurrencyPolicy" => self.concurrency_policy, "suspend" => self.suspend, "jobTemplate" => self.job_template,
            "successfulJobsHistoryLimit" => self.successful_jobs_history_limit, "failedJobsHistoryLimit" => self.failed_jobs_history_limit }
    }
}
impl Obj for rbac::PolicyRule {
    fn obj(&self) -> Value {
        obj! { "verbs" => self.verbs, "apiGroups" => self.api_groups, "resources" => self.resources,
            "resourceNames" => self.resource_names, "nonResourceURLs" => self.non_resource_ur_ls }
    }
}
impl Obj for rbac::RoleRef {
    fn obj(&self) -> Value {
        obj! { "apiGroup" => self.api_group, "kind" => self.kind, "name" => self.name }
    }
}
impl Obj for rbac::Subject {
    fn obj(&self) -> Value {
        obj! { "kind" => self.kind, "apiGroup" => self.api_group, "name" => self.name, "namespace" => self.namespace }
    }
}

/// A quantity as JSON (its string form), or None when unset.
fn quantity(q: &Option<k8s_pb::apimachinery::pkg::api::resource::Quantity>) -> Option<Value> {
    q.as_ref().map(|q| json!(q.string.clone().unwrap_or_default()))
}

mod hpa {
    //! autoscaling/v2 HorizontalPodAutoscaler's spec (`kubectl autoscale` sends it).
    use super::*;
    use k8s_pb::api::autoscaling::v2 as a;

    impl Obj for a::CrossVersionObjectReference {
        fn obj(&self) -> Value {
            obj! { "apiVersion" => self.api_version, "kind" => self.kind, "name" => self.name }
        }
    }
    impl Obj for a::MetricTarget {
        fn obj(&self) -> Value {
            let mut v = obj! { "type" => self.r#type, "averageUtilization" => self.average_utilization };
            insert(&mut v, "value", quantity(&self.value));
            insert(&mut v, "averageValue", quantity(&self.average_value));
            v
        }
    }
    impl Obj for a::MetricIdentifier {
        fn obj(&self) -> Value {
            obj! { "name" => self.name, "selector" => self.selector }
        }
    }
    impl Obj for a::ResourceMetricSource {
        fn obj(&self) -> Value {
            obj! { "name" => self.name, "target" => self.target }
        }
    }
    impl Obj for a::ContainerResourceMetricSource {
        fn obj(&self) -> Value {
            obj! { "name" => self.name, "container" => self.container, "target" => self.target }
        }
    }
    impl Obj for a::PodsMetricSource {
        fn obj(&self) -> Value {
            obj! { "metric" => self.metric, "target" => self.target }
        }
    }
    impl Obj for a::ObjectMetricSource {
        fn obj(&self) -> Value {
            obj! { "describedObject" => self.described_object, "metric" => self.metric, "target" => self.target }
        }
    }
    impl Obj for a::ExternalMetricSource {
        fn obj(&self) -> Value {
            obj! { "metric" => self.metric, "target" => self.target }
        }
    }
    impl Obj for a::MetricSpec {
        fn obj(&self) -> Value {
            obj! { "type" => self.r#type, "resource" => self.resource, "containerResource" => self.container_resource,
                "pods" => self.pods, "object" => self.object, "external" => self.external }
        }
    }
    impl Obj for a::HpaScalingPolicy {
        fn obj(&self) -> Value {
            obj! { "type" => self.r#type, "value" => self.value, "periodSeconds" => self.period_seconds }
        }
    }
    impl Obj for a::HpaScalingRules {
        fn obj(&self) -> Value {
            let mut v = obj! { "stabilizationWindowSeconds" => self.stabilization_window_seconds, "selectPolicy" => self.select_policy,
                "policies" => self.policies };
            insert(&mut v, "tolerance", quantity(&self.tolerance));
            v
        }
    }
    impl Obj for a::HorizontalPodAutoscalerBehavior {
        fn obj(&self) -> Value {
            obj! { "scaleUp" => self.scale_up, "scaleDown" => self.scale_down }
        }
    }
    impl Obj for a::HorizontalPodAutoscalerSpec {
        fn obj(&self) -> Value {
            obj! { "scaleTargetRef" => self.scale_target_ref, "minReplicas" => self.min_replicas, "maxReplicas" => self.max_replicas,
                "metrics" => self.metrics, "behavior" => self.behavior }
        }
    }
}

fn decode<T: Message + Default>(raw: &[u8], kind: &str) -> Result<T, PbError> {
    T::decode(raw).map_err(|e| PbError::Malformed(format!("the protobuf {kind} in the request body does not decode: {e}")))
}

fn typed(api_version: &str, kind: &str, fields: Value) -> Value {
    let mut v = json!({"apiVersion": api_version, "kind": kind});
    if let (Some(m), Value::Object(f)) = (v.as_object_mut(), fields) {
        m.extend(f);
    }
    v
}

/// Go's protobuf encoding writes every non-pointer string, even empty, and Go's JSON
/// encoding then omits it (`omitempty`): a JSON client never sees `"schedulerName": ""`.
/// Empty strings are dropped here to match (a pointer string set to "" is the rare loss).
fn drop_empty_strings(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, x| x.as_str() != Some(""));
            for x in m.values_mut() {
                drop_empty_strings(x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(drop_empty_strings),
        _ => {}
    }
}

/// Decodes a Kubernetes protobuf request body into the JSON object it stands for.
pub fn to_json(body: &[u8]) -> Result<Value, PbError> {
    let mut v = to_json_raw(body)?;
    drop_empty_strings(&mut v);
    Ok(v)
}

fn to_json_raw(body: &[u8]) -> Result<Value, PbError> {
    let rest = body.strip_prefix(MAGIC).ok_or_else(|| PbError::Malformed("protobuf body without the k8s\\0 prefix".into()))?;
    let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown::decode(rest)
        .map_err(|e| PbError::Malformed(format!("protobuf envelope does not decode: {e}")))?;
    let tm = unknown.type_meta.unwrap_or_default();
    let (av, kind) = (tm.api_version.unwrap_or_default(), tm.kind.unwrap_or_default());
    let raw = unknown.raw.unwrap_or_default();
    let f = match (av.as_str(), kind.as_str()) {
        ("v1", "Namespace") => {
            let m: core::Namespace = decode(&raw, &kind)?;
            obj! { "metadata" => m.metadata, "spec" => m.spec }
        }
        ("v1", "ConfigMap") => {
            let m: core::ConfigMap = decode(&raw, &kind)?;
            let mut v = obj! { "metadata" => m.metadata, "data" => m.data, "immutable" => m.immutable };
            insert(&mut v, "binaryData", bytes_map(&m.binary_data));
            v
        }
        ("v1", "Secret") => {
            let m: core::Secret = decode(&raw, &kind)?;
            let mut v = obj! { "metadata" => m.metadata, "stringData" => m.string_data, "type" => m.r#type, "immutable" => m.immutable };
            insert(&mut v, "data", bytes_map(&m.data));
            v
        }
        ("v1", "Pod") => {
            let m: core::Pod = decode(&raw, &kind)?;
            obj! { "metadata" => m.metadata, "spec" => m.spec }
        }
        ("v1", "Service") => {
            let m: core::Service = decode(&raw, &kind)?;
            obj! { "metadata" => m.metadata, "spec" => m.spec }
        }
        ("v1", "ServiceAccount") => {
            let m: core::ServiceAccount = decode(&raw, &kind)?;
            obj! { "metadata" => m.metadata, "automountServiceAccountToken" => m.automount_service_account_token }
        }
        ("v1", "DeleteOptions") | ("meta.k8s.io/v1", "DeleteOptions") => {
            let m: meta::DeleteOptions = decode(&raw, &kind)?;
            m.obj()
        }
        ("v1", "ResourceQuota") => {
            let m: core::ResourceQuota = decode(&raw, &kind)?;
            let mut spec = json!({});
            if let Some(sp) = &m.spec {
                insert(&mut spec, "hard", quantities(&sp.hard));
                insert(&mut spec, "scopes", J::j(&sp.scopes));
            }
            let mut v = obj! { "metadata" => m.metadata };
            insert(&mut v, "spec", Some(spec));
            v
        }
        ("policy/v1", "PodDisruptionBudget") => {
            let m: policy::PodDisruptionBudget = decode(&raw, &kind)?;
            let mut spec = json!({});
            if let Some(sp) = &m.spec {
                insert(&mut spec, "minAvailable", int_or_string(&sp.min_available));
                insert(&mut spec, "maxUnavailable", int_or_string(&sp.max_unavailable));
                insert(&mut spec, "selector", J::j(&sp.selector));
                insert(&mut spec, "unhealthyPodEvictionPolicy", J::j(&sp.unhealthy_pod_eviction_policy));
            }
            let mut v = obj! { "metadata" => m.metadata };
            insert(&mut v, "spec", Some(spec));
            v
        }
        ("autoscaling/v2", "HorizontalPodAutoscaler") => {
            let m: k8s_pb::api::autoscaling::v2::HorizontalPodAutoscaler = decode(&raw, &kind)?;
            obj! { "metadata" => m.metadata, "spec" => m.spec }
        }
        ("apps/v1", "Deployment") => {
            let m: apps::Deployment = decode(&raw, &kind)?;
            obj! { "metadata" => m.metadata, "spec" => m.spec }
        }
        ("batch/v1", "Job") => {
            let m: batch::Job = decode(&raw, &kind)?;
            obj! { "metadata" => m.metadata, "spec" => m.spec }
        }
        ("batch/v1", "CronJob") => {
            let m: batch::CronJob = decode(&raw, &kind)?;
            obj! { "metadata" => m.metadata, "spec" => m.spec }
        }
        ("policy/v1", "Eviction") => {
            let m: policy::Eviction = decode(&raw, &kind)?;
            obj! { "metadata" => m.metadata, "deleteOptions" => m.delete_options }
        }
        ("scheduling.k8s.io/v1", "PriorityClass") => {
            let m: scheduling::PriorityClass = decode(&raw, &kind)?;
            obj! { "metadata" => m.metadata, "value" => m.value, "globalDefault" => m.global_default,
                "description" => m.description, "preemptionPolicy" => m.preemption_policy }
        }
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => {
            let m: k8s_pb::api::authorization::v1::SelfSubjectAccessReview = decode(&raw, &kind)?;
            let mut spec = json!({});
            if let Some(sp) = &m.spec {
                if let Some(r) = &sp.resource_attributes {
                    let mut ra = json!({});
                    for (k, v) in [("namespace", &r.namespace), ("verb", &r.verb), ("group", &r.group), ("version", &r.version), ("resource", &r.resource), ("subresource", &r.subresource), ("name", &r.name)] {
                        insert(&mut ra, k, v.j());
                    }
                    insert(&mut spec, "resourceAttributes", Some(ra));
                }
                if let Some(n) = &sp.non_resource_attributes {
                    let mut na = json!({});
                    insert(&mut na, "path", n.path.j());
                    insert(&mut na, "verb", n.verb.j());
                    insert(&mut spec, "nonResourceAttributes", Some(na));
                }
            }
            let mut v = obj! { "metadata" => m.metadata };
            insert(&mut v, "spec", Some(spec));
            v
        }
        ("authentication.k8s.io/v1", "TokenRequest") => {
            let m: k8s_pb::api::authentication::v1::TokenRequest = decode(&raw, &kind)?;
            let mut spec = json!({});
            if let Some(sp) = &m.spec {
                insert(&mut spec, "audiences", sp.audiences.j());
                insert(&mut spec, "expirationSeconds", sp.expiration_seconds.j());
                if let Some(b) = &sp.bound_object_ref {
                    let mut r = json!({});
                    for (k, v) in [("kind", &b.kind), ("apiVersion", &b.api_version), ("name", &b.name), ("uid", &b.u_id)] {
                        insert(&mut r, k, v.j());
                    }
                    insert(&mut spec, "boundObjectRef", Some(r));
                }
            }
            let mut v = obj! { "metadata" => m.metadata };
            insert(&mut v, "spec", Some(spec));
            v
        }
        ("authentication.k8s.io/v1", "TokenReview") => {
            let m: k8s_pb::api::authentication::v1::TokenReview = decode(&raw, &kind)?;
            let mut spec = json!({});
            if let Some(sp) = &m.spec {
                insert(&mut spec, "token", sp.token.j());
                insert(&mut spec, "audiences", sp.audiences.j());
            }
            let mut v = obj! { "metadata" => m.metadata };
            insert(&mut v, "spec", Some(spec));
            v
        }
        ("authorization.k8s.io/v1", "SelfSubjectRulesReview") => {
            let m: k8s_pb::api::authorization::v1::SelfSubjectRulesReview = decode(&raw, &kind)?;
            let mut spec = json!({});
            insert(&mut spec, "namespace", m.spec.as_ref().and_then(|s| s.namespace.j()));
            let mut v = obj! { "metadata" => m.metadata };
            insert(&mut v, "spec", Some(spec));
            v
        }
        ("rbac.authorization.k8s.io/v1", "Role") => {
            let m: rbac::Role = decode(&raw, &kind)?;
            obj! { "metadata" => m.metadata, "rules" => m.rules }
        }
        ("certificates.k8s.io/v1", "CertificateSigningRequest") => {
            // kubectl certificate approve|deny sends the whole request to `approval`.
            let m: k8s_pb::api::certificates::v1::CertificateSigningRequest = decode(&raw, &kind)?;
            let b64 = |b: &Option<Vec<u8>>| b.as_ref().filter(|b| !b.is_empty()).map(|b| json!(base64::engine::general_purpose::STANDARD.encode(b)));
            let time = |t: &Option<meta::Time>| t.as_ref().and_then(|t| t.seconds).and_then(|s| jiff::Timestamp::from_second(s).ok()).map(|t| json!(t.to_string()));
            let mut spec = json!({});
            if let Some(sp) = &m.spec {
                insert(&mut spec, "request", b64(&sp.request));
                insert(&mut spec, "signerName", sp.signer_name.j());
                insert(&mut spec, "expirationSeconds", sp.expiration_seconds.map(i64::from).j());
                insert(&mut spec, "usages", sp.usages.j());
                insert(&mut spec, "username", sp.username.j());
                insert(&mut spec, "uid", sp.uid.j());
                insert(&mut spec, "groups", sp.groups.j());
            }
            let mut status = json!({});
            if let Some(st) = &m.status {
                let conds: Vec<Value> = st
                    .conditions
                    .iter()
                    .map(|c| {
                        let mut o = json!({});
                        insert(&mut o, "type", c.r#type.j());
                        insert(&mut o, "status", c.status.j());
                        insert(&mut o, "reason", c.reason.j());
                        insert(&mut o, "message", c.message.j());
                        insert(&mut o, "lastUpdateTime", time(&c.last_update_time));
                        insert(&mut o, "lastTransitionTime", time(&c.last_transition_time));
                        o
                    })
                    .collect();
                if !conds.is_empty() {
                    status["conditions"] = json!(conds);
                }
                insert(&mut status, "certificate", b64(&st.certificate));
            }
            let mut v = obj! { "metadata" => m.metadata };
            v["spec"] = spec;
            v["status"] = status;
            v
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
            let m: rbac::ClusterRole = decode(&raw, &kind)?;
            obj! { "metadata" => m.metadata, "rules" => m.rules }
        }
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
            let m: rbac::RoleBinding = decode(&raw, &kind)?;
            obj! { "metadata" => m.metadata, "subjects" => m.subjects, "roleRef" => m.role_ref }
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            let m: rbac::ClusterRoleBinding = decode(&raw, &kind)?;
            obj! { "metadata" => m.metadata, "subjects" => m.subjects, "roleRef" => m.role_ref }
        }
        _ => {
            return Err(PbError::Unsupported(format!(
                "protobuf bodies of {av}/{kind} are not decoded by this server yet; send application/json"
            )));
        }
    };
    Ok(typed(&av, &kind, f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let u = k8s_pb::apimachinery::pkg::runtime::Unknown {
            type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta { api_version: Some(api_version.into()), kind: Some(kind.into()) }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        let mut b = MAGIC.to_vec();
        b.extend(u.encode_to_vec());
        b
    }

    #[test]
    fn a_protobuf_horizontal_pod_autoscaler_keeps_its_metrics_and_behavior() {
        use k8s_pb::api::autoscaling::v2 as a;
        let q = |s: &str| Some(k8s_pb::apimachinery::pkg::api::resource::Quantity { string: Some(s.into()) });
        let h = a::HorizontalPodAutoscaler {
            metadata: Some(meta::ObjectMeta { name: Some("web".into()), ..Default::default() }),
            spec: Some(a::HorizontalPodAutoscalerSpec {
                scale_target_ref: Some(a::CrossVersionObjectReference { kind: Some("Deployment".into()), name: Some("web".into()), api_version: Some("apps/v1".into()) }),
                min_replicas: Some(2),
                max_replicas: Some(5),
                metrics: vec![
                    a::MetricSpec {
                        r#type: Some("Resource".into()),
                        resource: Some(a::ResourceMetricSource { name: Some("cpu".into()), target: Some(a::MetricTarget { r#type: Some("Utilization".into()), average_utilization: Some(80), ..Default::default() }) }),
                        ..Default::default()
                    },
                    a::MetricSpec {
                        r#type: Some("Pods".into()),
                        pods: Some(a::PodsMetricSource {
                            metric: Some(a::MetricIdentifier { name: Some("rps".into()), selector: None }),
                            target: Some(a::MetricTarget { r#type: Some("AverageValue".into()), average_value: q("10"), ..Default::default() }),
                        }),
                        ..Default::default()
                    },
                ],
                behavior: Some(a::HorizontalPodAutoscalerBehavior {
                    scale_down: Some(a::HpaScalingRules {
                        stabilization_window_seconds: Some(30),
                        policies: vec![a::HpaScalingPolicy { r#type: Some("Percent".into()), value: Some(50), period_seconds: Some(60) }],
                        ..Default::default()
                    }),
                    scale_up: None,
                }),
            }),
            status: None,
        };
        let v = to_json(&envelope("autoscaling/v2", "HorizontalPodAutoscaler", h.encode_to_vec())).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "web"}, "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}, "minReplicas": 2, "maxReplicas": 5,
                "metrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}},
                    {"type": "Pods", "pods": {"metric": {"name": "rps"}, "target": {"type": "AverageValue", "averageValue": "10"}}},
                ],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 30, "policies": [{"type": "Percent", "value": 50, "periodSeconds": 60}]}},
            }})
        );
    }

    #[test]
    fn a_protobuf_namespace_becomes_its_json() {
        let ns = core::Namespace { metadata: Some(meta::ObjectMeta { name: Some("x".into()), ..Default::default() }), ..Default::default() };
        let v = to_json(&envelope("v1", "Namespace", ns.encode_to_vec())).unwrap();
        assert_eq!(v, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}));
    }

    #[test]
    fn a_protobuf_deployment_keeps_its_pod_template() {
        let d = apps::Deployment {
            metadata: Some(meta::ObjectMeta { name: Some("web".into()), labels: [("app".to_string(), "web".to_string())].into(), ..Default::default() }),
            spec: Some(apps::DeploymentSpec {
                replicas: Some(3),
                selector: Some(meta::LabelSelector { match_labels: [("app".to_string(), "web".to_string())].into(), ..Default::default() }),
                template: Some(core::PodTemplateSpec {
                    metadata: Some(meta::ObjectMeta { labels: [("app".to_string(), "web".to_string())].into(), ..Default::default() }),
                    spec: Some(core::PodSpec {
                        containers: vec![core::Container { name: Some("nginx".into()), image: Some("nginx".into()), ..Default::default() }],
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = to_json(&envelope("apps/v1", "Deployment", d.encode_to_vec())).unwrap();
        assert_eq!(v["spec"]["replicas"], 3);
        assert_eq!(v["spec"]["selector"]["matchLabels"]["app"], "web");
        assert_eq!(v["spec"]["template"]["spec"]["containers"][0]["image"], "nginx");
    }

    #[test]
    fn secrets_carry_base64_data_and_bad_bodies_are_refused() {
        let s = core::Secret { data: [("k".to_string(), b"hi".to_vec())].into(), ..Default::default() };
        let v = to_json(&envelope("v1", "Secret", s.encode_to_vec())).unwrap();
        assert_eq!(v["data"]["k"], "aGk=");
        assert!(matches!(to_json(b"nope"), Err(PbError::Malformed(_))));
        assert!(matches!(to_json(&envelope("v1", "Secret", vec![0xff, 0xff, 0xff])), Err(PbError::Malformed(_))));
        assert!(matches!(to_json(&envelope("v1", "Widget", vec![])), Err(PbError::Unsupported(_))));
    }
}
